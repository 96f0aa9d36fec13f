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
  only its params collection, a ``FrozenDict`` of either, or an NNX model
  (:func:`as_variables`); a transfer returns the target's variables in the same form
  (the target's adapter, :mod:`dpiat_jax.trace.adapter`, restores it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dpiat_jax.trace.adapter import model_variables
from dpiat_jax.trace.inputs import Inputs, one_input, split_pair
from dpiat_jax.types import ArrayTree, PRNGKey

__all__ = [
    "Inputs",
    "VariablesForm",
    "as_key",
    "as_variables",
    "is_input",
    "split_inputs",
    "split_kwargs",
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


def as_variables(tree: Any, argname: str) -> tuple[dict, VariablesForm]:
    """Returns a plain variables dict and the form it was given in.

    Args:
      tree: a variables dict, a params collection, a FrozenDict of either, or an NNX
        model.
      argname: the user's argument, for the error message.

    Returns:
      ``(variables, form)`` with ``variables`` a plain dict holding ``"params"``.

    Raises:
      TypeError: ``tree`` is not a mapping (nor an NNX model).

    >>> as_variables({"dense": {"bias": 0}}, "src_params")
    ({'params': {'dense': {'bias': 0}}}, VariablesForm(whole=False, frozen=False))
    """
    own = model_variables(tree)
    if own is not None:
        return own, VariablesForm()
    if not isinstance(tree, Mapping):
        raise TypeError(
            f"`{argname}` must be a Flax variables dict ({{'params': ...}}) or a params "
            f"collection (a nested dict of arrays), got {type(tree).__name__}."
        )
    frozen = isinstance(tree, flax.core.FrozenDict)
    plain = flax.core.unfreeze(tree) if frozen else dict(tree)
    if "params" in plain and isinstance(plain["params"], Mapping):
        return plain, VariablesForm(True, frozen)
    return {"params": plain}, VariablesForm(False, frozen)
