"""Alignment kernel: the dynamic programme of design.md over spec trees, batched.

The kernel is a ``jax.jit``-compiled loop over the source elements (columns); each
step computes the best run ending at every target row at once (an ``n x n`` masked
computation) and a cumulative maximum down the column. When the targets are fewer, the
loop runs over them instead (rows; the same candidates and tie rule, transposed), and
either loop stops at the longest real block, not at the padding. Every block pair of
one nesting depth (all source blocks against all target blocks, and, when ranking, all
candidate sources at once) is padded to a common size and solved by one ``vmap``-ed
call; sizes are bucketed to powers of two so that similar architectures reuse compiled
code. Identical blocks are solved once.

This module holds what every dynamic programme of the library shares (the tie rule,
the move codes, the size buckets), the encoding of spec trees as padded tables (cached
by structure), the batched :func:`solve` and :func:`alignment_scores`. The ``dp``
matcher (:mod:`dpiat_jax.matchers.dp`) recovers the matched pairs from a
:class:`Solution`.

How the kernel runs is chosen per call by :func:`kernel_policy`; there is no
process-wide switch. Under the default ``"auto"`` policy a small problem met for the
first time runs the same recurrence in NumPy (compiling would cost more than solving),
and a shape signature met again is compiled in a background thread (NumPy answers
meanwhile), so repeated use gets the compiled kernel without being asked for it and
no call waits for a compile. JAX's persistent compilation cache is the user's choice:
:func:`enable_compilation_cache` turns it on.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpy.typing import ArrayLike

from dpiat_jax.scores import shape_score_matrix
from dpiat_jax.spec import LayerSpec, SpecTree, structure_key
from dpiat_jax.types import IndexPath

__all__ = [
    "Alignment",
    "Block",
    "COMPILE_AT_SIGHTING",
    "DepthInputs",
    "ENCODING_CACHE_SIZE",
    "Encoding",
    "EncodingCache",
    "FAST_PATH_WORK",
    "KERNEL_POLICIES",
    "KernelPolicy",
    "MOVE_LEFT",
    "MOVE_UP",
    "PLACEHOLDER_CODE",
    "Solution",
    "TIE_TOLERANCE",
    "alignment_scores",
    "block_tables",
    "bucket",
    "canonicalise",
    "current_policy",
    "default_cache_dir",
    "enable_compilation_cache",
    "encode",
    "index_tree",
    "kernel_policy",
    "wait_for_compiles",
    "larger",
    "prefix_sums",
    "run_weights",
    "solve",
    "tolerance",
    "use_compiled",
]

#: Relative tolerance under which two dynamic-programme values count as equal.
TIE_TOLERANCE = 1e-5

#: Move code of a choice table: source ``j`` left unused, go to ``(i, j - 1)``.
MOVE_LEFT = -1
#: Move code of a choice table: target ``i`` left unmatched, go to ``(i - 1, j)``.
MOVE_UP = -2

#: How the kernel runs: ``"auto"`` (NumPy for a small problem met the first time, the
#: compiled kernel otherwise), ``"jit"`` (always compiled), ``"numpy"`` (never).
KernelPolicy = Literal["auto", "jit", "numpy"]
#: The valid kernel policies.
KERNEL_POLICIES: tuple[str, ...] = ("auto", "jit", "numpy")

#: Largest per-depth work (pairs x targets^2 x sources) the NumPy fast path takes on.
FAST_PATH_WORK = 4_000_000
#: Under ``"auto"``, the sighting of a shape signature at which it gets compiled.
COMPILE_AT_SIGHTING = 2
#: Encodings of spec trees kept (least recently used dropped first).
ENCODING_CACHE_SIZE = 64


@dataclasses.dataclass(frozen=True)
class Alignment:
    """The result of aligning a source spec tree with a target spec tree.

    Attributes:
      score: the matcher's score; for ``dp``, ``dp[n, m]`` of the top-level alignment.
      pairs: one ``(src_index_path, dst_index_path)`` entry per matched leaf pair,
        sorted by target path; a source leaf may appear several times (one source
        element may seed a run of target elements).

    >>> Alignment(score=1.0, pairs=[((0,), (0,))])
    Alignment(score=1.0, pairs=[((0,), (0,))])
    """

    score: float
    pairs: list[tuple[IndexPath, IndexPath]]


# ----------------------------------------------------------------------------------
# What every dynamic programme shares: the tie rule and the size buckets.


def tolerance(x: ArrayLike, xp: ModuleType = np) -> ArrayLike:
    """Returns the margin within which a value counts as equal to ``x``.

    Args:
      x: a value or an array of values.
      xp: the array module, ``numpy`` (default) or ``jax.numpy``.

    Returns:
      ``TIE_TOLERANCE * max(1, |x|)``, elementwise.

    >>> float(tolerance(-2e5))
    2.0
    """
    return TIE_TOLERANCE * xp.maximum(1.0, xp.abs(x))


def larger(a: ArrayLike, b: ArrayLike, xp: ModuleType = np) -> ArrayLike:
    """The one tie comparison of the library: ``a`` larger than ``b`` beyond tolerance.

    A candidate replaces the incumbent ``b`` only when it is larger by more than
    :func:`tolerance` of ``b``, so float noise never decides between equal values.

    Args:
      a, b: values or broadcastable arrays.
      xp: the array module, ``numpy`` (default) or ``jax.numpy``.

    Returns:
      ``a - b > TIE_TOLERANCE * max(1, |b|)``, elementwise.

    >>> bool(larger(1.0 + 1e-7, 1.0)), bool(larger(1.1, 1.0))
    (False, True)
    """
    return a - b > tolerance(b, xp)


def bucket(x: int, minimum: int = 1) -> int:
    """Returns the padded size of a dimension: a power of two.

    Args:
      x: the real size.
      minimum: the smallest padded size.

    Returns:
      The next power of two at or above ``max(x, minimum, 1)``; padding to it lets
      architectures of similar size share one compiled kernel.

    >>> bucket(5), bucket(0), bucket(3, minimum=16)
    (8, 1, 16)
    """
    x = max(int(x), minimum, 1)
    return 1 << (x - 1).bit_length()


# ----------------------------------------------------------------------------------
# The kernel.


def _column_step(xp, cummax, prev, p, weight, start, with_choices: bool):
    """One column of the dynamic programme, for any leading batch dimensions.

    Args:
      xp: ``jax.numpy`` or ``numpy``; ``cummax`` the cumulative maximum on the last axis.
      prev: ``[..., N + 1]``, the previous column ``dp[:, j - 1]``.
      p: ``[..., N + 1]``, prefix sums of column ``j``'s scores over the targets.
      weight, start: ``[N, N]``: ``1 / sqrt(i - k + 1)`` where ``k <= i`` (0 elsewhere),
        and the run start ``k`` (1-based) where ``k <= i`` (0 elsewhere).

    Returns:
      ``(dp[:, j], choice)``: the new column and, per target ``i``, :data:`MOVE_LEFT`,
      :data:`MOVE_UP` or the first target ``k`` of the chosen run (None without
      choices). Every candidate that uses source ``j`` depends only on ``prev``, so the
      runs are one masked ``N x N`` computation and the column is a cumulative maximum.
    """
    run = (p[..., 1:, None] - p[..., None, :-1]) * weight + prev[..., None, :-1]
    run = xp.where(start > 0, run, -xp.inf)
    best_run = run.max(axis=-1)
    left = prev[..., 1:]
    zero = xp.zeros(prev.shape[:-1] + (1,), prev.dtype)
    col = xp.concatenate([zero, cummax(xp.maximum(left, best_run))], axis=-1)
    if not with_choices:
        return col, None
    near = run >= (best_run - tolerance(best_run, xp))[..., None]
    shortest = xp.where(near, start, 0).max(axis=-1)  # the shortest of the best runs
    up_value = col[..., :-1]
    up = larger(up_value, left, xp)
    base = xp.where(up, up_value, left)
    choice = xp.where(larger(best_run, base, xp), shortest, xp.where(up, MOVE_UP, MOVE_LEFT))
    return col, choice.astype(xp.int32)


def run_weights(xp: ModuleType, n: int, dtype) -> tuple[ArrayLike, ArrayLike]:
    """Returns the run credit and run starts of an ``n``-row programme.

    Shared by every dynamic programme with the published runs (``dp``, ``cross``).

    Args:
      xp: ``numpy`` or ``jax.numpy``.
      n: the number of target rows.
      dtype: the dtype of the weights.

    Returns:
      ``(weight, start)``, both ``[n, n]``: ``1 / sqrt(i - k + 1)`` and the run start
      ``k`` (1-based) at ``[i - 1, k - 1]`` where ``k <= i``, 0 elsewhere.

    >>> weight, start = run_weights(np, 2, np.float32)
    >>> [[round(float(w), 4) for w in row] for row in weight], start.tolist()
    ([[1.0, 0.0], [0.7071, 1.0]], [[1, 0], [1, 2]])
    """
    i = xp.arange(1, n + 1)[:, None]
    k = xp.arange(1, n + 1)[None, :]
    valid = k <= i
    weight = xp.where(valid, 1.0 / xp.sqrt(xp.maximum(i - k + 1, 1).astype(dtype)), 0.0)
    return weight.astype(dtype), xp.where(valid, k, 0).astype(xp.int32)


def prefix_sums(xp: ModuleType, scores: ArrayLike) -> ArrayLike:
    """Returns the prefix sums of element scores over the targets (a run's total is a
    difference of two of them).

    Args:
      xp: ``numpy`` or ``jax.numpy``.
      scores: ``[..., N, M]`` scores, targets on the second-to-last axis.

    Returns:
      ``[..., N + 1, M]``, zero in the first row.

    >>> prefix_sums(np, np.ones((2, 1))).tolist()
    [[0.0], [1.0], [2.0]]
    """
    zero = xp.zeros(scores.shape[:-2] + (1, scores.shape[-1]), scores.dtype)
    return xp.concatenate([zero, xp.cumsum(scores, axis=-2)], axis=-2)


def _dp_columns(scores: jnp.ndarray, m_real: jnp.ndarray, with_choices: bool):
    """Solves one padded problem column by column (a loop over the source elements).

    Args:
      scores: ``[N, M]`` float32, ``scores[r, j]`` = s(source j, target r).
      m_real: how many columns to run (at least the problem's real source count).
      with_choices: whether to return the choice table for backtracking.

    Returns:
      ``(dp[N, M], choices)``; ``choices[j, i]`` (0-based) as in :func:`_column_step`
      (zeros beyond ``m_real``), ``None`` without choices. Padding rows and columns
      (zero scores, at the end) do not change ``dp[n, m]``, so the last column computed
      holds the score of the unpadded problem.
    """
    n, m = scores.shape
    weight, start = run_weights(jnp, n, scores.dtype)
    cummax = functools.partial(lax.cummax, axis=0)
    prefix = prefix_sums(jnp, scores).T  # [M, N + 1]

    def body(j, carry):
        col, choices = carry
        col, choice = _column_step(jnp, cummax, col, prefix[j], weight, start, with_choices)
        if with_choices:
            choices = lax.dynamic_update_index_in_dim(choices, choice, j, 0)
        return col, choices

    init_choices = jnp.zeros((m, n), jnp.int32) if with_choices else None
    col, choices = lax.fori_loop(0, m_real, body, (jnp.zeros((n + 1,), scores.dtype), init_choices))
    return col[n], choices


def _row_step(table, i, prefix, weight, start, with_choices: bool):
    """Row ``i`` (1-based) of the dynamic programme from the rows above it.

    The transposed form of :func:`_column_step`, for problems with fewer targets than
    sources: the same candidates, the same arithmetic and the same tie rule, so the same
    values and choices; it needs every row above (a run may start at any of them), so
    the whole table is carried.

    Returns ``(table with row i, choice [M])``.
    """
    run = (prefix[i][None, :] - prefix[:-1]) * weight[i - 1][:, None] + table[:-1, :-1]
    k = start[i - 1][:, None]  # run starts k (1-based) where k <= i, 0 elsewhere
    run = jnp.where(k > 0, run, -jnp.inf)
    best_run = run.max(axis=0)
    up_value = table[i - 1, 1:]
    row = lax.cummax(jnp.maximum(up_value, best_run), axis=0)
    table = lax.dynamic_update_index_in_dim(table, jnp.concatenate([table[i, :1], row]), i, 0)
    if not with_choices:
        return table, None
    left = jnp.concatenate([table[i, :1], row[:-1]])
    near = run >= (best_run - tolerance(best_run, jnp))[None, :]
    shortest = jnp.where(near, k, 0).max(axis=0)  # the shortest of the best runs
    up = larger(up_value, left, jnp)
    base = jnp.where(up, up_value, left)
    choice = jnp.where(larger(best_run, base, jnp), shortest, jnp.where(up, MOVE_UP, MOVE_LEFT))
    return table, choice.astype(jnp.int32)


def _dp_rows(scores: jnp.ndarray, n_real: jnp.ndarray, with_choices: bool):
    """Solves one padded problem row by row (a loop over the target elements).

    As :func:`_dp_columns`, with ``n_real`` rows run instead of ``m_real`` columns: the
    loop is shorter when the targets are fewer than the sources.
    """
    n, m = scores.shape
    weight, start = run_weights(jnp, n, scores.dtype)
    prefix = prefix_sums(jnp, scores)  # [N + 1, M]

    def body(i, carry):
        table, choices = carry
        table, choice = _row_step(table, i, prefix, weight, start, with_choices)
        if with_choices:
            choices = lax.dynamic_update_index_in_dim(choices, choice, i - 1, 1)
        return table, choices

    init_choices = jnp.zeros((m, n), jnp.int32) if with_choices else None
    init = (jnp.zeros((n + 1, m + 1), scores.dtype), init_choices)
    table, choices = lax.fori_loop(1, n_real + 1, body, init)
    return table[n_real, m], choices


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


@functools.partial(jax.jit, static_argnames=("with_choices", "by_rows"))
def _depth_kernel(
    pair_src, pair_dst, tables, next_dst_count, next_scores, extent, *, with_choices, by_rows
):
    """Aligns every block pair of one nesting depth in one compiled call.

    ``extent`` = (longest target block, longest source block) of the depth: the loop
    runs that many rows (``by_rows``) or columns, not the padded count. Returns
    ``(scores [P], choices [P, M, N] or None)``.
    """
    scores = _pair_scores(jnp, pair_src, pair_dst, tables, next_dst_count, next_scores)
    if by_rows:
        solve_one = functools.partial(_dp_rows, n_real=extent[0], with_choices=with_choices)
    else:
        solve_one = functools.partial(_dp_columns, m_real=extent[1], with_choices=with_choices)
    return jax.vmap(solve_one)(scores)


def _depth_numpy(pair_src, pair_dst, tables, next_dst_count, next_scores, extent, *, with_choices):
    """The same computation as :func:`_depth_kernel` in NumPy, batched over pairs,
    column by column (``extent[1]`` columns).

    The fast path for small problems met for the first time in a process, where
    compiling would cost more than the whole alignment.
    """
    scores = _pair_scores(np, pair_src, pair_dst, tables, next_dst_count, np.asarray(next_scores))
    prefix = prefix_sums(np, scores)
    n, m = scores.shape[1], scores.shape[2]
    weight, start = run_weights(np, n, np.float32)
    cummax = functools.partial(np.maximum.accumulate, axis=-1)
    col = np.zeros((scores.shape[0], n + 1), np.float32)
    choices = np.zeros((scores.shape[0], m, n), np.int32) if with_choices else None
    for j in range(int(extent[1])):
        col, choice = _column_step(np, cummax, col, prefix[:, :, j], weight, start, with_choices)
        if with_choices:
            choices[:, j] = choice
    return col[:, n], choices


# ----------------------------------------------------------------------------------
# Kernel policy (per context, never process-wide) and when to compile.

_POLICY: contextvars.ContextVar[str] = contextvars.ContextVar("dpiat_jax_kernel", default="auto")


def _check_policy(policy: str) -> str:
    if policy not in KERNEL_POLICIES:
        raise ValueError(f"Unknown kernel policy {policy!r}; use one of {list(KERNEL_POLICIES)}.")
    return policy


@contextlib.contextmanager
def kernel_policy(policy: KernelPolicy) -> Iterator[str]:
    """Chooses how alignments inside the ``with`` block run; restores the previous policy.

    The policy lives in a :mod:`contextvars` variable, so it applies to the current
    thread (or asyncio task) only and nests: other threads keep their own.

    Args:
      policy: ``"auto"`` (the default outside any block: the compiled kernel, or NumPy
        for a small problem whose shapes this process has met fewer than
        :data:`COMPILE_AT_SIGHTING` times), ``"jit"`` (always compiled) or ``"numpy"``
        (never compiled).

    Yields:
      The policy in force inside the block.

    Raises:
      ValueError: for an unknown policy.

    >>> from dpiat_jax import LayerSpec
    >>> from dpiat_jax.matchers import align
    >>> with kernel_policy("numpy"):
    ...     align([LayerSpec("dense", (4, 8))], [LayerSpec("dense", (8, 8))]).score
    0.5
    """
    token = _POLICY.set(_check_policy(policy))
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def current_policy() -> str:
    """Returns the kernel policy in force here (see :func:`kernel_policy`).

    Returns:
      ``"auto"`` outside any :func:`kernel_policy` block, else the innermost block's.

    >>> current_policy()
    'auto'
    """
    return _POLICY.get()


class _Sightings:
    """Counts shape signatures met under ``"auto"`` and those already compiled.

    A small signature met :data:`COMPILE_AT_SIGHTING` times is compiled in a background
    thread while the NumPy path keeps answering, so no call ever waits for a compile it
    did not ask for; large ones compile at once (the kernel beats NumPy there). Shared
    by all threads (compiled code is shared too), so guarded by a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: collections.Counter = collections.Counter()
        self._compiled: set[tuple] = set()
        self._pending: set[tuple] = set()
        self._threads: list[threading.Thread] = []

    def use_compiled(
        self, signature: tuple, work: int, policy: str, warm: Callable[[], Any]
    ) -> bool:
        """Whether this depth runs compiled; records the decision.

        ``warm`` runs the kernel once on this depth's inputs: a background thread calls
        it to compile the signature.
        """
        if policy == "numpy":
            return False
        with self._lock:
            if signature in self._compiled:
                return True
            if policy == "auto" and work <= FAST_PATH_WORK:
                self._seen[signature] += 1
                if self._seen[signature] >= COMPILE_AT_SIGHTING and signature not in self._pending:
                    self._pending.add(signature)
                    # Not a daemon: interpreter exit waits for the compile to end
                    # (killing XLA mid-compile aborts the process).
                    thread = threading.Thread(
                        target=self._compile, args=(signature, warm), daemon=False
                    )
                    thread.start()
                    self._threads.append(thread)
                return False
            self._compiled.add(signature)
        return True

    def wait(self, timeout: float | None) -> bool:
        """Joins the background compiles started so far; True when none is running."""
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)
        alive = [t for t in threads if t.is_alive()]
        with self._lock:
            self._threads.extend(alive)
        return not alive

    def _compile(self, signature: tuple, warm: Callable[[], Any]) -> None:
        """Compiles a signature off the caller's thread (a failure leaves it to NumPy)."""
        try:
            jax.block_until_ready(warm())
        except Exception:  # noqa: BLE001 - the NumPy path stays in use
            return
        with self._lock:
            self._compiled.add(signature)
            self._pending.discard(signature)


