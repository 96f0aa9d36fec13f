"""Placement: where a transfer's result lives (``out_shardings``).

``out_shardings`` is one ``jax.sharding.Sharding`` for every array or a pytree of
shardings with the result's structure (or a prefix of it). It is handed to ``jax.jit``
(an eager transfer) or to ``jax.lax.with_sharding_constraint`` (inside a user's jitted
program), so the result is created where it belongs and never gathered on one device.
"""

from __future__ import annotations

from typing import Any

import jax

from dpiat_jax.types import ArrayTree

__all__ = ["check_shardings", "shardings_key", "constrain"]


def check_shardings(out_shardings: Any, abstract_out: ArrayTree) -> None:
    """Checks that ``out_shardings`` fits the result's structure.

    Args:
      out_shardings: None, one sharding, or a pytree (prefix) of shardings.
      abstract_out: the result's structure (any leaves).

    Raises:
      ValueError: naming ``out_shardings`` and the result's structure.

    >>> check_shardings(None, {"params": {}})
    """
    if out_shardings is None:
        return
    try:
        leaves = jax.tree.leaves(
            jax.tree.map(lambda s, _: s, out_shardings, abstract_out, is_leaf=_is_sharding)
        )
    except (ValueError, TypeError) as err:
        raise ValueError(
            "`out_shardings` must be one jax.sharding.Sharding for every array or a pytree "
            f"of shardings with the result's structure ({jax.tree.structure(abstract_out)}): "
            f"{err}"
        ) from err
    wrong = [type(s).__name__ for s in leaves if not _is_sharding(s)]
    if wrong:
        raise ValueError(f"`out_shardings` must hold jax.sharding.Sharding leaves, got {wrong[0]}.")


def _is_sharding(x: Any) -> bool:
    return isinstance(x, jax.sharding.Sharding)


def shardings_key(out_shardings: Any) -> Any:
    """Returns a hashable key for ``out_shardings`` (to cache a compiled program).

    Args:
      out_shardings: None, one sharding or a pytree of shardings.

    Returns:
      ``(treedef, leaves)``.

    >>> shardings_key(None) is None
    True
    """
    if out_shardings is None:
        return None
    leaves, treedef = jax.tree.flatten(out_shardings, is_leaf=_is_sharding)
    return treedef, tuple(leaves)


def constrain(out: ArrayTree, out_shardings: Any) -> ArrayTree:
    """Returns ``out`` constrained to ``out_shardings`` inside a traced program.

    Args:
      out: the result (traced arrays).
      out_shardings: None (left to the compiler), one sharding, or a pytree of them.

    Returns:
      ``out`` (with sharding constraints when given).

    >>> constrain({"w": 1}, None)
    {'w': 1}
    """
    if out_shardings is None:
        return out
    if _is_sharding(out_shardings):
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, out_shardings), out)
    return jax.lax.with_sharding_constraint(out, out_shardings)
