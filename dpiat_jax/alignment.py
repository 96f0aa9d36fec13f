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
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpiat_jax.scores import shape_score_matrix
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


def _gt(xp, a, b):
    """``a`` larger than ``b`` beyond the tie tolerance."""
    return a - b > TIE_TOLERANCE * xp.maximum(1.0, xp.abs(b))


def _column_step(xp, cummax, prev, p, weight, valid, with_choices: bool):
    """One column of the dynamic programme, for any leading batch dimensions.

    Args:
      xp: ``jax.numpy`` or ``numpy``; ``cummax`` the cumulative maximum on the last axis.
      prev: ``[..., N + 1]``, the previous column ``dp[:, j - 1]``.
      p: ``[..., N + 1]``, prefix sums of column ``j``'s scores over the targets.
      weight, valid: ``[N, N]``, ``1 / sqrt(i - k + 1)`` and the mask ``k <= i``.

    Returns:
      ``(dp[:, j], choice)``: the new column and, per target ``i``, -1 (source unused),
      -2 (target unmatched) or the first target ``k`` of the chosen run (None without
      choices). Every candidate that uses source ``j`` depends only on ``prev``, so the
      runs are one masked ``N x N`` computation and the column is a cumulative maximum.
    """
    n = weight.shape[-1]
    run = (p[..., 1:, None] - p[..., None, :-1]) * weight + prev[..., None, :-1]
    run = xp.where(valid, run, -xp.inf)
    best_run = run.max(axis=-1)
    left = prev[..., 1:]
    zero = xp.zeros(prev.shape[:-1] + (1,), prev.dtype)
    col = xp.concatenate([zero, cummax(xp.maximum(left, best_run))], axis=-1)
    if not with_choices:
        return col, None
    tol = TIE_TOLERANCE * xp.maximum(1.0, xp.abs(best_run))
    near = run >= (best_run - tol)[..., None]
    shortest = n - xp.argmax(near[..., ::-1], axis=-1)  # the shortest of the best runs
    up_value = col[..., :-1]
    up = _gt(xp, up_value, left)
    base = xp.where(up, up_value, left)
    choice = xp.where(_gt(xp, best_run, base), shortest, xp.where(up, _UP, _LEFT))
    return col, choice.astype(xp.int32)


def _run_weights(xp, n: int, dtype):
    i = xp.arange(1, n + 1)[:, None]
    k = xp.arange(1, n + 1)[None, :]
    valid = k <= i
    weight = xp.where(valid, 1.0 / xp.sqrt(xp.maximum(i - k + 1, 1).astype(dtype)), 0.0)
    return weight.astype(dtype), valid


def _prefix(xp, scores):
    """``[..., N, M]`` scores -> ``[..., N + 1, M]`` prefix sums over targets."""
    zero = xp.zeros(scores.shape[:-2] + (1, scores.shape[-1]), scores.dtype)
    return xp.concatenate([zero, xp.cumsum(scores, axis=-2)], axis=-2)


def _dp_columns(scores: jnp.ndarray, with_choices: bool):
    """Solves one padded problem with a ``lax.scan`` over the source columns.

    Args:
      scores: ``[N, M]`` float32, ``scores[r, j]`` = s(source j, target r).
      with_choices: whether to return the choice table for backtracking.

    Returns:
      ``(dp[N, M], choices)``; ``choices[j, i]`` (0-based) as in :func:`_column_step`,
      ``None`` without choices. Padding rows and columns (zero scores, at the end) do
      not change ``dp[n, m]``, so ``dp[N, M]`` is the score of the unpadded problem.
    """
    n = scores.shape[0]
    weight, valid = _run_weights(jnp, n, scores.dtype)
    cummax = functools.partial(lax.cummax, axis=0)

    def step(prev, p):
        return _column_step(jnp, cummax, prev, p, weight, valid, with_choices)

    last, choices = lax.scan(step, jnp.zeros((n + 1,), scores.dtype), _prefix(jnp, scores).T)
    return last[n], choices


