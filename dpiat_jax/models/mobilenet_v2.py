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

from dpiat_jax.models.common import batch_norm_factory, conv_norm_act, make_divisible

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


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand-BN-ReLU6] - 3x3 depthwise-BN-ReLU6 - 1x1 project-BN.

    The expansion conv is omitted when ``expand_ratio == 1``. The residual connection is used
    when the stride is 1 and input and output widths match. Returns the block output (linear,
    no activation after the projection).

    Attributes:
        features: output channels.
        strides: stride of the depthwise convolution.
        expand_ratio: width of the expanded representation over the input width.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> block = InvertedResidual(8, strides=2)
        >>> variables = block.init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 4)))
        >>> sorted(variables["params"])
        ['dw_bn', 'dw_conv', 'expand_bn', 'expand_conv', 'project_bn', 'project_conv']
        >>> block.apply(variables, jnp.ones((1, 8, 8, 4))).shape
        (1, 4, 4, 8)
    """

    features: int
    strides: int = 1
    expand_ratio: int = 6

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return the block output for ``x`` ``(batch, height, width, channels)``."""
        norm = batch_norm_factory(train)
        in_features = x.shape[-1]
        hidden = int(round(in_features * self.expand_ratio))
        y = x
        if self.expand_ratio != 1:
            y = conv_norm_act(y, hidden, 1, name="expand", norm=norm, activation=nn.relu6)
        y = conv_norm_act(
            y, hidden, 3, self.strides, name="dw", norm=norm, activation=nn.relu6, groups=hidden
        )
        y = conv_norm_act(y, self.features, 1, name="project", norm=norm)
        if self.strides == 1 and in_features == self.features:
            y = y + x
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2: 3x3/2 stem, inverted residual stages, 1x1 conv to 1280, pool, dropout, Dense.

    ``width_mult`` scales every width (rounded to multiples of 8; the last conv never shrinks
    below 1280). ``setting`` is the (t, c, n, s) table. Returns logits ``(batch,
    num_classes)``.

    Attributes:
        num_classes: outputs of the classifier.
        width_mult: multiplier of every width.
        dropout_rate: dropout before the classifier during training.
        setting: the ``(t, c, n, s)`` rows of the stages.
        round_nearest: widths are rounded to multiples of this.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = MobileNetV2(num_classes=3, width_mult=0.25, setting=((1, 16, 1, 1),))
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
        >>> model.apply(variables, jnp.zeros((2, 8, 8, 3))).shape
        (2, 3)
    """

    num_classes: int = 1000
    width_mult: float = 1.0
    dropout_rate: float = 0.2
    setting: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTING
    round_nearest: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits ``(batch, num_classes)`` for images ``(batch, height, width, 3)``."""
        norm = batch_norm_factory(train)
        input_channels = make_divisible(32 * self.width_mult, self.round_nearest)
        last_channels = make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)
        x = conv_norm_act(x, input_channels, 3, 2, name="stem", norm=norm, activation=nn.relu6)
        for stage, (t, c, n, s) in enumerate(self.setting, start=1):
            out = make_divisible(c * self.width_mult, self.round_nearest)
            for i in range(n):
                x = InvertedResidual(out, s if i == 0 else 1, t, name=f"stage{stage}_block{i}")(
                    x, train
                )
        x = conv_norm_act(x, last_channels, 1, name="last", norm=norm, activation=nn.relu6)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="head")(x)
