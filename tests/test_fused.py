"""Fused projections move part by part; token tables keep their rows; 1-D positions
are interpolated along their one axis."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax
from dpiat_jax.channels import fused_axes
from dpiat_jax.fused import parse_fused
from dpiat_jax.structure import StructureWarning


class Attention(nn.Module):
    d: int
    slices: bool = False

    @nn.compact
    def __call__(self, x):
        qkv = nn.Dense(3 * self.d, name="c_attn")(x)
        if self.slices:
            d = self.d
            q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        else:
            q, k, v = jnp.split(qkv, 3, axis=-1)
        weights = jax.nn.softmax(q @ k.swapaxes(-1, -2), axis=-1)
        return nn.Dense(x.shape[-1], name="c_proj")(weights @ v)


class Decoder(nn.Module):
    d: int
    n: int = 2
    slices: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.d, name="inp")(x)
        for i in range(self.n):
            x = x + Attention(self.d, self.slices, name=f"h_{i}")(nn.LayerNorm()(x))
        return x


class Opaque(nn.Module):
    """A fused projection whose parts the forward pass never cuts apart."""

    d: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3 * self.d, name="qkv")(x).sum(-1)


X = jnp.ones((1, 5, 8))


@pytest.mark.parametrize("slices", [False, True])
def test_split_in_forward_pass_is_detected(slices):
    model = Decoder(16, slices=slices)
    variables = jax.eval_shape(model.init, jax.random.key(0), X)
    found = fused_axes(model, variables, X)
    assert found[("params", "h_0", "c_attn", "kernel")] == (1, 3)
    assert found[("params", "h_1", "c_attn", "bias")] == (0, 3)
    assert ("params", "h_0", "c_proj", "kernel") not in found


@pytest.mark.parametrize("slices", [False, True])
def test_each_part_lands_in_its_own_part(slices):
    src = Decoder(16, slices=slices)
    variables = src.init(jax.random.key(0), X)
    plan = dpiat_jax.plan(src, Decoder(32, slices=slices), sample_input=X)
    assert ("params/h_0/c_attn/kernel", 1, 3) in plan.report.fused
    assert "fused tensors, moved part by part (4)" in str(plan)
    out = plan.apply(variables, jax.random.key(1))
    kernel, grown = (
        variables["params"]["h_0"]["c_attn"]["kernel"],
        out["params"]["h_0"]["c_attn"]["kernel"],
    )
    for part in range(3):  # q into q, k into k, v into v, each centred in its part
        np.testing.assert_array_equal(
            grown[8:24, 32 * part + 8 : 32 * part + 24], kernel[:, 16 * part : 16 * (part + 1)]
        )
    shrunk = dpiat_jax.transfer(
        out, Decoder(32, slices=slices), src, jax.random.key(1), sample_input=X
    )
    np.testing.assert_array_equal(shrunk["params"]["h_0"]["c_attn"]["kernel"], kernel)


def test_declared_fused_option():
    src, dst = Opaque(4), Opaque(8)
    variables = src.init(jax.random.key(0), X)
    plain = dpiat_jax.plan(src, dst, sample_input=X)
    assert plain.report.fused == ()
    declared = dpiat_jax.plan(src, dst, sample_input=X, fused={"qkv": 3})
    assert declared.report.fused == (("params/qkv/bias", 0, 3), ("params/qkv/kernel", 1, 3))
    out = declared.apply(variables, jax.random.key(0))
    bias, grown = variables["params"]["qkv"]["bias"], out["params"]["qkv"]["bias"]
    for part in range(3):
        np.testing.assert_array_equal(
            grown[8 * part + 2 : 8 * part + 6], bias[4 * part : 4 * part + 4]
        )


def test_fused_option_errors():
    with pytest.raises(ValueError, match="part count >= 2"):
        parse_fused({"qkv": 1})
    with pytest.raises(TypeError, match="`fused` must map"):
        parse_fused(["qkv"])
    with pytest.raises(ValueError, match="part count >= 2"):
        dpiat_jax.plan(Opaque(4), Opaque(8), sample_input=X, fused={"qkv": 0})


def test_fused_plan_json_round_trip():
    plan = dpiat_jax.plan(Decoder(16), Decoder(32), sample_input=X)
    again = dpiat_jax.TransferPlan.from_json(plan.to_json(), Decoder(32))
    assert again.moves == plan.moves and again.report.fused == plan.report.fused


class LanguageModel(nn.Module):
    vocab: int
    d: int
    length: int = 64

    @nn.compact
    def __call__(self, tokens):
        table = nn.Embed(self.vocab, self.d, name="tok")
        positions = nn.Embed(self.length, self.d, name="pos")(jnp.arange(tokens.shape[-1]))
        x = nn.Dense(self.d)(table(tokens) + positions)
        return table.attend(x)


TOKENS = jnp.zeros((1, 8), jnp.int32)


def test_token_rows_keep_their_index():
    src = LanguageModel(1000, 32)
    variables = src.init(jax.random.key(0), TOKENS)
    table = variables["params"]["tok"]["embedding"]
    grown = dpiat_jax.transfer(
        variables, src, LanguageModel(2000, 32), jax.random.key(1), sample_input=TOKENS
    )
    np.testing.assert_array_equal(grown["params"]["tok"]["embedding"][:1000], table)
    shrunk = dpiat_jax.transfer(
        variables, src, LanguageModel(500, 16), jax.random.key(1), sample_input=TOKENS
    )
    np.testing.assert_array_equal(shrunk["params"]["tok"]["embedding"], table[:500, 8:24])


@pytest.mark.parametrize("length", [256, 100])  # a square length is not a grid
def test_one_dimensional_positions_are_interpolated(length):
    src = LanguageModel(100, 32, 64)
    variables = src.init(jax.random.key(0), TOKENS)
    table = np.asarray(variables["params"]["pos"]["embedding"])
    out = dpiat_jax.transfer(
        variables, src, LanguageModel(100, 32, length), jax.random.key(1), sample_input=TOKENS
    )
    grown = np.asarray(out["params"]["pos"]["embedding"])
    assert grown.shape == (length, 32)
    np.testing.assert_allclose(grown[0], table[0], rtol=1e-6)
    np.testing.assert_allclose(grown[-1], table[-1], rtol=1e-6)
    where = np.linspace(0, 63, length)
    expected = np.stack([np.interp(where, np.arange(64), table[:, j]) for j in range(32)], axis=1)
    np.testing.assert_allclose(grown, expected, atol=1e-5)


def test_transfer_and_match_take_the_fused_option():
    src, dst = Opaque(4), Opaque(8)
    variables = src.init(jax.random.key(0), X)
    report = dpiat_jax.match(variables, src, dst, sample_input=X, fused={"qkv": (3, 1)})
    assert ("params/qkv/kernel", 1, 3) in report.fused
    out = dpiat_jax.transfer(
        variables, src, dst, jax.random.key(0), sample_input=X, fused={"qkv": 3}
    )
    kernel, grown = variables["params"]["qkv"]["kernel"], out["params"]["qkv"]["kernel"]
    np.testing.assert_array_equal(grown[:, 8 + 2 : 8 + 6], kernel[:, 4:8])  # key into key


class Parts(nn.Module):
    parts: int
    width: int = 8

    @nn.compact
    def __call__(self, x):
        pieces = jnp.split(nn.Dense(self.parts * self.width, name="p")(x), self.parts, -1)
        return sum(pieces)


def test_parts_move_separately_only_when_the_source_splits_alike():
    with pytest.warns(StructureWarning, match="fused in 2 parts"):  # named in a warning
        three_into_two = dpiat_jax.plan(Parts(3), Parts(2, 12), sample_input=X)
    assert three_into_two.report.fused == ()  # q|k|v into gate|up: moved as one tensor
    with pytest.warns(StructureWarning, match="fused in 3 parts"):
        plain_into_fused = dpiat_jax.plan(Opaque(8), Parts(3), sample_input=X)
    assert plain_into_fused.report.fused == ()
    alike = dpiat_jax.plan(Parts(3), Parts(3, 16), sample_input=X)
    assert ("params/p/kernel", 1, 3) in alike.report.fused


def test_fused_patterns_ignore_step_labels():
    from dpiat_jax.fused import FusedRule

    rule = FusedRule("layers/qkv", 3)
    assert rule.matches("layers[2]/qkv") and rule.matches("layers[*]/qkv")
    assert rule.matches("layers/qkv") and not rule.matches("layers[2]/out")
    assert FusedRule("layers[[]2]/qkv", 3).matches("layers[2]/qkv")  # fnmatch escape


class ReshapedQKV(nn.Module):
    """A fused QKV projection reshaped before it is cut: ``(..., 3, heads, dim)`` then
    indexed (``layout="parts"``), or ``(..., heads, 3 * dim)`` then split
    (``layout="heads"``, each head's q, k and v in turn)."""

    heads: int
    dim: int
    layout: str = "parts"

    @nn.compact
    def __call__(self, x):
        h, d = self.heads, self.dim
        qkv = nn.Dense(3 * h * d, name="qkv")(x)
        if self.layout == "parts":
            qkv = qkv.reshape(x.shape[:-1] + (3, h, d))
            q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        else:
            q, k, v = jnp.split(qkv.reshape(x.shape[:-1] + (h, 3 * d)), 3, axis=-1)
        weights = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k), axis=-1)
        out = jnp.einsum("bhts,bshd->bthd", weights, v).reshape(x.shape[:-1] + (h * d,))
        return nn.Dense(x.shape[-1], name="out")(out)


