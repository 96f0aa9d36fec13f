"""Matchers: the ways of pairing source and target layers (design.md, "Other matchers").

Every matcher takes two spec trees and returns an :class:`~dpiat_jax.alignment.Alignment`
(``score`` and ``pairs``: ``(src_index_path, dst_index_path)`` per matched leaf pair,
sorted by target path, always index paths into the trees as given):

- ``dp`` (the default): the DPIAT dynamic programme over the block trees
  (:func:`dpiat_jax.alignment.align`).
- ``flat``: the published flat dynamic programme over the two leaf lists (placeholders
  included), with a pointer into the source that moves forward for free and costs
  ``(d + 1) / 2`` to reuse or move back by ``d``. Compiled like the default: one
  ``lax.scan`` over the target rows, every step vectorised over the source columns.
- ``bipartite``: a maximum-weight matching of the top-level elements, position-weighted;
  matched block pairs are aligned inside by ``dp``. ``nested-bipartite`` uses the
  bipartite matching at every level.
- ``random``: the control, a random one-to-one matching of same-kind leaves.

A user matcher is any function ``(src_tree, dst_tree, rng=None) -> Alignment``;
:func:`align` dispatches to a matcher given by name or as a function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy.optimize import linear_sum_assignment

from dpiat_jax import alignment as _alignment
from dpiat_jax.alignment import TIE_TOLERANCE, Alignment, alignment_scores
from dpiat_jax.scores import layer_score, shape_score_matrix
from dpiat_jax.spec import IndexPath, LayerSpec, SpecTree, iter_leaves, validate_tree

__all__ = [
    "Matcher",
    "MATCHERS",
    "align",
    "get_matcher",
    "matcher_name",
    "dp",
    "flat",
    "bipartite",
    "nested_bipartite",
    "random_matching",
]

Matcher = Callable[..., Alignment]

_LEFT = -1  # flat: source j left unused, move to (i, j - 1)
_UP = -2  # flat: target i left unmatched, move to (i - 1, j)


def _larger(a: float, b: float) -> bool:
    """``a`` larger than ``b`` beyond the relative tie tolerance (host side)."""
    return a - b > TIE_TOLERANCE * max(1.0, abs(b))


def _bucket(x: int, minimum: int = 1) -> int:
    """The next power of two at or above ``max(x, minimum)``."""
    x = max(int(x), minimum, 1)
    return 1 << (x - 1).bit_length()


def _sorted_pairs(pairs: list[tuple[IndexPath, IndexPath]]) -> list[tuple[IndexPath, IndexPath]]:
    return sorted(pairs, key=lambda pair: (pair[1], pair[0]))


# ----------------------------------------------------------------------------------
# dp (the default).


def dp(src_tree: SpecTree, dst_tree: SpecTree, rng: Any = None) -> Alignment:
    """The DPIAT dynamic programme over the block trees (``rng`` is not used)."""
    del rng
    return _alignment.align(src_tree, dst_tree)


# ----------------------------------------------------------------------------------
# flat.


def _flat_step_tables(m_pad: int, m_real: jnp.ndarray) -> jnp.ndarray:
    """``pen[j - 1, k]`` = pen(k - j) for source ``j`` in 1..M and pointer ``k`` in 0..M;
    -inf for a padded pointer ``k > m_real`` (it can never be a previous position)."""
    j = jnp.arange(1, m_pad + 1, dtype=jnp.int32)[:, None]
    k = jnp.arange(0, m_pad + 1, dtype=jnp.int32)[None, :]
    d = (k - j).astype(jnp.float32)
    pen = jnp.where(d >= 0, -(d + 1.0) / 2.0, 0.0)
    return jnp.where(k <= m_real, pen, -jnp.inf)


@jax.jit
def _flat_kernel(
    src_kind: jnp.ndarray,
    src_shape: jnp.ndarray,
    dst_kind: jnp.ndarray,
    dst_shape: jnp.ndarray,
    m_real: jnp.ndarray,
):
    """Solves the flat recurrence of design.md for one padded pair of leaf lists.

    Args:
      src_kind, src_shape: ``[M]`` kind ids (-1: placeholder or padding) and ``[M, R]``
        zero-padded shapes of the source leaves.
      dst_kind, dst_shape: ``[N]`` and ``[N, R]``, the target leaves.
      m_real: the number of real source leaves (pointers beyond it are padding).

    Returns:
      ``(rows, choices)``: ``rows[i - 1]`` is ``dp[i, 0..M]`` and ``choices[i - 1, j - 1]``
      the move recorded at ``(i, j)``: -1 (to ``(i, j - 1)``), -2 (to ``(i - 1, j)``) or
      ``k >= 0`` (to ``(i - 1, k)``, using source ``j`` for target ``i``).
    """
    m_pad = src_kind.shape[0]
    scores = shape_score_matrix(
        src_kind[None, :], src_shape[None, :, :], dst_kind[:, None], dst_shape[:, None, :]
    )  # [N, M]: s(source j, target i)
    pen = _flat_step_tables(m_pad, m_real)  # [M, M + 1]
    tol = jnp.float32(TIE_TOLERANCE)

    def step(prev: jnp.ndarray, s_row: jnp.ndarray):
        # prev = dp[i - 1, 0..M]; every candidate that uses source j for target i.
        cand = (prev[None, :] + s_row[:, None]) + pen  # [M, M + 1]
        best_run = jnp.max(cand, axis=1)
        up = prev[1:]
        # dp[i, j] = max(dp[i-1, j], dp[i, j-1], best_run[j]): a cumulative max along j.
        row = jnp.concatenate([jnp.zeros((1,), prev.dtype), lax.cummax(jnp.maximum(up, best_run))])
        left = row[:-1]
        # Tie rule: dp[i-1, j] unless dp[i, j-1] is larger; k from 0 up, replaced only
        # when larger, i.e. the first k within tolerance of the best candidate.
        take_left = left - up > tol * jnp.maximum(1.0, jnp.abs(up))
        base = jnp.where(take_left, left, up)
        near = cand >= (best_run - tol * jnp.maximum(1.0, jnp.abs(best_run)))[:, None]
        first_k = jnp.argmax(near, axis=1).astype(jnp.int32)
        run_wins = best_run - base > tol * jnp.maximum(1.0, jnp.abs(base))
        choice = jnp.where(run_wins, first_k, jnp.where(take_left, _LEFT, _UP))
        return row, (row, choice.astype(jnp.int32))

    init = jnp.zeros((m_pad + 1,), jnp.float32)
    _, (rows, choices) = lax.scan(step, init, scores)
    return rows, choices


def _encode_leaves(
    leaves: list[LayerSpec], kinds: dict[str, int], length: int, rank: int
) -> tuple[np.ndarray, np.ndarray]:
    kind = np.full((length,), -1, np.int32)
    shape = np.zeros((length, rank), np.int32)
    for r, leaf in enumerate(leaves):
        if not leaf.is_placeholder:
            kind[r] = kinds.setdefault(leaf.kind, len(kinds))
            shape[r, : len(leaf.shape)] = leaf.shape
    return kind, shape


def flat_tables(src: list[LayerSpec], dst: list[LayerSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Runs the compiled flat recurrence on two leaf lists.

    Returns ``(dp, choices)`` on the host: ``dp`` is ``(n + 1) x (m + 1)`` (row 0 zero)
    and ``choices[i - 1, j - 1]`` the move recorded at ``(i, j)`` (see
    :func:`_flat_kernel`). Sizes are bucketed to powers of two (at least 16), so
    architectures of similar depth reuse one compiled kernel.
    """
    n, m = len(dst), len(src)
    kinds: dict[str, int] = {}
    rank = _bucket(max([1, *(len(x.shape) for x in [*src, *dst])]), 4)
    n_pad, m_pad = _bucket(n, 16), _bucket(m, 16)
    sk, ss = _encode_leaves(src, kinds, m_pad, rank)
    dk, ds = _encode_leaves(dst, kinds, n_pad, rank)
    rows, choices = _flat_kernel(sk, ss, dk, ds, np.int32(m))
    rows = np.asarray(rows[:n, : m + 1], np.float64)
    table = np.concatenate([np.zeros((1, m + 1)), rows]) if n else np.zeros((1, m + 1))
    return table, np.asarray(choices[:n, :m])


