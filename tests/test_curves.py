"""Tests for dpiat_jax.experiments.curves: areas, steps to a level, BatchNorm statistics
recomputed whatever the momentum, and training runs evaluated at fixed step budgets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpiat_jax.experiments import curves, data, train
from dpiat_jax.experiments.curves import CurvePoint


def test_area_is_the_mean_over_the_run():
    curve = [CurvePoint(0, 3.0, 0.0), CurvePoint(2, 2.0, 0.5), CurvePoint(10, 1.0, 0.5)]
    # Trapezoids: (0 + 0.5) / 2 * 2 + 0.5 * 8 = 4.5 over 10 steps.
    assert curves.area(curve) == pytest.approx(0.45)
    assert curves.area(curve, "test_loss") == pytest.approx((2.5 * 2 + 1.5 * 8) / 10)
    # A run that is better early has the larger area at the same final accuracy.
    late = [CurvePoint(0, 3.0, 0.0), CurvePoint(2, 2.0, 0.1), CurvePoint(10, 1.0, 0.5)]
    assert curves.area(late) < curves.area(curve)


def test_steps_to():
    curve = [CurvePoint(0, 3.0, 0.1), CurvePoint(4, 2.0, 0.6), CurvePoint(8, 1.0, 0.9)]
    assert curves.steps_to(curve, 0.05) == 0
    assert curves.steps_to(curve, 0.6) == 4
    assert curves.steps_to(curve, 0.95) is None


class _BN(nn.Module):
    momentum: float
    features: int = 3

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(self.features)(x)
        return nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x)


@pytest.mark.parametrize("momentum", [0.9, 0.99, 0.0])
def test_recompute_batch_stats_is_the_mean_of_batch_statistics(momentum):
    model = _BN(momentum)
    x = np.random.default_rng(0).normal(2.0, 3.0, (64, 5)).astype(np.float32)
    variables = model.init(jax.random.key(0), x[:2])
    before = jax.tree.map(np.array, variables)
    fresh = curves.recompute_batch_stats(model, variables, x, 16, max_batches=4, seed=1)
    # The caller's variables are unchanged; params are carried over.
    jax.tree.map(np.testing.assert_array_equal, variables, before)
    assert fresh["params"] is variables["params"]
    # Expected: the mean over the 4 batches of each batch's mean and (biased) variance.
    order = np.random.default_rng(1).permutation(64)
    dense = variables["params"]["Dense_0"]
    h = x @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    hb = [h[order[i * 16 : (i + 1) * 16]] for i in range(4)]
    stats = fresh["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], np.mean([b.mean(0) for b in hb], 0), rtol=1e-4)
    np.testing.assert_allclose(stats["var"], np.mean([b.var(0) for b in hb], 0), rtol=1e-4)
    assert jax.tree.map(lambda a: a.dtype, fresh) == jax.tree.map(lambda a: a.dtype, variables)


def test_recompute_batch_stats_without_batch_norm_is_the_identity():
    variables = {"params": {"w": jnp.ones(2)}}
    assert curves.recompute_batch_stats(nn.Dense(2), variables, np.zeros((4, 2)), 2) is variables


def _dataset():
    return data.load_digits().take(256, 128)


def test_train_curve_points_and_determinism():
    dataset = _dataset()
    model = _BN(0.9, features=10)
    flat = dataclasses_free_flatten(dataset)
    variables = model.init(jax.random.key(0), flat.x_train[:2])
    tx = optax.sgd(0.05)
    kwargs = dict(tx=tx, total_steps=7, eval_steps=[2, 5, 40], batch_size=64, seed=3)
    run = curves.train_curve(model, variables, flat, **kwargs)
    assert [p.step for p in run] == [0, 2, 5, 7]
    # Step 0 is the start, evaluated as train.evaluate does.
    start = train.evaluate(variables, flat.x_test, flat.y_test, module=model)
    assert run[0].test_accuracy == pytest.approx(start["accuracy"])
    assert run[0].test_loss == pytest.approx(start["loss"], rel=1e-5)
    # The same seed gives the same run; another seed another data order.
    assert curves.train_curve(model, variables, flat, **kwargs) == run
    assert curves.train_curve(model, variables, flat, **{**kwargs, "seed": 4}) != run
    # Recomputed statistics change the evaluation of a BatchNorm model but not its training.
    with_bn = curves.train_curve(model, variables, flat, **kwargs, recompute_bn=True)
    assert with_bn[0] != run[0]


def dataclasses_free_flatten(dataset):
    """Digits as flat vectors, so the Dense+BatchNorm model above applies."""
    import dataclasses

    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train.reshape(len(dataset.x_train), -1),
        x_test=dataset.x_test.reshape(len(dataset.x_test), -1),
    )


def test_variables_digest():
    a = {"params": {"w": np.zeros((2, 3), np.float32)}}
    assert curves.variables_digest(a) == curves.variables_digest(jax.tree.map(jnp.asarray, a))
    digest = curves.variables_digest
    assert digest(a) != digest({"params": {"w": np.ones((2, 3))}})
    assert digest(a) != digest({"params": {"v": a["params"]["w"]}})


def test_warmup_schedule():
    tx = train.make_optimizer("sgd", 1.0, 10, warmup_steps=4, momentum=0.0)
    params = jnp.zeros(())
    state = tx.init(params)
    updates = []
    for _ in range(10):
        u, state = tx.update(jnp.ones(()), state, params)
        updates.append(-float(u))
    # Linear warm-up from 0 to the peak over 4 steps, then cosine decay towards 0.
    np.testing.assert_allclose(updates[:5], [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-6)
    assert all(a >= b for a, b in zip(updates[4:], updates[5:]))
    constant = train.make_optimizer("sgd", 1.0, 10, warmup_steps=2, schedule="constant")
    assert constant is not None
