"""CIFAR ResNets (He et al., 2016, section 4.2): depth 6n + 2, three stages of 16/32/64 channels.

These are the small residual networks the DPIAT paper uses most as sources and targets on
CIFAR-10/100. A width factor multiplies every channel count, so ``depth`` and ``width`` give
the family of depth/width variants that transfer is tested between.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision / PyTorch BatchNorm defaults: momentum 0.1 (Flax: 1 - 0.1), eps 1e-5.
_BN_MOMENTUM = 0.9
_BN_EPS = 1e-5
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity or projection shortcut.

    Returns the block output ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``. The
    shortcut is a 1x1 convolution followed by batch norm whenever the stride or the channel
    count changes (option B of the ResNet paper), and the identity otherwise.
    """

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        needs_projection = self.strides != 1 or x.shape[-1] != self.features
        s = (self.strides, self.strides)
        y = nn.Conv(
            self.features,
            (3, 3),
            s,
            padding=1,
            use_bias=False,
            kernel_init=_CONV_INIT,
            name="conv1",
        )(x)
        y = nn.BatchNorm(
            use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name="bn1"
        )(y)
        y = nn.relu(y)
        y = nn.Conv(
            self.features, (3, 3), padding=1, use_bias=False, kernel_init=_CONV_INIT, name="conv2"
        )(y)
        y = nn.BatchNorm(
            use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name="bn2"
        )(y)
        if needs_projection:
            x = nn.Conv(
                self.features,
                (1, 1),
                s,
                use_bias=False,
                kernel_init=_CONV_INIT,
                name="shortcut_conv",
            )(x)
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=_BN_MOMENTUM,
                epsilon=_BN_EPS,
                name="shortcut_bn",
            )(x)
        return nn.relu(y + x)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images, e.g. ResNet-20 (n = 3) or ResNet-32 (n = 5).

    Layout: 3x3 stem conv + BN + ReLU, three stages of ``n`` basic blocks with
    ``16 * width``, ``32 * width`` and ``64 * width`` channels (the first block of stages 2 and
    3 has stride 2), global average pooling and a Dense classifier.

    Returns logits of shape ``(batch, num_classes)``. Works with any spatial size, since the
    head uses global average pooling.
    """

    depth: int = 20
    width: int = 1
    num_classes: int = 10
    base_channels: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 2) % 6 != 0 or self.depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {self.depth}")
        n = (self.depth - 2) // 6
        c = self.base_channels * self.width
        x = nn.Conv(c, (3, 3), padding=1, use_bias=False, kernel_init=_CONV_INIT, name="stem_conv")(
            x
        )
        x = nn.BatchNorm(
            use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name="stem_bn"
        )(x)
        x = nn.relu(x)
        for stage, mult in enumerate((1, 2, 4), start=1):
            for i in range(n):
                strides = 2 if (stage > 1 and i == 0) else 1
                x = BasicBlock(c * mult, strides, name=f"stage{stage}_block{i}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
