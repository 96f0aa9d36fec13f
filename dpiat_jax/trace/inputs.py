"""Inputs: how the two models are called to discover their layers.

A Flax module only reveals its layers when it runs, so every entry point needs an input
and call keyword arguments. This module normalises what the user passes
(``sample_input`` / ``call_kwargs``, one for both models or a pair; several positional
inputs as an :class:`Inputs` record), checks them against the module's ``__call__``
signature before anything runs, and checks that variables fit their module, always with
errors that name the argument and the fix. Inferring an input from the source's variable
shapes is :mod:`dpiat_jax.trace.inference`.

The rule for ``sample_input`` (one value for both models, or a pair):

* an array (or ``jax.ShapeDtypeStruct``): one positional input, for both models;
* ``Inputs(x, y, ...)``: several positional inputs, for both models;
* a 2-tuple or 2-list ``(src, dst)``: a pair, one entry per model, each an array, an
  :class:`Inputs` record, or a tuple (the model's positional inputs, as ``Inputs``).

So ``(x, y)`` of two arrays is always a pair (the source gets ``x``, the target ``y``);
one model with two positional inputs takes ``Inputs(x, y)``, or ``((x, y), (x, y))``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dpiat_jax.types import ArrayTree, PRNGKey, Variables

__all__ = [
    "CallSpec",
    "Inputs",
    "positional",
    "one_input",
    "split_pair",
    "abstract_init",
    "candidate_inputs",
    "fits",
    "fit_problems",
    "structure_differs",
    "check_variables_fit",
    "check_module",
    "check_call",
    "abstract_tree",
    "call_kwargs_for",
    "describe",
    "init_error",
]

_BOOLEAN_FLAGS = ("train", "training", "is_training", "deterministic", "use_running_average")
_SPATIAL_SIZES = (32, 28, 8, 224, 64, 16, 40, 96, 128, 12, 48, 256, 299, 4)
_SEQUENCE_SIZES = (40, 32, 16, 8, 64, 128, 28, 100, 256, 512, 10, 4)


@dataclasses.dataclass(frozen=True, init=False)
class Inputs:
    """Several positional inputs of one call: the model runs as ``model(*inputs.args)``.

    A ``sample_input`` that is one array stands for one positional input; a model whose
    ``__call__`` takes more (``def __call__(self, x, mask)``) gets them as an ``Inputs``
    record, which is also a pytree (its leaves are the inputs' leaves).

    Attributes:
      args: the positional inputs, in order (arrays, ``jax.ShapeDtypeStruct`` leaves or
        pytrees of them).

    >>> x = Inputs(np.zeros((1, 4)), np.ones((1, 2)))
    >>> len(x.args), [leaf.shape for leaf in jax.tree.leaves(x)]
    (2, [(1, 4), (1, 2)])
    """

    args: tuple

    def __init__(self, *args: ArrayTree) -> None:
        object.__setattr__(self, "args", tuple(args))

    def __repr__(self) -> str:
        return f"Inputs({', '.join(describe(a) for a in self.args)})"


jax.tree_util.register_pytree_node(Inputs, lambda x: (x.args, None), lambda _, args: Inputs(*args))


def positional(sample_input: ArrayTree) -> tuple:
    """Returns the positional arguments a ``sample_input`` stands for.

    Args:
      sample_input: one input, or an :class:`Inputs` record of several.

    Returns:
      ``inputs.args`` for an :class:`Inputs` record, else ``(sample_input,)``.

    >>> positional(Inputs(1, 2)), positional(3)
    ((1, 2), (3,))
    """
    return sample_input.args if isinstance(sample_input, Inputs) else (sample_input,)


def one_input(value: Any) -> ArrayTree:
    """Returns one model's input from an entry of a ``(src, dst)`` pair: a tuple is that
    model's positional inputs (an :class:`Inputs` record); anything else is kept.

    Args:
      value: an array, an :class:`Inputs` record, a tuple of positional inputs or None.

    Returns:
      The input as the tracers take it.

    >>> one_input((np.zeros(2), np.zeros(3)))
    Inputs(shape (2,) dtype float64, shape (3,) dtype float64)
    """
    return Inputs(*value) if isinstance(value, tuple) else value


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """How to call a module: one input (or an :class:`Inputs` record) and keyword
    arguments.

    >>> CallSpec(np.zeros(2), {"train": False}).kwargs
    {'train': False}
    """

    sample_input: Any
    kwargs: Mapping[str, Any]


def abstract_tree(tree: Any) -> Any:
    """Returns ``tree`` with every array leaf (anything with a shape and a dtype: jax and
    numpy arrays, tracers) replaced by its ``jax.ShapeDtypeStruct``.

    Args:
      tree: a pytree (variables, an input batch).

    Returns:
      The same structure with abstract leaves; other leaves are kept.

    >>> abstract_tree({"x": np.zeros((2, 3), np.float32)})
    {'x': ShapeDtypeStruct(shape=(2, 3), dtype=float32)}
    """

    def leaf(x: Any) -> Any:
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return jax.ShapeDtypeStruct(tuple(np.shape(x)), x.dtype)
        return x

    return jax.tree.map(leaf, tree)


def check_module(module: Any, argname: str) -> nn.Module:
    """Returns ``module`` if it is a Flax linen module instance.

    Args:
      module: what the user passed as a definition.
      argname: the user's argument, for the message.

    Returns:
      ``module``.

    Raises:
      TypeError: anything else; a module class (not an instance) says so.

    >>> check_module(nn.Dense, "dst_def")
    Traceback (most recent call last):
    ...
    TypeError: `dst_def` is the class Dense, not a module instance; pass Dense(...) with ...
    """
    if isinstance(module, nn.Module):
        return module
    if isinstance(module, type) and issubclass(module, nn.Module):
        raise TypeError(
            f"`{argname}` is the class {module.__name__}, not a module instance; "
            f"pass {module.__name__}(...) with its configuration."
        )
    raise TypeError(
        f"`{argname}` must be a flax.linen.Module instance (the architecture definition), "
        f"got {type(module).__name__}."
    )


def split_pair(
    value: Any, argname: str, *, is_single: Callable[[Any], bool], hint: str = ""
) -> tuple[Any, Any]:
    """Returns ``(for_src, for_dst)`` from one value for both or a two-element pair.

    Args:
      value: None, one value (``is_single(value)``) or a 2-tuple / 2-list.
      argname: the user's argument, for the error message.
      is_single: whether a value is one value for both models.
      hint: a sentence the error adds (what one value is).

    Returns:
      The two values (the same one twice for a single value).

    Raises:
      TypeError: for anything else, naming ``argname``.

    >>> split_pair((1, 2), "x", is_single=lambda v: isinstance(v, int))
    (1, 2)
    """
    if value is None or is_single(value):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return value[0], value[1]
    length = f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""
    raise TypeError(
        f"`{argname}` must be one value for both models or a (src, dst) pair, "
        f"got {type(value).__name__}{length}.{hint}"
    )


def _rngs(rng: PRNGKey | None) -> dict[str, PRNGKey]:
    key = jax.random.key(0) if rng is None else rng
    return {"params": key, "dropout": jax.random.fold_in(key, 1)}


def _call_parameters(model: Any) -> list[inspect.Parameter] | None:
    """The parameters of ``type(model).__call__`` after ``self`` (None if unknown)."""
    try:
        sig = inspect.signature(type(model).__call__)
    except (TypeError, ValueError):
        return None
    return list(sig.parameters.values())[1:]


def _missing_flags(module: nn.Module, kwargs: Mapping[str, Any]) -> dict[str, bool]:
    """Boolean mode flags (``train``...) that ``__call__`` requires and the user left out."""
    out = {}
    for p in _call_parameters(module) or []:
        if p.name in _BOOLEAN_FLAGS and p.default is p.empty and p.name not in kwargs:
            out[p.name] = p.name in ("deterministic", "use_running_average")
    return out


def call_kwargs_for(module: nn.Module, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments to call ``module`` with: the user's, plus any required
    inference-mode flag (``train=False`` / ``deterministic=True``) they left out.

    Args:
      module: a linen module (or an NNX model).
      kwargs: the user's ``call_kwargs`` for it (None for none).

    Returns:
      A new dict.

    >>> class Net(nn.Module):
    ...     def __call__(self, x, train: bool):
    ...         return x
    >>> call_kwargs_for(Net(), None)
    {'train': False}
    """
    kwargs = dict(kwargs or {})
    kwargs.update(_missing_flags(module, kwargs))
    return kwargs


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _unknown_keywords(
    params: list[inspect.Parameter], kwargs: Mapping[str, Any], where: str
) -> str | None:
    """The complaint about keywords ``__call__`` does not take (None when all are known)."""
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    names = [p.name for p in params if p.kind is not p.VAR_POSITIONAL]
    unknown = [k for k in kwargs if k not in names]
    if not unknown:
        return None
    close = [m for k in unknown for m in difflib.get_close_matches(k, names, n=1)]
    guess = f" Did you mean {', '.join(repr(m) for m in close)}?" if close else ""
    return (
        f"`call_kwargs` holds {unknown}, which {where} does not take (its arguments: "
        f"{', '.join(names)}).{guess} Pass only keyword arguments of its __call__ (or a "
        "(src_kwargs, dst_kwargs) pair when the two models take different ones)."
    )


def _wrong_positional_count(
    params: list[inspect.Parameter], kwargs: Mapping[str, Any], given: int, where: str
) -> str | None:
    """The complaint about too few or too many positional inputs (None when they fit)."""
    positional_params = [p for p in params if p.kind in _POSITIONAL and p.name not in kwargs]
    required = [p.name for p in positional_params if p.default is p.empty]
    most = None if any(p.kind is p.VAR_POSITIONAL for p in params) else len(positional_params)
    if len(required) <= given and (most is None or given <= most):
        return None
    names = ", ".join(required or [p.name for p in positional_params])
    wanted = len(required) if given < len(required) else most
    return (
        f"`sample_input` gives {where} {given} positional input(s), but it takes {wanted} "
        f"({names}). Pass sample_input=dpiat_jax.Inputs({names}) with one batch each (for "
        "both models), or a pair whose entries are tuples: ((x, y), (x2, y2))."
    )


def check_call(
    model: Any, sample_input: ArrayTree | None, kwargs: Mapping[str, Any], argname: str
) -> None:
    """Checks ``call_kwargs`` and the number of positional inputs against ``__call__``.

    Runs before the model does, so a typo in ``call_kwargs`` or a model with two inputs
    fails with its cause instead of a failed call (or a failed input inference).

    Args:
      model: a linen module or an NNX model.
      sample_input: its input (an :class:`Inputs` record for several), or None when an
        input is to be inferred (one array).
      kwargs: the keyword arguments it is called with.
      argname: the user's argument for this model, for the message.

    Raises:
      TypeError: a keyword ``__call__`` does not take, or a wrong number of positional
        inputs; the message names ``call_kwargs`` / ``sample_input`` and the fix.
      ValueError: ``sample_input`` is None but ``__call__`` needs several inputs (no
        input can be inferred for it).

    >>> class Net(nn.Module):
    ...     def __call__(self, x, scale: float = 1.0):
    ...         return x
    >>> check_call(Net(), np.zeros((1, 3)), {"scal": 2.0}, "src_def")
    Traceback (most recent call last):
    ...
    TypeError: `call_kwargs` holds ['scal'], which Net.__call__ (`src_def`) does not ...
    """
    params = _call_parameters(model)
    if params is None:
        return
    where = f"{type(model).__name__}.__call__ (`{argname}`)"
    problem = _unknown_keywords(params, kwargs, where)
    if problem:
        raise TypeError(problem)
    given = 1 if sample_input is None else len(positional(sample_input))
    problem = _wrong_positional_count(params, kwargs, given, where)
    if problem and sample_input is None:
        raise ValueError(
            f"No input can be inferred for {where}: an input is inferred as one array, "
            f"and it takes several. {problem.split('. ', 1)[1]}"
        )
    if problem:
        raise TypeError(problem)


def abstract_init(module: nn.Module, call: CallSpec, rng: PRNGKey | None = None) -> Variables:
    """``jax.eval_shape`` of ``module.init``: the variables' shapes without computing them.

    Args:
      module: a linen module.
      call: its input (an :class:`Inputs` record for several) and keyword arguments.
      rng: the init's key (None: ``jax.random.key(0)``).

    Returns:
      The variables as ``jax.ShapeDtypeStruct`` leaves.

    >>> abstract_init(nn.Dense(2), CallSpec(np.zeros((1, 3)), {}))["params"]["bias"]
    ShapeDtypeStruct(shape=(2,), dtype=float32)
    """
    init = functools.partial(module.init, **call.kwargs)  # keyword flags stay static
    return jax.eval_shape(init, _rngs(rng), *positional(call.sample_input))


def _shape_tree(tree: Mapping[str, Any]) -> dict[tuple[str, ...], tuple[int, ...]]:
    flat = traverse_util.flatten_dict(tree)
    return {tuple(str(k) for k in key): tuple(np.shape(v)) for key, v in flat.items()}


def _mismatches(expected: Mapping, got: Mapping, collections) -> list[str]:
    out = []
    for c in collections:
        e = _shape_tree({c: expected.get(c, {})})
        g = _shape_tree({c: got.get(c, {})})
        for key in sorted(set(e) | set(g)):
            path = "/".join(key)
            if key not in g:
                out.append(f"{path}: missing (expected shape {e[key]})")
            elif key not in e:
                out.append(f"{path}: not created by the module (shape {g[key]})")
            elif e[key] != g[key]:
                out.append(f"{path}: shape {g[key]}, the module expects {e[key]}")
    return out


def fit_problems(abstract: Mapping[str, Any], variables: Mapping[str, Any]) -> list[str]:
    """Where ``variables`` differ from the structure and shapes of ``abstract``.

    Args:
      abstract: the variables a module creates (``jax.ShapeDtypeStruct`` leaves).
      variables: the variables given for it (empty collections are ignored).

    Returns:
      One line per difference: ``"collection <name>: not created by the module"``, or
      ``"<path>: missing ..."`` / ``"<path>: not created by the module ..."`` /
      ``"<path>: shape ..., the module expects ..."``; empty when they fit.

    >>> spec = jax.ShapeDtypeStruct((2,), np.float32)
    >>> fit_problems({"params": {"b": spec}}, {"params": {"b": np.zeros(3)}})
    ['params/b: shape (3,), the module expects (2,)']
    """
    present = [c for c in variables if variables[c]]
    unknown = [f"collection {c}: not created by the module" for c in present if c not in abstract]
    return unknown + _mismatches(abstract, variables, [c for c in present if c in abstract])


def structure_differs(problems: list[str]) -> bool:
    """Whether fit problems include missing or unexpected tensors (not only shapes).

    Args:
      problems: lines from :func:`fit_problems`.

    Returns:
      True when a path is missing or not created by the module.

    >>> structure_differs(["params/b: shape (3,), the module expects (2,)"])
    False
    """
    return any(": missing" in p or "not created" in p for p in problems)


def check_variables_fit(
    module: nn.Module, variables: Mapping[str, Any], abstract: Mapping[str, Any], argname: str
) -> None:
    """Raises ``ValueError`` naming the first mismatching paths when ``variables`` do not
    have the structure and shapes that ``module`` creates.

    Args:
      module: the module (for its name).
      variables: the variables given for it.
      abstract: the variables it creates.
      argname: the user's argument, for the message.

    Raises:
      ValueError: collections the module does not create, or paths missing, unexpected or
        of another shape (the first eight listed, one per line).

    >>> spec = jax.ShapeDtypeStruct((2,), np.float32)
    >>> check_variables_fit(nn.Dense(2), {"params": {"bias": np.zeros(2)}},
    ...                     {"params": {"bias": spec}}, "src_params")
    """
    unknown = [c for c in variables if c not in abstract and variables[c]]
    if unknown:
        raise ValueError(
            f"`{argname}` has collections {unknown} that {type(module).__name__} does not "
            f"create (it creates {sorted(abstract)}). Pass the variables of this module."
        )
    problems = _mismatches(abstract, variables, [c for c in variables if c in abstract])
    if problems:
        shown = "\n  ".join(problems[:8])
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        other = (
            "Their tensors differ from the module's: they look like another model's variables. "
            if structure_differs(problems)
            else ""
        )
        raise ValueError(
            f"`{argname}` does not fit {type(module).__name__}:\n  {shown}{more}\n"
            f"{other}Pass the variables trained with this exact module configuration (or, "
            "if the variables are right, the sample_input= they were trained on)."
        )


def candidate_inputs(variables: Mapping[str, Any]):
    """Plausible example inputs, most likely first, from the kernels' input sizes.

    Images of the first conv kernels' input channels at common sizes, vectors of the
    dense kernels' input sizes, and token sequences when there is an embedding.

    Args:
      variables: a variables dict (its ``"params"`` are read).

    Yields:
      ``jax.ShapeDtypeStruct`` inputs of batch size 1.

    >>> params = {"params": {"kernel": np.zeros((3, 2))}}
    >>> [x.shape for x in candidate_inputs(params)]
    [(1, 3)]
    """
    params = traverse_util.flatten_dict(variables.get("params", {}))
    image: dict[int, list[int]] = {}
    dense: list[int] = []
    seq = False
    for key, v in params.items():
        name, shape = str(key[-1]), tuple(np.shape(v))
        if name == "kernel" and len(shape) >= 3:
            image.setdefault(len(shape) - 2, []).append(shape[-2])
        elif name == "kernel" and len(shape) == 2:
            dense.append(shape[0])
        elif name == "embedding":
            seq = True
    for rank, channels in sorted(image.items(), key=lambda kv: -len(kv[1])):
        ordered = sorted(set(channels), key=lambda c: (c not in (3, 1), c > 4, c))
        sizes = _SEQUENCE_SIZES if rank == 1 else _SPATIAL_SIZES
        for c in ordered[:3]:
            for s in sizes:
                yield jax.ShapeDtypeStruct((1, *([s] * rank), c), jnp.float32)
    for d in sorted(set(dense), key=lambda d: dense.index(d))[:4]:
        yield jax.ShapeDtypeStruct((1, d), jnp.float32)
    if seq:
        for s in _SEQUENCE_SIZES:
            yield jax.ShapeDtypeStruct((1, s), jnp.int32)


def fits(abstract: Mapping[str, Any], variables: Mapping[str, Any]) -> bool:
    """Whether ``variables`` have exactly the structure and shapes of ``abstract``.

    Args:
      abstract: the variables a module creates.
      variables: the variables given for it.

    Returns:
      True when :func:`fit_problems` finds nothing.

    >>> fits({"params": {"b": np.zeros(2)}}, {"params": {"b": np.ones(2)}})
    True
    """
    return not fit_problems(abstract, variables)


def describe(x: Any) -> str:
    """A short description of an input for messages.

    Args:
      x: an input, an :class:`Inputs` record or anything else.

    Returns:
      ``"shape (1, 3) dtype float32"`` for an array, ``Inputs(...)`` for several, else
      the type's name.

    >>> describe(jax.ShapeDtypeStruct((1, 3), np.float32))
    'shape (1, 3) dtype float32'
    """
    if isinstance(x, Inputs):
        return repr(x)
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    return f"shape {tuple(shape)} dtype {dtype}" if shape is not None else type(x).__name__


def init_error(module: Any, call: CallSpec, argname: str, err: Exception) -> ValueError:
    """A readable error for a module that cannot be initialised with an input.

    Args:
      module: the linen module or NNX model.
      call: the input and keyword arguments it was called with.
      argname: the user's argument, for the message.
      err: the error the call raised.

    Returns:
      A ``ValueError`` (to raise ``from err``) naming the model, the input, the keyword
      arguments, the error's first line and what to pass instead.

    >>> str(init_error(nn.Dense(2), CallSpec(np.zeros(3), {}), "dst_def", TypeError("bad")))
    'Calling Dense.init for `dst_def` with sample_input of shape (3,) dtype float64 and ...'
    """
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(
        f"Calling {type(module).__name__}.init for `{argname}` with sample_input of "
        f"{describe(call.sample_input)} and "
        f"call_kwargs {dict(call.kwargs)} failed: {type(err).__name__}: {first}\n"
        "Pass sample_input= with one example batch the model accepts (or a "
        "(src_input, dst_input) pair; several positional inputs as dpiat_jax.Inputs(x, y)), "
        "and call_kwargs= for its __call__ arguments."
    )
