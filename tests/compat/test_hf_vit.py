"""Hugging Face Flax ViT (``transformers`` 4.x, built from configs, random weights).

The default input comes from the config (pixel values ``(1, image_size, image_size,
num_channels)``, NHWC as the module takes them; the model object's ``__call__`` takes
NCHW and transposes).
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
    block_role,
    hf_fresh,
    hf_planned,
    key,
    random_like,
    require,
)

transformers = require("transformers")

BLOCK = r"^encoder/layer/(\d+)/"
PIXELS = jnp.linspace(0.0, 1.0, 3 * 32 * 32, dtype=jnp.float32).reshape(1, 3, 32, 32)


@functools.cache
def vit(layers: int = 2, hidden: int = 32, init: bool = False):
    """A tiny ViT (32 px images, 8 px patches, 2 heads, MLP 2x wide); with ``init`` it
    holds its own params, else it is built without."""
    config = transformers.ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        image_size=32,
        patch_size=8,
    )
    return transformers.FlaxViTModel(config, _do_init=init)


@functools.cache
def params(layers: int, hidden: int):
    """Trained-like params of :func:`vit` (numpy draws; no compilation)."""
    return random_like(hf_fresh(vit(layers, hidden)), seed=layers * 100 + hidden)


@functools.cache
def forward(model):
    """The model's jitted forward pass: params -> last hidden state."""
    return jax.jit(lambda p: model(PIXELS, params=p).last_hidden_state)


def runs(model, out) -> None:
    """The target runs with the transferred params, with finite output."""
    hidden = forward(model)(out)
    assert hidden.shape == (1, 17, model.config.hidden_size)  # class token + 4x4 patches
    assert_finite(hidden)


def planned(src_shape: tuple[int, int], dst_shape: tuple[int, int]):
    """``(plan, result)`` of a transfer from a model without params and its params."""
    return hf_planned(vit, params, src_shape, dst_shape)


@pytest.mark.parametrize(("src_layers", "dst_layers"), [(2, 4), (4, 2)])
def test_depth_change_seeds_every_target_layer(src_layers, dst_layers):
    the_plan, out = planned((src_layers, 32), (dst_layers, 32))
    assert_every_block_seeded(the_plan.report, BLOCK, dst_layers)
    runs(vit(dst_layers, 32), out)


@pytest.mark.parametrize(("src_hidden", "dst_hidden"), [(32, 64), (64, 32)])
def test_width_change_pairs_every_layer_with_its_role(src_hidden, dst_hidden):
    the_plan, out = planned((2, src_hidden), (2, dst_hidden))
    assert_every_layer_seeded_by_its_role(the_plan.report, block_role(BLOCK))
    runs(vit(2, dst_hidden), out)


def test_model_objects_go_in_and_identity_is_exact():
    """A model holding its params goes in alone; within one architecture the result is
    its params, exactly, in the form ``model.params = out`` takes."""
    src = vit(2, 32, init=True)
    out = dpiat_jax.transfer(None, src, vit(2, 32), key(0))
    chex.assert_trees_all_equal(out, src.params)
    src.params = out  # the form Hugging Face keeps: its setter checks every key
    runs(vit(2, 32), out)
