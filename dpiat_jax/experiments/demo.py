"""``dpiat-jax demo``: DPIAT end to end, offline, in about a minute on two CPU cores.

1. Train a small CIFAR-style ResNet (the *source*) on scikit-learn's bundled 8x8 digits.
2. Transfer its parameters into a deeper ResNet (the *target*) with
   :func:`dpiat_jax.transfer`, and print the matching report of :func:`dpiat_jax.match`.
3. Train the target for one epoch from the transfer and from a random initialisation,
   for several seeds (each seed shares the data order and the fresh initialisation
   between the two starts), evaluating on the test split several times within the epoch.
4. Print both accuracies (mean ± standard deviation over seeds, and their ratio) and
   write the learning curves to ``<out>/learning_curves.png`` (plus ``demo.json`` with
   the numbers and ``match_report.txt``).

``quick=True`` shrinks everything (narrower models, 512 training examples, a shorter
epoch) so that the demo runs in seconds in tests; its numbers are not meaningful.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from matplotlib.figure import Figure

import dpiat_jax as dj
from dpiat_jax.experiments import data, train
from dpiat_jax.models import CifarResNet
from dpiat_jax.types import Variables

__all__ = ["DemoResult", "DemoSettings", "run_demo"]


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What the demo trains; :data:`FULL` and :data:`QUICK` are the two presets."""

    source_depth: int = 14
    target_depth: int = 20
    base_channels: int = 8
    source_epochs: int = 10
    source_batch_size: int = 64
    batch_size: int = 128
    learning_rate: float = 0.1
    evals_per_epoch: int = 11
    max_train: int | None = None
    max_test: int | None = None


FULL = DemoSettings()
QUICK = DemoSettings(
    source_depth=8,
    target_depth=14,
    base_channels=4,
    source_epochs=2,
    source_batch_size=32,
    batch_size=32,
    evals_per_epoch=4,
    max_train=256,
    max_test=128,
)


@dataclasses.dataclass
class DemoResult:
    """The demo's numbers.

    Attributes:
      source_accuracy: Test accuracy of the trained source.
      similarity: :func:`dpiat_jax.similarity` of the source to the target.
      report: The matching report (``str(report)`` is a table).
      steps: Training steps at which the target was evaluated (0 = before training).
      steps_per_epoch: Steps in the target's epoch.
      curves: ``{"transfer" | "random": array (seeds, len(steps))}`` of test accuracies.
      seeds: The seeds used.
      plot: Path of the learning-curve PNG.
      seconds: Wall time.
    """

    source_accuracy: float
    similarity: float
    report: Any
    steps: list[int]
    steps_per_epoch: int
    curves: dict[str, np.ndarray]
    seeds: list[int]
    plot: str
    seconds: float

    def final(self, init: str) -> tuple[float, float]:
        """Return the mean and standard deviation over seeds of the accuracy after the epoch.

        Args:
          init: ``"transfer"`` or ``"random"``.

        Returns:
          ``(mean, std)``; the std of one seed is 0.
        """
        a = self.curves[init][:, -1]
        return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0

    @property
    def ratio(self) -> float:
        """Mean final accuracy from the transfer / from a random init."""
        return self.final("transfer")[0] / self.final("random")[0]


def _print(msg: str) -> None:
    """The default progress printer: ``print`` with flush."""
    print(msg, flush=True)


def _train_one_epoch(
    state: train.TrainState,
    dataset: data.Dataset,
    settings: DemoSettings,
    seed: int,
    eval_at: set[int],
) -> list[float]:
    """One shuffled epoch of ``train_step``; test accuracy at step 0 and at ``eval_at``."""
    rng = np.random.default_rng(seed)
    accs = [train.evaluate(state, dataset.x_test, dataset.y_test)["accuracy"]]
    for step, (xb, yb) in enumerate(
        data.batches(
            dataset.x_train, dataset.y_train, settings.batch_size, rng=rng, drop_last=True
        ),
        start=1,
    ):
        state, _ = train.train_step(state, xb, yb)
        if step in eval_at:
            accs.append(train.evaluate(state, dataset.x_test, dataset.y_test)["accuracy"])
    return accs


