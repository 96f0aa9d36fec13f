"""Supervised training, evaluation and checkpointing for Flax classifiers.

Models are Flax Linen modules called as ``module.apply(variables, x, train=...)``
that return logits. Their variables hold ``"params"`` and, for models with batch
normalisation, ``"batch_stats"``; both layouts are supported everywhere.

The entry point is :func:`fit`, which trains from given variables (so the same
loop trains a model from scratch and one initialised by parameter transfer) and
is reproducible for a seed. Its pieces (:func:`create_train_state`,
:func:`train_step`, :func:`train_epoch`, :func:`evaluate`) are public for custom
loops. :func:`save_checkpoint`/:func:`restore_checkpoint` wrap Orbax.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state

from dpiat_jax.experiments.data import Dataset, batches
from dpiat_jax.types import Variables

__all__ = [
    "EpochRecord",
    "History",
    "TrainState",
    "create_train_state",
    "eval_step",
    "evaluate",
    "fit",
    "make_optimizer",
    "restore_checkpoint",
    "save_checkpoint",
    "train_epoch",
    "train_step",
]


class TrainState(train_state.TrainState):
    """Flax ``TrainState`` plus batch-norm statistics and a dropout key.

    Attributes:
      batch_stats: The ``"batch_stats"`` collection, or ``None`` for models
        without batch normalisation.
      dropout_key: Base PRNG key (raw ``uint32`` array, so it checkpoints as a
        plain array); the dropout key of a step is ``fold_in(dropout_key, step)``.
    """

    batch_stats: Any = None
    dropout_key: jax.Array | None = None

    @property
    def variables(self) -> dict[str, Any]:
        """The model variables: ``{"params": ...}`` plus ``"batch_stats"`` if present."""
        out = {"params": self.params}
        if self.batch_stats is not None:
            out["batch_stats"] = self.batch_stats
        return out


def create_train_state(
    module: nn.Module,
    variables: Variables,
    tx: optax.GradientTransformation,
    *,
    seed: int = 0,
) -> TrainState:
    """Builds a :class:`TrainState` at step 0 from model variables and an optimiser.

    Args:
      module: The Flax module; its ``apply`` becomes the state's ``apply_fn``.
      variables: ``{"params": ...}`` or ``{"params": ..., "batch_stats": ...}``.
        Other collections are ignored.
      tx: Optax optimiser; its state is initialised from the params.
      seed: Seed of the dropout key.

    Returns:
      The new state; ``step`` is a jax int32 scalar so that it checkpoints like
      every other leaf.
    """
    if "params" not in variables:
        raise ValueError(f"variables need a 'params' collection; got {list(variables)}.")
    batch_stats = variables.get("batch_stats") or None
    state = TrainState.create(
        apply_fn=module.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=batch_stats,
        dropout_key=jax.random.PRNGKey(seed),
    )
    return state.replace(step=jnp.asarray(0, jnp.int32))


def _forward(state: TrainState, params: Any, x: jax.Array, train: bool, key: jax.Array | None):
    """Applies the model; returns ``(logits, new_batch_stats or None)``."""
    variables = {"params": params}
    if state.batch_stats is not None:
        variables["batch_stats"] = state.batch_stats
    rngs = {"dropout": key} if key is not None else None
    if train and state.batch_stats is not None:
        logits, updates = state.apply_fn(
            variables, x, train=True, mutable=["batch_stats"], rngs=rngs
        )
        return logits, updates["batch_stats"]
    return state.apply_fn(variables, x, train=train, rngs=rngs), None


def _metrics(logits: jax.Array, y: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    """Weighted sums of cross-entropy and correct predictions, plus the weight total."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
    return {
        "loss": jnp.sum(loss * weights),
        "correct": jnp.sum(correct * weights),
        "count": jnp.sum(weights),
    }


