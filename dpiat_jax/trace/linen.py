"""The linen trace adapter: a linen module's submodules in call order.

:func:`trace` runs a linen module abstractly (``jax.eval_shape`` of its ``init``) under
``nn.intercept_methods`` and records the order in which submodules are first called;
:func:`~dpiat_jax.layers.build_hierarchy` turns those calls and the variables into the
:class:`~dpiat_jax.layers.ModuleNode` hierarchy.

The record must not depend on what the process did before. ``nn.jit`` caches the
traced function of a module (keyed on its configuration, not its name), and a cache
hit runs no Python, so no interceptor fires: a model whose ``__call__`` was traced
once (by the user's own ``init``, say) or a block whose twin was traced before in the
same model would be missing from the record. :func:`trace` therefore checks that the
record owns the variable tree (:func:`unrecorded_paths`); when it does not, it records
again with ``jax.disable_jit()`` (a context manager scoped to this thread and this
call), and a module still missing is built from the variable tree
(:func:`complete_calls`, with an :class:`UntracedModuleWarning`).

The interceptor reads a module's scope and attributes from its instance dictionary,
never through ``getattr``: a module defining ``__getattr__`` (Gemma's ``Transformer``)
has that method intercepted too, and probing an attribute it lacks would recurse.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from dpiat_jax.layers import ModuleCall, ModuleNode, build_hierarchy
from dpiat_jax.types import ModulePath, Shape, Variables

__all__ = [
    "UntracedModuleWarning",
    "complete_calls",
    "local_shapes",
    "module_attrs",
    "record_calls",
    "record_init",
    "trace",
    "unrecorded_paths",
]

#: The attributes the kind rules read (:func:`dpiat_jax.layers.layer_kind`).
_KIND_ATTRS = ("feature_group_count",)

#: Intercepted methods that are not calls of the module's computation: its setup, the
#: setup check linen runs before ``init``, and attribute look-ups.
_NOT_CALLS = ("setup", "<lambda>", "__getattr__")


class UntracedModuleWarning(UserWarning):
    """Some modules holding variables were never seen called; their layers were rebuilt
    from the variable tree (their kinds are unknown: ``"Module"``)."""


def module_attrs(module: nn.Module) -> dict[str, Any]:
    """Returns the attributes the kind rules need, read without calling ``getattr``.

    The values come from the module's instance dictionary (its dataclass fields), so
    a user-defined ``__getattr__`` (which linen intercepts like any method) is never
    run by the probe.

    Args:
      module: a linen module.

    Returns:
      ``{"feature_group_count": value or None}``.

    >>> module_attrs(nn.Conv(4, (3,), feature_group_count=2))
    {'feature_group_count': 2}
    """
    fields = vars(module)
    return {name: fields.get(name) for name in _KIND_ATTRS}


def _scope_path(module: nn.Module) -> ModulePath:
    """The module's path from its scope (``()`` for an unbound module), read from its
    instance dictionary like :func:`module_attrs`."""
    scope = vars(module).get("scope")
    return tuple(str(p) for p in scope.path) if scope is not None else ()


def _batched_rngs(scope: Any) -> bool:
    """Whether a scope's RNG streams are split by ``nn.vmap`` (batch tracers): an
    ensemble whose initializers ignore the key still has batched keys."""
    rngs = getattr(scope, "rngs", None) or {}
    return any(type(getattr(r, "rng", r)).__name__ == "BatchTracer" for r in rngs.values())


def local_shapes(variables: Mapping[str, Any]) -> tuple[dict[tuple[str, ...], Shape], bool]:
    """Returns a module's variable shapes as it sees them, and whether it runs batched.

    Inside ``nn.scan`` and ``nn.vmap`` a module sees one step's (one member's) slice of
    its stacked variables; under ``nn.vmap`` they are batch tracers.

    Args:
      variables: ``module.variables`` during a call.

    Returns:
      ``({(collection, *key): shape}, batched)``.

    >>> local_shapes({"params": {"kernel": jax.numpy.zeros((3, 2))}})
    ({('params', 'kernel'): (3, 2)}, False)
    """
    flat = traverse_util.flatten_dict(flax.core.unfreeze(variables))
    # jax keeps its batch tracer private; its class name is the stable public signal.
    batched = any(type(x).__name__ == "BatchTracer" for x in flat.values())
    shapes = {tuple(str(k) for k in key): tuple(np.shape(x)) for key, x in flat.items()}
    return shapes, batched


def record_calls(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[ModuleCall]]:
    """Runs ``fn`` under ``nn.intercept_methods`` and records the modules it calls.

    The interceptor stack of linen is thread-local, so concurrent calls in several
    threads record their own modules only. Each module's local shapes
    (:func:`local_shapes`) are taken after its first call of a method that is not
    ``setup`` or ``__getattr__``.

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
    seen: set[ModulePath] = set()

    def interceptor(next_fun, call_args, call_kwargs, context):
        module = context.module
        path = _scope_path(module)
        if path not in calls:
            calls[path] = ModuleCall(path, type(module), module_attrs(module))
        out = next_fun(*call_args, **call_kwargs)
        first = path not in seen and context.method_name not in _NOT_CALLS
        if first and type(module) is calls[path].module_type:
            # the shapes as the module saw them (one step's inside nn.scan / nn.vmap)
            seen.add(path)
            scope = vars(module).get("scope")
            local, batched = local_shapes(scope.variables() if scope is not None else {})
            batched = batched or _batched_rngs(scope)
            calls[path] = dataclasses.replace(calls[path], local=local, batched=batched)
        return out

    with nn.intercept_methods(interceptor):
        out = fn(*args, **kwargs)
    return out, list(calls.values())


