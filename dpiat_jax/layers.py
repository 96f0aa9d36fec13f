"""Layers: the parametrised leaf modules of a Flax model, in call order (design.md, "Layers").

:func:`build_hierarchy` turns the module calls that a trace adapter recorded
(:mod:`dpiat_jax.trace`: linen or NNX) and the model's variables into a
:class:`ModuleNode` hierarchy whose leaves are :class:`Layer` records; :func:`layers`
lists those leaves in call order. What a layer may match is its *kind*
(:func:`layer_kind`, vocabulary in :mod:`dpiat_jax.kinds`).

Both records compare and hash by value: a layer by its path, kind, class name and main
tensor name (never by its arrays), a node by its path, class name and children. So two
traces of one model give equal records, and a stage may key a dict by a layer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
from flax import traverse_util

from dpiat_jax import kinds
from dpiat_jax.spec import LayerSpec
from dpiat_jax.stacking import Stack, StackSite, find_sites, unstack_tensors
from dpiat_jax.types import ModulePath, Shape, Variables

__all__ = [
    "Layer",
    "ModuleCall",
    "ModuleNode",
    "ModulePath",
    "Tensors",
    "build_hierarchy",
    "group_variables",
    "iter_layers",
    "layer_kind",
    "layers",
    "split_steps",
]

#: A layer's tensors: collection -> tensor name -> array (or ``jax.ShapeDtypeStruct``).
Tensors = Mapping[str, Mapping[str, Any]]

# linen class -> norm kind (NNX classes are mapped to linen ones first).
_NORMS = {
    nn.BatchNorm: kinds.BATCH_NORM,
    nn.LayerNorm: kinds.LAYER_NORM,
    nn.GroupNorm: kinds.GROUP_NORM,
    nn.RMSNorm: kinds.RMS_NORM,
}
_MAIN_TENSORS = ("kernel", "embedding", "scale", "bias")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer (or placeholder, or pseudo-layer) of a Flax model.

    Records compare and hash by ``path``, ``kind``, ``type_name`` and ``main``; the
    arrays in ``tensors`` take no part.

    Attributes:
      path: the module path from the root (``("stage1", "Conv_0")``); a pseudo-layer has
        its owning module's path.
      kind: what it may match (:mod:`dpiat_jax.kinds`): ``conv2d``, ``depthwise_conv2d``,
        ``conv_transpose1d``, ``dense``, ``dense_general``, ``embed``, ``batch_norm``,
        ``layer_norm``, ``group_norm``, ``rms_norm``, ``own:<Class>`` for parameters a
        module owns beside its submodules, ``none`` for a placeholder, otherwise the
        class name.
      type_name: the module's class name.
      tensors: collection -> tensor name -> array (or ``jax.ShapeDtypeStruct``); tensor
        names are relative to ``path`` (``"kernel"``, or ``"sub/x"`` for nested dicts).
      main: the name of the principal tensor in ``params`` ("" for a placeholder).
      stack: where the layer sits in a module stacked by ``nn.scan`` / ``nn.vmap``
        (:mod:`dpiat_jax.stacking`); its ``tensors`` then hold one step's shapes.

    >>> import jax.numpy as jnp
    >>> layer = Layer(("Dense_0",), "dense", "Dense", {"params": {"kernel": jnp.zeros((3, 4))}},
    ...               "kernel")
    >>> layer.name, layer.shape, layer.num_params()
    ('Dense_0', (3, 4), 12)
    >>> layer == Layer(("Dense_0",), "dense", "Dense", {}, "kernel")
    True
    """

    path: ModulePath
    kind: str
    type_name: str
    tensors: Tensors = dataclasses.field(compare=False)
    main: str
    stack: Stack | None = None

    @property
    def is_placeholder(self) -> bool:
        """True for a parameter-free module (Dropout, a pooling module...)."""
        return not self.main

    @property
    def shape(self) -> Shape:
        """The shape of the main tensor (empty for a placeholder)."""
        if not self.main:
            return ()
        for group in self.tensors.values():
            if self.main in group:
                return tuple(group[self.main].shape)
        return ()

    @property
    def spec(self) -> LayerSpec:
        """The :class:`LayerSpec` the alignment sees (a zero-size tensor counts as none;
        a scalar, CLIP's ``logit_scale``, as one value, so that it matches a scalar)."""
        shape = self.shape
        if self.main and shape == ():
            return LayerSpec(self.kind, (1,))
        if not shape or min(shape) <= 0:
            return LayerSpec(kinds.PLACEHOLDER, ())
        return LayerSpec(self.kind, shape)

    @property
    def name(self) -> str:
        """The module path joined with ``/`` (``"<root>"`` for the root); a step of a
        stacked module carries its index (``layers[2]/fc``, ``ensemble[*]`` for all
        members)."""
        parts = list(self.path)
        if self.stack is not None and self.stack.root:
            at = len(self.stack.root) - 1
            parts[at] += self.stack.label()
        return "/".join(parts) or "<root>"

    def num_params(self) -> int:
        """Returns the number of scalars this layer owns in all collections (all the
        members of a parallel stack)."""
        total = 0
        for collection, group in self.tensors.items():
            for name, tensor in group.items():
                members = 1
                if self.stack is not None and self.stack.parallel:
                    members = self.stack.size if f"{collection}/{name}" in self.stack.tensors else 1
                total += members * _size(tensor)
        return total


