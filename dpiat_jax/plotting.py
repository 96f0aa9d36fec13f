"""Plotting: a picture of a :class:`~dpiat_jax.matching.MatchReport`'s alignment.

:func:`plot_report` (also ``report.plot(path)``) draws the matching as a grid: source
layers along the x axis and target layers along the y axis (top to bottom), both in
call order, i.e. the leaf order of the report's block trees. Every matched pair is a
square marker coloured by its layer score; one source layer seeding a run of target
layers shows as a vertical stack of markers. Top-level blocks are drawn as alternating
shaded bands on each axis, and every pair of blocks that exchanges layers is outlined,
so the block-level alignment of the dynamic programme is visible at a glance.
Placeholders (parameter-free modules) keep their position and are drawn as faint grey
lines; target layers left at their fresh initialisation are marked with a red tick on
the left edge.

Only the object-oriented Matplotlib API is used (``matplotlib.figure.Figure``, no
``pyplot`` state), so plotting works headless, in scripts and in notebooks alike.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dpiat_jax.blocks import tree_leaves

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from dpiat_jax.matching import MatchReport

__all__ = [
    "plot_report",
    "thinned_ticks",
    "LABEL_LIMIT",
    "THINNED_LABELS",
    "NEAR_ZERO",
    "PAIRS_GID",
]

LABEL_LIMIT = 60
"""Axes with fewer positions than this get one tick label per layer (its name) when
``annotate`` is left automatic; longer axes get thinned labels (see
:data:`THINNED_LABELS`)."""

THINNED_LABELS = 20
"""At most this many labels on an axis of :data:`LABEL_LIMIT` positions or more (with
``annotate`` automatic): every ``ceil(n / THINNED_LABELS)``-th layer, labelled with its
index and name, so a 100-layer model stays readable."""

NEAR_ZERO = 0.2
"""Pairs scoring below this are drawn with a dark outline: their colours are the palest
of the colour map and would otherwise vanish against the background."""

PAIRS_GID = "dpiat-pairs"
"""The ``gid`` of the scatter collection holding the matched pairs (one point per pair,
``(source index, target index)``), for tests and post-processing."""

_PLACEHOLDER_COLOR = "0.75"
_UNMATCHED_COLOR = "#d62728"
_BAND_COLOR = "0.93"
_BLOCK_EDGE = "#555555"
_DENSE_LIMIT = 60  # more bands / placeholder lines than this on an axis read as noise


def _block_ranges(tree: list) -> list[tuple[int, int]]:
    """``[start, stop)`` leaf-index ranges of the top-level elements that are blocks."""
    out, pos = [], 0
    for element in tree:
        n = len(tree_leaves(element)) if isinstance(element, list) else 1
        if isinstance(element, list):
            out.append((pos, pos + n))
        pos += n
    return out


def _index_of(leaves: Sequence[Any], side: str) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, leaf in enumerate(leaves):
        index.setdefault(leaf.name, i)
    if not index:
        raise ValueError(f"the report's {side} block tree has no layers: nothing to plot.")
    return index


def _checked_trees(report: MatchReport) -> tuple[list, list]:
    src, dst = getattr(report, "src_blocks", None), getattr(report, "dst_blocks", None)
    if src is None or dst is None:
        missing = [n for n, t in (("src_blocks", src), ("dst_blocks", dst)) if t is None]
        raise ValueError(
            f"cannot plot this MatchReport: its {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} None. Only reports made by "
            "dpiat_jax.match() (or matching.build_report) carry the block trees a plot "
            "needs; pass src_blocks= and dst_blocks= when building one by hand."
        )
    if not isinstance(src, list) or not isinstance(dst, list):
        raise ValueError("report.src_blocks and report.dst_blocks must be nested lists of Layers.")
    return src, dst


def _fmt(x: float, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _title(report: MatchReport) -> str:
    head = (
        f"DPIAT alignment ({report.matcher}): score {_fmt(report.score, '.3f')}, "
        f"similarity {_fmt(report.similarity, '.3f')}"
    )
    cover = (
        f"target coverage {report.layers_transferred}/{report.layers_total} layers "
        f"({100 * report.layer_coverage:.1f}%), {report.params_transferred:,}/"
        f"{report.params_total:,} params ({100 * report.param_coverage:.1f}%)"
    )
    return f"{head}\n{cover}"


def _marker_size(ax: Axes, n_x: int, n_y: int) -> float:
    """Marker area (points^2) so that one square fills ~80% of a grid cell."""
    fig = ax.figure
    bbox = ax.get_position()
    width_pt = fig.get_figwidth() * bbox.width * 72.0
    height_pt = fig.get_figheight() * bbox.height * 72.0
    cell = min(width_pt / max(n_x, 1), height_pt / max(n_y, 1))
    return float(np.clip((0.8 * cell) ** 2, 4.0, 150.0))


def _auto_figsize(n_x: int, n_y: int, names_x: str, names_y: str) -> tuple[float, float]:
    """Room for one label per position on a fully labelled axis; a fixed size otherwise
    (with a margin for names when thinned)."""
    per = 0.15  # inches per labelled position
    width = n_x * per + 1.5 if names_x == "all" else 7.0
    height = n_y * per + 1.0 if names_y == "all" else 7.0
    width += 2.5 if names_y != "numeric" else 1.0  # y tick labels, colour bar
    height += 2.0 if names_x != "numeric" else 1.0  # x tick labels, title
    return min(max(6.0, width), 16.0), min(max(5.0, height), 16.0)


def _labelling(n: int, annotate: bool | None) -> str:
    """``"all"`` (every name), ``"thinned"`` (every k-th) or ``"numeric"`` ticks."""
    if annotate is None:
        return "all" if n < LABEL_LIMIT else "thinned"
    return "all" if annotate else "numeric"


def thinned_ticks(n: int) -> list[int]:
    """Return the positions :func:`plot_report` labels on a long axis.

    Args:
      n: the number of positions (layers and placeholders) on the axis.

    Returns:
      Every ``ceil(n / THINNED_LABELS)``-th position from 0: at most
      :data:`THINNED_LABELS` of them.

    Example:
        >>> len(thinned_ticks(120)), thinned_ticks(120)[:3]
        (20, [0, 6, 12])
    """
    return list(range(0, n, max(1, math.ceil(n / THINNED_LABELS))))


def _shade_bands(ax: Axes, ranges: list[tuple[int, int]], vertical: bool) -> None:
    """Alternating light bands (every other top-level block) across the whole axes."""
    from matplotlib.collections import PolyCollection

    polys = []
    for k, (a, b) in enumerate(ranges):
        if k % 2:
            continue
        lo, hi = a - 0.5, b - 0.5
        if vertical:  # x in data, y in axes coordinates
            polys.append([(lo, 0), (hi, 0), (hi, 1), (lo, 1)])
        else:  # x in axes, y in data coordinates
            polys.append([(0, lo), (1, lo), (1, hi), (0, hi)])
    if polys:
        transform = ax.get_xaxis_transform() if vertical else ax.get_yaxis_transform()
        ax.add_collection(
            PolyCollection(
                polys,
                facecolors=_BAND_COLOR,
                edgecolors="none",
                alpha=0.6,
                transform=transform,
                zorder=0,
            ),
            autolim=False,
        )


def _outline_block_pairs(
    ax: Axes,
    xs: np.ndarray,
    ys: np.ndarray,
    src_ranges: list[tuple[int, int]],
    dst_ranges: list[tuple[int, int]],
    n_src: int,
    n_dst: int,
) -> int:
    """Outlines every (source block, target block) rectangle that holds a pair."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    def owner(n: int, ranges: list[tuple[int, int]]) -> np.ndarray:
        own = np.full(n, -1)
        for k, (a, b) in enumerate(ranges):
            own[a:b] = k
        return own

    src_owner, dst_owner = owner(n_src, src_ranges), owner(n_dst, dst_ranges)
    seen = set()
    rects = []
    for x, y in zip(xs.tolist(), ys.tolist()):
        key = (int(src_owner[x]), int(dst_owner[y]))
        if key in seen or key[0] < 0 or key[1] < 0:
            continue
        seen.add(key)
        (sa, sb), (da, db) = src_ranges[key[0]], dst_ranges[key[1]]
        rects.append(Rectangle((sa - 0.5, da - 0.5), sb - sa, db - da))
    if rects:
        ax.add_collection(
            PatchCollection(
                rects,
                facecolor="none",
                edgecolor=_BLOCK_EDGE,
                linewidth=0.8 if len(rects) <= _DENSE_LIMIT else 0.4,
                zorder=1,
            ),
            autolim=False,
        )
    return len(rects)


