"""Wide ResNets for CIFAR (Zagoruyko & Komodakis, 2016): WRN-d-k with pre-activation blocks.

WRN-d-k has ``n = (d - 4) / 6`` blocks in each of three groups of ``16k``, ``32k`` and
``64k`` channels. It exists here as a wide (few, broad layers) counterpart of the deep, thin
CIFAR ResNets, e.g. WRN-16-4 and WRN-28-10.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
_BN_EPS = 1e-5
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus shortcut.

    When the width or stride changes, the shortcut is a 1x1 convolution of the pre-activated
    input (as in the reference implementation); otherwise it is the identity. Dropout (between
    the two convolutions) is only created when ``dropout_rate > 0``. Returns the block output
    (not activated: the next block or the final BN-ReLU does that).
    """

    features: int
    strides: int = 1
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        projection = self.strides != 1 or x.shape[-1] != self.features
        s = (self.strides, self.strides)
        a = nn.BatchNorm(
            use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name="bn1"
        )(x)
        a = nn.relu(a)
        y = nn.Conv(
            self.features,
            (3, 3),
            s,
            padding=1,
            use_bias=False,
            kernel_init=_CONV_INIT,
            name="conv1",
        )(a)
        y = nn.BatchNorm(
            use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name="bn2"
        )(y)
        y = nn.relu(y)
        if self.dropout_rate > 0:
            y = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(y)
        y = nn.Conv(
            self.features, (3, 3), padding=1, use_bias=False, kernel_init=_CONV_INIT, name="conv2"
        )(y)
        if projection:
            x = nn.Conv(
                self.features,
                (1, 1),
                s,
                use_bias=False,
                kernel_init=_CONV_INIT,
                name="shortcut_conv",
            )(a)
        return y + x


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for CIFAR.

    Layout: 3x3 stem conv (16 channels), three groups of pre-activation blocks (stride 2 at the
    start of groups 2 and 3), final BN-ReLU, global average pooling, Dense. Returns logits
    ``(batch, num_classes)``.
    """

    depth: int = 28
    widen_factor: int = 10
    dropout_rate: float = 0.0
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 4) % 6 != 0 or self.depth < 10:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {self.depth}")
        n = (self.depth - 4) // 6
        x = nn.Conv(
            16, (3, 3), padding=1, use_bias=False, kernel_init=_CONV_INIT, name="stem_conv"
        )(x)
        for group, base in enumerate((16, 32, 64), start=1):
            for i in range(n):
                strides = 2 if (group > 1 and i == 0) else 1
                x = WideBasicBlock(
                    base * self.widen_factor,
                    strides,
                    self.dropout_rate,
                    name=f"stage{group}_block{i}",
                )(x, train)
        x = nn.BatchNorm(
            use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name="final_bn"
        )(x)
        x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
