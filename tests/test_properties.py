"""Invariants of the alignment (design.md, "Alignment"), checked on random spec trees.

- a source that gains an element at either end never scores lower;
- a tree aligned with itself matches every non-placeholder leaf to its counterpart;
- padding and bucket sizes never change a result (score or pairs);
- batching sources together never changes a result;
- similarity lies in [0, 1] (1 for a tree against itself);
- the compiled kernel and the NumPy path agree;
- every pair joins two non-placeholder leaves of one kind, once per target leaf, in
  order at the top level;
- trees of any nesting (empty blocks, chains of one-element lists, leaves of ranks 1
  to 6) align as the plain-Python oracle does.

Each property runs on both kernels (``kernel_policy("jit")`` and ``kernel_policy("numpy")``).
The compiled kernel compiles once per padded shape, so its example counts are smaller;
``HYPOTHESIS_PROFILE=thorough`` scales every count up.
"""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import oracle_align, oracle_similarity
from strategies import leaves, trees

import dpiat_jax
from dpiat_jax import alignment
from dpiat_jax.alignment import alignment_scores
from dpiat_jax.alignment import kernel_policy as kernel
from dpiat_jax.matchers import align
from dpiat_jax.similarity import tree_similarity
from dpiat_jax.spec import LayerSpec, get_at, iter_leaves

#: 10x the examples under the "thorough" profile of conftest.py.
SCALE = 10 if settings().max_examples >= 1000 else 1


def examples(n: int) -> settings:
    return settings(max_examples=n * SCALE, deadline=None)


POLICIES = pytest.mark.parametrize("policy", ["jit", "numpy"])


def close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


element = st.one_of(leaves(), trees(max_depth=2, max_len=4))

# Wilder trees than strategies.trees: any nesting (empty lists, chains of one-element
# lists, blocks beside leaves at every depth) and leaves of ranks 1 to 6.
odd_leaves = st.builds(
    LayerSpec,
    st.sampled_from(["x", "y"]),
    st.lists(st.integers(1, 40), min_size=1, max_size=6).map(tuple),
)
wild_trees = st.recursive(
    st.one_of(leaves(), odd_leaves),
    lambda children: st.lists(children, max_size=4),
    max_leaves=18,
).map(lambda t: t if isinstance(t, list) else [t])
any_tree = st.one_of(trees(), wild_trees)


# ----------------------------------------------------------------------------------
# Monotonicity in the source.


@POLICIES
@examples(25)
@given(data=st.data())
def test_score_never_decreases_when_source_gains_an_element(policy, data):
    src = data.draw(any_tree, label="src")
    dst = data.draw(any_tree, label="dst")
    extra = data.draw(st.one_of(element, wild_trees), label="extra")
    with kernel(policy):
        base = align(src, dst).score
        for grown in ([extra, *src], [*src, extra]):
            score = align(grown, dst).score
            assert score >= base - 1e-6 * max(1.0, base), (grown, score, base)


# ----------------------------------------------------------------------------------
# Self-alignment.


@POLICIES
@examples(40)
@given(tree=any_tree)
def test_self_alignment_matches_every_leaf_to_itself(policy, tree):
    with kernel(policy):
        result = align(tree, tree)
        expected = [(p, p) for p, leaf in iter_leaves(tree) if not leaf.is_placeholder]
        assert result.pairs == expected
        sim = tree_similarity(tree, tree)
    assert sim == pytest.approx(1.0 if expected else 0.0, abs=1e-6)


# ----------------------------------------------------------------------------------
# Padding.

_ORIGINAL_BUCKET = alignment.bucket
PADDINGS = {
    "double": lambda x, minimum=1: _ORIGINAL_BUCKET(x, minimum) * 2,
    "plus3": lambda x, minimum=1: _ORIGINAL_BUCKET(x, minimum) + 3,
    "exact": lambda x, minimum=1: max(int(x), minimum, 1),
    "next_pow2_of_double": lambda x, minimum=1: _ORIGINAL_BUCKET(2 * max(int(x), 1) + 1, minimum),
}


def check_padding(policy, padding, src, dst, other):
    with kernel(policy):
        want = align(src, dst)
        want_batch = alignment_scores([src, other, dst], dst)
        with mock.patch.object(alignment, "bucket", PADDINGS[padding]):
            got = align(src, dst)
            got_batch = alignment_scores([src, other, dst], dst)
    assert got.pairs == want.pairs
    assert close(got.score, want.score), (got.score, want.score)
    for a, b in zip(got_batch, want_batch, strict=True):
        assert close(a, b), (got_batch, want_batch)


