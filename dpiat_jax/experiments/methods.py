"""The methods table: every matcher x tensor-rule combination under the experiment protocol.

For one experiment config (:mod:`dpiat_jax.experiments.protocol`), :func:`run_methods` trains every
target of every pair ``E`` epochs from the transfer made with each ``(matcher,
tensor_rule)`` combination (:func:`dpiat_jax.transfer`'s ``matcher`` and ``tensor_rule``),
over the config's seeds, and compares each with the random initialisation exactly as
``dpiat-jax experiment`` does: a pair's ratio is ``mean_seeds(best transfer) /
mean_seeds(best random)`` and a combination's figure is the mean of the pairs' ratios per
``E`` (the geometric mean is given too).

Everything is shared with the experiment runner's output folder (``--out``, by default
``runs/experiments/<config>``): the pretrained sources (``OUT/sources``), the random-init
runs (they do not depend on the method) and the finished transfer runs (``OUT/runs.jsonl``,
whose keys include the method for every combination but the default, so the default's
runs are those of ``dpiat-jax experiment``). An interrupted grid resumes.

Outputs in ``methods_dir`` (default ``results/methods``): ``<config>.md`` and
``<config>.csv`` (one row per combination), ``<config>_pairs.csv`` (one row per
combination, pair and ``E``), ``<config>.json`` (what :func:`write_readme` reads) and
``README.md``, which puts every config found in ``methods_dir`` side by side and states
whether a combination beats the default (:func:`beats`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dpiat_jax.experiments.config import ExperimentConfig, effective_config
from dpiat_jax.experiments.results import device_summary, mean_ratios, summarise_pairs, write_csv
from dpiat_jax.experiments.results import format_number as fmt
from dpiat_jax.experiments.runs import (
    DEFAULT_METHOD,
    Log,
    Setup,
    load_run_cache,
    prepare,
    train_runs,
)
from dpiat_jax.matchers import MATCHERS
from dpiat_jax.tensors import TENSOR_RULES

__all__ = [
    "BEATS_FACTOR",
    "MethodsResult",
    "all_combinations",
    "beats",
    "parse_combinations",
    "run_methods",
    "write_readme",
]

BEATS_FACTOR = 1.05
"""A combination *beats* the default when its mean ratio is at least this many times the
default's at every ``E`` of the table, on every config of the table (:func:`beats`)."""


