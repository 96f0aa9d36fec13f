"""Language-model growth on real text: a small GPT grown in depth and width by transfer.

A byte-level :class:`~dpiat_jax.models.GPT` is trained briefly on the standard
library's source (:mod:`~dpiat_jax.experiments.corpus`), then grown (by default 2
layers of width 64 -> 4 layers of width 128). Every arm trains the grown model for the
same steps, on the same batches per seed, from a different start:

- ``random``: a fresh initialisation;
- ``transfer dp`` and ``transfer cross``: :func:`dpiat_jax.transfer` of the trained
  source with the ``dp`` and ``cross`` matchers;
- ``untrained source``: the same transfer from a source that was never trained (the
  control that separates what the source learned from how its tensors are scaled);
- ``net2net + identity``: the function-preserving growth options (``tensor_rule=
  "net2net"``, ``deepen="identity"``; docs/growth.md). The GPT's LayerNorms see the
  widened features, so widening keeps the function only approximately; deepening
  alone keeps it exactly.

The test loss (held-out files) is measured at fixed steps of each run. The summary
gives, per arm, the test loss at every evaluation with a 95% bootstrap interval over
seeds, the area under the test-loss curve, the paired difference of that area to
``random`` per seed with its interval, and the steps each arm needs to reach the
random arm's final loss.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dpiat_jax
from dpiat_jax.experiments import corpus as corpus_lib
from dpiat_jax.experiments.stats import bootstrap_interval
from dpiat_jax.models import GPT

__all__ = [
    "ARMS",
    "GrowthResult",
    "GrowthSettings",
    "growth_markdown",
    "plot_growth",
    "run_growth",
    "summarise",
    "train_lm",
    "write_growth",
]


@dataclasses.dataclass(frozen=True)
class GrowthSettings:
    """What the growth experiment runs.

    Attributes:
      source_layers, source_width, target_layers, target_width, heads: the two GPTs.
      length: bytes per input window.
      batch: windows per step.
      source_steps: training steps of the source (once, seed 0).
      target_steps: training steps of every arm.
      eval_every: steps between test-loss evaluations (step 0 included).
      eval_windows: test windows (fixed, the same for every run).
      seeds: runs per arm (paired: a seed fixes the batches and the fresh init).
      learning_rate: the peak of AdamW's warm-up + cosine schedule.
      warmup: warm-up steps.
    """

    source_layers: int = 2
    source_width: int = 64
    target_layers: int = 4
    target_width: int = 128
    heads: int = 4
    length: int = 64
    batch: int = 16
    source_steps: int = 600
    target_steps: int = 300
    eval_every: int = 25
    eval_windows: int = 256
    seeds: int = 5
    learning_rate: float = 3e-3
    warmup: int = 30

    def quick(self) -> GrowthSettings:
        """A few steps of tiny models: for tests and a first look."""
        return dataclasses.replace(
            self,
            source_width=16,
            target_width=32,
            target_layers=3,
            length=16,
            batch=4,
            source_steps=6,
            target_steps=4,
            eval_every=2,
            eval_windows=8,
            seeds=2,
            warmup=1,
        )

    def models(self) -> tuple[GPT, GPT]:
        """The source and target GPTs."""
        source = GPT(
            layers=self.source_layers,
            width=self.source_width,
            heads=self.heads,
            max_length=self.length,
        )
        target = GPT(
            layers=self.target_layers,
            width=self.target_width,
            heads=self.heads,
            max_length=self.length,
        )
        return source, target


def _loss(model: GPT, params, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.lru_cache(maxsize=8)
def _programs(model: GPT, settings: GrowthSettings, steps: int):
    """The optimiser and the jitted training step and test loss of one model and run
    length, compiled once and shared by every arm and seed."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, settings.warmup, max(steps, settings.warmup + 1)
    )
    tx = optax.adamw(schedule, weight_decay=0.01)
    loss = functools.partial(_loss, model)

    @jax.jit
    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    @jax.jit
    def test_loss(params, xs, ys):
        xs, ys = (jnp.reshape(a, (-1, settings.batch, a.shape[-1])) for a in (xs, ys))
        return jax.lax.map(lambda xy: loss(params, *xy), (xs, ys)).mean()

    return tx, step, test_loss


def train_lm(
    model: GPT,
    params: Any,
    data: np.ndarray,
    test: tuple[np.ndarray, np.ndarray],
    settings: GrowthSettings,
    *,
    steps: int,
    seed: int,
) -> tuple[Any, list[tuple[int, float]]]:
    """Trains a GPT on byte windows; returns its params and its test loss along the way.

    Args:
      model: the GPT.
      params: its starting ``params``.
      data: training bytes.
      test: the fixed test windows ``(inputs, targets)``.
      settings: batch, length, schedule.
      steps: optimiser steps.
      seed: fixes the batches (the same for every arm of a seed).

    Returns:
      ``(params, curve)``: the trained params and ``(step, test loss)`` at step 0, every
      ``eval_every`` steps and at the end.
    """
    tx, step, test_loss = _programs(model, settings, steps)
    rng = np.random.default_rng(seed)
    opt_state = tx.init(params)
    curve = [(0, float(test_loss(params, *test)))]
    for i in range(1, steps + 1):
        x, y = corpus_lib.sample_windows(data, settings.batch, settings.length, rng)
        params, opt_state, _ = step(params, opt_state, x, y)
        if i % settings.eval_every == 0 or i == steps:
            curve.append((i, float(test_loss(params, *test))))
    return params, curve


