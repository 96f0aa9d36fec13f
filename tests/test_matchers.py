"""The matchers (dp, flat, bipartite, nested-bipartite, random) and their dispatch.

Hand-checked cases at the spec level, the compiled flat kernel against a plain-Python
oracle of design.md's flat recurrence, bipartite against brute force, the random
control's determinism, and every matcher by name through ``dpiat_jax.transfer``.
"""

from __future__ import annotations

import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from strategies import random_tree, trees

import dpiat_jax
from dpiat_jax import alignment
from dpiat_jax.matchers import MATCHERS, align, dp, get_matcher
from dpiat_jax.scores import layer_score
from dpiat_jax.similarity import tree_similarity as matcher_similarity
from dpiat_jax.spec import LayerSpec, get_at, iter_leaves

TOL = 1e-5
PH = LayerSpec("none", ())


def conv(a: int, b: int, k: int = 3) -> LayerSpec:
    return LayerSpec("conv2d", (k, k, a, b))


def bn(c: int) -> LayerSpec:
    return LayerSpec("bn", (c,))


def dense(a: int, b: int) -> LayerSpec:
    return LayerSpec("dense", (a, b))


# ----------------------------------------------------------------------------------
# A plain-Python oracle of the flat matcher, written literally from design.md.


def _larger(a: float, b: float) -> bool:
    return a - b > TOL * max(1.0, abs(b))


