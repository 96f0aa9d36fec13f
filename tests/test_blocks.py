"""Blocks standardisation (design.md, "Blocks") on hand-built module hierarchies.

Every expected tree below is written by hand from the design.md rules; leaves are the
layers' module paths joined with "/" ("<root>" for a root pseudo-layer).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import pytest

from dpiat_jax.blocks import blocks, to_spec_tree
from dpiat_jax.layers import Layer
from dpiat_jax.spec import LayerSpec
from dpiat_jax.trace.linen import trace


def names(tree: list) -> list:
    """The block tree with every Layer replaced by its name."""
    out = []
    for x in tree:
        assert isinstance(x, (list, Layer)), type(x)
        out.append(names(x) if isinstance(x, list) else x.name)
    return out


def tree_of(module: nn.Module, x) -> list:
    root, _ = trace(module, None, (x,), {})
    return blocks(root)


X = jnp.zeros((1, 4))


# ----------------------------------------------------------------------------------
# Building blocks (all dense so any input of shape (1, k) runs them).


class Pair(nn.Module):
    """Two dense layers: a list with two dimensional layers, i.e. a block."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, name="b")(nn.Dense(4, name="a")(x))


class DenseNorm(nn.Module):
    """One dense layer and one norm: fewer than two dimensional layers, so spliced."""

    @nn.compact
    def __call__(self, x):
        return nn.LayerNorm(name="norm")(nn.Dense(4, name="fc")(x))


class Head(nn.Module):
    """A module with a single layer: collapses to that layer."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="fc")(x)


class Act(nn.Module):
    """A parameter-free custom module (a placeholder)."""

    @nn.compact
    def __call__(self, x):
        return nn.relu(x)


# ----------------------------------------------------------------------------------
# Rule 3, 4 and the level of a single child: wrappers are transparent at level 0.


class Body(nn.Module):
    """[Dense a, Pair, Dense c]: two singles and one block."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, name="a")(x)
        x = Pair(name="pair")(x)
        return nn.Dense(4, name="c")(x)


class Wrap(nn.Module):
    """A single-child wrapper."""

    inner: nn.Module

    @nn.compact
    def __call__(self, x):
        return self.inner(x)


def test_wrapper_chain_at_level_zero_keeps_two_level_structure():
    # Root -> Wrap -> Wrap -> Body: all single-child, so Body is at level 0 and its list
    # stays two-level (rule 4 applies at level > 0 only).
    module = Wrap(Wrap(Body()))
    assert names(tree_of(module, X)) == [
        "inner/inner/a",
        ["inner/inner/pair/a", "inner/inner/pair/b"],
        "inner/inner/c",
    ]
    # Body as the root itself gives the same shape.
    assert names(tree_of(Body(), X)) == ["a", ["pair/a", "pair/b"], "c"]


class BodyAndHead(nn.Module):
    """Body has a sibling, so it is at level 1 and flattened (2 singles > 1 block)."""

    @nn.compact
    def __call__(self, x):
        x = Body(name="body")(x)
        return nn.Dense(2, name="head")(x)


def test_flatten_at_level_one_when_singles_outnumber_blocks():
    assert names(tree_of(BodyAndHead(), X)) == [
        ["body/a", "body/pair/a", "body/pair/b", "body/c"],
        "head",
    ]


class Stage(nn.Module):
    """Two blocks: a two-level structure at level 1 (0 singles <= 2 blocks)."""

    @nn.compact
    def __call__(self, x):
        return Pair(name="p1")(Pair(name="p0")(x))


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, name="stem")(x)
        x = Stage(name="stage")(x)
        return nn.Dense(2, name="head")(x)


def test_two_level_child_is_spliced():
    assert names(tree_of(Net(), X)) == [
        "stem",
        ["stage/p0/a", "stage/p0/b"],
        ["stage/p1/a", "stage/p1/b"],
        "head",
    ]


