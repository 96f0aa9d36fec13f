"""The evidence protocol: learning curves, paired ratios with intervals, and controls.

The published protocol (:mod:`~dpiat_jax.experiments.protocol`) compares one accuracy per
separate run; near chance or at the ceiling such ratios say little. This runner asks
whether a transfer makes training *faster*, and whether the gain comes from what the
source learned:

* **Curves.** Every start of a target is trained one run of ``budget_epochs`` per seed
  (learning rate warmed up linearly, then cosine-decayed over the run) and evaluated on the
  test split at step 0 and after each of ``eval_epochs`` (:mod:`~.curves`). Figures: the
  area under the test-accuracy and test-loss curves, the final and the best accuracy, and
  the steps to reach ``level`` x the source's accuracy. No choice is made on the test split.
* **Paired ratios.** Starts of a target share the seed (data order, dropout) and the fresh
  initialisation; per seed, ``log(area transfer / area random)`` (for the loss,
  ``log(area random / area transfer)``, so positive is better for both); the mean over
  at least 5 seeds with a 95% bootstrap interval.
* **Arms.** ``random``; ``transfer <matcher>`` for every matcher of the settings;
  ``net2net + identity`` on the pairs within a family (function-preserving growth:
  ``tensor_rule="net2net"``, ``deepen="identity"``); controls: ``untrained source`` (the
  same transfer from a fresh source of the same architecture: what was learned against
  how it is scaled), ``self`` (each source trained on from itself: the upper bound) and
  ``compute-matched`` (random init trained the source's epochs plus the budget: does
  transfer beat spending the source's compute on the target?). BatchNorm statistics are
  recomputed before every evaluation of every arm.
* **Cache.** A run is keyed by :func:`~.runs.code_version`, the data, the target, the
  settings, the seed and a hash of its start (:func:`~.curves.variables_digest`): stale
  runs are never reused, and two arms with the same start (a ``cross`` transfer that moves
  exactly ``dp``'s pairs) share one run.

Outputs in ``<out>``: ``results.md``, ``results.json``, ``runs.csv`` (one row per arm, pair
and seed), ``pairs.csv``, ``curves.png``, ``ratios.png`` and ``similarity.png``
(:mod:`~.evidence_report`), ``runs.jsonl`` (the cache) and ``sources/`` (checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax

import dpiat_jax as dj
from dpiat_jax.experiments import curves, train
from dpiat_jax.experiments.config import (
    EvidenceSettings,
    ExperimentConfig,
    ModelSpec,
    PairSpec,
    effective_config,
)
from dpiat_jax.experiments.runs import (
    Log,
    Setup,
    code_version,
    digest,
    load_run_cache,
    prepare,
    stable_int,
)
from dpiat_jax.types import Variables

__all__ = ["EvidenceRuns", "quick_settings", "run_evidence_runs"]

RANDOM, UNTRAINED, SELF, COMPUTE = "random", "untrained source", "self", "compute-matched"
GROWTH = "net2net + identity"


def transfer_arm(matcher: str) -> str:
    """Return the arm name of a transfer with ``matcher`` (``"transfer dp"``, ...)."""
    return f"transfer {matcher}"


def quick_settings(settings: EvidenceSettings) -> EvidenceSettings:
    """Return shortened settings for tests and smoke runs: 1 epoch, 2 points, 1 seed."""
    return dataclasses.replace(settings, budget_epochs=1.0, eval_epochs=(0.5, 1.0), seeds=1)


@dataclasses.dataclass(frozen=True)
class EvidenceRuns:
    """What :func:`run_evidence_runs` returns: the runs and what the report needs.

    Attributes:
        cfg: the effective config.
        settings: the protocol's settings.
        rows: one per (arm, pair or target, seed): ``arm``, ``source``, ``target``,
            ``pair``, ``change``, ``seed``, ``curve`` (``[[step, loss, accuracy], ...]``),
            ``start``, ``steps``, ``seconds``, ``cached``.
        pairs: ``pair label -> {"change", "source", "target", "<matcher>": {"similarity",
            "param_coverage", "layer_coverage"}}``.
        sources: ``source name -> {"test_accuracy", ...}``.
        steps_per_epoch: ``target name -> steps per epoch``.
        seconds: wall time of the invocation.
    """

    cfg: ExperimentConfig
    settings: EvidenceSettings
    rows: list[dict[str, Any]]
    pairs: dict[str, dict[str, Any]]
    sources: dict[str, dict[str, Any]]
    steps_per_epoch: int
    seconds: float


class _Runner:
    """Trains (or takes from the cache) the curve of one start; holds the optimiser cache."""

    def __init__(self, setup: Setup, settings: EvidenceSettings, cached: dict, log: Log):
        self.setup, self.settings, self.cached, self.log = setup, settings, cached, log
        self.cache_path = setup.out / "runs.jsonl"
        cfg = setup.cfg
        self.spe = max(setup.dataset.num_train // cfg.batch_size, 1)
        self._txs: dict[int, Any] = {}

    def steps(self, epochs: float) -> int:
        """Optimiser steps of ``epochs`` epochs (at least 1)."""
        return max(int(round(epochs * self.spe)), 1)

    def _tx(self, total: int):
        if total not in self._txs:
            cfg = self.setup.cfg
            self._txs[total] = train.make_optimizer(
                cfg.optimizer,
                cfg.learning_rate,
                total,
                weight_decay=cfg.weight_decay,
                schedule=cfg.schedule,
                warmup_steps=int(round(self.settings.warmup_fraction * total)),
            )
        return self._txs[total]

    def curve(
        self, spec: ModelSpec, module: nn.Module, start: Variables, seed: int, total: int
    ) -> tuple[list[list[float]], str, float, bool]:
        """Return ``(curve, start digest, seconds, cached)`` of one run of ``total`` steps."""
        cfg, s = self.setup.cfg, self.settings
        start_digest = curves.variables_digest(start)
        eval_steps = [self.steps(e) for e in s.eval_epochs if e <= s.budget_epochs]
        key = digest(
            {
                "code": code_version(),
                "dataset": cfg.dataset,
                "dataset_kwargs": dict(cfg.dataset_kwargs),
                "max_train": cfg.max_train,
                "max_test": cfg.max_test,
                "model": spec.to_dict(),
                "settings": cfg.train_settings(),
                "protocol": [total, eval_steps, s.warmup_fraction, s.recompute_bn],
                "seed": seed,
                "start": start_digest,
            }
        )
        if key in self.cached:
            rec = self.cached[key]["row"]
            return rec["curve"], start_digest, rec["seconds"], True
        t0 = time.perf_counter()
        points = curves.train_curve(
            module,
            start,
            self.setup.dataset,
            tx=self._tx(total),
            total_steps=total,
            eval_steps=eval_steps,
            batch_size=cfg.batch_size,
            seed=seed,
            augment=cfg.augment,
            flip=cfg.flip,
            eval_batch_size=cfg.eval_batch_size,
            recompute_bn=s.recompute_bn,
        )
        curve = [[p.step, p.test_loss, p.test_accuracy] for p in points]
        seconds = time.perf_counter() - t0
        self.cached[key] = {"digest": key, "row": {"curve": curve, "seconds": seconds}}
        with open(self.cache_path, "a") as f:
            f.write(json.dumps(self.cached[key]) + "\n")
        return curve, start_digest, seconds, False


def _pair_info(setup: Setup, settings: EvidenceSettings, log: Log) -> dict[str, dict[str, Any]]:
    """Similarity and coverage of every pair under every matcher; matching reports on disk."""
    cfg, trainer, out = setup.cfg, setup.trainer, setup.out
    (out / "matches").mkdir(exist_ok=True)
    x0 = trainer.sample_input
    info: dict[str, dict[str, Any]] = {}
    for p in cfg.pairs:
        src_module, src_vars = setup.sources[p.source]
        dst = trainer.module(cfg.targets[p.target])
        info[p.label] = {"change": p.change, "source": p.source, "target": p.target}
        for m in settings.matchers:
            sim = dj.similarity((src_module, src_vars), dst, sample_input=x0, matcher=m)
            report = dj.match(
                src_vars, src_module, dst, jax.random.key(0), sample_input=x0, matcher=m
            )
            (out / "matches" / f"{p.slug}__{m}.txt").write_text(str(report) + "\n")
            info[p.label][m] = {
                "similarity": float(sim),
                "param_coverage": float(report.param_coverage),
                "layer_coverage": float(report.layer_coverage),
            }
        log(
            f"pair {p.label}: "
            + ", ".join(
                f"{m} similarity {info[p.label][m]['similarity']:.3f} coverage "
                f"{info[p.label][m]['param_coverage']:.1%}"
                for m in settings.matchers
            )
        )
    return info


def _starts(
    setup: Setup, settings: EvidenceSettings, target: str, pair: PairSpec | None, seed: int
) -> dict[str, Variables]:
    """The starts of one target and seed: random (``pair`` None) or the pair's arms."""
    trainer, cfg = setup.trainer, setup.cfg
    module = trainer.module(cfg.targets[target])
    rng = jax.random.fold_in(jax.random.key(seed), stable_int("target:" + target))
    if pair is None:
        return {RANDOM: trainer.init(module, rng)}
    src_module, src_vars = setup.sources[pair.source]
    x0 = trainer.sample_input
    starts = {
        transfer_arm(m): dj.transfer(src_vars, src_module, module, rng, sample_input=x0, matcher=m)
        for m in settings.matchers
    }
    if settings.growth and not pair.change.startswith("family"):
        starts[GROWTH] = dj.transfer(
            src_vars, src_module, module, rng, sample_input=x0,
            tensor_rule="net2net", deepen="identity",
        )  # fmt: skip
    if "untrained" in settings.controls:
        fresh_rng = jax.random.fold_in(jax.random.key(seed), stable_int("untrained:" + pair.source))
        fresh = trainer.init(src_module, fresh_rng)
        starts[UNTRAINED] = dj.transfer(
            fresh, src_module, module, rng, sample_input=x0, matcher=settings.matchers[0]
        )
    return starts