@dataclasses.dataclass(frozen=True)
class ModuleNode:
    """A module with submodules: its children (nodes and layers) in call order.

    Attributes:
      path: the module path from the root (``()`` for the root).
      type_name: the module's class name.
      children: the submodules (:class:`ModuleNode` or :class:`Layer`) in call order,
        preceded by the pseudo-layer of the module's own parameters if it has any.

    >>> dense = Layer(("Dense_0",), "dense", "Dense", {}, "kernel")
    >>> ModuleNode((), "MLP", (dense,)).children[0].kind
    'dense'
    """

    path: ModulePath
    type_name: str
    children: tuple[ModuleNode | Layer, ...]


@dataclasses.dataclass(frozen=True)
class ModuleCall:
    """One module as a trace adapter saw it called (:mod:`dpiat_jax.trace`).

    Attributes:
      path: the module path from the root.
      module_type: the module's class.
      attrs: the attributes the kind rules need (``feature_group_count``).
      local: the shapes of the module's variables as the module itself saw them on its
        first call (``(collection, *relative key)`` -> shape). Inside ``nn.scan`` or
        ``nn.vmap`` these are one step's (one member's) shapes, while the model's
        variables hold them stacked on an extra axis (:mod:`dpiat_jax.stacking`).
      batched: the module ran under a batching transform (``nn.vmap``): its stacked
        variables are parallel members, not sequential steps.

    >>> import flax.linen as nn
    >>> ModuleCall(("Dense_0",), nn.Dense, {}).module_type.__name__
    'Dense'
    """

    path: ModulePath
    module_type: type
    attrs: Mapping[str, Any]
    local: Mapping[tuple[str, ...], Shape] = dataclasses.field(default_factory=dict)
    batched: bool = False


def _size(x: Any) -> int:
    return math.prod(int(d) for d in x.shape)


