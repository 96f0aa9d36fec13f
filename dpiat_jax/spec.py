"""Layer specifications: the architecture-only view of a network that the alignment uses.

A *spec tree* is a nested Python list whose leaves are :class:`LayerSpec` records. It is
what the blocks stage produces from a Flax module, and what a user without Flax modules
(a NAS system with its own architecture encoding) hands to :func:`dpiat_jax.align`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Union

__all__ = [
    "LayerSpec",
    "SpecTree",
    "IndexPath",
    "validate_tree",
    "iter_leaves",
    "get_at",
    "DIMENSIONAL_KINDS",
    "is_dimensional",
]

IndexPath = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer as the alignment sees it: a kind and the shape of its main tensor.

    Attributes:
      kind: what the layer may match; two leaves can only match when their kinds are
        equal (e.g. ``"conv2d"``, ``"dense"``, ``"batch_norm"``, or any string).
      shape: the shape of the principal tensor (kernel, embedding, scale). An empty
        shape marks a *placeholder*: a parameter-free module that keeps its position in
        the sequence but scores 0 against everything, itself included.
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
        """True for a parameter-free position (empty shape)."""
        return len(self.shape) == 0


SpecTree = Union[LayerSpec, list["SpecTree"]]  # noqa: UP007 - a runtime alias

#: Kinds that count as "dimensional" layers (conv, dense) for the blocks rules.
DIMENSIONAL_KINDS = ("conv", "dense", "einsum")


def is_dimensional(kind: str) -> bool:
    """Whether a layer of this kind is a conv or dense layer (design.md, blocks rule 3)."""
    k = kind.lower()
    return any(token in k for token in DIMENSIONAL_KINDS) and not k.startswith("own:")


def validate_tree(tree: Any, *, argname: str = "tree") -> list:
    """Checks that ``tree`` is a nested list with :class:`LayerSpec` leaves.

    Returns the tree itself (unchanged) so it can be used inline. Raises ``TypeError``
    naming the index path of the first offending element, and ``ValueError`` for a tree
    that contains itself (a cycle).
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


def iter_leaves(tree: SpecTree, prefix: IndexPath = ()) -> Iterator[tuple[IndexPath, LayerSpec]]:
    """Yields ``(index_path, leaf)`` for every leaf in depth-first order."""
    if isinstance(tree, LayerSpec):
        yield prefix, tree
        return
    for i, child in enumerate(tree):
        yield from iter_leaves(child, prefix + (i,))


def get_at(tree: SpecTree, path: Sequence[int]) -> SpecTree:
    """Returns the element of a nested list at an index path."""
    node = tree
    for i in path:
        node = node[i]  # type: ignore[index]
    return node