def flat_oracle(src_tree: list, dst_tree: list) -> tuple[float, list]:
    """Returns ``(dp[n][m], pairs sorted by target path)`` of the flat recurrence."""
    src_items, dst_items = list(iter_leaves(src_tree)), list(iter_leaves(dst_tree))
    src = [leaf for _, leaf in src_items]
    dst = [leaf for _, leaf in dst_items]
    n, m = len(dst), len(src)
    if n == 0 or m == 0:
        return 0.0, []
    dp = [[0.0] * (m + 1) for _ in range(n + 1)]
    move = [[None] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            s = layer_score(src[j - 1], dst[i - 1])
            best, choice = dp[i - 1][j], "up"
            if _larger(dp[i][j - 1], best):
                best, choice = dp[i][j - 1], "left"
            for k in range(0, m + 1):
                d = k - j
                pen = -(d + 1) / 2 if d >= 0 else 0.0
                cand = dp[i - 1][k] + s + pen
                if _larger(cand, best):
                    best, choice = cand, k
            dp[i][j], move[i][j] = best, choice
    pairs = []
    i, j = n, m
    while i > 0 and j > 0:
        c = move[i][j]
        if c == "left":
            j -= 1
        elif c == "up":
            i -= 1
        else:
            changed = abs(dp[i][j] - dp[i - 1][c]) > TOL * max(1.0, abs(dp[i - 1][c]))
            if changed and layer_score(src[j - 1], dst[i - 1]) > 0:
                pairs.append((src_items[j - 1][0], dst_items[i - 1][0]))
            i, j = i - 1, c
    return dp[n][m], sorted(pairs, key=lambda p: (p[1], p[0]))


def _assert_flat_matches_oracle(src, dst):
    score, pairs = flat_oracle(src, dst)
    result = align(src, dst, "flat")
    assert result.score == pytest.approx(score, rel=1e-5, abs=1e-5)
    assert result.pairs == pairs


# ----------------------------------------------------------------------------------
# flat.


@settings(max_examples=100)
@given(trees(max_depth=2, max_len=6), trees(max_depth=2, max_len=6))
def test_flat_matches_oracle_on_random_trees(src, dst):
    _assert_flat_matches_oracle(src, dst)


@pytest.mark.parametrize("seed", range(3))
def test_flat_matches_oracle_on_larger_trees(seed):
    rng = np.random.default_rng(seed)
    src = random_tree(rng, int(rng.integers(30, 70)))
    dst = random_tree(rng, int(rng.integers(30, 70)))
    _assert_flat_matches_oracle(src, dst)


def test_flat_hand_checked_identity():
    # Targets conv, bn against sources conv, bn.
    # i=1 (conv): j=1: k=0 gives 0 + 1 + pen(-1) = 1 > up 0 -> dp=1 (pair).
    #             j=2: s(bn, conv)=0; dp[1,1]=1 is larger than up 0 -> left, dp=1.
    # i=2 (bn):   j=1: s=0; up dp[1,1]=1 beats every k (k=1: 1 - 1/2) -> up, dp=1.
    #             j=2: s=1; k=1 gives dp[1,1] + 1 + pen(-1) = 2 -> dp=2 (pair).
    src = [conv(3, 16), bn(16)]
    result = align(src, [conv(3, 16), bn(16)], "flat")
    assert result.score == pytest.approx(2.0)
    assert result.pairs == [((0,), (0,)), ((1,), (1,))]


def test_flat_hand_checked_reuse_costs_half():
    # One source conv for two target convs: dp[1,1] = 1 (k=0); dp[2,1] = max(up 1,
    # k=0: 0 + 1 = 1 (not larger), k=1: dp[1,1] + 1 + pen(0) = 1.5) = 1.5, reusing it.
    result = align([conv(16, 16)], [conv(16, 16), conv(16, 16)], "flat")
    assert result.score == pytest.approx(1.5)
    assert result.pairs == [((0,), (0,)), ((0,), (1,))]


def test_flat_hand_checked_moving_back_does_not_pay():
    # Sources conv, bn; targets bn, conv. dp[1,2] = 1 (bn from k=0); for the target conv,
    # j=1 gives 1 (k=0), and going back from pointer 2 costs pen(1) = -1: 1 + 1 - 1 = 1,
    # not larger; at j=2 up (dp[1,2] = 1) is kept. Only the bn pair survives.
    result = align([conv(16, 16), bn(16)], [bn(16), conv(16, 16)], "flat")
    assert result.score == pytest.approx(1.0)
    assert result.pairs == [((1,), (0,))]


def test_flat_uses_leaves_of_nested_trees_and_indexes_into_them():
    # Leaves in order: src [conv(3,8), bn8, PH, conv(8,8)]; dst [conv(3,8), PH, bn8, conv(8,8)].
    # Everything matches once in order (forward moves are free): score 3.
    src = [[conv(3, 8), bn(8)], PH, [[conv(8, 8)]]]
    dst = [conv(3, 8), [PH, bn(8), conv(8, 8)]]
    result = align(src, dst, "flat")
    assert result.score == pytest.approx(3.0)
    assert result.pairs == [((0, 0), (0,)), ((0, 1), (1, 1)), ((2, 0, 0), (1, 2))]
    for s, d in result.pairs:
        assert get_at(src, s).kind == get_at(dst, d).kind


def test_flat_identity_pairs_every_layer_once():
    # Identical lists: every forward step (k = j - 1, pen(-1) = 0) adds 1 per layer.
    tree = random_tree(np.random.default_rng(4), 150)
    result = align(tree, tree, "flat")
    layers = [p for p, leaf in iter_leaves(tree) if not leaf.is_placeholder]
    assert result.pairs == [(p, p) for p in layers]
    assert result.score == pytest.approx(len(layers))


def test_flat_placeholders_and_empty():
    assert align([PH, PH], [PH, PH], "flat").pairs == []
    assert align([PH, PH], [PH, PH], "flat").score == 0.0
    assert align([], [conv(3, 3)], "flat") == dpiat_jax.Alignment(0.0, [])
    assert align([conv(3, 3)], [[]], "flat").pairs == []


# ----------------------------------------------------------------------------------
# bipartite and nested bipartite.

BLOCK = [conv(16, 16), bn(16), conv(16, 16), bn(16)]
SRC = [conv(3, 16), bn(16), BLOCK, dense(16, 10)]
DST = [conv(3, 16), bn(16), BLOCK, BLOCK, PH, dense(16, 10)]


def test_bipartite_hand_checked():
    # m=4 sources, n=6 targets; weight (1 - (i/6 - j/4)^2) * s. Best edges per source:
    # stem conv (j=0 -> i=0): 1; bn (j=1 -> i=1): 1 - (1/6 - 1/4)^2 = 1 - 1/144;
    # block (j=2, dp score 4): i=3 gives (1 - (1/2 - 1/2)^2) * 4 = 4 > i=2 (4 * 35/36);
    # dense (j=3 -> i=5): 1 - (5/6 - 3/4)^2 = 1 - 1/144. The matching takes all of them,
    # so the score is 1; the block pair is matched inside by dp (identity).
    result = align(SRC, DST, "bipartite")
    assert result.score == pytest.approx(1.0)
    inner = [((2, r), (3, r)) for r in range(4)]
    assert result.pairs == [((0,), (0,)), ((1,), (1,)), *inner, ((3,), (5,))]
    assert matcher_similarity(SRC, DST, "bipartite") == pytest.approx(1.0)
    assert dpiat_jax.similarity(SRC, DST, matcher="bipartite") == pytest.approx(1.0)


def test_bipartite_score_is_normalised_by_best_edges():
    # Sources conv(16,16), conv(16,32); one target conv(16,16) (n=1, m=2).
    # Weights: j=0: (1 - 0) * 1 = 1; j=1: (1 - (0 - 1/2)^2) * 0.5 = 0.375.
    # Matched: j=0 (1); best edges: 1 + 0.375 -> score 1 / 1.375.
    result = align([conv(16, 16), conv(16, 32)], [conv(16, 16)], "bipartite")
    assert result.score == pytest.approx(1 / 1.375)
    assert result.pairs == [((0,), (0,))]


def test_bipartite_and_nested_differ_inside_blocks():
    # Inside a block, dp is monotone (it can keep only one of two crossed layers), the
    # nested bipartite matching keeps both: weights (1 - (1/2)^2) * 1 = 0.75 each, best
    # edges 0.75 + 0.75, score 1.
    src, dst = [[conv(16, 16), bn(16)]], [[bn(16), conv(16, 16)]]
    flat_pairs = align(src, dst, "bipartite").pairs
    assert len(flat_pairs) == 1
    assert flat_pairs == dp(src, dst).pairs
    nested = align(src, dst, "nested-bipartite")
    assert nested.score == pytest.approx(1.0)
    assert nested.pairs == [((0, 1), (0, 0)), ((0, 0), (0, 1))]


def test_nested_bipartite_hand_checked():
    # Top level as in test_bipartite_hand_checked (block pair score = nested score 1
    # of the identical blocks, so block j=2 goes to i=3 with weight 1 vs 35/36 at i=2).
    result = align(SRC, DST, "nested-bipartite")
    assert result.score == pytest.approx(1.0)
    inner = [((2, r), (3, r)) for r in range(4)]
    assert result.pairs == [((0,), (0,)), ((1,), (1,)), *inner, ((3,), (5,))]


def _brute_force(weights: np.ndarray) -> float:
    """The maximum total weight over all one-to-one partial matchings."""
    n, m = weights.shape
    best = 0.0
    for k in range(min(n, m) + 1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                best = max(best, float(sum(weights[r, c] for r, c in zip(rows, cols))))
    return best


def _random_elements(rng: np.random.Generator, count: int, blocks: list) -> list:
    out = []
    for _ in range(count):
        u = rng.random()
        if u < 0.3:
            out.append(blocks[int(rng.integers(len(blocks)))])
        elif u < 0.4:
            out.append(PH)
        elif u < 0.7:
            out.append(conv(int(rng.choice([8, 16])), int(rng.choice([8, 16, 32]))))
        else:
            out.append(bn(int(rng.choice([8, 16, 24]))))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_bipartite_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    blocks = [
        [conv(8, 16), bn(16)],
        [conv(16, 16), bn(16), conv(16, 16)],
        [bn(8), [conv(8, 8), bn(8)]],
    ]
    src = _random_elements(rng, int(rng.integers(1, 6)), blocks)
    dst = _random_elements(rng, int(rng.integers(1, 6)), blocks)
    n, m = len(dst), len(src)
    s = np.zeros((n, m))
    for i, t in enumerate(dst):
        for j, x in enumerate(src):
            if isinstance(t, LayerSpec) and isinstance(x, LayerSpec):
                s[i, j] = layer_score(x, t)
            elif not isinstance(t, LayerSpec) and not isinstance(x, LayerSpec):
                s[i, j] = dp(x, t).score
    pos = 1 - (np.arange(n)[:, None] / n - np.arange(m)[None, :] / m) ** 2
    w = pos * s
    best_edges = w.max(axis=0).sum()
    expected = _brute_force(w) / best_edges if best_edges > 0 else 0.0
    result = align(src, dst, "bipartite")
    assert result.score == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # The pairs: every matched top-level element pair of positive weight, blocks
    # expanded by their dp alignment; they reproduce the optimal weight.
    tops = sorted({(sp[0], dp_[0]) for sp, dp_ in result.pairs})
    assert len({j for j, _ in tops}) == len(tops) == len({i for _, i in tops})
    assert sum(w[i, j] for j, i in tops) == pytest.approx(_brute_force(w), rel=1e-5)
    for j, i in tops:
        if isinstance(src[j], LayerSpec):
            continue
        inner = [(a[1:], b[1:]) for a, b in result.pairs if a[0] == j and b[0] == i]
        assert inner == dp(src[j], dst[i]).pairs
    for sp, dp_ in result.pairs:
        assert layer_score(get_at(src, sp), get_at(dst, dp_)) > 0


# ----------------------------------------------------------------------------------
# random.


def test_random_is_deterministic_and_respects_kinds():
    rng = np.random.default_rng(5)
    src, dst = random_tree(rng, 80), random_tree(rng, 60)
    a = align(src, dst, "random", rng=7)
    assert a == align(src, dst, "random", rng=7)
    key = jax.random.key(3)
    b = align(src, dst, "random", rng=key)
    assert b == align(src, dst, "random", rng=jax.random.key(3))
    assert align(src, dst, "random", rng=jax.random.PRNGKey(3)).pairs  # raw keys work too
    assert a.pairs != b.pairs  # different seeds, different matchings (for trees this size)
    assert align(src, dst, "random") == align(src, dst, "random", rng=0)
    for result in (a, b):
        srcs = [s for s, _ in result.pairs]
        dsts = [d for _, d in result.pairs]
        assert len(set(srcs)) == len(srcs) and len(set(dsts)) == len(dsts)  # one-to-one
        assert dsts == sorted(dsts)
        for s, d in result.pairs:
            x, t = get_at(src, s), get_at(dst, d)
            assert x.kind == t.kind and not x.is_placeholder and not t.is_placeholder
        # min(#source, #target) pairs per kind; score = sum of the pairs' layer scores.
        kinds = {leaf.kind for _, leaf in iter_leaves(src) if not leaf.is_placeholder}
        for kind in kinds:
            ns = sum(1 for _, x in iter_leaves(src) if x.kind == kind)
            nd = sum(1 for _, x in iter_leaves(dst) if x.kind == kind)
            got = sum(1 for s, _ in result.pairs if get_at(src, s).kind == kind)
            assert got == min(ns, nd)
        expected = sum(layer_score(get_at(src, s), get_at(dst, d)) for s, d in result.pairs)
        assert result.score == pytest.approx(expected)


def test_random_hand_checked():
    # One conv and one bn on each side, a placeholder each: whatever the seed, the only
    # same-kind pairs are conv-conv and bn-bn; score 0.5 (conv(8,16) vs conv(16,16)) + 1.
    src = [conv(8, 16), PH, bn(16)]
    dst = [bn(16), conv(16, 16), PH]
    for seed in range(3):
        result = align(src, dst, "random", rng=seed)
        assert result.pairs == [((2,), (0,)), ((0,), (1,))]
        assert result.score == pytest.approx(1.5)


# ----------------------------------------------------------------------------------
# Dispatch and registry.


def test_dp_is_the_default_and_equals_the_dp_matcher():
    rng = np.random.default_rng(2)
    src, dst = random_tree(rng, 40), random_tree(rng, 30)
    assert dpiat_jax.align is align
    assert not hasattr(alignment, "align")  # one public function named align
    assert align(src, dst) == dp(src, dst) == align(src, dst, "dp")
    assert set(MATCHERS) == {"dp", "cross", "flat", "bipartite", "nested-bipartite", "random"}


def test_unknown_matcher_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_matcher("hungarian")
    for name in MATCHERS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="nested-bipartite"):
        align(SRC, DST, "nope")
    with pytest.raises(ValueError, match="similarity is defined"):
        matcher_similarity(SRC, DST, "flat")
    with pytest.raises(ValueError, match="bipartite"):
        dpiat_jax.similarity(SRC, DST, matcher="random")


def test_user_matcher_function():
    seen = {}

    def first_pair_only(src_tree, dst_tree, rng=None):
        seen["rng"] = rng
        full = dp(src_tree, dst_tree)
        return dpiat_jax.Alignment(full.score, full.pairs[:1])

    result = align(SRC, DST, first_pair_only, rng=5)
    assert result.pairs == [((0,), (0,))] and seen["rng"] == 5
    assert get_matcher(first_pair_only) is first_pair_only
    with pytest.raises(TypeError, match="Alignment"):
        align(SRC, DST, lambda s, d, rng=None: [])


# ----------------------------------------------------------------------------------
# Through dpiat_jax.transfer on two small linen CNNs.


class _Block(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(self.width, (3, 3))(x)))
        y = nn.BatchNorm(use_running_average=True)(nn.Conv(self.width, (3, 3))(y))
        return nn.relu(y + x) if x.shape[-1] == self.width else nn.relu(y)


