"""Attention heads: which target head takes which source head, grouped-query attention included.

The clip rule crops every axis on its own. On a separate heads axis (``DenseGeneral``,
an einsum kernel ``(heads, d, head_dim)``) that keeps or drops whole heads, and q, k, v
and the output projection keep the same ones. Grouped-query attention breaks this:
query head ``t`` reads kv head ``t // (heads / kv_heads)``, so the kv head a target
group gets must be the one that served the source query heads the group's query heads
came from, and that is not what cropping the kv axis on its own gives (kv heads
2 -> 4 at 4 query heads must repeat each source kv head twice).

The head structure is read from the forward pass, not from names
(:func:`head_axes`, over :mod:`dpiat_jax.trace.factors`): the attention product lines
up the query heads with the key heads as batch dimensions of a ``dot_general``; when a
whole kv axis of size ``K`` lines up with the major factor of a query axis of size
``H`` (the queries reshaped to ``(K, H / K)``, or the keys repeated ``H / K`` times),
the attention is grouped. Every parameter axis in the heads' class is a head axis: the
query-side ones (query, output projection) hold ``H`` heads, the kv-side ones ``K``.

:func:`head_maps` decides the mapping from the four counts: the query heads map as the
clip rule maps an axis (centre crop or centre placement); when that would put query
heads of two source kv groups in one target group, whole groups are kept instead (kv
groups and heads within a group each cropped as an axis). Each target kv head then
takes the source kv head its group's query heads read. :func:`with_heads`
turns a move whose head axis must not follow the plain crop into one move per target
head (:attr:`~dpiat_jax.variables.TensorMove.src_index` / ``dst_index``), written back
into the head axis by :func:`dpiat_jax.variables.apply_moves`.

Heads fused into one axis with the head dimension (a ``Dense(heads * head_dim)``
whose output the forward pass reshapes to ``(heads, head_dim)``, a fused
``(3, heads, head_dim)`` projection, the output projection's input axis and the biases
alike) are read as the factors of that axis (:func:`head_factors`);
:func:`with_factors` gives their moves
:attr:`~dpiat_jax.variables.TensorMove.factors`, so the rule applies per factor: whole
heads kept or dropped, centred, the head dimension cropped inside each head, whatever
the head counts.

Grouped-query attention whose heads share an axis with the head dimension (Llama's
``Dense(kv_heads * head_dim)``, its kv heads repeated to the query heads) shows a query
axis of factors ``(kv groups, heads per group, head_dim)`` and kv axes of
``(kv heads, head_dim)`` (:func:`group_sides`); multi-query attention (one kv head,
Gemma 2B's) shows no kv heads at all, and is read as one group (:func:`single_kv`).
Grouped alike on both sides, the per-factor rule keeps each query head with its
group's kv head. Grouped differently (multi-head, grouped-query and multi-query
attention between them), :func:`with_groups` regroups: with as many query heads, the
query axis moves as it is and each target kv head takes the kv head its query heads
read, repeated (:attr:`~dpiat_jax.variables.TensorMove.broadcast`) where the target has
more kv heads, so the target computes the source's function; with fewer, the middle one
of those it merges. With other head counts a multi-head side is read as groups of the
grouped side's count and the move goes per factor.

Limits: a stacked (scanned) tensor with grouped heads on a separate axis keeps the
plain crop of its grouped heads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

from dpiat_jax.trace.factors import Atom, FactorFlow
from dpiat_jax.types import Shape
from dpiat_jax.variables import TensorKey, TensorMove

__all__ = [
    "HeadAxis",
    "AxisFactors",
    "head_axes",
    "head_parts",
    "head_factors",
    "with_factors",
    "GroupSide",
    "group_sides",
    "single_kv",
    "with_groups",
    "clip_map",
    "head_maps",
    "with_heads",
]

_T = TypeVar("_T")

#: ``((axis, factor sizes major first), ...)``: the factored axes of one tensor.
AxisFactors = tuple[tuple[int, Shape], ...]
#: ``(axis, kv, heads per group)`` of a factored axis of grouped-query attention.
GroupSide = tuple[int, bool, int]


@dataclasses.dataclass(frozen=True)
class HeadAxis:
    """A parameter axis that holds attention heads.

    Attributes:
      axis: the tensor's head axis.
      heads: the attention's query heads; kv_heads: its key/value heads (equal for
        plain multi-head attention).
      kv: True for a key/value-side axis (``kv_heads`` long), False for a query-side
        one (``heads`` long), None when the attention is not grouped (both sides alike).
      attention: which attention of the model the axis belongs to (its query and kv
        axes share the number).

    >>> HeadAxis(1, 4, 2, True).size
    2
    """

    axis: int
    heads: int
    kv_heads: int
    kv: bool | None
    attention: int = 0

    @property
    def size(self) -> int:
        """The axis's length."""
        return self.kv_heads if self.kv else self.heads


