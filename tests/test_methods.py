"""Tests for dpiat_jax.experiments.methods: the matcher x tensor-rule grid end to end on a
tiny config."""

import csv
import json
import math

import pytest

from dpiat_jax.experiments import methods
from dpiat_jax.experiments import protocol as experiment

TINY = {
    "name": "tiny",
    "dataset": "digits",
    "max_train": 128,
    "max_test": 64,
    "epochs": [1, 2],
    "repetitions": 2,
    "batch_size": 64,
    "learning_rate": 0.05,
    "optimizer": "sgd",
    "pretrain": {"pretrain_epochs": 1},
    "sources": {
        "mlp_s": {"model": "mlp", "kwargs": {"hidden_sizes": [16]}},
        "mlp_n": {"model": "mlp", "kwargs": {"hidden_sizes": [8]}},
    },
    "targets": {"mlp_t": {"model": "mlp", "kwargs": {"hidden_sizes": [16, 16]}}},
    "pairs": [["mlp_s", "mlp_t", "depth"], ["mlp_n", "mlp_t", "depth+width"]],
}


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_methods_grid_end_to_end(tmp_path):
    out, mdir = tmp_path / "exp", tmp_path / "methods"
    # The plain experiment first: its (default-method) runs must be reused by the grid.
    base = experiment.run_experiment(TINY, out, log=lambda m: None)
    n_cached = len((out / "runs.jsonl").read_text().splitlines())

    messages = []
    result = methods.run_methods(
        TINY,
        out,
        combinations=[("flat", "magnitude")],
        methods_dir=mdir,
        command="dpiat-jax methods tiny",
        log=messages.append,
    )
    assert result.combinations == [("dp", "clip"), ("flat", "magnitude")]
    assert not result.errors
    # The default row is exactly the experiment's; only the new method's transfers ran:
    # 2 pairs x 2 E x 2 seeds.
    assert result.mean_ratio[("dp", "clip")] == base.mean_ratio
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == n_cached + 8
    new = [json.loads(line)["row"] for line in lines[n_cached:]]
    assert {(r["init"], r["matcher"], r["tensor_rule"]) for r in new} == {
        ("transfer", "flat", "magnitude")
    }
    for m in result.combinations:
        for e in (1, 2):
            assert math.isfinite(result.mean_ratio[m][e]) and result.mean_ratio[m][e] > 0

    rows = _read_csv(mdir / "tiny.csv")
    assert [(r["matcher"], r["tensor_rule"], r["default"]) for r in rows] == [
        ("dp", "clip", "True"),
        ("flat", "magnitude", "False"),
    ]
    assert {"mean_ratio_E1", "mean_ratio_E2", "geomean_ratio_E1"} <= set(rows[0])
    assert len(_read_csv(mdir / "tiny_pairs.csv")) == 2 * 2 * 2
    table = (mdir / "tiny.md").read_text()
    assert "**dp + clip (default)**" in table and "| flat + magnitude |" in table
    readme = (mdir / "README.md").read_text()
    assert "**dp + clip (default)**" in readme and "dpiat-jax methods tiny" in readme
    assert "## Conclusion" in readme and any("Conclusion" in m for m in messages)

    # A rerun trains nothing.
    again = methods.run_methods(
        TINY, out, combinations=[("flat", "magnitude")], methods_dir=mdir, log=lambda m: None
    )
    assert len((out / "runs.jsonl").read_text().splitlines()) == n_cached + 8
    assert again.mean_ratio == result.mean_ratio


def test_beats_and_readme_verdict(tmp_path):
    assert methods.beats({1: 2.1, 4: 1.06}, {1: 2.0, 4: 1.0}, [1, 4])
    assert not methods.beats({1: 2.2, 4: 1.04}, {1: 2.0, 4: 1.0}, [1, 4])

    def record(name, flat):
        rows = [
            {"matcher": "dp", "tensor_rule": "clip", "default": True,
             "mean_ratio_E1": 2.0, "mean_ratio_E4": 1.0,
             "geomean_ratio_E1": 2.0, "geomean_ratio_E4": 1.0},
            {"matcher": "flat", "tensor_rule": "clip", "default": False,
             "mean_ratio_E1": flat[0], "mean_ratio_E4": flat[1],
             "geomean_ratio_E1": 1.0, "geomean_ratio_E4": 1.0},
        ]  # fmt: skip
        return {"config": name, "dataset": name, "pairs": 2, "repetitions": 1,
                "epochs": [1, 4], "rows": rows, "errors": {}, "seconds": 1.0,
                "machine": "test", "command": f"dpiat-jax methods {name}"}  # fmt: skip

    (tmp_path / "a.json").write_text(json.dumps(record("a", (2.2, 1.1))))
    (tmp_path / "b.json").write_text(json.dumps(record("b", (2.2, 1.04))))
    assert methods.write_readme(tmp_path)["winners"] == []
    assert "no combination beats the default" in (tmp_path / "README.md").read_text()
    (tmp_path / "b.json").write_text(json.dumps(record("b", (2.2, 1.06))))
    assert methods.write_readme(tmp_path)["winners"] == [("flat", "clip")]


def test_combination_parsing():
    assert methods.parse_combinations("dp:clip,flat:magnitude") == [
        ("dp", "clip"),
        ("flat", "magnitude"),
    ]
    assert len(methods.all_combinations()) == 30  # 6 matchers x 5 tensor rules
    assert methods.all_combinations(["flat", "dp"], ["full", "clip"])[0] == ("dp", "clip")
    with pytest.raises(ValueError):
        methods.parse_combinations("dp:nope")
    with pytest.raises(ValueError):
        methods.parse_combinations("dp")


def test_methods_cli(monkeypatch):
    from dpiat_jax import cli

    calls = []
    monkeypatch.setattr(methods, "run_methods", lambda config, out, **kw: calls.append((out, kw)))
    argv = ["methods", "mnist1d", "--out", "x", "--matchers", "dp", "flat"]
    argv += ["--tensor-rules", "clip"]
    assert cli.main(argv) == 0
    out, kw = calls[-1]
    assert out == "x" and kw["combinations"] == [("dp", "clip"), ("flat", "clip")]
    assert kw["methods_dir"] == "results/methods"
    assert kw["command"] == "dpiat-jax " + " ".join(argv)
    assert cli.main(["methods", "digits", "--combinations", "flat:full"]) == 0
    assert calls[-1][1]["combinations"] == [("flat", "full")]
