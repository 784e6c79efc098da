"""Latency statistics: the one place where percentiles and confidence intervals are computed.

Percentiles use numpy's default 'linear' method (Hyndman & Fan type 7, as in Excel's
PERCENTILE.INC and pandas' quantile): p = x[k] + (x[k+1] - x[k]) * f at rank (n - 1) * q / 100.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

PERCENTILES = (50, 90, 95, 99)

# Resamples are drawn in chunks of at most this many indices, so a 100k-iteration run does
# not allocate a (resamples x n) index matrix at once.
_BOOTSTRAP_CHUNK = 4_000_000


def percentiles(values: Sequence[float], qs: Sequence[float] = PERCENTILES) -> Dict[str, float]:
    """Percentiles of `values` as {'p50': ..., 'p90': ...}, linear interpolation."""
    data = _as_sample(values)
    # Default method is 'linear' on every numpy version; naming it would break numpy < 1.22.
    values = np.percentile(data, list(qs))
    # No zip(): ruff's B905 wants strict=, which Python 3.8 lacks.
    return {"p%g" % q: float(values[i]) for i, q in enumerate(qs)}


def bootstrap_median_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 1000, seed: int = 0
) -> Tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median; deterministic for a given seed."""
    return bootstrap_cis(values, (50,), confidence, resamples, seed)["p50"]


def bootstrap_cis(
    values: Sequence[float], qs: Sequence[float] = (50,), confidence: float = 0.95,
    resamples: int = 1000, seed: int = 0
) -> Dict[str, Tuple[float, float]]:
    """Percentile-bootstrap confidence intervals of the percentiles `qs`, {'p50': (lo, hi)},
    from the same resamples; deterministic for a given seed."""
    data = _as_sample(values)
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1), got %r" % confidence)
    if resamples < 1:
        raise ValueError("resamples must be >= 1, got %r" % resamples)
    rng = np.random.default_rng(seed)
    n = data.size
    per_chunk = max(1, _BOOTSTRAP_CHUNK // n)
    stats = []
    for start in range(0, resamples, per_chunk):
        rows = min(per_chunk, resamples - start)
        # (len(qs), rows): each resample's percentiles
        stats.append(np.percentile(data[rng.integers(0, n, size=(rows, n))], list(qs), axis=1))
    every = np.concatenate(stats, axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    out = {}
    for i, q in enumerate(qs):
        lo, hi = np.percentile(every[i], [tail, 100.0 - tail])
        out["p%g" % q] = (float(lo), float(hi))
    return out


def summarize(values: Sequence[float], resamples: int = 1000, seed: int = 0) -> Dict[str, object]:
    """mean, sd (sample, ddof=1), min, p50/p90/p95/p99, max and 95 % bootstrap CIs of the
    median (`median_ci95`), p90 and p99 (`p90_ci95`, `p99_ci95`) of a latency sample (same
    unit in, same unit out)."""
    data = _as_sample(values)
    out: Dict[str, object] = {
        "mean": float(data.mean()),
        "sd": float(data.std(ddof=1)) if data.size > 1 else 0.0,
        "min": float(data.min()),
    }
    out.update(percentiles(data))
    out["max"] = float(data.max())
    cis = bootstrap_cis(data, (50, 90, 99), 0.95, resamples, seed)
    out["median_ci95"] = list(cis["p50"])
    out["p90_ci95"], out["p99_ci95"] = list(cis["p90"]), list(cis["p99"])
    return out


def _as_sample(values: Sequence[float]) -> np.ndarray:
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size == 0:
        raise ValueError("cannot summarize an empty sample")
    if not np.all(np.isfinite(data)):
        raise ValueError("sample contains NaN or infinite values")
    return data
