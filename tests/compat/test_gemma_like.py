"""Transfers between Gemma-like decoders (:mod:`compat.gemma_like`, issue 12).

The model reproduces Gemma's patterns: ``__getattr__`` on the root, an ``nn.jit``-wrapped
``__call__``, a tied embedding table, einsum kernels with a heads axis, a separate fused
KV projection with grouped-query attention, a fused gate/up MLP kernel.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import dpiat_jax
from compat.gemma_like import Config, Transformer, tokens  # tests/ is on sys.path (conftest)
from dpiat_jax.trace.linen import record_calls, unrecorded_paths

X = tokens()
KEY = jax.random.key(0)
SRC = Config()
WIDER = Config(d=32, head_dim=16, hidden=64)
BLOCK = ("attn/q_einsum/w", "attn/kv_einsum/w", "attn/attn_vec_einsum/w", "mlp/gating_einsum",
         "mlp/linear", "pre_attention_norm/scale", "pre_ffw_norm/scale")  # fmt: skip


def init(config: Config, seed: int = 0, name: str | None = None):
    """A model's variables: normal values of its init's shapes (no compilation; norm
    scales non-zero, unlike Gemma's init)."""
    abstract = jax.eval_shape(Transformer(config, name=name).init, jax.random.key(0), X)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), abstract)


def flat(variables) -> dict[str, np.ndarray]:
    return {
        "/".join(k): np.asarray(v)
        for k, v in traverse_util.flatten_dict(variables["params"]).items()
    }


def move(src: Config, dst: Config, *, src_vars=None, name: str | None = None):
    """``(source params, result params, result variables)`` of a transfer from ``src``
    to ``dst`` (cached for the default source variables: each compile takes seconds)."""
    if src_vars is None:
        return _move_default(src, dst, name)
    return _move(src, dst, src_vars, name)


@functools.cache
def _move_default(src: Config, dst: Config, name: str | None):
    return _move(src, dst, init(src), name)


def _move(src: Config, dst: Config, src_vars, name: str | None):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no untraced modules, no low coverage
        out = dpiat_jax.transfer(
            src_vars,
            Transformer(src),
            Transformer(dst, name=name),
            jax.random.key(7),
            sample_input=X,
        )
    return flat(src_vars), flat(out), out


def source_layer(src: dict, dst: dict, layer: str) -> int | None:
    """The source layer whose whole block equals target ``layer``'s, if any."""
    for i in range(len([k for k in src if k.endswith("attn/q_einsum/w")])):
        if all(np.array_equal(src[f"layer_{i}/{t}"], dst[f"{layer}/{t}"]) for t in BLOCK):
            return i
    return None


def runs(config: Config, variables) -> None:
    out = Transformer(config).apply(variables, X)
    assert out.shape == (*X.shape, config.vocab)
    assert bool(jnp.isfinite(out).all())


def test_identity_is_exact():
    src, out, variables = move(SRC, SRC)
    assert src.keys() == out.keys()
    for name in src:
        np.testing.assert_array_equal(out[name], src[name], err_msg=name)
    runs(SRC, variables)


@pytest.mark.parametrize("src_layers, dst_layers", [(2, 4), (4, 2), (3, 5)])
def test_depth_change_seeds_every_target_block(src_layers, dst_layers):
    src_cfg, dst_cfg = Config(layers=src_layers), Config(layers=dst_layers)
    src, out, variables = move(src_cfg, dst_cfg)
    seeds = [source_layer(src, out, f"layer_{j}") for j in range(dst_layers)]
    assert None not in seeds, seeds
    assert seeds == sorted(seeds)  # layers keep their order
    if dst_layers <= src_layers:
        assert len(set(seeds)) == dst_layers  # no source layer used twice
    for name in ("embedder/input_embedding", "final_norm/scale"):
        np.testing.assert_array_equal(out[name], src[name])
    runs(dst_cfg, variables)


def test_depth_change_report_counts_every_target_layer():
    src_vars = init(Config(layers=2))
    report = dpiat_jax.match(
        src_vars, Transformer(Config(layers=2)), Transformer(Config(layers=4)), sample_input=X
    )
    assert report.layers_transferred == report.layers_total == 2 + 6 * 4
    assert report.params_transferred == report.params_total
    assert not report.unmatched_dst


def holds(big: np.ndarray, small: np.ndarray) -> float:
    """The share of ``small``'s values found in ``big``."""
    return float(np.isin(small.ravel(), big.ravel()).mean())


@pytest.mark.parametrize(
    "dst_cfg",
    [
        WIDER,
        Config(d=8, head_dim=4, hidden=16),  # narrower
    ],
    ids=["wider", "narrower"],
)
def test_width_change_moves_every_tensor(dst_cfg):
    src, out, variables = move(SRC, dst_cfg)
    fresh = flat(Transformer(dst_cfg).init(jax.random.key(7), X))
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in fresh.items()}
    for name, value in out.items():
        grows = value.size >= src[name].size
        share = holds(value, src[name]) if grows else holds(src[name], value)
        assert share > 0.9, (name, share)
    runs(dst_cfg, variables)


