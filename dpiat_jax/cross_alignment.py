"""Cross-level alignment: the dynamic programme with layers matched against blocks.

The published recurrence (:mod:`dpiat_jax.alignment`) scores a single layer against a
block as 0, so a flat network never seeds a hierarchical one. This module adds three
cross-level candidates and keeps every published one (design.md, "Alignment"):

- a leaf against a block scores as the list ``[leaf]`` aligned with the block's
  elements (a block against a leaf likewise), so the published run candidate may pair
  a layer with blocks;
- a run of >= 2 source leaves aligns with one target block's elements
  (``dp[i - 1, j0 - 1] + A(S[j0..j], T_i)``);
- one source block's elements align with a run of >= 2 target leaves
  (``dp[k - 1, j - 1] + A(S_j, T[k..i])``).

``A`` is this recurrence again, so the credit diminishes as in the published
programme. The tie rule is the published one, extended: source unused, then target
unmatched, then runs, then a source block into target leaves, then source leaves into
a target block, each taking over only when larger beyond :data:`TIE_TOLERANCE`, and
the shortest run first within each. A target leaf is credited at most once on any
path, so a tree's score against itself is still its number of layers and
``score(S, T) / score(T, T)`` stays a similarity in ``[0, 1]``.

Every quantity is one instance of a single problem: a run of a source block's
elements against a run of a target block's elements (:class:`Problems`). All
problems of one stage are padded to a common size and solved together, row by row,
by :func:`solve_rows` (NumPy for small batches, a ``jax.jit`` kernel otherwise);
identical blocks are solved once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpiat_jax.alignment import (
    MOVE_LEFT,
    MOVE_UP,
    KernelPolicy,
    bucket,
    canonicalise,
    current_policy,
    index_tree,
    larger,
    prefix_sums,
    run_weights,
    tolerance,
    use_compiled,
)
from dpiat_jax.scores import shape_score_matrix
from dpiat_jax.spec import LayerSpec, SpecTree, iter_leaves

__all__ = [
    "CROSS_SOURCE_RUN",
    "CROSS_TARGET_RUN",
    "NEG",
    "Encoding",
    "Problems",
    "Side",
    "Solved",
    "Stage",
    "Tables",
    "empty_tables",
    "encode",
    "encode_side",
    "forward",
    "make_stage",
    "problem_inputs",
    "solve_rows",
]

#: A value no alignment reaches: marks a candidate that does not exist.
NEG = -1e9
#: Choice code offset of "source block ``j`` into the target leaf run ``k..i``"
#: (the code is ``CROSS_TARGET_RUN + k``).
CROSS_TARGET_RUN = 1 << 20
#: Choice code offset of "source leaf run ``j0..j`` into target block ``i``"
#: (the code is ``-(CROSS_SOURCE_RUN + j0)``).
CROSS_SOURCE_RUN = 1 << 20


@dataclasses.dataclass(frozen=True, eq=False)
class Side:
    """The distinct blocks of one spec tree, every depth in one table.

    Blocks are numbered globally (depth 0 first, so the root is block 0); identical
    blocks of one depth share a number.

    Attributes:
      kind: ``[B, L]`` kind id of each leaf element (-1: placeholder, block, padding).
      shape: ``[B, L, R]`` zero-padded shapes.
      child: ``[B, L]`` the global number of a nested block, -1 for a leaf or padding.
      leaf: ``[B, L]`` whether the element is a leaf (placeholders included).
      length: ``[B]`` element counts.
      depth: ``[B]`` nesting depths.
      run: ``[B, L]`` for a leaf, how many leaves follow it without a block between
        (itself included); 0 for a block or padding.
      ids: ``ids[d][b]``: the global number of the tree's ``b``-th block of depth ``d``
        (breadth first, as :func:`~dpiat_jax.alignment.index_tree` lists them).

    >>> bn = LayerSpec("bn", (4,))
    >>> side = encode_side([bn, bn, [bn]], {}, 4)
    >>> side.run[0].tolist(), side.child[0].tolist()
    ([2, 1, 0, 0], [-1, -1, 1, -1])
    """

    kind: np.ndarray
    shape: np.ndarray
    child: np.ndarray
    leaf: np.ndarray
    length: np.ndarray
    depth: np.ndarray
    run: np.ndarray
    ids: list[list[int]]

    @property
    def count(self) -> int:
        """The number of distinct blocks."""
        return len(self.length)


def encode_side(tree: SpecTree, kinds: dict[str, int], rank: int) -> Side:
    """Encodes one spec tree's distinct blocks as a :class:`Side`.

    Args:
      tree: a validated spec tree.
      kinds: kind name -> id, shared by the two trees; new kinds are added to it.
      rank: the padded rank of the shapes.

    Returns:
      The :class:`Side`; element tables are padded to the :func:`bucket` of the
      longest block.

    >>> side = encode_side([LayerSpec("conv2d", (3, 3, 4, 8))], {}, 4)
    >>> side.shape[0, 0].tolist(), side.length.tolist()
    ([3, 3, 4, 8], [1])
    """
    levels = index_tree(tree, kinds)
    (local,), distinct = canonicalise([levels])
    offsets = np.cumsum([0] + [len(d) for d in distinct]).tolist()
    blocks = [(d, content) for d, level in enumerate(distinct) for content in level]
    width = bucket(max((len(c) for _, c in blocks), default=1))
    count = len(blocks)
    kind = np.full((count, width), -1, np.int32)
    shape = np.zeros((count, width, rank), np.int32)
    child = np.full((count, width), -1, np.int32)
    leaf = np.zeros((count, width), bool)
    run = np.zeros((count, width), np.int32)
    for b, (d, content) in enumerate(blocks):
        for j, c in enumerate(content):
            if isinstance(c, LayerSpec):
                leaf[b, j] = True
                if c.shape:
                    kind[b, j] = kinds.setdefault(c.kind, len(kinds))
                    shape[b, j, : len(c.shape)] = c.shape
            else:
                child[b, j] = offsets[d + 1] + c
        for j in reversed(range(len(content))):
            run[b, j] = run[b, j + 1] + 1 if leaf[b, j] and j + 1 < width else int(leaf[b, j])
    return Side(
        kind,
        shape,
        child,
        leaf,
        np.array([len(c) for _, c in blocks], np.int32),
        np.array([d for d, _ in blocks], np.int32),
        run,
        [[offsets[d] + i for i in ids] for d, ids in enumerate(local)],
    )


@dataclasses.dataclass(frozen=True)
class Problems:
    """A batch of alignment problems: a run of a source block's elements (columns)
    against a run of a target block's elements (rows).

    Attributes:
      gs, gt: ``[P]`` global block numbers, source and target.
      soff, slen: ``[P]`` first source element and how many.
      toff, tlen: ``[P]`` first target element and how many.

    >>> Problems.of([(0, 0, 0, 2, 0, 3)]).tlen.tolist()
    [3]
    """

    gs: np.ndarray
    gt: np.ndarray
    soff: np.ndarray
    slen: np.ndarray
    toff: np.ndarray
    tlen: np.ndarray

    @classmethod
    def of(cls, rows: Sequence[tuple[int, int, int, int, int, int]]) -> Problems:
        """Builds a batch from ``(gs, gt, soff, slen, toff, tlen)`` rows."""
        cols = np.array(rows, np.int32).reshape(-1, 6).T
        return cls(*cols)

    def __len__(self) -> int:
        return len(self.gs)


@dataclasses.dataclass(frozen=True, eq=False)
class Solved:
    """One solved batch: what backtracking needs to follow a problem of it.

    Attributes:
      problems: the batch.
      scores: ``[P, N, M]`` the element scores the problems were solved with.
      choices: ``[P, N, M]`` the choice tables (see :func:`solve_rows`).
    """

    problems: Problems
    scores: np.ndarray
    choices: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Tables:
    """What the forward pass knows about every distinct block pair.

    Attributes:
      blocks: ``[Bs, Bt]`` block-against-block scores (pairs of equal depth).
      src_runs: ``[Bs, Bt, Ls, Ds]``: ``[s, t, j, d]`` is ``A(s[j - d .. j], t)``, the
        leaf run of source block ``s`` that ends at element ``j`` and has ``d + 1``
        elements, against the whole of target block ``t`` (:data:`NEG` where it is not
        a leaf run or was not needed).
      dst_runs: ``[Bs, Bt, Lt, Dt]``: ``[s, t, i, e]`` is ``A(s, t[i - e .. i])``.
      solved: ``(kind, source block, target block, first element) -> (batch, index)``
        for every problem solved with choices; ``kind`` is ``"block"`` (first element
        0), ``"src_run"`` or ``"dst_run"``.
    """

    blocks: np.ndarray
    src_runs: np.ndarray
    dst_runs: np.ndarray
    solved: dict = dataclasses.field(default_factory=dict)


def _element_index(off: np.ndarray, count: np.ndarray, size: int, width: int):
    """``[P, size]`` element indices of runs (clipped) and whether each is real."""
    pos = np.arange(size, dtype=np.int32)
    valid = pos[None, :] < count[:, None]
    return np.minimum(off[:, None] + pos[None, :], width - 1), valid


@dataclasses.dataclass(frozen=True, eq=False)
class Stage:
    """One batch of problems and what shapes alone decide about its inputs.

    Attributes:
      kinds: per problem, ``"block"``, ``"src_run"`` or ``"dst_run"`` (see
        :attr:`Tables.solved`).
      problems: the batch.
      gather: index arrays into the :class:`Tables` (``gs, gt, sc, tc, s_idx, t_idx``,
        children clipped at 0).
      select: the four ``[P, N, M]`` masks of :func:`problem_inputs`'s element cases
        (leaf-leaf, block-block, leaf-block, block-leaf).
      leaf_leaf: ``[P, N, M]`` shape scores of the leaf pairs.
      src_keep, dst_keep: where the run tables hold a candidate.
      rows: the longest target run (how many rows the kernel runs).
    """

    kinds: tuple[str, ...]
    problems: Problems
    gather: tuple[np.ndarray, ...]
    select: tuple[np.ndarray, ...]
    leaf_leaf: np.ndarray
    src_keep: np.ndarray
    dst_keep: np.ndarray
    rows: int

    @functools.cached_property
    def keys(self) -> list[tuple[str, int, int, int]]:
        """Each problem's key in :attr:`Tables.solved`."""
        pr = self.problems
        rows = zip(self.kinds, pr.gs.tolist(), pr.gt.tolist(), pr.soff.tolist(), pr.toff.tolist())
        return [(k, gs, gt, soff if k == "src_run" else toff) for k, gs, gt, soff, toff in rows]

    @functools.cached_property
    def masks(self) -> dict[str, np.ndarray]:
        """Per kind, which problems of the batch have it."""
        kinds = np.array(self.kinds)
        return {kind: kinds == kind for kind in ("block", "src_run", "dst_run")}


