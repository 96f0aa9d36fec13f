"""The layers stage: kinds, main shapes, tensors of every collection, call order."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpiat_jax.layers import Layer, ModuleNode, layers
from dpiat_jax.spec import LayerSpec
from dpiat_jax.trace.linen import trace


class One(nn.Module):
    """A root with a single layer called ``layer`` built by ``make``."""

    make: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x):
        return self.make(name="layer")(x)


class Custom(nn.Module):
    """A parametrised module the library does not know: its kind is its class name."""

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.normal(), (x.shape[-1], 2))
        b = self.param("b", nn.initializers.zeros, (2,))
        return x @ w + b


f32 = jnp.float32


def np_init(module: nn.Module, x) -> dict:
    """Variables of ``module`` as numpy arrays from an abstract init (no XLA compilation)."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), abstract)


# (id, layer factory, input, kind, main tensor, main shape, {collection: tensor names})
KIND_CASES = [
    ("conv1d", functools.partial(nn.Conv, 4, (3,)), ((1, 8, 2), f32), "conv1d", "kernel",
     (3, 2, 4), {"params": {"kernel", "bias"}}),
    ("conv2d", functools.partial(nn.Conv, 4, (3, 3)), ((1, 8, 8, 2), f32), "conv2d", "kernel",
     (3, 3, 2, 4), {"params": {"kernel", "bias"}}),
    ("conv3d", functools.partial(nn.Conv, 4, (3, 3, 3), use_bias=False), ((1, 4, 4, 4, 2), f32),
     "conv3d", "kernel", (3, 3, 3, 2, 4), {"params": {"kernel"}}),
    ("depthwise2d", functools.partial(nn.Conv, 8, (3, 3), feature_group_count=4),
     ((1, 8, 8, 4), f32), "depthwise_conv2d", "kernel", (3, 3, 1, 8),
     {"params": {"kernel", "bias"}}),
    ("depthwise1d", functools.partial(nn.Conv, 4, (3,), feature_group_count=4), ((1, 8, 4), f32),
     "depthwise_conv1d", "kernel", (3, 1, 4), {"params": {"kernel", "bias"}}),
    ("grouped2d", functools.partial(nn.Conv, 4, (3, 3), feature_group_count=2),
     ((1, 8, 8, 4), f32), "conv2d", "kernel", (3, 3, 2, 4), {"params": {"kernel", "bias"}}),
    ("conv_transpose1d", functools.partial(nn.ConvTranspose, 4, (3,)), ((1, 8, 2), f32),
     "conv_transpose1d", "kernel", (3, 2, 4), {"params": {"kernel", "bias"}}),
    ("conv_transpose2d", functools.partial(nn.ConvTranspose, 4, (3, 3)), ((1, 8, 8, 2), f32),
     "conv_transpose2d", "kernel", (3, 3, 2, 4), {"params": {"kernel", "bias"}}),
    ("dense", functools.partial(nn.Dense, 5), ((1, 3), f32), "dense", "kernel", (3, 5),
     {"params": {"kernel", "bias"}}),
    ("dense_general", functools.partial(nn.DenseGeneral, (2, 3)), ((1, 4), f32), "dense_general",
     "kernel", (4, 2, 3), {"params": {"kernel", "bias"}}),
    ("embed", functools.partial(nn.Embed, 10, 6), ((1, 4), jnp.int32), "embed", "embedding",
     (10, 6), {"params": {"embedding"}}),
    ("batch_norm", functools.partial(nn.BatchNorm, use_running_average=True), ((1, 5), f32),
     "batch_norm", "scale", (5,), {"params": {"scale", "bias"}, "batch_stats": {"mean", "var"}}),
    ("layer_norm", nn.LayerNorm, ((1, 5), f32), "layer_norm", "scale", (5,),
     {"params": {"scale", "bias"}}),
    ("group_norm", functools.partial(nn.GroupNorm, num_groups=2), ((1, 4, 4, 6), f32),
     "group_norm", "scale", (6,), {"params": {"scale", "bias"}}),
    ("rms_norm", nn.RMSNorm, ((1, 5), f32), "rms_norm", "scale", (5,), {"params": {"scale"}}),
    ("custom", Custom, ((1, 7), f32), "Custom", "w", (7, 2), {"params": {"w", "b"}}),
]  # fmt: skip


