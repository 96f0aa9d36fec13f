"""The precise channel graph: from the jaxpr of the target's ``apply``.

:func:`trace_channels` traces the target's ``apply`` to a jaxpr with every variable as
an input and follows each dimension through the program
(:mod:`dpiat_jax.channels.primitives`). A residual add therefore joins both branches
into one space, and a whole transformer's residual stream (patch embedding, class
token, positional embedding, every LayerNorm, the input of q/k/v and the MLP, the
output of the attention's out projection and of the MLP, the head's input) is one
space; attention heads and head dimensions are spaces of their own (q, k and v share
the heads, q and k the head dimension).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from jax.extend import core as jcore

from dpiat_jax.channels.flow import DimensionFlow, Node, var_shape
from dpiat_jax.channels.graph import ChannelGraph, TensorKey
from dpiat_jax.channels.primitives import walk
from dpiat_jax.trace.inputs import positional
from dpiat_jax.types import ArrayTree, Variables

__all__ = ["apply_jaxpr", "fused_axes", "trace_channels"]


def _flat_variables(variables: Variables) -> dict[TensorKey, Any]:
    """The variables flattened to ``(collection, *path, name)`` keys of strings."""
    flat = traverse_util.flatten_dict(dict(variables))
    return {tuple(str(k) for k in key): v for key, v in flat.items()}


def _abstract(x: ArrayTree) -> ArrayTree:
    """``x`` with every array replaced by its ``jax.ShapeDtypeStruct``."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype) if hasattr(a, "dtype") else a, x
    )


def _apply_jaxpr(
    module: nn.Module,
    flat: Mapping[TensorKey, Any],
    args: Sequence[Any],
    rngs: Mapping[str, jax.Array],
    kwargs: Mapping[str, Any],
) -> jcore.Jaxpr:
    """The jaxpr of ``module.apply`` whose first inputs are the variables in ``flat``'s
    order (every collection mutable, keyword flags static)."""
    keys = list(flat)

    def fn(leaves, *call_args):
        tree = traverse_util.unflatten_dict(dict(zip(keys, leaves)))
        return module.apply(tree, *call_args, rngs=rngs, mutable=True, **kwargs)

    closed = jax.make_jaxpr(fn)(_abstract([flat[k] for k in keys]), *_abstract(args))
    return closed.jaxpr


def apply_jaxpr(
    module: nn.Module,
    variables: Variables,
    *args: ArrayTree,
    rngs: Mapping[str, jax.Array] | None = None,
    **kwargs: Any,
) -> tuple[jcore.Jaxpr, list[TensorKey]]:
    """Traces ``module.apply`` to a jaxpr whose first inputs are the variables.

    Nothing is computed: the jaxpr is traced from shapes, with every collection
    mutable and keyword flags static. Each equation keeps its module's name stack
    (``Root/block/conv``), which :mod:`dpiat_jax.deepening` reads.

    Args:
      module: a linen module.
      variables: its variables (arrays or ``jax.ShapeDtypeStruct``).
      *args: its call arguments.
      rngs: the RNG streams ``apply`` gets (default: ``dropout`` and ``params``).
      **kwargs: its call keywords.

    Returns:
      ``(jaxpr, keys)``: the open jaxpr and the flattened variable keys of its first
      ``len(keys)`` inputs, in order.

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> model, x = nn.Dense(2), jnp.zeros((1, 3))
    >>> jaxpr, keys = apply_jaxpr(model, jax.eval_shape(model.init, jax.random.key(0), x), x)
    >>> keys
    [('params', 'bias'), ('params', 'kernel')]
    """
    flat = _flat_variables(variables)
    if rngs is None:
        rngs = {"dropout": jax.random.key(0), "params": jax.random.key(1)}
    return _apply_jaxpr(module, flat, args, rngs, kwargs), list(flat)


def _computed_roots(flow: DimensionFlow) -> dict[Node, bool]:
    """Set root -> whether the set holds a dimension of a computed value (not only
    copies of parameters)."""
    has_value: dict[Node, bool] = {}
    for node in list(flow.parent):
        root = flow.find(node)
        is_value = (node[0], node[1]) not in flow.alias
        has_value[root] = has_value.get(root, False) or is_value
    return has_value


def _read_graph(
    flow: DimensionFlow, keys: Sequence[TensorKey], params: Sequence[Any]
) -> ChannelGraph:
    """The graph of the parameters after the walk.

    A parameter dimension is a channel dimension when it produces a space or when its
    set holds a dimension of a computed value; spaces are numbered in the order of
    their first dimension. A space is mixed when its set holds a mixed dimension.
    """
    has_value = _computed_roots(flow)
    mixed_roots = {flow.find(node) for node in flow.mixed}
    ids: dict[Node, int] = {}
    spaces, producers, consumers = {}, {}, {}
    mixed: set[int] = set()
    for idx, (key, v) in enumerate(zip(keys, params)):
        axes, prod, cons = [], [], []
        for d in range(len(var_shape(v))):
            node = (0, v, d)
            is_prod = (idx, d) in flow.producer
            root = flow.find(node) if node in flow.parent else node
            if is_prod or has_value.get(root, False):
                axes.append(ids.setdefault(root, len(ids)))
                if root in mixed_roots:
                    mixed.add(axes[-1])
            else:
                axes.append(None)
            prod.append(is_prod)
            cons.append((idx, d) in flow.consumer)
        spaces[key], producers[key], consumers[key] = tuple(axes), tuple(prod), tuple(cons)
    return ChannelGraph(spaces, producers, "jaxpr", consumers, frozenset(mixed))


