"""Matching: turn an alignment of two block trees into layer pairs and a report.

The alignment gives index paths into the spec trees; this stage maps them back to the
:class:`~dpiat_jax.layers.Layer` records and summarises what a transfer will move.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from dpiat_jax.alignment import Alignment
from dpiat_jax.blocks import tree_leaves
from dpiat_jax.coverage import is_low_coverage
from dpiat_jax.layers import Layer
from dpiat_jax.scores import layer_score
from dpiat_jax.spec import get_at

__all__ = ["LayerPair", "MatchReport", "layer_pairs", "build_report"]


@dataclasses.dataclass(frozen=True, eq=False)
class LayerPair:
    """A matched source layer and target layer, with their layer score.

    Attributes:
      src: the source :class:`~dpiat_jax.layers.Layer`.
      dst: the target layer.
      score: their layer score (:func:`dpiat_jax.scores.layer_score`).

    >>> from dpiat_jax.layers import Layer
    >>> layer = Layer(("a",), "dense", "Dense", {}, "kernel")
    >>> LayerPair(layer, layer, 1.0).dst.name
    'a'
    """

    src: Layer
    dst: Layer
    score: float


def layer_pairs(alignment: Alignment, src_blocks: list, dst_blocks: list) -> list[LayerPair]:
    """Returns the matched layer pairs of an alignment, in target call order.

    Args:
      alignment: the matcher's :class:`~dpiat_jax.alignment.Alignment` (index paths).
      src_blocks, dst_blocks: the block trees the spec trees were made from.

    Returns:
      One :class:`LayerPair` per aligned leaf pair.

    >>> import jax.numpy as jnp
    >>> from dpiat_jax.alignment import Alignment
    >>> from dpiat_jax.layers import Layer
    >>> small = Layer(("a",), "dense", "Dense", {"params": {"kernel": jnp.zeros((2, 2))}}, "kernel")
    >>> big = Layer(("b",), "dense", "Dense", {"params": {"kernel": jnp.zeros((2, 4))}}, "kernel")
    >>> layer_pairs(Alignment(0.5, [((0,), (0,))]), [small], [big])[0].score
    0.5
    """
    out = []
    for sp, dp in alignment.pairs:
        src, dst = get_at(src_blocks, sp), get_at(dst_blocks, dp)
        out.append(LayerPair(src, dst, layer_score(src.spec, dst.spec)))
    return out


@dataclasses.dataclass(frozen=True)
class MatchReport:
    """What a transfer moves: the pairs, the target's coverage and what is left out.

    Attributes:
      pairs: ``(source path, target path, score)`` per matched layer, target order.
      unmatched_src: source layers (placeholders excluded) that seed nothing.
      unmatched_dst: target layers (placeholders excluded) that keep their fresh init.
      skipped: ``(target tensor, source tensor, reason)`` for matched tensors no rule
        could move (e.g. ranks differ) or that the source lacks.
      layers_transferred / layers_total: target layers that received source values.
      params_transferred / params_total: target scalars written from the source, and
        all target scalars (every collection).
      score: the top-level alignment score; similarity: score / the target's self score.
      matcher, tensor_rule: how the pairs and tensors were produced.
      fused: ``(target tensor, axis, parts)`` of the tensors moved part by part as
        fused projections (:mod:`dpiat_jax.fused`); the axis of one step for a tensor
        stacked by ``nn.scan``.
      factored: ``(target tensor, axis, source factors, target factors)`` of the axes
        that hold several factors in one (heads and the head dimension, or fused parts,
        heads and the head dimension; :mod:`dpiat_jax.heads`), moved factor by factor:
        whole heads kept or dropped, the head dimension cropped inside each head.
      inferred_input: the shape of the source input inferred from its variables (the
        smallest that fits them); None when ``sample_input`` was given. Not compared:
        a plan from an inferred input equals one from the same input given.

    >>> report = MatchReport((("a", "b", 0.5),), (), (), (), 1, 2, 10, 40, 0.5, 0.25)
    >>> report.layer_coverage, report.param_coverage
    (0.5, 0.25)
    """

    pairs: tuple[tuple[str, str, float], ...]
    unmatched_src: tuple[str, ...]
    unmatched_dst: tuple[str, ...]
    skipped: tuple[tuple[str, str, str], ...]
    layers_transferred: int
    layers_total: int
    params_transferred: int
    params_total: int
    score: float
    similarity: float
    matcher: str = "dp"
    tensor_rule: str = "clip"
    fused: tuple[tuple[str, int, int], ...] = ()
    factored: tuple[tuple[str, int, tuple[int, ...], tuple[int, ...]], ...] = ()
    inferred_input: tuple[int, ...] | None = dataclasses.field(default=None, compare=False)
    src_blocks: list | None = dataclasses.field(default=None, repr=False, compare=False)
    dst_blocks: list | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def layer_coverage(self) -> float:
        """Fraction of the target's layers that received source values."""
        return self.layers_transferred / self.layers_total if self.layers_total else 0.0

    @property
    def param_coverage(self) -> float:
        """Fraction of the target's scalars written from the source."""
        return self.params_transferred / self.params_total if self.params_total else 0.0

    @property
    def low_coverage(self) -> bool:
        """Whether the transfer moves (almost) nothing
        (:func:`dpiat_jax.coverage.is_low_coverage`)."""
        return is_low_coverage(self)

    def __str__(self) -> str:
        return self.table()

    def table(self, *, by_block: bool = False, shapes: bool = False) -> str:
        """Returns the report as text: a header, one row per pair, what is left out.

        The header says what the numbers mean. A pair's score is how alike the two
        layers' shapes are, the product over dimensions of smaller / larger, so a 3x3
        conv seeding a 1x1 conv scores 1/9 = 0.11 although it is "matched"; the match
        score sums the pairs' scores through the blocks, and the similarity divides it
        by the target's score against itself. A transfer can therefore cover 100% of
        the target's layers and still have a similarity of 0.5-0.8: every layer
        receives values, but from shapes that differ.

        Args:
          by_block: group the rows by the target's block (the module holding the
            layer), each group headed by its pair count and mean score.
          shapes: add each pair's main tensor shapes (``3x3x16x16 -> 1x1x16x16``); needs
            the report's block trees (a report read back from JSON shows ``?``).

        Returns:
          The text; ``str(report)`` is ``report.table()``.

        >>> report = MatchReport((("s/conv", "t/conv", 0.111),), (), (), (), 1, 1, 9, 9, 0.1, 0.1)
        >>> print(report.table(by_block=True, shapes=True).splitlines()[-1])
          s/conv  ->  t/conv  0.111  ? -> ?
        """
        lines = self._header()
        shown = [(s, d, sc, self._shapes(s, d) if shapes else "") for s, d, sc in self.pairs]
        width_s = max([len("source"), *(len(s) for s, _, _, _ in shown)])
        width_d = max([len("target"), *(len(d) for _, d, _, _ in shown)])
        indent = "  " if by_block else ""
        extra = "  shapes (source -> target)" if shapes else ""
        lines += [
            f"{indent}{'source':<{width_s}}  ->  {'target':<{width_d}}  score{extra}",
            f"{indent}{'-' * width_s}      {'-' * width_d}  -----",
        ]

        def row(s: str, d: str, sc: float, shape: str) -> str:
            tail = f"  {shape}" if shape else ""
            return f"{indent}{s:<{width_s}}  ->  {d:<{width_d}}  {sc:.3f}{tail}"

        if by_block:
            for block, rows in _by_block(shown).items():
                mean = sum(sc for _, _, sc, _ in rows) / len(rows)
                lines.append(f"[{block}] {len(rows)} pairs, mean score {mean:.3f}")
                lines += [row(*r) for r in rows]
        else:
            lines += [row(*r) for r in shown]
        return "\n".join(lines + self._left_out())

    def _header(self) -> list[str]:
        return [
            f"DPIAT match ({self.matcher}, tensor rule {self.tensor_rule}): "
            f"score {self.score:.3f}, similarity {self.similarity:.3f}",
            f"target coverage: {self.layers_transferred}/{self.layers_total} layers "
            f"({100 * self.layer_coverage:.1f}%), {self.params_transferred:,}/"
            f"{self.params_total:,} parameters ({100 * self.param_coverage:.1f}%)",
            "  score (per pair): how alike the shapes are, the product over dimensions of",
            "    smaller/larger (1.0 equal shapes; a 3x3 conv from a 1x1: 1/9 = 0.111);",
            "    the match score sums them through the blocks.",
            "  similarity: score / the target's score against itself; below 1 whenever",
            "    matched shapes differ, so 100% coverage can still give 0.5-0.8.",
            "",
        ]

    def _shapes(self, src: str, dst: str) -> str:
        def shape(blocks: list | None, name: str) -> str:
            layers = {} if blocks is None else {x.name: x for x in tree_leaves(blocks)}
            layer = layers.get(name)
            return "?" if layer is None else "x".join(map(str, layer.shape)) or "()"

        return f"{shape(self.src_blocks, src)} -> {shape(self.dst_blocks, dst)}"

    def _left_out(self) -> list[str]:
        lines = []
        if self.unmatched_dst:
            lines += ["", f"target layers left at their fresh init ({len(self.unmatched_dst)}):"]
            lines += [f"  {p}" for p in self.unmatched_dst]
        if self.unmatched_src:
            lines += ["", f"source layers not used ({len(self.unmatched_src)}):"]
            lines += [f"  {p}" for p in self.unmatched_src]
        if self.fused:
            lines += ["", f"fused tensors, moved part by part ({len(self.fused)}):"]
            lines += [f"  {d}: {n} parts along axis {a}" for d, a, n in self.fused]
        if self.factored:
            lines += ["", f"axes moved factor by factor, heads kept whole ({len(self.factored)}):"]
            lines += [
                f"  {d}: axis {a}, factors {'x'.join(map(str, s))} -> {'x'.join(map(str, t))}"
                for d, a, s, t in self.factored
            ]
        if self.skipped:
            lines += ["", f"tensors not moved ({len(self.skipped)}):"]
            lines += [f"  {d} <- {s}: {why}" for d, s, why in self.skipped]
        return lines

    def plot(self, path: str | None = None, **kwargs):
        """Draws the alignment (see :func:`dpiat_jax.plotting.plot_report`)."""
        from dpiat_jax.plotting import plot_report

        return plot_report(self, path, **kwargs)