_SIGHTINGS = _Sightings()


def use_compiled(signature: tuple, work: int, policy: str, warm: Callable[[], Any]) -> bool:
    """Whether a kernel call of this shape signature runs compiled under ``policy``.

    The one place that decides for every dynamic programme of the library: ``"jit"``
    always, ``"numpy"`` never, ``"auto"`` when the work is large or the signature was
    compiled already; a small signature met :data:`COMPILE_AT_SIGHTING` times starts a
    background compile (``warm()`` runs the kernel once) while NumPy keeps answering.

    Args:
      signature: the shapes (and static options) that select a compiled kernel.
      work: the size of the NumPy computation, compared with :data:`FAST_PATH_WORK`.
      policy: ``"auto"``, ``"jit"`` or ``"numpy"``.
      warm: runs the kernel once on this call's inputs.

    Returns:
      True to run the compiled kernel now, False for the NumPy path.

    >>> use_compiled(("doc", 1), 10, "numpy", lambda: None)
    False
    """
    return _SIGHTINGS.use_compiled(signature, work, _check_policy(policy), warm)


def wait_for_compiles(timeout: float | None = None) -> bool:
    """Waits for the kernel compiles that repeated alignments started in the background.

    Nothing needs it (an alignment never waits: NumPy answers until the compiled
    kernel is ready); a benchmark uses it to time the compiled path.

    Args:
      timeout: seconds to wait per compile; None waits until they end.

    Returns:
      True when no background compile is running any more.

    >>> wait_for_compiles()
    True
    """
    return _SIGHTINGS.wait(timeout)


