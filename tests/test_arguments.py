"""What users hold goes in as it is: train states, Hugging Face-like model objects.

A ``flax.training.train_state.TrainState`` (or any object with ``.params`` and, when it
has them, ``.batch_stats``) is accepted wherever source variables are, and carries its
definition when built with ``apply_fn=module.apply``; the result is then a plain
variables dict. A Hugging Face Flax model object (duck-typed: ``module``, ``params``,
``config``) stands for a definition, its params and a default input; a transfer to one
returns the params in the form the model keeps. The real Hugging Face families are in
``tests/compat``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax.training import train_state

import dpiat_jax
from dpiat_jax.arguments import (
    VariablesForm,
    as_variables,
    is_train_state,
    train_state_variables,
)
from dpiat_jax.trace.adapter import HfModel, adapt, hf_sample_input, is_hf_model

X = jnp.ones((2, 8, 8, 3), jnp.float32)


class Net(nn.Module):
    """A small convolutional net with batch norm."""

    width: int = 8
    depth: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        for _ in range(self.depth):
            x = nn.Conv(self.width, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.relu(x)
        return nn.Dense(4)(x.mean(axis=(1, 2)))


class StateWithStats(train_state.TrainState):
    """A train state with batch statistics, as flax's examples build it."""

    batch_stats: Any


def trained(seed: int = 0) -> dict:
    variables = Net().init(jax.random.key(seed), X)
    return jax.tree.map(lambda a: a + 0.5, variables)


def state_of(module: nn.Module, variables: dict, stats: bool = True):
    if not stats:
        return train_state.TrainState.create(
            apply_fn=module.apply, params=variables["params"], tx=optax.sgd(0.1)
        )
    return StateWithStats.create(
        apply_fn=module.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=optax.adam(1e-3),
    )


# ----------------------------------------------------------------------------------
# Train states.


def test_train_state_variables_are_its_params_and_batch_stats():
    variables = trained()
    state = state_of(Net(), variables)
    assert is_train_state(state)
    got, form = as_variables(state, "src_params")
    assert form == VariablesForm(whole=True, frozen=False)
    chex.assert_trees_all_equal(got, variables)
    assert set(got) == {"params", "batch_stats"}


def test_plain_train_state_gives_only_params_and_frozen_params_are_unfrozen():
    variables = trained()
    state = state_of(Net(), variables, stats=False)
    got, _ = as_variables(state, "src_params")
    assert set(got) == {"params"}
    frozen = state.replace(params=flax.core.freeze(variables["params"]))
    got, _ = as_variables(frozen, "src_params")
    assert type(got["params"]) is dict
    chex.assert_trees_all_equal(got["params"], variables["params"])


def test_anything_with_params_is_a_train_state():
    """An object with ``.params`` (and optionally ``.batch_stats``) as users build
    their own training loops; a whole variables dict as ``.params`` is kept whole."""
    variables = trained()
    mine = SimpleNamespace(params=variables["params"], batch_stats=variables["batch_stats"])
    chex.assert_trees_all_equal(train_state_variables(mine, "src_params"), variables)
    whole = SimpleNamespace(params=variables)
    chex.assert_trees_all_equal(train_state_variables(whole, "src_params"), variables)
    assert not is_train_state(variables) and not is_train_state(Net())


def test_transfer_from_a_train_state_equals_from_its_variables():
    variables = trained()
    state = state_of(Net(), variables)
    dst = Net(width=12, depth=3)
    expected = dpiat_jax.transfer(variables, Net(), dst, 1, sample_input=X)
    out = dpiat_jax.transfer(state, Net(), dst, 1, sample_input=X)
    assert type(out) is dict and set(out) == {"params", "batch_stats"}
    chex.assert_trees_all_equal(out, expected)


