"""MNASNet (Tan et al., 2019) in the torchvision layout (``mnasnet1_0`` for ``alpha = 1``).

A NAS-found mobile network of inverted-residual stacks with 3x3 and 5x5 depthwise kernels.
With 1000 classes and ``alpha = 1`` it has 4,383,312 parameters, as torchvision's
``mnasnet1_0``. It is one of the architectures in the DPIAT paper's method comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision: _BN_MOMENTUM = 1 - 0.9997 (PyTorch convention), i.e. Flax momentum 0.9997.
_BN_MOMENTUM = 0.9997
_BN_EPS = 1e-5
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

MNASNET_DEPTHS: tuple[int, ...] = (32, 16, 24, 40, 80, 96, 192, 320)
"""Channel counts for ``alpha = 1``: stem, separable conv, then the six stacks."""

MNASNET_STACKS: tuple[tuple[int, int, int, int], ...] = (
    # kernel, first stride, expansion factor, repeats
    (3, 2, 3, 3),
    (5, 2, 3, 3),
    (5, 2, 6, 3),
    (3, 1, 6, 2),
    (5, 2, 6, 4),
    (3, 1, 6, 1),
)
"""The six inverted-residual stacks of MNASNet-B1 as laid out by torchvision."""


def round_to_multiple_of(value: float, divisor: int = 8, round_up_bias: float = 0.9) -> int:
    """Round ``value`` to a multiple of ``divisor``, rounding up if it would lose over 10%.

    torchvision's ``_round_to_multiple_of``, needed for the published widths at ``alpha != 1``.
    """
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value if new_value >= round_up_bias * value else new_value + divisor


def _bn(train: bool, name: str) -> nn.BatchNorm:
    """Return a BatchNorm with MNASNet's momentum (PyTorch 0.0003) and eps 1e-5."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name=name
    )


def _conv(features: int, kernel: int, strides: int, name: str, groups: int = 1) -> nn.Conv:
    """Return a bias-free square conv with padding ``kernel // 2`` as in torchvision."""
    p = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        (strides, strides),
        padding=((p, p), (p, p)),
        feature_group_count=groups,
        use_bias=False,
        kernel_init=_CONV_INIT,
        name=name,
    )


class MnasInvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, kxk depthwise-BN-ReLU, 1x1 project-BN; residual if shapes agree.

    Returns the block output.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    expansion: int = 6

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        in_features = x.shape[-1]
        mid = in_features * self.expansion
        y = _conv(mid, 1, 1, "expand_conv")(x)
        y = nn.relu(_bn(train, "expand_bn")(y))
        y = _conv(mid, self.kernel_size, self.strides, "dw_conv", groups=mid)(y)
        y = nn.relu(_bn(train, "dw_bn")(y))
        y = _conv(self.features, 1, 1, "project_conv")(y)
        y = _bn(train, "project_bn")(y)
        if self.strides == 1 and in_features == self.features:
            y = y + x
        return y


class MNASNet(nn.Module):
    """MNASNet with depth multiplier ``alpha`` (1.0 is ``mnasnet1_0``).

    Layout: 3x3/2 conv-BN-ReLU, depthwise-separable conv (3x3 depthwise-BN-ReLU, 1x1-BN), six
    inverted-residual stacks, 1x1 conv to 1280-BN-ReLU, global average pooling, dropout,
    Dense. Returns logits ``(batch, num_classes)``.
    """

    alpha: float = 1.0
    num_classes: int = 1000
    dropout_rate: float = 0.2
    stacks: Sequence[tuple[int, int, int, int]] = MNASNET_STACKS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        depths = [round_to_multiple_of(d * self.alpha, 8) for d in MNASNET_DEPTHS]
        x = _conv(depths[0], 3, 2, "stem_conv")(x)
        x = nn.relu(_bn(train, "stem_bn")(x))
        x = _conv(depths[0], 3, 1, "stem_dw_conv", groups=depths[0])(x)
        x = nn.relu(_bn(train, "stem_dw_bn")(x))
        x = _conv(depths[1], 1, 1, "stem_pw_conv")(x)
        x = _bn(train, "stem_pw_bn")(x)
        for stage, (k, s, e, n) in enumerate(self.stacks, start=1):
            for i in range(n):
                x = MnasInvertedResidual(
                    depths[stage + 1], k, s if i == 0 else 1, e, name=f"stage{stage}_block{i}"
                )(x, train)
        x = _conv(1280, 1, 1, "last_conv")(x)
        x = nn.relu(_bn(train, "last_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return nn.Dense(self.num_classes, name="head")(x)
