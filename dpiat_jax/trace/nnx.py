"""Flax NNX models in the pipeline: an NNX model stands for a definition and its variables.

An NNX model holds its own state, so it replaces the ``(module, variables)`` pair that a
linen model needs. This module gives the two views the pipeline uses: the module
hierarchy in call order with the model's variables as a linen-style variables dict
(``nnx.Param`` -> ``"params"``, ``nnx.BatchStat`` -> ``"batch_stats"``, other variable
types by their class name; RNG state is not transferable and is left out); and the way
back, a copy of a target model whose variables are replaced.

How calls are recorded, without patching any class: the model is split and merged again
inside ``jax.eval_shape`` (:func:`nnx.split` / :func:`nnx.merge`), which gives a private
copy of its modules that nothing else can reach. Each module of that copy whose class
has a ``__call__`` is given a *recording subclass* of its class (made once per class and
cached; it only appends the module's identity to the recorder of the current context and
calls the original ``__call__``). The recorder lives in a :mod:`contextvars` variable, so
concurrent traces in several threads never see each other's calls, and the user's model
and classes are never changed: tracing is thread-safe without a lock around the model.
"""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from dpiat_jax.layers import ModuleCall, ModuleNode, build_hierarchy
from dpiat_jax.stacking import inserted_axes
from dpiat_jax.trace.inputs import positional
from dpiat_jax.trace.linen import local_shapes
from dpiat_jax.types import ArrayTree, Shape, Variables

#: An ``nnx.Module`` instance (``flax.nnx`` is imported only when one is handled).
NnxModule = Any

__all__ = ["is_nnx", "nnx_variables", "trace_nnx", "with_variables"]


def is_nnx(obj: Any) -> bool:
    """Whether ``obj`` is a Flax NNX model (an ``nnx.Module`` instance).

    ``flax.nnx`` is not imported here: an object can only be an NNX module once the
    user has imported ``flax.nnx`` (which imports optax), so ``import dpiat_jax`` stays
    free of both.

    Args:
      obj: anything.

    Returns:
      True for an ``nnx.Module`` instance.

    >>> import flax.linen as nn
    >>> is_nnx(nn.Dense(3))
    False
    """
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(obj, nnx.Module)


def _nnx() -> Any:
    """The ``flax.nnx`` module, imported on first use (by a caller that holds a model)."""
    from flax import nnx

    return nnx


def _collection(variable: Any) -> str | None:
    nnx = _nnx()
    kind = getattr(variable, "type", type(variable))
    if not isinstance(kind, type):
        kind = type(variable)
    if issubclass(kind, nnx.RngState):
        return None
    if issubclass(kind, nnx.Param):
        return "params"
    if issubclass(kind, nnx.BatchStat):
        return "batch_stats"
    return kind.__name__.lower()


def _value(variable: Any) -> Any:
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


def _variables(model: NnxModule) -> list[tuple[tuple[str, ...], str, Any]]:
    """``(path, collection, Variable)`` of every transferable variable of a model."""
    nnx = _nnx()
    out = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Variable):
            collection = _collection(node)
            if collection is not None:
                out.append((tuple(str(p) for p in path), collection, node))
    return out


def nnx_variables(model: NnxModule) -> dict[str, Any]:
    """A linen-style variables dict of an NNX model's state.

    Args:
      model: an ``nnx.Module``.

    Returns:
      collection (``"params"``, ``"batch_stats"``, other variable types by their
      lower-cased class name) -> nested dict of the model's arrays (RNG state left out).

    >>> from flax import nnx
    >>> variables = nnx_variables(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> {k: v.shape for k, v in variables["params"].items()}
    {'bias': (3,), 'kernel': (2, 3)}
    """
    flat = {(c, *path): _value(v) for path, c, v in _variables(model)}
    return traverse_util.unflatten_dict(flat) if flat else {}


