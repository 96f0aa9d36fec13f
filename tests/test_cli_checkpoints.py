"""``dpiat-jax transfer | match | rank`` on Orbax checkpoints written by the training loop.

Sources are trained for a few steps on a digits subset and saved with
``dpiat_jax.experiments.train.save_checkpoint``, once as a variables dict and once as a
TrainState; the commands run through ``dpiat_jax.cli.main`` and their output checkpoints
are restored and compared with the target's fresh init and with ``dpiat_jax.transfer``
called directly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax as dj
from dpiat_jax import cli
from dpiat_jax.cli import registry
from dpiat_jax.experiments import data, train
from dpiat_jax.models import MLP, VGG, VGG_CONFIGS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SRC_DEF = ["--src-def", "dpiat_jax.models:VGG", "--src-kwargs", '{"cfg": [4, "M", 8]}']
DST_DEF = ["--dst-def", "dpiat_jax.models.vgg:VGG", "--dst-kwargs", '{"cfg": [4, "M", 8, 8]}']
MLP_DEF = ["--src-def", "dpiat_jax.models:MLP", "--src-kwargs", '{"hidden_sizes": [16]}']
SOURCE = VGG(cfg=(4, "M", 8))
TARGET = VGG(cfg=(4, "M", 8, 8))
MLP_SOURCE = MLP(hidden_sizes=(16,))
X = jnp.zeros((1, 8, 8, 1), jnp.float32)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Checkpoints of sources trained a few steps: variables dicts and a TrainState."""
    root = tmp_path_factory.mktemp("ckpts")
    ds = data.load("digits").take(64, 32)
    tx = train.make_optimizer("sgd", 0.05, 4)
    out = {}
    for name, module in [("vgg", SOURCE), ("mlp", MLP_SOURCE)]:
        variables = module.init(jax.random.key(0), X)
        variables, _ = train.fit(
            module, variables, ds, epochs=1, batch_size=32, tx=tx, progress=False
        )
        out[name] = variables
        out[f"{name}_path"] = train.save_checkpoint(root / name, variables)
    # A TrainState, as a training loop checkpoints it (params, batch_stats, opt_state, ...).
    state = train.create_train_state(SOURCE, out["vgg"], tx)
    state, _ = train.train_step(state, ds.x_train[:32], ds.y_train[:32])
    out["state"] = state
    out["state_path"] = train.save_checkpoint(root / "state", state)
    out["root"] = root
    return out


def _run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_like_fresh_init(restored, reference):
    """Same structure, shapes and dtypes as ``TARGET.init`` and the same values as
    ``reference`` (dpiat_jax.transfer called directly)."""
    fresh = TARGET.init(jax.random.key(0), X)
    assert jax.tree.structure(restored) == jax.tree.structure(fresh)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(fresh)):
        assert got.shape == want.shape and got.dtype == want.dtype
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_subcommands_registered(capsys):
    assert {"transfer", "match", "rank"} <= set(registry.SUBCOMMANDS)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "transfer" in out and "match" in out and "rank" in out


def test_transfer_from_variables_checkpoint(ckpts, capsys):
    out = ckpts["root"] / "target_from_vars"
    argv = ["transfer", "--src", ckpts["vgg_path"], *SRC_DEF, *DST_DEF, "--out", str(out)]
    code, stdout, stderr = _run(argv, capsys)
    assert code == 0, stderr
    assert "restoring" in stderr and "wrote" in stderr  # progress on stderr
    assert stdout == ""
    restored = train.restore_checkpoint(out)
    expected = dj.transfer(ckpts["vgg"], SOURCE, TARGET, jax.random.key(0), sample_input=X)
    _assert_like_fresh_init(restored, expected)
    # Layers of equal shapes are copied: the first conv is the source's.
    np.testing.assert_array_equal(
        np.asarray(restored["params"]["conv0"]["kernel"]),
        np.asarray(ckpts["vgg"]["params"]["conv0"]["kernel"]),
    )
    # The checkpoint restores into a TrainState of the target and trains.
    state = train.create_train_state(TARGET, restored, train.make_optimizer("sgd", 0.05, 1))
    assert state.batch_stats is not None

    # --out exists now: refused without --overwrite, replaced with it.
    code, _, stderr = _run([*argv, "--quiet"], capsys)
    assert code == 2 and "--overwrite" in stderr
    code, stdout, stderr = _run([*argv, "--overwrite", "--quiet", "--report"], capsys)
    assert code == 0 and stderr == ""
    # --report prints the report of the plan that was applied (the same as match's).
    report = dj.match(ckpts["vgg"], SOURCE, TARGET, jax.random.key(0), sample_input=X)
    assert stdout.strip() == str(report).strip()
    _assert_like_fresh_init(train.restore_checkpoint(out), expected)


