"""The clip tensor rule (design.md, "Tensor transfer"): unit checks and per-kind transfers."""

from __future__ import annotations

import functools
from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from oracle import reference_clip

import dpiat_jax
from dpiat_jax.tensors import clip

# ----------------------------------------------------------------------------------
# Unit checks with exact offsets.


def test_grow_one_dimension_places_source_at_centre():
    src = jnp.arange(1.0, 4.0)  # a = 3
    dst = jnp.zeros(8)  # b = 8: start (8 - 3) // 2 = 2
    out = clip(src, dst)
    np.testing.assert_array_equal(out, [0, 0, 1, 2, 3, 0, 0, 0])


def test_grow_odd_difference_rounds_down():
    src = jnp.array([7.0, 8.0])  # a = 2
    dst = -jnp.ones(5)  # b = 5: start (5 - 2) // 2 = 1
    np.testing.assert_array_equal(clip(src, dst), [-1, 7, 8, -1, -1])


def test_shrink_one_dimension_takes_the_centre():
    src = jnp.arange(8.0)  # a = 8
    dst = jnp.zeros(3)  # b = 3: start (8 - 3) // 2 = 2
    np.testing.assert_array_equal(clip(src, dst), [2, 3, 4])
    # odd difference: a = 7, b = 2 -> start 2
    np.testing.assert_array_equal(clip(jnp.arange(7.0), jnp.zeros(2)), [2, 3])
    # a = 6, b = 5 -> start 0
    np.testing.assert_array_equal(clip(jnp.arange(6.0), jnp.zeros(5)), [0, 1, 2, 3, 4])


def test_equal_size_copies():
    src = jnp.arange(12.0).reshape(3, 4)
    out = clip(src, jnp.zeros((3, 4)))
    np.testing.assert_array_equal(out, src)


def test_mixed_grow_and_shrink_per_dimension_by_value():
    src = np.arange(5 * 2 * 4, dtype=np.float32).reshape(5, 2, 4)
    dst = np.full((2, 6, 4), -1.0, np.float32)
    out = np.asarray(clip(jnp.asarray(src), jnp.asarray(dst)))
    # dim 0 shrinks 5 -> 2 from (5 - 2) // 2 = 1; dim 1 grows 2 -> 6 at (6 - 2) // 2 = 2.
    expected = dst.copy()
    expected[:, 2:4, :] = src[1:3, :, :]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, reference_clip(src, dst))


@pytest.mark.parametrize(
    "src_shape,dst_shape",
    [
        ((3, 3, 4, 8), (3, 3, 8, 16)),  # conv2d wider
        ((3, 3, 8, 16), (3, 3, 4, 8)),  # conv2d narrower
        ((1, 1, 4, 8), (5, 5, 4, 8)),  # kernel size grows
        ((7, 7, 4, 8), (3, 3, 4, 8)),  # kernel size shrinks
        ((3, 5), (6, 2)),  # dense: in grows, out shrinks
        ((3, 3, 3, 2, 5), (2, 4, 3, 5, 2)),  # conv3d, all directions
        ((16,), (7,)),  # bias / scale / batch statistics
        ((7,), (16,)),
        ((3, 1, 8), (5, 1, 4)),  # depthwise conv1d
    ],
)
def test_clip_matches_reference(src_shape, dst_shape):
    rng = np.random.default_rng(0)
    src = rng.normal(size=src_shape).astype(np.float32)
    dst = rng.normal(size=dst_shape).astype(np.float32)
    out = clip(jnp.asarray(src), jnp.asarray(dst))
    assert out.shape == dst_shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), reference_clip(src, dst))


def test_clip_casts_to_target_dtype():
    src = jnp.linspace(-2.0, 2.0, 6, dtype=jnp.float32).reshape(2, 3)
    dst = jnp.zeros((4, 3), jnp.bfloat16)
    out = clip(src, dst)
    assert out.dtype == jnp.bfloat16 and out.shape == (4, 3)
    np.testing.assert_array_equal(out[1:3], src.astype(jnp.bfloat16))
    np.testing.assert_array_equal(out[0], jnp.zeros(3, jnp.bfloat16))
    # Also when the shapes are equal (nothing of the target is kept).
    same = clip(src, jnp.zeros((2, 3), jnp.bfloat16))
    assert same.dtype == jnp.bfloat16
    np.testing.assert_array_equal(same, src.astype(jnp.bfloat16))


