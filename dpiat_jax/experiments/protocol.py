"""The published DPIAT evaluation protocol as a reproducible experiment runner.

An experiment is described by a JSON config (a path, or the name of a file shipped in
``dpiat_jax/experiments/configs/``: ``digits``, ``mnist1d``, ``cifar10``, ``cifar100``).
The protocol:

1. Every *source* is trained once ("pretrained") and cached as an Orbax checkpoint under
   ``<out>/sources/<name>/``; a rerun with the same settings restores it instead.
2. For every ``(source, target)`` pair, every number of epochs ``E`` in the config's list
   and every repetition (seed), the target is trained for ``E`` epochs from the DPIAT
   transfer of the source and from a random initialisation.
3. The figure of merit is the ratio of the best validation (test split) accuracy,
   transfer / random, averaged over repetitions, per pair and over pairs; and the
   Spearman correlation between the similarity (:func:`dpiat_jax.similarity` of the
   source to the target) and that ratio.

Protocol details, chosen so that the numbers are unambiguous:

* Separate runs per ``E``: the learning-rate schedule (cosine by default) decays over the
  whole run, so the accuracy after epoch 1 of a 4-epoch run is *not* the 1-epoch figure.
* Random and transferred starts of a target share the seed: the same data order, and the
  transfer's own fresh initialisation (positions the source does not supply) is exactly the
  random initialisation it is compared with.
* The random-initialisation runs depend only on ``(target, E, seed)``; they are run once
  and shared by every pair with that target.
* Best validation accuracy is the maximum over the run's epochs of the test-split accuracy
  (these datasets have no separate validation split).
* A pair's ratio is ``mean_seeds(best transfer) / mean_seeds(best random)``; the per-seed
  paired ratios are reported too. The average over pairs is the arithmetic mean of the
  pairs' ratios (the geometric mean is also given).

Outputs in ``<out>``: ``runs.csv`` (one row per training run), ``summary.csv`` (one row per
pair and ``E``), ``results.md`` (tables, averages, Spearman), ``results.json``,
``ratios.png`` (per-pair ratio bars), ``similarity.png`` (similarity against gain),
``matches/<source>__<target>.txt`` (the matching reports) and ``runs.jsonl``, a cache of
finished runs that lets an interrupted experiment resume.

The parts live in their own modules: the configs in :mod:`~dpiat_jax.experiments.config`,
the sources and training runs in :mod:`~dpiat_jax.experiments.runs`, the statistics in
:mod:`~dpiat_jax.experiments.results` and the markdown and plots in
:mod:`~dpiat_jax.experiments.report`; this module runs them in order.

The transfers use :func:`dpiat_jax.transfer`'s ``dp`` matcher and ``clip`` tensor rule.
``dpiat-jax methods`` (:mod:`dpiat_jax.experiments.methods`) reruns the transfer arm with other
matchers and tensor rules in the same folder, sharing the sources, the random-init runs
and ``runs.jsonl``: the cache key of a transfer with another method includes it, and
transfer rows record ``matcher`` and ``tensor_rule`` (rows without them are ``dp`` +
``clip``, the only method before the field existed).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

import dpiat_jax as dj
from dpiat_jax.experiments.config import (
    ExperimentConfig,
    ModelSpec,
    PairSpec,
    available_configs,
    build_model,
    effective_config,
    load_config,
    quick_config,
)
from dpiat_jax.experiments.report import (
    experiment_markdown,
    format_summary,
    plot_ratios,
    plot_similarity,
)
from dpiat_jax.experiments.results import (
    ExperimentResult,
    mean_ratios,
    spearman,
    summarise_pairs,
    write_csv,
)
from dpiat_jax.experiments.runs import (
    DEFAULT_METHOD,
    Log,
    Setup,
    load_run_cache,
    prepare,
    train_runs,
)

__all__ = [
    "DEFAULT_METHOD",
    "ExperimentConfig",
    "ExperimentResult",
    "ModelSpec",
    "PairSpec",
    "available_configs",
    "build_model",
    "format_summary",
    "load_config",
    "quick_config",
    "run_experiment",
]


def _print(msg: str) -> None:
    """The default progress printer: ``print`` with flush."""
    print(msg, flush=True)


def _match_pairs(setup: Setup, log: Log) -> dict[str, dict[str, Any]]:
    """Measure every pair's similarity and write its matching report to ``out/matches``.

    Returns:
        ``pair label -> {"similarity", "layer_coverage", "param_coverage"}``.
    """
    cfg, trainer, out = setup.cfg, setup.trainer, setup.out
    (out / "matches").mkdir(exist_ok=True)
    x0 = trainer.sample_input
    pair_info: dict[str, dict[str, Any]] = {}
    for p in cfg.pairs:
        src_module, src_vars = setup.sources[p.source]
        dst_module = trainer.module(cfg.targets[p.target])
        start = time.perf_counter()
        sim = dj.similarity((src_module, src_vars), dst_module, sample_input=x0)
        report = dj.match(src_vars, src_module, dst_module, jax.random.key(0), sample_input=x0)
        (out / "matches" / f"{p.slug}.txt").write_text(str(report) + "\n")
        pair_info[p.label] = {
            "similarity": float(sim),
            "layer_coverage": float(report.layer_coverage),
            "param_coverage": float(report.param_coverage),
        }
        log(
            f"pair {p.label}: similarity {sim:.3f}, layers covered "
            f"{report.layers_transferred}/{report.layers_total} "
            f"({time.perf_counter() - start:.1f}s)"
        )
    return pair_info


def _write_outputs(result: ExperimentResult, out: Path, command: str | None) -> dict[str, str]:
    """Write the CSVs, plots, ``results.json`` and ``results.md`` of ``result`` into ``out``.

    Returns:
        The paths written, by kind.
    """
    cfg = result.config
    files = {
        "runs_csv": out / "runs.csv",
        "summary_csv": out / "summary.csv",
        "markdown": out / "results.md",
        "json": out / "results.json",
        "ratios_png": out / "ratios.png",
        "similarity_png": out / "similarity.png",
    }
    write_csv(files["runs_csv"], result.runs)
    write_csv(files["summary_csv"], result.summary)
    title = f"DPIAT, config {cfg.name} ({cfg.dataset}), {cfg.repetitions} seed(s)"
    plot_ratios(files["ratios_png"], result.summary, cfg.epochs, title)
    plot_similarity(files["similarity_png"], result.summary, cfg.epochs, result.spearman, title)
    files["json"].write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "mean_ratio": result.mean_ratio,
                "geomean_ratio": result.geomean_ratio,
                "spearman": {e: list(v) for e, v in result.spearman.items()},
                "sources": result.sources,
                "summary": result.summary,
                "seconds": result.seconds,
                "python": sys.version.split()[0],
                "cpu_count": os.cpu_count(),
            },
            indent=1,
        )
    )
    files["markdown"].write_text(experiment_markdown(result, command))
    return {k: str(v) for k, v in files.items()}


def run_experiment(
    config: str | os.PathLike | Mapping[str, Any] | ExperimentConfig,
    out_dir: str | os.PathLike,
    *,
    repetitions: int | None = None,
    epochs: Sequence[int] | None = None,
    max_pairs: int | None = None,
    quick: bool = False,
    resume: bool = True,
    command: str | None = None,
    log: Log | None = None,
    data_dir: str | os.PathLike | None = None,
) -> ExperimentResult:
    """Run the transfer-versus-random protocol of a config and write its results.

    The transfers use :func:`dpiat_jax.transfer`'s defaults (``dp`` + ``clip``); see
    :func:`dpiat_jax.experiments.methods.run_methods` for other matchers and tensor rules.

    Args:
      config: A config path, shipped name, dict or :class:`ExperimentConfig`.
      out_dir: Output directory (created); source checkpoints are cached in
        ``out_dir/sources`` and finished runs in ``out_dir/runs.jsonl``.
      repetitions: Override of the config's number of seeds.
      epochs: Override of the config's list of epoch budgets ``E``.
      max_pairs: Keep only the first ``max_pairs`` pairs.
      quick: Shortened protocol (:func:`quick_config`): 512/256 examples, sources
        trained 2 epochs, ``E = 1``, one seed (explicit overrides still apply).
      resume: Reuse finished runs recorded in ``runs.jsonl`` with identical settings.
      command: The command line, recorded in ``results.md``.
      log: Progress printer (default: ``print`` with flush).
      data_dir: A local TFDS data directory holding the config's dataset (e.g. CIFAR-10
        prepared by ``tfds build``); it is read from there and never downloaded. It is
        not part of the config or of any cache key: the same data in another folder
        reuses the same sources and runs.

    Returns:
      An :class:`ExperimentResult`.
    """
    log = log or _print
    t0 = time.perf_counter()
    cfg = effective_config(
        config, repetitions=repetitions, epochs=epochs, max_pairs=max_pairs, quick=quick
    )
    # 1. Sources.
    setup = prepare(cfg, out_dir, log, data_dir=data_dir)
    # 2. Similarity and matching report of every pair.
    pair_info = _match_pairs(setup, log)
    # 3. Training runs, grouped by target so each (target, E) compiles once.
    runs = train_runs(setup, load_run_cache(setup.out / "runs.jsonl", resume), log)
    # 4. Summaries.
    summary = summarise_pairs(cfg, runs, pair_info)
    mean_ratio, geomean_ratio = mean_ratios(summary, cfg.epochs)
    rhos = {}
    for e in cfg.epochs:
        rows = [r for r in summary if r["epochs"] == e]
        rhos[e] = spearman([r["similarity"] for r in rows], [r["ratio"] for r in rows])
    result = ExperimentResult(
        config=cfg,
        runs=runs,
        summary=summary,
        mean_ratio=mean_ratio,
        geomean_ratio=geomean_ratio,
        spearman=rhos,
        sources=setup.source_info,
        files={},
        seconds=time.perf_counter() - t0,
    )
    result.files = _write_outputs(result, setup.out, command)
    log(format_summary(result))
    return result
