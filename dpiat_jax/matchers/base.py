"""What every matcher is: a function of two spec trees that returns an Alignment.

A matcher takes a source and a target spec tree (and an optional source of randomness)
and returns an :class:`~dpiat_jax.alignment.Alignment`: a score and the matched leaf
pairs, ``(src_index_path, dst_index_path)``, sorted by target path.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Protocol, Union

from dpiat_jax.alignment import Alignment
from dpiat_jax.spec import SpecTree
from dpiat_jax.types import IndexPath, PRNGKey

__all__ = ["Matcher", "Pairs", "RandomSource", "sort_pairs"]

#: Randomness a matcher accepts: a JAX PRNG key, an int seed, or None (seed 0).
RandomSource = Union[PRNGKey, int, None]  # noqa: UP007 - a runtime alias

#: Matched leaf pairs, ``(src_index_path, dst_index_path)``.
Pairs = list[tuple[IndexPath, IndexPath]]


_TARGET_THEN_SOURCE = operator.itemgetter(1, 0)


class Matcher(Protocol):
    """The interface of a matcher (the built-in ones and any user function).

    >>> from dpiat_jax import LayerSpec
    >>> def stems_only(src_tree, dst_tree, rng=None):
    ...     return Alignment(1.0, [((0,), (0,))])
    >>> m: Matcher = stems_only
    >>> m([LayerSpec("bn", (4,))], [LayerSpec("bn", (4,))]).pairs
    [((0,), (0,))]
    """

    def __call__(
        self, src_tree: SpecTree, dst_tree: SpecTree, rng: RandomSource = None
    ) -> Alignment:
        """Aligns two spec trees.

        Args:
          src_tree: the source architecture, a nested list of ``LayerSpec`` leaves.
          dst_tree: the target architecture, likewise.
          rng: randomness, for matchers that use it.

        Returns:
          The :class:`~dpiat_jax.alignment.Alignment`.
        """
        ...


def sort_pairs(pairs: Iterable[tuple[IndexPath, IndexPath]]) -> Pairs:
    """Returns matched pairs in the order every matcher reports: by target, then source.

    Args:
      pairs: ``(src_index_path, dst_index_path)`` pairs in any order.

    Returns:
      A new list sorted by target path, then by source path.

    >>> sort_pairs([((1,), (2,)), ((0,), (2,)), ((3,), (0, 1))])
    [((3,), (0, 1)), ((0,), (2,)), ((1,), (2,))]
    """
    return sorted(pairs, key=_TARGET_THEN_SOURCE)
