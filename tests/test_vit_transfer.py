"""ViT to ViT transfers: other patch grids, other widths and head counts.

The positional embedding is interpolated over the patch grid (checked against a numpy
bilinear reference), the class token copied, attention projections, LayerNorms and the
residual stream follow the per-dimension rules, and ``magnitude`` keeps one channel
subset across the whole residual stream and one head subset per attention. Small ViTs
(depth 2, width 32/48); source values come from numpy, targets use ``rbg`` keys.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from oracle import reference_clip

import dpiat_jax
from dpiat_jax.api import module_blocks
from dpiat_jax.blocks import to_spec_tree
from dpiat_jax.channels import trace_channels
from dpiat_jax.matchers import align
from dpiat_jax.matching import layer_pairs
from dpiat_jax.models.vit import ViT
from dpiat_jax.tensors import (
    TENSOR_RULES,
    get_tensor_rule,
    is_positional_embedding,
    positional_grid,
    resize_positional,
)
from dpiat_jax.variables import write_tensors

SMALL = ViT(patch_size=4, dim=32, depth=2, num_heads=2, mlp_dim=64)  # 16x16: 4x4 grid
WIDE = ViT(patch_size=4, dim=48, depth=2, num_heads=3, mlp_dim=96)  # 32x32: 8x8 grid
X16 = jnp.zeros((1, 16, 16, 3), jnp.float32)
X32 = jnp.zeros((1, 32, 32, 3), jnp.float32)


def key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def random_variables(module: nn.Module, x, seed: int) -> dict:
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    flat = {
        k: jnp.asarray(rng.normal(size=v.shape).astype(np.float32))
        for k, v in traverse_util.flatten_dict(abstract).items()
    }
    return traverse_util.unflatten_dict(flat)


def interp_matrix(a: int, b: int) -> np.ndarray:
    """Bilinear resampling a -> b with half-pixel centres, the triangle kernel widened
    by a / b when shrinking (antialiasing), weights renormalised at the edges."""
    scale = a / b
    width = max(scale, 1.0)
    m = np.zeros((b, a))
    for i in range(b):
        centre = (i + 0.5) * scale - 0.5
        w = np.maximum(0.0, 1.0 - np.abs(np.arange(a) - centre) / width)
        m[i] = w / w.sum()
    return m


def reference_pos(src: np.ndarray, tokens: int) -> np.ndarray:
    """(1, 1 + g*g, D) -> (1, tokens, D): class row copied, the grid resampled."""
    src = np.asarray(src, np.float64)[0]
    g_src, g_dst = int(np.sqrt(len(src) - 1)), int(np.sqrt(tokens - 1))
    grid = src[1:].reshape(g_src, g_src, -1)
    m = interp_matrix(g_src, g_dst)
    out = np.einsum("ia,jb,abd->ijd", m, m, grid).reshape(g_dst * g_dst, -1)
    return np.concatenate([src[:1], out])[None]


@pytest.fixture(scope="module")
def small_src():
    return random_variables(SMALL, X16, seed=0)


@pytest.fixture(scope="module")
def wide_src():
    return random_variables(WIDE, X32, seed=1)


@pytest.fixture(scope="module")
def wide_fresh():
    return WIDE.init(key(3), X32)


@pytest.fixture(scope="module")
def small_fresh():
    return SMALL.init(key(4), X16)


# ----------------------------------------------------------------------------------
# Through dpiat_jax.transfer.


@pytest.mark.parametrize("rule", list(TENSOR_RULES))
def test_every_rule_small_to_wide(small_src, wide_fresh, rule):
    out = dpiat_jax.transfer(
        small_src, SMALL, WIDE, key(3), sample_input=(X16, X32), tensor_rule=rule
    )
    chex.assert_trees_all_equal_shapes_and_dtypes(out, wide_fresh)
    # Whatever the rule, the grid is interpolated and the source's D fills the target's.
    pos = np.asarray(out["params"]["pos_embedding"])
    resized = reference_pos(small_src["params"]["pos_embedding"], 65)
    start = {"clip": 8, "full": 8, "uniform": 8, "magnitude": 0, "net2net": 0}[rule]
    np.testing.assert_allclose(pos[..., start : start + 32], resized, rtol=1e-5, atol=1e-6)


def test_clip_pos_embedding_and_class_token_small_to_wide(small_src, wide_fresh):
    out = dpiat_jax.transfer(small_src, SMALL, WIDE, key(3), sample_input=(X16, X32))
    p, fresh = out["params"], wide_fresh["params"]
    expected = reference_clip(
        reference_pos(small_src["params"]["pos_embedding"], 65), fresh["pos_embedding"]
    )
    np.testing.assert_allclose(p["pos_embedding"], expected, rtol=1e-5, atol=1e-6)
    # The class-token row of the positional embedding is copied, not interpolated.
    np.testing.assert_array_equal(
        p["pos_embedding"][0, 0, 8:40], small_src["params"]["pos_embedding"][0, 0]
    )
    np.testing.assert_array_equal(
        p["cls_token"], reference_clip(small_src["params"]["cls_token"], fresh["cls_token"])
    )
    # Attention kernels (D, H, Dh): D 32 -> 48 and heads 2 -> 3 centre-placed, Dh equal.
    q = small_src["params"]["block0"]["attn"]["query"]["kernel"]
    np.testing.assert_array_equal(
        p["block0"]["attn"]["query"]["kernel"],
        reference_clip(q, fresh["block0"]["attn"]["query"]["kernel"]),
    )


def test_clip_wide_to_small_shrinks_the_grid(wide_src, small_fresh):
    out = dpiat_jax.transfer(wide_src, WIDE, SMALL, key(4), sample_input=(X32, X16))
    chex.assert_trees_all_equal_shapes_and_dtypes(out, small_fresh)
    expected = reference_clip(
        reference_pos(wide_src["params"]["pos_embedding"], 17),
        small_fresh["params"]["pos_embedding"],
    )
    np.testing.assert_allclose(out["params"]["pos_embedding"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", list(TENSOR_RULES))
def test_identity_transfer_is_exact(small_src, rule):
    out = dpiat_jax.transfer(small_src, SMALL, SMALL, key(4), sample_input=X16, tensor_rule=rule)
    jax.tree.map(np.testing.assert_array_equal, out, small_src)


# ----------------------------------------------------------------------------------
# magnitude with the target's data flow (the jaxpr channel graph).


def staged(src_def, src_vars, dst_def, dst_vars, xs, xd, rule="magnitude"):
    src_blocks = module_blocks(src_def, src_vars, sample_input=xs)
    dst_blocks = module_blocks(dst_def, dst_vars, sample_input=xd)
    alignment = align(to_spec_tree(src_blocks), to_spec_tree(dst_blocks))
    pairs = layer_pairs(alignment, src_blocks, dst_blocks)
    graph = trace_channels(dst_def, dst_vars, xd)
    out, _, _ = write_tensors(pairs, dst_vars, get_tensor_rule(rule), key(9), channels=graph)
    return out


def l1(x, axis: int) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.abs(x).sum(axis=tuple(d for d in range(x.ndim) if d != axis))


def keep(k: int, *norms: np.ndarray) -> np.ndarray:
    """The k best of the normalised sum of the producers' channel norms, in order."""
    score = norms[0] if len(norms) == 1 else sum(n / n.mean() for n in norms)
    return np.sort(np.argsort(-score, kind="stable")[:k])