# ----------------------------------------------------------------------------------
# Encoding spec trees as per-depth tables.


#: Code of a placeholder child in :attr:`Block.codes`.
PLACEHOLDER_CODE = -1


@dataclasses.dataclass(frozen=True)
class Block:
    """One nested list of a spec tree, as the kernel sees it.

    Attributes:
      path: its index path in the tree.
      children: per element, its :class:`LayerSpec` or, for a nested list, the index of
        that list among the blocks one depth deeper.
      codes: per element, one int for the backtracking: a leaf's kind id (``>= 0``),
        :data:`PLACEHOLDER_CODE` for a placeholder, ``-2 - index`` for a nested list.
        Two leaves score above 0 exactly when their codes are equal and ``>= 0``.

    >>> block = Block(path=(2,), children=(LayerSpec("bn", (16,)), 0), codes=(0, -2))
    >>> block.child_paths
    ((2, 0), (2, 1))
    """

    path: IndexPath
    children: tuple[LayerSpec | int, ...]
    codes: tuple[int, ...]

    @functools.cached_property
    def child_paths(self) -> tuple[IndexPath, ...]:
        """The index path of every element."""
        return tuple(self.path + (j,) for j in range(len(self.children)))


def index_tree(tree: SpecTree, kinds: dict[str, int]) -> list[list[Block]]:
    """Lists the blocks (nested lists) of a tree by nesting depth, breadth first.

    Args:
      tree: a validated spec tree (its root is a list).
      kinds: kind name -> id; new kinds are added to it.

    Returns:
      ``levels[d]``: the :class:`Block` records of depth ``d``, breadth first; a nested
      list's entry in ``children`` is its position in ``levels[d + 1]``.

    >>> levels = index_tree([LayerSpec("bn", (4,)), [LayerSpec("bn", (4,))]], {})
    >>> [len(level) for level in levels], levels[0][0].codes
    ([1, 1], (0, -2))
    """
    levels: list[list[Block]] = []
    frontier: list[tuple[IndexPath, Sequence]] = [((), tree)]  # type: ignore[list-item]
    while frontier:
        level: list[Block] = []
        deeper: list[tuple[IndexPath, Sequence]] = []
        for path, node in frontier:
            children: list[LayerSpec | int] = []
            codes: list[int] = []
            for j, child in enumerate(node):
                if isinstance(child, LayerSpec):
                    children.append(child)
                    placeholder = child.is_placeholder
                    codes.append(
                        PLACEHOLDER_CODE
                        if placeholder
                        else kinds.setdefault(child.kind, len(kinds))
                    )
                else:
                    children.append(len(deeper))
                    codes.append(-2 - len(deeper))
                    deeper.append((path + (j,), child))
            level.append(Block(path, tuple(children), tuple(codes)))
        levels.append(level)
        frontier = deeper
    return levels