class _CNN(nn.Module):
    widths: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        x = nn.BatchNorm(use_running_average=True)(nn.Conv(self.widths[0], (3, 3))(x))
        for w in self.widths:
            x = _Block(w)(x)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


X = jnp.ones((1, 8, 8, 3), jnp.float32)
SRC_NET, DST_NET = _CNN((8, 16)), _CNN((8, 12, 16))


@pytest.fixture(scope="module")
def src_variables():
    return SRC_NET.init(jax.random.key(1), X)


@pytest.mark.parametrize("matcher", list(MATCHERS))
def test_each_matcher_through_transfer(src_variables, matcher):
    rng = jax.random.key(4)
    fresh = DST_NET.init(rng, X)
    out = dpiat_jax.transfer(src_variables, SRC_NET, DST_NET, rng, sample_input=X, matcher=matcher)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, fresh)
    changed = [
        not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(fresh))
    ]
    assert any(changed)
    report = dpiat_jax.match(src_variables, SRC_NET, DST_NET, rng, sample_input=X, matcher=matcher)
    assert report.matcher == matcher and report.tensor_rule == "clip"
    assert report.pairs
    if matcher in ("dp", "cross", "bipartite"):
        assert 0.0 < report.similarity <= 1.0 + 1e-6
    else:
        assert np.isnan(report.similarity)


