"""Tests for the ``dpiat-jax`` command line: ``--help``, ``demo --quick`` and ``experiment``."""

import json
import math
import shutil
import subprocess
import sys

import pytest

from dpiat_jax import cli
from dpiat_jax.cli import registry

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: dpiat-jax" in out
    assert "demo" in out and "experiment" in out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: dpiat-jax" in capsys.readouterr().out


def test_subcommands_registered():
    assert list(registry.SUBCOMMANDS)[:2] == ["demo", "experiment"]
    with pytest.raises(ValueError, match="already registered"):
        registry.subcommand("demo", help="again")(lambda args: 0)


@pytest.mark.skipif(shutil.which("dpiat-jax") is None, reason="console script not installed")
def test_console_script_help():
    proc = subprocess.run(["dpiat-jax", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: dpiat-jax" in proc.stdout


def test_demo_quick(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--seeds", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "DPIAT match" in out and "ratio transfer / random" in out
    assert (tmp_path / "learning_curves.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "match_report.txt").read_text().startswith("DPIAT match")
    info = json.loads((tmp_path / "demo.json").read_text())
    assert info["seeds"] == [0, 1]
    for init in ("transfer", "random"):
        curves = info["curves"][init]
        assert len(curves) == 2
        assert all(len(c) == len(info["steps"]) > 2 for c in curves)
        assert all(0.0 <= a <= 1.0 for c in curves for a in c)
    assert info["steps"][0] == 0 and info["steps"][-1] == info["steps_per_epoch"]
    assert math.isfinite(info["ratio"]) and info["ratio"] > 0


def test_experiment_command_wiring(tmp_path, monkeypatch):
    from dpiat_jax.experiments import protocol as experiment

    calls = []
    monkeypatch.setattr(
        experiment, "run_experiment", lambda config, out, **kw: calls.append((config, out, kw))
    )
    argv = ["experiment", "mnist1d", "--out", str(tmp_path), "--epochs", "1", "4"]
    argv += ["--repetitions", "2", "--max-pairs", "3", "--quick"]
    assert cli.main(argv) == 0
    (config, out, kw) = calls[0]
    assert config.name == "mnist1d" and out == str(tmp_path)
    assert kw["epochs"] == [1, 4] and kw["repetitions"] == 2 and kw["max_pairs"] == 3
    assert kw["quick"] and kw["resume"]
    assert kw["command"].startswith("dpiat-jax experiment mnist1d")


def test_experiment_command_default_out(monkeypatch):
    from dpiat_jax.experiments import protocol as experiment

    calls = []
    monkeypatch.setattr(experiment, "run_experiment", lambda config, out, **kw: calls.append(out))
    assert cli.main(["experiment", "digits", "--no-resume"]) == 0
    assert calls == ["runs/experiments/digits"]


# A subcommand whose extra is missing exits with one line naming the extra. The missing
# module is simulated in a fresh interpreter (``sys.modules[name] = None`` makes its import
# fail), so this process's modules are untouched.
_WITHOUT = (
    "import sys; sys.modules[{module!r}] = None; "
    "from dpiat_jax.cli import main; sys.exit(main({argv!r}))"
)


def _run_without(module, argv, tmp_path):
    code = _WITHOUT.format(module=module, argv=argv)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )


@pytest.mark.parametrize(
    ("module", "argv", "extra"),
    [
        ("matplotlib", ["demo", "--quick", "--seeds", "1"], "experiments"),
        ("sklearn", ["experiment", "digits", "--quick"], "experiments"),
        ("orbax", ["transfer", "--src", "ckpt", "--src-def", "dpiat_jax.models:MLP",
                   "--dst-def", "dpiat_jax.models:MLP",
                   "--out", "out", "--quiet"], "cli"),
    ],
)  # fmt: skip
def test_missing_extra_exits_with_one_line(module, argv, extra, tmp_path):
    if argv[0] == "transfer":
        (tmp_path / "ckpt").mkdir()
    proc = _run_without(module, argv, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"dpiat-jax {argv[0]}: error:")
    assert f"[{extra}]" in lines[0] and repr(module) in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_extra_message():
    demo, transfer = registry.SUBCOMMANDS["demo"], registry.SUBCOMMANDS["transfer"]
    orbax = ModuleNotFoundError("No module named 'orbax'", name="orbax.checkpoint")
    plot = ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    assert "[experiments]" in registry.missing_extra_message(demo, orbax)
    assert "[cli]" in registry.missing_extra_message(transfer, orbax)
    assert "[experiments]" in registry.missing_extra_message(transfer, plot)
    other = ModuleNotFoundError("No module named 'my_model'", name="my_model")
    assert registry.missing_extra_message(demo, other) is None