def canonicalise(trees: Sequence[list[list[Block]]]) -> tuple[list[list[list[int]]], list[list]]:
    """Gives identical blocks one id, across all the given trees, depth by depth.

    Architectures repeat blocks, and identical blocks align identically, so only the
    distinct ones need solving.

    Args:
      trees: per tree, its :func:`index_tree` levels.

    Returns:
      ``(ids, distinct)``: ``ids[t][d][b]`` is the id of tree ``t``'s block ``b`` at
      depth ``d``; ``distinct[d][i]`` the content of id ``i`` (a tuple of LayerSpec
      leaves and deeper ids).

    >>> bn = LayerSpec("bn", (4,))
    >>> ids, distinct = canonicalise([index_tree([[bn], [bn]], {})])
    >>> ids, len(distinct[1])
    ([[[0], [0, 0]]], 1)
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


def block_tables(
    blocks: Sequence[tuple], kinds: dict[str, int], rank: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encodes distinct blocks of one depth as padded tables.

    Args:
      blocks: per block, its children (:class:`LayerSpec` leaves and deeper block ids).
      kinds: kind name -> id; new kinds are added to it.
      rank: the padded rank of the shapes.

    Returns:
      ``(kind [B, L], shape [B, L, R], child [B, L])``: kind id (-1: placeholder or
      block), zero-padded shape, deeper block id (-1: a leaf). ``B`` and ``L`` are the
      :func:`bucket` of the number of blocks and of the longest block.

    >>> kind, shape, child = block_tables([(LayerSpec("bn", (16,)), 0)], {}, 4)
    >>> kind.tolist(), child.tolist(), shape.shape
    ([[0, -1]], [[-1, 0]], (1, 2, 4))
    """
    rows = bucket(len(blocks))
    length = bucket(max((len(b) for b in blocks), default=1))
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


