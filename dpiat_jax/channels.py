"""Channels: which target tensor dimensions share one channel index (channel consistency).

A rule that keeps a *subset* of a layer's channels when a dimension shrinks (``magnitude``
keeps the largest-L1 channels, ``uniform`` evenly spaced ones) must keep the same subset
wherever those channels are consumed: in the layer's own bias, in the norm that follows
(scale, bias, mean, var), in the input dimension of the next conv/dense and in whatever
is added to them (a residual partner). This module finds those groups of dimensions in
the *target* and :func:`dpiat_jax.variables.write_tensors` then applies one selection per
group.

Channel spaces
--------------
A :class:`ChannelGraph` assigns every dimension of every target tensor either a *channel
space* (an integer; dimensions with the same space index the same channels) or ``None``
(not a channel dimension: a conv window, a scanned layer axis, a size-1 axis). It also
flags the *producing* dimensions: the output dimensions of a kernel or embedding (the
free, non-contracted dimensions of a parameter in a ``dot_general``, a convolution's
output-feature dimension, the embedding dimension of a gather). A space's selection is
computed once, from the matched source tensors of its producers (the rule's
``select_channels``, e.g. the L1 norm of each output channel of the source kernel); the
space's consumers (biases, norms, the next layer's input dimension) take that same
selection. A space without a matched producer is ranked on all of its matched members.

Two ways to build the graph:

* :func:`trace_channels` (the precise one) traces the target's ``apply`` to a jaxpr
  with every variable as an input and follows each dimension through the program: a
  union-find over (value, dimension) unites the dimensions that an operation identifies
  (the operands and result of elementwise ops with broadcasting, the contracted and
  batch dimensions of ``dot_general``, a convolution's input features and the kernel's
  input-feature dimension, its output features and the kernel's output-feature
  dimension, ``reshape`` dimensions that survive unchanged, ``transpose``,
  ``broadcast_in_dim``, ``concatenate`` on the other dimensions, reductions, slices and
  pads that keep a dimension whole, ``gather`` (``Embed``) and the bodies of ``jit``,
  ``custom_jvp/vjp``, ``remat``, ``scan``, ``while`` and ``cond``, each call site
  separately). Two dimensions are only united when both have the same size > 1. A
  residual add therefore joins both branches into one space, and a whole transformer's
  residual stream (patch embedding, class token, positional embedding, every LayerNorm,
  the input of q/k/v and the MLP, the output of the attention's out projection and of
  the MLP, the head's input) is one space; attention heads and head dimensions are
  spaces of their own (q, k and v share the heads, q and k the head dimension).
  :func:`target_channels` builds it for a rule that needs it (and only then).
* :func:`call_order_channels` (the fallback that :func:`write_tensors` uses when no
  graph is given) walks the matched target layers in call order: a conv/dense kernel's
  last dimension opens a new space (its output, also its bias's), its second-to-last
  joins the current space (its input), norms join the current space, a depthwise conv
  keeps it, an ``Embed`` opens one; other layers (``DenseGeneral``, pseudo-layers of
  module-owned parameters, unknown kinds) are left to the rule's per-tensor behaviour,
  and a ``DenseGeneral`` or unknown layer breaks the chain.

Limits
------
* The jaxpr is that of the target's ``apply`` with the target's call keywords (inference
  mode, as the transfer uses); data flow that only exists in another mode is not seen.
  A module that cannot be traced this way (e.g. it needs an RNG stream other than
  ``dropout`` or ``params``) falls back to the call order.
* A ``reshape`` that merges a channel dimension with another (flatten before a dense
  layer) ends the space: the dense layer's input dimension is its own space. Grouped
  convolutions (1 < groups < channels) keep their output space but their input
  dimension is not tied to the incoming channels (a per-group selection would be
  needed); depthwise convolutions (one input channel per group) carry the space
  through. Attention heads and head dimensions are selected independently, so a shrunk
  attention keeps a product of kept heads and kept head dimensions.
* Sizes follow the source: a selection indexes the source dimension, so it is shared
  by the members whose source dimension has the same size; members whose matched source
  has another size get their own selection (consistency can only hold within a size).
* The call-order fallback sees neither residual adds nor branches, and only the
  matched layers.
* Rules that do not keep a subset (``clip``, ``full``) and user functions do not use
  any of this; their results are exactly the per-tensor ones.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from jax.extend import core as jcore

from dpiat_jax.tensors import get_tensor_rule

__all__ = [
    "ChannelGraph",
    "trace_channels",
    "call_order_channels",
    "target_channels",
    "needs_channels",
    "channel_selections",
    "channel_axes",
]

Key = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ChannelGraph:
    """The channel spaces of a target's tensors.

    Attributes:
      spaces: flattened variables key (``(collection, *module path, name)``) -> per
        dimension the channel space (an int) or None (not a channel dimension).
      producers: key -> per dimension whether the tensor produces that space (an
        output dimension of a kernel or embedding).
      method: ``"jaxpr"`` or ``"call order"``.
    """

    spaces: Mapping[Key, tuple[int | None, ...]]
    producers: Mapping[Key, tuple[bool, ...]]
    method: str = "jaxpr"

    def members(self, space: int) -> list[tuple[Key, int]]:
        """The ``(key, dimension)`` pairs in one space."""
        return [
            (key, axis)
            for key, axes in self.spaces.items()
            for axis, s in enumerate(axes)
            if s == space
        ]

    def space_of(self, key: Key, axis: int) -> int | None:
        """The space of one dimension (None when unknown or not a channel dimension)."""
        axes = self.spaces.get(tuple(key))
        return None if axes is None else axes[axis]


# ----------------------------------------------------------------------------------
# The jaxpr data-flow analysis.

_ELEMENTWISE = frozenset(
    """
    abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp complex conj
    convert_element_type copy copy_p cos cosh cumlogsumexp cummax cummin cumprod cumsum
    digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt igamma igammac imag
    integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter
    not or polygamma population_count pow real reduce_precision rem round rsqrt
    select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt
    square stop_gradient sub tan tanh xor optimization_barrier
    """.split()
)
_ALIASING = frozenset(
    {"convert_element_type", "copy", "copy_p", "reduce_precision", "stop_gradient"}
)
_REDUCTIONS = frozenset(
    {
        "reduce_sum",
        "reduce_max",
        "reduce_min",
        "reduce_prod",
        "reduce_and",
        "reduce_or",
        "reduce_xor",
        "argmax",
        "argmin",
    }
)
_SUBJAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _is_var(v: Any) -> bool:
    return isinstance(v, jcore.Var) and not isinstance(v, jcore.Literal)


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


def _open(jaxpr: Any):
    """The open Jaxpr of a Jaxpr or ClosedJaxpr (None for anything else)."""
    if isinstance(jaxpr, jcore.ClosedJaxpr):
        return jaxpr.jaxpr
    if isinstance(jaxpr, jcore.Jaxpr):
        return jaxpr
    return None


def _reshape_map(old: tuple[int, ...], new: tuple[int, ...]) -> dict[int, int]:
    """Input dimension -> output dimension for the dimensions a reshape keeps whole
    (same size and the same number of elements before them)."""
    out: dict[int, int] = {}
    before_new = {}
    acc = 1
    for j, d in enumerate(new):
        before_new.setdefault((acc, d), j)
        acc *= d
    acc = 1
    for i, d in enumerate(old):
        j = before_new.get((acc, d))
        if j is not None and d > 1:
            out[i] = j
        acc *= d
    return out


class _Flow:
    """Union-find over (scope, var, dimension) nodes plus parameter aliases."""

    def __init__(self) -> None:
        self.parent: dict[tuple, tuple] = {}
        self.alias: dict[tuple, tuple[int, tuple[int | None, ...]]] = {}
        self.producer: set[tuple[int, int]] = set()
        self.scopes = itertools.count(1)

    # union-find ---------------------------------------------------------------
    def find(self, n: tuple) -> tuple:
        parent = self.parent
        root = n
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[n] != root:
            parent[n], n = root, parent[n]
        return root

    def union(self, sa: int, a: Any, ia: int, sb: int, b: Any, ib: int) -> None:
        if not (_is_var(a) and _is_var(b)):
            return
        da, db = _shape(a)[ia], _shape(b)[ib]
        if da != db or da <= 1:
            return
        ra, rb = self.find((sa, a, ia)), self.find((sb, b, ib))
        if ra != rb:
            self.parent[ra] = rb

    def same(self, sa: int, a: Any, sb: int, b: Any) -> None:
        """Unites dimension i of ``a`` with dimension i of ``b`` (equal ranks)."""
        if _is_var(a) and _is_var(b) and len(_shape(a)) == len(_shape(b)):
            for i in range(len(_shape(a))):
                self.union(sa, a, i, sb, b, i)

    # aliases ------------------------------------------------------------------
    def alias_of(self, scope: int, v: Any):
        return self.alias.get((scope, v)) if _is_var(v) else None

    def set_alias(self, scope: int, v: Any, src, dim_map: Mapping[int, int] | None = None):
        """``v`` holds parameter ``src[0]``; ``dim_map`` maps v's dims to the source
        alias's dims (identity when None)."""
        if src is None or not _is_var(v):
            return
        param, dims = src
        n = len(_shape(v))
        if dim_map is None:
            new = tuple(dims[i] if i < len(dims) else None for i in range(n))
        else:
            new = tuple(dims[dim_map[i]] if i in dim_map else None for i in range(n))
        self.alias[(scope, v)] = (param, new)

    def mark_producer(self, scope: int, v: Any, free_dims: Iterable[int]) -> None:
        src = self.alias_of(scope, v)
        if src is None:
            return
        param, dims = src
        for d in free_dims:
            if dims[d] is not None:
                self.producer.add((param, dims[d]))

    # the walk -----------------------------------------------------------------
    def walk(self, jaxpr, scope: int) -> None:
        for eqn in jaxpr.eqns:
            self.eqn(eqn, scope)

    def call(self, sub, scope: int, outer_in, inner_in, inner_out, outer_out) -> int:
        """Enters a sub-jaxpr in a fresh scope, tying its inputs and outputs."""
        inner = next(self.scopes)
        for o, i in zip(outer_in, inner_in):
            self.same(scope, o, inner, i)
            self.set_alias(inner, i, self.alias_of(scope, o))
        self.walk(sub, inner)
        for i, o in zip(inner_out, outer_out):
            self.same(inner, i, scope, o)
            self.set_alias(scope, o, self.alias_of(inner, i))
        return inner

    def eqn(self, eqn, s: int) -> None:  # noqa: C901 - one branch per primitive family
        name = eqn.primitive.name
        ins, outs, p = eqn.invars, eqn.outvars, eqn.params
        if name in _ELEMENTWISE:
            for k, out in enumerate(outs):
                rank = len(_shape(out))
                operands = [ins[k]] if name == "optimization_barrier" else ins
                for v in operands:
                    if _is_var(v) and len(_shape(v)) == rank:
                        for i in range(rank):
                            self.union(s, v, i, s, out, i)
                if name in _ALIASING or name == "optimization_barrier":
                    self.set_alias(s, out, self.alias_of(s, operands[0]))
        elif name == "dot_general":
            self._dot_general(eqn, s)
        elif name == "conv_general_dilated":
            self._conv(eqn, s)
        elif name == "broadcast_in_dim":
            for i, j in enumerate(p["broadcast_dimensions"]):
                self.union(s, ins[0], i, s, outs[0], j)
        elif name == "reshape":
            dim_map = _reshape_map(_shape(ins[0]), _shape(outs[0]))
            for i, j in dim_map.items():
                self.union(s, ins[0], i, s, outs[0], j)
            self.set_alias(s, outs[0], self.alias_of(s, ins[0]), {j: i for i, j in dim_map.items()})
        elif name == "squeeze":
            kept = [i for i in range(len(_shape(ins[0]))) if i not in set(p["dimensions"])]
            for j, i in enumerate(kept):
                self.union(s, ins[0], i, s, outs[0], j)
            self.set_alias(s, outs[0], self.alias_of(s, ins[0]), dict(enumerate(kept)))
        elif name == "transpose":
            perm = p["permutation"]
            for j, i in enumerate(perm):
                self.union(s, ins[0], i, s, outs[0], j)
            self.set_alias(s, outs[0], self.alias_of(s, ins[0]), dict(enumerate(perm)))
        elif name in _REDUCTIONS:
            axes = set(p["axes"])
            kept = [i for i in range(len(_shape(ins[0]))) if i not in axes]
            for j, i in enumerate(kept):
                self.union(s, ins[0], i, s, outs[0], j)
        elif name in ("concatenate", "split"):
            dim = p["dimension"] if name == "concatenate" else p["axis"]
            for v in list(ins) + list(outs):
                for i in range(len(_shape(v))):
                    if i != dim:
                        self.union(s, v, i, s, outs[0], i)
        elif name == "pad":
            for i, cfg in enumerate(p["padding_config"]):
                if tuple(cfg) == (0, 0, 0):
                    self.union(s, ins[0], i, s, outs[0], i)
        elif name == "rev":
            flipped = set(p["dimensions"])
            kept = {i: i for i in range(len(_shape(ins[0]))) if i not in flipped}
            for i in kept:
                self.union(s, ins[0], i, s, outs[0], i)
            self.set_alias(s, outs[0], self.alias_of(s, ins[0]), kept)
        elif name in ("slice", "dynamic_slice", "sort"):
            skip = {p["dimension"]} if name == "sort" else set()
            for k, out in enumerate(outs):
                src = ins[k] if name == "sort" else ins[0]
                for i in range(len(_shape(out))):
                    if i not in skip and _shape(src)[i] == _shape(out)[i]:
                        self.union(s, src, i, s, out, i)
        elif name == "dynamic_update_slice":
            self.same(s, ins[0], s, outs[0])
            for i in range(len(_shape(ins[1]))):
                if _shape(ins[1])[i] == _shape(outs[0])[i]:
                    self.union(s, ins[1], i, s, outs[0], i)
        elif name == "top_k":
            for out in outs:
                for i in range(len(_shape(out)) - 1):
                    self.union(s, ins[0], i, s, out, i)
        elif name == "gather":
            self._gather(eqn, s)
        elif name == "scan":
            self._scan(eqn, s)
        elif name == "while":
            self._while(eqn, s)
        elif name == "cond":
            for branch in p["branches"]:
                sub = _open(branch)
                self.call(sub, s, ins[1:], sub.invars, sub.outvars, outs)
        else:
            for key in _SUBJAXPR_PARAMS:
                sub = _open(p.get(key))
                if sub is None:
                    continue
                if len(sub.invars) == len(ins) and len(sub.outvars) == len(outs):
                    self.call(sub, s, ins, sub.invars, sub.outvars, outs)
                break
            # Any other primitive is opaque: its dimensions stay unrelated.

    def _dot_general(self, eqn, s: int) -> None:
        lhs, rhs = eqn.invars
        out = eqn.outvars[0]
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        for i, j in zip(lc, rc):
            self.union(s, lhs, i, s, rhs, j)
        for k, (i, j) in enumerate(zip(lb, rb)):
            self.union(s, lhs, i, s, rhs, j)
            self.union(s, lhs, i, s, out, k)
        lfree = [i for i in range(len(_shape(lhs))) if i not in set(lc) | set(lb)]
        rfree = [j for j in range(len(_shape(rhs))) if j not in set(rc) | set(rb)]
        for k, i in enumerate(lfree):
            self.union(s, lhs, i, s, out, len(lb) + k)
        for k, j in enumerate(rfree):
            self.union(s, rhs, j, s, out, len(lb) + len(lfree) + k)
        self.mark_producer(s, lhs, lfree)
        self.mark_producer(s, rhs, rfree)

    def _conv(self, eqn, s: int) -> None:
        lhs, rhs = eqn.invars
        out = eqn.outvars[0]
        p = eqn.params
        lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
        groups, batch_groups = p["feature_group_count"], p["batch_group_count"]
        # The kernel's output-feature dimension is the output's feature dimension.
        self.union(s, rhs, rhs_spec[0], s, out, out_spec[1])
        self.mark_producer(s, rhs, [rhs_spec[0]])
        if batch_groups != 1:
            return
        self.union(s, lhs, lhs_spec[0], s, out, out_spec[0])
        if groups == 1:
            self.union(s, lhs, lhs_spec[1], s, rhs, rhs_spec[1])
        elif _shape(rhs)[rhs_spec[1]] == 1 and _shape(lhs)[lhs_spec[1]] == groups:
            if _shape(out)[out_spec[1]] == groups:  # depthwise, one output per input
                self.union(s, lhs, lhs_spec[1], s, out, out_spec[1])

    def _gather(self, eqn, s: int) -> None:
        operand = eqn.invars[0]
        out = eqn.outvars[0]
        dn = eqn.params["dimension_numbers"]
        sizes = eqn.params["slice_sizes"]
        skipped = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
        kept = [i for i in range(len(_shape(operand))) if i not in skipped]
        whole = []
        for i, j in zip(kept, dn.offset_dims):
            if sizes[i] == _shape(operand)[i]:
                self.union(s, operand, i, s, out, j)
                whole.append(i)
        self.mark_producer(s, operand, whole)

    def _scan(self, eqn, s: int) -> None:
        p = eqn.params
        sub = _open(p["jaxpr"])
        nc, nk = p["num_consts"], p["num_carry"]
        ins, outs = eqn.invars, eqn.outvars
        inner = next(self.scopes)
        body_in, body_out = sub.invars, sub.outvars
        for k, (o, i) in enumerate(zip(ins, body_in)):
            if k < nc + nk:
                self.same(s, o, inner, i)
                self.set_alias(inner, i, self.alias_of(s, o))
            else:  # a scanned input: the body sees it without its leading dimension
                for d in range(len(_shape(i))):
                    self.union(s, o, d + 1, inner, i, d)
                dims = {d: d + 1 for d in range(len(_shape(i)))}
                self.set_alias(inner, i, self.alias_of(s, o), dims)
        for k in range(nk):  # the carry goes round
            self.same(inner, body_out[k], inner, body_in[nc + k])
        self.walk(sub, inner)
        for k, (i, o) in enumerate(zip(body_out, outs)):
            if k < nk:
                self.same(inner, i, s, o)
            else:
                for d in range(len(_shape(i))):
                    self.union(inner, i, d, s, o, d + 1)

    def _while(self, eqn, s: int) -> None:
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        ins, outs = eqn.invars, eqn.outvars
        body, cond = _open(p["body_jaxpr"]), _open(p["cond_jaxpr"])
        carry = ins[cn + bn :]
        for o, c in zip(carry, outs):
            self.same(s, o, s, c)
        self.call(body, s, list(ins[cn : cn + bn]) + list(carry), body.invars, body.outvars, outs)
        self.call(cond, s, list(ins[:cn]) + list(carry), cond.invars, [], [])


