"""The tensor rules (clip, magnitude, full, uniform) on hand-checked tensors, under jit,
and by name through ``dpiat_jax.transfer``."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax
from dpiat_jax.tensors import (
    TENSOR_RULES,
    clip,
    full,
    get_tensor_rule,
    magnitude,
    uniform,
    uniform_indices,
)


def _np(x) -> np.ndarray:
    return np.asarray(x)


# ----------------------------------------------------------------------------------
# clip (the default) for reference.


def test_clip_hand_checked():
    # 5 -> 3 takes source 1..3; 2 -> 4 puts the source at target 1..2.
    out = clip(jnp.arange(5.0), jnp.zeros(3))
    np.testing.assert_array_equal(out, [1, 2, 3])
    out = clip(jnp.array([7.0, 8.0]), jnp.full((4,), -1.0))
    np.testing.assert_array_equal(out, [-1, 7, 8, -1])


# ----------------------------------------------------------------------------------
# magnitude.


def test_magnitude_shrinks_outputs_then_inputs():
    # A dense kernel (in=3, out=4): src[i, o] = (4i + o) * [1, -5, 2, 0.5][o]
    #   [[0, -5,  4, 1.5],
    #    [4, -25, 12, 3.5],
    #    [8, -45, 20, 5.5]]
    # Output L1 norms (over inputs): 12, 75, 36, 10.5 -> keep outputs 1, 2 (in order).
    # Input L1 norms among them: |-5|+4 = 9, 25+12 = 37, 45+20 = 65 -> keep inputs 1, 2.
    src = jnp.arange(12.0).reshape(3, 4) * jnp.array([1, -5, 2, 0.5])
    out = magnitude(src, jnp.zeros((2, 2)))
    np.testing.assert_array_equal(out, [[-25, 12], [-45, 20]])


def test_magnitude_grows_at_the_start():
    # Growing: the source goes to the start of each channel dimension; the rest keeps dst.
    src = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    out = magnitude(src, jnp.full((3, 4), -1.0))
    np.testing.assert_array_equal(out, [[1, 2, -1, -1], [3, 4, -1, -1], [-1, -1, -1, -1]])


def test_magnitude_rank_one_keeps_largest_absolute_in_order():
    # Bias [0.1, -3, 2, 0.5, -1]: largest |x| three are -3, 2, -1 (indices 1, 2, 4).
    out = magnitude(jnp.array([0.1, -3.0, 2.0, 0.5, -1.0]), jnp.zeros(3))
    np.testing.assert_allclose(out, [-3, 2, -1])
    out = magnitude(jnp.array([5.0, 6.0]), jnp.zeros(4))
    np.testing.assert_array_equal(out, [5, 6, 0, 0])


def test_magnitude_conv_kernel_spatial_follows_clip():
    # A 5x5 conv kernel with 2 inputs and 3 outputs into a 3x3 kernel with 2 inputs and
    # 2 outputs: output channel o scaled by [1, 10, 5] -> keep outputs 1 and 2; inputs
    # unchanged; the spatial window is the centre 1..3 (clip).
    base = jnp.arange(5 * 5 * 2 * 3, dtype=jnp.float32).reshape(5, 5, 2, 3) + 1
    src = base * jnp.array([1.0, 10.0, 5.0])
    out = magnitude(src, jnp.zeros((3, 3, 2, 2)))
    np.testing.assert_array_equal(out, _np(src)[1:4, 1:4][:, :, :, [1, 2]])
    # Spatial growth 1x1 -> 3x3 goes to the centre; channels grow at the start.
    src = jnp.ones((1, 1, 2, 2))
    out = _np(magnitude(src, jnp.zeros((3, 3, 3, 4))))
    assert out[1, 1, :2, :2].tolist() == [[1, 1], [1, 1]] and out.sum() == 4


def test_magnitude_grows_outputs_and_shrinks_inputs():
    # in 4 -> 2, out 1 -> 2. src[i, 0] = i^2 - 5 = -5, -4, -1, 4: input L1 norms 5, 4, 1, 4
    # -> keep inputs 0 and 1 (the tie 4 = 4 goes to the lower index); the single output
    # channel goes to the start of the two, the other keeps dst (9).
    src = (jnp.arange(4.0) ** 2 - 5).reshape(4, 1)
    out = magnitude(src, jnp.full((2, 2), 9.0))
    np.testing.assert_array_equal(out, [[-5, 9], [-4, 9]])


# ----------------------------------------------------------------------------------
# full.


def test_full_hand_checked_one_dimension():
    # 3 -> 7: the centre (from (7 - 3) // 2 = 2) holds the source, every other position
    # a copy of a random source position; no fresh value survives.
    src = jnp.array([10.0, 20.0, 30.0])
    out = _np(full(src, jnp.full((7,), np.nan), jax.random.key(0)))
    assert out[2:5].tolist() == [10, 20, 30]
    assert set(out.tolist()) <= {10.0, 20.0, 30.0}
    # Shrinking and equal dimensions behave like clip.
    np.testing.assert_array_equal(full(jnp.arange(5.0), jnp.zeros(3), 0), [1, 2, 3])
    np.testing.assert_array_equal(full(jnp.arange(3.0), jnp.zeros(3), 0), [0, 1, 2])


def test_full_uses_one_index_map_per_dimension():
    # src[i, j] = 10 i + j; growing both dims, every value decodes to (row map, col map).
    src = jnp.array([[10.0 * i + j for j in range(3)] for i in range(2)])
    out = _np(full(src, jnp.zeros((5, 6)), jax.random.key(7)))
    rows, cols = out // 10, out % 10
    assert (rows == rows[:, :1]).all() and (cols == cols[:1, :]).all()
    assert rows[:, 0].tolist()[1:3] == [0, 1]  # centre rows (from (5 - 2) // 2 = 1)
    assert cols[0].tolist()[1:4] == [0, 1, 2]  # centre columns (from (6 - 3) // 2 = 1)


def test_full_is_deterministic_per_rng():
    src, dst = jnp.arange(4.0), jnp.zeros(64)
    a = full(src, dst, jax.random.key(1))
    np.testing.assert_array_equal(a, full(src, dst, jax.random.key(1)))
    assert not np.array_equal(a, full(src, dst, jax.random.key(2)))
    np.testing.assert_array_equal(full(src, dst, 3), full(src, dst, jax.random.key(3)))
    np.testing.assert_array_equal(full(src, dst), full(src, dst, 0))


# ----------------------------------------------------------------------------------
# uniform.


def test_uniform_indices_hand_checked():
    # np.round(np.linspace(0, a - 1, b)): 10 -> 4: 0, 3, 6, 9; 6 -> 4: 0, 1.67, 3.33, 5
    # -> 0, 2, 3, 5; 5 -> 1: 0.
    assert uniform_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert uniform_indices(6, 4).tolist() == [0, 2, 3, 5]
    assert uniform_indices(5, 1).tolist() == [0]


def test_uniform_hand_checked():
    np.testing.assert_array_equal(uniform(jnp.arange(10.0), jnp.zeros(4)), [0, 3, 6, 9])
    # Growing puts the source at the centre as in clip.
    np.testing.assert_array_equal(uniform(jnp.array([1.0, 2.0]), jnp.zeros(4)), [0, 1, 2, 0])
    # Per dimension: rows 0, 2 of 3 (linspace(0, 2, 2)); columns 1 grow into 3 at 1.
    src = jnp.array([[1.0], [2.0], [3.0]])
    np.testing.assert_array_equal(uniform(src, jnp.zeros((2, 3))), [[0, 1, 0], [0, 3, 0]])


# ----------------------------------------------------------------------------------
# Every rule: jit, dtypes, ranks, registry.


@pytest.mark.parametrize("name", list(TENSOR_RULES))
@pytest.mark.parametrize(
    "shapes",
    [((3, 3, 8, 16), (3, 3, 12, 8)), ((5, 1, 4, 4), (3, 3, 4, 6)), ((16,), (10,))],
)
def test_rules_are_jit_compatible_and_keep_shape_and_dtype(name, shapes):
    rule = get_tensor_rule(name)
    src_shape, dst_shape = shapes
    src = jax.random.normal(jax.random.key(0), src_shape, jnp.float32)
    dst = jax.random.normal(jax.random.key(1), dst_shape, jnp.bfloat16)
    key = jax.random.key(2)
    eager = rule(src, dst, key)
    jitted = jax.jit(rule)(src, dst, key)
    assert eager.shape == dst.shape and eager.dtype == dst.dtype
    np.testing.assert_array_equal(_np(eager.astype(jnp.float32)), _np(jitted.astype(jnp.float32)))


@pytest.mark.parametrize("name", list(TENSOR_RULES))
def test_rules_reject_rank_mismatch(name):
    with pytest.raises(ValueError, match="rank"):
        get_tensor_rule(name)(jnp.zeros((2, 2)), jnp.zeros((2,)), jax.random.key(0))


def test_unknown_rule_lists_valid_names():
    assert list(TENSOR_RULES) == ["clip", "magnitude", "full", "uniform", "net2net"]
    with pytest.raises(ValueError) as err:
        get_tensor_rule("nearest")
    for name in TENSOR_RULES:
        assert name in str(err.value)


# ----------------------------------------------------------------------------------
# Through dpiat_jax.transfer on two small linen CNNs.


class _CNN(nn.Module):
    widths: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        for w in self.widths:
            x = nn.Conv(w, (3, 3))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


X = jnp.ones((1, 8, 8, 3), jnp.float32)
SRC_NET, DST_NET = _CNN((16, 32)), _CNN((8, 16, 24))


@pytest.fixture(scope="module")
def src_variables():
    return SRC_NET.init(jax.random.key(1), X)


@pytest.mark.parametrize("name", list(TENSOR_RULES))
def test_each_rule_through_transfer(src_variables, name):
    rng = jax.random.key(3)
    fresh = DST_NET.init(rng, X)
    out = dpiat_jax.transfer(src_variables, SRC_NET, DST_NET, rng, sample_input=X, tensor_rule=name)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, fresh)
    # The stem conv (3 -> 16 source, 3 -> 8 target) is matched by dp: its kernel changed.
    assert not np.array_equal(
        out["params"]["Conv_0"]["kernel"], fresh["params"]["Conv_0"]["kernel"]
    )


def test_report_records_matcher_and_rule_names(src_variables):
    report = dpiat_jax.match(
        src_variables, SRC_NET, DST_NET, sample_input=X, matcher="flat", tensor_rule="magnitude"
    )
    assert report.tensor_rule == "magnitude" and report.matcher == "flat"
    assert "flat" in str(report) and "magnitude" in str(report)


def test_user_rule_and_unknown_name_through_transfer(src_variables):
    def zeros(src, dst, rng):
        return jnp.zeros_like(dst)

    rng = jax.random.key(3)
    out = dpiat_jax.transfer(
        src_variables, SRC_NET, DST_NET, rng, sample_input=X, tensor_rule=zeros
    )
    assert not np.any(_np(out["params"]["Conv_0"]["kernel"]))
    assert not np.any(_np(out["batch_stats"]["BatchNorm_1"]["var"]))
    report = dpiat_jax.match(
        src_variables, SRC_NET, DST_NET, rng, sample_input=X, tensor_rule=zeros
    )
    assert report.tensor_rule == "zeros"
    with pytest.raises(ValueError, match="magnitude"):
        dpiat_jax.transfer(src_variables, SRC_NET, DST_NET, rng, sample_input=X, tensor_rule="x")