@dataclasses.dataclass(frozen=True, eq=False)
class DepthInputs:
    """The kernel's inputs for one nesting depth: every distinct block pair, padded.

    Attributes:
      pair_src, pair_dst: ``[P]`` source and target block ids of each pair (``P`` a
        power of two; the padding repeats real pairs).
      tables: ``block_tables`` of the source blocks, then of the target blocks.
      next_dst_count: distinct target blocks one depth deeper (the layout of that
        depth's scores).
      extent: ``[2]`` int32, the longest target block and the longest source block:
        the kernel runs that many rows or columns, not the padded count.
      by_rows: whether the compiled kernel runs row by row (fewer targets than
        sources) rather than column by column.
      signature: the shapes (and orientation) that decide which compiled kernel runs.
      work: pairs x targets^2 x sources, the size of the NumPy computation.

    >>> inputs = encode([[LayerSpec("bn", (8,))]], [LayerSpec("bn", (8,))]).depths[0]
    >>> inputs.signature, inputs.work
    ((1, (1, 1), (1, 1), 4, 1, False), 1)
    """

    pair_src: np.ndarray
    pair_dst: np.ndarray
    tables: tuple[np.ndarray, ...]
    next_dst_count: np.int32
    extent: np.ndarray
    by_rows: bool
    signature: tuple
    work: int

    @functools.cached_property
    def device_args(self) -> tuple:
        """The array arguments of the kernel as device arrays, transferred once."""
        return jax.device_put(self.host_args)

    @property
    def host_args(self) -> tuple:
        """The array arguments of the kernel as NumPy arrays (``next_scores`` apart)."""
        return (self.pair_src, self.pair_dst, self.tables, self.next_dst_count, self.extent)


