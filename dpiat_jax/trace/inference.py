"""Input inference: an example input that reproduces the source's variable shapes.

When no ``sample_input`` is given, the source's variables suggest inputs
(:func:`~dpiat_jax.trace.inputs.candidate_inputs`: images with the first kernels' input
channels at common sizes, vectors, token sequences); each is tried abstractly until the
module's init creates exactly the given shapes. The rules:

* the smallest fitting input is chosen: when a second input of the same kind also fits
  (the module pools globally, so its variables do not depend on the size), the
  candidates are tried from the smallest up, and both fits are recorded
  (:class:`InferredInput`);
* when the target's variables depend on that choice (it flattens where the source
  pools), :func:`check_choice` warns (:class:`InputInferenceWarning`) and names the
  tensors that would change: only the user knows the data's shape;
* when nothing fits, the error says why: the variables belong to another model (their
  paths differ), the module's shapes depend on an input size none of the candidates has,
  or no candidate runs the module at all (with the first error).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dpiat_jax.trace.inputs import candidate_inputs, describe, fit_problems, structure_differs
from dpiat_jax.types import ArrayTree, Variables

__all__ = [
    "InferredInput",
    "InputInferenceWarning",
    "find_fitting_input",
    "check_choice",
]

#: A trial call: an input -> ``(the variables the module creates, anything else)``.
Probe = Callable[[ArrayTree], tuple[Variables, Any]]

# Inputs tried only to explain a failure, when no candidate from the variables runs.
_GENERIC = (
    jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
    jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32),
    jax.ShapeDtypeStruct((1, 16), jnp.float32),
    jax.ShapeDtypeStruct((1, 16), jnp.int32),
)


class InputInferenceWarning(UserWarning):
    """The inferred input decides the target's shapes: pass ``sample_input=``.

    Filter it like any warning: ``warnings.simplefilter("error", InputInferenceWarning)``.

    >>> issubclass(InputInferenceWarning, UserWarning)
    True
    """


@dataclasses.dataclass(frozen=True)
class InferredInput:
    """An input inferred from the source's variable shapes.

    Attributes:
      chosen: the input used (abstract): the smallest candidate that fits.
      others: other candidates that fit the variables as well (empty when the variables
        determine the input).
      argname: the user's argument the variables came from.

    >>> x = jax.ShapeDtypeStruct((1, 4), jnp.float32)
    >>> InferredInput(x).shape
    (1, 4)
    """

    chosen: jax.ShapeDtypeStruct
    others: tuple[jax.ShapeDtypeStruct, ...] = ()
    argname: str = "src_params"

    @property
    def shape(self) -> tuple[int, ...]:
        """The chosen input's shape (what a report shows)."""
        return tuple(self.chosen.shape)


@dataclasses.dataclass(frozen=True)
class _Attempt:
    """One candidate tried: what the module created for it, or the error it raised."""

    candidate: jax.ShapeDtypeStruct
    abstract: Variables | None = None
    extra: Any = None
    error: Exception | None = None

    def fits(self, variables: Variables) -> bool:
        return self.abstract is not None and not fit_problems(self.abstract, variables)


def _attempt(probe: Probe, candidate: jax.ShapeDtypeStruct) -> _Attempt:
    try:
        abstract, extra = probe(candidate)
    except Exception as err:  # noqa: BLE001 - a candidate that does not run is recorded
        return _Attempt(candidate, error=err)
    return _Attempt(candidate, abstract, extra)


def _size(x: jax.ShapeDtypeStruct) -> int:
    return math.prod(x.shape)


def _same_kind(a: jax.ShapeDtypeStruct, b: jax.ShapeDtypeStruct) -> bool:
    """Same rank, channels and dtype: candidates that differ in their sizes only."""
    return a.ndim == b.ndim and a.shape[-1:] == b.shape[-1:] and a.dtype == b.dtype


def _smallest_fit(
    probe: Probe, first: _Attempt, candidates: list, variables: Variables
) -> tuple[_Attempt, tuple[jax.ShapeDtypeStruct, ...]]:
    """From a first fit, the smallest fit of its kind, and the other fit found.

    The other sizes are tried from the smallest up; the first one that runs decides:
    if it does not fit, the variables depend on the size (the first fit stands alone);
    if it fits, no smaller one ran, so the smaller of the two fits is the smallest.
    """
    sizes = [c for c in candidates if _same_kind(c, first.candidate) and c != first.candidate]
    for candidate in sorted(sizes, key=_size):
        trial = _attempt(probe, candidate)
        if trial.error is not None:
            continue
        if not trial.fits(variables):
            return first, ()
        small, large = sorted((trial, first), key=lambda t: _size(t.candidate))
        return small, (large.candidate,)
    return first, ()


