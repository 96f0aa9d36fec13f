"""Coverage: when a transfer moves (almost) nothing, say so and say why.

A transfer whose target coverage is zero returns a plain random init; without a warning
it looks like a success. :func:`warn_low_coverage` warns (:class:`LowCoverageWarning`)
when the share of the target's scalars written from the source is at most a threshold
(0 by default: nothing moved), and :func:`low_coverage_cause` names the likely cause
from the report's block trees:

* no shared layer kinds: layers only pair within a kind (a ``conv1d`` never seeds a
  ``conv2d``);
* blocks against single layers: the kinds both models have sit at different nesting
  depths, and the DP matcher pairs blocks with blocks (``matcher="flat"`` ignores them);
* ranks differ: layers were paired, but their tensors have different ranks, so no
  tensor rule can move them.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dpiat_jax.matching import MatchReport

__all__ = [
    "LOW_COVERAGE",
    "LowCoverageWarning",
    "is_low_coverage",
    "low_coverage_cause",
    "warn_low_coverage",
]

#: The default threshold: a target coverage (share of scalars) at most this is low.
LOW_COVERAGE = 0.0


class LowCoverageWarning(UserWarning):
    """The transfer moves (almost) nothing: the target keeps its random init.

    Filter it like any warning: ``warnings.simplefilter("error", LowCoverageWarning)``.

    >>> issubclass(LowCoverageWarning, UserWarning)
    True
    """


def is_low_coverage(report: MatchReport, threshold: float = LOW_COVERAGE) -> bool:
    """Whether a report's target coverage is at most ``threshold``.

    Args:
      report: the :class:`~dpiat_jax.matching.MatchReport`.
      threshold: the highest coverage (share of the target's scalars) that counts as low.

    Returns:
      ``report.param_coverage <= threshold``.

    >>> from dpiat_jax.matching import MatchReport
    >>> is_low_coverage(MatchReport((), (), (), (), 0, 2, 0, 40, 0.0, 0.0))
    True
    """
    return report.param_coverage <= threshold


def _kind_depths(tree: list, depth: int = 1, out: dict | None = None) -> dict[str, set[int]]:
    """Layer kind -> the nesting depths where it occurs (placeholders left out)."""
    out = {} if out is None else out
    for x in tree:
        if isinstance(x, list):
            _kind_depths(x, depth + 1, out)
        elif not x.is_placeholder:
            out.setdefault(x.kind, set()).add(depth)
    return out


def _depths_text(kind_depths: dict[str, set[int]], kinds: list[str]) -> str:
    return ", ".join(f"{k} at depth {'/'.join(map(str, sorted(kind_depths[k])))}" for k in kinds)


def low_coverage_cause(report: MatchReport) -> str:
    """Names the likely cause of a transfer that moves nothing, and what to try.

    Args:
      report: the :class:`~dpiat_jax.matching.MatchReport`, with its block trees (a
        report read back from JSON has none: the cause is then not named).

    Returns:
      One or two sentences: no shared layer kinds, blocks against single layers, ranks
      differ, or (when none of these) where to look in the report.

    >>> from dpiat_jax.layers import Layer
    >>> from dpiat_jax.matching import MatchReport
    >>> conv = Layer(("c",), "conv2d", "Conv", {}, "kernel")
    >>> dense = Layer(("d",), "dense", "Dense", {}, "kernel")
    >>> report = MatchReport((), ("d",), ("c",), (), 0, 1, 0, 10, 0.0, 0.0,
    ...                      src_blocks=[dense], dst_blocks=[conv])
    >>> low_coverage_cause(report)[:62]
    'no shared layer kinds: the source has dense, the target conv2d'
    """
    if report.src_blocks is None or report.dst_blocks is None:
        return "the cause is not known (the report has no block trees): see its unmatched layers"
    src, dst = _kind_depths(report.src_blocks), _kind_depths(report.dst_blocks)
    shared = sorted(set(src) & set(dst))
    if not shared:
        return (
            f"no shared layer kinds: the source has {', '.join(sorted(src))}, the target "
            f"{', '.join(sorted(dst))}, and layers only pair within a kind. Choose a "
            "source with the target's kinds of layers."
        )
    if not report.pairs and all(not (src[k] & dst[k]) for k in shared):
        return (
            f"blocks against single layers: the kinds both have sit at different nesting "
            f"depths (source: {_depths_text(src, shared)}; target: "
            f"{_depths_text(dst, shared)}), and the DP matcher pairs blocks with blocks. "
            "Try matcher='flat', which ignores the block structure."
        )
    ranks = [s for s in report.skipped if "ranks differ" in s[2]]
    if report.pairs and ranks:
        dst_key, src_key, why = ranks[0]
        return (
            f"ranks differ: layers were paired, but their tensors have different ranks "
            f"({dst_key} <- {src_key}: {why}), so no tensor rule can move them."
        )
    return (
        f"{len(report.pairs)} layer pair(s) found, none moving a value: see the report's "
        "unmatched layers and tensors not moved."
    )


def warn_low_coverage(
    report: MatchReport, threshold: float = LOW_COVERAGE, *, stacklevel: int = 2
) -> bool:
    """Warns when a transfer moves (almost) nothing, naming the likely cause.

    Args:
      report: the plan's :class:`~dpiat_jax.matching.MatchReport`.
      threshold: see :func:`is_low_coverage` (0: warn when nothing moves).
      stacklevel: passed to :func:`warnings.warn`.

    Returns:
      Whether it warned.

    Warns:
      LowCoverageWarning: the coverage is at most ``threshold``; the message gives the
        coverage, :func:`low_coverage_cause` and says that the target keeps its init.

    >>> from dpiat_jax.matching import MatchReport
    >>> report = MatchReport((), (), (), (), 1, 2, 10, 40, 0.5, 0.25)
    >>> warn_low_coverage(report)
    False
    """
    if not is_low_coverage(report, threshold):
        return False
    warnings.warn(
        f"The transfer moves {report.params_transferred:,} of the target's "
        f"{report.params_total:,} parameters ({100 * report.param_coverage:.1f}%, "
        f"{report.layers_transferred}/{report.layers_total} layers): the target keeps its "
        f"random init. Likely cause: {low_coverage_cause(report)}",
        LowCoverageWarning,
        stacklevel=stacklevel,
    )
    return True
