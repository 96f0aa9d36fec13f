"""Statistics of the evidence tables: bootstrap intervals of means and of rank correlations.

Every figure of the evidence protocol is a mean over seeds (or over pairs) of a paired
quantity, reported with a 95% percentile-bootstrap interval; rank correlations are
Spearman's rho with an interval from resampling the pairs. The resampling seed is fixed,
so the same values always give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dpiat_jax.experiments.results import spearman

__all__ = ["bootstrap_interval", "log_ratios", "spearman_interval"]


def bootstrap_interval(
    values: Sequence[float], *, samples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Return the mean and a 95% percentile-bootstrap interval of the mean.

    Args:
        values: one value per seed (or per pair); NaNs are dropped.
        samples: bootstrap resamples.
        seed: the resampling's seed (fixed: the same values give the same interval).

    Returns:
        ``(mean, low, high)``; with one value, all three equal it; NaN for none.

    >>> bootstrap_interval([1.0, 1.0, 1.0])
    (1.0, 1.0, 1.0)
    """
    x = np.asarray(values, np.float64)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return (float("nan"),) * 3
    if len(x) < 2:
        return (float(x.mean()),) * 3
    means = x[np.random.default_rng(seed).integers(0, len(x), (samples, len(x)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(low), float(high)


def log_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Return the paired natural-log ratios ``log(n_i / d_i)`` (one per seed).

    Paired log-ratios are symmetric (a 2x gain and a 2x loss cancel) and their mean is
    the log of the geometric-mean ratio.

    Args:
        numerators: e.g. the transfer arm's areas, one per seed.
        denominators: the random arm's, for the same seeds.

    Returns:
        The log-ratios; NaN where either side is not positive.

    >>> [round(v, 3) for v in log_ratios([2.0, 1.0], [1.0, 2.0])]
    [0.693, -0.693]
    """
    n = np.asarray(numerators, np.float64)
    d = np.asarray(denominators, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where((n > 0) & (d > 0), np.log(n / d), np.nan)
    return [float(v) for v in out]


def spearman_interval(
    x: Sequence[float], y: Sequence[float], *, samples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Return Spearman's rho of ``(x, y)`` and a 95% bootstrap interval over the points.

    Args:
        x: e.g. the pairs' similarities.
        y: e.g. the pairs' mean log-ratios.
        samples: bootstrap resamples (resamples with a constant side are skipped).
        seed: the resampling's seed.

    Returns:
        ``(rho, low, high)``; NaN where undefined (fewer than 3 points).

    >>> spearman_interval([1, 2, 3, 4], [1, 2, 3, 4])
    (1.0, 1.0, 1.0)
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rho = spearman(x, y)[0]
    if len(x) < 3 or np.isnan(rho):
        return rho, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(samples):
        idx = rng.integers(0, len(x), len(x))
        r = spearman(x[idx], y[idx])[0]
        if not np.isnan(r):
            rhos.append(r)
    if not rhos:
        return rho, float("nan"), float("nan")
    low, high = np.percentile(rhos, [2.5, 97.5])
    return rho, float(low), float(high)
