"""Hugging Face Flax Gemma (``transformers`` 4.x, built from configs, random weights).

Gemma as ``transformers`` writes it in Flax: Llama's layout with a head dimension of its
own (``head_dim`` need not be ``hidden / heads``), an embedding tied to the logits,
RMS norms scaled by ``1 + weight``, and multi-query attention in its 2B configuration
(one kv head, broadcast to every query head). The ``gemma`` package itself cannot be
installed beside our JAX; ``compat.gemma_like`` reproduces its module patterns.
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
    assert_every_block_seeded,
    assert_finite,
    hf_fresh,
    hf_planned,
    key,
    random_like,
    require,
)
from dpiat_jax.structure import StructureWarning

transformers = require("transformers")

BLOCK = r"^model/layers/(\d+)/"
IDS = jnp.arange(12, dtype=jnp.int32).reshape(1, 12) % 100


@functools.cache
def gemma(layers: int = 2, heads: int = 4, kv_heads: int = 1, init: bool = False):
    """A tiny Gemma language model (width 32, head_dim 8, vocabulary 100); with ``init``
    it holds its own params, else it is built without."""
    config = transformers.GemmaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=8,
        max_position_embeddings=64,
        hidden_activation="gelu_pytorch_tanh",
    )
    return transformers.FlaxGemmaForCausalLM(config, _do_init=init)


@functools.cache
def params(layers: int, heads: int = 4, kv_heads: int = 1):
    """Trained-like params of :func:`gemma`."""
    return random_like(hf_fresh(gemma(layers, heads, kv_heads)), seed=layers * 100 + kv_heads)


@functools.cache
def forward(model):
    return jax.jit(lambda p: model(IDS, params=p).logits)


def runs(model, out) -> np.ndarray:
    """The target runs with the transferred params, with finite logits (returned)."""
    logits = forward(model)(out)
    assert logits.shape == (1, 12, 100)
    assert_finite(logits)
    return np.asarray(logits)


def test_model_objects_go_in_and_identity_is_exact():
    src = gemma(2, init=True)
    out = dpiat_jax.transfer(None, src, gemma(2), key(0))
    chex.assert_trees_all_equal(out, src.params)


@pytest.mark.parametrize(("src_layers", "dst_layers"), [(2, 4), (4, 2)])
def test_depth_change_seeds_every_target_layer(src_layers, dst_layers):
    the_plan, out = hf_planned(gemma, params, (src_layers,), (dst_layers,))
    assert_every_block_seeded(the_plan.report, BLOCK, dst_layers)
    assert the_plan.report.layers_transferred == the_plan.report.layers_total
    runs(gemma(dst_layers), out)


@pytest.mark.parametrize(
    ("src", "dst", "rule"),
    [
        ((4, 1), (4, 2), "clip"),  # multi-query -> grouped-query
        ((4, 2), (4, 4), "clip"),  # grouped-query -> multi-head
        # one kv head -> 4: the published shape score pairs the target's k and v
        # (32 x 32) with the source's query; the width-free score pairs them by role
        ((4, 1), (4, 4), "net2net"),
    ],
    ids=["mqa-gqa", "gqa-mha", "mqa-mha"],
)
def test_more_kv_heads_compute_the_source_function(src, dst, rule):
    """Each kv head is repeated to the target kv heads its query heads read: with as
    many query heads, the target's logits are the source's. No warning."""
    source = params(2, *src)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        out = dpiat_jax.transfer(source, gemma(2, *src), gemma(2, *dst), key(1), tensor_rule=rule)
    np.testing.assert_allclose(
        runs(gemma(2, *dst), out), runs(gemma(2, *src), source), rtol=1e-4, atol=1e-5
    )


def moved(src: tuple[int, int], dst: tuple[int, int]) -> tuple[dict, dict]:
    """``(source attention, result attention)`` params of layer 0 of a transfer between
    two 2-layer Gemmas of ``(heads, kv_heads)``; no warning, and the target runs."""
    source = params(2, *src)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        out = dpiat_jax.transfer(source, gemma(2, *src), gemma(2, *dst), key(1))
    runs(gemma(2, *dst), out)
    return source["model"]["layers"]["0"]["self_attn"], out["model"]["layers"]["0"]["self_attn"]


def test_multi_head_to_multi_query_keeps_every_query_head():
    """4 kv heads -> 1: the query heads all keep their values and the one kv head is a
    whole source kv head (the middle one), not a crop across two heads."""
    s, o = moved((4, 4), (4, 1))
    np.testing.assert_array_equal(o["q_proj"]["kernel"], s["q_proj"]["kernel"])
    for name in ("k_proj", "v_proj"):
        heads = np.asarray(s[name]["kernel"]).reshape(32, 4, 8)
        np.testing.assert_array_equal(o[name]["kernel"], heads[:, 1])


def test_multi_query_head_count_change_keeps_whole_heads():
    """One kv head on both sides, 4 -> 8 query heads: the source's query heads land
    whole (centred), the kv head is kept, no warning."""
    s, o = moved((4, 1), (8, 1))
    query = np.asarray(o["q_proj"]["kernel"]).reshape(32, 8, 8)
    source_query = np.asarray(s["q_proj"]["kernel"]).reshape(32, 4, 8)
    np.testing.assert_array_equal(query[:, 2:6], source_query)
    np.testing.assert_array_equal(o["k_proj"]["kernel"], s["k_proj"]["kernel"])
