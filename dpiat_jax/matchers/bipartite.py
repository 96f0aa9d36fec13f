"""The ``bipartite`` and ``nested-bipartite`` matchers (design.md, "Other matchers").

A maximum-weight matching of the top-level elements, position-weighted: edge weight
``(1 - (i/n - j/m)^2) * s(j, i)`` between source element ``j`` (of ``m``) and target
element ``i`` (of ``n``), 0-based. ``bipartite`` scores block pairs by their ``dp``
alignment and matches matched block pairs inside by ``dp``; ``nested-bipartite`` uses
the bipartite matching at every level.
"""

from __future__ import annotations

import numpy as np

from dpiat_jax.alignment import Alignment, alignment_scores
from dpiat_jax.matchers.base import Pairs, RandomSource, sort_pairs
from dpiat_jax.matchers.dp import dp
from dpiat_jax.scores import layer_score
from dpiat_jax.spec import LayerSpec, SpecTree, structure_key, validate_tree
from dpiat_jax.types import IndexPath

__all__ = ["assign", "bipartite", "nested_bipartite", "position_weights"]


def position_weights(n: int, m: int) -> np.ndarray:
    """Returns the positional factor of the bipartite edge weights.

    Args:
      n: the number of target elements.
      m: the number of source elements.

    Returns:
      ``[n, m]``: ``1 - (i/n - j/m)^2`` with 0-based positions.

    >>> position_weights(2, 1).tolist()
    [[1.0], [0.75]]
    """
    i = np.arange(n, dtype=np.float64)[:, None] / n
    j = np.arange(m, dtype=np.float64)[None, :] / m
    return 1.0 - (i - j) ** 2


