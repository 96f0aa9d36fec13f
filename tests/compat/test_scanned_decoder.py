"""Transfers between MaxText/T5X-style decoders (:mod:`compat.scanned_decoder`, issue 12).

The layers are stacked by ``nn.scan`` on parameter axis 1 and rematerialised, or
unrolled; attention kernels have a heads axis, optionally fused as
``(d, 3, heads, head_dim)``; the MLP's gate and up projections share one kernel.
Checked: identity, depth both ways (every target step seeded, each from one source step
whole), scan <-> unrolled both ways, width and heads both ways (whole heads), fused
parts landing in their own parts, and the target running with the result.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import chex
import jax
import numpy as np
import pytest

import dpiat_jax
from compat.checks import (
    assert_finite,
    assert_fresh_form,
    key,
    marked,
    part_landing,
    random_like,
)
from compat.scanned_decoder import Config, Decoder, tokens
from dpiat_jax.structure import StructureWarning

X = tokens()
SMALL = Config()
LARGE = Config(d=64, heads=8, mlp=128)


def fresh(config: Config):
    """The abstract variables of the decoder's own init."""
    return jax.eval_shape(Decoder(config).init, jax.random.key(0), X)


@functools.cache
def variables(config: Config, seed: int = 0):
    """Trained-like variables (numpy draws; no compilation)."""
    return random_like(fresh(config), seed)


@functools.cache
def moved(src: Config, dst: Config):
    """``(plan, result)`` of a transfer from ``variables(src)``; no structure warning,
    and the result has the target's fresh form."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        the_plan = dpiat_jax.plan(
            Decoder(src), Decoder(dst), src_variables=variables(src), sample_input=X
        )
    out = the_plan.apply(variables(src), key(1))
    assert_fresh_form(out, fresh(dst))
    return the_plan, out


def runs(config: Config, out) -> None:
    """The target runs with the result, with finite logits."""
    logits = jax.jit(Decoder(config).apply)(out, X)
    assert logits.shape == (1, 12, config.vocab)
    assert_finite(logits)


def layer(params: dict, config: Config, i: int) -> dict:
    """Layer ``i``'s params as a tree of arrays, from a scanned (axis 1) or unrolled
    decoder."""
    if config.scan:
        return jax.tree.map(lambda a: np.take(np.asarray(a), i, axis=1), params["layers"])
    return jax.tree.map(np.asarray, params[f"layers_{i}"])


def same_layer(a: dict, b: dict) -> bool:
    """Whether two layers' params are equal, tensor by tensor."""
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def source_step(out: dict, dst: Config, i: int, src: Config) -> int | None:
    """The source layer that target layer ``i`` equals whole (all its tensors)."""
    target = layer(out["params"], dst, i)
    found = [
        j for j in range(src.layers) if same_layer(layer(variables(src)["params"], src, j), target)
    ]
    return found[0] if found else None


def test_identity_is_exact():
    model = Decoder(SMALL)
    out = dpiat_jax.transfer(variables(SMALL), model, model, key(0), sample_input=X)
    chex.assert_trees_all_equal(out, variables(SMALL))


@pytest.mark.parametrize(("src_layers", "dst_layers"), [(2, 4), (4, 2), (3, 5)])
def test_depth_change_seeds_every_target_step_from_one_source_step(src_layers, dst_layers):
    src = dataclasses.replace(SMALL, layers=src_layers)
    dst = dataclasses.replace(SMALL, layers=dst_layers)
    the_plan, out = moved(src, dst)
    report = the_plan.report
    assert not report.unmatched_dst, report.unmatched_dst
    assert report.layers_transferred == report.layers_total, report
    steps = [source_step(out, dst, i, src) for i in range(dst_layers)]
    assert None not in steps, steps
    assert steps == sorted(steps), steps  # layers keep their order
    assert len(set(steps)) == min(src_layers, dst_layers), steps
    runs(dst, out)


