"""Kinds: the vocabulary of layer kinds, in one place (design.md, "Layers").

A layer's *kind* decides what it may match: two layers (or two
:class:`~dpiat_jax.spec.LayerSpec` leaves) can only match when their kinds are equal. The
kinds the library gives a Flax module (:func:`dpiat_jax.layers.layer_kind`):

* ``conv1d``, ``conv2d``, ``conv3d`` (:func:`conv`), ``depthwise_conv2d``... (one input
  channel per group, :func:`depthwise_conv`), ``conv_transpose2d``...
  (:func:`conv_transpose`): a conv only matches a conv of the same family and spatial rank;
* ``dense``, ``dense_general``, ``embed``;
* ``batch_norm``, ``layer_norm``, ``group_norm``, ``rms_norm`` (:data:`NORMS`): a norm
  only matches a norm of the same family;
* ``own:<Class>`` (:func:`own`): the parameters a module owns beside its submodules (a
  class token, a positional embedding) as a pseudo-layer of that module;
* ``none`` (:data:`PLACEHOLDER`): a parameter-free module (Dropout, a pooling module);
* otherwise the module's class name: an unknown kind only matches the same class.

The predicates here are what the stages ask of a kind (the blocks rules, the channel
graph, positional embeddings); nothing else in the library compares kind strings.
"""

from __future__ import annotations

__all__ = [
    "BATCH_NORM",
    "DENSE",
    "DENSE_GENERAL",
    "DIMENSIONAL_KINDS",
    "EMBED",
    "GROUP_NORM",
    "LAYER_NORM",
    "NORMS",
    "OWN_PREFIX",
    "PLACEHOLDER",
    "RMS_NORM",
    "conv",
    "conv_transpose",
    "depthwise_conv",
    "is_conv",
    "is_conv_or_dense",
    "is_depthwise_conv",
    "is_dimensional",
    "is_norm",
    "is_own",
    "is_placeholder",
    "may_be_positional",
    "own",
]

#: The kind of a placeholder: a parameter-free module that keeps a position in the
#: sequence and scores 0 against everything.
PLACEHOLDER = "none"

#: ``flax.linen.Dense`` / ``flax.nnx.Linear``.
DENSE = "dense"
#: ``flax.linen.DenseGeneral`` / ``flax.nnx.LinearGeneral``.
DENSE_GENERAL = "dense_general"
#: ``flax.linen.Embed`` / ``flax.nnx.Embed``.
EMBED = "embed"

#: ``BatchNorm``.
BATCH_NORM = "batch_norm"
#: ``LayerNorm``.
LAYER_NORM = "layer_norm"
#: ``GroupNorm``.
GROUP_NORM = "group_norm"
#: ``RMSNorm``.
RMS_NORM = "rms_norm"
#: The norm kinds, one per family.
NORMS = (BATCH_NORM, LAYER_NORM, GROUP_NORM, RMS_NORM)

#: The prefix of a pseudo-layer's kind (``own:<Class>``).
OWN_PREFIX = "own:"

#: Substrings that make a kind "dimensional" (conv, dense) for the blocks rules.
DIMENSIONAL_KINDS = ("conv", "dense", "einsum")

_CONV = "conv"
_DEPTHWISE_CONV = "depthwise_conv"
_CONV_TRANSPOSE = "conv_transpose"
# Kinds whose tensors are never positional embeddings (prefixes: ``conv`` also covers
# ``conv_transpose``, ``dense`` also ``dense_general``).
_NOT_POSITIONAL = (_CONV, DENSE, _DEPTHWISE_CONV, *NORMS)


def conv(rank: int) -> str:
    """Returns the kind of a convolution with ``rank`` spatial dimensions.

    Args:
      rank: the number of spatial dimensions (the kernel's rank minus two).

    Returns:
      ``"conv{rank}d"``.

    >>> conv(2)
    'conv2d'
    """
    return f"{_CONV}{rank}d"


def depthwise_conv(rank: int) -> str:
    """Returns the kind of a depthwise convolution (one input channel per group).

    Args:
      rank: the number of spatial dimensions.

    Returns:
      ``"depthwise_conv{rank}d"``.

    >>> depthwise_conv(1)
    'depthwise_conv1d'
    """
    return f"{_DEPTHWISE_CONV}{rank}d"


def conv_transpose(rank: int) -> str:
    """Returns the kind of a transposed convolution.

    Args:
      rank: the number of spatial dimensions.

    Returns:
      ``"conv_transpose{rank}d"``.

    >>> conv_transpose(3)
    'conv_transpose3d'
    """
    return f"{_CONV_TRANSPOSE}{rank}d"