def _flat_variables(variables: Mapping[str, Any]) -> dict[Key, Any]:
    flat = traverse_util.flatten_dict(dict(variables))
    return {tuple(str(k) for k in key): v for key, v in flat.items()}


def _abstract(x: Any) -> Any:
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype) if hasattr(a, "dtype") else a, x
    )


def trace_channels(
    module: Any,
    variables: Mapping[str, Any],
    *args: Any,
    rngs: Any = None,
    **kwargs: Any,
) -> ChannelGraph:
    """Builds the :class:`ChannelGraph` of ``module`` from the jaxpr of its ``apply``.

    ``variables`` is the target's variables dict (arrays or ``jax.ShapeDtypeStruct``;
    nothing is computed), ``args``/``kwargs`` its call arguments (keyword flags stay
    static). ``apply`` runs with every collection mutable, so batch statistics updates
    are followed too. Raises whatever tracing raises.
    """
    flat = _flat_variables(variables)
    keys = list(flat)
    if rngs is None:
        rngs = {"dropout": jax.random.key(0), "params": jax.random.key(1)}

    def fn(leaves, *call_args):
        tree = traverse_util.unflatten_dict(dict(zip(keys, leaves)))
        return module.apply(tree, *call_args, rngs=rngs, mutable=True, **kwargs)

    closed = jax.make_jaxpr(fn)(_abstract([flat[k] for k in keys]), *_abstract(args))
    jaxpr = closed.jaxpr
    params = jaxpr.invars[: len(keys)]
    flow = _Flow()
    for idx, v in enumerate(params):
        flow.alias[(0, v)] = (idx, tuple(range(len(_shape(v)))))
    flow.walk(jaxpr, 0)

    # A parameter dimension is a channel dimension when it produces a space or when its
    # group holds a dimension of a computed value (not only copies of parameters).
    has_value: dict[tuple, bool] = {}
    for node in list(flow.parent):
        root = flow.find(node)
        is_value = (node[0], node[1]) not in flow.alias
        has_value[root] = has_value.get(root, False) or is_value
    ids: dict[Any, int] = {}
    spaces, producers = {}, {}
    for idx, (key, v) in enumerate(zip(keys, params)):
        axes, prod = [], []
        for d in range(len(_shape(v))):
            node = (0, v, d)
            is_prod = (idx, d) in flow.producer
            root = flow.find(node) if node in flow.parent else node
            if is_prod or has_value.get(root, False):
                axes.append(ids.setdefault(root, len(ids)))
            else:
                axes.append(None)
            prod.append(is_prod)
        spaces[key], producers[key] = tuple(axes), tuple(prod)
    return ChannelGraph(spaces, producers, "jaxpr")


