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

The transfers use :func:`dpiat_jax.transfer`'s ``dp`` matcher and ``clip`` tensor rule.
``dpiat-jax methods`` (:mod:`dpiat_jax.experiments.methods`) reruns the transfer arm with other
matchers and tensor rules in the same folder, sharing the sources, the random-init runs
and ``runs.jsonl``: the cache key of a transfer with another method includes it, and
transfer rows record ``matcher`` and ``tensor_rule`` (rows without them are ``dp`` +
``clip``, the only method before the field existed).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.resources
import json
import math
import os
import platform
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ExperimentConfig",
    "ExperimentResult",
    "ModelSpec",
    "PairSpec",
    "available_configs",
    "build_model",
    "load_config",
    "run_experiment",
]

_TRAIN_KEYS = (
    "batch_size",
    "learning_rate",
    "optimizer",
    "weight_decay",
    "schedule",
    "augment",
    "flip",
)


# ---------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    """JSON lists -> tuples (recursively), so model fields are hashable like Python code's."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def _thaw(value: Any) -> Any:
    """Inverse of :func:`_freeze` for writing JSON."""
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of the zoo (:func:`dpiat_jax.models.get_model`) with field overrides.

    Attributes:
      model: Registry name, e.g. ``"cifar_resnet20"``.
      kwargs: Field overrides, e.g. ``{"base_channels": 8}``; ``num_classes`` defaults to
        the dataset's.
      pretrain_epochs: Epochs of source training (sources only).
    """

    model: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pretrain_epochs: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | str, where: str) -> ModelSpec:
        if isinstance(d, str):
            return cls(model=d)
        unknown = set(d) - {"model", "kwargs", "pretrain_epochs"}
        if unknown or "model" not in d:
            raise ValueError(
                f"{where}: a model spec needs 'model' and may have 'kwargs' and "
                f"'pretrain_epochs'; got keys {sorted(d)}."
            )
        epochs = d.get("pretrain_epochs")
        return cls(
            model=str(d["model"]),
            kwargs=_freeze(dict(d.get("kwargs") or {})),
            pretrain_epochs=None if epochs is None else int(epochs),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "kwargs": _thaw(self.kwargs)}
        if self.pretrain_epochs is not None:
            out["pretrain_epochs"] = self.pretrain_epochs
        return out


@dataclasses.dataclass(frozen=True)
class PairSpec:
    """One ``source -> target`` pair; ``change`` labels it (``depth``, ``width``, ...)."""

    source: str
    target: str
    change: str = ""

    @property
    def label(self) -> str:
        return f"{self.source} -> {self.target}"

    @property
    def slug(self) -> str:
        return f"{self.source}__{self.target}"

    @classmethod
    def from_obj(cls, obj: Any, where: str) -> PairSpec:
        if isinstance(obj, Mapping):
            return cls(str(obj["source"]), str(obj["target"]), str(obj.get("change", "")))
        if isinstance(obj, (list, tuple)) and len(obj) in (2, 3):
            return cls(*(str(x) for x in obj))
        raise ValueError(
            f"{where}: a pair is {{'source': ..., 'target': ..., 'change': ...}} or "
            f"[source, target(, change)]; got {obj!r}."
        )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """An experiment: dataset, sources, targets, pairs and the training protocol.

    Attributes mirror the JSON fields; see ``dpiat_jax/experiments/configs/digits.json`` for an
    example. ``pretrain`` holds overrides of the training settings (``batch_size``,
    ``learning_rate``, ``optimizer``, ``weight_decay``, ``schedule``, ``augment``,
    ``flip``) used for the sources, and ``pretrain_epochs``, the default number of source
    epochs. ``max_train``/``max_test`` truncate the dataset's splits.
    """

    name: str
    dataset: str
    sources: Mapping[str, ModelSpec]
    targets: Mapping[str, ModelSpec]
    pairs: tuple[PairSpec, ...]
    epochs: tuple[int, ...] = (1, 4)
    repetitions: int = 3
    batch_size: int = 128
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    augment: bool = False
    flip: bool = False
    seed: int = 0
    pretrain: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dataset_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max_train: int | None = None
    max_test: int | None = None
    eval_batch_size: int = 256
    description: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentConfig:
        """Builds and validates a config from its JSON object."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"Unknown config fields {sorted(unknown)}; known: {sorted(fields)}.")
        for key in ("name", "dataset", "sources", "targets", "pairs"):
            if key not in d:
                raise ValueError(f"The config has no {key!r} field.")
        kwargs = dict(d)
        kwargs["sources"] = {
            k: ModelSpec.from_dict(v, f"sources.{k}") for k, v in d["sources"].items()
        }
        kwargs["targets"] = {
            k: ModelSpec.from_dict(v, f"targets.{k}") for k, v in d["targets"].items()
        }
        kwargs["pairs"] = tuple(
            PairSpec.from_obj(p, f"pairs[{i}]") for i, p in enumerate(d["pairs"])
        )
        if "epochs" in d:
            epochs = d["epochs"]
            kwargs["epochs"] = tuple(
                int(e) for e in (epochs if isinstance(epochs, list) else [epochs])
            )
        kwargs["pretrain"] = dict(d.get("pretrain") or {})
        kwargs["dataset_kwargs"] = dict(d.get("dataset_kwargs") or {})
        config = cls(**kwargs)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["sources"] = {k: v.to_dict() for k, v in self.sources.items()}
        out["targets"] = {k: v.to_dict() for k, v in self.targets.items()}
        out["pairs"] = [dataclasses.asdict(p) for p in self.pairs]
        out["epochs"] = list(self.epochs)
        return _thaw(out)

    def validate(self) -> None:
        """Raises ``ValueError`` for undefined names, empty lists or bad numbers."""
        if not self.pairs:
            raise ValueError("The config has no pairs.")
        for p in self.pairs:
            if p.source not in self.sources:
                raise ValueError(f"Pair {p.label}: no source named {p.source!r}.")
            if p.target not in self.targets:
                raise ValueError(f"Pair {p.label}: no target named {p.target!r}.")
        labels = [p.label for p in self.pairs]
        if len(set(labels)) != len(labels):
            raise ValueError("The config lists a pair twice.")
        if not self.epochs or min(self.epochs) < 1:
            raise ValueError(f"epochs must be a non-empty list of positive ints: {self.epochs}.")
        if self.repetitions < 1:
            raise ValueError(f"repetitions must be positive: {self.repetitions}.")
        unknown = set(self.pretrain) - set(_TRAIN_KEYS) - {"pretrain_epochs"}
        if unknown:
            raise ValueError(f"Unknown pretrain settings {sorted(unknown)}.")
        from dpiat_jax.models import MODELS

        for group, specs in (("sources", self.sources), ("targets", self.targets)):
            for k, spec in specs.items():
                if spec.model not in MODELS:
                    raise ValueError(f"{group}.{k}: unknown model {spec.model!r}.")

    def train_settings(self) -> dict[str, Any]:
        """The training settings of the target runs."""
        return {k: getattr(self, k) for k in _TRAIN_KEYS}

    def pretrain_settings(self) -> dict[str, Any]:
        """The training settings of source pretraining (``pretrain`` overrides applied)."""
        settings = self.train_settings()
        settings.update({k: v for k, v in self.pretrain.items() if k in _TRAIN_KEYS})
        return settings

    def pretrain_epochs(self, source: str) -> int:
        spec = self.sources[source]
        if spec.pretrain_epochs is not None:
            return spec.pretrain_epochs
        return int(self.pretrain.get("pretrain_epochs", 10))


