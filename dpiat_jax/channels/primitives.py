"""How each jaxpr primitive relates the dimensions of its operands and results.

:func:`walk` visits the equations of a jaxpr and applies one rule per primitive family
to a :class:`~dpiat_jax.channels.flow.DimensionFlow`: it unites the dimensions that the
operation identifies (the operands and result of elementwise ops with broadcasting, the
contracted and batch dimensions of ``dot_general``, a convolution's input features and
the kernel's input-feature dimension, its output features and the kernel's
output-feature dimension, ``reshape`` dimensions that survive unchanged, ``transpose``,
``broadcast_in_dim``, ``concatenate`` on the other dimensions, reductions, slices and
pads that keep a dimension whole, ``gather`` (``Embed``) and the bodies of ``jit``,
``custom_jvp/vjp``, ``remat``, ``scan``, ``while`` and ``cond``, each call site in a
scope of its own), follows parameters through the ops that only copy or rearrange them,
marks the dimensions that produce a channel space and those a contraction consumes, and
the dimensions of computed values whose channels are mixed (a reduction over them, a
contraction of two computed values, a grouped convolution's input and output, a reshape
that merges them). Any other primitive is opaque: its dimensions stay unrelated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jax.extend import core as jcore

from dpiat_jax.channels.flow import DimensionFlow, is_var, var_shape
from dpiat_jax.types import Shape

__all__ = ["reshape_map", "walk"]

#: ``(flow, equation, scope) -> None``: the rule of one primitive family.
_Rule = Callable[[DimensionFlow, Any, int], None]

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


def _open(jaxpr: Any) -> jcore.Jaxpr | None:
    """The open Jaxpr of a Jaxpr or ClosedJaxpr (None for anything else)."""
    if isinstance(jaxpr, jcore.ClosedJaxpr):
        return jaxpr.jaxpr
    if isinstance(jaxpr, jcore.Jaxpr):
        return jaxpr
    return None


def reshape_map(old: Shape, new: Shape) -> dict[int, int]:
    """Maps the dimensions a reshape keeps whole to their new positions.

    A dimension is kept whole when the new shape has a dimension of the same size > 1
    with the same number of elements before it.

    Args:
      old: the operand's shape.
      new: the result's shape.

    Returns:
      Input dimension -> output dimension, for the kept dimensions only.

    >>> reshape_map((2, 3, 4), (6, 4))  # the first two merge, the last survives
    {2: 1}
    """
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


# ----------------------------------------------------------------------------------
# Walking a jaxpr.


def walk(flow: DimensionFlow, jaxpr: jcore.Jaxpr, scope: int) -> None:
    """Applies the rule of every equation of ``jaxpr`` to ``flow``, in order.

    Args:
      flow: the data-flow state to update.
      jaxpr: an open jaxpr.
      scope: the scope of its variables (0 for the outermost jaxpr).

    Returns:
      None; ``flow`` is updated in place.

    >>> import jax
    >>> import jax.numpy as jnp
    >>> jaxpr = jax.make_jaxpr(jnp.dot)(jnp.zeros((2, 3)), jnp.zeros((3, 4))).jaxpr
    >>> x, w = jaxpr.invars
    >>> flow = DimensionFlow()
    >>> walk(flow, jaxpr, 0)
    >>> flow.find((0, x, 1)) == flow.find((0, w, 0))  # the contracted dimension
    True
    """
    for eqn in jaxpr.eqns:
        _rule(eqn.primitive.name)(flow, eqn, scope)


def _call(
    flow: DimensionFlow,
    sub: jcore.Jaxpr,
    scope: int,
    outer_in: Sequence[Any],
    inner_in: Sequence[Any],
    inner_out: Sequence[Any],
    outer_out: Sequence[Any],
) -> int:
    """Enters a sub-jaxpr in a fresh scope, tying its inputs and outputs."""
    inner = flow.new_scope()
    for o, i in zip(outer_in, inner_in):
        flow.same(scope, o, inner, i)
        flow.set_alias(inner, i, flow.alias_of(scope, o))
    walk(flow, sub, inner)
    for i, o in zip(inner_out, outer_out):
        flow.same(inner, i, scope, o)
        flow.set_alias(scope, o, flow.alias_of(inner, i))
    return inner


# ----------------------------------------------------------------------------------
# One rule per primitive family.


def _elementwise(flow: DimensionFlow, eqn: Any, s: int) -> None:
    name, ins, outs = eqn.primitive.name, eqn.invars, eqn.outvars
    for k, out in enumerate(outs):
        rank = len(var_shape(out))
        operands = [ins[k]] if name == "optimization_barrier" else ins
        for v in operands:
            if is_var(v) and len(var_shape(v)) == rank:
                for i in range(rank):
                    flow.union(s, v, i, s, out, i)
        if name in _ALIASING or name == "optimization_barrier":
            flow.set_alias(s, out, flow.alias_of(s, operands[0]))


def _dot_general(flow: DimensionFlow, eqn: Any, s: int) -> None:
    lhs, rhs = eqn.invars
    out = eqn.outvars[0]
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    for i, j in zip(lc, rc):
        flow.union(s, lhs, i, s, rhs, j)
    for k, (i, j) in enumerate(zip(lb, rb)):
        flow.union(s, lhs, i, s, rhs, j)
        flow.union(s, lhs, i, s, out, k)
    lfree = [i for i in range(len(var_shape(lhs))) if i not in set(lc) | set(lb)]
    rfree = [j for j in range(len(var_shape(rhs))) if j not in set(rc) | set(rb)]
    for k, i in enumerate(lfree):
        flow.union(s, lhs, i, s, out, len(lb) + k)
    for k, j in enumerate(rfree):
        flow.union(s, rhs, j, s, out, len(lb) + len(lfree) + k)
    flow.mark_producer(s, lhs, lfree)
    flow.mark_producer(s, rhs, rfree)
    flow.mark_consumer(s, lhs, lc)
    flow.mark_consumer(s, rhs, rc)
    if flow.alias_of(s, lhs) is None and flow.alias_of(s, rhs) is None:
        flow.mark_mixed(s, lhs, lc)
        flow.mark_mixed(s, rhs, rc)


def _conv(flow: DimensionFlow, eqn: Any, s: int) -> None:
    lhs, rhs = eqn.invars
    out = eqn.outvars[0]
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    groups, batch_groups = p["feature_group_count"], p["batch_group_count"]
    # The kernel's output-feature dimension is the output's feature dimension.
    flow.union(s, rhs, rhs_spec[0], s, out, out_spec[1])
    flow.mark_producer(s, rhs, [rhs_spec[0]])
    if batch_groups != 1:
        return
    flow.union(s, lhs, lhs_spec[0], s, out, out_spec[0])
    if groups == 1:
        flow.union(s, lhs, lhs_spec[1], s, rhs, rhs_spec[1])
        flow.mark_consumer(s, rhs, [rhs_spec[1]])
        return
    depthwise = var_shape(rhs)[rhs_spec[1]] == 1 and var_shape(lhs)[lhs_spec[1]] == groups
    if depthwise and var_shape(out)[out_spec[1]] == groups:  # one output per input
        flow.union(s, lhs, lhs_spec[1], s, out, out_spec[1])
    else:  # grouped (or a channel multiplier): each output sums over a group of inputs
        flow.mark_mixed(s, lhs, [lhs_spec[1]])
        flow.mark_mixed(s, out, [out_spec[1]])


def _broadcast_in_dim(flow: DimensionFlow, eqn: Any, s: int) -> None:
    ins, outs = eqn.invars, eqn.outvars
    for i, j in enumerate(eqn.params["broadcast_dimensions"]):
        flow.union(s, ins[0], i, s, outs[0], j)


def _reshape(flow: DimensionFlow, eqn: Any, s: int) -> None:
    ins, outs = eqn.invars, eqn.outvars
    dim_map = reshape_map(var_shape(ins[0]), var_shape(outs[0]))
    for i, j in dim_map.items():
        flow.union(s, ins[0], i, s, outs[0], j)
    flow.set_alias(s, outs[0], flow.alias_of(s, ins[0]), {j: i for i, j in dim_map.items()})
    flow.mark_mixed(s, ins[0], [i for i in range(len(var_shape(ins[0]))) if i not in dim_map])


def _squeeze(flow: DimensionFlow, eqn: Any, s: int) -> None:
    ins, outs = eqn.invars, eqn.outvars
    dropped = set(eqn.params["dimensions"])
    kept = [i for i in range(len(var_shape(ins[0]))) if i not in dropped]
    for j, i in enumerate(kept):
        flow.union(s, ins[0], i, s, outs[0], j)
    flow.set_alias(s, outs[0], flow.alias_of(s, ins[0]), dict(enumerate(kept)))


def _transpose(flow: DimensionFlow, eqn: Any, s: int) -> None:
    ins, outs = eqn.invars, eqn.outvars
    perm = eqn.params["permutation"]
    for j, i in enumerate(perm):
        flow.union(s, ins[0], i, s, outs[0], j)
    flow.set_alias(s, outs[0], flow.alias_of(s, ins[0]), dict(enumerate(perm)))


def _reduction(flow: DimensionFlow, eqn: Any, s: int) -> None:
    ins, outs = eqn.invars, eqn.outvars
    axes = set(eqn.params["axes"])
    kept = [i for i in range(len(var_shape(ins[0]))) if i not in axes]
    for j, i in enumerate(kept):
        flow.union(s, ins[0], i, s, outs[0], j)
    flow.mark_mixed(s, ins[0], sorted(axes))


def _concatenate(flow: DimensionFlow, eqn: Any, s: int) -> None:
    """``concatenate`` and ``split``: every dimension but the joined one is shared."""
    ins, outs, p = eqn.invars, eqn.outvars, eqn.params
    dim = p["dimension"] if eqn.primitive.name == "concatenate" else p["axis"]
    if eqn.primitive.name == "split":
        start = 0
        for size in p["sizes"]:
            flow.cut(s, ins[0], dim, start, start + size)
            start += size
    for v in list(ins) + list(outs):
        for i in range(len(var_shape(v))):
            if i != dim:
                flow.union(s, v, i, s, outs[0], i)


def _pad(flow: DimensionFlow, eqn: Any, s: int) -> None:
    ins, outs = eqn.invars, eqn.outvars
    for i, cfg in enumerate(eqn.params["padding_config"]):
        if tuple(cfg) == (0, 0, 0):
            flow.union(s, ins[0], i, s, outs[0], i)


def _rev(flow: DimensionFlow, eqn: Any, s: int) -> None:
    ins, outs = eqn.invars, eqn.outvars
    flipped = set(eqn.params["dimensions"])
    kept = {i: i for i in range(len(var_shape(ins[0]))) if i not in flipped}
    for i in kept:
        flow.union(s, ins[0], i, s, outs[0], i)
    flow.set_alias(s, outs[0], flow.alias_of(s, ins[0]), kept)


def _slice(flow: DimensionFlow, eqn: Any, s: int) -> None:
    """``slice``, ``dynamic_slice`` and ``sort``: dimensions kept whole are shared."""
    name, ins, outs = eqn.primitive.name, eqn.invars, eqn.outvars
    skip = {eqn.params["dimension"]} if name == "sort" else set()
    if name == "slice":
        for i, (lo, hi) in enumerate(zip(eqn.params["start_indices"], eqn.params["limit_indices"])):
            if hi - lo != var_shape(ins[0])[i]:
                flow.cut(s, ins[0], i, lo, hi)
    for k, out in enumerate(outs):
        src = ins[k] if name == "sort" else ins[0]
        for i in range(len(var_shape(out))):
            if i not in skip and var_shape(src)[i] == var_shape(out)[i]:
                flow.union(s, src, i, s, out, i)


def _dynamic_update_slice(flow: DimensionFlow, eqn: Any, s: int) -> None:
    ins, outs = eqn.invars, eqn.outvars
    flow.same(s, ins[0], s, outs[0])
    for i in range(len(var_shape(ins[1]))):
        if var_shape(ins[1])[i] == var_shape(outs[0])[i]:
            flow.union(s, ins[1], i, s, outs[0], i)


def _top_k(flow: DimensionFlow, eqn: Any, s: int) -> None:
    for out in eqn.outvars:
        for i in range(len(var_shape(out)) - 1):
            flow.union(s, eqn.invars[0], i, s, out, i)


def _gather(flow: DimensionFlow, eqn: Any, s: int) -> None:
    """``gather`` (an ``Embed`` lookup): whole slices of the operand are shared, and
    produce their space."""
    operand = eqn.invars[0]
    out = eqn.outvars[0]
    dn = eqn.params["dimension_numbers"]
    sizes = eqn.params["slice_sizes"]
    skipped = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
    kept = [i for i in range(len(var_shape(operand))) if i not in skipped]
    whole = []
    for i, j in zip(kept, dn.offset_dims):
        if sizes[i] == var_shape(operand)[i]:
            flow.union(s, operand, i, s, out, j)
            whole.append(i)
    flow.mark_producer(s, operand, whole)


def _scan(flow: DimensionFlow, eqn: Any, s: int) -> None:
    """``scan``: consts and carry enter as they are, scanned inputs and outputs lose or
    gain their leading dimension, and the carry goes round."""
    p = eqn.params
    sub = _open(p["jaxpr"])
    nc, nk = p["num_consts"], p["num_carry"]
    ins, outs = eqn.invars, eqn.outvars
    inner = flow.new_scope()
    body_in, body_out = sub.invars, sub.outvars
    for k, (o, i) in enumerate(zip(ins, body_in)):
        if k < nc + nk:
            flow.same(s, o, inner, i)
            flow.set_alias(inner, i, flow.alias_of(s, o))
        else:  # a scanned input: the body sees it without its leading dimension
            for d in range(len(var_shape(i))):
                flow.union(s, o, d + 1, inner, i, d)
            dims = {d: d + 1 for d in range(len(var_shape(i)))}
            flow.set_alias(inner, i, flow.alias_of(s, o), dims)
    for k in range(nk):  # the carry goes round
        flow.same(inner, body_out[k], inner, body_in[nc + k])
    walk(flow, sub, inner)
    for k, (i, o) in enumerate(zip(body_out, outs)):
        if k < nk:
            flow.same(inner, i, s, o)
        else:
            for d in range(len(var_shape(i))):
                flow.union(inner, i, d, s, o, d + 1)


def _while(flow: DimensionFlow, eqn: Any, s: int) -> None:
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    ins, outs = eqn.invars, eqn.outvars
    body, cond = _open(p["body_jaxpr"]), _open(p["cond_jaxpr"])
    carry = ins[cn + bn :]
    for o, c in zip(carry, outs):
        flow.same(s, o, s, c)
    _call(flow, body, s, list(ins[cn : cn + bn]) + list(carry), body.invars, body.outvars, outs)
    _call(flow, cond, s, list(ins[:cn]) + list(carry), cond.invars, [], [])


def _cond(flow: DimensionFlow, eqn: Any, s: int) -> None:
    for branch in eqn.params["branches"]:
        sub = _open(branch)
        _call(flow, sub, s, eqn.invars[1:], sub.invars, sub.outvars, eqn.outvars)


def _subjaxpr(flow: DimensionFlow, eqn: Any, s: int) -> None:
    """Any other primitive: entered when it carries a sub-jaxpr with matching inputs and
    outputs (``jit``, ``custom_jvp/vjp``, ``remat``), else opaque."""
    ins, outs = eqn.invars, eqn.outvars
    for key in _SUBJAXPR_PARAMS:
        sub = _open(eqn.params.get(key))
        if sub is None:
            continue
        if len(sub.invars) == len(ins) and len(sub.outvars) == len(outs):
            _call(flow, sub, s, ins, sub.invars, sub.outvars, outs)
        break


_RULES: Mapping[str, _Rule] = {
    **{name: _elementwise for name in _ELEMENTWISE},
    **{name: _reduction for name in _REDUCTIONS},
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape,
    "squeeze": _squeeze,
    "transpose": _transpose,
    "concatenate": _concatenate,
    "split": _concatenate,
    "pad": _pad,
    "rev": _rev,
    "slice": _slice,
    "dynamic_slice": _slice,
    "sort": _slice,
    "dynamic_update_slice": _dynamic_update_slice,
    "top_k": _top_k,
    "gather": _gather,
    "scan": _scan,
    "while": _while,
    "cond": _cond,
}


def _rule(primitive: str) -> _Rule:
    """The rule of a primitive (the sub-jaxpr rule for any primitive without one)."""
    return _RULES.get(primitive, _subjaxpr)
