"""Model zoo tests: every registry entry builds, small ones run, counts match published ones."""

from __future__ import annotations

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpiat_jax.models import MODELS, EfficientNet, ViT, get_model

REQUIRED_NAMES = (
    [f"cifar_resnet{d}" for d in (14, 20, 26, 32)]
    + [f"cifar_resnet{d}_w2" for d in (14, 20, 26, 32)]
    + [f"resnet{d}" for d in (18, 34, 50, 101, 152)]
    + ["wide_resnet16_4", "wide_resnet28_10", "mobilenet_v2", "mnasnet"]
    + [f"efficientnet_b{i}" for i in range(8)]
    + ["vgg11", "vgg_small", "mlp", "cnn1d", "vit_tiny"]
)

IMAGENET_PREFIXES = ("resnet", "efficientnet", "mobilenet", "mnasnet")

# torchvision's published counts (1000 classes) and the WRN paper's reference implementation.
PUBLISHED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "mobilenet_v2": 3_504_872,
    "mnasnet": 4_383_312,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
    "wide_resnet16_4": 2_748_890,
    "wide_resnet28_10": 36_479_194,
}

# Models run for real on CPU: (input shape, overrides). The mobile ImageNet nets and the ViT are
# cut down to a few blocks that still cover every code path (expansion or not, SE, residual,
# stochastic depth); the full-size forward passes are in the slow test below.
SMALL_MODELS: dict[str, tuple[tuple[int, ...], dict]] = {
    "cifar_resnet14": ((2, 32, 32, 3), {}),
    "wide_resnet16_4": ((2, 32, 32, 3), {"dropout_rate": 0.3}),
    "resnet18": ((2, 32, 32, 3), {"stage_sizes": (1, 1), "width": 8}),
    "resnet50": ((2, 32, 32, 3), {"stage_sizes": (2, 1), "width": 8}),
    "mobilenet_v2": ((2, 32, 32, 3), {"setting": ((1, 16, 1, 1), (6, 24, 2, 2))}),
    "efficientnet_b0": (
        (2, 32, 32, 3),
        {"setting": ((1, 3, 1, 32, 16, 1), (6, 5, 2, 16, 24, 2)), "stochastic_depth_prob": 0.5},
    ),
    "mnasnet": ((2, 32, 32, 3), {"stacks": ((3, 2, 3, 2), (5, 1, 6, 1))}),
    "vgg_small": ((2, 8, 8, 1), {}),
    "mlp": ((2, 8, 8, 1), {"dropout_rate": 0.1}),
    "cnn1d": ((2, 40), {}),
    "resnet1d": ((2, 40), {"stage_sizes": (1, 1), "channels": (4, 8)}),
    "vit_tiny": ((2, 32, 32, 3), {"depth": 2, "dropout_rate": 0.1}),
}

_FAST_COMPILE = {"xla_backend_optimization_level": 0}

FULL_SIZE_FORWARD = ["mobilenet_v2", "efficientnet_b0", "mnasnet", "vgg11", "vit_tiny"]


def _input_shape(name: str) -> tuple[int, ...]:
    """Return the input shape used to build ``name`` abstractly (224x224 for ImageNet nets)."""
    if name in ("cnn1d", "resnet1d"):
        return (1, 40)
    if name.startswith(IMAGENET_PREFIXES):
        return (1, 224, 224, 3)
    return (1, 32, 32, 3)


@functools.cache
def _abstract(name: str, overrides: tuple = (), shape: tuple | None = None):
    """Return ``(logits, variables)`` as shape structs, without computing anything."""
    model = get_model(name, **dict(overrides))
    x = jnp.zeros(shape or _input_shape(name))
    return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))


def _n_params(name: str, **overrides) -> int:
    """Number of entries in the ``params`` collection of ``name`` built with ``overrides``."""
    _, variables = _abstract(name, tuple(sorted(overrides.items())), None)
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables["params"]))


def test_registry_has_required_names():
    missing = [n for n in REQUIRED_NAMES if n not in MODELS]
    assert not missing


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet18"):
        get_model("resnet17")


def test_overrides_are_applied():
    model = get_model("resnet18", num_classes=7)
    assert model.num_classes == 7


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_initialises(name):
    logits, variables = _abstract(name, (), None)
    n_classes = get_model(name).num_classes
    chex.assert_shape(logits, (1, n_classes))
    assert "params" in variables


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_parameter_counts(name):
    assert _n_params(name) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize(("alpha", "expected"), [(0.5, 2_218_512), (0.75, 3_170_208)])
def test_mnasnet_alpha_counts(alpha, expected):
    assert _n_params("mnasnet", alpha=alpha) == expected


def _check_forward(name: str, shape: tuple[int, ...], **overrides) -> None:
    """Init ``name`` and check eval and train forward passes give finite (batch, 5) logits.

    Everything runs in one jitted function compiled without backend optimisations: on CPU that
    is several times cheaper than the hundreds of small compilations of eager execution.
    """
    model = get_model(name, num_classes=5, **overrides)

    def run(x):
        variables = model.init(jax.random.key(0), x, train=False)
        logits = model.apply(variables, x, train=False)
        logits_train, updates = model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)}
        )
        return variables, logits, logits_train, updates

    x = jax.random.normal(jax.random.key(1), shape)
    compiled = jax.jit(run).lower(x).compile(_FAST_COMPILE)
    variables, logits, logits_train, updates = compiled(x)
    chex.assert_shape([logits, logits_train], (shape[0], 5))
    chex.assert_tree_all_finite([logits, logits_train])
    if "batch_stats" in variables:
        chex.assert_trees_all_equal_shapes(updates["batch_stats"], variables["batch_stats"])
        before = jax.tree_util.tree_leaves(variables["batch_stats"])
        after = jax.tree_util.tree_leaves(updates["batch_stats"])
        assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_small_models_forward(name):
    shape, overrides = SMALL_MODELS[name]
    _check_forward(name, shape, **overrides)


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SIZE_FORWARD)
def test_full_size_forward(name):
    _check_forward(name, (2, 32, 32, 3))


