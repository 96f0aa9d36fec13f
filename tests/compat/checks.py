"""What every family of the compatibility suite checks, as plain assertions.

* :func:`require`: the family's package; without it every test of the family fails
  with how to install it (skipped only with ``DPIAT_SKIP_COMPAT=1``);
* :func:`seeded_blocks`, :func:`block_role`: which target blocks received source values and
  whether each target layer was seeded by a layer of the same role (a query by a query,
  an MLP by an MLP), read from the plan's report as a person would count them;
* :func:`assert_fresh_form`, :func:`assert_finite`: the result has the target's
  structure, and the target's forward pass with it is finite;
* :func:`marked`, :func:`part_landing`: source values made recognisable (a large offset
  plus their flat index) and where they land in a fused target tensor;
* :func:`random_like`, :func:`hf_fresh`, :func:`hf_form`, :func:`key`: trained-like
  source values without compiling, a Hugging Face model's own params structure, a plan's
  result in the form Hugging Face keeps, and fast keys for the targets' init.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from collections.abc import Callable, Iterable
from types import ModuleType

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpiat_jax

#: Source values made recognisable start here (far beyond any initialiser's scale).
MARK = 1000.0


class Missing:
    """Stands for a compat package that is not installed: every test that uses it
    fails with ``why`` (the module still collects, so the rest of the suite runs)."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __getattr__(self, name: str):
        if name.startswith("_"):  # pytest's and Python's own probes
            raise AttributeError(name)
        pytest.fail(self.why, pytrace=False)


def require(name: str) -> ModuleType | Missing:
    """Imports a compat package. A missing one makes every test that uses it fail with
    how to install it; with ``DPIAT_SKIP_COMPAT=1`` the module is skipped instead."""
    try:
        return importlib.import_module(name)
    except ImportError:
        why = (
            f"the compatibility suite needs `{name}`: pip install '.[compat]' "
            "(or set DPIAT_SKIP_COMPAT=1 to skip tests/compat)"
        )
        if os.environ.get("DPIAT_SKIP_COMPAT") == "1":
            pytest.skip(f"DPIAT_SKIP_COMPAT=1: {why}", allow_module_level=True)
        return Missing(why)


def block_role(block: str) -> Callable[[str], str]:
    r"""The role of a layer: its path with the repeat index of its block (the one group
    of the regex ``block``, e.g. ``r"^encoder/layer/(\d+)/"``) replaced by ``*``, so
    that the query of every block has one role (``encoder/layer/*/attention/self/query``)
    and layers outside blocks keep their own."""

    def role(path: str) -> str:
        found = re.search(block, path)
        if found is None:
            return path
        return path[: found.start(1)] + "*" + path[found.end(1) :]

    return role


def block_index(path: str, block: str) -> int | None:
    """The index of the block ``path`` lies in (the group of the regex ``block``), None
    outside blocks."""
    found = re.search(block, path)
    return None if found is None else int(found[1])


def seeded_blocks(pairs: Iterable[tuple[str, str, float]], block: str) -> set[int]:
    """The target blocks that at least one matched layer lies in."""
    return {i for _, dst, _ in pairs if (i := block_index(dst, block)) is not None}


def mismatched_roles(
    pairs: Iterable[tuple[str, str, float]],
    role: Callable[[str], str],
    dst_role: Callable[[str], str] | None = None,
) -> list[tuple[str, str]]:
    """The pairs whose source layer has another role than its target layer (roles read
    with ``role``, the target's with ``dst_role`` where the two number them apart)."""
    dst_role = dst_role or role
    return [(src, dst) for src, dst, _ in pairs if role(src) != dst_role(dst)]


def assert_every_layer_seeded_by_its_role(
    report, role: Callable[[str], str], dst_role: Callable[[str], str] | None = None
) -> None:
    """Every target layer is matched, each by a source layer of its own role (what a
    person counts for a change of depth or width within a family)."""
    assert not report.unmatched_dst, report.unmatched_dst
    assert report.layers_transferred == report.layers_total, report
    wrong = mismatched_roles(report.pairs, role, dst_role)
    assert not wrong, wrong