def test_clip_is_jit_compatible():
    rng = np.random.default_rng(1)
    for src_shape, dst_shape in [((5, 2, 4), (2, 6, 4)), ((3, 3), (3, 3)), ((4,), (9,))]:
        src = jnp.asarray(rng.normal(size=src_shape), jnp.float32)
        dst = jnp.asarray(rng.normal(size=dst_shape), jnp.float32)
        eager = clip(src, dst)
        jitted = jax.jit(clip)(src, dst)
        chex.assert_trees_all_equal(eager, jitted)
        with_rng = jax.jit(clip)(src, dst, jax.random.key(0))
        chex.assert_trees_all_equal(eager, with_rng)


def test_clip_does_not_modify_its_inputs():
    src = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    dst = np.zeros((4, 5), np.float32)
    src_copy, dst_copy = src.copy(), dst.copy()
    clip(src, dst)
    np.testing.assert_array_equal(src, src_copy)
    np.testing.assert_array_equal(dst, dst_copy)


def test_clip_rejects_rank_mismatch():
    with pytest.raises(ValueError, match="rank"):
        clip(jnp.zeros((2, 3)), jnp.zeros((2, 3, 1)))


# ----------------------------------------------------------------------------------
# Per-kind transfers: a one-layer source into a one-layer target of another shape.


class One(nn.Module):
    make: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x):
        return self.make(name="layer")(x)


class Custom(nn.Module):
    out: int = 2

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.normal(), (x.shape[-1], self.out))
        b = self.param("b", nn.initializers.normal(), (self.out,))
        return x @ w + b


P = functools.partial
f32 = jnp.float32
BN = P(nn.BatchNorm, use_running_average=True)

# (id, src factory, src input shape, dst factory, dst input shape, input dtype)
KIND_CASES = [
    ("conv1d", P(nn.Conv, 4, (3,)), (1, 8, 2), P(nn.Conv, 3, (5,)), (1, 8, 5), f32),
    ("conv2d", P(nn.Conv, 4, (3, 3)), (1, 6, 6, 2), P(nn.Conv, 6, (5, 1)), (1, 6, 6, 1), f32),
    ("conv3d", P(nn.Conv, 4, (3, 1, 3)), (1, 4, 4, 4, 2), P(nn.Conv, 2, (1, 3, 2)),
     (1, 4, 4, 4, 3), f32),
    ("depthwise", P(nn.Conv, 4, (3, 3), feature_group_count=4), (1, 6, 6, 4),
     P(nn.Conv, 12, (5, 5), feature_group_count=6), (1, 6, 6, 6), f32),
    ("grouped", P(nn.Conv, 4, (3, 3), feature_group_count=2), (1, 6, 6, 4),
     P(nn.Conv, 6, (3, 3), feature_group_count=3), (1, 6, 6, 9), f32),
    ("conv_transpose", P(nn.ConvTranspose, 4, (3, 3)), (1, 4, 4, 2),
     P(nn.ConvTranspose, 2, (4, 2)), (1, 4, 4, 5), f32),
    ("dense", P(nn.Dense, 5), (1, 3), P(nn.Dense, 2), (1, 6), f32),
    ("dense_general", P(nn.DenseGeneral, (2, 3)), (1, 4), P(nn.DenseGeneral, (3, 1)), (1, 7), f32),
    ("embed", P(nn.Embed, 10, 6), (1, 4), P(nn.Embed, 7, 9), (1, 4), jnp.int32),
    ("batch_norm", BN, (1, 6), BN, (1, 9), f32),
    ("layer_norm", nn.LayerNorm, (1, 6), nn.LayerNorm, (1, 3), f32),
    ("group_norm", P(nn.GroupNorm, num_groups=2), (1, 2, 2, 6), P(nn.GroupNorm, num_groups=2),
     (1, 2, 2, 10), f32),
    ("rms_norm", nn.RMSNorm, (1, 4), nn.RMSNorm, (1, 9), f32),
    ("custom", Custom, (1, 7), P(Custom, out=5), (1, 4), f32),
]  # fmt: skip


