"""The kind vocabulary (dpiat_jax.kinds): constructors, predicates, and that the layers
stage produces exactly these strings."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import pytest
from flax import nnx

from dpiat_jax import kinds
from dpiat_jax.layers import layer_kind
from dpiat_jax.tensors import is_positional_embedding


def test_constructors_spell_the_kinds():
    assert [kinds.conv(r) for r in (1, 2, 3)] == ["conv1d", "conv2d", "conv3d"]
    assert kinds.depthwise_conv(2) == "depthwise_conv2d"
    assert kinds.conv_transpose(1) == "conv_transpose1d"
    assert kinds.own("ViT") == "own:ViT"
    assert kinds.PLACEHOLDER == "none"
    assert kinds.NORMS == ("batch_norm", "layer_norm", "group_norm", "rms_norm")
    assert (kinds.DENSE, kinds.DENSE_GENERAL, kinds.EMBED) == ("dense", "dense_general", "embed")


def _kernel(*shape):
    return {"kernel": jnp.zeros(shape)}


@pytest.mark.parametrize(
    "module_type, attrs, params, expected",
    [
        (nn.Conv, {"feature_group_count": 1}, _kernel(3, 2, 4), kinds.conv(1)),
        (nn.Conv, {"feature_group_count": 1}, _kernel(3, 3, 2, 4), kinds.conv(2)),
        (nn.Conv, {"feature_group_count": 4}, _kernel(3, 3, 1, 8), kinds.depthwise_conv(2)),
        (nn.Conv, {"feature_group_count": 2}, _kernel(3, 3, 2, 4), kinds.conv(2)),
        (nn.ConvTranspose, {}, _kernel(3, 3, 3, 2, 4), kinds.conv_transpose(3)),
        (nn.Dense, {}, _kernel(3, 4), kinds.DENSE),
        (nn.DenseGeneral, {}, _kernel(4, 2, 3), kinds.DENSE_GENERAL),
        (nn.Embed, {}, {"embedding": jnp.zeros((10, 4))}, kinds.EMBED),
        (nn.BatchNorm, {}, {"scale": jnp.ones(4)}, kinds.BATCH_NORM),
        (nn.LayerNorm, {}, {"scale": jnp.ones(4)}, kinds.LAYER_NORM),
        (nn.GroupNorm, {}, {"scale": jnp.ones(4)}, kinds.GROUP_NORM),
        (nn.RMSNorm, {}, {"scale": jnp.ones(4)}, kinds.RMS_NORM),
        (nnx.Linear, {}, _kernel(3, 4), kinds.DENSE),
        (nnx.Conv, {"feature_group_count": 1}, _kernel(3, 3, 2, 4), kinds.conv(2)),
        (nnx.LayerNorm, {}, {"scale": jnp.ones(4)}, kinds.LAYER_NORM),
        (nn.SelfAttention, {}, {}, "SelfAttention"),
    ],
)
def test_layer_kind_uses_the_vocabulary(module_type, attrs, params, expected):
    assert layer_kind(module_type, attrs, params) == expected


# kind -> (is_conv, is_depthwise_conv, is_conv_or_dense, is_norm, is_own, is_dimensional,
#          may_be_positional, is_placeholder)
PREDICATES = {
    "conv2d": (True, False, True, False, False, True, False, False),
    "conv_transpose1d": (True, False, True, False, False, True, False, False),
    "depthwise_conv2d": (False, True, False, False, False, True, False, False),
    "dense": (False, False, True, False, False, True, False, False),
    "dense_general": (False, False, False, False, False, True, False, False),
    "embed": (False, False, False, False, False, False, True, False),
    "batch_norm": (False, False, False, True, False, False, False, False),
    "rms_norm": (False, False, False, True, False, False, False, False),
    "own:ConvBlock": (False, False, False, False, True, False, True, False),
    "none": (False, False, False, False, False, False, True, True),
    "Conv2D": (False, False, False, False, False, True, True, False),  # a user class name
    "EinsumDense": (False, False, False, False, False, True, True, False),
    "SelfAttention": (False, False, False, False, False, False, True, False),
}


@pytest.mark.parametrize("kind", sorted(PREDICATES))
def test_predicates(kind):
    got = (
        kinds.is_conv(kind),
        kinds.is_depthwise_conv(kind),
        kinds.is_conv_or_dense(kind),
        kinds.is_norm(kind),
        kinds.is_own(kind),
        kinds.is_dimensional(kind),
        kinds.may_be_positional(kind),
        kinds.is_placeholder(kind),
    )
    assert got == PREDICATES[kind]


def test_is_dimensional_is_case_insensitive_and_excludes_pseudo_layers():
    assert kinds.is_dimensional("CONV") and kinds.is_dimensional("my_einsum")
    assert not kinds.is_dimensional("own:Dense") and not kinds.is_dimensional("OWN:conv")
    assert kinds.DIMENSIONAL_KINDS == ("conv", "dense", "einsum")


def test_positional_detection_by_kind_name_and_shape():
    assert is_positional_embedding("pos_embedding", (1, 17, 8))
    assert is_positional_embedding("pos_embedding", (17, 8), kind="own:ViT")
    assert is_positional_embedding("PosEmbed_0/embedding", (16, 8), kind=kinds.EMBED)
    # The kinds that never hold one, whatever the name.
    for kind in ("conv2d", "depthwise_conv2d", "conv_transpose2d", "dense", "dense_general"):
        assert not is_positional_embedding("pos/kernel", (16, 8), kind=kind)
    for kind in kinds.NORMS:
        assert not is_positional_embedding("pos_norm/scale", (1, 16, 8), kind=kind)
    # Names: "pos" inside transpose/compose/purpose does not count; shapes (1, T, D), (T, D).
    for name in ("transpose", "compose_w", "purpose"):
        assert not is_positional_embedding(name, (16, 8))
    assert not is_positional_embedding("pos_embedding", (2, 16, 8))
    assert not is_positional_embedding("pos_embedding", (16,))