def _no_fit_error(
    attempts: list[_Attempt], probe: Probe, variables: Variables, argname: str, name: str
) -> ValueError:
    """Why no candidate fits: another model's variables, an input size that none of the
    candidates has, or a module that none of them runs."""
    head = f"Could not infer an input for {name} from `{argname}` ({len(attempts)} candidate "
    ran = [a for a in attempts if a.error is None]
    if not ran:  # try common inputs, only to compare the structure
        ran = [a for a in (_attempt(probe, c) for c in _GENERIC) if a.error is None]
    if ran:
        closest = min(ran, key=lambda a: len(fit_problems(a.abstract, variables)))
        problems = fit_problems(closest.abstract, variables)
        shown = "\n  ".join(problems[:8])
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        if structure_differs(problems):
            why = (
                f"they do not fit {name}, whatever the input (with "
                f"{describe(closest.candidate)}):\n  {shown}{more}\nThey look like the "
                "variables of another model: pass the module they were trained with (and "
                "its configuration) as their definition (`src_def`)."
            )
        else:
            why = (
                f"{name}'s shapes depend on its input, and none of the sizes tried gives "
                f"these (closest: {describe(closest.candidate)}):\n  {shown}{more}\n"
                "Pass sample_input= with one batch of the data they were trained on."
            )
        return ValueError(f"{head}shapes tried): {why}")
    first = attempts[0] if attempts else None
    error = (
        f"{type(first.error).__name__}: {str(first.error).strip().splitlines()[0]}"
        if first is not None and str(first.error).strip()
        else "no candidate input"
    )
    return ValueError(
        f"{head}shapes tried): {name} did not run with any of them (first error: {error}). "
        "Pass sample_input= with one example batch (e.g. "
        "sample_input=jnp.zeros((1, 32, 32, 3))), or a (src_input, dst_input) pair, and "
        "call_kwargs= for its __call__ arguments."
    )


def find_fitting_input(
    probe: Probe, variables: Variables, argname: str, module_name: str
) -> tuple[InferredInput, Any]:
    """Returns the smallest candidate input whose trial call fits ``variables``.

    Args:
      probe: a trial call: an input -> ``(the variables the module creates, extra)``.
      variables: the variables the input must reproduce.
      argname: the user's argument they came from, for messages.
      module_name: the module's class name, for messages.

    Returns:
      ``(InferredInput, extra)``, ``extra`` from the chosen input's trial call.

    Raises:
      ValueError: no candidate fits; the message says why (another model's variables,
        an input size the candidates lack, or a call that fails) and asks for
        ``sample_input=``.

    >>> import flax.linen as nn
    >>> class Pool(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Conv(2, (3, 3))(x).mean((1, 2))
    >>> variables = {"params": {"Conv_0": {"kernel": np.zeros((3, 3, 3, 2)),
    ...                                    "bias": np.zeros(2)}}}
    >>> probe = lambda x: (jax.eval_shape(Pool().init, jax.random.key(0), x), None)
    >>> found, _ = find_fitting_input(probe, variables, "src_params", "Pool")
    >>> found.shape, [x.shape for x in found.others]
    ((1, 4, 4, 3), [(1, 32, 32, 3)])
    """
    candidates = list(candidate_inputs(variables))
    attempts: list[_Attempt] = []
    for candidate in candidates:
        attempts.append(_attempt(probe, candidate))
        if attempts[-1].fits(variables):
            chosen, others = _smallest_fit(probe, attempts[-1], candidates, variables)
            return InferredInput(chosen.candidate, others, argname), chosen.extra
    raise _no_fit_error(attempts, probe, variables, argname, module_name)


def _flat_shapes(variables: Variables) -> dict[tuple[str, ...], tuple[int, ...]]:
    flat = traverse_util.flatten_dict(dict(variables))
    return {tuple(str(k) for k in key): tuple(np.shape(v)) for key, v in flat.items()}


def check_choice(
    trace: Callable[[ArrayTree], Variables],
    variables: Variables,
    inferred: InferredInput | None,
    argname: str = "dst_def",
) -> None:
    """Warns when a model's variables depend on which fitting input was inferred.

    Args:
      trace: the model's trial call: an input -> the variables it creates.
      variables: the variables it created with ``inferred.chosen``.
      inferred: the source's inferred input (None when ``sample_input`` was given).
      argname: the model's argument, for the warning.

    Warns:
      InputInferenceWarning: the input was inferred, another input fits the source as
        well, and with it the model's variables differ (the first differing tensors
        are named). A model that does not run with the other input is not compared.

    >>> import flax.linen as nn
    >>> x, y = (jax.ShapeDtypeStruct(s, jnp.float32) for s in ((1, 4), (1, 8)))
    >>> trace = lambda v: jax.eval_shape(nn.Dense(2).init, jax.random.key(0), v)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     check_choice(trace, trace(x), InferredInput(x, (y,)))
    >>> str(caught[0].message)[:61]
    'sample_input was not given, so it was inferred from `src_para'
    """
    if inferred is None or not inferred.others:
        return
    other = inferred.others[0]
    try:
        other_shapes = _flat_shapes(trace(other))
    except Exception:  # noqa: BLE001 - a model that does not run with it has no say
        return
    chosen_shapes = _flat_shapes(variables)
    changed = [
        f"{'/'.join(k)} is {v} with {inferred.shape} but {other_shapes.get(k)} with "
        f"{tuple(other.shape)}"
        for k, v in chosen_shapes.items()
        if other_shapes.get(k) != v
    ]
    if not changed:
        return
    warnings.warn(
        f"sample_input was not given, so it was inferred from `{inferred.argname}`: "
        f"{describe(inferred.chosen)}, the smallest input they fit ({tuple(other.shape)} "
        f"fits them too). `{argname}`'s variables depend on that choice: "
        f"{'; '.join(changed[:3])}. Pass sample_input= with one batch of your data (or a "
        "(src_input, dst_input) pair).",
        InputInferenceWarning,
        stacklevel=2,
    )
