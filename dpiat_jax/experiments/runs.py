"""The training runs of an experiment: pretrained sources, then targets from both starts.

Every source of a config is trained once and cached as an Orbax checkpoint under
``<out>/sources/<name>/`` (:func:`prepare`); a rerun with the same settings restores it.
Every target is then trained ``E`` epochs for every seed from a random initialisation and
from the DPIAT transfer of each of its sources (:func:`train_runs`); finished runs are
appended to ``<out>/runs.jsonl``, whose keys (:func:`digest` of everything a run depends
on) let an interrupted experiment resume and let the methods table share runs.

Random and transferred starts of a target share the seed: the same data order, and the
transfer's own fresh initialisation is exactly the random initialisation it is compared with.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

import dpiat_jax as dj
from dpiat_jax.experiments import data, train
from dpiat_jax.experiments.config import ExperimentConfig, ModelSpec, PairSpec, build_model, thaw
from dpiat_jax.types import PRNGKey, Variables

__all__ = [
    "DEFAULT_METHOD",
    "Log",
    "Setup",
    "Trainer",
    "code_version",
    "digest",
    "load_dataset",
    "load_run_cache",
    "method_of",
    "prepare",
    "pretrain_source",
    "stable_int",
    "train_runs",
]

DEFAULT_METHOD = ("dp", "clip")
"""The ``(matcher, tensor_rule)`` of :func:`dpiat_jax.transfer`'s defaults."""

#: A progress printer: takes one message.
Log = Callable[[str], None]


def digest(obj: Any) -> str:
    """Return a short stable hash of a JSON-able object: the cache key of a run or source.

    Args:
        obj: JSON-able after :func:`~dpiat_jax.experiments.config.thaw`.

    Returns:
        16 hex digits of the SHA-1 of its sorted-keys JSON.
    """
    return hashlib.sha1(json.dumps(thaw(obj), sort_keys=True).encode()).hexdigest()[:16]


#: Modules whose changes cannot change a run: the command line, tables and plots.
_NOT_IN_CODE_VERSION = ("cli", "report", "plotting", "evidence_report")


@functools.cache
def code_version() -> str:
    """Return a hash of the package's source files that can change a run's result.

    Every cached run and source checkpoint is keyed by it, so a run made by other code
    (another matcher, tensor rule, training loop or model) is never reused: a changed
    file means the run is trained again. The command line and the report modules are
    left out (they only read runs).

    Returns:
        16 hex digits of the SHA-1 of the ``.py`` files' relative paths and bytes.

    >>> len(code_version())
    16
    """
    root = Path(dj.__file__).parent
    h = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.removesuffix(".py") in _NOT_IN_CODE_VERSION for part in rel.parts):
            continue
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stable_int(text: str) -> int:
    """Return a non-negative int derived from ``text``, the same in every process.

    Python's ``hash`` of a string changes between processes; seeds must not.

    Args:
        text: any string (a source's or target's name).

    Returns:
        The CRC-32 of its UTF-8 bytes, as a non-negative 31-bit int.
    """
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def method_of(row: Mapping[str, Any]) -> tuple[str, str]:
    """Return the ``(matcher, tensor_rule)`` of a run row.

    Rows cached before methods were recorded (no such fields) were made with the default,
    ``dp`` + ``clip``.

    Args:
        row: a transfer run's row.

    Returns:
        ``(matcher, tensor_rule)``.
    """
    return (
        str(row.get("matcher") or DEFAULT_METHOD[0]),
        str(row.get("tensor_rule") or DEFAULT_METHOD[1]),
    )