def test_magnitude_wide_to_small_keeps_one_stream_and_head_subset(wide_src, small_fresh):
    out = staged(WIDE, wide_src, SMALL, small_fresh, X32, X16)["params"]
    p = jax.tree.map(np.asarray, wide_src["params"])
    blocks = [p[f"block{i}"] for i in range(2)]
    # The residual stream: written by the patch embedding, attention outputs and MLPs.
    stream = keep(
        32,
        l1(p["patch_embed"]["kernel"], 3),
        *[l1(b["attn"]["out"]["kernel"], 2) for b in blocks],
        *[l1(b["mlp_fc2"]["kernel"], 1) for b in blocks],
    )
    eq = np.testing.assert_array_equal
    eq(out["patch_embed"]["kernel"], p["patch_embed"]["kernel"][..., stream])
    eq(out["patch_embed"]["bias"], p["patch_embed"]["bias"][stream])
    eq(out["cls_token"], p["cls_token"][..., stream])
    np.testing.assert_allclose(
        out["pos_embedding"],
        reference_pos(p["pos_embedding"], 17)[..., stream],
        rtol=1e-5,
        atol=1e-6,
    )
    for ln in ("scale", "bias"):
        eq(out["final_ln"][ln], p["final_ln"][ln][stream])
    eq(out["head"]["kernel"], p["head"]["kernel"][stream])
    for i, b in enumerate(blocks):
        o = out[f"block{i}"]
        heads = keep(2, *[l1(b["attn"][n]["kernel"], 1) for n in ("query", "key", "value")])
        hidden = keep(64, l1(b["mlp_fc1"]["kernel"], 1))
        for ln in ("ln1", "ln2"):
            eq(o[ln]["scale"], b[ln]["scale"][stream])
        for n in ("query", "key", "value"):
            eq(o["attn"][n]["kernel"], b["attn"][n]["kernel"][stream][:, heads])
            eq(o["attn"][n]["bias"], b["attn"][n]["bias"][heads])
        eq(o["attn"]["out"]["kernel"], b["attn"]["out"]["kernel"][heads][..., stream])
        eq(o["attn"]["out"]["bias"], b["attn"]["out"]["bias"][stream])
        eq(o["mlp_fc1"]["kernel"], b["mlp_fc1"]["kernel"][stream][:, hidden])
        eq(o["mlp_fc1"]["bias"], b["mlp_fc1"]["bias"][hidden])
        eq(o["mlp_fc2"]["kernel"], b["mlp_fc2"]["kernel"][hidden][:, stream])
        eq(o["mlp_fc2"]["bias"], b["mlp_fc2"]["bias"][stream])