def test_transfer_from_train_state_checkpoint(ckpts, capsys):
    out = ckpts["root"] / "target_from_state"
    argv = ["transfer", "--src", ckpts["state_path"], *SRC_DEF, *DST_DEF]
    argv += ["--out", str(out), "--input-shape", "1,8,8,1", "--seed", "3", "--quiet"]
    code, stdout, stderr = _run(argv, capsys)
    assert code == 0, stderr
    assert stderr == ""  # --quiet
    restored = train.restore_checkpoint(out)
    assert set(restored) == {"params", "batch_stats"}  # no optimiser state or step
    state = ckpts["state"]
    src = {"params": state.params, "batch_stats": state.batch_stats}
    expected = dj.transfer(src, SOURCE, TARGET, jax.random.key(3), sample_input=X)
    _assert_like_fresh_init(restored, expected)


def test_match_prints_report_and_plots(ckpts, capsys, tmp_path):
    png = tmp_path / "match.png"
    argv = ["match", "--src", ckpts["state_path"], *SRC_DEF, *DST_DEF, "--plot", str(png)]
    code, stdout, stderr = _run(argv, capsys)
    assert code == 0, stderr
    report = dj.match(
        {"params": ckpts["state"].params, "batch_stats": ckpts["state"].batch_stats},
        SOURCE,
        TARGET,
        jax.random.key(0),
        sample_input=X,
    )
    assert stdout.strip() == str(report).strip()
    assert stdout.startswith("DPIAT match")
    assert ["conv0", "->", "conv0", "1.000"] in [line.split() for line in stdout.splitlines()]
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_rank_orders_sources_like_rank_sources(ckpts, capsys):
    argv = ["rank", "--src", ckpts["mlp_path"], *MLP_DEF, "--src", ckpts["vgg_path"], *SRC_DEF]
    argv += DST_DEF
    code, stdout, stderr = _run([*argv, "--json", "--quiet"], capsys)
    assert code == 0, stderr
    ranking = json.loads(stdout)["ranking"]
    expected = dj.rank_sources(
        [(MLP_SOURCE, ckpts["mlp"]), (SOURCE, ckpts["vgg"])], TARGET, sample_input=X
    )
    paths = [ckpts["mlp_path"], ckpts["vgg_path"]]
    assert [row["src"] for row in ranking] == [paths[i] for i, _ in expected]
    assert [row["similarity"] for row in ranking] == pytest.approx([s for _, s in expected])
    assert ranking[0]["src"] == ckpts["vgg_path"]  # the same family ranks first
    assert ranking[0]["src_def"].startswith("dpiat_jax.models:VGG")

    code, stdout, _ = _run(argv, capsys)  # the table
    assert code == 0
    lines = stdout.strip().splitlines()
    assert "rank" in lines[1] and "similarity" in lines[1]
    assert lines[2].split()[:1] == ["1"] and ckpts["vgg_path"] in lines[2]
    assert ckpts["mlp_path"] in lines[3]


