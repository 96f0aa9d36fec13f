"""Blocks: standardisation of a module hierarchy into nested lists (design.md, "Blocks").

The rules, applied recursively from the root (level 0; the only child of a module with
exactly one child stays at its parent's level):

1. a layer or placeholder is a leaf;
2. any other module becomes the list of its children's results, in order;
3. a child result is spliced into the parent list when it is a two-level structure or a
   list with fewer than two dimensional (conv, dense: :func:`dpiat_jax.kinds.is_dimensional`)
   layers below it; otherwise it is added as one element (a block if a list, a single
   layer if a leaf). Extension (issue 12, no published zoo model has such a child): a
   two-level structure with at least two sub-blocks *and* at least two single layers
   beside them is one unit (a transformer block: norm, attention, norm, MLP) and is
   added as one element, so that attention aligns with attention and MLP with MLP; so
   is a parallel block (GPT-J: one norm beside two sub-blocks that differ);
4. at level > 0, a list with more single layers than blocks is flattened one level and
   becomes a one-level structure; otherwise (and always at level 0) it is two-level.
   Extension (issue 12): a stack of transformer layers is never flattened (a unit of
   rule 3, or two blocks of one signature holding a layer or RMS norm), so that a
   two-layer encoder beside its embeddings stays a list of layers as a deeper one does;
5. a one-element list collapses to its element (one-level); the root is always a list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from dpiat_jax import kinds
from dpiat_jax.layers import Layer, ModuleNode

__all__ = ["BlockTree", "blocks", "map_tree", "to_spec_tree", "tree_leaves"]

#: Nested lists whose leaves are :class:`~dpiat_jax.layers.Layer` records.
BlockTree = list


@dataclasses.dataclass(frozen=True)
class _Structure:
    """A module's standardised children and whether they form a two-level structure."""

    items: list
    two_level: bool


def _dimensional_count(items: list) -> int:
    """The number of dimensional (conv, dense) layers below ``items``."""
    return sum(
        1
        for leaf in tree_leaves(items)
        if not leaf.is_placeholder and kinds.is_dimensional(leaf.kind)
    )


def _signature(items: list) -> tuple:
    """The kinds and main shapes of the layers below ``items``, in order."""
    return tuple((leaf.kind, leaf.shape) for leaf in tree_leaves(items))


def _is_unit(items: list) -> bool:
    """Whether a two-level structure is one unit of sub-blocks with layers between them
    (a transformer block: norm, attention, norm, MLP), which is kept as one element so
    that attention aligns with attention and MLP with MLP; a stage of blocks (no single
    layer beside them but a shortcut) is spliced as rule 3 says. A parallel block (GPT-J:
    one norm, then attention and MLP side by side) is a unit too: two sub-blocks that
    differ (a stack of layers repeats one) and norms as its only layers beside them."""
    blocks_in = [x for x in items if isinstance(x, list)]
    singles = [x for x in items if isinstance(x, Layer) and not x.is_placeholder]
    if len(blocks_in) >= 2 and len(singles) >= 2:
        return True
    return (
        len(blocks_in) == 2
        and len(singles) == 1
        and kinds.is_norm(singles[0].kind)
        and _signature(blocks_in[0]) != _signature(blocks_in[1])
    )


def _is_stack(items: list) -> bool:
    """Whether a list holds a stack of transformer layers that rule 4 must not flatten:
    a unit (:func:`_is_unit`), or at least two blocks of one signature with a layer or
    RMS norm in them (an encoder's identical layers; convolutional stages, normalised
    by batch or not at all, keep the published rule). Flattened, a two-layer encoder
    beside its embeddings would be a flat run while a three-layer one stays a list of
    blocks, and the two could not align (a block scores 0 against a layer)."""
    blocks_in = [x for x in items if isinstance(x, list)]
    if any(isinstance(x, _Unit) for x in blocks_in):
        return True
    normed = [
        _signature(x)
        for x in blocks_in
        if any(leaf.kind in (kinds.LAYER_NORM, kinds.RMS_NORM) for leaf in tree_leaves(x))
    ]
    return len(normed) != len(set(normed))


class _Unit(list):
    """A unit's elements (:func:`_is_unit`), marked so that rule 4 keeps them whole."""