class Trainer:
    """Caches modules and optimisers so that each (architecture, schedule) compiles once.

    ``train.train_step`` is jitted on the train state, whose static part holds the
    module's bound ``apply`` (compared by the module's identity) and the optax
    transformation (a fresh closure per ``make_optimizer`` call): new instances of either
    mean a recompilation, which dominates CPU run times for these small models.

    Args:
        dataset: the experiment's dataset.
        eval_batch_size: batch size of the evaluations.
    """

    def __init__(self, dataset: data.Dataset, eval_batch_size: int):
        self.dataset = dataset
        self.eval_batch_size = eval_batch_size
        self._modules: dict[str, nn.Module] = {}
        self._txs: dict[str, optax.GradientTransformation] = {}
        self.sample_input = np.asarray(dataset.x_train[:2])

    def module(self, spec: ModelSpec) -> nn.Module:
        """Return the (cached) module of ``spec`` with the dataset's number of classes.

        Args:
            spec: the model spec.

        Returns:
            The same module object for equal specs (so jitted steps compile once).
        """
        key = digest(spec.to_dict())
        if key not in self._modules:
            self._modules[key] = build_model(spec, self.dataset.num_classes)
        return self._modules[key]

    def tx(self, settings: Mapping[str, Any], epochs: int) -> optax.GradientTransformation:
        """Return the (cached) optimiser of ``settings`` for a run of ``epochs`` epochs.

        Args:
            settings: the training settings (:data:`~dpiat_jax.experiments.config.TRAIN_KEYS`).
            epochs: the run's length (the schedule decays over it).

        Returns:
            The same transformation object for equal settings.
        """
        steps = epochs * max(self.dataset.num_train // settings["batch_size"], 1)
        key = digest([settings["optimizer"], settings["learning_rate"], steps,
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

    def init(self, module: nn.Module, rng: PRNGKey) -> Variables:
        """Return a random initialisation of ``module``.

        Args:
            module: the model.
            rng: seeds the params (and, folded in, dropout).

        Returns:
            The variables of ``module.init`` on the sample input.
        """
        rngs = {"params": rng, "dropout": jax.random.fold_in(rng, 1)}
        return module.init(rngs, self.sample_input, train=False)

    def fit(
        self,
        module: nn.Module,
        variables: Variables,
        settings: Mapping[str, Any],
        epochs: int,
        seed: int,
    ) -> tuple[Variables, train.History]:
        """Train ``module`` from ``variables`` with :func:`~dpiat_jax.experiments.train.fit`.

        Args:
            module: the model.
            variables: the starting variables (random or transferred).
            settings: the training settings.
            epochs: the number of epochs.
            seed: data order and dropout seed.

        Returns:
            ``(trained variables, history)``.
        """
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


def load_dataset(cfg: ExperimentConfig, data_dir: str | os.PathLike | None = None) -> data.Dataset:
    """Return the config's dataset, truncated to ``max_train``/``max_test`` if set.

    ``data_dir`` is an argument beside the config, not a config field: the same data in
    another folder gives the same runs, so it stays out of every cache key.

    Args:
        cfg: the experiment config.
        data_dir: a local TFDS data directory holding the prepared dataset; a TFDS dataset
            is then read from it without any download (see
            :func:`~dpiat_jax.experiments.data.load`). ``None``: the config's
            ``dataset_kwargs`` decide.

    Returns:
        The loaded :class:`~dpiat_jax.experiments.data.Dataset`.

    Raises:
        dpiat_jax.experiments.data.DataNotFoundError: when ``data_dir`` does not hold the
            dataset in a readable form.
    """
    kwargs = dict(cfg.dataset_kwargs)
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    dataset = data.load(cfg.dataset, **kwargs)
    if cfg.max_train is not None or cfg.max_test is not None:
        dataset = dataset.take(cfg.max_train, cfg.max_test)
    return dataset


def pretrain_source(
    trainer: Trainer, cfg: ExperimentConfig, name: str, cache_dir: Path, log: Log
) -> tuple[nn.Module, Variables, dict[str, Any]]:
    """Train source ``name``, or restore it from ``cache_dir`` when its settings are unchanged.

    Args:
        trainer: the experiment's trainer.
        cfg: the experiment config.
        name: a key of ``cfg.sources``.
        cache_dir: the folder of the source checkpoints (``<out>/sources``).
        log: progress printer.

    Returns:
        ``(module, variables, info)``; ``info`` has ``digest``, ``test_accuracy``,
        ``seconds``, ``history`` and ``cached``.
    """
    spec = cfg.sources[name]
    module = trainer.module(spec)
    settings = cfg.pretrain_settings()
    epochs = cfg.pretrain_epochs(name)
    seed = cfg.seed + stable_int("source:" + name) % 10_000
    key = {
        "code": code_version(),
        "dataset": cfg.dataset,
        "dataset_kwargs": dict(cfg.dataset_kwargs),
        "max_train": cfg.max_train,
        "max_test": cfg.max_test,
        "spec": spec.to_dict(),
        "settings": settings,
        "epochs": epochs,
        "seed": seed,
    }
    key_digest = digest(key)
    ckpt, meta_path = cache_dir / name / "checkpoint", cache_dir / name / "meta.json"
    fresh = trainer.init(module, jax.random.key(seed))
    if meta_path.is_file() and ckpt.is_dir():
        meta = json.loads(meta_path.read_text())
        if meta.get("digest") == key_digest:
            variables = train.restore_checkpoint(ckpt, target=fresh)
            log(f"source {name}: restored from {ckpt} (test accuracy {meta['test_accuracy']:.3f})")
            return module, variables, {**meta, "cached": True}
    start = time.perf_counter()
    variables, history = trainer.fit(module, fresh, settings, epochs, seed)
    seconds = time.perf_counter() - start
    train.save_checkpoint(ckpt, variables)
    meta = {
        "digest": key_digest,
        "key": thaw(key),
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


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every invocation of the runner prepares (see :func:`prepare`).

    Attributes:
        cfg: the effective config.
        out: the output folder.
        dataset: the loaded dataset.
        trainer: the trainer (module and optimiser caches).
        sources: ``source name -> (module, trained variables)``.
        source_info: ``source name -> {"test_accuracy", "seconds", "cached", "digest"}``.
    """

    cfg: ExperimentConfig
    out: Path
    dataset: data.Dataset
    trainer: Trainer
    sources: dict[str, tuple[nn.Module, Variables]]
    source_info: dict[str, dict[str, Any]]


def prepare(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    log: Log,
    *,
    write_config: bool = True,
    data_dir: str | os.PathLike | None = None,
) -> Setup:
    """Load the dataset and pretrain (or restore) every source of ``cfg``.

    Args:
        cfg: the effective config.
        out_dir: the output folder (created).
        log: progress printer.
        write_config: write ``config.json`` into the folder.
        data_dir: a local TFDS data directory to read the dataset from, without
            downloading (:func:`load_dataset`); not part of any cache key.

    Returns:
        The :class:`Setup` the runs need.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if write_config:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    dataset = load_dataset(cfg, data_dir)
    log(
        f"experiment {cfg.name}: {dataset.name} {dataset.input_shape}, "
        f"{dataset.num_train} train / {dataset.num_test} test; {len(cfg.pairs)} pairs, "
        f"E in {list(cfg.epochs)}, {cfg.repetitions} seeds"
    )
    trainer = Trainer(dataset, cfg.eval_batch_size)
    sources: dict[str, tuple[nn.Module, Variables]] = {}
    source_info: dict[str, dict[str, Any]] = {}
    for name in cfg.sources:
        module, variables, info = pretrain_source(trainer, cfg, name, out / "sources", log)
        sources[name] = (module, variables)
        source_info[name] = {
            "test_accuracy": info["test_accuracy"],
            "seconds": info["seconds"],
            "cached": info["cached"],
            "digest": info["digest"],
        }
    return Setup(cfg, out, dataset, trainer, sources, source_info)


def load_run_cache(cache_path: Path, resume: bool) -> dict[str, dict[str, Any]]:
    """Return the finished runs recorded in ``cache_path`` by digest (deleting it unless resuming).

    Args:
        cache_path: the ``runs.jsonl`` file.
        resume: keep and read the file; ``False`` deletes it.

    Returns:
        ``digest -> {"digest", "row"}``; empty when there is nothing to resume.
    """
    cached: dict[str, dict[str, Any]] = {}
    if resume and cache_path.is_file():
        for line in cache_path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                cached[rec["digest"]] = rec
    elif cache_path.exists():
        cache_path.unlink()
    return cached


def _run_key(
    setup: Setup, target: str, epochs: int, seed: int, pair: PairSpec | None, method: tuple
) -> dict[str, Any]:
    """Return everything a run's result depends on (its cache key, before hashing).

    A transfer made with a method other than the default has a ``method`` field; the
    default's key has none, so runs cached before methods existed are the default's.
    Random-init runs do not depend on the method and are shared.
    """
    cfg = setup.cfg
    key = {
        "code": code_version(),
        "dataset": cfg.dataset,
        "dataset_kwargs": dict(cfg.dataset_kwargs),
        "max_train": cfg.max_train,
        "max_test": cfg.max_test,
        "target": cfg.targets[target].to_dict(),
        "settings": cfg.train_settings(),
        "epochs": epochs,
        "seed": seed,
        "init": "random" if pair is None else "transfer",
        "source": None if pair is None else setup.source_info[pair.source]["digest"],
    }
    if pair is not None and method != DEFAULT_METHOD:
        key["method"] = {"matcher": method[0], "tensor_rule": method[1]}
    return key


def _train_run(
    setup: Setup,
    target: str,
    epochs: int,
    seed: int,
    pair: PairSpec | None,
    method: tuple[str, str],
) -> dict[str, Any]:
    """Train one target run from a random init (``pair`` is ``None``) or a transfer.

    Returns:
        The run's row: ``init``, ``source``, ``target``, ``epochs``, ``seed``, ``best``,
        ``final``, ``test_accuracy_per_epoch``, ``seconds`` (and the method of a transfer).
    """
    trainer = setup.trainer
    module = trainer.module(setup.cfg.targets[target])
    rng = jax.random.fold_in(jax.random.key(seed), stable_int("target:" + target))
    start = time.perf_counter()
    if pair is None:
        variables = trainer.init(module, rng)
    else:
        src_module, src_vars = setup.sources[pair.source]
        variables = dj.transfer(
            src_vars,
            src_module,
            module,
            rng,
            sample_input=trainer.sample_input,
            matcher=method[0],
            tensor_rule=method[1],
        )
    _, history = trainer.fit(module, variables, setup.cfg.train_settings(), epochs, seed)
    accs = [float(r.test_accuracy) for r in history]
    row = {
        "init": "random" if pair is None else "transfer",
        "source": "" if pair is None else pair.source,
        "target": target,
        "epochs": epochs,
        "seed": seed,
        "best": max(accs),
        "final": accs[-1],
        "test_accuracy_per_epoch": accs,
        "seconds": time.perf_counter() - start,
    }
    if pair is not None:
        row["matcher"], row["tensor_rule"] = method
    return row


def train_runs(
    setup: Setup,
    cached: dict[str, dict[str, Any]],
    log: Log,
    *,
    matcher: str = DEFAULT_METHOD[0],
    tensor_rule: str = DEFAULT_METHOD[1],
    prefix: str = "",
) -> list[dict[str, Any]]:
    """Train (or take from the cache) every random-init and transfer run of the config.

    Runs are grouped by target so that each ``(target, E)`` compiles once. New runs are
    added to ``cached`` and appended to ``<out>/runs.jsonl``.

    Args:
        setup: what :func:`prepare` returned.
        cached: finished runs by digest (:func:`load_run_cache`); extended in place.
        log: progress printer.
        matcher: the transfers' matcher.
        tensor_rule: the transfers' tensor rule.
        prefix: put before every progress line.

    Returns:
        One row per run (see ``runs.csv``).
    """
    cfg = setup.cfg
    method = (str(matcher), str(tensor_rule))
    cache_path = setup.out / "runs.jsonl"
    seeds = [cfg.seed + r for r in range(cfg.repetitions)]
    total = (len(cfg.targets) + len(cfg.pairs)) * len(cfg.epochs) * len(seeds)
    runs: list[dict[str, Any]] = []
    for tname in cfg.targets:
        tpairs = [p for p in cfg.pairs if p.target == tname]
        for e in cfg.epochs:
            for seed in seeds:
                for p in [None, *tpairs]:
                    key_digest = digest(_run_key(setup, tname, e, seed, p, method))
                    init = "random" if p is None else "transfer"
                    row_id = f"{prefix}[{len(runs) + 1}/{total}] {init:8s} " + (
                        tname if p is None else p.label
                    )
                    if key_digest in cached:
                        row = dict(cached[key_digest]["row"])
                        if p is not None:
                            row["matcher"], row["tensor_rule"] = method_of(row)
                        runs.append(row)
                        log(f"{row_id} E={e} seed={seed}: cached, best {row['best']:.3f}")
                        continue
                    row = _train_run(setup, tname, e, seed, p, method)
                    runs.append(row)
                    cached[key_digest] = {"digest": key_digest, "row": row}
                    with open(cache_path, "a") as f:
                        f.write(json.dumps({"digest": key_digest, "row": row}) + "\n")
                    log(
                        f"{row_id} E={e} seed={seed}: best {row['best']:.3f} "
                        f"({row['seconds']:.1f}s)"
                    )
    return runs
