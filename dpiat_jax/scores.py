"""Scores: how well two layers correspond (design.md, "Scores").

Two layers of the same kind score by the similarity of their main shapes; anything
else (different kinds, a placeholder) scores 0. Block scores are alignment scores and
live in :mod:`dpiat_jax.alignment`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from dpiat_jax.spec import LayerSpec

__all__ = ["shape_score", "layer_score", "shape_score_matrix"]


def shape_score(a: Sequence[int], b: Sequence[int]) -> float:
    """Returns the product over paired dimensions of ``min(x/y, y/x)``.

    Dimensions are paired from the first; when ranks differ the extra trailing
    dimensions are ignored. Identical shapes give 1.0, very different ones a small
    value. An empty shape (a placeholder) gives 0.
    """
    if len(a) == 0 or len(b) == 0:
        return 0.0
    score = 1.0
    for x, y in zip(a, b):
        score *= min(x, y) / max(x, y)
    return score


def layer_score(src: LayerSpec, dst: LayerSpec) -> float:
    """Returns the score of a source layer against a target layer.

    0 unless both have the same kind and neither is a placeholder; then their
    :func:`shape_score`.
    """
    if src.kind != dst.kind or src.is_placeholder or dst.is_placeholder:
        return 0.0
    return shape_score(src.shape, dst.shape)


def shape_score_matrix(
    src_kind: jnp.ndarray,
    src_shape: jnp.ndarray,
    dst_kind: jnp.ndarray,
    dst_shape: jnp.ndarray,
    *,
    xp=jnp,
) -> jnp.ndarray:
    """Vectorised :func:`layer_score` for broadcastable arrays of encoded layers.

    Args:
      src_kind, dst_kind: integer kind ids; a negative id (placeholder, block, padding)
        never matches.
      src_shape, dst_shape: shapes padded with 0 to a common rank on the last axis.

      xp: the array module, ``jax.numpy`` (default) or ``numpy``.

    Returns:
      The broadcast score array (float32), 0 where the kinds differ.
    """
    a = src_shape.astype(xp.float32)
    b = dst_shape.astype(xp.float32)
    both = (a > 0) & (b > 0)
    ratio = xp.where(both, xp.minimum(a, b) / xp.where(both, xp.maximum(a, b), 1.0), 1.0)
    same = (src_kind == dst_kind) & (src_kind >= 0)
    return xp.where(same, xp.prod(ratio, axis=-1), 0.0)
