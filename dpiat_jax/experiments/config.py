"""Experiment configs: which sources, targets and pairs, on which data, trained how.

An experiment is described by a JSON config (a path, or the name of a file shipped in
``dpiat_jax/experiments/configs/``: ``digits``, ``mnist1d``, ``cifar10``, ``cifar100``).
:func:`load_config` reads one into an :class:`ExperimentConfig` of :class:`ModelSpec`
sources/targets and :class:`PairSpec` pairs, validated against the model zoo;
:func:`effective_config` applies the command line's overrides. The runner is
:mod:`dpiat_jax.experiments.protocol`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from collections.abc import Mapping, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import flax.linen as nn

from dpiat_jax.models import MODELS, get_model

__all__ = [
    "TRAIN_KEYS",
    "EvidenceSettings",
    "ExperimentConfig",
    "ModelSpec",
    "PairSpec",
    "available_configs",
    "build_model",
    "effective_config",
    "freeze",
    "load_config",
    "quick_config",
    "thaw",
]

TRAIN_KEYS = (
    "batch_size",
    "learning_rate",
    "optimizer",
    "weight_decay",
    "schedule",
    "augment",
    "flip",
)
"""The training settings of a config (and of its ``pretrain`` overrides)."""


def freeze(value: Any) -> Any:
    """Return ``value`` with JSON lists turned into tuples (recursively).

    Model fields then are hashable, as they are when written in Python code.

    Args:
        value: a JSON value.

    Returns:
        The same value with every list a tuple.
    """
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return {k: freeze(v) for k, v in value.items()}
    return value


def thaw(value: Any) -> Any:
    """Return the inverse of :func:`freeze`: tuples turned back into lists, for JSON.

    Args:
        value: a value built by :func:`freeze` (or any nest of tuples and mappings).

    Returns:
        The same value with every tuple a list and every mapping a dict.
    """
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
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
        """Return the spec of a JSON object (or of a bare model name).

        Args:
            d: ``{"model", "kwargs", "pretrain_epochs"}`` or a registry name.
            where: where ``d`` sits in the config, for the error message.

        Returns:
            The spec; JSON lists in ``kwargs`` become tuples.

        Raises:
            ValueError: when ``model`` is missing or another key is present.
        """
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
            kwargs=freeze(dict(d.get("kwargs") or {})),
            pretrain_epochs=None if epochs is None else int(epochs),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of the spec (the inverse of :meth:`from_dict`)."""
        out: dict[str, Any] = {"model": self.model, "kwargs": thaw(self.kwargs)}
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
        """``"source -> target"``, the pair's name in tables."""
        return f"{self.source} -> {self.target}"

    @property
    def slug(self) -> str:
        """``"source__target"``, the pair's name in file names."""
        return f"{self.source}__{self.target}"

    @classmethod
    def from_obj(cls, obj: Any, where: str) -> PairSpec:
        """Return the pair of a JSON object or list.

        Args:
            obj: ``{"source", "target"[, "change"]}`` or ``[source, target(, change)]``.
            where: where ``obj`` sits in the config, for the error message.

        Returns:
            The pair.

        Raises:
            ValueError: for any other shape.
        """
        if isinstance(obj, Mapping):
            return cls(str(obj["source"]), str(obj["target"]), str(obj.get("change", "")))
        if isinstance(obj, (list, tuple)) and len(obj) in (2, 3):
            return cls(*(str(x) for x in obj))
        raise ValueError(
            f"{where}: a pair is {{'source': ..., 'target': ..., 'change': ...}} or "
            f"[source, target(, change)]; got {obj!r}."
        )


