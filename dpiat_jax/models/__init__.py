"""Flax linen model zoo: the architectures DPIAT transfers between.

Every model is called as ``model.apply(variables, x, train=...)`` with NHWC images (``(N, L)``
or ``(N, L, C)`` for :class:`CNN1D` and :class:`ResNet1D`, anything flattenable for
:class:`MLP`) and returns logits ``(batch, num_classes)``. ``train=True`` updates batch
statistics (pass ``mutable=["batch_stats"]``) and enables dropout / stochastic depth (pass a
``"dropout"`` rng).

:data:`MODELS` maps names to constructors of named configurations; :func:`get_model` builds
one, with keyword overrides of any field (e.g. ``get_model("resnet18", num_classes=10)``).
ImageNet architectures default to 1000 classes, the others to 10.

:class:`GPT`, a byte-level decoder for the language-model growth experiment, takes token
ids ``(batch, length)`` and returns next-token logits; it is not in :data:`MODELS`, whose
members are classifiers.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import flax.linen as nn

from dpiat_jax.models.cifar_resnet import BasicBlock as CifarBasicBlock
from dpiat_jax.models.cifar_resnet import CifarResNet
from dpiat_jax.models.cnn1d import CNN1D
from dpiat_jax.models.common import make_divisible
from dpiat_jax.models.efficientnet import (
    EFFICIENTNET_PARAMS,
    EfficientNet,
    MBConv,
    SqueezeExcitation,
    efficientnet,
    round_filters,
    round_repeats,
)
from dpiat_jax.models.gpt import GPT
from dpiat_jax.models.mlp import MLP
from dpiat_jax.models.mnasnet import MnasInvertedResidual, MNASNet
from dpiat_jax.models.mobilenet_v2 import InvertedResidual, MobileNetV2
from dpiat_jax.models.resnet import RESNET_STAGES, BasicBlock, Bottleneck, ResNet, resnet
from dpiat_jax.models.resnet1d import BasicBlock1D, ResNet1D
from dpiat_jax.models.vgg import VGG, VGG_CONFIGS
from dpiat_jax.models.vit import EncoderBlock, ViT
from dpiat_jax.models.wide_resnet import WideBasicBlock, WideResNet


def _build_registry() -> dict[str, Callable[..., nn.Module]]:
    """Return the name -> constructor table of named configurations."""
    models: dict[str, Callable[..., nn.Module]] = {}
    for depth in (14, 20, 26, 32, 44, 56, 110):
        models[f"cifar_resnet{depth}"] = partial(CifarResNet, depth=depth)
        if depth <= 32:
            models[f"cifar_resnet{depth}_w2"] = partial(CifarResNet, depth=depth, width=2)
    models["cifar_resnet20_w4"] = partial(CifarResNet, depth=20, width=4)
    for depth in RESNET_STAGES:
        models[f"resnet{depth}"] = partial(resnet, depth)
    models["wide_resnet16_4"] = partial(WideResNet, depth=16, widen_factor=4)
    models["wide_resnet16_8"] = partial(WideResNet, depth=16, widen_factor=8)
    models["wide_resnet28_10"] = partial(WideResNet, depth=28, widen_factor=10)
    models["mobilenet_v2"] = MobileNetV2
    for variant in EFFICIENTNET_PARAMS:
        models[f"efficientnet_{variant}"] = partial(efficientnet, variant)
    models["mnasnet"] = partial(MNASNet, alpha=1.0)
    models["mnasnet1_0"] = models["mnasnet"]
    models["vgg11"] = partial(VGG, cfg=VGG_CONFIGS["vgg11"])
    models["vgg13"] = partial(VGG, cfg=VGG_CONFIGS["vgg13"])
    models["vgg16"] = partial(VGG, cfg=VGG_CONFIGS["vgg16"])
    models["vgg_small"] = partial(VGG, cfg=VGG_CONFIGS["vgg_small"])
    models["mlp"] = MLP
    models["cnn1d"] = CNN1D
    models["resnet1d"] = ResNet1D
    models["vit_tiny"] = partial(ViT, patch_size=4, dim=192, depth=12, num_heads=3, mlp_dim=768)
    return models


MODELS: dict[str, Callable[..., nn.Module]] = _build_registry()
"""Named model configurations: ``MODELS[name](**overrides)`` returns an unbound module."""


def get_model(name: str, **overrides: object) -> nn.Module:
    """Return the model registered as ``name``, with fields in ``overrides`` replaced.

    Args:
        name: a key of :data:`MODELS`.
        **overrides: fields of the model's dataclass to replace.

    Returns:
        An unbound linen module.

    Raises:
        ValueError: listing the valid names when ``name`` is unknown.

    Example:
        >>> model = get_model("cifar_resnet20", num_classes=100)
        >>> type(model).__name__, model.depth, model.num_classes
        ('CifarResNet', 20, 100)
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[name](**overrides)


__all__ = [
    "CNN1D",
    "ResNet1D",
    "EFFICIENTNET_PARAMS",
    "MLP",
    "MNASNet",
    "MODELS",
    "RESNET_STAGES",
    "VGG",
    "VGG_CONFIGS",
    "BasicBlock",
    "BasicBlock1D",
    "Bottleneck",
    "CifarBasicBlock",
    "CifarResNet",
    "EfficientNet",
    "EncoderBlock",
    "GPT",
    "InvertedResidual",
    "MBConv",
    "MnasInvertedResidual",
    "MobileNetV2",
    "ResNet",
    "SqueezeExcitation",
    "ViT",
    "WideBasicBlock",
    "WideResNet",
    "efficientnet",
    "get_model",
    "make_divisible",
    "resnet",
    "round_filters",
    "round_repeats",
]
