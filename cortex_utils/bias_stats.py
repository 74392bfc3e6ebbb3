"""The statistics of the bias study, on per-image counts of value A's and value B's tokens (no model).
The paper's number, Cliff's δ of the A counts against the B counts (``count_delta``), is not a share: token
sets that differ in size give a half-and-half neutral set a δ far from 0. ``bias_share`` estimates the share
of neutral generations that show A: a threshold rule on ``count_A - count_B``, fitted on labelled images and
corrected for its error rates on held-out ones (Rogan–Gladen), with a bootstrap interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, bootstrap, mannwhitneyu


def _delta(a, b, axis=-1):
    """Cliff's δ along ``axis`` from the Mann–Whitney U of ``a`` (ties count half): ``2U/(n·m) - 1``, written
    ``(2U - n·m) / (n·m)`` so the numerator stays an exact integer."""
    u = mannwhitneyu(a, b, axis=axis, method="asymptotic").statistic
    nm = a.shape[axis] * b.shape[axis]
    return (2 * u - nm) / nm


def cliffs_delta(a, b) -> float:
    """Cliff's δ of sample ``a`` against sample ``b`` (positive: values in ``a`` tend to be larger)."""
    a, b = (np.asarray(x, dtype=np.float64).ravel() for x in (a, b))
    if a.size == 0 or b.size == 0:
        raise ValueError(f"Cliff's delta needs two non-empty samples, got sizes {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("Cliff's delta: the samples contain NaN or Inf")
    return float(_delta(a, b))


def count_delta(counts_a, counts_b, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """The paper's measurement: Cliff's δ of the neutral images' A counts against their B counts (``delta``;
    the original code prints ``delta_paper_half_scale`` = δ/2), with a percentile bootstrap interval over the
    images (an image's two counts stay together)."""
    a, b = np.asarray(counts_a), np.asarray(counts_b)
    if a.size == 0:
        raise ValueError("no neutral generations to measure")
    if a.shape != b.shape:
        raise ValueError(f"the two counts must be per image, got {a.size} and {b.size} values")
    delta = cliffs_delta(a, b)
    ci = bootstrap(
        (a, b), _delta, n_resamples=n_boot, paired=True, confidence_level=level, method="percentile", rng=seed
    ).confidence_interval
    return {
        "delta": delta,
        "low": float(ci.low),
        "high": float(ci.high),
        "delta_paper_half_scale": delta / 2,
        "mean_count_a": float(a.mean()),
        "mean_count_b": float(b.mean()),
    }


# --- the share estimate -------------------------------------------------------------------------------
#
# On per-image integer scores ``count_A - count_B``, every threshold at once from histograms: candidate 2k
# means "score >= k" (t = k - ½), candidate 2k + 1 "score > k, and half of score == k" (t = k): an image
# exactly at the threshold counts half to each value, so no tie becomes a win decided by noise.

SETS = ("neutral", "fit_a", "fit_b", "cal_a", "cal_b")  # the image sets, each resampled on its own


@dataclass(frozen=True)
class ShareOptions:
    """``bias_share``'s settings: ``n_boot`` bootstrap resamples (``seed``) for an interval at ``level``; a
    rule with ``sens + spec - 1 <= min_youden`` cannot tell the values apart; the error-rate check withholds
    the interval when its p < ``check_level``."""

    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    min_youden: float = 0.1
    check_level: float = 0.05

    def __post_init__(self):
        if not 0 < self.level < 1:
            raise ValueError(f"level must lie in (0, 1), got {self.level}")
        if self.n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {self.n_boot}")


def _scores(a, b) -> np.ndarray:
    a, b = np.asarray(a).astype(np.int64).ravel(), np.asarray(b).astype(np.int64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"the two counts must be per image, got {a.size} and {b.size} values")
    return a - b


def _split(counts) -> tuple[np.ndarray, np.ndarray]:
    a, b, is_a = counts
    s, is_a = _scores(a, b), np.asarray(is_a, dtype=bool)
    if is_a.shape != s.shape:
        raise ValueError("labelled counts: one label per image")
    if is_a.all() or not is_a.any():
        raise ValueError("the labelled images must include both values")
    return s[is_a], s[~is_a]


def _scored(neutral, fit, calibration) -> dict:
    """The scores of every image set (``SETS``); ``calibration`` None: the ``fit`` images."""
    n = _scores(*neutral)
    if n.size == 0:
        raise ValueError("no neutral generations to measure")
    cal = _split(calibration if calibration is not None else fit)
    return dict(zip(SETS, (n, *_split(fit), *cal), strict=True))


def _a_weights(scores, rows, lo: int, k: int) -> np.ndarray:
    """``(R, 2k)``: for each of ``R`` resamples (``rows``, indices into ``scores``), the share of its images
    that the rule of each candidate threshold calls A."""
    rows = np.atleast_2d(rows)
    r, n = rows.shape
    bins = (np.arange(r)[:, None] * k + (scores[rows] - lo)).ravel()  # resample i's score s -> i * k + s - lo
    hist = np.bincount(bins, minlength=r * k).reshape(r, k) / n
    tail = np.concatenate([np.cumsum(hist[:, ::-1], 1)[:, ::-1], np.zeros((r, 1))], 1)  # share >= lo + j
    out = np.empty((r, 2 * k))
    out[:, 0::2] = tail[:, :-1]
    out[:, 1::2] = (tail[:, :-1] + tail[:, 1:]) / 2
    return out


def _best_candidate(j: np.ndarray) -> np.ndarray:
    """Per row the candidate of the largest J; among equal maxima the middle one (so a plateau between two
    strict thresholds picks the half-weight rule at its centre, not whichever end noise favours)."""
    best = j >= j.max(1, keepdims=True) - 1e-12
    running = np.cumsum(best, 1)
    target = (running[:, -1:] + 1) // 2
    return np.argmax(running >= target, 1)


def _share_core(scores: dict, rows: dict, min_youden: float) -> dict:
    """The estimate for each resample: ``scores`` of every image set, ``rows`` the resampled indices into
    each (``(R, size)``)."""
    every = np.concatenate([scores[name] for name in SETS])
    lo, k = int(every.min()), int(every.max() - every.min()) + 2
    w = {name: _a_weights(scores[name], rows[name], lo, k) for name in SETS}
    best = _best_candidate(w["fit_a"] - w["fit_b"])
    pick = {name: np.take_along_axis(v, best[:, None], 1)[:, 0] for name, v in w.items()}
    sens, fpr, q = pick["cal_a"], pick["cal_b"], pick["neutral"]
    youden = sens - fpr
    ok = youden > min_youden
    share = np.full(len(q), np.nan)
    share[ok] = np.clip((q[ok] - fpr[ok]) / youden[ok], 0.0, 1.0)
    threshold = lo + best // 2 - 0.5 * (best % 2 == 0)  # candidate index -> t
    return {"share": share, "q": q, "sens": sens, "spec": 1 - fpr, "youden": youden, "threshold": threshold}


def _resampled_shares(scores: dict, fit_is_a, recount, opts: ShareOptions) -> np.ndarray:
    """``(2, n_boot)``: the share in each bootstrap resample (of each set's row indices); a resample whose
    rule has J <= ``min_youden`` counts as 0 in row 0 and as 1 in row 1."""

    def statistic(*rows, axis=-1):
        rows = dict(zip(SETS, rows, strict=True))
        if recount is None:
            share = _share_core(scores, rows, opts.min_youden)["share"]
        else:
            a_rows, b_rows = np.flatnonzero(fit_is_a), np.flatnonzero(~fit_is_a)
            share = np.empty(len(rows["neutral"]))
            for i in range(len(share)):
                fit_rows = np.concatenate([a_rows[rows["fit_a"][i]], b_rows[rows["fit_b"][i]]])
                fresh = _scored(*recount(fit_rows))
                one = {k: v[i : i + 1] for k, v in rows.items()}
                share[i] = _share_core(fresh, one, opts.min_youden)["share"][0]
        return np.stack([np.nan_to_num(share, nan=0.0), np.nan_to_num(share, nan=1.0)])

    indices = tuple(np.arange(scores[name].size) for name in SETS)
    return bootstrap(
        indices,
        statistic,
        n_resamples=opts.n_boot,
        confidence_level=opts.level,
        method="percentile",
        rng=opts.seed,
    ).bootstrap_distribution


def rogan_gladen(q: float, sens: float, spec: float, min_youden: float = 0.1) -> float:
    """The true share behind an observed share ``q`` of positives, for a rule of sensitivity ``sens`` and
    specificity ``spec``: ``(q + spec - 1) / (sens + spec - 1)``, clipped to [0, 1] (Rogan & Gladen 1978).
    NaN when ``sens + spec - 1 <= min_youden``: the rule cannot tell the two values apart."""
    youden = sens + spec - 1
    if youden <= min_youden:
        return float("nan")
    return float(np.clip((q + spec - 1) / youden, 0.0, 1.0))


def rule_calls(counts_a, counts_b, threshold: float) -> np.ndarray:
    """Per image, how much the rule "A when count_A - count_B > threshold" calls it A: 1, 0, or ½ exactly at
    the threshold (``bias_share``'s tie rule)."""
    s = _scores(counts_a, counts_b)
    return (s > threshold) + 0.5 * (s == threshold)


def error_rate_check(calls, shows_a, prompted_a, n_perm: int = 2000, seed: int = 0) -> dict:
    """Are the rule's error rates the same for every image of a value, as the Rogan–Gladen correction assumes?
    Among held-out images showing one value, those prompted for the other are a second sample of it; the
    statistic is the excess of A ``calls`` among the A-prompted images (``prompted_a``) within each value
    (``shows_a``), summed over the values (as Mantel–Haenszel pools strata). Returns the two-sided ``p``
    from ``n_perm`` shuffles of the prompts within each value, and per value ``rates`` ``(mean call |
    prompt A, mean call | prompt B, images)``."""
    calls, shows_a, prompted_a = (np.asarray(x).ravel() for x in (calls, shows_a, prompted_a))
    sizes = (calls.size, shows_a.size, prompted_a.size)
    if len(set(sizes)) > 1:
        raise ValueError(f"one call, one value and one prompt per image, got {sizes}")
    rng = np.random.default_rng(seed)
    shows_a, prompted_a = shows_a.astype(bool), prompted_a.astype(bool)
    observed, null, rates = 0.0, np.zeros(n_perm), {}
    for value, rows in (("A", shows_a), ("B", ~shows_a)):
        x, g = calls[rows].astype(np.float64), prompted_a[rows]
        rates[value] = (
            float(x[g].mean()) if g.any() else np.nan,
            float(x[~g].mean()) if (~g).any() else np.nan,
            int(x.size),
        )
        if g.all() or not g.any():  # drawn under one prompt only: nothing to compare
            continue
        expected = g.sum() * x.mean()
        observed += x[g].sum() - expected
        null += (rng.permuted(np.tile(g, (n_perm, 1)), axis=1) * x).sum(1) - expected
    p = float((1 + (np.abs(null) >= abs(observed) - 1e-12).sum()) / (1 + n_perm))
    return {"p": p, "rates": rates}


def bias_share(neutral, fit, calibration=None, recount=None, calibration_prompts=None, options=None) -> dict:
    """The share of value A among the ``neutral`` images ``(count_A, count_B)``: ``rogan_gladen(q, sens,
    spec)`` of the rule "A when count_A - count_B > t" (half A at equality), ``t`` maximising Youden's J on
    ``fit`` ``(count_A, count_B, is_A)``, ``sens``/``spec`` measured on ``calibration`` (default ``fit``);
    ``low``, ``high``: its percentile bootstrap interval over every image set (``recount``,
    ``bias.recount_on``: tokens re-selected per resample). An ``error_rate_check`` of ``calibration_prompts``
    (each calibration image's prompt named A?) below ``check_level`` makes it ``inconclusive``, in [0, 1]."""
    opts = options if options is not None else ShareOptions()
    scores = _scored(neutral, fit, calibration)
    every_row = {name: np.arange(scores[name].size)[None] for name in SETS}
    point = {k: float(v[0]) for k, v in _share_core(scores, every_row, opts.min_youden).items()}
    boot = _resampled_shares(scores, np.asarray(fit[2], dtype=bool), recount, opts)
    lo, hi = np.quantile(boot.ravel(), [(1 - opts.level) / 2, 1 - (1 - opts.level) / 2])
    check = {"p": float("nan"), "rates": {}}
    if calibration_prompts is not None:
        cal_a, cal_b, cal_is_a = calibration if calibration is not None else fit
        calls = rule_calls(cal_a, cal_b, point["threshold"])
        check = error_rate_check(calls, cal_is_a, calibration_prompts, seed=opts.seed)
    why = (
        "the token rule cannot tell the values apart"
        if not np.isfinite(point["share"])
        else f"the rule's error rates differ between images of the same value (p = {check['p']:.3f})"
        if check["p"] < opts.check_level
        else ""
    )
    return {
        **point,
        "unchecked_low": float(lo),
        "unchecked_high": float(hi),
        "check_p": check["p"],
        "check_rates": check["rates"],
        "why": why,
        "inconclusive": bool(why),
        "informative": float(np.mean(boot[0] == boot[1])),
        "low": 0.0 if why else float(lo),
        "high": 1.0 if why else float(hi),
    }


def share_verdict(low: float, high: float, margin: float = 0.1) -> str:
    """What an interval for a share says about a lean away from ½ (Schuirmann 1987's two one-sided tests):
    ``no_bias`` inside ½ ± ``margin``, else ``found`` when it excludes ½, else ``inconclusive``."""
    if not 0 < margin < 0.5:
        raise ValueError(f"the equivalence margin must lie in (0, 0.5), got {margin}")
    if 0.5 - margin <= low and high <= 0.5 + margin:
        return "no_bias"
    if low > 0.5 or high < 0.5:
        return "found"
    return "inconclusive"


# --- shares counted directly (pixels, evaluators): binomial intervals ---------------------------------------


def share_interval(outcomes, level: float = 0.95) -> tuple[float, float, float]:
    """``(share, low, high)``: the share of a boolean per-image outcome (e.g. "shows red") and its Wilson
    score interval (Wilson 1927, ``scipy.stats.binomtest``)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    x = np.asarray(outcomes, dtype=bool).ravel()
    test = binomtest(int(x.sum()), x.size)  # refuses no outcomes
    ci, p = test.proportion_ci(level, method="wilson"), float(test.statistic)
    # exact arithmetic gives 0 at k = 0, 1 at k = n and low <= p <= high: keep rounding from breaking that
    return p, float(min(p, max(0.0, ci.low))), float(max(p, min(1.0, ci.high)))


def difference_interval(outcomes_1, outcomes_2, level: float = 0.95) -> tuple[float, float, float]:
    """``(p1 - p2, low, high)`` for two independent boolean samples: Newcombe's (1998, method 10) hybrid
    score interval from the two ``share_interval`` (Wilson) intervals."""
    p1, l1, u1 = share_interval(outcomes_1, level)
    p2, l2, u2 = share_interval(outcomes_2, level)
    d = p1 - p2
    return d, float(d - np.hypot(p1 - l1, u2 - p2)), float(d + np.hypot(u1 - p1, p2 - l2))
