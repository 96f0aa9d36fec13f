"""The language-model growth experiment: its corpus, its GPT, its statistics and a
smoke run of the whole pipeline (tiny models, a few steps)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpiat_jax.experiments import corpus as corpus_lib
from dpiat_jax.experiments.lm_growth import (
    ARMS,
    GrowthSettings,
    run_growth,
    summarise,
    write_growth,
)
from dpiat_jax.experiments.stats import bootstrap_interval
from dpiat_jax.models import GPT


def test_corpus_splits_by_file():
    corpus = corpus_lib.load_stdlib_corpus()
    assert not set(corpus.train_files) & set(corpus.test_files)
    assert set(corpus.train_files) | set(corpus.test_files) == set(corpus_lib.STDLIB_FILES)
    assert len(corpus.test_files) == len(corpus_lib.STDLIB_FILES[::5])
    assert corpus.test.dtype == np.uint8 and len(corpus.test) > 100_000


def test_corpus_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no missing.py; pass `files`"):
        corpus_lib.load_stdlib_corpus(("missing.py",), root=str(tmp_path))


def test_gpt_is_causal():
    model = GPT(layers=2, width=16, heads=2, max_length=8)
    tokens = jnp.arange(8, dtype=jnp.int32)[None]
    variables = model.init(jax.random.key(0), tokens)
    changed = tokens.at[0, 5:].set(7)
    a, b = model.apply(variables, tokens), model.apply(variables, changed)
    np.testing.assert_allclose(a[0, :5], b[0, :5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[0, 5:], b[0, 5:])


def test_summary_of_known_curves():
    curves = {
        "random": [[(0, 5.0), (10, 3.0)], [(0, 5.0), (10, 3.2)]],
        "faster": [[(0, 3.0), (10, 2.0)], [(0, 3.2), (10, 2.4)]],
    }
    summary = summarise(curves)
    # areas (trapezoid / steps): random 4.0 and 4.1, faster 2.5 and 2.8
    assert summary["random"]["area"][0] == pytest.approx(4.05)
    assert summary["faster"]["area_vs_random"][0] == pytest.approx(-1.4)
    assert summary["faster"]["steps_to_random_final"] == [0, 0]  # starts at random's end
    assert summary["random"]["steps_to_random_final"] == [10, 10]
    mean, low, high = bootstrap_interval([1.0, 2.0, 3.0, 4.0])
    assert low < mean == 2.5 < high


def test_smoke_run_writes_its_results(tmp_path):
    settings = GrowthSettings().quick()
    result = run_growth(settings, arms=["random", "transfer dp"], log=lambda _: None)
    assert set(result.curves) == {"random", "transfer dp"}
    for runs in result.curves.values():
        assert len(runs) == settings.seeds
        steps = [s for s, _ in runs[0]]
        assert steps == [0, 2, 4]
        assert all(np.isfinite(loss) for run in runs for _, loss in run)
    out = write_growth(result, tmp_path)
    text = (out / "results.md").read_text()
    assert "| transfer dp |" in text and (out / "curves.png").stat().st_size > 0
    rows = (out / "runs.csv").read_text().splitlines()
    assert rows[0] == "arm,seed,step,test_loss"
    assert len(rows) == 1 + len(result.source_curve) + 2 * settings.seeds * 3


def test_unknown_arm_is_named():
    with pytest.raises(ValueError, match="arms must include 'random'"):
        run_growth(GrowthSettings().quick(), arms=["random", "transfer xx"])
    assert list(ARMS)[0] == "random"