@pytest.mark.parametrize(
    "make,x,kind,main,shape,names", [c[1:] for c in KIND_CASES], ids=[c[0] for c in KIND_CASES]
)
def test_layer_kind_main_shape_and_tensors(make, x, kind, main, shape, names):
    module = One(make)
    x = jnp.zeros(*x)
    variables = np_init(module, x)
    root, abstract = trace(module, variables, (x,), {})
    assert isinstance(root, ModuleNode)
    found = layers(root)
    assert len(found) == 1
    layer = found[0]
    assert isinstance(layer, Layer)
    assert layer.path == ("layer",)
    assert layer.name == "layer"
    assert layer.kind == kind
    assert layer.main == main
    assert layer.shape == shape
    assert layer.spec == LayerSpec(kind, shape)
    assert not layer.is_placeholder
    # Every collection's tensors, under names relative to the layer.
    assert {c: set(g) for c, g in layer.tensors.items()} == names
    for collection, group in layer.tensors.items():
        for name, value in group.items():
            # The caller's arrays themselves, never copies.
            assert value is variables[collection]["layer"][name]
    assert layer.num_params() == sum(
        int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables)
    )
    # The abstract init has the variables' structure and shapes.
    assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(variables)
    assert jax.tree_util.tree_map(lambda a: a.shape, abstract) == jax.tree_util.tree_map(
        lambda a: a.shape, variables
    )


def test_trace_without_variables_gives_abstract_tensors():
    module = One(functools.partial(nn.BatchNorm, use_running_average=True))
    x = jnp.zeros((2, 5))
    root, _ = trace(module, None, (x,), {})
    (layer,) = layers(root)
    assert layer.kind == "batch_norm"
    assert layer.tensors["batch_stats"]["mean"].shape == (5,)
    assert isinstance(layer.tensors["batch_stats"]["var"], jax.ShapeDtypeStruct)
    assert layer.num_params() == 4 * 5


class Mixed(nn.Module):
    """Layers of many kinds, called in an order unlike definition or alphabetical order."""

    def setup(self):
        self.z_dense = nn.Dense(6)
        self.a_norm = nn.LayerNorm()
        self.m_conv = nn.Conv(6, (3,))
        self.drop = nn.Dropout(0.5, deterministic=True)
        self.b_bn = nn.BatchNorm(use_running_average=True)

    def __call__(self, x):  # x: (1, 8, 3)
        x = self.m_conv(x)
        x = self.b_bn(x)
        x = self.drop(x)
        x = self.a_norm(x)
        x = self.z_dense(x)
        return self.a_norm(x)  # a second call adds nothing


def test_layers_in_call_order_with_placeholders():
    module = Mixed()
    x = jnp.zeros((1, 8, 3))
    variables = np_init(module, x)
    root, _ = trace(module, variables, (x,), {})
    found = layers(root)
    assert [layer.name for layer in found] == ["m_conv", "b_bn", "drop", "a_norm", "z_dense"]
    assert [layer.kind for layer in found] == [
        "conv1d",
        "batch_norm",
        "none",
        "layer_norm",
        "dense",
    ]
    drop = found[2]
    assert drop.is_placeholder
    assert drop.shape == ()
    assert drop.spec == LayerSpec("none", ())
    assert drop.spec.is_placeholder
    assert drop.num_params() == 0
    assert drop.type_name == "Dropout"
    assert found[1].tensors["batch_stats"]["mean"] is variables["batch_stats"]["b_bn"]["mean"]


class Many(nn.Module):
    """Twelve auto-named Dense layers: Conv_10-style names must not sort before Dense_2."""

    @nn.compact
    def __call__(self, x):
        for i in range(12):
            x = nn.Dense(i + 1)(x)
        return x


def test_call_order_not_key_order():
    module = Many()
    x = jnp.zeros((1, 3))
    root, _ = trace(module, None, (x,), {})
    found = layers(root)
    assert [layer.name for layer in found] == [f"Dense_{i}" for i in range(12)]
    assert [layer.shape[1] for layer in found] == list(range(1, 13))


class Owner(nn.Module):
    """A module that owns a parameter beside its submodules (a class token)."""

    @nn.compact
    def __call__(self, x):
        token = self.param("token", nn.initializers.normal(), (1, 4))
        x = nn.Dense(4, name="proj")(x)
        return nn.Dense(2, name="out")(x + token)


class Outer(nn.Module):
    @nn.compact
    def __call__(self, x):
        pos = self.param("pos", nn.initializers.normal(), (3, 5))
        x = Owner(name="owner")(x)
        return x + pos[0, :2]


