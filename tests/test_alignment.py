"""The compiled alignment against the plain-Python oracle of the same recurrence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from oracle import oracle_align, oracle_similarity
from strategies import random_tree, trees

from dpiat_jax import alignment
from dpiat_jax.alignment import align, alignment_scores, similarity_of_trees
from dpiat_jax.spec import LayerSpec


@pytest.fixture(params=["jit", "numpy"])
def kernel(request):
    """Runs a test on the compiled kernel and on the NumPy fast path."""
    alignment.set_kernel(request.param)
    yield request.param
    alignment.set_kernel("auto")


def conv(a: int, b: int) -> LayerSpec:
    return LayerSpec("conv2d", (3, 3, a, b))


def bn(c: int) -> LayerSpec:
    return LayerSpec("bn", (c,))


def _assert_same(src, dst):
    score, pairs = oracle_align(src, dst)
    result = align(src, dst)
    assert result.score == pytest.approx(score, rel=1e-5, abs=1e-6)
    assert result.pairs == pairs


@pytest.mark.parametrize("policy", ["jit", "numpy"])
@given(src=trees(), dst=trees())
def test_matches_oracle_on_random_trees(policy, src, dst):
    alignment.set_kernel(policy)
    try:
        _assert_same(src, dst)
    finally:
        alignment.set_kernel("auto")


@pytest.mark.parametrize("seed", range(6))
def test_matches_oracle_on_large_trees(kernel, seed):
    rng = np.random.default_rng(seed)
    src = random_tree(rng, int(rng.integers(100, 300)))
    dst = random_tree(rng, int(rng.integers(100, 300)))
    _assert_same(src, dst)


def test_hand_checked_run():
    block = [conv(16, 16), bn(16), conv(16, 16), bn(16)]
    src = [conv(3, 16), bn(16), block, LayerSpec("dense", (16, 10))]
    dst = [conv(3, 16), bn(16), block, block, LayerSpec("none", ()), LayerSpec("dense", (16, 10))]
    result = align(src, dst)
    # stem (1 + 1), one source block seeding two target blocks ((4 + 4) / sqrt 2), head 1.
    assert result.score == pytest.approx(3 + 8 / np.sqrt(2), rel=1e-6)
    inner = [((2, r), (t, r)) for t in (2, 3) for r in range(4)]
    assert result.pairs == [((0,), (0,)), ((1,), (1,)), *inner, ((3,), (5,))]


def test_shape_score_and_kinds():
    assert align([conv(8, 16)], [conv(16, 16)]).score == pytest.approx(0.5)
    assert align([conv(8, 16)], [bn(16)]).score == 0.0
    # A rank difference ignores the trailing dimensions.
    assert align([LayerSpec("x", (4, 2))], [LayerSpec("x", (2,))]).score == pytest.approx(0.5)


def test_placeholders_score_zero_even_against_themselves():
    ph = LayerSpec("none", ())
    result = align([ph, ph], [ph, ph])
    assert result.score == 0.0 and result.pairs == []


def test_identity_matches_every_leaf_and_similarity_one(kernel):
    rng = np.random.default_rng(3)
    tree = random_tree(rng, 120)
    result = align(tree, tree)
    assert all(s == d for s, d in result.pairs)
    from dpiat_jax.spec import iter_leaves

    expected = [p for p, leaf in iter_leaves(tree) if not leaf.is_placeholder]
    assert [d for _, d in result.pairs] == expected
    assert similarity_of_trees(tree, tree) == pytest.approx(1.0)


def test_batched_scores_equal_single_alignments(kernel):
    rng = np.random.default_rng(7)
    target = random_tree(rng, 60)
    sources = [random_tree(rng, int(n)) for n in rng.integers(10, 120, size=5)]
    batched = alignment_scores(sources, target)
    single = [align(s, target).score for s in sources]
    np.testing.assert_allclose(batched, single, rtol=1e-5)


def test_similarity_against_oracle():
    rng = np.random.default_rng(11)
    a, b = random_tree(rng, 80), random_tree(rng, 50)
    assert similarity_of_trees(a, b) == pytest.approx(oracle_similarity(a, b), rel=1e-5)
    assert 0.0 <= similarity_of_trees(a, b) <= 1.0 + 1e-6


def test_empty_trees():
    assert align([], [conv(3, 3)]).score == 0.0
    assert align([conv(3, 3)], []).pairs == []


def test_unknown_kernel_policy():
    with pytest.raises(ValueError, match="kernel policy"):
        alignment.set_kernel("gpu-please")
