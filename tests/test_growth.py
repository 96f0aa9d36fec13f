"""Function-preserving growth: Net2Net widening (tensor_rule="net2net") and identity
deepening (deepen="identity"), through dpiat_jax.plan (issue 14, item 2)."""

from __future__ import annotations

import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax
from dpiat_jax.channels import trace_channels
from dpiat_jax.deepening import DeepeningWarning
from dpiat_jax.models import MLP, CifarResNet, ViT
from dpiat_jax.plan import TransferPlan, plan
from dpiat_jax.tensors import TENSOR_RULES, get_tensor_rule, net2net
from dpiat_jax.widening import growth_mapping, widen

ROOT = Path(__file__).resolve().parent.parent
RTOL = 1e-4


def _trained(model: nn.Module, x: jax.Array, seed: int = 1) -> dict:
    """Variables with non-trivial batch statistics (a mean away from 0, a variance
    away from 1), as a trained model has."""
    variables = model.init(jax.random.key(seed), x)
    keys = iter(jax.random.split(jax.random.key(seed + 100), 1000))

    def perturb(path, leaf):
        name = str(path[-1].key)
        if name == "mean":
            return leaf + 0.5 * jax.random.normal(next(keys), leaf.shape)
        if name in ("var", "scale"):
            return leaf * jax.random.uniform(next(keys), leaf.shape, minval=0.5, maxval=2.0)
        if name == "bias":
            return leaf + 0.1 * jax.random.normal(next(keys), leaf.shape)
        return leaf

    return jax.tree_util.tree_map_with_path(perturb, variables)


def _outputs(src, dst, x, **options):
    """Source and target outputs on a random batch, with the plan."""
    src_vars = _trained(src, x)
    the_plan = plan(src, dst, sample_input=x, **options)
    dst_vars = the_plan.apply(src_vars, jax.random.key(3))
    batch = jax.random.normal(jax.random.key(5), x.shape)
    return src.apply(src_vars, batch), dst.apply(dst_vars, batch), the_plan, dst_vars


def _max_rel(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))


class CNN(nn.Module):
    """Conv-BN-ReLU, a depthwise conv with BN, a conv, global pooling and a head."""

    channels: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = self.channels
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(c, (3, 3))(x)))
        x = nn.Conv(c, (3, 3), feature_group_count=c)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.relu(nn.Conv(c, (3, 3))(x))
        return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


class NormMLP(nn.Module):
    """A dense layer followed by a LayerNorm over its (widened) features."""

    width: int

    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm()(nn.Dense(self.width)(x))
        return nn.Dense(2)(nn.relu(x))


class HalfMLP(nn.Module):
    """An MLP with bfloat16 parameters (the division must keep the dtype)."""

    width: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.width, param_dtype=jnp.bfloat16)(x))
        return nn.Dense(2, param_dtype=jnp.bfloat16)(x)


class PlainBlock(nn.Module):
    """A block without a residual add."""

    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Dense(6, name="fc2")(nn.relu(nn.Dense(6, name="fc1")(x))))


class PlainNet(nn.Module):
    depth: int

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(6, name="stem")(x)
        for i in range(self.depth):
            x = PlainBlock(name=f"block{i}")(x)
        return nn.Dense(2, name="head")(x)


# ----------------------------------------------------------------------------------
# Widening.


@pytest.mark.parametrize(
    "src, dst",
    [(MLP((16,), 3), MLP((32,), 3)), (MLP((16, 16), 3), MLP((32, 32), 3))],
    ids=["one-hidden", "two-hidden"],
)
def test_widened_mlp_computes_the_source_function(src, dst):
    a, b, the_plan, _ = _outputs(src, dst, jnp.zeros((4, 5)), tensor_rule="net2net")
    assert _max_rel(a, b) < RTOL
    assert the_plan.coverage == 1.0  # every target scalar comes from the source
    assert all(w.preserved for w in the_plan.widened)


def test_clip_does_not_preserve_the_function():
    """The test above can fail: the default rule leaves fresh channels."""
    a, b, _, _ = _outputs(MLP((16,), 3), MLP((32,), 3), jnp.zeros((4, 5)))
    assert _max_rel(a, b) > 1e-2


def test_widened_cnn_with_batchnorm_and_depthwise_conv_computes_the_source_function():
    a, b, the_plan, _ = _outputs(CNN(8), CNN(12), jnp.zeros((2, 8, 8, 3)), tensor_rule="net2net")
    assert _max_rel(a, b) < RTOL
    # one mapping for the space the first conv, its norm and the depthwise conv share,
    # one for the third conv's output (consumed by the head)
    assert [(w.src_size, w.size) for w in the_plan.widened] == [(8, 12), (8, 12)]


