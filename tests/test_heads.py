"""Attention heads: grouped-query maps, heads found from the forward pass, heads fused
into one axis with the head dimension (issue 12)."""

from __future__ import annotations

import dataclasses
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax
from dpiat_jax.heads import HeadAxis, clip_map, head_axes, head_maps, head_parts, with_heads
from dpiat_jax.structure import StructureWarning
from dpiat_jax.trace.factors import factor_flow
from dpiat_jax.variables import TensorMove

X = jnp.ones((1, 5, 8))
KEY = jax.random.key(0)


def flow_of(model: nn.Module):
    return factor_flow(model, jax.eval_shape(model.init, KEY, X), X)


class Grouped(nn.Module):
    """Grouped-query attention on separate head axes; ``repeat`` repeats the kv heads
    (``jnp.repeat``) instead of reshaping the queries into groups."""

    heads: int = 4
    kv_heads: int = 2
    dim: int = 4
    repeat: bool = False

    @nn.compact
    def __call__(self, x):
        h, k, d = self.heads, self.kv_heads, self.dim
        q = nn.DenseGeneral((h, d), name="q")(x)
        kv = nn.DenseGeneral((2, k, d), name="kv")(x)
        key, value = kv[..., 0, :, :], kv[..., 1, :, :]
        if self.repeat:
            key, value = jnp.repeat(key, h // k, axis=2), jnp.repeat(value, h // k, axis=2)
            w = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, key), -1)
            out = jnp.einsum("bhts,bshd->bthd", w, value)
        else:
            q = q.reshape(q.shape[:2] + (k, h // k, d))
            w = jax.nn.softmax(jnp.einsum("btkgd,bskd->bkgts", q, key), -1)
            out = jnp.einsum("bkgts,bskd->btkgd", w, value).reshape(q.shape[:2] + (h, d))
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="o")(out)


@pytest.mark.parametrize("repeat", [False, True])
def test_grouped_heads_are_found(repeat):
    found = head_axes(flow_of(Grouped(repeat=repeat)))
    assert found[("params", "q", "kernel")] == HeadAxis(1, 4, 2, False)
    assert found[("params", "kv", "kernel")] == HeadAxis(2, 4, 2, True)
    assert found[("params", "o", "kernel")] == HeadAxis(0, 4, 2, False)
    assert head_parts(flow_of(Grouped(repeat=repeat))) == {}


def test_plain_heads_are_found_ungrouped():
    found = head_axes(flow_of(Grouped(kv_heads=4)))
    assert {v.kv for v in found.values()} == {None}


def test_head_maps():
    assert head_maps((4, 4), (8, 8)) == (clip_map(4, 8), clip_map(4, 8))  # plain: clip
    assert head_maps((4, 2), (4, 4)) == ((0, 1, 2, 3), (0, 0, 1, 1))
    # kv heads 4 -> 2: every kept query head's group reads its own source kv head
    assert head_maps((4, 4), (4, 2)) == ((1, None, 2, None), (1, 2))
    assert head_maps((8, 4), (4, 1)) == ((None, 2, 3, None), (1,))
    assert head_maps((4, 2), (2, 1)) == ((0, 1), (0,))  # kept heads share a group
    assert head_maps((4, 2), (8, 2)) == (clip_map(4, 8), (0, 1))
    assert head_maps((8, 2), (4, 4)) == ((2, 3, 4, 5), (0, 0, 1, 1))


def test_with_heads_leaves_plain_and_stacked_moves():
    move = TensorMove(("params", "kv"), ("params", "kv"), "kv", "kv", (2, 3), (4, 3), (2, 3))
    grouped = {("params", "kv"): HeadAxis(0, 4, 2, True)}
    assert with_heads([move], {}, {}) == (move,)
    assert with_heads([move], {}, grouped) == (move,)  # no query tensor: counts unknown
    stacked = TensorMove(
        ("params", "kv"), ("params", "kv"), "kv", "kv", (2, 3), (4, 3), (2, 3),
        src_index=(0, 1), dst_index=(0, 1),
    )  # fmt: skip
    assert with_heads([stacked], {}, grouped) == (stacked,)


def heads_of(src: np.ndarray, dst: np.ndarray, axis: int) -> list[int | None]:
    """For each target head, the source head it equals exactly."""
    out = []
    for t in range(dst.shape[axis]):
        same = [
            s
            for s in range(src.shape[axis])
            if np.array_equal(np.take(np.asarray(src), s, axis), np.take(np.asarray(dst), t, axis))
        ]
        out.append(same[0] if same else None)
    return out


@pytest.mark.parametrize("repeat", [False, True])
def test_more_kv_heads_repeat_the_group_kv_head(repeat):
    src, dst = Grouped(repeat=repeat), Grouped(kv_heads=4, repeat=repeat)
    variables = src.init(KEY, X)
    out = dpiat_jax.transfer(variables, src, dst, KEY, sample_input=X)
    p, o = variables["params"], out["params"]
    assert heads_of(p["q"]["kernel"], o["q"]["kernel"], 1) == [0, 1, 2, 3]
    assert heads_of(p["kv"]["kernel"], o["kv"]["kernel"], 2) == [0, 0, 1, 1]
    dst.apply(out, X)


def test_fewer_heads_keep_one_group():
    src, dst = Grouped(), Grouped(heads=2, kv_heads=1)
    variables = src.init(KEY, X)
    out = dpiat_jax.transfer(variables, src, dst, KEY, sample_input=X)
    p, o = variables["params"], out["params"]
    assert heads_of(p["q"]["kernel"], o["q"]["kernel"], 1) == [0, 1]
    assert heads_of(p["o"]["kernel"], o["o"]["kernel"], 0) == [0, 1]
    assert heads_of(p["kv"]["kernel"], o["kv"]["kernel"], 2) == [0]


class FusedHeads(nn.Module):
    """Multi-head attention whose projections hold heads and head_dim in one axis."""

    heads: int = 2
    dim: int = 4

    @nn.compact
    def __call__(self, x):
        h, d = self.heads, self.dim
        q, k, v = (
            nn.Dense(h * d, name=n)(x).reshape(x.shape[:2] + (h, d)) for n in ("q", "k", "v")
        )
        w = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k), -1)
        out = jnp.einsum("bhts,bshd->bthd", w, v).reshape(x.shape[:2] + (h * d,))
        return nn.Dense(x.shape[-1], name="o")(out)