def test_pseudo_layer_for_parameters_owned_beside_submodules():
    module = Outer()
    x = jnp.zeros((1, 3))
    variables = np_init(module, x)
    root, _ = trace(module, variables, (x,), {})
    found = layers(root)
    names = [(layer.name, layer.kind) for layer in found]
    assert names == [
        ("<root>", "own:Outer"),
        ("owner", "own:Owner"),
        ("owner/proj", "dense"),
        ("owner/out", "dense"),
    ]
    root_own, owner_own = found[0], found[1]
    assert root_own.path == ()
    assert root_own.tensors == {"params": {"pos": variables["params"]["pos"]}}
    assert root_own.main == "pos"
    assert root_own.shape == (3, 5)
    assert owner_own.path == ("owner",)
    assert set(owner_own.tensors["params"]) == {"token"}
    assert owner_own.shape == (1, 4)
    # A pseudo-layer's tensors are not those of its submodules, and vice versa.
    assert set(found[2].tensors["params"]) == {"kernel", "bias"}


def test_every_variable_belongs_to_exactly_one_layer():
    module = Outer()
    x = jnp.zeros((1, 3))
    variables = np_init(module, x)
    root, _ = trace(module, variables, (x,), {})
    owned = sorted(
        (c, *layer.path, *n.split("/"))
        for layer in layers(root)
        for c, g in layer.tensors.items()
        for n in g
    )
    from flax import traverse_util

    assert owned == sorted(traverse_util.flatten_dict(variables))


def test_root_that_is_itself_a_layer():
    module = nn.Dense(3)
    x = jnp.zeros((1, 2))
    root, _ = trace(module, None, (x,), {})
    (layer,) = layers(root)
    assert layer.path == ()
    assert layer.kind == "dense"
    assert layer.shape == (2, 3)


# ----------------------------------------------------------------------------------
# Records compare by value: identity fields, never the arrays.


def test_layer_equality_and_hash_ignore_the_arrays():
    a = Layer(("fc",), "dense", "Dense", {"params": {"kernel": jnp.zeros((3, 4))}}, "kernel")
    b = Layer(("fc",), "dense", "Dense", {"params": {"kernel": jnp.ones((5, 6))}}, "kernel")
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    for other in (
        Layer(("fc2",), "dense", "Dense", {}, "kernel"),
        Layer(("fc",), "dense_general", "Dense", {}, "kernel"),
        Layer(("fc",), "dense", "MyDense", {}, "kernel"),
        Layer(("fc",), "dense", "Dense", {}, "bias"),
    ):
        assert a != other


def test_two_traces_of_one_model_give_equal_records():
    x = jnp.zeros((1, 8, 3))
    variables = np_init(Mixed(), x)
    first, _ = trace(Mixed(), variables, (x,), {})
    second, _ = trace(Mixed(), None, (x,), {})  # abstract tensors this time
    assert first == second and hash(first) == hash(second)
    assert layers(first) == layers(second)
    # A stage can key by layer: the layers of one model are distinct values.
    by_layer = {layer: i for i, layer in enumerate(layers(first))}
    assert [by_layer[layer] for layer in layers(second)] == list(range(len(layers(first))))
    assert ModuleNode((), first.type_name, first.children[:-1]) != first


class ScaledHead(nn.Module):
    """A dense layer beside a learned scalar the root owns (CLIP's ``logit_scale``)."""

    width: int

    @nn.compact
    def __call__(self, x):
        scale = self.param("logit_scale", nn.initializers.constant(2.0), ())
        return nn.Dense(self.width, name="head")(x) * scale


def test_scalar_parameter_is_a_layer_that_matches_a_scalar():
    """A scalar is one value, not a placeholder: the root pseudo-layer that owns it
    scores against another scalar and moves."""
    import dpiat_jax

    x = jnp.ones((1, 4))
    src, dst = ScaledHead(3), ScaledHead(5)
    variables = src.init(jax.random.key(0), x)
    variables["params"]["logit_scale"] = jnp.asarray(7.0)
    root, _ = trace(dst, None, (x,), {})
    assert [layer.spec for layer in layers(root) if layer.name == "<root>"] == [
        LayerSpec("own:ScaledHead", (1,))
    ]
    the_plan = dpiat_jax.plan(src, dst, src_variables=variables, sample_input=x)
    assert not the_plan.report.unmatched_dst, the_plan.report
    out = the_plan.apply(variables, jax.random.key(1))
    assert float(out["params"]["logit_scale"]) == 7.0
    assert out["params"]["logit_scale"].shape == ()