class DenseThenPair(nn.Module):
    """One single and one block: singles == blocks, so two-level (not flattened)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, name="single")(x)
        return Pair(name="pair")(x)


class TieNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, name="stem")(x)
        x = DenseThenPair(name="mid")(x)
        return nn.Dense(2, name="head")(x)


def test_equal_singles_and_blocks_stay_two_level_and_are_spliced():
    assert names(tree_of(TieNet(), X)) == [
        "stem",
        "mid/single",
        ["mid/pair/a", "mid/pair/b"],
        "head",
    ]


class NormStack(nn.Module):
    """Three norms and a Dropout: no dimensional layer below it."""

    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm(name="n0")(x)
        x = nn.Dropout(0.1, deterministic=True, name="drop")(x)
        x = nn.LayerNorm(name="n1")(x)
        return nn.LayerNorm(name="n2")(x)


class SpliceNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = DenseNorm(name="u0")(x)
        x = DenseNorm(name="u1")(x)
        x = NormStack(name="norms")(x)
        return nn.Dense(2, name="head")(x)


def test_lists_with_fewer_than_two_dimensional_layers_are_spliced():
    assert names(tree_of(SpliceNet(), X)) == [
        "u0/fc",
        "u0/norm",
        "u1/fc",
        "u1/norm",
        "norms/n0",
        "norms/drop",
        "norms/n1",
        "norms/n2",
        "head",
    ]


class Nested(nn.Module):
    """A level-1 module whose only dimensional layers sit two levels further down."""

    @nn.compact
    def __call__(self, x):
        x = DenseNorm(name="u")(x)
        return nn.LayerNorm(name="norm")(x)


class NestedNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = Nested(name="n0")(x)
        x = Nested(name="n1")(x)
        return Pair(name="pair")(x)


def test_dimensional_count_looks_at_every_depth():
    # Each Nested holds one dense layer in all: spliced; the Pair holds two: a block.
    assert names(tree_of(NestedNet(), X)) == [
        "n0/u/fc",
        "n0/u/norm",
        "n0/norm",
        "n1/u/fc",
        "n1/u/norm",
        "n1/norm",
        ["pair/a", "pair/b"],
    ]


# ----------------------------------------------------------------------------------
# Rule 5: one-element lists collapse.


class WrappedPair(nn.Module):
    @nn.compact
    def __call__(self, x):
        return Pair(name="inner")(x)


class WrappedStage(nn.Module):
    @nn.compact
    def __call__(self, x):
        return WrappedStageInner(name="inner")(x)


class WrappedStageInner(nn.Module):
    @nn.compact
    def __call__(self, x):
        return Stage(name="inner")(x)


class CollapseNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, name="stem")(x)
        x = WrappedPair(name="wrapped_pair")(x)
        x = WrappedStage(name="wrapped_stage")(x)
        return Head(name="head")(x)


def test_one_element_lists_collapse():
    assert names(tree_of(CollapseNet(), X)) == [
        "stem",
        ["wrapped_pair/inner/a", "wrapped_pair/inner/b"],
        ["wrapped_stage/inner/inner/p0/a", "wrapped_stage/inner/inner/p0/b"],
        ["wrapped_stage/inner/inner/p1/a", "wrapped_stage/inner/inner/p1/b"],
        "head/fc",
    ]


def test_root_result_is_always_a_list():
    tree = tree_of(Head(), X)
    assert names(tree) == ["fc"]
    tree = tree_of(nn.Dense(3), X)
    assert isinstance(tree, list) and len(tree) == 1
    assert tree[0].kind == "dense"


# ----------------------------------------------------------------------------------
# The design.md example: a ResNet inside a Sequential-like wrapper.


class ConvBN(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, (3, 3), self.strides, name="conv")(x)
        return nn.BatchNorm(use_running_average=True, name="bn")(x)


class Residual(nn.Module):
    """body = [conv, bn, conv, bn] as a submodule; a downsampling block adds a 1x1 conv."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        y = Body2(self.features, self.strides, name="body")(x)
        if self.strides != 1:
            x = nn.Conv(self.features, (1, 1), self.strides, name="shortcut")(x)
        return nn.relu(x + y)