def test_train_state_carries_its_definition_and_identity_is_exact():
    variables = trained()
    state = state_of(Net(), variables)
    out = dpiat_jax.transfer(state, None, Net(), 1)  # input inferred from the variables
    chex.assert_trees_all_equal(out, variables)
    report = dpiat_jax.match(state, None, Net(width=16))
    assert report.layers_transferred == report.layers_total


def test_train_state_as_the_target_definition():
    """A target ``TrainState`` stands for its module; the result is a variables dict
    (the user makes the new state with their optimizer)."""
    dst = Net(width=16)
    target = state_of(dst, dst.init(jax.random.key(3), X))
    out = dpiat_jax.transfer(trained(), Net(), target, 1, sample_input=X)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, dst.init(jax.random.key(3), X))
    assert target.replace(params=out["params"]).params is out["params"]


def test_train_state_in_plan_match_and_similarity():
    variables = trained()
    state = state_of(Net(), variables)
    dst = Net(width=16)
    the_plan = dpiat_jax.plan(Net(), dst, src_variables=state, sample_input=X)
    chex.assert_trees_all_equal(
        the_plan.apply(state, jax.random.key(1)),
        the_plan.apply(variables, jax.random.key(1)),
    )
    report = dpiat_jax.match(state, Net(), dst, sample_input=X)
    assert report == the_plan.report
    pair = dpiat_jax.similarity((Net(), variables), dst, sample_input=X)
    assert dpiat_jax.similarity((Net(), state), dst, sample_input=X) == pair
    assert dpiat_jax.similarity(state, dst, sample_input=X) == pair


def test_unusable_train_states_are_refused_with_the_argument_named():
    broken = SimpleNamespace(params=[1, 2, 3])
    with pytest.raises(TypeError, match=r"`src_params` is a SimpleNamespace whose \.params"):
        dpiat_jax.transfer(broken, Net(), Net(), 0, sample_input=X)
    stats = SimpleNamespace(params=trained()["params"], batch_stats=3.0)
    with pytest.raises(TypeError, match=r"\.batch_stats is a float"):
        as_variables(stats, "src_variables")
    jitted = state_of(Net(), trained()).replace(apply_fn=jax.jit(Net().apply))
    with pytest.raises(TypeError, match="`src_def` is None: pass the source's linen module"):
        dpiat_jax.transfer(jitted, None, Net(), 0)
    with pytest.raises(TypeError, match="`dst_def` is a StateWithStats .* pass the module"):
        dpiat_jax.transfer(trained(), Net(), jitted, 0, sample_input=X)
    with pytest.raises(TypeError, match="TrainState, a Hugging Face Flax model"):
        dpiat_jax.transfer(3.0, Net(), Net(), 0, sample_input=X)


def test_without_source_variables_the_definition_must_hold_them():
    with pytest.raises(TypeError, match="`src_params` is None"):
        dpiat_jax.transfer(None, Net(), Net(), 0, sample_input=X)


# ----------------------------------------------------------------------------------
# Hugging Face-like model objects (duck-typed; the real ones are in tests/compat).


class TokenNet(nn.Module):
    """A text model as Hugging Face writes them: ids and a mask, ``deterministic``."""

    width: int = 8

    @nn.compact
    def __call__(self, input_ids, attention_mask, deterministic: bool = True):
        x = nn.Embed(50, self.width)(input_ids)
        x = nn.Dense(self.width)(x) * attention_mask[..., None]
        return nn.Dropout(0.1, deterministic=deterministic)(x)


class FakeHf:
    """What transformers' ``FlaxPreTrainedModel`` exposes: ``module``, ``params``
    (raising for a model built with ``_do_init=False``), ``config``, ``input_shape``."""

    def __init__(self, module: nn.Module, params: dict | None, config: Any) -> None:
        self.module, self._params, self.config, self.input_shape = module, params, config, (1, 1)

    @property
    def params(self) -> dict:
        if self._params is None:
            raise ValueError("`params` cannot be accessed from model when _do_init=False")
        return self._params


