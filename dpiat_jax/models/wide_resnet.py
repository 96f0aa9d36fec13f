"""Wide ResNets for CIFAR (Zagoruyko & Komodakis, 2016): WRN-d-k with pre-activation blocks.

WRN-d-k has ``n = (d - 4) / 6`` blocks in each of three groups of ``16k``, ``32k`` and
``64k`` channels. It exists here as a wide (few, broad layers) counterpart of the deep, thin
CIFAR ResNets, e.g. WRN-16-4 and WRN-28-10.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiat_jax.models.common import batch_norm, conv


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus shortcut.

    When the width or stride changes, the shortcut is a 1x1 convolution of the pre-activated
    input (as in the reference implementation); otherwise it is the identity. Dropout (between
    the two convolutions) is only created when ``dropout_rate > 0``. Returns the block output
    (not activated: the next block or the final BN-ReLU does that).

    Attributes:
        features: output channels.
        strides: stride of the first convolution and of the projection.
        dropout_rate: dropout between the convolutions during training.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> block = WideBasicBlock(8, strides=2)
        >>> variables = block.init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 4)))
        >>> sorted(variables["params"])
        ['bn1', 'bn2', 'conv1', 'conv2', 'shortcut_conv']
        >>> block.apply(variables, jnp.ones((1, 8, 8, 4))).shape
        (1, 4, 4, 8)
    """

    features: int
    strides: int = 1
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return the block output for ``x`` ``(batch, height, width, channels)``."""
        projection = self.strides != 1 or x.shape[-1] != self.features
        a = nn.relu(batch_norm(train, "bn1")(x))
        y = conv(self.features, 3, self.strides, name="conv1")(a)
        y = nn.relu(batch_norm(train, "bn2")(y))
        if self.dropout_rate > 0:
            y = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(y)
        y = conv(self.features, 3, name="conv2")(y)
        if projection:
            x = conv(self.features, 1, self.strides, name="shortcut_conv")(a)
        return y + x


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for CIFAR.

    Layout: 3x3 stem conv (16 channels), three groups of pre-activation blocks (stride 2 at the
    start of groups 2 and 3), final BN-ReLU, global average pooling, Dense. Returns logits
    ``(batch, num_classes)``.

    Attributes:
        depth: ``6n + 4`` layers.
        widen_factor: ``k``, the multiplier of the group widths 16, 32 and 64.
        dropout_rate: dropout inside every block during training.
        num_classes: outputs of the classifier.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = WideResNet(depth=10, widen_factor=1, num_classes=3)
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
        >>> model.apply(variables, jnp.zeros((2, 8, 8, 3))).shape
        (2, 3)
    """

    depth: int = 28
    widen_factor: int = 10
    dropout_rate: float = 0.0
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits ``(batch, num_classes)`` for images ``(batch, height, width, 3)``."""
        if (self.depth - 4) % 6 != 0 or self.depth < 10:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {self.depth}")
        n = (self.depth - 4) // 6
        x = conv(16, 3, name="stem_conv")(x)
        for group, base in enumerate((16, 32, 64), start=1):
            for i in range(n):
                strides = 2 if (group > 1 and i == 0) else 1
                x = WideBasicBlock(
                    base * self.widen_factor,
                    strides,
                    self.dropout_rate,
                    name=f"stage{group}_block{i}",
                )(x, train)
        x = nn.relu(batch_norm(train, "final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
