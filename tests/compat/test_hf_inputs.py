"""Default inputs of Hugging Face models with inputs other than token ids (CLIP's text
and pixels, Whisper's audio features and decoder ids): taken from what the model's own
``init_weights`` passes to its module, so a model object goes in alone."""

from __future__ import annotations

import functools

import chex
import jax
import pytest

import dpiat_jax
from compat.checks import key, require
from dpiat_jax.trace.adapter import hf_sample_input

transformers = require("transformers")


@functools.cache
def clip():
    text = dict(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    vision = dict(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2,
    )  # fmt: skip
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return transformers.FlaxCLIPModel(config)


@functools.cache
def whisper():
    config = transformers.WhisperConfig(
        vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16, max_target_positions=16,
    )  # fmt: skip
    return transformers.FlaxWhisperForConditionalGeneration(config)


def shapes(model) -> list[tuple[tuple[int, ...], str]]:
    return [(a.shape, str(a.dtype)) for a in hf_sample_input(model, None, "src_def").args]


def test_clip_default_input_holds_tokens_and_pixels():
    assert shapes(clip()) == [
        ((1, 16), "int32"), ((1, 32, 32, 3), "float32"), ((1, 16), "int32"), ((1, 16), "int32")
    ]  # fmt: skip


def test_whisper_default_input_holds_features_and_decoder_ids():
    assert shapes(whisper())[0] == ((1, 8, 32), "float32")
    assert all(dtype == "int32" for _, dtype in shapes(whisper())[1:])


@pytest.mark.parametrize("make", [clip, whisper], ids=["clip", "whisper"])
def test_model_object_goes_in_alone_and_identity_is_exact(make):
    model = make()
    out = dpiat_jax.transfer(None, model, model, key(0))
    chex.assert_trees_all_equal(out, model.params)
    assert jax.tree.structure(out) == jax.tree.structure(model.params)