def test_user_matcher_and_unknown_name_through_transfer(src_variables):
    def stems_only(src_tree, dst_tree, rng=None):
        return dpiat_jax.Alignment(1.0, [((0,), (0,))])

    report = dpiat_jax.match(src_variables, SRC_NET, DST_NET, sample_input=X, matcher=stems_only)
    assert report.matcher == "stems_only" and len(report.pairs) == 1
    with pytest.raises(ValueError, match="nested-bipartite"):
        dpiat_jax.transfer(
            src_variables, SRC_NET, DST_NET, jax.random.key(0), sample_input=X, matcher="x"
        )


@pytest.mark.parametrize("name", sorted(MATCHERS))
def test_every_matcher_checks_its_own_arguments(name):
    # The dispatcher leaves the check of a built-in matcher's trees to the matcher (one
    # walk per tree): called directly or by name, a bad leaf is reported with its path.
    bad = [conv(3, 3), [bn(3), {"kind": "bn"}]]
    for call in (MATCHERS[name], lambda s, d, n=name: align(s, d, n)):
        with pytest.raises(TypeError, match=r"src_tree.*\(1, 1\)"):
            call(bad, [conv(3, 3)])
        with pytest.raises(TypeError, match=r"dst_tree.*\(1, 1\)"):
            call([conv(3, 3)], bad)


def test_matchers_package_has_one_module_per_matcher():
    import importlib

    import dpiat_jax.matchers as package

    homes = {
        "dp": "dp",
        "flat": "flat",
        "bipartite": "bipartite",
        "nested_bipartite": "bipartite",
        "random_matching": "random",
    }
    for name, module in homes.items():
        home = importlib.import_module(f"dpiat_jax.matchers.{module}")
        assert getattr(package, name) is getattr(home, name) and name in package.__all__
