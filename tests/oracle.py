"""A plain-Python reference implementation of the design.md alignment recurrence.

Written as literally as possible (sequential loops, the tie rule applied comparison by
comparison) so that the compiled kernel can be checked against it, and so that the
benchmarks have the published implementation's algorithmic cost to compare with.
"""

from __future__ import annotations

import math

import numpy as np

from dpiat_jax.scores import layer_score
from dpiat_jax.spec import LayerSpec

TOL = 1e-5
LEFT, UP = -1, -2


def larger(a: float, b: float) -> bool:
    """``a`` larger than ``b`` beyond the relative tie tolerance."""
    return a - b > TOL * max(1.0, abs(b))


class Oracle:
    """Aligns two nested lists of LayerSpec; memoises block-pair alignments by identity."""

    def __init__(self) -> None:
        self._memo: dict[tuple[int, int], tuple[float, list, list]] = {}

    def score(self, s, t) -> float:
        if isinstance(s, LayerSpec) and isinstance(t, LayerSpec):
            return layer_score(s, t)
        if isinstance(s, LayerSpec) or isinstance(t, LayerSpec):
            return 0.0
        return self.solve(s, t)[0]

    def solve(self, src: list, dst: list) -> tuple[float, list, list]:
        """Returns ``(dp[n][m], choice table, score table)`` for two element lists."""
        key = (id(src), id(dst))
        if key in self._memo:
            return self._memo[key]
        n, m = len(dst), len(src)
        s = [[self.score(src[j], dst[r]) for r in range(n)] for j in range(m)]
        dp = [[0.0] * (m + 1) for _ in range(n + 1)]
        ch = [[0] * (m + 1) for _ in range(n + 1)]
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                best, choice = dp[i][j - 1], LEFT
                if larger(dp[i - 1][j], best):
                    best, choice = dp[i - 1][j], UP
                total = 0.0
                for k in range(i, 0, -1):
                    total += s[j - 1][k - 1]
                    cand = total / math.sqrt(i - k + 1) + dp[k - 1][j - 1]
                    if larger(cand, best):
                        best, choice = cand, k
                dp[i][j], ch[i][j] = best, choice
        result = (dp[n][m], ch, s)
        self._memo[key] = result
        return result

    def pairs(self, src: list, dst: list, sp=(), dp_=()) -> list:
        """Matched leaf pairs as ``(src_index_path, dst_index_path)``."""
        _, ch, s = self.solve(src, dst)
        out = []
        i, j = len(dst), len(src)
        while i > 0 and j > 0:
            c = ch[i][j]
            if c == LEFT:
                j -= 1
            elif c == UP:
                i -= 1
            else:
                for r in range(c, i + 1):
                    if s[j - 1][r - 1] > 0:
                        a, b = src[j - 1], dst[r - 1]
                        if isinstance(a, LayerSpec):
                            out.append((sp + (j - 1,), dp_ + (r - 1,)))
                        else:
                            out.extend(self.pairs(a, b, sp + (j - 1,), dp_ + (r - 1,)))
                i, j = c - 1, j - 1
        return out


def oracle_align(src: list, dst: list) -> tuple[float, list]:
    """Returns ``(score, pairs sorted by target path)``."""
    o = Oracle()
    score = o.solve(src, dst)[0]
    return score, sorted(o.pairs(src, dst), key=lambda p: p[1])


def oracle_similarity(src: list, dst: list) -> float:
    """``score(src, dst) / score(dst, dst)``, 0 when the target has nothing to match."""
    self_score = Oracle().solve(dst, dst)[0]
    return 0.0 if self_score <= 0 else Oracle().solve(src, dst)[0] / self_score


def reference_clip(src, dst):
    """The clip rule of design.md written out on its own, as a NumPy reference."""
    src_idx, dst_idx = [], []
    for a, b in zip(src.shape, dst.shape, strict=True):
        lo = abs(b - a) // 2
        if a < b:
            src_idx.append(slice(0, a))
            dst_idx.append(slice(lo, lo + a))
        else:
            src_idx.append(slice(lo, lo + b))
            dst_idx.append(slice(0, b))
    out = np.array(dst, copy=True)
    out[tuple(dst_idx)] = np.asarray(src)[tuple(src_idx)].astype(out.dtype)
    return out


def _is_block(x) -> bool:
    return not isinstance(x, LayerSpec)


def _all_leaves(xs) -> bool:
    return all(isinstance(x, LayerSpec) for x in xs)