def _flat_backtrack(
    dp_table: np.ndarray, choices: np.ndarray, src: list[LayerSpec], dst: list[LayerSpec]
) -> list[tuple[int, int]]:
    """Follows the recorded moves from ``(n, m)``; returns ``(source, target)`` 0-based.

    A move from ``(i, j)`` to ``(i - 1, k)`` is a pair (source j, target i) when the value
    changed along it (beyond the tie tolerance) and the two leaves score above 0 (a
    pointer move over a leaf of another kind changes the value by its penalty only and
    pairs nothing).
    """
    out = []
    i, j = len(dst), len(src)
    while i > 0 and j > 0:
        c = int(choices[i - 1, j - 1])
        if c == _LEFT:
            j -= 1
        elif c == _UP:
            i -= 1
        else:
            before, after = dp_table[i - 1, c], dp_table[i, j]
            changed = abs(after - before) > TIE_TOLERANCE * max(1.0, abs(before))
            if changed and layer_score(src[j - 1], dst[i - 1]) > 0:
                out.append((j - 1, i - 1))
            i, j = i - 1, c
    return out


def flat(src_tree: SpecTree, dst_tree: SpecTree, rng: Any = None) -> Alignment:
    """The flat dynamic programme of design.md over the two leaf lists.

    The leaves of each tree, in order and placeholders included, form the lists; the
    score is ``dp[n, m]``; every target leaf gets at most one source leaf, a source
    leaf may serve several targets (each reuse pays the pointer penalty). ``rng`` is not
    used.
    """
    del rng
    src_items, dst_items = list(iter_leaves(src_tree)), list(iter_leaves(dst_tree))
    src = [leaf for _, leaf in src_items]
    dst = [leaf for _, leaf in dst_items]
    if not src or not dst:
        return Alignment(score=0.0, pairs=[])
    table, choices = flat_tables(src, dst)
    pairs = [
        (src_items[j][0], dst_items[i][0]) for j, i in _flat_backtrack(table, choices, src, dst)
    ]
    return Alignment(score=float(table[len(dst), len(src)]), pairs=_sorted_pairs(pairs))


