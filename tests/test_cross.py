"""The ``cross`` matcher: its kernel against a plain-Python oracle of the recurrence,
hand-built flat <-> hierarchical trees with known matches, and its place among the
matchers (never below ``dp``, a similarity in [0, 1], the public API)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from oracle import cross_oracle_align
from strategies import random_tree, trees

import dpiat_jax
from dpiat_jax.alignment import kernel_policy
from dpiat_jax.matchers import align, cross, dp
from dpiat_jax.similarity import tree_similarity
from dpiat_jax.spec import LayerSpec, iter_leaves

CONV = LayerSpec("conv2d", (3, 3, 16, 16))
BN = LayerSpec("bn", (16,))
HEAD = LayerSpec("dense", (16, 10))
NONE = LayerSpec("none", ())


def _assert_same(src: list, dst: list) -> None:
    score, pairs = cross_oracle_align(src, dst)
    result = cross(src, dst)
    assert result.score == pytest.approx(score, rel=1e-5, abs=1e-6)
    assert result.pairs == pairs


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(src=trees(), dst=trees())
def test_matches_oracle_on_random_trees(src, dst):
    with kernel_policy("numpy"):
        _assert_same(src, dst)


@pytest.mark.parametrize("seed", range(40))
def test_matches_oracle_on_network_like_trees(seed):
    """Stages of repeated blocks, nested 1-3 levels on either side (flat included)."""
    rng = np.random.default_rng(seed)
    src = random_tree(rng, int(rng.integers(8, 28)), depth=int(rng.integers(1, 4)))
    dst = random_tree(rng, int(rng.integers(8, 28)), depth=int(rng.integers(1, 4)))
    with kernel_policy("numpy"):
        _assert_same(src, dst)


@pytest.mark.parametrize("seed", range(3))
def test_compiled_kernel_matches_oracle(seed):
    rng = np.random.default_rng(100 + seed)
    src = random_tree(rng, 24, depth=2)
    dst = random_tree(rng, 24, depth=3)
    with kernel_policy("jit"):
        _assert_same(src, dst)


def test_flat_source_seeds_every_block_of_a_hierarchical_target():
    """VGG-like -> ResNet-like: each run of conv, bn, conv, bn fills one block; dp moves
    only the stem and the head (a layer against a block scores 0 there)."""
    vgg = [CONV, BN, CONV, BN, CONV, BN, CONV, BN, CONV, BN, HEAD]
    block = [CONV, BN, CONV, BN]
    resnet = [CONV, BN, block, block, HEAD]
    expected = [
        ((0,), (0,)),
        ((1,), (1,)),
        ((2,), (2, 0)),
        ((3,), (2, 1)),
        ((4,), (2, 2)),
        ((5,), (2, 3)),
        ((6,), (3, 0)),
        ((7,), (3, 1)),
        ((8,), (3, 2)),
        ((9,), (3, 3)),
        ((10,), (4,)),
    ]
    result = cross(vgg, resnet)
    assert result.pairs == expected
    assert result.score == pytest.approx(11.0)
    assert dp(vgg, resnet).pairs == [((0,), (0,)), ((1,), (1,)), ((10,), (4,))]


def test_hierarchical_source_seeds_a_flat_target():
    """ResNet-like -> VGG-like: each block's contents fill a run of the flat layers."""
    block = [CONV, BN, CONV, BN]
    resnet = [CONV, BN, block, block, HEAD]
    vgg = [CONV, BN, CONV, BN, CONV, BN, CONV, BN, CONV, BN, HEAD]
    result = cross(resnet, vgg)
    assert result.pairs == [
        ((0,), (0,)),
        ((1,), (1,)),
        ((2, 0), (2,)),
        ((2, 1), (3,)),
        ((2, 2), (4,)),
        ((2, 3), (5,)),
        ((3, 0), (6,)),
        ((3, 1), (7,)),
        ((3, 2), (8,)),
        ((3, 3), (9,)),
        ((4,), (10,)),
    ]
    assert result.score == pytest.approx(11.0)


def test_single_layer_against_a_block_uses_the_block_contents():
    """One conv seeds the best run of a block's elements, with the published credit."""
    result = cross([CONV], [[CONV, BN, CONV]])
    # the run of three elements: (1 + 0 + 1) / sqrt(3)
    assert result.score == pytest.approx(2 / math.sqrt(3))
    assert result.pairs == [((0,), (0, 0)), ((0,), (0, 2))]


def test_same_structure_gives_the_dp_alignment():
    block = [CONV, BN, CONV, BN]
    src = [CONV, BN, block, block, HEAD]
    dst = [CONV, BN, block, block, block, NONE, HEAD]
    assert cross(src, dst) == dp(src, dst)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(src=trees(), dst=trees())
def test_never_below_dp_and_never_above_the_target_self_score(src, dst):
    with kernel_policy("numpy"):
        score = cross(src, dst).score
        assert score >= dp(src, dst).score * (1 - 1e-5) - 1e-6
        layers = sum(not leaf.is_placeholder for _, leaf in iter_leaves(dst))
        assert score <= layers * (1 + 1e-5)
        assert cross(dst, dst).score == pytest.approx(dp(dst, dst).score, rel=1e-5, abs=1e-6)
        assert 0.0 <= tree_similarity(src, dst, "cross") <= 1.0 + 1e-6


def test_registered_and_similarity():
    vgg = [CONV, BN, CONV, BN, HEAD]
    resnet = [CONV, BN, [CONV, BN], HEAD]
    assert align(vgg, resnet, matcher="cross") == cross(vgg, resnet)
    assert tree_similarity(vgg, resnet, "cross") == pytest.approx(1.0)
    assert tree_similarity(vgg, resnet, "dp") == pytest.approx(0.6)


def test_empty_and_malformed_trees():
    assert cross([], [CONV]).pairs == []
    assert cross([CONV], []).score == 0.0
    with pytest.raises(TypeError, match="dst_tree"):
        cross([CONV], [CONV, "conv"])


def test_results_do_not_depend_on_the_kernel_policy():
    rng = np.random.default_rng(7)
    src, dst = random_tree(rng, 30, depth=1), random_tree(rng, 30, depth=2)
    with kernel_policy("numpy"):
        expected = cross(src, dst)
    for policy in ("auto", "auto", "jit"):
        with kernel_policy(policy):
            assert cross(src, dst) == expected


def test_transfer_from_vgg_into_a_cifar_resnet_moves_most_layers():
    """Through the public API: the zoo's VGG-11 seeds most of ResNet-18, where dp seeds
    only the stem and the head."""
    from dpiat_jax.models import get_model

    x = jnp.zeros((1, 32, 32, 3))
    src_def, dst_def = get_model("vgg11", num_classes=10), get_model("resnet18", num_classes=10)
    src = jax.eval_shape(lambda: src_def.init(jax.random.key(0), x))
    by_cross = dpiat_jax.match(src, src_def, dst_def, sample_input=x, matcher="cross")
    by_dp = dpiat_jax.match(src, src_def, dst_def, sample_input=x)
    assert by_dp.layers_transferred <= 3
    assert by_cross.layer_coverage > 0.6 and by_cross.param_coverage > 0.8
    assert by_cross.similarity > 4 * by_dp.similarity
