"""Alignment: the dynamic programme of design.md over two spec trees, recursively.

The kernel is a ``jax.jit``-compiled ``lax.scan`` over the source elements (columns);
each step computes the best run ending at every target row at once (an ``n x n``
masked computation) and a cumulative maximum down the column. Every block pair of one
nesting depth (all source blocks against all target blocks, and, when ranking, all
candidate sources at once) is padded to a common size and solved by one ``vmap``-ed
call; sizes are bucketed to powers of two so that similar architectures reuse compiled
code. Backtracking runs on the host, fetching from the device only the choice tables of
the block pairs it visits.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpiat_jax.scores import layer_score, shape_score_matrix
from dpiat_jax.spec import IndexPath, LayerSpec, SpecTree, validate_tree

__all__ = [
    "Alignment",
    "align",
    "alignment_scores",
    "similarity_of_trees",
    "TIE_TOLERANCE",
]

#: Relative tolerance under which two dynamic-programme values count as equal.
TIE_TOLERANCE = 1e-5

_LEFT = -1  # source j left unused: move to (i, j - 1)
_UP = -2  # target i left unmatched: move to (i - 1, j)


@dataclasses.dataclass(frozen=True)
class Alignment:
    """The result of aligning a source spec tree with a target spec tree.

    Attributes:
      score: ``dp[n, m]`` of the top-level alignment.
      pairs: one ``(src_index_path, dst_index_path)`` entry per matched leaf pair,
        sorted by target path; a source leaf may appear several times (one source
        element may seed a run of target elements).
    """

    score: float
    pairs: list[tuple[IndexPath, IndexPath]]


# ----------------------------------------------------------------------------------
# The kernel.


def _gt(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """``a`` larger than ``b`` beyond the tie tolerance."""
    return a - b > TIE_TOLERANCE * jnp.maximum(1.0, jnp.abs(b))


def _dp_columns(scores: jnp.ndarray, with_choices: bool):
    """Solves one padded problem.

    Args:
      scores: ``[N, M]`` float32, ``scores[r, j]`` = s(source j, target r).
      with_choices: whether to return the choice table for backtracking.

    Returns:
      ``(dp[N, M], choices)`` where ``choices[j, i]`` (0-based ``j``, ``i``) is -1
      (source unused), -2 (target unmatched) or ``k >= 1``, the first target of the run
      that ends at target ``i + 1`` and uses source ``j + 1``; ``None`` without choices.
    """
    n = scores.shape[0]
    prefix = jnp.concatenate([jnp.zeros((1, scores.shape[1]), scores.dtype), jnp.cumsum(scores, 0)])
    i = jnp.arange(1, n + 1)[:, None]
    k = jnp.arange(1, n + 1)[None, :]
    valid = k <= i
    weight = jnp.where(valid, lax.rsqrt(jnp.maximum(i - k + 1, 1).astype(scores.dtype)), 0.0)

    def step(prev: jnp.ndarray, p: jnp.ndarray):
        run = (p[1:, None] - p[None, :-1]) * weight + prev[None, :-1]
        run = jnp.where(valid, run, -jnp.inf)
        best_run = jnp.max(run, axis=1)
        left = prev[1:]
        col = jnp.concatenate(
            [jnp.zeros((1,), prev.dtype), lax.cummax(jnp.maximum(left, best_run))]
        )
        if not with_choices:
            return col, None
        near = run >= (best_run - TIE_TOLERANCE * jnp.maximum(1.0, jnp.abs(best_run)))[:, None]
        shortest = n - jnp.argmax(near[:, ::-1], axis=1)  # largest k among the best runs
        up_value = col[:-1]
        up = _gt(up_value, left)
        base = jnp.where(up, up_value, left)
        choice = jnp.where(_gt(best_run, base), shortest, jnp.where(up, _UP, _LEFT))
        return col, choice.astype(jnp.int32)

    last, choices = lax.scan(step, jnp.zeros((n + 1,), scores.dtype), prefix.T)
    return last[n], choices


@functools.partial(jax.jit, static_argnames=("with_choices",))
def _depth_kernel(
    pair_src: jnp.ndarray,
    pair_dst: jnp.ndarray,
    src_kind: jnp.ndarray,
    src_shape: jnp.ndarray,
    src_child: jnp.ndarray,
    dst_kind: jnp.ndarray,
    dst_shape: jnp.ndarray,
    dst_child: jnp.ndarray,
    next_dst_count: jnp.ndarray,
    next_scores: jnp.ndarray,
    *,
    with_choices: bool,
):
    """Aligns every block pair of one nesting depth in one call.

    ``pair_src[p]`` / ``pair_dst[p]`` index the block rows of the source / target
    tables (``*_kind [B, L]``, ``*_shape [B, L, R]``, ``*_child [B, L]``: a child's
    block index one depth deeper, or -1). ``next_scores`` holds the scores of the
    deeper depth's pairs, laid out as ``src_block * next_dst_count + dst_block``.

    Returns ``(scores [P], choices [P, M, N] or None)``.
    """
    sk = src_kind[pair_src][:, None, :]
    ss = src_shape[pair_src][:, None, :, :]
    sc = src_child[pair_src][:, None, :]
    dk = dst_kind[pair_dst][:, :, None]
    ds = dst_shape[pair_dst][:, :, None, :]
    dc = dst_child[pair_dst][:, :, None]
    leaf = shape_score_matrix(sk, ss, dk, ds)
    both_blocks = (sc >= 0) & (dc >= 0)
    index = jnp.where(both_blocks, sc * next_dst_count + dc, 0)
    block = jnp.where(both_blocks, next_scores[index], 0.0)
    scores = jnp.where(both_blocks, block, leaf)  # [P, N, M]
    return jax.vmap(functools.partial(_dp_columns, with_choices=with_choices))(scores)


# ----------------------------------------------------------------------------------
# Encoding spec trees as per-depth tables.


@dataclasses.dataclass(frozen=True)
class _Block:
    path: IndexPath
    children: tuple  # each: LayerSpec or int (index of a block one depth deeper)


def _index_tree(tree: SpecTree) -> list[list[_Block]]:
    """Lists the blocks (nested lists) of a tree by nesting depth, breadth first."""
    depths: list[list[_Block]] = []
    frontier: list[tuple[IndexPath, Sequence]] = [((), tree)]  # type: ignore[list-item]
    while frontier:
        level: list[_Block] = []
        deeper: list[tuple[IndexPath, Sequence]] = []
        for path, node in frontier:
            children = []
            for j, child in enumerate(node):
                if isinstance(child, LayerSpec):
                    children.append(child)
                else:
                    children.append(len(deeper))
                    deeper.append((path + (j,), child))
            level.append(_Block(path, tuple(children)))
        depths.append(level)
        frontier = deeper
    return depths


def _bucket(x: int, minimum: int = 1) -> int:
    """The next power of two at or above ``max(x, minimum)``."""
    x = max(int(x), minimum, 1)
    return 1 << (x - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class _Tables:
    kind: np.ndarray  # [B, L] int32
    shape: np.ndarray  # [B, L, R] int32
    child: np.ndarray  # [B, L] int32


def _tables(
    blocks: Sequence[_Block],
    child_offset: Sequence[int],
    kinds: dict[str, int],
    rows: int,
    length: int,
    rank: int,
) -> _Tables:
    """Encodes blocks as padded integer tables (kind id, shape, deeper block index)."""
    kind = np.full((rows, length), -1, np.int32)
    shape = np.zeros((rows, length, rank), np.int32)
    child = np.full((rows, length), -1, np.int32)
    for b, block in enumerate(blocks):
        for j, c in enumerate(block.children):
            if isinstance(c, LayerSpec):
                if not c.is_placeholder:
                    kind[b, j] = kinds.setdefault(c.kind, len(kinds))
                    shape[b, j, : len(c.shape)] = c.shape
            else:
                child[b, j] = c + child_offset[b]
    return _Tables(kind, shape, child)


@dataclasses.dataclass
class _Solution:
    """Per-depth device results of a batched alignment."""

    scores: list[jnp.ndarray]  # per depth, [P_pad]
    choices: list[jnp.ndarray | None]  # per depth, [P_pad, M, N]
    dst_counts: list[int]  # target blocks per depth
    src_offsets: list[list[int]]  # per source, per depth: first global block index


def _solve(sources: Sequence[SpecTree], target: SpecTree, *, with_choices: bool) -> _Solution:
    """Runs the batched dynamic programme of all sources against one target."""
    src_depths = [_index_tree(s) for s in sources]
    dst_depths = _index_tree(target)
    depth_count = min(len(dst_depths), max(len(d) for d in src_depths))
    kinds: dict[str, int] = {}
    rank = 1
    for tree_depths in [dst_depths, *src_depths]:
        for level in tree_depths:
            for block in level:
                for c in block.children:
                    if isinstance(c, LayerSpec):
                        rank = max(rank, len(c.shape))
    rank = _bucket(rank, 4)

    # src_offsets[s][d]: global index of source s's first block at depth d.
    src_offsets = [[0] * (depth_count + 1) for _ in src_depths]
    for d in range(depth_count + 1):
        total = 0
        for s, tree_depths in enumerate(src_depths):
            src_offsets[s][d] = total
            total += len(tree_depths[d]) if d < len(tree_depths) else 0

    scores: list = [None] * depth_count
    choices: list = [None] * depth_count
    dst_counts = [len(dst_depths[d]) if d < len(dst_depths) else 0 for d in range(depth_count + 1)]
    next_scores = jnp.zeros((1,), jnp.float32)
    for d in reversed(range(depth_count)):
        src_blocks: list[_Block] = []
        offsets: list[int] = []
        for s, tree_depths in enumerate(src_depths):
            if d < len(tree_depths):
                src_blocks.extend(tree_depths[d])
                offsets.extend([src_offsets[s][d + 1]] * len(tree_depths[d]))
        dst_blocks = dst_depths[d]
        length_s = _bucket(max((len(b.children) for b in src_blocks), default=1))
        length_d = _bucket(max((len(b.children) for b in dst_blocks), default=1))
        src_t = _tables(src_blocks, offsets, kinds, _bucket(len(src_blocks)), length_s, rank)
        dst_t = _tables(
            dst_blocks, [0] * len(dst_blocks), kinds, _bucket(len(dst_blocks)), length_d, rank
        )
        real_pairs = len(src_blocks) * len(dst_blocks)
        p = np.arange(_bucket(real_pairs), dtype=np.int32) % max(real_pairs, 1)
        pair_src, pair_dst = p // len(dst_blocks), p % len(dst_blocks)
        scores[d], choices[d] = _depth_kernel(
            pair_src,
            pair_dst,
            src_t.kind,
            src_t.shape,
            src_t.child,
            dst_t.kind,
            dst_t.shape,
            dst_t.child,
            np.int32(dst_counts[d + 1]),
            next_scores,
            with_choices=with_choices,
        )
        next_scores = scores[d]
    return _Solution(scores, choices, dst_counts, src_offsets)


# ----------------------------------------------------------------------------------
# Backtracking.


def _backtrack(choice: np.ndarray, n: int, m: int) -> list[tuple[int, int, int]]:
    """Follows recorded moves from ``(n, m)``.

    Returns ``(j, k, i)`` runs (1-based): source ``j`` seeds targets ``k..i``.
    """
    runs = []
    i, j = n, m
    while i > 0 and j > 0:
        c = int(choice[j - 1, i - 1])
        if c == _LEFT:
            j -= 1
        elif c == _UP:
            i -= 1
        else:
            runs.append((j, c, i))
            i, j = c - 1, j - 1
    return runs


def _pairs(sol: _Solution, src_depths: list[list[_Block]], dst_depths: list[list[_Block]]):
    """Recovers the matched leaf pairs of source 0 against the target."""
    host_scores = [np.asarray(s) for s in sol.scores]
    pairs: list[tuple[IndexPath, IndexPath]] = []
    frontier = [(0, 0)]  # (source block, target block) at depth d
    d = 0
    while frontier and d < len(sol.scores):
        n_dst = sol.dst_counts[d]
        index = np.array([bs * n_dst + bt for bs, bt in frontier])
        tables = np.asarray(jnp.take(sol.choices[d], index, axis=0))
        deeper = []
        for (bs, bt), table in zip(frontier, tables):
            sblock, tblock = src_depths[d][bs], dst_depths[d][bt]
            for j, k, i in _backtrack(table, len(tblock.children), len(sblock.children)):
                sc = sblock.children[j - 1]
                for r in range(k, i + 1):
                    tc = tblock.children[r - 1]
                    if isinstance(sc, LayerSpec) and isinstance(tc, LayerSpec):
                        if layer_score(sc, tc) > 0:
                            pairs.append((sblock.path + (j - 1,), tblock.path + (r - 1,)))
                    elif not isinstance(sc, LayerSpec) and not isinstance(tc, LayerSpec):
                        if host_scores[d + 1][sc * sol.dst_counts[d + 1] + tc] > 0:
                            deeper.append((sc, tc))
        frontier = deeper
        d += 1
    pairs.sort(key=lambda pair: pair[1])
    return pairs


# ----------------------------------------------------------------------------------
# Public functions.


def align(src_tree: SpecTree, dst_tree: SpecTree) -> Alignment:
    """Aligns two spec trees with the DPIAT dynamic programme.

    Args:
      src_tree: the source architecture, a nested list with :class:`LayerSpec` leaves.
      dst_tree: the target architecture, likewise.

    Returns:
      An :class:`Alignment`: ``score`` is ``dp[n, m]`` of the top level (block pairs
      score by their own alignment, recursively), and ``pairs`` lists every matched
      leaf pair as index paths into the given trees.
    """
    validate_tree(src_tree, argname="src_tree")
    validate_tree(dst_tree, argname="dst_tree")
    sol = _solve([src_tree], dst_tree, with_choices=True)
    score = float(sol.scores[0][0])
    pairs = _pairs(sol, _index_tree(src_tree), _index_tree(dst_tree))
    return Alignment(score=score, pairs=pairs)


def alignment_scores(sources: Sequence[SpecTree], target: SpecTree) -> np.ndarray:
    """Returns the top-level alignment score of every source against ``target``.

    All sources are solved together: one compiled call per nesting depth.
    """
    validate_tree(target, argname="target")
    for i, s in enumerate(sources):
        validate_tree(s, argname=f"sources[{i}]")
    if not sources:
        return np.zeros((0,), np.float64)
    sol = _solve(list(sources), target, with_choices=False)
    return np.asarray(sol.scores[0][: len(sources)], np.float64)


def similarity_of_trees(src_tree: SpecTree, dst_tree: SpecTree) -> float:
    """Returns ``score(src, dst) / score(dst, dst)`` (design.md, "Similarity").

    1.0 when the source covers the target completely, toward 0 as the architectures
    diverge; not symmetric. A target with nothing to match (only placeholders) has
    similarity 0.
    """
    both = alignment_scores([src_tree, dst_tree], dst_tree)
    return 0.0 if both[1] <= 0 else float(both[0] / both[1])
