"""Channel consistency: one channel selection per channel space of the target.

A conv-BN-conv chain and a residual block, transferred to narrower copies with the
``magnitude`` rule: the output channels kept for a kernel are the ones kept in its
bias, in the norm after it, in the next layer's input dimension and in the branch it
is added to. Also: the channel graphs themselves, and that ``clip``, ``full`` and user
rules are untouched. Source values come from numpy, targets use ``rbg`` keys (fast
initialisers on CPU).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import dpiat_jax
from dpiat_jax.api import module_blocks, module_layers
from dpiat_jax.blocks import to_spec_tree
from dpiat_jax.channels import (
    call_order_channels,
    channel_selections,
    target_channels,
    trace_channels,
)
from dpiat_jax.matchers import align
from dpiat_jax.matching import layer_pairs
from dpiat_jax.tensors import TENSOR_RULES, clip, full, get_tensor_rule, magnitude, uniform
from dpiat_jax.variables import write_tensors

X = jnp.zeros((1, 6, 6, 3), jnp.float32)


def key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def random_variables(module: nn.Module, x, seed: int) -> dict:
    """Variables with ``module``'s structure filled with numpy normals (var > 0)."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    flat = {}
    for k, v in traverse_util.flatten_dict(abstract).items():
        values = rng.normal(size=v.shape).astype(np.float32)
        flat[k] = np.abs(values) + 0.1 if k[-1] == "var" else values
    return traverse_util.unflatten_dict(flat)


