"""The statistics of the bias study, on per-image token counts: no model, numpy only.

Per neutral generation, two numbers: how many of its grid positions hold value A's attribute tokens and
how many hold value B's (``bias.token_counts``). Two statistics come out of them.

**The paper's δ** (``count_delta``): Cliff's δ of the A counts against the B counts,
``δ = (#{a_i > b_j} - #{a_i < b_j}) / (n·m)`` in [-1, 1]. The original's function returns
``(#{a_i > b_j} + ½·#ties - n·m/2) / (n·m)``, which is **half** of that (range [-0.5, 0.5]);
``cliffs_delta`` returns the standard δ, ``count_delta`` also the original's number. The original counts the
pairs in an O(n·m) double loop; here each ``a_i`` is located in the sorted ``b`` by binary search,
O((n + m) log m). δ on raw counts is not a share: two token sets that differ in size or spread give a
half-and-half neutral set a δ far from 0, and nothing ties a δ to how many images lean which way. It is kept
because it is the paper's number.

**The share estimate** (``bias_share``), this repository's addition: what share of the neutral generations
shows value A, with an interval that is validated where the truth is known
(``benchmarks/bias_calibration.py``). Each image is classified by its token counts (A when
``count_A - count_B`` exceeds a threshold, half A / half B exactly at the threshold: a tie is a tie, not a win
decided by noise), the threshold is fitted on attribute-labelled images (Youden's J), the classified share
``q`` of the neutral set is corrected for the rule's error rates measured on labelled images that did not
choose the tokens (Rogan–Gladen: ``p = (q + spec - 1) / (sens + spec - 1)``, clipped to [0, 1]), and a
bootstrap resamples everything the estimate depends on: the neutral images, the labelled images behind the
error rates and, through ``recount``, the training rows the tokens are selected from (``bias.recount_on``; the
attribute IEM itself is not retrained per resample). A rule whose ``sens + spec - 1`` is at most
``min_youden`` cannot tell the values apart: the share is then NaN and its interval [0, 1]. In the simulation
(notebook 10's sizes; many ties, uneven token sets, tokens re-selected per resample) the 95 % interval
excluded ½ in 4 % of the half-and-half studies and covered the true share in at least 94 % of every case's
studies; an earlier statistic here, δ of counts ranked against the labelled images, excluded 0 in 72 % of the
same null studies (ties turned into wins by reference noise, a bootstrap over the neutral images only), and is
gone.

What it estimates: the share of value A *as the held-out labelled images define A*. If the generator renders
some "a B" prompts as A and the held-out images are labelled by their prompts, the measured error rates
absorb them and the estimate is the neutral set's mixture weight between the two prompts' outputs, not the
share of images that show A; nothing in token counts alone can detect that. Labelled by what they show
(notebook 10: their pixels), the error rates are the rule's own and the estimate aims at the share that shows
A; ``error_rate_check`` then tests the correction's one assumption (the simulation's ``leak``,
``leak_prompt`` and ``graded`` cases measure all three).
"""

from __future__ import annotations

from statistics import NormalDist

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


def bootstrap_delta(
    a, b, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(δ, low, high)``: Cliff's δ and a percentile bootstrap confidence interval (both samples
    resampled)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    delta = cliffs_delta(a, b)
    rng = np.random.default_rng(seed)
    boots = np.array([cliffs_delta(rng.choice(a, a.size), rng.choice(b, b.size)) for _ in range(n_boot)])
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return delta, float(lo), float(hi)


def count_delta(counts_a, counts_b, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """The paper's measurement on neutral generations: ``counts_a[i]`` and ``counts_b[i]`` are image ``i``'s
    count of value A's tokens and of value B's; Cliff's δ of the A counts against the B counts on raw counts
    (positive: more of A's tokens), on the standard scale (``delta``) and on the original code's half scale
    (``delta_paper_half_scale``). The interval is a percentile bootstrap over the images (an image's two
    counts stay together)."""
    a, b = np.asarray(counts_a), np.asarray(counts_b)
    if a.size == 0:
        raise ValueError("no neutral generations to measure")
    if a.shape != b.shape:
        raise ValueError(f"the two counts must be per image, got {a.size} and {b.size} values")
    delta = cliffs_delta(a, b)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(a), len(a))
        boots.append(cliffs_delta(a[rows], b[rows]))
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {
        "delta": delta,
        "low": float(lo),
        "high": float(hi),
        "delta_paper_half_scale": delta / 2,
        "mean_count_a": float(a.mean()),
        "mean_count_b": float(b.mean()),
    }


