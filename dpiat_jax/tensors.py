"""Tensors: moving one matched source tensor into a target tensor (design.md, "Tensor transfer").

A tensor rule is a function ``(src, dst, rng) -> array`` that returns an array with the
shape and dtype of ``dst`` holding what it takes from ``src``; ``dst`` is the target's
fresh initialisation and supplies every position the source does not cover. Rules use
only static shapes, so they are jit-compatible, and they never gather a sharded source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["TensorRule", "clip", "centre_slices", "TENSOR_RULES", "get_tensor_rule"]

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


TENSOR_RULES: dict[str, TensorRule] = {"clip": clip}


def get_tensor_rule(rule: str | TensorRule) -> TensorRule:
    """Returns the tensor rule for a name in :data:`TENSOR_RULES`, or ``rule`` itself if
    it is callable; a clear ``ValueError`` otherwise."""
    if callable(rule):
        return rule
    if isinstance(rule, str) and rule in TENSOR_RULES:
        return TENSOR_RULES[rule]
    raise ValueError(
        f"Unknown tensor_rule {rule!r}; use one of {sorted(TENSOR_RULES)} or pass a function "
        "(src_array, dst_array, rng) -> array of the target's shape and dtype."
    )
