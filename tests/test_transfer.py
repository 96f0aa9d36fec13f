"""End-to-end transfers, match reports, similarity and ranking on real architectures.

Source variables come from an abstract init filled with distinct random values (so a
copied tensor is told apart from a fresh one, batch statistics included). Most targets
are initialised with ``rbg`` PRNG keys: on CPU their initialisers compile several times
faster than threefry ones, which keeps this file quick; one test uses the default key.
"""

from __future__ import annotations

import copy

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from oracle import reference_clip

import dpiat_jax
from dpiat_jax.api import module_blocks
from dpiat_jax.blocks import to_spec_tree
from dpiat_jax.models import get_model

X = jnp.zeros((1, 8, 8, 3))  # CIFAR-style images, small
V = jnp.zeros((1, 8))  # vectors for the MLPs


def key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def random_variables(module: nn.Module, x, seed: int, as_numpy: bool = False) -> dict:
    """Variables with ``module``'s structure, every leaf distinct random values (var > 0)."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    flat = {}
    for k, v in traverse_util.flatten_dict(abstract).items():
        values = rng.normal(size=v.shape).astype(v.dtype)
        if k[-1] == "var":
            values = np.abs(values) + 0.1
        flat[k] = values if as_numpy else jnp.asarray(values)
    return traverse_util.unflatten_dict(flat)


def flat(tree) -> dict:
    return {tuple(map(str, k)): v for k, v in traverse_util.flatten_dict(tree).items()}


def layer_path(name: str) -> tuple[str, ...]:
    return () if name == "<root>" else tuple(name.split("/"))


def direct_tensors(flat_vars: dict, path: tuple[str, ...]) -> dict:
    """(collection, name) -> array for the tensors a module owns directly."""
    return {
        (k[0], k[-1]): v
        for k, v in flat_vars.items()
        if len(k) == len(path) + 2 and k[1:-1] == path
    }


def expected_output(src_vars: dict, fresh: dict, report) -> dict:
    """The fresh init with every reported pair's tensors moved by the clip rule."""
    src_flat, out = flat(src_vars), {k: np.asarray(v) for k, v in flat(fresh).items()}
    dst_seen = set()
    for s, d, _ in report.pairs:
        assert d not in dst_seen, f"target {d} received two sources"
        dst_seen.add(d)
        sp, dp = layer_path(s), layer_path(d)
        src_t = direct_tensors(src_flat, sp)
        for (c, name), _ in direct_tensors(out, dp).items():
            if (c, name) in src_t and np.ndim(src_t[c, name]) == out[(c, *dp, name)].ndim:
                key_ = (c, *dp, name)
                out[key_] = reference_clip(np.asarray(src_t[c, name]), out[key_])
    return out


def check_transfer(src_vars, src_def, dst_def, rng, x, **kw):
    """Runs transfer and match; checks the output against fresh init + clipped pairs.

    The fresh init runs inside the transfer's compiled program, so the reference is the
    compiled init (``jax.jit(dst_def.init)``: XLA folds an initialiser's constants, so
    it can differ from the op-by-op init in the last bit).
    """
    out = dpiat_jax.transfer(src_vars, src_def, dst_def, rng, **kw)
    report = dpiat_jax.match(src_vars, src_def, dst_def, rng, **kw)
    fresh = jax.jit(dst_def.init)(rng, x)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(fresh)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, fresh)
    expected = expected_output(src_vars, fresh, report)
    got = flat(out)
    assert set(got) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(np.asarray(got[k]), v, err_msg="/".join(k))
    return out, report, fresh


# ----------------------------------------------------------------------------------
# Fixtures: models and source variables, shared by the whole module.


@pytest.fixture(scope="module")
def resnets():
    models = {
        "r20": get_model("cifar_resnet20"),
        "r32": get_model("cifar_resnet32"),
        "r20w2": get_model("cifar_resnet20_w2"),
    }
    variables = {name: random_variables(m, X, seed=i) for i, (name, m) in enumerate(models.items())}
    return models, variables


@pytest.fixture(scope="module")
def small_cnns():
    src = get_model("vgg_small", width=0.25)  # convs 8, 16, 32 with batch norm
    dst = get_model("vgg_small", cfg=(16, "M", 16, 32, "M", 24), hidden=(12,), width=0.5)
    return src, dst, random_variables(src, X, seed=11)