#: An arm: ``(trained source params, settings, seed) -> the target's starting params``.
Arm = Callable[[Any, GrowthSettings, int], Any]


def _sample(settings: GrowthSettings) -> jax.Array:
    return jnp.zeros((1, settings.length), jnp.int32)


def _random(source_params: Any, settings: GrowthSettings, seed: int) -> Any:
    del source_params
    _, target = settings.models()
    return target.init(jax.random.key(seed), _sample(settings))["params"]


def _transfer(matcher: str, untrained: bool = False, **options: Any) -> Arm:
    def arm(source_params: Any, settings: GrowthSettings, seed: int) -> Any:
        source, target = settings.models()
        if untrained:
            source_params = source.init(jax.random.key(10_000 + seed), _sample(settings))["params"]
        out = dpiat_jax.transfer(
            {"params": source_params},
            source,
            target,
            jax.random.key(seed),
            sample_input=_sample(settings),
            matcher=matcher,
            **options,
        )
        return out["params"]

    return arm


#: The arms, by name (the order of the tables).
ARMS: dict[str, Arm] = {
    "random": _random,
    "transfer dp": _transfer("dp"),
    "transfer cross": _transfer("cross"),
    "untrained source": _transfer("dp", untrained=True),
    "net2net + identity": _transfer("dp", tensor_rule="net2net", deepen="identity"),
}


@dataclasses.dataclass(frozen=True)
class GrowthResult:
    """The runs of the experiment and their summary.

    Attributes:
      settings: what ran.
      source_curve: the source's test loss during its training.
      curves: ``curves[arm][seed]`` = ``[(step, test loss), ...]``.
      summary: :func:`summarise`'s record.
    """

    settings: GrowthSettings
    source_curve: list[tuple[int, float]]
    curves: dict[str, list[list[tuple[int, float]]]]
    summary: dict[str, Any]


def _area(curve: Sequence[tuple[int, float]]) -> float:
    """The mean test loss over the run: the trapezoid area divided by the steps."""
    steps, losses = np.array(curve, np.float64).T
    return float(np.trapezoid(losses, steps) / max(steps[-1], 1))


def _steps_to(curve: Sequence[tuple[int, float]], level: float) -> int | None:
    return next((s for s, loss in curve if loss <= level), None)


def summarise(curves: Mapping[str, list[list[tuple[int, float]]]]) -> dict[str, Any]:
    """Summarises the runs: per arm the final loss, the area under the test-loss curve,
    the paired area difference to ``random`` and the steps to ``random``'s final loss.

    Args:
      curves: ``curves[arm][seed]``; the arms include ``"random"``.

    Returns:
      ``{arm: {"final": (mean, low, high), "area": ..., "area_vs_random": ...,
      "steps_to_random_final": [per seed]}}``; intervals are 95% bootstrap intervals
      over seeds, ``area_vs_random`` is ``area(arm) - area(random)`` per seed (negative:
      the arm learns faster).

    >>> curves = {"random": [[(0, 5.0), (2, 3.0)]], "transfer": [[(0, 3.0), (2, 2.0)]]}
    >>> summarise(curves)["transfer"]["area_vs_random"]
    (-1.5, -1.5, -1.5)
    """
    random_final = [c[-1][1] for c in curves["random"]]
    random_area = [_area(c) for c in curves["random"]]
    out: dict[str, Any] = {}
    for arm, runs in curves.items():
        areas = [_area(c) for c in runs]
        out[arm] = {
            "final": bootstrap_interval([c[-1][1] for c in runs]),
            "area": bootstrap_interval(areas),
            "area_vs_random": bootstrap_interval(np.subtract(areas, random_area)),
            "steps_to_random_final": [
                _steps_to(c, level) for c, level in zip(runs, random_final, strict=True)
            ],
        }
    return out


