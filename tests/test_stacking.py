"""Layers stacked by nn.scan / nn.vmap are unstacked, aligned step by step, restacked."""

from __future__ import annotations

import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax
from dpiat_jax.layers import layers
from dpiat_jax.stacking import inserted_axes
from dpiat_jax.structure import StructureWarning
from dpiat_jax.trace.linen import trace

X = jnp.ones((2, 8))
KEY = jax.random.key(0)


class Block(nn.Module):
    d: int

    @nn.compact
    def __call__(self, x, _=None):
        h = nn.Dense(self.d, name="fc")(nn.LayerNorm()(x))
        return x + nn.Dense(x.shape[-1], name="out")(nn.relu(h)), None


class Scanned(nn.Module):
    n: int
    d: int = 32
    axis: int = 0

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(16)(x)
        scan = nn.scan(
            Block,
            variable_axes={"params": self.axis},
            split_rngs={"params": True},
            length=self.n,
        )
        x, _ = scan(self.d, name="layers")(x, None)
        return nn.Dense(3, name="head")(x)


class Unrolled(nn.Module):
    n: int
    d: int = 32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(16)(x)
        for i in range(self.n):
            x, _ = Block(self.d, name=f"layers_{i}")(x)
        return nn.Dense(3, name="head")(x)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="out")(nn.relu(nn.Dense(8, name="hid")(x)))


class Ensemble(nn.Module):
    k: int

    @nn.compact
    def __call__(self, x):
        members = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.k,
        )
        return members(name="members")(x).mean(0)


def _init(model: nn.Module, seed: int = 0) -> dict:
    return model.init(jax.random.key(seed), X)


def test_inserted_axes():
    assert inserted_axes((4, 3, 8), (3, 8)) == [(0, 4)]
    assert inserted_axes((3, 4, 8), (3, 8)) == [(1, 4)]
    assert inserted_axes((3, 8), (3, 8)) == []
    assert inserted_axes((3, 3), (3,)) == [(0, 3), (1, 3)]


def test_scanned_module_is_one_layer_per_step():
    root, _ = trace(Scanned(3), None, (X,), {})
    names = [layer.name for layer in layers(root)]
    assert names[:4] == ["Dense_0", "layers[0]/LayerNorm_0", "layers[0]/fc", "layers[0]/out"]
    assert names[-1] == "head" and len(names) == 2 + 3 * 3
    fc = next(x for x in layers(root) if x.name == "layers[2]/fc")
    assert fc.shape == (16, 32) and fc.stack.index == 2 and fc.num_params() == 16 * 32 + 32


def test_scanned_identity_is_exact_and_owns_its_buffers():
    variables = _init(Scanned(4), 1)
    out = dpiat_jax.transfer(variables, Scanned(4), Scanned(4), jax.random.key(0), sample_input=X)
    chex.assert_trees_all_equal(out, variables)


