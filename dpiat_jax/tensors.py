"""Tensors: moving one matched source tensor into a target tensor (design.md, "Tensor transfer").

A tensor rule is a function ``(src, dst, rng) -> array`` that returns an array with the
shape and dtype of ``dst`` holding what it takes from ``src``; ``dst`` is the target's
fresh initialisation and supplies every position the source does not cover. Rules use
only static shapes and jnp operations, so they are jit-compatible.

The rules of design.md, selectable by name (:data:`TENSOR_RULES`, :func:`get_tensor_rule`):
``clip`` (the default: centre-crop or centre-place, slices only), ``magnitude`` (keep the
largest-L1 channels when shrinking, source at the start when growing), ``full`` (every
target position filled from a source position, random ones outside the centre),
``uniform`` (evenly spaced source positions when shrinking) and ``net2net`` (Net2Net's
function-preserving widening when growing, clip otherwise: :mod:`dpiat_jax.widening`).

Channel-consistent rules. A rule that keeps a *subset* of channels also carries two
functions in its :class:`TensorRule` record, which :func:`dpiat_jax.variables.write_tensors`
uses to keep one subset per channel space of the target (:mod:`dpiat_jax.channels`):

* ``select_channels(members, b) -> indices``: ``members`` are ``(source array,
  dimension)`` pairs that rank one channel space (the output dimensions of its
  producing kernels); returns the ``b`` source indices to keep (int array, in order);
* ``apply_channels(src, dst, rng, channel_axes, selections) -> array``: the rule
  with the target's channel dimensions ``channel_axes`` known and, for the shrinking
  ones, the source indices to keep (``selections``: dimension -> indices).

``magnitude`` and ``uniform`` have both; ``clip`` and ``full`` (contiguous centres, or
positions drawn per tensor) and plain user functions have neither and are applied per
tensor as they are.

Widening rules. A rule may instead carry ``widen(src, axes) -> array``
(:func:`dpiat_jax.widening.widen` for ``net2net``): a plan then draws one mapping per
growing channel space of the target, widens each source along its growing channel
dimensions (copies where the dimension produces the space, copies divided by the copy
counts where a contraction consumes it) and moves the rest by the clip rule
(:func:`dpiat_jax.widening.plan_widening`).

Positional embeddings are found here too (:func:`is_positional_embedding`: the one place
that decides which tensors are positional) and resized over their patch grid by
interpolation (:func:`resize_positional`) before any rule sees them; that is a property
of the tensor, so it holds for every rule.

>>> import jax.numpy as jnp
>>> sorted(TENSOR_RULES)
['clip', 'full', 'magnitude', 'net2net', 'uniform']
>>> TENSOR_RULES["uniform"](jnp.arange(5.0), jnp.zeros(3))
Array([0., 2., 4.], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpiat_jax import kinds
from dpiat_jax.types import PRNGKey, Shape
from dpiat_jax.widening import WidenedAxis, growth_mapping, widen

__all__ = [
    "TensorRule",
    "TensorFn",
    "RuleRng",
    "SelectChannelsFn",
    "ApplyChannelsFn",
    "WidenFn",
    "clip",
    "magnitude",
    "full",
    "uniform",
    "net2net",
    "uniform_indices",
    "centre_slices",
    "place",
    "is_token_embedding",
    "channel_norms",
    "positional_grid",
    "is_positional_embedding",
    "resize_positional",
    "TENSOR_RULES",
    "get_tensor_rule",
    "tensor_rule_name",
]

#: What a rule takes as ``rng``: a jax PRNG key, an int seed, or None (seed 0).
RuleRng = PRNGKey | int | None
#: ``(src, dst, rng) -> array``: a tensor rule as a plain function.
TensorFn = Callable[[jax.Array, jax.Array, RuleRng], jax.Array]
#: ``(members, b) -> indices``: the channels one channel space keeps.
SelectChannelsFn = Callable[[Sequence[tuple[jax.Array, int]], int], jax.Array]
#: ``(src, dst, rng, channel_axes, selections) -> array``: the rule with known channels.
ApplyChannelsFn = Callable[
    [jax.Array, jax.Array, RuleRng, Sequence[int], Mapping[int, jax.Array]], jax.Array
]
#: ``(src, axes) -> array``: a widening rule's source widened along ``(axis, mapping,
#: consumes)`` triples (:func:`dpiat_jax.widening.widen`).
WidenFn = Callable[[jax.Array, Sequence[WidenedAxis]], jax.Array]


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """A tensor rule: how one matched source tensor moves into a target tensor.

    Like optax's ``GradientTransformation``, a rule is a small record of functions.

    Attributes:
      name: the name a report records (the registry name for the built-in rules).
      apply: ``(src, dst, rng) -> array`` with ``dst``'s shape and dtype; ``dst`` is the
        target's fresh init and supplies every position the source does not cover.
      select_channels: for a channel-selecting rule, ``(members, b) -> indices`` (see
        the module notes); None for a rule applied per tensor.
      apply_channels: for a channel-selecting rule, ``(src, dst, rng, channel_axes,
        selections) -> array``; None otherwise.
      widen: for a widening rule, ``(src, axes) -> array`` (:data:`WidenFn`): in a
        transfer every growing channel space of the target gets one mapping, each source
        is widened along it and the clip rule moves the rest; None otherwise.

    A record is callable as its ``apply``:

    >>> import jax.numpy as jnp
    >>> rule = get_tensor_rule("clip")
    >>> rule(jnp.arange(4.0), jnp.zeros(2), None)
    Array([1., 2.], dtype=float32)
    >>> rule.selects_channels
    False
    """

    name: str
    apply: TensorFn
    select_channels: SelectChannelsFn | None = None
    apply_channels: ApplyChannelsFn | None = None
    widen: WidenFn | None = None

    def __post_init__(self) -> None:
        if (self.select_channels is None) != (self.apply_channels is None):
            raise ValueError(
                f"TensorRule {self.name!r}: give both select_channels and apply_channels "
                "(a channel-selecting rule) or neither (a per-tensor rule)."
            )
        if self.widen is not None and self.select_channels is not None:
            raise ValueError(
                f"TensorRule {self.name!r}: a rule either selects channels or widens them, "
                "not both."
            )

    @property
    def widens_channels(self) -> bool:
        """Whether the rule widens whole channel spaces (``widen`` is set)."""
        return self.widen is not None

    @property
    def selects_channels(self) -> bool:
        """Whether the rule keeps one channel subset per channel space."""
        return self.select_channels is not None

    def __call__(self, src: jax.Array, dst: jax.Array, rng: RuleRng = None) -> jax.Array:
        """Applies the rule to one tensor pair (``apply``).

        Args:
          src: the matched source tensor.
          dst: the target tensor's fresh initialisation.
          rng: a jax PRNG key, an int seed or None (used by randomised rules).

        Returns:
          An array of ``dst``'s shape and dtype.
        """
        return self.apply(src, dst, rng)


def centre_slices(src_shape: Shape, dst_shape: Shape) -> tuple[tuple[slice, ...], ...]:
    """Returns ``(src_slices, dst_slices)`` of the clip rule.

    Per dimension with source size a and target size b: a < b puts the whole source at
    the centre of the target (from ``(b - a) // 2``); a > b takes the centre of the
    source (from ``(a - b) // 2``); a = b copies as is.

    Args:
      src_shape: the source tensor's shape.
      dst_shape: the target tensor's shape (the same rank).

    Returns:
      Two tuples of slices, one per dimension: ``dst[dst_slices] = src[src_slices]`` is
      the clip rule.

    >>> centre_slices((4,), (2,))
    ((slice(1, 3, None),), (slice(None, None, None),))
    """
    src_slices, dst_slices = [], []
    for a, b in zip(src_shape, dst_shape, strict=True):
        if a > b:
            start = (a - b) // 2
            src_slices.append(slice(start, start + b))
            dst_slices.append(slice(None))
        elif a < b:
            start = (b - a) // 2
            src_slices.append(slice(None))
            dst_slices.append(slice(start, start + a))
        else:
            src_slices.append(slice(None))
            dst_slices.append(slice(None))
    return tuple(src_slices), tuple(dst_slices)


def clip(src: jax.Array, dst: jax.Array, rng: RuleRng = None) -> jax.Array:
    """The default rule: centre-crop or centre-place ``src`` into ``dst``.

    Slices only (:func:`centre_slices`), so it is cheap and jit-compatible.

    Args:
      src: the matched source tensor.
      dst: the target tensor's fresh initialisation (the same rank).
      rng: unused.

    Returns:
      A new array of ``dst``'s shape and dtype (the source values cast); the positions
      the source does not reach keep ``dst``'s values.

    Raises:
      ValueError: when the ranks differ.

    >>> import jax.numpy as jnp
    >>> clip(jnp.ones(2), jnp.zeros(4))
    Array([0., 1., 1., 0.], dtype=float32)
    """
    del rng
    if src.ndim != dst.ndim:
        raise ValueError(f"clip needs tensors of equal rank, got {src.shape} and {dst.shape}.")
    src_slices, dst_slices = centre_slices(tuple(src.shape), tuple(dst.shape))
    src = jnp.asarray(src)
    starts = [sl.start or 0 for sl in src_slices]
    if any(starts) or any(sl.stop is not None for sl in src_slices):
        limits = [
            sl.stop if sl.stop is not None else size for sl, size in zip(src_slices, src.shape)
        ]
        src = lax.slice(src, starts, limits)
    piece = src if src.dtype == dst.dtype else src.astype(dst.dtype)
    if piece.shape == tuple(dst.shape):
        return piece
    return place(piece, dst, [sl.start or 0 for sl in dst_slices])


def place(piece: jax.Array, dst: jax.Array, offsets: Sequence[int]) -> jax.Array:
    """Returns ``dst`` with ``piece`` written at ``offsets`` (static), as one select.

    Written as ``where(inside, pad(piece), dst)`` rather than a dynamic update slice: XLA
    then fuses the target's fresh init, the padding and the select into one parallel
    loop, instead of materialising the init and updating it afterwards (2-3x slower on
    CPU for a freshly initialised target).

    Args:
      piece: the values to write, of ``dst``'s rank and dtype, no larger than ``dst``.
      dst: the array to write into.
      offsets: where ``piece`` starts along each dimension.

    Returns:
      A new array of ``dst``'s shape and dtype.

    >>> import jax.numpy as jnp
    >>> place(jnp.ones(2), jnp.zeros(4), [1])
    Array([0., 1., 1., 0.], dtype=float32)
    """
    dst = jnp.asarray(dst)
    piece = jnp.asarray(piece).astype(dst.dtype)
    if piece.shape == dst.shape:
        return piece
    padding = [(o, d - o - p, 0) for o, p, d in zip(offsets, piece.shape, dst.shape, strict=True)]
    inside = None
    for axis, (lo, hi, _) in enumerate(padding):
        if lo == 0 and hi == 0:
            continue
        index = lax.broadcasted_iota(jnp.int32, dst.shape, axis)
        axis_inside = (index >= lo) & (index < dst.shape[axis] - hi)
        inside = axis_inside if inside is None else inside & axis_inside
    padded = lax.pad(piece, jnp.zeros((), dst.dtype), padding)
    return jnp.where(inside, padded, dst)


def _check_ranks(name: str, src: jax.Array, dst: jax.Array) -> None:
    if src.ndim != dst.ndim:
        raise ValueError(f"{name} needs tensors of equal rank, got {src.shape} and {dst.shape}.")


def _as_key(rng: RuleRng) -> PRNGKey:
    """A jax PRNG key from a key, an int seed or None (seed 0)."""
    if rng is None:
        return jax.random.key(0)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return jax.random.key(int(rng))
    return rng


def _place(src: jax.Array, dst: jax.Array, dst_slices: tuple) -> jax.Array:
    """Writes ``src`` (already cut to the covered region) into ``dst`` at ``dst_slices``."""
    return place(src, dst, [sl.start or 0 for sl in dst_slices])


def _top_channels(src: jax.Array, axis: int, keep: int) -> jax.Array:
    """Indices of the ``keep`` channels along ``axis`` with the largest L1 norm over all
    other dimensions, in their original order (ties: the lower index first)."""
    others = tuple(d for d in range(src.ndim) if d != axis)
    norms = jnp.sum(jnp.abs(jnp.asarray(src).astype(jnp.float32)), axis=others)
    _, idx = lax.top_k(norms, keep)
    return jnp.sort(idx)


def _magnitude_core(
    src: jax.Array,
    dst: jax.Array,
    channel_axes: Sequence[int],
    selections: Mapping[int, jax.Array],
) -> jax.Array:
    """Magnitude with given selections: shrinking dimensions in ``selections`` take
    those source indices; other shrinking ``channel_axes`` (in order) keep their
    largest-L1 channels; growing channel dimensions put the source at the start; every
    other dimension follows clip."""
    src = jnp.asarray(src)
    for axis in sorted(selections):
        src = jnp.take(src, selections[axis], axis=axis)
    for axis in channel_axes:
        a, b = src.shape[axis], dst.shape[axis]
        if axis not in selections and a > b:
            src = jnp.take(src, _top_channels(src, axis, b), axis=axis)
    src_slices, dst_slices = centre_slices(tuple(src.shape), tuple(dst.shape))
    src_slices, dst_slices = list(src_slices), list(dst_slices)
    for axis in channel_axes:
        a, b = src.shape[axis], dst.shape[axis]
        src_slices[axis] = slice(None)
        dst_slices[axis] = slice(0, a) if a < b else slice(None)
    return _place(src[tuple(src_slices)], dst, tuple(dst_slices))


def magnitude(src: jax.Array, dst: jax.Array, rng: RuleRng = None) -> jax.Array:
    """Channel selection by magnitude (design.md, "Other tensor rules").

    The last two dimensions of a Flax kernel are the input and output channels; a
    rank-1 tensor (bias, norm scale, batch statistics) has only an output-channel
    dimension. A shrinking output-channel dimension keeps the channels of largest L1
    norm (over all other dimensions of the source), then a shrinking input-channel
    dimension keeps the largest-L1 input channels among the kept outputs; kept channels
    stay in their original order. A growing channel dimension puts the source at the
    start (the rest keeps ``dst``'s values). Spatial dimensions (all before the last
    two) follow the clip rule.

    Called on its own, each tensor is ranked on its own. In a transfer the rule is
    channel-consistent (the ``select_channels`` and ``apply_channels`` of
    ``TENSOR_RULES["magnitude"]``, :mod:`dpiat_jax.channels`): the output channels
    kept for a layer's kernel are also kept in its bias, the norm after it and the
    next layer's input dimension, and every dimension the target's data flow marks as
    a channel dimension (heads, embeddings, the residual stream) is treated as one.

    Args:
      src: the matched source tensor.
      dst: the target tensor's fresh initialisation (the same rank).
      rng: unused.

    Returns:
      An array of ``dst``'s shape and dtype.

    Raises:
      ValueError: when the ranks differ.

    >>> import jax.numpy as jnp
    >>> magnitude(jnp.array([1.0, -5.0, 2.0, 4.0]), jnp.zeros(2))
    Array([-5.,  4.], dtype=float32)
    """
    del rng
    _check_ranks("magnitude", src, dst)
    src = jnp.asarray(src)
    nd = src.ndim
    if nd == 0:
        return src.astype(dst.dtype)
    channel_axes = [nd - 1] if nd == 1 else [nd - 1, nd - 2]  # output first, then input
    return _magnitude_core(src, dst, channel_axes, {})


def channel_norms(src: jax.Array, axis: int) -> jax.Array:
    """Returns the L1 norm of every channel along ``axis`` over all other dimensions.

    This is what ``magnitude`` ranks channels by.

    Args:
      src: a tensor.
      axis: the channel dimension.

    Returns:
      A float32 vector of length ``src.shape[axis]``.

    >>> import jax.numpy as jnp
    >>> channel_norms(jnp.array([[1.0, -2.0], [3.0, 4.0]]), 1)
    Array([4., 6.], dtype=float32)
    """
    others = tuple(d for d in range(src.ndim) if d != axis)
    return jnp.sum(jnp.abs(jnp.asarray(src).astype(jnp.float32)), axis=others)


def _magnitude_select(members: Sequence[tuple[jax.Array, int]], b: int) -> jax.Array:
    """The ``b`` channels to keep of one channel space, in order: the largest L1 norms
    of one producer, or of the sum over several producers of each one's norms divided
    by their mean (so every producer counts alike)."""
    if len(members) == 1:
        scores = channel_norms(*members[0])
    else:
        scores = sum(
            n / jnp.maximum(jnp.mean(n), jnp.finfo(jnp.float32).tiny)
            for n in (channel_norms(t, axis) for t, axis in members)
        )
    _, idx = lax.top_k(scores, b)
    return jnp.sort(idx)


def _magnitude_apply(
    src: jax.Array,
    dst: jax.Array,
    rng: RuleRng,
    channel_axes: Sequence[int],
    selections: Mapping[int, jax.Array],
) -> jax.Array:
    """``magnitude`` with the target's channel dimensions and selections known."""
    del rng
    _check_ranks("magnitude", src, dst)
    src = jnp.asarray(src)
    if src.ndim == 0:
        return src.astype(dst.dtype)
    return _magnitude_core(src, dst, list(channel_axes), selections)


def full(src: jax.Array, dst: jax.Array, rng: RuleRng = None) -> jax.Array:
    """Fills the whole target from the source (design.md, "Other tensor rules").

    Per dimension an index map from target to source positions: a growing dimension
    (source size a < target size b) holds the source at the centre as in clip (target
    positions ``(b - a) // 2`` onward take source ``0..a-1``) and every other target
    position takes a randomly chosen source position (uniform, drawn with ``rng``: a jax
    key, an int seed, or None for seed 0); a shrinking dimension takes the source's
    centre; an equal one copies. The result is the source gathered through these maps,
    so no position keeps ``dst``'s values.

    Args:
      src: the matched source tensor.
      dst: the target tensor's fresh initialisation (the same rank).
      rng: a jax PRNG key, an int seed, or None (seed 0).

    Returns:
      An array of ``dst``'s shape and dtype.

    Raises:
      ValueError: when the ranks differ.

    >>> import jax.numpy as jnp
    >>> out = full(jnp.array([1.0, 2.0]), jnp.zeros(4), rng=0)
    >>> out[1:3]  # the centre holds the source; the ends are copies of source positions
    Array([1., 2.], dtype=float32)
    """
    _check_ranks("full", src, dst)
    key = _as_key(rng)
    out = jnp.asarray(src)
    for axis, (a, b) in enumerate(zip(src.shape, dst.shape)):
        if a < b:
            start = (b - a) // 2
            ids = jax.random.randint(jax.random.fold_in(key, axis), (b,), 0, a)
            ids = ids.at[start : start + a].set(jnp.arange(a, dtype=ids.dtype))
            out = jnp.take(out, ids, axis=axis)
        elif a > b:
            start = (a - b) // 2
            out = lax.slice_in_dim(out, start, start + b, axis=axis)
    return out.astype(dst.dtype)


def uniform_indices(a: int, b: int) -> np.ndarray:
    """Returns ``b`` evenly spaced positions of ``a``, the ends included.

    Args:
      a: the source size.
      b: the number of positions to keep (at most ``a``).

    Returns:
      ``np.round(np.linspace(0, a - 1, b))`` as int32.

    >>> uniform_indices(5, 3)
    array([0, 2, 4], dtype=int32)
    """
    return np.round(np.linspace(0, a - 1, b)).astype(np.int32)


def uniform(src: jax.Array, dst: jax.Array, rng: RuleRng = None) -> jax.Array:
    """Like clip, but a shrinking dimension takes evenly spaced source positions.

    A shrinking dimension takes :func:`uniform_indices` (the ends included) instead of
    its centre; a growing dimension puts the source at the centre as in clip. The
    positions depend only on the two sizes, so the rule is channel-consistent by
    construction; in a transfer it goes through the same selection mechanism as
    :func:`magnitude` (with identical results).

    Args:
      src: the matched source tensor.
      dst: the target tensor's fresh initialisation (the same rank).
      rng: unused.

    Returns:
      An array of ``dst``'s shape and dtype.

    Raises:
      ValueError: when the ranks differ.

    >>> import jax.numpy as jnp
    >>> uniform(jnp.arange(5.0), jnp.zeros(3))
    Array([0., 2., 4.], dtype=float32)
    """
    return _uniform_apply(src, dst, rng, (), {})


def _uniform_select(members: Sequence[tuple[jax.Array, int]], b: int) -> jax.Array:
    """The ``b`` evenly spaced channels of the first member's source dimension."""
    src, axis = members[0]
    return jnp.asarray(uniform_indices(src.shape[axis], b))


def _uniform_apply(
    src: jax.Array,
    dst: jax.Array,
    rng: RuleRng,
    channel_axes: Sequence[int],
    selections: Mapping[int, jax.Array],
) -> jax.Array:
    """``uniform`` with given selections (dimension -> source indices) where shrinking."""
    del rng, channel_axes
    _check_ranks("uniform", src, dst)
    src = jnp.asarray(src)
    dst_slices = []
    for axis, (a, b) in enumerate(zip(src.shape, dst.shape)):
        if a > b:
            idx = selections.get(axis)
            idx = jnp.asarray(uniform_indices(a, b)) if idx is None else idx
            src = jnp.take(src, idx, axis=axis)
            dst_slices.append(slice(None))
        elif a < b:
            start = (b - a) // 2
            dst_slices.append(slice(start, start + a))
        else:
            dst_slices.append(slice(None))
    return _place(src, dst, tuple(dst_slices))


def net2net(src: jax.Array, dst: jax.Array, rng: RuleRng = None) -> jax.Array:
    """Net2Net's function-preserving widening, on one tensor (:mod:`dpiat_jax.widening`).

    Chen, Goodfellow and Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer"
    (ICLR 2016). On its own a tensor is read in Flax's layout: the last dimension is the
    output (producing) channel dimension, the one before it (for rank >= 2) the input
    (consuming) one. A growing channel dimension of size ``a -> b`` keeps channel ``j <
    a`` and gives every new channel a copy of a source channel drawn with ``rng``
    (:func:`dpiat_jax.widening.growth_mapping`; the draw depends only on ``rng`` and the
    two sizes, so the output dimension of one kernel and the input dimension of the next
    get the same mapping from the same ``rng``); along the input dimension the copies are
    divided by the copy counts. Shrinking and equal dimensions, and the spatial ones,
    follow :func:`clip`.

    In a transfer the rule widens whole channel spaces of the target instead (one
    mapping per space, producing and consuming dimensions read from the target's jaxpr:
    :func:`dpiat_jax.widening.plan_widening`).

    Args:
      src: the matched source tensor.
      dst: the target tensor's fresh initialisation (the same rank).
      rng: a jax PRNG key, an int seed, or None (seed 0).

    Returns:
      An array of ``dst``'s shape and dtype.

    Raises:
      ValueError: when the ranks differ.

    >>> import jax.numpy as jnp
    >>> w1, w2 = jnp.array([[1.0, 2.0]]), jnp.array([[3.0], [4.0]])
    >>> v1, v2 = net2net(w1, jnp.zeros((1, 3)), 0), net2net(w2, jnp.zeros((3, 1)), 0)
    >>> float((w1 @ w2)[0, 0]), float((v1 @ v2)[0, 0])  # the same function
    (11.0, 11.0)
    """
    _check_ranks("net2net", src, dst)
    src = jnp.asarray(src)
    key = _as_key(rng)
    axes = []
    for axis in range(max(src.ndim - 2, 0), src.ndim):
        a, b = src.shape[axis], dst.shape[axis]
        if a < b:
            consumes = src.ndim >= 2 and axis == src.ndim - 2
            axes.append((axis, growth_mapping(key, a, b), consumes))
    return clip(widen(src, axes), dst)


# ----------------------------------------------------------------------------------
# Positional embeddings: resized over the patch grid (for every rule).


def positional_grid(tokens: int) -> tuple[int, bool] | None:
    """Reads a token count as a square patch grid, with or without a class token.

    Args:
      tokens: the number of rows of a positional embedding.

    Returns:
      ``(grid side, has a class token)`` for a count ``side**2`` or ``side**2 + 1``;
      None for anything else (and for fewer than 2 tokens).

    >>> positional_grid(17), positional_grid(16), positional_grid(12)
    ((4, True), (4, False), None)
    """
    if tokens < 2:
        return None
    side = math.isqrt(tokens)
    if side * side == tokens:
        return side, False
    side = math.isqrt(tokens - 1)
    if side * side == tokens - 1:
        return side, True
    return None


def is_positional_embedding(name: str, shape: Shape, kind: str | None = None) -> bool:
    """Whether a tensor is a positional embedding that :func:`resize_positional` may resize.

    The one place that decides it. A tensor is positional when its layer's kind may
    hold one (:func:`dpiat_jax.kinds.may_be_positional`: not a conv, dense or norm
    layer), its name contains ``pos`` (but not as part of ``transpose``, ``compose`` or
    ``purpose``) and it is shaped ``(1, T, D)`` or ``(T, D)``.

    Args:
      name: the tensor's label: its name, or the owning module's name and the tensor's
        name (``"PosEmbed_0/embedding"``).
      shape: the tensor's shape.
      kind: the kind of the layer that owns it; None skips the kind test.

    Returns:
      True for a positional embedding.

    >>> is_positional_embedding("pos_embedding", (1, 17, 8), kind="own:ViT")
    True
    >>> is_positional_embedding("conv_transpose/kernel", (3, 8))
    False
    >>> is_positional_embedding("pos/kernel", (3, 8), kind="dense")
    False
    """
    if kind is not None and not kinds.may_be_positional(kind):
        return False
    lowered = name.lower()
    for word in ("transpose", "compose", "purpose"):
        lowered = lowered.replace(word, "")
    if "pos" not in lowered:
        return False
    return len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)


def resize_positional(
    src: jax.Array, dst_shape: Shape, method: str = "bilinear"
) -> tuple[jax.Array, bool] | None:
    """Resizes a positional embedding over its patch grid.

    ``src`` is ``(1, T, D)`` or ``(T, D)``; ``dst_shape`` the target's shape of the same
    rank. The token counts are read as a square grid, plus a class token in the first
    row when the count is a square plus one (:func:`positional_grid`). The source grid
    ``(g_src, g_src, D)`` is resized to ``(g_dst, g_dst, D)`` with
    ``jax.image.resize(method)`` (bilinear, antialiased when shrinking), in float32 and
    cast back; a class-token row present on both sides is copied, one present only in
    the source is dropped. ``D`` is left to the tensor rule.

    Static shapes only: jit-compatible.

    A 2-D table ``(T, D)`` is a 1-D sequence of positions (a text model's learned
    positions, whatever ``T`` is): it is interpolated linearly along ``T`` alone, never
    read as a grid. Only the ``(1, T, D)`` layout of a vision transformer is a grid.

    Limits: the grid is assumed square and the class token first.

    Args:
      src: the source embedding, ``(1, T, D)`` or ``(T, D)``.
      dst_shape: the target's shape (the same rank).
      method: the ``jax.image.resize`` method.

    Returns:
      ``(resized source with the target's token count, keep_first_row)`` where
      ``keep_first_row`` says the target has a class token the source lacks (its row
      keeps the target's fresh values), or None when nothing is to be resized (equal
      token counts, or counts that are not grids).

    >>> import jax.numpy as jnp
    >>> out, keep_first_row = resize_positional(jnp.zeros((1, 5, 2)), (1, 17, 2))
    >>> out.shape, keep_first_row
    ((1, 17, 2), False)
    >>> resize_positional(jnp.arange(3.0)[:, None], (5, 1))[0][:, 0]
    Array([0. , 0.5, 1. , 1.5, 2. ], dtype=float32)
    """
    axis = src.ndim - 2
    t_src, t_dst = src.shape[axis], dst_shape[axis]
    if t_src == t_dst:
        return None
    if src.ndim == 2:
        return _resize_sequence(jnp.asarray(src), t_dst), False
    grid_src, grid_dst = positional_grid(t_src), positional_grid(t_dst)
    if grid_src is None or grid_dst is None:
        return None
    (g_src, cls_src), (g_dst, cls_dst) = grid_src, grid_dst
    x = jnp.asarray(src)
    x = x[0] if x.ndim == 3 else x
    d = x.shape[-1]
    grid = x[1:] if cls_src else x
    grid = grid.astype(jnp.float32).reshape(g_src, g_src, d)
    grid = jax.image.resize(grid, (g_dst, g_dst, d), method=method)
    out = grid.reshape(g_dst * g_dst, d).astype(x.dtype)
    if cls_dst:
        first = x[:1] if cls_src else jnp.zeros((1, d), x.dtype)
        out = jnp.concatenate([first, out], axis=0)
    if src.ndim == 3:
        out = out[None]
    return out, cls_dst and not cls_src


def _resize_sequence(x: jax.Array, length: int) -> jax.Array:
    """Linear interpolation of a ``(T, D)`` position table to ``length`` rows whose ends
    stay the source's first and last rows (aligned corners)."""
    t = x.shape[0]
    if t == 1:
        return jnp.repeat(x, length, axis=0)
    where = jnp.linspace(0.0, t - 1.0, length)
    lo = jnp.clip(jnp.floor(where).astype(jnp.int32), 0, t - 2)
    frac = (where - lo)[:, None]
    y = x.astype(jnp.float32)
    return ((1.0 - frac) * y[lo] + frac * y[lo + 1]).astype(x.dtype)


def is_token_embedding(name: str, shape: Shape, kind: str | None = None) -> bool:
    """Whether a tensor is a table of token rows (row ``i`` is token ``i``).

    An ``nn.Embed`` table (kind ``embed``), or a 2-D tensor named ``*embed*`` of a layer
    that may hold one (Gemma's ``Embedder/input_embedding``), that is not positional
    (:func:`is_positional_embedding`). Its first axis is index-preserving: growing the
    vocabulary appends fresh rows, shrinking keeps the first rows.

    Args:
      name: the tensor's label (``"wte/embedding"``).
      shape: the tensor's shape.
      kind: the kind of the layer that owns it.

    Returns:
      True for a token table.

    >>> is_token_embedding("wte/embedding", (1000, 64), kind="embed")
    True
    >>> is_token_embedding("position_embeddings/embedding", (128, 64), kind="embed")
    False
    """
    if len(shape) != 2 or is_positional_embedding(name, shape, kind):
        return False
    if kind == kinds.EMBED:
        return True
    return "embed" in name.lower() and (kind is None or kinds.may_be_positional(kind))


#: The tensor rules selectable by name.
TENSOR_RULES: dict[str, TensorRule] = {
    "clip": TensorRule("clip", clip),
    "magnitude": TensorRule("magnitude", magnitude, _magnitude_select, _magnitude_apply),
    "full": TensorRule("full", full),
    "uniform": TensorRule("uniform", uniform, _uniform_select, _uniform_apply),
    "net2net": TensorRule("net2net", net2net, widen=widen),
}


def get_tensor_rule(rule: str | TensorRule | TensorFn) -> TensorRule:
    """Returns the :class:`TensorRule` that ``rule`` names or is.

    Args:
      rule: a name in :data:`TENSOR_RULES`, a record (returned as is), or a plain
        function ``(src, dst, rng) -> array``: a built-in rule's function gives its
        record, any other is wrapped as a per-tensor rule named after the function.

    Returns:
      The :class:`TensorRule` record.

    Raises:
      ValueError: for an unknown name or anything else, naming the valid choices.

    >>> get_tensor_rule("magnitude").selects_channels
    True
    """
    if isinstance(rule, TensorRule):
        return rule
    if isinstance(rule, str) and rule in TENSOR_RULES:
        return TENSOR_RULES[rule]
    if callable(rule):
        for record in TENSOR_RULES.values():
            if record.apply is rule:  # a built-in rule's function keeps its channels
                return record
        return TensorRule(getattr(rule, "__name__", type(rule).__name__), rule)
    raise ValueError(
        f"Unknown tensor_rule {rule!r}; use one of {list(TENSOR_RULES)} or pass a function "
        "(src_array, dst_array, rng) -> array of the target's shape and dtype."
    )


def tensor_rule_name(rule: str | TensorRule | TensorFn) -> str:
    """Returns the name a report records for ``rule``.

    Args:
      rule: anything :func:`get_tensor_rule` takes.

    Returns:
      The registry name of a built-in rule, else the record's or function's name.

    >>> tensor_rule_name(magnitude), tensor_rule_name(lambda src, dst, rng: dst)
    ('magnitude', '<lambda>')
    """
    return get_tensor_rule(rule).name
