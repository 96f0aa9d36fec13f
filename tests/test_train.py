"""Tests for dpiat_jax.experiments.train: learning, reproducibility, evaluation, checkpoints."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpiat_jax.experiments import data, train


class TinyMLP(nn.Module):
    """Two-layer perceptron with dropout (exercises the dropout key)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(32)(x))
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class TinyCNN(nn.Module):
    """One conv layer with batch norm (exercises batch_stats)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(16, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(x)


@pytest.fixture(scope="module")
def digits():
    return data.load_digits().take(512, 256)


def _init(module, dataset, seed=0):
    return module.init(jax.random.PRNGKey(seed), jnp.zeros((1, *dataset.input_shape)))


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    "module, kwargs",
    [
        (TinyMLP(), dict(optimizer="adam", learning_rate=1e-2)),
        (TinyCNN(), dict(optimizer="sgd", learning_rate=0.1)),
    ],
    ids=["mlp-adam", "cnn-bn-sgd"],
)
def test_fit_decreases_loss(digits, module, kwargs):
    variables = _init(module, digits)
    before = train.evaluate(variables, digits.x_test, digits.y_test, module=module)
    trained, history = train.fit(
        module, variables, digits, epochs=4, batch_size=32, progress=False, **kwargs
    )
    assert len(history) == 4 and [r.epoch for r in history] == [1, 2, 3, 4]
    assert history.final.train_loss < history[0].train_loss
    assert history.final.test_loss < before["loss"]
    assert history.final.test_accuracy > 0.5
    assert set(trained) == set(variables)
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), trained, variables)
    if "batch_stats" in variables:
        assert not np.allclose(
            trained["batch_stats"]["BatchNorm_0"]["mean"],
            variables["batch_stats"]["BatchNorm_0"]["mean"],
        )
    after = train.evaluate(trained, digits.x_test, digits.y_test, module=module)
    assert after["accuracy"] == pytest.approx(history.final.test_accuracy)


def test_fit_is_reproducible_by_seed(digits):
    module = TinyCNN()
    variables = _init(module, digits)

    def run(seed):
        return train.fit(
            module,
            variables,
            digits,
            epochs=2,
            batch_size=64,
            seed=seed,
            augment=True,
            progress=False,
            eval_every_epoch=False,
        )

    (v1, h1), (v2, h2), (v3, _) = run(0), run(0), run(1)
    _assert_trees_equal(v1, v2)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in h1.to_dicts()]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in h2.to_dicts()]
    assert h1[0].test_loss is None and h1.final.test_loss is not None
    assert not np.allclose(v1["params"]["Dense_0"]["kernel"], v3["params"]["Dense_0"]["kernel"])


def test_train_step_updates_state_and_dropout_depends_on_step(digits):
    module = TinyMLP()
    state = train.create_train_state(module, _init(module, digits), optax.sgd(0.0))
    assert state.batch_stats is None and int(state.step) == 0
    x, y = digits.x_train[:32], digits.y_train[:32]
    state1, m1 = train.train_step(state, x, y)
    state2, m2 = train.train_step(state1, x, y)
    assert int(state2.step) == 2 and float(m1["count"]) == 32
    # Learning rate 0: params unchanged, so a different loss comes from dropout alone.
    assert float(m1["loss"]) != float(m2["loss"])


def test_evaluate_pads_last_batch_correctly(digits):
    module = TinyCNN()
    state = train.create_train_state(module, _init(module, digits), optax.sgd(0.1))
    state, _ = train.train_step(state, digits.x_train[:64], digits.y_train[:64])
    x, y = digits.x_test[:100], digits.y_test[:100]
    whole = train.evaluate(state, x, y, batch_size=100)
    padded = train.evaluate(state, x, y, batch_size=32)
    assert padded["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert padded["accuracy"] == pytest.approx(whole["accuracy"])


def test_make_optimizer_rejects_unknown_names():
    with pytest.raises(ValueError):
        train.make_optimizer("rmsprop", 0.1, 10)
    with pytest.raises(ValueError):
        train.make_optimizer("sgd", 0.1, 10, schedule="step")


def test_checkpoint_round_trip_variables(digits, tmp_path):
    module = TinyCNN()
    variables = _init(module, digits)
    path = train.save_checkpoint(tmp_path / "vars", variables)
    restored = train.restore_checkpoint(path)
    assert isinstance(restored, dict)
    _assert_trees_equal(restored, variables)
    assert all(isinstance(leaf, np.ndarray | jax.Array) for leaf in jax.tree.leaves(restored))
    # Overwriting is allowed, and a target fixes the structure.
    other = _init(module, digits, seed=1)
    train.save_checkpoint(tmp_path / "vars", other)
    _assert_trees_equal(train.restore_checkpoint(path, target=variables), other)


def test_checkpoint_round_trip_train_state(digits, tmp_path):
    module = TinyCNN()
    tx = optax.sgd(0.1, momentum=0.9)
    state = train.create_train_state(module, _init(module, digits), tx, seed=3)
    x, y = digits.x_train[:32], digits.y_train[:32]
    for _ in range(2):
        state, _ = train.train_step(state, x, y)
    path = train.save_checkpoint(tmp_path / "state", state)

    fresh = train.create_train_state(module, _init(module, digits, seed=5), tx)
    restored = train.restore_checkpoint(path, target=fresh)
    assert isinstance(restored, train.TrainState)
    assert int(restored.step) == 2
    _assert_trees_equal(restored, state)
    # Training resumes exactly where it stopped.
    _assert_trees_equal(train.train_step(restored, x, y), train.train_step(state, x, y))

    raw = train.restore_checkpoint(path)
    assert set(raw) == {"step", "params", "opt_state", "batch_stats", "dropout_key"}
    _assert_trees_equal(raw["params"], state.params)
