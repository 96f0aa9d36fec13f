"""Sown collections: values a model stores while it runs, which are not variables.

``self.sow("intermediates", name, x)`` in a linen module (``nnx.Intermediate`` in NNX)
keeps activations of a call, as tuples. They come back from
``module.apply(..., mutable=["intermediates"])`` and are easily passed along with the
variables, yet no ``init`` creates them and no target layer could take them: they are not
transferable. :func:`split_sown` takes them out, and the trace adapters ignore them with
a :class:`IgnoredCollectionWarning` that names them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from flax import traverse_util

from dpiat_jax.types import Variables

__all__ = ["SOWN_COLLECTIONS", "IgnoredCollectionWarning", "split_sown", "drop_sown"]

#: Collections that hold sown values: linen's ``intermediates``, NNX's ``Intermediate``.
SOWN_COLLECTIONS = ("intermediates", "intermediate")


class IgnoredCollectionWarning(UserWarning):
    """A collection of the given variables is not transferable and is ignored.

    Filter it like any warning: ``warnings.simplefilter("error", IgnoredCollectionWarning)``.

    >>> issubclass(IgnoredCollectionWarning, UserWarning)
    True
    """


def _is_sown(name: str, tree: Any) -> bool:
    """A sown collection: by its name, or by its leaves (``sow`` stores tuples)."""
    if name in SOWN_COLLECTIONS:
        return True
    if not isinstance(tree, Mapping) or not tree:
        return False
    return any(isinstance(v, (tuple, list)) for v in traverse_util.flatten_dict(tree).values())


def split_sown(variables: Variables) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Splits the sown collections off a variables dict.

    Args:
      variables: collection -> nested dict (arrays, or tuples where values were sown).

    Returns:
      ``(variables without them, their names)``; the given dict is not changed.

    >>> split_sown({"params": {"w": 1}, "intermediates": {"feat": (2,)}})
    ({'params': {'w': 1}}, ('intermediates',))
    """
    sown = tuple(c for c, tree in variables.items() if _is_sown(c, tree))
    return {c: t for c, t in variables.items() if c not in sown}, sown


def drop_sown(variables: Variables, argname: str, model_name: str) -> dict[str, Any]:
    """Returns ``variables`` without sown collections, warning when there were any.

    Args:
      variables: the variables given for a model.
      argname: the user's argument, for the warning.
      model_name: the model's class name, for the warning.

    Returns:
      The variables without sown collections (the same dict when there are none).

    Warns:
      IgnoredCollectionWarning: naming each collection dropped and how to leave it out.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     kept = drop_sown({"params": {}, "intermediates": {}}, "src_params", "Net")
    >>> kept, str(caught[0].message)[:62]
    ({'params': {}}, "`src_params` holds the collection 'intermediates', values that")
    """
    kept, sown = split_sown(variables)
    for name in sown:
        warnings.warn(
            f"`{argname}` holds the collection {name!r}, values that {model_name} sowed "
            "while it ran (module.apply(..., mutable=[...]) or nnx.Intermediate), not "
            "variables that its init creates: they are not transferable and are ignored. "
            f"Pass only the variables (e.g. {{k: v for k, v in variables.items() if k != "
            f"{name!r}}}) to silence this warning.",
            IgnoredCollectionWarning,
            stacklevel=2,
        )
    return kept if sown else dict(variables)
