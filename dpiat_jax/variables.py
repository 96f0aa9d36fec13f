"""Variables: which source tensor moves into which target tensor, and the moving itself.

The last stage of the pipeline, in two halves as the transfer plan is
(:mod:`dpiat_jax.plan`):

* shapes only: :func:`plan_moves` lists, for every tensor of every matched layer pair, a
  :class:`TensorMove` (target key, source key, shapes, positional resize) or the reason
  it cannot move; :func:`plan_channels` gives each move its channel dimensions and lists
  the :class:`ChannelGroup` selections a channel-selecting rule computes;
* arrays: :func:`apply_moves` takes the target's fresh variables and the source's
  arrays (both flattened by key) and returns the target's new arrays. It uses static
  shapes and jnp operations only, so it runs inside ``jax.jit``.

Two things happen here rather than in the rules, because they are properties of the
tensors and of the target, not of a rule:

* positional embeddings (:func:`dpiat_jax.tensors.is_positional_embedding`) whose token
  count is a different square grid (plus a class token) are interpolated over the grid
  (:func:`dpiat_jax.tensors.resize_positional`) before the rule handles the remaining
  dimensions, for every rule;
* for a rule that keeps channel subsets (``magnitude``, ``uniform``: see
  :mod:`dpiat_jax.tensors`), one selection is computed per channel space of the target
  (:mod:`dpiat_jax.channels`) and every tensor dimension of that space takes it, so a
  layer's kernel, its bias, the norm after it, the next layer's input and a residual
  partner keep the same channels.

Stages are joined by keys (layer paths, flattened variables keys), never by object
identity.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dpiat_jax.channels import ChannelGraph, call_order_channels, channel_axes
from dpiat_jax.layers import Layer
from dpiat_jax.matching import LayerPair
from dpiat_jax.tensors import (
    TensorRule,
    centre_slices,
    is_positional_embedding,
    is_token_embedding,
    place,
    positional_grid,
    resize_positional,
)
from dpiat_jax.types import ModulePath, PRNGKey, Shape, Variables

__all__ = [
    "TensorKey",
    "TensorMove",
    "ChannelGroup",
    "factored_axes",
    "tensor_key",
    "flat_variables",
    "plan_moves",
    "plan_channels",
    "apply_moves",
    "written_scalars",
    "checked_tensors",
    "write_tensors",
    "nonfinite_tensors",
]

#: A flattened variables key: ``(collection, *module path, *tensor name parts)``.
TensorKey = tuple[str, ...]


def tensor_key(collection: str, layer_path: ModulePath, name: str) -> TensorKey:
    """Returns the flattened variables key of a layer's tensor.

    Args:
      collection: the variables collection (``"params"``, ``"batch_stats"``...).
      layer_path: the layer's module path.
      name: the tensor's name relative to the layer (``"kernel"``, ``"sub/x"``).

    Returns:
      ``(collection, *layer_path, *name.split("/"))``.

    >>> tensor_key("params", ("block0", "conv"), "kernel")
    ('params', 'block0', 'conv', 'kernel')
    """
    return (collection, *layer_path, *name.split("/"))


def flat_variables(variables: Variables) -> dict[TensorKey, Any]:
    """Returns a variables dict flattened to ``{key: leaf}`` with string keys.

    Args:
      variables: a (possibly frozen) nested dict of arrays.

    Returns:
      A dict from :data:`TensorKey` to leaf, in the nested dict's order.

    >>> flat_variables({"params": {"dense": {"bias": 0}}})
    {('params', 'dense', 'bias'): 0}
    """
    flat = traverse_util.flatten_dict(dict(variables))
    return {tuple(str(k) for k in key): v for key, v in flat.items()}


@dataclasses.dataclass(frozen=True)
class TensorMove:
    """One target tensor that takes values from one source tensor.

    Attributes:
      dst: the target tensor's key; src: the source tensor's key.
      dst_layer, src_layer: the matched layers' names (``"/"``-joined paths).
      src_shape: the source tensor's shape; dst_shape: the target tensor's.
      moved_shape: the source's shape after a positional resize (``src_shape`` when
        there is none): what the tensor rule receives.
      positional: the source is a positional embedding of another patch grid, resized
        over the grid first (:func:`dpiat_jax.tensors.resize_positional`).
      keep_first_row: the target has a class-token row the source lacks; it keeps its
        fresh values.
      channel_axes: the target's channel dimensions for a channel-selecting rule (None:
        the rule is applied to the tensor on its own).
      selections: ``(dimension, index into the plan's channel groups)`` for every
        shrinking channel dimension.
      prefix_axes: dimensions aligned from index 0 instead of centred: the token axis of
        an embedding table (:func:`dpiat_jax.tensors.is_token_embedding`; row ``i``
        stays token ``i``, a larger vocabulary gets fresh rows at its end).
      parts: ``(axis, count)`` for a fused tensor (:mod:`dpiat_jax.fused`): both sides
        are split into ``count`` equal parts along ``axis`` and part ``i`` moves into
        part ``i`` by the rule.
      src_index, dst_index: ``(axis, index)`` when the tensor is stacked by ``nn.scan``
        / ``nn.vmap`` (:mod:`dpiat_jax.stacking`): the move reads (writes) that one step
        of it; the shapes above are one step's.
      factors: ``(axis, source factors, target factors)`` for every axis that holds
        several factors in one (heads and the head dimension, ``(heads, head_dim)``, or
        ``(3, heads, head_dim)`` of a fused projection; :func:`dpiat_jax.heads.head_factors`):
        both sides are reshaped into their factors (major first), the rule applies per
        factor (the clip rule keeps or drops whole heads, centred, and crops the head
        dimension inside each head) and the result is reshaped back. A factored axis
        is no channel dimension of a channel-selecting rule (it follows the centre
        crop per factor, ``uniform`` its even spacing per factor).
      broadcast: ``(axis, factor)`` for every source factor of size 1 that is repeated
        to the target factor's size before the rule (the one kv head of a group of
        grouped-query attention becomes the kv head of each of its query heads in a
        target with one kv head per query head; :func:`dpiat_jax.heads.with_groups`).

    >>> move = TensorMove(("params", "d", "kernel"), ("params", "s", "kernel"), "d", "s",
    ...                   (3, 8), (3, 4), (3, 8))
    >>> move.overlap, move.slices[0]
    (12, (slice(None, None, None), slice(2, 6, None)))
    """

    dst: TensorKey
    src: TensorKey
    dst_layer: str
    src_layer: str
    src_shape: Shape
    dst_shape: Shape
    moved_shape: Shape
    positional: bool = False
    keep_first_row: bool = False
    channel_axes: tuple[int, ...] | None = None
    selections: tuple[tuple[int, int], ...] = ()
    prefix_axes: tuple[int, ...] = ()
    parts: tuple[int, int] | None = None
    src_index: tuple[int, int] | None = None
    dst_index: tuple[int, int] | None = None
    factors: tuple[tuple[int, Shape, Shape], ...] = ()
    broadcast: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        # a plan read back from JSON gives lists: stored as tuples (hashable, comparable)
        factors = tuple((int(a), tuple(s), tuple(d)) for a, s, d in self.factors or ())
        object.__setattr__(self, "factors", factors)
        broadcast = tuple((int(a), int(f)) for a, f in self.broadcast or ())
        object.__setattr__(self, "broadcast", broadcast)

    @property
    def overlap(self) -> int:
        """The number of target scalars written from the source (per factor on a
        factored axis)."""
        sizes = [min(a, b) for a, b in zip(self.moved_shape, self.dst_shape)]
        for axis, src, dst in factored_axes(self.factors, self.moved_shape, self.dst_shape):
            src = _broadcast_factors(axis, src, dst, self.broadcast)
            sizes[axis] = math.prod(min(a, b) for a, b in zip(src, dst))
        return math.prod(sizes)

    @property
    def slices(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """``(source slices, target slices)`` of the centre geometry (the clip rule's
        moves exactly these; a channel-selecting rule picks the channels along
        ``channel_axes`` from the source's values instead, and ``full`` fills the
        target's rim too); a prefix axis moves its first ``min(a, b)`` entries. A
        factored axis (``factors``) moves per factor instead: its slices here are the
        whole axis's, not what moves."""
        src, dst = centre_slices(self.moved_shape, self.dst_shape)
        if not self.prefix_axes:
            return src, dst
        src, dst = list(src), list(dst)
        for axis in self.prefix_axes:
            n = min(self.moved_shape[axis], self.dst_shape[axis])
            src[axis] = dst[axis] = slice(0, n)
        return tuple(src), tuple(dst)


def _broadcast_factors(
    axis: int, src: Shape, dst: Shape, broadcast: Sequence[tuple[int, int]]
) -> Shape:
    """The source factors of ``axis`` once its broadcast factors (size 1) take the
    target's sizes."""
    out = list(src)
    for a, f in broadcast:
        if a == axis and f < len(out) and out[f] == 1:
            out[f] = dst[f]
    return tuple(out)


def factored_axes(
    factors: Sequence[tuple[int, Shape, Shape]], src_shape: Shape, dst_shape: Shape
) -> tuple[tuple[int, Shape, Shape], ...]:
    """Returns the factored axes that fit both shapes.

    A factored axis applies only where the source's and the target's sizes are the
    products of their factors (a source widened along the axis by a widening rule no
    longer is: it moves as one axis).

    Args:
      factors: a move's :attr:`TensorMove.factors`.
      src_shape: the shape the rule receives from the source; dst_shape: the target's.

    Returns:
      The entries of ``factors`` that fit, in order.

    >>> factored_axes(((1, (2, 4), (4, 4)),), (3, 8), (3, 16))
    ((1, (2, 4), (4, 4)),)
    >>> factored_axes(((1, (2, 4), (4, 4)),), (3, 16), (3, 16))
    ()
    """
    return tuple(
        (axis, src, dst)
        for axis, src, dst in factors
        if axis < len(src_shape)
        and axis < len(dst_shape)
        and src_shape[axis] == math.prod(src)
        and dst_shape[axis] == math.prod(dst)
        and len(src) == len(dst)
    )


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """One channel selection a channel-selecting rule computes from the source.

    Attributes:
      space: the target's channel space (:class:`~dpiat_jax.channels.ChannelGraph`).
      src_size: the source dimension's size; size: the number of channels kept.
      members: ``(move index, dimension)`` of the source tensors that rank the space
        (its producers, or every member when none produces it).

    >>> ChannelGroup(space=0, src_size=8, size=4, members=((0, 1),)).size
    4
    """

    space: int
    src_size: int
    size: int
    members: tuple[tuple[int, int], ...]


def _positional(pair: LayerPair, collection: str, name: str, src: Shape, dst: Shape):
    """``(moved shape, keep_first_row)`` when the source is a positional embedding of
    another grid that is resized first; None otherwise (shapes only, as
    :func:`~dpiat_jax.tensors.resize_positional` decides)."""
    if collection != "params":
        return None
    label = "/".join([*pair.dst.path[-1:], name])
    kind = pair.dst.kind
    if not (is_positional_embedding(label, dst, kind) and is_positional_embedding(label, src)):
        return None
    if len(src) == 3 and src[0] != 1:
        return None
    axis = len(src) - 2
    if src[axis] == dst[axis]:
        return None
    if len(src) == 2:  # a 1-D sequence of positions: interpolated along its one axis
        return (dst[0], src[1]), False
    grid_src, grid_dst = positional_grid(src[axis]), positional_grid(dst[axis])
    if grid_src is None or grid_dst is None:
        return None
    moved = tuple(dst[axis] if i == axis else d for i, d in enumerate(src))
    return moved, grid_dst[1] and not grid_src[1]


def _step(layer: Layer, collection: str, name: str, member: int) -> tuple[int, int] | None:
    """``(axis, index)`` of the step of a stacked tensor a move reads or writes: a scan
    step's own index, member ``member`` of a parallel stack (member 0 when the stack
    has fewer); None for a tensor that is not stacked."""
    stack = layer.stack
    if stack is None or f"{collection}/{name}" not in stack.tensors:
        return None
    if stack.index is not None:
        return stack.axis, stack.index
    return stack.axis, member if member < stack.size else 0


def _members(layer: Layer) -> int:
    """The number of parallel members a target layer stands for (1 unless vmapped)."""
    stack = layer.stack
    return stack.size if stack is not None and stack.index is None else 1


def _prefix_axes(pair: LayerPair, collection: str, name: str, shape: Shape) -> tuple[int, ...]:
    """``(0,)`` for a token embedding table of both layers (its rows are tokens)."""
    if collection != "params":
        return ()
    label = "/".join([*pair.dst.path[-1:], name])
    src_label = "/".join([*pair.src.path[-1:], name])
    if is_token_embedding(label, shape, pair.dst.kind) and is_token_embedding(
        src_label, shape, pair.src.kind
    ):
        return (0,)
    return ()


def _move(pair: LayerPair, collection: str, name: str, source: Any, target: Any, member: int = 0):
    """A :class:`TensorMove`, or ``(target name, source name, reason)`` when none."""
    dst_key = tensor_key(collection, pair.dst.path, name)
    src_key = tensor_key(collection, pair.src.path, name)
    if source is None:
        return "/".join(dst_key), "/".join(src_key), "the source layer has no such tensor"
    src, dst = tuple(np.shape(source)), tuple(np.shape(target))
    if len(src) != len(dst):
        return "/".join(dst_key), "/".join(src_key), f"ranks differ ({src} vs {dst})"
    resized = _positional(pair, collection, name, src, dst)
    moved, keep_first_row = resized if resized is not None else (src, False)
    return TensorMove(
        dst_key,
        src_key,
        pair.dst.name,
        pair.src.name,
        src,
        dst,
        moved,
        positional=resized is not None,
        keep_first_row=bool(keep_first_row),
        prefix_axes=_prefix_axes(pair, collection, name, src),
        src_index=_step(pair.src, collection, name, member),
        dst_index=_step(pair.dst, collection, name, member),
    )


def plan_moves(
    pairs: Sequence[LayerPair],
) -> tuple[tuple[TensorMove, ...], tuple[tuple[str, str, str], ...]]:
    """Lists what moves for every tensor of every matched pair (shapes only).

    Args:
      pairs: the matched layer pairs (their layers may hold arrays or
        ``jax.ShapeDtypeStruct`` leaves).

    Returns:
      ``(moves, skipped)``: one :class:`TensorMove` per target tensor that takes source
      values (per member of a parallel stack), in target order, and ``(target tensor,
      source tensor, reason)`` for the matched tensors that cannot move (the source
      lacks it, or the ranks differ).

    >>> import jax
    >>> from dpiat_jax.layers import Layer
    >>> from dpiat_jax.matching import LayerPair
    >>> src = Layer(("a",), "dense", "Dense", {"params": {"kernel": jax.ShapeDtypeStruct(
    ...     (4, 8), "float32")}}, "kernel")
    >>> dst = Layer(("b",), "dense", "Dense", {"params": {"kernel": jax.ShapeDtypeStruct(
    ...     (4, 6), "float32"), "bias": jax.ShapeDtypeStruct((6,), "float32")}}, "kernel")
    >>> moves, skipped = plan_moves([LayerPair(src, dst, 0.75)])
    >>> [(m.src, m.dst, m.overlap) for m in moves]
    [(('params', 'a', 'kernel'), ('params', 'b', 'kernel'), 24)]
    >>> skipped
    (('params/b/bias', 'params/a/bias', 'the source layer has no such tensor'),)
    """
    moves: list[TensorMove] = []
    skipped: list[tuple[str, str, str]] = []
    for pair in pairs:
        for collection, group in pair.dst.tensors.items():
            for name, target in group.items():
                source = pair.src.tensors.get(collection, {}).get(name)
                stacked = _step(pair.dst, collection, name, 0) is not None
                for member in range(_members(pair.dst) if stacked else 1):
                    move = _move(pair, collection, name, source, target, member)
                    if not isinstance(move, TensorMove):
                        skipped.append(move)
                        break
                    moves.append(move)
    return tuple(moves), tuple(skipped)


def plan_channels(
    moves: Sequence[TensorMove], graph: ChannelGraph
) -> tuple[tuple[TensorMove, ...], tuple[ChannelGroup, ...]]:
    """Gives every move its channel dimensions and lists the channel selections.

    One selection per (space, source size, target size) of every shrinking channel
    dimension: members of a space whose source dimension has the same size share it.

    Args:
      moves: from :func:`plan_moves`.
      graph: the target's channel spaces (:func:`dpiat_jax.channels.target_channels`,
        or :func:`dpiat_jax.channels.call_order_channels` over the matched layers).

    Returns:
      ``(moves, groups)``: the moves with ``channel_axes`` and ``selections`` set (moves
      of tensors the graph does not know keep None: the rule applies per tensor), and
      the :class:`ChannelGroup` records the selections index.

    >>> from dpiat_jax.channels import ChannelGraph
    >>> move = TensorMove(("params", "d", "kernel"), ("params", "s", "kernel"), "d", "s",
    ...                   (3, 8), (3, 4), (3, 8))
    >>> graph = ChannelGraph({("params", "d", "kernel"): (None, 0)},
    ...                      {("params", "d", "kernel"): (False, True)})
    >>> moves, groups = plan_channels([move], graph)
    >>> moves[0].channel_axes, moves[0].selections, groups[0].members
    ((1,), ((1, 0),), ((0, 1),))
    """
    members: dict[tuple[int, int, int], list[tuple[int, int, bool]]] = {}
    for i, move in enumerate(moves):
        spaces = _spaces(graph, move)
        if spaces is None:
            continue
        producers = graph.producers.get(move.dst, (False,) * len(spaces))
        for axis, space in enumerate(spaces):
            a, b = move.moved_shape[axis], move.dst_shape[axis]
            if space is not None and a > b:
                members.setdefault((space, a, b), []).append((i, axis, producers[axis]))
    index = {group: n for n, group in enumerate(members)}
    groups = tuple(
        ChannelGroup(space, a, b, _rankers(moves, members[(space, a, b)]))
        for space, a, b in members
    )
    out = []
    for move in moves:
        if _spaces(graph, move) is None:
            out.append(move)
            continue
        spaces = _spaces(graph, move)
        axes = tuple(a for a in channel_axes(graph, move.dst) or () if spaces[a] is not None)
        chosen = tuple(
            (axis, index[(spaces[axis], move.moved_shape[axis], move.dst_shape[axis])])
            for axis in axes or ()
            if move.moved_shape[axis] > move.dst_shape[axis]
        )
        out.append(dataclasses.replace(move, channel_axes=axes, selections=chosen))
    return tuple(out), groups


def _spaces(graph: ChannelGraph, move: TensorMove) -> tuple | None:
    """The target tensor's channel spaces; None when the graph does not know it or the
    move handles one step of a stacked tensor (the graph sees the stacked shape) or a
    fused part. A factored axis has no space (it moves per factor)."""
    if move.dst_index is not None or move.src_index is not None:
        return None
    if move.parts is not None and not move.factors:
        return None
    spaces = graph.spaces.get(move.dst)
    if spaces is None or not move.factors:
        return spaces
    factored = {axis for axis, _, _ in move.factors}
    return tuple(None if axis in factored else s for axis, s in enumerate(spaces))


def _rankers(moves: Sequence[TensorMove], members: list) -> tuple[tuple[int, int], ...]:
    """The members that rank a space: its producers, else all; one per source tensor
    and dimension."""
    chosen = [(i, axis) for i, axis, producer in members if producer]
    chosen = chosen or [(i, axis) for i, axis, _ in members]
    seen, out = set(), []
    for i, axis in chosen:
        source = (moves[i].src, moves[i].positional, axis)
        if source not in seen:
            seen.add(source)
            out.append((i, axis))
    return tuple(out)


def _index(x: jax.Array, index: tuple[int, int] | None) -> jax.Array:
    """One step of a stacked tensor (the tensor itself when ``index`` is None)."""
    if index is None:
        return x
    axis, i = index
    return jax.lax.index_in_dim(x, i, axis, keepdims=False)


def _restack(fresh: jax.Array, axis: int, steps: Mapping[int, jax.Array]) -> jax.Array:
    """A stacked tensor whose written steps are replaced, the others kept fresh."""
    size = fresh.shape[axis]
    pieces = [steps[i] if i in steps else _index(fresh, (axis, i)) for i in range(size)]
    return jnp.stack(pieces, axis=axis)


def _moved_source(move: TensorMove, source: jax.Array) -> jax.Array:
    """The source as the rule receives it (one step of a stacked source; resized over
    the grid when positional)."""
    source = _index(source, move.src_index)
    if not move.positional:
        return source
    return resize_positional(source, move.dst_shape)[0]


def _apply_parts(
    move: TensorMove, rule: TensorRule, source: jax.Array, dst: jax.Array, rng: PRNGKey, chosen
) -> jax.Array:
    """A fused move: part ``i`` of the source into part ``i`` of the target, each by the
    rule on its own (a part's key is ``fold_in(rng, i)``), concatenated again."""
    axis, count = move.parts
    one = dataclasses.replace(move, parts=None, channel_axes=None, selections=())
    pieces = [
        _apply_one(one, rule, s, d, jax.random.fold_in(rng, i), {})
        for i, (s, d) in enumerate(
            zip(jnp.split(source, count, axis), jnp.split(jnp.asarray(dst), count, axis))
        )
    ]
    return jnp.concatenate(pieces, axis=axis)


def _expanded(shape: Shape, factors: Sequence[tuple[int, Shape]]) -> Shape:
    """``shape`` with every factored axis replaced by its factors."""
    sizes: dict[int, Shape] = dict(factors)
    return tuple(n for axis, d in enumerate(shape) for n in sizes.get(axis, (d,)))


def _new_axis(axis: int, factors: Sequence[tuple[int, Shape, Shape]]) -> int:
    """Where an axis lands once the factored axes before it are expanded."""
    return axis + sum(len(f) - 1 for a, f, _ in factors if a < axis)


def _apply_factored(
    move: TensorMove,
    factors: tuple[tuple[int, Shape, Shape], ...],
    rule: TensorRule,
    source: jax.Array,
    dst: jax.Array,
    rng: PRNGKey,
    chosen: Mapping[int, jax.Array],
) -> jax.Array:
    """A move with factored axes: both sides reshaped into their factors, the rule
    applied to the reshaped tensors (per factor), the result reshaped back (a fused
    split of a factored axis is implied by its factors)."""
    src_shape = _expanded(tuple(source.shape), [(a, s) for a, s, _ in factors])
    dst_shape = _expanded(tuple(dst.shape), [(a, d) for a, _, d in factors])
    source = jnp.reshape(source, src_shape)
    for axis, f in move.broadcast:
        at = _new_axis(axis, factors) + f
        if any(a == axis for a, _, _ in factors) and source.shape[at] == 1:
            source = jnp.repeat(source, dst_shape[at], axis=at)
    src_shape = tuple(source.shape)
    factored = {a for a, _, _ in factors}
    parts = move.parts
    if parts is not None:
        parts = None if parts[0] in factored else (_new_axis(parts[0], factors), parts[1])
    inner = dataclasses.replace(
        move,
        src_shape=src_shape,
        dst_shape=dst_shape,
        moved_shape=src_shape,
        factors=(),
        broadcast=(),
        parts=parts,
        channel_axes=None
        if move.channel_axes is None
        else tuple(_new_axis(a, factors) for a in move.channel_axes if a not in factored),
        prefix_axes=tuple(_new_axis(a, factors) for a in move.prefix_axes if a not in factored),
        selections=(),
    )
    moved = {_new_axis(a, factors): v for a, v in chosen.items() if a not in factored}
    new = _apply_one(inner, rule, source, jnp.reshape(dst, dst_shape), rng, moved)
    return jnp.reshape(new, dst.shape)


def _apply_one(
    move: TensorMove, rule: TensorRule, source: jax.Array, dst: jax.Array, rng: PRNGKey, chosen
) -> jax.Array:
    """One move: the rule's result, checked, with a class-token row kept; along a
    prefix axis the rule sees the first ``min(a, b)`` entries of both sides only; a
    factored axis moves per factor."""
    factors = factored_axes(move.factors, tuple(source.shape), tuple(dst.shape))
    if factors:
        return _apply_factored(move, factors, rule, source, dst, rng, chosen)
    if move.parts is not None:
        return _apply_parts(move, rule, source, dst, rng, chosen)
    full = dst
    if move.prefix_axes:
        src_slices, dst_slices = move.slices
        keep = [slice(None)] * source.ndim
        for axis in move.prefix_axes:
            keep[axis] = src_slices[axis]
        source = source[tuple(keep)]
        for axis in move.prefix_axes:
            keep[axis] = dst_slices[axis]
        dst = dst[tuple(keep)]
    if move.channel_axes is None:
        new = rule.apply(source, dst, rng)
    else:
        new = rule.apply_channels(source, dst, rng, move.channel_axes, chosen)
    if move.prefix_axes and tuple(new.shape) == tuple(dst.shape) and new.dtype == dst.dtype:
        new = place(new, full, [0] * full.ndim)
        dst = full
    if tuple(new.shape) != tuple(dst.shape) or new.dtype != dst.dtype:
        raise ValueError(
            f"tensor_rule returned shape {tuple(new.shape)} dtype {new.dtype} for "
            f"{'/'.join(move.dst)}; it must return the target's shape "
            f"{tuple(dst.shape)} and dtype {dst.dtype}."
        )
    if move.keep_first_row:  # a class-token row the source does not have
        first = (slice(None),) * (dst.ndim - 2) + (slice(0, 1),)
        new = jnp.asarray(new).at[first].set(jnp.asarray(dst)[first])
    return new


def apply_moves(
    moves: Sequence[TensorMove],
    groups: Sequence[ChannelGroup],
    rule: TensorRule,
    sources: Mapping[TensorKey, jax.Array],
    targets: Mapping[TensorKey, jax.Array],
    rng: PRNGKey,
) -> dict[TensorKey, jax.Array]:
    """Moves the source tensors into the target's (pure, jittable).

    Args:
      moves: the planned moves (with channel dimensions for a channel-selecting rule).
      groups: the channel selections the moves index.
      rule: the tensor rule.
      sources: source key -> array (every ``move.src``).
      targets: target key -> fresh array (every ``move.dst``, and any other tensor).
      rng: the rules' randomness; move ``i`` gets ``fold_in(rng, i + 1)``.

    Returns:
      ``targets`` with every moved tensor replaced (a new dict; nothing is mutated).

    >>> import jax.numpy as jnp
    >>> from dpiat_jax.tensors import get_tensor_rule
    >>> move = TensorMove(("params", "k"), ("params", "k"), "k", "k", (4,), (2,), (4,))
    >>> out = apply_moves([move], [], get_tensor_rule("clip"),
    ...                   {("params", "k"): jnp.arange(4.0)}, {("params", "k"): jnp.zeros(2)},
    ...                   jax.random.key(0))
    >>> out[("params", "k")]
    Array([1., 2.], dtype=float32)
    """
    moved = [_moved_source(m, sources[m.src]) for m in moves]
    selections = [
        rule.select_channels([(moved[i], axis) for i, axis in g.members], g.size) for g in groups
    ]
    out = dict(targets)
    steps: dict[TensorKey, dict[int, jax.Array]] = {}
    axes: dict[TensorKey, int] = {}
    for counter, (move, source) in enumerate(zip(moves, moved), start=1):
        chosen = {axis: selections[g] for axis, g in move.selections}
        key = jax.random.fold_in(rng, counter)
        dst = _index(targets[move.dst], move.dst_index)
        new = _apply_one(move, rule, source, dst, key, chosen)
        if move.dst_index is None:
            out[move.dst] = new
        else:
            axes[move.dst] = move.dst_index[0]
            steps.setdefault(move.dst, {})[move.dst_index[1]] = new
    for name, written in steps.items():
        out[name] = _restack(targets[name], axes[name], written)
    return out


def written_scalars(moves: Sequence[TensorMove]) -> dict[str, int]:
    """Returns the target scalars written per target layer name.

    Args:
      moves: the planned moves.

    Returns:
      target layer name -> scalars written from the source (layers without moves are
      absent).

    >>> written_scalars([TensorMove(("params", "d", "k"), ("params", "s", "k"), "d", "s",
    ...                             (4, 8), (4, 6), (4, 8))])
    {'d': 24}
    """
    out: dict[str, int] = {}
    for move in moves:
        out[move.dst_layer] = out.get(move.dst_layer, 0) + move.overlap
    return out


def checked_tensors(pairs: Sequence[LayerPair]) -> tuple[TensorKey, ...]:
    """Returns the keys of the matched source tensors a non-finite check looks at.

    Args:
      pairs: the matched layer pairs.

    Returns:
      The floating-point tensors of every matched source layer, each once, in order.

    >>> import jax
    >>> from dpiat_jax.layers import Layer
    >>> from dpiat_jax.matching import LayerPair
    >>> layer = Layer(("a",), "dense", "Dense", {"params": {"kernel": jax.ShapeDtypeStruct(
    ...     (2, 2), "float32")}}, "kernel")
    >>> checked_tensors([LayerPair(layer, layer, 1.0)])
    (('params', 'a', 'kernel'),)
    """
    keys: dict[TensorKey, None] = {}
    for pair in pairs:
        for collection, group in pair.src.tensors.items():
            for name, array in group.items():
                if jnp.issubdtype(array.dtype, jnp.inexact):
                    keys.setdefault(tensor_key(collection, pair.src.path, name))
    return tuple(keys)


def write_tensors(
    pairs: list[LayerPair],
    dst_variables: Variables,
    rule: TensorRule,
    rng: PRNGKey,
    *,
    channels: ChannelGraph | None = None,
) -> tuple[dict, dict[str, int], list[tuple[str, str, str]]]:
    """Applies ``rule`` to every tensor of every matched pair, on the layers' arrays.

    The one-call form of :func:`plan_moves`, :func:`plan_channels` and
    :func:`apply_moves` for pairs whose source layers hold arrays (as
    :func:`dpiat_jax.api.module_blocks` with variables gives them).

    Args:
      pairs: the matched layer pairs; the source layers hold the arrays to move.
      dst_variables: the target's fresh variables.
      rule: the tensor rule.
      rng: the rules' randomness.
      channels: the target's :class:`~dpiat_jax.channels.ChannelGraph` (from
        :func:`dpiat_jax.channels.target_channels`), used only by rules that keep
        channel subsets; when None those rules follow the target's call order
        (:func:`dpiat_jax.channels.call_order_channels` over the matched layers).

    Returns:
      ``(variables, written, skipped)``: the new target variables (a plain nested
      dict), scalars written per target layer name, and the tensors that could not be
      moved with the reason.

    >>> import jax.numpy as jnp
    >>> from dpiat_jax.layers import Layer
    >>> from dpiat_jax.matching import LayerPair
    >>> from dpiat_jax.tensors import get_tensor_rule
    >>> layer = Layer(("a",), "dense", "Dense", {"params": {"bias": jnp.ones(2)}}, "bias")
    >>> out, written, _ = write_tensors([LayerPair(layer, layer, 1.0)],
    ...                                 {"params": {"a": {"bias": jnp.zeros(2)}}},
    ...                                 get_tensor_rule("clip"), jax.random.key(0))
    >>> out["params"]["a"]["bias"], written
    (Array([1., 1.], dtype=float32), {'a': 2})
    """
    moves, skipped = plan_moves(pairs)
    groups: tuple[ChannelGroup, ...] = ()
    if rule.selects_channels:
        graph = channels if channels is not None else call_order_channels([p.dst for p in pairs])
        moves, groups = plan_channels(moves, graph)
    sources = {}
    for pair in pairs:
        for collection, group in pair.src.tensors.items():
            for name, array in group.items():
                sources[tensor_key(collection, pair.src.path, name)] = array
    flat = apply_moves(moves, groups, rule, sources, flat_variables(dst_variables), rng)
    return traverse_util.unflatten_dict(flat), written_scalars(moves), list(skipped)


def nonfinite_tensors(pairs: list[LayerPair]) -> list[str]:
    """Returns the names of the matched source tensors that hold NaN or inf.

    The check runs where the arrays live (sharded arrays are reduced shard-wise) and
    fetches one boolean per tensor.

    Args:
      pairs: the matched layer pairs; the source layers hold arrays.

    Returns:
      The ``"/"``-joined keys of the non-finite tensors.

    >>> import jax.numpy as jnp
    >>> from dpiat_jax.layers import Layer
    >>> from dpiat_jax.matching import LayerPair
    >>> layer = Layer(("a",), "dense", "Dense", {"params": {"bias": jnp.array([1.0, jnp.inf])}},
    ...               "bias")
    >>> nonfinite_tensors([LayerPair(layer, layer, 1.0)])
    ['params/a/bias']
    """
    arrays = {}
    for pair in pairs:
        for collection, group in pair.src.tensors.items():
            for name, array in group.items():
                arrays[tensor_key(collection, pair.src.path, name)] = array
    keys = checked_tensors(pairs)
    if not keys:
        return []
    finite = jax.device_get([jnp.all(jnp.isfinite(arrays[k])) for k in keys])
    return ["/".join(k) for k, ok in zip(keys, finite) if not ok]
