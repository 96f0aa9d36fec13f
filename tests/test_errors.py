"""Clear errors: the exception type and the words that tell the user what to fix."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import dpiat_jax
from dpiat_jax import LayerSpec
from dpiat_jax.models import get_model

V = jnp.zeros((1, 4))
IMG = jnp.zeros((1, 8, 8, 3))


def key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def numpy_variables(module: nn.Module, x) -> dict:
    """Variables of ``module`` from an abstract init, as numpy arrays (nothing compiled)."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)
    flat = traverse_util.flatten_dict(abstract)
    return traverse_util.unflatten_dict(
        {k: np.abs(rng.normal(size=v.shape)).astype(v.dtype) + 0.1 for k, v in flat.items()}
    )


class ReluOnly(nn.Module):
    """A module without layers: it only applies a function."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.relu(x)


class Cnn(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        return nn.Dense(2, name="head")(jnp.mean(x, axis=(1, 2)))


class OddSize(nn.Module):
    """A conv net on 5x5 images with a flattening head: no default input size fits."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        return nn.Dense(2, name="head")(x.reshape((x.shape[0], -1)))


@pytest.fixture(scope="module")
def mlp():
    module = get_model("mlp", hidden_sizes=(8,), num_classes=3)
    return module, numpy_variables(module, V)


@pytest.fixture(scope="module")
def cnn():
    module = Cnn()
    return module, numpy_variables(module, IMG)


# ----------------------------------------------------------------------------------
# Modules without layers.


def test_target_without_layers(mlp):
    module, variables = mlp
    with pytest.raises(ValueError, match="no layers") as info:
        dpiat_jax.transfer(variables, module, ReluOnly(), key(0), sample_input=V)
    assert "dst_def" in str(info.value)
    with pytest.raises(ValueError, match="no layers"):
        dpiat_jax.match(variables, module, ReluOnly(), key(0), sample_input=V)


def test_source_without_layers(mlp):
    # The source module creates no variables at all, so its (empty) params do fit it;
    # the problem to report is that it has no layers to transfer from.
    module, _ = mlp
    for empty in ({}, {"params": {}}):
        with pytest.raises(ValueError, match="no layers") as info:
            dpiat_jax.transfer(empty, ReluOnly(), module, key(0), sample_input=V)
        assert "src" in str(info.value)


# ----------------------------------------------------------------------------------
# Variables that do not fit their module.


def test_variables_of_another_shape_name_the_path(mlp):
    module, variables = mlp
    wider = get_model("mlp", hidden_sizes=(16,), num_classes=3)
    with pytest.raises(ValueError) as info:
        dpiat_jax.transfer(variables, wider, module, key(0), sample_input=V)
    message = str(info.value)
    assert "src_params" in message
    assert "params/dense0/kernel" in message
    assert "(4, 8)" in message and "(4, 16)" in message


def test_missing_and_extra_tensors_name_the_path(mlp):
    module, variables = mlp
    missing = {"params": {"dense0": variables["params"]["dense0"]}}
    with pytest.raises(ValueError, match="params/head/kernel: missing"):
        dpiat_jax.transfer(missing, module, module, key(0), sample_input=V)
    extra = {"params": {**variables["params"], "extra": {"kernel": np.zeros((2, 2))}}}
    with pytest.raises(ValueError, match="params/extra/kernel"):
        dpiat_jax.transfer(extra, module, module, key(0), sample_input=V)
    stats = {**variables, "batch_stats": {"bn": {"mean": np.zeros(3)}}}
    with pytest.raises(ValueError, match="batch_stats"):
        dpiat_jax.transfer(stats, module, module, key(0), sample_input=V)


def test_variables_that_are_not_a_dict(mlp):
    module, variables = mlp
    with pytest.raises(TypeError, match="src_params"):
        dpiat_jax.transfer([variables], module, module, key(0), sample_input=V)


# ----------------------------------------------------------------------------------
# Inputs.


def test_sample_input_of_the_wrong_rank(cnn):
    module, variables = cnn
    flat_input = jnp.zeros((1, 8))
    with pytest.raises(ValueError, match="sample_input") as info:
        dpiat_jax.transfer(variables, module, module, key(0), sample_input=flat_input)
    assert "(1, 8)" in str(info.value)
    assert "src_params" in str(info.value)
    with pytest.raises(ValueError, match="sample_input") as info:
        dpiat_jax.transfer(variables, module, module, key(0), sample_input=(IMG, flat_input))
    assert "dst_def" in str(info.value) and "(1, 8)" in str(info.value)


