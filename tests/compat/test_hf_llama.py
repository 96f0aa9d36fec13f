"""Hugging Face Flax Llama (``transformers`` 4.x, built from configs, random weights).

Llama writes grouped-query attention as ``Dense(kv_heads * head_dim)`` projections whose
kv heads are repeated to the groups of query heads, with a rotary embedding that pairs
the two halves of each head. Its module needs ``position_ids``: the default input must
give them, as the model's own ``init_weights`` does.
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
def llama(layers: int = 2, heads: int = 4, kv_heads: int = 2, init: bool = False, width: int = 32):
    """A tiny Llama language model (vocabulary 100, 64 positions); with ``init`` it
    holds its own params, else it is built without."""
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
    )
    return transformers.FlaxLlamaForCausalLM(config, _do_init=init)


@functools.cache
def params(layers: int, heads: int = 4, kv_heads: int = 2):
    """Trained-like params of :func:`llama`."""
    return random_like(hf_fresh(llama(layers, heads, kv_heads)), seed=layers * 100 + heads)


def runs(model, out) -> None:
    """The target runs with the transferred params, with finite output."""
    logits = jax.jit(lambda p: model(IDS, params=p).logits)(out)
    assert logits.shape == (1, 12, 100)
    assert_finite(logits)


def heads_of(src: np.ndarray, dst: np.ndarray, heads: tuple[int, int]) -> list[int | None]:
    """Per target head of a ``(width, heads * head_dim)`` kernel, the source head whose
    values it holds (head_dim cropped or centred per rotary half), or None (fresh)."""
    s = np.asarray(src).reshape(src.shape[0], heads[0], 2, -1)
    t = np.asarray(dst).reshape(dst.shape[0], heads[1], 2, -1)
    n = min(s.shape[-1], t.shape[-1])
    s = s[..., (s.shape[-1] - n) // 2 :][..., :n]
    t = t[..., (t.shape[-1] - n) // 2 :][..., :n]
    found = []
    for j in range(heads[1]):
        same = [i for i in range(heads[0]) if np.array_equal(t[:, j], s[:, i])]
        found.append(same[0] if same else None)
    return found


@pytest.mark.parametrize(("src_layers", "dst_layers"), [(2, 4), (4, 2)])
def test_depth_change_seeds_every_target_layer(src_layers, dst_layers):
    the_plan, out = hf_planned(llama, params, (src_layers,), (dst_layers,))
    assert_every_block_seeded(the_plan.report, BLOCK, dst_layers)
    assert the_plan.report.layers_transferred == the_plan.report.layers_total
    runs(llama(dst_layers), out)


@pytest.mark.parametrize(
    ("src", "dst"),
    [((8, 2), (4, 2)), ((4, 2), (8, 4)), ((4, 4), (4, 2)), ((4, 2), (4, 4)), ((8, 8), (4, 2))],
    ids=lambda heads: f"{heads[0]}/{heads[1]}",
)
def test_head_change_keeps_query_heads_with_their_group_kv_head(src, dst):
    """Grouped-query and multi-head attention (Llama with as many kv heads as heads) in
    any direction: a target group with seeded query heads reads the kv head of one of
    their source query heads (the query axis moves per (groups, heads per group, rotary
    half, half dim) factor, or regrouped); no warning."""
    source = params(2, *src)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        out = dpiat_jax.transfer(source, llama(2, *src), llama(2, *dst), key(1))
    runs(llama(2, *dst), out)
    s = source["model"]["layers"]["0"]["self_attn"]
    o = out["model"]["layers"]["0"]["self_attn"]
    q = heads_of(s["q_proj"]["kernel"], o["q_proj"]["kernel"], (src[0], dst[0]))
    kv = heads_of(s["k_proj"]["kernel"], o["k_proj"]["kernel"], (src[1], dst[1]))
    assert sum(h is not None for h in q) >= min(src[0], dst[0]) // 2, q
    assert any(h is not None for h in kv), kv
    for group in range(dst[1]):
        read = {
            h // (src[0] // src[1])
            for t, h in enumerate(q)
            if h is not None and t // (dst[0] // dst[1]) == group
        }
        assert not read or kv[group] in read, (group, q, kv)


def test_width_growth_with_a_widening_rule_seeds_every_layer():
    """Width 32 -> 64 with heads 4/2 -> 8/4: the published shape score pairs a target
    k_proj with a source layer of the target's shape; ``tensor_rule="net2net"`` scores
    width-free, so every target layer is seeded by its own role, and the result runs."""
    src, dst = llama(2, 4, 2), llama(2, 8, 4, width=64)
    the_plan = dpiat_jax.plan(src, dst, src_variables=params(2, 4, 2), tensor_rule="net2net")
    report = the_plan.report
    assert report.layers_transferred == report.layers_total, report
    assert all(s.rsplit("/", 1)[-1] == d.rsplit("/", 1)[-1] for s, d, _ in report.pairs)
    runs(dst, the_plan.apply(params(2, 4, 2), key(0))["params"])


def test_grouped_query_to_multi_head_attention_is_exact():
    """Grouped-query attention is multi-head attention with each group's kv head
    repeated: a Llama of 4 heads / 2 kv heads moved into one of 4 / 4 computes the same
    logits."""
    out = dpiat_jax.transfer(params(2, 4, 2), llama(2, 4, 2), llama(2, 4, 4), key(1))
    logits = [
        jax.jit(lambda p, m=model: m(IDS, params=p).logits)(v)
        for model, v in [(llama(2, 4, 2), params(2, 4, 2)), (llama(2, 4, 4), out)]
    ]
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-4, atol=1e-5)


def test_model_objects_go_in_and_identity_is_exact():
    """A model holding its params goes in alone, traced with the default input (token
    ids, attention mask and position ids); the result is its params, exactly."""
    src = llama(2, 4, 2, init=True)
    out = dpiat_jax.transfer(None, src, llama(2, 4, 2), key(0))
    chex.assert_trees_all_equal(out, src.params)
    runs(llama(2, 4, 2), out)
