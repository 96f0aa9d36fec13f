"""Widening that keeps the source's function: Net2Net's Net2WiderNet for whole channel spaces.

Chen, Goodfellow and Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer"
(ICLR 2016), widen a layer from ``a`` to ``b > a`` units with a mapping ``g`` from the
new units to the old ones: ``g(j) = j`` for ``j < a`` and a random old unit for every
new one. The unit's *incoming* weights (its kernel's output column, its bias, the
BatchNorm scale, bias and statistics of its channel) are copied, its *outgoing* weights
(the next kernel's input row) are copied and divided by the number of copies of the old
unit, ``|g^-1(g(j))|``. The wider network computes the same function as the narrow one.

Here one mapping is drawn per *channel space* of the target (:mod:`dpiat_jax.channels`:
the dimensions the target's data flow ties together, so a kernel's output, its bias, the
norm after it, a residual partner and the next kernel's input share one mapping), and
each member dimension is *producing* (copied) or *consuming* (copied and divided). Which
is which is read from the target's jaxpr: a dimension a contraction sums over (a
``dot_general`` contracting dimension, a convolution kernel's input-feature dimension) of
a parameter consumes; every other member (a kernel's output dimension, a bias, a norm's
vectors, a depthwise kernel's channels) produces.

What is preserved, and what is not:

* plain MLPs, convnets with BatchNorm in inference mode, depthwise convolutions and
  residual adds keep their function exactly (up to float rounding);
* a space whose channels the target also combines other than through a parameter is
  widened the same way but does *not* keep the function: LayerNorm (or RMSNorm)
  statistics over the widened axis (the copies shift the mean and the variance),
  attention scores over a widened head dimension, a grouped convolution's input and
  output, a flatten before a dense layer. The graph marks those spaces mixed
  (:attr:`~dpiat_jax.channels.ChannelGraph.mixed`) and :class:`WidenedSpace` records it
  (``preserved=False``);
* a space is widened only when it is *hidden*: one of its members produces it and a
  parameter's contraction consumes it. A space whose members all consume (a dense layer
  after a flatten) or that nothing consumes (the output layer of a target with more
  classes: copies would make the new classes duplicates of old ones) follows clip.

Shrinking or equal dimensions, and every dimension that is not a channel dimension
(conv windows), follow the clip rule. The rule is ``tensor_rule="net2net"``
(:data:`dpiat_jax.tensors.TENSOR_RULES`).

>>> import jax.numpy as jnp
>>> mapping = growth_mapping(0, 2, 4)
>>> [int(i) for i in mapping[:2]], mapping.shape
([0, 1], (4,))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from dpiat_jax.kinds import is_conv, is_depthwise_conv
from dpiat_jax.spec import LayerSpec
from dpiat_jax.types import PRNGKey

if TYPE_CHECKING:  # annotations only: tensors.py imports this module
    from dpiat_jax.channels import ChannelGraph
    from dpiat_jax.variables import TensorKey, TensorMove

__all__ = [
    "WidenedAxis",
    "WidenedSpace",
    "growth_mapping",
    "width_free",
    "widen",
    "plan_widening",
    "widened_moves",
    "widened_sources",
]

#: One dimension to widen: ``(axis, mapping, consumes)``; ``mapping[j]`` is the source
#: channel target channel ``j`` copies, ``consumes`` divides by the copy counts.
WidenedAxis = tuple[int, jax.Array, bool]


def width_free(tree: object) -> object:
    """Return a spec tree with every channel size set to 1: layers compared by kind and window.

    The published score prefers equal shapes, so against a target twice as wide the
    alignment pairs each target stage with the *next* source stage (whose widths are the
    target's), and the grown network cannot compute the source's function. A widening rule
    asks for the opposite: the target is the source grown, and its layers correspond in
    order. Matched on these specs, two layers of one kind score by their convolution
    windows alone (a 3x3 conv still prefers a 3x3 one to a 1x1), so the programme aligns
    the block trees by their structure. :func:`dpiat_jax.plan` uses it for a rule with a
    ``widen`` function (``net2net``).

    Args:
        tree: a spec tree (nested lists of :class:`~dpiat_jax.spec.LayerSpec`).

    Returns:
        The same tree with each shape's channel sizes (the last two of a convolution
        kernel, every size of another tensor) replaced by 1; placeholders stay empty.

    >>> width_free([LayerSpec("conv2d", (3, 3, 16, 32)), [LayerSpec("dense", (32, 10))]])
    [LayerSpec(kind='conv2d', shape=(3, 3, 1, 1)), [LayerSpec(kind='dense', shape=(1, 1))]]
    """
    if isinstance(tree, LayerSpec):
        shape = tree.shape
        conv = is_conv(tree.kind) or is_depthwise_conv(tree.kind)
        window = shape[:-2] if conv and len(shape) > 2 else ()
        return LayerSpec(tree.kind, (*window, *(1,) * (len(shape) - len(window))))
    return [width_free(t) for t in tree]


def _key(rng: PRNGKey | int | None) -> PRNGKey:
    if rng is None:
        return jax.random.key(0)
    if isinstance(rng, int) and not isinstance(rng, bool):
        return jax.random.key(rng)
    return rng


def growth_mapping(rng: PRNGKey | int | None, a: int, b: int) -> jax.Array:
    """Returns Net2Net's mapping ``g`` from ``b`` target channels to ``a`` source ones.

    Target channel ``j < a`` takes source channel ``j``; every new channel takes a source
    channel drawn uniformly with ``rng``.

    Args:
      rng: a jax PRNG key, an int seed or None (seed 0).
      a: the source size.
      b: the target size (at least ``a``).

    Returns:
      An int32 vector of length ``b``.

    Raises:
      ValueError: when ``b < a`` or ``a < 1``.

    >>> [int(i) for i in growth_mapping(3, 2, 3)[:2]]
    [0, 1]
    """
    if a < 1 or b < a:
        raise ValueError(f"growth_mapping needs 1 <= a <= b, got a={a}, b={b}.")
    new = jax.random.randint(_key(rng), (b - a,), 0, a, dtype=jnp.int32)
    return jnp.concatenate([jnp.arange(a, dtype=jnp.int32), new])


def widen(src: jax.Array, axes: Sequence[WidenedAxis]) -> jax.Array:
    """Widens ``src`` along ``axes``: gathers through each mapping, divides consumers.

    Along a consuming axis every copy of source channel ``i`` is divided by the number
    of target channels that copy it, so a following sum over the channels is unchanged.

    Args:
      src: the source tensor.
      axes: ``(axis, mapping, consumes)`` triples (:data:`WidenedAxis`), at most one
        per axis.

    Returns:
      ``src`` with ``src.shape[axis]`` replaced by ``len(mapping)`` on each axis, in
      ``src``'s dtype (the division is done in float32 for lower-precision floats).

    >>> import jax.numpy as jnp
    >>> g = jnp.array([0, 1, 1])
    >>> widen(jnp.array([[1.0, 2.0], [3.0, 4.0]]), [(0, g, True), (1, g, False)])
    Array([[1. , 2. , 2. ],
           [1.5, 2. , 2. ],
           [1.5, 2. , 2. ]], dtype=float32)
    """
    out = jnp.asarray(src)
    for axis, mapping, consumes in axes:
        out = jnp.take(out, mapping, axis=axis)
        if consumes:
            counts = jnp.bincount(mapping, length=src.shape[axis])[mapping]
            shape = [1] * out.ndim
            shape[axis] = -1
            wide = jnp.promote_types(out.dtype, jnp.float32)
            out = (out.astype(wide) / counts.reshape(shape).astype(wide)).astype(src.dtype)
    return out


@dataclasses.dataclass(frozen=True)
class WidenedSpace:
    """One channel space of the target that grows with a Net2Net mapping.

    Attributes:
      space: the target's channel space (:class:`~dpiat_jax.channels.ChannelGraph`).
      src_size: the source size ``a``; size: the target size ``b > a``.
      members: ``(move index, axis, consumes)`` of every planned move that widens along
        this space: ``consumes`` divides by the copy counts (a kernel's input dimension).
      preserved: False when the target combines the space's channels other than through
        a parameter (LayerNorm statistics, attention scores, a flatten): widened alike,
        but the function changes.

    >>> WidenedSpace(space=0, src_size=4, size=6, members=((0, 1, False),)).preserved
    True
    """

    space: int
    src_size: int
    size: int
    members: tuple[tuple[int, int, bool], ...]
    preserved: bool = True


def _widenable(move: TensorMove) -> bool:
    """Whether the graph's view of the tensor is the move's (not one step of a stacked
    tensor, not a fused part, not an axis of attention heads moved per factor)."""
    return (
        move.parts is None
        and not move.factors
        and move.src_index is None
        and move.dst_index is None
    )


def _skipped_axes(move: TensorMove) -> set[int]:
    """Axes that keep their own alignment: a token table's rows, a positional
    embedding's tokens."""
    skipped = set(move.prefix_axes)
    if move.positional:
        skipped.add(len(move.dst_shape) - 2)
    return skipped


def plan_widening(moves: Sequence[TensorMove], graph: ChannelGraph) -> tuple[WidenedSpace, ...]:
    """Lists the growing channel spaces of a transfer and the moves that widen along them.

    One :class:`WidenedSpace` per ``(space, source size, target size)`` with ``a < b``
    that has both a producing and a consuming member among the moves (members whose
    matched source has another size get their own mapping, as selections do in
    :func:`dpiat_jax.variables.plan_channels`).

    Args:
      moves: the planned moves (:func:`dpiat_jax.variables.plan_moves`).
      graph: the target's channel graph, with ``consumers`` (and ``mixed``) set.

    Returns:
      The widened spaces, in the order of their first member.

    >>> from dpiat_jax.channels import ChannelGraph
    >>> from dpiat_jax.variables import TensorMove
    >>> moves = [TensorMove(("params", "a", "kernel"), ("params", "a", "kernel"), "a", "a",
    ...                     (3, 2), (3, 4), (3, 2)),
    ...          TensorMove(("params", "b", "kernel"), ("params", "b", "kernel"), "b", "b",
    ...                     (2, 1), (4, 1), (2, 1))]
    >>> graph = ChannelGraph({("params", "a", "kernel"): (None, 0),
    ...                       ("params", "b", "kernel"): (0, None)},
    ...                      {("params", "a", "kernel"): (False, True),
    ...                       ("params", "b", "kernel"): (False, False)}, "jaxpr",
    ...                      {("params", "b", "kernel"): (True, False)})
    >>> plan_widening(moves, graph)[0].members
    ((0, 1, False), (1, 0, True))
    """
    groups: dict[tuple[int, int, int], list[tuple[int, int, bool]]] = {}
    for i, move in enumerate(moves):
        spaces = graph.spaces.get(move.dst) if _widenable(move) else None
        if spaces is None:
            continue
        consumers = graph.consumers.get(move.dst, (False,) * len(spaces))
        skipped = _skipped_axes(move)
        for axis, space in enumerate(spaces):
            a, b = move.moved_shape[axis], move.dst_shape[axis]
            if space is None or a >= b or axis in skipped:
                continue
            groups.setdefault((space, a, b), []).append((i, axis, consumers[axis]))
    return tuple(
        WidenedSpace(space, a, b, tuple(members), space not in graph.mixed)
        for (space, a, b), members in groups.items()
        if any(not consumes for _, _, consumes in members)
        and any(consumes for _, _, consumes in members)
    )


def widened_sources(
    moves: Sequence[TensorMove],
    spaces: Sequence[WidenedSpace],
    sources: Mapping[TensorKey, jax.Array],
    rng: PRNGKey,
    widen_fn: Callable[[jax.Array, Sequence[WidenedAxis]], jax.Array] = widen,
) -> tuple[tuple[TensorMove, ...], dict[TensorKey, jax.Array]]:
    """Widens the sources of the moves along their growing channel spaces (pure, jittable).

    Space ``n`` draws its mapping with ``fold_in(rng, n)``
    (:func:`growth_mapping`); every move that widens gets its own widened source (two
    target tensors may read one source tensor) under a new key, and its shapes are
    updated, so the clip rule then moves the rest (equal channel dimensions copy; other
    dimensions follow clip).

    Args:
      moves: the planned moves.
      spaces: from :func:`plan_widening`.
      sources: source key -> array.
      rng: the mappings' randomness.
      widen_fn: how a source is widened along its axes (the rule's ``widen``).

    Returns:
      ``(moves, sources)``: the moves with the widened ones rewritten, and the sources
      with the widened arrays added.

    >>> import jax.numpy as jnp
    >>> from dpiat_jax.variables import TensorMove
    >>> move = TensorMove(("params", "b"), ("params", "b"), "l", "l", (2,), (3,), (2,))
    >>> space = WidenedSpace(0, 2, 3, ((0, 0, False),))
    >>> new_moves, new_sources = widened_sources(
    ...     [move], [space], {("params", "b"): jnp.array([1.0, 2.0])}, jax.random.key(0))
    >>> new_moves[0].moved_shape, new_sources[new_moves[0].src].shape
    ((3,), (3,))
    """
    per_move: dict[int, list[WidenedAxis]] = {}
    for n, space in enumerate(spaces):
        mapping = growth_mapping(jax.random.fold_in(rng, n), space.src_size, space.size)
        for i, axis, consumes in space.members:
            per_move.setdefault(i, []).append((axis, mapping, consumes))
    out_moves, out_sources = list(widened_moves(moves, spaces)), dict(sources)
    for i, axes in per_move.items():
        out_sources[out_moves[i].src] = widen_fn(sources[moves[i].src], axes)
    return tuple(out_moves), out_sources


def widened_moves(
    moves: Sequence[TensorMove], spaces: Sequence[WidenedSpace]
) -> tuple[TensorMove, ...]:
    """Returns the moves as the widened sources make them (shapes only).

    A widened move reads a source of its own (key ``("<widened i>", *src)``) whose
    widened dimensions have the target's sizes; the report counts its target scalars as
    written from the source.

    Args:
      moves: the planned moves.
      spaces: from :func:`plan_widening`.

    Returns:
      The moves, the widened ones with their new source key and shapes.

    >>> from dpiat_jax.variables import TensorMove
    >>> move = TensorMove(("params", "b"), ("params", "b"), "l", "l", (2,), (3,), (2,))
    >>> widened_moves([move], [WidenedSpace(0, 2, 3, ((0, 0, False),))])[0].src
    ('<widened 0>', 'params', 'b')
    """
    sizes: dict[int, dict[int, int]] = {}
    for space in spaces:
        for i, axis, _ in space.members:
            sizes.setdefault(i, {})[axis] = space.size
    out = list(moves)
    for i, axes in sizes.items():
        move = moves[i]
        src_shape, moved_shape = list(move.src_shape), list(move.moved_shape)
        for axis, size in axes.items():
            src_shape[axis] = moved_shape[axis] = size
        out[i] = dataclasses.replace(
            move,
            src=(f"<widened {i}>", *move.src),
            src_shape=tuple(src_shape),
            moved_shape=tuple(moved_shape),
        )
    return tuple(out)