@jax.jit
def train_step(
    state: TrainState, x: jax.Array, y: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on the mean cross-entropy of a batch.

    Batch statistics (if any) are updated in train mode, and dropout draws from
    ``fold_in(state.dropout_key, state.step)``, so a step is a pure function of
    the state and the batch.

    Args:
      state: the train state.
      x: the batch's inputs.
      y: the batch's integer labels.

    Returns:
      ``(new_state, metrics)`` where ``metrics`` holds the batch's summed
      ``"loss"``, number of ``"correct"`` predictions and example ``"count"``
      (sums, so that epochs with a smaller last batch average correctly).
    """
    key = None
    if state.dropout_key is not None:
        key = jax.random.fold_in(state.dropout_key, state.step)

    def loss_fn(params):
        logits, new_batch_stats = _forward(state, params, x, True, key)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        return jnp.mean(loss), (logits, new_batch_stats)

    grads, (logits, new_batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    if new_batch_stats is not None:
        new_state = new_state.replace(batch_stats=new_batch_stats)
    return new_state, _metrics(logits, y, jnp.ones(y.shape, jnp.float32))


@jax.jit
def eval_step(
    state: TrainState, x: jax.Array, y: jax.Array, weights: jax.Array
) -> dict[str, jax.Array]:
    """Evaluates a batch in inference mode (running batch statistics, no dropout).

    ``weights`` (1 for real examples, 0 for padding) lets :func:`evaluate` pad the
    last batch to a fixed size, so evaluation compiles once.

    Args:
      state: the train state.
      x: the batch's inputs.
      y: the batch's integer labels.
      weights: 1 for real examples, 0 for padding.

    Returns:
      Weighted sums ``{"loss", "correct", "count"}`` as in :func:`train_step`.
    """
    logits, _ = _forward(state, state.params, x, False, None)
    return _metrics(logits, y, weights)


def _summarise(sums: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Turns per-batch metric sums into mean ``{"loss", "accuracy"}`` floats."""
    if not sums:
        return {"loss": float("nan"), "accuracy": float("nan")}
    total = jax.device_get(jax.tree.map(lambda *xs: jnp.sum(jnp.stack(xs)), *sums))
    count = max(float(total["count"]), 1.0)
    return {"loss": float(total["loss"]) / count, "accuracy": float(total["correct"]) / count}


def train_epoch(
    state: TrainState,
    dataset: Dataset,
    batch_size: int,
    rng: np.random.Generator,
    *,
    augment: bool = False,
    flip: bool = False,
) -> tuple[TrainState, dict[str, float]]:
    """Runs one shuffled pass over ``dataset``'s training split.

    A trailing partial batch is dropped (keeping one compiled shape and avoiding
    tiny batch-norm batches) unless the split is smaller than ``batch_size``.

    Args:
      state: Current train state.
      dataset: The dataset; only ``x_train``/``y_train`` are used.
      batch_size: Examples per step.
      rng: Numpy generator for shuffling and augmentation (advanced in place).
      augment: Random-translation augmentation, see :func:`dpiat_jax.experiments.data.batches`.
      flip: Also random horizontal flips (natural images).

    Returns:
      ``(new_state, {"loss", "accuracy"})``, the means over the epoch's batches
      as seen during training.
    """
    drop_last = dataset.num_train >= batch_size
    sums = []
    for xb, yb in batches(
        dataset.x_train,
        dataset.y_train,
        batch_size,
        rng=rng,
        shuffle=True,
        augment=augment,
        flip=flip,
        drop_last=drop_last,
    ):
        state, metrics = train_step(state, xb, yb)
        sums.append(metrics)
    return state, _summarise(sums)


# One shared optimiser for evaluation-only states: ``tx`` is static pytree
# metadata, so a fresh ``optax.identity()`` per call would recompile eval_step.
_NO_OPTIMIZER = optax.identity()


def evaluate(
    state: TrainState | Variables,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 256,
    *,
    module: nn.Module | None = None,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of a model on ``(x, y)`` in inference mode.

    Args:
      state: A :class:`TrainState`, or a variables dict together with ``module``.
      x: Inputs.
      y: Integer labels.
      batch_size: Evaluation batch size; the last batch is zero-padded and masked.
      module: Required when ``state`` is a variables dict.

    Returns:
      ``{"loss": float, "accuracy": float}``.
    """
    if not isinstance(state, TrainState):
        if module is None:
            raise ValueError("evaluate needs `module` when given a variables dict.")
        state = create_train_state(module, state, _NO_OPTIMIZER)
    sums = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        n = len(xb)
        weights = np.ones(batch_size, np.float32)
        if n < batch_size and start > 0:
            pad = batch_size - n
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
            weights[n:] = 0.0
        sums.append(eval_step(state, xb, yb, weights[: len(xb)]))
    return _summarise(sums)


# ---------------------------------------------------------------------------
# The training loop.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """Metrics of one epoch of :func:`fit`.

    ``test_loss``/``test_accuracy`` are ``None`` for epochs that were not
    evaluated (``eval_every_epoch=False``); ``seconds`` is the wall time of the
    epoch including evaluation.
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    seconds: float


@dataclasses.dataclass(frozen=True)
class History:
    """Per-epoch records of a :func:`fit` run, in order."""

    records: tuple[EpochRecord, ...] = ()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> EpochRecord:
        return self.records[index]

    def __iter__(self):
        return iter(self.records)

    @property
    def final(self) -> EpochRecord:
        """The last epoch's record."""
        return self.records[-1]

    def to_dicts(self) -> list[dict[str, Any]]:
        """Returns the records as a list of plain dicts (e.g. for JSON)."""
        return [dataclasses.asdict(r) for r in self.records]


def make_optimizer(
    name: str,
    learning_rate: float,
    total_steps: int,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    warmup_steps: int = 0,
) -> optax.GradientTransformation:
    """Builds the optimiser used by :func:`fit`.

    Args:
      name: ``"sgd"`` (heavy-ball momentum) or ``"adam"`` (AdamW when
        ``weight_decay > 0``).
      learning_rate: Peak learning rate.
      total_steps: Number of steps the cosine schedule decays over (to 0).
      momentum: SGD momentum.
      weight_decay: L2 penalty added to the gradient for SGD; decoupled decay
        for Adam.
      schedule: ``"cosine"`` or ``"constant"``.
      warmup_steps: Steps of a linear warm-up from 0 to ``learning_rate`` before the
        schedule (the cosine then decays over the remaining steps).

    Returns:
      An Optax gradient transformation.
    """
    warmup_steps = max(int(warmup_steps), 0)
    if schedule == "cosine" and warmup_steps:
        lr = optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1)
        )
    elif schedule == "cosine":
        lr = optax.cosine_decay_schedule(learning_rate, decay_steps=max(total_steps, 1))
    elif schedule == "constant" and warmup_steps:
        lr = optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, warmup_steps),
             optax.constant_schedule(learning_rate)],
            [warmup_steps],
        )  # fmt: skip
    elif schedule == "constant":
        lr = optax.constant_schedule(learning_rate)
    else:
        raise ValueError(f"Unknown schedule {schedule!r}; use 'cosine' or 'constant'.")
    name = name.lower()
    if name == "sgd":
        tx = optax.sgd(lr, momentum=momentum or None)
        if weight_decay:
            tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
        return tx
    if name == "adam":
        if weight_decay:
            return optax.adamw(lr, weight_decay=weight_decay)
        return optax.adam(lr)
    raise ValueError(f"Unknown optimizer {name!r}; use 'sgd' or 'adam'.")


_DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}


def _default_optimizer(
    optimizer: str, learning_rate: float | None, steps: int, weight_decay: float, schedule: str
) -> optax.GradientTransformation:
    """Return :func:`make_optimizer`'s optimiser, ``learning_rate=None`` meaning the default.

    Raises:
        ValueError: for an optimiser without a default learning rate.
    """
    optimizer = optimizer.lower()
    if learning_rate is None:
        if optimizer not in _DEFAULT_LR:
            raise ValueError(f"Unknown optimizer {optimizer!r}; use 'sgd' or 'adam'.")
        learning_rate = _DEFAULT_LR[optimizer]
    return make_optimizer(
        optimizer, learning_rate, steps, weight_decay=weight_decay, schedule=schedule
    )


def _fit_epoch(
    state: TrainState,
    dataset: Dataset,
    epoch: int,
    batch_sizes: tuple[int, int],
    rng: np.random.Generator,
    augmentation: tuple[bool, bool],
    evaluate_now: bool,
) -> tuple[TrainState, EpochRecord]:
    """Train one epoch (and evaluate when ``evaluate_now``); return the state and record."""
    start = time.perf_counter()
    augment, flip = augmentation
    state, train_metrics = train_epoch(
        state, dataset, batch_sizes[0], rng, augment=augment, flip=flip
    )
    test_metrics = {"loss": None, "accuracy": None}
    if evaluate_now:
        test_metrics = evaluate(state, dataset.x_test, dataset.y_test, batch_sizes[1])
    record = EpochRecord(
        epoch=epoch,
        train_loss=train_metrics["loss"],
        train_accuracy=train_metrics["accuracy"],
        test_loss=test_metrics["loss"],
        test_accuracy=test_metrics["accuracy"],
        seconds=time.perf_counter() - start,
    )
    return state, record