def _pair_scores(xp, pair_src, pair_dst, tables, next_dst_count, next_scores):
    """The ``[P, N, M]`` element score matrices of every block pair of one depth.

    ``tables`` = (src_kind, src_shape, src_child, dst_kind, dst_shape, dst_child):
    ``*_kind [B, L]``, ``*_shape [B, L, R]``, ``*_child [B, L]`` (a child's block index
    one depth deeper, or -1). ``next_scores`` holds the deeper depth's pair scores,
    laid out as ``src_block * next_dst_count + dst_block``.
    """
    src_kind, src_shape, src_child, dst_kind, dst_shape, dst_child = tables
    sk = src_kind[pair_src][:, None, :]
    ss = src_shape[pair_src][:, None, :, :]
    sc = src_child[pair_src][:, None, :]
    dk = dst_kind[pair_dst][:, :, None]
    ds = dst_shape[pair_dst][:, :, None, :]
    dc = dst_child[pair_dst][:, :, None]
    leaf = shape_score_matrix(sk, ss, dk, ds, xp=xp)
    both_blocks = (sc >= 0) & (dc >= 0)
    index = xp.where(both_blocks, sc * next_dst_count + dc, 0)
    return xp.where(both_blocks, next_scores[index], leaf).astype(xp.float32)


@functools.partial(jax.jit, static_argnames=("with_choices",))
def _depth_kernel(pair_src, pair_dst, tables, next_dst_count, next_scores, *, with_choices):
    """Aligns every block pair of one nesting depth in one compiled call.

    Returns ``(scores [P], choices [P, M, N] or None)``.
    """
    scores = _pair_scores(jnp, pair_src, pair_dst, tables, next_dst_count, next_scores)
    return jax.vmap(functools.partial(_dp_columns, with_choices=with_choices))(scores)


def _depth_numpy(pair_src, pair_dst, tables, next_dst_count, next_scores, *, with_choices):
    """The same computation as :func:`_depth_kernel` in NumPy, batched over pairs.

    The fast path for small problems met for the first time in a process, where
    compiling would cost more than the whole alignment.
    """
    scores = _pair_scores(np, pair_src, pair_dst, tables, next_dst_count, np.asarray(next_scores))
    prefix = _prefix(np, scores)
    n, m = scores.shape[1], scores.shape[2]
    weight, valid = _run_weights(np, n, np.float32)
    cummax = functools.partial(np.maximum.accumulate, axis=-1)
    col = np.zeros((scores.shape[0], n + 1), np.float32)
    choices = np.empty((scores.shape[0], m, n), np.int32) if with_choices else None
    for j in range(m):
        col, choice = _column_step(np, cummax, col, prefix[:, :, j], weight, valid, with_choices)
        if with_choices:
            choices[:, j] = choice
    return col[:, n], choices


#: Largest per-depth work (pairs x targets^2 x sources) the NumPy fast path takes on.
FAST_PATH_WORK = 4_000_000
_KERNEL = {"policy": "auto"}
_compiled: set[tuple] = set()


def set_kernel(policy: str) -> None:
    """Chooses how alignments run: ``"auto"`` (default: the compiled kernel, or NumPy
    for a small problem whose shapes were not compiled yet in this process), ``"jit"``
    (always compiled) or ``"numpy"`` (never compiled)."""
    if policy not in ("auto", "jit", "numpy"):
        raise ValueError(f"Unknown kernel policy {policy!r}; use 'auto', 'jit' or 'numpy'.")
    _KERNEL["policy"] = policy


def _run_depth(pair_src, pair_dst, tables, next_dst_count, next_scores, *, with_choices):
    """Runs one depth on the compiled kernel or the NumPy fast path (see set_kernel)."""
    signature = (
        len(pair_src),
        tables[0].shape,
        tables[3].shape,
        tables[1].shape[-1],
        np.shape(next_scores),
        with_choices,
    )
    policy = _KERNEL["policy"]
    work = len(pair_src) * tables[3].shape[1] ** 2 * tables[0].shape[1]
    if policy == "numpy" or (
        policy == "auto" and signature not in _compiled and work <= FAST_PATH_WORK
    ):
        return _depth_numpy(
            pair_src, pair_dst, tables, next_dst_count, next_scores, with_choices=with_choices
        )
    _enable_compilation_cache()
    _compiled.add(signature)
    return _depth_kernel(
        pair_src, pair_dst, tables, next_dst_count, next_scores, with_choices=with_choices
    )


