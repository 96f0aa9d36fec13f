"""MobileNetV2 (Sandler et al., 2018) in the torchvision layout.

Inverted residual blocks (1x1 expansion, 3x3 depthwise conv via ``feature_group_count``,
linear 1x1 projection) with a width multiplier. With 1000 classes it has 3,504,872
parameters, as torchvision's ``mobilenet_v2``. It is here as a depthwise-separable target or
source for transfer from and to ResNets and EfficientNets.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
_BN_EPS = 1e-5
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

MOBILENET_V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    # expand ratio t, output channels c, repeats n, first stride s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
"""The (t, c, n, s) table of the MobileNetV2 paper."""


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without losing more than 10%.

    This is the channel rounding rule of the TensorFlow/torchvision MobileNet and EfficientNet
    code; it is needed for parameter counts equal to the published models.
    """
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def _bn(train: bool, name: str) -> nn.BatchNorm:
    """Return a BatchNorm with PyTorch's default momentum and epsilon."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name=name
    )


def _conv(features: int, kernel: int, strides: int, name: str, groups: int = 1) -> nn.Conv:
    """Return a bias-free square conv with symmetric padding ``(kernel - 1) // 2``."""
    p = (kernel - 1) // 2
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


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand-BN-ReLU6] - 3x3 depthwise-BN-ReLU6 - 1x1 project-BN.

    The expansion conv is omitted when ``expand_ratio == 1``. The residual connection is used
    when the stride is 1 and input and output widths match. Returns the block output (linear,
    no activation after the projection).
    """

    features: int
    strides: int = 1
    expand_ratio: int = 6

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        in_features = x.shape[-1]
        hidden = int(round(in_features * self.expand_ratio))
        y = x
        if self.expand_ratio != 1:
            y = _conv(hidden, 1, 1, "expand_conv")(y)
            y = nn.relu6(_bn(train, "expand_bn")(y))
        y = _conv(hidden, 3, self.strides, "dw_conv", groups=hidden)(y)
        y = nn.relu6(_bn(train, "dw_bn")(y))
        y = _conv(self.features, 1, 1, "project_conv")(y)
        y = _bn(train, "project_bn")(y)
        if self.strides == 1 and in_features == self.features:
            y = y + x
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2: 3x3/2 stem, inverted residual stages, 1x1 conv to 1280, pool, dropout, Dense.

    ``width_mult`` scales every width (rounded to multiples of 8; the last conv never shrinks
    below 1280). ``setting`` is the (t, c, n, s) table. Returns logits ``(batch,
    num_classes)``.
    """

    num_classes: int = 1000
    width_mult: float = 1.0
    dropout_rate: float = 0.2
    setting: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTING
    round_nearest: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        input_channels = make_divisible(32 * self.width_mult, self.round_nearest)
        last_channels = make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)
        x = _conv(input_channels, 3, 2, "stem_conv")(x)
        x = nn.relu6(_bn(train, "stem_bn")(x))
        for stage, (t, c, n, s) in enumerate(self.setting, start=1):
            out = make_divisible(c * self.width_mult, self.round_nearest)
            for i in range(n):
                x = InvertedResidual(out, s if i == 0 else 1, t, name=f"stage{stage}_block{i}")(
                    x, train
                )
        x = _conv(last_channels, 1, 1, "last_conv")(x)
        x = nn.relu6(_bn(train, "last_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="head")(x)