def test_definitions_from_the_working_directory_and_factories(ckpts, capsys, tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text("from dpiat_jax.models import VGG as Net\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_nets", raising=False)
    argv = ["match", "--src", ckpts["vgg_path"], "--src-def", "my_nets:Net"]
    argv += ["--src-kwargs", '{"cfg": [4, "M", 8]}', "--quiet"]
    # A factory returning a module works as a definition too.
    argv += ["--dst-def", "dpiat_jax.models:get_model", "--dst-kwargs"]
    argv += ['{"name": "vgg_small", "width": 0.125}']
    code, stdout, stderr = _run(argv, capsys)
    assert code == 0, stderr
    expected = dj.match(
        ckpts["vgg"],
        SOURCE,
        VGG(cfg=VGG_CONFIGS["vgg_small"], width=0.125),
        jax.random.key(0),
        sample_input=X,
    )
    assert stdout.strip() == str(expected).strip()


def _error_cases(ckpts):
    vgg, mlp, state = ckpts["vgg_path"], ckpts["mlp_path"], ckpts["state_path"]
    missing = str(ckpts["root"] / "missing")
    out = str(ckpts["root"] / "never_written")
    t = ["transfer", "--out", out]
    return {
        "missing checkpoint": ([*t, "--src", missing, *SRC_DEF, *DST_DEF], ["--src", missing]),
        "not a checkpoint": ([*t, "--src", str(ckpts["root"]), *SRC_DEF, *DST_DEF], ["Orbax"]),
        "module not importable": (
            [*t, "--src", vgg, "--src-def", "dpiat_jax.nomodels:VGG", *DST_DEF],
            ["--src-def", "cannot import module 'dpiat_jax.nomodels'"],
        ),
        "class not found": (
            [*t, "--src", vgg, "--src-def", "dpiat_jax.models:Vgg", *DST_DEF],
            ["--src-def", "did you mean dpiat_jax.models:VGG"],
        ),
        "not module:Class": (
            [*t, "--src", vgg, *SRC_DEF, "--dst-def", "dpiat_jax.models.VGG"],
            ["--dst-def", "module:Class"],
        ),
        "bad JSON": (
            [*t, "--src", vgg, "--src-def", "dpiat_jax.models:VGG", "--src-kwargs", "{cfg: 1}"]
            + DST_DEF,
            ["--src-kwargs", "not valid JSON"],
        ),
        "unknown constructor argument": (
            [*t, "--src", vgg, "--src-def", "dpiat_jax.models:VGG", "--src-kwargs", '{"x": 1}']
            + DST_DEF,
            ["--src-kwargs", "unexpected keyword argument 'x'"],
        ),
        "checkpoint of another configuration": (
            [*t, "--src", vgg, "--src-def", "dpiat_jax.models:VGG", "--src-kwargs"]
            + ['{"cfg": [4, "M", 16]}', *DST_DEF],
            ["does not fit --src-def", "params/conv1/kernel", "(3, 3, 4, 8)", "(3, 3, 4, 16)"],
        ),
        "checkpoint of another class": (
            ["match", "--src", state, *MLP_DEF, *DST_DEF],
            ["does not fit --src-def dpiat_jax.models:MLP", "conv0/kernel: not created"],
        ),
        "wrong input shape": (
            ["match", "--src", mlp, *MLP_DEF, *DST_DEF, "--input-shape", "1,8,8,3"],
            ["--src", "--input-shape 1,8,8,3", "dense0/kernel", "(64, 16)"],
        ),
        "target does not run": (
            ["match", "--src", vgg, *SRC_DEF, "--dst-def", "dpiat_jax.models:CifarResNet"]
            + ["--dst-kwargs", '{"depth": 9}'],
            ["--dst-def dpiat_jax.models:CifarResNet", "6n + 2"],
        ),
        "bad input shape": (
            ["match", "--src", vgg, *SRC_DEF, *DST_DEF, "--input-shape", "8x8xC"],
            ["--input-shape", "1,32,32,3"],
        ),
        "bad input dtype": (
            ["match", "--src", vgg, *SRC_DEF, *DST_DEF, "--input-shape", "1,8,8,1"]
            + ["--input-dtype", "float33"],
            ["--input-dtype", "float32"],
        ),
        "--src-def missing": (["rank", "--src", vgg, "--src", mlp, *MLP_DEF, *DST_DEF], [vgg]),
        "--src-def before --src": (
            ["rank", *SRC_DEF, "--src", vgg, *DST_DEF],
            ["comes before any --src"],
        ),
        "two sources for transfer": (
            [*t, "--src", vgg, *SRC_DEF, "--src", mlp, *MLP_DEF, *DST_DEF],
            ["dpiat-jax rank"],
        ),
        "plot folder missing": (
            ["match", "--src", vgg, *SRC_DEF, *DST_DEF, "--plot", f"{missing}/m.png"],
            ["--plot", "does not exist"],
        ),
    }


ERROR_CASES = list(
    _error_cases(dict.fromkeys(["vgg_path", "mlp_path", "state_path"], "") | {"root": Path("")})
)


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_line_with_exit_code_2(ckpts, capsys, case):
    argv, needles = _error_cases(ckpts)[case]
    code, stdout, stderr = _run([*argv, "--quiet"], capsys)
    command = argv[0]
    assert code == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"dpiat-jax {command}: error: ")
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (ckpts["root"] / "never_written").exists()


def test_required_dst_def_is_an_argparse_error(ckpts, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["match", "--src", ckpts["vgg_path"], *SRC_DEF])
    assert exc.value.code == 2
    assert "--dst-def" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("dpiat-jax") is None, reason="console script not installed")
def test_console_script_error_exit_code(tmp_path):
    argv = ["dpiat-jax", "match", "--src", str(tmp_path / "missing"), *SRC_DEF, *DST_DEF]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("dpiat-jax match: error: --src")