def _enable_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache in the user's cache directory, once,
    unless the user configured one or set ``DPIAT_JAX_COMPILATION_CACHE=0``."""
    if _KERNEL.get("cache_checked"):
        return
    _KERNEL["cache_checked"] = True
    setting = os.environ.get("DPIAT_JAX_COMPILATION_CACHE", "1")
    if setting.lower() in ("0", "false", "off", "no") or jax.config.jax_compilation_cache_dir:
        return
    path = setting if os.sep in setting else _default_cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except (OSError, AttributeError):  # read-only home or an older jax: run uncached
        pass


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dpiat_jax", "jax_compilation_cache")


# ----------------------------------------------------------------------------------
# Encoding spec trees as per-depth tables.


@dataclasses.dataclass(frozen=True)
class _Block:
    path: IndexPath
    children: tuple  # each: LayerSpec or int (index of a block one depth deeper)


def _index_tree(tree: SpecTree) -> list[list[_Block]]:
    """Lists the blocks (nested lists) of a tree by nesting depth, breadth first."""
    levels: list[list[_Block]] = []
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
        levels.append(level)
        frontier = deeper
    return levels


def _canonicalise(trees: Sequence[list[list[_Block]]]) -> tuple[list[list[list[int]]], list[list]]:
    """Gives identical blocks one id, across all the given trees, depth by depth.

    Architectures repeat blocks, and identical blocks align identically, so only the
    distinct ones need solving. Returns ``(ids, distinct)``: ``ids[t][d][b]`` is the id
    of tree ``t``'s block ``b`` at depth ``d``; ``distinct[d][i]`` the content of id
    ``i`` (a tuple of LayerSpec leaves and deeper ids).
    """
    depth = max(len(t) for t in trees)
    ids: list[list[list[int]]] = [[[] for _ in t] for t in trees]
    distinct: list[list] = [[] for _ in range(depth)]
    for d in reversed(range(depth)):
        seen: dict[tuple, int] = {}
        for t, levels in enumerate(trees):
            if d >= len(levels):
                continue
            deeper = ids[t][d + 1] if d + 1 < len(levels) else []
            row = ids[t][d]
            for block in levels[d]:
                key = tuple(c if isinstance(c, LayerSpec) else deeper[c] for c in block.children)
                i = seen.get(key)
                if i is None:
                    i = seen[key] = len(distinct[d])
                    distinct[d].append(key)
                row.append(i)
    return ids, distinct


def _bucket(x: int, minimum: int = 1) -> int:
    """The next power of two at or above ``max(x, minimum)``."""
    x = max(int(x), minimum, 1)
    return 1 << (x - 1).bit_length()


def _tables(blocks: Sequence[tuple], kinds: dict[str, int], rank: int):
    """Encodes distinct blocks as padded tables: kind id ``[B, L]`` (-1: none),
    shape ``[B, L, R]`` and deeper block id ``[B, L]`` (-1: a leaf)."""
    rows = _bucket(len(blocks))
    length = _bucket(max((len(b) for b in blocks), default=1))
    kind = np.full((rows, length), -1, np.int32)
    shape = np.zeros((rows, length, rank), np.int32)
    child = np.full((rows, length), -1, np.int32)
    for b, block in enumerate(blocks):
        for j, c in enumerate(block):
            if isinstance(c, LayerSpec):
                if c.shape:
                    kind[b, j] = kinds.setdefault(c.kind, len(kinds))
                    shape[b, j, : len(c.shape)] = c.shape
            else:
                child[b, j] = c
    return kind, shape, child


@dataclasses.dataclass
class _Solution:
    """Per-depth results of a batched alignment, over distinct block pairs."""

    scores: list  # per depth, [P_pad]: pair (src id, dst id) at src_id * n_dst + dst_id
    choices: list  # per depth, [P_pad, M, N] or None
    dst_counts: list[int]  # distinct target blocks per depth
    src_levels: list[list[list[_Block]]]
    dst_levels: list[list[_Block]]
    src_ids: list[list[list[int]]]
    dst_ids: list[list[int]]

    def pair_index(self, s: int, d: int, src_block: int, dst_block: int) -> int:
        """The flat index of source ``s``'s block against a target block at depth ``d``."""
        return self.src_ids[s][d][src_block] * self.dst_counts[d] + self.dst_ids[d][dst_block]


