"""Type aliases of the public signatures (as optax and chex name theirs).

These are documentation for readers and type checkers; nothing is checked at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

__all__ = ["ArrayTree", "IndexPath", "ModulePath", "PRNGKey", "Shape", "Variables"]

#: A JAX PRNG key: a new-style typed key (``jax.random.key``) or a legacy ``uint32[2]``
#: key (``jax.random.PRNGKey``).
PRNGKey = jax.Array

#: A pytree of arrays (nested dicts, lists, tuples with array or array-like leaves).
ArrayTree = Any

#: Flax variables: collection name (``"params"``, ``"batch_stats"``...) -> nested dict.
Variables = Mapping[str, Any]

#: A tensor's shape.
Shape = tuple[int, ...]

#: A position in a nested list (a spec tree or a block tree), one index per level.
IndexPath = tuple[int, ...]

#: A module's path from the root module (``("stage1", "Conv_0")``).
ModulePath = tuple[str, ...]
