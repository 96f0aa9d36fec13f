"""Channels: which target tensor dimensions share one channel index (channel consistency).

A rule that keeps a *subset* of a layer's channels when a dimension shrinks (``magnitude``
keeps the largest-L1 channels, ``uniform`` evenly spaced ones) must keep the same subset
wherever those channels are consumed: in the layer's own bias, in the norm that follows
(scale, bias, mean, var), in the input dimension of the next conv/dense and in whatever
is added to them (a residual partner). This package finds those groups of dimensions in
the *target* (a :class:`ChannelGraph` of channel spaces) and
:func:`dpiat_jax.variables.write_tensors` then applies one selection per group
(:func:`channel_selections`).

Modules, one idea each:

* :mod:`~dpiat_jax.channels.graph`: the :class:`ChannelGraph` record;
* :mod:`~dpiat_jax.channels.jaxpr`: :func:`trace_channels`, the precise graph, from the
  jaxpr of the target's ``apply`` (:mod:`~dpiat_jax.channels.flow`, the union-find over
  dimensions, and :mod:`~dpiat_jax.channels.primitives`, one rule per primitive);
* :mod:`~dpiat_jax.channels.call_order`: :func:`call_order_channels`, the fallback that
  ``write_tensors`` uses when no graph is given, from the target layers in call order;
* :mod:`~dpiat_jax.channels.selection`: :func:`target_channels` (the graph a rule needs,
  and only then) and :func:`channel_selections`.

Limits
------
* The jaxpr is that of the target's ``apply`` with the target's call keywords (inference
  mode, as the transfer uses); data flow that only exists in another mode is not seen.
  A module that cannot be traced this way (e.g. it needs an RNG stream other than
  ``dropout`` or ``params``) falls back to the call order.
* A ``reshape`` that merges a channel dimension with another (flatten before a dense
  layer) ends the space: the dense layer's input dimension is its own space. Grouped
  convolutions (1 < groups < channels) keep their output space but their input
  dimension is not tied to the incoming channels (a per-group selection would be
  needed); depthwise convolutions (one input channel per group) carry the space
  through. Attention heads and head dimensions are selected independently, so a shrunk
  attention keeps a product of kept heads and kept head dimensions.
* Sizes follow the source: a selection indexes the source dimension, so it is shared
  by the members whose source dimension has the same size; members whose matched source
  has another size get their own selection (consistency can only hold within a size).
* The call-order fallback sees neither residual adds nor branches, and only the
  matched layers.
* Rules that do not keep a subset (``clip``, ``full``) and user functions do not use
  any of this; their results are exactly the per-tensor ones.

>>> import flax.linen as nn
>>> import jax
>>> import jax.numpy as jnp
>>> model, x = nn.Sequential([nn.Dense(4), nn.Dense(2)]), jnp.zeros((1, 3))
>>> graph = target_channels("magnitude", model, jax.eval_shape(model.init, jax.random.key(0), x), x)
>>> graph.space_of(("params", "layers_0", "kernel"), 1) == graph.space_of(
...     ("params", "layers_1", "kernel"), 0)
True
"""

from dpiat_jax.channels.call_order import (
    call_order_channels,
)
from dpiat_jax.channels.graph import (
    ChannelGraph,
    TensorKey,
    channel_axes,
)
from dpiat_jax.channels.jaxpr import (
    apply_jaxpr,
    fused_axes,
    trace_channels,
)
from dpiat_jax.channels.selection import (
    SelectionKey,
    channel_selections,
    needs_channels,
    target_channels,
)

__all__ = [
    "ChannelGraph",
    "SelectionKey",
    "TensorKey",
    "apply_jaxpr",
    "call_order_channels",
    "channel_axes",
    "channel_selections",
    "needs_channels",
    "target_channels",
    "fused_axes",
    "trace_channels",
]
