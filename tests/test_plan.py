"""The transfer plan: planned from shapes, applied by one pure jittable program.

Covers issue 11's items 1-4: ``dpiat_jax.plan`` from ``jax.ShapeDtypeStruct`` sources,
``jax.jit(plan.apply)`` with the fresh init inside the program and ``out_shardings``,
``transfer`` inside a user's ``jax.jit``, the cached compiled apply, buffers (the result
shares none with the source and none twice; donating it leaves the source usable), the
non-finite policy under ``jit``, and JSON.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax
from dpiat_jax import TransferPlan

X = jnp.ones((1, 8, 8, 3))


class Net(nn.Module):
    widths: tuple = (8, 8)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.widths[0], (3, 3), name="stem")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        for i, w in enumerate(self.widths[1:]):
            x = nn.Conv(w, (3, 3), name=f"conv{i}")(nn.relu(x))
        return nn.Dense(4, name="head")(x.mean((1, 2)))


class Tied(nn.Module):
    """A target whose output layer reuses the embedding (weight tying)."""

    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(16, 8, name="embed")
        x = nn.Dense(8, name="mix")(embed(tokens))
        return embed.attend(x)


SRC, DST = Net((8, 8)), Net((8, 16, 8))


@pytest.fixture(scope="module")
def src_vars():
    variables = SRC.init(jax.random.key(0), X)
    # Distinct values in batch statistics too, so a copy is told apart from a fresh one.
    return jax.tree.map(lambda a: a + 0.5, variables)


def pointers(tree) -> list[int]:
    return [a.unsafe_buffer_pointer() for a in jax.tree.leaves(tree)]


# ----------------------------------------------------------------------------------
# Planning from shapes.


def test_plan_from_shapes_matches_match_and_transfer(src_vars):
    abstract = jax.eval_shape(lambda: src_vars)
    plan = dpiat_jax.plan(SRC, DST, src_variables=abstract)
    report = dpiat_jax.match(src_vars, SRC, DST, sample_input=X)
    assert plan.report == report
    assert str(plan) == str(report)
    assert plan.coverage == report.param_coverage
    # Every target tensor is either moved (once) or fresh.
    moved = [m.dst for m in plan.moves]
    assert len(moved) == len(set(moved))
    assert set(moved) | set(plan.fresh) == set(plan.target)
    stem = next(m for m in plan.moves if m.dst == ("params", "stem", "kernel"))
    assert stem.src == ("params", "stem", "kernel") and stem.overlap == 3 * 3 * 3 * 8
    assert plan.matcher == "dp" and plan.rule.name == "clip" and plan.on_nonfinite == "warn"
    # From shapes and the source's own input inference, the same plan as from arrays.
    from_arrays = dpiat_jax.plan(SRC, DST, src_variables=src_vars, sample_input=X)
    assert from_arrays.moves == plan.moves and from_arrays.report == plan.report
    # Without variables the input is required, and named.
    with pytest.raises(ValueError, match="sample_input="):
        dpiat_jax.plan(SRC, DST)
    bare = dpiat_jax.plan(SRC, DST, sample_input=jax.ShapeDtypeStruct(X.shape, X.dtype))
    assert bare.moves == plan.moves


def test_plan_checks_source_shapes(src_vars):
    wrong = jax.eval_shape(lambda: Net((16, 8)).init(jax.random.key(0), X))
    with pytest.raises(ValueError, match="src_variables") as info:
        dpiat_jax.plan(SRC, DST, src_variables=wrong, sample_input=X)
    assert "params/stem/kernel" in str(info.value)
    plan = dpiat_jax.plan(SRC, DST, src_variables=src_vars)
    with pytest.raises(ValueError, match="does not fit the plan") as info:
        plan.apply(jax.tree.map(np.asarray, Net((16, 8)).init(jax.random.key(0), X)))
    assert "params/stem/kernel" in str(info.value)


# ----------------------------------------------------------------------------------
# Applying: jit, out_shardings, the cache, transfer inside jit.


def test_jitted_apply_equals_transfer(src_vars):
    plan = dpiat_jax.plan(SRC, DST, src_variables=src_vars)
    rng = jax.random.key(3)
    expected = dpiat_jax.transfer(src_vars, SRC, DST, rng)
    chex.assert_trees_all_equal(plan.apply(src_vars, rng), expected)
    chex.assert_trees_all_equal(jax.jit(plan.apply)(src_vars, rng), expected)
    # Untouched tensors are the compiled fresh init of the same rng.
    fresh = flax.traverse_util.flatten_dict(jax.jit(DST.init)(rng, X))
    got = flax.traverse_util.flatten_dict(expected)
    partial = 0
    for move in plan.moves:  # clip: outside the moved slices, the fresh init
        outside = np.ones(move.dst_shape, bool)
        outside[move.slices[1]] = False
        partial += outside.any()
        np.testing.assert_array_equal(got[move.dst][outside], fresh[move.dst][outside])
    assert partial
    np.testing.assert_array_equal(
        expected["params"]["stem"]["kernel"], src_vars["params"]["stem"]["kernel"]
    )


def test_jit_out_shardings_places_the_result(src_vars):
    plan = dpiat_jax.plan(SRC, DST, src_variables=src_vars)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    out = jax.jit(plan.apply, out_shardings=sharding)(src_vars, jax.random.key(1))
    assert all(a.sharding == sharding for a in jax.tree.leaves(out))
    eager = plan.apply(src_vars, jax.random.key(1), out_shardings=sharding)
    assert all(a.sharding == sharding for a in jax.tree.leaves(eager))
    with pytest.raises(ValueError, match="out_shardings"):
        plan.apply(src_vars, jax.random.key(1), out_shardings={"x": sharding})


def test_repeated_apply_compiles_once(src_vars):
    plan = dpiat_jax.plan(SRC, DST, src_variables=src_vars)
    first = plan.apply(src_vars, jax.random.key(1))
    assert len(plan.compiled) == 1
    (program,) = plan.compiled.values()
    size = program._cache_size()
    second = plan.apply(jax.tree.map(lambda a: a * 2, src_vars), jax.random.key(2))
    assert program._cache_size() == size == 1
    assert len(plan.compiled) == 1
    np.testing.assert_array_equal(
        second["params"]["stem"]["kernel"], 2 * first["params"]["stem"]["kernel"]
    )


def test_transfer_inside_a_users_jit(src_vars):
    @jax.jit
    def step(variables, rng):
        out = dpiat_jax.transfer(variables, SRC, DST, rng, sample_input=X)
        return jax.tree.map(lambda a: a * 1, out)

    rng = jax.random.key(5)
    chex.assert_trees_all_equal(
        step(src_vars, rng), dpiat_jax.transfer(src_vars, SRC, DST, rng, sample_input=X)
    )
    # Params only, inferred input, frozen: the same forms as eagerly.
    params = jax.jit(lambda p, r: dpiat_jax.transfer(p, SRC, DST, r))(src_vars["params"], rng)
    assert set(params) == set(DST.init(rng, X)["params"])


def test_tensor_rules_under_jit(src_vars):
    for rule in ("magnitude", "uniform", "full"):
        plan = dpiat_jax.plan(SRC, DST, src_variables=src_vars, tensor_rule=rule)
        eager = dpiat_jax.transfer(src_vars, SRC, DST, jax.random.key(2), tensor_rule=rule)
        chex.assert_trees_all_equal(jax.jit(plan.apply)(src_vars, jax.random.key(2)), eager)
    magnitude = dpiat_jax.plan(SRC, Net((4, 4)), src_variables=src_vars, tensor_rule="magnitude")
    assert magnitude.channel_groups and any(m.selections for m in magnitude.moves)


# ----------------------------------------------------------------------------------
# Buffers and donation.


def test_result_shares_no_buffer_with_the_source(src_vars):
    # Identical architectures: every tensor is copied whole (the case jit would forward).
    for apply in (
        lambda v: dpiat_jax.transfer(v, SRC, SRC, jax.random.key(0)),
        lambda v: jax.jit(dpiat_jax.plan(SRC, SRC, src_variables=v).apply)(v),
    ):
        out = apply(src_vars)
        chex.assert_trees_all_equal(out, src_vars)
        src_ptrs, out_ptrs = pointers(src_vars), pointers(out)
        assert not set(src_ptrs) & set(out_ptrs)
        assert len(set(out_ptrs)) == len(out_ptrs)


def test_one_source_into_several_targets_gives_distinct_buffers():
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4, name="a")(x) + nn.Dense(4, name="b")(x)

    src = nn.Dense(4)
    variables = src.init(jax.random.key(0), jnp.ones((1, 4)))
    plan = dpiat_jax.plan(src, Twice(), src_variables=variables, matcher="flat")
    out = plan.apply(variables)
    leaves = jax.tree.leaves(out)
    ptrs = pointers(out)
    assert len(set(ptrs)) == len(ptrs) == len(leaves)
    assert not set(ptrs) & set(pointers(variables))


def test_weight_tying_of_the_target_is_its_own_init():
    tokens = jnp.zeros((1, 5), jnp.int32)
    src_vars = Tied().init(jax.random.key(0), tokens)
    out = dpiat_jax.transfer(src_vars, Tied(), Tied(), jax.random.key(1))
    chex.assert_trees_all_equal(out, src_vars)
    assert not set(pointers(out)) & set(pointers(src_vars))


def test_donating_the_result_leaves_the_source_usable(src_vars):
    optax = pytest.importorskip("optax")
    out = dpiat_jax.transfer(src_vars, SRC, SRC, jax.random.key(0))
    params = out["params"]
    tx = optax.sgd(0.1)
    state = tx.init(params)

    def loss(p):
        return sum(jnp.sum(a**2) for a in jax.tree.leaves(p))

    @jax.jit
    def update(p, s):
        grads = jax.grad(loss)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    step = jax.jit(update, donate_argnums=(0, 1))
    new_params, state = step(params, state)
    new_params, state = step(new_params, state)
    assert all(a.is_deleted() for a in jax.tree.leaves(params))
    # The source was not donated with the result: every array is alive and unchanged.
    assert not any(a.is_deleted() for a in jax.tree.leaves(src_vars))
    np.testing.assert_allclose(
        np.asarray(new_params["stem"]["kernel"]),
        np.asarray(src_vars["params"]["stem"]["kernel"]) * 0.8**2,
        rtol=1e-6,
    )
    y = SRC.apply(src_vars, X)
    assert np.all(np.isfinite(np.asarray(y)))


# ----------------------------------------------------------------------------------
# Non-finite sources under jit.


def nan_source(src_vars):
    kernel = src_vars["params"]["conv0"]["kernel"]
    params = {**src_vars["params"], "conv0": {**src_vars["params"]["conv0"]}}
    params["conv0"]["kernel"] = kernel.at[0, 0, 0, 0].set(jnp.nan)
    return {**src_vars, "params": params}


def test_nonfinite_policy_under_jit(src_vars):
    bad = nan_source(src_vars)
    warn = dpiat_jax.plan(SRC, DST, src_variables=bad)
    with pytest.warns(RuntimeWarning, match="params/conv0/kernel"):
        jax.block_until_ready(jax.jit(warn.apply)(bad, jax.random.key(0)))
        jax.effects_barrier()
    with warnings.catch_warnings():  # a finite source is silent
        warnings.simplefilter("error")
        jax.block_until_ready(jax.jit(warn.apply)(src_vars, jax.random.key(0)))
        jax.effects_barrier()

    raising = dpiat_jax.plan(SRC, DST, src_variables=bad, on_nonfinite="raise")
    with pytest.raises(Exception, match="params/conv0/kernel") as info:
        jax.block_until_ready(jax.jit(raising.apply)(bad, jax.random.key(0)))
        jax.effects_barrier()
    assert "on_nonfinite" in str(info.value)
    with pytest.raises(FloatingPointError, match="params/conv0/kernel"):
        raising.apply(bad, jax.random.key(0))  # eagerly, the exception itself

    ignoring = dpiat_jax.plan(SRC, DST, src_variables=bad, on_nonfinite="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = jax.jit(ignoring.apply)(bad, jax.random.key(0))
        jax.block_until_ready(out)
        jax.effects_barrier()
    assert np.isnan(np.asarray(out["params"]["conv0"]["kernel"])).any()


def test_nonfinite_warning_from_transfer_inside_jit(src_vars):
    bad = nan_source(src_vars)
    fn = jax.jit(lambda v, r: dpiat_jax.transfer(v, SRC, DST, r, sample_input=X))
    with pytest.warns(RuntimeWarning, match="params/conv0/kernel"):
        jax.block_until_ready(fn(bad, jax.random.key(0)))
        jax.effects_barrier()


# ----------------------------------------------------------------------------------
# JSON.


def test_json_round_trip(src_vars):
    plan = dpiat_jax.plan(SRC, DST, src_variables=src_vars, tensor_rule="magnitude")
    again = TransferPlan.from_json(plan.to_json(), DST)
    assert again.moves == plan.moves and again.channel_groups == plan.channel_groups
    assert again.report == plan.report and str(again) == str(plan)
    assert again.sources == plan.sources and again.target == plan.target
    rng = jax.random.key(4)
    chex.assert_trees_all_equal(again.apply(src_vars, rng), plan.apply(src_vars, rng))
    with pytest.raises(ValueError, match="dst_def"):
        TransferPlan.from_json(plan.to_json(), Net((8, 8)))


def test_json_with_a_user_rule_needs_it_again(src_vars):
    def halves(src, dst, rng):
        return dpiat_jax.clip(src, dst) * 0.5

    plan = dpiat_jax.plan(SRC, DST, src_variables=src_vars, tensor_rule=halves)
    text = plan.to_json()
    with pytest.raises(ValueError, match="tensor_rule=halves"):
        TransferPlan.from_json(text, DST)
    again = TransferPlan.from_json(text, DST, tensor_rule=halves)
    chex.assert_trees_all_equal(again.apply(src_vars), plan.apply(src_vars))


# ----------------------------------------------------------------------------------
# Imports.


def test_import_does_not_import_flax_nnx_or_optax():
    code = "import sys, dpiat_jax; print('flax.nnx' in sys.modules, 'optax' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False"]


def test_json_round_trip_with_several_positional_inputs():
    import flax.linen as nn
    import jax.numpy as jnp

    class TwoInputs(nn.Module):
        width: int

        @nn.compact
        def __call__(self, x, mask):
            return nn.Dense(self.width)(x) * mask

    x, mask = jnp.zeros((1, 3)), jnp.ones((1, 1))
    p = dpiat_jax.plan(TwoInputs(4), TwoInputs(8), sample_input=dpiat_jax.Inputs(x, mask))
    again = dpiat_jax.TransferPlan.from_json(p.to_json(), TwoInputs(8))
    assert again.moves == p.moves
    assert isinstance(again.sample_input, dpiat_jax.Inputs)
    assert [a.shape for a in again.sample_input.args] == [(1, 3), (1, 1)]
    src = TwoInputs(4).init(jax.random.key(0), x, mask)
    chex.assert_trees_all_equal(
        again.apply(src, jax.random.key(1)), p.apply(src, jax.random.key(1))
    )
