"""Building blocks shared by the model zoo: convolutions, batch norms and their pairing.

Every convolutional model of the zoo follows torchvision's conventions: bias-free square
convolutions with He (fan-out) initialisation and "same"-style symmetric padding, each followed
by a BatchNorm with PyTorch's momentum 0.1 (Flax momentum 0.9) and epsilon 1e-5 unless the
architecture says otherwise. Writing them once here keeps the parameter layouts of all models
identical to the published ones and the model files about architecture only.

The helpers are plain functions that construct linen modules; called inside a parent's
``@nn.compact`` method they create submodules of that parent under the given names.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import flax.linen as nn
import jax

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "CONV_INIT",
    "Activation",
    "NormFactory",
    "batch_norm",
    "batch_norm_factory",
    "conv",
    "conv_norm_act",
    "make_divisible",
]

#: He-normal initialisation over the fan-out, as torchvision initialises its convolutions.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

#: PyTorch's default BatchNorm momentum 0.1 in Flax's convention (weight of the old average).
BN_MOMENTUM = 0.9

#: PyTorch's default BatchNorm epsilon.
BN_EPSILON = 1e-5

#: An elementwise activation such as ``nn.relu``.
Activation = Callable[[jax.Array], jax.Array]

#: Builds the normalisation layer named by its argument (see :func:`batch_norm_factory`).
NormFactory = Callable[[str], nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without losing more than 10%.

    This is the channel rounding rule of the TensorFlow/torchvision MobileNet and EfficientNet
    code; it is needed for parameter counts equal to the published models.

    Args:
        value: a scaled channel count.
        divisor: the result is a multiple of it.
        min_value: the smallest result; ``divisor`` when ``None``.

    Returns:
        The rounded channel count.

    Example:
        >>> make_divisible(32 * 1.1), make_divisible(16 * 0.75), make_divisible(10, 8)
        (32, 16, 16)
    """
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def conv(
    features: int,
    kernel: int,
    strides: int = 1,
    *,
    name: str,
    groups: int = 1,
    padding: int | None = None,
    use_bias: bool = False,
) -> nn.Conv:
    """Return a square 2D convolution initialised as torchvision initialises one.

    Args:
        features: number of output channels.
        kernel: side of the square kernel.
        strides: stride along both spatial axes.
        name: the submodule's name in the parent (and so in the parameter tree).
        groups: ``feature_group_count``; the input width for a depthwise convolution.
        padding: symmetric zero padding per side; ``None`` means ``(kernel - 1) // 2``, which
            keeps the spatial size at stride 1 for odd kernels.
        use_bias: whether the convolution has a bias (torchvision's convs before a BatchNorm
            have none).

    Returns:
        An unbound ``nn.Conv``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> layer = conv(4, 3, 2, name="stem_conv")
        >>> variables = layer.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
        >>> variables["params"]["kernel"].shape
        (3, 3, 3, 4)
        >>> layer.apply(variables, jnp.zeros((1, 8, 8, 3))).shape
        (1, 4, 4, 4)
    """
    p = (kernel - 1) // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel, kernel),
        (strides, strides),
        padding=((p, p), (p, p)),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=CONV_INIT,
        name=name,
    )


def batch_norm(
    train: bool, name: str, momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON
) -> nn.BatchNorm:
    """Return a BatchNorm that uses batch statistics when ``train`` and running ones otherwise.

    Args:
        train: whether the model is called in training mode (updates ``batch_stats``).
        name: the submodule's name in the parent.
        momentum: Flax momentum (``1 - `` PyTorch's momentum).
        epsilon: added to the variance.

    Returns:
        An unbound ``nn.BatchNorm``.

    Example:
        >>> norm = batch_norm(False, "bn1")
        >>> norm.momentum, norm.epsilon, norm.use_running_average
        (0.9, 1e-05, True)
    """
    return nn.BatchNorm(
        use_running_average=not train, momentum=momentum, epsilon=epsilon, name=name
    )


def batch_norm_factory(
    train: bool, momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON
) -> NormFactory:
    """Return ``name -> BatchNorm`` with a model's mode and constants fixed.

    A model whose norms all share one momentum and epsilon (e.g. MNASNet's 0.9997) builds
    this once per call and then names each norm only.

    Args:
        train: whether the model is called in training mode.
        momentum: Flax momentum of every norm made.
        epsilon: epsilon of every norm made.

    Returns:
        A function of the norm's name that returns an unbound ``nn.BatchNorm``.

    Example:
        >>> make = batch_norm_factory(True, momentum=0.99)
        >>> norm = make("dw_bn")
        >>> norm.name, norm.momentum, norm.use_running_average
        ('dw_bn', 0.99, False)
    """
    return partial(batch_norm, train, momentum=momentum, epsilon=epsilon)


def conv_norm_act(
    x: jax.Array,
    features: int,
    kernel: int,
    strides: int = 1,
    *,
    name: str,
    norm: NormFactory,
    activation: Activation | None = None,
    groups: int = 1,
    padding: int | None = None,
) -> jax.Array:
    """Apply conv, norm and (optionally) an activation: the unit every mobile block repeats.

    The convolution is named ``f"{name}_conv"`` and the norm ``f"{name}_bn"``, so that a
    parameter tree reads ``stem_conv``, ``stem_bn``, ``dw_conv``, ``dw_bn``... Call it inside a
    parent's ``@nn.compact`` method.

    Args:
        x: input ``(batch, height, width, channels)``.
        features: output channels of the convolution.
        kernel: side of the square kernel.
        strides: stride of the convolution.
        name: prefix of the two submodules' names.
        norm: builds the normalisation from its name (see :func:`batch_norm_factory`).
        activation: applied after the norm; ``None`` leaves the output linear.
        groups: ``feature_group_count`` of the convolution.
        padding: as for :func:`conv`.

    Returns:
        The activated (or linear) normalised convolution of ``x``.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp
        >>> class Stem(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x):
        ...         return conv_norm_act(
        ...             x, 8, 3, 2, name="stem", norm=batch_norm_factory(False), activation=nn.relu
        ...         )
        >>> variables = Stem().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
        >>> sorted(variables["params"])
        ['stem_bn', 'stem_conv']
    """
    y = conv(features, kernel, strides, name=f"{name}_conv", groups=groups, padding=padding)(x)
    y = norm(f"{name}_bn")(y)
    return y if activation is None else activation(y)