def run_growth(
    settings: GrowthSettings = GrowthSettings(),
    *,
    arms: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> GrowthResult:
    """Trains the source, grows it with every arm and trains each grown model.

    Args:
      settings: the experiment (:class:`GrowthSettings`; ``.quick()`` for a smoke run).
      arms: names in :data:`ARMS`; None for all.
      log: where progress lines go.

    Returns:
      The :class:`GrowthResult`.

    Raises:
      ValueError: for an unknown arm (the message lists the valid ones).
    """
    arms = list(ARMS) if arms is None else list(arms)
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "random" not in arms:
        raise ValueError(f"arms must include 'random' and come from {list(ARMS)}; got {arms}.")
    corpus = corpus_lib.load_stdlib_corpus()
    test = corpus_lib.sample_windows(
        corpus.test, settings.eval_windows, settings.length, np.random.default_rng(12345)
    )
    source, target = settings.models()
    start = time.time()
    source_params = source.init(jax.random.key(0), _sample(settings))["params"]
    source_params, curve = train_lm(
        source, source_params, corpus.train, test, settings, steps=settings.source_steps, seed=0
    )
    log(f"source trained: test loss {curve[-1][1]:.3f} ({time.time() - start:.0f} s)")
    curves: dict[str, list[list[tuple[int, float]]]] = {a: [] for a in arms}
    for seed in range(1, settings.seeds + 1):
        for arm in arms:
            params = ARMS[arm](source_params, settings, seed)
            _, run = train_lm(
                target,
                params,
                corpus.train,
                test,
                settings,
                steps=settings.target_steps,
                seed=seed,
            )
            curves[arm].append(run)
            log(f"seed {seed} {arm}: test loss {run[0][1]:.3f} -> {run[-1][1]:.3f}")
    return GrowthResult(settings, curve, curves, summarise(curves))


def _fmt(interval: Sequence[float]) -> str:
    mean, low, high = interval
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def growth_markdown(result: GrowthResult, command: str | None = None) -> str:
    """Returns the experiment's results as markdown: settings, a table per arm, and what
    the numbers say.

    Args:
      result: the :class:`GrowthResult`.
      command: the command line that produced it (recorded when given).

    Returns:
      The markdown text.
    """
    s = result.settings
    lines = [
        "# Language-model growth on the standard library's source",
        "",
        f"Source: GPT {s.source_layers} layers, width {s.source_width}, trained "
        f"{s.source_steps} steps (test loss {result.source_curve[-1][1]:.3f} nats/byte). "
        f"Target: {s.target_layers} layers, width {s.target_width}, {s.heads} heads; every "
        f"arm trains {s.target_steps} steps (AdamW, peak lr {s.learning_rate}, "
        f"{s.warmup} warm-up steps, cosine), batch {s.batch} x {s.length} bytes, "
        f"{s.seeds} seeds (paired: the same batches and fresh init per seed). Test loss on "
        f"{s.eval_windows} fixed windows of held-out files.",
        "",
        "Intervals are 95% bootstrap intervals over seeds. Area: the mean test loss over the "
        "run (lower learns faster); vs random: the paired per-seed difference of areas.",
        "",
        "| arm | test loss at step 0 | final test loss | area | area vs random | steps to "
        "random's final loss |",
        "|---|---|---|---|---|---|",
    ]
    for arm, runs in result.curves.items():
        summary = result.summary[arm]
        start = bootstrap_interval([c[0][1] for c in runs])
        reach = ", ".join("-" if x is None else str(x) for x in summary["steps_to_random_final"])
        lines.append(
            f"| {arm} | {_fmt(start)} | {_fmt(summary['final'])} | {_fmt(summary['area'])} | "
            f"{_fmt(summary['area_vs_random'])} | {reach} |"
        )
    if command:
        lines += ["", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def plot_growth(result: GrowthResult, path: str | Path) -> None:
    """Plots test loss against steps per arm: the mean over seeds and the min-max band."""
    from matplotlib.figure import Figure  # no pyplot: no process-wide backend or state

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for arm, runs in result.curves.items():
        steps = np.array([s for s, _ in runs[0]])
        losses = np.array([[loss for _, loss in run] for run in runs])
        ax.plot(steps, losses.mean(axis=0), label=arm)
        ax.fill_between(steps, losses.min(axis=0), losses.max(axis=0), alpha=0.2)
    s = result.settings
    ax.set_xlabel("training step of the grown model")
    ax.set_ylabel("test loss (nats/byte)")
    ax.set_title(
        f"GPT {s.source_layers}x{s.source_width} -> {s.target_layers}x{s.target_width} "
        f"on stdlib bytes ({s.seeds} seeds)"
    )
    ax.legend()
    fig.savefig(path, dpi=120)


def write_growth(result: GrowthResult, out: str | Path, command: str | None = None) -> Path:
    """Writes ``runs.csv`` (one row per evaluation), ``results.md``, ``results.json`` and
    ``curves.png`` into ``out``; returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = ["arm,seed,step,test_loss"]
    rows += [f"source,0,{step},{loss:.6f}" for step, loss in result.source_curve]
    for arm, runs in result.curves.items():
        for seed, run in enumerate(runs, start=1):
            rows += [f"{arm},{seed},{step},{loss:.6f}" for step, loss in run]
    (out / "runs.csv").write_text("\n".join(rows) + "\n")
    (out / "results.md").write_text(growth_markdown(result, command))
    record = {"settings": dataclasses.asdict(result.settings), "summary": result.summary}
    (out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    plot_growth(result, out / "curves.png")
    return out
