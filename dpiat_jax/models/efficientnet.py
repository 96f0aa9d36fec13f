"""EfficientNet-B0..B7 (Tan & Le, 2019) in the torchvision layout.

MBConv blocks (1x1 expansion, depthwise kxk, squeeze-and-excitation, linear 1x1 projection)
with swish activations. B1..B7 scale B0's widths (``round_filters``: multiply and round to a
multiple of 8) and depths (``round_repeats``: multiply and round up). B0 with 1000 classes
has 5,288,548 parameters, as torchvision's ``efficientnet_b0``. The DPIAT paper transfers
between EfficientNets of different sizes and between EfficientNets and ResNets/MNASNets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiat_jax.models.mobilenet_v2 import make_divisible

_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

EFFICIENTNET_B0_SETTING: tuple[tuple[int, int, int, int, int, int], ...] = (
    # expand ratio, kernel, first stride, input channels, output channels, repeats
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
"""The EfficientNet-B0 stage table (before compound scaling)."""

EFFICIENTNET_PARAMS: dict[str, tuple[float, float, float]] = {
    # name: (width coefficient, depth coefficient, dropout rate)
    "b0": (1.0, 1.0, 0.2),
    "b1": (1.0, 1.1, 0.2),
    "b2": (1.1, 1.2, 0.3),
    "b3": (1.2, 1.4, 0.3),
    "b4": (1.4, 1.8, 0.4),
    "b5": (1.6, 2.2, 0.4),
    "b6": (1.8, 2.6, 0.5),
    "b7": (2.0, 3.1, 0.5),
}
"""Compound scaling coefficients of B0..B7."""


def round_filters(channels: int, width_coefficient: float, divisor: int = 8) -> int:
    """Scale a channel count by the width coefficient and round it to a multiple of ``divisor``."""
    return make_divisible(channels * width_coefficient, divisor)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """Scale a number of blocks by the depth coefficient, rounding up."""
    return int(math.ceil(repeats * depth_coefficient))


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


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: global pool, 1x1 conv reduce + swish, 1x1 conv expand + sigmoid.

    Returns ``x`` rescaled channel-wise by the gate. It is a submodule of its own so that its
    two (biased) 1x1 convs form one unit, as in torchvision.
    """

    squeeze_channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.Conv(self.squeeze_channels, (1, 1), kernel_init=_CONV_INIT, name="fc1")(s)
        s = nn.swish(s)
        s = nn.Conv(x.shape[-1], (1, 1), kernel_init=_CONV_INIT, name="fc2")(s)
        return x * nn.sigmoid(s)


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation.

    [1x1 expand-BN-swish] - kxk depthwise-BN-swish - SE - 1x1 project-BN. The expansion conv is
    skipped when it would not change the width. The SE bottleneck has ``input_channels // 4``
    channels. With stride 1 and equal widths the block is residual, and during training the
    residual branch is dropped per sample with probability ``drop_rate`` (stochastic depth,
    which needs a ``"dropout"`` rng). Returns the block output.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    expand_ratio: int = 6
    drop_rate: float = 0.0
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def bn(name: str) -> nn.BatchNorm:
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                name=name,
            )

        in_features = x.shape[-1]
        expanded = make_divisible(in_features * self.expand_ratio, 8)
        y = x
        if expanded != in_features:
            y = _conv(expanded, 1, 1, "expand_conv")(y)
            y = nn.swish(bn("expand_bn")(y))
        y = _conv(expanded, self.kernel_size, self.strides, "dw_conv", groups=expanded)(y)
        y = nn.swish(bn("dw_bn")(y))
        y = SqueezeExcitation(max(1, in_features // 4), name="se")(y)
        y = _conv(self.features, 1, 1, "project_conv")(y)
        y = bn("project_bn")(y)
        if self.strides == 1 and in_features == self.features:
            if train and self.drop_rate > 0:
                keep = 1.0 - self.drop_rate
                mask = jax.random.bernoulli(
                    self.make_rng("dropout"), keep, (y.shape[0],) + (1,) * (y.ndim - 1)
                )
                y = jnp.where(mask, y / keep, 0.0)
            y = y + x
        return y


class EfficientNet(nn.Module):
    """EfficientNet with compound scaling.

    3x3/2 stem conv (32 scaled channels) + BN + swish, seven MBConv stages (widths scaled by
    ``width_coefficient``, repeats by ``depth_coefficient``), 1x1 conv to ``4 * last width``
    (1280 for B0) + BN + swish, global average pooling, dropout, Dense. Stochastic depth rates
    grow linearly from 0 to ``stochastic_depth_prob`` over the blocks. Returns logits
    ``(batch, num_classes)``.
    """

    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    dropout_rate: float = 0.2
    num_classes: int = 1000
    stochastic_depth_prob: float = 0.2
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    setting: Sequence[tuple[int, int, int, int, int, int]] = EFFICIENTNET_B0_SETTING

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def bn(name: str) -> nn.BatchNorm:
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                name=name,
            )

        w, d = self.width_coefficient, self.depth_coefficient
        x = _conv(round_filters(self.setting[0][3], w), 3, 2, "stem_conv")(x)
        x = nn.swish(bn("stem_bn")(x))
        total = sum(round_repeats(row[5], d) for row in self.setting)
        block_id = 0
        for stage, (t, k, s, _, c_out, n) in enumerate(self.setting, start=1):
            out = round_filters(c_out, w)
            for i in range(round_repeats(n, d)):
                x = MBConv(
                    out,
                    k,
                    s if i == 0 else 1,
                    t,
                    drop_rate=self.stochastic_depth_prob * block_id / total,
                    bn_momentum=self.bn_momentum,
                    bn_epsilon=self.bn_epsilon,
                    name=f"stage{stage}_block{i}",
                )(x, train)
                block_id += 1
        x = _conv(4 * round_filters(self.setting[-1][4], w), 1, 1, "last_conv")(x)
        x = nn.swish(bn("last_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return nn.Dense(self.num_classes, name="head")(x)


def efficientnet(variant: str, **kwargs) -> EfficientNet:
    """Return EfficientNet-``variant`` (``"b0"`` .. ``"b7"``) with torchvision's settings.

    B5..B7 use BatchNorm eps 1e-3 and PyTorch momentum 0.01 (Flax momentum 0.99), as
    torchvision does for the weights ported from TensorFlow; B0..B4 use PyTorch's defaults.
    ``kwargs`` override any field.
    """
    if variant not in EFFICIENTNET_PARAMS:
        raise ValueError(f"variant must be one of {sorted(EFFICIENTNET_PARAMS)}, got {variant!r}")
    w, d, p = EFFICIENTNET_PARAMS[variant]
    defaults: dict = dict(width_coefficient=w, depth_coefficient=d, dropout_rate=p)
    if variant in ("b5", "b6", "b7"):
        defaults.update(bn_momentum=0.99, bn_epsilon=1e-3)
    defaults.update(kwargs)
    return EfficientNet(**defaults)
