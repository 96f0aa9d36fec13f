"""The ``flat`` matcher: the published flat dynamic programme over the two leaf lists.

The leaves of each tree, in order and placeholders included, form the lists; a pointer
into the source moves forward for free and costs ``(d + 1) / 2`` to reuse or move back
by ``d``. Compiled like the default: one ``lax.scan`` over the target rows, every step
vectorised over the source columns; it shares the tie rule, move codes and size buckets
of :mod:`dpiat_jax.alignment`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpiat_jax.alignment import MOVE_LEFT, MOVE_UP, Alignment, bucket, larger, tolerance
from dpiat_jax.matchers.base import RandomSource, sort_pairs
from dpiat_jax.scores import layer_score, shape_score_matrix
from dpiat_jax.spec import LayerSpec, SpecTree, iter_leaves, validate_tree

__all__ = ["flat", "flat_tables"]


def _flat_step_tables(m_pad: int, m_real: jnp.ndarray) -> jnp.ndarray:
    """``pen[j - 1, k]`` = pen(k - j) for source ``j`` in 1..M and pointer ``k`` in 0..M;
    -inf for a padded pointer ``k > m_real`` (it can never be a previous position)."""
    j = jnp.arange(1, m_pad + 1, dtype=jnp.int32)[:, None]
    k = jnp.arange(0, m_pad + 1, dtype=jnp.int32)[None, :]
    d = (k - j).astype(jnp.float32)
    pen = jnp.where(d >= 0, -(d + 1.0) / 2.0, 0.0)
    return jnp.where(k <= m_real, pen, -jnp.inf)


def _flat_row(prev: jnp.ndarray, s_row: jnp.ndarray, pen: jnp.ndarray):
    """One target row ``i`` of the flat recurrence: ``prev`` = ``dp[i - 1, 0..M]``.

    Returns ``(dp[i, 0..M], choice[1..M])``.
    """
    cand = (prev[None, :] + s_row[:, None]) + pen  # [M, M + 1]: every k, using source j
    best_run = jnp.max(cand, axis=1)
    up = prev[1:]
    # dp[i, j] = max(dp[i-1, j], dp[i, j-1], best_run[j]): a cumulative max along j.
    row = jnp.concatenate([jnp.zeros((1,), prev.dtype), lax.cummax(jnp.maximum(up, best_run))])
    left = row[:-1]
    # Tie rule: dp[i-1, j] unless dp[i, j-1] is larger; k from 0 up, replaced only when
    # larger, i.e. the first k within tolerance of the best candidate.
    take_left = larger(left, up, jnp)
    base = jnp.where(take_left, left, up)
    near = cand >= (best_run - tolerance(best_run, jnp))[:, None]
    first_k = jnp.argmax(near, axis=1).astype(jnp.int32)
    choice = jnp.where(
        larger(best_run, base, jnp), first_k, jnp.where(take_left, MOVE_LEFT, MOVE_UP)
    )
    return row, choice.astype(jnp.int32)


@jax.jit
def _flat_kernel(src_kind, src_shape, dst_kind, dst_shape, m_real):
    """Solves the flat recurrence of design.md for one padded pair of leaf lists.

    Args:
      src_kind, src_shape: ``[M]`` kind ids (-1: placeholder or padding) and ``[M, R]``
        zero-padded shapes of the source leaves.
      dst_kind, dst_shape: ``[N]`` and ``[N, R]``, the target leaves.
      m_real: the number of real source leaves (pointers beyond it are padding).

    Returns:
      ``(rows, choices)``: ``rows[i - 1]`` is ``dp[i, 0..M]`` and ``choices[i - 1, j - 1]``
      the move recorded at ``(i, j)``: ``MOVE_LEFT`` (to ``(i, j - 1)``), ``MOVE_UP``
      (to ``(i - 1, j)``) or ``k >= 0`` (to ``(i - 1, k)``, using source ``j`` for
      target ``i``).
    """
    m_pad = src_kind.shape[0]
    scores = shape_score_matrix(
        src_kind[None, :], src_shape[None, :, :], dst_kind[:, None], dst_shape[:, None, :]
    )  # [N, M]: s(source j, target i)
    pen = _flat_step_tables(m_pad, m_real)  # [M, M + 1]

    def step(prev, s_row):
        row, choice = _flat_row(prev, s_row, pen)
        return row, (row, choice)

    _, (rows, choices) = lax.scan(step, jnp.zeros((m_pad + 1,), jnp.float32), scores)
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

    Sizes are bucketed to powers of two (at least 16), so architectures of similar
    depth reuse one compiled kernel.

    Args:
      src: the source leaves, in order.
      dst: the target leaves, in order.

    Returns:
      ``(dp, choices)`` on the host: ``dp`` is ``(n + 1) x (m + 1)`` (row 0 zero) and
      ``choices[i - 1, j - 1]`` the move recorded at ``(i, j)``.

    >>> table, choices = flat_tables([LayerSpec("bn", (8,))], [LayerSpec("bn", (8,))])
    >>> table.tolist(), choices.tolist()
    ([[0.0, 0.0], [0.0, 1.0]], [[0]])
    """
    n, m = len(dst), len(src)
    kinds: dict[str, int] = {}
    rank = bucket(max([1, *(len(x.shape) for x in [*src, *dst])]), 4)
    n_pad, m_pad = bucket(n, 16), bucket(m, 16)
    sk, ss = _encode_leaves(src, kinds, m_pad, rank)
    dk, ds = _encode_leaves(dst, kinds, n_pad, rank)
    rows, choices = jax.device_get(_flat_kernel(sk, ss, dk, ds, np.int32(m)))
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
    moves = choices.tolist()
    while i > 0 and j > 0:
        c = moves[i - 1][j - 1]
        if c == MOVE_LEFT:
            j -= 1
        elif c == MOVE_UP:
            i -= 1
        else:
            before, after = float(dp_table[i - 1, c]), float(dp_table[i, j])
            changed = abs(after - before) > tolerance(before)
            if changed and layer_score(src[j - 1], dst[i - 1]) > 0:
                out.append((j - 1, i - 1))
            i, j = i - 1, c
    return out


