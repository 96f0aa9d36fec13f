"""Multilayer perceptron: the simplest dense source/target (e.g. for MNIST-1D or digits)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """Dense+ReLU(+dropout) hidden layers of sizes ``hidden_sizes``, then a Dense classifier.

    Inputs of any rank are flattened to ``(batch, features)`` first, so images work too.
    Dropout modules exist only when ``dropout_rate > 0``. Returns logits
    ``(batch, num_classes)``.

    Attributes:
        hidden_sizes: widths of the hidden layers.
        num_classes: outputs of the classifier.
        dropout_rate: dropout after every hidden layer during training.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = MLP(hidden_sizes=(8,), num_classes=3)
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4)))
        >>> sorted(variables["params"]), model.apply(variables, jnp.zeros((2, 4, 4))).shape
        (['dense0', 'head'], (2, 3))
    """

    hidden_sizes: Sequence[int] = (256, 256)
    num_classes: int = 10
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits ``(batch, num_classes)`` for inputs ``(batch, ...)``."""
        x = x.reshape((x.shape[0], -1))
        for i, h in enumerate(self.hidden_sizes):
            x = nn.relu(nn.Dense(h, name=f"dense{i}")(x))
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"dropout{i}")(x)
        return nn.Dense(self.num_classes, name="head")(x)
