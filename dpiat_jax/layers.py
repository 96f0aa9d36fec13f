"""Layers: the parametrised leaf modules of a Flax model, in call order (design.md, "Layers").

:func:`build_hierarchy` turns the module calls that a trace adapter recorded
(:mod:`dpiat_jax.trace`: linen or NNX) and the model's variables into a
:class:`ModuleNode` hierarchy whose leaves are :class:`Layer` records; :func:`layers`
lists those leaves in call order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
from flax import traverse_util

from dpiat_jax.spec import LayerSpec

__all__ = [
    "Layer",
    "ModuleCall",
    "ModuleNode",
    "build_hierarchy",
    "group_variables",
    "iter_layers",
    "layer_kind",
    "layers",
]

ModulePath = tuple[str, ...]
Tensors = Mapping[str, Mapping[str, Any]]  # collection -> tensor name -> array

_NORMS = {
    nn.BatchNorm: "batch_norm",
    nn.LayerNorm: "layer_norm",
    nn.GroupNorm: "group_norm",
    nn.RMSNorm: "rms_norm",
}
_MAIN_TENSORS = ("kernel", "embedding", "scale", "bias")


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """One layer (or placeholder, or pseudo-layer) of a Flax model.

    Attributes:
      path: the module path from the root (``("stage1", "Conv_0")``); a pseudo-layer has
        its owning module's path.
      kind: what it may match: ``conv2d``, ``depthwise_conv2d``, ``conv_transpose1d``,
        ``dense``, ``dense_general``, ``embed``, ``batch_norm``, ``layer_norm``,
        ``group_norm``, ``rms_norm``, ``own:<Class>`` for parameters a module owns beside
        its submodules, ``none`` for a placeholder, otherwise the class name.
      type_name: the module's class name.
      tensors: collection -> tensor name -> array (or ``jax.ShapeDtypeStruct``); tensor
        names are relative to ``path`` (``"kernel"``, or ``"sub/x"`` for nested dicts).
      main: the name of the principal tensor in ``params`` ("" for a placeholder).
    """

    path: ModulePath
    kind: str
    type_name: str
    tensors: Tensors
    main: str

    @property
    def is_placeholder(self) -> bool:
        """True for a parameter-free module (Dropout, a pooling module...)."""
        return not self.main

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the main tensor (empty for a placeholder)."""
        if not self.main:
            return ()
        for group in self.tensors.values():
            if self.main in group:
                return tuple(group[self.main].shape)
        return ()

    @property
    def spec(self) -> LayerSpec:
        """The :class:`LayerSpec` the alignment sees (a zero-size tensor counts as none)."""
        shape = self.shape
        if not shape or min(shape) <= 0:
            return LayerSpec("none", ())
        return LayerSpec(self.kind, shape)

    @property
    def name(self) -> str:
        """The module path joined with ``/`` (``"<root>"`` for the root)."""
        return "/".join(self.path) or "<root>"

    def num_params(self) -> int:
        """The number of scalars this layer owns in all collections."""
        return sum(int(_size(t)) for group in self.tensors.values() for t in group.values())


@dataclasses.dataclass(frozen=True, eq=False)
class ModuleNode:
    """A module with submodules: its children (nodes and layers) in call order."""

    path: ModulePath
    type_name: str
    children: tuple[ModuleNode | Layer, ...]


def _size(x: Any) -> int:
    n = 1
    for d in x.shape:
        n *= int(d)
    return n