def test_widened_resnet_computes_the_source_function():
    x = jnp.zeros((2, 8, 8, 3))
    a, b, _, _ = _outputs(
        CifarResNet(depth=8, base_channels=4),
        CifarResNet(depth=8, base_channels=6),
        x,
        tensor_rule="net2net",
    )
    assert _max_rel(a, b) < RTOL


@pytest.mark.parametrize(
    "src, dst",
    [((14, 8), (14, 16)), ((8, 4), (8, 8)), ((8, 4), (14, 6)), ((8, 4), (14, 8))]
    + [((8, 4), (20, 8))],
)
def test_growth_keeps_the_function_when_widths_match_another_stage(src, dst):
    # At 2x width each target stage has the shapes of the next source stage; the published
    # score would pair them, and the grown network would not compute the source's function.
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
    a, b, the_plan, _ = _outputs(
        CifarResNet(depth=src[0], base_channels=src[1]),
        CifarResNet(depth=dst[0], base_channels=dst[1]),
        x,
        tensor_rule="net2net",
        deepen="identity",
    )
    assert _max_rel(a, b) < RTOL
    stages = {(p[0].split("_")[0], p[1].split("_")[0]) for p in the_plan.report.pairs}
    assert {s for s, d in stages if s != d and "stage" in s} == set()


def test_width_free_specs():
    from dpiat_jax.spec import LayerSpec
    from dpiat_jax.widening import width_free

    tree = [LayerSpec("conv2d", (3, 3, 4, 8)), [LayerSpec("depthwise_conv2d", (3, 3, 1, 8))]]
    assert width_free(tree) == [
        LayerSpec("conv2d", (3, 3, 1, 1)),
        [LayerSpec("depthwise_conv2d", (3, 3, 1, 1))],
    ]
    assert width_free([LayerSpec("batch_norm", (8,)), LayerSpec("act", ())]) == [
        LayerSpec("batch_norm", (1,)),
        LayerSpec("act", ()),
    ]


def test_consuming_and_producing_dimensions_come_from_the_jaxpr():
    x = jnp.zeros((1, 8, 8, 3))
    model = CNN(8)
    graph = trace_channels(model, jax.eval_shape(model.init, jax.random.key(0), x), x)
    assert graph.consumers[("params", "Conv_0", "kernel")] == (False, False, True, False)
    assert graph.producers[("params", "Conv_0", "kernel")] == (False, False, False, True)
    # depthwise: the input-feature dimension has size 1, the channels are produced
    assert graph.consumers[("params", "Conv_1", "kernel")] == (False, False, False, False)
    assert graph.consumers[("params", "Dense_0", "kernel")] == (True, False)
    assert not graph.mixed


def test_layernorm_over_a_widened_axis_is_marked_not_preserved():
    x = jnp.zeros((4, 5))
    a, b, the_plan, _ = _outputs(NormMLP(8), NormMLP(12), x, tensor_rule="net2net")
    assert [w.preserved for w in the_plan.widened] == [False]
    assert "not function-preserving" in str(the_plan)
    assert _max_rel(a, b) > 1e-3  # the copies shift the LayerNorm statistics


def test_widening_is_deterministic_from_the_rng():
    src, dst, x = MLP((4,), 3), MLP((9,), 3), jnp.zeros((2, 5))
    src_vars = _trained(src, x)
    the_plan = plan(src, dst, sample_input=x, tensor_rule="net2net")
    first = the_plan.apply(src_vars, jax.random.key(3))
    again = plan(src, dst, sample_input=x, tensor_rule="net2net").apply(src_vars, jax.random.key(3))
    other = the_plan.apply(src_vars, jax.random.key(4))
    jitted = jax.jit(the_plan.apply)(src_vars, jax.random.key(3))
    for tree in (again, jitted):
        jax.tree.map(np.testing.assert_array_equal, first, tree)
    kernel = first["params"]["dense0"]["kernel"]
    assert not np.array_equal(kernel, other["params"]["dense0"]["kernel"])
    np.testing.assert_array_equal(kernel[:, :4], src_vars["params"]["dense0"]["kernel"])
    # the new channels are copies of source channels
    for j in range(4, 9):
        assert any(np.array_equal(kernel[:, j], kernel[:, i]) for i in range(4))


def test_target_structure_shapes_and_dtypes_equal_a_fresh_init():
    x = jnp.zeros((2, 8, 8, 3))
    src, dst = CifarResNet(depth=8, base_channels=4), CifarResNet(depth=14, base_channels=5)
    out = plan(src, dst, sample_input=x, tensor_rule="net2net", deepen="identity").apply(
        _trained(src, x), jax.random.key(0)
    )
    fresh = jax.eval_shape(dst.init, jax.random.key(0), x)
    assert jax.tree.structure(out) == jax.tree.structure(fresh)
    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(fresh)):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)


