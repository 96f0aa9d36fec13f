"""Hugging Face Flax BERT (``transformers`` 4.x, built from configs, random weights).

The model objects go in as users hold them: ``transfer(None, src_model, dst_model,
rng)`` unpacks ``model.module``, ``model.params`` and a default input from the config
(token ids of length 16, ``deterministic=True``), and returns the target's params in
the form ``dst_model.params = out`` takes. Other models are built without weights
(``_do_init=False``, as for large checkpoints) and their params passed apart.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import pytest

import dpiat_jax
from compat.checks import (
    assert_every_block_seeded,
    assert_every_layer_seeded_by_its_role,
    assert_finite,
    assert_fresh_form,
    block_role,
    hf_fresh,
    hf_planned,
    key,
    random_like,
    require,
)

transformers = require("transformers")

BLOCK = r"^encoder/layer/(\d+)/"
IDS = jnp.arange(12, dtype=jnp.int32).reshape(1, 12) % 100


@functools.cache
def bert(layers: int = 2, hidden: int = 32, init: bool = False):
    """A tiny BERT (vocabulary 100, 2 heads, MLP 2x wide, 64 positions); with ``init``
    it holds its own random params, else it is built without (``_do_init=False``)."""
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    return transformers.FlaxBertModel(config, _do_init=init)


@functools.cache
def params(layers: int, hidden: int):
    """Trained-like params of :func:`bert` (numpy draws; no compilation)."""
    return random_like(hf_fresh(bert(layers, hidden)), seed=layers * 100 + hidden)


@functools.cache
def forward(model):
    """The model's jitted forward pass: params -> last hidden state."""
    return jax.jit(lambda p: model(IDS, params=p).last_hidden_state)


def runs(model, out) -> None:
    """The target runs with the transferred params, with finite output."""
    hidden = forward(model)(out)
    assert hidden.shape == (1, 12, model.config.hidden_size)
    assert_finite(hidden)


def planned(src_shape: tuple[int, int], dst_shape: tuple[int, int]):
    """``(plan, result)`` of a transfer from a model without params and its params."""
    return hf_planned(bert, params, src_shape, dst_shape)


@pytest.mark.parametrize(("src_layers", "dst_layers"), [(2, 4), (4, 2)])
def test_depth_change_seeds_every_target_layer(src_layers, dst_layers):
    the_plan, out = planned((src_layers, 32), (dst_layers, 32))
    assert_every_block_seeded(the_plan.report, BLOCK, dst_layers)
    runs(bert(dst_layers, 32), out)


@pytest.mark.parametrize(("src_hidden", "dst_hidden"), [(32, 64), (64, 32)])
def test_width_change_pairs_every_layer_with_its_role(src_hidden, dst_hidden):
    the_plan, out = planned((2, src_hidden), (2, dst_hidden))
    assert_every_layer_seeded_by_its_role(the_plan.report, block_role(BLOCK))
    runs(bert(2, dst_hidden), out)


def test_model_objects_go_in_and_the_result_sets_the_params():
    """A model holding its params goes in alone (identity: the result is its params,
    exactly), in the form Hugging Face keeps (``model.params = out``); a deeper target
    from the same model runs."""
    src = bert(2, 32, init=True)
    out = dpiat_jax.transfer(None, src, bert(2, 32), key(0))
    chex.assert_trees_all_equal(out, src.params)
    src.params = out  # the form Hugging Face keeps: its setter checks every key
    deeper = dpiat_jax.transfer(src, None, bert(4, 32), key(1))
    assert_fresh_form(deeper, hf_fresh(bert(4, 32)))
    runs(bert(4, 32), deeper)


def test_similarity_and_layers_take_model_objects():
    """``similarity`` and ``module_layers`` take the model objects as they are (their
    params, their default inputs), and agree with ``match``."""
    src, dst = bert(2, 32, init=True), bert(4, 32)
    similarity = dpiat_jax.similarity(src, dst)
    assert similarity == pytest.approx(dpiat_jax.match(None, src, dst).similarity)
    assert dpiat_jax.similarity((bert(2, 32), params(2, 32)), dst) == pytest.approx(similarity)
    names = [layer.name for layer in dpiat_jax.module_layers(dst)]
    assert "encoder/layer/3/attention/self/query" in names
