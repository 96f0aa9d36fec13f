"""Matching: turn an alignment of two block trees into layer pairs and a report.

The alignment gives index paths into the spec trees; this stage maps them back to the
:class:`~dpiat_jax.layers.Layer` records and summarises what a transfer will move.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from dpiat_jax.alignment import Alignment
from dpiat_jax.blocks import tree_leaves
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

    def __str__(self) -> str:
        width_s = max([len("source"), *(len(s) for s, _, _ in self.pairs)])
        width_d = max([len("target"), *(len(d) for _, d, _ in self.pairs)])
        lines = [
            f"DPIAT match ({self.matcher}, tensor rule {self.tensor_rule}): "
            f"score {self.score:.3f}, similarity {self.similarity:.3f}",
            f"target coverage: {self.layers_transferred}/{self.layers_total} layers "
            f"({100 * self.layer_coverage:.1f}%), {self.params_transferred:,}/"
            f"{self.params_total:,} parameters ({100 * self.param_coverage:.1f}%)",
            "",
            f"{'source':<{width_s}}  ->  {'target':<{width_d}}  score",
            f"{'-' * width_s}      {'-' * width_d}  -----",
        ]
        lines += [f"{s:<{width_s}}  ->  {d:<{width_d}}  {sc:.3f}" for s, d, sc in self.pairs]
        if self.unmatched_dst:
            lines += ["", f"target layers left at their fresh init ({len(self.unmatched_dst)}):"]
            lines += [f"  {p}" for p in self.unmatched_dst]
        if self.unmatched_src:
            lines += ["", f"source layers not used ({len(self.unmatched_src)}):"]
            lines += [f"  {p}" for p in self.unmatched_src]
        if self.skipped:
            lines += ["", f"tensors not moved ({len(self.skipped)}):"]
            lines += [f"  {d} <- {s}: {why}" for d, s, why in self.skipped]
        return "\n".join(lines)

    def plot(self, path: str | None = None, **kwargs):
        """Draws the alignment (see :func:`dpiat_jax.plotting.plot_report`)."""
        from dpiat_jax.plotting import plot_report

        return plot_report(self, path, **kwargs)


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
) -> MatchReport:
    """Summarises a matching (layers are joined by their names, i.e. module paths).

    Args:
      pairs: the matched layer pairs (:func:`layer_pairs`).
      src_blocks, dst_blocks: the two block trees (:func:`dpiat_jax.blocks.blocks`).
      written: target layer name -> scalars written from the source.
      skipped: ``(target tensor, source tensor, reason)`` of tensors not moved.
      score: the alignment's score; similarity: score / the target's self score.
      matcher, tensor_rule: the names the report records.

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
        src_blocks=src_blocks,
        dst_blocks=dst_blocks,
    )