def _owner(key: tuple[str, ...], known: set[ModulePath]) -> ModulePath:
    """The deepest recorded module whose path is a proper prefix of a variable's key."""
    for cut in range(len(key) - 1, 0, -1):
        if key[:cut] in known:
            return key[:cut]
    return ()


def unrecorded_paths(calls: Sequence[ModuleCall], variables: Variables) -> list[ModulePath]:
    """Returns the module paths that hold variables but are missing from a record.

    A variable whose key runs more than one level below its deepest recorded owner
    belongs to submodules nobody saw called (a cached ``nn.jit`` trace, a foreign
    module system inside a linen module): every path between the owner and the
    variable's name is returned, in the order of the variables.

    Args:
      calls: a record (:func:`record_calls`).
      variables: the variables of the recorded init (arrays or abstract leaves).

    Returns:
      The missing module paths, each once, parents before children.

    >>> calls = [ModuleCall((), nn.Module, {})]
    >>> variables = {"params": {"block": {"Dense_0": {"kernel": jax.numpy.zeros((2, 2))}}}}
    >>> unrecorded_paths(calls, variables)
    [('block',), ('block', 'Dense_0')]
    """
    known = {c.path for c in calls} | {()}
    missing: dict[ModulePath, None] = {}
    for tree in variables.values():
        if not isinstance(tree, Mapping):
            continue
        for key in traverse_util.flatten_dict(flax.core.unfreeze(tree)):
            key = tuple(str(k) for k in key)
            owner = _owner(key, known)
            for cut in range(len(owner) + 1, len(key)):
                missing.setdefault(key[:cut])
    return list(missing)


