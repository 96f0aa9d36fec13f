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

from dpiat_jax.models.common import BN_EPSILON, batch_norm_factory, conv_norm_act

#: torchvision's MNASNet BatchNorm momentum 1 - 0.9997 (PyTorch convention) in Flax's convention.
MNASNET_BN_MOMENTUM = 0.9997

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

    Args:
        value: a scaled channel count.
        divisor: the result is a multiple of it.
        round_up_bias: round up when the nearest multiple is below this share of ``value``.

    Returns:
        The rounded channel count.

    Example:
        >>> round_to_multiple_of(32 * 0.75), round_to_multiple_of(20)
        (24, 24)
    """
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value if new_value >= round_up_bias * value else new_value + divisor


class MnasInvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, kxk depthwise-BN-ReLU, 1x1 project-BN; residual if shapes agree.

    Returns the block output.

    Attributes:
        features: output channels.
        kernel_size: side of the depthwise kernel (3 or 5 in MNASNet).
        strides: stride of the depthwise convolution.
        expansion: width of the expanded representation over the input width.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> block = MnasInvertedResidual(8, expansion=3)
        >>> variables = block.init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 8)))
        >>> sorted(variables["params"])
        ['dw_bn', 'dw_conv', 'expand_bn', 'expand_conv', 'project_bn', 'project_conv']
        >>> block.apply(variables, jnp.ones((1, 4, 4, 8))).shape
        (1, 4, 4, 8)
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    expansion: int = 6

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return the block output for ``x`` ``(batch, height, width, channels)``."""
        norm = batch_norm_factory(train, MNASNET_BN_MOMENTUM, BN_EPSILON)
        in_features = x.shape[-1]
        mid = in_features * self.expansion
        k = self.kernel_size
        y = conv_norm_act(x, mid, 1, name="expand", norm=norm, activation=nn.relu)
        # torchvision pads MNASNet's depthwise convs by kernel // 2.
        y = conv_norm_act(
            y,
            mid,
            k,
            self.strides,
            name="dw",
            norm=norm,
            activation=nn.relu,
            groups=mid,
            padding=k // 2,
        )
        y = conv_norm_act(y, self.features, 1, name="project", norm=norm)
        if self.strides == 1 and in_features == self.features:
            y = y + x
        return y


class MNASNet(nn.Module):
    """MNASNet with depth multiplier ``alpha`` (1.0 is ``mnasnet1_0``).

    Layout: 3x3/2 conv-BN-ReLU, depthwise-separable conv (3x3 depthwise-BN-ReLU, 1x1-BN), six
    inverted-residual stacks, 1x1 conv to 1280-BN-ReLU, global average pooling, dropout,
    Dense. Returns logits ``(batch, num_classes)``.

    Attributes:
        alpha: depth multiplier of every width but the last conv's.
        num_classes: outputs of the classifier.
        dropout_rate: dropout before the classifier during training.
        stacks: ``(kernel, first stride, expansion, repeats)`` of each stack.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = MNASNet(alpha=0.25, num_classes=3, stacks=((3, 2, 3, 1),))
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
        >>> model.apply(variables, jnp.zeros((2, 8, 8, 3))).shape
        (2, 3)
    """

    alpha: float = 1.0
    num_classes: int = 1000
    dropout_rate: float = 0.2
    stacks: Sequence[tuple[int, int, int, int]] = MNASNET_STACKS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits ``(batch, num_classes)`` for images ``(batch, height, width, 3)``."""
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        norm = batch_norm_factory(train, MNASNET_BN_MOMENTUM, BN_EPSILON)
        depths = [round_to_multiple_of(d * self.alpha, 8) for d in MNASNET_DEPTHS]
        x = conv_norm_act(x, depths[0], 3, 2, name="stem", norm=norm, activation=nn.relu)
        x = conv_norm_act(
            x, depths[0], 3, name="stem_dw", norm=norm, activation=nn.relu, groups=depths[0]
        )
        x = conv_norm_act(x, depths[1], 1, name="stem_pw", norm=norm)
        for stage, (k, s, e, n) in enumerate(self.stacks, start=1):
            for i in range(n):
                x = MnasInvertedResidual(
                    depths[stage + 1], k, s if i == 0 else 1, e, name=f"stage{stage}_block{i}"
                )(x, train)
        x = conv_norm_act(x, 1280, 1, name="last", norm=norm, activation=nn.relu)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return nn.Dense(self.num_classes, name="head")(x)
