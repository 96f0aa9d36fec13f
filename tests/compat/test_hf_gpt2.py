"""Hugging Face Flax GPT-2 (``transformers`` 4.x, built from configs, random weights).

GPT-2 fuses query, key and value into one ``attn/c_attn`` kernel of shape ``(3 d, d)``
(a ``Conv1D``: output axis first) and its bias ``(3 d,)``: a width change must move each
of the three parts into its own part. Source values are marked (:func:`compat.checks.
marked`) so that where each lands is read off the target.
"""

from __future__ import annotations

import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax
from compat.checks import (
    MARK,
    assert_every_block_seeded,
    assert_every_layer_seeded_by_its_role,
    assert_finite,
    block_role,
    hf_form,
    hf_fresh,
    hf_planned,
    key,
    marked,
    part_landing,
    random_like,
    require,
)
from dpiat_jax.structure import StructureWarning

transformers = require("transformers")

BLOCK = r"^transformer/h/(\d+)/"
IDS = jnp.arange(12, dtype=jnp.int32).reshape(1, 12) % 100


@functools.cache
def gpt2(layers: int = 2, width: int = 32, init: bool = False, heads: int = 2):
    """A tiny GPT-2 language model (vocabulary 100, ``heads`` heads, 64 positions, tied
    output); with ``init`` it holds its own params, else it is built without."""
    config = transformers.GPT2Config(
        vocab_size=100, n_embd=width, n_layer=layers, n_head=heads, n_positions=64
    )
    return transformers.FlaxGPT2LMHeadModel(config, _do_init=init)


def gpt2_heads(layers: int, width: int, heads: int):
    """:func:`gpt2` without params, with ``heads`` heads."""
    return gpt2(layers, width, False, heads)


@functools.cache
def params(layers: int, width: int, heads: int = 2):
    """Trained-like params of :func:`gpt2`; every ``c_attn`` kernel and bias marked."""
    out = random_like(hf_fresh(gpt2(layers, width, False, heads)), seed=layers * 100 + width)
    for block in out["transformer"]["h"].values():
        block["attn"]["c_attn"] = jax.tree.map(marked, block["attn"]["c_attn"])
    return out


@functools.cache
def forward(model):
    """The model's jitted forward pass: params -> logits."""
    return jax.jit(lambda p: model(IDS, params=p).logits)


def runs(model, out) -> None:
    """The target runs with the transferred params, with finite output."""
    logits = forward(model)(out)
    assert logits.shape == (1, 12, 100)
    assert_finite(logits)


def planned(src_shape: tuple[int, int], dst_shape: tuple[int, int]):
    """``(plan, result)`` of a transfer from a model without params and its params."""
    return hf_planned(gpt2, params, src_shape, dst_shape)


@pytest.mark.parametrize(("src_layers", "dst_layers"), [(2, 4), (4, 2)])
def test_depth_change_seeds_every_target_layer_by_its_role(src_layers, dst_layers):
    """Each ``h/i`` block stays a block: attention seeds attention, MLP seeds MLP, the
    final ``ln_f`` comes from ``ln_f`` (issue 12: they were spliced into one run)."""
    the_plan, out = planned((src_layers, 32), (dst_layers, 32))
    assert_every_block_seeded(the_plan.report, BLOCK, dst_layers)
    runs(gpt2(dst_layers, 32), out)


@pytest.mark.parametrize(("src_width", "dst_width"), [(32, 64), (64, 32)])
def test_width_change_moves_query_key_value_into_their_own_parts(src_width, dst_width):
    the_plan, out = planned((2, src_width), (2, dst_width))
    runs(gpt2(2, dst_width), out)
    assert_every_layer_seeded_by_its_role(the_plan.report, block_role(BLOCK))
    fused = [name for name, *_ in the_plan.report.fused]
    assert any(name.endswith("h/0/attn/c_attn/kernel") for name in fused), fused
    small = min(src_width, dst_width)
    for block in ("0", "1"):
        src = params(2, src_width)["transformer"]["h"][block]["attn"]["c_attn"]
        dst = out["transformer"]["h"][block]["attn"]["c_attn"]
        kernel = part_landing(src["kernel"].shape, dst["kernel"], axis=0, parts=3)
        np.testing.assert_array_equal(kernel, np.diag([small * small] * 3))
        bias = part_landing(src["bias"].shape, dst["bias"], axis=0, parts=3)
        np.testing.assert_array_equal(bias, np.diag([small] * 3))


