"""Draws docs/pipeline.png, the picture of the guide (docs/guide.md).

    python docs/make_figure.py [--out docs/pipeline.png]

A toy source (stem, one block A, one downsampling block B, one block C, a classifier)
and a deeper, partly wider target (three A, one B, two wider C', a dropout, a
classifier) are aligned at the top level. Left: both element sequences, with an arrow
for every matched pair (a source block seeding a *run* of target blocks fans out).
Right: the dynamic-programme table ``dp[i, j]`` with the backtracked path and the runs.

The scores come from the library (``dpiat_jax.scores.layer_score`` for layers,
``dpiat_jax.alignment.alignment_scores`` for blocks); the table is filled by the
recurrence of the guide, and its pairs are checked against ``dpiat_jax.align`` so the
picture cannot drift from what the library does.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from dpiat_jax.alignment import alignment_scores, larger
from dpiat_jax.matchers import align
from dpiat_jax.scores import layer_score
from dpiat_jax.spec import LayerSpec

HERE = Path(__file__).resolve().parent

KIND_COLORS = {"conv2d": "#4c72b0", "batch_norm": "#dd8452", "dense": "#55a868", "none": "#bbbbbb"}


def conv(k: int, cin: int, cout: int) -> LayerSpec:
    return LayerSpec("conv2d", (k, k, cin, cout))


def bn(c: int) -> LayerSpec:
    return LayerSpec("batch_norm", (c,))


def basic(c: int) -> list:
    return [conv(3, c, c), bn(c), conv(3, c, c), bn(c)]


def down(cin: int, cout: int) -> list:
    return [
        conv(3, cin, cout),
        bn(cout),
        conv(3, cout, cout),
        bn(cout),
        conv(1, cin, cout),
        bn(cout),
    ]


def toy_models() -> tuple[list, list, list[str], list[str]]:
    """The source and target spec trees and a short name per top-level element."""
    src = [conv(3, 3, 16), bn(16), basic(16), down(16, 32), basic(32), LayerSpec("dense", (32, 10))]
    src_names = ["conv", "bn", "A", "B", "C", "head"]
    dst = [
        conv(3, 3, 16),
        bn(16),
        basic(16),
        basic(16),
        basic(16),
        down(16, 32),
        basic(48),
        basic(48),
        LayerSpec("none"),
        LayerSpec("dense", (48, 10)),
    ]
    dst_names = ["conv", "bn", "A", "A", "A", "B", "C'", "C'", "drop", "head"]
    return src, dst, src_names, dst_names


def element_score(s, t) -> float:
    """s(j, r): a layer score, a block alignment score, or 0 (layer against block)."""
    if isinstance(s, LayerSpec) and isinstance(t, LayerSpec):
        return layer_score(s, t)
    if isinstance(s, list) and isinstance(t, list):
        return float(alignment_scores([s], t)[0])
    return 0.0


def solve(scores: np.ndarray):
    """The top-level dynamic programme; ``scores[j, r]`` (0-based). Returns the table,
    the backtracked cells and the runs ``(j, k, i)`` (1-based: source j seeds k..i)."""
    m, n = scores.shape
    dp = np.zeros((n + 1, m + 1))
    choice = np.zeros((n + 1, m + 1), dtype=int)  # -1 left, -2 up, k >= 1: run k..i
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            best, arg = dp[i, j - 1], -1
            if larger(dp[i - 1, j], best):
                best, arg = dp[i - 1, j], -2
            for k in range(i, 0, -1):  # shortest run first
                run = scores[j - 1, k - 1 : i].sum() / math.sqrt(i - k + 1) + dp[k - 1, j - 1]
                if larger(run, best):
                    best, arg = run, k
            dp[i, j], choice[i, j] = best, arg
    path, runs = [(n, m)], []
    i, j = n, m
    while i > 0 and j > 0:
        c = choice[i, j]
        if c == -1:
            j -= 1
        elif c == -2:
            i -= 1
        else:
            runs.append((j, c, i))
            i, j = c - 1, j - 1
        path.append((i, j))
    return dp, path, runs


RUN_COLOR = "#c44e52"  # a run of two or more target elements (both panels)
PAIR_COLOR = "#555555"  # a single matched pair


def draw_sequences(ax, src, dst, src_names, dst_names, runs, scores) -> None:
    """Panel (a): the two element sequences and the matched pairs."""

    def row(tree, names, y):
        centres, x = [], 0.0
        for element, name in zip(tree, names):
            leaves = element if isinstance(element, list) else [element]
            width = 0.55 * len(leaves) + 0.25
            if isinstance(element, list):
                ax.add_patch(
                    Rectangle((x, y - 0.36), width, 0.72, facecolor="#f2f2f2", edgecolor="#444")
                )
            for q, leaf in enumerate(leaves):
                ax.add_patch(
                    Rectangle(
                        (x + 0.125 + 0.55 * q, y - 0.2),
                        0.45,
                        0.4,
                        facecolor=KIND_COLORS.get(leaf.kind, "#999"),
                        edgecolor="white",
                    )
                )
            label_y = y + 0.5 if y > 0 else y - 0.5
            ax.text(x + width / 2, label_y, name, ha="center", va="center", fontsize=8)
            centres.append(x + width / 2)
            x += width + 0.5
        return centres, x

    src_c, src_w = row(src, src_names, 2.0)
    dst_c, dst_w = row(dst, dst_names, 0.0)
    for j, k, i in runs:
        for r in range(k, i + 1):
            score = scores[j - 1, r - 1]
            if score <= 0:
                continue  # inside a run, zero-score targets stay unmatched
            ax.add_patch(
                FancyArrowPatch(
                    (src_c[j - 1], 1.6),
                    (dst_c[r - 1], 0.42),
                    arrowstyle="-|>",
                    mutation_scale=9,
                    color=RUN_COLOR if i > k else PAIR_COLOR,
                    linewidth=1.4,
                )
            )
    ax.text(-0.2, 2.0, "source", ha="right", va="center", fontsize=9, fontweight="bold")
    ax.text(-0.2, 0.0, "target", ha="right", va="center", fontsize=9, fontweight="bold")
    handles = [Rectangle((0, 0), 1, 1, facecolor=c) for c in KIND_COLORS.values()]
    ax.legend(
        handles + [Rectangle((0, 0), 1, 1, facecolor="#f2f2f2", edgecolor="#444")],
        ["conv", "batch norm", "dense", "placeholder", "block"],
        loc="lower center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=5,
        fontsize=7,
        frameon=False,
    )
    ax.set_xlim(-2.0, max(src_w, dst_w))
    ax.set_ylim(-1.2, 2.8)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(
        "(a) top-level elements and the matched pairs\n"
        "red: one source element seeds a run of target elements",
        fontsize=9,
    )


def draw_table(ax, dp, path, runs, src_names, dst_names) -> None:
    """Panel (b): ``dp[i, j]`` with the backtracked path and the runs."""
    n, m = dp.shape[0] - 1, dp.shape[1] - 1
    on_path = set(path)
    for i in range(n + 1):
        for j in range(m + 1):
            face = "#fff2cc" if (i, j) in on_path else "white"
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=face, edgecolor="#ddd"))
            ax.text(j, i, f"{dp[i, j]:.1f}", ha="center", va="center", fontsize=7)
    for j, k, i in runs:
        ax.add_patch(
            Rectangle(
                (j - 0.42, k - 0.42),
                0.84,
                i - k + 0.84,
                facecolor="none",
                edgecolor=RUN_COLOR if i > k else PAIR_COLOR,
                linewidth=1.6,
            )
        )
    ys, xs = zip(*path)
    ax.plot(xs, ys, color="#8c613c", linewidth=1.0, linestyle="--", zorder=3)
    ax.set_xlim(-0.5, m + 0.5)
    ax.set_ylim(n + 0.5, -0.5)
    ax.set_xticks(range(m + 1), ["-", *src_names], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n + 1), ["-", *dst_names], fontsize=7)
    ax.set_xlabel("source element j", fontsize=8)
    ax.set_ylabel("target element i", fontsize=8)
    ax.set_aspect("equal")
    ax.tick_params(length=0)
    ax.set_title(
        "(b) the table dp[i, j], its backtracked path (shaded)\n"
        "and its pairs (red: a run, source j seeds targets k..i)",
        fontsize=9,
    )


def draw_recurrence(ax, dp, runs, scores, src_names, dst_names, self_score) -> None:
    """Panel (c): the recurrence, worked out for the longest run of the figure."""
    j, k, i = max(runs, key=lambda r: (r[2] - r[1], r[0]))
    terms = scores[j - 1, k - 1 : i]
    run_value = terms.sum() / math.sqrt(i - k + 1)
    lines = [
        ("The recurrence (target i, source j; s = element score):", "bold"),
        ("dp[i, j] = max(  dp[i-1, j]          target i unmatched", "mono"),
        ("                 dp[i, j-1]          source j unused", "mono"),
        ("                 max over k of       source j seeds k..i", "mono"),
        ("                   (s(j,k)+...+s(j,i)) / sqrt(i-k+1)", "mono"),
        ("                   + dp[k-1, j-1] )", "mono"),
        ("", "mono"),
        ("Scores: a layer pair scores by its shapes (1.0 when equal);", "plain"),
        ("a block pair by the alignment of its layers (recursively);", "plain"),
        ("a layer against a block, or a placeholder, scores 0.", "plain"),
        ("", "mono"),
        (
            f"Worked example: source {src_names[j - 1]} (j={j}) seeds targets "
            f"{', '.join(dst_names[k - 1 : i])} (i={k}..{i}):",
            "bold",
        ),
        (
            f"  ({' + '.join(f'{t:.2f}' for t in terms)}) / sqrt({i - k + 1})"
            f" + dp[{k - 1}, {j - 1}]",
            "mono",
        ),
        (f"  = {run_value:.2f} + {dp[k - 1, j - 1]:.2f} = {dp[i, j]:.2f} = dp[{i}, {j}]", "mono"),
        ("", "mono"),
        ("The square root gives a run diminishing credit: one shallow", "plain"),
        ("source block can initialise several target blocks, but a", "plain"),
        ("source with as many blocks as the target scores higher.", "plain"),
        ("", "mono"),
        (f"Alignment score S -> T: dp[n, m] = {dp[-1, -1]:.2f}.", "plain"),
        (
            f"Self score T -> T: {self_score:.2f};  similarity = {dp[-1, -1]:.2f} / "
            f"{self_score:.2f} = {dp[-1, -1] / self_score:.3f}.",
            "plain",
        ),
    ]
    y = 0.97
    for text, style in lines:
        ax.text(
            0.0,
            y,
            text,
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize=8.5,
            family="monospace" if style == "mono" else "sans-serif",
            fontweight="bold" if style == "bold" else "normal",
        )
        y -= 0.047
    ax.axis("off")
    ax.set_title("(c) the dynamic programme", fontsize=9, loc="left")


def make_figure(out: Path) -> Path:
    src, dst, src_names, dst_names = toy_models()
    scores = np.array([[element_score(s, t) for t in dst] for s in src])
    dp, path, runs = solve(scores)

    # The picture must show what the library does.
    lib = align(src, dst)
    lib_pairs = {(sp[0], dp_[0]) for sp, dp_ in lib.pairs}
    ours = {(j - 1, r - 1) for j, k, i in runs for r in range(k, i + 1) if scores[j - 1, r - 1] > 0}
    if lib_pairs != ours or not math.isclose(lib.score, dp[-1, -1], rel_tol=1e-4):
        raise RuntimeError(f"figure and library disagree: {sorted(ours)} vs {sorted(lib_pairs)}")

    fig = Figure(figsize=(12.0, 8.6), dpi=100, layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.9], width_ratios=[1.0, 1.25])
    draw_sequences(fig.add_subplot(grid[0, :]), src, dst, src_names, dst_names, runs, scores)
    draw_table(fig.add_subplot(grid[1, 0]), dp, path, runs, src_names, dst_names)
    self_score = float(alignment_scores([dst], dst)[0])
    draw_recurrence(fig.add_subplot(grid[1, 1]), dp, runs, scores, src_names, dst_names, self_score)
    fig.suptitle(
        f"DPIAT alignment of a toy source and a deeper target: score {lib.score:.2f}",
        fontsize=10,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "pipeline.png")
    args = parser.parse_args(argv)
    print(make_figure(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