# --- the share estimate -------------------------------------------------------------------------------
#
# Everything below works on per-image integer scores ``count_A - count_B``. A rule "A when the score exceeds
# t" is evaluated for every candidate t at once from histograms of the scores: candidate 2k means
# "score >= k" (t = k - ½), candidate 2k + 1 means "score > k, and half of score == k" (t = k). The second
# kind is how ties are handled: an image exactly at the threshold counts half to each value, the same in
# the labelled and in the neutral images, so no tie becomes a win decided by noise.


def _scores(a, b) -> np.ndarray:
    a, b = np.asarray(a).astype(np.int64).ravel(), np.asarray(b).astype(np.int64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"the two counts must be per image, got {a.size} and {b.size} values")
    return a - b


def _a_weights(scores, rows, lo: int, k: int) -> np.ndarray:
    """``(R, 2k)``: for each of ``R`` resamples (``rows``, indices into ``scores``), the share of the
    resampled images that the rule of each candidate threshold calls A (ties at the threshold counted
    half)."""
    rows = np.atleast_2d(rows)
    r, n = rows.shape
    hist = (
        np.bincount((np.arange(r)[:, None] * k + (scores[rows] - lo)).ravel(), minlength=r * k).reshape(r, k)
        / n
    )
    tail = np.concatenate([np.cumsum(hist[:, ::-1], 1)[:, ::-1], np.zeros((r, 1))], 1)  # share >= lo + j
    out = np.empty((r, 2 * k))
    out[:, 0::2] = tail[:, :-1]
    out[:, 1::2] = (tail[:, :-1] + tail[:, 1:]) / 2
    return out


def _threshold_value(candidate, lo: int):
    """The threshold ``t`` of a candidate index (the rule calls A when score > t; half A at score == t)."""
    candidate = np.asarray(candidate)
    return lo + candidate // 2 - 0.5 * (candidate % 2 == 0)


def _best_candidate(j: np.ndarray) -> np.ndarray:
    """Per row the candidate of the largest J; among equal maxima the middle one (so a plateau between two
    strict thresholds picks the half-weight rule at its centre, not whichever end noise favours)."""
    best = j >= j.max(1, keepdims=True) - 1e-12
    running = np.cumsum(best, 1)
    target = (running[:, -1:] + 1) // 2
    return np.argmax(running >= target, 1)


def _share_core(neutral, fit, cal, rows: dict, min_youden: float) -> dict:
    """The estimate for each resample: ``neutral``/``fit``/``cal`` are score arrays (``fit`` and ``cal`` as
    ``(scores of A images, scores of B images)``), ``rows`` the resampled indices into each."""
    every = np.concatenate([neutral, *fit, *cal])
    lo, k = int(every.min()), int(every.max() - every.min()) + 2
    w = {
        name: _a_weights(x, rows[name], lo, k)
        for name, x in (
            ("neutral", neutral),
            ("fit_a", fit[0]),
            ("fit_b", fit[1]),
            ("cal_a", cal[0]),
            ("cal_b", cal[1]),
        )
    }
    best = _best_candidate(w["fit_a"] - w["fit_b"])
    pick = {name: np.take_along_axis(v, best[:, None], 1)[:, 0] for name, v in w.items()}
    sens, fpr, q = pick["cal_a"], pick["cal_b"], pick["neutral"]
    youden = sens - fpr
    ok = youden > min_youden
    share = np.full(len(q), np.nan)
    share[ok] = np.clip((q[ok] - fpr[ok]) / youden[ok], 0.0, 1.0)
    return {
        "share": share,
        "q": q,
        "sens": sens,
        "spec": 1 - fpr,
        "youden": youden,
        "threshold": _threshold_value(best, lo),
    }


