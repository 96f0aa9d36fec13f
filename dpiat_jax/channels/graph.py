"""The channel graph record: which dimensions of a target's tensors share channels.

A :class:`ChannelGraph` assigns every dimension of every target tensor either a *channel
space* (an integer; dimensions with the same space index the same channels) or ``None``
(not a channel dimension: a conv window, a scanned layer axis, a size-1 axis). It also
flags the *producing* dimensions (the output dimensions of a kernel or embedding), the
*consuming* ones (the dimensions a contraction sums over: a kernel's input dimension) and
the *mixed* spaces (whose channels the program also combines other than through a
parameter: LayerNorm statistics, attention scores, a flatten), which
:mod:`dpiat_jax.widening` needs to tell a function-preserving widening from one that is
not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = ["ChannelGraph", "TensorKey", "channel_axes"]

#: A tensor's flattened variables key: ``(collection, *module path, *name)``.
TensorKey = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ChannelGraph:
    """The channel spaces of a target's tensors.

    Attributes:
      spaces: flattened variables key (``(collection, *module path, name)``) -> per
        dimension the channel space (an int) or None (not a channel dimension).
      producers: key -> per dimension whether the tensor produces that space (an
        output dimension of a kernel or embedding).
      method: ``"jaxpr"`` (:func:`~dpiat_jax.channels.trace_channels`) or
        ``"call order"`` (:func:`~dpiat_jax.channels.call_order_channels`).
      consumers: key -> per dimension whether a contraction sums over it (a kernel's
        input dimension); empty when unknown.
      mixed: the spaces whose channels the program combines other than through a
        parameter (a reduction over them, a contraction of two computed values, a
        grouped convolution's input and output, a flatten); empty for the call-order graph.

    >>> graph = ChannelGraph(
    ...     spaces={("fc", "kernel"): (None, 0), ("fc", "bias"): (0,)},
    ...     producers={("fc", "kernel"): (False, True), ("fc", "bias"): (False,)},
    ... )
    >>> graph.members(0)
    [(('fc', 'kernel'), 1), (('fc', 'bias'), 0)]
    """

    spaces: Mapping[TensorKey, tuple[int | None, ...]]
    producers: Mapping[TensorKey, tuple[bool, ...]]
    method: str = "jaxpr"
    consumers: Mapping[TensorKey, tuple[bool, ...]] = dataclasses.field(default_factory=dict)
    mixed: frozenset[int] = frozenset()

    def members(self, space: int) -> list[tuple[TensorKey, int]]:
        """Returns the ``(key, dimension)`` pairs in one space.

        Args:
          space: a channel space.

        Returns:
          The pairs in the order of ``spaces``.
        """
        return [
            (key, axis)
            for key, axes in self.spaces.items()
            for axis, s in enumerate(axes)
            if s == space
        ]

    def space_of(self, key: TensorKey, axis: int) -> int | None:
        """Returns the space of one dimension.

        Args:
          key: a tensor's flattened variables key.
          axis: one of its dimensions.

        Returns:
          The space, or None when the key is unknown or the dimension is not a channel
          dimension.
        """
        axes = self.spaces.get(tuple(key))
        return None if axes is None else axes[axis]


def channel_axes(graph: ChannelGraph, key: TensorKey) -> tuple[int, ...] | None:
    """Returns the channel dimensions of one tensor.

    Args:
      graph: a channel graph.
      key: a tensor's flattened variables key.

    Returns:
      The dimensions that have a space, in order; None when the graph does not know
      the tensor.

    >>> graph = ChannelGraph({("params", "fc", "kernel"): (None, 0)}, {})
    >>> channel_axes(graph, ("params", "fc", "kernel")), channel_axes(graph, ("x",))
    ((1,), None)
    """
    axes = graph.spaces.get(tuple(key))
    if axes is None:
        return None
    return tuple(i for i, s in enumerate(axes) if s is not None)