@dataclasses.dataclass(frozen=True, eq=False)
class Encoding:
    """Sources and a target encoded for the kernel (what :func:`solve` caches).

    Attributes:
      depths: per nesting depth, the :class:`DepthInputs`.
      dst_counts: distinct target blocks per depth (one more entry than ``depths``).
      src_levels, dst_levels: per source (for ``src_levels``) and per depth, the
        blocks of the tree in breadth-first order.
      src_ids, dst_ids: the distinct-block id of each of those blocks.

    >>> encode([[LayerSpec("bn", (8,))]], [LayerSpec("bn", (8,))]).dst_counts
    (1, 0)
    """

    depths: tuple[DepthInputs, ...]
    dst_counts: tuple[int, ...]
    src_levels: tuple[list[list[Block]], ...]
    dst_levels: list[list[Block]]
    src_ids: list[list[list[int]]]
    dst_ids: list[list[int]]


def _longest(blocks: Sequence[tuple]) -> int:
    return max((len(b) for b in blocks), default=0)


def _max_rank(distinct: Sequence[Sequence[tuple]]) -> int:
    ranks = (len(c.shape) for lv in distinct for b in lv for c in b if isinstance(c, LayerSpec))
    return max(ranks, default=1)


def encode(sources: Sequence[SpecTree], target: SpecTree) -> Encoding:
    """Encodes source trees and a target tree as the kernel's per-depth inputs.

    Identical blocks get one id (across all sources; separately for the target), and
    every distinct source block of a depth is paired with every distinct target block.

    Args:
      sources: source spec trees (already validated).
      target: the target spec tree (already validated).

    Returns:
      The :class:`Encoding`; :func:`solve` caches it by the trees' structure.

    >>> enc = encode([[LayerSpec("bn", (8,)), [LayerSpec("bn", (8,))]]], [LayerSpec("bn", (4,))])
    >>> len(enc.depths), enc.depths[0].pair_src.tolist()
    (1, [0])
    """
    kinds: dict[str, int] = {}
    src_levels = tuple(index_tree(s, kinds) for s in sources)
    dst_levels = index_tree(target, kinds)
    src_ids, src_distinct = canonicalise(src_levels)
    (dst_ids,), dst_distinct = canonicalise([dst_levels])
    depth_count = min(len(dst_distinct), len(src_distinct))
    rank = bucket(_max_rank(src_distinct + dst_distinct), 4)
    dst_counts = tuple(
        len(dst_distinct[d]) if d < len(dst_distinct) else 0 for d in range(depth_count + 1)
    )
    depths: list[DepthInputs] = []
    next_length = 1
    for d in reversed(range(depth_count)):
        tables = (
            *block_tables(src_distinct[d], kinds, rank),
            *block_tables(dst_distinct[d], kinds, rank),
        )
        real_pairs = len(src_distinct[d]) * dst_counts[d]
        p = np.arange(bucket(real_pairs), dtype=np.int32) % real_pairs
        extent = np.array([_longest(dst_distinct[d]), _longest(src_distinct[d])], np.int32)
        by_rows = bool(extent[0] < extent[1])
        signature = (len(p), tables[0].shape, tables[3].shape, rank, next_length, by_rows)
        work = len(p) * tables[3].shape[1] ** 2 * tables[0].shape[1]
        pair_src, pair_dst = p // dst_counts[d], p % dst_counts[d]
        next_count = np.int32(dst_counts[d + 1])
        depths.append(
            DepthInputs(pair_src, pair_dst, tables, next_count, extent, by_rows, signature, work)
        )
        next_length = len(p)
    return Encoding(tuple(reversed(depths)), dst_counts, src_levels, dst_levels, src_ids, dst_ids)