#: The calls recorded by the trace running in this context (thread or task), if any.
_RECORDER: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar(
    "dpiat_jax_nnx_calls", default=None
)
_RECORDING_CLASSES: dict[type, type] = {}
_RECORDING_LOCK = threading.Lock()


def _recording_class(cls: type) -> type:
    """The subclass of ``cls`` whose ``__call__`` records the module, then runs ``cls``'s.

    Made once per class (creating an NNX class registers it with JAX and NNX, so it is
    not repeated); the lock only guards the cache, and is released by ``with``.
    """
    with _RECORDING_LOCK:
        sub = _RECORDING_CLASSES.get(cls)
        if sub is None:

            def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
                recorder = _RECORDER.get()
                if recorder is not None:
                    recorder.record(self)
                return cls.__call__(self, *args, **kwargs)

            namespace = {"__call__": __call__, "__module__": cls.__module__}
            namespace["__qualname__"] = cls.__qualname__
            options = {}
            if hasattr(cls, "_pytree__is_pytree"):
                options["pytree"] = cls._pytree__is_pytree
            sub = _RECORDING_CLASSES[cls] = type(cls)(cls.__name__, (cls,), namespace, **options)
        return sub


def _has_call(cls: type) -> bool:
    """Whether instances of ``cls`` are callable (a class of its MRO defines __call__)."""
    return any("__call__" in vars(k) for k in cls.__mro__ if k is not object)


class _Recorder:
    """The calls of one traced run: module identities in call order, and the local
    variable shapes of modules that are copies made inside a transform (``nnx.scan``,
    ``nnx.vmap`` merge a copy of the module they run, with one step's variables)."""

    def __init__(self, known: Mapping[int, tuple]) -> None:
        self.known = known
        self.calls: list[int] = []
        self.copies: dict[int, tuple[type, dict, bool]] = {}

    def record(self, module: Any) -> None:
        key = id(module)
        self.calls.append(key)
        if key not in self.known and key not in self.copies:
            local, batched = local_shapes(nnx_variables(module))
            self.copies[key] = (type(module), local, batched)


def _fits(local: Mapping[tuple, Shape], flat: Mapping[tuple, Any], path: tuple) -> bool:
    """Whether a copy's local shapes are those of the module at ``path``, as they are or
    with one stacking axis inserted."""
    if not local:
        return False
    for (collection, *rel), shape in local.items():
        value = flat.get((collection, *path, *rel))
        if value is None:
            return False
        full = tuple(np.shape(value))
        if full != tuple(shape) and not inserted_axes(full, shape):
            return False
    return True


def _place_copies(
    recorder: _Recorder, paths: Mapping[int, tuple], model: NnxModule
) -> dict[int, tuple]:
    """Gives every copy made inside a transform the path of the module it copies (same
    class, fitting variables; each path once, in definition order)."""
    nnx = _nnx()
    flat = {(c, *path): _value(v) for path, c, v in _variables(model)}
    originals = [
        (tuple(str(x) for x in p), m) for p, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)
    ]
    taken = {paths[i] for i in recorder.calls if i in paths}
    placed: dict[int, tuple] = {}
    for key in dict.fromkeys(recorder.calls):
        if key not in recorder.copies:
            continue
        cls, local, _ = recorder.copies[key]
        for path, module in originals:
            base = type(module)
            if path not in taken and issubclass(cls, base) and _fits(local, flat, path):
                taken.add(path)
                placed[key] = path
                break
    return placed


