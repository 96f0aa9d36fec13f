"""CIFAR ResNets (He et al., 2016, section 4.2): depth 6n + 2, three stages of 16/32/64 channels.

These are the small residual networks the DPIAT paper uses most as sources and targets on
CIFAR-10/100. A width factor multiplies every channel count, so ``depth`` and ``width`` give
the family of depth/width variants that transfer is tested between.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiat_jax.models.common import batch_norm, conv


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity or projection shortcut.

    Returns the block output ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``. The
    shortcut is a 1x1 convolution followed by batch norm whenever the stride or the channel
    count changes (option B of the ResNet paper), and the identity otherwise.

    Attributes:
        features: output channels of both convolutions.
        strides: stride of the first convolution and of the projection.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> block = BasicBlock(8, strides=2)
        >>> variables = block.init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 4)))
        >>> sorted(variables["params"])
        ['bn1', 'bn2', 'conv1', 'conv2', 'shortcut_bn', 'shortcut_conv']
        >>> block.apply(variables, jnp.ones((1, 8, 8, 4))).shape
        (1, 4, 4, 8)
    """

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return the block output for ``x`` ``(batch, height, width, channels)``."""
        needs_projection = self.strides != 1 or x.shape[-1] != self.features
        y = conv(self.features, 3, self.strides, name="conv1")(x)
        y = nn.relu(batch_norm(train, "bn1")(y))
        y = conv(self.features, 3, name="conv2")(y)
        y = batch_norm(train, "bn2")(y)
        if needs_projection:
            x = conv(self.features, 1, self.strides, name="shortcut_conv")(x)
            x = batch_norm(train, "shortcut_bn")(x)
        return nn.relu(y + x)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images, e.g. ResNet-20 (n = 3) or ResNet-32 (n = 5).

    Layout: 3x3 stem conv + BN + ReLU, three stages of ``n`` basic blocks with
    ``16 * width``, ``32 * width`` and ``64 * width`` channels (the first block of stages 2 and
    3 has stride 2), global average pooling and a Dense classifier.

    Returns logits of shape ``(batch, num_classes)``. Works with any spatial size, since the
    head uses global average pooling.

    Attributes:
        depth: ``6n + 2`` layers.
        width: multiplier of every channel count.
        num_classes: outputs of the classifier.
        base_channels: channels of the first stage at ``width = 1``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = CifarResNet(depth=8, base_channels=4, num_classes=3)
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
        >>> model.apply(variables, jnp.zeros((2, 8, 8, 3))).shape
        (2, 3)
    """

    depth: int = 20
    width: int = 1
    num_classes: int = 10
    base_channels: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits ``(batch, num_classes)`` for images ``(batch, height, width, 3)``."""
        if (self.depth - 2) % 6 != 0 or self.depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {self.depth}")
        n = (self.depth - 2) // 6
        c = self.base_channels * self.width
        x = conv(c, 3, name="stem_conv")(x)
        x = nn.relu(batch_norm(train, "stem_bn")(x))
        for stage, mult in enumerate((1, 2, 4), start=1):
            for i in range(n):
                strides = 2 if (stage > 1 and i == 0) else 1
                x = BasicBlock(c * mult, strides, name=f"stage{stage}_block{i}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