def fit(
    module: nn.Module,
    variables: Variables,
    dataset: Dataset,
    *,
    epochs: int,
    batch_size: int = 128,
    learning_rate: float | None = None,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    tx: optax.GradientTransformation | None = None,
    seed: int = 0,
    augment: bool = False,
    flip: bool = False,
    progress: bool = True,
    eval_every_epoch: bool = True,
    eval_batch_size: int = 256,
) -> tuple[dict[str, Any], History]:
    """Trains ``module`` from ``variables`` on ``dataset`` and reports per-epoch metrics.

    The run is a pure function of its arguments: ``seed`` fixes the shuffling and
    augmentation order (a numpy generator) and the dropout keys. Initialising the
    variables is left to the caller, so the same loop trains from scratch or from
    transferred parameters.

    Args:
      module: Flax module returning logits, called with ``train=...``.
      variables: Initial ``{"params", ["batch_stats"]}``.
      dataset: Training and test data.
      epochs: Number of passes over the training split.
      batch_size: Training batch size.
      learning_rate: Peak learning rate; ``None`` means 0.1 for SGD, 1e-3 for Adam.
      optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"``; see :func:`make_optimizer`.
      weight_decay: Weight decay (see :func:`make_optimizer`).
      schedule: ``"cosine"`` (decay to 0 over the run) or ``"constant"``.
      tx: A custom Optax optimiser, overriding the four arguments above.
      seed: Seed for data order, augmentation and dropout.
      augment: Random-translation augmentation of training inputs.
      flip: Random horizontal flips as well (natural images only).
      progress: Show a tqdm progress bar over epochs.
      eval_every_epoch: Evaluate on the test split after every epoch; otherwise
        only after the last one.
      eval_batch_size: Batch size for evaluation.

    Returns:
      ``(variables, history)``: the trained variables (same collections as the
      input) and a :class:`History` of :class:`EpochRecord`.
    """
    # tqdm is imported here so that the checkpoint functions need only the [cli] extra.
    from tqdm.auto import tqdm

    if tx is None:
        steps = epochs * max(dataset.num_train // batch_size, 1)
        tx = _default_optimizer(optimizer, learning_rate, steps, weight_decay, schedule)
    state = create_train_state(module, variables, tx, seed=seed)
    rng = np.random.default_rng(seed)
    records = []
    bar = tqdm(range(1, epochs + 1), desc=f"fit {dataset.name}", disable=not progress, unit="ep")
    for epoch in bar:
        evaluate_now = eval_every_epoch or epoch == epochs
        state, record = _fit_epoch(
            state, dataset, epoch, (batch_size, eval_batch_size), rng, (augment, flip), evaluate_now
        )
        records.append(record)
        postfix = {"loss": f"{record.train_loss:.4f}", "acc": f"{record.train_accuracy:.3f}"}
        if record.test_accuracy is not None:
            postfix["test_acc"] = f"{record.test_accuracy:.3f}"
        bar.set_postfix(postfix)
    bar.close()
    return state.variables, History(tuple(records))


# ---------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, tree: Any) -> str:
    """Saves a pytree (variables dict, :class:`TrainState`, ...) with Orbax.

    ``path`` is made absolute (Orbax requires it) and overwritten if it exists.
    Non-array fields of a ``TrainState`` (``apply_fn``, ``tx``) are static and
    not saved; restore with a target to get them back. Blocks until written.

    Args:
      path: the checkpoint directory.
      tree: what to save.

    Returns:
      The absolute checkpoint directory.
    """
    path = os.path.abspath(os.fspath(path))
    if isinstance(tree, TrainState):
        tree = _state_to_tree(tree)
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(path, tree, force=True)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    return path


def restore_checkpoint(path: str | os.PathLike, target: Any = None) -> Any:
    """Restores a checkpoint written by :func:`save_checkpoint`.

    Args:
      path: Checkpoint directory.
      target: Optional pytree with the saved structure (e.g. a freshly created
        :class:`TrainState` or variables dict); restored arrays take its
        structure, shapes, dtypes and shardings, and a ``TrainState`` keeps its
        ``apply_fn``/``tx``. ``None`` restores the saved tree as nested dicts.

    Returns:
      The restored pytree: the target's type, or nested dicts of numpy/jax
      arrays without a target.
    """
    path = os.path.abspath(os.fspath(path))
    checkpointer = ocp.StandardCheckpointer()
    try:
        if target is None:
            return checkpointer.restore(path)
        if isinstance(target, TrainState):
            restored = checkpointer.restore(path, _state_to_tree(target))
            return _tree_to_state(target, restored)
        return checkpointer.restore(path, target)
    finally:
        checkpointer.close()


def _state_to_tree(state: TrainState) -> dict[str, Any]:
    """The array fields of a :class:`TrainState` as a dict (``None`` fields omitted)."""
    tree = {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "batch_stats": state.batch_stats,
        "dropout_key": state.dropout_key,
    }
    return {k: v for k, v in tree.items() if v is not None}


def _tree_to_state(target: TrainState, tree: Mapping[str, Any]) -> TrainState:
    """Inverse of :func:`_state_to_tree` using ``target`` for the static fields."""
    return target.replace(**tree)