def _configs_dir():
    return importlib.resources.files("dpiat_jax.experiments") / "configs"


def available_configs() -> list[str]:
    """Names of the configs shipped in ``dpiat_jax/experiments/configs``."""
    return sorted(
        p.name[: -len(".json")] for p in _configs_dir().iterdir() if p.name.endswith(".json")
    )


def load_config(config: str | os.PathLike | Mapping[str, Any]) -> ExperimentConfig:
    """Loads a config from a JSON path, a shipped name, or a dict."""
    if isinstance(config, ExperimentConfig):
        return config
    if isinstance(config, Mapping):
        return ExperimentConfig.from_dict(config)
    path = Path(config)
    if path.is_file():
        text = path.read_text()
    else:
        shipped = _configs_dir() / f"{os.fspath(config)}.json"
        if not shipped.is_file():
            raise FileNotFoundError(
                f"No config file {os.fspath(config)!r} and no shipped config of that name; "
                f"shipped: {', '.join(available_configs())}."
            )
        text = shipped.read_text()
    return ExperimentConfig.from_dict(json.loads(text))


def quick_config(config: ExperimentConfig) -> ExperimentConfig:
    """A shortened version for tests and smoke runs: small splits, one short run."""
    pretrain = dict(config.pretrain)
    pretrain["pretrain_epochs"] = min(int(pretrain.get("pretrain_epochs", 10)), 2)
    sources = {
        k: dataclasses.replace(v, pretrain_epochs=min(v.pretrain_epochs or 2, 2))
        for k, v in config.sources.items()
    }
    return dataclasses.replace(
        config,
        sources=sources,
        pretrain=pretrain,
        epochs=(1,),
        repetitions=1,
        max_train=min(config.max_train or 512, 512),
        max_test=min(config.max_test or 256, 256),
    )


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(_thaw(obj), sort_keys=True).encode()).hexdigest()[:16]


