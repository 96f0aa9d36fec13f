"""Similarity: how completely one architecture can seed another (design.md, "Similarity").

``sim(S, T) = score(S, T) / score(T, T)`` under the ``dp`` and ``cross`` matchers: 1.0
when the source covers the target completely, toward 0 as the architectures diverge;
not symmetric. Both share the denominator: a tree aligned with itself credits each
layer once under either, so ``score(T, T)`` is the same and comes from the batched
``dp`` kernel. The ``bipartite`` matcher's score is already normalised and is its
similarity; no other matcher defines one. Every similarity of the library (the report's, and
:func:`~dpiat_jax.api.similarity` and :func:`~dpiat_jax.api.rank_sources` of the API)
is computed here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dpiat_jax.alignment import Alignment, alignment_scores
from dpiat_jax.matchers import Matcher, bipartite, cross, matcher_name
from dpiat_jax.spec import SpecTree, structure_key

__all__ = [
    "SIMILARITY_MATCHERS",
    "alignment_similarity",
    "rank_trees",
    "similarity_matcher",
    "tree_similarity",
]

#: The matchers whose normalised score is a similarity.
SIMILARITY_MATCHERS = ("dp", "cross", "bipartite")


def similarity_matcher(matcher: str | Matcher) -> str:
    """Returns the name of a matcher that defines a similarity.

    Args:
      matcher: ``"dp"``, ``"cross"`` or ``"bipartite"``, by name or as the registered
        function.

    Returns:
      Its registry name.

    Raises:
      ValueError: for any other matcher (their scores are not normalised).

    >>> from dpiat_jax.matchers import bipartite
    >>> similarity_matcher(bipartite)
    'bipartite'
    """
    name = matcher_name(matcher)
    if name not in SIMILARITY_MATCHERS:
        raise ValueError(
            f"similarity is defined for the matchers {list(SIMILARITY_MATCHERS)}, not "
            f"{name!r}: the other matchers' scores are not normalised."
        )
    return name


def _normalise(scores: np.ndarray, self_score: float) -> np.ndarray:
    """``scores / self_score``, or zeros when the target has nothing to match."""
    if self_score <= 0:
        return np.zeros_like(np.asarray(scores, np.float64))
    return np.asarray(scores, np.float64) / self_score


def rank_trees(sources: Sequence[SpecTree], target: SpecTree) -> list[tuple[int, float]]:
    """Ranks source spec trees by their ``dp`` similarity to ``target``, best first.

    All sources (and the target's self-alignment) are solved together, one batched
    kernel call per nesting depth.

    Args:
      sources: candidate source spec trees.
      target: the target spec tree.

    Returns:
      ``(source index, similarity)`` pairs, best first; ties keep the sources' order.

    Raises:
      TypeError, ValueError: for a malformed tree (named ``sources[i]`` or ``target``).

    >>> from dpiat_jax import LayerSpec
    >>> conv = LayerSpec("conv2d", (3, 3, 16, 16))
    >>> rank_trees([[conv], [conv, conv]], [conv, conv])
    [(1, 1.0), (0, 0.7071...)]
    """
    if not sources:
        return []
    scores = alignment_scores([*sources, target], target)
    sims = _normalise(scores[:-1], float(scores[-1]))
    order = sorted(range(len(sources)), key=lambda i: (-sims[i], i))
    return [(i, float(sims[i])) for i in order]


def tree_similarity(src_tree: SpecTree, dst_tree: SpecTree, matcher: str | Matcher = "dp") -> float:
    """Returns the similarity of two spec trees under ``matcher``.

    Args:
      src_tree: the source spec tree.
      dst_tree: the target spec tree.
      matcher: ``"dp"`` or ``"cross"`` (``score(src, dst) / score(dst, dst)``, 0 for a
        target with nothing to match) or ``"bipartite"`` (its normalised score).

    Returns:
      The similarity, in [0, 1].

    Raises:
      ValueError: for a matcher without a similarity; TypeError, ValueError for a
        malformed tree (named ``src`` or ``dst``).

    >>> from dpiat_jax import LayerSpec
    >>> tree_similarity([LayerSpec("dense", (8, 4))], [LayerSpec("dense", (8, 8))])
    0.5
    """
    name = similarity_matcher(matcher)
    structure_key(src_tree, argname="src")
    structure_key(dst_tree, argname="dst")
    if name == "bipartite":
        return float(bipartite(src_tree, dst_tree).score)
    if name == "cross":
        return alignment_similarity(cross(src_tree, dst_tree), dst_tree, name)
    return rank_trees([src_tree], dst_tree)[0][1]


def alignment_similarity(result: Alignment, dst_tree: SpecTree, matcher: str) -> float:
    """Returns the similarity of an alignment that ``matcher`` returned.

    Args:
      result: the matcher's :class:`~dpiat_jax.alignment.Alignment` of some source with
        ``dst_tree``.
      dst_tree: the target spec tree.
      matcher: the matcher's registry name.

    Returns:
      ``dp``, ``cross``: ``result.score / score(dst, dst)``; ``bipartite``:
      ``result.score``; NaN
      for a matcher without a similarity (``flat``, ``nested-bipartite``, ``random``,
      user functions), so a report can still be built.

    >>> from dpiat_jax import LayerSpec
    >>> dst = [LayerSpec("dense", (8, 8)), LayerSpec("dense", (8, 8))]
    >>> alignment_similarity(Alignment(1.0, [((0,), (0,))]), dst, "dp")
    0.5
    """
    if matcher == "bipartite":
        return float(result.score)
    if matcher not in ("dp", "cross"):
        return math.nan
    self_score = float(alignment_scores([dst_tree], dst_tree)[0])
    return float(_normalise(np.array([result.score]), self_score)[0])