def _head_classes(flow: FactorFlow) -> dict[Atom, list[Atom]]:
    """Root -> the parameter atoms of every class lined up as attention heads."""
    roots = dict.fromkeys(flow.root(a) for a in sorted(flow.batch | flow.lone))
    return {r: [a for a in flow.members(r) if a[0] >= 0] for r in roots}


def _grouped(
    flow: FactorFlow, atoms: Sequence[Atom], attention: int = 0
) -> dict[tuple[int, int], HeadAxis]:
    """The head axes of one class: grouped when a whole kv axis lines up with the major
    factor of a query axis, else plain multi-head."""
    whole = [a for a in atoms if flow.is_whole(a)]
    major = [a for a in atoms if flow.is_major(a)]
    sizes = {a[3] for a in whole}
    if len(sizes) != 1:
        return {}
    (kv_heads,) = sizes
    if not major:
        return {(p, d): HeadAxis(d, n, n, None, attention) for p, d, _, n, _ in whole}
    heads = {flow.shapes[p][d] for p, d, _, _, _ in major}
    if len(heads) != 1 or any(a[3] != kv_heads for a in major):
        return {}
    (h,) = heads
    out = {(p, d): HeadAxis(d, h, kv_heads, True, attention) for p, d, _, _, _ in whole}
    out.update({(p, d): HeadAxis(d, h, kv_heads, False, attention) for p, d, *_ in major})
    return out


def head_axes(flow: FactorFlow) -> dict[TensorKey, HeadAxis]:
    """Finds the separate head axes of a model's parameters from its forward pass.

    Args:
      flow: the model's :class:`~dpiat_jax.trace.factors.FactorFlow`.

    Returns:
      Tensor key -> its :class:`HeadAxis` (one per tensor; tensors whose heads share an
      axis with the head dimension are not listed).

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from dpiat_jax.trace.factors import factor_flow
    >>> class GQA(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         q = nn.DenseGeneral((4, 2), name="q")(x).reshape(1, 3, 2, 2, 2)
    ...         k = nn.DenseGeneral((2, 2), name="k")(x)
    ...         return jnp.einsum("btkgh,bskh->btkgs", q, k)
    >>> x = jnp.zeros((1, 3, 8))
    >>> model = GQA()
    >>> flow = factor_flow(model, jax.eval_shape(model.init, jax.random.key(0), x), x)
    >>> head_axes(flow)[("params", "k", "kernel")]
    HeadAxis(axis=1, heads=4, kv_heads=2, kv=True, attention=0)
    """
    found: dict[TensorKey, HeadAxis] = {}
    for attention, atoms in enumerate(_head_classes(flow).values()):
        for (p, _), axis in _grouped(flow, atoms, attention).items():
            found.setdefault(flow.keys[p], axis)
    return found


def _head_dims(flow: FactorFlow) -> dict[tuple[int, int], int]:
    """Parameter axis -> its smallest stride-1 factor that the program lines up on its
    own (the head dimension of an axis that holds heads and head dimensions in one)."""
    out: dict[tuple[int, int], int] = {}
    for p, d, s, n, b in flow.classes:
        size = flow.shapes[p][d] if p >= 0 else 0
        if p >= 0 and s == 1 and b == 0 and 1 < n < size and size % n == 0:
            out[(p, d)] = min(n, out.get((p, d), n))
    return out


