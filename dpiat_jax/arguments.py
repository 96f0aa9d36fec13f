"""Arguments: what a user passes, normalised before any stage runs.

* ``sample_input`` and ``call_kwargs`` are one value for both models or a
  ``(src, dst)`` pair (:func:`split_inputs`, :func:`split_kwargs`);
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

from dpiat_jax.trace.adapter import model_variables
from dpiat_jax.trace.inputs import split_pair

__all__ = [
    "VariablesForm",
    "as_variables",
    "is_input",
    "split_inputs",
    "split_kwargs",
]


def is_input(x: Any) -> bool:
    """Whether ``x`` is one input batch (it has a shape and a dtype), not a pair.

    Args:
      x: a ``sample_input`` value.

    Returns:
      True for an array, a tracer or a ``jax.ShapeDtypeStruct``.

    >>> import numpy as np
    >>> is_input(np.zeros(3)), is_input((np.zeros(3), np.zeros(3)))
    (True, False)
    """
    return hasattr(x, "shape") and hasattr(x, "dtype")


def split_inputs(sample_input: Any) -> tuple[Any, Any]:
    """Returns ``(source input, target input)`` from one input or a pair.

    Args:
      sample_input: None, one batch, or a ``(src_input, dst_input)`` pair.

    Returns:
      The two inputs (None where not given).

    Raises:
      TypeError: for anything else, naming ``sample_input``.

    >>> split_inputs(None)
    (None, None)
    """
    return split_pair(sample_input, "sample_input", is_single=is_input)


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
