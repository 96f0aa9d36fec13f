"""Tests for dpiat_jax.experiments.protocol: configs and the runner end to end on a tiny config."""

import csv
import json
import math

import jax
import jax.numpy as jnp
import pytest

from dpiat_jax.experiments import protocol as experiment
from dpiat_jax.experiments.protocol import ExperimentConfig, ModelSpec, build_model, load_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}

TINY = {
    "name": "tiny",
    "dataset": "digits",
    "max_train": 192,
    "max_test": 96,
    "epochs": [1, 2],
    "repetitions": 2,
    "batch_size": 64,
    "learning_rate": 0.05,
    "optimizer": "sgd",
    "pretrain": {"pretrain_epochs": 2},
    "sources": {
        "mlp_s": {"model": "mlp", "kwargs": {"hidden_sizes": [32]}},
        "vgg_s": {"model": "vgg_small", "kwargs": {"cfg": [8, "M", 16]}},
    },
    "targets": {
        "mlp_t": {"model": "mlp", "kwargs": {"hidden_sizes": [32, 32]}},
        "vgg_t": {"model": "vgg_small", "kwargs": {"cfg": [8, "M", 16, 16]}},
    },
    "pairs": [
        {"source": "mlp_s", "target": "mlp_t", "change": "depth"},
        ["vgg_s", "vgg_t", "depth"],
        ["vgg_s", "mlp_t"],
    ],
}


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_runner_end_to_end(tmp_path):
    messages = []
    result = experiment.run_experiment(TINY, tmp_path, max_pairs=2, log=messages.append)

    # Two pairs, two budgets, two seeds: 2 targets x 2 E x 2 seeds random runs + as many
    # transfer runs.
    assert [p.label for p in result.config.pairs] == ["mlp_s -> mlp_t", "vgg_s -> vgg_t"]
    assert len(result.runs) == 16
    assert len(result.summary) == 4
    for row in result.summary:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert 0.0 <= row["similarity"] <= 1.0 + 1e-6
        assert row["seeds"] == 2
    for e in (1, 2):
        assert math.isfinite(result.mean_ratio[e])
        rho, _ = result.spearman[e]
        assert math.isnan(rho)  # fewer than three pairs: undefined, reported as NaN
    # Runs for E=2 have two epochs of test accuracies and best = their maximum.
    for run in result.runs:
        assert len(run["test_accuracy_per_epoch"]) == run["epochs"]
        assert run["best"] == max(run["test_accuracy_per_epoch"])

    for name in ("runs.csv", "summary.csv", "results.md", "results.json", "config.json"):
        assert (tmp_path / name).is_file(), name
    for name in ("ratios.png", "similarity.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC, name
    summary = _read_csv(tmp_path / "summary.csv")
    assert len(summary) == 4
    assert all(math.isfinite(float(r["ratio"])) for r in summary)
    assert {r["init"] for r in _read_csv(tmp_path / "runs.csv")} == {"random", "transfer"}
    markdown = (tmp_path / "results.md").read_text()
    assert "mlp_s -> mlp_t" in markdown and "| E | mean ratio" in markdown
    assert json.loads((tmp_path / "results.json").read_text())["mean_ratio"]
    assert (tmp_path / "matches" / "vgg_s__vgg_t.txt").read_text().startswith("DPIAT match")
    assert (tmp_path / "sources" / "vgg_s" / "checkpoint").is_dir()
    assert any("mean ratio" in m for m in messages)

    # A rerun restores the sources from their checkpoints and reuses every finished run.
    again = experiment.run_experiment(TINY, tmp_path, max_pairs=2, log=messages.append)
    assert all(info["cached"] for info in again.sources.values())
    assert again.sources["vgg_s"]["test_accuracy"] == result.sources["vgg_s"]["test_accuracy"]
    assert [r["best"] for r in again.runs] == [r["best"] for r in result.runs]
    assert again.mean_ratio == result.mean_ratio


def test_quick_and_overrides():
    cfg = experiment.quick_config(load_config("digits"))
    assert cfg.epochs == (1,) and cfg.repetitions == 1
    assert cfg.max_train == 512 and max(cfg.pretrain_epochs(s) for s in cfg.sources) <= 2


@pytest.mark.parametrize(
    "name", ["digits", "mnist1d", "cifar10", "cifar100", "digits_hard", "mnist1d_noisy"]
)
def test_shipped_configs(name):
    cfg = load_config(name)
    assert name in experiment.available_configs()
    assert cfg.name == name
    assert len(cfg.pairs) >= 8
    assert 1 in cfg.epochs and 4 in cfg.epochs
    assert cfg.repetitions >= 3
    changes = " ".join(p.change for p in cfg.pairs)
    for kind in ("depth", "width", "family"):
        assert kind in changes
    # The config round-trips through its JSON form.
    assert ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "name, shape, classes",
    [
        ("digits", (8, 8, 1), 10),
        ("mnist1d", (40, 1), 10),
        ("digits_hard", (12, 12, 1), 10),
        ("mnist1d_noisy", (40, 1), 10),
        pytest.param("cifar10", (32, 32, 3), 10, marks=pytest.mark.slow),
        pytest.param("cifar100", (32, 32, 3), 100, marks=pytest.mark.slow),
    ],
)
def test_config_models_build(name, shape, classes):
    cfg = load_config(name)
    for spec in [*cfg.sources.values(), *cfg.targets.values()]:
        module = build_model(spec, classes)
        x = jnp.zeros((2, *shape))
        variables = jax.eval_shape(lambda x, m=module: m.init(RNGS, x), x)
        logits = jax.eval_shape(lambda v, x, m=module: m.apply(v, x), variables, x)
        assert logits.shape == (2, classes), spec


def test_build_model_sets_num_classes():
    assert build_model(ModelSpec("mlp"), 100).num_classes == 100
    assert build_model(ModelSpec("mlp", {"num_classes": 7}), 100).num_classes == 7


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pairs": [["nope", "mlp_t"]]}, "no source"),
        ({"pairs": [["mlp_s", "nope"]]}, "no target"),
        ({"epochs": [0]}, "epochs"),
        ({"bogus": 1}, "Unknown config fields"),
        ({"targets": {**TINY["targets"], "mlp_t": {"model": "nope"}}}, "unknown model"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict({**TINY, **change})


def test_unknown_config_name():
    with pytest.raises(FileNotFoundError, match="shipped"):
        load_config("no_such_config")
