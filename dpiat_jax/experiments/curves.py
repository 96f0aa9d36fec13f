"""Learning curves: one training run evaluated at fixed step budgets.

The evidence protocol (:mod:`dpiat_jax.experiments.evidence`) compares starts of a target
(random, transferred, controls) by their whole test curve rather than by one accuracy at the
end of a separate run per budget: one run per seed, with a learning rate that warms up and
then decays over the full budget, evaluated on the test split at step 0 and at every budget
point. From a curve come the area under the test-accuracy and test-loss curves
(:func:`area`), the steps to reach an accuracy (:func:`steps_to`), the final and the best
accuracy.

BatchNorm's running statistics can be *recomputed* before each evaluation
(:func:`recompute_batch_stats`): a transferred start carries its source's running
statistics, a random one carries (0, 1), and neither describes the network being
evaluated. Recomputing them for every arm removes that confound from the comparison.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpiat_jax.experiments import train
from dpiat_jax.experiments.data import Dataset, batches
from dpiat_jax.types import Variables

__all__ = [
    "CurvePoint",
    "area",
    "recompute_batch_stats",
    "steps_to",
    "train_curve",
    "variables_digest",
]


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """The test metrics of a run after ``step`` optimiser steps."""

    step: int
    test_loss: float
    test_accuracy: float


def area(curve: Sequence[CurvePoint], metric: str = "test_accuracy") -> float:
    """Return the area under a curve divided by its last step: the metric's mean over the run.

    The trapezoid rule over the evaluation points, so a run that is better early has a
    larger area even when every run ends at the same accuracy.

    Args:
        curve: the points of one run, by increasing step, the first at step 0.
        metric: ``"test_accuracy"`` or ``"test_loss"``.

    Returns:
        The normalised area (for accuracy, within [0, 1]).

    >>> area([CurvePoint(0, 2.0, 0.0), CurvePoint(10, 1.0, 1.0)])
    0.5
    """
    steps = np.array([p.step for p in curve], np.float64)
    values = np.array([getattr(p, metric) for p in curve], np.float64)
    if len(steps) < 2 or steps[-1] <= steps[0]:
        return float(values[-1])
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


def steps_to(curve: Sequence[CurvePoint], level: float) -> int | None:
    """Return the first evaluated step whose test accuracy reaches ``level``, else ``None``.

    Args:
        curve: the points of one run.
        level: an accuracy (for example 90% of the source's).

    Returns:
        The step, or ``None`` when the run never reaches it.

    >>> steps_to([CurvePoint(0, 2.0, 0.1), CurvePoint(5, 1.0, 0.8)], 0.5)
    5
    """
    return next((p.step for p in curve if p.test_accuracy >= level), None)


def _train_mode_stats(module: nn.Module, variables: Variables, x: jax.Array, rng: jax.Array):
    """The ``batch_stats`` one train-mode forward pass writes from the given running stats."""
    _, updates = module.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
    )
    return updates["batch_stats"]


_train_mode_stats_jit = jax.jit(_train_mode_stats, static_argnums=0)


def recompute_batch_stats(
    module: nn.Module,
    variables: Variables,
    x: np.ndarray,
    batch_size: int,
    *,
    max_batches: int = 16,
    seed: int = 0,
) -> Variables:
    """Return ``variables`` with BatchNorm running statistics recomputed on ``x``.

    Each running statistic becomes the mean over up to ``max_batches`` training batches
    of the batch statistic that a train-mode pass computes, whatever the layer's momentum:
    a train-mode pass from running stats ``r`` writes ``m * r + (1 - m) * b``, so a pass
    from zeros gives ``(1 - m) * b`` and one from ones gives ``m``, per entry. Train-mode
    outputs do not depend on the running stats, so ``b`` is the batch statistic itself.

    Args:
        module: the model (called as ``module.apply(v, x, train=True, mutable=...)``).
        variables: its variables; returned unchanged when they have no ``batch_stats``.
        x: training inputs.
        batch_size: examples per batch (the training batch size: the statistics the
            model saw during training are of batches of that size).
        max_batches: how many batches to average.
        seed: the order of the examples.

    Returns:
        New variables (the caller's are not changed).
    """
    if "batch_stats" not in variables:
        return variables
    stats = variables["batch_stats"]
    zeros = jax.tree.map(jnp.zeros_like, stats)
    ones = jax.tree.map(jnp.ones_like, stats)
    rng = jax.random.key(seed)
    order = np.random.default_rng(seed).permutation(len(x))
    size = min(batch_size, len(x))
    n = max(min(max_batches, len(x) // size), 1)
    total = None
    for i in range(n):
        xb = jnp.asarray(x[order[i * size : (i + 1) * size]])
        b = _train_mode_stats_jit(module, {**variables, "batch_stats": zeros}, xb, rng)
        total = b if total is None else jax.tree.map(jnp.add, total, b)
    momentum = jax.tree.map(
        jnp.subtract,
        _train_mode_stats_jit(module, {**variables, "batch_stats": ones}, xb, rng),
        b,
    )

    def _fresh(old: jax.Array, s: jax.Array, m: jax.Array) -> jax.Array:
        keep = 1.0 - m
        return jnp.where(keep > 1e-6, s / (n * jnp.where(keep > 1e-6, keep, 1.0)), old).astype(
            old.dtype
        )

    return {**variables, "batch_stats": jax.tree.map(_fresh, stats, total, momentum)}


def _evaluate(
    state: train.TrainState,
    module: nn.Module,
    dataset: Dataset,
    batch_sizes: tuple[int, int],
    recompute_bn: bool,
    seed: int,
) -> tuple[float, float]:
    """Test loss and accuracy of the state (BatchNorm statistics recomputed if asked)."""
    if recompute_bn and state.batch_stats is not None:
        fresh = recompute_batch_stats(
            module, state.variables, dataset.x_train, batch_sizes[0], seed=seed
        )
        state = state.replace(batch_stats=fresh["batch_stats"])
    metrics = train.evaluate(state, dataset.x_test, dataset.y_test, batch_sizes[1])
    return metrics["loss"], metrics["accuracy"]


def train_curve(
    module: nn.Module,
    variables: Variables,
    dataset: Dataset,
    *,
    tx: optax.GradientTransformation,
    total_steps: int,
    eval_steps: Sequence[int],
    batch_size: int,
    seed: int,
    augment: bool = False,
    flip: bool = False,
    eval_batch_size: int = 256,
    recompute_bn: bool = False,
) -> list[CurvePoint]:
    """Train ``total_steps`` steps from ``variables``; evaluate at step 0 and at ``eval_steps``.

    The data order, augmentation and dropout depend on ``seed`` only, so two starts of
    the same target trained with the same seed see the same batches.

    Args:
        module: the model.
        variables: the start (random, transferred, ...).
        dataset: training and test data.
        tx: the optimiser (its schedule should span ``total_steps``).
        total_steps: optimiser steps of the run.
        eval_steps: the steps after which to evaluate (those above ``total_steps`` are
            dropped; ``total_steps`` itself is always evaluated).
        batch_size: training batch size.
        seed: data order, augmentation and dropout seed.
        augment: random-translation augmentation.
        flip: random horizontal flips as well.
        eval_batch_size: evaluation batch size.
        recompute_bn: recompute BatchNorm running statistics before each evaluation.

    Returns:
        The curve, one point per evaluation, by increasing step.
    """
    points = sorted({0, total_steps, *(int(s) for s in eval_steps if 0 < s <= total_steps)})
    state = train.create_train_state(module, variables, tx, seed=seed)
    rng = np.random.default_rng(seed)
    sizes = (batch_size, eval_batch_size)
    curve = [CurvePoint(0, *_evaluate(state, module, dataset, sizes, recompute_bn, seed))]
    step, drop_last = 0, dataset.num_train >= batch_size
    while step < total_steps:
        for xb, yb in batches(
            dataset.x_train, dataset.y_train, batch_size, rng=rng,
            augment=augment, flip=flip, drop_last=drop_last,
        ):  # fmt: skip
            state, _ = train.train_step(state, xb, yb)
            step += 1
            if step in points:
                loss, acc = _evaluate(state, module, dataset, sizes, recompute_bn, seed)
                curve.append(CurvePoint(step, loss, acc))
            if step >= total_steps:
                break
    return curve


def variables_digest(variables: Any) -> str:
    """Return a hash of a variables tree's paths, dtypes, shapes and values.

    Two starts with the same digest train to the same run, so the evidence runner trains
    one and reuses it (for example a ``cross`` transfer that moves exactly ``dp``'s pairs).

    Args:
        variables: a pytree of arrays.

    Returns:
        16 hex digits.

    >>> variables_digest({"a": np.zeros(2)}) == variables_digest({"a": np.zeros(2)})
    True
    """
    h = hashlib.sha1()
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
