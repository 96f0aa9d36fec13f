"""The ``random`` matcher: the control, a random one-to-one matching of same-kind leaves."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dpiat_jax.alignment import Alignment
from dpiat_jax.matchers.base import RandomSource, sort_pairs
from dpiat_jax.scores import layer_score
from dpiat_jax.spec import LayerSpec, SpecTree, iter_leaves, validate_tree
from dpiat_jax.types import IndexPath

__all__ = ["host_rng", "random_matching"]


def host_rng(rng: RandomSource | np.random.Generator) -> np.random.Generator:
    """Returns a NumPy generator seeded from the given randomness.

    Args:
      rng: a JAX PRNG key (typed or raw), an int seed, a NumPy generator (returned as
        is) or None (seed 0).

    Returns:
      A ``numpy.random.Generator``; equal inputs give equal streams.

    Raises:
      TypeError: for anything else.

    >>> int(host_rng(7).integers(100)) == int(host_rng(7).integers(100))
    True
    """
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    try:
        array = jnp.asarray(rng) if not hasattr(rng, "dtype") else rng
        if jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
            array = jax.random.key_data(array)
        words = np.asarray(array).astype(np.uint32).ravel().tolist()
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"rng must be a jax PRNG key, an int seed or None, got {type(rng).__name__}."
        ) from err
    return np.random.default_rng(words)


def _leaves_by_kind(tree: SpecTree) -> dict[str, list[tuple[IndexPath, LayerSpec]]]:
    """Non-placeholder leaves grouped by kind, in tree order."""
    out: dict[str, list[tuple[IndexPath, LayerSpec]]] = {}
    for path, leaf in iter_leaves(tree):
        if not leaf.is_placeholder:
            out.setdefault(leaf.kind, []).append((path, leaf))
    return out


def random_matching(src_tree: SpecTree, dst_tree: SpecTree, rng: RandomSource = None) -> Alignment:
    """The control: a random one-to-one matching of same-kind leaves.

    For every kind, the source and target leaves of that kind (placeholders never) are
    shuffled and paired in order, so ``min(#source, #target)`` pairs per kind, each leaf
    used at most once, the tree structure ignored.

    Args:
      src_tree: the source spec tree.
      dst_tree: the target spec tree.
      rng: a JAX key, an int seed, or None for seed 0; makes the matching deterministic.

    Returns:
      An :class:`~dpiat_jax.alignment.Alignment` whose ``score`` is the sum of the pairs'
      layer (shape) scores, i.e. the number of pairs discounted by shape mismatch; it has
      no normalisation and is not a similarity.

    Raises:
      TypeError, ValueError: for a malformed tree, naming ``src_tree`` or ``dst_tree``;
        TypeError for an unusable ``rng``.

    >>> conv, bn = LayerSpec("conv2d", (3, 3, 8, 16)), LayerSpec("bn", (16,))
    >>> random_matching([conv, bn], [bn, conv], rng=3)
    Alignment(score=2.0, pairs=[((1,), (0,)), ((0,), (1,))])
    """
    validate_tree(src_tree, argname="src_tree")
    validate_tree(dst_tree, argname="dst_tree")
    gen = host_rng(rng)
    src_by_kind, dst_by_kind = _leaves_by_kind(src_tree), _leaves_by_kind(dst_tree)
    pairs, score = [], 0.0
    for kind in sorted(src_by_kind.keys() & dst_by_kind.keys()):
        sources, targets = src_by_kind[kind], dst_by_kind[kind]
        s_order = gen.permutation(len(sources))
        t_order = gen.permutation(len(targets))
        for a, b in zip(s_order, t_order):
            (src_path, src_leaf), (dst_path, dst_leaf) = sources[int(a)], targets[int(b)]
            pairs.append((src_path, dst_path))
            score += layer_score(src_leaf, dst_leaf)
    return Alignment(score=float(score), pairs=sort_pairs(pairs))