def _label_axis(ax: Axes, leaves: list, axis: str, names: str, fontsize: float) -> None:
    n = len(leaves)
    if names != "numeric":
        ticks = np.arange(n) if names == "all" else np.array(thinned_ticks(n), dtype=int)
        if names == "all":
            labels = [leaf.name for leaf in leaves]
        else:
            labels = [f"{i} {leaves[i].name}" for i in ticks]
        leaves = [leaves[i] for i in ticks]
        if axis == "x":
            ax.set_xticks(ticks, labels, rotation=90, fontsize=fontsize)
            tick_labels = ax.get_xticklabels()
        else:
            ax.set_yticks(ticks, labels, fontsize=fontsize)
            tick_labels = ax.get_yticklabels()
        for leaf, text in zip(leaves, tick_labels):
            if leaf.is_placeholder:
                text.set_color(_PLACEHOLDER_COLOR)
    else:
        from matplotlib.ticker import MaxNLocator

        locator = MaxNLocator(nbins=10, integer=True)
        (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(locator)


def _legend(
    ax: Axes,
    face: Any,
    *,
    n_pairs: int,
    n_blocks: int,
    n_unmatched: int,
    bands: bool,
    placeholders: bool,
) -> None:
    """A legend of proxy artists: one entry per kind of mark actually drawn."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D(
            [],
            [],
            marker="s",
            linestyle="none",
            markerfacecolor=face,
            markeredgecolor="black",
            markeredgewidth=0.4,
            markersize=6,
            label=f"matched layer pair ({n_pairs})",
        ),
        Patch(facecolor="none", edgecolor=_BLOCK_EDGE, label=f"matched block pair ({n_blocks})"),
    ]
    if bands:
        handles.append(Patch(facecolor=_BAND_COLOR, edgecolor="none", label="top-level block"))
    if n_unmatched:
        handles.append(
            Line2D(
                [],
                [],
                marker="_",
                linestyle="none",
                color=_UNMATCHED_COLOR,
                markersize=8,
                markeredgewidth=2,
                label=f"target layer left at fresh init ({n_unmatched})",
            )
        )
    if placeholders:
        handles.append(
            Line2D(
                [], [], color=_PLACEHOLDER_COLOR, linestyle=":", label="placeholder (no parameters)"
            )
        )
    ax.legend(handles=handles, loc="best", fontsize=7, frameon=True, framealpha=0.9)


def _pair_positions(
    report: MatchReport, src_index: dict[str, int], dst_index: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the pairs' source indices, target indices and scores (checked names)."""
    missing = [
        s if s not in src_index else d
        for s, d, _ in report.pairs
        if s not in src_index or d not in dst_index
    ]
    if missing:
        raise ValueError(
            f"report.pairs names layers that are not in its block trees: {missing[:5]}"
        )
    xs = np.array([src_index[s] for s, _, _ in report.pairs], dtype=int)
    ys = np.array([dst_index[d] for _, d, _ in report.pairs], dtype=int)
    scores = np.array([float(sc) for _, _, sc in report.pairs], dtype=float)
    return xs, ys, scores


def _grid_axes(
    ax: Axes | None, figsize: tuple[float, float], dpi: int, n_src: int, n_dst: int
) -> tuple[Figure, Axes]:
    """Return ``ax`` (or the axes of a new constrained-layout figure) set up for the grid."""
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    ax.set_xlim(-0.5, n_src - 0.5)
    ax.set_ylim(n_dst - 0.5, -0.5)  # target layer 0 at the top, like the DP table
    ax.set_facecolor("white")
    return fig, ax


def _draw_blocks(
    ax: Axes, src_tree: list, dst_tree: list, xs: np.ndarray, ys: np.ndarray
) -> tuple[bool, int]:
    """Shade the top-level blocks (unless too many) and outline the block pairs.

    Returns:
        ``(bands drawn, number of block pairs outlined)``.
    """
    n_src, n_dst = len(tree_leaves(src_tree)), len(tree_leaves(dst_tree))
    src_ranges, dst_ranges = _block_ranges(src_tree), _block_ranges(dst_tree)
    bands = len(src_ranges) <= _DENSE_LIMIT and len(dst_ranges) <= _DENSE_LIMIT
    if bands:
        _shade_bands(ax, src_ranges, vertical=True)
        _shade_bands(ax, dst_ranges, vertical=False)
    return bands, _outline_block_pairs(ax, xs, ys, src_ranges, dst_ranges, n_src, n_dst)


def _draw_placeholders(ax: Axes, src_leaves: list, dst_leaves: list) -> bool:
    """Draw faint lines at placeholder positions unless too many; return whether drawn."""
    src_ph = [i for i, leaf in enumerate(src_leaves) if leaf.is_placeholder]
    dst_ph = [i for i, leaf in enumerate(dst_leaves) if leaf.is_placeholder]
    lines = dict(colors=_PLACEHOLDER_COLOR, linewidth=0.6, linestyles=":", zorder=0.5)
    draw_src_ph = 0 < len(src_ph) <= _DENSE_LIMIT
    draw_dst_ph = 0 < len(dst_ph) <= _DENSE_LIMIT
    if draw_src_ph:
        ax.vlines(src_ph, 0, 1, transform=ax.get_xaxis_transform(), **lines)
    if draw_dst_ph:
        ax.hlines(dst_ph, 0, 1, transform=ax.get_yaxis_transform(), **lines)
    return draw_src_ph or draw_dst_ph


def _label_axes(
    ax: Axes, src_leaves: list, dst_leaves: list, names: tuple[str, str], unmatched: set
) -> None:
    """Label both axes (names, thinned names or sparse indices); unmatched target names
    in red."""
    n_src, n_dst = len(src_leaves), len(dst_leaves)
    fontsize = 7.0 if max(n_src, n_dst) < 40 else 6.0
    _label_axis(ax, src_leaves, "x", names[0], fontsize)
    _label_axis(ax, dst_leaves, "y", names[1], fontsize)
    if names[1] != "numeric":
        labelled = (
            dst_leaves if names[1] == "all" else [dst_leaves[i] for i in thinned_ticks(n_dst)]
        )
        for leaf, text in zip(labelled, ax.get_yticklabels()):
            if leaf.name in unmatched:
                text.set_color(_UNMATCHED_COLOR)
    ax.tick_params(length=2, pad=2)
    ax.set_xlabel(f"source layers in call order ({n_src})")
    ax.set_ylabel(f"target layers in call order ({n_dst})")


def _colorbar(fig: Figure, ax: Axes, cmap: str) -> Any:
    """Add the layer-score colour bar (0 to 1) beside ``ax``; return its mappable."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap)
    cbar = fig.colorbar(mappable, ax=ax, fraction=0.04, pad=0.02, shrink=0.8)
    cbar.set_label("layer score (shape match)")
    return mappable


def _draw_pairs(
    ax: Axes, xs: np.ndarray, ys: np.ndarray, scores: np.ndarray, mappable: Any, size: float
) -> None:
    """Draw the matched pairs as squares coloured by score (gid :data:`PAIRS_GID`); those
    below :data:`NEAR_ZERO` get a dark outline whatever the marker size."""
    edge = 0.4 if size > 16 else 0.0
    pairs = ax.scatter(
        xs,
        ys,
        c=scores,
        cmap=mappable.get_cmap(),
        norm=mappable.norm,
        s=size,
        marker="s",
        linewidths=np.where(np.asarray(scores) < NEAR_ZERO, max(edge, 0.6), edge),
        edgecolors="black",
        zorder=3,
    )
    pairs.set_gid(PAIRS_GID)


def _draw_markers(
    fig: Figure,
    ax: Axes,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    mappable: Any,
    unmatched_rows: list[int],
    grid: tuple[int, int],
) -> None:
    """Draw the pair squares and the unmatched ticks, sized on the final layout."""
    # Markers fill a fixed share of a grid cell, so size them on the final layout.
    if fig.get_layout_engine() is not None:
        fig.get_layout_engine().execute(fig)
    size = _marker_size(ax, *grid)
    _draw_pairs(ax, *pairs, mappable, size)
    if unmatched_rows:
        _mark_unmatched(ax, unmatched_rows, size)


def _mark_unmatched(ax: Axes, rows: list[int], size: float) -> None:
    """Draw red ticks on the left edge at the unmatched target rows."""
    ax.scatter(
        np.zeros(len(rows)),
        rows,
        transform=ax.get_yaxis_transform(),
        marker="_",
        s=max(size, 30.0),
        color=_UNMATCHED_COLOR,
        linewidths=2.0,
        clip_on=False,
        zorder=4,
    )


def plot_report(
    report: MatchReport,
    path: str | os.PathLike | None = None,
    *,
    ax: Axes | None = None,
    annotate: bool | None = None,
    cmap: str = "viridis_r",
    figsize: tuple[float, float] | None = None,
    dpi: int = 120,
    title: str | None = None,
) -> Figure:
    """Draw the alignment of a match report and return the Matplotlib figure.

    Source layers run along the x axis and target layers down the y axis, both in call
    order (the leaf order of ``report.src_blocks`` / ``report.dst_blocks``,
    placeholders included as faint grey lines). Each matched pair is a square marker
    coloured by its layer score (colour bar on the right); alternating grey bands
    mark the top-level blocks of each model, and every (source block, target block)
    pair that exchanges layers is outlined. Red ticks on the left edge mark target
    layers left at their fresh initialisation. The title gives the alignment score,
    the similarity and the target's coverage. On very long models (more than 60
    top-level blocks or placeholders on an axis) the bands and placeholder lines are
    left out, as they would only add noise; markers never go below 2 points wide.

    Args:
      report: a :class:`~dpiat_jax.matching.MatchReport` from :func:`dpiat_jax.match`
        (it must carry its block trees).
      path: where to save a PNG (any format Matplotlib infers from the suffix works);
        None saves nothing.
      ax: draw into this existing axes instead of a new figure (its figure is
        returned; a colour bar is added beside it).
      annotate: True names every tick, False uses sparse numeric ticks; None
        (default) names all below :data:`LABEL_LIMIT` positions, else every k-th
        (:func:`thinned_ticks`). Pairs below :data:`NEAR_ZERO` are outlined.
      cmap: the colormap of the layer scores (0 to 1); the default ``"viridis_r"``
        draws exact shape matches dark and weak ones light.
      figsize: figure size in inches for a new figure; by default it grows with the
        number of labelled layers.
      dpi: resolution of the new figure and of the saved file.
      title: replaces the default title (score, similarity, coverage).

    Returns:
      The ``matplotlib.figure.Figure``. The alignment axes is ``fig.axes[0]`` for a new
      figure; its pairs are the scatter collection whose gid is :data:`PAIRS_GID`.

    Raises:
      ValueError: when the report has no block trees (``src_blocks`` or
        ``dst_blocks`` is None), an empty one, or a pair naming a layer that is not in
        them.

    Example:
        >>> import jax, jax.numpy as jnp, dpiat_jax
        >>> from dpiat_jax.models import MLP
        >>> src, dst, x = MLP(hidden_sizes=(8,)), MLP(hidden_sizes=(16, 8)), jnp.zeros((1, 4))
        >>> report = dpiat_jax.match(src.init(jax.random.key(0), x), src, dst, sample_input=x)
        >>> fig = plot_report(report)
        >>> len(fig.axes)  # the alignment and its colour bar
        2
    """
    src_tree, dst_tree = _checked_trees(report)
    src_leaves, dst_leaves = tree_leaves(src_tree), tree_leaves(dst_tree)
    src_index, dst_index = _index_of(src_leaves, "source"), _index_of(dst_leaves, "target")
    n_src, n_dst = len(src_leaves), len(dst_leaves)
    xs, ys, scores = _pair_positions(report, src_index, dst_index)
    names = (_labelling(n_src, annotate), _labelling(n_dst, annotate))
    fig, ax = _grid_axes(ax, figsize or _auto_figsize(n_src, n_dst, *names), dpi, n_src, n_dst)
    bands, n_outlined = _draw_blocks(ax, src_tree, dst_tree, xs, ys)
    placeholders = _draw_placeholders(ax, src_leaves, dst_leaves)
    unmatched = set(report.unmatched_dst)
    _label_axes(ax, src_leaves, dst_leaves, names, unmatched)
    ax.set_title(_title(report) if title is None else title, fontsize=9)
    mappable = _colorbar(fig, ax, cmap)
    um = sorted(dst_index[n] for n in unmatched if n in dst_index)
    _draw_markers(fig, ax, (xs, ys, scores), mappable, um, (n_src, n_dst))
    counts = dict(n_pairs=len(xs), n_blocks=n_outlined, n_unmatched=len(um))
    _legend(ax, mappable.get_cmap()(1.0), **counts, bands=bands, placeholders=placeholders)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig
