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

from dpiat_jax.models.common import batch_norm, conv


class BasicBlock(nn.Module):
    """ResNet-18/34 block: conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU.

    ``features`` is the block's output width (expansion 1). A 1x1 conv + BN projection
    (torchvision's ``downsample``) is used when the stride or width changes. Returns the
    block output.

    Attributes:
        features: width of the block.
        strides: stride of the first convolution and of the projection.
        expansion: output width over ``features`` (1).

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
    expansion: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return the block output for ``x`` ``(batch, height, width, channels)``."""
        out_features = self.features * self.expansion
        y = conv(self.features, 3, self.strides, name="conv1")(x)
        y = nn.relu(batch_norm(train, "bn1")(y))
        y = conv(self.features, 3, 1, name="conv2")(y)
        y = batch_norm(train, "bn2")(y)
        if self.strides != 1 or x.shape[-1] != out_features:
            x = conv(out_features, 1, self.strides, name="shortcut_conv")(x)
            x = batch_norm(train, "shortcut_bn")(x)
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """ResNet-50/101/152 block: 1x1 reduce, 3x3 (carrying the stride), 1x1 expand (x4).

    ``features`` is the bottleneck width; the output has ``features * expansion`` channels.
    A 1x1 conv + BN projection shortcut is used when the stride or width changes. Returns the
    block output.

    Attributes:
        features: bottleneck width.
        strides: stride of the 3x3 convolution and of the projection.
        expansion: output width over ``features`` (4).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> block = Bottleneck(4)
        >>> variables = block.init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 16)))
        >>> sorted(variables["params"])
        ['bn1', 'bn2', 'bn3', 'conv1', 'conv2', 'conv3']
        >>> block.apply(variables, jnp.ones((1, 8, 8, 16))).shape
        (1, 8, 8, 16)
    """

    features: int
    strides: int = 1
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return the block output for ``x`` ``(batch, height, width, channels)``."""
        out_features = self.features * self.expansion
        y = conv(self.features, 1, 1, name="conv1")(x)
        y = nn.relu(batch_norm(train, "bn1")(y))
        y = conv(self.features, 3, self.strides, name="conv2")(y)
        y = nn.relu(batch_norm(train, "bn2")(y))
        y = conv(out_features, 1, 1, name="conv3")(y)
        y = batch_norm(train, "bn3")(y)
        if self.strides != 1 or x.shape[-1] != out_features:
            x = conv(out_features, 1, self.strides, name="shortcut_conv")(x)
            x = batch_norm(train, "shortcut_bn")(x)
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

    Attributes:
        stage_sizes: number of blocks of each stage.
        block: ``"basic"`` or ``"bottleneck"``.
        num_classes: outputs of the classifier.
        width: base channels of the first stage.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = ResNet(stage_sizes=(1,), width=4, num_classes=3)
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
        >>> model.apply(variables, jnp.zeros((2, 32, 32, 3))).shape
        (2, 3)
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    num_classes: int = 1000
    width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits ``(batch, num_classes)`` for images ``(batch, height, width, 3)``."""
        if self.block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {self.block!r}")
        block_cls = _BLOCKS[self.block]
        x = conv(self.width, 7, 2, name="stem_conv")(x)
        x = nn.relu(batch_norm(train, "stem_bn")(x))
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

    Args:
        depth: one of the keys of :data:`RESNET_STAGES`.
        **kwargs: override any field, including ``stage_sizes`` and ``block``.

    Returns:
        An unbound :class:`ResNet`.

    Raises:
        ValueError: for a depth without a standard layout.

    Example:
        >>> model = resnet(50, num_classes=10)
        >>> model.block, tuple(model.stage_sizes), model.num_classes
        ('bottleneck', (3, 4, 6, 3), 10)
    """
    if depth not in RESNET_STAGES:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_STAGES)}, got {depth}")
    block, stages = RESNET_STAGES[depth]
    return ResNet(**{"stage_sizes": stages, "block": block, **kwargs})
