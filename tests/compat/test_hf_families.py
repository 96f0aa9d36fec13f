"""More Hugging Face Flax families (``transformers`` 4.x, built from configs, random
weights): encoder-decoders (BART, Whisper), an audio encoder (Wav2Vec2), a two-tower
model (CLIP) and a parallel-block decoder (GPT-J).

What they have that BERT and GPT-2 do not: embeddings, norms and dropout beside a
shallow stack of layers (a two-layer encoder must stay a list of layers, as a deeper
one does), two towers whose layers must not seed each other, attention and MLP side by
side after one norm (GPT-J), and inputs other than token ids (audio features, pixels)
that the model's own ``init_weights`` says how to build. Each family: depth 2 <-> 4,
every target layer seeded by a source layer of its own role, and the target runs.
"""

from __future__ import annotations

import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax
from compat.checks import assert_finite, assert_fresh_form, hf_fresh, key, random_like, require
from dpiat_jax.structure import StructureWarning
from dpiat_jax.trace.adapter import hf_sample_input

transformers = require("transformers")


def bart(layers: int):
    config = transformers.BartConfig(
        vocab_size=100, d_model=32, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.FlaxBartForConditionalGeneration(config, _do_init=False)


def whisper(layers: int):
    config = transformers.WhisperConfig(
        vocab_size=100, d_model=32, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16, max_target_positions=32,
    )  # fmt: skip
    return transformers.FlaxWhisperForConditionalGeneration(
        config, input_shape=(1, 8, 32), _do_init=False
    )


def wav2vec2(layers: int):
    config = transformers.Wav2Vec2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        num_feat_extract_layers=2, do_stable_layer_norm=True, feat_extract_norm="layer",
    )  # fmt: skip
    return transformers.FlaxWav2Vec2Model(config, input_shape=(1, 400), _do_init=False)


def clip(layers: int):
    text = dict(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    vision = dict(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
        num_hidden_layers=layers, num_attention_heads=2,
    )  # fmt: skip
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return transformers.FlaxCLIPModel(config, _do_init=False)


def gptj(layers: int):
    config = transformers.GPTJConfig(
        vocab_size=100, n_embd=32, n_layer=layers, n_head=2, rotary_dim=8, n_positions=64
    )
    return transformers.FlaxGPTJForCausalLM(config, _do_init=False)


#: name -> (builder, the regex whose group is a layer's index in its stack)
FAMILIES = {
    "bart": (bart, r"/layers/(\d+)/"),
    "whisper": (whisper, r"/layers/(\d+)/"),
    "wav2vec2": (wav2vec2, r"/layers/(\d+)/"),
    "clip": (clip, r"/layers/(\d+)/"),
    "gptj": (gptj, r"/h/(\d+)/"),
}


@functools.cache
def model(name: str, layers: int):
    return FAMILIES[name][0](layers)


@functools.cache
def params(name: str, layers: int):
    return random_like(hf_fresh(model(name, layers)), seed=layers)


def role(name: str, path: str) -> str:
    """A layer's role: its path with the layer index dropped (``encoder/layers/*/fc1``)."""
    return re.sub(FAMILIES[name][1], "/*/", path)


@pytest.mark.parametrize(("src", "dst"), [(2, 4), (4, 2)], ids=["2-4", "4-2"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_depth_change_seeds_every_layer_by_its_role(name, src, dst):
    """Every target layer is seeded (CLIP's root ``logit_scale`` scalar included), each
    from a source layer of its own role: encoder from encoder, text tower from text
    tower, attention from attention."""
    the_plan = dpiat_jax.plan(model(name, src), model(name, dst), src_variables=params(name, src))
    report = the_plan.report
    assert not report.unmatched_dst, report.unmatched_dst
    assert report.layers_transferred == report.layers_total, report
    wrong = [(s, d) for s, d, _ in report.pairs if role(name, s) != role(name, d)]
    assert not wrong, wrong
    seeded = {m.group(0) for _, d, _ in report.pairs if (m := re.search(FAMILIES[name][1], d))}
    assert len(seeded) == dst, seeded  # each of the target's layer indices
    out = the_plan.apply(params(name, src), key(0))
    assert_fresh_form(out, {"params": hf_fresh(model(name, dst))})
    target = model(name, dst)
    x = _concrete(hf_sample_input(target, None, "dst_def").args)
    assert_finite(jax.tree.leaves(jax.jit(target.module.apply)(out, *x))[0])  # it runs


def _concrete(args):
    """Concrete inputs for abstract ones: ones of each shape and dtype."""
    return [None if a is None else jnp.ones(a.shape, a.dtype) for a in args]


def gptj_wide(width: int):
    config = transformers.GPTJConfig(
        vocab_size=100, n_embd=width, n_layer=2, n_head=width // 16, rotary_dim=8, n_positions=64
    )
    return transformers.FlaxGPTJForCausalLM(config, _do_init=False)


@pytest.mark.parametrize(("src", "dst"), [(32, 64), (64, 32)], ids=["grow", "shrink"])
def test_gptj_width_change_keeps_whole_heads(src, dst):
    """GPT-J's partial rotary embedding (the first 8 of each head's 16 values rotated,
    the rest passed, concatenated again) keeps its heads visible: q, k, v move head by
    head (2 <-> 4 heads of 16), with no warning."""
    source = random_like(hf_fresh(gptj_wide(src)), seed=src)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        the_plan = dpiat_jax.plan(gptj_wide(src), gptj_wide(dst), src_variables=source)
    report = the_plan.report
    assert report.layers_transferred == report.layers_total, report
    assert any(d.endswith("attn/q_proj/kernel") for d, *_ in report.factored), report.factored
    out = the_plan.apply(source, key(0))["params"]
    s = np.asarray(source["transformer"]["h"]["0"]["attn"]["q_proj"]["kernel"])
    t = np.asarray(out["transformer"]["h"]["0"]["attn"]["q_proj"]["kernel"])
    n = min(src, dst)
    s, t = s[(src - n) // 2 :][:n], t[(dst - n) // 2 :][:n]  # the rows both sides share
    heads_s, heads_t = s.reshape(n, -1, 16), t.reshape(n, -1, 16)
    kept = [j for j in range(heads_t.shape[1]) if any(
        np.array_equal(heads_t[:, j], heads_s[:, i]) for i in range(heads_s.shape[1])
    )]  # fmt: skip
    assert len(kept) == min(src, dst) // 16, kept