def f32(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


def as_jax(tree):
    return jax.tree.map(jnp.asarray, tree)


def staged_transfer(src_def, src_vars, dst_def, dst_vars, x, rule, channels="jaxpr"):
    """The transfer pipeline by its public stages, with a chosen channel graph."""
    src_blocks = module_blocks(src_def, src_vars, sample_input=x)
    dst_blocks = module_blocks(dst_def, dst_vars, sample_input=x)
    pairs = layer_pairs(
        align(to_spec_tree(src_blocks), to_spec_tree(dst_blocks)), src_blocks, dst_blocks
    )
    rule = get_tensor_rule(rule)
    if channels == "jaxpr":
        graph = trace_channels(dst_def, dst_vars, x)
    elif channels == "call order":
        graph = call_order_channels([p.dst for p in pairs])
    else:
        graph = None
    out, _, _ = write_tensors(pairs, dst_vars, rule, key(5), channels=graph)
    return out, pairs


def top(norms: np.ndarray, k: int) -> np.ndarray:
    """The k largest, in index order (no ties in these tests)."""
    return np.sort(np.argsort(-norms, kind="stable")[:k])


def l1(x: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(x).sum(axis=tuple(d for d in range(x.ndim) if d != axis))


# ----------------------------------------------------------------------------------
# A conv-BN-conv chain.


class Chain(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.width, (3, 3), name="conv1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(x))
        return nn.Conv(4, (3, 3), name="conv2")(x)


KEPT = [1, 3, 5, 7]  # conv1's output channels with the largest L1 norms


@pytest.fixture(scope="module")
def chain():
    src = random_variables(Chain(8), X, seed=0)
    p, s = src["params"], src["batch_stats"]
    # conv1: odd output channels are large; every other tensor of the space prefers the
    # even channels, so ranking each tensor on its own would keep a different subset.
    p["conv1"]["kernel"] = np.abs(p["conv1"]["kernel"]) * np.array([1, 9, 2, 8, 3, 7, 0.5, 6])
    even = np.array([50.0, 0, 50, 0, 50, 0, 50, 0])
    p["conv1"]["bias"] = p["conv1"]["bias"] * 0.01 + even
    p["bn"]["scale"] = p["bn"]["scale"] * 0.01 + even
    s["bn"]["var"] = s["bn"]["var"] * 0.01 + even
    p["conv2"]["kernel"] = p["conv2"]["kernel"] * 0.01 + even[:, None]
    return f32(src)


def check_chain(out, src):
    p, s, op, os_ = src["params"], src["batch_stats"], out["params"], out["batch_stats"]
    np.testing.assert_array_equal(op["conv1"]["kernel"], p["conv1"]["kernel"][..., KEPT])
    np.testing.assert_array_equal(op["conv1"]["bias"], p["conv1"]["bias"][KEPT])
    for name in ("scale", "bias"):
        np.testing.assert_array_equal(op["bn"][name], p["bn"][name][KEPT])
    for name in ("mean", "var"):
        np.testing.assert_array_equal(os_["bn"][name], s["bn"][name][KEPT])
    # conv2 keeps its 4 outputs; its input dimension takes conv1's channels.
    np.testing.assert_array_equal(op["conv2"]["kernel"], p["conv2"]["kernel"][:, :, KEPT, :])


def test_chain_magnitude_through_transfer(chain):
    out = dpiat_jax.transfer(
        as_jax(chain), Chain(8), Chain(4), key(1), sample_input=X, tensor_rule="magnitude"
    )
    check_chain(out, chain)


@pytest.mark.parametrize("graph", ["jaxpr", "call order"])
def test_chain_magnitude_with_either_graph(chain, graph):
    fresh = Chain(4).init(key(1), X)
    out, _ = staged_transfer(Chain(8), as_jax(chain), Chain(4), fresh, X, "magnitude", graph)
    check_chain(out, chain)


def test_plain_magnitude_ranks_each_tensor_alone(chain):
    # The per-tensor rule (no channel graph: what each tensor would pick on its own)
    # keeps the even channels for the bias: the case channel consistency fixes.
    bias = magnitude(jnp.asarray(chain["params"]["conv1"]["bias"]), jnp.zeros(4))
    np.testing.assert_array_equal(bias, chain["params"]["conv1"]["bias"][[0, 2, 4, 6]])


# ----------------------------------------------------------------------------------
# A residual block with a projection shortcut.


class Residual(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        bn = lambda name: nn.BatchNorm(use_running_average=True, name=name)  # noqa: E731
        x = nn.relu(bn("bn0")(nn.Conv(6, (3, 3), name="stem")(x)))
        h = nn.relu(bn("bn_a")(nn.Conv(self.width, (3, 3), name="conv_a")(x)))
        h = bn("bn_b")(nn.Conv(self.width, (3, 3), name="conv_b")(h))
        s = bn("bn_s")(nn.Conv(self.width, (1, 1), name="conv_s")(x))
        y = nn.relu(h + s)
        return nn.Conv(5, (3, 3), name="conv_out")(y)


@pytest.fixture(scope="module")
def residual():
    src = random_variables(Residual(12), X, seed=1)
    p = src["params"]
    # The two branch outputs prefer different channels; bn_s's bias prefers yet others.
    p["conv_b"]["kernel"] = p["conv_b"]["kernel"] * np.linspace(0.2, 3.0, 12)
    p["conv_s"]["kernel"] = p["conv_s"]["kernel"] * np.linspace(3.0, 0.2, 12) ** 2
    p["bn_s"]["bias"] = p["bn_s"]["bias"] + 40.0 * (np.arange(12) % 3 == 0)
    return f32(src)


def normalised_sum(*norms: np.ndarray) -> np.ndarray:
    return sum(n / n.mean() for n in norms)


def test_residual_branches_keep_one_subset(residual):
    fresh = Residual(7).init(key(2), X)
    out, pairs = staged_transfer(Residual(12), as_jax(residual), Residual(7), fresh, X, "magnitude")
    assert [p.dst.name for p in pairs] == [p.src.name for p in pairs]  # matched in order
    p, s, op, os_ = residual["params"], residual["batch_stats"], out["params"], out["batch_stats"]
    kept_a = top(l1(p["conv_a"]["kernel"], 3), 7)
    kept = top(normalised_sum(l1(p["conv_b"]["kernel"], 3), l1(p["conv_s"]["kernel"], 3)), 7)
    # Each branch ranked alone would keep a different subset: the sum decides.
    assert set(kept) != set(top(l1(p["conv_b"]["kernel"], 3), 7))
    assert set(kept) != set(top(l1(p["conv_s"]["kernel"], 3), 7))
    np.testing.assert_array_equal(op["conv_a"]["kernel"], p["conv_a"]["kernel"][..., kept_a])
    np.testing.assert_array_equal(op["bn_a"]["scale"], p["bn_a"]["scale"][kept_a])
    np.testing.assert_array_equal(
        op["conv_b"]["kernel"], p["conv_b"]["kernel"][:, :, kept_a][..., kept]
    )
    np.testing.assert_array_equal(op["conv_s"]["kernel"], p["conv_s"]["kernel"][..., kept])
    for conv in ("conv_b", "conv_s"):
        np.testing.assert_array_equal(op[conv]["bias"], p[conv]["bias"][kept])
    for bn in ("bn_b", "bn_s"):
        for name in ("scale", "bias"):
            np.testing.assert_array_equal(op[bn][name], p[bn][name][kept])
        for name in ("mean", "var"):
            np.testing.assert_array_equal(os_[bn][name], s[bn][name][kept])
    np.testing.assert_array_equal(op["conv_out"]["kernel"], p["conv_out"]["kernel"][:, :, kept])
    # Unchanged widths are copied as they are.
    np.testing.assert_array_equal(op["stem"]["kernel"], p["stem"]["kernel"])


def test_residual_function_kept_when_the_dropped_channels_are_dead(residual):
    # Make the channels magnitude drops unused downstream (zero weights in the consumers'
    # input dimensions): then the narrower target computes exactly the source's function,
    # which holds only if every member of a space keeps the same channels.
    src = jax.tree.map(np.copy, residual)
    p = src["params"]
    kept_a = top(l1(p["conv_a"]["kernel"], 3), 7)
    p["conv_b"]["kernel"][:, :, np.setdiff1d(np.arange(12), kept_a)] = 0.0
    kept = top(normalised_sum(l1(p["conv_b"]["kernel"], 3), l1(p["conv_s"]["kernel"], 3)), 7)
    p["conv_out"]["kernel"][:, :, np.setdiff1d(np.arange(12), kept)] = 0.0
    fresh = Residual(7).init(key(2), X)
    out, _ = staged_transfer(Residual(12), as_jax(src), Residual(7), fresh, X, "magnitude")
    x = jax.random.normal(jax.random.key(0), X.shape)
    np.testing.assert_allclose(
        Residual(7).apply(out, x), Residual(12).apply(as_jax(src), x), rtol=1e-4, atol=1e-4
    )


def test_residual_graph_spaces():
    graph = trace_channels(Residual(7), jax.eval_shape(Residual(7).init, key(0), X), X)
    space = graph.space_of(("params", "conv_b", "kernel"), 3)
    members = set(graph.members(space))
    for conv in ("conv_b", "conv_s"):
        assert (("params", conv, "kernel"), 3) in members
        assert (("params", conv, "bias"), 0) in members
    for bn in ("bn_b", "bn_s"):
        assert {(("params", bn, "scale"), 0), (("batch_stats", bn, "var"), 0)} <= members
    assert (("params", "conv_out", "kernel"), 2) in members
    assert len(members) == 2 * 2 + 2 * 4 + 1
    # Producers: the two kernels' output dimensions. Conv windows are no channels.
    producers = {m for m in members if graph.producers[m[0]][m[1]]}
    assert producers == {(("params", "conv_b", "kernel"), 3), (("params", "conv_s", "kernel"), 3)}
    assert graph.spaces[("params", "conv_b", "kernel")][:2] == (None, None)
    # The stem's output feeds conv_a, conv_s and bn0: one space, not the residual's.
    stem = graph.space_of(("params", "stem", "kernel"), 3)
    assert stem == graph.space_of(("params", "conv_s", "kernel"), 2)
    assert stem == graph.space_of(("params", "conv_a", "kernel"), 2) != space


# ----------------------------------------------------------------------------------
# The graphs on other data flow.


class Mixed(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), name="conv")(x)
        x = nn.Conv(8, (3, 3), feature_group_count=8, name="depthwise")(x)
        x = nn.LayerNorm(name="ln")(jax.nn.gelu(x))
        x = jax.nn.relu(nn.Conv(4, (1, 1), name="pointwise")(x))
        x = jax.nn.relu(nn.Conv(4, (1, 1), name="pointwise2")(x))  # the same relu jaxpr
        return nn.Dense(3, name="dense")(x.reshape(x.shape[0], -1))


def test_graph_follows_depthwise_norms_and_ends_at_flatten():
    variables = jax.eval_shape(Mixed().init, key(0), X)
    graph = trace_channels(Mixed(), variables, X)
    s = graph.space_of
    conv = s(("params", "conv", "kernel"), 3)
    assert conv == s(("params", "depthwise", "kernel"), 3) == s(("params", "ln", "scale"), 0)
    assert conv == s(("params", "pointwise", "kernel"), 2)
    assert graph.spaces[("params", "depthwise", "kernel")][2] is None  # one input per group
    # Two 4-wide layers calling the same (shared, jitted) relu stay apart.
    assert s(("params", "pointwise", "kernel"), 3) != s(("params", "pointwise2", "kernel"), 3)
    # Flattening merges the channels with the spatial grid: a space of its own.
    flat = s(("params", "dense", "kernel"), 0)
    assert flat is not None and len(graph.members(flat)) == 1
    assert graph.producers[("params", "dense", "kernel")] == (False, True)


def test_call_order_graph_of_the_chain():
    variables = jax.eval_shape(Chain(4).init, key(0), X)
    graph = call_order_channels(module_layers(Chain(4), variables, sample_input=X))
    assert graph.method == "call order"
    space = graph.space_of(("params", "conv1", "kernel"), 3)
    assert graph.space_of(("params", "conv1", "bias"), 0) == space
    assert graph.space_of(("batch_stats", "bn", "mean"), 0) == space
    assert graph.space_of(("params", "conv2", "kernel"), 2) == space
    assert graph.space_of(("params", "conv2", "kernel"), 3) != space


def test_target_channels_only_for_channel_rules():
    variables = jax.eval_shape(Chain(4).init, key(0), X)
    for name in ("clip", "full"):
        assert target_channels(get_tensor_rule(name), Chain(4), variables, X) is None
    assert target_channels(lambda s, d, r: d, Chain(4), variables, X) is None
    for name in ("magnitude", "uniform"):
        graph = target_channels(get_tensor_rule(name), Chain(4), variables, X)
        assert graph is not None and graph.method == "jaxpr"
    # An input the module cannot take: no graph (write_tensors falls back to call order).
    assert target_channels(magnitude, Chain(4), variables, jnp.zeros((2, 3))) is None


# ----------------------------------------------------------------------------------
# Rules without channel selection are untouched; uniform is consistent by construction.


@pytest.mark.parametrize("rule", [clip, full, uniform, lambda s, d, r: jnp.zeros_like(d)])
def test_per_tensor_rules_unchanged_by_the_graph(residual, rule):
    fresh = Residual(7).init(key(2), X)
    src = as_jax(residual)
    with_graph, pairs = staged_transfer(Residual(12), src, Residual(7), fresh, X, rule)
    without, _ = staged_transfer(Residual(12), src, Residual(7), fresh, X, rule, None)
    jax.tree.map(np.testing.assert_array_equal, with_graph, without)
    # ... and equal to the rule applied to each tensor on its own, in order.
    flat = {tuple(k): v for k, v in traverse_util.flatten_dict(fresh).items()}
    counter = 0
    for pair in pairs:
        for collection, group in pair.dst.tensors.items():
            for name in group:
                counter += 1
                k = (collection, *pair.dst.path, name)
                expected = rule(
                    pair.src.tensors[collection][name], flat[k], jax.random.fold_in(key(5), counter)
                )
                got = traverse_util.flatten_dict(with_graph)[k]
                np.testing.assert_array_equal(got, expected)


def test_channel_rules_jit_and_keep_dtype():
    src = jax.random.normal(jax.random.key(0), (3, 3, 8, 6))
    dst = jnp.zeros((3, 3, 4, 6), jnp.bfloat16)
    sel = {2: jnp.array([0, 2, 5, 7])}
    for rule in (TENSOR_RULES["magnitude"], TENSOR_RULES["uniform"]):
        eager = rule.apply_channels(src, dst, None, (2, 3), sel)
        jitted = jax.jit(rule.apply_channels, static_argnums=(2, 3))(src, dst, None, (2, 3), sel)
        assert eager.dtype == jnp.bfloat16 and eager.shape == dst.shape
        np.testing.assert_array_equal(eager.astype(jnp.float32), jitted.astype(jnp.float32))
        np.testing.assert_array_equal(eager, src[:, :, [0, 2, 5, 7]].astype(jnp.bfloat16))


def test_magnitude_selection_sums_normalised_producers():
    a = jnp.array([[1.0, 0, 0, 4]])  # norms 1 0 0 4 (mean 1.25)
    b = jnp.array([[0.0, 30, 20, 10]])  # norms 0 30 20 10 (mean 15)
    # normalised: [0.8, 0, 0, 3.2] + [0, 2, 1.33, 0.67] -> 0.8, 2, 1.33, 3.87
    np.testing.assert_array_equal(
        TENSOR_RULES["magnitude"].select_channels([(a, 1), (b, 1)], 2), [1, 3]
    )
    np.testing.assert_array_equal(TENSOR_RULES["magnitude"].select_channels([(b, 1)], 2), [1, 2])
    np.testing.assert_array_equal(TENSOR_RULES["uniform"].select_channels([(b, 1)], 2), [0, 3])


def test_selections_keyed_by_source_size():
    # One target space whose members come from sources of two sizes: one selection each.
    from dpiat_jax.channels import ChannelGraph

    graph = ChannelGraph(
        {("a",): (0,), ("b",): (0,), ("c",): (0,)},
        {("a",): (True,), ("b",): (False,), ("c",): (False,)},
    )
    items = [
        (("a",), jnp.arange(6.0), (3,)),
        (("b",), -jnp.arange(6.0), (3,)),
        (("c",), jnp.array([5.0, 0, 0, 9]), (3,)),
    ]
    sel = channel_selections(graph, items, TENSOR_RULES["magnitude"].select_channels)
    np.testing.assert_array_equal(sel[(0, 6, 3)], [3, 4, 5])  # ranked by the producer a
    np.testing.assert_array_equal(sel[(0, 4, 3)], [0, 1, 3])  # no producer of size 4: c


def test_every_rule_runs_through_transfer_on_the_residual(residual):
    fresh = Residual(7).init(key(2), X)
    for name in TENSOR_RULES:
        out = dpiat_jax.transfer(
            as_jax(residual), Residual(12), Residual(7), key(2), sample_input=X, tensor_rule=name
        )
        assert jax.tree.structure(out) == jax.tree.structure(fresh)
        for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(fresh)):
            assert x.shape == y.shape and x.dtype == y.dtype


def test_selections_rank_each_tensor_dimension_once():
    # A repeated item (same key and dimension) ranks once; distinct keys rank each.
    from dpiat_jax.channels import ChannelGraph

    graph = ChannelGraph({("a",): (0,), ("b",): (0,)}, {("a",): (True,), ("b",): (True,)})
    seen = []

    def select(members, b):
        seen.append([(tuple(np.asarray(s)), axis) for s, axis in members])
        return jnp.arange(b)

    a, b = jnp.array([1.0, 2, 3]), jnp.array([3.0, 2, 1])
    channel_selections(graph, [(("a",), a, (2,)), (("a",), a, (2,))], select)
    channel_selections(graph, [(("a",), a, (2,)), (("b",), b, (2,))], select)
    assert seen == [[((1.0, 2.0, 3.0), 0)], [((1.0, 2.0, 3.0), 0), ((3.0, 2.0, 1.0), 0)]]