# ----------------------------------------------------------------------------------
# bipartite and nested bipartite.


def _key(node: SpecTree) -> Any:
    """A hashable structural key of a spec tree (equal trees, equal keys)."""
    if isinstance(node, LayerSpec):
        return node
    return tuple(_key(x) for x in node)


def _position_weights(n: int, m: int) -> np.ndarray:
    """``[n, m]``: ``1 - (i/n - j/m)^2`` with 0-based positions."""
    i = np.arange(n, dtype=np.float64)[:, None] / n
    j = np.arange(m, dtype=np.float64)[None, :] / m
    return 1.0 - (i - j) ** 2


def _assign(weights: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    """Maximum-weight matching of an ``[n, m]`` weight table.

    Returns ``(normalised score, [(target r, source c), ...])`` keeping only assignments of
    positive weight; the score is the matched weight over the sum, over the sources, of
    each one's best edge weight (0 when that sum is 0).
    """
    n, m = weights.shape
    if n == 0 or m == 0:
        return 0.0, []
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
    by_key: dict[Any, np.ndarray] = {}
    for r, t in enumerate(dst):
        if isinstance(t, LayerSpec):
            continue
        key = _key(t)
        if key not in by_key:
            by_key[key] = alignment_scores(sources, t)
        s[r, src_blocks] = by_key[key]
    return s


def _bipartite(src: list, dst: list, sp: IndexPath = (), tp: IndexPath = ()):
    """One bipartite level; matched block pairs aligned inside by dp."""
    s = _dp_block_scores(src, dst)
    score, matched = _assign(_position_weights(len(dst), len(src)) * s)
    pairs = []
    for r, c in matched:
        x, t = src[c], dst[r]
        if isinstance(x, LayerSpec):
            pairs.append((sp + (c,), tp + (r,)))
        else:
            inner = _alignment.align(x, t)
            pairs.extend((sp + (c, *a), tp + (r, *b)) for a, b in inner.pairs)
    return score, pairs


def bipartite(src_tree: SpecTree, dst_tree: SpecTree, rng: Any = None) -> Alignment:
    """The bipartite matcher of design.md.

    At the top level, a maximum-weight matching between source elements ``j`` (``m`` of
    them) and target elements ``i`` (``n``), edge weight ``(1 - (i/n - j/m)^2) * s(j, i)``
    with 0-based positions, where ``s`` is the dp element score (a layer pair's shape
    score, a block pair's dp alignment score, 0 otherwise). Assignments of weight 0 are
    not pairs; matched block pairs are matched inside by the dp alignment. ``score`` is
    the matched weight over the sum, over source elements, of each one's best edge
    weight (0 when that sum is 0), so it lies in [0, 1]; it is this matcher's
    similarity. ``rng`` is not used.
    """
    del rng
    score, pairs = _bipartite(list(src_tree), list(dst_tree))
    return Alignment(score=float(score), pairs=_sorted_pairs(pairs))


class _NestedBipartite:
    """Nested bipartite matching with block pairs memoised by structure."""

    def __init__(self) -> None:
        self._memo: dict[tuple[Any, Any], tuple[float, list]] = {}

    def solve(self, src: list, dst: list) -> tuple[float, list[tuple[IndexPath, IndexPath]]]:
        """Returns ``(normalised score, pairs relative to the two lists)``."""
        key = (_key(src), _key(dst))
        if key in self._memo:
            return self._memo[key]
        s = _leaf_scores(src, dst)
        for r, t in enumerate(dst):
            if not isinstance(t, LayerSpec):
                for c, x in enumerate(src):
                    if not isinstance(x, LayerSpec):
                        s[r, c] = self.solve(x, t)[0]
        score, matched = _assign(_position_weights(len(dst), len(src)) * s)
        pairs = []
        for r, c in matched:
            if isinstance(src[c], LayerSpec):
                pairs.append(((c,), (r,)))
            else:
                inner = self.solve(src[c], dst[r])[1]
                pairs.extend(((c, *a), (r, *b)) for a, b in inner)
        self._memo[key] = (score, pairs)
        return score, pairs


def nested_bipartite(src_tree: SpecTree, dst_tree: SpecTree, rng: Any = None) -> Alignment:
    """The nested bipartite matcher: :func:`bipartite` at every level.

    Inside matched block pairs the matching is again bipartite, and a block pair's
    element score is its own (normalised) nested bipartite score, as in the published
    method. ``score`` is the top level's normalised score. ``rng`` is not used.
    """
    del rng
    score, pairs = _NestedBipartite().solve(list(src_tree), list(dst_tree))
    return Alignment(score=float(score), pairs=_sorted_pairs(pairs))


# ----------------------------------------------------------------------------------
# random (the control).


def _host_rng(rng: Any) -> np.random.Generator:
    """A numpy generator from a jax key, an int seed or None (seed 0)."""
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    try:
        array = jnp.asarray(rng) if not hasattr(rng, "dtype") else rng
        if jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
            array = jax.random.key_data(array)
        words = np.asarray(array).astype(np.uint32).ravel().tolist()
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"rng must be a jax PRNG key, an int seed or None, got {type(rng).__name__}."
        ) from err
    return np.random.default_rng(words)