def test_heads_in_one_axis_are_found():
    parts = head_parts(flow_of(FusedHeads()))
    for name in "qkv":
        assert parts[("params", name, "kernel")] == (1, 2)
        assert parts[("params", name, "bias")] == (0, 2)
    assert parts[("params", "o", "kernel")] == (0, 2)


def test_heads_in_one_axis_keep_whole_heads_when_head_dim_grows():
    src, dst = FusedHeads(2, 4), FusedHeads(2, 8)
    variables = src.init(KEY, X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        out = dpiat_jax.transfer(variables, src, dst, KEY, sample_input=X)
    for name in "qkv":
        kernel, grown = variables["params"][name]["kernel"], out["params"][name]["kernel"]
        for head in range(2):
            np.testing.assert_array_equal(
                grown[:, 8 * head + 2 : 8 * head + 6], kernel[:, 4 * head : 4 * head + 4]
            )
    o, grown = variables["params"]["o"]["kernel"], out["params"]["o"]["kernel"]
    np.testing.assert_array_equal(grown[10:14], o[4:8])  # head 1, centred in its chunk


def test_heads_in_one_axis_cut_by_a_crop_are_named():
    """A source of one head shows no head factor (a reshape to ``(1, dim)`` has no
    atom for it): its axis is cropped as one piece, and the warning says so."""
    src = FusedHeads(1, 8)
    variables = src.init(KEY, X)
    with pytest.warns(StructureWarning, match="params/q/kernel"):
        dpiat_jax.transfer(variables, src, FusedHeads(3, 4), KEY, sample_input=X)
    with warnings.catch_warnings():  # an odd change of the head count keeps heads whole
        warnings.simplefilter("error", StructureWarning)
        dpiat_jax.transfer(FusedHeads(2, 4).init(KEY, X), FusedHeads(2, 4), FusedHeads(3, 4),
                           KEY, sample_input=X)  # fmt: skip
        dpiat_jax.transfer(variables, src, FusedHeads(2, 4), KEY, sample_input=X)


def test_fused_parts_whose_source_differs_are_named():
    from test_fused import Opaque, Parts  # tests/ is on sys.path

    with pytest.warns(StructureWarning, match=r"params/p/kernel \(fused in 3 parts"):
        dpiat_jax.plan(Opaque(8), Parts(3), sample_input=X)


def test_heads_cut_inside_fused_parts_are_named():
    from test_fused import ReshapedQKV

    with pytest.warns(StructureWarning, match="params/qkv/kernel"):
        dpiat_jax.plan(ReshapedQKV(1, 8), ReshapedQKV(3, 4), sample_input=X)


class GroupedStep(nn.Module):
    kv_heads: int

    @nn.compact
    def __call__(self, x, _):
        return x + Grouped(kv_heads=self.kv_heads, name="attn")(x), None


class ScannedGrouped(nn.Module):
    kv_heads: int

    @nn.compact
    def __call__(self, x):
        steps = nn.scan(
            GroupedStep, variable_axes={"params": 0}, split_rngs={"params": True}, length=2
        )
        return steps(self.kv_heads, name="steps")(x, None)[0]


def test_grouped_heads_of_a_scan_are_named():
    """Scanned layers keep the per-axis crop for grouped heads, and say so."""
    src = ScannedGrouped(2)
    variables = src.init(KEY, X)
    with pytest.warns(StructureWarning, match="grouped-query heads of a stacked tensor"):
        dpiat_jax.transfer(variables, src, ScannedGrouped(4), KEY, sample_input=X)


# ---------------------------------------------------------------- heads fused in one axis
# whose head count changes: the axis moves per factor (heads, head_dim)


def factor_map(src: tuple[int, ...], dst: tuple[int, ...]) -> list[int | None]:
    """Per flat target index along a factored axis, the flat source index the clip rule
    per factor puts there (None: fresh): whole heads centred, head_dim centred in each."""
    maps = [clip_map(a, b) for a, b in zip(src, dst)]
    out = []
    for t in np.ndindex(*dst):
        s = [m[i] for m, i in zip(maps, t)]
        out.append(None if None in s else int(np.ravel_multi_index(s, src)))
    return out


def assert_factored(src, dst, axis: int, src_f, dst_f) -> None:
    """Every target index along ``axis`` holds the source slice :func:`factor_map`
    names (the other axes are equal), and no unmapped one holds a source slice."""
    src, dst = np.asarray(src), np.asarray(dst)
    assert src.shape[axis] == int(np.prod(src_f)) and dst.shape[axis] == int(np.prod(dst_f))
    for t, s in enumerate(factor_map(src_f, dst_f)):
        got = np.take(dst, t, axis)
        if s is None:
            assert not any(
                np.array_equal(got, np.take(src, i, axis)) for i in range(src.shape[axis])
            )
        else:
            np.testing.assert_array_equal(got, np.take(src, s, axis))


def noisy(model: nn.Module) -> dict:
    """Variables of ``model`` with every leaf drawn at random (biases too, so that
    where each source value lands is readable)."""
    variables = model.init(KEY, X)
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    return jax.tree.unflatten(
        tree, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


def quiet_transfer(variables, src, dst, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        plan = dpiat_jax.plan(src, dst, sample_input=X, **kwargs)
    return plan, plan.apply(variables, jax.random.key(1))


def assert_heads_moved(variables, out, src: FusedHeads, dst: FusedHeads) -> None:
    src_f, dst_f = (src.heads, src.dim), (dst.heads, dst.dim)
    p, o = variables["params"], out["params"]
    for name in "qkv":
        assert_factored(p[name]["kernel"], o[name]["kernel"], 1, src_f, dst_f)
        assert_factored(p[name]["bias"], o[name]["bias"], 0, src_f, dst_f)
    assert_factored(p["o"]["kernel"], o["o"]["kernel"], 0, src_f, dst_f)  # input axis
    np.testing.assert_array_equal(o["o"]["bias"], p["o"]["bias"])


@pytest.mark.parametrize(
    ("src", "dst"),
    [((4, 4), (2, 4)), ((2, 4), (4, 4)), ((2, 4), (3, 4)), ((2, 4), (2, 8)), ((4, 8), (4, 2))],
)
def test_heads_in_one_axis_move_as_whole_heads(src, dst):
    src, dst = FusedHeads(*src), FusedHeads(*dst)
    variables = noisy(src)
    plan, out = quiet_transfer(variables, src, dst)
    assert plan.moves[1].factors == ((1, (src.heads, src.dim), (dst.heads, dst.dim)),)
    assert_heads_moved(variables, out, src, dst)
    dst.apply(out, X)


def test_fewer_and_more_heads_in_one_axis_are_the_centre_heads():
    """Spelled out: 4 -> 2 heads keeps source heads 1 and 2; 2 -> 4 puts source heads 0
    and 1 into target heads 1 and 2 (heads 0 and 3 stay fresh)."""
    src = FusedHeads(4, 4)
    variables = noisy(src)
    _, out = quiet_transfer(variables, src, FusedHeads(2, 4))
    kernel, shrunk = variables["params"]["q"]["kernel"], out["params"]["q"]["kernel"]
    np.testing.assert_array_equal(shrunk, kernel[:, 4:12])
    src = FusedHeads(2, 4)
    variables = noisy(src)
    _, out = quiet_transfer(variables, src, FusedHeads(4, 3))  # head_dim 4 -> 3 as well
    kernel, grown = variables["params"]["k"]["kernel"], out["params"]["k"]["kernel"]
    np.testing.assert_array_equal(grown[:, 3:6], kernel[:, 0:3])  # target head 1, source 0
    np.testing.assert_array_equal(grown[:, 6:9], kernel[:, 4:7])  # target head 2, source 1


def test_factored_plans_jit_and_round_trip_json():
    src, dst = FusedHeads(2, 4), FusedHeads(3, 4)
    variables = noisy(src)
    plan, out = quiet_transfer(variables, src, dst)
    jitted = jax.jit(plan.apply)(variables, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, jitted, out)
    again = dpiat_jax.TransferPlan.from_json(plan.to_json(), dst)
    assert again.moves == plan.moves and any(m.factors for m in again.moves)
    jax.tree.map(np.testing.assert_array_equal, again.apply(variables, jax.random.key(1)), out)
    assert again._fingerprint(()) == plan._fingerprint(())  # the factors enter it
    plain = dataclasses.replace(plan, moves=tuple(
        dataclasses.replace(m, factors=()) for m in plan.moves))  # fmt: skip
    assert plain._fingerprint(()) != plan._fingerprint(())


def test_plan_json_without_factors_still_loads():
    import json

    plan = dpiat_jax.plan(FusedHeads(2, 4), FusedHeads(3, 4), sample_input=X)
    data = json.loads(plan.to_json())
    for move in data["moves"]:
        del move["factors"]
    again = dpiat_jax.TransferPlan.from_json(json.dumps(data), FusedHeads(3, 4))
    assert all(m.factors == () for m in again.moves)


@pytest.mark.parametrize("rule", ["magnitude", "uniform"])
def test_channel_selecting_rules_keep_whole_heads(rule):
    """A factored axis is no channel dimension: magnitude crops it per factor (as clip),
    uniform spaces each factor evenly; q, k, v and the output projection keep the same
    heads either way."""
    from dpiat_jax.tensors import uniform_indices

    src, dst = FusedHeads(4, 4), FusedHeads(2, 4)
    variables = noisy(src)
    _, out = quiet_transfer(variables, src, dst, tensor_rule=rule)
    heads = [1, 2] if rule == "magnitude" else [int(i) for i in uniform_indices(4, 2)]
    p, o = variables["params"], out["params"]
    for name in "qkv":
        for t, s in enumerate(heads):
            np.testing.assert_array_equal(
                o[name]["kernel"][:, 4 * t : 4 * t + 4], p[name]["kernel"][:, 4 * s : 4 * s + 4]
            )
    for t, s in enumerate(heads):
        np.testing.assert_array_equal(
            o["o"]["kernel"][4 * t : 4 * t + 4], p["o"]["kernel"][4 * s : 4 * s + 4]
        )
    dst.apply(out, X)


@pytest.mark.parametrize("layout", ["parts", "heads"])
@pytest.mark.parametrize(("src", "dst"), [((2, 4), (3, 4)), ((4, 4), (2, 4)), ((2, 4), (4, 2))])
def test_fused_qkv_with_another_head_count(layout, src, dst):
    """A fused ``(d, 3 * heads * dim)`` projection reshaped to ``(3, heads, dim)`` (or
    ``(heads, 3 * dim)``): q into q, k into k, v into v, whole heads centred in each."""
    from test_fused import ReshapedQKV

    src, dst = ReshapedQKV(*src, layout), ReshapedQKV(*dst, layout)
    variables = noisy(src)
    plan, out = quiet_transfer(variables, src, dst)
    order = {"parts": lambda m: (3, m.heads, m.dim), "heads": lambda m: (m.heads, 3, m.dim)}
    src_f, dst_f = order[layout](src), order[layout](dst)
    p, o = variables["params"], out["params"]
    assert_factored(p["qkv"]["kernel"], o["qkv"]["kernel"], 1, src_f, dst_f)
    assert_factored(p["qkv"]["bias"], o["qkv"]["bias"], 0, src_f, dst_f)
    assert_factored(
        p["out"]["kernel"], o["out"]["kernel"], 0, (src.heads, src.dim), (dst.heads, dst.dim)
    )
    dst.apply(out, X)


def test_report_lists_the_axes_moved_per_factor():
    src, dst = FusedHeads(2, 4), FusedHeads(3, 8)
    the_plan = dpiat_jax.plan(src, dst, sample_input=X)
    factored = dict(((name, axis), (s, d)) for name, axis, s, d in the_plan.report.factored)
    assert factored[("params/q/kernel", 1)] == ((2, 4), (3, 8))
    assert factored[("params/o/kernel", 0)] == ((2, 4), (3, 8))
    assert {name for name, _ in factored} == {
        f"params/{n}/{t}" for n in "qkv" for t in ("kernel", "bias")
    } | {"params/o/kernel"}
    assert "params/q/kernel: axis 1, factors 2x4 -> 3x8" in str(the_plan.report)
    again = dpiat_jax.TransferPlan.from_json(the_plan.to_json(), dst)
    assert again.report.factored == the_plan.report.factored
    same = dpiat_jax.plan(src, src, sample_input=X)  # equal shapes: nothing to factor
    assert same.report.factored == ()
    assert "factor by factor" not in str(same.report)


class FusedGrouped(nn.Module):
    """Grouped-query attention as Llama writes it in Flax: ``Dense(heads * dim)`` and
    ``Dense(kv_heads * dim)`` reshaped to heads, the kv heads repeated to the groups."""

    heads: int = 4
    kv_heads: int = 2
    dim: int = 4

    @nn.compact
    def __call__(self, x):
        h, k, d = self.heads, self.kv_heads, self.dim
        shape = x.shape[:2]
        q = nn.Dense(h * d, name="q")(x).reshape(shape + (h, d))
        key = nn.Dense(k * d, name="k")(x).reshape(shape + (k, d))
        value = nn.Dense(k * d, name="v")(x).reshape(shape + (k, d))
        key, value = jnp.repeat(key, h // k, axis=2), jnp.repeat(value, h // k, axis=2)
        w = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, key), -1)
        out = jnp.einsum("bhts,bshd->bthd", w, value).reshape(shape + (h * d,))
        return nn.Dense(x.shape[-1], name="o")(out)


def _fused_heads_of(src: np.ndarray, dst: np.ndarray, heads: tuple[int, int]) -> list:
    """Per target head of a ``(d_in, heads * dim)`` kernel, the source head it holds."""
    return heads_of(
        src.reshape(src.shape[0], heads[0], -1), dst.reshape(dst.shape[0], heads[1], -1), 1
    )


def _kv_of(head: int, heads: tuple[int, int]) -> int:
    """The kv head that query ``head`` reads, of ``(heads, kv_heads)``."""
    return head // (heads[0] // heads[1])


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((8, 2), (16, 4)),
        ((8, 2), (8, 4)),
        ((8, 4), (8, 2)),
        ((4, 4), (4, 2)),
        ((4, 2), (4, 4)),
        ((8, 8), (4, 2)),
        ((4, 2), (8, 8)),
        ((2, 2), (8, 4)),
        ((4, 1), (4, 2)),
        ((4, 4), (4, 1)),
        ((4, 1), (8, 2)),
    ],
    ids=lambda heads: f"{heads[0]}/{heads[1]}",
)
def test_grouped_heads_in_one_axis_map_to_their_groups(src, dst):
    """Heads in one axis with the head dimension, grouped-query (kv heads repeated to
    the groups), multi-head (as many kv heads) or multi-query (one): a target group
    whose query heads are seeded reads the kv head of one of their source query heads
    (of the only one where the target's groups are no larger than the source's); with
    as many query heads on both sides every query head keeps its own values. No
    warning: nothing is cropped blindly."""
    src_model, dst_model = FusedGrouped(*src), FusedGrouped(*dst)
    variables = src_model.init(KEY, X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        out = dpiat_jax.transfer(variables, src_model, dst_model, jax.random.key(1), sample_input=X)
    p, o = variables["params"], out["params"]
    q = _fused_heads_of(p["q"]["kernel"], o["q"]["kernel"], (src[0], dst[0]))
    kv = _fused_heads_of(p["k"]["kernel"], o["k"]["kernel"], (src[1], dst[1]))
    assert sum(s is not None for s in q) >= min(src[0], dst[0]) // 2, q
    if src[0] == dst[0]:
        assert q == list(range(dst[0])), q
    for group in range(dst[1]):
        seeded = [(h, s) for h, s in enumerate(q) if s is not None]
        read = {_kv_of(s, src) for h, s in seeded if _kv_of(h, dst) == group}
        assert not read or kv[group] in read, (group, q, kv)
    assert jnp.all(jnp.isfinite(dst_model.apply(out, X)))


@pytest.mark.parametrize(
    ("src", "dst", "rule"),
    [
        ((4, 2), (4, 4), "clip"),
        ((8, 2), (8, 4), "clip"),
        ((4, 1), (4, 2), "clip"),
        # one kv head -> 4: the published shape score pairs the target's (8, 16) k and v
        # with the source's (8, 16) query; net2net's width-free score pairs them by role
        ((4, 1), (4, 4), "net2net"),
    ],
)
def test_more_kv_heads_at_the_same_query_heads_is_exact(src, dst, rule):
    """Grouped-query attention is attention with fewer kv heads repeated: moved into
    more kv heads (multi-head included) each group's kv head is repeated to the target
    kv heads its query heads read, and the target computes the source's function."""
    src_model, dst_model = FusedGrouped(*src), FusedGrouped(*dst)
    variables = src_model.init(KEY, X)
    out = dpiat_jax.transfer(
        variables, src_model, dst_model, jax.random.key(1), sample_input=X, tensor_rule=rule
    )
    np.testing.assert_allclose(
        dst_model.apply(out, X), src_model.apply(variables, X), rtol=1e-5, atol=1e-6
    )


def test_grouped_to_multi_head_attention_in_one_axis_is_exact():
    """With as many query heads, grouped-query attention is multi-head attention with
    each group's kv head repeated: the target computes the source's function."""
    src_model, dst_model = FusedGrouped(4, 2), FusedGrouped(4, 4)
    variables = src_model.init(KEY, X)
    out = dpiat_jax.transfer(variables, src_model, dst_model, jax.random.key(1), sample_input=X)
    np.testing.assert_allclose(
        dst_model.apply(out, X), src_model.apply(variables, X), rtol=1e-5, atol=1e-6
    )
    plan = dpiat_jax.plan(src_model, dst_model, sample_input=X)
    k = next(m for m in plan.moves if m.dst == ("params", "k", "kernel"))
    assert (k.factors, k.broadcast) == (((1, (2, 1, 4), (2, 2, 4)),), ((1, 1),))
    again = dpiat_jax.TransferPlan.from_json(plan.to_json(), dst_model)
    assert again.moves == plan.moves
    chex.assert_trees_all_equal(again.apply(variables, jax.random.key(1)), out)