def _by_block(rows: list[tuple]) -> dict[str, list[tuple]]:
    """Rows grouped by the target layer's block (its parent module path), in order."""
    groups: dict[str, list[tuple]] = {}
    for r in rows:
        groups.setdefault(r[1].rpartition("/")[0] or "<root>", []).append(r)
    return groups


def build_report(
    pairs: list[LayerPair],
    src_blocks: list,
    dst_blocks: list,
    *,
    written: Mapping[str, int],
    skipped: Sequence[tuple[str, str, str]],
    score: float,
    similarity: float,
    matcher: str = "dp",
    tensor_rule: str = "clip",
    inferred_input: tuple[int, ...] | None = None,
) -> MatchReport:
    """Summarises a matching (layers are joined by their names, i.e. module paths).

    Args:
      pairs: the matched layer pairs (:func:`layer_pairs`).
      src_blocks, dst_blocks: the two block trees (:func:`dpiat_jax.blocks.blocks`).
      written: target layer name -> scalars written from the source.
      skipped: ``(target tensor, source tensor, reason)`` of tensors not moved.
      score: the alignment's score; similarity: score / the target's self score.
      matcher, tensor_rule: the names the report records.
      inferred_input: the inferred source input's shape (None when given).

    Returns:
      The :class:`MatchReport`.

    >>> import jax.numpy as jnp
    >>> from dpiat_jax.layers import Layer
    >>> layer = Layer(("a",), "dense", "Dense", {"params": {"bias": jnp.ones(2)}}, "bias")
    >>> report = build_report([LayerPair(layer, layer, 1.0)], [layer], [layer],
    ...                       written={"a": 2}, skipped=(), score=1.0, similarity=1.0)
    >>> report.pairs, report.param_coverage
    ((('a', 'a', 1.0),), 1.0)
    """
    src_layers = [x for x in tree_leaves(src_blocks) if not x.is_placeholder]
    dst_layers = [x for x in tree_leaves(dst_blocks) if not x.is_placeholder]
    used_src = {p.src.name for p in pairs}
    used_dst = {p.dst.name for p in pairs}
    return MatchReport(
        pairs=tuple((p.src.name, p.dst.name, float(p.score)) for p in pairs),
        unmatched_src=tuple(x.name for x in src_layers if x.name not in used_src),
        unmatched_dst=tuple(x.name for x in dst_layers if x.name not in used_dst),
        skipped=tuple(skipped),
        layers_transferred=sum(1 for x in dst_layers if written.get(x.name, 0) > 0),
        layers_total=len(dst_layers),
        params_transferred=sum(written.values()),
        params_total=sum(x.num_params() for x in dst_layers),
        score=float(score),
        similarity=float(similarity),
        matcher=matcher,
        tensor_rule=tensor_rule,
        inferred_input=inferred_input,
        src_blocks=src_blocks,
        dst_blocks=dst_blocks,
    )