def test_fused_parts_land_in_their_own_parts():
    """gate stays gate, up stays up; key stays key, value stays value (width grows)."""
    src, out, _ = move(SRC, WIDER)
    for name in ("layer_0/mlp/gating_einsum", "layer_1/attn/kv_einsum/w"):
        for part in range(2):
            assert holds(out[name][part], src[name][part]) == 1.0, (name, part)
            assert holds(out[name][part], src[name][1 - part]) < 0.1, (name, part)


def test_results_do_not_depend_on_earlier_traces():
    """nn.jit caches its trace by configuration: a target traced (or initialised)
    before must give the same transfer as one never seen in the process."""
    src_cfg, dst_cfg = Config(vocab=40, layers=2), Config(vocab=40, layers=3)
    src_vars = init(src_cfg)  # the source's nn.jit trace is cached from here on
    report = dpiat_jax.match(src_vars, Transformer(src_cfg), Transformer(dst_cfg), sample_input=X)
    assert report.layers_transferred == report.layers_total
    _, first, _ = move(src_cfg, dst_cfg, src_vars=src_vars)  # target never traced before
    # now nn.jit's trace of the target is cached: a plain record sees no submodule
    jax.eval_shape(Transformer(dst_cfg).init, KEY, X)
    abstract, plain = record_calls(jax.eval_shape, Transformer(dst_cfg).init, KEY, X)
    assert unrecorded_paths(plain, abstract)
    # another root name: an equal model that dpiat_jax's own trace cache has not seen
    src, again, _ = move(src_cfg, dst_cfg, src_vars=src_vars, name="again")
    assert first.keys() == again.keys()
    for name in first:
        np.testing.assert_array_equal(again[name], first[name], err_msg=name)
    assert all(source_layer(src, again, f"layer_{j}") is not None for j in range(3))


@pytest.mark.parametrize("vocab", [96, 48])
def test_vocab_rows_keep_their_token(vocab):
    """Row i stays token i: growing appends fresh rows, shrinking keeps the first."""
    src, out, _ = move(SRC, Config(vocab=vocab))
    rows = min(vocab, SRC.vocab)
    name = "embedder/input_embedding"
    np.testing.assert_array_equal(out[name][:rows], src[name][:rows])


def head_source(src_w: np.ndarray, dst_w: np.ndarray, axis: int) -> list[int | None]:
    """For each target head (index along ``axis``), the source head it equals exactly."""
    found = []
    for t in range(dst_w.shape[axis]):
        head = np.take(dst_w, t, axis=axis)
        same = [
            s for s in range(src_w.shape[axis]) if np.array_equal(np.take(src_w, s, axis), head)
        ]
        found.append(same[0] if same else None)
    return found


def test_more_heads_keep_whole_source_heads():
    """Heads 4 -> 8 (same d and head_dim): each source head lands whole in one target
    head, and q and the output projection use the same heads."""
    dst_cfg = Config(heads=8, kv_heads=2)
    src, out, variables = move(SRC, dst_cfg)
    q = head_source(src["layer_0/attn/q_einsum/w"], out["layer_0/attn/q_einsum/w"], 0)
    o = head_source(src["layer_0/attn/attn_vec_einsum/w"], out["layer_0/attn/attn_vec_einsum/w"], 0)
    assert sorted(h for h in q if h is not None) == list(range(SRC.heads))
    assert q == o
    runs(dst_cfg, variables)


def test_grouped_kv_heads_follow_their_query_groups():
    """kv_heads 2 -> 4 (heads 4): target query head t reads kv head t; it must hold the
    kv head that served the same source query head (t // 2)."""
    dst_cfg = Config(kv_heads=4)
    src, out, _ = move(SRC, dst_cfg)
    q = head_source(src["layer_0/attn/q_einsum/w"], out["layer_0/attn/q_einsum/w"], 0)
    kv = head_source(src["layer_0/attn/kv_einsum/w"], out["layer_0/attn/kv_einsum/w"], 1)
    group = SRC.heads // SRC.kv_heads
    assert None not in q
    assert kv == [q[t] // group for t in range(dst_cfg.heads)]


def test_fewer_heads_keep_query_heads_of_the_kept_kv_group():
    """Heads 4 -> 2 and kv_heads 2 -> 1: the kept query heads share one source kv group,
    and the target's kv head is that group's."""
    dst_cfg = Config(heads=2, kv_heads=1)
    src, out, _ = move(SRC, dst_cfg)
    q = head_source(src["layer_0/attn/q_einsum/w"], out["layer_0/attn/q_einsum/w"], 0)
    kv = head_source(src["layer_0/attn/kv_einsum/w"], out["layer_0/attn/kv_einsum/w"], 1)
    group = SRC.heads // SRC.kv_heads
    assert None not in q and None not in kv
    assert {s // group for s in q} == set(kv)
