"""The fallback channel graph: from the target's layers in call order.

:func:`call_order_channels` walks the (matched) target layers in call order: a conv or
dense kernel's last dimension opens a new space (its output, also its bias's), its
second-to-last joins the current space (its input), norms join the current space, a
depthwise conv keeps it, an ``Embed`` opens one; a (non-depthwise) kernel's input
dimension consumes its space; other layers (``DenseGeneral``,
pseudo-layers of module-owned parameters, unknown kinds) are left to the rule's
per-tensor behaviour, and a ``DenseGeneral`` or unknown layer breaks the chain. It sees
neither residual adds nor branches, and only the layers it is given.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from dpiat_jax import kinds
from dpiat_jax.channels.graph import ChannelGraph, TensorKey
from dpiat_jax.layers import Layer

__all__ = ["call_order_channels"]


@dataclasses.dataclass(frozen=True)
class _Current:
    """The space the next layer's input joins, and its size."""

    space: int
    size: int


# What one layer adds: key -> (per dimension the space, per dimension producer or not).
_Entries = dict[TensorKey, tuple[tuple[int | None, ...], tuple[bool, ...]]]


def _consumes(entry_key: TensorKey, axes: tuple[int | None, ...], kernels: set) -> tuple:
    """Per dimension whether it is a conv or dense kernel's input dimension."""
    return tuple(entry_key in kernels and i == len(axes) - 2 for i in range(len(axes)))


def _key(layer: Layer, collection: str, name: str) -> TensorKey:
    return (collection, *layer.path, *name.split("/"))


def _tensors(layer: Layer) -> list[tuple[str, str, Any]]:
    return [(c, n, t) for c, g in layer.tensors.items() for n, t in g.items()]


def _join(current: _Current | None, size: int, counter: Iterator[int]) -> int:
    """The current space when its size is ``size``, else a new one."""
    if current is not None and current.size == size:
        return current.space
    return next(counter)


def _is_main_output(layer: Layer, name: str, shape: tuple[int, ...]) -> tuple[bool, ...]:
    """Per dimension: the last dimension of the main tensor produces its space."""
    return tuple(name == layer.main and i == len(shape) - 1 for i in range(len(shape)))


def _depthwise(
    layer: Layer, current: _Current | None, counter: Iterator[int]
) -> tuple[_Entries, _Current | None]:
    """A depthwise conv keeps the incoming space on every tensor's last dimension."""
    kernel = layer.tensors.get("params", {}).get(layer.main)
    size = kernel.shape[-1]
    out = _join(current, size, counter)
    entries: _Entries = {}
    for c, n, t in _tensors(layer):
        axes: list[int | None] = [None] * len(t.shape)
        if t.shape and t.shape[-1] == size:
            axes[-1] = out
        entries[_key(layer, c, n)] = (tuple(axes), _is_main_output(layer, n, t.shape))
    return entries, _Current(out, size)


def _conv_or_dense(
    layer: Layer, current: _Current | None, counter: Iterator[int]
) -> tuple[_Entries, _Current | None]:
    """A kernel ``(..., in, out)``: ``in`` joins the current space, ``out`` opens one
    (shared by the vectors of that size, the bias)."""
    kernel = layer.tensors.get("params", {}).get(layer.main)
    if kernel is None or len(kernel.shape) < 2:
        return {}, None
    size_in, size_out = kernel.shape[-2], kernel.shape[-1]
    inp, out = _join(current, size_in, counter), next(counter)
    entries: _Entries = {}
    for c, n, t in _tensors(layer):
        axes: list[int | None] = [None] * len(t.shape)
        if n == layer.main:
            axes[-2:] = [inp, out]
        elif len(t.shape) == 1 and t.shape[0] == size_out:
            axes[0] = out
        entries[_key(layer, c, n)] = (tuple(axes), _is_main_output(layer, n, t.shape))
    return entries, _Current(out, size_out)


def _embed(
    layer: Layer, current: _Current | None, counter: Iterator[int]
) -> tuple[_Entries, _Current | None]:
    """An embedding table ``(vocab, features)`` opens a space for its features."""
    del current
    table = layer.tensors.get("params", {}).get(layer.main)
    out = next(counter)
    entries = {_key(layer, "params", layer.main): ((None, out), (False, True))}
    return entries, _Current(out, table.shape[-1])


def _norm(
    layer: Layer, current: _Current | None, counter: Iterator[int]
) -> tuple[_Entries, _Current | None]:
    """A norm's vectors (scale, bias, mean, var) join the current space."""
    tensors = _tensors(layer)
    sizes = {t.shape[0] for _, _, t in tensors if len(t.shape) == 1}
    if len(sizes) != 1:
        return {}, None
    size = sizes.pop()
    space = _join(current, size, counter)
    entries: _Entries = {
        _key(layer, c, n): ((space,), (False,)) for c, n, t in tensors if len(t.shape) == 1
    }
    return entries, _Current(space, size)


def _layer_entries(
    layer: Layer, current: _Current | None, counter: Iterator[int]
) -> tuple[_Entries, _Current | None]:
    """What one layer adds to the graph, and the space the next layer's input joins."""
    kind = layer.kind
    if kinds.is_depthwise_conv(kind):
        return _depthwise(layer, current, counter)
    if kinds.is_conv_or_dense(kind):
        return _conv_or_dense(layer, current, counter)
    if kind == kinds.EMBED:
        return _embed(layer, current, counter)
    if kinds.is_norm(kind):
        return _norm(layer, current, counter)
    if kinds.is_own(kind):
        return {}, current  # module-owned parameters: no effect on the chain
    return {}, None  # unknown data flow: do not tie the next layer's input


def call_order_channels(layers: Sequence[Layer]) -> ChannelGraph:
    """Returns a :class:`ChannelGraph` from target layers in call order.

    The rules are in the module notes; placeholders are skipped.

    Args:
      layers: :class:`~dpiat_jax.layers.Layer` records in call order (the matched
        target layers, or all of them).

    Returns:
      A graph with ``method="call order"`` that knows the tensors of the conv, dense,
      depthwise conv, embedding and norm layers among ``layers``.

    >>> import jax.numpy as jnp
    >>> from dpiat_jax.layers import Layer
    >>> fc = Layer(("fc",), "dense", "Dense",
    ...            {"params": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}}, "kernel")
    >>> norm = Layer(("norm",), "layer_norm", "LayerNorm", {"params": {"scale": jnp.ones(4)}},
    ...              "scale")
    >>> graph = call_order_channels([fc, norm])
    >>> graph.spaces[("params", "fc", "kernel")], graph.spaces[("params", "norm", "scale")]
    ((0, 1), (1,))
    """
    counter = itertools.count()
    spaces: dict[TensorKey, tuple[int | None, ...]] = {}
    producers: dict[TensorKey, tuple[bool, ...]] = {}
    consumers: dict[TensorKey, tuple[bool, ...]] = {}
    current: _Current | None = None
    for layer in layers:
        if layer.is_placeholder:
            continue
        entries, current = _layer_entries(layer, current, counter)
        kernels = set()
        if kinds.is_conv_or_dense(layer.kind) and not kinds.is_depthwise_conv(layer.kind):
            kernels = {_key(layer, "params", layer.main)}
        for key, (axes, prods) in entries.items():
            spaces[key], producers[key] = axes, prods
            consumers[key] = _consumes(key, axes, kernels)
    return ChannelGraph(spaces, producers, "call order", consumers)