def _stable_int(text: str) -> int:
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


# ---------------------------------------------------------------------------
# Models and training.
# ---------------------------------------------------------------------------


def build_model(spec: ModelSpec, num_classes: int):
    """Builds the zoo model of ``spec``, with ``num_classes`` unless the spec sets it."""
    from dpiat_jax.models import get_model

    kwargs = dict(spec.kwargs)
    module = get_model(spec.model, **kwargs)
    if "num_classes" not in kwargs and getattr(module, "num_classes", num_classes) != num_classes:
        module = module.clone(num_classes=num_classes)
    return module


class _Trainer:
    """Caches modules and optimisers so that each (architecture, schedule) compiles once.

    ``train.train_step`` is jitted on the train state, whose static part holds the
    module's bound ``apply`` (compared by the module's identity) and the optax
    transformation (a fresh closure per ``make_optimizer`` call): new instances of either
    mean a recompilation, which dominates CPU run times for these small models.
    """

    def __init__(self, dataset, eval_batch_size: int):
        self.dataset = dataset
        self.eval_batch_size = eval_batch_size
        self._modules: dict[str, Any] = {}
        self._txs: dict[str, Any] = {}
        self.sample_input = np.asarray(dataset.x_train[:2])

    def module(self, spec: ModelSpec):
        key = _digest(spec.to_dict())
        if key not in self._modules:
            self._modules[key] = build_model(spec, self.dataset.num_classes)
        return self._modules[key]

    def tx(self, settings: Mapping[str, Any], epochs: int):
        from dpiat_jax.experiments import train

        steps = epochs * max(self.dataset.num_train // settings["batch_size"], 1)
        key = _digest([settings["optimizer"], settings["learning_rate"], steps,
                       settings["weight_decay"], settings["schedule"]])  # fmt: skip
        if key not in self._txs:
            self._txs[key] = train.make_optimizer(
                settings["optimizer"],
                settings["learning_rate"],
                steps,
                weight_decay=settings["weight_decay"],
                schedule=settings["schedule"],
            )
        return self._txs[key]

    def init(self, module, rng):
        import jax

        rngs = {"params": rng, "dropout": jax.random.fold_in(rng, 1)}
        return module.init(rngs, self.sample_input, train=False)

    def fit(self, module, variables, settings: Mapping[str, Any], epochs: int, seed: int):
        from dpiat_jax.experiments import train

        return train.fit(
            module,
            variables,
            self.dataset,
            epochs=epochs,
            batch_size=settings["batch_size"],
            tx=self.tx(settings, epochs),
            seed=seed,
            augment=settings["augment"],
            flip=settings["flip"],
            progress=False,
            eval_batch_size=self.eval_batch_size,
        )


# ---------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    import warnings

    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return " ".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in v)
    return v


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _plot_ratios(path: Path, summary: list[dict[str, Any]], epochs: Sequence[int], title: str):
    """Grouped bars of the per-pair ratio for each ``E``; dots are the per-seed ratios."""
    from matplotlib.figure import Figure

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


def _plot_similarity(path: Path, summary, epochs: Sequence[int], spearman, title: str):
    """Similarity against gain (ratio - 1), one panel per ``E``; points are pair numbers."""
    from matplotlib.figure import Figure

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
        ax.set_title(f"E = {e}: Spearman rho = {_fmt(rho, 2)} (p = {_fmt(p, 3)})", fontsize=9)
        ax.set_xlabel("similarity (source to target)")
        ax.set_ylabel("gain (accuracy ratio - 1)")
    fig.suptitle(f"{title}\n(numbers: pairs as in results.md and ratios.png)", fontsize=10)
    fig.savefig(path, dpi=120)


