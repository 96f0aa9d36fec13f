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

from dpiat_jax.models.common import (
    BN_EPSILON,
    BN_MOMENTUM,
    batch_norm_factory,
    conv,
    conv_norm_act,
    make_divisible,
)

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
    """Scale a channel count by the width coefficient and round it to a multiple of ``divisor``.

    Args:
        channels: B0's channel count.
        width_coefficient: the variant's width multiplier.
        divisor: the result is a multiple of it.

    Returns:
        The variant's channel count.

    Example:
        >>> round_filters(32, 1.1), round_filters(320, 2.0)
        (32, 640)
    """
    return make_divisible(channels * width_coefficient, divisor)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """Scale a number of blocks by the depth coefficient, rounding up.

    Args:
        repeats: B0's number of blocks in a stage.
        depth_coefficient: the variant's depth multiplier.

    Returns:
        The variant's number of blocks in that stage.

    Example:
        >>> round_repeats(3, 1.1), round_repeats(1, 3.1)
        (4, 4)
    """
    return int(math.ceil(repeats * depth_coefficient))


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: global pool, 1x1 conv reduce + swish, 1x1 conv expand + sigmoid.

    Returns ``x`` rescaled channel-wise by the gate. It is a submodule of its own so that its
    two (biased) 1x1 convs form one unit, as in torchvision.

    Attributes:
        squeeze_channels: width of the bottleneck between the two 1x1 convs.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> block = SqueezeExcitation(2)
        >>> variables = block.init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 8)))
        >>> sorted(variables["params"])
        ['fc1', 'fc2']
        >>> block.apply(variables, jnp.ones((1, 4, 4, 8))).shape
        (1, 4, 4, 8)
    """

    squeeze_channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Return ``x`` ``(batch, height, width, channels)`` gated channel-wise."""
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = conv(self.squeeze_channels, 1, name="fc1", use_bias=True)(s)
        s = nn.swish(s)
        s = conv(x.shape[-1], 1, name="fc2", use_bias=True)(s)
        return x * nn.sigmoid(s)


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation.

    [1x1 expand-BN-swish] - kxk depthwise-BN-swish - SE - 1x1 project-BN. The expansion conv is
    skipped when it would not change the width. The SE bottleneck has ``input_channels // 4``
    channels. With stride 1 and equal widths the block is residual, and during training the
    residual branch is dropped per sample with probability ``drop_rate`` (stochastic depth,
    which needs a ``"dropout"`` rng). Returns the block output.

    Attributes:
        features: output channels.
        kernel_size: side of the depthwise kernel.
        strides: stride of the depthwise convolution.
        expand_ratio: width of the expanded representation over the input width.
        drop_rate: probability of dropping the residual branch during training.
        bn_momentum: Flax momentum of the block's norms.
        bn_epsilon: epsilon of the block's norms.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> block = MBConv(8, expand_ratio=1)
        >>> variables = block.init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 8)))
        >>> sorted(variables["params"])
        ['dw_bn', 'dw_conv', 'project_bn', 'project_conv', 'se']
        >>> block.apply(variables, jnp.ones((1, 4, 4, 8))).shape
        (1, 4, 4, 8)
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    expand_ratio: int = 6
    drop_rate: float = 0.0
    bn_momentum: float = BN_MOMENTUM
    bn_epsilon: float = BN_EPSILON

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return the block output for ``x`` ``(batch, height, width, channels)``."""
        norm = batch_norm_factory(train, self.bn_momentum, self.bn_epsilon)
        in_features = x.shape[-1]
        expanded = make_divisible(in_features * self.expand_ratio, 8)
        k = self.kernel_size
        y = x
        if expanded != in_features:
            y = conv_norm_act(y, expanded, 1, name="expand", norm=norm, activation=nn.swish)
        y = conv_norm_act(
            y, expanded, k, self.strides, name="dw", norm=norm, activation=nn.swish, groups=expanded
        )
        y = SqueezeExcitation(max(1, in_features // 4), name="se")(y)
        y = conv_norm_act(y, self.features, 1, name="project", norm=norm)
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

    Attributes:
        width_coefficient: multiplier of every width.
        depth_coefficient: multiplier of every stage's number of blocks.
        dropout_rate: dropout before the classifier during training.
        num_classes: outputs of the classifier.
        stochastic_depth_prob: drop rate of the last block.
        bn_momentum: Flax momentum of every norm.
        bn_epsilon: epsilon of every norm.
        setting: B0's stage table (see :data:`EFFICIENTNET_B0_SETTING`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = EfficientNet(num_classes=3, setting=((1, 3, 1, 8, 8, 1),))
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
        >>> model.apply(variables, jnp.zeros((2, 8, 8, 3))).shape
        (2, 3)
    """

    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    dropout_rate: float = 0.2
    num_classes: int = 1000
    stochastic_depth_prob: float = 0.2
    bn_momentum: float = BN_MOMENTUM
    bn_epsilon: float = BN_EPSILON
    setting: Sequence[tuple[int, int, int, int, int, int]] = EFFICIENTNET_B0_SETTING

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits ``(batch, num_classes)`` for images ``(batch, height, width, 3)``."""
        norm = batch_norm_factory(train, self.bn_momentum, self.bn_epsilon)
        w, d = self.width_coefficient, self.depth_coefficient
        stem = round_filters(self.setting[0][3], w)
        x = conv_norm_act(x, stem, 3, 2, name="stem", norm=norm, activation=nn.swish)
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
        last = 4 * round_filters(self.setting[-1][4], w)
        x = conv_norm_act(x, last, 1, name="last", norm=norm, activation=nn.swish)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return nn.Dense(self.num_classes, name="head")(x)


def efficientnet(variant: str, **kwargs) -> EfficientNet:
    """Return EfficientNet-``variant`` (``"b0"`` .. ``"b7"``) with torchvision's settings.

    B5..B7 use BatchNorm eps 1e-3 and PyTorch momentum 0.01 (Flax momentum 0.99), as
    torchvision does for the weights ported from TensorFlow; B0..B4 use PyTorch's defaults.

    Args:
        variant: one of the keys of :data:`EFFICIENTNET_PARAMS`.
        **kwargs: override any field of :class:`EfficientNet`.

    Returns:
        An unbound :class:`EfficientNet`.

    Raises:
        ValueError: for an unknown variant.

    Example:
        >>> model = efficientnet("b5", num_classes=10)
        >>> model.width_coefficient, model.bn_momentum, model.num_classes
        (1.6, 0.99, 10)
    """
    if variant not in EFFICIENTNET_PARAMS:
        raise ValueError(f"variant must be one of {sorted(EFFICIENTNET_PARAMS)}, got {variant!r}")
    w, d, p = EFFICIENTNET_PARAMS[variant]
    defaults: dict = dict(width_coefficient=w, depth_coefficient=d, dropout_rate=p)
    if variant in ("b5", "b6", "b7"):
        defaults.update(bn_momentum=0.99, bn_epsilon=1e-3)
    defaults.update(kwargs)
    return EfficientNet(**defaults)