def test_magnitude_small_to_wide_places_every_channel_at_the_start(small_src, wide_fresh):
    out = staged(SMALL, small_src, WIDE, wide_fresh, X16, X32)["params"]
    p, fresh = small_src["params"], wide_fresh["params"]
    eq = np.testing.assert_array_equal
    eq(out["cls_token"][..., :32], p["cls_token"])
    eq(out["cls_token"][..., 32:], fresh["cls_token"][..., 32:])
    np.testing.assert_allclose(
        out["pos_embedding"][..., :32],
        reference_pos(p["pos_embedding"], 65),
        rtol=1e-5,
        atol=1e-6,
    )
    q = out["block1"]["attn"]["query"]["kernel"]
    eq(q[:32, :2], p["block1"]["attn"]["query"]["kernel"])
    eq(q[32:], fresh["block1"]["attn"]["query"]["kernel"][32:])
    eq(out["block1"]["ln2"]["scale"][:32], p["block1"]["ln2"]["scale"])


# ----------------------------------------------------------------------------------
# The positional-embedding resize on its own.


def test_positional_grid_and_name():
    assert positional_grid(16) == (4, False) and positional_grid(17) == (4, True)
    assert positional_grid(65) == (8, True) and positional_grid(2) == (1, True)
    assert positional_grid(18) is None and positional_grid(1) is None
    assert is_positional_embedding("pos_embedding", (1, 17, 8))
    assert is_positional_embedding("posemb/embedding", (16, 8))
    assert not is_positional_embedding("pos_embedding", (2, 17, 8))
    assert not is_positional_embedding("ConvTranspose_0/kernel", (1, 17, 8))
    assert not is_positional_embedding("cls_token", (1, 17, 8))


def test_resize_positional_cases():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(1, 17, 5)).astype(np.float32)
    out, keep_first = resize_positional(jnp.asarray(src), (1, 10, 7))  # 4x4+cls -> 3x3+cls
    assert out.shape == (1, 10, 5) and not keep_first
    np.testing.assert_allclose(out, reference_pos(src, 10), rtol=1e-5, atol=1e-6)
    # No class token on either side: the (1, T, D) layout is a grid.
    flat = src[0, 1:]
    out, _ = resize_positional(jnp.asarray(flat[None]), (1, 36, 5))
    m = interp_matrix(4, 6)
    ref = np.einsum("ia,jb,abd->ijd", m, m, flat.reshape(4, 4, 5)).reshape(36, 5)
    np.testing.assert_allclose(out[0], ref, rtol=1e-5, atol=1e-6)
    # A rank-2 (T, D) table is a 1-D sequence (issue 12): interpolated along T only,
    # even when T is a square.
    out, keep_first = resize_positional(jnp.asarray(flat), (36, 5))
    where = np.linspace(0, 15, 36)
    ref = np.stack([np.interp(where, np.arange(16), flat[:, j]) for j in range(5)], axis=1)
    assert not keep_first
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # A class token only in the source is dropped; only in the target, left to it.
    out, keep_first = resize_positional(jnp.asarray(src), (1, 36, 5))
    assert out.shape == (1, 36, 5) and not keep_first
    out, keep_first = resize_positional(jnp.asarray(src[:, 1:]), (1, 37, 5))
    assert out.shape == (1, 37, 5) and keep_first
    # Equal token counts or counts that are no grid: nothing to resize.
    assert resize_positional(jnp.asarray(src), (1, 17, 9)) is None
    assert resize_positional(jnp.asarray(src), (1, 12, 5)) is None
    # jit-compatible (static shapes), and the dtype is kept.
    jitted = jax.jit(lambda x: resize_positional(x, (1, 65, 5))[0])
    half = jnp.asarray(src, jnp.bfloat16)
    assert jitted(half).dtype == jnp.bfloat16 and jitted(half).shape == (1, 65, 5)


class Tokens(nn.Module):
    """Patches plus a learned positional embedding, with or without a class token."""

    cls: bool

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (2, 2), strides=(2, 2), name="embed")(x)
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        if self.cls:
            x = jnp.concatenate([jnp.zeros((n, 1, c)), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(1.0), (1, x.shape[1], c))
        return nn.Dense(2, name="head")(x + pos)


def test_class_token_row_only_in_the_target_keeps_its_fresh_values():
    x_src, x_dst = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 12, 12, 3))
    src = random_variables(Tokens(False), x_src, seed=2)
    fresh = Tokens(True).init(key(5), x_dst)
    out = dpiat_jax.transfer(src, Tokens(False), Tokens(True), key(5), sample_input=(x_src, x_dst))
    pos = np.asarray(out["params"]["pos_embedding"])
    np.testing.assert_array_equal(pos[0, 0], fresh["params"]["pos_embedding"][0, 0])
    m = interp_matrix(4, 6)
    grid = np.asarray(src["params"]["pos_embedding"][0]).reshape(4, 4, 8)
    ref = np.einsum("ia,jb,abd->ijd", m, m, grid).reshape(36, 8)
    np.testing.assert_allclose(pos[0, 1:], ref, rtol=1e-5, atol=1e-6)