def random_matching(src_tree: SpecTree, dst_tree: SpecTree, rng: Any = None) -> Alignment:
    """The control: a random one-to-one matching of same-kind leaves.

    For every kind, the source and target leaves of that kind (placeholders never) are
    shuffled and paired in order, so ``min(#source, #target)`` pairs per kind, each leaf
    used at most once, the tree structure ignored. ``rng`` (a jax key, an int seed, or
    None for seed 0) makes it deterministic. ``score`` is the sum of the pairs' layer
    (shape) scores, i.e. the number of pairs discounted by shape mismatch; it has no
    normalisation and is not a similarity.
    """
    gen = _host_rng(rng)
    src_by_kind: dict[str, list[IndexPath]] = {}
    dst_by_kind: dict[str, list[tuple[IndexPath, LayerSpec]]] = {}
    src_leaf: dict[IndexPath, LayerSpec] = {}
    for path, leaf in iter_leaves(src_tree):
        if not leaf.is_placeholder:
            src_by_kind.setdefault(leaf.kind, []).append(path)
            src_leaf[path] = leaf
    for path, leaf in iter_leaves(dst_tree):
        if not leaf.is_placeholder:
            dst_by_kind.setdefault(leaf.kind, []).append((path, leaf))
    pairs, score = [], 0.0
    for kind in sorted(src_by_kind.keys() & dst_by_kind.keys()):
        sources, targets = src_by_kind[kind], dst_by_kind[kind]
        s_order = gen.permutation(len(sources))
        t_order = gen.permutation(len(targets))
        for a, b in zip(s_order, t_order):
            src_path, (dst_path, dst_leaf) = sources[int(a)], targets[int(b)]
            pairs.append((src_path, dst_path))
            score += layer_score(src_leaf[src_path], dst_leaf)
    return Alignment(score=float(score), pairs=_sorted_pairs(pairs))