# ----------------------------------------------------------------------------------
# MLPs and CNNs.


def test_mlp_to_wider_and_deeper_mlp_default_key():
    src = get_model("mlp", hidden_sizes=(16, 16), num_classes=4)
    src_vars = random_variables(src, V, seed=3)
    rng = jax.random.key(0)  # the default (threefry) key
    for dst, dst_rng in (
        (get_model("mlp", hidden_sizes=(32, 32), num_classes=4), rng),
        (get_model("mlp", hidden_sizes=(16, 16, 16), num_classes=4), key(0)),
    ):
        out, report, _ = check_transfer(src_vars, src, dst, dst_rng, V)
        assert report.layers_transferred == report.layers_total
    # The wider target's first layer holds the source centred on the output axis.
    wide = get_model("mlp", hidden_sizes=(32, 32), num_classes=4)
    out = dpiat_jax.transfer(src_vars, src, wide, rng)
    np.testing.assert_array_equal(
        out["params"]["dense0"]["kernel"][:, 8:24], src_vars["params"]["dense0"]["kernel"]
    )
    np.testing.assert_array_equal(
        out["params"]["head"]["kernel"][8:24], src_vars["params"]["head"]["kernel"]
    )


def test_small_cnn_to_different_cnn_and_back(small_cnns):
    src, dst, src_vars = small_cnns
    out, report, fresh = check_transfer(src_vars, src, dst, key(1), X, sample_input=X)
    assert report.layers_transferred >= 4
    # Both first convs have 8 channels (16 * 0.5 in the target): copied as is.
    np.testing.assert_array_equal(
        out["params"]["conv0"]["kernel"], src_vars["params"]["conv0"]["kernel"]
    )
    np.testing.assert_array_equal(
        out["batch_stats"]["bn0"]["var"], src_vars["batch_stats"]["bn0"]["var"]
    )
    back_vars = random_variables(dst, X, seed=12)
    check_transfer(back_vars, dst, src, key(2), X, sample_input=X)


# ----------------------------------------------------------------------------------
# CIFAR ResNets of different depth and width, both directions.


@pytest.mark.parametrize(
    "src_name,dst_name", [("r20", "r32"), ("r32", "r20"), ("r20", "r20w2"), ("r20w2", "r20")]
)
def test_resnet_transfer(resnets, src_name, dst_name):
    models, variables = resnets
    src_vars = variables[src_name]
    out, report, fresh = check_transfer(
        src_vars, models[src_name], models[dst_name], key(5), X, sample_input=X
    )
    assert set(out) == {"params", "batch_stats"}
    src_stem = src_vars["params"]["stem_conv"]["kernel"]
    out_stem = out["params"]["stem_conv"]["kernel"]
    src_mean = src_vars["batch_stats"]["stem_bn"]["mean"]
    out_mean = out["batch_stats"]["stem_bn"]["mean"]
    if src_name == "r20w2":  # 32 -> 16 channels: the centre of the source, from 8
        np.testing.assert_array_equal(out_stem, src_stem[..., 8:24])
        np.testing.assert_array_equal(out_mean, src_mean[8:24])
    elif dst_name == "r20w2":  # 16 -> 32 channels: the source at the centre, from 8
        np.testing.assert_array_equal(out_stem[..., 8:24], src_stem)
        np.testing.assert_array_equal(out_mean[8:24], src_mean)
        fresh_stem = fresh["params"]["stem_conv"]["kernel"]
        np.testing.assert_array_equal(out_stem[..., :8], fresh_stem[..., :8])
        np.testing.assert_array_equal(out_stem[..., 24:], fresh_stem[..., 24:])
        np.testing.assert_array_equal(out_mean[:8], np.zeros(8))  # fresh batch mean
    else:  # same width: copied
        np.testing.assert_array_equal(out_stem, src_stem)
        np.testing.assert_array_equal(out_mean, src_mean)
        np.testing.assert_array_equal(
            out["params"]["head"]["kernel"], src_vars["params"]["head"]["kernel"]
        )
        np.testing.assert_array_equal(
            out["params"]["stage1_block0"]["conv1"]["kernel"],
            src_vars["params"]["stage1_block0"]["conv1"]["kernel"],
        )
        np.testing.assert_array_equal(
            out["batch_stats"]["stage3_block0"]["shortcut_bn"]["var"],
            src_vars["batch_stats"]["stage3_block0"]["shortcut_bn"]["var"],
        )
    if (src_name, dst_name) == ("r20", "r32"):
        # A shallower source covers every layer of the deeper target.
        assert report.layers_transferred == report.layers_total
        assert report.params_transferred == report.params_total
        assert report.unmatched_dst == ()