def _equal_parts(pieces: set[tuple[int, int]], size: int) -> int | None:
    """The part count when ``pieces`` tile ``[0, size)`` in 2 or more equal parts."""
    ordered = sorted(pieces)
    if len(ordered) < 2 or ordered[0][0] != 0 or ordered[-1][1] != size:
        return None
    width = ordered[0][1] - ordered[0][0]
    for (lo, hi), (next_lo, _) in zip(ordered, [*ordered[1:], (size, size)]):
        if hi - lo != width or hi != next_lo:
            return None
    return len(ordered)


def _walked(
    module: nn.Module,
    variables: Variables,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    rngs: Mapping[str, jax.Array] | None = None,
) -> tuple[DimensionFlow, list[TensorKey], list[Any]]:
    """The dimension flow of ``module.apply`` and its parameter keys and variables."""
    flat = _flat_variables(variables)
    keys = list(flat)
    if rngs is None:
        rngs = {"dropout": jax.random.key(0), "params": jax.random.key(1)}
    jaxpr = _apply_jaxpr(module, flat, args, rngs, kwargs)
    params = jaxpr.invars[: len(keys)]
    flow = DimensionFlow()
    for idx, v in enumerate(params):
        flow.alias[(0, v)] = (idx, tuple(range(len(var_shape(v)))))
    walk(flow, jaxpr, 0)
    return flow, keys, params


def fused_axes(
    module: nn.Module,
    variables: Variables,
    sample_input: ArrayTree,
    call_kwargs: Mapping[str, Any] | None = None,
) -> dict[TensorKey, tuple[int, int]]:
    """Finds the fused tensors of a model: parameter axes whose values the forward pass
    cuts into equal parts (``jnp.split``, or slices that tile the axis).

    A fused projection (GPT-2's ``c_attn``: query, key and value on one output axis)
    shows in the program as a split of the projection's output; its kernel's output
    dimension and its bias fall in the same channel space as the split dimension.

    Args:
      module: a linen module.
      variables: its variables (arrays or ``jax.ShapeDtypeStruct``).
      sample_input: an input it takes (several positional inputs as
        :class:`~dpiat_jax.trace.inputs.Inputs`).
      call_kwargs: its call keywords.

    Returns:
      Tensor key -> ``(axis, parts)``; empty when the forward pass cannot be traced.

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> class Attention(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         q, k, v = jnp.split(nn.Dense(12, name="qkv")(x), 3, axis=-1)
    ...         return q * k + v
    >>> x = jnp.zeros((1, 4))
    >>> model = Attention()
    >>> fused_axes(model, jax.eval_shape(model.init, jax.random.key(0), x), x)
    {('params', 'qkv', 'bias'): (0, 3), ('params', 'qkv', 'kernel'): (1, 3)}
    """
    try:
        flow, keys, params = _walked(
            module, variables, positional(sample_input), dict(call_kwargs or {})
        )
    except Exception:  # noqa: BLE001 - no detection for a pass that cannot be traced
        return {}
    parts_of: dict[Node, int] = {}
    for node, pieces in flow.cuts.items():
        parts = _equal_parts(pieces, var_shape(node[1])[node[2]])
        if parts is not None:
            parts_of[flow.find(node)] = parts
    out: dict[TensorKey, tuple[int, int]] = {}
    for key, v in zip(keys, params):
        for d in range(len(var_shape(v))):
            node = (0, v, d)
            if node in flow.parent and flow.find(node) in parts_of:
                out[key] = (d, parts_of[flow.find(node)])
                break
    return out


def trace_channels(
    module: nn.Module,
    variables: Variables,
    *args: ArrayTree,
    rngs: Mapping[str, jax.Array] | None = None,
    **kwargs: Any,
) -> ChannelGraph:
    """Builds the :class:`ChannelGraph` of ``module`` from the jaxpr of its ``apply``.

    ``apply`` runs with every collection mutable, so batch statistics updates are
    followed too. Nothing is computed: the jaxpr is traced from shapes.

    Args:
      module: the target's linen module.
      variables: the target's variables dict (arrays or ``jax.ShapeDtypeStruct``).
      *args: its call arguments (a sample input).
      rngs: the RNG streams ``apply`` gets (default: ``dropout`` and ``params``).
      **kwargs: its call keywords (flags stay static).

    Returns:
      A graph with ``method="jaxpr"`` that knows every variable.

    Raises:
      Whatever tracing raises (a wrong input shape, a missing RNG stream...).

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> model = nn.Sequential([nn.Dense(4), nn.LayerNorm()])
    >>> x = jnp.zeros((1, 3))
    >>> graph = trace_channels(model, jax.eval_shape(model.init, jax.random.key(0), x), x)
    >>> graph.spaces[("params", "layers_0", "kernel")]
    (1, 0)
    >>> graph.spaces[("params", "layers_1", "scale")]
    (0,)
    """
    flow, keys, params = _walked(module, variables, args, kwargs, rngs)
    return _read_graph(flow, keys, params)
