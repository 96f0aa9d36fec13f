"""ImageNet ResNets (He et al., 2016) in the torchvision layout: ResNet-18/34/50/101/152.

ResNet-18/34 stack :class:`BasicBlock` (two 3x3 convs); ResNet-50/101/152 stack
:class:`Bottleneck` (1x1, 3x3, 1x1 with 4x expansion, stride on the 3x3 as in torchvision
"ResNet v1.5"). Parameter counts equal torchvision's (ResNet-18: 11,689,512; ResNet-50:
25,557,032 with 1000 classes), so these are the reference large-scale sources/targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
_BN_EPS = 1e-5
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _bn(train: bool, name: str) -> nn.BatchNorm:
    """Return a torchvision-equivalent BatchNorm (momentum 0.1, eps 1e-5) named ``name``."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name=name
    )


def _conv(features: int, kernel: int, strides: int, name: str) -> nn.Conv:
    """Return a bias-free square convolution with torchvision padding ``(kernel - 1) // 2``."""
    p = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        (strides, strides),
        padding=((p, p), (p, p)),
        use_bias=False,
        kernel_init=_CONV_INIT,
        name=name,
    )


class BasicBlock(nn.Module):
    """ResNet-18/34 block: conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU.

    ``features`` is the block's output width (expansion 1). A 1x1 conv + BN projection
    (torchvision's ``downsample``) is used when the stride or width changes. Returns the
    block output.
    """

    features: int
    strides: int = 1
    expansion: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out_features = self.features * self.expansion
        y = _conv(self.features, 3, self.strides, "conv1")(x)
        y = nn.relu(_bn(train, "bn1")(y))
        y = _conv(self.features, 3, 1, "conv2")(y)
        y = _bn(train, "bn2")(y)
        if self.strides != 1 or x.shape[-1] != out_features:
            x = _conv(out_features, 1, self.strides, "shortcut_conv")(x)
            x = _bn(train, "shortcut_bn")(x)
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """ResNet-50/101/152 block: 1x1 reduce, 3x3 (carrying the stride), 1x1 expand (x4).

    ``features`` is the bottleneck width; the output has ``features * expansion`` channels.
    A 1x1 conv + BN projection shortcut is used when the stride or width changes. Returns the
    block output.
    """

    features: int
    strides: int = 1
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out_features = self.features * self.expansion
        y = _conv(self.features, 1, 1, "conv1")(x)
        y = nn.relu(_bn(train, "bn1")(y))
        y = _conv(self.features, 3, self.strides, "conv2")(y)
        y = nn.relu(_bn(train, "bn2")(y))
        y = _conv(out_features, 1, 1, "conv3")(y)
        y = _bn(train, "bn3")(y)
        if self.strides != 1 or x.shape[-1] != out_features:
            x = _conv(out_features, 1, self.strides, "shortcut_conv")(x)
            x = _bn(train, "shortcut_bn")(x)
        return nn.relu(y + x)


_BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}

RESNET_STAGES: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
"""Block type and number of blocks per stage for each standard depth."""


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem conv + BN + ReLU + 3x3/2 max pool, four stages, pool, Dense.

    ``stage_sizes`` gives the number of blocks per stage and ``block`` their type (``"basic"``
    or ``"bottleneck"``); stage ``i`` has ``width * 2**i`` base channels (64 by default) and
    stages 2-4 start with stride 2. Returns logits ``(batch, num_classes)``; global average
    pooling makes any input size of at least 32x32 work.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    num_classes: int = 1000
    width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {self.block!r}")
        block_cls = _BLOCKS[self.block]
        x = _conv(self.width, 7, 2, "stem_conv")(x)
        x = nn.relu(_bn(train, "stem_bn")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, n_blocks in enumerate(self.stage_sizes):
            for i in range(n_blocks):
                strides = 2 if (stage > 0 and i == 0) else 1
                x = block_cls(self.width * 2**stage, strides, name=f"stage{stage + 1}_block{i}")(
                    x, train
                )
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def resnet(depth: int, **kwargs) -> ResNet:
    """Return the standard ResNet of the given depth (18, 34, 50, 101 or 152).

    ``kwargs`` override any field, including ``stage_sizes`` and ``block``.
    """
    if depth not in RESNET_STAGES:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_STAGES)}, got {depth}")
    block, stages = RESNET_STAGES[depth]
    return ResNet(**{"stage_sizes": stages, "block": block, **kwargs})
