"""Inputs: how the two models are called to discover their layers.

A Flax module only reveals its layers when it runs, so every entry point needs an input
and call keyword arguments. This module normalises what the user passes
(``sample_input`` / ``call_kwargs``, one for both models or a pair), infers an input from
the source's own variable shapes when none is given, and checks that variables fit their
module, always with errors that name the argument and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

__all__ = [
    "CallSpec",
    "split_pair",
    "abstract_init",
    "candidate_inputs",
    "find_fitting_input",
    "fits",
    "check_variables_fit",
    "check_module",
    "abstract_tree",
    "call_kwargs_for",
    "describe",
    "init_error",
]

_BOOLEAN_FLAGS = ("train", "training", "is_training", "deterministic", "use_running_average")
_SPATIAL_SIZES = (32, 28, 8, 224, 64, 16, 40, 96, 128, 12, 48, 256, 299, 4)
_SEQUENCE_SIZES = (40, 32, 16, 8, 64, 128, 28, 100, 256, 512, 10, 4)


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """How to call a module: one input and keyword arguments."""

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
    """Returns ``module`` if it is a Flax linen module; a clear ``TypeError`` otherwise."""
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


def split_pair(value: Any, argname: str, *, is_single) -> tuple[Any, Any]:
    """Returns ``(for_src, for_dst)`` from one value for both or a two-element pair."""
    if value is None or is_single(value):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return value[0], value[1]
    raise TypeError(
        f"`{argname}` must be one value for both models or a (src, dst) pair, "
        f"got {type(value).__name__}."
    )


def _rngs(rng: jax.Array | None) -> dict[str, jax.Array]:
    key = jax.random.key(0) if rng is None else rng
    return {"params": key, "dropout": jax.random.fold_in(key, 1)}


def _missing_flags(module: nn.Module, kwargs: Mapping[str, Any]) -> dict[str, bool]:
    """Boolean mode flags (``train``...) that ``__call__`` requires and the user left out."""
    try:
        sig = inspect.signature(type(module).__call__)
    except (TypeError, ValueError):
        return {}
    out = {}
    for name, p in sig.parameters.items():
        if name in _BOOLEAN_FLAGS and p.default is inspect.Parameter.empty and name not in kwargs:
            out[name] = name in ("deterministic", "use_running_average")
    return out


def call_kwargs_for(module: nn.Module, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments to call ``module`` with: the user's, plus any required
    inference-mode flag (``train=False`` / ``deterministic=True``) they left out."""
    kwargs = dict(kwargs or {})
    kwargs.update(_missing_flags(module, kwargs))
    return kwargs


def abstract_init(module: nn.Module, call: CallSpec, rng: jax.Array | None = None) -> Any:
    """``jax.eval_shape`` of ``module.init``: the variables' shapes without computing them."""
    init = functools.partial(module.init, **call.kwargs)  # keyword flags stay static
    return jax.eval_shape(init, _rngs(rng), call.sample_input)


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


def check_variables_fit(
    module: nn.Module, variables: Mapping[str, Any], abstract: Mapping[str, Any], argname: str
) -> None:
    """Raises ``ValueError`` naming the first mismatching paths when ``variables`` do not
    have the structure and shapes that ``module`` creates."""
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
        raise ValueError(
            f"`{argname}` does not fit {type(module).__name__}:\n  {shown}{more}\n"
            "Pass the variables trained with this exact module configuration (or, if the "
            "variables are right, the sample_input= they were trained on)."
        )


def candidate_inputs(variables: Mapping[str, Any]):
    """Plausible example inputs, most likely first, from the kernels' input sizes."""
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
    """Whether ``variables`` have exactly the structure and shapes of ``abstract``."""
    present = [c for c in variables if variables[c]]
    return all(c in abstract for c in present) and not _mismatches(abstract, variables, present)


def find_fitting_input(probe, variables: Mapping[str, Any], argname: str, module_name: str):
    """Tries candidate inputs until ``probe(candidate)`` gives an abstract init that fits
    ``variables``.

    ``probe`` maps an input to ``(abstract variables, extra)``; returns
    ``(candidate, extra)`` of the first fit. Raises ``ValueError`` asking for
    ``sample_input=`` when none fits.
    """
    tried = 0
    for cand in candidate_inputs(variables):
        tried += 1
        try:
            abstract, extra = probe(cand)
        except Exception:  # noqa: BLE001 - a candidate that does not run is just skipped
            continue
        if fits(abstract, variables):
            return cand, extra
    raise ValueError(
        f"Could not infer an input for {module_name} from `{argname}` "
        f"({tried} candidate shapes tried). Pass sample_input= with one example batch "
        "(e.g. sample_input=jnp.zeros((1, 32, 32, 3))), or a (src_input, dst_input) pair."
    )


def describe(x: Any) -> str:
    """A short description of an input for error messages."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    return f"shape {tuple(shape)} dtype {dtype}" if shape is not None else type(x).__name__


def init_error(module: nn.Module, call: CallSpec, argname: str, err: Exception) -> ValueError:
    """A readable error for a module that cannot be initialised with an input."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(
        f"Calling {type(module).__name__}.init for `{argname}` with sample_input of "
        f"{describe(call.sample_input)} and "
        f"call_kwargs {dict(call.kwargs)} failed: {type(err).__name__}: {first}\n"
        "Pass sample_input= with one example batch the model accepts (or a "
        "(src_input, dst_input) pair), and call_kwargs= for its __call__ arguments."
    )
