"""Blocks: standardisation of a module hierarchy into nested lists (design.md, "Blocks").

The rules, applied recursively from the root (level 0; the only child of a module with
exactly one child stays at its parent's level):

1. a layer or placeholder is a leaf;
2. any other module becomes the list of its children's results, in order;
3. a child result is spliced into the parent list when it is a two-level structure or a
   list with fewer than two dimensional (conv, dense) layers below it; otherwise it is
   added as one element (a block if a list, a single layer if a leaf);
4. at level > 0, a list with more single layers than blocks is flattened one level and
   becomes a one-level structure; otherwise (and always at level 0) it is two-level;
5. a one-element list collapses to its element (one-level); the root is always a list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from dpiat_jax.layers import Layer, ModuleNode
from dpiat_jax.spec import is_dimensional

__all__ = ["blocks", "to_spec_tree", "map_tree", "tree_leaves"]

BlockTree = list  # nested lists whose leaves are Layer records


@dataclasses.dataclass(frozen=True)
class _Structure:
    items: list
    two_level: bool


def _dimensional_count(items: list) -> int:
    return sum(
        1 for leaf in tree_leaves(items) if not leaf.is_placeholder and is_dimensional(leaf.kind)
    )


def _standardise(node: ModuleNode | Layer, level: int) -> Layer | _Structure:
    if isinstance(node, Layer):
        return node
    child_level = level if len(node.children) == 1 else level + 1
    items: list = []
    for child in node.children:
        result = _standardise(child, child_level)
        if isinstance(result, Layer):
            items.append(result)
        elif result.two_level or _dimensional_count(result.items) < 2:
            items.extend(result.items)
        else:
            items.append(result.items)
    singles = sum(1 for x in items if isinstance(x, Layer))
    if level > 0 and singles > len(items) - singles:
        flat: list = []
        for x in items:
            flat.extend(x if isinstance(x, list) else [x])
        items, two_level = flat, False
    else:
        two_level = True
    if len(items) == 1:
        only = items[0]
        return only if isinstance(only, Layer) else _Structure(only, False)
    return _Structure(items, two_level)


def blocks(root: ModuleNode) -> BlockTree:
    """Returns the block tree of a traced model: nested lists of :class:`Layer` records.

    This is the "standardisation" of design.md; the root's result is always a list.
    """
    result = _standardise(root, 0)
    return [result] if isinstance(result, Layer) else result.items


def map_tree(fn: Callable[[Any], Any], tree: list) -> list:
    """Applies ``fn`` to every leaf of a nested list, keeping its structure."""
    return [map_tree(fn, x) if isinstance(x, list) else fn(x) for x in tree]


def tree_leaves(tree: list) -> list:
    """The leaves of a nested list in depth-first order."""
    out: list = []
    for x in tree:
        if isinstance(x, list):
            out.extend(tree_leaves(x))
        else:
            out.append(x)
    return out


def to_spec_tree(tree: BlockTree) -> list:
    """Replaces every :class:`Layer` of a block tree by its :class:`LayerSpec`."""
    return map_tree(lambda layer: layer.spec if isinstance(layer, Layer) else layer, tree)
