"""Bias detection, the paper's DALL·E-mini study: how often do an attribute's tokens occur in generations
from a neutral prompt, compared between the attribute's values?

The effect size is Cliff's δ between two samples of per-image token counts ``a`` (images of one attribute
value) and ``b`` (the other): ``δ = (#{a_i > b_j} - #{a_i < b_j}) / (n·m)``, in [-1, 1]. The original
counts the pairs in an O(n·m) double loop; here each ``a_i`` is located in the sorted ``b`` by binary
search, O((n + m) log m), the same number (it is the Mann–Whitney U statistic rescaled, ties counted half).
"""

from __future__ import annotations

import numpy as np


def cliffs_delta(a, b) -> float:
    """Cliff's δ of sample ``a`` against sample ``b`` (positive: values in ``a`` tend to be larger)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError(f"Cliff's delta needs two non-empty samples, got sizes {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("Cliff's delta: the samples contain NaN or Inf")
    below = np.searchsorted(b, a, side="left")  # b_j < a_i
    above = b.size - np.searchsorted(b, a, side="right")  # b_j > a_i
    return float((below.sum() - above.sum()) / (a.size * b.size))


def bootstrap_delta(a, b, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(δ, low, high)``: Cliff's δ and a percentile bootstrap confidence interval (both samples resampled)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    delta = cliffs_delta(a, b)
    rng = np.random.default_rng(seed)
    boots = np.array([cliffs_delta(rng.choice(a, a.size), rng.choice(b, b.size)) for _ in range(n_boot)])
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return delta, float(lo), float(hi)
