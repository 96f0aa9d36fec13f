"""Tests for the evidence protocol (dpiat_jax.experiments.evidence and evidence_report) on a
tiny config: the arms, paired figures, the controls, the cache keyed by code and start."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from dpiat_jax.experiments import curves, evidence, evidence_report, runs
from dpiat_jax.experiments.config import EvidenceSettings, ExperimentConfig, load_config

TINY = {
    "name": "tiny_evidence",
    "dataset": "digits",
    "max_train": 256,
    "max_test": 128,
    "batch_size": 64,
    "learning_rate": 0.05,
    "optimizer": "sgd",
    "pretrain": {"pretrain_epochs": 3},
    "sources": {"mlp_s": {"model": "mlp", "kwargs": {"hidden_sizes": [32]}}},
    "targets": {
        "mlp_t": {"model": "mlp", "kwargs": {"hidden_sizes": [32, 32]}},
        "vgg_t": {"model": "vgg_small", "kwargs": {"cfg": [8, "M", 16]}},
    },
    "pairs": [
        {"source": "mlp_s", "target": "mlp_t", "change": "depth"},
        {"source": "mlp_s", "target": "vgg_t", "change": "family (MLP->VGG)"},
    ],
    "evidence": {"budget_epochs": 2, "eval_epochs": [0.5, 1, 2], "seeds": 2},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evidence")
    messages = []
    result, summary = evidence_report.run_evidence(TINY, out, log=messages.append, command="t")
    return out, result, summary, messages


def test_arms_and_rows(tiny_run):
    out, result, summary, _ = tiny_run
    arms = {(r["arm"], r["pair"] or r["target"], r["seed"]) for r in result.rows}
    for seed in (0, 1):
        for target in ("mlp_t", "vgg_t"):
            assert ("random", target, seed) in arms
            assert ("compute-matched", target, seed) in arms
        for pair in ("mlp_s -> mlp_t", "mlp_s -> vgg_t"):
            for arm in ("transfer dp", "transfer cross", "untrained source"):
                assert (arm, pair, seed) in arms
        assert ("self", "mlp_s -> mlp_s", seed) in arms
        # Function-preserving growth within the family only.
        assert ("net2net + identity", "mlp_s -> mlp_t", seed) in arms
        assert ("net2net + identity", "mlp_s -> vgg_t", seed) not in arms
    # 4 steps per epoch (256 / 64): a budget of 8 steps, evaluated at 0, 2, 4, 8.
    assert result.steps_per_epoch == 4
    budget = [r for r in result.rows if r["arm"] == "random"]
    assert all([p[0] for p in r["curve"]] == [0, 2, 4, 8] for r in budget)
    # Compute-matched: the source's 3 epochs plus the budget, 20 steps.
    assert {r["steps"] for r in result.rows if r["arm"] == "compute-matched"} == {20}


def test_starts_and_controls(tiny_run):
    _, result, _, _ = tiny_run
    by = {(r["arm"], r["pair"] or r["target"], r["seed"]): r for r in result.rows}
    for seed in (0, 1):
        pair = "mlp_s -> mlp_t"
        # The untrained-source control starts elsewhere than the transfer and random.
        untrained = by[("untrained source", pair, seed)]
        assert untrained["start"] != by[("transfer dp", pair, seed)]["start"]
        assert by[("transfer dp", pair, seed)]["start"] != by[("random", "mlp_t", seed)]["start"]
        # Self-transfer starts from the trained source: its step-0 accuracy is the source's
        # (an MLP has no BatchNorm statistics to recompute).
        self_row = by[("self", "mlp_s -> mlp_s", seed)]
        assert self_row["curve"][0][2] == pytest.approx(result.sources["mlp_s"]["test_accuracy"])
        # Equal starts share one run: identical curves, the second marked cached.
        dp, cross = by[("transfer dp", pair, seed)], by[("transfer cross", pair, seed)]
        if dp["start"] == cross["start"]:
            assert dp["curve"] == cross["curve"] and cross["cached"]


def test_summary_figures(tiny_run):
    _, result, summary, _ = tiny_run
    assert [p["pair"] for p in summary["pairs"]] == ["mlp_s -> mlp_t", "mlp_s -> vgg_t"]
    assert [p["kind"] for p in summary["pairs"]] == ["within", "cross"]
    for p in summary["pairs"]:
        for arm in ("transfer dp", "transfer cross", "untrained source"):
            mean, low, high = p["arms"][arm]["log_area_acc"]
            assert low <= mean <= high and p["arms"][arm]["seeds"] == 2
        assert p["arms"]["random"]["log_area_acc"] == (0.0, 0.0, 0.0)
        assert 0.0 <= p["dp"]["param_coverage"] <= 1.0
        assert "log_area_vs_untrained_source" in p["arms"]["transfer dp"]
        assert "log_final_vs_compute" in p["arms"]["transfer dp"]
    # The figure is the mean over seeds of the paired log-ratio of the rows' areas.
    by = {(r["arm"], r["pair"] or r["target"], r["seed"]): r for r in result.rows}

    def _area(row):
        return curves.area([curves.CurvePoint(*p) for p in row["curve"]])

    pair = "mlp_s -> vgg_t"
    expected = [
        math.log(_area(by[("transfer dp", pair, s)]) / _area(by[("random", "vgg_t", s)]))
        for s in (0, 1)
    ]
    got = summary["pairs"][1]["arms"]["transfer dp"]["log_area_acc"][0]
    assert got == pytest.approx(sum(expected) / 2)
    for kinds in summary["groups"].values():
        assert math.isnan(kinds["all"][0]) or kinds["all"][1] <= kinds["all"][0] <= kinds["all"][2]
    assert set(summary["self"]) == {"mlp_s"}


def test_outputs(tiny_run):
    out, _, _, _ = tiny_run
    for name in ("results.md", "results.json", "runs.csv", "pairs.csv"):
        assert (out / name).stat().st_size > 0
    for name in ("curves.png", "ratios.png", "similarity.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    for heading in ("## Sources", "## Headline", "## Pairs", "## Controls"):
        assert heading in md
    saved = json.loads((out / "results.json").read_text())
    assert saved["code_version"] == runs.code_version()
    assert saved["settings"]["seeds"] == 2


def test_cache_is_keyed_by_code(tiny_run, monkeypatch):
    out, result, _, _ = tiny_run
    again = evidence.run_evidence_runs(TINY, out, log=lambda m: None)
    assert all(r["cached"] for r in again.rows)
    assert [r["curve"] for r in again.rows] == [r["curve"] for r in result.rows]
    # Other code: nothing is reused (a one-pair, one-seed rerun to keep the test short).
    monkeypatch.setattr(evidence, "code_version", lambda: "other code")
    other = evidence.run_evidence_runs(TINY, out, max_pairs=1, seeds=1, log=lambda m: None)
    seen = set()
    for row in other.rows:  # the first run of every start is trained; equal starts share it
        run = (row["target"], row["start"], row["steps"])
        assert row["cached"] == (run in seen), row["arm"]
        seen.add(run)


def test_settings_validation():
    assert ExperimentConfig.from_dict(TINY).evidence_settings().seeds == 2
    assert EvidenceSettings.from_dict({}) == EvidenceSettings()
    with pytest.raises(ValueError, match="unknown keys"):
        EvidenceSettings.from_dict({"budget": 3})
    with pytest.raises(ValueError, match="controls"):
        EvidenceSettings.from_dict({"controls": ["lucky"]})
    with pytest.raises(ValueError, match="evidence"):
        ExperimentConfig.from_dict({**TINY, "evidence": {"seeds": 0}})
    quick = evidence.quick_settings(EvidenceSettings())
    assert dataclasses.astuple(quick)[:3] == (1.0, (0.5, 1.0), 1)


@pytest.mark.parametrize("name", ["digits_hard", "mnist1d_noisy"])
def test_shipped_evidence_configs(name):
    cfg = load_config(name)
    settings = cfg.evidence_settings()
    assert settings.seeds >= 5 and len(settings.eval_epochs) >= 4
    assert set(settings.controls) == {"untrained", "self", "compute_matched"}
    cross = [p for p in cfg.pairs if p.change.startswith("family")]
    assert len(cross) >= 8


def test_index_table(tiny_run):
    out, _, summary, _ = tiny_run
    table = evidence_report.index_table([out])
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[1] for r in rows] == list(summary["groups"])
    dp = summary["groups"]["transfer dp"]["all"]
    assert f"{math.exp(dp[0]):.2f} [{math.exp(dp[1]):.2f}, {math.exp(dp[2]):.2f}]" in rows[0]


def test_committed_evidence_readme_quotes_the_committed_results():
    """results/evidence/README.md carries the index table of the committed outputs."""
    root = Path(__file__).resolve().parents[1] / "results" / "evidence"
    folders = sorted(p for p in root.iterdir() if (p / "results.json").is_file())
    assert [p.name for p in folders] == ["digits_hard", "mnist1d_noisy"]
    assert evidence_report.index_table(folders) in (root / "README.md").read_text()
