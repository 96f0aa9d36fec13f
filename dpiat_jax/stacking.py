"""Stacked layers: modules whose variables ``nn.scan`` or ``nn.vmap`` stack on an axis.

A transformer written with ``nn.scan`` (MaxText's and T5X's ``scan_layers``) holds one
set of variables for all its layers, each stacked on a leading layer axis; an ``nn.vmap``
ensemble holds its members the same way. Read as they are, every stacked tensor would be
one "layer", and the dynamic programme could not align layer to layer. This module finds
the stacked modules and the axis, so that :func:`dpiat_jax.layers.build_hierarchy` can
unstack them:

* a scanned module becomes one block per step (``layers[0]``, ``layers[1]``...), which
  align like the blocks of an unrolled loop; the planned moves read and write one step
  of the stacked tensors (:class:`~dpiat_jax.variables.TensorMove` ``src_index`` and
  ``dst_index``);
* an ``nn.vmap`` ensemble stays one layer whose members are parallel copies: a single
  source layer seeds every member, and an ensemble seeds a single layer from its first
  member.

The evidence is what the module saw while it ran: inside the transform it sees one
step's slice of each variable (:attr:`~dpiat_jax.layers.ModuleCall.local`), while the
model's variables hold the slices stacked on one extra axis. Under ``nn.vmap`` the slices
are batch tracers (:attr:`~dpiat_jax.layers.ModuleCall.batched`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from dpiat_jax.types import ModulePath, Shape, Variables

__all__ = ["Stack", "StackSite", "find_sites", "inserted_axes", "unstack_tensors"]


@dataclasses.dataclass(frozen=True)
class StackSite:
    """A module whose variables a lifted transform stacks on one axis.

    Attributes:
      root: the stacked module's path.
      axis: the stacking axis of its stacked tensors.
      size: the number of steps (scan) or members (vmap).
      parallel: True for ``nn.vmap`` members, False for ``nn.scan`` steps.
      local: ``(collection, *key relative to root)`` -> one step's shape, for every
        variable below ``root``.
      nested: ``(key, axis)`` for the keys of ``local`` (relative to ``root``) that a
        transform inside this one stacks again (a scan inside a scan), with the inner
        stacking axis of one step's shape: the inner steps are not unstacked.

    >>> StackSite(("layers",), 0, 4, False, {}).size
    4
    """

    root: ModulePath
    axis: int
    size: int
    parallel: bool
    local: Mapping[tuple[str, ...], Shape] = dataclasses.field(compare=False, repr=False)
    nested: frozenset[tuple[tuple[str, ...], int]] = dataclasses.field(
        default=frozenset(), compare=False, repr=False
    )


@dataclasses.dataclass(frozen=True)
class Stack:
    """Where a layer sits in a stacked module (the :attr:`~dpiat_jax.layers.Layer.stack`).

    Attributes:
      root: the stacked module's path; axis: the stacking axis; size: the number of
        steps or members; parallel: ``nn.vmap`` members (True) or ``nn.scan`` steps.
      index: the step this layer is (None for parallel members: the layer stands for
        all of them).
      tensors: the layer's tensors (``"collection/name"``) that carry the axis; others
        are shared by every step.
      nested: ``("collection/name", axis)`` for the layer's tensors that a transform
        inside the stacked module stacks again (a scan inside a scan), with the inner
        axis of one step's shape: they move as one tensor per step of this stack, their
        inner steps cropped or centred as that axis (:attr:`StackSite.nested`).

    >>> Stack(("layers",), 0, 4, False, 2, frozenset({"params/kernel"})).index
    2
    """

    root: ModulePath
    axis: int
    size: int
    parallel: bool
    index: int | None = None
    tensors: frozenset[str] = frozenset()
    nested: frozenset[tuple[str, int]] = frozenset()

    def label(self) -> str:
        """Returns the step's label: ``[2]`` for a scan step, ``[*]`` for members."""
        return "[*]" if self.index is None else f"[{self.index}]"


def inserted_axes(stacked: Shape, local: Shape) -> list[tuple[int, int]]:
    """Returns every ``(axis, size)`` whose insertion into ``local`` gives ``stacked``.

    Args:
      stacked: the shape in the model's variables.
      local: the shape the module saw.

    Returns:
      The candidate axes with their sizes, lowest axis first (empty when ``stacked`` is
      not ``local`` with one axis inserted).

    >>> inserted_axes((4, 3, 8), (3, 8))
    [(0, 4)]
    >>> inserted_axes((3, 3), (3,))
    [(0, 3), (1, 3)]
    """
    stacked, local = tuple(stacked), tuple(local)
    if len(stacked) != len(local) + 1:
        return []
    return [(a, stacked[a]) for a in range(len(stacked)) if stacked[:a] + stacked[a + 1 :] == local]