class CrossOracle:
    """The cross-level recurrence of the ``cross`` matcher, written out literally.

    The published recurrence, plus: a leaf against a block scores as the list ``[leaf]``
    aligned with the block's elements (and a block against a leaf likewise); a run of
    >= 2 source leaves may be aligned with one target block's elements, and one source
    block's elements with a run of >= 2 target leaves. Candidates are tried in this
    order, each replacing the best only when larger: source unused, target unmatched,
    runs (shortest first), source block into a target leaf run (shortest first), a
    source leaf run into a target block (shortest first).
    """

    def __init__(self) -> None:
        self._memo: dict = {}

    def score(self, s, t) -> float:
        if not _is_block(s) and not _is_block(t):
            return layer_score(s, t)
        return self.solve([s] if not _is_block(s) else s, [t] if not _is_block(t) else t)[0]

    def solve(self, src: list, dst: list):
        """Returns ``(dp[n][m], choice table, score table)``; choices are ``LEFT``, ``UP``,
        ``("R", k)``, ``("X2", k)`` or ``("X1", j0)``."""
        key = (tuple(map(id, src)), tuple(map(id, dst)))
        if key in self._memo:
            return self._memo[key]
        n, m = len(dst), len(src)
        s = [[self.score(src[j], dst[r]) for r in range(n)] for j in range(m)]
        dp = [[0.0] * (m + 1) for _ in range(n + 1)]
        ch = [[None] * (m + 1) for _ in range(n + 1)]
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                best, choice = dp[i][j - 1], LEFT
                if larger(dp[i - 1][j], best):
                    best, choice = dp[i - 1][j], UP
                total = 0.0
                for k in range(i, 0, -1):
                    total += s[j - 1][k - 1]
                    cand = total / math.sqrt(i - k + 1) + dp[k - 1][j - 1]
                    if larger(cand, best):
                        best, choice = cand, ("R", k)
                if _is_block(src[j - 1]):
                    for k in range(i - 1, 0, -1):
                        if not _all_leaves(dst[k - 1 : i]):
                            break
                        cand = dp[k - 1][j - 1] + self.solve(src[j - 1], dst[k - 1 : i])[0]
                        if larger(cand, best):
                            best, choice = cand, ("X2", k)
                if _is_block(dst[i - 1]):
                    for j0 in range(j - 1, 0, -1):
                        if not _all_leaves(src[j0 - 1 : j]):
                            break
                        cand = dp[i - 1][j0 - 1] + self.solve(src[j0 - 1 : j], dst[i - 1])[0]
                        if larger(cand, best):
                            best, choice = cand, ("X1", j0)
                dp[i][j], ch[i][j] = best, choice
        result = (dp[n][m], ch, s)
        self._memo[key] = result
        return result

    def pairs(self, src: list, dst: list, sp: list, tp: list) -> list:
        """Matched leaf pairs; ``sp``/``tp`` are the index paths of the elements."""
        _, ch, s = self.solve(src, dst)
        out = []
        i, j = len(dst), len(src)
        while i > 0 and j > 0:
            c = ch[i][j]
            if c == LEFT:
                j -= 1
            elif c == UP:
                i -= 1
            elif c[0] == "R":
                for r in range(c[1], i + 1):
                    if s[j - 1][r - 1] > 0:
                        out.extend(
                            self._element_pairs(src[j - 1], dst[r - 1], sp[j - 1], tp[r - 1])
                        )
                i, j = c[1] - 1, j - 1
            elif c[0] == "X2":
                k = c[1]
                a = src[j - 1]
                out.extend(self.pairs(a, dst[k - 1 : i], _children(a, sp[j - 1]), tp[k - 1 : i]))
                i, j = k - 1, j - 1
            else:
                j0 = c[1]
                b = dst[i - 1]
                out.extend(self.pairs(src[j0 - 1 : j], b, sp[j0 - 1 : j], _children(b, tp[i - 1])))
                i, j = i - 1, j0 - 1
        return out

    def _element_pairs(self, a, b, pa, pb) -> list:
        if not _is_block(a) and not _is_block(b):
            return [(pa, pb)]
        src, sp = ([a], [pa]) if not _is_block(a) else (a, _children(a, pa))
        dst, tp = ([b], [pb]) if not _is_block(b) else (b, _children(b, pb))
        return self.pairs(src, dst, sp, tp)


def _children(block: list, path: tuple) -> list:
    return [path + (c,) for c in range(len(block))]


def cross_oracle_align(src: list, dst: list) -> tuple[float, list]:
    """Returns the cross-level recurrence's ``(score, pairs sorted by target path)``."""
    o = CrossOracle()
    score = o.solve(src, dst)[0]
    pairs = o.pairs(src, dst, _children(src, ()), _children(dst, ()))
    return score, sorted(pairs, key=lambda p: (p[1], p[0]))