def _solve(sources: Sequence[SpecTree], target: SpecTree, *, with_choices: bool) -> _Solution:
    """Runs the batched dynamic programme of all sources against one target."""
    src_levels = [_index_tree(s) for s in sources]
    dst_levels = _index_tree(target)
    src_ids, src_distinct = _canonicalise(src_levels)
    (dst_ids,), dst_distinct = _canonicalise([dst_levels])
    depth_count = min(len(dst_distinct), len(src_distinct))
    rank = max(
        (
            len(c.shape)
            for lv in src_distinct + dst_distinct
            for b in lv
            for c in b
            if isinstance(c, LayerSpec)
        ),
        default=1,
    )
    rank = _bucket(rank, 4)
    kinds: dict[str, int] = {}
    dst_counts = [
        len(dst_distinct[d]) if d < len(dst_distinct) else 0 for d in range(depth_count + 1)
    ]
    scores: list = [None] * depth_count
    choices: list = [None] * depth_count
    next_scores = np.zeros((1,), np.float32)
    for d in reversed(range(depth_count)):
        src_t = _tables(src_distinct[d], kinds, rank)
        dst_t = _tables(dst_distinct[d], kinds, rank)
        real_pairs = len(src_distinct[d]) * dst_counts[d]
        p = np.arange(_bucket(real_pairs), dtype=np.int32) % real_pairs
        scores[d], choices[d] = _run_depth(
            p // dst_counts[d],
            p % dst_counts[d],
            (*src_t, *dst_t),
            np.int32(dst_counts[d + 1]),
            next_scores,
            with_choices=with_choices,
        )
        next_scores = scores[d]
    return _Solution(scores, choices, dst_counts, src_levels, dst_levels, src_ids, dst_ids)


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


def _pairs(sol: _Solution) -> list[tuple[IndexPath, IndexPath]]:
    """Recovers the matched leaf pairs of the first source against the target."""
    pairs: list[tuple[IndexPath, IndexPath]] = []
    frontier = [(0, 0)]  # (source block, target block) at depth d
    d = 0
    while frontier:
        index = np.array([sol.pair_index(0, d, bs, bt) for bs, bt in frontier], np.int32)
        tables = np.asarray(sol.choices[d])[index]
        deeper_scores = np.asarray(sol.scores[d + 1]) if d + 1 < len(sol.scores) else None
        deeper = []
        for (bs, bt), table in zip(frontier, tables):
            sblock, tblock = sol.src_levels[0][d][bs], sol.dst_levels[d][bt]
            for j, k, i in _backtrack(table, len(tblock.children), len(sblock.children)):
                sc = sblock.children[j - 1]
                for r in range(k, i + 1):
                    tc = tblock.children[r - 1]
                    if isinstance(sc, LayerSpec) and isinstance(tc, LayerSpec):
                        if sc.kind == tc.kind and sc.shape and tc.shape:
                            pairs.append((sblock.path + (j - 1,), tblock.path + (r - 1,)))
                    elif not isinstance(sc, LayerSpec) and not isinstance(tc, LayerSpec):
                        if deeper_scores[sol.pair_index(0, d + 1, sc, tc)] > 0:
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
    score = float(np.asarray(sol.scores[0])[0])
    pairs = _pairs(sol)
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
    top = np.asarray(sol.scores[0], np.float64)
    return np.array([top[sol.pair_index(s, 0, 0, 0)] for s in range(len(sources))])


def similarity_of_trees(src_tree: SpecTree, dst_tree: SpecTree) -> float:
    """Returns ``score(src, dst) / score(dst, dst)`` (design.md, "Similarity").

    1.0 when the source covers the target completely, toward 0 as the architectures
    diverge; not symmetric. A target with nothing to match (only placeholders) has
    similarity 0.
    """
    both = alignment_scores([src_tree, dst_tree], dst_tree)
    return 0.0 if both[1] <= 0 else float(both[0] / both[1])