def make_stage(src: Side, dst: Side, problems: Problems, kinds: Sequence[str]) -> Stage:
    """Lays out a batch of problems: what :func:`problem_inputs` needs besides values.

    Args:
      src, dst: the two encoded trees.
      problems: the batch.
      kinds: per problem, its kind (see :attr:`Tables.solved`).

    Returns:
      The :class:`Stage`; ``N`` and ``M`` are the :func:`bucket` of the longest runs,
      and the run tables are only as long as a run can be (1 without blocks).

    >>> bn = LayerSpec("bn", (4,))
    >>> side = encode_side([bn], {}, 4)
    >>> make_stage(side, side, Problems.of([(0, 0, 0, 1, 0, 1)]), ["block"]).leaf_leaf.tolist()
    [[[1.0]]]
    """
    n, m = bucket(int(problems.tlen.max())), bucket(int(problems.slen.max()))
    gs, gt = problems.gs, problems.gt
    s_idx, s_ok = _element_index(problems.soff, problems.slen, m, src.kind.shape[1])
    t_idx, t_ok = _element_index(problems.toff, problems.tlen, n, dst.kind.shape[1])
    sk, ss = src.kind[gs[:, None], s_idx], src.shape[gs[:, None], s_idx]
    tk, ts = dst.kind[gt[:, None], t_idx], dst.shape[gt[:, None], t_idx]
    sc = np.where(s_ok, src.child[gs[:, None], s_idx], -1)
    tc = np.where(t_ok, dst.child[gt[:, None], t_idx], -1)
    sl = (src.leaf[gs[:, None], s_idx] & s_ok)[:, None, :]
    tl = (dst.leaf[gt[:, None], t_idx] & t_ok)[:, :, None]
    sb, tb = (sc >= 0)[:, None, :], (tc >= 0)[:, :, None]
    leaf_leaf = shape_score_matrix(
        sk[:, None, :], ss[:, None], tk[:, :, None], ts[:, :, None], xp=np
    )
    ds = min(bucket(int(src.run.max(initial=1))), m) if tb.any() else 1
    dt = min(bucket(int(dst.run.max(initial=1))), n) if sb.any() else 1
    d, e = np.arange(ds), np.arange(dt)
    fits = (d >= 1) & (np.arange(m)[:, None] >= d)  # [M, Ds]: the run starts in the problem
    src_keep = (tc >= 0)[:, :, None, None] & fits & s_ok[:, None, :, None]
    fits = (e >= 1) & (np.arange(n)[:, None] >= e)
    dst_keep = (sc >= 0)[:, :, None, None] & fits & t_ok[:, None, :, None]
    return Stage(
        tuple(kinds),
        problems,
        (gs, gt, np.maximum(sc, 0), np.maximum(tc, 0), s_idx, t_idx),
        (sl & tl, sb & tb, sl & tb, sb & tl),
        leaf_leaf.astype(np.float32),
        src_keep,
        dst_keep,
        int(problems.tlen.max()),
    )


