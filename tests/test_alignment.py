"""The compiled alignment against the plain-Python oracle of the same recurrence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from oracle import oracle_align, oracle_similarity
from strategies import random_tree, trees

from dpiat_jax.alignment import alignment_scores, kernel_policy
from dpiat_jax.matchers import align
from dpiat_jax.similarity import tree_similarity
from dpiat_jax.spec import LayerSpec


@pytest.fixture(params=["jit", "numpy"])
def kernel(request):
    """Runs a test on the compiled kernel and on the NumPy fast path."""
    with kernel_policy(request.param):
        yield request.param


def conv(a: int, b: int) -> LayerSpec:
    return LayerSpec("conv2d", (3, 3, a, b))


def bn(c: int) -> LayerSpec:
    return LayerSpec("bn", (c,))


def _assert_same(src, dst):
    score, pairs = oracle_align(src, dst)
    result = align(src, dst)
    assert result.score == pytest.approx(score, rel=1e-5, abs=1e-6)
    assert result.pairs == pairs


@pytest.mark.parametrize("policy", ["jit", "numpy"])
@given(src=trees(), dst=trees())
def test_matches_oracle_on_random_trees(policy, src, dst):
    with kernel_policy(policy):
        _assert_same(src, dst)


@pytest.mark.parametrize("seed", range(6))
def test_matches_oracle_on_large_trees(kernel, seed):
    rng = np.random.default_rng(seed)
    src = random_tree(rng, int(rng.integers(100, 300)))
    dst = random_tree(rng, int(rng.integers(100, 300)))
    _assert_same(src, dst)


def test_hand_checked_run():
    block = [conv(16, 16), bn(16), conv(16, 16), bn(16)]
    src = [conv(3, 16), bn(16), block, LayerSpec("dense", (16, 10))]
    dst = [conv(3, 16), bn(16), block, block, LayerSpec("none", ()), LayerSpec("dense", (16, 10))]
    result = align(src, dst)
    # stem (1 + 1), one source block seeding two target blocks ((4 + 4) / sqrt 2), head 1.
    assert result.score == pytest.approx(3 + 8 / np.sqrt(2), rel=1e-6)
    inner = [((2, r), (t, r)) for t in (2, 3) for r in range(4)]
    assert result.pairs == [((0,), (0,)), ((1,), (1,)), *inner, ((3,), (5,))]


def test_shape_score_and_kinds():
    assert align([conv(8, 16)], [conv(16, 16)]).score == pytest.approx(0.5)
    assert align([conv(8, 16)], [bn(16)]).score == 0.0
    # A rank difference ignores the trailing dimensions.
    assert align([LayerSpec("x", (4, 2))], [LayerSpec("x", (2,))]).score == pytest.approx(0.5)


def test_placeholders_score_zero_even_against_themselves():
    ph = LayerSpec("none", ())
    result = align([ph, ph], [ph, ph])
    assert result.score == 0.0 and result.pairs == []


def test_identity_matches_every_leaf_and_similarity_one(kernel):
    rng = np.random.default_rng(3)
    tree = random_tree(rng, 120)
    result = align(tree, tree)
    assert all(s == d for s, d in result.pairs)
    from dpiat_jax.spec import iter_leaves

    expected = [p for p, leaf in iter_leaves(tree) if not leaf.is_placeholder]
    assert [d for _, d in result.pairs] == expected
    assert tree_similarity(tree, tree) == pytest.approx(1.0)


def test_batched_scores_equal_single_alignments(kernel):
    rng = np.random.default_rng(7)
    target = random_tree(rng, 60)
    sources = [random_tree(rng, int(n)) for n in rng.integers(10, 120, size=5)]
    batched = alignment_scores(sources, target)
    single = [align(s, target).score for s in sources]
    np.testing.assert_allclose(batched, single, rtol=1e-5)


def test_similarity_against_oracle():
    rng = np.random.default_rng(11)
    a, b = random_tree(rng, 80), random_tree(rng, 50)
    assert tree_similarity(a, b) == pytest.approx(oracle_similarity(a, b), rel=1e-5)
    assert 0.0 <= tree_similarity(a, b) <= 1.0 + 1e-6


def test_empty_trees():
    assert align([], [conv(3, 3)]).score == 0.0
    assert align([conv(3, 3)], []).pairs == []


def test_unknown_kernel_policy():
    with pytest.raises(ValueError, match="kernel policy"):
        with kernel_policy("gpu-please"):
            pass
    with pytest.raises(ValueError, match="kernel policy"):
        alignment_scores([[conv(3, 3)]], [conv(3, 3)], policy="gpu")


# ----------------------------------------------------------------------------------
# No global state: the kernel policy is per context, JAX's configuration untouched.


def test_kernel_policy_nests_restores_and_stays_in_its_thread():
    import threading

    from dpiat_jax import alignment

    seen = {}

    def other_thread():
        seen["other"] = alignment.current_policy()

    assert alignment.current_policy() == "auto"
    with kernel_policy("numpy") as outer:
        assert outer == "numpy" and alignment.current_policy() == "numpy"
        with kernel_policy("jit"):
            assert alignment.current_policy() == "jit"
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
        assert alignment.current_policy() == "numpy"
        with pytest.raises(RuntimeError):
            with kernel_policy("jit"):
                raise RuntimeError("restored even on errors")
        assert alignment.current_policy() == "numpy"
    assert alignment.current_policy() == "auto"
    assert seen["other"] == "auto"  # a new thread starts from the default


def test_one_align_and_no_process_wide_switches():
    import dpiat_jax
    from dpiat_jax import alignment, matchers

    assert dpiat_jax.align is matchers.align
    for gone in ("align", "set_kernel", "similarity_of_trees", "_enable_compilation_cache"):
        assert not hasattr(alignment, gone), gone


def test_structurally_equal_trees_share_one_encoding():
    from dpiat_jax import alignment

    def build():
        block = [conv(8, 8), bn(8)]
        return [conv(3, 8), block, [conv(8, 8), bn(8)], LayerSpec("dense", (8, 10))]

    first = alignment.solve([build()], build(), with_choices=True)
    again = alignment.solve([build()], build(), with_choices=True)
    assert again.encoding is first.encoding
    assert align(build(), build()) == align(build(), build())
    other = alignment.solve([build()], build()[:3], with_choices=True)
    assert other.encoding is not first.encoding


_CONFIG_CHILD = r"""
import jax, jax.monitoring
before = dict(jax.config.values)
compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: compiles.append(event)
    if event == "/jax/core/compile/backend_compile_duration" else None)
