"""A small 1D residual network for sequence data such as MNIST-1D.

The CIFAR ResNet layout (He et al., 2016) with 1D convolutions: a stem convolution, stages of
basic blocks (two convolutions with batch norm, an identity or projection shortcut; the first
block of every stage after the first halves the length), global average pooling and a Dense
classifier. It is the zoo's third family for 1D inputs, beside :class:`~.cnn1d.CNN1D` (plain
convolutions) and :class:`~.mlp.MLP`, so that 1D experiments have transfers across three
families.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiat_jax.models.common import CONV_INIT, batch_norm


def _conv1d(features: int, kernel: int, strides: int, name: str) -> nn.Conv:
    """A 1D convolution without bias (a BatchNorm follows), length kept at stride 1."""
    p = (kernel - 1) // 2
    return nn.Conv(
        features, (kernel,), (strides,), padding=((p, p),), use_bias=False,
        kernel_init=CONV_INIT, name=name,
    )  # fmt: skip


class BasicBlock1D(nn.Module):
    """Two 1D convolutions with batch norm and an identity or projection shortcut.

    Returns ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a
    1-wide convolution and batch norm when the stride or the width changes.

    Attributes:
        features: output channels of both convolutions.
        strides: stride of the first convolution and of the projection.
        kernel_size: length of both kernels.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> block = BasicBlock1D(8, strides=2)
        >>> variables = block.init(jax.random.PRNGKey(0), jnp.ones((1, 40, 4)))
        >>> block.apply(variables, jnp.ones((1, 40, 4))).shape
        (1, 20, 8)
    """

    features: int
    strides: int = 1
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return the block output for ``x`` ``(batch, length, channels)``."""
        needs_projection = self.strides != 1 or x.shape[-1] != self.features
        y = _conv1d(self.features, self.kernel_size, self.strides, "conv1")(x)
        y = nn.relu(batch_norm(train, "bn1")(y))
        y = _conv1d(self.features, self.kernel_size, 1, "conv2")(y)
        y = batch_norm(train, "bn2")(y)
        if needs_projection:
            x = _conv1d(self.features, 1, self.strides, "shortcut_conv")(x)
            x = batch_norm(train, "shortcut_bn")(x)
        return nn.relu(y + x)


class ResNet1D(nn.Module):
    """Stem convolution, stages of :class:`BasicBlock1D`, global average pooling, Dense head.

    Accepts ``(batch, length)`` (a channel axis is added) or ``(batch, length, channels)``;
    returns logits ``(batch, num_classes)``.

    Attributes:
        stage_sizes: blocks per stage.
        channels: width of each stage (the stem has the first stage's width).
        kernel_size: length of the stem's and the blocks' kernels.
        num_classes: outputs of the classifier.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = ResNet1D(stage_sizes=(1, 1), channels=(4, 8), num_classes=3)
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 40)))
        >>> model.apply(variables, jnp.zeros((2, 40))).shape
        (2, 3)
    """

    stage_sizes: Sequence[int] = (2, 2)
    channels: Sequence[int] = (32, 64)
    kernel_size: int = 3
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Return logits ``(batch, num_classes)`` for ``(batch, length[, channels])``."""
        if len(self.stage_sizes) != len(self.channels):
            raise ValueError(
                f"ResNet1D needs one width per stage: stage_sizes {tuple(self.stage_sizes)}, "
                f"channels {tuple(self.channels)}."
            )
        if x.ndim == 2:
            x = x[..., None]
        x = _conv1d(self.channels[0], self.kernel_size, 1, "stem_conv")(x)
        x = nn.relu(batch_norm(train, "stem_bn")(x))
        for stage, (n, c) in enumerate(zip(self.stage_sizes, self.channels), start=1):
            for i in range(n):
                strides = 2 if (stage > 1 and i == 0) else 1
                x = BasicBlock1D(c, strides, self.kernel_size, name=f"stage{stage}_block{i}")(
                    x, train
                )
        x = jnp.mean(x, axis=1)
        return nn.Dense(self.num_classes, name="head")(x)
