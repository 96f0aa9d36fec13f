"""The data-flow state of the jaxpr analysis: a union-find over tensor dimensions.

Its nodes are ``(scope, var, dimension)`` triples: a jaxpr variable's dimension in one
call site (scope) of the program. Two nodes in one set index the same channels. Beside
the sets the flow keeps *aliases* (which jaxpr variables hold a parameter, possibly
reshaped or transposed, and which of its dimensions), the *producing* parameter
dimensions (the free dimensions of a parameter in a contraction), the *consuming* ones
(its contracted dimensions) and the *mixed* dimensions of computed values (channels that
the program combines other than through a parameter: a reduction such as LayerNorm's
mean, a contraction of two computed values such as attention scores, a flatten). The primitive rules
that fill it are in :mod:`dpiat_jax.channels.primitives`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from jax.extend import core as jcore

from dpiat_jax.types import Shape

__all__ = ["Alias", "DimensionFlow", "Node", "is_var", "var_shape"]

#: A union-find node: ``(scope, jaxpr variable, dimension)``.
Node = tuple[int, Any, int]
#: What a variable holds of a parameter: ``(parameter index, per dimension the
#: parameter's dimension or None)``.
Alias = tuple[int, tuple[int | None, ...]]


def is_var(v: Any) -> bool:
    """Whether ``v`` is a jaxpr variable (not a literal constant).

    Args:
      v: an equation's operand or result.

    Returns:
      True for a ``jax.extend.core.Var`` that is not a ``Literal``.

    >>> import jax
    >>> is_var(jax.make_jaxpr(lambda x: x + 1.0)(2.0).jaxpr.invars[0])
    True
    """
    return isinstance(v, jcore.Var) and not isinstance(v, jcore.Literal)


def var_shape(v: Any) -> Shape:
    """Returns the shape of a jaxpr variable (``()`` for a scalar or a token).

    Args:
      v: a jaxpr variable or literal.

    Returns:
      The shape of its abstract value.

    >>> import jax.numpy as jnp
    >>> import jax
    >>> var_shape(jax.make_jaxpr(jnp.sum)(jnp.zeros((2, 3))).jaxpr.invars[0])
    (2, 3)
    """
    return tuple(getattr(v.aval, "shape", ()))


class DimensionFlow:
    """Union-find over ``(scope, var, dimension)`` nodes plus parameter aliases.

    Attributes:
      parent: the union-find forest (node -> parent node).
      alias: ``(scope, var)`` -> the :data:`Alias` of a variable that holds a parameter.
      producer: the ``(parameter index, dimension)`` pairs that produce a channel space.
      consumer: the ``(parameter index, dimension)`` pairs that a contraction sums over
        (a kernel's input dimension).
      mixed: the ``(scope, var, dimension)`` nodes of computed values whose channels the
        program combines other than through a parameter.
      cuts: ``(scope, var, dimension)`` -> the ``(start, stop)`` pieces the program cuts
        out of that dimension (``split``, ``slice``): how a fused projection's output is
        taken apart (:func:`dpiat_jax.channels.fused_axes`).

    >>> import jax
    >>> import jax.numpy as jnp
    >>> jaxpr = jax.make_jaxpr(jnp.add)(jnp.zeros(3), jnp.zeros(3)).jaxpr
    >>> a, b = jaxpr.invars
    >>> flow = DimensionFlow()
    >>> flow.union(0, a, 0, 0, b, 0)
    >>> flow.find((0, a, 0)) == flow.find((0, b, 0))
    True
    """

    def __init__(self) -> None:
        self.parent: dict[Node, Node] = {}
        self.alias: dict[tuple[int, Any], Alias] = {}
        self.producer: set[tuple[int, int]] = set()
        self.consumer: set[tuple[int, int]] = set()
        self.mixed: set[Node] = set()
        self.cuts: dict[Node, set[tuple[int, int]]] = {}
        self._scopes = itertools.count(1)

    def new_scope(self) -> int:
        """Returns a fresh scope id (scope 0 is the outermost jaxpr)."""
        return next(self._scopes)

    def find(self, n: Node) -> Node:
        """Returns the root of ``n``'s set (adding ``n`` as a singleton when new)."""
        parent = self.parent
        root = n
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[n] != root:
            parent[n], n = root, parent[n]
        return root

    def union(self, sa: int, a: Any, ia: int, sb: int, b: Any, ib: int) -> None:
        """Unites dimension ``ia`` of ``a`` (in scope ``sa``) with ``ib`` of ``b`` (in ``sb``).

        Only variables are united, and only dimensions of the same size > 1.
        """
        if not (is_var(a) and is_var(b)):
            return
        da, db = var_shape(a)[ia], var_shape(b)[ib]
        if da != db or da <= 1:
            return
        ra, rb = self.find((sa, a, ia)), self.find((sb, b, ib))
        if ra != rb:
            self.parent[ra] = rb

    def same(self, sa: int, a: Any, sb: int, b: Any) -> None:
        """Unites dimension i of ``a`` with dimension i of ``b`` (equal ranks)."""
        if is_var(a) and is_var(b) and len(var_shape(a)) == len(var_shape(b)):
            for i in range(len(var_shape(a))):
                self.union(sa, a, i, sb, b, i)

    def cut(self, scope: int, v: Any, dim: int, start: int, stop: int) -> None:
        """Records that the program takes ``[start, stop)`` of ``v``'s dimension ``dim``."""
        if is_var(v):
            self.cuts.setdefault((scope, v, dim), set()).add((int(start), int(stop)))

    def alias_of(self, scope: int, v: Any) -> Alias | None:
        """Returns what ``v`` holds of a parameter (None for a computed value)."""
        return self.alias.get((scope, v)) if is_var(v) else None

    def set_alias(
        self,
        scope: int,
        v: Any,
        src: Alias | None,
        dim_map: Mapping[int, int] | None = None,
    ) -> None:
        """Records that ``v`` holds parameter ``src[0]``.

        ``dim_map`` maps v's dimensions to the source alias's dimensions (identity when
        None); a dimension it leaves out holds no parameter dimension.
        """
        if src is None or not is_var(v):
            return
        param, dims = src
        n = len(var_shape(v))
        if dim_map is None:
            new = tuple(dims[i] if i < len(dims) else None for i in range(n))
        else:
            new = tuple(dims[dim_map[i]] if i in dim_map else None for i in range(n))
        self.alias[(scope, v)] = (param, new)

    def mark_producer(self, scope: int, v: Any, free_dims: Iterable[int]) -> None:
        """Marks the parameter dimensions behind ``v``'s ``free_dims`` as producers."""
        src = self.alias_of(scope, v)
        if src is None:
            return
        param, dims = src
        for d in free_dims:
            if dims[d] is not None:
                self.producer.add((param, dims[d]))

    def mark_consumer(self, scope: int, v: Any, dims: Iterable[int]) -> None:
        """Marks the parameter dimensions behind ``v``'s ``dims`` as consumers (summed
        over by a contraction)."""
        src = self.alias_of(scope, v)
        if src is None:
            return
        param, held = src
        for d in dims:
            if held[d] is not None:
                self.consumer.add((param, held[d]))

    def mark_mixed(self, scope: int, v: Any, dims: Iterable[int]) -> None:
        """Marks ``v``'s ``dims`` as mixed when ``v`` is a computed value (its channels
        are combined other than through a parameter)."""
        if not is_var(v) or self.alias_of(scope, v) is not None:
            return
        for d in dims:
            if var_shape(v)[d] > 1:
                self.mixed.add((scope, v, d))
