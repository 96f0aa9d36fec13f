"""A small 1D CNN for sequence data such as MNIST-1D (Greydanus, 2020; inputs of length 40).

Modelled on the MNIST-1D convolutional baseline (three stride-2 convolutions of kernel 5 with
ReLU), with global average pooling instead of a fixed-size flatten so any length works.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class CNN1D(nn.Module):
    """Conv1D+ReLU layers with widths ``channels``, global average pooling, Dense classifier.

    Accepts ``(batch, length)`` (a channel axis is added) or ``(batch, length, channels)``.
    Returns logits ``(batch, num_classes)``.

    Attributes:
        channels: widths of the convolutions.
        kernel_size: length of every kernel.
        strides: stride of every convolution.
        num_classes: outputs of the classifier.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = CNN1D(channels=(4, 4), num_classes=3)
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 40)))
        >>> model.apply(variables, jnp.zeros((2, 40))).shape
        (2, 3)
    """

    channels: Sequence[int] = (32, 32, 32)
    kernel_size: int = 5
    strides: int = 2
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits ``(batch, num_classes)`` for ``(batch, length[, channels])``."""
        if x.ndim == 2:
            x = x[..., None]
        p = (self.kernel_size - 1) // 2
        for i, c in enumerate(self.channels):
            x = nn.Conv(
                c, (self.kernel_size,), (self.strides,), padding=((p, p),), name=f"conv{i}"
            )(x)
            x = nn.relu(x)
        x = jnp.mean(x, axis=1)
        return nn.Dense(self.num_classes, name="head")(x)