def test_low_precision_parameters_keep_their_dtype():
    x = jnp.zeros((2, 5))
    a, b, _, out = _outputs(HalfMLP(4), HalfMLP(6), x, tensor_rule="net2net")
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(out))
    assert _max_rel(a.astype(jnp.float32), b.astype(jnp.float32)) < 2e-2  # bfloat16 rounding


@pytest.mark.parametrize("widths", [(32, 16), (16, 16)], ids=["shrink", "equal"])
def test_shrinking_or_equal_widths_behave_as_clip(widths):
    src, dst, x = MLP((widths[0],), 3), MLP((widths[1],), 3), jnp.zeros((2, 5))
    src_vars = _trained(src, x)
    net = plan(src, dst, sample_input=x, tensor_rule="net2net")
    clip = plan(src, dst, sample_input=x, tensor_rule="clip")
    assert net.widened == ()
    jax.tree.map(
        np.testing.assert_array_equal,
        net.apply(src_vars, jax.random.key(2)),
        clip.apply(src_vars, jax.random.key(2)),
    )


def test_spatial_dimensions_follow_clip():
    src = jnp.ones((3, 3, 2, 2))
    out = net2net(src, jnp.zeros((5, 5, 2, 2)), 0)
    np.testing.assert_array_equal(out[1:4, 1:4], src)
    assert float(jnp.abs(out[0]).sum()) == 0.0


def test_widen_divides_only_consuming_axes():
    g = growth_mapping(0, 2, 5)
    assert [int(i) for i in g[:2]] == [0, 1] and int(g.max()) <= 1
    counts = np.bincount(np.asarray(g), minlength=2)
    out = widen(jnp.ones((2, 2)), [(0, g, True), (1, g, False)])
    np.testing.assert_allclose(out, np.repeat(1.0 / counts[np.asarray(g)], 5).reshape(5, 5))


def test_net2net_is_registered_and_bad_values_are_named():
    assert get_tensor_rule("net2net").widens_channels
    assert not get_tensor_rule("clip").widens_channels
    with pytest.raises(ValueError, match="net2net"):
        get_tensor_rule("net2net2")
    with pytest.raises(ValueError, match=r"deepen.*\[None, 'identity'\]"):
        plan(MLP((4,), 2), MLP((8,), 2), sample_input=jnp.zeros((1, 3)), deepen="zeros")
    assert "net2net" in TENSOR_RULES


def test_plan_with_growth_survives_json():
    x = jnp.zeros((2, 8, 8, 3))
    src, dst = CifarResNet(depth=8, base_channels=4), CifarResNet(depth=14, base_channels=5)
    the_plan = plan(src, dst, sample_input=x, tensor_rule="net2net", deepen="identity")
    again = TransferPlan.from_json(the_plan.to_json(), dst)
    assert again.widened == the_plan.widened
    assert again.deepening == the_plan.deepening


# ----------------------------------------------------------------------------------
# Deepening.


def test_deeper_resnet_with_identity_blocks_computes_the_source_function():
    x = jnp.zeros((2, 8, 8, 3))
    src, dst = CifarResNet(depth=8, base_channels=4), CifarResNet(depth=14, base_channels=4)
    a, b, the_plan, out = _outputs(src, dst, x, deepen="identity")
    assert _max_rel(a, b) < RTOL
    blocks = [(b.block, b.source) for b in the_plan.deepening.identity]
    assert blocks == [(f"stage{i}_block1", f"stage{i}_block0") for i in (1, 2, 3)]
    assert the_plan.deepening.kept == ()
    assert "deepen: stage2_block1 starts as an identity (run of stage2_block0)" in str(the_plan)
    bn2 = out["params"]["stage2_block1"]["bn2"]
    assert float(jnp.abs(bn2["scale"]).sum() + jnp.abs(bn2["bias"]).sum()) == 0.0
    # without the option every block of a run copies the source block: another function
    _, copied, _, _ = _outputs(src, dst, x)
    assert _max_rel(a, copied) > 1e-2


def test_deeper_prenorm_transformer_zeroes_both_branches():
    x = jnp.zeros((2, 8, 8, 3))
    src = ViT(patch_size=4, dim=8, depth=2, num_heads=2, mlp_dim=16, num_classes=3)
    dst = ViT(patch_size=4, dim=8, depth=4, num_heads=2, mlp_dim=16, num_classes=3)
    a, b, the_plan, _ = _outputs(src, dst, x, deepen="identity")
    assert _max_rel(a, b) < RTOL
    zeroed = {"/".join(k[1:]) for k in the_plan.deepening.zeroed}
    assert {"block1/attn/out/kernel", "block1/mlp_fc2/kernel"} <= zeroed


