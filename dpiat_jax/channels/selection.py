"""Channel selections: one subset of source channels per channel space of the target.

A space's selection is computed once, from the matched source tensors of its producers
(the rule's ``select_channels``, e.g. the L1 norm of each output channel of the source
kernel); the space's consumers (biases, norms, the next layer's input dimension) take
that same selection. A space without a matched producer is ranked on all of its matched
members. A selection indexes the source dimension, so it is shared by the members whose
source dimension has the same size; members whose matched source has another size get
their own selection (consistency can only hold within a size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax

from dpiat_jax.channels.graph import ChannelGraph, TensorKey
from dpiat_jax.channels.jaxpr import trace_channels
from dpiat_jax.tensors import SelectChannelsFn, TensorFn, TensorRule, get_tensor_rule
from dpiat_jax.trace.inputs import positional
from dpiat_jax.types import ArrayTree, Shape, Variables

__all__ = ["SelectionKey", "channel_selections", "needs_channels", "target_channels"]

#: A selection's key: ``(space, source size, target size)``.
SelectionKey = tuple[int, int, int]


def needs_channels(rule: str | TensorRule | TensorFn) -> bool:
    """Whether a tensor rule keeps channel subsets or widens channel spaces (and so
    needs a channel graph).

    Args:
      rule: a :class:`~dpiat_jax.tensors.TensorRule`, a rule name or a function.

    Returns:
      True for ``magnitude``, ``uniform`` and ``net2net``; False for ``clip``, ``full``
      and plain functions.

    >>> needs_channels("magnitude"), needs_channels("net2net"), needs_channels("clip")
    (True, True, False)
    """
    record = get_tensor_rule(rule)
    return record.selects_channels or record.widens_channels


def target_channels(
    rule: str | TensorRule | TensorFn,
    module: nn.Module,
    variables: Variables,
    sample_input: ArrayTree,
    call_kwargs: Mapping[str, Any] | None = None,
) -> ChannelGraph | None:
    """Returns the target's jaxpr :class:`ChannelGraph` when ``rule`` needs one.

    Nothing is traced for rules that neither keep channel subsets nor widen channel
    spaces (``clip``, ``full``, user functions).

    Args:
      rule: the transfer's tensor rule.
      module: the target's linen module.
      variables: the target's variables (arrays or ``jax.ShapeDtypeStruct``).
      sample_input: an input the module takes.
      call_kwargs: its call keywords (inference mode flags).

    Returns:
      The graph (:func:`~dpiat_jax.channels.trace_channels`); None when the rule needs
      none, or when tracing fails (then :func:`~dpiat_jax.variables.write_tensors`
      falls back to the call order).

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> model, x = nn.Dense(4), jnp.zeros((1, 3))
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
    >>> target_channels("clip", model, variables, x) is None
    True
    >>> target_channels("magnitude", model, variables, x).method
    'jaxpr'
    """
    if not needs_channels(rule):
        return None
    try:
        return trace_channels(
            module, variables, *positional(sample_input), **dict(call_kwargs or {})
        )
    except Exception:  # noqa: BLE001 - the call-order fallback covers untraceable modules
        return None


@dataclasses.dataclass(frozen=True)
class _Member:
    """One shrinking channel dimension of a tensor: its target key, matched source
    array and dimension, and whether it produces its space."""

    key: TensorKey
    source: jax.Array
    axis: int
    producer: bool


def _shrinking_members(
    graph: ChannelGraph, items: Iterable[tuple[TensorKey, jax.Array, Shape]]
) -> dict[SelectionKey, list[_Member]]:
    """The shrinking channel dimensions among ``items``, grouped by selection key."""
    groups: dict[SelectionKey, list[_Member]] = {}
    for key, source, dst_shape in items:
        key = tuple(key)
        axes = graph.spaces.get(key)
        if axes is None:
            continue
        prods = graph.producers.get(key, (False,) * len(axes))
        for axis, space in enumerate(axes):
            a, b = source.shape[axis], dst_shape[axis]
            if space is None or a <= b:
                continue
            groups.setdefault((space, a, b), []).append(_Member(key, source, axis, prods[axis]))
    return groups


def _rankers(members: list[_Member]) -> list[tuple[jax.Array, int]]:
    """The ``(source array, dimension)`` pairs that rank a space: its producers (or
    every member when none produces it), each tensor dimension once."""
    chosen = [m for m in members if m.producer] or members
    seen: set[tuple[TensorKey, int]] = set()
    pairs = []
    for m in chosen:
        if (m.key, m.axis) not in seen:
            seen.add((m.key, m.axis))
            pairs.append((m.source, m.axis))
    return pairs


def channel_selections(
    graph: ChannelGraph,
    items: Iterable[tuple[TensorKey, jax.Array, Shape]],
    select: SelectChannelsFn,
) -> dict[SelectionKey, jax.Array]:
    """Returns one selection per (space, source size, target size) of every shrinking
    channel dimension among ``items``.

    Args:
      graph: the target's channel graph.
      items: ``(target key, matched source array, target shape)`` triples, one per
        tensor to write.
      select: the rule's ``select_channels``: ``select(members, b)`` gets the
        ``(source array, dimension)`` pairs that rank the space (its producers, or every
        member when none produces it) and returns ``b`` source indices.

    Returns:
      ``(space, source size, target size)`` -> the source indices to keep.

    >>> import jax.numpy as jnp
    >>> from dpiat_jax.tensors import TENSOR_RULES
    >>> graph = ChannelGraph({("k",): (None, 0), ("b",): (0,)}, {("k",): (False, True)})
    >>> items = [(("k",), jnp.array([[1.0, 9.0, 2.0]]), (1, 2)), (("b",), jnp.zeros(3), (2,))]
    >>> channel_selections(graph, items, TENSOR_RULES["magnitude"].select_channels)
    {(0, 3, 2): Array([1, 2], dtype=int32)}
    """
    groups = _shrinking_members(graph, items)
    return {skey: select(_rankers(members), skey[2]) for skey, members in groups.items()}
