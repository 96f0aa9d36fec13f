"""Hugging Face Flax GPT-2 (``transformers`` 4.x, built from configs, random weights).

GPT-2 fuses query, key and value into one ``attn/c_attn`` kernel of shape ``(3 d, d)``
(a ``Conv1D``: output axis first) and its bias ``(3 d,)``: a width change must move each
of the three parts into its own part. Source values are marked (:func:`compat.checks.
marked`) so that where each lands is read off the target.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax
from compat.checks import (
    assert_every_block_seeded,
    assert_every_layer_seeded_by_its_role,
    assert_finite,
    block_role,
    hf_fresh,
    hf_planned,
    key,
    marked,
    part_landing,
    random_like,
    require,
)

transformers = require("transformers")

BLOCK = r"^transformer/h/(\d+)/"
IDS = jnp.arange(12, dtype=jnp.int32).reshape(1, 12) % 100


@functools.cache
def gpt2(layers: int = 2, width: int = 32, init: bool = False):
    """A tiny GPT-2 language model (vocabulary 100, 2 heads, 64 positions, tied
    output); with ``init`` it holds its own params, else it is built without."""
    config = transformers.GPT2Config(
        vocab_size=100, n_embd=width, n_layer=layers, n_head=2, n_positions=64
    )
    return transformers.FlaxGPT2LMHeadModel(config, _do_init=init)


@functools.cache
def params(layers: int, width: int):
    """Trained-like params of :func:`gpt2`; every ``c_attn`` kernel and bias marked."""
    out = random_like(hf_fresh(gpt2(layers, width)), seed=layers * 100 + width)
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
