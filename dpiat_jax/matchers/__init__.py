"""Matchers: the ways of pairing source and target layers (design.md, "Other matchers").

Every matcher takes two spec trees and returns an :class:`~dpiat_jax.alignment.Alignment`
(``score`` and ``pairs``: ``(src_index_path, dst_index_path)`` per matched leaf pair,
sorted by target path, always index paths into the trees as given). One module each:

- ``dp`` (the default, :mod:`dpiat_jax.matchers.dp`): the DPIAT dynamic programme over
  the block trees.
- ``cross`` (:mod:`dpiat_jax.matchers.cross`): the same programme plus matches across
  nesting levels (a layer or a run of layers against a block's contents, and back), so
  that a network of another family can seed a hierarchical one.
- ``flat`` (:mod:`dpiat_jax.matchers.flat`): the published flat dynamic programme over
  the two leaf lists.
- ``bipartite`` and ``nested-bipartite`` (:mod:`dpiat_jax.matchers.bipartite`): a
  maximum-weight matching of the top-level elements, position-weighted.
- ``random`` (:mod:`dpiat_jax.matchers.random`): the control, a random one-to-one
  matching of same-kind leaves.

A user matcher is any function ``(src_tree, dst_tree, rng=None) -> Alignment`` (the
:class:`Matcher` protocol); :func:`align` dispatches to a matcher given by name or as
a function.
"""

from __future__ import annotations

from dpiat_jax.alignment import Alignment
from dpiat_jax.matchers.base import Matcher as Matcher
from dpiat_jax.matchers.base import RandomSource as RandomSource
from dpiat_jax.matchers.base import sort_pairs as sort_pairs
from dpiat_jax.matchers.bipartite import bipartite as bipartite
from dpiat_jax.matchers.bipartite import nested_bipartite as nested_bipartite
from dpiat_jax.matchers.cross import cross as cross
from dpiat_jax.matchers.dp import dp as dp
from dpiat_jax.matchers.flat import flat as flat
from dpiat_jax.matchers.random import random_matching as random_matching
from dpiat_jax.spec import SpecTree, validate_tree

__all__ = [
    "MATCHERS",
    "Matcher",
    "RandomSource",
    "align",
    "bipartite",
    "cross",
    "dp",
    "flat",
    "get_matcher",
    "matcher_name",
    "nested_bipartite",
    "random_matching",
    "sort_pairs",
]

#: The matchers selectable by name. Each checks its own arguments.
MATCHERS: dict[str, Matcher] = {
    "dp": dp,
    "cross": cross,
    "flat": flat,
    "bipartite": bipartite,
    "nested-bipartite": nested_bipartite,
    "random": random_matching,
}


def get_matcher(matcher: str | Matcher) -> Matcher:
    """Returns the matcher for a name, or a function as it is.

    Args:
      matcher: a name in :data:`MATCHERS` or a callable.

    Returns:
      The matcher function.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).

    >>> get_matcher("dp") is dp
    True
    """
    if callable(matcher):
        return matcher
    if isinstance(matcher, str) and matcher in MATCHERS:
        return MATCHERS[matcher]
    raise ValueError(
        f"Unknown matcher {matcher!r}; use one of {list(MATCHERS)} or pass a function "
        "(src_tree, dst_tree, rng=None) -> dpiat_jax.Alignment."
    )


def matcher_name(matcher: str | Matcher) -> str:
    """Returns the name a report records for a matcher.

    Args:
      matcher: a name in :data:`MATCHERS` or a callable.

    Returns:
      The registry name, else the function's ``__name__`` (else its type's name).

    Raises:
      ValueError: for an unknown name.

    >>> matcher_name(nested_bipartite), matcher_name("flat")
    ('nested-bipartite', 'flat')
    """
    if isinstance(matcher, str):
        get_matcher(matcher)
        return matcher
    for name, fn in MATCHERS.items():
        if fn is matcher:
            return name
    return getattr(matcher, "__name__", type(matcher).__name__)


def align(
    src_tree: SpecTree,
    dst_tree: SpecTree,
    matcher: str | Matcher = "dp",
    rng: RandomSource = None,
) -> Alignment:
    """Aligns two spec trees with the chosen matcher.

    Args:
      src_tree: the source architecture, a nested list with ``LayerSpec`` leaves.
      dst_tree: the target architecture, likewise.
      matcher: a name in :data:`MATCHERS` (``"dp"``, the default, ``"cross"``, ``"flat"``,
        ``"bipartite"``, ``"nested-bipartite"``, ``"random"``) or a function
        ``(src_tree, dst_tree, rng=None) -> Alignment``.
      rng: randomness for the random matchers: a jax PRNG key or an int seed
        (deterministic for a given value; None means seed 0). Ignored by the others.

    Returns:
      An :class:`~dpiat_jax.alignment.Alignment`: the matcher's ``score`` and the matched
      leaf pairs as ``(src_index_path, dst_index_path)`` index paths into the given
      trees, sorted by target path.

    Raises:
      ValueError: for an unknown matcher name or a malformed tree.
      TypeError: for a malformed tree, or a matcher that returns something else than an
        ``Alignment``.

    >>> from dpiat_jax import LayerSpec
    >>> conv = LayerSpec("conv2d", (3, 3, 16, 16))
    >>> align([conv], [conv, conv])
    Alignment(score=1.4142..., pairs=[((0,), (0,)), ((0,), (1,))])
    >>> align([conv], [conv, conv], matcher="flat").score
    1.5
    """
    fn = get_matcher(matcher)
    if not any(fn is builtin for builtin in MATCHERS.values()):  # built-ins check their own
        validate_tree(src_tree, argname="src_tree")
        validate_tree(dst_tree, argname="dst_tree")
    result = fn(src_tree, dst_tree, rng=rng)
    if not isinstance(result, Alignment):
        raise TypeError(
            f"matcher {matcher_name(matcher)!r} returned {type(result).__name__}; a matcher "
            "must return a dpiat_jax.Alignment(score, pairs)."
        )
    return result