def _plot(path: Path, result: DemoResult, title: str) -> None:
    """Draw the learning curves of both starts (mean, ± std band, every seed) to ``path``."""
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    x = np.asarray(result.steps) / result.steps_per_epoch
    colors = {"transfer": "tab:blue", "random": "tab:orange"}
    names = {"transfer": "DPIAT transfer", "random": "random init"}
    for init in ("transfer", "random"):
        curves = result.curves[init]
        mean = curves.mean(axis=0)
        std = curves.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
        final_mean, final_std = result.final(init)
        ax.plot(x, mean, "o-", color=colors[init], ms=3,
                label=f"{names[init]}: {final_mean:.3f} ± {final_std:.3f}")  # fmt: skip
        ax.fill_between(x, mean - std, mean + std, color=colors[init], alpha=0.2, lw=0)
        for c in curves:
            ax.plot(x, c, color=colors[init], lw=0.5, alpha=0.4)
    ax.axhline(result.source_accuracy, color="gray", ls="--", lw=0.8,
               label=f"source (trained): {result.source_accuracy:.3f}")  # fmt: skip
    ax.set_xlabel(f"epochs of target training ({result.steps_per_epoch} steps per epoch)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=120)


def _load_data(settings: DemoSettings) -> data.Dataset:
    """Return the digits, truncated as ``settings`` say."""
    dataset = data.load("digits")
    if settings.max_train or settings.max_test:
        dataset = dataset.take(settings.max_train, settings.max_test)
    return dataset


def _train_source(
    source: nn.Module,
    dataset: data.Dataset,
    settings: DemoSettings,
    name: str,
    log: Callable[[str], None],
) -> tuple[Variables, float]:
    """Train the source from seed 0 and log it; return its variables and test accuracy."""
    start = time.perf_counter()
    x0 = dataset.x_train[:2]
    src_vars = source.init(jax.random.key(0), x0)
    src_steps = settings.source_epochs * (dataset.num_train // settings.source_batch_size)
    src_tx = train.make_optimizer("sgd", settings.learning_rate, src_steps)
    src_vars, history = train.fit(
        source,
        src_vars,
        dataset,
        epochs=settings.source_epochs,
        batch_size=settings.source_batch_size,
        tx=src_tx,
        seed=0,
        progress=False,
        eval_every_epoch=False,
    )
    accuracy = float(history.final.test_accuracy)
    log(
        f"\n1. Source {name}: trained {settings.source_epochs} epochs, "
        f"test accuracy {accuracy:.3f} ({time.perf_counter() - start:.1f}s)"
    )
    return src_vars, accuracy


def _target_curves(
    pair: tuple[nn.Module, Variables, nn.Module],
    dataset: data.Dataset,
    settings: DemoSettings,
    seeds: list[int],
    eval_at: list[int],
    log: Callable[[str], None],
) -> dict[str, list[list[float]]]:
    """Train the target one epoch per seed from the transfer and from a random init.

    Returns:
        ``{"transfer" | "random": one learning curve per seed}``.
    """
    source, src_vars, target = pair
    x0 = dataset.x_train[:2]
    steps_per_epoch = dataset.num_train // settings.batch_size
    tx = train.make_optimizer("sgd", settings.learning_rate, steps_per_epoch)
    curves: dict[str, list[list[float]]] = {"transfer": [], "random": []}
    log(
        f"\n3. One epoch of training of the target ({steps_per_epoch} steps of "
        f"{settings.batch_size}, SGD lr {settings.learning_rate} cosine), {len(seeds)} seed(s):"
    )
    log(f"   {'seed':>4}  {'transfer':>8}  {'random':>8}   (test accuracy after the epoch)")
    for seed in seeds:
        start = time.perf_counter()
        rng = jax.random.key(seed + 1)
        starts = {
            "transfer": dj.transfer(src_vars, source, target, rng, sample_input=x0),
            "random": target.init({"params": rng, "dropout": jax.random.fold_in(rng, 1)}, x0),
        }
        for init, variables in starts.items():
            state = train.create_train_state(target, variables, tx, seed=seed)
            curves[init].append(_train_one_epoch(state, dataset, settings, seed, set(eval_at)))
        log(
            f"   {seed:>4}  {curves['transfer'][-1][-1]:>8.3f}  {curves['random'][-1][-1]:>8.3f}"
            f"   ({time.perf_counter() - start:.1f}s)"
        )
    return curves


def _eval_steps(steps_per_epoch: int, evals_per_epoch: int) -> list[int]:
    """Return the (at most ``evals_per_epoch``) evenly spaced steps that end with the epoch."""
    n_evals = max(1, min(evals_per_epoch, steps_per_epoch))
    return sorted({round(steps_per_epoch * (i + 1) / n_evals) for i in range(n_evals)})


def _title(settings: DemoSettings, seeds: int) -> str:
    """Return the learning-curve figure's title."""
    return (
        f"DPIAT on digits: ResNet-{settings.source_depth} -> ResNet-{settings.target_depth} "
        f"({settings.base_channels} base channels), {seeds} seed(s)"
    )


def _final_message(result: DemoResult, seeds: int) -> str:
    """Return the closing lines: both final accuracies, their start and their ratio."""
    (t_mean, t_std), (r_mean, r_std) = result.final("transfer"), result.final("random")
    t_start = result.curves["transfer"][:, 0].mean()
    r_start = result.curves["random"][:, 0].mean()
    return (
        f"\nAfter one epoch (mean ± std over {seeds} seed(s)):\n"
        f"   from the DPIAT transfer: {t_mean:.3f} ± {t_std:.3f}"
        f"   (before training {t_start:.3f})\n"
        f"   from a random init:      {r_mean:.3f} ± {r_std:.3f}"
        f"   (before training {r_start:.3f})\n"
        f"   ratio transfer / random: {result.ratio:.2f}x"
    )


def _summary_json(
    result: DemoResult, settings: DemoSettings, quick: bool, names: tuple[str, str]
) -> str:
    """Return ``demo.json``: the settings, the curves and the final accuracies."""
    (t_mean, t_std), (r_mean, r_std) = result.final("transfer"), result.final("random")
    return json.dumps(
        {
            "settings": dataclasses.asdict(settings),
            "quick": quick,
            "source": names[0],
            "target": names[1],
            "source_accuracy": result.source_accuracy,
            "similarity": result.similarity,
            "layer_coverage": result.report.layer_coverage,
            "steps": result.steps,
            "steps_per_epoch": result.steps_per_epoch,
            "seeds": result.seeds,
            "curves": {k: v.tolist() for k, v in result.curves.items()},
            "transfer_final": [t_mean, t_std],
            "random_final": [r_mean, r_std],
            "ratio": result.ratio,
            "seconds": result.seconds,
        },
        indent=1,
    )


def run_demo(
    out_dir: str = "runs/demo",
    seeds: int = 3,
    quick: bool = False,
    log: Callable[[str], None] | None = None,
    settings: DemoSettings | None = None,
) -> DemoResult:
    """Run the demo (see the module docstring) and return its numbers.

    Args:
      out_dir: Directory for ``learning_curves.png``, ``demo.json`` and
        ``match_report.txt`` (created).
      seeds: Number of seeds of the target training (seeds ``0 .. seeds-1``).
      quick: The tiny preset used by tests.
      log: Printer (default: ``print`` with flush).
      settings: Custom :class:`DemoSettings` (overrides ``quick``'s preset).

    Returns:
      A :class:`DemoResult`.

    Raises:
      ValueError: if ``seeds`` is not positive.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be positive, got {seeds}.")
    log = log or _print
    settings = settings or (QUICK if quick else FULL)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = _load_data(settings)
    x0 = dataset.x_train[:2]
    steps_per_epoch = dataset.num_train // settings.batch_size
    log(
        f"DPIAT demo on digits{' (quick mode)' if quick else ''}: "
        f"{dataset.num_train} training / {dataset.num_test} test images of 8x8x1, 10 classes"
    )

    # 1. The source.
    c = settings.base_channels
    src_name = f"CIFAR ResNet-{settings.source_depth} ({c} base channels)"
    dst_name = f"CIFAR ResNet-{settings.target_depth} ({c} base channels)"
    source = CifarResNet(depth=settings.source_depth, base_channels=c, num_classes=10)
    target = CifarResNet(depth=settings.target_depth, base_channels=c, num_classes=10)
    src_vars, source_accuracy = _train_source(source, dataset, settings, src_name, log)

    # 2. The transfer's matching.
    start = time.perf_counter()
    report = dj.match(src_vars, source, target, jax.random.key(0), sample_input=x0)
    similarity = dj.similarity((source, src_vars), target, sample_input=x0)
    (out / "match_report.txt").write_text(str(report) + "\n")
    log(
        f"\n2. DPIAT transfer into {dst_name} "
        f"(similarity {similarity:.3f}, {time.perf_counter() - start:.1f}s):\n"
    )
    log(str(report))

    # 3. One epoch of target training from both starts.
    eval_at = _eval_steps(steps_per_epoch, settings.evals_per_epoch)
    seed_list = list(range(seeds))
    curves = _target_curves((source, src_vars, target), dataset, settings, seed_list, eval_at, log)

    result = DemoResult(
        source_accuracy=source_accuracy,
        similarity=float(similarity),
        report=report,
        steps=[0, *eval_at],
        steps_per_epoch=steps_per_epoch,
        curves={k: np.asarray(v, dtype=np.float64) for k, v in curves.items()},
        seeds=seed_list,
        plot=str(out / "learning_curves.png"),
        seconds=0.0,
    )
    _plot(Path(result.plot), result, _title(settings, seeds))
    result.seconds = time.perf_counter() - t0
    log(_final_message(result, seeds))
    (out / "demo.json").write_text(_summary_json(result, settings, quick, (src_name, dst_name)))
    log(f"\nLearning curves: {result.plot} (total {result.seconds:.0f}s)")
    return result