def _site_axis(
    local: Mapping[tuple[str, ...], Shape], flat: Mapping[tuple[str, ...], Any], path: ModulePath
) -> tuple[int, int] | None:
    """The one ``(axis, size)`` that stacks every differing tensor below ``path``."""
    common: set[tuple[int, int]] | None = None
    for (collection, *rel), shape in local.items():
        value = flat.get((collection, *path, *rel))
        if value is None or tuple(np.shape(value)) == tuple(shape):
            continue
        options = set(inserted_axes(np.shape(value), shape))
        common = options if common is None else common & options
        if not common:
            return None
    return None if not common else min(common)


def find_sites(calls: Iterable[Any], variables: Variables) -> dict[ModulePath, StackSite]:
    """Finds the outermost stacked modules of a trace.

    Args:
      calls: the recorded :class:`~dpiat_jax.layers.ModuleCall` records (with the
        ``local`` shapes each module saw).
      variables: the model's variables (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
      Module path -> :class:`StackSite`, for every module whose variables are its local
      ones stacked on one extra axis and that no other stacked module contains.

    >>> from dpiat_jax.layers import ModuleCall
    >>> import flax.linen as nn
    >>> calls = [ModuleCall(("layers",), nn.Dense, {}, {("params", "kernel"): (3, 8)})]
    >>> variables = {"params": {"layers": {"kernel": jax.ShapeDtypeStruct((4, 3, 8), "f4")}}}
    >>> find_sites(calls, variables)
    {('layers',): StackSite(root=('layers',), axis=0, size=4, parallel=False)}
    """
    flat = {
        tuple(str(k) for k in key): v
        for key, v in traverse_util.flatten_dict(dict(variables)).items()
    }
    sites: dict[ModulePath, StackSite] = {}
    for call in calls:
        path = tuple(call.path)
        if not path or not call.local or any(path[:k] in sites for k in range(1, len(path))):
            continue
        found = _site_axis(call.local, flat, path)
        if found is not None:
            sites[path] = StackSite(path, found[0], found[1], bool(call.batched), call.local)
    return {root: _with_nested(site, calls) for root, site in sites.items()}


def _with_nested(site: StackSite, calls: Iterable[Any]) -> StackSite:
    """``site`` with the variables that a module below it saw stacked once more."""
    nested = set()
    for call in calls:
        path = tuple(call.path)
        if len(path) <= len(site.root) or path[: len(site.root)] != site.root:
            continue
        for (collection, *rel), shape in (call.local or {}).items():
            key = (collection, *path[len(site.root) :], *rel)
            step = site.local.get(key)
            inner = [] if step is None else inserted_axes(step, shape)
            if inner:
                nested.add((key, inner[0][0]))
    return dataclasses.replace(site, nested=frozenset(nested)) if nested else site


def unstack_tensors(
    site: StackSite, path: ModulePath, tensors: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, dict[str, jax.ShapeDtypeStruct]], frozenset[str], frozenset[str]]:
    """Returns one step's view of a module's tensors below a stacked site.

    Args:
      site: the stacked module.
      path: the module's path (``site.root`` or below it).
      tensors: collection -> name -> the stacked arrays (or shape structs).

    Returns:
      ``(tensors, stacked, nested)``: collection -> name -> ``jax.ShapeDtypeStruct`` of
      one step (no array is sliced: the moves index the stacked arrays when applied),
      the ``"collection/name"`` of the tensors that carry the stacking axis, and of those
      that a transform inside the site stacks again (:attr:`StackSite.nested`).

    >>> site = StackSite(("s",), 0, 4, False, {("params", "kernel"): (3, 8)})
    >>> one, stacked, nested = unstack_tensors(site, ("s",),
    ...     {"params": {"kernel": jax.ShapeDtypeStruct((4, 3, 8), "float32")}})
    >>> one["params"]["kernel"].shape, sorted(stacked), sorted(nested)
    ((3, 8), ['params/kernel'], [])
    """
    rel = tuple(path[len(site.root) :])
    out: dict[str, dict[str, jax.ShapeDtypeStruct]] = {}
    stacked: set[str] = set()
    nested: set[tuple[str, int]] = set()
    inner = dict(site.nested)
    for collection, group in tensors.items():
        for name, value in group.items():
            shape = tuple(np.shape(value))
            key = (collection, *rel, *name.split("/"))
            local = site.local.get(key)
            if local is not None and (site.axis, site.size) in inserted_axes(shape, local):
                shape = tuple(local)
                stacked.add(f"{collection}/{name}")
                if key in inner:
                    nested.add((f"{collection}/{name}", inner[key]))
            out.setdefault(collection, {})[name] = jax.ShapeDtypeStruct(shape, value.dtype)
    return out, frozenset(stacked), frozenset(nested)