def _child_items(node: ModuleNode, child_level: int) -> list:
    """Rules 1-3: the standardised children of ``node``, spliced or added as elements."""
    items: list = []
    for child in node.children:
        result = _standardise(child, child_level)
        if isinstance(result, Layer):
            items.append(result)
        elif (result.two_level and not _is_unit(result.items)) or (
            _dimensional_count(result.items) < 2
        ):
            items.extend(result.items)
        else:
            unit = result.two_level and _is_unit(result.items)
            items.append(_Unit(result.items) if unit else result.items)
    return items


def _flatten_one_level(items: list) -> list:
    """Replaces every list element of ``items`` by its elements."""
    flat: list = []
    for x in items:
        flat.extend(x if isinstance(x, list) else [x])
    return flat


def _standardise(node: ModuleNode | Layer, level: int) -> Layer | _Structure:
    """The standardised form of ``node`` at ``level``: a leaf or a structure."""
    if isinstance(node, Layer):
        return node
    child_level = level if len(node.children) == 1 else level + 1
    items = _child_items(node, child_level)
    singles = sum(1 for x in items if isinstance(x, Layer))
    if level > 0 and singles > len(items) - singles and not _is_stack(items):  # rule 4
        items, two_level = _flatten_one_level(items), False
    else:
        two_level = True
    if len(items) == 1:  # rule 5
        only = items[0]
        return only if isinstance(only, Layer) else _Structure(only, False)
    return _Structure(items, two_level)


def blocks(root: ModuleNode) -> BlockTree:
    """Returns the block tree of a traced model: nested lists of :class:`Layer` records.

    This is the "standardisation" of design.md (the rules in the module notes).

    Args:
      root: the root of a module hierarchy (:func:`dpiat_jax.layers.build_hierarchy`).

    Returns:
      A list (always, even for a one-layer model) whose elements are layers or blocks
      (lists of the same form).

    >>> from dpiat_jax.layers import Layer, ModuleNode
    >>> def dense(name):
    ...     return Layer((name,), "dense", "Dense", {}, "kernel")
    >>> pair = ModuleNode(("pair",), "Pair", (dense("a"), dense("b")))
    >>> tree = blocks(ModuleNode((), "Net", (pair, dense("head"))))
    >>> map_tree(lambda layer: layer.name, tree)
    [['a', 'b'], 'head']
    """
    result = _standardise(root, 0)
    return [result] if isinstance(result, Layer) else result.items


def map_tree(fn: Callable[[Any], Any], tree: list) -> list:
    """Applies ``fn`` to every leaf of a nested list, keeping its structure.

    Args:
      fn: the function of a leaf.
      tree: a nested list.

    Returns:
      A nested list of the same structure holding ``fn(leaf)`` for every leaf.

    >>> map_tree(str.upper, ["a", ["b", "c"]])
    ['A', ['B', 'C']]
    """
    return [map_tree(fn, x) if isinstance(x, list) else fn(x) for x in tree]


def tree_leaves(tree: list) -> list:
    """Returns the leaves of a nested list in depth-first order.

    Args:
      tree: a nested list.

    Returns:
      The non-list elements, depth first, as one flat list.

    >>> tree_leaves(["a", ["b", ["c"]], "d"])
    ['a', 'b', 'c', 'd']
    """
    out: list = []
    for x in tree:
        if isinstance(x, list):
            out.extend(tree_leaves(x))
        else:
            out.append(x)
    return out


def to_spec_tree(tree: BlockTree) -> list:
    """Replaces every :class:`Layer` of a block tree by its :class:`LayerSpec`.

    Args:
      tree: a block tree (:func:`blocks`); leaves that are not layers stay as they are.

    Returns:
      The spec tree the alignment takes (:mod:`dpiat_jax.spec`).

    >>> import jax.numpy as jnp
    >>> from dpiat_jax.layers import Layer
    >>> fc = Layer(("fc",), "dense", "Dense", {"params": {"kernel": jnp.zeros((3, 4))}}, "kernel")
    >>> to_spec_tree([[fc]])
    [[LayerSpec(kind='dense', shape=(3, 4))]]
    """
    return map_tree(lambda layer: layer.spec if isinstance(layer, Layer) else layer, tree)
