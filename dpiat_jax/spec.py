"""Layer specifications: the architecture-only view of a network that the alignment uses.

A *spec tree* is a nested Python list whose leaves are :class:`LayerSpec` records. It is
what the blocks stage produces from a Flax module, and what a user without Flax modules
(a NAS system with its own architecture encoding) hands to :func:`dpiat_jax.align`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Union

from dpiat_jax.types import IndexPath

__all__ = [
    "LayerSpec",
    "SpecTree",
    "IndexPath",
    "validate_tree",
    "structure_key",
    "iter_leaves",
    "get_at",
]


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer as the alignment sees it: a kind and the shape of its main tensor.

    Attributes:
      kind: what the layer may match; two leaves can only match when their kinds are
        equal (e.g. ``"conv2d"``, ``"dense"``, ``"batch_norm"``, or any string).
      shape: the shape of the principal tensor (kernel, embedding, scale). An empty
        shape marks a *placeholder*: a parameter-free module that keeps its position in
        the sequence but scores 0 against everything, itself included.

    Raises:
      TypeError: for a kind that is not a string or a shape that is not a tuple of ints.
      ValueError: for a size that is not positive.

    >>> LayerSpec("conv2d", [3, 3, 16, 32])
    LayerSpec(kind='conv2d', shape=(3, 3, 16, 32))
    """

    kind: str
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str):
            raise TypeError(f"LayerSpec.kind must be a str, got {type(self.kind).__name__}.")
        try:
            shape = tuple(int(d) for d in self.shape)
        except TypeError as e:
            raise TypeError(f"LayerSpec.shape must be a tuple of ints, got {self.shape!r}.") from e
        if any(d <= 0 for d in shape):
            raise ValueError(
                f"LayerSpec.shape must hold positive sizes, got {shape!r} (kind {self.kind!r}); "
                "use shape=() for a parameter-free placeholder."
            )
        object.__setattr__(self, "shape", shape)

    @property
    def is_placeholder(self) -> bool:
        """True for a parameter-free position (empty shape).

        >>> LayerSpec("dropout", ()).is_placeholder
        True
        """
        return len(self.shape) == 0


SpecTree = Union[LayerSpec, list["SpecTree"]]  # noqa: UP007 - a runtime alias


def validate_tree(tree: Any, *, argname: str = "tree") -> list:
    """Checks that ``tree`` is a nested list with :class:`LayerSpec` leaves.

    Args:
      tree: the object to check.
      argname: the argument's name in error messages.

    Returns:
      The tree itself (unchanged), so it can be used inline.

    Raises:
      TypeError: naming the index path of the first offending element.
      ValueError: for a tree that contains itself (a cycle).

    >>> validate_tree([LayerSpec("bn", (8,)), [LayerSpec("bn", (8,))]])
    [LayerSpec(kind='bn', shape=(8,)), [LayerSpec(kind='bn', shape=(8,))]]
    """
    if not isinstance(tree, (list, tuple)):
        raise TypeError(
            f"`{argname}` must be a nested list whose leaves are dpiat_jax.LayerSpec, "
            f"got {type(tree).__name__}."
        )

    active: set[int] = set()

    def visit(node: Any, path: IndexPath) -> None:
        if isinstance(node, LayerSpec):
            return
        if isinstance(node, (list, tuple)):
            if id(node) in active:
                raise ValueError(
                    f"`{argname}` contains itself at index path {path}: a spec tree must not "
                    "have cycles. Build each block as its own list."
                )
            active.add(id(node))
            for i, child in enumerate(node):
                visit(child, path + (i,))
            active.discard(id(node))
            return
        raise TypeError(
            f"`{argname}` has a leaf of type {type(node).__name__} at index path {path}; "
            "every leaf must be a dpiat_jax.LayerSpec(kind, shape) "
            '(use LayerSpec("none", ()) for a parameter-free placeholder).'
        )

    visit(tree, ())
    return tree


def structure_key(tree: Any, *, argname: str = "tree") -> tuple:
    """Returns a hashable key of a spec tree: equal keys for trees that align identically.

    Every leaf becomes its ``(kind, shape)`` and every nested list (or tuple) the tuple of
    its children's keys, so two trees built separately but alike share one key; the
    alignment kernel caches its encodings under it. Building the key checks the tree as
    :func:`validate_tree` does, in the same walk.

    Args:
      tree: a nested list whose leaves are :class:`LayerSpec`.
      argname: the argument's name in error messages.

    Returns:
      The key, a nested tuple (a leaf's key starts with its kind, a string; a list's key
      holds only tuples, so the two never collide).

    Raises:
      TypeError, ValueError: as :func:`validate_tree`.

    >>> structure_key([LayerSpec("dense", (4, 2)), [LayerSpec("none", ())]])
    (('dense', (4, 2)), (('none', ()),))
    """
    if not isinstance(tree, (list, tuple)):
        validate_tree(tree, argname=argname)
    try:
        return _key(tree)
    except (TypeError, RecursionError):
        validate_tree(tree, argname=argname)  # raises with the offending index path
        raise


def _key(node: Sequence) -> tuple:
    out = []
    for child in node:
        if isinstance(child, LayerSpec):
            out.append((child.kind, child.shape))
        elif isinstance(child, (list, tuple)):
            out.append(_key(child))
        else:
            raise TypeError(type(child).__name__)
    return tuple(out)


def iter_leaves(tree: SpecTree, prefix: IndexPath = ()) -> Iterator[tuple[IndexPath, LayerSpec]]:
    """Yields every leaf of a spec tree with its index path, depth first.

    Args:
      tree: a spec tree (or a single leaf).
      prefix: the index path of ``tree`` itself.

    Yields:
      ``(index_path, leaf)`` in depth-first order.

    >>> [path for path, _ in iter_leaves([LayerSpec("bn", (8,)), [LayerSpec("bn", (8,))]])]
    [(0,), (1, 0)]
    """
    if isinstance(tree, LayerSpec):
        yield prefix, tree
        return
    for i, child in enumerate(tree):
        yield from iter_leaves(child, prefix + (i,))


def get_at(tree: SpecTree, path: Sequence[int]) -> SpecTree:
    """Returns the element of a nested list at an index path.

    Args:
      tree: a spec tree.
      path: one index per level.

    Returns:
      The leaf or nested list at ``path``.

    >>> get_at([LayerSpec("bn", (8,)), [LayerSpec("dense", (8, 2))]], (1, 0))
    LayerSpec(kind='dense', shape=(8, 2))
    """
    node = tree
    for i in path:
        node = node[i]  # type: ignore[index]
    return node