def layer_kind(module_type: type, attrs: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """Returns the kind of a leaf module from its class, attributes and parameters.

    See :class:`Layer` for the kind strings; a conv with one input channel per group
    is depthwise.
    """
    kernel = params.get("kernel")
    ndim = len(kernel.shape) if kernel is not None else None
    module_type = _linen_equivalent(module_type)
    if issubclass(module_type, nn.ConvTranspose):
        return f"conv_transpose{(ndim or 3) - 2}d"
    if issubclass(module_type, nn.Conv):
        rank = (ndim or 4) - 2
        groups = attrs.get("feature_group_count", 1) or 1
        depthwise = groups > 1 and kernel is not None and kernel.shape[-2] == 1
        return f"depthwise_conv{rank}d" if depthwise else f"conv{rank}d"
    if issubclass(module_type, nn.Dense):
        return "dense"
    if issubclass(module_type, nn.DenseGeneral):
        return "dense_general"
    if issubclass(module_type, nn.Embed):
        return "embed"
    for cls, kind in _NORMS.items():
        if issubclass(module_type, cls):
            return kind
    return module_type.__name__


def _linen_equivalent(module_type: type) -> type:
    """Maps a Flax NNX layer class to the linen class with the same kind rules."""
    if module_type.__module__.startswith("flax.nnx"):
        from flax import nnx

        table = [
            (nnx.ConvTranspose, nn.ConvTranspose),
            (nnx.Conv, nn.Conv),
            (nnx.Linear, nn.Dense),
            (nnx.LinearGeneral, nn.DenseGeneral),
            (nnx.Embed, nn.Embed),
            (nnx.BatchNorm, nn.BatchNorm),
            (nnx.LayerNorm, nn.LayerNorm),
            (nnx.GroupNorm, nn.GroupNorm),
            (nnx.RMSNorm, nn.RMSNorm),
        ]
        for nnx_cls, linen_cls in table:
            if issubclass(module_type, nnx_cls):
                return linen_cls
    return module_type


def _main_tensor(params: Mapping[str, Any], others: Mapping[str, Mapping[str, Any]]) -> str:
    """Picks the principal tensor: kernel, embedding, scale, bias, else the largest."""
    for name in _MAIN_TENSORS:
        if name in params:
            return name
    if params:
        return max(params, key=lambda k: (_size(params[k]), k))
    pool = {k: v for group in others.values() for k, v in group.items()}
    return max(pool, key=lambda k: (_size(pool[k]), k)) if pool else ""


@dataclasses.dataclass(frozen=True)
class ModuleCall:
    """One module as a trace adapter saw it called (:mod:`dpiat_jax.trace`).

    Attributes:
      path: the module path from the root.
      module_type: the module's class.
      attrs: the attributes the kind rules need (``feature_group_count``).
    """

    path: ModulePath
    module_type: type
    attrs: Mapping[str, Any]


def group_variables(
    variables: Mapping[str, Any], module_paths: list[ModulePath]
) -> dict[ModulePath, dict[str, dict[str, Any]]]:
    """Assigns every variable to the deepest recorded module whose path prefixes its key.

    Returns module path -> collection -> tensor name (relative, ``/``-joined) -> array.
    """
    known = set(module_paths)
    out: dict[ModulePath, dict[str, dict[str, Any]]] = {}
    for collection, tree in variables.items():
        if not isinstance(tree, Mapping):
            continue
        for key, value in traverse_util.flatten_dict(tree).items():
            key = tuple(str(k) for k in key)
            owner = ()
            for cut in range(len(key) - 1, -1, -1):
                if key[:cut] in known:
                    owner = key[:cut]
                    break
            name = "/".join(key[len(owner) :])
            out.setdefault(owner, {}).setdefault(collection, {})[name] = value
    return out


def build_hierarchy(calls: list[ModuleCall], variables: Mapping[str, Any]) -> ModuleNode:
    """Builds the module tree (children in call order) with layers at its leaves."""
    paths = [c.path for c in calls]
    if () not in paths:
        paths.insert(0, ())
        calls = [ModuleCall((), nn.Module, {}), *calls]
    grouped = group_variables(variables, paths)
    by_path = {c.path: c for c in calls}
    children: dict[ModulePath, list[ModulePath]] = {p: [] for p in paths}
    for p in paths:
        if p:
            parent = p[:-1]
            while parent not in children:
                parent = parent[:-1]
            children[parent].append(p)

    def leaf(path: ModulePath, call: ModuleCall, tensors: dict, kind: str | None = None) -> Layer:
        params = tensors.get("params", {})
        main = _main_tensor(params, tensors)
        if kind is None:
            kind = layer_kind(call.module_type, call.attrs, params) if main else "none"
        return Layer(path, kind, call.module_type.__name__, tensors, main)

    def node(path: ModulePath) -> ModuleNode | Layer:
        call = by_path[path]
        own = grouped.get(path, {})
        if not children[path]:
            return leaf(path, call, own)
        kids: list[ModuleNode | Layer] = []
        if own:
            kids.append(leaf(path, call, own, kind=f"own:{call.module_type.__name__}"))
        kids.extend(node(c) for c in children[path])
        return ModuleNode(path, call.module_type.__name__, tuple(kids))

    root = node(())
    if isinstance(root, Layer):
        return ModuleNode((), root.type_name, (root,))
    return root


def iter_layers(node: ModuleNode | Layer):
    """Yields the layers (placeholders included) under ``node`` in call order."""
    if isinstance(node, Layer):
        yield node
        return
    for child in node.children:
        yield from iter_layers(child)


def layers(node: ModuleNode) -> list[Layer]:
    """Returns the layers and placeholders of a traced model in call order."""
    return list(iter_layers(node))