# ----------------------------------------------------------------------------------
# The call-order fallback.

_DIMENSIONAL = ("conv", "dense")
_NORM_KINDS = ("batch_norm", "layer_norm", "group_norm", "rms_norm")


def call_order_channels(layers: Sequence[Any]) -> ChannelGraph:
    """A :class:`ChannelGraph` from target layers in call order (see the module notes).

    ``layers`` are :class:`~dpiat_jax.layers.Layer` records (the matched ones, or all).
    """
    counter = itertools.count()
    spaces: dict[Key, tuple[int | None, ...]] = {}
    producers: dict[Key, tuple[bool, ...]] = {}
    current: tuple[int, int] | None = None  # (space, size)

    def key(layer, collection, name) -> Key:
        return (collection, *layer.path, *name.split("/"))

    def join(size: int) -> int:
        if current is not None and current[1] == size:
            return current[0]
        return next(counter)

    for layer in layers:
        kind = layer.kind
        if layer.is_placeholder:
            continue
        tensors = [(c, n, t) for c, g in layer.tensors.items() for n, t in g.items()]
        if kind.startswith("depthwise_conv"):
            kernel = layer.tensors.get("params", {}).get(layer.main)
            size = kernel.shape[-1]
            out = join(size)
            for c, n, t in tensors:
                axes = [None] * len(t.shape)
                if t.shape and t.shape[-1] == size:
                    axes[-1] = out
                spaces[key(layer, c, n)] = tuple(axes)
                producers[key(layer, c, n)] = tuple(
                    n == layer.main and i == len(t.shape) - 1 for i in range(len(t.shape))
                )
            current = (out, size)
        elif kind.startswith(_DIMENSIONAL) and kind != "dense_general":
            kernel = layer.tensors.get("params", {}).get(layer.main)
            if kernel is None or len(kernel.shape) < 2:
                current = None
                continue
            size_in, size_out = kernel.shape[-2], kernel.shape[-1]
            inp, out = join(size_in), next(counter)
            for c, n, t in tensors:
                axes = [None] * len(t.shape)
                if n == layer.main:
                    axes[-2:] = [inp, out]
                elif len(t.shape) == 1 and t.shape[0] == size_out:
                    axes[0] = out
                spaces[key(layer, c, n)] = tuple(axes)
                producers[key(layer, c, n)] = tuple(
                    n == layer.main and i == len(t.shape) - 1 for i in range(len(t.shape))
                )
            current = (out, size_out)
        elif kind == "embed":
            table = layer.tensors.get("params", {}).get(layer.main)
            out = next(counter)
            spaces[key(layer, "params", layer.main)] = (None, out)
            producers[key(layer, "params", layer.main)] = (False, True)
            current = (out, table.shape[-1])
        elif kind in _NORM_KINDS:
            sizes = {t.shape[0] for _, _, t in tensors if len(t.shape) == 1}
            if len(sizes) != 1:
                current = None
                continue
            size = sizes.pop()
            space = join(size)
            for c, n, t in tensors:
                if len(t.shape) == 1:
                    spaces[key(layer, c, n)] = (space,)
                    producers[key(layer, c, n)] = (False,)
            current = (space, size)
        elif not kind.startswith("own:"):
            current = None  # unknown data flow: do not tie the next layer's input
    return ChannelGraph(spaces, producers, "call order")