class EncodingCache:
    """Encodings by the trees' structure (and the padding in force), least recently used
    dropped first; guarded by a lock, as solves may run in several threads.

    >>> cache = EncodingCache(1)
    >>> cache.get(("a",), lambda: 1), cache.get(("a",), lambda: 2), cache.get(("b",), lambda: 3)
    (1, 1, 3)
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict = collections.OrderedDict()

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        """The encoding under ``key``, built by ``build()`` on a miss."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        encoding = build()
        with self._lock:
            self._entries[key] = encoding
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return encoding


_ENCODINGS = EncodingCache(ENCODING_CACHE_SIZE)


# ----------------------------------------------------------------------------------
# The batched solve.


@dataclasses.dataclass(frozen=True, eq=False)
class Solution:
    """Per-depth results of a batched alignment, over distinct block pairs.

    Attributes:
      encoding: the inputs that were solved.
      scores: per depth, ``[P]`` host scores; the pair (source id ``s``, target id
        ``t``) sits at ``s * dst_counts[d] + t``.
      choices: per depth, ``[P, M, N]`` host choice tables (None when not asked for).

    >>> sol = solve([[LayerSpec("bn", (8,))]], [LayerSpec("bn", (8,))], with_choices=False)
    >>> float(sol.scores[0][sol.pair_index(0, 0, 0, 0)])
    1.0
    """

    encoding: Encoding
    scores: tuple[np.ndarray, ...]
    choices: tuple[np.ndarray | None, ...]

    def pair_index(self, s: int, d: int, src_block: int, dst_block: int) -> int:
        """The flat index of source ``s``'s block against a target block at depth ``d``.

        Args:
          s: which source.
          d: the nesting depth.
          src_block, dst_block: the blocks' positions in ``src_levels[s][d]`` and
            ``dst_levels[d]``.

        Returns:
          The index into ``scores[d]`` and ``choices[d]``.

        >>> sol = solve([[LayerSpec("bn", (8,))]], [LayerSpec("bn", (8,))], with_choices=True)
        >>> sol.pair_index(0, 0, 0, 0)
        0
        """
        enc = self.encoding
        return enc.src_ids[s][d][src_block] * enc.dst_counts[d] + enc.dst_ids[d][dst_block]


def _run_depth(inputs: DepthInputs, next_scores, *, with_choices: bool, policy: str):
    """Runs one depth on the compiled kernel or on the NumPy fast path."""
    signature = (*inputs.signature, with_choices)

    def kernel():
        *args, extent = inputs.device_args
        return _depth_kernel(
            *args, next_scores, extent, with_choices=with_choices, by_rows=inputs.by_rows
        )

    if _SIGHTINGS.use_compiled(signature, inputs.work, policy, kernel):
        return kernel()
    *args, extent = inputs.host_args
    return _depth_numpy(*args, next_scores, extent, with_choices=with_choices)


