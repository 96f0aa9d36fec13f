"""Random spec trees for property-based and randomised tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from dpiat_jax.spec import LayerSpec

CHANNELS = (8, 16, 24, 32)


@st.composite
def leaves(draw) -> LayerSpec:
    """A leaf of a few kinds and shapes (placeholders included)."""
    kind = draw(st.sampled_from(["conv2d", "conv2d", "dense", "bn", "none"]))
    c = st.sampled_from(CHANNELS)
    if kind == "conv2d":
        k = draw(st.sampled_from((1, 3)))
        return LayerSpec(kind, (k, k, draw(c), draw(c)))
    if kind == "dense":
        return LayerSpec(kind, (draw(c), draw(st.sampled_from((10, 16, 32)))))
    if kind == "bn":
        return LayerSpec(kind, (draw(c),))
    return LayerSpec("none", ())


@st.composite
def trees(draw, max_depth: int = 3, max_len: int = 6) -> list:
    """A nested list up to ``max_depth`` levels, with repeated (tied) blocks."""

    def block(depth: int) -> list:
        if depth >= max_depth:
            return draw(st.lists(leaves(), min_size=1, max_size=max_len))
        templates = [block(depth + 1) for _ in range(draw(st.integers(0, 2)))]
        parts = st.one_of(leaves(), st.sampled_from(templates)) if templates else leaves()
        return draw(st.lists(parts, min_size=1, max_size=max_len))

    return block(1)


def random_tree(rng: np.random.Generator, leaves_target: int, depth: int = 3) -> list:
    """A large random tree (about ``leaves_target`` leaves) with repeated blocks.

    Built like a network: stages of repeated residual-style blocks, some stages nested
    one level deeper, with norms, placeholders and a classifier.
    """

    def leaf() -> LayerSpec:
        kind = rng.choice(["conv2d", "conv2d", "bn", "dense", "none"])
        c1, c2 = (int(x) for x in rng.choice(CHANNELS, 2))
        if kind == "conv2d":
            k = int(rng.choice([1, 3]))
            return LayerSpec("conv2d", (k, k, c1, c2))
        if kind == "bn":
            return LayerSpec("bn", (c1,))
        if kind == "dense":
            return LayerSpec("dense", (c1, c2))
        return LayerSpec("none", ())

    def block(level: int) -> list:
        if level >= depth:
            return [leaf() for _ in range(int(rng.integers(2, 8)))]
        body = []
        for _ in range(int(rng.integers(2, 5))):
            if rng.random() < 0.3:
                body.append(leaf())
            else:
                template = block(level + 1)
                body.extend([template] * int(rng.integers(1, 4)))
        return body

    tree: list = []
    while sum(1 for _ in _leaves(tree)) < leaves_target:
        tree.extend(block(1))
    return tree


def _leaves(tree):
    for x in tree:
        if isinstance(x, LayerSpec):
            yield x
        else:
            yield from _leaves(x)