def _record_order(model: NnxModule, sample_input: ArrayTree, kwargs: Mapping[str, Any]):
    """Runs the model abstractly; returns its modules' paths in first-call order and
    the local shapes of those that ran inside a transform (path -> (shapes, batched)).

    The run uses a private copy of the model (``nnx.merge`` inside ``jax.eval_shape``)
    whose callable modules are switched to recording subclasses of their classes.
    """
    nnx = _nnx()
    order: list[tuple] = []
    local: dict[tuple, tuple[dict, bool]] = {}
    graphdef, state = nnx.split(model)

    def run(state, args):
        m = nnx.merge(graphdef, state)
        # Identities are only compared within this one run of the private copy.
        paths = {}
        for p, mod in nnx.iter_graph(m):
            if isinstance(mod, nnx.Module):
                paths[id(mod)] = tuple(str(x) for x in p)
                if _has_call(type(mod)):
                    object.__setattr__(mod, "__class__", _recording_class(type(mod)))
        recorder = _Recorder(paths)
        token = _RECORDER.set(recorder)
        try:
            out = m(*args, **kwargs)
        finally:
            _RECORDER.reset(token)
        placed = _place_copies(recorder, paths, model)
        for key, path in placed.items():
            _, shapes, batched = recorder.copies[key]
            local[path] = (shapes, batched)
        seen = set()
        for i in recorder.calls:
            path = paths.get(i, placed.get(i))
            if path is not None and path not in seen:
                seen.add(path)
                order.append(path)
        return out

    jax.eval_shape(run, state, positional(sample_input))
    return order, local


def trace_nnx(
    model: NnxModule,
    sample_input: Any,
    kwargs: Mapping[str, Any] | None = None,
    variables: Variables | None = None,
) -> tuple[ModuleNode, dict[str, Any]]:
    """Returns ``(hierarchy, variables)`` of an NNX model, its modules in call order.

    Modules that own variables but are never called keep a place after the called
    ones, in definition order, so nothing the model owns is left behind.

    Args:
      model: an ``nnx.Module``.
      sample_input: one example batch (an array or a ``jax.ShapeDtypeStruct``), or an
        :class:`~dpiat_jax.trace.inputs.Inputs` record of several positional inputs; the
        model runs abstractly (``jax.eval_shape``), nothing is computed. Thread-safe:
        no class or model is patched (see the module's docstring).
      kwargs: keyword arguments of the model's ``__call__``.
      variables: the arrays (or ``jax.ShapeDtypeStruct`` leaves) the hierarchy's layers
        hold, with the structure of :func:`nnx_variables`; the model's own by default.

    Returns:
      The :class:`~dpiat_jax.layers.ModuleNode` hierarchy and the variables it holds.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> root, _ = trace_nnx(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), jnp.zeros((1, 2)))
    >>> [layer.kind for layer in root.children]
    ['dense']
    """
    nnx = _nnx()
    kwargs = dict(kwargs or {})
    order, local = _record_order(model, sample_input, kwargs)
    by_path = {
        tuple(str(x) for x in p): m for p, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)
    }
    paths = list(order)
    if () not in paths:
        paths.insert(0, ())
    owners = {path[:-1] for path, _, _ in _variables(model)}
    paths += [p for p in by_path if p in owners and p not in paths]
    calls = [
        ModuleCall(
            p,
            type(by_path[p]),
            {"feature_group_count": getattr(by_path[p], "feature_group_count", None)},
            *local.get(p, ({}, False)),
        )
        for p in paths
    ]
    variables = nnx_variables(model) if variables is None else dict(variables)
    return build_hierarchy(calls, variables), variables


def with_variables(model: NnxModule, variables: Variables) -> NnxModule:
    """A copy of an NNX model whose variables take new values.

    Args:
      model: an ``nnx.Module``; it is not changed.
      variables: a linen-style dict as from :func:`nnx_variables` (missing entries keep
        the model's values).

    Returns:
      A new model (``nnx.clone``) holding ``variables``.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> new = with_variables(model, {"params": {"bias": jnp.ones(3)}})
    >>> new.bias[...].tolist(), model.bias[...].tolist()
    ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    """
    copy = _nnx().clone(model)
    flat = traverse_util.flatten_dict(dict(variables))
    flat = {tuple(str(k) for k in key): v for key, v in flat.items()}
    for path, collection, variable in _variables(copy):
        key = (collection, *path)
        if key in flat:
            if hasattr(variable, "set_value"):
                variable.set_value(flat[key])
            else:
                variable.value = flat[key]
    return copy
