"""The evidence protocol's statistics, tables and figures.

:func:`summarise` turns the runs of :func:`~dpiat_jax.experiments.evidence.run_evidence_runs`
into paired per-pair figures with 95% bootstrap intervals (areas under the test curves,
final and best accuracy, steps to the source's level, the controls) and across-pair
figures (the mean per kind of pair, Spearman's rho of similarity and of coverage against
the gain, with intervals over pairs). :func:`evidence_markdown`, :func:`plot_curves`,
:func:`plot_ratios` and :func:`plot_similarity` write them for people; :func:`run_evidence`
is the whole pipeline.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from dpiat_jax.experiments import evidence as ev
from dpiat_jax.experiments.curves import CurvePoint, area, steps_to
from dpiat_jax.experiments.results import device_summary, write_csv
from dpiat_jax.experiments.stats import bootstrap_interval, log_ratios, spearman_interval

__all__ = [
    "evidence_markdown",
    "index_table",
    "plot_curves",
    "plot_ratios",
    "plot_similarity",
    "run_evidence",
    "summarise",
    "write_evidence",
]

Interval = tuple[float, float, float]


def _points(row: Mapping[str, Any]) -> list[CurvePoint]:
    return [CurvePoint(int(s), float(loss), float(acc)) for s, loss, acc in row["curve"]]


def kind_of(change: str) -> str:
    """Return ``"cross"`` for a pair labelled as a change of family, else ``"within"``."""
    return "cross" if change.startswith("family") else "within"


def _by_seed(rows: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    return {int(r["seed"]): r for r in rows}


def _arm_figures(
    arm_rows: Sequence[Mapping[str, Any]],
    random_rows: Sequence[Mapping[str, Any]],
    level: float,
    others: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, Any]:
    """Paired figures of one arm of one pair against random (and against ``others``)."""
    arm, rnd = _by_seed(arm_rows), _by_seed(random_rows)
    seeds = sorted(set(arm) & set(rnd))
    a = [_points(arm[s]) for s in seeds]
    r = [_points(rnd[s]) for s in seeds]
    out: dict[str, Any] = {
        "seeds": len(seeds),
        "area_acc": bootstrap_interval([area(c) for c in a]),
        "log_area_acc": bootstrap_interval(log_ratios([area(c) for c in a], [area(c) for c in r])),
        "log_area_loss": bootstrap_interval(
            log_ratios([area(c, "test_loss") for c in r], [area(c, "test_loss") for c in a])
        ),
        "start_acc": bootstrap_interval([c[0].test_accuracy for c in a]),
        "final_acc": bootstrap_interval([c[-1].test_accuracy for c in a]),
        "best_acc": bootstrap_interval([max(p.test_accuracy for p in c) for c in a]),
        "final_gain": bootstrap_interval(
            [x[-1].test_accuracy - y[-1].test_accuracy for x, y in zip(a, r, strict=True)]
        ),
        "steps_to_level": [steps_to(c, level) for c in a],
        "random_steps_to_level": [steps_to(c, level) for c in r],
    }
    for name, rows in others.items():
        other = _by_seed(rows)
        both = [s for s in seeds if s in other]
        mine = [area(_points(arm[s])) for s in both]
        if name == ev.COMPUTE:
            finals = [_points(arm[s])[-1].test_accuracy for s in both]
            theirs = [_points(other[s])[-1].test_accuracy for s in both]
            out["log_final_vs_compute"] = bootstrap_interval(log_ratios(finals, theirs))
        else:
            theirs = [area(_points(other[s])) for s in both]
            out[f"log_area_vs_{name.replace(' ', '_')}"] = bootstrap_interval(
                log_ratios(mine, theirs)
            )
    return out


def _group(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["arm"], r["pair"] or r["target"])].append(r)
    return groups


def _pair_summary(runs: ev.EvidenceRuns, groups: Mapping, label: str) -> dict[str, Any]:
    """Every arm's paired figures for one pair, with the pair's similarity and coverage."""
    info = runs.pairs[label]
    target, source = info["target"], info["source"]
    level = runs.settings.level * ev.source_accuracy(runs, source)
    random_rows = groups[(ev.RANDOM, target)]
    compute = groups.get((ev.COMPUTE, target), [])
    untrained = groups.get((ev.UNTRAINED, label), [])
    arms: dict[str, Any] = {}
    for m in runs.settings.matchers:
        others = {ev.UNTRAINED: untrained} if untrained else {}
        if compute:
            others[ev.COMPUTE] = compute
        arms[ev.transfer_arm(m)] = _arm_figures(
            groups[(ev.transfer_arm(m), label)], random_rows, level, others
        )
    if untrained:
        arms[ev.UNTRAINED] = _arm_figures(untrained, random_rows, level, {})
    growth = groups.get((ev.GROWTH, label), [])
    if growth:
        arms[ev.GROWTH] = _arm_figures(growth, random_rows, level, {ev.UNTRAINED: untrained})
    arms[ev.RANDOM] = _arm_figures(random_rows, random_rows, level, {})
    if compute:
        arms[ev.COMPUTE] = {
            "final_acc": bootstrap_interval([_points(r)[-1].test_accuracy for r in compute]),
            "steps": compute[0]["steps"],
        }
    return {
        "pair": label,
        "kind": kind_of(info["change"]),
        **info,
        "level": level,
        "arms": arms,
    }


def _spearman(pairs: Sequence[Mapping[str, Any]], matcher: str, x: str) -> dict[str, Interval]:
    """Spearman's rho of ``x`` (similarity or coverage) against the gain, by kind of pair."""
    out = {}
    for kind in ("all", "within", "cross"):
        sel = [p for p in pairs if kind == "all" or p["kind"] == kind]
        xs = [p[matcher][x] for p in sel]
        ys = [p["arms"][ev.transfer_arm(matcher)]["log_area_acc"][0] for p in sel]
        out[kind] = spearman_interval(xs, ys)
    return out