@pytest.mark.parametrize(("src_scan", "dst_scan"), [(True, False), (False, True)])
@pytest.mark.parametrize("layers", [(2, 2), (2, 4)], ids=["same-depth", "deeper"])
def test_scan_and_unrolled_layers_align_both_ways(src_scan, dst_scan, layers):
    src = dataclasses.replace(SMALL, scan=src_scan, layers=layers[0])
    dst = dataclasses.replace(SMALL, scan=dst_scan, layers=layers[1])
    the_plan, out = moved(src, dst)
    assert the_plan.report.layers_transferred == the_plan.report.layers_total
    steps = [source_step(out, dst, i, src) for i in range(dst.layers)]
    if layers[0] == layers[1]:
        assert steps == list(range(dst.layers)), steps
        chex.assert_trees_all_equal(
            out["params"]["token_embedder"], variables(src)["params"]["token_embedder"]
        )
    assert None not in steps and steps == sorted(steps), steps
    runs(dst, out)


def whole_heads(src: np.ndarray, dst: np.ndarray) -> list[int | None]:
    """Per target head of a ``(d, heads, head_dim)`` kernel, the source head whose
    values it holds on the centre rows both sides share (None: fresh)."""
    n = min(src.shape[0], dst.shape[0])
    s = src[(src.shape[0] - n) // 2 :][:n]
    t = dst[(dst.shape[0] - n) // 2 :][:n]
    return [
        next((h for h in range(s.shape[1]) if np.array_equal(t[:, j], s[:, h])), None)
        for j in range(t.shape[1])
    ]


@pytest.mark.parametrize(("src", "dst"), [(SMALL, LARGE), (LARGE, SMALL)], ids=["grow", "shrink"])
def test_width_and_heads_change_keeps_whole_heads(src, dst):
    the_plan, out = moved(src, dst)
    report = the_plan.report
    assert report.layers_transferred == report.layers_total, report
    assert all(s.rsplit("/", 1)[-1] == d.rsplit("/", 1)[-1] for s, d, _ in report.pairs)
    for i in range(dst.layers):
        source = layer(variables(src)["params"], src, i)["self_attention"]
        target = layer(out["params"], dst, i)["self_attention"]
        for name in ("query", "key", "value"):
            found = whole_heads(source[name]["kernel"], target[name]["kernel"])
            kept = [h for h in found if h is not None]
            assert len(kept) == min(src.heads, dst.heads), (name, found)
            assert kept == sorted(kept), (name, found)
    runs(dst, out)


@pytest.mark.parametrize(("src", "dst"), [(SMALL, LARGE), (LARGE, SMALL)], ids=["grow", "shrink"])
def test_fused_parts_land_in_their_own_parts(src, dst):
    """Query, key and value of a fused ``(d, 3, heads, head_dim)`` kernel, and gate and
    up of the ``(d, 2, mlp)`` kernel, each land in their own part."""
    src, dst = (dataclasses.replace(c, fused_qkv=True) for c in (src, dst))
    source = jax.tree.map(marked, variables(src))
    out = dpiat_jax.transfer(source, Decoder(src), Decoder(dst), key(2), sample_input=X)
    s, t = source["params"]["layers"], out["params"]["layers"]  # steps on axis 1
    qkv_s = s["self_attention"]["qkv_proj"]["kernel"]
    landing = part_landing(qkv_s.shape, t["self_attention"]["qkv_proj"]["kernel"], 2, 3)
    shared = dst.layers * min(src.d, dst.d) * min(src.heads, dst.heads) * src.head_dim
    np.testing.assert_array_equal(landing, np.diag([shared] * 3))
    wi_s, wi_t = s["mlp"]["wi"]["kernel"], t["mlp"]["wi"]["kernel"]
    landing = part_landing(wi_s.shape, wi_t, axis=2, parts=2)
    shared = dst.layers * min(src.d, dst.d) * min(src.mlp, dst.mlp)
    np.testing.assert_array_equal(landing, np.diag([shared] * 2))
    runs(dst, out)