def needs_channels(rule: Any) -> bool:
    """Whether a tensor rule (a :class:`~dpiat_jax.tensors.TensorRule`, a name or a
    function) keeps channel subsets."""
    return get_tensor_rule(rule).selects_channels


def target_channels(
    rule: Any,
    module: Any,
    variables: Mapping[str, Any],
    sample_input: Any,
    call_kwargs: Mapping[str, Any] | None = None,
) -> ChannelGraph | None:
    """The target's jaxpr :class:`ChannelGraph` when ``rule`` needs one, else None.

    Nothing is traced for rules that do not keep channel subsets (``clip``, ``full``,
    user functions). When tracing fails, returns None and
    :func:`~dpiat_jax.variables.write_tensors` falls back to the call order.
    """
    if not needs_channels(rule):
        return None
    try:
        return trace_channels(module, variables, sample_input, **dict(call_kwargs or {}))
    except Exception:  # noqa: BLE001 - the call-order fallback covers untraceable modules
        return None


# ----------------------------------------------------------------------------------
# Selections.


@dataclasses.dataclass
class _Member:
    source: Any
    axis: int
    producer: bool


def channel_selections(
    graph: ChannelGraph,
    items: Iterable[tuple[Key, Any, tuple[int, ...]]],
    select: Any,
) -> dict[tuple[int, int, int], jax.Array]:
    """One selection per (space, source size, target size) of every shrinking channel
    dimension among ``items`` (``(key, source array, target shape)``).

    ``select(members, b)`` gets the ``(source array, dimension)`` pairs that rank the
    space (its producers, or every member when none produces it) and returns ``b``
    source indices.
    """
    groups: dict[tuple[int, int, int], list[_Member]] = {}
    for key, source, dst_shape in items:
        axes = graph.spaces.get(tuple(key))
        if axes is None:
            continue
        prods = graph.producers.get(tuple(key), (False,) * len(axes))
        for axis, space in enumerate(axes):
            a, b = source.shape[axis], dst_shape[axis]
            if space is None or a <= b:
                continue
            groups.setdefault((space, a, b), []).append(_Member(source, axis, prods[axis]))
    out = {}
    for (space, a, b), members in groups.items():
        rankers = [m for m in members if m.producer] or members
        seen, pairs = set(), []
        for m in rankers:
            if (id(m.source), m.axis) not in seen:
                seen.add((id(m.source), m.axis))
                pairs.append((m.source, m.axis))
        out[(space, a, b)] = select(pairs, b)
    return out


def channel_axes(graph: ChannelGraph, key: Key) -> tuple[int, ...] | None:
    """The channel dimensions of one tensor (None when the graph does not know it)."""
    axes = graph.spaces.get(tuple(key))
    if axes is None:
        return None
    return tuple(i for i, s in enumerate(axes) if s is not None)
