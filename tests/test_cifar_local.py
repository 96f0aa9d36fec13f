"""CIFAR from a local TFDS data directory: no download, the folder out of the cache keys.

``tfds.testing.mock_data`` serves ``tfds.data_source`` without TensorFlow (it patches
``DatasetBuilder.as_data_source`` with random examples and makes ``download_and_prepare``
a no-op), but it also replaces every ``data_dir`` by its own. So the tests that run the
``cifar10`` config record the arguments ``tfds.data_source`` receives (a fixture wraps it
and restores it) to check that the folder arrives there with ``download=False``. The
errors for a folder without the dataset come from the real TFDS, unmocked, on real
(empty or metadata-only) folders. Every test refuses network connections.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dpiat_jax import cli
from dpiat_jax.experiments import data, protocol

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def data_source_calls(monkeypatch) -> list[dict[str, Any]]:
    """Records the arguments of every ``tfds.data_source`` call (the real one still runs)."""
    calls: list[dict[str, Any]] = []
    real = tfds.data_source

    def recording(name, **kwargs):
        calls.append({"name": name, **kwargs})
        return real(name, **kwargs)

    monkeypatch.setattr(tfds, "data_source", recording)
    return calls


@contextlib.contextmanager
def mocked_cifar(num_examples: int = 128) -> Iterator[None]:
    """TFDS datasets of ``num_examples`` random examples per split, without TensorFlow."""
    with tfds.testing.mock_data(num_examples=num_examples):
        yield


def test_cifar10_config_runs_from_a_data_dir_through_the_api_and_the_cli(
    tmp_path, no_network, data_source_calls, capsys
):
    out = tmp_path / "out"
    first_dir, second_dir = tmp_path / "tfds_a", tmp_path / "tfds_b"
    lines: list[str] = []
    with mocked_cifar():
        result = protocol.run_experiment(
            "cifar10", out, quick=True, max_pairs=1, data_dir=first_dir, log=lines.append
        )
    # The folder reached tfds.data_source for both splits, and nothing may be downloaded.
    assert [(c["name"], c["split"]) for c in data_source_calls] == [
        ("cifar10", "train"),
        ("cifar10", "test"),
    ]
    assert {(c["data_dir"], c["download"]) for c in data_source_calls} == {(str(first_dir), False)}
    assert lines[0].startswith("experiment cifar10: cifar10 (32, 32, 3), 128 train / 128 test")
    assert [(r["init"], r["source"], r["target"]) for r in result.runs] == [
        ("random", "", "resnet32"),
        ("transfer", "resnet20", "resnet32"),
    ]
    assert all(0.0 <= r["best"] <= 1.0 for r in result.runs)
    assert Path(result.files["markdown"]).is_file() and Path(result.files["ratios_png"]).is_file()
    config_json = (out / "config.json").read_text()
    assert "tfds_a" not in config_json and json.loads(config_json)["dataset_kwargs"] == {}
    runs_csv = (out / "runs.csv").read_text()

    # The command line, with the same data in another folder: the source checkpoint and
    # every run are reused, because the folder is not part of any cache key.
    data_source_calls.clear()
    argv = ["experiment", "cifar10", "--data-dir", str(second_dir), "--quick", "--max-pairs"]
    with mocked_cifar():
        assert cli.main([*argv, "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert {(c["data_dir"], c["download"]) for c in data_source_calls} == {(str(second_dir), False)}
    assert "source resnet20: restored from" in printed
    assert printed.count(": cached, best") == 2
    assert (out / "runs.csv").read_text() == runs_csv
    assert str(second_dir) in (out / "results.md").read_text()  # the command line


def test_a_missing_dataset_names_the_folder_and_how_to_prepare_it(tmp_path, no_network):
    folder = tmp_path / "tfds"
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("cifar10", data_dir=folder)
    message = str(info.value)
    assert f"not in the data directory {folder}" in message
    assert f"tfds build cifar10 --data_dir {folder} --file_format array_record" in message
    assert "~/tensorflow_datasets" in message and "downloading is off" in message
    assert isinstance(info.value, FileNotFoundError)
    assert not folder.exists()  # nothing was prepared or downloaded there


@pytest.mark.parametrize("command", ["experiment", "methods"])
def test_the_cli_reports_a_missing_dataset_in_one_message(tmp_path, no_network, capsys, command):
    folder = tmp_path / "tfds"
    argv = [command, "cifar10", "--data-dir", str(folder), "--quick", "--max-pairs", "1"]
    argv += ["--out", str(tmp_path / "out")]
    if command == "methods":
        argv += ["--methods-dir", str(tmp_path / "methods"), "--combinations", "dp:clip"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dpiat-jax {command}: error: TFDS dataset 'cifar10' is not in")
    assert str(folder) in err and "tfds build cifar10" in err
    assert "Traceback" not in err


def test_a_dataset_stored_as_tfrecord_says_how_to_convert_it(tmp_path, no_network):
    # What `tfds.load` leaves in ~/tensorflow_datasets: TFRecord files, which
    # tfds.data_source cannot read. The metadata alone is enough for the diagnosis.
    builder = tfds.builder("cifar10", data_dir=tmp_path)
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert f"in {builder.data_dir} is stored as tfrecord" in message
    assert f"tfds convert_format --dataset_version_dir {builder.data_dir}" in message


def test_other_failures_keep_their_own_error(tmp_path, no_network):
    with pytest.raises(Exception) as info:  # noqa: PT011 - TFDS's own type is the point
        data.load("no_such_dataset_xyz", data_dir=tmp_path)
    assert not isinstance(info.value, data.DataNotFoundError)


def test_offline_datasets_ignore_the_data_dir(tmp_path):
    digits = data.load("digits", data_dir=tmp_path / "unused")
    np.testing.assert_array_equal(digits.x_train, data.load_digits().x_train)