class Body2(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, (3, 3), self.strides, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn1")(x)
        x = nn.Conv(self.features, (3, 3), name="conv2")(x)
        return nn.BatchNorm(use_running_average=True, name="bn2")(x)


class ResNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="stem_conv")(x)
        x = nn.BatchNorm(use_running_average=True, name="stem_bn")(x)
        x = Residual(4, name="r0")(x)
        x = Residual(4, name="r1")(x)
        x = Residual(8, 2, name="r2")(x)
        x = Residual(8, name="r3")(x)
        return nn.Dense(3, name="fc")(jnp.mean(x, axis=(1, 2)))


def body(prefix: str) -> list:
    return [f"{prefix}/{n}" for n in ("conv1", "bn1", "conv2", "bn2")]


def test_design_example_resnet_in_a_wrapper():
    tree = tree_of(Wrap(ResNet()), jnp.zeros((1, 8, 8, 3)))
    p = "inner/"
    assert names(tree) == [
        p + "stem_conv",
        p + "stem_bn",
        body(p + "r0/body"),
        body(p + "r1/body"),
        body(p + "r2/body"),  # the downsampling block's body ...
        p + "r2/shortcut",  # ... and its shortcut conv, as two elements
        body(p + "r3/body"),
        p + "fc",
    ]
    spec = to_spec_tree(tree)
    assert spec[0] == LayerSpec("conv2d", (3, 3, 3, 4))
    assert spec[1] == LayerSpec("batch_norm", (4,))
    assert spec[4][0] == LayerSpec("conv2d", (3, 3, 4, 8))
    assert spec[5] == LayerSpec("conv2d", (1, 1, 4, 8))
    assert spec[-1] == LayerSpec("dense", (8, 3))


# ----------------------------------------------------------------------------------
# Placeholders keep positions; pseudo-layers; call order.


class WithPlaceholders(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, name="d0")(x)
        x = nn.Dropout(0.5, deterministic=True, name="drop")(x)
        x = Act(name="act")(x)
        x = nn.Dense(4, name="d1")(x)
        x = InnerWithPlaceholder(name="blk")(x)
        return nn.Dense(2, name="head")(x)


class InnerWithPlaceholder(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, name="a")(x)
        x = Act(name="act")(x)
        return nn.Dense(4, name="b")(x)


def test_placeholders_keep_their_positions():
    tree = tree_of(WithPlaceholders(), X)
    assert names(tree) == ["d0", "drop", "act", "d1", ["blk/a", "blk/act", "blk/b"], "head"]
    spec = to_spec_tree(tree)
    assert spec[1] == LayerSpec("none", ()) and spec[2] == LayerSpec("none", ())
    assert spec[4][1] == LayerSpec("none", ())
    assert spec[0] == LayerSpec("dense", (4, 4))


class WithOwnParam(nn.Module):
    """A root owning a parameter beside submodules, and a child doing the same."""

    @nn.compact
    def __call__(self, x):
        pos = self.param("pos", nn.initializers.normal(), (1, 4))
        x = nn.Dense(4, name="embed")(x) + pos
        x = TokenPair(name="tok")(x)
        return nn.Dense(2, name="head")(x)


class TokenPair(nn.Module):
    @nn.compact
    def __call__(self, x):
        cls = self.param("cls", nn.initializers.normal(), (4,))
        x = nn.Dense(4, name="a")(x + cls)
        return nn.Dense(4, name="b")(x)


def test_pseudo_layers_for_own_parameters():
    tree = tree_of(WithOwnParam(), X)
    assert names(tree) == ["<root>", "embed", ["tok", "tok/a", "tok/b"], "head"]
    spec = to_spec_tree(tree)
    assert spec[0] == LayerSpec("own:WithOwnParam", (1, 4))
    assert spec[2][0] == LayerSpec("own:TokenPair", (4,))


class SetupOrder(nn.Module):
    """Defined z, a, m; called m, z, a (alphabetical would be a, m, z)."""

    def setup(self):
        self.z_first = nn.Dense(2)
        self.a_second = nn.Dense(3)
        self.m_third = nn.Dense(4)

    def __call__(self, x):
        x = self.m_third(x)
        x = self.z_first(x)
        return self.a_second(x)


