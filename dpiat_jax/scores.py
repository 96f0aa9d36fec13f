"""Scores: how well two layers correspond (design.md, "Scores").

Two layers of the same kind score by the similarity of their main shapes; anything
else (different kinds, a placeholder) scores 0. Block scores are alignment scores and
live in :mod:`dpiat_jax.alignment`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import jax.numpy as jnp

from dpiat_jax.spec import LayerSpec

__all__ = ["shape_score", "layer_score", "shape_score_matrix"]


def shape_score(a: Sequence[int], b: Sequence[int]) -> float:
    """Returns how alike two shapes are: the product over paired dimensions of
    ``min(x/y, y/x)``.

    Args:
      a, b: the two shapes. Dimensions are paired from the first; when ranks differ the
        extra trailing dimensions are ignored.

    Returns:
      1.0 for identical shapes, a small value for very different ones, 0 when either is
      empty (a placeholder).

    >>> shape_score((3, 3, 16, 32), (3, 3, 32, 32))
    0.5
    """
    if len(a) == 0 or len(b) == 0:
        return 0.0
    score = 1.0
    for x, y in zip(a, b):
        score *= min(x, y) / max(x, y)
    return score


def layer_score(src: LayerSpec, dst: LayerSpec) -> float:
    """Returns the score of a source layer against a target layer.

    Args:
      src: the source layer.
      dst: the target layer.

    Returns:
      0 unless both have the same kind and neither is a placeholder; then their
      :func:`shape_score`.

    >>> layer_score(LayerSpec("dense", (8, 4)), LayerSpec("dense", (8, 8)))
    0.5
    >>> layer_score(LayerSpec("dense", (8, 8)), LayerSpec("conv2d", (8, 8)))
    0.0
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
    xp: ModuleType = jnp,
) -> jnp.ndarray:
    """Vectorised :func:`layer_score` for broadcastable arrays of encoded layers.

    Args:
      src_kind, dst_kind: integer kind ids; a negative id (placeholder, block, padding)
        never matches.
      src_shape, dst_shape: shapes padded with 0 to a common rank on the last axis.
      xp: the array module, ``jax.numpy`` (default) or ``numpy``.

    Returns:
      The broadcast score array (float32), 0 where the kinds differ.

    >>> import numpy as np
    >>> kind, shape = np.array([0, 0, 1]), np.array([[8, 4], [8, 8], [8, 8]])
    >>> shape_score_matrix(kind[:, None], shape[:, None], kind, shape, xp=np).tolist()
    [[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    a = src_shape.astype(xp.float32)
    b = dst_shape.astype(xp.float32)
    both = (a > 0) & (b > 0)
    ratio = xp.where(both, xp.minimum(a, b) / xp.where(both, xp.maximum(a, b), 1.0), 1.0)
    same = (src_kind == dst_kind) & (src_kind >= 0)
    return xp.where(same, xp.prod(ratio, axis=-1), 0.0)
