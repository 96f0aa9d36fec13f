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
from dpiat_jax.types import ArrayTree, Variables

__all__ = ["trace_channels"]


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
    their first dimension.
    """
    has_value = _computed_roots(flow)
    ids: dict[Node, int] = {}
    spaces, producers = {}, {}
    for idx, (key, v) in enumerate(zip(keys, params)):
        axes, prod = [], []
        for d in range(len(var_shape(v))):
            node = (0, v, d)
            is_prod = (idx, d) in flow.producer
            root = flow.find(node) if node in flow.parent else node
            if is_prod or has_value.get(root, False):
                axes.append(ids.setdefault(root, len(ids)))
            else:
                axes.append(None)
            prod.append(is_prod)
        spaces[key], producers[key] = tuple(axes), tuple(prod)
    return ChannelGraph(spaces, producers, "jaxpr")


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
    return _read_graph(flow, keys, params)