def assert_every_block_seeded(
    report,
    block: str,
    count: int,
    role: Callable[[str], str] | None = None,
    dst_role: Callable[[str], str] | None = None,
) -> None:
    """Every one of the target's ``count`` blocks is seeded, and every target layer by
    a layer of its own role (:func:`block_role` of ``block`` unless ``role`` is given)."""
    assert seeded_blocks(report.pairs, block) == set(range(count)), report
    assert_every_layer_seeded_by_its_role(report, role or block_role(block), dst_role)


def assert_fresh_form(result, fresh) -> None:
    """``result`` has exactly the structure, shapes and dtypes of a fresh init."""
    chex.assert_trees_all_equal_shapes_and_dtypes(result, fresh)


def assert_finite(tree) -> None:
    """Every floating leaf of ``tree`` is finite."""
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
            assert bool(jnp.isfinite(leaf).all()), leaf


def marked(array) -> jnp.ndarray:
    """``MARK`` plus each entry's flat index: where a source value lands is readable
    from the target (:func:`part_landing`)."""
    return MARK + jnp.arange(np.size(array), dtype=jnp.float32).reshape(np.shape(array))


def part_landing(src_shape, dst: np.ndarray, axis: int, parts: int) -> np.ndarray:
    """``counts[p, q]``: how many values of the source's part ``p`` (along the fused
    ``axis``) landed in the target's part ``q``, for a source made by :func:`marked`."""
    dst = np.asarray(dst)
    counts = np.zeros((parts, parts), int)
    where = np.argwhere(dst >= MARK)
    index = np.rint(dst[tuple(where.T)] - MARK).astype(int)
    src_rows = np.unravel_index(index, src_shape)[axis]
    src_part = src_rows // (src_shape[axis] // parts)
    dst_part = where[:, axis] // (dst.shape[axis] // parts)
    np.add.at(counts, (src_part, dst_part), 1)
    return counts


def random_like(abstract, seed: int):
    """Source values for a tree of ``jax.ShapeDtypeStruct`` leaves, drawn with numpy
    (no compilation): normal with scale 0.02, and batch-norm statistics that keep the
    forward pass finite (``var`` positive, ``scale`` near one)."""
    rng = np.random.default_rng(seed)

    def leaf(path, spec):
        name = str(getattr(path[-1], "key", path[-1]))
        values = 0.02 * rng.standard_normal(spec.shape)
        if name in ("var", "scale"):
            values = 1.0 + np.abs(values)
        return jnp.asarray(values, spec.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


@functools.cache
def hf_fresh(model):
    """The abstract params of a Hugging Face model as its own ``init_weights`` makes
    them (the form ``model.params`` takes), without running it."""
    shape = model.input_shape
    return jax.eval_shape(lambda rng: model.init_weights(rng, shape), jax.random.key(0))


def key(seed: int) -> jax.Array:
    """A fast PRNG key (``rbg``) for the targets' fresh init."""
    return jax.random.key(seed, impl="rbg")


def hf_form(variables: dict):
    """A plan's result in the form a Hugging Face model keeps its params (what
    ``transfer`` returns for a Hugging Face target): the params collection alone, or the
    whole dict for models with other collections (``batch_stats``)."""
    return variables["params"] if set(variables) == {"params"} else variables


def hf_planned(make: Callable, params: Callable, src_shape: tuple, dst_shape: tuple):
    """``(plan, result)`` of a transfer between two Hugging Face models built by
    ``make(*shape)`` without params, the source's ``params(*src_shape)``; the result is
    in the model's form and has its fresh init's structure, shapes and dtypes."""
    src, dst = make(*src_shape), make(*dst_shape)
    the_plan = dpiat_jax.plan(src, dst, src_variables=params(*src_shape))
    out = hf_form(the_plan.apply(params(*src_shape), key(0)))
    assert_fresh_form(out, hf_fresh(dst))
    return the_plan, out
