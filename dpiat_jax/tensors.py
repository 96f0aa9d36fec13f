"""Tensors: moving one matched source tensor into a target tensor (design.md, "Tensor transfer").

A tensor rule is a function ``(src, dst, rng) -> array`` that returns an array with the
shape and dtype of ``dst`` holding what it takes from ``src``; ``dst`` is the target's
fresh initialisation and supplies every position the source does not cover. Rules use
only static shapes and jnp operations, so they are jit-compatible.

The rules of design.md, selectable by name (:data:`TENSOR_RULES`, :func:`get_tensor_rule`):
``clip`` (the default: centre-crop or centre-place, slices only), ``magnitude`` (keep the
largest-L1 channels when shrinking, source at the start when growing), ``full`` (every
target position filled from a source position, random ones outside the centre) and
``uniform`` (evenly spaced source positions when shrinking).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "TensorRule",
    "clip",
    "magnitude",
    "full",
    "uniform",
    "centre_slices",
    "TENSOR_RULES",
    "get_tensor_rule",
    "tensor_rule_name",
]

TensorRule = Callable[[jax.Array, jax.Array, Any], jax.Array]


def centre_slices(src_shape: tuple[int, ...], dst_shape: tuple[int, ...]):
    """Returns ``(src_slices, dst_slices)`` of the clip rule.

    Per dimension with source size a and target size b: a < b puts the whole source at
    the centre of the target (from ``(b - a) // 2``); a > b takes the centre of the
    source (from ``(a - b) // 2``); a = b copies as is.
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


def clip(src: jax.Array, dst: jax.Array, rng: Any = None) -> jax.Array:
    """The default rule: centre-crop or centre-place ``src`` into ``dst``.

    Returns a new array of ``dst``'s shape and dtype (the source values cast); the
    positions the source does not reach keep ``dst``'s values.
    """
    del rng
    if src.ndim != dst.ndim:
        raise ValueError(f"clip needs tensors of equal rank, got {src.shape} and {dst.shape}.")
    src_slices, dst_slices = centre_slices(tuple(src.shape), tuple(dst.shape))
    piece = jnp.asarray(src[src_slices]).astype(dst.dtype)
    if piece.shape == tuple(dst.shape):
        return piece
    return jnp.asarray(dst).at[dst_slices].set(piece)


def _check_ranks(name: str, src: Any, dst: Any) -> None:
    if src.ndim != dst.ndim:
        raise ValueError(f"{name} needs tensors of equal rank, got {src.shape} and {dst.shape}.")


def _as_key(rng: Any) -> jax.Array:
    """A jax PRNG key from a key, an int seed or None (seed 0)."""
    if rng is None:
        return jax.random.key(0)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return jax.random.key(int(rng))
    return rng


def _place(src: jax.Array, dst: jax.Array, dst_slices: tuple) -> jax.Array:
    """Writes ``src`` (already cut to the covered region) into ``dst`` at ``dst_slices``."""
    piece = jnp.asarray(src).astype(dst.dtype)
    if piece.shape == tuple(dst.shape):
        return piece
    return jnp.asarray(dst).at[dst_slices].set(piece)


def _top_channels(src: jax.Array, axis: int, keep: int) -> jax.Array:
    """Indices of the ``keep`` channels along ``axis`` with the largest L1 norm over all
    other dimensions, in their original order (ties: the lower index first)."""
    others = tuple(d for d in range(src.ndim) if d != axis)
    norms = jnp.sum(jnp.abs(jnp.asarray(src).astype(jnp.float32)), axis=others)
    _, idx = lax.top_k(norms, keep)
    return jnp.sort(idx)


def magnitude(src: jax.Array, dst: jax.Array, rng: Any = None) -> jax.Array:
    """Channel selection by magnitude (design.md, "Other tensor rules").

    The last two dimensions of a Flax kernel are the input and output channels; a
    rank-1 tensor (bias, norm scale, batch statistics) has only an output-channel
    dimension. A shrinking output-channel dimension keeps the channels of largest L1
    norm (over all other dimensions of the source), then a shrinking input-channel
    dimension keeps the largest-L1 input channels among the kept outputs; kept channels
    stay in their original order. A growing channel dimension puts the source at the
    start (the rest keeps ``dst``'s values). Spatial dimensions (all before the last
    two) follow the clip rule. Each tensor is ranked on its own, so a bias keeps its own
    largest entries, not necessarily its kernel's kept channels.
    """
    del rng
    _check_ranks("magnitude", src, dst)
    src = jnp.asarray(src)
    nd = src.ndim
    if nd == 0:
        return src.astype(dst.dtype)
    channel_axes = [nd - 1] if nd == 1 else [nd - 1, nd - 2]  # output first, then input
    for axis in channel_axes:
        a, b = src.shape[axis], dst.shape[axis]
        if a > b:
            src = jnp.take(src, _top_channels(src, axis, b), axis=axis)
    src_slices, dst_slices = centre_slices(tuple(src.shape), tuple(dst.shape))
    src_slices, dst_slices = list(src_slices), list(dst_slices)
    for axis in channel_axes:
        a, b = src.shape[axis], dst.shape[axis]
        src_slices[axis] = slice(None)
        dst_slices[axis] = slice(0, a) if a < b else slice(None)
    return _place(src[tuple(src_slices)], dst, tuple(dst_slices))


def full(src: jax.Array, dst: jax.Array, rng: Any = None) -> jax.Array:
    """Fills the whole target from the source (design.md, "Other tensor rules").

    Per dimension an index map from target to source positions: a growing dimension
    (source size a < target size b) holds the source at the centre as in clip (target
    positions ``(b - a) // 2`` onward take source ``0..a-1``) and every other target
    position takes a randomly chosen source position (uniform, drawn with ``rng``: a jax
    key, an int seed, or None for seed 0); a shrinking dimension takes the source's
    centre; an equal one copies. The result is the source gathered through these maps,
    so no position keeps ``dst``'s values.
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
    """``b`` evenly spaced positions of ``a``: ``np.round(np.linspace(0, a - 1, b))``."""
    return np.round(np.linspace(0, a - 1, b)).astype(np.int32)


def uniform(src: jax.Array, dst: jax.Array, rng: Any = None) -> jax.Array:
    """Like clip, but a shrinking dimension takes evenly spaced source positions
    (:func:`uniform_indices`, the ends included) instead of its centre; a growing
    dimension puts the source at the centre as in clip."""
    del rng
    _check_ranks("uniform", src, dst)
    src = jnp.asarray(src)
    dst_slices = []
    for axis, (a, b) in enumerate(zip(src.shape, dst.shape)):
        if a > b:
            src = jnp.take(src, jnp.asarray(uniform_indices(a, b)), axis=axis)
            dst_slices.append(slice(None))
        elif a < b:
            start = (b - a) // 2
            dst_slices.append(slice(start, start + a))
        else:
            dst_slices.append(slice(None))
    return _place(src, dst, tuple(dst_slices))


#: The tensor rules selectable by name.
TENSOR_RULES: dict[str, TensorRule] = {
    "clip": clip,
    "magnitude": magnitude,
    "full": full,
    "uniform": uniform,
}


def get_tensor_rule(rule: str | TensorRule) -> TensorRule:
    """Returns the tensor rule for a name in :data:`TENSOR_RULES`, or ``rule`` itself if
    it is callable; a clear ``ValueError`` otherwise."""
    if callable(rule):
        return rule
    if isinstance(rule, str) and rule in TENSOR_RULES:
        return TENSOR_RULES[rule]
    raise ValueError(
        f"Unknown tensor_rule {rule!r}; use one of {list(TENSOR_RULES)} or pass a function "
        "(src_array, dst_array, rng) -> array of the target's shape and dtype."
    )


def tensor_rule_name(rule: str | TensorRule) -> str:
    """The name a report records: the registry name, else the function's name."""
    if isinstance(rule, str):
        get_tensor_rule(rule)
        return rule
    for name, fn in TENSOR_RULES.items():
        if fn is rule:
            return name
    return getattr(rule, "__name__", type(rule).__name__)