def randomised(variables, seed: int):
    """The same tree with every leaf replaced by distinct random values (var > 0)."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(variables)
    out = {}
    for key, v in flat.items():
        values = rng.normal(size=v.shape).astype(v.dtype)
        out[key] = jnp.asarray(np.abs(values) + 0.1 if key[-1] == "var" else values)
    return traverse_util.unflatten_dict(out)


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize(
    "src_make,src_shape,dst_make,dst_shape,dtype",
    [c[1:] for c in KIND_CASES],
    ids=[c[0] for c in KIND_CASES],
)
def test_per_kind_transfer_follows_clip(src_make, src_shape, dst_make, dst_shape, dtype, direction):
    if direction == "backward":
        src_make, src_shape, dst_make, dst_shape = dst_make, dst_shape, src_make, src_shape
    src_def, dst_def = One(src_make), One(dst_make)
    xs, xd = jnp.zeros(src_shape, dtype), jnp.zeros(dst_shape, dtype)
    src_vars = randomised(jax.eval_shape(src_def.init, jax.random.key(0), xs), 1)
    rng = jax.random.key(7, impl="rbg")
    out = dpiat_jax.transfer(src_vars, src_def, dst_def, rng, sample_input=(xs, xd))
    fresh = jax.jit(dst_def.init)(rng, xd)  # the plan runs init inside one jit
    chex.assert_trees_all_equal_shapes_and_dtypes(out, fresh)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(fresh)
    # Every tensor (kernel, bias, scale, batch statistics) follows clip; an embedding
    # table's token axis is index-preserving (row i stays token i, issue 12) and its
    # feature axis follows clip.
    src_flat = traverse_util.flatten_dict(src_vars)
    fresh_flat = traverse_util.flatten_dict(fresh)
    out_flat = traverse_util.flatten_dict(out)
    assert set(src_flat) == set(fresh_flat)
    for key, value in fresh_flat.items():
        source, value = np.asarray(src_flat[key]), np.asarray(value)
        if key[-1] == "embedding":
            rows = min(len(source), len(value))
            expected = value.copy()
            expected[:rows] = reference_clip(source[:rows], value[:rows])
        else:
            expected = reference_clip(source, value)
        np.testing.assert_array_equal(np.asarray(out_flat[key]), expected, err_msg=str(key))
    report = dpiat_jax.match(src_vars, src_def, dst_def, rng, sample_input=(xs, xd))
    assert [(s, d) for s, d, _ in report.pairs] == [("layer", "layer")]
    assert report.skipped == ()


def test_float32_source_into_bfloat16_target_keeps_target_dtype():
    src_def = One(P(nn.Dense, 4))
    dst_def = One(P(nn.Dense, 6, param_dtype=jnp.bfloat16))
    x = jnp.zeros((1, 3))
    src_vars = randomised(jax.eval_shape(src_def.init, jax.random.key(0), x), 2)
    rng = jax.random.key(3, impl="rbg")
    out = dpiat_jax.transfer(src_vars, src_def, dst_def, rng, sample_input=x)
    fresh = jax.jit(dst_def.init)(rng, x)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, fresh)
    kernel = out["params"]["layer"]["kernel"]
    assert kernel.dtype == jnp.bfloat16
    # out grows 4 -> 6 from (6 - 4) // 2 = 1
    np.testing.assert_array_equal(
        kernel[:, 1:5], src_vars["params"]["layer"]["kernel"].astype(jnp.bfloat16)
    )
    np.testing.assert_array_equal(kernel[:, 0], fresh["params"]["layer"]["kernel"][:, 0])
    np.testing.assert_array_equal(kernel[:, 5], fresh["params"]["layer"]["kernel"][:, 5])