def _markdown(result: ExperimentResult, command: str | None) -> str:
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
        f"{platform.machine()} with {os.cpu_count()} CPU cores ({_device_summary()}); "
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
        kwargs = json.dumps(_thaw(dict(spec.kwargs))) if spec.kwargs else ""
        lines.append(
            f"| {name} | `{spec.model}` {kwargs} | "
            f"{cfg.pretrain_epochs(name)} | {_fmt(info['test_accuracy'])} | {info['cached']} |"
        )
    lines += ["", "## Summary", "", "| E | mean ratio | geometric mean | Spearman rho (p) |"]
    lines += ["|---|---|---|---|"]
    for e in cfg.epochs:
        rho, p = result.spearman[e]
        lines.append(
            f"| {e} | {_fmt(result.mean_ratio[e])} | {_fmt(result.geomean_ratio[e])} | "
            f"{_fmt(rho, 2)} ({_fmt(p, 3)}) |"
        )
    kinds = list(dict.fromkeys(_kind(r["change"]) for r in result.summary))
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
                    if r["epochs"] == e and _kind(r["change"]) == kind
                ]
                cells.append(_fmt(float(np.mean(ratios))))
            n = sum(1 for r in result.summary if r["epochs"] == cfg.epochs[0]
                    and _kind(r["change"]) == kind)  # fmt: skip
            lines.append(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    for e in cfg.epochs:
        lines += ["", f"## E = {e}", ""]
        lines += [
            "| # | pair | change | similarity | layers covered | transfer acc | random acc "
            "| ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in result.summary:
            if r["epochs"] != e:
                continue
            lines.append(
                f"| {r['index']} | {r['pair']} | {r['change']} | {_fmt(r['similarity'])} | "
                f"{_fmt(100 * r['layer_coverage'], 0)}% | "
                f"{_fmt(r['transfer_mean'])} ± {_fmt(r['transfer_std'])} | "
                f"{_fmt(r['random_mean'])} ± {_fmt(r['random_std'])} | "
                f"**{_fmt(r['ratio'], 2)}** |"
            )
    lines += [
        "",
        "Plots: `ratios.png` (per-pair ratios), `similarity.png` (similarity against gain).",
        "",
    ]
    return "\n".join(lines)


def _kind(change: str) -> str:
    """The kind of a pair's change label: ``"family (ResNet->VGG)"`` -> ``"family"``."""
    return change.split("(")[0].strip() or "unlabelled"


def _device_summary() -> str:
    try:
        import jax

        devices = jax.devices()
        return f"jax {jax.__version__}, {len(devices)} x {devices[0].platform}"
    except Exception:  # noqa: BLE001 - informational only
        return "jax"


# ---------------------------------------------------------------------------
# The runner.
# ---------------------------------------------------------------------------


def _load_dataset(cfg: ExperimentConfig):
    from dpiat_jax.experiments import data

    dataset = data.load(cfg.dataset, **dict(cfg.dataset_kwargs))
    if cfg.max_train is not None or cfg.max_test is not None:
        dataset = dataset.take(cfg.max_train, cfg.max_test)
    return dataset


def _pretrain_source(trainer: _Trainer, cfg: ExperimentConfig, name: str, cache_dir: Path, log):
    """Trains source ``name`` or restores it from ``cache_dir``; returns (module, vars, info)."""
    import jax

    from dpiat_jax.experiments import train

    spec = cfg.sources[name]
    module = trainer.module(spec)
    settings = cfg.pretrain_settings()
    epochs = cfg.pretrain_epochs(name)
    seed = cfg.seed + _stable_int("source:" + name) % 10_000
    key = {
        "dataset": cfg.dataset,
        "dataset_kwargs": dict(cfg.dataset_kwargs),
        "max_train": cfg.max_train,
        "max_test": cfg.max_test,
        "spec": spec.to_dict(),
        "settings": settings,
        "epochs": epochs,
        "seed": seed,
    }
    digest = _digest(key)
    ckpt, meta_path = cache_dir / name / "checkpoint", cache_dir / name / "meta.json"
    fresh = trainer.init(module, jax.random.key(seed))
    if meta_path.is_file() and ckpt.is_dir():
        meta = json.loads(meta_path.read_text())
        if meta.get("digest") == digest:
            variables = train.restore_checkpoint(ckpt, target=fresh)
            log(f"source {name}: restored from {ckpt} (test accuracy {meta['test_accuracy']:.3f})")
            return module, variables, {**meta, "cached": True}
    start = time.perf_counter()
    variables, history = trainer.fit(module, fresh, settings, epochs, seed)
    seconds = time.perf_counter() - start
    train.save_checkpoint(ckpt, variables)
    meta = {
        "digest": digest,
        "key": _thaw(key),
        "test_accuracy": history.final.test_accuracy,
        "history": history.to_dicts(),
        "seconds": seconds,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    log(
        f"source {name}: trained {epochs} epochs in {seconds:.1f}s, "
        f"test accuracy {history.final.test_accuracy:.3f}"
    )
    return module, variables, {**meta, "cached": False}


DEFAULT_METHOD = ("dp", "clip")
"""The ``(matcher, tensor_rule)`` of :func:`dpiat_jax.transfer`'s defaults."""


def _method_of(row: Mapping[str, Any]) -> tuple[str, str]:
    """The ``(matcher, tensor_rule)`` of a run row; rows cached before methods were
    recorded (no such fields) were made with the default, ``dp`` + ``clip``."""
    return (
        str(row.get("matcher") or DEFAULT_METHOD[0]),
        str(row.get("tensor_rule") or DEFAULT_METHOD[1]),
    )


@dataclasses.dataclass
class _Setup:
    """What every invocation of the runner prepares: the effective config, the output
    folder, the dataset, the trainer and the (pretrained or restored) sources."""

    cfg: ExperimentConfig
    out: Path
    dataset: Any
    trainer: _Trainer
    sources: dict[str, tuple[Any, Any]]
    source_info: dict[str, dict[str, Any]]


def _effective_config(
    config, *, repetitions=None, epochs=None, max_pairs=None, quick=False
) -> ExperimentConfig:
    cfg = load_config(config)
    if quick:
        cfg = quick_config(cfg)
    if repetitions is not None:
        cfg = dataclasses.replace(cfg, repetitions=int(repetitions))
    if epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=tuple(int(e) for e in epochs))
    if max_pairs is not None:
        cfg = dataclasses.replace(cfg, pairs=cfg.pairs[: int(max_pairs)])
    used_sources = list(dict.fromkeys(p.source for p in cfg.pairs))
    used_targets = list(dict.fromkeys(p.target for p in cfg.pairs))
    cfg = dataclasses.replace(
        cfg,
        sources={k: cfg.sources[k] for k in used_sources},
        targets={k: cfg.targets[k] for k in used_targets},
    )
    cfg.validate()
    return cfg


def _setup(cfg: ExperimentConfig, out_dir, log, *, write_config: bool = True) -> _Setup:
    """Loads the dataset and pretrains (or restores) every source of ``cfg``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if write_config:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    dataset = _load_dataset(cfg)
    log(
        f"experiment {cfg.name}: {dataset.name} {dataset.input_shape}, "
        f"{dataset.num_train} train / {dataset.num_test} test; {len(cfg.pairs)} pairs, "
        f"E in {list(cfg.epochs)}, {cfg.repetitions} seeds"
    )
    trainer = _Trainer(dataset, cfg.eval_batch_size)
    sources: dict[str, tuple[Any, Any]] = {}
    source_info: dict[str, dict[str, Any]] = {}
    for name in cfg.sources:
        module, variables, info = _pretrain_source(trainer, cfg, name, out / "sources", log)
        sources[name] = (module, variables)
        source_info[name] = {
            "test_accuracy": info["test_accuracy"],
            "seconds": info["seconds"],
            "cached": info["cached"],
            "digest": info["digest"],
        }
    return _Setup(cfg, out, dataset, trainer, sources, source_info)


def _load_run_cache(cache_path: Path, resume: bool) -> dict[str, dict[str, Any]]:
    cached: dict[str, dict[str, Any]] = {}
    if resume and cache_path.is_file():
        for line in cache_path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                cached[rec["digest"]] = rec
    elif cache_path.exists():
        cache_path.unlink()
    return cached


def _train_runs(
    setup: _Setup,
    cached: dict[str, dict[str, Any]],
    log: Callable[[str], None],
    *,
    matcher: str = DEFAULT_METHOD[0],
    tensor_rule: str = DEFAULT_METHOD[1],
    prefix: str = "",
) -> list[dict[str, Any]]:
    """Trains (or takes from the cache) every random-init and transfer run of the config,
    the transfers made with ``matcher`` and ``tensor_rule``; returns one row per run.

    The run cache key of a transfer made with a method other than the default has a
    ``method`` field; the default's key has none, so runs cached before methods existed
    are the default's. Random-init runs do not depend on the method and are shared.
    """
    import jax

    import dpiat_jax as dj

    cfg, trainer, sources, source_info = setup.cfg, setup.trainer, setup.sources, setup.source_info
    settings = cfg.train_settings()
    x0 = trainer.sample_input
    method = (str(matcher), str(tensor_rule))
    cache_path = setup.out / "runs.jsonl"
    used_targets = list(cfg.targets)
    seeds = [cfg.seed + r for r in range(cfg.repetitions)]
    total = len(used_targets) * len(cfg.epochs) * len(seeds) + len(cfg.pairs) * len(
        cfg.epochs
    ) * len(seeds)
    runs: list[dict[str, Any]] = []
    for tname in used_targets:
        tspec = cfg.targets[tname]
        module = trainer.module(tspec)
        tpairs = [p for p in cfg.pairs if p.target == tname]
        for e in cfg.epochs:
            for seed in seeds:
                rng = jax.random.fold_in(jax.random.key(seed), _stable_int("target:" + tname))
                for p in [None, *tpairs]:
                    init = "random" if p is None else "transfer"
                    key = {
                        "dataset": cfg.dataset,
                        "dataset_kwargs": dict(cfg.dataset_kwargs),
                        "max_train": cfg.max_train,
                        "max_test": cfg.max_test,
                        "target": tspec.to_dict(),
                        "settings": settings,
                        "epochs": e,
                        "seed": seed,
                        "init": init,
                        "source": None if p is None else source_info[p.source]["digest"],
                    }
                    if p is not None and method != DEFAULT_METHOD:
                        key["method"] = {"matcher": method[0], "tensor_rule": method[1]}
                    digest = _digest(key)
                    row_id = f"{prefix}[{len(runs) + 1}/{total}] {init:8s} " + (
                        tname if p is None else p.label
                    )
                    if digest in cached:
                        rec = cached[digest]
                        row = dict(rec["row"])
                        if p is not None:
                            row["matcher"], row["tensor_rule"] = _method_of(row)
                        runs.append(row)
                        log(f"{row_id} E={e} seed={seed}: cached, best {row['best']:.3f}")
                        continue
                    start = time.perf_counter()
                    if p is None:
                        variables = trainer.init(module, rng)
                    else:
                        src_module, src_vars = sources[p.source]
                        variables = dj.transfer(
                            src_vars,
                            src_module,
                            module,
                            rng,
                            sample_input=x0,
                            matcher=method[0],
                            tensor_rule=method[1],
                        )
                    _, history = trainer.fit(module, variables, settings, e, seed)
                    accs = [float(r.test_accuracy) for r in history]
                    row = {
                        "init": init,
                        "source": "" if p is None else p.source,
                        "target": tname,
                        "epochs": e,
                        "seed": seed,
                        "best": max(accs),
                        "final": accs[-1],
                        "test_accuracy_per_epoch": accs,
                        "seconds": time.perf_counter() - start,
                    }
                    if p is not None:
                        row["matcher"], row["tensor_rule"] = method
                    runs.append(row)
                    cached[digest] = {"digest": digest, "row": row}
                    with open(cache_path, "a") as f:
                        f.write(json.dumps({"digest": digest, "row": row}) + "\n")
                    log(
                        f"{row_id} E={e} seed={seed}: best {row['best']:.3f} "
                        f"({row['seconds']:.1f}s)"
                    )
    return runs


def _summarise(
    cfg: ExperimentConfig,
    runs: list[dict[str, Any]],
    pair_info: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per pair and ``E``: mean/std of the best accuracies and their ratio."""
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
            t_mean, t_std = _mean_std(list(t_runs.values()))
            r_mean, r_std = _mean_std(list(r_runs.values()))
            paired = [t_runs[s] / r_runs[s] for s in t_runs if s in r_runs and r_runs[s] > 0]
            ps_mean, ps_std = _mean_std(paired)
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


def _mean_ratios(
    summary: list[dict[str, Any]], epochs: Sequence[int]
) -> tuple[dict[int, float], dict[int, float]]:
    """``E -> arithmetic mean`` and ``E -> geometric mean`` of the pairs' ratios."""
    mean_ratio, geomean_ratio = {}, {}
    for e in epochs:
        ratios = np.asarray([r["ratio"] for r in summary if r["epochs"] == e], float)
        mean_ratio[e] = float(np.mean(ratios))
        geomean_ratio[e] = (
            float(np.exp(np.mean(np.log(ratios)))) if np.all(ratios > 0) else math.nan
        )
    return mean_ratio, geomean_ratio


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
    log: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Runs the transfer-versus-random protocol of a config and writes its results.

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

    Returns:
      An :class:`ExperimentResult`.
    """
    import jax

    import dpiat_jax as dj

    log = log or (lambda msg: print(msg, flush=True))
    t0 = time.perf_counter()
    cfg = _effective_config(
        config, repetitions=repetitions, epochs=epochs, max_pairs=max_pairs, quick=quick
    )
    # 1. Sources.
    setup = _setup(cfg, out_dir, log)
    out, trainer, sources, source_info = setup.out, setup.trainer, setup.sources, setup.source_info
    (out / "matches").mkdir(exist_ok=True)

    # 2. Similarity and matching report of every pair.
    x0 = trainer.sample_input
    pair_info: dict[str, dict[str, Any]] = {}
    for p in cfg.pairs:
        src_module, src_vars = sources[p.source]
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

    # 3. Training runs, grouped by target so each (target, E) compiles once.
    cached = _load_run_cache(out / "runs.jsonl", resume)
    runs = _train_runs(setup, cached, log)

    # 4. Summaries.
    summary = _summarise(cfg, runs, pair_info)
    mean_ratio, geomean_ratio = _mean_ratios(summary, cfg.epochs)
    spearman = {}
    for e in cfg.epochs:
        rows = [r for r in summary if r["epochs"] == e]
        spearman[e] = _spearman([r["similarity"] for r in rows], [r["ratio"] for r in rows])

    result = ExperimentResult(
        config=cfg,
        runs=runs,
        summary=summary,
        mean_ratio=mean_ratio,
        geomean_ratio=geomean_ratio,
        spearman=spearman,
        sources=source_info,
        files={},
        seconds=time.perf_counter() - t0,
    )
    files = {
        "runs_csv": out / "runs.csv",
        "summary_csv": out / "summary.csv",
        "markdown": out / "results.md",
        "json": out / "results.json",
        "ratios_png": out / "ratios.png",
        "similarity_png": out / "similarity.png",
    }
    _write_csv(files["runs_csv"], runs)
    _write_csv(files["summary_csv"], summary)
    title = f"DPIAT, config {cfg.name} ({cfg.dataset}), {cfg.repetitions} seed(s)"
    _plot_ratios(files["ratios_png"], summary, cfg.epochs, title)
    _plot_similarity(files["similarity_png"], summary, cfg.epochs, spearman, title)
    files["json"].write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "mean_ratio": mean_ratio,
                "geomean_ratio": geomean_ratio,
                "spearman": {e: list(v) for e, v in spearman.items()},
                "sources": source_info,
                "summary": summary,
                "seconds": result.seconds,
                "python": sys.version.split()[0],
                "cpu_count": os.cpu_count(),
            },
            indent=1,
        )
    )
    files["markdown"].write_text(_markdown(result, command))
    result.files = {k: str(v) for k, v in files.items()}
    log(format_summary(result))
    return result


def format_summary(result: ExperimentResult) -> str:
    """A short plain-text summary: the mean ratio and Spearman rho per ``E``."""
    lines = [f"experiment {result.config.name} done in {result.seconds / 60:.1f} min"]
    for e in result.config.epochs:
        rho, p = result.spearman[e]
        lines.append(
            f"  E={e}: mean ratio {_fmt(result.mean_ratio[e])} "
            f"(geometric {_fmt(result.geomean_ratio[e])}), "
            f"Spearman(similarity, ratio) {_fmt(rho, 2)} (p {_fmt(p, 3)})"
        )
    if result.files:
        lines.append(f"  results: {result.files.get('markdown')}")
    return "\n".join(lines)