def layer_kind(module_type: type, attrs: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """Returns the kind of a leaf module from its class, attributes and parameters.

    See :mod:`dpiat_jax.kinds` for the vocabulary; a conv with one input channel per
    group is depthwise. Flax NNX classes get the kinds of their linen counterparts.

    Args:
      module_type: the module's class (linen or NNX).
      attrs: the module's attributes (``feature_group_count`` for a conv).
      params: the module's ``params`` (the kernel's rank gives a conv's spatial rank).

    Returns:
      The kind string: a library kind, or the class name for any other module.

    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> layer_kind(nn.Conv, {"feature_group_count": 1}, {"kernel": jnp.zeros((3, 3, 4, 8))})
    'conv2d'
    """
    kernel = params.get("kernel")
    ndim = len(kernel.shape) if kernel is not None else None
    module_type = _linen_equivalent(module_type)
    if issubclass(module_type, nn.ConvTranspose):
        return kinds.conv_transpose((ndim or 3) - 2)
    if issubclass(module_type, nn.Conv):
        rank = (ndim or 4) - 2
        groups = attrs.get("feature_group_count", 1) or 1
        depthwise = groups > 1 and kernel is not None and kernel.shape[-2] == 1
        return kinds.depthwise_conv(rank) if depthwise else kinds.conv(rank)
    if issubclass(module_type, nn.Dense):
        return kinds.DENSE
    if issubclass(module_type, nn.DenseGeneral):
        return kinds.DENSE_GENERAL
    if issubclass(module_type, nn.Embed):
        return kinds.EMBED
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


def _main_tensor(params: Mapping[str, Any], others: Tensors) -> str:
    """Picks the principal tensor: kernel, embedding, scale, bias, else the largest."""
    for name in _MAIN_TENSORS:
        if name in params:
            return name
    if params:
        return max(params, key=lambda k: (_size(params[k]), k))
    pool = {k: v for group in others.values() for k, v in group.items()}
    return max(pool, key=lambda k: (_size(pool[k]), k)) if pool else ""


def group_variables(
    variables: Variables, module_paths: Sequence[ModulePath]
) -> dict[ModulePath, dict[str, dict[str, Any]]]:
    """Assigns every variable to the deepest recorded module whose path prefixes its key.

    Args:
      variables: Flax variables (collection -> nested dict of arrays).
      module_paths: the paths of the recorded modules.

    Returns:
      Module path -> collection -> tensor name (relative, ``/``-joined) -> array. A
      variable no recorded module owns goes to the root ``()``.

    >>> import jax.numpy as jnp
    >>> variables = {"params": {"Dense_0": {"kernel": jnp.zeros((3, 4))}}}
    >>> list(group_variables(variables, [(), ("Dense_0",)])[("Dense_0",)]["params"])
    ['kernel']
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


def _children(paths: Sequence[ModulePath]) -> dict[ModulePath, list[ModulePath]]:
    """Module path -> the paths of its recorded children, in the order of ``paths``.

    A path's parent is its longest recorded proper prefix (the root ``()`` at least).
    """
    children: dict[ModulePath, list[ModulePath]] = {p: [] for p in paths}
    for p in paths:
        if p:
            parent = p[:-1]
            while parent not in children:
                parent = parent[:-1]
            children[parent].append(p)
    return children


def _leaf(
    call: ModuleCall, tensors: Tensors, kind: str | None = None, site: StackSite | None = None
) -> Layer:
    """The :class:`Layer` of a module's tensors (its kind from :func:`layer_kind` unless
    given; a module without tensors is a placeholder); below a stacked site, one step's."""
    stack = None
    if site is not None:
        tensors, stacked, nested = unstack_tensors(site, call.path, tensors)
        stack = Stack(site.root, site.axis, site.size, site.parallel, None, stacked, nested)
    params = tensors.get("params", {})
    main = _main_tensor(params, tensors)
    if kind is None:
        kind = layer_kind(call.module_type, call.attrs, params) if main else kinds.PLACEHOLDER
    return Layer(call.path, kind, call.module_type.__name__, tensors, main, stack)


@dataclasses.dataclass(frozen=True)
class _Tree:
    """What :func:`_node` reads: the calls by path, the children, the grouped tensors
    and the stacked sites."""

    calls: Mapping[ModulePath, ModuleCall]
    children: Mapping[ModulePath, list[ModulePath]]
    grouped: Mapping[ModulePath, Tensors]
    sites: Mapping[ModulePath, StackSite]


def _node(path: ModulePath, tree: _Tree, site: StackSite | None = None) -> ModuleNode | Layer:
    """The hierarchy below ``path``: a layer for a leaf module, else a node whose first
    child is the pseudo-layer of the module's own tensors (when it has any). A module
    scanned by ``nn.scan`` becomes its steps (:func:`split_steps`), which take its place
    among its parent's children."""
    if site is None and path in tree.sites:
        site = tree.sites[path]
        node = _node(path, tree, site)
        return node if site.parallel else split_steps(node, site)
    call = tree.calls[path]
    own = tree.grouped.get(path, {})
    if not tree.children[path]:
        return _leaf(call, own, site=site)
    kids: list[ModuleNode | Layer] = []
    if own:
        kids.append(_leaf(call, own, kind=kinds.own(call.module_type.__name__), site=site))
    for child in tree.children[path]:
        node = _node(child, tree, site)
        scanned = site is None and child in tree.sites and not tree.sites[child].parallel
        # a scan's steps stand beside their siblings, as an unrolled loop's blocks do
        kids.extend(node.children if scanned else [node])
    return ModuleNode(path, call.module_type.__name__, tuple(kids))