def test_call_order_beats_definition_and_alphabetical_order():
    tree = tree_of(SetupOrder(), X)
    assert names(tree) == ["m_third", "z_first", "a_second"]
    assert [s.shape for s in to_spec_tree(tree)] == [(4, 4), (4, 2), (2, 3)]


class SetupList(nn.Module):
    """Twelve layers from a setup list, called back to front, plus compact Dense_i names."""

    def setup(self):
        self.layers = [nn.Dense(i + 1) for i in range(12)]

    def __call__(self, x):
        for layer in reversed(self.layers):
            x = layer(x)
        return x


class TwelveCompact(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(12):
            x = nn.Dense(i + 1)(x)
        return x


class TwelveNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = TwelveCompact(name="compact")(x)
        return SetupList(name="listed")(x)


def test_more_than_ten_layers_in_call_order():
    tree = tree_of(TwelveNet(), X)
    assert names(tree) == [
        [f"compact/Dense_{i}" for i in range(12)],
        [f"listed/layers_{i}" for i in reversed(range(12))],
    ]
    assert [s.shape[1] for s in to_spec_tree(tree)[0]] == list(range(1, 13))


@pytest.mark.parametrize("module", [Net(), TieNet(), CollapseNet()], ids=lambda m: type(m).__name__)
def test_blocks_is_pure(module):
    root, _ = trace(module, None, (X,), {})
    first = names(blocks(root))
    assert names(blocks(root)) == first
    spec = to_spec_tree(blocks(root))

    def leaves(tree):
        return [y for x in tree for y in (leaves(x) if isinstance(x, list) else [x])]

    assert all(isinstance(x, LayerSpec) for x in leaves(spec))
    assert len(leaves(spec)) == len(leaves(blocks(root)))


def test_transformer_block_is_kept_as_one_unit():
    """norm, attention block, norm, MLP block: kept whole, not spliced into the parent
    (issue 12), so depth changes align block to block."""
    from dpiat_jax.blocks import blocks, map_tree
    from dpiat_jax.layers import Layer, ModuleNode

    def layer(path, kind="dense"):
        return Layer(path, kind, "X", {}, "kernel")

    def block(i):
        p = (f"h{i}",)
        attn = ModuleNode(
            (*p, "attn"), "Attn", (layer((*p, "attn", "qkv")), layer((*p, "attn", "o")))
        )
        mlp = ModuleNode((*p, "mlp"), "MLP", (layer((*p, "mlp", "fc")), layer((*p, "mlp", "proj"))))
        ln1, ln2 = layer((*p, "ln1"), "layer_norm"), layer((*p, "ln2"), "layer_norm")
        return ModuleNode(p, "Block", (ln1, attn, ln2, mlp))

    root = ModuleNode((), "GPT", (layer(("wte",), "embed"), block(0), block(1), layer(("head",))))
    tree = map_tree(lambda x: x.name, blocks(root))
    assert tree == [
        "wte",
        ["h0/ln1", ["h0/attn/qkv", "h0/attn/o"], "h0/ln2", ["h0/mlp/fc", "h0/mlp/proj"]],
        ["h1/ln1", ["h1/attn/qkv", "h1/attn/o"], "h1/ln2", ["h1/mlp/fc", "h1/mlp/proj"]],
        "head",
    ]
    # A stage of residual blocks (no single layers beside them) is still spliced.
    stage = ModuleNode(("stage",), "Stage", (block(2).children[1], block(3).children[3]))
    tree = map_tree(lambda x: x.name, blocks(ModuleNode((), "Net", (stage, layer(("head",))))))
    assert tree == [["h2/attn/qkv", "h2/attn/o"], ["h3/mlp/fc", "h3/mlp/proj"], "head"]


def _layer(path, kind="dense", shape=(4, 4)):
    from jax import ShapeDtypeStruct

    tensors = {"params": {"kernel": ShapeDtypeStruct(shape, jnp.float32)}}
    return Layer(path, kind, "X", tensors, "kernel")


def _node(path, *children):
    from dpiat_jax.layers import ModuleNode

    return ModuleNode(path, "M", tuple(children))


def test_parallel_block_is_kept_as_one_unit():
    """GPT-J's block: one norm, then attention and MLP side by side (two sub-blocks
    that differ): a unit, so attention aligns with attention at any depth."""
    from dpiat_jax.blocks import map_tree

    def block(i):
        p = (f"h{i}",)
        attn = _node((*p, "attn"), _layer((*p, "attn", "q")), _layer((*p, "attn", "o")))
        mlp = _node(
            (*p, "mlp"),
            _layer((*p, "mlp", "fc"), shape=(4, 8)),
            _layer((*p, "mlp", "out"), shape=(8, 4)),
        )
        return _node(p, _layer((*p, "ln"), "layer_norm", (4,)), attn, mlp)

    h = _node(("h",), block(0), block(1))
    root = _node((), _node(("t",), _layer(("t", "wte"), "embed"), h), _layer(("head",)))
    tree = map_tree(lambda x: x.name, blocks(root))
    assert tree[0] == "t/wte" and tree[-1] == "head"
    assert tree[1] == ["h0/ln", ["h0/attn/q", "h0/attn/o"], ["h0/mlp/fc", "h0/mlp/out"]]
    # two identical sub-blocks beside one norm are a stack with its final norm: spliced
    same = _node(
        ("s",), block(2).children[1], block(3).children[1], _layer(("s", "ln"), "layer_norm", (4,))
    )
    tree = map_tree(lambda x: x.name, blocks(_node((), same, _layer(("head",)))))
    assert tree == [["h2/attn/q", "h2/attn/o"], ["h3/attn/q", "h3/attn/o"], "s/ln", "head"]


@pytest.mark.parametrize("depth", [2, 3])
def test_shallow_encoder_beside_its_embeddings_is_not_flattened(depth):
    """Encoder layers (attention block, norms, dense layers) beside three singles
    (embeddings, norm, dropout): rule 4 would flatten two layers but not three; a stack
    of layer-normed blocks is kept either way (issue 12), so depths align."""
    from dpiat_jax.blocks import map_tree

    def layer_block(i):
        p = ("enc", f"l{i}")
        attn = _node((*p, "attn"), _layer((*p, "attn", "q")), _layer((*p, "attn", "o")))
        rest = [_layer((*p, "ln1"), "layer_norm", (4,)), _layer((*p, "fc1")), _layer((*p, "fc2"))]
        return _node(p, attn, *rest, _layer((*p, "ln2"), "layer_norm", (4,)))

    singles = (_layer(("enc", "pos"), "embed"), _layer(("enc", "ln"), "layer_norm", (4,)))
    drop = Layer(("enc", "drop"), "none", "Dropout", {}, "")
    enc = _node(("enc",), *singles, drop, *(layer_block(i) for i in range(depth)))
    (encoder, head) = map_tree(lambda x: x.name, blocks(_node((), enc, _layer(("head",)))))
    assert encoder[:3] == ["enc/pos", "enc/ln", "enc/drop"] and head == "head"
    assert [x[0] for x in encoder[3:]] == [f"enc/l{i}/attn/q" for i in range(depth)]


def test_batch_normed_stage_keeps_the_published_flattening():
    """The extension leaves convolutional stages alone: two identical batch-normed
    blocks beside three single layers at level 1 are flattened (rule 4)."""
    from dpiat_jax.blocks import map_tree

    def conv_block(i):
        p = ("stage", f"b{i}")
        return _node(
            p,
            _layer((*p, "conv1"), "conv2d", (3, 3, 4, 4)),
            _layer((*p, "bn"), "batch_norm", (4,)),
            _layer((*p, "conv2"), "conv2d", (3, 3, 4, 4)),
        )

    singles = [_layer(("stage", n), "conv2d", (1, 1, 4, 4)) for n in ("a", "b", "c")]
    stage = _node(("stage",), *singles, conv_block(0), conv_block(1))
    tree = map_tree(lambda x: x.name, blocks(_node((), stage, _layer(("head",)))))
    assert tree[0] == [
        "stage/a",
        "stage/b",
        "stage/c",
        "stage/b0/conv1",
        "stage/b0/bn",
        "stage/b0/conv2",
        "stage/b1/conv1",
        "stage/b1/bn",
        "stage/b1/conv2",
    ]
