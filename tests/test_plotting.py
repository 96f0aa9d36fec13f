"""Tests of dpiat_jax.plotting: the alignment picture of a MatchReport."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

import dpiat_jax
from dpiat_jax.blocks import tree_leaves
from dpiat_jax.layers import Layer
from dpiat_jax.matching import MatchReport
from dpiat_jax.plotting import (
    LABEL_LIMIT,
    NEAR_ZERO,
    PAIRS_GID,
    THINNED_LABELS,
    plot_report,
    thinned_ticks,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------
# Two small CNNs of different depth and width (the target has a Dropout placeholder).


class Block(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(self.features, (3, 3))(x)
        y = nn.relu(nn.BatchNorm(use_running_average=True)(y))
        y = nn.Conv(self.features, (3, 3))(y)
        y = nn.BatchNorm(use_running_average=True)(y)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1))(x)
        return nn.relu(x + y)


class SmallCNN(nn.Module):
    widths: tuple[int, ...]
    blocks_per_stage: int
    dropout: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.widths[0], (3, 3), name="stem")(x))
        for s, width in enumerate(self.widths):
            for b in range(self.blocks_per_stage):
                x = Block(width, name=f"stage{s}_block{b}")(x)
        x = x.mean(axis=(1, 2))
        if self.dropout:
            x = nn.Dropout(0.1, deterministic=True)(x)
        return nn.Dense(10, name="head")(x)


@pytest.fixture(scope="module")
def report() -> MatchReport:
    x = jnp.zeros((1, 8, 8, 3))
    src = SmallCNN((8, 16), 1)
    dst = SmallCNN((8, 24), 2, dropout=True)
    # Only the shapes matter for the picture: abstract init, zeros (fast, no compile).
    abstract = jax.eval_shape(src.init, jax.random.key(0), x)
    variables = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
    return dpiat_jax.match(variables, src, dst, jax.random.key(1), sample_input=x)


def _pairs_collection(fig: Figure):
    found = [c for ax in fig.axes for c in ax.collections if c.get_gid() == PAIRS_GID]
    assert len(found) == 1
    return found[0]


def _expected_points(rep: MatchReport) -> np.ndarray:
    src = {leaf.name: i for i, leaf in enumerate(tree_leaves(rep.src_blocks))}
    dst = {leaf.name: i for i, leaf in enumerate(tree_leaves(rep.dst_blocks))}
    return np.array([(src[s], dst[d]) for s, d, _ in rep.pairs], dtype=float)


# ----------------------------------------------------------------------------------
# A real report.


def test_plot_saves_png_with_one_marker_per_pair(report, tmp_path):
    assert report.pairs, "the two CNNs should share layers"
    out = tmp_path / "a.png"
    fig = report.plot(out)
    assert isinstance(fig, Figure)
    assert out.exists()
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert 10_000 < len(data) < 5_000_000
    image = matplotlib.image.imread(out)
    height, width = image.shape[:2]
    assert 400 <= height <= 2500 and 400 <= width <= 2500
    assert image.std() > 0.01  # not a blank canvas

    pairs = _pairs_collection(fig)
    offsets = np.asarray(pairs.get_offsets())
    assert offsets.shape == (len(report.pairs), 2)
    np.testing.assert_array_equal(offsets, _expected_points(report))
    np.testing.assert_allclose(pairs.get_array(), [sc for _, _, sc in report.pairs])
    assert pairs.norm.vmin == 0.0 and pairs.norm.vmax == 1.0


def test_axes_labels_ticks_title_and_colorbar(report):
    fig = plot_report(report)
    ax = fig.axes[0]
    src_leaves, dst_leaves = tree_leaves(report.src_blocks), tree_leaves(report.dst_blocks)
    assert ax.get_xlabel().startswith("source layers")
    assert ax.get_ylabel().startswith("target layers")
    assert str(len(src_leaves)) in ax.get_xlabel() and str(len(dst_leaves)) in ax.get_ylabel()
    # Few layers: one tick label per layer, its name, in call order (placeholders too).
    assert len(src_leaves) < LABEL_LIMIT and len(dst_leaves) < LABEL_LIMIT
    assert [t.get_text() for t in ax.get_xticklabels()] == [x.name for x in src_leaves]
    assert [t.get_text() for t in ax.get_yticklabels()] == [x.name for x in dst_leaves]
    assert any(x.is_placeholder for x in dst_leaves)
    title = ax.get_title()
    assert f"{report.score:.3f}" in title and f"{report.similarity:.3f}" in title
    assert f"{report.layers_transferred}/{report.layers_total}" in title
    assert len(fig.axes) == 2 and "score" in fig.axes[1].get_ylabel()  # the colour bar
    # Target layer 0 at the top, like the DP table.
    bottom, top = ax.get_ylim()
    assert bottom > top


def test_annotate_false_gives_sparse_numeric_ticks(report):
    ax = plot_report(report, annotate=False).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) < len(tree_leaves(report.dst_blocks))
    assert all(t.lstrip("−-").isdigit() for t in labels if t)


def test_draws_into_a_given_axes(report):
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    assert plot_report(report, ax=right, title="custom") is fig
    assert right.get_title() == "custom"
    assert _pairs_collection(fig).axes is right
    assert not left.collections


def test_missing_block_trees_raise_value_error(report):
    for missing in (
        {"src_blocks": None},
        {"dst_blocks": None},
        {"src_blocks": None, "dst_blocks": None},
    ):
        bad = dataclasses.replace(report, **missing)
        with pytest.raises(ValueError, match="None"):
            bad.plot()


def test_pair_outside_the_trees_raises(report):
    bad = dataclasses.replace(report, pairs=(*report.pairs, ("nope", "head", 1.0)))
    with pytest.raises(ValueError, match="nope"):
        plot_report(bad)


# ----------------------------------------------------------------------------------
# Synthetic reports: many layers, NaN similarity, no pairs.


def _layer(path: str, kind: str = "conv2d", shape=(3, 3, 8, 8)) -> Layer:
    if kind == "none":
        return Layer(tuple(path.split("/")), "none", "Dropout", {}, "")
    kernel = np.broadcast_to(np.float32(0), shape)
    return Layer(tuple(path.split("/")), kind, "Conv", {"params": {"kernel": kernel}}, "kernel")


def _tree(n_blocks: int, per_block: int) -> list:
    tree: list = [_layer("stem")]
    for b in range(n_blocks):
        block = [_layer(f"b{b}/l{i}") for i in range(per_block)]
        if b % 5 == 0:
            block.append(_layer(f"b{b}/drop", "none"))
        tree.append(block)
    return [*tree, _layer("head", "dense", (8, 10))]


def _synthetic(n_src_blocks: int, n_dst_blocks: int, per_block: int = 4, **fields):
    src, dst = _tree(n_src_blocks, per_block), _tree(n_dst_blocks, per_block)
    src_layers = [x for x in tree_leaves(src) if not x.is_placeholder]
    dst_layers = [x for x in tree_leaves(dst) if not x.is_placeholder]
    rng = np.random.default_rng(0)
    pairs = tuple(
        (src_layers[i * len(src_layers) // len(dst_layers)].name, x.name, float(rng.random()))
        for i, x in enumerate(dst_layers)
        if i % 7
    )
    used = {d for _, d, _ in pairs}
    base = dict(
        pairs=pairs,
        unmatched_src=(),
        unmatched_dst=tuple(x.name for x in dst_layers if x.name not in used),
        skipped=(),
        layers_transferred=len(pairs),
        layers_total=len(dst_layers),
        params_transferred=10,
        params_total=20,
        score=1.5,
        similarity=0.25,
        src_blocks=src,
        dst_blocks=dst,
    )
    base.update(fields)
    return MatchReport(**base)


def test_thousands_of_layers_use_scatter_and_sparse_ticks(tmp_path):
    rep = _synthetic(200, 300)
    n_src, n_dst = len(tree_leaves(rep.src_blocks)), len(tree_leaves(rep.dst_blocks))
    assert n_dst > 1000
    start = time.perf_counter()
    fig = plot_report(rep, tmp_path / "big.png")
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"plotting {n_dst} layers took {elapsed:.1f}s"
    ax = fig.axes[0]
    offsets = np.asarray(_pairs_collection(fig).get_offsets())
    assert offsets.shape == (len(rep.pairs), 2)
    np.testing.assert_array_equal(offsets, _expected_points(rep))
    assert len(ax.get_xticks()) <= 20 and len(ax.get_yticks()) <= 20
    assert len(ax.patches) == 0  # no per-cell patches
    assert ax.get_xlim() == (-0.5, n_src - 0.5)
    assert (tmp_path / "big.png").read_bytes()[:8] == PNG_SIGNATURE


def test_a_hundred_layers_get_thinned_name_labels(tmp_path):
    """Above LABEL_LIMIT layers an axis keeps names, every k-th: at most THINNED_LABELS
    labels reading "index name", at the right positions."""
    rep = _synthetic(25, 30)  # about 110 and 130 positions
    src_leaves, dst_leaves = tree_leaves(rep.src_blocks), tree_leaves(rep.dst_blocks)
    assert LABEL_LIMIT < len(src_leaves) < len(dst_leaves) and len(dst_leaves) >= 100
    fig = plot_report(rep, tmp_path / "hundred.png")
    ax = fig.axes[0]
    for leaves, ticks, labels in [
        (src_leaves, ax.get_xticks(), ax.get_xticklabels()),
        (dst_leaves, ax.get_yticks(), ax.get_yticklabels()),
    ]:
        expected = thinned_ticks(len(leaves))
        assert THINNED_LABELS // 2 < len(expected) == len(labels) <= THINNED_LABELS
        assert list(ticks) == expected
        assert [t.get_text() for t in labels] == [f"{i} {leaves[i].name}" for i in expected]
    assert (tmp_path / "hundred.png").read_bytes()[:8] == PNG_SIGNATURE


def test_near_zero_scores_stay_visible():
    """Pairs scoring below NEAR_ZERO (the palest colours) are outlined, even where the
    markers are too small for the other pairs' outlines."""
    rep = _synthetic(200, 300)
    collection = _pairs_collection(plot_report(rep))
    widths = np.broadcast_to(collection.get_linewidths(), (len(rep.pairs),))
    low = np.array([sc < NEAR_ZERO for _, _, sc in rep.pairs])
    assert low.any() and (~low).any()
    assert (widths[low] > 0).all()
    assert (widths[~low] < widths[low].min()).all()