def test_model_objects_go_in_and_identity_is_exact():
    """A model holding its params goes in alone; within one architecture the result is
    its params, exactly, in the form ``model.params = out`` takes."""
    src = gpt2(2, 32, init=True)
    out = dpiat_jax.transfer(None, src, gpt2(2, 32), key(0))
    chex.assert_trees_all_equal(out, src.params)
    src.params = out  # the form Hugging Face keeps: its setter checks every key
    runs(gpt2(2, 32), out)


def factor_rows(src: tuple[int, ...], dst: tuple[int, ...]) -> list[int | None]:
    """Per target row of a factored axis, the source row the clip rule per factor puts
    there (None: fresh): q, k, v apart, whole heads centred, head_dim centred in each."""
    from dpiat_jax.heads import clip_map

    maps = [clip_map(a, b) for a, b in zip(src, dst)]
    rows = []
    for t in np.ndindex(*dst):
        s = [m[i] for m, i in zip(maps, t)]
        rows.append(None if None in s else int(np.ravel_multi_index(s, src)))
    return rows


@pytest.mark.parametrize(
    ("src", "dst"), [((32, 2), (32, 4)), ((32, 2), (64, 4)), ((32, 2), (48, 3)), ((64, 4), (32, 2))]
)
def test_head_count_change_keeps_whole_heads_in_each_part(src, dst):
    """``c_attn`` ``(3 * heads * head_dim, d)`` moves per factor ``(3, heads, head_dim)``:
    each target row holds the source row of the same part, of the centred source head,
    at the centred position in that head; ``c_proj``'s input axis follows the same heads
    (issue 12, item 3). No warning."""
    (src_width, src_heads), (dst_width, dst_heads) = src, dst
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        the_plan = dpiat_jax.plan(
            gpt2_heads(2, src_width, src_heads),
            gpt2_heads(2, dst_width, dst_heads),
            src_variables=params(2, src_width, src_heads),
        )
    source = params(2, src_width, src_heads)
    out = hf_form(jax.jit(the_plan.apply)(source, key(0)))
    runs(gpt2_heads(2, dst_width, dst_heads), out)
    src_f = (3, src_heads, src_width // src_heads)
    dst_f = (3, dst_heads, dst_width // dst_heads)
    columns = clip_columns(src_width, dst_width)
    for block in ("0", "1"):
        s = source["transformer"]["h"][block]["attn"]
        o = out["transformer"]["h"][block]["attn"]
        kernel, bias = np.asarray(o["c_attn"]["kernel"]), np.asarray(o["c_attn"]["bias"])
        for t, row in enumerate(factor_rows(src_f, dst_f)):
            if row is None:
                assert (kernel[t] < MARK).all() and bias[t] < MARK  # fresh
                continue
            np.testing.assert_array_equal(
                kernel[t, columns[1]], s["c_attn"]["kernel"][row, columns[0]]
            )
            assert bias[t] == s["c_attn"]["bias"][row]
        proj, src_proj = np.asarray(o["c_proj"]["kernel"]), np.asarray(s["c_proj"]["kernel"])
        for t, row in enumerate(factor_rows(src_f[1:], dst_f[1:])):  # c_proj's input axis
            if row is not None:
                np.testing.assert_array_equal(proj[columns[1], t], src_proj[columns[0], row])


def clip_columns(a: int, b: int) -> tuple[slice, slice]:
    """``(source slice, target slice)`` of the clip rule along an axis of ``a -> b``."""
    from dpiat_jax.tensors import centre_slices

    (src,), (dst,) = centre_slices((a,), (b,))
    return src, dst


def test_transfer_two_heads_into_four():
    """The same through ``dpiat_jax.transfer``: 2 -> 4 heads at width 32 (head_dim
    16 -> 8), no warning; target heads 1 and 2 of each part hold source heads 0 and 1,
    their middle 8 dimensions."""
    source = params(2, 32, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        out = dpiat_jax.transfer(source, gpt2_heads(2, 32, 2), gpt2_heads(2, 32, 4), key(0))
    out = hf_form(out)
    runs(gpt2_heads(2, 32, 4), out)
    src = np.asarray(source["transformer"]["h"]["0"]["attn"]["c_attn"]["kernel"])
    dst = np.asarray(out["transformer"]["h"]["0"]["attn"]["c_attn"]["kernel"])
    for part in range(3):
        for head in (1, 2):
            got = dst[32 * part + 8 * head : 32 * part + 8 * head + 8]
            row = 32 * part + 16 * (head - 1) + 4
            np.testing.assert_array_equal(got, src[row : row + 8])
        assert (dst[32 * part : 32 * part + 8] < MARK).all()  # head 0 stays fresh