def flat(src_tree: SpecTree, dst_tree: SpecTree, rng: RandomSource = None) -> Alignment:
    """The flat dynamic programme of design.md over the two leaf lists.

    Every target leaf gets at most one source leaf; a source leaf may serve several
    targets (each reuse pays the pointer penalty).

    Args:
      src_tree: the source spec tree (only its leaves, in order, count).
      dst_tree: the target spec tree.
      rng: not used.

    Returns:
      An :class:`~dpiat_jax.alignment.Alignment`: ``score`` is ``dp[n, m]``, ``pairs``
      index paths into the given trees.

    Raises:
      TypeError, ValueError: for a malformed tree, naming ``src_tree`` or ``dst_tree``.

    >>> conv = LayerSpec("conv2d", (3, 3, 16, 16))
    >>> flat([conv], [conv, conv])
    Alignment(score=1.5, pairs=[((0,), (0,)), ((0,), (1,))])
    """
    del rng
    validate_tree(src_tree, argname="src_tree")
    validate_tree(dst_tree, argname="dst_tree")
    src_items, dst_items = list(iter_leaves(src_tree)), list(iter_leaves(dst_tree))
    src = [leaf for _, leaf in src_items]
    dst = [leaf for _, leaf in dst_items]
    if not src or not dst:
        return Alignment(score=0.0, pairs=[])
    table, choices = flat_tables(src, dst)
    pairs = [
        (src_items[j][0], dst_items[i][0]) for j, i in _flat_backtrack(table, choices, src, dst)
    ]
    return Alignment(score=float(table[len(dst), len(src)]), pairs=sort_pairs(pairs))