def rogan_gladen(q: float, sens: float, spec: float, min_youden: float = 0.1) -> float:
    """The true share behind an observed share ``q`` of positives, for a rule of sensitivity ``sens`` and
    specificity ``spec``: ``(q + spec - 1) / (sens + spec - 1)``, clipped to [0, 1] (Rogan & Gladen 1978).
    NaN when ``sens + spec - 1 <= min_youden``: the rule cannot tell the two values apart."""
    youden = sens + spec - 1
    if youden <= min_youden:
        return float("nan")
    return float(np.clip((q + spec - 1) / youden, 0.0, 1.0))


def fit_threshold(counts_a, counts_b, is_a) -> float:
    """The threshold ``t`` of the rule "A when count_A - count_B > t (half A at equality)" that maximises
    Youden's J = sensitivity + specificity - 1 on labelled images (``is_a``: their true value is A)."""
    s, is_a = _scores(counts_a, counts_b), np.asarray(is_a, dtype=bool)
    if is_a.all() or not is_a.any():
        raise ValueError("fitting a threshold needs labelled images of both values")
    fa, fb = s[is_a], s[~is_a]
    est = _share_core(
        s[:1],
        (fa, fb),
        (fa, fb),
        {
            "neutral": [[0]],
            "fit_a": [np.arange(fa.size)],
            "fit_b": [np.arange(fb.size)],
            "cal_a": [np.arange(fa.size)],
            "cal_b": [np.arange(fb.size)],
        },
        -np.inf,
    )
    return float(est["threshold"][0])


def _split(counts) -> tuple[np.ndarray, np.ndarray]:
    a, b, is_a = counts
    s, is_a = _scores(a, b), np.asarray(is_a, dtype=bool)
    if is_a.shape != s.shape:
        raise ValueError("labelled counts: one label per image")
    if is_a.all() or not is_a.any():
        raise ValueError("the labelled images must include both values")
    return s[is_a], s[~is_a]


def rule_calls(counts_a, counts_b, threshold: float) -> np.ndarray:
    """Per image, how much the rule "A when count_A - count_B > threshold" calls it A: 1, 0, or ½ exactly at
    the threshold (``bias_share``'s tie rule)."""
    s = _scores(counts_a, counts_b)
    return (s > threshold) + 0.5 * (s == threshold)


def error_rate_check(calls, shows_a, prompted_a, n_perm: int = 2000, seed: int = 0) -> dict:
    """Are the rule's error rates the same for every image of a value? The Rogan–Gladen correction assumes
    they are: that how often the rule calls an image A depends only on which value the image shows, not on
    anything else that differs between the held-out and the neutral images. Among held-out images that show
    the same value, those whose prompt named the other value (the generator drew against the prompt) are a
    second sample of that value. When the attribute is a matter of degree (stroke thickness) they lie near
    the border, the rule calls them differently from the rest, and the rates measured on a half-and-half
    held-out set need not hold for a neutral set of another mix.

    ``calls``: per held-out image the rule's A call (``rule_calls``); ``shows_a``: whether it shows A (by a
    labeller independent of the prompt); ``prompted_a``: whether its prompt named A. The statistic is the
    excess of A calls among the A-prompted images over what their number predicts, summed over the two values
    (as the Mantel–Haenszel test pools strata); ``p`` is two-sided, from ``n_perm`` shuffles of the prompt
    labels within each value. Returns ``p`` and per value ``(mean call | prompt A, mean call | prompt B,
    images)``."""
    calls, shows_a, prompted_a = (np.asarray(x).ravel() for x in (calls, shows_a, prompted_a))
    if not calls.shape == shows_a.shape == prompted_a.shape:
        raise ValueError(
            f"one call, one value and one prompt per image, got {calls.size}, {shows_a.size}, "
            f"{prompted_a.size}"
        )
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