@pytest.mark.parametrize("n_dst", [8, 2])
def test_scan_depth_change_seeds_every_target_step(n_dst):
    src = Scanned(4)
    variables = _init(src, 1)
    plan = dpiat_jax.plan(src, Scanned(n_dst), sample_input=X)
    assert plan.report.layers_transferred == plan.report.layers_total
    out = plan.apply(variables, jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(out, _init(Scanned(n_dst)))
    src_steps = {
        tuple(np.asarray(k).ravel()[:4]) for k in variables["params"]["layers"]["fc"]["kernel"]
    }
    for step in out["params"]["layers"]["fc"]["kernel"]:  # every step is some source step
        assert tuple(np.asarray(step).ravel()[:4]) in src_steps
    assert np.isfinite(np.asarray(Scanned(n_dst).apply(out, X))).all()


def test_scan_width_change_centres_each_step():
    variables = _init(Scanned(2, 32), 1)
    out = dpiat_jax.transfer(
        variables, Scanned(2, 32), Scanned(2, 64), jax.random.key(0), sample_input=X
    )
    kernel = out["params"]["layers"]["fc"]["kernel"]
    assert kernel.shape == (2, 16, 64)
    np.testing.assert_array_equal(
        kernel[1, :, 16:48], variables["params"]["layers"]["fc"]["kernel"][1]
    )


def test_scan_on_another_axis():
    variables = _init(Scanned(3, axis=1), 1)
    assert variables["params"]["layers"]["fc"]["kernel"].shape == (16, 3, 32)
    out = dpiat_jax.transfer(
        variables, Scanned(3, axis=1), Unrolled(3), jax.random.key(0), sample_input=X
    )
    np.testing.assert_array_equal(
        out["params"]["layers_1"]["fc"]["kernel"],
        variables["params"]["layers"]["fc"]["kernel"][:, 1],
    )


def test_scan_to_unrolled_and_back():
    scanned = _init(Scanned(4), 1)
    out = dpiat_jax.transfer(scanned, Scanned(4), Unrolled(4), jax.random.key(0), sample_input=X)
    for i in range(4):
        np.testing.assert_array_equal(
            out["params"][f"layers_{i}"]["out"]["kernel"],
            scanned["params"]["layers"]["out"]["kernel"][i],
        )
    unrolled = _init(Unrolled(3), 2)
    back = dpiat_jax.transfer(unrolled, Unrolled(3), Scanned(3), jax.random.key(0), sample_input=X)
    for i in range(3):
        np.testing.assert_array_equal(
            back["params"]["layers"]["fc"]["kernel"][i],
            unrolled["params"][f"layers_{i}"]["fc"]["kernel"],
        )


def test_scanned_apply_under_jit():
    plan = dpiat_jax.plan(Scanned(2), Scanned(4), sample_input=X)
    variables = _init(Scanned(2), 1)
    eager = plan.apply(variables, jax.random.key(3))
    jitted = jax.jit(plan.apply)(variables, jax.random.key(3))
    chex.assert_trees_all_close(eager, jitted)


def test_plan_json_round_trip_keeps_step_indices():
    plan = dpiat_jax.plan(Scanned(2), Scanned(3), sample_input=X)
    again = dpiat_jax.TransferPlan.from_json(plan.to_json(), Scanned(3))
    assert again.moves == plan.moves
    assert any(m.dst_index is not None for m in again.moves)


def test_single_model_seeds_every_ensemble_member():
    single = _init(MLP(), 1)
    out = dpiat_jax.transfer(single, MLP(), Ensemble(3), jax.random.key(0), sample_input=X)
    for k in range(3):
        np.testing.assert_array_equal(
            out["params"]["members"]["hid"]["kernel"][k], single["params"]["hid"]["kernel"]
        )
    report = dpiat_jax.match(single, MLP(), Ensemble(3), sample_input=X)
    assert report.param_coverage == 1.0
    assert ("hid", "members[*]/hid", 1.0) in report.pairs


def test_ensemble_seeds_single_model_from_first_member_and_larger_ensembles():
    ensemble = _init(Ensemble(3), 2)
    members = ensemble["params"]["members"]
    out = dpiat_jax.transfer(ensemble, Ensemble(3), MLP(), jax.random.key(0), sample_input=X)
    np.testing.assert_array_equal(out["params"]["hid"]["kernel"], members["hid"]["kernel"][0])
    same = dpiat_jax.transfer(ensemble, Ensemble(3), Ensemble(3), jax.random.key(0), sample_input=X)
    chex.assert_trees_all_equal(same, ensemble)
    more = dpiat_jax.transfer(ensemble, Ensemble(3), Ensemble(5), jax.random.key(0), sample_input=X)
    kernels = more["params"]["members"]["out"]["kernel"]
    for k in range(3):
        np.testing.assert_array_equal(kernels[k], members["out"]["kernel"][k])
    np.testing.assert_array_equal(kernels[4], members["out"]["kernel"][0])


def _nnx_model(n: int, seed: int):
    from flax import nnx

    class NnxBlock(nnx.Module):
        def __init__(self, d: int, rngs: nnx.Rngs):
            self.fc = nnx.Linear(d, d, rngs=rngs)
            self.out = nnx.Linear(d, d, rngs=rngs)

        def __call__(self, x):
            return x + self.out(nnx.relu(self.fc(x)))

    class NnxScanned(nnx.Module):
        def __init__(self, n: int, rngs: nnx.Rngs):
            self.inp = nnx.Linear(8, 16, rngs=rngs)

            @nnx.split_rngs(splits=n)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def create(rngs):
                return NnxBlock(16, rngs)

            self.layers = create(rngs)
            self.head = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def step(x, block):
                return block(x)

            return self.head(step(self.inp(x), self.layers))

    return NnxScanned(n, nnx.Rngs(seed))


def test_nnx_scan_is_unstacked_and_restacked():
    src, dst = _nnx_model(4, 0), _nnx_model(8, 1)
    report = dpiat_jax.match(src, None, dst, sample_input=X)
    assert ("layers[3]/fc", "layers[7]/fc", 1.0) in report.pairs
    assert report.layers_transferred == report.layers_total
    out = dpiat_jax.transfer(src, None, dst, jax.random.key(0), sample_input=X)
    source = np.asarray(src.layers.fc.kernel[...])
    grown = np.asarray(out.layers.fc.kernel[...])
    assert grown.shape == (8, 16, 16)
    for step in grown:  # every target step holds one of the source's steps
        assert any(np.array_equal(step, s) for s in source)
    assert out(X).shape == (2, 3)
    same = dpiat_jax.transfer(src, None, _nnx_model(4, 5), jax.random.key(0), sample_input=X)
    np.testing.assert_array_equal(
        np.asarray(same.layers.out.kernel[...]), np.asarray(src.layers.out.kernel[...])
    )


# ------------------------------------------------------------- a scan inside a scan


class InnerStep(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return x + nn.Dense(x.shape[-1], name="fc")(x), None


class OuterStep(nn.Module):
    inner: int

    @nn.compact
    def __call__(self, x, _):
        steps = nn.scan(
            InnerStep, variable_axes={"params": 0}, split_rngs={"params": True}, length=self.inner
        )
        return steps(name="inner")(x, None)[0], None


class NestedScan(nn.Module):
    outer: int
    inner: int

    @nn.compact
    def __call__(self, x):
        steps = nn.scan(
            OuterStep, variable_axes={"params": 0}, split_rngs={"params": True}, length=self.outer
        )
        return steps(self.inner, name="layers")(x, None)[0]


def test_nested_scan_unstacks_the_outer_steps_and_names_the_inner_axis():
    root, _ = trace(NestedScan(3, 2), None, (X,), {})
    (fc,) = {x.stack.root: x for x in layers(root)}.values()
    assert fc.stack.root == ("layers",) and fc.stack.size == 3
    assert fc.tensors["params"]["kernel"].shape == (2, 8, 8)  # one outer step
    assert set(fc.stack.nested) == {("params/kernel", 0), ("params/bias", 0)}


def test_nested_scan_with_equal_inner_steps_aligns_outer_steps_silently():
    src, dst = NestedScan(2, 2), NestedScan(4, 2)
    variables = src.init(KEY, X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        out = dpiat_jax.transfer(variables, src, dst, KEY, sample_input=X)
    got = np.asarray(out["params"]["layers"]["inner"]["fc"]["kernel"])
    held = np.asarray(variables["params"]["layers"]["inner"]["fc"]["kernel"])
    for step in range(4):  # every outer step seeded by a whole source step
        assert any(np.array_equal(got[step], held[s]) for s in range(2)), step


def test_nested_scan_whose_inner_steps_differ_is_named():
    src = NestedScan(2, 2)
    with pytest.warns(StructureWarning, match=r"params/layers/inner/fc/kernel \(a scan inside"):
        dpiat_jax.plan(src, NestedScan(2, 4), sample_input=X)
