"""The ``cross`` matcher: the DPIAT programme plus matches across nesting levels.

:mod:`dpiat_jax.cross_alignment` scores every block pair and every leaf run against a
block and keeps each problem's choice table; this module follows the choices back from
the two roots, each visited candidate turning into leaf pairs or into the problems
below it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dpiat_jax.alignment import (
    ENCODING_CACHE_SIZE,
    MOVE_LEFT,
    MOVE_UP,
    Alignment,
    EncodingCache,
    bucket,
)
from dpiat_jax.cross_alignment import (
    CROSS_SOURCE_RUN,
    CROSS_TARGET_RUN,
    Side,
    Tables,
    encode,
    forward,
)
from dpiat_jax.matchers.base import Pairs, RandomSource, sort_pairs
from dpiat_jax.spec import SpecTree, structure_key
from dpiat_jax.types import IndexPath

__all__ = ["cross"]

_ENCODINGS = EncodingCache(ENCODING_CACHE_SIZE)


@dataclasses.dataclass(frozen=True)
class _Visit:
    """A problem on the path: its key in :attr:`~dpiat_jax.cross_alignment.Tables.solved`
    (kind, source block, target block, first element), the corner to backtrack from
    (``n`` target and ``m`` source elements) and the tree paths of its two blocks."""

    key: tuple[str, int, int, int]
    n: int
    m: int
    src_path: IndexPath
    dst_path: IndexPath


def _backtrack(choice: np.ndarray, n: int, m: int) -> list[tuple[str, int, int, int]]:
    """``(move, a, b, i)`` per candidate on the path from ``(n, m)``, last first.

    ``move`` is ``"run"`` (source ``a`` seeds targets ``b..i``), ``"leaves"`` (source
    block ``a`` into target leaves ``b..i``) or ``"block"`` (source leaves ``a..b``
    into target block ``i``); all 1-based.

    >>> _backtrack(np.array([[1, -1], [-2, 2]]), 2, 2)
    [('run', 2, 2, 2), ('run', 1, 1, 1)]
    """
    out = []
    i, j = n, m
    while i > 0 and j > 0:
        c = int(choice[i - 1, j - 1])
        if c == MOVE_LEFT:
            j -= 1
        elif c == MOVE_UP:
            i -= 1
        elif c >= CROSS_TARGET_RUN:
            k = c - CROSS_TARGET_RUN
            out.append(("leaves", j, k, i))
            i, j = k - 1, j - 1
        elif c <= -CROSS_SOURCE_RUN:
            j0 = -c - CROSS_SOURCE_RUN
            out.append(("block", j0, j, i))
            i, j = i - 1, j0 - 1
        else:
            out.append(("run", j, c, i))
            i, j = c - 1, j - 1
    return out


class _Walk:
    """Follows the solved problems from the roots down and collects the leaf pairs."""

    def __init__(self, src: Side, dst: Side, tables: Tables) -> None:
        self.src, self.dst, self.tables = src, dst, tables
        self.pairs: Pairs = []

    def block(self, sc: int, tc: int, sp: IndexPath, dp: IndexPath) -> _Visit:
        n, m = int(self.dst.length[tc]), int(self.src.length[sc])
        return _Visit(("block", sc, tc, 0), n, m, sp, dp)

    def run(self, visit: _Visit) -> list[_Visit]:
        """Adds one visited problem's leaf pairs; returns the problems below it."""
        solved, p = self.tables.solved[visit.key]
        kind, gs, gt, first = visit.key
        soff = first if kind == "src_run" else 0
        toff = first if kind == "dst_run" else 0
        src, dst, scores = self.src, self.dst, solved.scores[p]
        out = []
        for move, a, b, i in _backtrack(solved.choices[p], visit.n, visit.m):
            if move == "leaves":  # source block a into target leaves b..i
                sc = int(src.child[gs, soff + a - 1])
                key = ("dst_run", sc, gt, toff + b - 1)
                sp = visit.src_path + (soff + a - 1,)
                out.append(_Visit(key, i - b + 1, int(src.length[sc]), sp, visit.dst_path))
            elif move == "block":  # source leaves a..b into target block i
                tc = int(dst.child[gt, toff + i - 1])
                key = ("src_run", gs, tc, soff + a - 1)
                dp = visit.dst_path + (toff + i - 1,)
                out.append(_Visit(key, int(dst.length[tc]), b - a + 1, visit.src_path, dp))
            else:
                out.extend(self._seeded(visit, a, b, i, scores, soff, toff))
        return out

    def _seeded(self, visit: _Visit, a: int, b: int, i: int, scores, soff: int, toff: int):
        """Source element ``a`` seeds targets ``b..i``: a pair per leaf pair that scores,
        a problem per pair that involves a block."""
        _, gs, gt, _ = visit.key
        src, dst = self.src, self.dst
        e = soff + a - 1
        sp, sc, s_leaf = visit.src_path + (e,), int(src.child[gs, e]), bool(src.leaf[gs, e])
        out = []
        for r in range(b, i + 1):
            if scores[r - 1, a - 1] <= 0:
                continue
            f = toff + r - 1
            dp, tc, t_leaf = visit.dst_path + (f,), int(dst.child[gt, f]), bool(dst.leaf[gt, f])
            if s_leaf and t_leaf:
                self.pairs.append((sp, dp))
            elif s_leaf:  # the leaf against the block's elements
                key = ("src_run", gs, tc, e)
                out.append(_Visit(key, int(dst.length[tc]), 1, visit.src_path, dp))
            elif t_leaf:  # the block's elements against the leaf
                key = ("dst_run", sc, gt, f)
                out.append(_Visit(key, 1, int(src.length[sc]), sp, visit.dst_path))
            else:
                out.append(self.block(sc, tc, sp, dp))
        return out