def summarise(runs: ev.EvidenceRuns) -> dict[str, Any]:
    """Return the evidence tables' figures.

    Args:
        runs: what :func:`~dpiat_jax.experiments.evidence.run_evidence_runs` returned.

    Returns:
        ``{"pairs": [per pair: kind, similarity and coverage per matcher, per arm the
        paired figures], "groups": {arm: {kind: (mean, low, high)}} (the mean over pairs of
        the per-pair mean log area ratio, interval over pairs), "spearman": {matcher:
        {"similarity" | "coverage": {kind: (rho, low, high)}}}, "self": {source: figures}}``.
        Intervals are 95% bootstrap intervals; ``log_*`` values are natural logs of ratios
        (positive: the arm is better than random).
    """
    groups = _group(runs.rows)
    pairs = [_pair_summary(runs, groups, p.label) for p in runs.cfg.pairs]
    arm_names = [ev.transfer_arm(m) for m in runs.settings.matchers]
    for extra in (ev.GROWTH, ev.UNTRAINED):
        if any(extra in p["arms"] for p in pairs):
            arm_names.append(extra)
    grouped = {
        arm: {
            kind: bootstrap_interval(
                [
                    p["arms"][arm]["log_area_acc"][0]
                    for p in pairs
                    if arm in p["arms"] and kind in ("all", p["kind"])
                ]
            )
            for kind in ("all", "within", "cross")
        }
        for arm in arm_names
    }
    rho = {
        m: {x: _spearman(pairs, m, x) for x in ("similarity", "param_coverage")}
        for m in runs.settings.matchers
    }
    selfs = {}
    for source in runs.cfg.sources:
        rows = groups.get((ev.SELF, f"{source} -> {source}"), [])
        if rows:
            selfs[source] = {
                "area_acc": bootstrap_interval([area(_points(r)) for r in rows]),
                "start_acc": bootstrap_interval([_points(r)[0].test_accuracy for r in rows]),
                "final_acc": bootstrap_interval([_points(r)[-1].test_accuracy for r in rows]),
            }
    return {"pairs": pairs, "groups": grouped, "spearman": rho, "self": selfs}


# ---------------------------------------------------------------------------
# Text.
# ---------------------------------------------------------------------------