def head_parts(flow: FactorFlow) -> dict[TensorKey, tuple[int, int]]:
    """Finds the parameter axes that hold heads and the head dimension in one axis.

    A ``Dense(heads * head_dim)`` whose output is reshaped to ``(heads, head_dim)`` (or
    a fused ``(3, heads, head_dim)`` / ``(heads, 3 * head_dim)``) is ``n / head_dim``
    equal chunks of one head's values each; moved chunk by chunk
    (:attr:`~dpiat_jax.variables.TensorMove.parts`), whole heads stay whole and the head
    dimension is cropped inside each head.

    Args:
      flow: the model's :class:`~dpiat_jax.trace.factors.FactorFlow`.

    Returns:
      Tensor key -> ``(axis, chunks)``, the tensor's bias (or any tensor lined up with
      the whole axis) included.

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from dpiat_jax.trace.factors import factor_flow
    >>> class MHA(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         q = nn.Dense(8, name="q")(x).reshape(1, 3, 4, 2)
    ...         k = nn.Dense(8, name="k")(x).reshape(1, 3, 4, 2)
    ...         return jnp.einsum("bthd,bshd->bhts", q, k)
    >>> x = jnp.zeros((1, 3, 8))
    >>> model = MHA()
    >>> flow = factor_flow(model, jax.eval_shape(model.init, jax.random.key(0), x), x)
    >>> head_parts(flow)[("params", "q", "bias")]
    (0, 4)
    """
    grouped = {
        (p, d)
        for atoms in _head_classes(flow).values()
        for (p, d), axis in _grouped(flow, atoms).items()
        if axis.kv is not None
    }
    head_dims = _head_dims(flow)
    out: dict[TensorKey, tuple[int, int]] = {}
    for atoms in _head_classes(flow).values():
        for p, d, s, _, _ in atoms:
            chunk = head_dims.get((p, d)) if s > 1 and (p, d) not in grouped else None
            if chunk is None or s % chunk:
                continue
            n = flow.shapes[p][d]
            for q, e, _, m, _ in flow.members((p, d, 1, n, 0)):
                if q >= 0 and flow.is_whole((q, e, 1, m, 0)) and m == n:
                    out.setdefault(flow.keys[q], (e, n // chunk))
    return out


def _grouped_axes(flow: FactorFlow) -> set[tuple[int, int]]:
    """The parameter axes of grouped-query attention (kv or query side)."""
    return {
        (p, d)
        for atoms in _head_classes(flow).values()
        for (p, d), axis in _grouped(flow, atoms).items()
        if axis.kv is not None
    }


def _bounds(flow: FactorFlow, axes: set[tuple[int, int]]) -> set[int]:
    """The strides at which the program's atoms of ``axes`` (one class of equal-sized
    parameter axes) cut them: ``s`` and ``s * n`` of every atom, and the width of every
    equal cut into pieces."""
    bounds: set[int] = set()
    for p, d, s, n, _ in [*flow.classes, *flow.batch, *flow.lone]:
        if (p, d) in axes:
            bounds.update((s, s * n))
    for (p, d, s, n, _), pieces in flow.cuts.items():
        widths = {stop - start for start, stop in pieces}
        if (p, d) in axes and len(widths) == 1 and sum(stop - start for start, stop in pieces) == n:
            bounds.add(s * widths.pop())
    return bounds


def _chain(bounds: set[int], size: int) -> Shape | None:
    """Factor sizes (major first) of an axis of ``size`` cut at ``bounds``, when they
    nest (each divides the next); None when they do not or make one factor only."""
    ordered = sorted({1, size, *bounds})
    if ordered[-1] != size or any(b % a for a, b in zip(ordered, ordered[1:])):
        return None
    factors = tuple(b // a for a, b in zip(ordered, ordered[1:]))[::-1]
    return factors if len(factors) >= 2 else None


def head_factors(flow: FactorFlow) -> dict[TensorKey, AxisFactors]:
    """Finds the factors of the parameter axes that hold heads and the head dimension.

    An axis that holds several attention heads in one (a ``Dense(heads * head_dim)``
    reshaped to ``(heads, head_dim)``, a fused ``(3, heads, head_dim)`` or
    ``(heads, 3 * head_dim)`` projection, the output projection's input axis) is cut
    by the forward pass into factors; the factors of every tensor lined up with the
    whole axis (its bias) are the same. Grouped-query attention is left out.

    Args:
      flow: the model's :class:`~dpiat_jax.trace.factors.FactorFlow`.

    Returns:
      Tensor key -> ``((axis, factor sizes major first), ...)``.

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from dpiat_jax.trace.factors import factor_flow
    >>> class MHA(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         q = nn.Dense(8, name="q")(x).reshape(1, 3, 4, 2)
    ...         k = nn.Dense(8, name="k")(x).reshape(1, 3, 4, 2)
    ...         return jnp.einsum("bthd,bshd->bhts", q, k)
    >>> x = jnp.zeros((1, 3, 8))
    >>> model = MHA()
    >>> flow = factor_flow(model, jax.eval_shape(model.init, jax.random.key(0), x), x)
    >>> head_factors(flow)[("params", "q", "bias")]
    ((0, (4, 2)),)
    """
    grouped = _grouped_axes(flow)
    heads = {
        (p, d)
        for atoms in _head_classes(flow).values()
        for p, d, s, _, _ in atoms
        if s > 1 and (p, d) not in grouped
    }
    found: dict[TensorKey, dict[int, Shape]] = {}
    for p, d in sorted(heads):
        n = flow.shapes[p][d]
        whole = [(q, e) for q, e, _, m, _ in flow.members((p, d, 1, n, 0)) if q >= 0 and m == n]
        lined = {(q, e) for q, e in whole if flow.is_whole((q, e, 1, n, 0))} | {(p, d)}
        factors = _chain(_bounds(flow, lined), n)
        if factors is None or lined & grouped:
            continue
        for q, e in sorted(lined):
            found.setdefault(flow.keys[q], {}).setdefault(e, factors)
    return {key: tuple(sorted(axes.items())) for key, axes in found.items()}


def _step(axes: Sequence[tuple[int, _T]], index: tuple[int, int] | None) -> dict[int, _T]:
    """A stacked tensor's per-axis records as one step's (the step axis dropped)."""
    if index is None:
        return dict(axes)
    return {a - (a > index[0]): f for a, f in axes if a != index[0]}


def _aligned(src: Shape, dst: Shape) -> bool:
    """Whether two factorizations correspond factor by factor (and differ)."""
    return len(src) == len(dst) and src != dst


def with_factors(
    moves: Sequence[TensorMove],
    dst_factors: Mapping[TensorKey, AxisFactors],
    src_factors: Mapping[TensorKey, AxisFactors],
) -> tuple[TensorMove, ...]:
    """Gives the moves of tensors whose heads share an axis their factors.

    A move's axis is factored when both sides' forward passes cut it into as many
    factors (``(heads, head_dim)`` on both, ``(3, heads, head_dim)`` on both) and the
    factor sizes differ: then the rule applies per factor
    (:attr:`~dpiat_jax.variables.TensorMove.factors`). Positional tables and per-head
    moves (of grouped heads) are left as they are.

    Args:
      moves: the planned moves.
      dst_factors: the target's :func:`head_factors`; src_factors: the source's.

    Returns:
      The moves, factored where both sides agree (in the same order).

    >>> move = TensorMove(("params", "q"), ("params", "q"), "q", "q", (8, 8), (8, 16), (8, 8))
    >>> with_factors([move], {("params", "q"): ((1, (4, 4)),)},
    ...              {("params", "q"): ((1, (2, 4)),)})[0].factors
    ((1, (2, 4), (4, 4)),)
    """
    out = []
    for move in moves:
        dst = _step(dst_factors.get(move.dst, ()), move.dst_index)
        src = _step(src_factors.get(move.src, ()), move.src_index)
        factors = tuple(
            (axis, src[axis], dst[axis])
            for axis in sorted(set(dst) & set(src))
            if _aligned(src[axis], dst[axis])
            and axis < len(move.dst_shape)
            and math.prod(src[axis]) == move.moved_shape[axis]
            and math.prod(dst[axis]) == move.dst_shape[axis]
        )
        usable = factors and not move.positional and len(move.src_shape) == len(move.dst_shape)
        out.append(dataclasses.replace(move, factors=factors) if usable else move)
    return tuple(out)


def _factor_classes(
    flow: FactorFlow, factors: Mapping[TensorKey, AxisFactors]
) -> dict[Atom, list[tuple[TensorKey, int, Shape]]]:
    """Root -> ``(tensor, axis, factors)`` of every factored axis whose major factor the
    program lines up with others' (a head axis's heads); an axis whose heads are lined
    up with nothing (a bias) joins the class of the tensor it is lined up with whole."""
    index = {key: p for p, key in enumerate(flow.keys)}
    roots: dict[tuple[int, int], Atom] = {}
    axes = [(index[key], axis, f) for key, found in factors.items() for axis, f in found]
    for p, axis, f in axes:
        major = (p, axis, math.prod(f[1:]), f[0], 0)
        if len(flow.members(major)) > 1:
            roots[(p, axis)] = flow.root(major)
    for p, axis, _ in axes:
        n = flow.shapes[p][axis]
        lined = [(q, e) for q, e, s, m, _ in flow.members((p, axis, 1, n, 0)) if s == 1 and m == n]
        root = next((roots[a] for a in lined if a in roots), None)
        if (p, axis) not in roots and root is not None:
            roots[(p, axis)] = root
    out: dict[Atom, list[tuple[TensorKey, int, Shape]]] = {}
    for p, axis, f in axes:
        if (p, axis) in roots:
            out.setdefault(roots[(p, axis)], []).append((flow.keys[p], axis, f))
    return out


def group_sides(
    flow: FactorFlow, factors: Mapping[TensorKey, AxisFactors]
) -> dict[TensorKey, tuple[GroupSide, ...]]:
    """Finds the grouped-query attention among the axes that hold heads and the head
    dimension in one.

    The query heads of grouped-query attention line up with kv heads repeated to them:
    the query-side axes (query, output projection) factor as ``(kv groups, heads per
    group, *head_dim)``, the kv-side axes as ``(kv heads, *head_dim)``, and their major
    factors (the groups, the kv heads) are lined up by the attention product. So a
    class of lined-up heads is grouped when its major factors stride over two block
    sizes, one ``heads per group`` times the other (a rotary embedding's split of the
    head dimension changes the factor count, not the block size).

    Args:
      flow: the model's :class:`~dpiat_jax.trace.factors.FactorFlow`.
      factors: its :func:`head_factors`.

    Returns:
      Tensor key -> ``((axis, kv, heads per group), ...)`` for the factored axes of
      grouped-query attention (``kv`` True for a kv-side axis); plain multi-head
      attention and fused projections are not listed.
    """
    out: dict[TensorKey, list[GroupSide]] = {}
    for members in _factor_classes(flow, factors).values():
        blocks = sorted({math.prod(f[1:]) for _, _, f in members})
        if len({f[0] for _, _, f in members}) != 1 or len(blocks) != 2:
            continue
        kv_block, query_block = blocks
        group = query_block // kv_block
        if query_block % kv_block or any(
            len(f) < 3 for _, _, f in members if math.prod(f[1:]) == query_block
        ):
            continue
        if any(f[1] != group for _, _, f in members if math.prod(f[1:]) == query_block):
            continue
        for key, axis, f in members:
            kv = math.prod(f[1:]) == kv_block
            out.setdefault(key, []).append((axis, kv, group))
    return {key: tuple(sorted(axes)) for key, axes in out.items()}


def single_kv(
    flow: FactorFlow, factors: Mapping[TensorKey, AxisFactors]
) -> tuple[dict[TensorKey, AxisFactors], dict[TensorKey, tuple[GroupSide, ...]]]:
    """Finds multi-query attention (one kv head for every query head) among the axes
    that hold heads and the head dimension in one.

    Its one kv head is broadcast to the query heads, so the attention product lines
    the query heads up with no parameter's axis (:attr:`FactorFlow.lone`), and the kv
    projections have no heads factor. They are read as grouped-query attention of one
    group: query-side factors ``(1, heads, *head_dim)``, and for every unfactored axis
    one head long that the program lines up with a query-side axis's head dimension (the
    key against the query, the value into the output projection) ``(1, *head_dim)``.

    Args:
      flow: the model's :class:`~dpiat_jax.trace.factors.FactorFlow`.
      factors: its :func:`head_factors`.

    Returns:
      ``(factors, sides)``: the factors of those axes in that reading, and their
      :func:`group_sides` entries (``kv`` True for the kv projections).
    """
    batch = {flow.root(a) for a in flow.batch}
    lone = {flow.root(a) for a in flow.lone} - batch
    index = {key: p for p, key in enumerate(flow.keys)}
    factored = {(index[key], axis) for key, found in factors.items() for axis, _ in found}
    new: dict[TensorKey, dict[int, Shape]] = {}
    sides: dict[TensorKey, dict[int, tuple[bool, int]]] = {}
    for root, members in _factor_classes(flow, factors).items():
        if root not in lone:
            continue
        for key, axis, f in members:
            new.setdefault(key, {})[axis] = (1, *f)
            sides.setdefault(key, {})[axis] = (False, f[0])
            p, block = index[key], math.prod(f[1:])
            minor = [(p, axis, math.prod(f[i + 1 :]), f[i], 0) for i in range(1, len(f))]
            minor.append((p, axis, 1, block, 0))
            for q, e, _, _, _ in [m for atom in minor for m in flow.members(atom)]:
                if q < 0 or q == p or (q, e) in factored or flow.shapes[q][e] != block:
                    continue
                new.setdefault(flow.keys[q], {}).setdefault(e, (1, *f[1:]))
                sides.setdefault(flow.keys[q], {}).setdefault(e, (True, f[0]))
    return (
        {key: tuple(sorted(axes.items())) for key, axes in new.items()},
        {key: tuple((a, *side) for a, side in sorted(axes.items())) for key, axes in sides.items()},
    )


def _grouping(factors: Shape, side: tuple[bool, int] | None) -> tuple[int, int, Shape, bool | None]:
    """``(kv groups, query heads, head_dim factors, kv)`` of a factored axis: plain
    multi-head ``(heads, *head_dim)`` (``side`` None: a group per head), a grouped
    query-side ``(groups, heads per group, *head_dim)`` or kv-side ``(kv heads,
    *head_dim)`` axis."""
    if side is None:
        return factors[0], factors[0], factors[1:], None
    kv, per_group = side
    if kv:
        return factors[0], factors[0] * per_group, factors[1:], True
    return factors[0], factors[0] * factors[1], factors[2:], False


def _regrouped(
    src: tuple[int, int, Shape, bool | None], dst: tuple[int, int, Shape, bool | None]
) -> tuple[Shape, Shape, bool] | None:
    """``(source factors, target factors, broadcast)`` of an axis whose two sides group
    their heads differently; None where the reading does not apply."""
    (k_src, h_src, r_src, kv_src), (k_dst, h_dst, r_dst, kv_dst) = src, dst
    kinds = {kv_src, kv_dst} - {None}
    if len(kinds) != 1 or len(r_src) != len(r_dst):
        return None
    (kv,) = kinds
    if (k_src, h_src, kv_src) == (k_dst, h_dst, kv_dst):
        return None  # grouped alike: per factor as it is
    small, large = sorted((k_src, k_dst))
    if h_src == h_dst and large % small == 0:
        if not kv:  # the same query heads: read both sides in the finer groups
            return (large, h_src // large, *r_src), (large, h_dst // large, *r_dst), False
        if k_dst >= k_src:  # each source kv head serves k_dst / k_src target kv heads
            return (k_src, 1, *r_src), (k_src, k_dst // k_src, *r_dst), k_dst > k_src
        return (k_dst, k_src // k_dst, *r_src), (k_dst, 1, *r_dst), False
    if kv_src is not None and kv_dst is not None:
        return None  # grouped on both sides, other head counts: per factor as it is
    groups = k_dst if kv_src is None else k_src

    def as_groups(k: int, h: int, rest: Shape, side: bool | None) -> Shape:
        if side is not None:
            return (k, 1, *rest) if side else (k, h // k, *rest)
        return (groups, h // groups, *rest) if h % groups == 0 else (h, 1, *rest)

    return as_groups(*src), as_groups(*dst), bool(kv and kv_dst is None)


def _sides(
    groups: Sequence[GroupSide], index: tuple[int, int] | None
) -> dict[int, tuple[bool, int]]:
    """Axis -> ``(kv, heads per group)`` of one step of a tensor."""
    return _step([(axis, (kv, per_group)) for axis, kv, per_group in groups], index)


def with_groups(
    moves: Sequence[TensorMove],
    dst_factors: Mapping[TensorKey, AxisFactors],
    src_factors: Mapping[TensorKey, AxisFactors],
    dst_groups: Mapping[TensorKey, tuple[GroupSide, ...]],
    src_groups: Mapping[TensorKey, tuple[GroupSide, ...]],
) -> tuple[TensorMove, ...]:
    """Maps the heads of grouped-query attention in one axis to their groups when the
    two sides group them differently.

    Plain multi-head attention is read as one kv head per query head. With as many
    query heads on both sides, the query axis moves as it is (read in the finer of the
    two groupings) and each target kv head takes the source kv head its query heads
    read: repeated (:attr:`~dpiat_jax.variables.TensorMove.broadcast`) where the
    target has more kv heads, the middle one of the source kv heads it merges where it
    has fewer; a 4-head model with 2 kv heads moved into one with 4 computes the
    source's function. With other head counts, a multi-head side is read as groups of
    the grouped side's count, ``(kv groups, heads / kv groups, *head_dim)``, and the
    move goes per factor (both sides grouped: :func:`with_factors` already does).

    Args:
      moves: the planned moves (after :func:`with_factors`).
      dst_factors, src_factors: both sides' :func:`head_factors`.
      dst_groups, src_groups: both sides' :func:`group_sides` (and :func:`single_kv`).

    Returns:
      The moves, with the factors (and broadcast) of those axes set.

    >>> move = TensorMove(("params", "k"), ("params", "k"), "k", "k", (8, 32), (8, 8), (8, 32))
    >>> out = with_groups([move], {("params", "k"): ((1, (2, 4)),)},
    ...                   {("params", "k"): ((1, (8, 4)),)}, {("params", "k"): ((1, True, 4),)}, {})
    >>> out[0].factors
    ((1, (2, 4, 4), (2, 1, 4)),)
    """
    out = []
    for move in moves:
        if move.positional or len(move.src_shape) != len(move.dst_shape):
            out.append(move)
            continue
        dst_axes = _step(dst_factors.get(move.dst, ()), move.dst_index)
        src_axes = _step(src_factors.get(move.src, ()), move.src_index)
        dst_sides = _sides(dst_groups.get(move.dst, ()), move.dst_index)
        src_sides = _sides(src_groups.get(move.src, ()), move.src_index)
        entries = {a: (a, s, d) for a, s, d in move.factors}
        broadcast = list(move.broadcast)
        for axis in sorted(set(dst_axes) & set(src_axes)):
            if axis not in dst_sides and axis not in src_sides:
                continue
            found = _regrouped(
                _grouping(src_axes[axis], src_sides.get(axis)),
                _grouping(dst_axes[axis], dst_sides.get(axis)),
            )
            if found is None or axis >= len(move.dst_shape):
                continue
            src, dst, repeat = found
            if math.prod(src) != move.moved_shape[axis] or math.prod(dst) != move.dst_shape[axis]:
                continue
            entries[axis] = (axis, src, dst)
            if repeat:
                broadcast.append((axis, 1))
        factors = tuple(entries[a] for a in sorted(entries))
        out.append(dataclasses.replace(move, factors=factors, broadcast=tuple(broadcast)))
    return tuple(out)


def clip_map(a: int, b: int) -> tuple[int | None, ...]:
    """Returns, per target index, the source index the clip rule puts there.

    Args:
      a: the source size; b: the target size.

    Returns:
      ``b`` entries: the centre crop or centre placement of :func:`dpiat_jax.tensors.centre_slices`
      (None where the target keeps its fresh values).

    >>> clip_map(4, 2), clip_map(2, 4)
    ((1, 2), (None, 0, 1, None))
    """
    if a >= b:
        start = (a - b) // 2
        return tuple(range(start, start + b))
    start = (b - a) // 2
    return tuple(t - start if start <= t < start + a else None for t in range(b))


def _consistent(query: Sequence[int | None], group_src: int, group_dst: int) -> bool:
    """Whether every target group's query heads come from one source kv group."""
    for j in range(len(query) // group_dst):
        kv = {s // group_src for s in query[j * group_dst : (j + 1) * group_dst] if s is not None}
        if len(kv) > 1:
            return False
    return True


def head_maps(
    src: tuple[int, int], dst: tuple[int, int]
) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
    """Maps target heads to source heads for a (grouped-query) attention.

    Args:
      src: the source's ``(heads, kv_heads)``; dst: the target's.

    Returns:
      ``(query map, kv map)``: per target query head the source query head it takes,
      and per target kv head the source kv head (None: fresh). The query map is the
      clip rule's unless that would mix source kv groups in one target group; then kv
      groups and heads within a group are cropped as two axes. A target kv head takes
      the source kv head its group's mapped query heads read (one for all of them, by
      construction), and stays fresh when none of them is mapped.

    >>> head_maps((4, 2), (4, 4))  # kv heads 2 -> 4: each source kv head serves two
    ((0, 1, 2, 3), (0, 0, 1, 1))
    >>> head_maps((4, 2), (2, 1))  # fewer heads: the kept query heads share one group
    ((0, 1), (0,))
    """
    (h_src, k_src), (h_dst, k_dst) = src, dst
    g_src, g_dst = h_src // k_src, h_dst // k_dst
    query = clip_map(h_src, h_dst)
    if not _consistent(query, g_src, g_dst):
        kv_of, member_of = clip_map(k_src, k_dst), clip_map(g_src, g_dst)
        query = tuple(
            None
            if kv_of[t // g_dst] is None or member_of[t % g_dst] is None
            else kv_of[t // g_dst] * g_src + member_of[t % g_dst]
            for t in range(h_dst)
        )
    kv = []
    for j in range(k_dst):
        read = [s // g_src for s in query[j * g_dst : (j + 1) * g_dst] if s is not None]
        kv.append(read[0] if read else None)  # one group's heads all read one kv head
    return query, tuple(kv)


def _drop_axis(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


def _per_head(move: TensorMove, axis: int, index: Sequence[int | None]) -> list[TensorMove]:
    """One move per mapped target head, reading and writing one index of ``axis``."""
    prefix = tuple(a - (a > axis) for a in move.prefix_axes if a != axis)
    parts = move.parts
    if parts is not None:
        parts = (parts[0] - (parts[0] > axis), parts[1])
    return [
        dataclasses.replace(
            move,
            src_shape=_drop_axis(move.src_shape, axis),
            dst_shape=_drop_axis(move.dst_shape, axis),
            moved_shape=_drop_axis(move.moved_shape, axis),
            prefix_axes=prefix,
            parts=parts,
            src_index=(axis, s),
            dst_index=(axis, t),
        )
        for t, s in enumerate(index)
        if s is not None
    ]


def _role(
    move: TensorMove, dst: HeadAxis | None, src: HeadAxis | None
) -> tuple[tuple[str, int], int, bool] | None:
    """``(attention, axis, kv)`` of a move's tensor: from the side whose attention is
    grouped (the other side may be plain multi-head, or its kv axis of size 1 unseen);
    None for a tensor of no grouped attention, or one this rewrite leaves alone."""
    if move.src_index is not None or move.dst_index is not None or move.positional:
        return None
    side, name = (src, "src") if src is not None and src.kv is not None else (dst, "dst")
    if side is None or side.kv is None:
        return None
    if move.parts is not None and move.parts[0] == side.axis:
        return None
    if len(move.src_shape) != len(move.dst_shape) or side.axis >= len(move.dst_shape):
        return None
    return (name, side.attention), side.axis, side.kv


def _counts(moves: Sequence[TensorMove], members: Sequence[tuple[int, int, bool]]):
    """``((src heads, src kv heads), (dst heads, dst kv heads))`` of one attention, read
    from its moves' shapes; None when they disagree or a side is missing."""
    sizes: dict[tuple[str, bool], set[int]] = {}
    for i, axis, kv in members:
        sizes.setdefault(("src", kv), set()).add(moves[i].src_shape[axis])
        sizes.setdefault(("dst", kv), set()).add(moves[i].dst_shape[axis])
    if len(sizes) != 4 or any(len(v) != 1 for v in sizes.values()):
        return None
    (h_src,), (k_src,) = sizes[("src", False)], sizes[("src", True)]
    (h_dst,), (k_dst,) = sizes[("dst", False)], sizes[("dst", True)]
    if h_src % k_src or h_dst % k_dst:
        return None
    return (h_src, k_src), (h_dst, k_dst)


def with_heads(
    moves: Sequence[TensorMove],
    dst_heads: Mapping[TensorKey, HeadAxis],
    src_heads: Mapping[TensorKey, HeadAxis],
) -> tuple[TensorMove, ...]:
    """Rewrites the moves whose head axis must not follow the plain crop.

    The moves of one grouped-query attention (its query-side and kv-side tensors, as
    :func:`head_axes` found them on either side) take their target heads from
    :func:`head_maps`, with the head counts read from the moved tensors' shapes; a
    move whose map differs from the clip rule's becomes one move per mapped target
    head. Moves of stacked tensors, positional tables and fused axes on the head axis
    are left as they are.

    Args:
      moves: the planned moves.
      dst_heads: the target's :func:`head_axes`; src_heads: the source's.

    Returns:
      The moves, rewritten where the heads need it (in the same order).

    >>> def move(name, src, dst):
    ...     return TensorMove(("params", name), ("params", name), name, name, src, dst, src)
    >>> moves = [move("q", (4, 3), (4, 3)), move("kv", (2, 3), (4, 3))]
    >>> src = {("params", "q"): HeadAxis(0, 4, 2, False), ("params", "kv"): HeadAxis(0, 4, 2, True)}
    >>> [(m.src_index, m.dst_index) for m in with_heads(moves, {}, src)][1:]
    [((0, 0), (0, 0)), ((0, 0), (0, 1)), ((0, 1), (0, 2)), ((0, 1), (0, 3))]
    """
    groups: dict[tuple[str, int], list[tuple[int, int, bool]]] = {}
    for i, move in enumerate(moves):
        role = _role(move, dst_heads.get(move.dst), src_heads.get(move.src))
        if role is not None:
            groups.setdefault(role[0], []).append((i, role[1], role[2]))
    rewritten: dict[int, list[TensorMove]] = {}
    for members in groups.values():
        counts = _counts(moves, members)
        if counts is None:
            continue
        query, kv_map = head_maps(*counts)
        for i, axis, kv in members:
            index = kv_map if kv else query
            if index != clip_map(moves[i].src_shape[axis], len(index)):
                rewritten[i] = _per_head(moves[i], axis, index)
    out: list[TensorMove] = []
    for i, move in enumerate(moves):
        out.extend(rewritten.get(i, [move]))
    return tuple(out)