@dataclasses.dataclass(frozen=True)
class EvidenceSettings:
    """The evidence protocol's settings (a config's ``evidence`` object).

    See :mod:`dpiat_jax.experiments.evidence`. Every target start is trained one run of
    ``budget_epochs`` per seed and evaluated at step 0 and after each of ``eval_epochs``.

    Attributes:
      budget_epochs: epochs of one target run.
      eval_epochs: evaluation points, in epochs (those above the budget are dropped).
      seeds: runs per start (at least 5 for the published tables).
      warmup_fraction: linear learning-rate warm-up, as a fraction of the run's steps.
      recompute_bn: recompute BatchNorm statistics before each evaluation, for every arm.
      matchers: the matchers whose transfers are compared (the first is the one the
        untrained-source control uses).
      controls: any of ``"untrained"`` (transfer from a fresh source of the same
        architecture), ``"self"`` (each source trained on from itself: the upper bound)
        and ``"compute_matched"`` (random init trained the source's epochs plus the budget).
      level: the fraction of the source's test accuracy that "steps to reach" counts.
      growth: add the function-preserving growth arm (``tensor_rule="net2net"``,
        ``deepen="identity"``, :mod:`dpiat_jax.widening`, :mod:`dpiat_jax.deepening`) on
        the pairs within a family (those whose ``change`` does not start with "family").
    """

    budget_epochs: float = 4.0
    eval_epochs: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    seeds: int = 5
    warmup_fraction: float = 0.05
    recompute_bn: bool = True
    matchers: tuple[str, ...] = ("dp", "cross")
    controls: tuple[str, ...] = ("untrained", "self", "compute_matched")
    level: float = 0.9
    growth: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvidenceSettings:
        """Return the validated settings of a config's ``evidence`` object.

        Args:
            d: the JSON object; missing keys take the defaults.

        Returns:
            The settings.

        Raises:
            ValueError: for an unknown key or control, or a non-positive budget or seed count.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"evidence: unknown keys {sorted(unknown)}; known: {sorted(fields)}.")
        kwargs = dict(d)
        for key in ("eval_epochs", "matchers", "controls"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        settings = cls(**kwargs)
        bad = set(settings.controls) - {"untrained", "self", "compute_matched"}
        if bad:
            raise ValueError(
                f"evidence.controls: unknown {sorted(bad)}; use untrained, self, compute_matched."
            )
        if settings.budget_epochs <= 0 or settings.seeds < 1 or not settings.matchers:
            raise ValueError(
                "evidence: budget_epochs must be positive, seeds at least 1 and matchers "
                f"non-empty; got {settings}."
            )
        return settings

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of the settings."""
        return thaw(dataclasses.asdict(self))


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
    evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentConfig:
        """Return the validated config of a JSON object.

        Args:
            d: the config's JSON object (see ``configs/digits.json``).

        Returns:
            The config.

        Raises:
            ValueError: for unknown or missing fields and invalid values (:meth:`validate`).
        """
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
        kwargs["evidence"] = dict(d.get("evidence") or {})
        config = cls(**kwargs)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of the config (the inverse of :meth:`from_dict`)."""
        out = dataclasses.asdict(self)
        out["sources"] = {k: v.to_dict() for k, v in self.sources.items()}
        out["targets"] = {k: v.to_dict() for k, v in self.targets.items()}
        out["pairs"] = [dataclasses.asdict(p) for p in self.pairs]
        out["epochs"] = list(self.epochs)
        return thaw(out)

    def validate(self) -> None:
        """Check the config against itself and the model zoo.

        Raises:
            ValueError: for undefined names, empty lists or bad numbers.
        """
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
        unknown = set(self.pretrain) - set(TRAIN_KEYS) - {"pretrain_epochs"}
        if unknown:
            raise ValueError(f"Unknown pretrain settings {sorted(unknown)}.")
        for group, specs in (("sources", self.sources), ("targets", self.targets)):
            for k, spec in specs.items():
                if spec.model not in MODELS:
                    raise ValueError(f"{group}.{k}: unknown model {spec.model!r}.")
        self.evidence_settings()

    def evidence_settings(self) -> EvidenceSettings:
        """Return the evidence protocol's settings (the ``evidence`` object's, else defaults)."""
        return EvidenceSettings.from_dict(self.evidence)

    def train_settings(self) -> dict[str, Any]:
        """Return the training settings of the target runs (the keys of :data:`TRAIN_KEYS`)."""
        return {k: getattr(self, k) for k in TRAIN_KEYS}

    def pretrain_settings(self) -> dict[str, Any]:
        """Return the training settings of source pretraining (``pretrain`` overrides applied)."""
        settings = self.train_settings()
        settings.update({k: v for k, v in self.pretrain.items() if k in TRAIN_KEYS})
        return settings

    def pretrain_epochs(self, source: str) -> int:
        """Return the epochs of a source's pretraining: its own, else ``pretrain``'s, else 10.

        Args:
            source: a key of ``sources``.

        Returns:
            The number of epochs.
        """
        spec = self.sources[source]
        if spec.pretrain_epochs is not None:
            return spec.pretrain_epochs
        return int(self.pretrain.get("pretrain_epochs", 10))


def _configs_dir() -> Traversable:
    """Return the folder of the shipped configs inside the installed package."""
    return importlib.resources.files("dpiat_jax.experiments") / "configs"


def available_configs() -> list[str]:
    """Return the names of the configs shipped in ``dpiat_jax/experiments/configs``.

    Returns:
        The sorted names (file names without ``.json``).
    """
    return sorted(
        p.name[: -len(".json")] for p in _configs_dir().iterdir() if p.name.endswith(".json")
    )


def load_config(config: str | os.PathLike | Mapping[str, Any]) -> ExperimentConfig:
    """Return the config of a JSON path, a shipped name, or a dict.

    Args:
        config: a path to a JSON file, the name of a shipped config, a JSON object, or an
            :class:`ExperimentConfig` (returned as is).

    Returns:
        The validated config.

    Raises:
        FileNotFoundError: when ``config`` is neither a file nor a shipped name.
        ValueError: for an invalid config.
    """
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
    """Return a shortened version for tests and smoke runs: small splits, one short run.

    Args:
        config: the config to shorten.

    Returns:
        The config with at most 512/256 examples, sources trained at most 2 epochs,
        ``E = 1`` and one seed.
    """
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


def build_model(spec: ModelSpec, num_classes: int) -> nn.Module:
    """Return the zoo model of ``spec``, with ``num_classes`` unless the spec sets it.

    Args:
        spec: the model and its field overrides.
        num_classes: the dataset's number of classes.

    Returns:
        An unbound linen module.
    """
    kwargs = dict(spec.kwargs)
    module = get_model(spec.model, **kwargs)
    if "num_classes" not in kwargs and getattr(module, "num_classes", num_classes) != num_classes:
        module = module.clone(num_classes=num_classes)
    return module


def effective_config(
    config: str | os.PathLike | Mapping[str, Any] | ExperimentConfig,
    *,
    repetitions: int | None = None,
    epochs: Sequence[int] | None = None,
    max_pairs: int | None = None,
    quick: bool = False,
) -> ExperimentConfig:
    """Return the config a run uses: loaded, shortened and overridden as asked.

    Only the sources and targets that the kept pairs use remain.

    Args:
        config: as for :func:`load_config`.
        repetitions: override of the number of seeds.
        epochs: override of the epoch budgets ``E``.
        max_pairs: keep only the first ``max_pairs`` pairs.
        quick: apply :func:`quick_config` first.

    Returns:
        The validated effective config.
    """
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
