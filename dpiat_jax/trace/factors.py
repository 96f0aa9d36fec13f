"""Factors: how the forward pass cuts a parameter's dimensions into heads and parts.

:mod:`dpiat_jax.channels` follows whole dimensions; a reshape that splits one (a
``Dense(3 * heads * head_dim)`` output reshaped to ``(..., 3, heads, head_dim)``) ends
its space there. This module follows the *factors* of a dimension through such
reshapes, so that what the program does with each factor (cut it into parts, line it
up with another projection's heads in an attention product) is seen.

Every dimension of every jaxpr value is a list of :data:`Atom` records, major first:
``(parameter, dimension, stride, size, base)`` says that index ``i`` of the atom is
index ``base + i * stride`` of the parameter's dimension. A parameter's own dimension
is one atom of stride 1; a reshape splits atoms (the major part gets the larger
stride); an input's dimensions are atoms of parameter ``-1``. Atoms that the program
lines up (the operands of an elementwise op, the contracted and batch dimensions of a
``dot_general``) are united in a union-find, so a bias joins its kernel's output and a
query head joins the key head it is multiplied with. :func:`factor_flow` returns the
result as a :class:`FactorFlow` record; :mod:`dpiat_jax.fused` and
:mod:`dpiat_jax.heads` read it.

>>> import flax.linen as nn
>>> import jax
>>> import jax.numpy as jnp
>>> class QKV(nn.Module):
...     @nn.compact
...     def __call__(self, x):
...         qkv = nn.Dense(24, name="qkv")(x).reshape(x.shape[:-1] + (3, 2, 4))
...         return qkv[..., 0, :, :] * qkv[..., 1, :, :] + qkv[..., 2, :, :]
>>> x = jnp.zeros((1, 5, 4))
>>> flow = factor_flow(QKV(), jax.eval_shape(QKV().init, jax.random.key(0), x), x)
>>> flow.keys[1], sorted(flow.cuts[(1, 1, 8, 3, 0)])
(('params', 'qkv', 'kernel'), [(0, 1), (1, 2), (2, 3)])
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from jax.extend import core as jcore

from dpiat_jax.trace.inputs import positional
from dpiat_jax.types import ArrayTree, Shape, Variables

__all__ = ["Atom", "FactorFlow", "factor_flow", "split_atom", "refine"]

#: ``(parameter index, dimension, stride, size, base)``; parameter ``-1`` is no parameter.
Atom = tuple[int, int, int, int, int]
#: A value's dimension: its atoms, major first (empty for a dimension of size 1).
Dims = tuple[tuple[Atom, ...], ...]


def split_atom(atom: Atom, major: int) -> tuple[Atom, Atom]:
    """Splits an atom into a major factor of size ``major`` and the minor rest.

    Args:
      atom: the atom; its size must be a multiple of ``major``.
      major: the size of the major factor.

    Returns:
      ``(major atom, minor atom)``: the major one strides over the minor one.

    >>> split_atom((0, 1, 1, 12, 0), 3)
    ((0, 1, 4, 3, 0), (0, 1, 1, 4, 0))
    """
    p, d, s, n, b = atom
    minor = n // major
    return (p, d, s * minor, major, b), (p, d, s, minor, 0)


def refine(a: Sequence[Atom], b: Sequence[Atom]) -> list[tuple[Atom, Atom]] | None:
    """Lines up two atom lists of the same total size on their common refinement.

    Args:
      a: one dimension's atoms, major first.
      b: another's, with the same product of sizes.

    Returns:
      The pairs of atoms that index together, or None when the sizes do not divide.

    >>> refine([(0, 0, 1, 4, 0)], [(1, 0, 1, 2, 0), (-1, 5, 1, 2, 0)])
    [((0, 0, 2, 2, 0), (1, 0, 1, 2, 0)), ((0, 0, 1, 2, 0), (-1, 5, 1, 2, 0))]
    """
    left, right, out = list(a), list(b), []
    while left and right:
        x, y = left.pop(0), right.pop(0)
        if x[3] == y[3]:
            out.append((x, y))
        elif x[3] > y[3] and x[3] % y[3] == 0:
            major, minor = split_atom(x, y[3])
            out.append((major, y))
            left.insert(0, minor)
        elif y[3] > x[3] and y[3] % x[3] == 0:
            major, minor = split_atom(y, x[3])
            out.append((x, major))
            right.insert(0, minor)
        else:
            return None
    return out if not left and not right else None


@dataclasses.dataclass(frozen=True)
class FactorFlow:
    """What the forward pass does with the factors of the parameters' dimensions.

    Attributes:
      keys: the parameters' flattened variables keys (an atom's parameter indexes them).
      shapes: their shapes.
      classes: atom -> its union-find root (atoms the program lines up share a root).
      cuts: atom -> the ``(start, stop)`` pieces the program cuts out of it.
      batch: atoms lined up as batch dimensions of a ``dot_general`` whose operands both
        come from parameters (the heads of an attention product).
      groups: root -> the atoms of its class.
      lone: parameter atoms lined up as batch dimensions of such a ``dot_general``
        with an atom of no parameter (query heads served by one broadcast kv head).

    >>> flow = FactorFlow((("params", "w"),), ((2, 6),), {}, {}, frozenset(), {})
    >>> flow.is_whole((0, 1, 1, 6, 0)), flow.is_major((0, 1, 2, 3, 0))
    (True, True)
    """

    keys: tuple[tuple[str, ...], ...]
    shapes: tuple[Shape, ...]
    classes: Mapping[Atom, Atom]
    cuts: Mapping[Atom, frozenset[tuple[int, int]]]
    batch: frozenset[Atom]
    groups: Mapping[Atom, tuple[Atom, ...]]
    lone: frozenset[Atom] = frozenset()

    def root(self, atom: Atom) -> Atom:
        """Returns the representative of ``atom``'s class.

        Args:
          atom: any atom.

        Returns:
          Its class's root (the atom itself when the program lines it up with nothing).
        """
        return self.classes.get(atom, atom)

    def members(self, atom: Atom) -> tuple[Atom, ...]:
        """Returns the atoms of ``atom``'s class.

        Args:
          atom: any atom.

        Returns:
          Every atom the program lines up with it (``(atom,)`` when none).
        """
        return self.groups.get(self.root(atom), (atom,))

    def is_whole(self, atom: Atom) -> bool:
        """Whether ``atom`` is a whole parameter dimension.

        Args:
          atom: any atom.

        Returns:
          True for a parameter's own dimension (stride 1, from 0, its full size).
        """
        p, d, s, n, b = atom
        return p >= 0 and s == 1 and b == 0 and self.shapes[p][d] == n

    def is_major(self, atom: Atom) -> bool:
        """Whether ``atom`` is the major factor of a parameter dimension.

        Args:
          atom: any atom.

        Returns:
          True when its stride is over 1 and it spans the whole dimension from 0.
        """
        p, d, s, n, b = atom
        return p >= 0 and s > 1 and b == 0 and self.shapes[p][d] == s * n


class _Walk:
    """The mutable state of one walk: atoms per value, unions, cuts, batch atoms."""

    def __init__(self) -> None:
        self.env: dict[Any, Dims] = {}
        self.parent: dict[Atom, Atom] = {}
        self.cuts: dict[Atom, set[tuple[int, int]]] = {}
        self.batch: set[Atom] = set()
        self.lone: set[Atom] = set()
        self._fresh = itertools.count()

    def fresh(self, shape: Shape) -> Dims:
        return tuple(() if n == 1 else ((-1, next(self._fresh), 1, n, 0),) for n in shape)

    def dims(self, v: Any) -> Dims:
        if not isinstance(v, jcore.Var) or isinstance(v, jcore.Literal):
            return self.fresh(_shape(v))
        if v not in self.env:
            self.env[v] = self.fresh(_shape(v))
        return self.env[v]

    def set(self, v: Any, dims: Dims) -> None:
        if isinstance(v, jcore.Var) and not isinstance(v, jcore.Literal):
            self.env[v] = tuple(dims)

    def find(self, a: Atom) -> Atom:
        root = a
        while self.parent.setdefault(root, root) != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def align(self, a: Sequence[Atom], b: Sequence[Atom], batch: bool = False) -> None:
        """Unites the parameter atoms two lined-up dimensions share; as batch
        dimensions, their parameter atoms are heads (``lone`` when the other side's
        atom is no parameter's: the query heads that one kv head, broadcast, serves)."""
        for x, y in refine(a, b) or ():
            if x[0] >= 0 and y[0] >= 0:
                rx, ry = self.find(x), self.find(y)
                if rx != ry:
                    self.parent[rx] = ry
            if batch and x[0] >= 0 and y[0] >= 0:
                self.batch.update((x, y))
            elif batch:
                self.lone.update(atom for atom in (x, y) if atom[0] >= 0)


def _shape(v: Any) -> Shape:
    return tuple(getattr(getattr(v, "aval", None), "shape", ()))


def _regroup(walk: _Walk, atoms: Sequence[Atom], sizes: Shape) -> Dims:
    """The atoms of a reshape's operand regrouped into dimensions of ``sizes``."""
    queue, out = list(atoms), []
    for size in sizes:
        got, need = [], size
        while need > 1 and queue:
            atom = queue.pop(0)
            if atom[3] <= need and need % atom[3] == 0:
                got.append(atom)
                need //= atom[3]
            elif atom[3] % need == 0:
                major, minor = split_atom(atom, need)
                got.append(major)
                queue.insert(0, minor)
                need = 1
            else:
                return tuple(out) + walk.fresh(sizes[len(out) :])
        if need > 1:
            return tuple(out) + walk.fresh(sizes[len(out) :])
        out.append(tuple(got))
    return tuple(out)


def _cut(walk: _Walk, dim: tuple[Atom, ...], start: int, stop: int, size: int):
    """Records a cut of a dimension and returns the kept piece's atoms."""
    if start == 0 and stop == size:
        return dim
    if len(dim) != 1 or dim[0][0] < 0:
        return walk.fresh((stop - start,))[0]
    p, d, s, n, b = dim[0]
    walk.cuts.setdefault(dim[0], set()).add((start, stop))
    return () if stop - start == 1 else ((p, d, s, stop - start, b + start * s),)


def _elementwise(walk: _Walk, eqn: Any) -> None:
    out = eqn.outvars[0]
    shape = _shape(out)
    operands = [v for v in eqn.invars if len(_shape(v)) == len(shape)]
    if len(eqn.outvars) != 1 or not any(_shape(v) == shape for v in operands):
        _opaque(walk, eqn)
        return
    chosen = list(walk.fresh(shape))
    for i, n in enumerate(shape):
        dims = [walk.dims(v)[i] for v in operands if _shape(v)[i] == n]
        options = [d for d in dims if any(a[0] >= 0 for a in d)]
        chosen[i] = options[0] if options else dims[0]
        for other in options[1:]:
            walk.align(options[0], other)
    walk.set(out, chosen)


def _dot_general(walk: _Walk, eqn: Any) -> None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = (walk.dims(v) for v in eqn.invars[:2])
    both = all(any(a[0] >= 0 for d in x for a in d) for x in (lhs, rhs))
    for i, j in zip(lc, rc):
        walk.align(lhs[i], rhs[j])
    for i, j in zip(lb, rb):
        walk.align(lhs[i], rhs[j], batch=both)
    free_l = [lhs[i] for i in range(len(lhs)) if i not in lc and i not in lb]
    free_r = [rhs[i] for i in range(len(rhs)) if i not in rc and i not in rb]
    batch = [lhs[i] if any(a[0] >= 0 for a in lhs[i]) else rhs[j] for i, j in zip(lb, rb)]
    walk.set(eqn.outvars[0], batch + free_l + free_r)


def _conv(walk: _Walk, eqn: Any) -> None:
    """A convolution: the output features are the kernel's, the batch the input's."""
    lhs_spec, rhs_spec, out_spec = eqn.params["dimension_numbers"]
    lhs, rhs = (walk.dims(v) for v in eqn.invars[:2])
    if eqn.params.get("feature_group_count", 1) == 1:
        walk.align(lhs[lhs_spec[1]], rhs[rhs_spec[1]])
    dims = list(walk.fresh(_shape(eqn.outvars[0])))
    dims[out_spec[0]] = lhs[lhs_spec[0]]
    dims[out_spec[1]] = rhs[rhs_spec[0]]
    walk.set(eqn.outvars[0], dims)


def _broadcast_in_dim(walk: _Walk, eqn: Any) -> None:
    src, out = eqn.invars[0], eqn.outvars[0]
    dims, shape = list(walk.fresh(_shape(out))), _shape(out)
    for k, j in enumerate(eqn.params["broadcast_dimensions"]):
        if _shape(src)[k] == shape[j]:
            dims[j] = walk.dims(src)[k]
    walk.set(out, dims)


def _concatenate(walk: _Walk, eqn: Any) -> None:
    """A concatenation: every dimension but the joined one is lined up across the
    operands and kept (a rotary embedding's rotated and passed parts of each head keep
    the heads); the joined dimension is new."""
    axis, shape = eqn.params["dimension"], _shape(eqn.outvars[0])
    dims = list(walk.fresh(shape))
    for i in range(len(shape)):
        options = [walk.dims(v)[i] for v in eqn.invars]
        options = [d for d in options if any(a[0] >= 0 for a in d)]
        if i == axis or not options:
            continue
        dims[i] = options[0]
        for other in options[1:]:
            walk.align(options[0], other)
    walk.set(eqn.outvars[0], dims)


def _reshape(walk: _Walk, eqn: Any) -> None:
    atoms = [a for d in walk.dims(eqn.invars[0]) for a in d]
    walk.set(eqn.outvars[0], _regroup(walk, atoms, _shape(eqn.outvars[0])))


def _transpose(walk: _Walk, eqn: Any) -> None:
    dims = walk.dims(eqn.invars[0])
    walk.set(eqn.outvars[0], [dims[i] for i in eqn.params["permutation"]])


def _drop(axes: Sequence[int]) -> Callable[[_Walk, Any], None]:
    def rule(walk: _Walk, eqn: Any) -> None:
        dims = walk.dims(eqn.invars[0])
        walk.set(eqn.outvars[0], [d for i, d in enumerate(dims) if i not in set(axes)])

    return rule


def _squeeze(walk: _Walk, eqn: Any) -> None:
    _drop(eqn.params["dimensions"])(walk, eqn)


def _reduction(walk: _Walk, eqn: Any) -> None:
    _drop(eqn.params["axes"])(walk, eqn)


def _slice(walk: _Walk, eqn: Any) -> None:
    src = eqn.invars[0]
    dims, shape = walk.dims(src), _shape(src)
    starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params.get("strides") or (1,) * len(shape)
    out = []
    for i, dim in enumerate(dims):
        if strides[i] != 1:
            out.append(walk.fresh((_shape(eqn.outvars[0])[i],))[0])
        else:
            out.append(_cut(walk, dim, starts[i], limits[i], shape[i]))
    walk.set(eqn.outvars[0], out)


def _split(walk: _Walk, eqn: Any) -> None:
    src, axis = eqn.invars[0], eqn.params["axis"]
    dims, start = walk.dims(src), 0
    for out, size in zip(eqn.outvars, eqn.params["sizes"]):
        piece = _cut(walk, dims[axis], start, start + int(size), _shape(src)[axis])
        walk.set(out, [piece if i == axis else d for i, d in enumerate(dims)])
        start += int(size)


def _unstack(walk: _Walk, eqn: Any) -> None:
    src, axis = eqn.invars[0], eqn.params["axis"]
    dims = walk.dims(src)
    for k, out in enumerate(eqn.outvars):
        _cut(walk, dims[axis], k, k + 1, _shape(src)[axis])
        walk.set(out, [d for i, d in enumerate(dims) if i != axis])


def _call(walk: _Walk, sub: jcore.Jaxpr, ins: Sequence[Dims], outs: Sequence[Any]) -> None:
    for v, dims in zip(sub.invars, ins):
        walk.set(v, dims)
    _walk_jaxpr(walk, sub)
    for v, out in zip(sub.outvars, outs):
        walk.set(out, walk.dims(v))


def _scan(walk: _Walk, eqn: Any) -> None:
    p = eqn.params
    sub = _open(p["jaxpr"])
    stepped = p["num_consts"] + p["num_carry"]
    ins = [walk.dims(v) if k < stepped else walk.dims(v)[1:] for k, v in enumerate(eqn.invars)]
    for v, dims in zip(sub.invars, ins):
        walk.set(v, dims)
    _walk_jaxpr(walk, sub)
    for k, (v, out) in enumerate(zip(sub.outvars, eqn.outvars)):
        dims = walk.dims(v)
        walk.set(out, dims if k < p["num_carry"] else walk.fresh(_shape(out)[:1]) + dims)


def _open(jaxpr: Any) -> jcore.Jaxpr | None:
    if isinstance(jaxpr, jcore.ClosedJaxpr):
        return jaxpr.jaxpr
    return jaxpr if isinstance(jaxpr, jcore.Jaxpr) else None


def _opaque(walk: _Walk, eqn: Any) -> None:
    """A primitive without a rule: entered when it carries a sub-jaxpr with matching
    inputs and outputs (``jit``, ``remat``, ``custom_jvp/vjp``), else new atoms."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = _open(eqn.params.get(key))
        if sub is not None:
            if len(sub.invars) == len(eqn.invars) and len(sub.outvars) == len(eqn.outvars):
                _call(walk, sub, [walk.dims(v) for v in eqn.invars], eqn.outvars)
                return
            break
    for out in eqn.outvars:
        walk.set(out, walk.fresh(_shape(out)))


_RULES: Mapping[str, Callable[[_Walk, Any], None]] = {
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape,
    "concatenate": _concatenate,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "slice": _slice,
    "split": _split,
    "unstack": _unstack,
    "scan": _scan,
    **{
        name: _reduction
        for name in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin")
    },
}


def _walk_jaxpr(walk: _Walk, jaxpr: jcore.Jaxpr) -> None:
    for eqn in jaxpr.eqns:
        rule = _RULES.get(eqn.primitive.name)
        if rule is not None:
            rule(walk, eqn)
        elif "jaxpr" in eqn.params or "call_jaxpr" in eqn.params or "fun_jaxpr" in eqn.params:
            _opaque(walk, eqn)
        else:
            _elementwise(walk, eqn)


def _abstract(x: ArrayTree) -> ArrayTree:
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype) if hasattr(a, "dtype") else a, x
    )


def factor_flow(
    module: nn.Module,
    variables: Variables,
    sample_input: ArrayTree,
    call_kwargs: Mapping[str, Any] | None = None,
) -> FactorFlow:
    """Walks the jaxpr of ``module.apply`` and follows the factors of every parameter.

    Args:
      module: a linen module.
      variables: its variables (arrays or ``jax.ShapeDtypeStruct``).
      sample_input: an input it takes (several positional inputs as
        :class:`~dpiat_jax.trace.inputs.Inputs`).
      call_kwargs: its call keywords.

    Returns:
      The :class:`FactorFlow` (nothing computed: the jaxpr is traced from shapes).

    Raises:
      Whatever tracing the forward pass raises.

    >>> import flax.linen as nn
    >>> import jax
    >>> import jax.numpy as jnp
    >>> x = jnp.zeros((1, 3))
    >>> model = nn.Dense(4)
    >>> flow = factor_flow(model, jax.eval_shape(model.init, jax.random.key(0), x), x)
    >>> flow.root((0, 0, 1, 4, 0)) == flow.root((1, 1, 1, 4, 0))  # bias with kernel output
    True
    """
    flat = {
        tuple(str(k) for k in key): v
        for key, v in traverse_util.flatten_dict(dict(variables)).items()
    }
    keys = list(flat)
    rngs = {"dropout": jax.random.key(0), "params": jax.random.key(1)}
    kwargs = dict(call_kwargs or {})

    def fn(leaves, *args):
        tree = traverse_util.unflatten_dict(dict(zip(keys, leaves)))
        return module.apply(tree, *args, rngs=rngs, mutable=True, **kwargs)

    args = positional(sample_input)
    jaxpr = jax.make_jaxpr(fn)(_abstract([flat[k] for k in keys]), *_abstract(args)).jaxpr
    walk = _Walk()
    shapes = tuple(tuple(np.shape(flat[k])) for k in keys)
    for idx, v in enumerate(jaxpr.invars[: len(keys)]):
        walk.set(v, [((idx, d, 1, n, 0),) if n > 1 else () for d, n in enumerate(shapes[idx])])
    _walk_jaxpr(walk, jaxpr)
    classes = {a: walk.find(a) for a in list(walk.parent)}
    groups: dict[Atom, list[Atom]] = {}
    for atom, root in classes.items():
        groups.setdefault(root, []).append(atom)
    cuts = {a: frozenset(c) for a, c in walk.cuts.items()}
    return FactorFlow(
        tuple(keys),
        shapes,
        classes,
        cuts,
        frozenset(walk.batch),
        {root: tuple(atoms) for root, atoms in groups.items()},
        frozenset(walk.lone),
    )