def test_identical_architecture_copies_every_collection(resnets):
    models, variables = resnets
    src_vars = variables["r20"]
    out = dpiat_jax.transfer(src_vars, models["r20"], models["r20"], key(9), sample_input=X)
    chex.assert_trees_all_equal(out, src_vars)
    report = dpiat_jax.match(src_vars, models["r20"], models["r20"], key(9), sample_input=X)
    assert report.similarity == pytest.approx(1.0)
    assert report.layers_transferred == report.layers_total == 43
    assert report.params_transferred == report.params_total
    assert report.unmatched_src == () and report.unmatched_dst == ()
    assert all(s == d and sc == 1.0 for s, d, sc in report.pairs)
    sim = dpiat_jax.similarity((models["r20"], src_vars), (models["r20"], src_vars))
    assert sim == pytest.approx(1.0)


# ----------------------------------------------------------------------------------
# Input and output forms.


def test_params_only_frozen_and_variables_forms(small_cnns):
    src, dst, src_vars = small_cnns
    rng = key(4)
    fresh = dst.init(rng, X)
    whole = dpiat_jax.transfer(src_vars, src, dst, rng, sample_input=X)
    assert type(whole) is dict and set(whole) == {"params", "batch_stats"}
    chex.assert_trees_all_equal_shapes_and_dtypes(whole, fresh)

    params_only = dpiat_jax.transfer(src_vars["params"], src, dst, rng, sample_input=X)
    assert type(params_only) is dict
    assert jax.tree_util.tree_structure(params_only) == jax.tree_util.tree_structure(
        fresh["params"]
    )
    chex.assert_trees_all_equal(params_only, whole["params"])

    frozen = dpiat_jax.transfer(flax.core.freeze(src_vars), src, dst, rng, sample_input=X)
    assert isinstance(frozen, flax.core.FrozenDict)
    chex.assert_trees_all_equal(flax.core.unfreeze(frozen), whole)

    frozen_params = dpiat_jax.transfer(
        flax.core.freeze(src_vars["params"]), src, dst, rng, sample_input=X
    )
    assert isinstance(frozen_params, flax.core.FrozenDict)
    assert set(frozen_params) == set(fresh["params"])
    chex.assert_trees_all_equal(flax.core.unfreeze(frozen_params), whole["params"])

    # Without sample_input the input is inferred from the source's shapes.
    inferred = dpiat_jax.transfer(src_vars, src, dst, rng)
    chex.assert_trees_all_equal(inferred, whole)


def test_batch_statistics_skipped_for_a_params_only_source(small_cnns):
    src, dst, src_vars = small_cnns
    rng = key(4)
    report = dpiat_jax.match(src_vars["params"], src, dst, rng, sample_input=X)
    skipped_targets = {t for t, _, _ in report.skipped}
    assert "batch_stats/bn0/mean" in skipped_targets
    out = dpiat_jax.transfer(src_vars["params"], src, dst, rng, sample_input=X)
    assert "batch_stats" not in out


# ----------------------------------------------------------------------------------
# Determinism, rng and purity.


