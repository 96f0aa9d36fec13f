"""Flax NNX models in the pipeline: an NNX model stands for a definition and its variables.

An NNX model holds its own state, so it replaces the ``(module, variables)`` pair that a
linen model needs. This module gives the two views the pipeline uses: the module
hierarchy in call order (recorded while the model runs abstractly under
``jax.eval_shape``, with each module class's ``__call__`` wrapped for the duration) with
the model's variables as a linen-style variables dict (``nnx.Param`` -> ``"params"``,
``nnx.BatchStat`` -> ``"batch_stats"``, other variable types by their class name; RNG
state is not transferable and is left out); and the way back, a copy of a target model
whose variables are replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx, traverse_util

from dpiat_jax.layers import ModuleCall, ModuleNode, build_hierarchy

__all__ = ["is_nnx", "nnx_variables", "trace_nnx", "with_variables"]


def is_nnx(obj: Any) -> bool:
    """Whether ``obj`` is a Flax NNX model (an ``nnx.Module`` instance)."""
    return isinstance(obj, nnx.Module)


def _collection(variable: Any) -> str | None:
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


def _variables(model: nnx.Module) -> list[tuple[tuple[str, ...], str, Any]]:
    """``(path, collection, Variable)`` of every transferable variable of a model."""
    out = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Variable):
            collection = _collection(node)
            if collection is not None:
                out.append((tuple(str(p) for p in path), collection, node))
    return out


def nnx_variables(model: nnx.Module) -> dict[str, Any]:
    """A linen-style variables dict (collection -> nested dict) of a model's state."""
    flat = {(c, *path): _value(v) for path, c, v in _variables(model)}
    return traverse_util.unflatten_dict(flat) if flat else {}


def _record_order(model: nnx.Module, sample_input: Any, kwargs: Mapping[str, Any]):
    """Runs the model abstractly; returns its modules' paths in first-call order."""
    classes = {type(m) for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)}
    owners = {
        k for cls in classes for k in cls.__mro__ if "__call__" in vars(k) and k is not object
    }
    order: list[tuple] = []
    graphdef, state = nnx.split(model)

    def run(state, x):
        m = nnx.merge(graphdef, state)
        paths = {id(mod): p for p, mod in nnx.iter_graph(m) if isinstance(mod, nnx.Module)}
        calls: list[int] = []
        originals = {k: vars(k)["__call__"] for k in owners}

        def wrap(fn):
            def wrapper(self, *args, **kw):
                calls.append(id(self))
                return fn(self, *args, **kw)

            return wrapper

        try:
            for k, fn in originals.items():
                k.__call__ = wrap(fn)
            out = m(x, **kwargs)
        finally:
            for k, fn in originals.items():
                k.__call__ = fn
        seen = set()
        for i in calls:
            if i in paths and i not in seen:
                seen.add(i)
                order.append(paths[i])
        return out

    jax.eval_shape(run, state, sample_input)
    return order


def trace_nnx(
    model: nnx.Module, sample_input: Any, kwargs: Mapping[str, Any] | None = None
) -> tuple[ModuleNode, dict[str, Any]]:
    """Returns ``(hierarchy, variables)`` of an NNX model, its modules in call order.

    Modules that own variables but are never called keep a place after the called
    ones, in definition order, so nothing the model owns is left behind.
    """
    kwargs = dict(kwargs or {})
    order = _record_order(model, sample_input, kwargs)
    by_path = {
        tuple(str(x) for x in p): m for p, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)
    }
    paths = [tuple(str(x) for x in p) for p in order]
    if () not in paths:
        paths.insert(0, ())
    owners = {path[:-1] for path, _, _ in _variables(model)}
    paths += [p for p in by_path if p in owners and p not in paths]
    calls = [
        ModuleCall(
            p,
            type(by_path[p]),
            {"feature_group_count": getattr(by_path[p], "feature_group_count", None)},
        )
        for p in paths
    ]
    variables = nnx_variables(model)
    return build_hierarchy(calls, variables), variables


def with_variables(model: nnx.Module, variables: Mapping[str, Any]) -> nnx.Module:
    """Returns a copy of ``model`` whose variables take the values in ``variables``
    (a linen-style dict as from :func:`nnx_variables`); ``model`` is not changed."""
    copy = nnx.clone(model)
    flat = traverse_util.flatten_dict(variables)
    flat = {tuple(str(k) for k in key): v for key, v in flat.items()}
    for path, collection, variable in _variables(copy):
        key = (collection, *path)
        if key in flat:
            if hasattr(variable, "set_value"):
                variable.set_value(flat[key])
            else:
                variable.value = flat[key]
    return copy