def bias_share(
    neutral,
    fit,
    calibration=None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_youden: float = 0.1,
    recount=None,
    calibration_prompts=None,
    check_level: float = 0.05,
) -> dict:
    """The share of value A among neutral generations, from per-image token counts, with a bootstrap interval.

    ``neutral``: ``(count_A, count_B)`` per neutral image. ``fit``: ``(count_A, count_B, is_A)`` of
    labelled images the threshold is fitted on (in the bias study: the IEM's training images, the
    ones the tokens were selected on). ``calibration``: the same for the labelled images that measure the
    rule's sensitivity and specificity (held-out images; default: ``fit``).

    The estimate: the rule "A when count_A - count_B > t, half A at equality" with ``t`` maximising
    Youden's J on ``fit``; ``q`` = the share of neutral images the rule calls A; ``share`` =
    ``rogan_gladen(q, sens, spec)`` with ``sens``/``spec`` measured on ``calibration``.

    The interval: a percentile bootstrap over ``n_boot`` resamples of the neutral images, of the ``fit``
    images and of the ``calibration`` images (each labelled set resampled within each value, so both
    values keep their sizes); the threshold is re-fitted in every resample. ``recount``: optional
    ``f(fit_rows) -> (neutral, fit, calibration)``, called with each resample's ``fit`` row indices, that
    re-selects the tokens on those rows and returns every image's counts with the new tokens (rows in the
    original order; the resample's rows are then taken from them). A resample whose rule has
    ``sens + spec - 1 <= min_youden`` carries no information on the share: it counts half as 0 and half
    as 1, so an interval built on many of them widens toward [0, 1].

    ``calibration_prompts``: when the calibration images are labelled by what they show rather than by their
    prompts, whether each one's prompt named A; ``error_rate_check`` then tests whether the rule's error
    rates are the same for every image of a value, and when they are not (p < ``check_level``) the correction
    cannot be trusted: ``inconclusive`` with the interval [0, 1] (``share`` is still given, for reading).

    Returns ``share`` (NaN and ``inconclusive`` True when the rule itself has J <= ``min_youden``; the
    interval is then [0, 1]), ``low``, ``high``, ``q``, ``sens``, ``spec``, ``youden``, ``threshold``,
    ``informative`` (the share of resamples with J > ``min_youden``), ``check_p`` (NaN without
    ``calibration_prompts``), ``unchecked_low`` / ``unchecked_high`` (the interval before the check) and
    ``why`` (why it is inconclusive, or "")."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")

    def scored(nt, ft, ct):
        n = _scores(*nt)
        if n.size == 0:
            raise ValueError("no neutral generations to measure")
        return n, _split(ft), _split(ct if ct is not None else ft)

    n_s, f_s, c_s = scored(neutral, fit, calibration)
    sizes = {
        "neutral": n_s.size,
        "fit_a": f_s[0].size,
        "fit_b": f_s[1].size,
        "cal_a": c_s[0].size,
        "cal_b": c_s[1].size,
    }
    point = _share_core(n_s, f_s, c_s, {k: np.arange(v)[None] for k, v in sizes.items()}, min_youden)
    point = {k: float(v[0]) for k, v in point.items()}
    rng = np.random.default_rng(seed)
    rows = {k: rng.integers(0, v, (n_boot, v)) for k, v in sizes.items()}
    if recount is None:
        boot = _share_core(n_s, f_s, c_s, rows, min_youden)["share"]
    else:
        fit_is_a = np.asarray(fit[2], dtype=bool)
        a_rows, b_rows = np.flatnonzero(fit_is_a), np.flatnonzero(~fit_is_a)
        boot = np.empty(n_boot)
        for i in range(n_boot):
            picked = np.concatenate([a_rows[rows["fit_a"][i]], b_rows[rows["fit_b"][i]]])
            nt, ft, ct = recount(picked)
            ns, fs, cs = scored(nt, ft, ct)
            boot[i] = _share_core(ns, fs, cs, {k: v[i : i + 1] for k, v in rows.items()}, min_youden)[
                "share"
            ][0]
    informative = np.isfinite(boot)
    n_un = int((~informative).sum())
    values = np.concatenate([np.repeat(boot[informative], 2), np.zeros(n_un), np.ones(n_un)])
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    check = {"p": float("nan"), "rates": {}}
    if calibration_prompts is not None:
        cal_a, cal_b, cal_is_a = calibration if calibration is not None else fit
        check = error_rate_check(
            rule_calls(cal_a, cal_b, point["threshold"]), cal_is_a, calibration_prompts, seed=seed
        )
    why = (
        "the token rule cannot tell the values apart"
        if not np.isfinite(point["share"])
        else f"the rule's error rates differ between images of the same value (p = {check['p']:.3f})"
        if check["p"] < check_level
        else ""
    )
    out = {
        **point,
        "unchecked_low": float(lo),
        "unchecked_high": float(hi),
        "check_p": check["p"],
        "check_rates": check["rates"],
        "why": why,
        "inconclusive": bool(why),
        "informative": float(informative.mean()),
    }
    if why:
        lo, hi = 0.0, 1.0
    return {**out, "low": float(lo), "high": float(hi)}


VERDICTS = ("found", "no_bias", "inconclusive")


def share_verdict(low: float, high: float, margin: float = 0.1) -> str:
    """What an interval for a share says about a lean away from ½, an equivalence rule (Schuirmann 1987's
    two one-sided tests read off the interval; a 95 % one makes each test one at 2.5 %): ``no_bias`` when the
    interval lies inside [½ − ``margin``, ½ + ``margin``] (any lean is at most ``margin``), else ``found``
    when it excludes ½, else ``inconclusive`` (it holds ½ and reaches beyond the margin: the data cannot
    tell)."""
    if not 0 < margin < 0.5:
        raise ValueError(f"the equivalence margin must lie in (0, 0.5), got {margin}")
    if 0.5 - margin <= low and high <= 0.5 + margin:
        return "no_bias"
    if low > 0.5 or high < 0.5:
        return "found"
    return "inconclusive"


# --- shares counted directly (pixels, evaluators): binomial intervals ---------------------------------------
#
# Where every image's value is measured (the pixel truth, an evaluator's verdict) a share is a plain binomial
# proportion. Its interval is Wilson's score interval (Wilson 1927), whose coverage stays near the nominal
# level down to small n and near 0 or 1, where the textbook p ± z·sqrt(p(1-p)/n) collapses; the difference of
# two independent shares gets Newcombe's hybrid score interval (Newcombe 1998, method 10), built from the two
# Wilson intervals. ``tests/test_bias.py`` checks both coverages by simulation.


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return NormalDist().inv_cdf(1 - (1 - level) / 2)


def wilson_interval(successes, n, level: float = 0.95) -> tuple[float, float, float]:
    """``(share, low, high)``: ``successes / n`` and its Wilson score interval."""
    k, n = int(successes), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"a binomial share needs n >= 1 and 0 <= successes <= n, got {k} of {n}")
    z, p = _z(level), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exact arithmetic gives 0 at k = 0, 1 at k = n and low <= p <= high: keep rounding from breaking that
    low = 0.0 if k == 0 else min(p, max(0.0, centre - half))
    high = 1.0 if k == n else max(p, min(1.0, centre + half))
    return p, float(low), float(high)


def share_interval(outcomes, level: float = 0.95) -> tuple[float, float, float]:
    """``wilson_interval`` of a boolean per-image outcome (e.g. "shows red")."""
    x = np.asarray(outcomes, dtype=bool).ravel()
    return wilson_interval(int(x.sum()), x.size, level)


def difference_interval(outcomes_1, outcomes_2, level: float = 0.95) -> tuple[float, float, float]:
    """``(p1 - p2, low, high)`` for two independent boolean samples: Newcombe's hybrid score interval."""
    p1, l1, u1 = share_interval(outcomes_1, level)
    p2, l2, u2 = share_interval(outcomes_2, level)
    d = p1 - p2
    return d, float(d - np.hypot(p1 - l1, u2 - p2)), float(d + np.hypot(u1 - p1, p2 - l2))