class DenseConvDense(nn.Module):
    """A target with a conv1d that no layer of an MLP can seed."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(16, name="dense0")(x))
        x = nn.Conv(2, (3,), name="conv")(x[..., None])
        return nn.Dense(4, name="head")(x.reshape((x.shape[0], -1)))


def test_deterministic_and_rng_changes_only_unmatched_parts():
    src = get_model("mlp", hidden_sizes=(16,), num_classes=4)
    dst = DenseConvDense()
    src_vars = random_variables(src, V, seed=5)
    out1, report, fresh1 = check_transfer(src_vars, src, dst, key(1), V)
    again = dpiat_jax.transfer(src_vars, src, dst, key(1))
    chex.assert_trees_all_equal(out1, again)
    out2, report2, fresh2 = check_transfer(src_vars, src, dst, key(2), V)
    assert report2.pairs == report.pairs
    assert report.unmatched_dst == ("conv",)
    p1, p2 = out1["params"], out2["params"]
    # Matched and fully covered: the same whatever the rng.
    np.testing.assert_array_equal(p1["dense0"]["kernel"], src_vars["params"]["dense0"]["kernel"])
    np.testing.assert_array_equal(p1["dense0"]["kernel"], p2["dense0"]["kernel"])
    # head: (16, 4) source into (32, 4) target, rows 8:24 from the source.
    np.testing.assert_array_equal(p1["head"]["kernel"][8:24], p2["head"]["kernel"][8:24])
    assert not np.array_equal(p1["head"]["kernel"][:8], p2["head"]["kernel"][:8])
    np.testing.assert_array_equal(p2["head"]["kernel"][:8], fresh2["params"]["head"]["kernel"][:8])
    # Unmatched: the fresh init of each rng, so different.
    np.testing.assert_array_equal(p1["conv"]["kernel"], fresh1["params"]["conv"]["kernel"])
    np.testing.assert_array_equal(p2["conv"]["kernel"], fresh2["params"]["conv"]["kernel"])
    assert not np.array_equal(p1["conv"]["kernel"], p2["conv"]["kernel"])


def test_inputs_are_never_mutated(small_cnns):
    src, dst, _ = small_cnns
    src_vars = random_variables(src, X, seed=21, as_numpy=True)
    before = copy.deepcopy(src_vars)
    ids = {k: id(v) for k, v in flat(src_vars).items()}
    x = np.zeros((1, 8, 8, 3), np.float32)
    out = dpiat_jax.transfer(src_vars, src, dst, key(3), sample_input=x)
    dpiat_jax.match(src_vars, src, dst, key(3), sample_input=x)
    dpiat_jax.similarity((src, src_vars), dst, sample_input=x)
    chex.assert_trees_all_equal(src_vars, before)
    assert jax.tree_util.tree_structure(src_vars) == jax.tree_util.tree_structure(before)
    assert {k: id(v) for k, v in flat(src_vars).items()} == ids
    assert np.array_equal(x, np.zeros((1, 8, 8, 3)))
    # The output shares no buffer with the numpy input.
    out["params"]["conv0"]["kernel"] = None
    chex.assert_trees_all_equal(src_vars, before)


# ----------------------------------------------------------------------------------
# match reports.


def test_match_report_contents(resnets):
    models, variables = resnets
    src_vars = variables["r20"]
    dst = models["r20w2"]
    report = dpiat_jax.match(src_vars, models["r20"], dst, key(6), sample_input=X)
    fresh = dst.init(key(6), X)
    fresh_flat = flat(fresh)
    dst_layers = {k[1:-1] for k in fresh_flat}
    src_layers = {k[1:-1] for k in flat(src_vars)}
    assert report.layers_total == len(dst_layers) == 43
    assert report.params_total == sum(int(np.prod(v.shape)) for v in fresh_flat.values())
    # One entry per matched target; the rest is listed as unmatched.
    targets = [d for _, d, _ in report.pairs]
    assert len(set(targets)) == len(targets)
    assert set(targets) | set(report.unmatched_dst) == {"/".join(p) for p in dst_layers}
    assert not set(targets) & set(report.unmatched_dst)
    sources = {s for s, _, _ in report.pairs}
    assert sources | set(report.unmatched_src) == {"/".join(p) for p in src_layers}
    assert not sources & set(report.unmatched_src)
    assert report.layers_transferred == len(targets)
    # params_transferred: the overlap of every moved tensor.
    src_flat = flat(src_vars)
    moved = 0
    for s, d, _ in report.pairs:
        src_t = direct_tensors(src_flat, layer_path(s))
        for name, t in direct_tensors(fresh_flat, layer_path(d)).items():
            moved += int(np.prod([min(a, b) for a, b in zip(src_t[name].shape, t.shape)]))
    assert report.params_transferred == moved
    assert 0 < report.param_coverage < 1
    assert report.layer_coverage == report.layers_transferred / report.layers_total
    assert 0 < report.similarity < 1
    assert report.score > 0
    assert ("stem_conv", "stem_conv", 0.5) in report.pairs
    assert all(0 < sc <= 1 for _, _, sc in report.pairs)
    # The table lists every pair on its own line, and the unmatched layers.
    text = str(report)
    rows = {tuple(line.split()) for line in text.splitlines()}
    for s, d, sc in report.pairs:
        assert (s, "->", d, f"{sc:.3f}") in rows
    for name in report.unmatched_dst:
        assert name in text
    assert f"{report.layers_transferred}/{report.layers_total}" in text
    # The report agrees with similarity() on the same pair.
    sim = dpiat_jax.similarity((models["r20"], src_vars), dst, sample_input=X)
    assert sim == pytest.approx(report.similarity, rel=1e-6)


# ----------------------------------------------------------------------------------
# similarity and rank_sources.


def test_similarity_accepts_trees_pairs_and_bare_modules(resnets):
    models, variables = resnets
    r20, r32 = models["r20"], models["r32"]
    tree20 = to_spec_tree(module_blocks(r20, sample_input=X))
    tree32 = to_spec_tree(module_blocks(r32, sample_input=X))
    from_trees = dpiat_jax.similarity(tree20, tree32)
    assert 0 < from_trees < 1
    from_pairs = dpiat_jax.similarity((r20, variables["r20"]), (r32, variables["r32"]))
    assert from_pairs == pytest.approx(from_trees, rel=1e-6)
    bare = dpiat_jax.similarity((r20, variables["r20"]), r32, sample_input=X)
    assert bare == pytest.approx(from_trees, rel=1e-6)
    # A bare target without sample_input reuses the input inferred for the source.
    inferred = dpiat_jax.similarity((r20, variables["r20"]), r32)
    assert inferred == pytest.approx(from_trees, rel=1e-6)
    mixed = dpiat_jax.similarity(tree20, (r32, variables["r32"]))
    assert mixed == pytest.approx(from_trees, rel=1e-6)
    assert dpiat_jax.similarity(tree20, tree20) == pytest.approx(1.0)
    assert dpiat_jax.similarity(tree32, tree32) == pytest.approx(1.0)
    # A deeper source covers the shallower target completely.
    assert dpiat_jax.similarity(tree32, tree20) == pytest.approx(1.0)


def test_rank_sources(resnets):
    models, variables = resnets
    r20 = models["r20"]
    tree_w2 = to_spec_tree(module_blocks(models["r20w2"], sample_input=X))
    candidates = [
        tree_w2,
        (models["r32"], variables["r32"]),
        (r20, variables["r20"]),
    ]
    ranking = dpiat_jax.rank_sources(candidates, r20, sample_input=X)
    assert sorted(i for i, _ in ranking) == [0, 1, 2]
    sims = [s for _, s in ranking]
    assert sims == sorted(sims, reverse=True)
    by_index = dict(ranking)
    # r32 and r20 both cover r20 completely (ties keep the candidates' order).
    assert ranking[0] == (1, pytest.approx(1.0)) and ranking[1] == (2, pytest.approx(1.0))
    assert by_index[0] < 1.0
    for i, c in enumerate(candidates):
        assert by_index[i] == pytest.approx(dpiat_jax.similarity(c, r20, sample_input=X), rel=1e-6)
    # A (module, variables) target and a spec-tree target give the same ranking.
    as_pair = dpiat_jax.rank_sources(candidates, (r20, variables["r20"]))
    tree20 = to_spec_tree(module_blocks(r20, sample_input=X))
    as_tree = dpiat_jax.rank_sources(candidates, tree20)
    for other in (as_pair, as_tree):
        assert [i for i, _ in other] == [i for i, _ in ranking]
        assert [s for _, s in other] == pytest.approx(sims, rel=1e-6)
    assert dpiat_jax.rank_sources([], tree20) == []


def test_call_kwargs_are_passed_as_static_flags():
    """A boolean flag such as ``train`` must stay a Python bool while the models trace."""
    from dpiat_jax.models import get_model

    src, dst = get_model("cifar_resnet14"), get_model("cifar_resnet20")
    x = jnp.zeros((1, 16, 16, 3))
    variables = src.init(jax.random.key(0), x)
    both = dpiat_jax.match(variables, src, dst, call_kwargs={"train": False}, sample_input=x)
    pair = dpiat_jax.match(variables, src, dst, call_kwargs=({"train": False}, {"train": False}))
    assert both.pairs == pair.pairs and both.similarity == pytest.approx(pair.similarity)