def fake_text(width: int, init: bool = True, seed: int = 0) -> FakeHf:
    module = TokenNet(width)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = module.init(jax.random.key(seed), ids, ids)["params"] if init else None
    return FakeHf(module, params, SimpleNamespace(max_position_embeddings=512))


def test_hf_like_objects_are_recognised_without_running_params():
    assert is_hf_model(fake_text(8)) and is_hf_model(fake_text(8, init=False))
    assert isinstance(adapt(fake_text(8), "dst_def"), HfModel)
    assert not is_hf_model(Net()) and not is_hf_model({"params": {}})


def test_hf_default_input_comes_from_the_config():
    model = fake_text(8)
    x = hf_sample_input(model, None, "src_def")
    assert [a.shape for a in x.args] == [(1, 16), (1, 16)]
    assert {a.dtype for a in x.args} == {jnp.dtype(jnp.int32)}
    given = hf_sample_input(model, jnp.zeros((2, 5), jnp.int32), "src_def")
    assert [a.shape for a in given.args] == [(2, 5), (2, 5)]


def test_hf_objects_go_in_whole_and_the_result_is_their_params_form():
    src = fake_text(8)
    out = dpiat_jax.transfer(None, src, fake_text(8, init=False), 1)
    chex.assert_trees_all_equal(out, src.params)  # the params collection, as HF keeps
    wider = dpiat_jax.transfer(src, None, fake_text(16, init=False), 1)
    chex.assert_trees_all_equal_shapes(wider, fake_text(16).params)
    apart = dpiat_jax.transfer(src.params, src, fake_text(16, init=False), 1)
    chex.assert_trees_all_equal(apart, wider)


def test_hf_object_without_params_needs_them():
    with pytest.raises(TypeError, match="`src_params` is None"):
        dpiat_jax.transfer(None, fake_text(8, init=False), fake_text(8), 0)
    with pytest.raises(TypeError, match=r"built without parameters \(_do_init=False\)"):
        as_variables(fake_text(8, init=False), "src_params")


class Listener(nn.Module):
    """An audio model's ``__call__``: features, then decoder token ids."""

    @nn.compact
    def __call__(self, input_features, decoder_input_ids, decoder_attention_mask=None):
        x = nn.Dense(4)(input_features).mean(1, keepdims=True)
        return x + nn.Embed(10, 4)(decoder_input_ids)


class FakeAudioHf(FakeHf):
    """A Hugging Face-like model whose ``init_weights`` passes its inputs by keyword,
    as Whisper's does (its features are no token input the config describes)."""

    def init_weights(self, rng, input_shape, params=None):
        features = jnp.zeros(input_shape, jnp.float32)
        ids = jnp.ones((input_shape[0], 1), jnp.int32)
        return self.module.init(rng, input_features=features, decoder_input_ids=ids)["params"]


def test_hf_default_input_is_what_init_weights_passes():
    model = FakeAudioHf(Listener(), None, SimpleNamespace())
    model.input_shape = (1, 6, 8)
    module = model.module
    x = hf_sample_input(model, None, "src_def")
    assert [(a.shape, a.dtype) for a in x.args] == [((1, 6, 8), jnp.float32), ((1, 1), jnp.int32)]
    assert model.module is module  # the dry run of init_weights used a copy
    source = FakeAudioHf(Listener(), model.init_weights(jax.random.key(0), (1, 6, 8)), None)
    source.input_shape = (1, 6, 8)
    out = dpiat_jax.transfer(None, source, model, 1)
    chex.assert_trees_all_equal(out, source.params)


def test_hf_required_input_that_cannot_be_built_is_named():
    class Odd(nn.Module):
        @nn.compact
        def __call__(self, input_ids, audio_features):
            return nn.Dense(2)(audio_features)

    odd = FakeHf(Odd(), None, SimpleNamespace())
    with pytest.raises(ValueError, match="no default input for its module's `audio_features`"):
        hf_sample_input(odd, None, "dst_def")