# The compiled kernel compiles every new padded shape: few, smaller examples.
@pytest.mark.parametrize("padding", sorted(PADDINGS))
@examples(5)
@given(src=trees(2, 5), dst=trees(2, 5), other=trees(2, 5))
def test_padding_never_changes_a_result_jit(padding, src, dst, other):
    check_padding("jit", padding, src, dst, other)


@pytest.mark.parametrize("padding", sorted(PADDINGS))
@examples(40)
@given(src=trees(), dst=trees(), other=trees())
def test_padding_never_changes_a_result_numpy(padding, src, dst, other):
    check_padding("numpy", padding, src, dst, other)


def test_padding_patch_reaches_the_kernel():
    """The patched ``bucket`` really pads: the tables grow, and so do the encodings that
    a solve uses (the padding in force is part of the encoding cache's key)."""
    tree = [LayerSpec("conv2d", (3, 3, 8, 8)), LayerSpec("bn", (8,))]
    blocks = [tuple(tree)]
    plain = alignment.block_tables(blocks, {}, 4)[0].shape
    solved = alignment.solve([tree], tree, with_choices=True).encoding.depths[0]
    with mock.patch.object(alignment, "bucket", PADDINGS["plus3"]):
        padded = alignment.block_tables(blocks, {}, 4)[0].shape
        solved_padded = alignment.solve([tree], tree, with_choices=True).encoding.depths[0]
    assert plain == (1, 2) and padded == (4, 5)
    assert solved.tables[0].shape == (1, 2) and solved_padded.tables[0].shape == (4, 5)


# ----------------------------------------------------------------------------------
# Batching, similarity, kernels agreeing.


@POLICIES
@examples(12)
@given(dst=trees(), sources=st.lists(trees(), min_size=1, max_size=4))
def test_batching_never_changes_a_score(policy, dst, sources):
    with kernel(policy):
        batched = alignment_scores(sources, dst)
        reversed_ = alignment_scores(sources[::-1], dst)[::-1]
        single = [align(s, dst).score for s in sources]
    for a, b, c in zip(batched, reversed_, single, strict=True):
        assert close(a, c) and close(b, c), (batched, reversed_, single)


@POLICIES
@examples(25)
@given(src=any_tree, dst=any_tree)
def test_similarity_in_unit_interval(policy, src, dst):
    with kernel(policy):
        sim = tree_similarity(src, dst)
        api_sim = dpiat_jax.similarity(src, dst)
    assert -1e-6 <= sim <= 1.0 + 1e-6
    assert api_sim == pytest.approx(sim, rel=1e-6, abs=1e-7)
    assert sim == pytest.approx(oracle_similarity(src, dst), rel=1e-5, abs=1e-6)


@examples(30)
@given(src=any_tree, dst=any_tree)
def test_jit_and_numpy_kernels_agree(src, dst):
    with kernel("jit"):
        jit = align(src, dst)
        jit_batch = alignment_scores([src, dst], dst)
    with kernel("numpy"):
        ref = align(src, dst)
        ref_batch = alignment_scores([src, dst], dst)
    assert jit.pairs == ref.pairs
    assert close(jit.score, ref.score, 1e-5), (jit.score, ref.score)
    for a, b in zip(jit_batch, ref_batch, strict=True):
        assert close(a, b, 1e-5)


@POLICIES
@examples(25)
@given(src=any_tree, dst=any_tree)
def test_pairs_are_well_formed(policy, src, dst):
    with kernel(policy):
        result = align(src, dst)
        self_score = align(dst, dst).score
    assert result.score >= 0.0
    assert result.score <= self_score + 1e-6 * max(1.0, self_score)
    targets = [d for _, d in result.pairs]
    assert targets == sorted(set(targets)), "each target leaf at most once, sorted"
    for s, d in result.pairs:
        a, b = get_at(src, s), get_at(dst, d)
        assert isinstance(a, LayerSpec) and isinstance(b, LayerSpec)
        assert not a.is_placeholder and not b.is_placeholder and a.kind == b.kind
        # Blocks pair with blocks: the two paths have the same depth.
        assert len(s) == len(d)
    tops = [s[0] for s, _ in result.pairs]  # monotone at the top level
    assert tops == sorted(tops)
    if result.score == 0.0:
        assert result.pairs == []


@POLICIES
@examples(30)
@given(src=wild_trees, dst=wild_trees)
def test_wild_trees_match_the_oracle(policy, src, dst):
    """Any nesting, empty blocks included, aligns as the plain-Python recurrence does."""
    with kernel(policy):
        result = align(src, dst)
    score, pairs = oracle_align(src, dst)
    assert close(result.score, score, 1e-5), (result.score, score)
    assert result.pairs == pairs
