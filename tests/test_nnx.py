"""Flax NNX models through transfer, match and similarity."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dpiat_jax
from dpiat_jax.trace.sown import IgnoredCollectionWarning

X = jnp.ones((1, 8, 8, 3))


class Block(nnx.Module):
    def __init__(self, c: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(c, c, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(c, use_running_average=True, rngs=rngs)
        self.conv2 = nnx.Conv(c, c, (3, 3), rngs=rngs)

    def __call__(self, x):
        return x + self.conv2(nnx.relu(self.bn(self.conv1(x))))


class Net(nnx.Module):
    def __init__(self, width: int, depth: int, rngs: nnx.Rngs):
        # Defined in another order than called: call order must win.
        self.head = nnx.Linear(width, 10, rngs=rngs)
        self.stem = nnx.Conv(3, width, (3, 3), rngs=rngs)
        self.blocks = nnx.List([Block(width, rngs) for _ in range(depth)])
        self.drop = nnx.Dropout(0.1, deterministic=True, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.drop(x.mean((1, 2))))


class LinenBlock(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(self.width, (3, 3), name="conv1")(x)
        y = nn.BatchNorm(use_running_average=True, name="bn")(y)
        return x + nn.Conv(self.width, (3, 3), name="conv2")(nn.relu(y))


class LinenNet(nn.Module):
    """The same architecture as Net, written in linen."""

    width: int = 8
    depth: int = 2

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.width, (3, 3), name="stem")(x)
        for i in range(self.depth):
            x = LinenBlock(self.width, name=f"block{i}")(x)
        return nn.Dense(10, name="head")(x.mean((1, 2)))


def _params(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_identity_nnx_transfer_is_an_exact_copy_and_a_new_model():
    src = Net(8, 2, nnx.Rngs(0))
    dst = Net(8, 2, nnx.Rngs(1))
    before = _params(dst)
    out = dpiat_jax.transfer(src, None, dst, jax.random.key(0))
    assert isinstance(out, Net) and out is not dst and out is not src
    jax.tree.map(np.testing.assert_array_equal, _params(out), _params(src))
    jax.tree.map(np.testing.assert_array_equal, _params(dst), before)  # target untouched
    assert dpiat_jax.similarity(src, src, sample_input=X) == pytest.approx(1.0)


def test_nnx_to_wider_deeper_nnx():
    src, dst = Net(8, 2, nnx.Rngs(0)), Net(16, 3, nnx.Rngs(1))
    out = dpiat_jax.transfer(src, None, dst, jax.random.key(0), sample_input=X)
    got = np.asarray(out.stem.kernel[...])
    np.testing.assert_array_equal(got[..., 4:12], np.asarray(src.stem.kernel[...]))
    np.testing.assert_array_equal(got[..., :4], np.asarray(dst.stem.kernel[...])[..., :4])
    shapes = jax.tree.map(jnp.shape, _params(out))
    assert shapes == jax.tree.map(jnp.shape, _params(dst))
    report = dpiat_jax.match(src, None, dst, sample_input=X)
    assert ("stem", "stem", pytest.approx(0.5)) in report.pairs
    assert report.pairs[0][1] == "stem"  # call order, not attribute order (head first)


def test_linen_to_nnx_and_back():
    linen = LinenNet()
    variables = linen.init(jax.random.key(0), X)
    nnx_model = Net(8, 2, nnx.Rngs(1))
    out = dpiat_jax.transfer(variables, linen, nnx_model, jax.random.key(0))
    assert isinstance(out, Net)
    np.testing.assert_array_equal(
        np.asarray(out.blocks[1].conv2.kernel[...]),
        np.asarray(variables["params"]["block1"]["conv2"]["kernel"]),
    )
    np.testing.assert_array_equal(
        np.asarray(out.blocks[0].bn.mean[...]),
        np.asarray(variables["batch_stats"]["block0"]["bn"]["mean"]),
    )
    back = dpiat_jax.transfer(out, None, linen, jax.random.key(2), sample_input=X)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables))


def test_nnx_source_with_a_different_definition_is_an_error():
    src = Net(8, 2, nnx.Rngs(0))
    with pytest.raises(TypeError, match="src_def=None"):
        dpiat_jax.transfer(src, LinenNet(), Net(8, 2, nnx.Rngs(1)), jax.random.key(0))


def test_rank_sources_accepts_nnx_models():
    target = Net(16, 3, nnx.Rngs(0))
    cands = [Net(4, 1, nnx.Rngs(1)), Net(16, 3, nnx.Rngs(2)), Net(8, 2, nnx.Rngs(3))]
    ranked = dpiat_jax.rank_sources(cands, target, sample_input=X)
    assert [i for i, _ in ranked] == [1, 2, 0]
    assert ranked[0][1] == pytest.approx(1.0)


class Gated(nnx.Module):
    """Two positional inputs, and features sown while it runs."""

    def __init__(self, width: int, rngs: nnx.Rngs):
        self.proj = nnx.Linear(4, width, rngs=rngs)
        self.head = nnx.Linear(width, 2, rngs=rngs)

    def __call__(self, x, mask):
        h = self.proj(x * mask)
        self.sow(nnx.Intermediate, "features", h)
        return self.head(h)


def test_nnx_tracing_changes_no_class_and_no_model():
    calls = {cls: cls.__call__ for cls in (nnx.Conv, nnx.Linear, nnx.BatchNorm, Net, Block)}
    src, dst = Net(8, 2, nnx.Rngs(0)), Net(16, 3, nnx.Rngs(1))
    dpiat_jax.transfer(src, None, dst, jax.random.key(0), sample_input=X)
    assert {cls: cls.__call__ for cls in calls} == calls
    for model in (src, dst):
        assert type(model) is Net and type(model.stem) is nnx.Conv
        assert type(model.blocks[0]) is Block and type(model.blocks[0].conv1) is nnx.Conv


def test_nnx_call_kwargs_typo_names_the_keyword():
    src, dst = Net(8, 2, nnx.Rngs(0)), Net(8, 2, nnx.Rngs(1))
    with pytest.raises(TypeError, match=r"`call_kwargs` holds \['train'\], which Net.__call__"):
        dpiat_jax.match(src, None, dst, sample_input=X, call_kwargs={"train": False})


@pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning")
def test_nnx_two_inputs_and_sown_intermediates():
    x = jnp.ones((1, 4))
    src, dst = Gated(8, nnx.Rngs(0)), Gated(16, nnx.Rngs(1))
    src(x, x)  # the model now holds an Intermediate: not a variable to transfer
    with pytest.raises(ValueError, match=r"Inputs\(x, mask\)"):
        dpiat_jax.transfer(src, None, dst, jax.random.key(0))
    with pytest.warns(IgnoredCollectionWarning, match="'intermediate'"):
        out = dpiat_jax.transfer(
            src, None, dst, jax.random.key(0), sample_input=dpiat_jax.Inputs(x, x)
        )
    assert isinstance(out, Gated)
    got = np.asarray(out.proj.kernel[...])
    np.testing.assert_array_equal(got[:, 4:12], np.asarray(src.proj.kernel[...]))
    report = dpiat_jax.match(dst, None, dst, sample_input=((x, x), (x, x)))
    assert report.param_coverage == 1.0


def _buffers(tree) -> set[int]:
    return {a.unsafe_buffer_pointer() for a in jax.tree.leaves(tree) if isinstance(a, jax.Array)}


def test_nnx_target_compiles_once_and_shares_no_buffer():
    """An NNX target's own variables go into the compiled program as an input: a second
    transfer to another model of the same architecture reuses the program, and takes
    its untouched tensors from that model, in fresh buffers."""
    src = Net(8, 2, nnx.Rngs(0))
    first_dst, second_dst = Net(16, 3, nnx.Rngs(1)), Net(16, 3, nnx.Rngs(2))
    first = dpiat_jax.plan(src, first_dst, sample_input=X)
    second = dpiat_jax.plan(src, second_dst, sample_input=X)
    out = first.apply(src, jax.random.key(0))
    again = second.apply(src, jax.random.key(0))
    (program,) = first.compiled.values()
    assert list(second.compiled.values()) == [program]
    assert program._cache_size() == 1
    head = np.asarray(out["params"]["head"]["kernel"])  # target width 16: partly fresh
    np.testing.assert_array_equal(head[:4], np.asarray(first_dst.head.kernel[...])[:4])
    np.testing.assert_array_equal(
        np.asarray(again["params"]["head"]["kernel"])[:4],
        np.asarray(second_dst.head.kernel[...])[:4],
    )
    held = _buffers(nnx.state(first_dst)) | _buffers(nnx.state(src))
    assert not _buffers(out) & held