def complete_calls(calls: Sequence[ModuleCall], variables: Variables) -> list[ModuleCall]:
    """Returns the record with the modules it misses rebuilt from the variable tree.

    Each missing path (:func:`unrecorded_paths`) becomes a call of an unknown module
    type (``nn.Module``), after the recorded ones; within a parent, missing children
    keep the order of their variables. Nothing is lumped into an ancestor's layer.

    Args:
      calls: a record (:func:`record_calls`).
      variables: the variables of the recorded init.

    Returns:
      ``calls`` itself when it owns the variable tree, else the completed list.

    Warns:
      UntracedModuleWarning: naming the rebuilt modules.

    >>> calls = [ModuleCall((), nn.Module, {})]
    >>> variables = {"params": {"Dense_0": {"kernel": jax.numpy.zeros((2, 2))}}}
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     [c.path for c in complete_calls(calls, variables)]
    [(), ('Dense_0',)]
    """
    missing = unrecorded_paths(calls, variables)
    if not missing:
        return list(calls)
    names = ", ".join("/".join(p) for p in missing[:8]) + (" ..." if len(missing) > 8 else "")
    warnings.warn(
        f"{len(missing)} module(s) holding variables were never seen called while tracing "
        f"(a custom transform or a foreign module inside the model): {names}. Their layers "
        "are rebuilt from the variable tree in the order of the variables, with the kind "
        '"Module".',
        UntracedModuleWarning,
        stacklevel=2,
    )
    return [*calls, *(ModuleCall(p, nn.Module, {}) for p in missing)]


def _input_spec(args: tuple) -> tuple | None:
    """A hashable description of the inputs' shapes and dtypes (None if not arrays)."""
    leaves, treedef = jax.tree.flatten(args)
    if not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves):
        return None
    return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def record_init(
    module: nn.Module, args: tuple, kwargs: Mapping[str, Any]
) -> tuple[Any, list[ModuleCall]]:
    """Runs ``module.init`` abstractly and records its calls, whatever ran before.

    A record that misses modules holding variables (an ``nn.jit`` cache hit ran no
    Python) is taken again under ``jax.disable_jit()``, which makes every ``nn.jit``
    run its function; what is still missing is rebuilt from the variable tree
    (:func:`complete_calls`). :func:`trace` caches this by module configuration.

    Args:
      module: a linen module.
      args: the positional inputs of ``__call__`` (arrays or ``jax.ShapeDtypeStruct``).
      kwargs: its keyword arguments (static).

    Returns:
      ``(abstract variables, the modules in the order of their first call)``.

    Warns:
      UntracedModuleWarning: see :func:`complete_calls`.

    >>> x = jax.ShapeDtypeStruct((1, 3), jax.numpy.float32)
    >>> abstract, calls = record_init(nn.Dense(2), (x,), {})
    >>> [c.path for c in calls], abstract["params"]["kernel"].shape
    ([()], (3, 2))
    """
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    init = functools.partial(module.init, **kwargs)  # flags stay static under tracing
    abstract, calls = record_calls(jax.eval_shape, init, rngs, *args)
    if unrecorded_paths(calls, abstract):
        with jax.disable_jit():  # thread-local and scoped: no process-wide switch
            abstract, calls = record_calls(jax.eval_shape, init, rngs, *args)
    return abstract, complete_calls(calls, abstract)


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
    return record_init(module, args, dict(kwargs))


def trace(
    module: nn.Module,
    variables: Mapping[str, Any] | None,
    args: tuple,
    kwargs: Mapping[str, Any],
) -> tuple[ModuleNode, Any]:
    """Runs ``module.init`` abstractly and returns ``(hierarchy, abstract variables)``.

    The hierarchy holds ``variables`` when given (the caller's arrays, never copied),
    otherwise the abstract ``jax.ShapeDtypeStruct`` leaves of the init. Traces are
    cached by module configuration, input shapes and keyword arguments. The result
    does not depend on earlier traces in the process (``nn.jit`` caches included).

    Args:
      module: a linen module.
      variables: the arrays the layers hold, or None for the init's abstract leaves.
      args: the positional inputs of ``__call__`` (arrays or ``jax.ShapeDtypeStruct``).
      kwargs: its keyword arguments (static).

    Returns:
      The root :class:`~dpiat_jax.layers.ModuleNode` and the init's abstract variables.

    Warns:
      UntracedModuleWarning: modules holding variables were never seen called, even
        with ``nn.jit`` disabled; their layers come from the variable tree.

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
        abstract, calls = record_init(module, args, kwargs)
    else:
        abstract, calls = _abstract_trace(*key)
    return build_hierarchy(calls, abstract if variables is None else variables), abstract
