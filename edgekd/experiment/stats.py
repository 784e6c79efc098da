"""Summary statistics and tests for comparing methods over seeds."""

from __future__ import annotations

import math

import numpy as np


def summarize(values: list[float]) -> dict:
    """mean, sample sd (ddof=1), best, worst and n of a list of accuracies."""
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": int(a.size),
        "mean": float(a.mean()) if a.size else math.nan,
        "sd": float(a.std(ddof=1)) if a.size > 1 else math.nan,
        "best": float(a.max()) if a.size else math.nan,
        "worst": float(a.min()) if a.size else math.nan,
    }


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test p-value (unequal variances); None when it is undefined."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a) == 0 and np.std(b) == 0:
        return None if np.mean(a) == np.mean(b) else 0.0
    p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p