def test_sample_input_neither_one_nor_a_pair(cnn):
    module, variables = cnn
    with pytest.raises(TypeError, match="sample_input"):
        dpiat_jax.transfer(variables, module, module, key(0), sample_input=(IMG, IMG, IMG))


def test_inference_failure_asks_for_sample_input():
    module = OddSize()
    variables = numpy_variables(module, jnp.zeros((1, 5, 5, 3)))
    with pytest.raises(ValueError, match="sample_input=") as info:
        dpiat_jax.transfer(variables, module, module, key(0))
    assert "infer" in str(info.value)
    # With the input given it works.
    out = dpiat_jax.transfer(
        variables, module, module, key(0), sample_input=jnp.zeros((1, 5, 5, 3))
    )
    np.testing.assert_array_equal(
        out["params"]["conv"]["kernel"], variables["params"]["conv"]["kernel"]
    )


def test_bare_module_without_sample_input_asks_for_it():
    tree = [LayerSpec("dense", (4, 8)), LayerSpec("dense", (8, 3))]
    with pytest.raises(ValueError, match="sample_input="):
        dpiat_jax.similarity(tree, get_model("mlp", hidden_sizes=(8,), num_classes=3))


# ----------------------------------------------------------------------------------
# Definitions and keyword arguments.


def test_non_flax_definitions(mlp):
    module, variables = mlp
    with pytest.raises(TypeError, match="src_def"):
        dpiat_jax.transfer(variables, "mlp", module, key(0), sample_input=V)
    with pytest.raises(TypeError, match="dst_def"):
        dpiat_jax.transfer(variables, module, lambda x: x, key(0), sample_input=V)
    with pytest.raises(TypeError, match="dst_def"):
        dpiat_jax.match(variables, module, object(), key(0), sample_input=V)
    # A module class instead of an instance says so.
    with pytest.raises(TypeError, match="instance"):
        dpiat_jax.transfer(variables, module, nn.Dense, key(0), sample_input=V)


def test_unknown_keyword_argument(mlp):
    module, variables = mlp
    with pytest.raises(TypeError, match="sample_inputs"):
        dpiat_jax.transfer(variables, module, module, key(0), sample_inputs=V)
    with pytest.raises(TypeError, match="strict"):
        dpiat_jax.transfer(variables, module, module, key(0), strict=True)
    with pytest.raises(TypeError, match="sample_inputs"):
        dpiat_jax.match(variables, module, module, key(0), sample_inputs=V)


# ----------------------------------------------------------------------------------
# Spec trees.


def test_spec_tree_with_non_layerspec_leaf_names_the_index_path():
    good = [LayerSpec("dense", (4, 4))]
    bad = [LayerSpec("dense", (4, 4)), [LayerSpec("dense", (4, 4)), {"kind": "dense"}]]
    with pytest.raises(TypeError, match=r"\(1, 1\)") as info:
        dpiat_jax.align(bad, good)
    assert "src_tree" in str(info.value) and "LayerSpec" in str(info.value)
    assert "dict" in str(info.value)
    with pytest.raises(TypeError, match=r"\(1, 1\)") as info:
        dpiat_jax.align(good, bad)
    assert "dst_tree" in str(info.value)
    with pytest.raises(TypeError, match=r"\(0,\)"):
        dpiat_jax.align([3], good)
    with pytest.raises(TypeError, match=r"\(1, 1\)"):
        dpiat_jax.similarity(bad, good)
    with pytest.raises(TypeError, match=r"\(1, 1\)"):
        dpiat_jax.rank_sources([good, bad], good)
    with pytest.raises(TypeError, match="LayerSpec"):
        dpiat_jax.align(LayerSpec("dense", (4, 4)), good)  # the root must be a list


def test_spec_tree_with_a_cycle():
    inner = [LayerSpec("dense", (4, 4))]
    tree = [LayerSpec("dense", (4, 4)), inner]
    inner.append(tree)
    with pytest.raises(ValueError, match="cycle"):
        dpiat_jax.align(tree, [LayerSpec("dense", (4, 4))])
    with pytest.raises(ValueError, match="cycle"):
        dpiat_jax.similarity([LayerSpec("dense", (4, 4))], tree)
    # A block used twice (shared, not a cycle) is fine.
    block = [LayerSpec("dense", (4, 4)), LayerSpec("dense", (4, 4))]
    assert dpiat_jax.align([block, block], [block]).score > 0


def test_layerspec_validation():
    with pytest.raises(ValueError, match="positive"):
        LayerSpec("conv2d", (3, 0, 4, 4))
    with pytest.raises(TypeError, match="kind"):
        LayerSpec(3, (4,))
    with pytest.raises(TypeError, match="shape"):
        LayerSpec("dense", 4)