def _row(arm: str, pair: PairSpec | None, target: str, seed: int, run: tuple, total: int):
    curve, start, seconds, cached = run
    return {
        "arm": arm,
        "source": "" if pair is None else pair.source,
        "target": target,
        "pair": "" if pair is None else pair.label,
        "change": "" if pair is None else pair.change,
        "seed": seed,
        "steps": total,
        "curve": curve,
        "start": start,
        "seconds": seconds,
        "cached": cached,
    }


def _target_runs(runner: _Runner, target: str, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every arm of one target over the seeds (random, transfers, controls)."""
    setup, settings = runner.setup, runner.settings
    cfg = setup.cfg
    spec = cfg.targets[target]
    module = setup.trainer.module(spec)
    total = runner.steps(settings.budget_epochs)
    pairs = [p for p in cfg.pairs if p.target == target]
    rows = []
    for seed in seeds:
        for pair in [None, *pairs]:
            for arm, start in _starts(setup, settings, target, pair, seed).items():
                run = runner.curve(spec, module, start, seed, total)
                rows.append(_row(arm, pair, target, seed, run, total))
                runner.log(
                    f"{arm:16s} {pair.label if pair else target} seed={seed}: final acc "
                    f"{run[0][-1][2]:.3f}" + (" (cached)" if run[3] else f" ({run[2]:.1f}s)")
                )
        if "compute_matched" in settings.controls and pairs:
            epochs = max(cfg.pretrain_epochs(p.source) for p in pairs) + settings.budget_epochs
            long_total = runner.steps(epochs)
            start = _starts(setup, settings, target, None, seed)[RANDOM]
            run = runner.curve(spec, module, start, seed, long_total)
            rows.append(_row(COMPUTE, None, target, seed, run, long_total))
            runner.log(f"{COMPUTE:16s} {target} seed={seed}: final acc {run[0][-1][2]:.3f}")
    return rows


def _self_runs(runner: _Runner, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Each source trained on from itself (identity transfer) for the budget."""
    setup, settings = runner.setup, runner.settings
    total = runner.steps(settings.budget_epochs)
    rows = []
    for name, (module, variables) in setup.sources.items():
        spec = setup.cfg.sources[name]
        spec = dataclasses.replace(spec, pretrain_epochs=None)
        for seed in seeds:
            rng = jax.random.fold_in(jax.random.key(seed), stable_int("self:" + name))
            start = dj.transfer(
                variables, module, module, rng, sample_input=setup.trainer.sample_input
            )
            run = runner.curve(spec, module, start, seed, total)
            pair = PairSpec(name, name, "self")
            rows.append(_row(SELF, pair, name, seed, run, total))
    return rows


def run_evidence_runs(
    config: str | os.PathLike | Mapping[str, Any] | ExperimentConfig,
    out_dir: str | os.PathLike,
    *,
    seeds: int | None = None,
    max_pairs: int | None = None,
    quick: bool = False,
    resume: bool = True,
    data_dir: str | os.PathLike | None = None,
    log: Log | None = None,
) -> EvidenceRuns:
    """Pretrain (or restore) the sources and train every arm of every pair over the seeds.

    Args:
        config: a config path, shipped name, dict or :class:`ExperimentConfig`; its
            ``evidence`` object holds the protocol's settings (:class:`EvidenceSettings`).
        out_dir: output folder (sources and the run cache live there).
        seeds: override of the settings' number of seeds.
        max_pairs: keep only the first ``max_pairs`` pairs.
        quick: shortened data, sources and protocol (tests and smoke runs).
        resume: reuse cached runs of ``out_dir/runs.jsonl`` with identical keys.
        data_dir: a local TFDS data directory for a TFDS dataset (never downloads; not
            part of any cache key).
        log: progress printer (default: ``print`` with flush).

    Returns:
        The :class:`EvidenceRuns`.
    """
    log = log or (lambda m: print(m, flush=True))
    t0 = time.perf_counter()
    cfg = effective_config(config, max_pairs=max_pairs, quick=quick)
    settings = cfg.evidence_settings()
    if quick:
        settings = quick_settings(settings)
    if seeds is not None:
        settings = dataclasses.replace(settings, seeds=int(seeds))
    setup = prepare(cfg, out_dir, log, data_dir=data_dir)
    pairs = _pair_info(setup, settings, log)
    runner = _Runner(setup, settings, load_run_cache(setup.out / "runs.jsonl", resume), log)
    seed_list = [cfg.seed + r for r in range(settings.seeds)]
    rows: list[dict[str, Any]] = []
    for target in cfg.targets:
        rows += _target_runs(runner, target, seed_list)
    if "self" in settings.controls:
        rows += _self_runs(runner, seed_list)
    return EvidenceRuns(
        cfg=cfg,
        settings=settings,
        rows=rows,
        pairs=pairs,
        sources=setup.source_info,
        steps_per_epoch=runner.spe,
        seconds=time.perf_counter() - t0,
    )


def source_accuracy(runs: EvidenceRuns, source: str) -> float:
    """Return a source's test accuracy after pretraining."""
    return float(runs.sources[source]["test_accuracy"])


def write_json(runs: EvidenceRuns, path: Path, summary: Mapping[str, Any]) -> None:
    """Write ``results.json``: the config, the settings, the pairs and the summary."""
    path.write_text(
        json.dumps(
            {
                "config": runs.cfg.to_dict(),
                "settings": runs.settings.to_dict(),
                "code_version": code_version(),
                "pairs": runs.pairs,
                "sources": runs.sources,
                "summary": summary,
                "seconds": runs.seconds,
            },
            indent=1,
            default=float,
        )
    )