import dpiat_jax
from dpiat_jax import LayerSpec
from dpiat_jax.alignment import alignment_scores, wait_for_compiles
assert dict(jax.config.values) == before, "import changed jax.config"
block = [LayerSpec("conv2d", (3, 3, 13, 13)), LayerSpec("bn", (13,))]
src = [LayerSpec("conv2d", (3, 3, 3, 13)), block, block, LayerSpec("dense", (13, 7))]
dst = [LayerSpec("conv2d", (3, 3, 3, 13)), block, LayerSpec("dense", (13, 7))]
counts = []
for i in range(4):
    result = dpiat_jax.align(src, dst)
    if i == 1:  # the second sighting compiles in the background; wait for it
        assert wait_for_compiles(timeout=300)
    counts.append(len(compiles))
for _ in range(3):
    alignment_scores([src, dst], dst)
    dpiat_jax.similarity(src, dst)
after = dict(jax.config.values)
changed = {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
           if before.get(k) != after.get(k)}
assert not changed, changed
print("COUNTS", counts, result.score)
"""


def test_library_changes_no_jax_config_and_compiles_on_second_sighting():
    """In a fresh process: importing and aligning (default settings, several times)
    leaves every ``jax.config`` value as it was; the first alignment of new shapes runs
    without compiling (NumPy), the second starts a compile in the background (waited
    for here), later ones reuse the compiled code."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _CONFIG_CHILD], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("COUNTS"))
    counts = eval(line.split(" ", 1)[1].rsplit(" ", 1)[0])  # noqa: S307 - our own output
    assert counts[0] == 0, counts  # first sighting: the NumPy path, nothing compiled
    assert counts[1] > 0, counts  # second sighting: compiled (in the background)
    assert counts[3] == counts[1], counts  # then reused


_CACHE_CHILD = r"""
import os, sys, jax
import dpiat_jax
os.chdir(sys.argv[1])
os.environ["XDG_CACHE_HOME"] = os.path.join(sys.argv[1], "xdg")
default = dpiat_jax.enable_compilation_cache()
assert default == os.path.join(sys.argv[1], "xdg", "dpiat_jax", "jax_compilation_cache"), default
relative = dpiat_jax.enable_compilation_cache("rel/cache")
assert relative == os.path.join(os.path.realpath(sys.argv[1]), "rel", "cache") or \
    relative == os.path.join(sys.argv[1], "rel", "cache"), relative
assert os.path.isabs(relative) and os.path.isdir(relative) and os.path.isdir(default)
assert jax.config.values["jax_compilation_cache_dir"] == relative
print("OK")
"""


def test_enable_compilation_cache_is_explicit_and_returns_an_absolute_path(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _CACHE_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("seed", range(4))
def test_row_and_column_kernels_record_the_same_choices(seed):
    """With fewer targets than sources the compiled kernel runs row by row; its scores
    and choices equal the column-by-column NumPy path's on the real part of the table."""
    from dpiat_jax.alignment import solve

    rng = np.random.default_rng(seed)
    src, dst = random_tree(rng, 160), random_tree(rng, 40)
    jit = solve([src], dst, with_choices=True, policy="jit")
    ref = solve([src], dst, with_choices=True, policy="numpy")
    assert jit.encoding.depths[0].by_rows  # fewer targets than sources at the top level
    m, n = len(src), len(dst)
    np.testing.assert_array_equal(jit.choices[0][0][:m, :n], ref.choices[0][0][:m, :n])
    for a, b in zip(jit.scores, ref.scores, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert align(src, dst) == align(src, dst)  # and the pairs through the default path
    with kernel_policy("jit"):
        via_rows = align(src, dst)
    with kernel_policy("numpy"):
        assert align(src, dst).pairs == via_rows.pairs


def test_repeated_auto_alignment_compiles_in_the_background():
    """The second sighting of a small shape signature starts a background compile;
    every call (before, during and after it) gives the same result."""
    from dpiat_jax.alignment import kernel_policy, wait_for_compiles
    from dpiat_jax.matchers import align
    from dpiat_jax.spec import LayerSpec

    src = [[LayerSpec("dense", (3, 7)), LayerSpec("dense", (7, 5))], LayerSpec("bn", (5,))]
    dst = [[LayerSpec("dense", (3, 9)), LayerSpec("dense", (9, 5))], LayerSpec("bn", (5,))]
    with kernel_policy("auto"):
        results = [align(src, dst) for _ in range(3)]
        assert wait_for_compiles(timeout=120)
        results.append(align(src, dst))
    with kernel_policy("jit"):
        results.append(align(src, dst))
    assert all(r.pairs == results[0].pairs for r in results)
    assert all(abs(r.score - results[0].score) < 1e-6 for r in results)
