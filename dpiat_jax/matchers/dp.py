"""The ``dp`` matcher (the default): the DPIAT dynamic programme over the block trees.

The kernel (:func:`dpiat_jax.alignment.solve`) scores every distinct block pair of
every depth and records its choices; this module follows those choices back from the
top-level pair, descending into the block pairs it visits, and turns the runs into
matched leaf pairs.
"""

from __future__ import annotations

import numpy as np

from dpiat_jax.alignment import MOVE_LEFT, MOVE_UP, PLACEHOLDER_CODE, Alignment, Solution, solve
from dpiat_jax.matchers.base import Pairs, RandomSource, sort_pairs
from dpiat_jax.spec import SpecTree

__all__ = ["backtrack", "dp", "solution_pairs"]


def backtrack(choice: np.ndarray, n: int, m: int) -> list[tuple[int, int, int]]:
    """Follows the recorded moves of one block pair from ``(n, m)`` back to the start.

    Args:
      choice: ``[M, N]`` choice table of the pair (``choice[j - 1, i - 1]`` is the move
        at ``(i, j)``: :data:`~dpiat_jax.alignment.MOVE_LEFT`,
        :data:`~dpiat_jax.alignment.MOVE_UP` or the first target ``k`` of a run).
      n: the number of target elements.
      m: the number of source elements.

    Returns:
      ``(j, k, i)`` runs (1-based), last first: source ``j`` seeds targets ``k..i``.

    >>> backtrack(np.array([[1, 1], [-1, 2]]), n=2, m=2)
    [(2, 2, 2), (1, 1, 1)]
    """
    runs = []
    i, j = n, m
    rows = choice[:m, :n].tolist()
    while i > 0 and j > 0:
        c = rows[j - 1][i - 1]
        if c == MOVE_LEFT:
            j -= 1
        elif c == MOVE_UP:
            i -= 1
        else:
            runs.append((j, c, i))
            i, j = c - 1, j - 1
    return runs


def solution_pairs(sol: Solution, source: int = 0) -> Pairs:
    """Recovers the matched leaf pairs of one source against the target.

    Descends depth by depth from the top-level pair: within a visited block pair every
    run pairs its source element with each target element of the run; two leaves make a
    pair when they score above 0 (same kind, neither a placeholder: equal
    :attr:`~dpiat_jax.alignment.Block.codes`), two blocks a visited pair one depth
    deeper when their alignment scores above 0.

    Args:
      sol: a :class:`~dpiat_jax.alignment.Solution` solved with choices.
      source: which of its sources.

    Returns:
      ``(src_index_path, dst_index_path)`` pairs, sorted by target path.

    >>> from dpiat_jax import LayerSpec
    >>> from dpiat_jax.alignment import solve
    >>> bn = LayerSpec("bn", (8,))
    >>> solution_pairs(solve([[bn, [bn]]], [[bn], bn], with_choices=True))
    [((0,), (1,))]
    """
    enc = sol.encoding
    pairs: Pairs = []
    frontier = [(0, 0)]  # (source block, target block) at depth d
    d = 0
    while frontier:
        choices = sol.choices[d]
        src_level, dst_level = enc.src_levels[source][d], enc.dst_levels[d]
        deeper = []
        for bs, bt in frontier:
            sblock, tblock = src_level[bs], dst_level[bt]
            table = choices[sol.pair_index(source, d, bs, bt)]
            tcodes, tpaths = tblock.codes, tblock.child_paths
            for j, k, i in backtrack(table, len(tcodes), len(sblock.codes)):
                code = sblock.codes[j - 1]
                if code >= 0:  # a leaf: pairs with the targets of its kind in the run
                    src_path = sblock.child_paths[j - 1]
                    for r in range(k - 1, i):
                        if tcodes[r] == code:
                            pairs.append((src_path, tpaths[r]))
                elif code != PLACEHOLDER_CODE:  # a block: pairs with the run's blocks
                    deeper.extend(_deeper_pairs(sol, source, d + 1, -2 - code, tcodes[k - 1 : i]))
        frontier = deeper
        d += 1
    return sort_pairs(pairs)


def _deeper_pairs(
    sol: Solution, source: int, d: int, src_block: int, codes: tuple[int, ...]
) -> list[tuple[int, int]]:
    """The block pairs, one depth deeper, of a source block and the target blocks among
    ``codes`` that it aligns with a score above 0."""
    out = []
    scores = sol.scores[d]
    for code in codes:
        if code <= -2 and scores[sol.pair_index(source, d, src_block, -2 - code)] > 0:
            out.append((src_block, -2 - code))
    return out


def dp(src_tree: SpecTree, dst_tree: SpecTree, rng: RandomSource = None) -> Alignment:
    """Aligns two spec trees with the DPIAT dynamic programme (design.md, "Alignment").

    Args:
      src_tree: the source architecture, a nested list with ``LayerSpec`` leaves.
      dst_tree: the target architecture, likewise.
      rng: not used (the programme is deterministic).

    Returns:
      An :class:`~dpiat_jax.alignment.Alignment`: ``score`` is ``dp[n, m]`` of the top
      level (block pairs score by their own alignment, recursively), and ``pairs`` lists
      every matched leaf pair as index paths into the given trees.

    Raises:
      TypeError, ValueError: for a malformed tree, naming ``src_tree`` or ``dst_tree``.

    >>> from dpiat_jax import LayerSpec
    >>> conv = LayerSpec("conv2d", (3, 3, 8, 16))
    >>> dp([conv, LayerSpec("bn", (16,))], [conv, LayerSpec("none", ()), conv])
    Alignment(score=1.1547..., pairs=[((0,), (0,)), ((0,), (2,))])
    """
    del rng
    sol = solve([src_tree], dst_tree, with_choices=True, argnames=("src_tree", "dst_tree"))
    score = float(sol.scores[0][0]) if sol.scores else 0.0
    return Alignment(score=score, pairs=solution_pairs(sol))