def problem_inputs(stage: Stage, tables: Tables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Builds the padded inputs of a batch of problems from what is known so far.

    Args:
      stage: the batch (:func:`make_stage`).
      tables: the scores of the deeper pairs and runs.

    Returns:
      ``(scores [P, N, M], src_runs [P, N, M, Ds], dst_runs [P, M, N, Dt])``
      (float32): element scores (leaf against leaf by shape, block against block, leaf
      against block and block against leaf from the tables); per target element ``r``
      that is a block, ``A(S[j - d .. j], T_r)`` for ``d >= 1``; per source element
      ``j`` that is a block, ``A(S_j, T[i - e .. i])`` for ``e >= 1`` (:data:`NEG`
      elsewhere).

    >>> bn = LayerSpec("bn", (4,))
    >>> s = encode_side([bn], {}, 4)
    >>> stage = make_stage(s, s, Problems.of([(0, 0, 0, 1, 0, 1)]), ["block"])
    >>> problem_inputs(stage, empty_tables(s, s))[0].tolist()
    [[[1.0]]]
    """
    gs, gt, sc, tc, s_idx, t_idx = stage.gather
    block_block = tables.blocks[sc[:, None, :], tc[:, :, None]]
    leaf_block = tables.src_runs[gs[:, None, None], tc[:, :, None], s_idx[:, None, :], 0]
    block_leaf = tables.dst_runs[sc[:, None, :], gt[:, None, None], t_idx[:, :, None], 0]
    scores = np.select(stage.select, [stage.leaf_leaf, block_block, leaf_block, block_leaf], 0.0)
    scores = np.maximum(scores, 0.0, dtype=np.float32)
    src_runs = np.full(stage.src_keep.shape, NEG, np.float32)
    if stage.src_keep.shape[3] > 1:
        d = np.arange(stage.src_keep.shape[3])
        runs = tables.src_runs[
            gs[:, None, None, None], tc[:, :, None, None], s_idx[:, None, :, None], d
        ]
        src_runs = np.where(stage.src_keep, runs, NEG).astype(np.float32)
    dst_runs = np.full(stage.dst_keep.shape, NEG, np.float32)
    if stage.dst_keep.shape[3] > 1:
        e = np.arange(stage.dst_keep.shape[3])
        runs = tables.dst_runs[
            sc[:, :, None, None], gt[:, None, None, None], t_idx[:, None, :, None], e
        ]
        dst_runs = np.where(stage.dst_keep, runs, NEG).astype(np.float32)
    return scores, src_runs, dst_runs


def empty_tables(src: Side, dst: Side) -> Tables:
    """Returns the :class:`Tables` of two trees before anything is solved.

    Args:
      src, dst: the encoded trees.

    Returns:
      Zero block scores and :data:`NEG` run scores, sized for the two trees.

    >>> bn = LayerSpec("bn", (4,))
    >>> empty_tables(encode_side([bn], {}, 4), encode_side([bn, bn], {}, 4)).dst_runs.shape
    (1, 1, 2, 2)
    """
    ls, lt = src.kind.shape[1], dst.kind.shape[1]
    ds, dt = bucket(int(src.run.max(initial=1))), bucket(int(dst.run.max(initial=1)))
    return Tables(
        np.zeros((src.count, dst.count), np.float32),
        np.full((src.count, dst.count, ls, ds), NEG, np.float32),
        np.full((src.count, dst.count, lt, dt), NEG, np.float32),
    )


def _best(xp: ModuleType, values, starts):
    """The maximum over axis 1 and, among the values near it, the largest start (the
    shortest run)."""
    best = values.max(axis=1)
    near = values >= (best - tolerance(best, xp))[:, None, :]
    return best, xp.where(near, starts, 0).max(axis=1)


def _row_step(xp: ModuleType, cummax, table, i, prefix, src_runs, dst_runs, w, choices):
    """Row ``i`` (1-based) of every problem of the batch from the rows above it.

    Returns ``(table, choices)`` with row ``i`` written (``choices`` None without
    choices). ``table`` is ``[P, N + 1, M + 1]``; ``prefix`` ``[P, N + 1, M]``.
    """
    n, m = table.shape[1] - 1, table.shape[2] - 1
    ds, dt = src_runs.shape[3], dst_runs.shape[3]
    k = xp.arange(1, n + 1)[None, :, None]  # run starts, 1-based
    run = (prefix[:, i][:, None, :] - prefix[:, :-1]) * w[i - 1][None, :, None]
    run = xp.where(k <= i, run + table[:, :-1, :-1], NEG)
    # A source block into the target leaves k = i - e .. i: dp[k - 1, j - 1] + x2.
    e = xp.arange(dt)
    k_leaves = (i - e)[None, :, None]
    before = table[:, xp.maximum(i - 1 - e, 0), :-1]  # [P, Dt, M]
    into_leaves = xp.swapaxes(dst_runs[:, :, i - 1, :], 1, 2) + before
    into_leaves = xp.where((e >= 1)[None, :, None] & (k_leaves >= 1), into_leaves, NEG)
    # Source leaves j0 = j - d .. j into target block i: dp[i - 1, j0 - 1] + x1.
    d = xp.arange(ds)
    j = xp.arange(1, m + 1)
    j0 = j[None, :] - d[:, None]  # [Ds, M]
    before = table[:, i - 1][:, xp.maximum(j0 - 1, 0)]  # [P, Ds, M]
    into_block = xp.swapaxes(src_runs[:, i - 1], 1, 2) + before
    into_block = xp.where(((d >= 1)[:, None] & (j0 >= 1))[None], into_block, NEG)
    best_run, run_k = _best(xp, run, k)
    best_leaves, leaves_k = _best(xp, into_leaves, k_leaves)
    best_block, block_j0 = _best(xp, into_block, j0[None])
    up = table[:, i - 1, 1:]
    row = cummax(xp.maximum(xp.maximum(up, best_run), xp.maximum(best_leaves, best_block)))
    row = xp.concatenate([table[:, i, :1], row], axis=1)
    table = _set_row(xp, table, i, row)
    if choices is None:
        return table, None
    left = row[:, :-1]
    up_wins = larger(up, left, xp)
    cur = xp.where(up_wins, up, left)
    code = xp.where(up_wins, MOVE_UP, MOVE_LEFT)
    for best, move in (
        (best_run, run_k),
        (best_leaves, leaves_k + CROSS_TARGET_RUN),
        (best_block, -(block_j0 + CROSS_SOURCE_RUN)),
    ):
        wins = larger(best, cur, xp)
        cur = xp.where(wins, best, cur)
        code = xp.where(wins, move, code)
    return table, _set_row(xp, choices, i - 1, code.astype(np.int32))


def _set_row(xp: ModuleType, array, i, row):
    """``array[:, i] = row``: in place for NumPy (our own buffer), functional for JAX."""
    if xp is np:
        array[:, i] = row
        return array
    return array.at[:, i].set(row)


@functools.partial(jax.jit, static_argnames=("with_choices",))
def _solve_rows_jit(scores, src_runs, dst_runs, rows, *, with_choices):
    p, n, m = scores.shape
    prefix = prefix_sums(jnp, scores)
    w, _ = run_weights(jnp, n, scores.dtype)
    cummax = functools.partial(lax.cummax, axis=1)

    def body(i, carry):
        table, choices = carry
        return _row_step(jnp, cummax, table, i, prefix, src_runs, dst_runs, w, choices)

    init = (
        jnp.zeros((p, n + 1, m + 1), jnp.float32),
        jnp.zeros((p, n, m), jnp.int32) if with_choices else None,
    )
    return lax.fori_loop(1, rows + 1, body, init)


def _solve_rows_numpy(scores, src_runs, dst_runs, rows, *, with_choices):
    p, n, m = scores.shape
    prefix = prefix_sums(np, scores)
    w, _ = run_weights(np, n, np.float32)
    cummax = functools.partial(np.maximum.accumulate, axis=1)
    table = np.zeros((p, n + 1, m + 1), np.float32)
    choices = np.zeros((p, n, m), np.int32) if with_choices else None
    for i in range(1, rows + 1):
        table, choices = _row_step(np, cummax, table, i, prefix, src_runs, dst_runs, w, choices)
    return table, choices


def solve_rows(
    scores: np.ndarray,
    src_runs: np.ndarray,
    dst_runs: np.ndarray,
    *,
    rows: int | None = None,
    with_choices: bool,
    policy: KernelPolicy | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Solves a batch of problems row by row (the loop runs over the target elements).

    Args:
      scores, src_runs, dst_runs: :func:`problem_inputs`.
      rows: how many target rows to run (the longest real target run); None for all.
      with_choices: whether to return the choice tables (for recovering pairs).
      policy: how the kernel runs (:func:`~dpiat_jax.alignment.kernel_policy`); None
        uses the one in force. Under ``"auto"`` a small batch runs in NumPy until its
        shapes are met again, then compiles in the background, as the ``dp`` kernel.

    Returns:
      ``(table [P, N + 1, M + 1], choices [P, N, M] or None)`` as NumPy arrays: the
      dynamic-programme table of every problem (``table[p, i, j]`` aligns the first
      ``j`` source elements with the first ``i`` target elements; rows beyond ``rows``
      are 0) and, per cell, :data:`~dpiat_jax.alignment.MOVE_LEFT`,
      :data:`~dpiat_jax.alignment.MOVE_UP`, a run start ``k``, ``CROSS_TARGET_RUN + k``
      or ``-(CROSS_SOURCE_RUN + j0)``.

    >>> table, _ = solve_rows(np.ones((1, 2, 1), np.float32), np.full((1, 2, 1, 1), NEG),
    ...                       np.full((1, 1, 2, 1), NEG), with_choices=False)
    >>> round(float(table[0, 2, 1]), 4)  # one source element seeds two targets
    1.4142
    """
    p, n, m = scores.shape
    rows = n if rows is None else int(rows)
    policy = current_policy() if policy is None else policy
    work = p * rows * (n * m + m * (src_runs.shape[3] + dst_runs.shape[3]))
    # The batch is padded to a power of two (copies of its first problem), so that
    # architectures of similar size share compiled code.
    pad = np.concatenate([np.arange(p), np.zeros(bucket(p) - p, np.int64)])
    args = (scores[pad], src_runs[pad], dst_runs[pad])
    signature = ("cross", *(a.shape for a in args), with_choices)

    def kernel():
        return _solve_rows_jit(*args, np.int32(rows), with_choices=with_choices)

    if use_compiled(signature, work, policy, kernel):
        table, choices = kernel()
        table, choices = np.asarray(table)[:p], None if choices is None else np.asarray(choices)[:p]
        return table, choices
    return _solve_rows_numpy(scores, src_runs, dst_runs, rows, with_choices=with_choices)


def _run_problems(side: Side, other: Side, depth: int, source: bool) -> Problems:
    """The leaf-run problems of one stage: every leaf run of every block of ``side``
    shallower than ``depth`` against every block of ``other`` at ``depth`` (``side``
    is the source when ``source``)."""
    blocks = np.flatnonzero((side.depth < depth) & (side.run.max(axis=1) > 0))
    targets = np.flatnonzero(other.depth == depth)
    rows = []
    for b in blocks:
        for start in np.flatnonzero(side.run[b] > 0):
            count = int(side.run[b, start])
            for t in targets:
                t_len = int(other.length[t])
                rows.append(
                    (b, t, start, count, 0, t_len) if source else (t, b, 0, t_len, start, count)
                )
    return Problems.of(rows)


@dataclasses.dataclass(frozen=True, eq=False)
class Encoding:
    """Two trees laid out for the forward pass (what the ``cross`` matcher caches).

    Attributes:
      src, dst: the encoded trees.
      stages: the batches in the order they are solved (see :func:`encode`).
    """

    src: Side
    dst: Side
    stages: tuple[Stage, ...]


def _block_problems(src: Side, dst: Side, depth: int) -> Problems:
    """Every source block against every target block of one depth."""
    s_blocks, t_blocks = np.flatnonzero(src.depth == depth), np.flatnonzero(dst.depth == depth)
    gs, gt = np.repeat(s_blocks, len(t_blocks)), np.tile(t_blocks, len(s_blocks))
    zero = np.zeros_like(gs)
    return Problems(gs, gt, zero, src.length[gs], zero, dst.length[gt])


def encode(src_tree: SpecTree, dst_tree: SpecTree) -> Encoding:
    """Encodes two validated spec trees and lays out every stage of the forward pass.

    One stage per depth ``L``, deepest first, one batch each: the source leaf runs
    (of blocks shallower than ``L``) against the target blocks of depth ``L``, the
    target leaf runs against the source blocks of depth ``L``, and the block pairs of
    depth ``L``. Each needs only deeper stages: a run against a block needs the runs
    against its nested blocks, a block pair its nested pairs and runs.

    Args:
      src_tree, dst_tree: the source and target spec trees.

    Returns:
      The :class:`Encoding`; it depends on the trees' structure only.

    >>> bn = LayerSpec("bn", (4,))
    >>> [stage.kinds for stage in encode([bn, bn], [[bn, bn]]).stages]
    [('src_run', 'src_run'), ('block',)]
    """
    kinds: dict[str, int] = {}
    ranks = [len(x.shape) for tree in (src_tree, dst_tree) for _, x in iter_leaves(tree)]
    rank = bucket(max(ranks, default=1), 4)
    src, dst = encode_side(src_tree, kinds, rank), encode_side(dst_tree, kinds, rank)
    common = min(int(src.depth.max()), int(dst.depth.max()))
    stages = []
    for depth in reversed(range(max(int(src.depth.max()), int(dst.depth.max())) + 1)):
        parts = [
            ("src_run", _run_problems(src, dst, depth, source=True)),
            ("dst_run", _run_problems(dst, src, depth, source=False)),
            ("block", _block_problems(src, dst, depth) if depth <= common else Problems.of([])),
        ]
        parts = [(kind, p) for kind, p in parts if len(p)]
        if parts:
            problems = Problems(
                *(np.concatenate(cols) for cols in zip(*(dataclasses.astuple(p) for _, p in parts)))
            )
            names = [kind for kind, p in parts for _ in range(len(p))]
            stages.append(make_stage(src, dst, problems, names))
    return Encoding(src, dst, tuple(stages))


def forward(enc: Encoding) -> Tables:
    """Solves every stage of an encoding, in order, with choices.

    Every problem keeps its choice table (:attr:`Tables.solved`): a run's table also
    answers every shorter run from the same start, so backtracking solves nothing again.

    Args:
      enc: the :func:`encode` of two trees.

    Returns:
      The :class:`Tables`; ``blocks[0, 0]`` is the score of the two roots.

    >>> bn = LayerSpec("bn", (4,))
    >>> float(forward(encode([bn, bn], [[bn, bn]])).blocks[0, 0])  # two layers, one block
    2.0
    """
    tables = empty_tables(enc.src, enc.dst)
    for stage in enc.stages:
        scores, src_runs, dst_runs = problem_inputs(stage, tables)
        table, choices = solve_rows(scores, src_runs, dst_runs, rows=stage.rows, with_choices=True)
        pr = stage.problems
        solved = Solved(pr, scores, choices)
        tables.solved.update(zip(stage.keys, ((solved, p) for p in range(len(pr)))))
        masks = stage.masks
        if masks["src_run"].any():
            _store_src_runs(tables, pr, table, masks["src_run"])
        if masks["dst_run"].any():
            _store_dst_runs(tables, pr, table, masks["dst_run"])
        p = np.flatnonzero(masks["block"])
        tables.blocks[pr.gs[p], pr.gt[p]] = table[p, pr.tlen[p], pr.slen[p]]
    return tables


def _store_src_runs(
    tables: Tables, problems: Problems, table: np.ndarray, mask: np.ndarray
) -> None:
    """``A(s[a .. a + c], t)`` from the last target row of each source-run problem."""
    within = np.arange(table.shape[2] - 1)[None, :] < problems.slen[:, None]
    p, c = np.nonzero(within & mask[:, None])
    values = table[p, problems.tlen[p], c + 1]
    tables.src_runs[problems.gs[p], problems.gt[p], problems.soff[p] + c, c] = values


def _store_dst_runs(
    tables: Tables, problems: Problems, table: np.ndarray, mask: np.ndarray
) -> None:
    """``A(s, t[k .. k + c])`` from the last source column of each target-run problem."""
    within = np.arange(table.shape[1] - 1)[None, :] < problems.tlen[:, None]
    p, c = np.nonzero(within & mask[:, None])
    values = table[p, c + 1, problems.slen[p]]
    tables.dst_runs[problems.gs[p], problems.gt[p], problems.toff[p] + c, c] = values