# ----------------------------------------------------------------------------------
# Registry and dispatch.

#: The matchers selectable by name.
MATCHERS: dict[str, Matcher] = {
    "dp": dp,
    "flat": flat,
    "bipartite": bipartite,
    "nested-bipartite": nested_bipartite,
    "random": random_matching,
}


def get_matcher(matcher: str | Matcher) -> Matcher:
    """Returns the matcher for a name in :data:`MATCHERS`, or ``matcher`` itself if it is
    callable; a ``ValueError`` naming the valid names otherwise."""
    if callable(matcher):
        return matcher
    if isinstance(matcher, str) and matcher in MATCHERS:
        return MATCHERS[matcher]
    raise ValueError(
        f"Unknown matcher {matcher!r}; use one of {list(MATCHERS)} or pass a function "
        "(src_tree, dst_tree, rng=None) -> dpiat_jax.Alignment."
    )


def matcher_name(matcher: str | Matcher) -> str:
    """The name a report records: the registry name, else the function's name."""
    if isinstance(matcher, str):
        get_matcher(matcher)
        return matcher
    for name, fn in MATCHERS.items():
        if fn is matcher:
            return name
    return getattr(matcher, "__name__", type(matcher).__name__)


def align(
    src_tree: SpecTree, dst_tree: SpecTree, matcher: str | Matcher = "dp", rng: Any = None
) -> Alignment:
    """Aligns two spec trees with the chosen matcher.

    Args:
      src_tree: the source architecture, a nested list with :class:`LayerSpec` leaves.
      dst_tree: the target architecture, likewise.
      matcher: a name in :data:`MATCHERS` (``"dp"``, the default, ``"flat"``,
        ``"bipartite"``, ``"nested-bipartite"``, ``"random"``) or a function
        ``(src_tree, dst_tree, rng=None) -> Alignment``.
      rng: randomness for the random matchers: a jax PRNG key or an int seed
        (deterministic for a given value; None means seed 0). Ignored by the others.

    Returns:
      An :class:`Alignment`: the matcher's ``score`` and the matched leaf pairs as
      ``(src_index_path, dst_index_path)`` index paths into the given trees, sorted by
      target path.
    """
    fn = get_matcher(matcher)
    validate_tree(src_tree, argname="src_tree")
    validate_tree(dst_tree, argname="dst_tree")
    result = fn(src_tree, dst_tree, rng=rng)
    if not isinstance(result, Alignment):
        raise TypeError(
            f"matcher {matcher_name(matcher)!r} returned {type(result).__name__}; a matcher "
            "must return a dpiat_jax.Alignment(score, pairs)."
        )
    return result
