"""Variables: write matched source tensors into a fresh target initialisation.

The last stage of the pipeline: it takes the target's fresh variables, replaces every
tensor that has a matched source counterpart by what the tensor rule makes of it, and
returns a new pytree with exactly the fresh init's structure, shapes and dtypes.

Two things happen here rather than in the rules, because they are properties of the
tensors and of the target, not of a rule:

* positional embeddings (:func:`dpiat_jax.tensors.is_positional_embedding`) whose token
  count is a different square grid (plus a class token) are interpolated over the grid
  (:func:`dpiat_jax.tensors.resize_positional`) before the rule handles the remaining
  dimensions, for every rule;
* for a rule that keeps channel subsets (``magnitude``, ``uniform``: see
  :mod:`dpiat_jax.tensors`), one selection is computed per channel space of the target
  (:mod:`dpiat_jax.channels`) and every tensor dimension of that space takes it, so a
  layer's kernel, its bias, the norm after it, the next layer's input and a residual
  partner keep the same channels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from dpiat_jax.channels import (
    ChannelGraph,
    call_order_channels,
    channel_axes,
    channel_selections,
    needs_channels,
)
from dpiat_jax.matching import LayerPair
from dpiat_jax.tensors import TensorRule, is_positional_embedding, resize_positional

__all__ = ["write_tensors", "tensor_key", "nonfinite_tensors"]

_NOT_POSITIONAL = (
    "conv",
    "dense",
    "depthwise_conv",
    "batch_norm",
    "layer_norm",
    "group_norm",
    "rms_norm",
)


def tensor_key(collection: str, layer_path: tuple[str, ...], name: str) -> tuple[str, ...]:
    """The flattened variables key of a layer's tensor."""
    return (collection, *layer_path, *name.split("/"))


@dataclasses.dataclass
class _Job:
    key: tuple[str, ...]
    dst_name: str
    source: Any
    target: Any
    pair: LayerPair
    keep_first_row: bool = False


def _positional_source(pair: LayerPair, collection: str, name: str, source, target):
    """The source resized over the patch grid when the tensor is a positional
    embedding of another grid; else None."""
    if collection != "params" or pair.dst.kind.startswith(_NOT_POSITIONAL):
        return None
    label = "/".join([*pair.dst.path[-1:], name])
    shape, src_shape = tuple(target.shape), tuple(source.shape)
    if not (is_positional_embedding(label, shape) and is_positional_embedding(label, src_shape)):
        return None
    if source.ndim == 3 and source.shape[0] != 1:
        return None
    return resize_positional(source, shape)


def write_tensors(
    pairs: list[LayerPair],
    dst_variables: Mapping[str, Any],
    rule: TensorRule,
    rng: jax.Array,
    *,
    channels: ChannelGraph | None = None,
) -> tuple[dict, dict[int, int], list[tuple[str, str, str]]]:
    """Applies ``rule`` to every tensor of every matched pair.

    ``channels`` is the target's :class:`~dpiat_jax.channels.ChannelGraph` (from
    :func:`dpiat_jax.channels.target_channels`); it is used only by rules that keep
    channel subsets, and when it is None those rules follow the target's call order
    (:func:`dpiat_jax.channels.call_order_channels` over the matched layers). Rules
    without channel selection (``clip``, ``full``, user functions) get each tensor on
    its own, exactly as before.

    Returns ``(variables, written, skipped)``: the new target variables (a plain nested
    dict), scalars written per target layer (keyed by ``id`` of the layer), and the
    tensors that could not be moved with the reason.
    """
    flat = traverse_util.flatten_dict(dst_variables)
    flat = {tuple(str(k) for k in key): v for key, v in flat.items()}
    written: dict[int, int] = {}
    skipped: list[tuple[str, str, str]] = []
    jobs: list[_Job] = []
    for pair in pairs:
        for collection, group in pair.dst.tensors.items():
            for name, target in group.items():
                key = tensor_key(collection, pair.dst.path, name)
                dst_name = "/".join(key)
                source = pair.src.tensors.get(collection, {}).get(name)
                src_name = "/".join(tensor_key(collection, pair.src.path, name))
                if source is None:
                    skipped.append((dst_name, src_name, "the source layer has no such tensor"))
                    continue
                if source.ndim != target.ndim:
                    why = f"ranks differ ({tuple(source.shape)} vs {tuple(target.shape)})"
                    skipped.append((dst_name, src_name, why))
                    continue
                job = _Job(key, dst_name, source, target, pair)
                resized = _positional_source(pair, collection, name, source, target)
                if resized is not None:
                    job.source, job.keep_first_row = resized
                jobs.append(job)

    graph = None
    selections: dict = {}
    if needs_channels(rule):
        graph = channels if channels is not None else call_order_channels([p.dst for p in pairs])
        items = [(j.key, j.source, tuple(j.target.shape)) for j in jobs]
        selections = channel_selections(graph, items, rule.select_channels)

    for counter, job in enumerate(jobs, start=1):
        source, key = job.source, job.key
        dst = flat[key]
        axes = channel_axes(graph, key) if graph is not None else None
        if axes is None:
            new = rule.apply(source, dst, jax.random.fold_in(rng, counter))
        else:
            chosen = {}
            for axis in axes:
                a, b = source.shape[axis], dst.shape[axis]
                if a > b:
                    chosen[axis] = selections[(graph.spaces[key][axis], a, b)]
            new = rule.apply_channels(source, dst, jax.random.fold_in(rng, counter), axes, chosen)
        if tuple(new.shape) != tuple(job.target.shape) or new.dtype != job.target.dtype:
            raise ValueError(
                f"tensor_rule returned shape {tuple(new.shape)} dtype {new.dtype} for "
                f"{job.dst_name}; it must return the target's shape "
                f"{tuple(job.target.shape)} and dtype {job.target.dtype}."
            )
        if job.keep_first_row:  # a class-token row the source does not have
            first = (slice(None),) * (dst.ndim - 2) + (slice(0, 1),)
            new = jnp.asarray(new).at[first].set(jnp.asarray(dst)[first])
        flat[key] = new
        overlap = math.prod(min(a, b) for a, b in zip(source.shape, job.target.shape))
        written[id(job.pair.dst)] = written.get(id(job.pair.dst), 0) + overlap
    return traverse_util.unflatten_dict(flat), written, skipped


def nonfinite_tensors(pairs: list[LayerPair]) -> list[str]:
    """Returns the names of the matched source tensors that hold NaN or inf.

    The check runs where the arrays live (sharded arrays are reduced shard-wise) and
    fetches one boolean per tensor.
    """
    names, flags = [], []
    seen: set[int] = set()
    for pair in pairs:
        if id(pair.src) in seen:
            continue
        seen.add(id(pair.src))
        for collection, group in pair.src.tensors.items():
            for name, array in group.items():
                if jnp.issubdtype(array.dtype, jnp.inexact):
                    names.append("/".join(tensor_key(collection, pair.src.path, name)))
                    flags.append(jnp.all(jnp.isfinite(array)))
    if not flags:
        return []
    finite = jax.device_get(flags)
    return [n for n, ok in zip(names, finite) if not ok]