def _x(interval: Sequence[float] | None, digits: int = 2) -> str:
    """``exp`` of a log interval as ``1.23 [1.10, 1.40]``: a geometric-mean ratio."""
    if interval is None or any(math.isnan(v) for v in interval):
        return "-"
    m, lo, hi = (math.exp(v) for v in interval)
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _i(interval: Sequence[float] | None, digits: int = 3) -> str:
    if interval is None or any(math.isnan(v) for v in interval):
        return "-"
    m, lo, hi = interval
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _steps(values: Sequence[int | None], budget: int) -> str:
    """Median steps to the level over seeds (``>budget`` when most seeds never reach it)."""
    finite = sorted(v if v is not None else math.inf for v in values)
    med = finite[len(finite) // 2] if finite else math.inf
    return f">{budget}" if math.isinf(med) else str(int(med))


def _pair_rows(summary: Mapping[str, Any], runs: ev.EvidenceRuns) -> list[str]:
    matchers = runs.settings.matchers
    head = ["#", "pair", "change"]
    for m in matchers:
        head += [f"{m} sim.", f"{m} coverage", f"{m}: area ratio", f"{m}: loss-area ratio"]
    head += [f"{ev.GROWTH}: area ratio (start acc)"]
    head += ["untrained: area ratio", f"{matchers[0]} vs untrained", "final acc (rnd / tr)"]
    head += ["steps to level (rnd / tr)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    budget = max(int(round(runs.settings.budget_epochs * runs.steps_per_epoch)), 1)
    for k, p in enumerate(summary["pairs"], 1):
        cells = [str(k), p["pair"], p["change"]]
        for m in matchers:
            arm = p["arms"][ev.transfer_arm(m)]
            cells += [f"{p[m]['similarity']:.3f}", f"{p[m]['param_coverage']:.1%}",
                      _x(arm["log_area_acc"]), _x(arm["log_area_loss"])]  # fmt: skip
        first = p["arms"][ev.transfer_arm(matchers[0])]
        untrained = p["arms"].get(ev.UNTRAINED)
        growth = p["arms"].get(ev.GROWTH)
        cells.append(
            f"{_x(growth['log_area_acc'])} ({growth['start_acc'][0]:.3f})" if growth else "-"
        )
        cells += [
            _x(untrained["log_area_acc"]) if untrained else "-",
            _x(first.get("log_area_vs_untrained_source")),
            f"{p['arms'][ev.RANDOM]['final_acc'][0]:.3f} / {first['final_acc'][0]:.3f}",
            f"{_steps(first['random_steps_to_level'], budget)} / "
            f"{_steps(first['steps_to_level'], budget)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _control_rows(summary: Mapping[str, Any], runs: ev.EvidenceRuns) -> list[str]:
    m = runs.settings.matchers[0]
    lines = [
        "| # | pair | start acc (rnd / tr / untrained) | best acc (rnd / tr) | "
        f"final acc: compute-matched random / {m} | {m} final / compute-matched final |",
        "|---|---|---|---|---|---|",
    ]
    for k, p in enumerate(summary["pairs"], 1):
        arms = p["arms"]
        tr, rnd, un = arms[ev.transfer_arm(m)], arms[ev.RANDOM], arms.get(ev.UNTRAINED)
        cm = arms.get(ev.COMPUTE)
        start = f"{rnd['start_acc'][0]:.3f} / {tr['start_acc'][0]:.3f} / " + (
            f"{un['start_acc'][0]:.3f}" if un else "-"
        )
        cm_final = f"{cm['final_acc'][0]:.3f}" if cm else "-"
        lines.append(
            f"| {k} | {p['pair']} | {start} | {rnd['best_acc'][0]:.3f} / {tr['best_acc'][0]:.3f}"
            f" | {cm_final} / {tr['final_acc'][0]:.3f} | "
            f"{_x(tr.get('log_final_vs_compute'), 3)} |"
        )
    return lines


def _headline(summary: Mapping[str, Any], runs: ev.EvidenceRuns) -> list[str]:
    lines = [
        "| arm | all pairs | within family | across families |",
        "|---|---|---|---|",
    ]
    for arm, kinds in summary["groups"].items():
        lines.append(
            f"| {arm} | {_x(kinds['all'])} | {_x(kinds['within'])} | {_x(kinds['cross'])} |"
        )
    lines += ["", "| matcher | predictor | all pairs | within family | across families |"]
    lines.append("|---|---|---|---|---|")
    for m, by_x in summary["spearman"].items():
        for x, kinds in by_x.items():
            cells = [_i(kinds[k], 2) for k in ("all", "within", "cross")]
            lines.append(f"| {m} | {x.replace('param_', '')} | " + " | ".join(cells) + " |")
    return lines


def evidence_markdown(
    summary: Mapping[str, Any], runs: ev.EvidenceRuns, command: str | None = None
) -> str:
    """Return ``results.md``: settings, sources, headline, per-pair and control tables.

    Args:
        summary: :func:`summarise`'s figures.
        runs: the runs.
        command: the command line, recorded.

    Returns:
        The markdown text.
    """
    cfg, s = runs.cfg, runs.settings
    trained = sum(not r["cached"] for r in runs.rows)
    lines = [
        f"# Evidence: `{cfg.name}`",
        "",
        cfg.description,
        "",
        f"- data: `{cfg.dataset}` {dict(cfg.dataset_kwargs)}; {runs.steps_per_epoch} steps "
        f"per epoch (batch {cfg.batch_size}); optimiser {cfg.optimizer}, peak lr "
        f"{cfg.learning_rate}, {s.warmup_fraction:.0%} linear warm-up then {cfg.schedule}",
        f"- one run of {s.budget_epochs:g} epochs per start and seed, evaluated at step 0 and "
        f"after {list(s.eval_epochs)} epochs; {s.seeds} seeds; BatchNorm statistics "
        f"recomputed before every evaluation: {s.recompute_bn}",
        "- ratios are geometric means over seeds of paired per-seed ratios (arm / random "
        "with the same seed and fresh init), with 95% bootstrap intervals; *area ratio*: "
        "area under the test-accuracy curve; *loss-area ratio*: random's area under the "
        "test-loss curve / the arm's (above 1: better for both)",
        f"- steps to level: median over seeds of the first evaluated step at "
        f"{s.level:.0%} of the source's test accuracy",
        f"- {len(runs.rows)} runs ({trained} trained by this invocation), "
        f"{runs.seconds / 60:.1f} min on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"({device_summary()})",
        f"- command: `{command}`" if command else "",
        "",
        "## Sources",
        "",
        "| source | test accuracy | self-transfer: area / final acc |",
        "|---|---|---|",
    ]
    for name, info in runs.sources.items():
        me = summary["self"].get(name)
        cells = f"{_i(me['area_acc'])} / {_i(me['final_acc'])}" if me else "-"
        lines.append(f"| {name} | {info['test_accuracy']:.3f} | {cells} |")
    lines += ["", "## Headline", "", "Area ratio (transfer / random), mean over pairs; "
              "Spearman's rho of each predictor against the log area ratio, interval over "
              "pairs.", ""]  # fmt: skip
    lines += _headline(summary, runs)
    lines += ["", "## Pairs", ""] + _pair_rows(summary, runs)
    lines += ["", "## Controls", ""] + _control_rows(summary, runs) + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------

_ARM_STYLE = {
    ev.RANDOM: "k",
    ev.UNTRAINED: "tab:gray",
    ev.COMPUTE: "tab:brown",
    ev.GROWTH: "tab:green",
}


def plot_curves(path: Path, runs: ev.EvidenceRuns) -> None:
    """Draw one panel per pair: mean test accuracy against steps with a 95% band per arm.

    Args:
        path: the PNG written.
        runs: the runs.
    """
    groups = _group(runs.rows)
    pairs = runs.cfg.pairs
    cols = min(4, len(pairs))
    rows = -(-len(pairs) // cols)
    fig = Figure(figsize=(3.4 * cols, 2.7 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    arms = [ev.RANDOM, *(ev.transfer_arm(m) for m in runs.settings.matchers), ev.GROWTH]
    arms.append(ev.UNTRAINED)
    for ax, p in zip(axes, pairs):
        for arm in arms:
            key = (arm, p.target if arm == ev.RANDOM else p.label)
            curves = [_points(r) for r in groups.get(key, [])]
            if not curves:
                continue
            steps = [q.step for q in curves[0]]
            accs = np.array([[q.test_accuracy for q in c] for c in curves])
            bands = np.array([bootstrap_interval(col) for col in accs.T])
            color = _ARM_STYLE.get(arm)
            ax.plot(steps, bands[:, 0], label=arm, color=color, lw=1.2)
            ax.fill_between(steps, bands[:, 1], bands[:, 2], color=color, alpha=0.2, lw=0)
        ax.set_title(p.label, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(pairs) :]:
        ax.axis("off")
    axes[0].legend(fontsize=6)
    fig.supxlabel("optimiser steps")
    fig.supylabel("test accuracy")
    fig.suptitle(f"{runs.cfg.name}: mean over {runs.settings.seeds} seeds, 95% bands", fontsize=10)
    fig.savefig(path, dpi=110)


def plot_ratios(path: Path, summary: Mapping[str, Any], runs: ev.EvidenceRuns) -> None:
    """Draw the per-pair area ratio of every transfer arm and the control, with intervals.

    Args:
        path: the PNG written.
        summary: :func:`summarise`'s figures.
        runs: the runs.
    """
    pairs = summary["pairs"]
    arms = [ev.transfer_arm(m) for m in runs.settings.matchers] + [ev.GROWTH, ev.UNTRAINED]
    fig = Figure(figsize=(7.0, 0.35 * len(pairs) * len(arms) / 2 + 1.5), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(pairs))
    height = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        vals = [p["arms"].get(arm, {}).get("log_area_acc", (np.nan,) * 3) for p in pairs]
        m, lo, hi = (np.exp(np.array(vals, np.float64)).T) if vals else ([], [], [])
        ax.errorbar(m, y + (i - (len(arms) - 1) / 2) * height, xerr=[m - lo, hi - m], fmt="o",
                    ms=3, capsize=2, label=arm, color=_ARM_STYLE.get(arm))  # fmt: skip
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yticks(y, [f"{k}. {p['pair']}" for k, p in enumerate(pairs, 1)], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("area under the test-accuracy curve, arm / random (95% interval)")
    ax.set_title(f"{runs.cfg.name}: {runs.settings.seeds} seeds", fontsize=10)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def plot_similarity(path: Path, summary: Mapping[str, Any], runs: ev.EvidenceRuns) -> None:
    """Draw similarity and coverage against the log area ratio of the first matcher.

    Args:
        path: the PNG written.
        summary: :func:`summarise`'s figures.
        runs: the runs.
    """
    m = runs.settings.matchers[0]
    fig = Figure(figsize=(9.0, 4.0), layout="constrained")
    for ax, x in zip(fig.subplots(1, 2), ("similarity", "param_coverage")):
        for kind, marker in (("within", "o"), ("cross", "s")):
            sel = [(k, p) for k, p in enumerate(summary["pairs"], 1) if p["kind"] == kind]
            xs = [p[m][x] for _, p in sel]
            ys = [p["arms"][ev.transfer_arm(m)]["log_area_acc"][0] for _, p in sel]
            ax.scatter(xs, ys, marker=marker, s=16, label=f"{kind} family")
            for (k, _), xv, yv in zip(sel, xs, ys):
                ax.annotate(str(k), (xv, yv), fontsize=7, xytext=(3, 2), textcoords="offset points")
        rho = summary["spearman"][m][x]["all"]
        ax.set_title(f"{x.replace('param_', '')}: Spearman {_i(rho, 2)}", fontsize=9)
        ax.axhline(0.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel(x.replace("param_", "parameter "))
        ax.set_ylabel(f"log area ratio ({m} transfer / random)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{runs.cfg.name}: what predicts the gain (numbers: pairs)", fontsize=10)
    fig.savefig(path, dpi=110)


def _csv_rows(runs: ev.EvidenceRuns) -> list[dict[str, Any]]:
    out = []
    for r in runs.rows:
        pts = _points(r)
        out.append(
            {
                **{k: r[k] for k in ("arm", "pair", "source", "target", "change", "seed")},
                "steps": r["steps"],
                "area_acc": area(pts),
                "area_loss": area(pts, "test_loss"),
                "start_acc": pts[0].test_accuracy,
                "final_acc": pts[-1].test_accuracy,
                "best_acc": max(p.test_accuracy for p in pts),
                "curve": [[p.step, round(p.test_loss, 5), round(p.test_accuracy, 5)] for p in pts],
                "start": r["start"],
                "seconds": round(r["seconds"], 2),
            }
        )
    return out


def _pairs_csv(summary: Mapping[str, Any], runs: ev.EvidenceRuns) -> list[dict[str, Any]]:
    out = []
    for p in summary["pairs"]:
        row: dict[str, Any] = {"pair": p["pair"], "change": p["change"], "kind": p["kind"]}
        for m in runs.settings.matchers:
            row[f"{m}_similarity"] = p[m]["similarity"]
            row[f"{m}_param_coverage"] = p[m]["param_coverage"]
        for arm, figs in p["arms"].items():
            if "log_area_acc" in figs:
                mean, lo, hi = figs["log_area_acc"]
                row[f"{arm}_area_ratio"] = math.exp(mean)
                row[f"{arm}_area_ratio_low"] = math.exp(lo)
                row[f"{arm}_area_ratio_high"] = math.exp(hi)
            row[f"{arm}_final_acc"] = figs["final_acc"][0]
        out.append(row)
    return out


def write_evidence(
    runs: ev.EvidenceRuns, out: str | os.PathLike, command: str | None = None
) -> dict[str, Any]:
    """Summarise ``runs`` and write every output file into ``out``.

    Args:
        runs: the runs.
        out: the output folder.
        command: the command line, recorded in ``results.md``.

    Returns:
        The summary (:func:`summarise`).
    """
    out = Path(out)
    summary = summarise(runs)
    write_csv(out / "runs.csv", _csv_rows(runs))
    write_csv(out / "pairs.csv", _pairs_csv(summary, runs))
    ev.write_json(runs, out / "results.json", summary)
    (out / "results.md").write_text(evidence_markdown(summary, runs, command))
    plot_curves(out / "curves.png", runs)
    plot_ratios(out / "ratios.png", summary, runs)
    plot_similarity(out / "similarity.png", summary, runs)
    return summary


def index_table(folders: Sequence[str | os.PathLike]) -> str:
    """Return the headline table of several evidence outputs (``results/evidence/README.md``).

    One row per config and arm: the mean area ratio over all pairs, within and across
    families (95% intervals over pairs), and for a transfer arm Spearman's rho of its
    matcher's similarity against its gain, read from each folder's ``results.json``.

    Args:
        folders: output folders of :func:`run_evidence`.

    Returns:
        A markdown table.
    """
    lines = [
        "| config | arm | all pairs | within family | across families | rho(similarity, gain) |",
        "|---|---|---|---|---|---|",
    ]
    for folder in folders:
        saved = json.loads((Path(folder) / "results.json").read_text())
        summary, name = saved["summary"], saved["config"]["name"]
        rhos = {
            ev.transfer_arm(m): _i(by_x["similarity"]["all"], 2)
            for m, by_x in summary["spearman"].items()
        }
        for arm, kinds in summary["groups"].items():
            cells = [_x(kinds[k]) for k in ("all", "within", "cross")]
            lines.append(f"| {name} | {arm} | " + " | ".join(cells) + f" | {rhos.get(arm, '-')} |")
    return "\n".join(lines)


def run_evidence(
    config: Any,
    out_dir: str | os.PathLike,
    *,
    command: str | None = None,
    **kwargs: Any,
) -> tuple[ev.EvidenceRuns, dict[str, Any]]:
    """Run the evidence protocol of a config and write its results into ``out_dir``.

    Args:
        config: as for :func:`~dpiat_jax.experiments.evidence.run_evidence_runs`.
        out_dir: the output folder.
        command: the command line, recorded in ``results.md``.
        **kwargs: ``seeds``, ``max_pairs``, ``quick``, ``resume``, ``data_dir``, ``log``.

    Returns:
        ``(runs, summary)``.
    """
    runs = ev.run_evidence_runs(config, out_dir, **kwargs)
    return runs, write_evidence(runs, out_dir, command)