def test_widening_and_deepening_together():
    x = jnp.zeros((2, 8, 8, 3))
    src, dst = CifarResNet(depth=8, base_channels=4), CifarResNet(depth=14, base_channels=5)
    a, b, the_plan, _ = _outputs(src, dst, x, tensor_rule="net2net", deepen="identity")
    assert _max_rel(a, b) < RTOL
    assert len(the_plan.deepening.identity) == 3 and the_plan.widened


def test_a_block_that_is_not_residual_keeps_its_copies_and_is_reported():
    x = jnp.zeros((2, 6))
    src, dst = PlainNet(2), PlainNet(4)
    src_vars = _trained(src, x)
    with pytest.warns(DeepeningWarning, match="keep their copied values"):
        deep = plan(src, dst, sample_input=x, deepen="identity")
    plain = plan(src, dst, sample_input=x)
    assert deep.deepening.identity == ()
    assert deep.deepening.kept and all("not residual" in why for _, why in deep.deepening.kept)
    assert "keeps its copied values" in str(deep)
    jax.tree.map(
        np.testing.assert_array_equal,
        deep.apply(src_vars, jax.random.key(0)),
        plain.apply(src_vars, jax.random.key(0)),
    )


# ----------------------------------------------------------------------------------
# Public API and docs.


def test_net2net_through_transfer():
    src, dst, x = MLP((8,), 3), MLP((12,), 3), jnp.zeros((2, 5))
    src_vars = _trained(src, x)
    out = dpiat_jax.transfer(src_vars, src, dst, jax.random.key(0), tensor_rule="net2net")
    batch = jax.random.normal(jax.random.key(1), x.shape)
    assert _max_rel(src.apply(src_vars, batch), dst.apply(out, batch)) < RTOL


def test_deepen_through_transfer():
    x = jnp.zeros((2, 8, 8, 3))
    src, dst = CifarResNet(depth=8, base_channels=4), CifarResNet(depth=14, base_channels=4)
    src_vars = _trained(src, x)
    out = dpiat_jax.transfer(
        src_vars, src, dst, jax.random.key(0), sample_input=x, deepen="identity"
    )
    batch = jax.random.normal(jax.random.key(1), x.shape)
    assert _max_rel(src.apply(src_vars, batch), dst.apply(out, batch)) < RTOL


def test_growth_docs_run(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "growth.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert blocks
    for paper in ("Net2Net", "Goyal", "ReZero", "Fixup"):
        assert paper in text
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    for i, block in enumerate(blocks, start=1):
        exec(compile(block, f"docs/growth.md (python block {i})", "exec"), namespace)  # noqa: S102


def test_only_hidden_spaces_are_widened():
    """A head with more classes follows clip: its new outputs are not copies."""
    src, dst, x = MLP((8,), 3), MLP((12,), 5), jnp.zeros((2, 5))
    the_plan = plan(src, dst, sample_input=x, tensor_rule="net2net")
    assert [(w.src_size, w.size) for w in the_plan.widened] == [(8, 12)]
    members = [the_plan.moves[i].dst for i, _, _ in the_plan.widened[0].members]
    assert ("params", "head", "kernel") in members  # its input dimension consumes
    out = the_plan.apply(_trained(src, x), jax.random.key(0))
    clip = plan(src, dst, sample_input=x).apply(_trained(src, x), jax.random.key(0))
    np.testing.assert_array_equal(out["params"]["head"]["bias"], clip["params"]["head"]["bias"])


class GroupedCNN(nn.Module):
    """A grouped convolution (2 groups) after a widened convolution."""

    channels: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.channels, (3, 3))(x))
        x = nn.Conv(self.channels, (3, 3), feature_group_count=2)(x)
        return nn.Dense(2)(jnp.mean(x, axis=(1, 2)))


def test_grouped_convolution_input_is_marked_not_preserved():
    x = jnp.zeros((2, 6, 6, 3))
    _, _, the_plan, out = _outputs(GroupedCNN(8), GroupedCNN(12), x, tensor_rule="net2net")
    # the grouped conv's input: no parameter consumes it channel by channel, so clip;
    # its output: widened (the head consumes it), but the groups differ: not preserved
    assert [w.preserved for w in the_plan.widened] == [False]
    assert "not function-preserving" in str(the_plan)
    fresh = jax.eval_shape(GroupedCNN(12).init, jax.random.key(0), x)
    assert jax.tree.map(lambda a: a.shape, out) == jax.tree.map(lambda a: a.shape, fresh)
