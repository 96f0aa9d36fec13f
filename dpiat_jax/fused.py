"""Fused projections: tensors whose output axis is a concatenation of parts.

GPT-2's ``c_attn`` computes query, key and value with one kernel whose output axis is
``[q | k | v]``; fused gate/up MLPs and fused key/value projections do the same. Cropped
or centred as one tensor, source query rows would land in the target's key rows. A
fused tensor is therefore split into its equal parts along the fused axis, each part
follows the tensor rule on its own, and the parts are concatenated again
(:func:`dpiat_jax.variables.apply_moves` reads :attr:`TensorMove.parts
<dpiat_jax.variables.TensorMove>`).

Which tensors are fused comes from two places: the target's forward pass, where the
projection's output is split into equal parts (``jnp.split``, equal slices; found by
:func:`dpiat_jax.channels.fused_axes`; after a reshape to ``(..., 3, heads, dim)`` or
``(..., heads, 3 * dim)``, found by :func:`reshaped_parts`), and the user's ``fused=``
option, a mapping from a layer-name pattern (``fnmatch``, e.g. ``"*/c_attn"``) to a part
count, or to ``(count, axis)`` when the axis is not the one the layer's bias runs along.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence

from dpiat_jax.layers import Layer
from dpiat_jax.trace.factors import Atom, FactorFlow
from dpiat_jax.types import Shape
from dpiat_jax.variables import TensorKey, TensorMove

__all__ = [
    "FusedRule",
    "parse_fused",
    "declared_parts",
    "fused_axis",
    "reshaped_parts",
    "with_parts",
]


@dataclasses.dataclass(frozen=True)
class FusedRule:
    """One ``fused=`` entry: layers whose name matches ``pattern`` have ``parts`` parts.

    Attributes:
      pattern: an ``fnmatch`` pattern over layer names (``"h_*/attn/c_attn"``); a scan
        step's index (``[2]``) is ignored when matching.
      parts: the number of equal parts.
      axis: the fused axis of every tensor of the layer, or None for the axis the
        layer's bias runs along (the last axis when it has no bias).

    >>> FusedRule("*/c_attn", 3).matches("h/0/attn/c_attn")
    True
    """

    pattern: str
    parts: int
    axis: int | None = None

    def matches(self, name: str) -> bool:
        """Whether a layer name (with or without step labels) matches the pattern."""
        plain = re.sub(r"\[[^\]]*\]", "", name)
        return fnmatch.fnmatchcase(name, self.pattern) or fnmatch.fnmatchcase(plain, self.pattern)


def parse_fused(fused: Mapping[str, int | tuple[int, int]] | None) -> tuple[FusedRule, ...]:
    """Validates the ``fused=`` option.

    Args:
      fused: layer-name pattern -> part count, or ``(count, axis)``; None for none.

    Returns:
      The rules, in the mapping's order.

    Raises:
      TypeError: not a mapping of patterns to counts.
      ValueError: a count below 2.

    >>> parse_fused({"*/c_attn": 3, "*/kv": (2, 0)})
    (FusedRule(pattern='*/c_attn', parts=3, axis=None), FusedRule(pattern='*/kv', parts=2, axis=0))
    """
    if fused is None:
        return ()
    if not isinstance(fused, Mapping):
        raise TypeError(
            "`fused` must map layer-name patterns to part counts, e.g. "
            f"{{'*/c_attn': 3}}; got {type(fused).__name__}."
        )
    rules = []
    for pattern, value in fused.items():
        parts, axis = (value, None) if isinstance(value, int) else tuple(value)
        if not isinstance(pattern, str) or int(parts) < 2:
            raise ValueError(
                f"`fused` entry {pattern!r}: {value!r} must be a part count >= 2 (or "
                "(count, axis)) for a layer-name pattern string."
            )
        rules.append(FusedRule(pattern, int(parts), None if axis is None else int(axis)))
    return tuple(rules)


def fused_axis(layer: Layer, shape: Shape, parts: int, axis: int | None) -> int | None:
    """Returns the axis of a tensor of ``layer`` that holds ``parts`` parts, or None.

    Args:
      layer: the fused layer.
      shape: one of its tensors' shape.
      parts: the number of parts.
      axis: the declared axis, or None: the axis whose size is the bias's length
        (the layer's output features), else the last axis.

    Returns:
      The axis (non-negative), or None when it is not divisible by ``parts``.

    >>> import jax
    >>> bias = jax.ShapeDtypeStruct((12,), "float32")
    >>> layer = Layer(("c_attn",), "Conv1D", "Conv1D", {"params": {"bias": bias}}, "kernel")
    >>> fused_axis(layer, (12, 4), 3, None), fused_axis(layer, (12,), 3, None)
    (0, 0)
    """
    if not shape:
        return None
    if axis is None:
        bias = layer.tensors.get("params", {}).get("bias")
        width = bias.shape[-1] if bias is not None and len(bias.shape) else None
        sized = [i for i, d in enumerate(shape) if d == width]
        axis = sized[-1] if sized else len(shape) - 1
    axis = axis % len(shape)
    return axis if shape[axis] % parts == 0 else None


def declared_parts(
    layer: Layer, shape: Shape, rules: Sequence[FusedRule]
) -> tuple[int, int] | None:
    """Returns ``(axis, parts)`` for a tensor of a layer the ``fused=`` option names.

    Args:
      layer: the target layer.
      shape: the tensor's shape.
      rules: from :func:`parse_fused`.

    Returns:
      The fused axis and part count of the first matching rule, or None.

    >>> import jax
    >>> kernel = jax.ShapeDtypeStruct((4, 12), "float32")
    >>> layer = Layer(("h", "qkv"), "dense", "Dense", {"params": {"kernel": kernel}}, "kernel")
    >>> declared_parts(layer, (4, 12), parse_fused({"*qkv": 3}))
    (1, 3)
    """
    for rule in rules:
        if rule.matches(layer.name):
            axis = fused_axis(layer, shape, rule.parts, rule.axis)
            return None if axis is None else (axis, rule.parts)
    return None


def _equal_parts(pieces: frozenset[tuple[int, int]], size: int) -> int | None:
    """The part width when ``pieces`` tile ``[0, size)`` in 2 or more equal parts."""
    ordered = sorted(pieces)
    width = ordered[0][1] - ordered[0][0]
    tiles = [(i * width, (i + 1) * width) for i in range(size // width)] if width else []
    return width if len(tiles) >= 2 and ordered == tiles else None


def _cut_parts(flow: FactorFlow, atom: Atom, width: int) -> int | None:
    """The number of equal contiguous chunks a cut of ``atom`` into ``width`` pieces
    makes of its parameter axis: the cut factor must be the axis's major factor (a
    ``(3, heads, dim)`` layout) or its minor-most one (``(heads, 3 * dim)``: then the
    chunks are every head's parts in turn); None for a factor in between."""
    p, d, stride, size, base = atom
    n = flow.shapes[p][d]
    if base == 0 and stride * size == n:
        return n // (width * stride)
    if stride == 1 and base % width == 0 and n % width == 0:
        return n // width
    return None


def reshaped_parts(flow: FactorFlow) -> dict[TensorKey, tuple[int, int]]:
    """Finds fused parameter axes: axes whose parts the forward pass cuts apart.

    A projection's output split as it is (``jnp.split``, equal slices: what
    :func:`dpiat_jax.channels.fused_axes` finds too) is cut on its whole axis; one
    reshaped first (``(..., 3, heads, dim)`` then indexed, or ``(..., heads, 3 * dim)``
    then split on the last axis) is cut on a *factor* of its axis. Each layout is equal
    contiguous chunks of the parameter axis: 3 for the first two, ``3 * heads`` for the
    last (each head's q, k and v in turn).

    Args:
      flow: the model's :class:`~dpiat_jax.trace.factors.FactorFlow`.

    Returns:
      Tensor key -> ``(axis, parts)``, for the cut tensor and every tensor lined up
      with its whole axis (its bias).

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from dpiat_jax.trace.factors import factor_flow
    >>> class QKV(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         qkv = nn.Dense(24, name="qkv")(x).reshape(x.shape[:-1] + (3, 2, 4))
    ...         return qkv[..., 0, :, :] * qkv[..., 1, :, :] + qkv[..., 2, :, :]
    >>> x = jnp.zeros((1, 5, 4))
    >>> flow = factor_flow(QKV(), jax.eval_shape(QKV().init, jax.random.key(0), x), x)
    >>> reshaped_parts(flow)
    {('params', 'qkv', 'kernel'): (1, 3), ('params', 'qkv', 'bias'): (0, 3)}
    """
    out: dict[TensorKey, tuple[int, int]] = {}
    for atom, pieces in flow.cuts.items():
        width = _equal_parts(pieces, atom[3])
        parts = None if width is None else _cut_parts(flow, atom, width)
        if parts is None or parts < 2:
            continue
        p, d = atom[:2]
        n = flow.shapes[p][d]
        for q, e, _, m, _ in flow.members((p, d, 1, n, 0)):
            if q >= 0 and m == n and flow.is_whole((q, e, 1, m, 0)):
                out.setdefault(flow.keys[q], (e, parts))
    return out


def _step_axis(
    found: tuple[int, int] | None, index: tuple[int, int] | None
) -> tuple[int, int] | None:
    """A detected ``(axis, parts)`` of a stacked tensor as one step's axis."""
    if found is None or index is None:
        return found
    axis, parts = found
    if axis == index[0]:
        return None
    return (axis - 1 if axis > index[0] else axis), parts


def _agreed(
    move: TensorMove,
    dst: Mapping[TensorKey, tuple[int, int]],
    src: Mapping[TensorKey, tuple[int, int]] | None,
) -> tuple[int, int] | None:
    """The target's ``(axis, parts)`` of a move's tensor (as one step's axis), when the
    source's agrees or is unknown."""
    found = _step_axis(dst.get(move.dst), move.dst_index)
    if found is not None and src is not None:
        if _step_axis(src.get(move.src), move.src_index) != found:
            return None
    return found


def with_parts(
    moves: Sequence[TensorMove],
    dst_layers: Mapping[str, Layer],
    rules: Sequence[FusedRule],
    detected: Mapping[TensorKey, tuple[int, int]],
    src_detected: Mapping[TensorKey, tuple[int, int]] | None = None,
    head_chunks: Mapping[TensorKey, tuple[int, int]] | None = None,
    src_head_chunks: Mapping[TensorKey, tuple[int, int]] | None = None,
) -> tuple[TensorMove, ...]:
    """Marks the moves of fused target tensors with their ``(axis, parts)``.

    A tensor is fused when the target's forward pass splits it (``detected``) or the
    ``fused=`` option names its layer (``rules``); it is moved part by part when the
    source's tensor divides into as many parts along that axis. An axis that holds
    heads and the head dimension in one (``head_chunks``,
    :func:`dpiat_jax.heads.head_parts`) is moved head chunk by head chunk instead when
    both sides have as many chunks (whole heads kept, the head dimension cropped inside
    each).

    Args:
      moves: the planned moves.
      dst_layers: target layer name -> layer.
      rules: from :func:`parse_fused`.
      detected: target tensor key -> ``(axis, parts)`` found in the forward pass.
      src_detected: the same for the source, or None when unknown: a split found in
        the target moves part by part only when the source's tensor is split alike
        (a plain or differently fused source tensor moves as one tensor).
      head_chunks: target tensor key -> ``(axis, chunks)`` of heads in one axis (None:
        none); src_head_chunks: the same for the source (None: trusted as for
        ``src_detected``).

    Returns:
      The moves, fused ones with :attr:`~dpiat_jax.variables.TensorMove.parts` set.

    >>> import jax
    >>> kernel = jax.ShapeDtypeStruct((4, 12), "float32")
    >>> layer = Layer(("qkv",), "dense", "Dense", {"params": {"kernel": kernel}}, "kernel")
    >>> move = TensorMove(("params", "qkv", "kernel"), ("params", "qkv", "kernel"), "qkv",
    ...                   "qkv", (4, 6), (4, 12), (4, 6))
    >>> with_parts([move], {"qkv": layer}, parse_fused({"qkv": 3}), {})[0].parts
    (1, 3)
    """
    out = []
    for move in moves:
        layer = dst_layers.get(move.dst_layer)
        found = _agreed(move, head_chunks or {}, src_head_chunks)
        if found is None:
            found = _agreed(move, detected, src_detected)
        if found is None and layer is not None and rules:
            found = declared_parts(layer, move.dst_shape, rules)
        if found is not None:
            axis, parts = found
            if move.moved_shape[axis] % parts or move.dst_shape[axis] % parts:
                found = None
        out.append(move if found is None else dataclasses.replace(move, parts=found))
    return tuple(out)