def _reshaped(model: nn.Module) -> dict:
    from dpiat_jax.fused import reshaped_parts
    from dpiat_jax.trace.factors import factor_flow

    return reshaped_parts(factor_flow(model, jax.eval_shape(model.init, KEY, X), X))


KEY = jax.random.key(0)


@pytest.mark.parametrize("heads", [2, 4])  # the target's and the source's
def test_reshape_before_the_cut_is_detected(heads):
    parts = _reshaped(ReshapedQKV(heads, 4, "parts"))
    assert parts[("params", "qkv", "kernel")] == (1, 3)
    assert parts[("params", "qkv", "bias")] == (0, 3)
    assert ("params", "out", "kernel") not in parts
    interleaved = _reshaped(ReshapedQKV(heads, 4, "heads"))  # chunks: (head, part) in turn
    assert interleaved[("params", "qkv", "kernel")] == (1, 3 * heads)
    assert _reshaped(Opaque(4)) == {}


@pytest.mark.parametrize("layout", ["parts", "heads"])
def test_reshaped_parts_land_in_their_own_parts_and_heads(layout):
    """head_dim 4 -> 8 at 2 heads: every (part, head) chunk lands whole, centred in its
    own chunk, q in q, k in k, v in v."""
    src, dst = ReshapedQKV(2, 4, layout), ReshapedQKV(2, 8, layout)
    variables = src.init(KEY, X)
    plan = dpiat_jax.plan(src, dst, sample_input=X)
    assert ("params/qkv/kernel", 1, 6) in plan.report.fused
    out = plan.apply(variables, jax.random.key(1))
    kernel, grown = variables["params"]["qkv"]["kernel"], out["params"]["qkv"]["kernel"]
    for chunk in range(6):
        np.testing.assert_array_equal(
            grown[:, 8 * chunk + 2 : 8 * chunk + 6], kernel[:, 4 * chunk : 4 * chunk + 4]
        )


def test_reshaped_parts_with_more_heads_keep_parts_apart():
    """heads 2 -> 4 at head_dim 4 ((..., 3, heads, dim)): q, k and v move part by part,
    and inside each part the two source heads land whole in the middle two heads."""
    src, dst = ReshapedQKV(2, 4), ReshapedQKV(4, 4)
    variables = src.init(KEY, X)
    plan = dpiat_jax.plan(src, dst, sample_input=X)
    assert ("params/qkv/kernel", 1, 3) in plan.report.fused
    out = plan.apply(variables, jax.random.key(1))
    kernel, grown = variables["params"]["qkv"]["kernel"], out["params"]["qkv"]["kernel"]
    for part in range(3):
        np.testing.assert_array_equal(
            grown[:, 16 * part + 4 : 16 * part + 12], kernel[:, 8 * part : 8 * part + 8]
        )