def _pairs(src: Side, dst: Side, tables: Tables) -> Pairs:
    """The matched leaf pairs, following the stored choices from the two roots."""
    walk = _Walk(src, dst, tables)
    frontier = [walk.block(0, 0, (), ())]
    while frontier:
        frontier = [v for visit in frontier for v in walk.run(visit)]
    return sort_pairs(walk.pairs)


def cross(src_tree: SpecTree, dst_tree: SpecTree, rng: RandomSource = None) -> Alignment:
    """Aligns two spec trees with the cross-level programme
    (:mod:`dpiat_jax.cross_alignment`).

    Where both trees have the same structure it is the ``dp`` matcher; in addition a
    layer (or a run of layers) may seed a block's contents and a block's contents a run
    of layers, so a flat network can seed a hierarchical one (VGG -> ResNet) and the
    other way round.

    Args:
      src_tree: the source architecture, a nested list with ``LayerSpec`` leaves.
      dst_tree: the target architecture, likewise.
      rng: not used (the programme is deterministic).

    Returns:
      An :class:`~dpiat_jax.alignment.Alignment`: the score of the two roots (at least
      the ``dp`` score, at most the target's number of layers) and every matched leaf
      pair as index paths into the given trees.

    Raises:
      TypeError, ValueError: for a malformed tree, naming ``src_tree`` or ``dst_tree``.

    >>> from dpiat_jax import LayerSpec
    >>> conv, bn = LayerSpec("conv2d", (3, 3, 8, 8)), LayerSpec("bn", (8,))
    >>> cross([conv, bn, conv, bn], [[conv, bn], [conv, bn]])
    Alignment(score=4.0, pairs=[((0,), (0, 0)), ((1,), (0, 1)), ((2,), (1, 0)), ((3,), (1, 1))])
    """
    del rng
    key = (
        bucket,  # the padding in force is part of the key
        structure_key(src_tree, argname="src_tree"),
        structure_key(dst_tree, argname="dst_tree"),
    )
    if not src_tree or not dst_tree:
        return Alignment(score=0.0, pairs=[])
    enc = _ENCODINGS.get(key, lambda: encode(src_tree, dst_tree))
    tables = forward(enc)
    return Alignment(score=float(tables.blocks[0, 0]), pairs=_pairs(enc.src, enc.dst, tables))
