"""Variables: write matched source tensors into a fresh target initialisation.

The last stage of the pipeline: it takes the target's fresh variables, replaces every
tensor that has a matched source counterpart by what the tensor rule makes of it, and
returns a new pytree with exactly the fresh init's structure, shapes and dtypes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from dpiat_jax.matching import LayerPair
from dpiat_jax.tensors import TensorRule

__all__ = ["write_tensors", "tensor_key", "nonfinite_tensors"]


def tensor_key(collection: str, layer_path: tuple[str, ...], name: str) -> tuple[str, ...]:
    """The flattened variables key of a layer's tensor."""
    return (collection, *layer_path, *name.split("/"))


def write_tensors(
    pairs: list[LayerPair],
    dst_variables: Mapping[str, Any],
    rule: TensorRule,
    rng: jax.Array,
) -> tuple[dict, dict[int, int], list[tuple[str, str, str]]]:
    """Applies ``rule`` to every tensor of every matched pair.

    Returns ``(variables, written, skipped)``: the new target variables (a plain nested
    dict), scalars written per target layer (keyed by ``id`` of the layer), and the
    tensors that could not be moved with the reason.
    """
    flat = traverse_util.flatten_dict(dst_variables)
    flat = {tuple(str(k) for k in key): v for key, v in flat.items()}
    written: dict[int, int] = {}
    skipped: list[tuple[str, str, str]] = []
    counter = 0
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
                counter += 1
                new = rule(source, flat[key], jax.random.fold_in(rng, counter))
                if tuple(new.shape) != tuple(target.shape) or new.dtype != target.dtype:
                    raise ValueError(
                        f"tensor_rule returned shape {tuple(new.shape)} dtype {new.dtype} for "
                        f"{dst_name}; it must return the target's shape {tuple(target.shape)} "
                        f"and dtype {target.dtype}."
                    )
                flat[key] = new
                overlap = math.prod(min(a, b) for a, b in zip(source.shape, target.shape))
                written[id(pair.dst)] = written.get(id(pair.dst), 0) + overlap
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
