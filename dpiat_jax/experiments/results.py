"""Statistics and tables of an experiment's runs: ratios, means, Spearman, CSV.

Shared by the experiment runner (:mod:`dpiat_jax.experiments.protocol`) and the methods
table (:mod:`dpiat_jax.experiments.methods`): a pair's ratio is
``mean_seeds(best transfer) / mean_seeds(best random)`` (:func:`summarise_pairs`), and a
method's figure is the mean over pairs of those ratios per ``E`` (:func:`mean_ratios`).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from scipy import stats

from dpiat_jax.experiments.config import ExperimentConfig

__all__ = [
    "ExperimentResult",
    "change_kind",
    "csv_value",
    "device_summary",
    "format_number",
    "mean_ratios",
    "mean_std",
    "spearman",
    "summarise_pairs",
    "write_csv",
]


@dataclasses.dataclass
class ExperimentResult:
    """What :func:`run_experiment` measured and wrote.

    Attributes:
      config: The effective config (after ``quick``/overrides).
      runs: One dict per training run (see ``runs.csv``).
      summary: One dict per pair and ``E`` (see ``summary.csv``).
      mean_ratio: ``E -> mean over pairs of the accuracy ratio``.
      geomean_ratio: ``E -> geometric mean over pairs of the ratio``.
      spearman: ``E -> (rho, p-value)`` of similarity against the ratio (NaN when
        undefined, e.g. fewer than 3 pairs or constant values).
      sources: ``source -> {"test_accuracy", "seconds", "cached"}``.
      files: Paths written, by kind.
      seconds: Total wall time.
    """

    config: ExperimentConfig
    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    mean_ratio: dict[int, float]
    geomean_ratio: dict[int, float]
    spearman: dict[int, tuple[float, float]]
    sources: dict[str, dict[str, Any]]
    files: dict[str, str]
    seconds: float


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Return the mean and the sample standard deviation (``ddof=1``) of ``values``.

    Args:
        values: accuracies or ratios over seeds.

    Returns:
        ``(mean, std)``; the std of one value is 0 and both are NaN for no values.
    """
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Return Spearman's rank correlation of ``x`` and ``y`` and its p-value.

    Args:
        x: e.g. the pairs' similarities.
        y: e.g. the pairs' ratios.

    Returns:
        ``(rho, p)``; both NaN when undefined (fewer than 3 points or a constant side).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def csv_value(v: Any) -> Any:
    """Return a cell's CSV text: floats to 6 significant digits, lists space-separated.

    Args:
        v: a row's value.

    Returns:
        The value to write.
    """
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return " ".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in v)
    return v


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path`` as CSV; the columns are the union of the rows' keys.

    Args:
        path: the file written.
        rows: one dict per row (keys in first-seen order become the header).
    """
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_value(v) for k, v in row.items()})


def format_number(x: float | None, digits: int = 3) -> str:
    """Return ``x`` with ``digits`` decimals, or ``"nan"`` when missing or not finite.

    Args:
        x: a number (or ``None``).
        digits: decimals shown.

    Returns:
        The text of a table cell.
    """
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def change_kind(change: str) -> str:
    """Return the kind of a pair's change label: ``"family (ResNet->VGG)"`` -> ``"family"``.

    Args:
        change: a pair's ``change`` label from the config.

    Returns:
        The label before any parenthesis, or ``"unlabelled"``.
    """
    return change.split("(")[0].strip() or "unlabelled"


def device_summary() -> str:
    """Return the JAX version and devices (``"jax 0.4.x, 1 x cpu"``), for the tables.

    Returns:
        The summary, or ``"jax"`` when the devices cannot be listed.
    """
    try:
        devices = jax.devices()
        return f"jax {jax.__version__}, {len(devices)} x {devices[0].platform}"
    except Exception:  # noqa: BLE001 - informational only
        return "jax"


def summarise_pairs(
    cfg: ExperimentConfig,
    runs: list[dict[str, Any]],
    pair_info: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Return one row per pair and ``E``: mean/std of the best accuracies and their ratio.

    Args:
      cfg: the effective config (its pairs and ``E`` values).
      runs: the run rows of :func:`~dpiat_jax.experiments.runs.train_runs`.
      pair_info: ``pair label -> extra columns`` (similarity, coverage).

    Returns:
      The rows of ``summary.csv``: ``ratio`` is ``transfer_mean / random_mean``,
      ``seed_ratios`` the per-seed paired ratios.
    """
    pair_info = pair_info or {}
    summary: list[dict[str, Any]] = []
    for index, p in enumerate(cfg.pairs, start=1):
        for e in cfg.epochs:
            t_runs = {
                r["seed"]: r["best"]
                for r in runs
                if r["init"] == "transfer" and r["source"] == p.source
                and r["target"] == p.target and r["epochs"] == e
            }  # fmt: skip
            r_runs = {
                r["seed"]: r["best"]
                for r in runs
                if r["init"] == "random" and r["target"] == p.target and r["epochs"] == e
            }
            t_mean, t_std = mean_std(list(t_runs.values()))
            r_mean, r_std = mean_std(list(r_runs.values()))
            paired = [t_runs[s] / r_runs[s] for s in t_runs if s in r_runs and r_runs[s] > 0]
            ps_mean, ps_std = mean_std(paired)
            summary.append(
                {
                    "index": index,
                    "pair": p.label,
                    "source": p.source,
                    "target": p.target,
                    "change": p.change,
                    "epochs": e,
                    **pair_info.get(p.label, {}),
                    "transfer_mean": t_mean,
                    "transfer_std": t_std,
                    "random_mean": r_mean,
                    "random_std": r_std,
                    "ratio": t_mean / r_mean if r_mean > 0 else float("nan"),
                    "ratio_seed_mean": ps_mean,
                    "ratio_seed_std": ps_std,
                    "seed_ratios": paired,
                    "gain": t_mean - r_mean,
                    "seeds": len(t_runs),
                }
            )
    return summary


def mean_ratios(
    summary: list[dict[str, Any]], epochs: Sequence[int]
) -> tuple[dict[int, float], dict[int, float]]:
    """Return ``E -> arithmetic mean`` and ``E -> geometric mean`` of the pairs' ratios.

    Args:
      summary: rows of :func:`summarise_pairs`.
      epochs: the ``E`` values.

    Returns:
      ``(mean_ratio, geomean_ratio)``; the geometric mean is NaN if a ratio is not positive.
    """
    mean_ratio, geomean_ratio = {}, {}
    for e in epochs:
        ratios = np.asarray([r["ratio"] for r in summary if r["epochs"] == e], float)
        mean_ratio[e] = float(np.mean(ratios))
        geomean_ratio[e] = (
            float(np.exp(np.mean(np.log(ratios)))) if np.all(ratios > 0) else math.nan
        )
    return mean_ratio, geomean_ratio
