"""What an experiment writes for people: ``results.md``, ``ratios.png``, ``similarity.png``.

:func:`experiment_markdown` is the report of :func:`dpiat_jax.experiments.protocol.run_experiment`
(settings, sources, the mean ratios and Spearman's rho per ``E``, one table per ``E``);
:func:`plot_ratios` and :func:`plot_similarity` draw its two figures with matplotlib's
object-oriented API (no pyplot state); :func:`format_summary` is the few lines printed at the end.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from dpiat_jax.experiments.config import thaw
from dpiat_jax.experiments.results import ExperimentResult, change_kind, device_summary
from dpiat_jax.experiments.results import format_number as fmt

__all__ = ["experiment_markdown", "format_summary", "plot_ratios", "plot_similarity"]


def plot_ratios(
    path: Path, summary: list[dict[str, Any]], epochs: Sequence[int], title: str
) -> None:
    """Draw grouped bars of the per-pair ratio for each ``E``; dots are the per-seed ratios.

    Args:
        path: the PNG written.
        summary: rows of :func:`~dpiat_jax.experiments.results.summarise_pairs`.
        epochs: the config's ``E`` values.
        title: the figure's title.
    """

    pairs = list(dict.fromkeys((r["index"], r["pair"]) for r in summary))
    fig = Figure(figsize=(max(6.0, 0.7 * len(pairs) + 2), 5.0), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(epochs)
    x = np.arange(len(pairs))
    for i, e in enumerate(epochs):
        by_pair = {r["index"]: r for r in summary if r["epochs"] == e}
        offset = (i - (len(epochs) - 1) / 2) * width
        ratios = [by_pair[k]["ratio"] if k in by_pair else np.nan for k, _ in pairs]
        bars = ax.bar(x + offset, ratios, width, label=f"E = {e}")
        for j, (k, _) in enumerate(pairs):
            seed_ratios = by_pair[k]["seed_ratios"] if k in by_pair else []
            ax.plot([x[j] + offset] * len(seed_ratios), seed_ratios, ".", ms=4, color="k",
                    alpha=0.6, label="per seed" if i == j == 0 else None)  # fmt: skip
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [f"{k}. {label}" for k, label in pairs], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("best test accuracy ratio (transfer / random)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def plot_similarity(
    path: Path,
    summary: list[dict[str, Any]],
    epochs: Sequence[int],
    spearman: Mapping[int, tuple[float, float]],
    title: str,
) -> None:
    """Draw similarity against gain (ratio - 1), one panel per ``E``; points are pair numbers.

    Args:
        path: the PNG written.
        summary: rows of :func:`~dpiat_jax.experiments.results.summarise_pairs`, with
            ``similarity``.
        epochs: the config's ``E`` values.
        spearman: ``E -> (rho, p)``, shown in the panels' titles.
        title: the figure's title.
    """

    fig = Figure(figsize=(4.6 * len(epochs), 4.4), layout="constrained")
    axes = fig.subplots(1, len(epochs), squeeze=False)[0]
    for ax, e in zip(axes, epochs):
        rows = [r for r in summary if r["epochs"] == e]
        sims = [r["similarity"] for r in rows]
        gains = [r["ratio"] - 1.0 for r in rows]
        ax.scatter(sims, gains, s=14)
        for r, sim, gain in zip(rows, sims, gains):
            ax.annotate(str(r["index"]), (sim, gain), fontsize=7, xytext=(3, 2),
                        textcoords="offset points")  # fmt: skip
        ax.axhline(0.0, color="k", lw=0.8, ls="--")
        rho, p = spearman[e]
        ax.set_title(f"E = {e}: Spearman rho = {fmt(rho, 2)} (p = {fmt(p, 3)})", fontsize=9)
        ax.set_xlabel("similarity (source to target)")
        ax.set_ylabel("gain (accuracy ratio - 1)")
    fig.suptitle(f"{title}\n(numbers: pairs as in results.md and ratios.png)", fontsize=10)
    fig.savefig(path, dpi=120)


def _kind_table(result: ExperimentResult) -> list[str]:
    """Return the lines of the mean ratio by kind of change (none if all pairs share one)."""
    cfg = result.config
    lines: list[str] = []
    kinds = list(dict.fromkeys(change_kind(r["change"]) for r in result.summary))
    if len(kinds) > 1:
        lines += ["", "Mean ratio by kind of change (pairs labelled in the config):", ""]
        lines += ["| change | pairs | " + " | ".join(f"E = {e}" for e in cfg.epochs) + " |"]
        lines += ["|---|---|" + "---|" * len(cfg.epochs)]
        for kind in kinds:
            cells = []
            for e in cfg.epochs:
                ratios = [
                    r["ratio"]
                    for r in result.summary
                    if r["epochs"] == e and change_kind(r["change"]) == kind
                ]
                cells.append(fmt(float(np.mean(ratios))))
            n = sum(1 for r in result.summary if r["epochs"] == cfg.epochs[0]
                    and change_kind(r["change"]) == kind)  # fmt: skip
            lines.append(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    return lines


def _pair_table(result: ExperimentResult, e: int) -> list[str]:
    """Return the lines of the per-pair table of ``E = e``."""
    lines: list[str] = []
    lines += ["", f"## E = {e}", ""]
    lines += [
        "| # | pair | change | similarity | layers covered | transfer acc | random acc | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.summary:
        if r["epochs"] != e:
            continue
        lines.append(
            f"| {r['index']} | {r['pair']} | {r['change']} | {fmt(r['similarity'])} | "
            f"{fmt(100 * r['layer_coverage'], 0)}% | "
            f"{fmt(r['transfer_mean'])} ± {fmt(r['transfer_std'])} | "
            f"{fmt(r['random_mean'])} ± {fmt(r['random_std'])} | "
            f"**{fmt(r['ratio'], 2)}** |"
        )
    return lines


def experiment_markdown(result: ExperimentResult, command: str | None) -> str:
    """Return ``results.md``: settings, sources, the summary per ``E`` and one table per ``E``.

    Args:
        result: what the runner measured.
        command: the command line, recorded when given.

    Returns:
        The markdown text.
    """
    cfg = result.config
    lines = [f"# DPIAT experiment `{cfg.name}`", ""]
    if cfg.description:
        lines += [cfg.description, ""]
    settings = cfg.train_settings()
    lines += [
        f"- dataset: `{cfg.dataset}`; target training: "
        + ", ".join(f"{k} {v}" for k, v in settings.items()),
        "- source pretraining: "
        + ", ".join(f"{k} {v}" for k, v in cfg.pretrain_settings().items()),
        f"- epochs E: {list(cfg.epochs)} (a separate run per E), repetitions (seeds): "
        f"{cfg.repetitions}, pairs: {len(result.summary) // max(len(cfg.epochs), 1)}",
        "- ratio: mean best test accuracy from the transfer / from a random init (same seeds);"
        " ± is the standard deviation over seeds",
        f"- wall time of this invocation: {result.seconds / 60:.1f} min on "
        f"{platform.machine()} with {os.cpu_count()} CPU cores ({device_summary()}); "
        f"compute recorded for all runs (cached ones included): source pretraining "
        f"{sum(i['seconds'] for i in result.sources.values()) / 60:.1f} min, target training "
        f"{sum(r['seconds'] for r in result.runs) / 60:.1f} min",
    ]
    if command:
        lines.append(f"- command: `{command}`")
    lines += ["", "## Sources", "", "| source | model | epochs | test accuracy | cached |"]
    lines += ["|---|---|---|---|---|"]
    for name, info in result.sources.items():
        spec = cfg.sources[name]
        kwargs = json.dumps(thaw(dict(spec.kwargs))) if spec.kwargs else ""
        lines.append(
            f"| {name} | `{spec.model}` {kwargs} | "
            f"{cfg.pretrain_epochs(name)} | {fmt(info['test_accuracy'])} | {info['cached']} |"
        )
    lines += ["", "## Summary", "", "| E | mean ratio | geometric mean | Spearman rho (p) |"]
    lines += ["|---|---|---|---|"]
    for e in cfg.epochs:
        rho, p = result.spearman[e]
        lines.append(
            f"| {e} | {fmt(result.mean_ratio[e])} | {fmt(result.geomean_ratio[e])} | "
            f"{fmt(rho, 2)} ({fmt(p, 3)}) |"
        )
    lines += _kind_table(result)
    for e in cfg.epochs:
        lines += _pair_table(result, e)
    lines += [
        "",
        "Plots: `ratios.png` (per-pair ratios), `similarity.png` (similarity against gain).",
        "",
    ]
    return "\n".join(lines)


def format_summary(result: ExperimentResult) -> str:
    """Return a short plain-text summary: the mean ratio and Spearman's rho per ``E``.

    Args:
        result: what the runner measured.

    Returns:
        A few lines for the terminal.
    """
    lines = [f"experiment {result.config.name} done in {result.seconds / 60:.1f} min"]
    for e in result.config.epochs:
        rho, p = result.spearman[e]
        lines.append(
            f"  E={e}: mean ratio {fmt(result.mean_ratio[e])} "
            f"(geometric {fmt(result.geomean_ratio[e])}), "
            f"Spearman(similarity, ratio) {fmt(rho, 2)} (p {fmt(p, 3)})"
        )
    if result.files:
        lines.append(f"  results: {result.files.get('markdown')}")
    return "\n".join(lines)