def all_combinations(
    matchers: Sequence[str] | None = None, tensor_rules: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """Return ``matchers x tensor_rules`` (all registered ones by default), the default first.

    Args:
      matchers: names in :data:`dpiat_jax.matchers.MATCHERS`; all when ``None``.
      tensor_rules: names in :data:`dpiat_jax.tensors.TENSOR_RULES`; all when ``None``.

    Returns:
      The ``(matcher, tensor_rule)`` combinations.

    Raises:
      ValueError: for an unknown name.
    """
    matchers = list(matchers or MATCHERS)
    tensor_rules = list(tensor_rules or TENSOR_RULES)
    for m in matchers:
        if m not in MATCHERS:
            raise ValueError(f"Unknown matcher {m!r}; known: {list(MATCHERS)}.")
    for r in tensor_rules:
        if r not in TENSOR_RULES:
            raise ValueError(f"Unknown tensor rule {r!r}; known: {list(TENSOR_RULES)}.")
    combos = list(itertools.product(matchers, tensor_rules))
    if DEFAULT_METHOD in combos:
        combos.remove(DEFAULT_METHOD)
        combos.insert(0, DEFAULT_METHOD)
    return combos


def parse_combinations(text: str) -> list[tuple[str, str]]:
    """Return the combinations of a ``MATCHER:RULE`` list, validated and without repeats.

    Args:
      text: e.g. ``"dp:clip,flat:clip"`` (commas or spaces between items).

    Returns:
      E.g. ``[("dp", "clip"), ("flat", "clip")]``.

    Raises:
      ValueError: for an item without one colon or an unknown name.
    """
    combos: list[tuple[str, str]] = []
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        if item.count(":") != 1:
            raise ValueError(f"A combination is MATCHER:TENSOR_RULE, got {item!r}.")
        m, r = item.split(":")
        combos += all_combinations([m], [r])
    return list(dict.fromkeys(combos))


def _label(method: tuple[str, str]) -> str:
    return f"{method[0]} + {method[1]}"


@dataclasses.dataclass
class MethodsResult:
    """What :func:`run_methods` measured: per combination, the mean and geometric mean of
    the pairs' ratios per ``E``; ``summaries`` holds the per-pair rows; ``errors`` the
    combinations that failed (message), left out of the table."""

    config_name: str
    epochs: tuple[int, ...]
    combinations: list[tuple[str, str]]
    mean_ratio: dict[tuple[str, str], dict[int, float]]
    geomean_ratio: dict[tuple[str, str], dict[int, float]]
    summaries: dict[tuple[str, str], list[dict[str, Any]]]
    errors: dict[tuple[str, str], str]
    seconds: float
    files: dict[str, str]


def _print(msg: str) -> None:
    """The default progress printer: ``print`` with flush."""
    print(msg, flush=True)


def _silent(msg: str) -> None:
    """A progress printer that prints nothing (``verbose=False``)."""


def _machine() -> str:
    """Return the machine, CPU model, core count, JAX devices and load, for the tables."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = f", load average {os.getloadavg()[0]:.1f} at the start"
    except OSError:
        load = ""
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} CPU cores ({device_summary()}){load}"


def _run_combinations(
    setup: Setup, combos: Sequence[tuple[str, str]], log: Log, run_log: Log
) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], dict[tuple[str, str], str], dict]:
    """Train every combination's transfers (sharing ``runs.jsonl``) and summarise each.

    A combination that raises is recorded in the errors and left out; the grid goes on.

    Returns:
        ``(summaries, errors, seconds)``, each keyed by ``(matcher, tensor_rule)``.
    """
    cfg = setup.cfg
    cached = load_run_cache(setup.out / "runs.jsonl", resume=True)
    summaries: dict[tuple[str, str], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, str], str] = {}
    seconds: dict[tuple[str, str], float] = {}
    for i, method in enumerate(combos, start=1):
        start = time.perf_counter()
        prefix = f"{cfg.name} {_label(method)} ({i}/{len(combos)}) "
        try:
            runs = train_runs(
                setup, cached, run_log, matcher=method[0], tensor_rule=method[1], prefix=prefix
            )
        except Exception as exc:  # noqa: BLE001 - one failing method must not stop the grid
            errors[method] = f"{type(exc).__name__}: {exc}"
            log(f"{prefix}FAILED: {errors[method]}")
            continue
        summaries[method] = summarise_pairs(cfg, runs)
        mean, geomean = mean_ratios(summaries[method], cfg.epochs)
        seconds[method] = time.perf_counter() - start
        log(
            f"{prefix}done in {seconds[method]:.0f}s: "
            + ", ".join(
                f"E={e} mean ratio {fmt(mean[e])} (geometric {fmt(geomean[e])})" for e in cfg.epochs
            )
        )
    return summaries, errors, seconds


def _write_tables(
    result: MethodsResult,
    cfg: ExperimentConfig,
    mdir: Path,
    info: Mapping[str, Any],
) -> dict[str, Path]:
    """Write ``<config>.csv``, ``_pairs.csv``, ``.json`` and ``.md`` of ``result`` into ``mdir``.

    ``info`` holds what the record notes besides the numbers (``seconds_per_combination``,
    ``machine``, ``command``, ``note``, ``out_dir``).

    Returns:
        The paths, by kind (``README.md`` included, written by the caller).
    """
    files = {
        "markdown": mdir / f"{cfg.name}.md",
        "csv": mdir / f"{cfg.name}.csv",
        "pairs_csv": mdir / f"{cfg.name}_pairs.csv",
        "json": mdir / f"{cfg.name}.json",
        "readme": mdir / "README.md",
    }
    write_csv(files["csv"], _table_rows(result))
    write_csv(
        files["pairs_csv"],
        [
            {"matcher": m[0], "tensor_rule": m[1], **{k: v for k, v in r.items()}}
            for m in result.combinations
            for r in result.summaries[m]
        ],
    )
    record = {
        "config": cfg.name,
        "dataset": cfg.dataset,
        "pairs": len(cfg.pairs),
        "repetitions": cfg.repetitions,
        "epochs": list(cfg.epochs),
        "default": list(DEFAULT_METHOD),
        "rows": _table_rows(result),
        "errors": {_label(m): msg for m, msg in result.errors.items()},
        "seconds": result.seconds,
        "seconds_per_combination": info["seconds_per_combination"],
        "machine": info["machine"],
        "command": info["command"],
        "note": info["note"],
        "out_dir": info["out_dir"],
    }
    files["json"].write_text(json.dumps(record, indent=1))
    files["markdown"].write_text(_config_markdown(record, result))
    return files


def run_methods(
    config: str | os.PathLike | Mapping[str, Any] | ExperimentConfig,
    out_dir: str | os.PathLike,
    *,
    combinations: Sequence[tuple[str, str]] | None = None,
    methods_dir: str | os.PathLike = "results/methods",
    repetitions: int | None = None,
    epochs: Sequence[int] | None = None,
    max_pairs: int | None = None,
    quick: bool = False,
    command: str | None = None,
    note: str | None = None,
    log: Log | None = None,
    verbose: bool = True,
    data_dir: str | os.PathLike | None = None,
) -> MethodsResult:
    """Run the experiment protocol of ``config`` once per ``(matcher, tensor_rule)``.

    Args:
      config: A config path, shipped name, dict or ``ExperimentConfig``.
      out_dir: The experiment's output folder, whose source checkpoints and run cache
        (``runs.jsonl``) are reused and extended (``dpiat-jax experiment --out``).
      combinations: The ``(matcher, tensor_rule)`` pairs (default: all of
        :func:`all_combinations`); the default ``dp + clip`` is always added.
      methods_dir: Where the tables go (``<config>.md``/``.csv``/``.json``, README.md).
      repetitions: As for ``run_experiment``.
      epochs: As for ``run_experiment``.
      max_pairs: As for ``run_experiment``.
      quick: As for ``run_experiment``.
      command: The command line, recorded in the tables.
      note: A remark recorded with the tables (e.g. why combinations were left out).
      log: Progress printer (default: ``print`` with flush).
      verbose: Log every training run, not only each combination's summary.
      data_dir: As for ``run_experiment``: a local TFDS data directory, read without
        downloading and kept out of the cache keys.

    Returns:
      A :class:`MethodsResult` (its ``files`` are the tables written).
    """
    log = log or _print
    run_log = log if verbose else _silent
    t0 = time.perf_counter()
    machine = _machine()
    combos = list(dict.fromkeys([DEFAULT_METHOD, *(combinations or all_combinations())]))
    cfg = effective_config(
        config, repetitions=repetitions, epochs=epochs, max_pairs=max_pairs, quick=quick
    )
    write_config = not (Path(out_dir) / "config.json").exists()
    setup = prepare(cfg, out_dir, log, write_config=write_config, data_dir=data_dir)
    summaries, errors, seconds = _run_combinations(setup, combos, log, run_log)
    ratios = {m: mean_ratios(summary, cfg.epochs) for m, summary in summaries.items()}
    result = MethodsResult(
        config_name=cfg.name,
        epochs=tuple(cfg.epochs),
        combinations=[c for c in combos if c in summaries],
        mean_ratio={m: r[0] for m, r in ratios.items()},
        geomean_ratio={m: r[1] for m, r in ratios.items()},
        summaries=summaries,
        errors=errors,
        seconds=time.perf_counter() - t0,
        files={},
    )
    mdir = Path(methods_dir)
    mdir.mkdir(parents=True, exist_ok=True)
    info = {
        "seconds_per_combination": {_label(m): s for m, s in seconds.items()},
        "machine": machine,
        "command": command,
        "note": note,
        "out_dir": os.fspath(out_dir),
    }
    files = _write_tables(result, cfg, mdir, info)
    readme = write_readme(mdir)
    result.files = {k: str(v) for k, v in files.items()}
    log(f"methods {cfg.name} done in {result.seconds / 60:.1f} min: {files['markdown']}")
    log(readme["conclusion"])
    return result


def _table_rows(result: MethodsResult) -> list[dict[str, Any]]:
    default = result.mean_ratio.get(DEFAULT_METHOD)
    rows = []
    for m in result.combinations:
        row: dict[str, Any] = {
            "matcher": m[0],
            "tensor_rule": m[1],
            "default": m == DEFAULT_METHOD,
        }
        for e in result.epochs:
            row[f"mean_ratio_E{e}"] = result.mean_ratio[m][e]
        for e in result.epochs:
            row[f"geomean_ratio_E{e}"] = result.geomean_ratio[m][e]
        for e in result.epochs:
            row[f"relative_to_default_E{e}"] = (
                result.mean_ratio[m][e] / default[e] if default else math.nan
            )
        rows.append(row)
    return rows


def _config_markdown(record: Mapping[str, Any], result: MethodsResult) -> str:
    epochs = record["epochs"]
    lines = [
        f"# Methods table, config `{record['config']}` ({record['dataset']})",
        "",
        f"- {record['pairs']} pairs, {record['repetitions']} seeds, E in {epochs} (the "
        "pairs, seeds and training of `dpiat-jax experiment "
        f"{record['config']}`)",
        "- cell: mean over pairs of the ratio mean_seeds(best transfer accuracy) / "
        "mean_seeds(best random-init accuracy); geometric mean over pairs in brackets; "
        "'x default' = mean ratio / the default's",
        f"- default (marked): `matcher={DEFAULT_METHOD[0]!r}, tensor_rule={DEFAULT_METHOD[1]!r}`",
        f"- wall time of this invocation: {record['seconds'] / 60:.1f} min on {record['machine']}",
    ]
    if record.get("command"):
        lines.append(f"- command: `{record['command']}`")
    if record.get("note"):
        lines.append(f"- note: {record['note']}")
    head = " | ".join(f"E = {e}" for e in epochs)
    rel = " | ".join(f"x default E = {e}" for e in epochs)
    lines += ["", f"| matcher + tensor rule | {head} | {rel} |"]
    lines += ["|---|" + "---|" * (2 * len(epochs))]
    for row in record["rows"]:
        name = f"{row['matcher']} + {row['tensor_rule']}"
        if row["default"]:
            name = f"**{name} (default)**"
        cells = [
            f"{fmt(row[f'mean_ratio_E{e}'])} ({fmt(row[f'geomean_ratio_E{e}'])})" for e in epochs
        ]
        cells += [fmt(row[f"relative_to_default_E{e}"]) for e in epochs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if record["errors"]:
        lines += ["", "Failed combinations (left out):", ""]
        lines += [f"- {k}: {v}" for k, v in record["errors"].items()]
    if result.summaries:
        first = next(iter(result.summaries.values()))
        pairs = list(dict.fromkeys((r["index"], r["pair"]) for r in first))
        lines += ["", "Pairs: " + "; ".join(f"{k}. {label}" for k, label in pairs)]
        for e in epochs:
            lines += ["", f"## Ratio per pair, E = {e}", ""]
            lines += ["| matcher + tensor rule | " + " | ".join(str(k) for k, _ in pairs) + " |"]
            lines += ["|---|" + "---|" * len(pairs)]
            for m in result.combinations:
                by_index = {r["index"]: r["ratio"] for r in result.summaries[m] if r["epochs"] == e}
                name = _label(m) + (" (default)" if m == DEFAULT_METHOD else "")
                lines.append(
                    f"| {name} | " + " | ".join(fmt(by_index[k], 2) for k, _ in pairs) + " |"
                )
    lines.append("")
    return "\n".join(lines)


def beats(
    candidate: Mapping[int, float], default: Mapping[int, float], epochs: Sequence[int]
) -> bool:
    """Return whether ``candidate`` beats ``default`` on one config.

    :func:`write_readme` requires it on every config.

    Args:
      candidate: ``E -> mean ratio`` of a combination.
      default: ``E -> mean ratio`` of the default.
      epochs: the ``E`` values compared.

    Returns:
      Whether the candidate's mean ratio is >= :data:`BEATS_FACTOR` x the default's at
      every ``E``.
    """
    return all(candidate[e] >= BEATS_FACTOR * default[e] for e in epochs)


def _read_records(mdir: Path) -> list[dict[str, Any]]:
    """Return the ``<config>.json`` records of ``mdir`` (other JSON files are skipped)."""
    records = []
    for path in sorted(mdir.glob("*.json")):
        rec = json.loads(path.read_text())
        if isinstance(rec, dict) and "rows" in rec and "config" in rec:
            records.append(rec)
    return records


def _winners(
    records: list[dict[str, Any]],
    tables: Mapping[str, Mapping[tuple[str, str], Mapping[str, Any]]],
    everywhere: Sequence[tuple[str, str]],
) -> list[tuple[str, str]]:
    """Return the combinations (run on every config) that beat the default on every config."""
    winners: list[tuple[str, str]] = []
    for m in everywhere:
        if m == DEFAULT_METHOD:
            continue
        ok = True
        for rec in records:
            t = tables[rec["config"]]
            if DEFAULT_METHOD not in t:
                ok = False
                break
            cand = {e: t[m][f"mean_ratio_E{e}"] for e in rec["epochs"]}
            base = {e: t[DEFAULT_METHOD][f"mean_ratio_E{e}"] for e in rec["epochs"]}
            ok = ok and beats(cand, base, rec["epochs"])
        if ok:
            winners.append(m)
    return winners


def _conclusion(records: list[dict[str, Any]], winners: list[tuple[str, str]]) -> str:
    """Return the README's verdict on the default, stating the rule it applied."""
    names = ", ".join(f"`{r['config']}`" for r in records)
    rule = (
        f"a combination *beats* the default ({_label(DEFAULT_METHOD)}) when its mean ratio "
        f"at every E (here E = 1 and E = 4) is >= {BEATS_FACTOR:.2f} x the default's mean "
        f"ratio at that E, on every config ({names})"
    )
    if not records:
        return "No methods tables yet."
    if winners:
        return (
            f"Conclusion ({rule}): {', '.join(_label(m) for m in winners)} beat(s) the "
            "default on every config."
        )
    return (
        f"Conclusion ({rule}): no combination beats the default on every config, so "
        f"{_label(DEFAULT_METHOD)} stays the default of `transfer` and `match`."
    )


def _readme_table(
    records: list[dict[str, Any]],
    tables: Mapping[str, Mapping[tuple[str, str], Mapping[str, Any]]],
    combos: Sequence[tuple[str, str]],
    winners: Sequence[tuple[str, str]],
) -> list[str]:
    """Return the lines of the side-by-side table: one row per combination."""
    head = " | ".join(f"{r['config']} E = {e}" for r in records for e in r["epochs"])
    lines = [f"| matcher + tensor rule | {head} |"]
    lines += ["|---|" + "---|" * sum(len(r["epochs"]) for r in records)]
    for m in combos:
        name = _label(m)
        if m == DEFAULT_METHOD:
            name = f"**{name} (default)**"
        elif m in winners:
            name = f"{name} (beats the default)"
        cells = []
        for r in records:
            row = tables[r["config"]].get(m)
            for e in r["epochs"]:
                cells.append(
                    "-"
                    if row is None
                    else f"{fmt(row[f'mean_ratio_E{e}'])} ({fmt(row[f'geomean_ratio_E{e}'])})"
                )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _readme_runs(
    records: list[dict[str, Any]],
    combos: Sequence[tuple[str, str]],
    everywhere: Sequence[tuple[str, str]],
) -> list[str]:
    """Return the lines of the README's "Runs" section (commands, machines, wall times)."""
    lines = ["", "## Runs", ""]
    for r in records:
        lines += [
            f"- `{r['config']}`: {r['pairs']} pairs, {r['repetitions']} seeds, E in "
            f"{r['epochs']}, {len(r['rows'])} combinations; wall time "
            f"{r['seconds'] / 60:.1f} min on {r['machine']}",
            f"  - command: `{r.get('command') or 'n/a'}`",
        ]
        if r.get("note"):
            lines.append(f"  - note: {r['note']}")
        if r["errors"]:
            lines.append(f"  - failed (left out): {', '.join(r['errors'])}")
    missing = [m for m in combos if m not in everywhere]
    if missing:
        lines += [
            "",
            "Combinations not run on every config (not eligible to replace the "
            "default): " + ", ".join(_label(m) for m in missing) + ".",
        ]
    return lines


def write_readme(methods_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``methods_dir/README.md`` from every ``<config>.json`` there.

    The README puts the tables side by side, lists the commands, machines and wall times,
    and gives the verdict on the default (:func:`beats` on every config).

    Args:
        methods_dir: the folder of the per-config tables.

    Returns:
        ``{"conclusion": str, "winners": [(matcher, tensor_rule), ...]}``.
    """
    mdir = Path(methods_dir)
    records = _read_records(mdir)
    tables = {
        rec["config"]: {(r["matcher"], r["tensor_rule"]): r for r in rec["rows"]} for rec in records
    }
    combos = list(dict.fromkeys(m for t in tables.values() for m in t))
    everywhere = [m for m in combos if all(m in t for t in tables.values())]
    winners = _winners(records, tables, everywhere)
    conclusion = _conclusion(records, winners)
    lines = [
        "# Methods table: matcher x tensor rule",
        "",
        "Mean accuracy ratio (transfer / random init, mean over the config's pairs of "
        "mean_seeds(best transfer) / mean_seeds(best random)) of each `matcher` x "
        "`tensor_rule` combination of `dpiat_jax.transfer`, on the pairs, seeds and "
        "training of the offline experiment configs. Geometric means over pairs in "
        "brackets. Made by `dpiat-jax methods`, which reuses the sources, random-init runs "
        "and default-method runs of `dpiat-jax experiment` (same output folder). "
        "Per-config tables with per-pair ratios: "
        + ", ".join(f"[{r['config']}.md]({r['config']}.md)" for r in records)
        + ".",
        "",
    ]
    if records:
        lines += _readme_table(records, tables, combos, winners)
        lines += _readme_runs(records, combos, everywhere)
    lines += ["", "## Conclusion", "", conclusion, ""]
    (mdir / "README.md").write_text("\n".join(lines))
    return {"conclusion": conclusion, "winners": winners}