def _at_step(node: ModuleNode | Layer, index: int) -> ModuleNode | Layer | None:
    """``node`` as step ``index`` of its scan: every layer's stack gets the index; a
    tensor shared by all steps stays with step 0 only (it is moved once)."""
    if isinstance(node, ModuleNode):
        kids = [k for k in (_at_step(c, index) for c in node.children) if k is not None]
        return ModuleNode(node.path, node.type_name, tuple(kids))
    stack = node.stack
    if stack is None:
        return node
    tensors = node.tensors
    if index > 0:
        tensors = {
            c: {n: t for n, t in g.items() if f"{c}/{n}" in stack.tensors}
            for c, g in tensors.items()
        }
        tensors = {c: g for c, g in tensors.items() if g}
    main = node.main if any(node.main in g for g in tensors.values()) else ""
    kind = node.kind if main else kinds.PLACEHOLDER
    stack = dataclasses.replace(stack, index=index)
    return Layer(node.path, kind, node.type_name, tensors, main, stack)


def split_steps(node: ModuleNode | Layer, site: StackSite) -> ModuleNode:
    """Returns a scanned module as a node of its steps, one copy of ``node`` per step.

    Args:
      node: the scanned module's hierarchy, its layers holding one step's shapes.
      site: the stacked module.

    Returns:
      A :class:`ModuleNode` at ``site.root`` whose children are the steps in order.

    >>> site = StackSite(("s",), 0, 2, False, {})
    >>> layer = Layer(("s",), "dense", "Dense", {}, "kernel", Stack(("s",), 0, 2, False))
    >>> [x.name for x in split_steps(layer, site).children]
    ['s[0]', 's[1]']
    """
    type_name = node.type_name
    steps = tuple(_at_step(node, i) for i in range(site.size))
    return ModuleNode(site.root, type_name, tuple(s for s in steps if s is not None))


def build_hierarchy(calls: Sequence[ModuleCall], variables: Variables) -> ModuleNode:
    """Builds the module tree (children in call order) with layers at its leaves.

    Args:
      calls: the modules in the order of their first call (a trace adapter's record);
        the root is added when missing.
      variables: the model's variables (arrays or ``jax.ShapeDtypeStruct``); each goes
        to the deepest module whose path prefixes its key (:func:`group_variables`).

    Returns:
      The root :class:`ModuleNode` (a model that is a single layer becomes a node with
      that one child).

    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> calls = [ModuleCall(("Dense_0",), nn.Dense, {}), ModuleCall(("Dropout_0",), nn.Dropout, {})]
    >>> variables = {"params": {"Dense_0": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}}}
    >>> [(x.name, x.kind) for x in build_hierarchy(calls, variables).children]
    [('Dense_0', 'dense'), ('Dropout_0', 'none')]
    """
    paths = [c.path for c in calls]
    if () not in paths:
        paths.insert(0, ())
        calls = [ModuleCall((), nn.Module, {}), *calls]
    by_path = {c.path: c for c in calls}
    tree = _Tree(by_path, _children(paths), group_variables(variables, paths), {})
    tree = dataclasses.replace(tree, sites=find_sites(calls, variables))
    root = _node((), tree)
    if isinstance(root, Layer):
        return ModuleNode((), root.type_name, (root,))
    return root


def iter_layers(node: ModuleNode | Layer) -> Iterator[Layer]:
    """Yields the layers (placeholders included) under ``node`` in call order.

    Args:
      node: a hierarchy (or a single layer, which yields itself).

    Returns:
      An iterator over the :class:`Layer` leaves, depth first.

    >>> dense = Layer(("Dense_0",), "dense", "Dense", {}, "kernel")
    >>> [x.name for x in iter_layers(ModuleNode((), "MLP", (dense,)))]
    ['Dense_0']
    """
    if isinstance(node, Layer):
        yield node
        return
    for child in node.children:
        yield from iter_layers(child)


def layers(node: ModuleNode) -> list[Layer]:
    """Returns the layers and placeholders of a traced model in call order.

    Args:
      node: the root of a hierarchy (:func:`build_hierarchy`).

    Returns:
      The :class:`Layer` leaves as a list (:func:`iter_layers`).

    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> calls = [ModuleCall(("Dense_0",), nn.Dense, {})]
    >>> root = build_hierarchy(calls, {"params": {"Dense_0": {"kernel": jnp.zeros((3, 4))}}})
    >>> [layer.spec for layer in layers(root)]
    [LayerSpec(kind='dense', shape=(3, 4))]
    """
    return list(iter_layers(node))