def test_nan_similarity_and_no_pairs():
    rep = _synthetic(2, 3, similarity=math.nan, matcher="random")
    assert "similarity n/a" in plot_report(rep).axes[0].get_title()
    empty = dataclasses.replace(rep, pairs=(), layers_transferred=0)
    fig = plot_report(empty)
    assert len(_pairs_collection(fig).get_offsets()) == 0


def test_plotting_does_not_touch_pyplot(tmp_path):
    """Headless and notebook-safe: the module never imports pyplot (no global state)."""
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from dpiat_jax.layers import Layer
        from dpiat_jax.matching import MatchReport
        k = {{"params": {{"kernel": np.zeros((3, 3, 4, 4), np.float32)}}}}
        a = Layer(("a",), "conv2d", "Conv", k, "kernel")
        b = Layer(("b",), "conv2d", "Conv", k, "kernel")
        r = MatchReport(pairs=(("a", "a", 1.0),), unmatched_src=("b",), unmatched_dst=("b",),
                        skipped=(), layers_transferred=1, layers_total=2, params_transferred=1,
                        params_total=2, score=1.0, similarity=0.5, src_blocks=[a, b],
                        dst_blocks=[a, b])
        assert "matplotlib.pyplot" not in sys.modules, "importing dpiat_jax imports pyplot"
        r.plot({str(tmp_path / "s.png")!r})
        assert "matplotlib.pyplot" not in sys.modules, "plotting imported pyplot"
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG_SIGNATURE