def own(class_name: str) -> str:
    """Returns the kind of the pseudo-layer of a module's own parameters.

    A module with submodules may also create parameters itself (``self.param``: a class
    token, a positional embedding); they form one pseudo-layer, which only matches the
    pseudo-layer of a module of the same class.

    Args:
      class_name: the owning module's class name.

    Returns:
      ``"own:<class_name>"``.

    >>> own("ViT")
    'own:ViT'
    """
    return f"{OWN_PREFIX}{class_name}"


def is_own(kind: str) -> bool:
    """Whether ``kind`` is a pseudo-layer's (:func:`own`).

    Args:
      kind: a layer kind.

    Returns:
      True for ``own:<Class>``.

    >>> is_own("own:ViT"), is_own("dense")
    (True, False)
    """
    return kind.startswith(OWN_PREFIX)


def is_placeholder(kind: str) -> bool:
    """Whether ``kind`` is the placeholder kind (:data:`PLACEHOLDER`).

    Args:
      kind: a layer kind.

    Returns:
      True for ``"none"``.

    >>> is_placeholder(PLACEHOLDER)
    True
    """
    return kind == PLACEHOLDER


def is_norm(kind: str) -> bool:
    """Whether ``kind`` is a norm (:data:`NORMS`).

    Args:
      kind: a layer kind.

    Returns:
      True for ``batch_norm``, ``layer_norm``, ``group_norm`` and ``rms_norm``.

    >>> is_norm("layer_norm"), is_norm("LayerNormish")
    (True, False)
    """
    return kind in NORMS


def is_depthwise_conv(kind: str) -> bool:
    """Whether ``kind`` is a depthwise convolution (:func:`depthwise_conv`).

    Args:
      kind: a layer kind.

    Returns:
      True for ``depthwise_conv{n}d``.

    >>> is_depthwise_conv("depthwise_conv2d"), is_depthwise_conv("conv2d")
    (True, False)
    """
    return kind.startswith(_DEPTHWISE_CONV)


def is_conv(kind: str) -> bool:
    """Whether ``kind`` is a (non-depthwise) convolution, transposed ones included.

    Args:
      kind: a layer kind.

    Returns:
      True for ``conv{n}d`` and ``conv_transpose{n}d`` (any kind starting with ``conv``).

    >>> is_conv("conv_transpose1d"), is_conv("depthwise_conv2d")
    (True, False)
    """
    return kind.startswith(_CONV)


def is_conv_or_dense(kind: str) -> bool:
    """Whether ``kind`` has a kernel ``(..., inputs, outputs)``: a conv or a dense layer.

    These are the layers whose kernel opens a channel space for its outputs and joins
    its inputs to the incoming one (:func:`dpiat_jax.channels.call_order_channels`);
    ``dense_general`` (any number of input and output dimensions) is not one of them.

    Args:
      kind: a layer kind.

    Returns:
      True for :func:`is_conv` kinds and for ``dense`` (any kind starting with
      ``dense`` except ``dense_general``).

    >>> is_conv_or_dense("dense"), is_conv_or_dense("dense_general")
    (True, False)
    """
    return kind.startswith((_CONV, DENSE)) and kind != DENSE_GENERAL


def is_dimensional(kind: str) -> bool:
    """Whether a layer of this kind is a conv or dense layer (design.md, blocks rule 3).

    The test is by substring (:data:`DIMENSIONAL_KINDS`, case-insensitive), so a user
    kind such as ``"Conv2D"`` or ``"einsum_dense"`` counts too; a pseudo-layer
    (:func:`own`) never does.

    Args:
      kind: a layer kind (any string).

    Returns:
      True when ``kind`` contains ``conv``, ``dense`` or ``einsum`` and is not ``own:``.

    >>> is_dimensional("depthwise_conv2d"), is_dimensional("batch_norm")
    (True, False)
    """
    k = kind.lower()
    return any(token in k for token in DIMENSIONAL_KINDS) and not k.startswith(OWN_PREFIX)


def may_be_positional(kind: str) -> bool:
    """Whether a layer of this kind may hold a positional embedding.

    Convs, dense layers and norms never do; an embedding, a pseudo-layer (a ViT's
    ``pos_embedding`` created with ``self.param``) or an unknown class may
    (:func:`dpiat_jax.tensors.is_positional_embedding` then looks at the tensor).

    Args:
      kind: a layer kind.

    Returns:
      False for conv, depthwise conv, transposed conv, dense, dense_general and norm
      kinds; True otherwise.

    >>> may_be_positional("own:ViT"), may_be_positional("layer_norm")
    (True, False)
    """
    return not kind.startswith(_NOT_POSITIONAL)
