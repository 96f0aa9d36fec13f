"""The linen trace adapter: a linen module's submodules in call order.

:func:`trace` runs a linen module abstractly (``jax.eval_shape`` of its ``init``) under
``nn.intercept_methods`` and records the order in which submodules are first called;
:func:`~dpiat_jax.layers.build_hierarchy` turns those calls and the variables into the
:class:`~dpiat_jax.layers.ModuleNode` hierarchy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax

from dpiat_jax.layers import ModuleCall, ModuleNode, build_hierarchy
from dpiat_jax.types import ModulePath

__all__ = ["record_calls", "trace"]


def record_calls(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[ModuleCall]]:
    """Runs ``fn`` under ``nn.intercept_methods`` and records the modules it calls.

    The interceptor stack of linen is thread-local, so concurrent calls in several
    threads record their own modules only.

    Args:
      fn: the function to run (e.g. ``jax.eval_shape``).
      *args, **kwargs: its arguments.

    Returns:
      ``(fn's result, the modules in the order of their first call)``.

    >>> x = jax.ShapeDtypeStruct((1, 3), jax.numpy.float32)
    >>> _, calls = record_calls(jax.eval_shape, nn.Dense(2).init, jax.random.key(0), x)
    >>> [(c.path, c.module_type.__name__) for c in calls]
    [((), 'Dense')]
    """
    calls: dict[ModulePath, ModuleCall] = {}

    def interceptor(next_fun, call_args, call_kwargs, context):
        module = context.module
        path = tuple(module.path) if module.scope is not None else ()
        if path not in calls:
            attrs = {"feature_group_count": getattr(module, "feature_group_count", None)}
            calls[path] = ModuleCall(path, type(module), attrs)
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(interceptor):
        out = fn(*args, **kwargs)
    return out, list(calls.values())


def _input_spec(args: tuple) -> tuple | None:
    """A hashable description of the inputs' shapes and dtypes (None if not arrays)."""
    leaves, treedef = jax.tree.flatten(args)
    if not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves):
        return None
    return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


@functools.lru_cache(maxsize=64)
def _abstract_trace(module: nn.Module, spec: tuple, kwargs: tuple) -> tuple[Any, list[ModuleCall]]:
    """The abstract init and the call order of a module for an input description.

    Both depend only on the module's configuration and the inputs' shapes and dtypes,
    so repeated transfers from one source architecture trace it once.
    """
    treedef, shapes = spec
    args = jax.tree.unflatten(
        treedef, [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
    )
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    init = functools.partial(module.init, **dict(kwargs))  # flags stay static under tracing
    return record_calls(jax.eval_shape, init, rngs, *args)


def trace(
    module: nn.Module,
    variables: Mapping[str, Any] | None,
    args: tuple,
    kwargs: Mapping[str, Any],
) -> tuple[ModuleNode, Any]:
    """Runs ``module.init`` abstractly and returns ``(hierarchy, abstract variables)``.

    The hierarchy holds ``variables`` when given (the caller's arrays, never copied),
    otherwise the abstract ``jax.ShapeDtypeStruct`` leaves of the init. Traces are
    cached by module configuration, input shapes and keyword arguments.

    Args:
      module: a linen module.
      variables: the arrays the layers hold, or None for the init's abstract leaves.
      args: the positional inputs of ``__call__`` (arrays or ``jax.ShapeDtypeStruct``).
      kwargs: its keyword arguments (static).

    Returns:
      The root :class:`~dpiat_jax.layers.ModuleNode` and the init's abstract variables.

    >>> x = jax.ShapeDtypeStruct((1, 3), jax.numpy.float32)
    >>> root, abstract = trace(nn.Dense(2), None, (x,), {})
    >>> [layer.kind for layer in root.children], abstract["params"]["kernel"].shape
    (['dense'], (3, 2))
    """
    spec = _input_spec(args)
    try:
        key = (module, spec, tuple(sorted(kwargs.items())))
        hash(key)
    except TypeError:  # an unhashable module or keyword value: trace without the cache
        key = None
    if key is None or spec is None:
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        init = functools.partial(module.init, **kwargs)
        abstract, calls = record_calls(jax.eval_shape, init, rngs, *args)
    else:
        abstract, calls = _abstract_trace(*key)
    return build_hierarchy(calls, abstract if variables is None else variables), abstract
