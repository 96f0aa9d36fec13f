"""Arguments: what a user passes, normalised before any stage runs.

* ``sample_input`` and ``call_kwargs`` are one value for both models or a
  ``(src, dst)`` pair (:func:`split_inputs`, :func:`split_kwargs`). One input is an
  array; several positional inputs are an :class:`~dpiat_jax.trace.inputs.Inputs`
  record (``dpiat_jax.Inputs(x, mask)``); a 2-tuple is always a pair, and a tuple inside
  a pair is that model's positional inputs: ``(x, y)`` gives ``x`` to the source and
  ``y`` to the target, ``Inputs(x, y)`` or ``((x, y), (x, y))`` gives both models the
  two inputs ``x, y``;
* ``rng`` is a PRNG key (``jax.random.key(0)``, or a legacy ``jax.random.PRNGKey(0)``)
  or an int seed (:func:`as_key`);
* source variables come as a variables dict (``{"params": ..., "batch_stats": ...}``),
  only its params collection, a ``FrozenDict`` of either, an NNX model, a Hugging Face
  Flax model object (its ``params``), or a ``flax.training.train_state.TrainState``
  (any object with ``.params`` and, optionally, ``.batch_stats``: :func:`is_train_state`)
  (:func:`as_variables`); a transfer returns the target's variables in the same form
  (the target's adapter, :mod:`dpiat_jax.trace.adapter`, restores it), except that a
  TrainState comes back as a plain variables dict (a TrainState needs an optimizer,
  which the transfer does not own: ``state.replace(params=out["params"])`` or
  ``TrainState.create(apply_fn=..., params=out["params"], tx=...)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpiat_jax.trace.adapter import model_variables
from dpiat_jax.trace.huggingface import is_hf_model
from dpiat_jax.trace.inputs import Inputs, one_input, split_pair
from dpiat_jax.types import ArrayTree, PRNGKey

__all__ = [
    "Inputs",
    "VariablesForm",
    "as_key",
    "as_variables",
    "is_input",
    "is_train_state",
    "split_inputs",
    "split_kwargs",
    "train_state_variables",
]

_ONE_INPUT = (
    " One input is an array (or jax.ShapeDtypeStruct) for both models, several positional "
    "inputs are dpiat_jax.Inputs(x, y); a pair is (src_input, dst_input), whose entries "
    "may be tuples of positional inputs."
)


def is_input(x: Any) -> bool:
    """Whether ``x`` is the input of one call, for both models (not a pair).

    Args:
      x: a ``sample_input`` value.

    Returns:
      True for an array, a tracer, a ``jax.ShapeDtypeStruct`` or an
      :class:`~dpiat_jax.trace.inputs.Inputs` record.

    >>> is_input(np.zeros(3)), is_input((np.zeros(3), np.zeros(3)))
    (True, False)
    """
    return isinstance(x, Inputs) or (hasattr(x, "shape") and hasattr(x, "dtype"))


def split_inputs(sample_input: ArrayTree | None) -> tuple[ArrayTree | None, ArrayTree | None]:
    """Returns ``(source input, target input)`` from one input or a pair.

    The rule (documented in this module): an array or an ``Inputs`` record is one input
    for both models; a 2-tuple or 2-list is a ``(src, dst)`` pair whose tuple entries are
    positional inputs (``Inputs``).

    Args:
      sample_input: None, one input, or a ``(src_input, dst_input)`` pair.

    Returns:
      The two inputs (None where not given; an ``Inputs`` record for several).

    Raises:
      TypeError: for anything else, naming ``sample_input`` and the rule.

    >>> x, y = np.zeros((1, 3)), np.zeros((1, 2))
    >>> split_inputs(None)
    (None, None)
    >>> split_inputs(Inputs(x, y))[1]
    Inputs(shape (1, 3) dtype float64, shape (1, 2) dtype float64)
    >>> [v.shape for v in split_inputs((x, y))]
    [(1, 3), (1, 2)]
    """
    shape = isinstance(sample_input, (tuple, list)) and len(sample_input) > 0
    if shape and all(isinstance(n, int) and not isinstance(n, bool) for n in sample_input):
        raise TypeError(
            f"`sample_input` is {tuple(sample_input)!r}, a shape: pass an input of that shape, "
            f"e.g. sample_input=jnp.zeros({tuple(sample_input)!r}) (a 2-tuple is read as a "
            "(src_input, dst_input) pair)."
        )
    src, dst = split_pair(sample_input, "sample_input", is_single=is_input, hint=_ONE_INPUT)
    return one_input(src), one_input(dst)


def as_key(rng: Any, argname: str = "rng") -> PRNGKey | None:
    """Returns ``rng`` as a PRNG key: a key is kept, an int seed becomes ``key(seed)``.

    Args:
      rng: None, a typed key (``jax.random.key``), a legacy ``uint32[2]`` key
        (``jax.random.PRNGKey``) or an integer seed (a Python int or an integer scalar
        array, traced or not).
      argname: the user's argument, for the error message.

    Returns:
      None for None, the key as given, or ``jax.random.key(rng)`` for a seed.

    Raises:
      TypeError: anything else, naming ``argname`` and what to pass.

    >>> as_key(0).dtype
    key<fry>
    >>> as_key(jax.random.PRNGKey(0)).shape
    (2,)
    """
    if rng is None:
        return None
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        return jax.random.key(int(rng))
    dtype = getattr(rng, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return rng
    if dtype == jnp.uint32 and np.shape(rng) == (2,):
        return rng  # a legacy jax.random.PRNGKey
    if dtype is not None and jnp.issubdtype(dtype, jnp.integer) and np.ndim(rng) == 0:
        return jax.random.key(rng)
    shown = f"{type(rng).__name__} {rng!r}" if dtype is None else f"array {dtype}{np.shape(rng)}"
    raise TypeError(
        f"`{argname}` must be a PRNG key (jax.random.key(0), or a legacy "
        f"jax.random.PRNGKey(0)) or an int seed, got {shown}."
    )


def split_kwargs(call_kwargs: Any) -> tuple[Any, Any]:
    """Returns ``(source kwargs, target kwargs)`` from one mapping or a pair.

    Args:
      call_kwargs: None, one mapping, or a ``(src_kwargs, dst_kwargs)`` pair.

    Returns:
      The two keyword mappings (None where not given).

    Raises:
      TypeError: for anything else, naming ``call_kwargs``.

    >>> split_kwargs(({"train": False}, None))
    ({'train': False}, None)
    """
    return split_pair(call_kwargs, "call_kwargs", is_single=lambda x: isinstance(x, Mapping))


@dataclasses.dataclass(frozen=True)
class VariablesForm:
    """How the user gave source variables, so the result comes back alike.

    Attributes:
      whole: a variables dict with a top-level ``"params"`` (or an NNX model); False
        for only the params collection.
      frozen: a ``flax.core.FrozenDict``.

    >>> VariablesForm(whole=False).frozen
    False
    """

    whole: bool = True
    frozen: bool = False


def is_train_state(obj: Any) -> bool:
    """Whether ``obj`` is a train state: a ``flax.training.train_state.TrainState``, or
    any object with ``.params`` (and optionally ``.batch_stats``) as flax and optax users
    build it.

    Args:
      obj: what a user passes as source variables.

    Returns:
      True for an object (not a mapping, a module or a Hugging Face model object) with
      a ``params`` attribute.

    >>> from types import SimpleNamespace
    >>> is_train_state(SimpleNamespace(params={})), is_train_state({"params": {}})
    (True, False)
    """
    if isinstance(obj, (Mapping, nn.Module, type)) or is_hf_model(obj):
        return False
    try:
        return getattr(obj, "params", None) is not None
    except Exception:  # noqa: BLE001 - a property that refuses: not a train state
        return False


def train_state_variables(state: Any, argname: str) -> dict:
    """Returns a train state's variables: its ``params``, and its ``batch_stats`` where
    it has them.

    Args:
      state: a train state (:func:`is_train_state`).
      argname: the user's argument, for the error message.

    Returns:
      A plain variables dict ``{"params": ..., "batch_stats": ...}`` (a ``params`` that
      is itself a whole variables dict is kept as one).

    Raises:
      TypeError: ``state.params`` (or ``state.batch_stats``) is not a mapping.

    >>> from types import SimpleNamespace
    >>> state = SimpleNamespace(params={"w": 1}, batch_stats={"mean": 0})
    >>> train_state_variables(state, "src_params")
    {'params': {'w': 1}, 'batch_stats': {'mean': 0}}
    """
    name = type(state).__name__
    params = state.params
    if not isinstance(params, Mapping):
        raise TypeError(
            f"`{argname}` is a {name} whose .params is a {type(params).__name__}, not a "
            "params collection (a nested dict of arrays)."
        )
    plain = flax.core.unfreeze(params)
    out = plain if isinstance(plain.get("params"), Mapping) else {"params": plain}
    stats = getattr(state, "batch_stats", None)
    if stats is not None:
        if not isinstance(stats, Mapping):
            raise TypeError(
                f"`{argname}` is a {name} whose .batch_stats is a "
                f"{type(stats).__name__}, not a collection (a nested dict of arrays)."
            )
        out["batch_stats"] = flax.core.unfreeze(stats)
    return out


def as_variables(tree: Any, argname: str) -> tuple[dict, VariablesForm]:
    """Returns a plain variables dict and the form it was given in.

    Args:
      tree: a variables dict, a params collection, a FrozenDict of either, an NNX model,
        a Hugging Face Flax model object (its ``params``) or a train state (its
        ``params`` and ``batch_stats``, :func:`train_state_variables`).
      argname: the user's argument, for the error message.

    Returns:
      ``(variables, form)`` with ``variables`` a plain dict holding ``"params"``; the
      form of a model object or a train state is the whole, plain dict.

    Raises:
      TypeError: ``tree`` is none of these (a Hugging Face model built without
        parameters, ``_do_init=False``, says so).

    >>> as_variables({"dense": {"bias": 0}}, "src_params")
    ({'params': {'dense': {'bias': 0}}}, VariablesForm(whole=False, frozen=False))
    """
    own = model_variables(tree)
    if own is not None:
        return own, VariablesForm()
    if is_hf_model(tree):
        raise TypeError(
            f"`{argname}` is a {type(tree).__name__} built without parameters "
            "(_do_init=False): pass its parameters as the variables."
        )
    if is_train_state(tree):
        return train_state_variables(tree, argname), VariablesForm()
    if not isinstance(tree, Mapping):
        raise TypeError(
            f"`{argname}` must be a Flax variables dict ({{'params': ...}}), a params "
            "collection (a nested dict of arrays), a TrainState, a Hugging Face Flax "
            f"model or an NNX model, got {type(tree).__name__}."
        )
    frozen = isinstance(tree, flax.core.FrozenDict)
    plain = flax.core.unfreeze(tree) if frozen else dict(tree)
    if "params" in plain and isinstance(plain["params"], Mapping):
        return plain, VariablesForm(True, frozen)
    return {"params": plain}, VariablesForm(False, frozen)