def solve(
    sources: Sequence[SpecTree],
    target: SpecTree,
    *,
    with_choices: bool,
    policy: KernelPolicy | None = None,
    argnames: Sequence[str] | None = None,
) -> Solution:
    """Runs the batched dynamic programme of all sources against one target.

    The trees are checked and keyed by structure in one walk; their encoding is cached
    under that key, so a repeated alignment goes straight to the kernel: one call per
    nesting depth, deepest first (a block pair's score is an element score one depth
    up), all block pairs of a depth at once.

    Args:
      sources: source spec trees.
      target: the target spec tree.
      with_choices: whether to keep the choice tables (for recovering pairs).
      policy: ``"auto"``, ``"jit"`` or ``"numpy"``; None uses :func:`kernel_policy`'s.
      argnames: the names of the sources, then of the target, in error messages; None
        for ``sources[0], ..., target``.

    Returns:
      A :class:`Solution` with host arrays.

    Raises:
      TypeError, ValueError: for a malformed spec tree (its argument named).

    >>> sol = solve([[LayerSpec("bn", (4,))]], [LayerSpec("bn", (8,))], with_choices=True)
    >>> float(sol.scores[0][0]), sol.choices[0][0].tolist()
    (0.5, [[1]])
    """
    policy = _check_policy(current_policy() if policy is None else policy)
    if argnames is None:
        argnames = [*(f"sources[{i}]" for i in range(len(sources))), "target"]
    key = (
        bucket,  # the padding in force is part of the key
        tuple(structure_key(s, argname=n) for s, n in zip(sources, argnames)),
        structure_key(target, argname=argnames[-1]),
    )
    enc = _ENCODINGS.get(key, lambda: encode(sources, target))
    scores: list = [None] * len(enc.depths)
    choices: list = [None] * len(enc.depths)
    next_scores = np.zeros((1,), np.float32)
    for d in reversed(range(len(enc.depths))):
        scores[d], choices[d] = _run_depth(
            enc.depths[d], next_scores, with_choices=with_choices, policy=policy
        )
        next_scores = scores[d]
    return Solution(
        enc,
        tuple(np.asarray(x) for x in scores),  # waits for the kernels; no copy on CPU
        tuple(None if x is None else np.asarray(x) for x in choices),
    )


def alignment_scores(
    sources: Sequence[SpecTree], target: SpecTree, *, policy: KernelPolicy | None = None
) -> np.ndarray:
    """Returns the top-level ``dp`` alignment score of every source against ``target``.

    All sources are solved together: one kernel call per nesting depth.

    Args:
      sources: source spec trees.
      target: the target spec tree.
      policy: how the kernel runs; None uses :func:`kernel_policy`'s.

    Returns:
      ``[len(sources)]`` float64 scores (``dp[n, m]`` of each top-level alignment).

    >>> conv = LayerSpec("conv2d", (3, 3, 8, 8))
    >>> alignment_scores([[conv], [conv, conv]], [conv, conv]).round(4).tolist()
    [1.4142, 2.0]
    """
    if not sources:
        structure_key(target, argname="target")
        return np.zeros((0,), np.float64)
    sol = solve(list(sources), target, with_choices=False, policy=policy)
    top = np.asarray(sol.scores[0], np.float64)
    return np.array([top[sol.pair_index(s, 0, 0, 0)] for s in range(len(sources))])


# ----------------------------------------------------------------------------------
# JAX's persistent compilation cache: the user's explicit choice.


def default_cache_dir() -> str:
    """Returns where :func:`enable_compilation_cache` keeps compiled code by default.

    Returns:
      ``$XDG_CACHE_HOME/dpiat_jax/jax_compilation_cache``, or
      ``~/.cache/dpiat_jax/jax_compilation_cache`` when ``XDG_CACHE_HOME`` is unset.

    >>> default_cache_dir().endswith(os.path.join("dpiat_jax", "jax_compilation_cache"))
    True
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dpiat_jax", "jax_compilation_cache")


def enable_compilation_cache(path: str | None = None) -> str:
    """Turns on JAX's persistent compilation cache, for the whole process.

    The library never calls this itself: it changes JAX's global configuration
    (``jax_compilation_cache_dir``, and minimum compile time and entry size 0), so every
    program compiled afterwards, the user's own included, is written to ``path`` and
    read back by later processes. Call it once, early, when that is what you want: a
    fresh process then loads the alignment kernel instead of compiling it.

    Args:
      path: the cache directory (created if missing; a relative path is made absolute);
        None for :func:`default_cache_dir`.

    Returns:
      The absolute path of the cache directory.

    >>> import tempfile, jax
    >>> names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
    ...          "jax_persistent_cache_min_entry_size_bytes")
    >>> saved = {name: jax.config.values[name] for name in names}
    >>> path = enable_compilation_cache(os.path.join(tempfile.mkdtemp(), "jax"))
    >>> jax.config.values["jax_compilation_cache_dir"] == path and os.path.isdir(path)
    True
    >>> for name, value in saved.items():  # the doctest leaves JAX as it found it
    ...     jax.config.update(name, value)
    """
    path = os.path.abspath(os.path.expanduser(path if path is not None else default_cache_dir()))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