def assign(weights: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    """Maximum-weight matching of an ``[n, m]`` weight table.

    Args:
      weights: ``weights[r, c]``, the edge weight of target ``r`` and source ``c``.

    Returns:
      ``(normalised score, [(target r, source c), ...])`` keeping only assignments of
      positive weight; the score is the matched weight over the sum, over the sources,
      of each one's best edge weight (0 when that sum is 0).

    >>> assign(np.array([[1.0, 0.5], [0.0, 0.0]]))
    (0.6666666666666666, [(0, 0)])
    """
    n, m = weights.shape
    if n == 0 or m == 0:
        return 0.0, []
    from scipy.optimize import linear_sum_assignment  # ~0.5 s import: only when used

    rows, cols = linear_sum_assignment(weights, maximize=True)
    matched = [(int(r), int(c)) for r, c in zip(rows, cols) if weights[r, c] > 0]
    best = float(weights.max(axis=0).sum())
    total = float(sum(weights[r, c] for r, c in matched))
    return (total / best if best > 0 else 0.0), matched


def _leaf_scores(src: list, dst: list) -> np.ndarray:
    """``[n, m]`` element scores where both elements are leaves; 0 elsewhere."""
    s = np.zeros((len(dst), len(src)))
    for r, t in enumerate(dst):
        if isinstance(t, LayerSpec):
            for c, x in enumerate(src):
                if isinstance(x, LayerSpec):
                    s[r, c] = layer_score(x, t)
    return s


def _dp_block_scores(src: list, dst: list) -> np.ndarray:
    """Element scores of two element lists with block pairs scored by their dp alignment;
    one batched :func:`alignment_scores` call per distinct target block."""
    s = _leaf_scores(src, dst)
    src_blocks = [c for c, x in enumerate(src) if not isinstance(x, LayerSpec)]
    if not src_blocks:
        return s
    sources = [src[c] for c in src_blocks]
    by_key: dict[tuple, np.ndarray] = {}
    for r, t in enumerate(dst):
        if isinstance(t, LayerSpec):
            continue
        key = structure_key(t)
        if key not in by_key:
            by_key[key] = alignment_scores(sources, t)
        s[r, src_blocks] = by_key[key]
    return s


def _bipartite(src: list, dst: list) -> tuple[float, Pairs]:
    """One bipartite level; matched block pairs aligned inside by dp."""
    s = _dp_block_scores(src, dst)
    score, matched = assign(position_weights(len(dst), len(src)) * s)
    pairs = []
    for r, c in matched:
        x, t = src[c], dst[r]
        if isinstance(x, LayerSpec):
            pairs.append(((c,), (r,)))
        else:
            pairs.extend(((c, *a), (r, *b)) for a, b in dp(x, t).pairs)
    return score, pairs


def bipartite(src_tree: SpecTree, dst_tree: SpecTree, rng: RandomSource = None) -> Alignment:
    """The bipartite matcher of design.md.

    ``s`` is the dp element score (a layer pair's shape score, a block pair's dp
    alignment score, 0 otherwise). Assignments of weight 0 are not pairs; matched block
    pairs are matched inside by the dp alignment.

    Args:
      src_tree: the source spec tree.
      dst_tree: the target spec tree.
      rng: not used.

    Returns:
      An :class:`~dpiat_jax.alignment.Alignment` whose ``score`` is the matched weight
      over the sum, over source elements, of each one's best edge weight (0 when that
      sum is 0): it lies in [0, 1] and is this matcher's similarity.

    Raises:
      TypeError, ValueError: for a malformed tree, naming ``src_tree`` or ``dst_tree``.

    >>> conv = LayerSpec("conv2d", (3, 3, 16, 16))
    >>> bipartite([conv, LayerSpec("bn", (16,))], [conv])
    Alignment(score=1.0, pairs=[((0,), (0,))])
    """
    del rng
    validate_tree(src_tree, argname="src_tree")
    validate_tree(dst_tree, argname="dst_tree")
    score, pairs = _bipartite(list(src_tree), list(dst_tree))
    return Alignment(score=float(score), pairs=sort_pairs(pairs))


class _NestedBipartite:
    """Nested bipartite matching with block pairs memoised by structure."""

    def __init__(self) -> None:
        self._memo: dict[tuple, tuple[float, list]] = {}

    def solve(self, src: list, dst: list) -> tuple[float, list[tuple[IndexPath, IndexPath]]]:
        """Returns ``(normalised score, pairs relative to the two lists)``."""
        key = (structure_key(src), structure_key(dst))
        if key in self._memo:
            return self._memo[key]
        s = _leaf_scores(src, dst)
        for r, t in enumerate(dst):
            if not isinstance(t, LayerSpec):
                for c, x in enumerate(src):
                    if not isinstance(x, LayerSpec):
                        s[r, c] = self.solve(x, t)[0]
        score, matched = assign(position_weights(len(dst), len(src)) * s)
        pairs = []
        for r, c in matched:
            if isinstance(src[c], LayerSpec):
                pairs.append(((c,), (r,)))
            else:
                inner = self.solve(src[c], dst[r])[1]
                pairs.extend(((c, *a), (r, *b)) for a, b in inner)
        self._memo[key] = (score, pairs)
        return score, pairs


def nested_bipartite(src_tree: SpecTree, dst_tree: SpecTree, rng: RandomSource = None) -> Alignment:
    """The nested bipartite matcher: :func:`bipartite` at every level.

    Inside matched block pairs the matching is again bipartite, and a block pair's
    element score is its own (normalised) nested bipartite score, as in the published
    method.

    Args:
      src_tree: the source spec tree.
      dst_tree: the target spec tree.
      rng: not used.

    Returns:
      An :class:`~dpiat_jax.alignment.Alignment`; ``score`` is the top level's
      normalised score.

    Raises:
      TypeError, ValueError: for a malformed tree, naming ``src_tree`` or ``dst_tree``.

    >>> conv, bn = LayerSpec("conv2d", (3, 3, 16, 16)), LayerSpec("bn", (16,))
    >>> nested_bipartite([[conv, bn]], [[bn, conv]]).pairs
    [((0, 1), (0, 0)), ((0, 0), (0, 1))]
    """
    del rng
    validate_tree(src_tree, argname="src_tree")
    validate_tree(dst_tree, argname="dst_tree")
    score, pairs = _NestedBipartite().solve(list(src_tree), list(dst_tree))
    return Alignment(score=float(score), pairs=sort_pairs(pairs))