def _call_order(name: str, shape: tuple[int, ...]) -> list[tuple[str, ...]]:
    """Paths of the submodules of ``name`` in the order their ``__call__`` is first entered."""
    order: list[tuple[str, ...]] = []

    def record(next_fun, args, kwargs, context):
        path = tuple(context.module.path)
        if context.method_name == "__call__" and path not in order:
            order.append(path)
        return next_fun(*args, **kwargs)

    model = get_model(name)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    return order


def test_submodules_in_call_order():
    order = _call_order("cifar_resnet14", (1, 32, 32, 3))
    top = [p[0] for p in order if len(p) == 1]
    expected = ["stem_conv", "stem_bn"]
    expected += [f"stage{s}_block{i}" for s in (1, 2, 3) for i in (0, 1)] + ["head"]
    assert top == expected
    block = [p[1] for p in order if len(p) == 2 and p[0] == "stage2_block0"]
    assert block == ["conv1", "bn1", "conv2", "bn2", "shortcut_conv", "shortcut_bn"]
    order = _call_order("efficientnet_b0", (1, 32, 32, 3))
    block = [p[1] for p in order if len(p) == 2 and p[0] == "stage2_block0"]
    assert block == [
        "expand_conv",
        "expand_bn",
        "dw_conv",
        "dw_bn",
        "se",
        "project_conv",
        "project_bn",
    ]


def _cifar_resnet_params(depth: int, width: int, num_classes: int = 10) -> int:
    """Closed-form parameter count of CIFAR ResNet-``depth`` with projection shortcuts."""
    n = (depth - 2) // 6
    c = 16 * width
    total = 27 * c + 2 * c  # stem conv + BN
    prev = c
    for mult in (1, 2, 4):
        ch = c * mult
        for i in range(n):
            cin = prev if i == 0 else ch
            total += 9 * cin * ch + 9 * ch * ch + 4 * ch
            if cin != ch:
                total += cin * ch + 2 * ch
        prev = ch
    return total + prev * num_classes + num_classes


@pytest.mark.parametrize(
    "name",
    [
        "cifar_resnet14",
        "cifar_resnet20",
        "cifar_resnet32",
        "cifar_resnet20_w2",
        "cifar_resnet20_w4",
    ],
)
def test_cifar_resnet_counts_follow_depth_and_width(name):
    model = get_model(name)
    assert _n_params(name) == _cifar_resnet_params(model.depth, model.width)


def test_cifar_resnet_depth_adds_whole_blocks():
    per_block = sum(18 * c * c + 4 * c for c in (16, 32, 64))  # one extra block per stage
    assert _n_params("cifar_resnet26") - _n_params("cifar_resnet20") == per_block
    assert _n_params("cifar_resnet32") - _n_params("cifar_resnet20") == 2 * per_block


def test_resnet_width_and_depth():
    assert _n_params("resnet18", width=32) < _n_params("resnet18")
    assert _n_params("resnet18") < _n_params("resnet34") < _n_params("resnet50")


def test_wide_resnet_widen_factor():
    assert _n_params("wide_resnet16_4") < _n_params("wide_resnet16_8")


def test_efficientnet_compound_scaling():
    counts = [_n_params(f"efficientnet_b{i}") for i in range(8)]
    assert counts == sorted(counts) and len(set(counts)) == 8
    _, variables = _abstract("efficientnet_b0", (("depth_coefficient", 2.0),), None)
    blocks = [k for k in variables["params"] if "_block" in k]
    assert len(blocks) == 2 * 16
    b7 = get_model("efficientnet_b7")
    assert isinstance(b7, EfficientNet)
    assert (b7.bn_momentum, b7.bn_epsilon) == (0.99, 1e-3)
    assert get_model("efficientnet_b0").bn_momentum == 0.9


def test_mobilenet_v2_width_multiplier():
    assert _n_params("mobilenet_v2", width_mult=0.5) < _n_params("mobilenet_v2")


def test_mlp_count():
    hidden = (64, 32)
    expected = 64 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    _, variables = _abstract("mlp", (("hidden_sizes", hidden),), (1, 8, 8, 1))
    n = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables["params"]))
    assert n == expected


def test_vit_depth_adds_whole_blocks():
    model = get_model("vit_tiny")
    assert isinstance(model, ViT)
    d, m = model.dim, model.mlp_dim
    per_block = 4 * d + 4 * (d * d + d) + (d * m + m + m * d + d)
    assert _n_params("vit_tiny", depth=4) - _n_params("vit_tiny", depth=3) == per_block
    _, variables = _abstract("vit_tiny", (), None)
    chex.assert_shape(variables["params"]["cls_token"], (1, 1, d))
    chex.assert_shape(variables["params"]["pos_embedding"], (1, 65, d))


def test_cnn1d_accepts_channel_axis():
    model = get_model("cnn1d")
    x = jnp.ones((3, 40))

    def run(x):
        variables = model.init(jax.random.key(0), x)
        return model.apply(variables, x), model.apply(variables, x[..., None])

    flat, with_channel = jax.jit(run).lower(x).compile(_FAST_COMPILE)(x)
    np.testing.assert_allclose(flat, with_channel, rtol=1e-6)
