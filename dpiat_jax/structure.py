"""What a model's forward pass says about its tensors: fused parts and attention heads.

The alignment pairs layers; how a paired tensor moves also depends on what the
forward pass does with it: a fused projection is cut into parts
(:mod:`dpiat_jax.fused`), an attention's heads are lined up with other projections'
heads, grouped or not (:mod:`dpiat_jax.heads`). :func:`forward_structure` reads all of
it from the jaxpr of a linen model's ``apply`` (a :class:`Structure` record),
:func:`model_structure` caches it per definition and input, and
:func:`structured_moves` rewrites the planned moves by the target's and the source's
structures: the one step of :func:`dpiat_jax.plan.plan_traced` between listing the
moves and choosing channels.

Heads fused into one axis with the head dimension move per factor
(:func:`dpiat_jax.heads.head_factors`, :func:`dpiat_jax.heads.with_factors`): whole heads
kept or dropped and the head dimension cropped inside each, whether the head count, the
head dimension or both change. Where the structure asks for something a move cannot do
(heads in one axis whose factors only one side's forward pass shows, grouped heads of a
scanned tensor, grouped-query heads in one axis on one side only that
:func:`dpiat_jax.heads.with_groups` cannot read as groups, a fused target whose
source is not split alike, a scan inside a scan whose inner step count changes), the
tensor moves as one tensor by the rule and a :class:`StructureWarning` names it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn

from dpiat_jax.channels import fused_axes
from dpiat_jax.fused import FusedRule, reshaped_parts, with_parts
from dpiat_jax.heads import (
    AxisFactors,
    GroupSide,
    HeadAxis,
    group_sides,
    head_axes,
    head_factors,
    head_parts,
    single_kv,
    with_factors,
    with_groups,
    with_heads,
)
from dpiat_jax.matching import LayerPair
from dpiat_jax.trace.adapter import Model, Traced
from dpiat_jax.trace.factors import factor_flow
from dpiat_jax.trace.inputs import abstract_tree
from dpiat_jax.types import ArrayTree, Variables
from dpiat_jax.variables import TensorKey, TensorMove

__all__ = [
    "Structure",
    "StructureWarning",
    "forward_structure",
    "model_structure",
    "structured_moves",
]


class StructureWarning(UserWarning):
    """A tensor's heads, fused parts or inner scan steps could not be kept apart: it
    moved as one tensor.

    >>> issubclass(StructureWarning, UserWarning)
    True
    """


@dataclasses.dataclass(frozen=True)
class Structure:
    """A model's tensors as its forward pass uses them.

    Attributes:
      fused: tensor key -> ``(axis, parts)`` of a fused projection
        (:func:`dpiat_jax.channels.fused_axes`, :func:`dpiat_jax.fused.reshaped_parts`).
      head_chunks: tensor key -> ``(axis, chunks)`` of an axis holding heads and the
        head dimension in one (:func:`dpiat_jax.heads.head_parts`).
      heads: tensor key -> its separate :class:`~dpiat_jax.heads.HeadAxis`.
      factors: tensor key -> the factors of its axes that hold heads and the head
        dimension in one (:func:`dpiat_jax.heads.head_factors`).
      grouped: tensor key -> ``((axis, kv, heads per group), ...)`` of its factored
        axes that belong to grouped-query attention (:func:`dpiat_jax.heads.group_sides`,
        :func:`dpiat_jax.heads.single_kv` for one kv head).

    >>> Structure().fused
    {}
    """

    fused: Mapping[TensorKey, tuple[int, int]] = dataclasses.field(default_factory=dict)
    head_chunks: Mapping[TensorKey, tuple[int, int]] = dataclasses.field(default_factory=dict)
    heads: Mapping[TensorKey, HeadAxis] = dataclasses.field(default_factory=dict)
    factors: Mapping[TensorKey, AxisFactors] = dataclasses.field(default_factory=dict)
    grouped: Mapping[TensorKey, tuple[GroupSide, ...]] = dataclasses.field(default_factory=dict)


def forward_structure(
    module: nn.Module,
    variables: Variables,
    sample_input: ArrayTree,
    call_kwargs: Mapping[str, Any] | None = None,
) -> Structure:
    """Reads a linen model's :class:`Structure` from its forward pass.

    Args:
      module: a linen module.
      variables: its variables (arrays or ``jax.ShapeDtypeStruct``).
      sample_input: an input it takes.
      call_kwargs: its call keywords.

    Returns:
      The structure, from one trace of the forward pass
      (:func:`~dpiat_jax.trace.factors.factor_flow`; its fused parts include the splits
      :func:`dpiat_jax.channels.fused_axes` finds, which answers alone when the factor
      walk fails); empty where the forward pass cannot be traced.

    >>> import jax
    >>> import jax.numpy as jnp
    >>> class QKV(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         q, k, v = jnp.split(nn.Dense(12, name="qkv")(x), 3, axis=-1)
    ...         return q * k + v
    >>> x = jnp.zeros((1, 4))
    >>> found = forward_structure(QKV(), jax.eval_shape(QKV().init, jax.random.key(0), x), x)
    >>> found.fused[("params", "qkv", "kernel")]
    (1, 3)
    """
    try:
        flow = factor_flow(module, variables, sample_input, call_kwargs)
    except Exception:  # noqa: BLE001 - the channel walk's finding, or none
        return Structure(fused_axes(module, variables, sample_input, call_kwargs))
    factors = head_factors(flow)
    grouped = group_sides(flow, factors)
    single, sides = single_kv(flow, factors)
    return Structure(
        reshaped_parts(flow),
        head_parts(flow),
        head_axes(flow),
        {**factors, **single},
        {**grouped, **sides},
    )


_CACHE: dict[tuple, Structure] = {}


def model_structure(traced: Traced, model: Model) -> Structure | None:
    """The :class:`Structure` of a traced model, cached by its definition, input and
    keywords (the analysis traces the forward pass: about a second for a scanned model).

    Args:
      traced: the traced model (abstract variables, its input and keywords).
      model: its adapter.

    Returns:
      The structure, or None for a model that is not a linen module (NNX: no
      forward-pass analysis).

    >>> import jax.numpy as jnp
    >>> from dpiat_jax.trace.adapter import adapt
    >>> model = adapt(nn.Dense(2), "dst_def")
    >>> model_structure(model.trace(None, jnp.zeros((1, 3)), {}, "dst_def"), model)
    Structure(fused={}, head_chunks={}, heads={}, factors={}, grouped={})
    """
    module = model.linen_module
    if module is None:
        return None
    kwargs = tuple(sorted(traced.kwargs.items()))
    key = (module, abstract_tree(traced.sample_input), kwargs)
    try:
        hash(key)
    except TypeError:  # an unhashable module or keyword value: no cache
        return forward_structure(module, traced.variables, traced.sample_input, traced.kwargs)
    found = _CACHE.get(key)
    if found is None:
        found = forward_structure(module, traced.variables, traced.sample_input, dict(kwargs))
        _CACHE[key] = found
        while len(_CACHE) > 64:
            _CACHE.pop(next(iter(_CACHE)))
    return found


def _cut_heads(move: TensorMove, chunks: tuple[int, int], src: tuple[int, int] | None) -> bool:
    """Whether the move crops an axis of head chunks across heads: the chunks do not
    move one by one and (within each fused part) the chunk widths differ, or the centre
    offset is not a whole number of chunks."""
    axis, count = chunks
    if move.parts == chunks or any(a == axis for a, _, _ in move.factors):
        return False
    split = move.parts[1] if move.parts is not None and move.parts[0] == axis else 1
    a, b = move.moved_shape[axis] // split, move.dst_shape[axis] // split
    width = move.dst_shape[axis] // count
    src_width = move.moved_shape[axis] // src[1] if src is not None and src[0] == axis else width
    return a != b and (src_width != width or (abs(a - b) // 2) % width != 0)


def _moved_whole(
    moves: Sequence[TensorMove], dst: Structure, src: Structure | None
) -> list[tuple[str, str]]:
    """``(target tensor, why)`` for every move whose heads or parts the structure asks
    to keep apart but that moves as one tensor by the rule."""
    out = []
    for move in moves:
        name = "/".join(move.dst)
        unstacked = move.dst_index is None and move.src_index is None
        chunks = dst.head_chunks.get(move.dst)
        src_chunks = None if src is None else src.head_chunks.get(move.src)
        if chunks is not None and unstacked and _cut_heads(move, chunks, src_chunks):
            out.append((name, "heads share an axis with the head dimension and their "
                        "count differs: cropped as one axis"))  # fmt: skip
        fused = dst.fused.get(move.dst)
        factored = fused is not None and any(a == fused[0] for a, _, _ in move.factors)
        if fused is not None and unstacked and move.parts is None and not factored:
            out.append((name, f"fused in {fused[1]} parts, but the source is not split "
                        "alike: moved as one tensor"))  # fmt: skip
        heads = [] if src is None else [src.heads.get(move.src), dst.heads.get(move.dst)]
        grouped = any(h is not None and h.kv is not None for h in heads)
        stacked = move.dst_index is not None and move.src_index is not None
        if grouped and stacked and move.src_shape != move.dst_shape:
            out.append((name, "grouped-query heads of a stacked tensor: cropped per axis"))
        if src is not None and _grouped_on_one_side(move, dst, src):
            out.append((name, "grouped-query heads in one axis on one side only, whose "
                        "other side's heads do not read as groups: heads are cropped, not "
                        "mapped to their groups"))  # fmt: skip
    return list(dict.fromkeys(out))


def _grouped_on_one_side(move: TensorMove, dst: Structure, src: Structure) -> bool:
    """Whether an axis of grouped-query heads on one side only
    (:func:`dpiat_jax.heads.with_groups`) was left unmapped: a query-side axis that holds
    one factor more on one side than on the other (``(kv groups, heads per group,
    head_dim)`` against ``(heads, head_dim)``), or a kv-side axis, whose move has no
    per-factor entry. Its kv heads, cropped as one axis, would not serve the query
    heads that came from their group."""
    dst_axes, src_axes = dict(dst.factors.get(move.dst, ())), dict(src.factors.get(move.src, ()))
    dst_grouped = {axis for axis, *_ in dst.grouped.get(move.dst, ())}
    src_grouped = {axis for axis, *_ in src.grouped.get(move.src, ())}
    moved = {a for a, _, _ in move.factors}
    unstacked = move.dst_index is None and move.src_index is None
    for axis, dst_factors in dst_axes.items():
        src_factors = src_axes.get(axis)
        if src_factors is None or axis in moved or not unstacked:
            continue
        if len(src_factors) != len(dst_factors) or (axis in dst_grouped) != (axis in src_grouped):
            return True
    return False


def _nested_steps(moves: Sequence[TensorMove], pairs: Sequence[LayerPair]) -> list[tuple[str, str]]:
    """``(target tensor, why)`` for every move whose target or source a transform inside
    a stacked module stacks again (:attr:`dpiat_jax.stacking.Stack.nested`) on an axis
    whose size changes: only the outer steps are unstacked, so the inner steps move as
    one axis of the tensor."""
    sides = (
        ({p.dst.name: p.dst for p in pairs}, "dst_layer", "dst"),
        ({p.src.name: p.src for p in pairs}, "src_layer", "src"),
    )
    out = []
    for move in moves:
        for layers, layer_attr, key_attr in sides:
            layer = layers.get(getattr(move, layer_attr))
            if layer is None or layer.stack is None or not layer.stack.nested:
                continue
            key = getattr(move, key_attr)
            axis = dict(layer.stack.nested).get(f"{key[0]}/{'/'.join(key[1 + len(layer.path) :])}")
            if axis is not None and move.moved_shape[axis] != move.dst_shape[axis]:
                out.append(("/".join(move.dst), "a scan inside a scan whose inner step counts "
                            "differ: the inner steps are cropped or centred as one axis, not "
                            "aligned one by one"))  # fmt: skip
                break
    return out


def structured_moves(
    moves: Sequence[TensorMove],
    pairs: Sequence[LayerPair],
    rules: Sequence[FusedRule],
    dst: tuple[Traced, Model],
    src: tuple[Traced, Model] | None = None,
) -> tuple[TensorMove, ...]:
    """Rewrites the planned moves by the two models' forward-pass structures.

    Fused tensors move part by part (:func:`dpiat_jax.fused.with_parts`; heads in one
    axis head chunk by head chunk), separate head axes of grouped-query attention by
    :func:`dpiat_jax.heads.with_heads`, axes that hold heads and the head dimension in
    one per factor (:func:`dpiat_jax.heads.with_factors`). What the source's forward
    pass does not confirm is not applied (a target split in 3 parts whose source is
    plain moves as one tensor); without a linen source (NNX) the target's finding is
    trusted (factors need both sides).

    Args:
      moves: from :func:`dpiat_jax.variables.plan_moves`.
      pairs: the matched layer pairs.
      rules: the ``fused=`` option's rules.
      dst: the traced target and its adapter.
      src: the traced source and its adapter (None: unknown).

    Returns:
      The rewritten moves. A :class:`StructureWarning` names every tensor whose heads
      or fused parts could not be kept apart.

    >>> import jax.numpy as jnp
    >>> from dpiat_jax.trace.adapter import adapt
    >>> model = adapt(nn.Dense(2), "dst_def")
    >>> traced = model.trace(None, jnp.zeros((1, 3)), {}, "dst_def")
    >>> structured_moves((), [], (), (traced, model))
    ()
    """
    dst_found = model_structure(*dst) or Structure()
    src_found = None if src is None else model_structure(*src)
    moves = with_parts(
        moves,
        {p.dst.name: p.dst for p in pairs},
        rules,
        dst_found.fused,
        None if src_found is None else src_found.fused,
        dst_found.head_chunks,
        None if src_found is None else src_found.head_chunks,
    )
    if src_found is not None:
        moves = with_heads(moves, dst_found.heads, src_found.heads)
        moves = with_factors(moves, dst_found.factors, src_found.factors)
        moves = with_groups(
            moves, dst_found.factors, src_found.factors, dst_found.grouped, src_found.grouped
        )
    whole = [*_moved_whole(moves, dst_found, src_found), *_nested_steps(moves, pairs)]
    if whole:
        shown = "; ".join(f"{name} ({why})" for name, why in whole[:6])
        more = f"; and {len(whole) - 6} more" if len(whole) > 6 else ""
        warnings.warn(
            f"Heads, fused parts or inner scan steps not kept apart: {shown}{more}.",
            StructureWarning,
            stacklevel=5,
        )
    return tuple(moves)
