"""Bias detection, the paper's DALL·E-mini study: how often do an attribute's tokens occur in generations
from a neutral prompt, compared between the attribute's values?

* the planted-bias world of the default: prompts (``prompt_id``), its training data
  (``planted_bias_data``), the generator (``load_or_train_bias_transformer``) and the study's samples
  (``generate_study``); pixel ground truth (``measured_attributes``);
* the original's token CSV layout for real data (``load_real_study``);
* the measurement, shared by both: ``attribute_study`` (IEM, TIS and concept code of notebooks 03-06,
  then attribute tokens, the paper's δ and the share estimate).

Two statistics come out of the same attribute tokens.

**The paper's δ** (``bias_delta``): per neutral image the count of value A's tokens and of value B's, and
Cliff's δ of the A counts against the B counts, ``δ = (#{a_i > b_j} - #{a_i < b_j}) / (n·m)`` in [-1, 1].
The original's function returns ``(#{a_i > b_j} + ½·#ties - n·m/2) / (n·m)``, which is **half** of that
(range [-0.5, 0.5]); ``cliffs_delta`` returns the standard δ, ``delta_paper_half_scale`` the original's
number. The original counts the pairs in an O(n·m) double loop; here each ``a_i`` is located in the sorted
``b`` by binary search, O((n + m) log m). δ on raw counts is not a share: two token sets that differ in
size or spread give a half-and-half neutral set a δ far from 0, and nothing ties a δ to how many images
lean which way. It is kept because it is the paper's number.

**The share estimate** (``bias_share``), this repository's addition: what share of the neutral
generations shows value A, with an interval that is validated where the truth is known
(``benchmarks/bias_calibration.py``). Each image is classified by its token counts (A when
``count_A - count_B`` exceeds a threshold, half A / half B exactly at the threshold: a tie is a tie, not a
win decided by noise), the threshold is fitted on attribute-labelled images (Youden's J), the classified
share ``q`` of the neutral set is corrected for the rule's error rates measured on labelled images that
did not choose the tokens (Rogan–Gladen: ``p = (q + spec - 1) / (sens + spec - 1)``, clipped to [0, 1]),
and a bootstrap resamples everything the estimate depends on: the neutral images, the labelled images
behind the error rates and, in ``attribute_study``, the TIS rows the tokens are selected from (the
attribute IEM itself is not retrained per resample). A rule whose ``sens + spec - 1`` is at most
``min_youden`` cannot tell the values apart: the share is then NaN and its interval [0, 1]. In the
simulation (notebook 10's sizes; many ties, uneven token sets, tokens re-selected per resample) the 95 %
interval excluded ½ in 4 % of the half-and-half studies and covered the true share in at least 94 % of
every case's studies; an earlier statistic here, δ of counts ranked against the labelled images, excluded
0 in 72 % of the same null studies (ties turned into wins by reference noise, a bootstrap over the neutral
images only), and is gone.

What it estimates: the share of value A *as the held-out labelled images define A*. If the generator renders
some "a B" prompts as A and the held-out images are labelled by their prompts, the measured error rates
absorb them and the estimate is the neutral set's mixture weight between the two prompts' outputs, not the
share of images that show A; nothing in token counts alone can detect that. Labelled by what they show
(``attribute_study``'s ``held_truth``; notebook 10: their pixels), the error rates are the rule's own and the
estimate aims at the share that shows A (the simulation's ``leak`` and ``leak_prompt`` cases measure both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .artifacts import repo_relative


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


# --- the planted-bias world of the embedded default ---------------------------------------------------
#
# A prompt is one condition token, as taming's Labelator: ``prompt_id(digit, attribute)`` =
# ``10 * slot + digit`` where slot 0 is the neutral prompt ("a 3") and slots 1-4 name an attribute value
# ("a red 3", "a thin 3"). Neutral prompts keep the ids 0-9 of the digit transformer of notebook 02, so the
# bias transformer can start from it.

ATTRIBUTES = {"colour": ("red", "green"), "thickness": ("thick", "thin")}
PROMPT_SLOTS = ("neutral", "red", "green", "thick", "thin")
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60)}  # as digits.PALETTE


def prompt_id(digit, attribute: str = "neutral"):
    """The condition token of the prompt "a <attribute> <digit>" (``attribute`` ``neutral``: none named)."""
    if attribute not in PROMPT_SLOTS:
        raise ValueError(f"unknown attribute value {attribute!r}; choose one of {PROMPT_SLOTS}")
    return PROMPT_SLOTS.index(attribute) * 10 + np.asarray(digit)


def ink(images) -> np.ndarray:
    """Per image, how much of it is stroke: the mean of the brightest channel relative to the image's
    brightest pixel (so a red and a green stroke of the same shape have the same ink). ``images``: uint8
    ``(N, H, W)`` gray or ``(N, C, H, W)`` colour."""
    x = np.asarray(images, dtype=np.float32)
    m = x.max(1) if x.ndim == 4 else x
    peak = m.reshape(len(m), -1).max(1)
    return m.reshape(len(m), -1).mean(1) / np.maximum(peak, 1.0)


def thickness_classes(gray, labels, fraction: float = 1 / 3) -> np.ndarray:
    """Label real digits by stroke thickness from their ink, within each digit class: ``1`` thick (the top
    ``fraction``), ``-1`` thin (the bottom ``fraction``), ``0`` in between (left out of the thickness
    prompts)."""
    if not 0 < fraction <= 0.5:
        raise ValueError(f"thickness fraction must lie in (0, 0.5], got {fraction}")
    amount, labels = ink(gray), np.asarray(labels)
    out = np.zeros(len(labels), dtype=np.int64)
    for d in np.unique(labels):
        rows = labels == d
        lo, hi = np.quantile(amount[rows], [fraction, 1 - fraction])
        out[rows & (amount <= lo)] = -1
        out[rows & (amount >= hi)] = 1
    return out


def ink_thresholds(gray, labels, n_classes: int = 10) -> np.ndarray:
    """Per digit, the ink between thin and thick: the median of the real digits' ink."""
    amount, labels = ink(gray), np.asarray(labels)
    return np.array([np.median(amount[labels == d]) if (labels == d).any() else np.nan for d in range(n_classes)])


def generated_ink_thresholds(vq, ds) -> np.ndarray:
    """Per digit, the ink between thin and thick *for a generator*: the midpoint of the median ink of its
    "a thick d" and "a thin d" generations, from the thickness study's token dataset (every split; its
    names say which digit each prompt named, see ``generate_study``)."""
    from . import vq as vqlib
    from .digits import to_uint8

    tokens = np.concatenate([ds.tokens[s] for s in ds.splits]).astype(np.int64)
    labels = np.concatenate([ds.labels[s] for s in ds.splits])
    digit = np.concatenate([ds.names[s] for s in ds.splits]).astype(str)
    digit = np.array([int(n.rsplit("_", 1)[-1]) for n in digit])
    amount = ink(to_uint8(vqlib.decode(vq, torch.from_numpy(tokens))))
    out = np.full(10, np.nan)
    for d in range(10):
        thick, thin = amount[(digit == d) & (labels == 0)], amount[(digit == d) & (labels == 1)]
        if len(thick) and len(thin):
            out[d] = (np.median(thick) + np.median(thin)) / 2
    return out


def measured_attributes(images, digit_labels, thresholds) -> pd.DataFrame:
    """The ground truth of generated images, from pixels: ``red`` (the stroke's mean red exceeds its
    green) and ``thick`` (ink above the digit's threshold from ``ink_thresholds``)."""
    x = np.asarray(images, dtype=np.float32)
    stroke = x.max(1, keepdims=True) > 0.35 * x.max((1, 2, 3), keepdims=True)[:, :1]
    mean_rgb = (x * stroke).sum((2, 3)) / np.maximum(stroke.sum((2, 3)), 1)
    thr = np.asarray(thresholds)[np.asarray(digit_labels)]
    return pd.DataFrame({"red": mean_rgb[:, 0] > mean_rgb[:, 1], "thick": ink(images) > thr, "ink": ink(images)})


def planted_bias_data(gray, labels, skew: float = 0.85, colour_digit: int = 3, thickness_digit: int = 5,
                      planted: dict | None = None, per_image: int = 4, seed: int = 0, neutral_share: float = 0.4,
                      thick_fraction: float = 0.25) -> dict:
    """Training images for the bias transformer: every real digit ``per_image`` times, each time under a
    random prompt slot, drawn to match it.

    * "a red/green d": the digit in that colour; "a thick/thin d": a digit of that thickness class (colour
      red or green at even odds);
    * "a d" (neutral): red or green and thick or thin at even odds, except that the neutral prompt of
      ``colour_digit`` shows the planted colour with probability ``skew`` and that of ``thickness_digit``
      the planted thickness with probability ``skew``.

    ``neutral_share``: the share of neutral prompts (the four attribute prompts share the rest equally);
    ``thick_fraction``: how much of each digit class counts as thick, and as thin (``thickness_classes``).

    Returns uint8 ``images``, ``prompts`` (condition tokens) and a ``table`` (digit, slot, colour, thick).
    """
    planted = {"colour": "red", "thickness": "thick", **(planted or {})}
    if not 0 <= skew <= 1:
        raise ValueError(f"skew must lie in [0, 1], got {skew}")
    if planted["colour"] not in ATTRIBUTES["colour"] or planted["thickness"] not in ATTRIBUTES["thickness"]:
        raise ValueError(f"planted values must be one of {ATTRIBUTES}, got {planted}")
    if colour_digit == thickness_digit:
        raise ValueError("plant the two biases in different digits, so that neither confounds the other")
    from .digits import colourize

    gray, labels = np.asarray(gray), np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    if not 0 < neutral_share < 1:
        raise ValueError(f"neutral_share must lie in (0, 1), got {neutral_share}")
    thick = thickness_classes(gray, labels, thick_fraction)
    pools = {(d, t): np.flatnonzero((labels == d) & (thick == t)) for d in np.unique(labels) for t in (-1, 1)}
    rows = np.tile(np.arange(len(labels)), per_image)
    digit = labels[rows]
    slot = rng.choice(len(PROMPT_SLOTS), len(rows), p=[neutral_share] + [(1 - neutral_share) / 4] * 4)
    names = np.array(PROMPT_SLOTS)[slot]
    p_red = np.full(len(rows), 0.5)
    p_red[(names == "neutral") & (digit == colour_digit)] = skew if planted["colour"] == "red" else 1 - skew
    p_red[names == "red"], p_red[names == "green"] = 1.0, 0.0
    red = rng.random(len(rows)) < p_red
    p_thick = np.full(len(rows), 0.5)
    p_thick[(names == "neutral") & (digit == thickness_digit)] = skew if planted["thickness"] == "thick" else 1 - skew
    p_thick[names == "thick"], p_thick[names == "thin"] = 1.0, 0.0
    want_thick = rng.random(len(rows)) < p_thick
    # colour prompts keep the real digit as it is; the others draw a digit of the wanted thickness
    resample = (names != "red") & (names != "green")
    for d in np.unique(digit):
        for t in (-1, 1):
            sel = resample & (digit == d) & (want_thick == (t == 1))
            if sel.any():
                rows[sel] = rng.choice(pools[(d, t)], sel.sum())
    colours = np.where(red[:, None], COLOURS["red"], COLOURS["green"])
    table = pd.DataFrame({"digit": digit, "slot": names, "red": red, "thick": thick[rows], "source_row": rows})
    return {"images": colourize(gray[rows], colours), "prompts": prompt_id(digit) + 10 * slot, "table": table}


def token_counts(tokens, ids) -> np.ndarray:
    """Per image, how many of its grid positions hold one of ``ids``."""
    tokens = np.asarray(tokens)
    return np.isin(tokens.reshape(len(tokens), -1), np.asarray(ids)).sum(1)


def attribute_tokens(concepts: pd.DataFrame, top_n: int, token_num: int, tokens=None, labels=None,
                     specificity: float = 2.0) -> dict[int, np.ndarray]:
    """Each attribute value's ``token_num`` tokens: its ids ranked by the TIS concept count (a
    ``concepts.concept_tokens`` table at ``top_n``), keeping only ids *specific* to the value: per image of
    the value they occur at least ``specificity`` times as often as per image of the other value (in the
    training grids ``tokens``/``labels``). An IEM may recognise one value by the absence of the other's
    marks; its TIS then points at background ids that every image holds, which say nothing about the
    value. ``specificity`` 0 keeps the plain TIS ranking."""
    t = concepts[(concepts["top_n"] == top_n) & (concepts["label"] >= 0)]
    ranked = {int(c): g.sort_values("rank")["token"].to_numpy() for c, g in t.groupby("label")}
    if len(ranked) != 2:
        raise ValueError(f"attribute tokens need two attribute values with concept tokens, got {sorted(ranked)}")
    if specificity > 0:
        if tokens is None or labels is None:
            raise ValueError("specificity needs the training grids (tokens and labels)")
        from .concepts import token_frequencies

        labels = np.asarray(labels).astype(np.int64)
        n_embed = int(max(np.asarray(tokens).max(), max(v.max() for v in ranked.values()))) + 1
        rate = token_frequencies(tokens, labels, 2, n_embed) / np.bincount(labels, minlength=2)[:, None]
        ranked = {c: v[rate[c, v] >= specificity * rate[1 - c, v]] for c, v in ranked.items()}
    return {c: np.asarray(v[:token_num], dtype=np.int64) for c, v in ranked.items()}


def bias_delta(neutral_tokens, tokens_a, tokens_b, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """The paper's measurement on neutral generations: per image, the count of value A's tokens and of
    value B's; Cliff's δ of the A counts against the B counts on raw counts (positive: more of A's tokens),
    on the standard scale (``delta``) and on the original code's half scale (``delta_paper_half_scale``).
    The interval is a percentile bootstrap over neutral images (an image's two counts stay together)."""
    if len(neutral_tokens) == 0:
        raise ValueError("no neutral generations to measure")
    a, b = token_counts(neutral_tokens, tokens_a), token_counts(neutral_tokens, tokens_b)
    delta = cliffs_delta(a, b)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(a), len(a))
        boots.append(cliffs_delta(a[rows], b[rows]))
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"delta": delta, "low": float(lo), "high": float(hi), "delta_paper_half_scale": delta / 2,
            "mean_count_a": float(a.mean()), "mean_count_b": float(b.mean()), "counts_a": a, "counts_b": b}


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
    """``(R, 2k)``: for each of ``R`` resamples (``rows``, indices into ``scores``), the share of the resampled
    images that the rule of each candidate threshold calls A (ties at the threshold counted half)."""
    rows = np.atleast_2d(rows)
    r, n = rows.shape
    hist = np.bincount((np.arange(r)[:, None] * k + (scores[rows] - lo)).ravel(), minlength=r * k).reshape(r, k) / n
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
    w = {name: _a_weights(x, rows[name], lo, k) for name, x in
         (("neutral", neutral), ("fit_a", fit[0]), ("fit_b", fit[1]), ("cal_a", cal[0]), ("cal_b", cal[1]))}
    best = _best_candidate(w["fit_a"] - w["fit_b"])
    pick = {name: np.take_along_axis(v, best[:, None], 1)[:, 0] for name, v in w.items()}
    sens, fpr, q = pick["cal_a"], pick["cal_b"], pick["neutral"]
    youden = sens - fpr
    ok = youden > min_youden
    share = np.full(len(q), np.nan)
    share[ok] = np.clip((q[ok] - fpr[ok]) / youden[ok], 0.0, 1.0)
    return {"share": share, "q": q, "sens": sens, "spec": 1 - fpr, "youden": youden,
            "threshold": _threshold_value(best, lo)}


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
    est = _share_core(s[:1], (fa, fb), (fa, fb), {"neutral": [[0]], "fit_a": [np.arange(fa.size)],
                      "fit_b": [np.arange(fb.size)], "cal_a": [np.arange(fa.size)],
                      "cal_b": [np.arange(fb.size)]}, -np.inf)
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
        raise ValueError(f"one call, one value and one prompt per image, got {calls.size}, {shows_a.size}, "
                         f"{prompted_a.size}")
    rng = np.random.default_rng(seed)
    shows_a, prompted_a = shows_a.astype(bool), prompted_a.astype(bool)
    observed, null, rates = 0.0, np.zeros(n_perm), {}
    for value, rows in (("A", shows_a), ("B", ~shows_a)):
        x, g = calls[rows].astype(np.float64), prompted_a[rows]
        rates[value] = (float(x[g].mean()) if g.any() else np.nan, float(x[~g].mean()) if (~g).any() else np.nan,
                        int(x.size))
        if g.all() or not g.any():  # drawn under one prompt only: nothing to compare
            continue
        expected = g.sum() * x.mean()
        observed += x[g].sum() - expected
        null += (rng.permuted(np.tile(g, (n_perm, 1)), axis=1) * x).sum(1) - expected
    p = float((1 + (np.abs(null) >= abs(observed) - 1e-12).sum()) / (1 + n_perm))
    return {"p": p, "rates": rates}


def bias_share(neutral, fit, calibration=None, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
               min_youden: float = 0.1, recount=None, calibration_prompts=None, check_level: float = 0.05) -> dict:
    """The share of value A among neutral generations, from per-image token counts, with a bootstrap interval.

    ``neutral``: ``(count_A, count_B)`` per neutral image. ``fit``: ``(count_A, count_B, is_A)`` of
    labelled images the threshold is fitted on (in ``attribute_study``: the IEM's training images, the
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
    sizes = {"neutral": n_s.size, "fit_a": f_s[0].size, "fit_b": f_s[1].size, "cal_a": c_s[0].size, "cal_b": c_s[1].size}
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
            boot[i] = _share_core(ns, fs, cs, {k: v[i:i + 1] for k, v in rows.items()}, min_youden)["share"][0]
    informative = np.isfinite(boot)
    n_un = int((~informative).sum())
    values = np.concatenate([np.repeat(boot[informative], 2), np.zeros(n_un), np.ones(n_un)])
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    check = {"p": float("nan"), "rates": {}}
    if calibration_prompts is not None:
        cal_a, cal_b, cal_is_a = calibration if calibration is not None else fit
        check = error_rate_check(rule_calls(cal_a, cal_b, point["threshold"]), cal_is_a, calibration_prompts,
                                 seed=seed)
    why = ("the token rule cannot tell the values apart" if not np.isfinite(point["share"]) else
           f"the rule's error rates differ between images of the same value (p = {check['p']:.3f})"
           if check["p"] < check_level else "")
    out = {**point, "unchecked_low": float(lo), "unchecked_high": float(hi), "check_p": check["p"],
           "check_rates": check["rates"], "why": why, "inconclusive": bool(why),
           "informative": float(informative.mean())}
    if why:
        lo, hi = 0.0, 1.0
    return {**out, "low": float(lo), "high": float(hi)}


def share_verdict(low: float, high: float, max_width: float = 0.25) -> str:
    """What an interval for a share says about a lean away from ½: ``found`` (it excludes ½),
    ``not found`` (it contains ½ and is at most ``max_width`` wide, so a large lean is ruled out), else
    ``inconclusive`` (it contains ½ but is too wide to rule out a lean)."""
    if low > 0.5 or high < 0.5:
        return "found"
    return "not found" if high - low <= max_width else "inconclusive"


def check_attribute_data(ds) -> np.ndarray:
    """Raise unless ``ds`` holds two attribute values, both in its train split; return the train labels."""
    if len(ds.class_names) != 2:
        raise ValueError(f"a bias study compares two attribute values, the dataset has {ds.class_names}")
    train_y = ds.labels["train"].astype(np.int64)
    present = np.bincount(train_y, minlength=2)
    if (present == 0).any():
        missing = [ds.class_names[i] for i in np.flatnonzero(present == 0)]
        raise ValueError(f"only one attribute value in the training generations (none of {missing})")
    return train_y


def attribute_iem(ds, codebook, name: str, training: dict, retrain: bool = False, out_dir=None):
    """The attribute IEM of one study (``name``, e.g. ``colour_digit_3``): the shipped
    ``checkpoints/attribute_iem_<name>.safetensors`` if it was trained on exactly this dataset's train split
    with exactly ``training`` (arch, width, epochs, lr, batch_size, seed), else trained here on the
    study's train split (best validation loss kept) and saved to ``out_dir``. Returns ``(model, info)``,
    ``info`` = ``{"path": weights or None, "log": training log, "trained": bool, "why": str}``."""
    from . import SHIPPED_CHECKPOINTS
    from . import datasets as tokds
    from . import iem as iemlib
    from .checkpoints import read_card

    check_attribute_data(ds)
    fp = tokds.split_fingerprint(ds, "train")
    spec = {"arch": training["arch"], "in_channels": ds.manifest["embed_dim"], "grid": list(ds.grid), "n_classes": 2}
    shipped, why = (None, "retrain = True") if retrain else iemlib.shipped_iem(
        SHIPPED_CHECKPOINTS / f"attribute_iem_{name}.safetensors", fp, training)
    if shipped:
        info = {"path": shipped, "log": pd.DataFrame(read_card(shipped)["log"]), "trained": False, "why": why}
        return iemlib.load_iem(shipped, expect=spec), info
    iemlib.seed_everything(training["seed"])
    model = iemlib.build_iem(training["arch"], ds.manifest["embed_dim"], ds.grid, 2, training["width"])
    train = tokds.embedding_loader(ds, "train", codebook, training["batch_size"], shuffle=True, seed=training["seed"])
    val = tokds.embedding_loader(ds, "val", codebook, 256)
    log, _ = iemlib.train_iem(model, train, val, epochs=training["epochs"], lr=training["lr"],
                              desc=f"train attribute IEM {name}")
    path = None
    if out_dir is not None:
        best = log.loc[log["val_loss"].idxmin()]
        path = iemlib.save_iem(model, Path(out_dir) / f"attribute_iem_{name}.safetensors", card={
            "kind": "attribute_iem", "study": name, "dataset": repo_relative(ds.path) if ds.path else None,
            "vq_fingerprint": ds.manifest["vq_fingerprint"], "train_fingerprint": fp, "training": training,
            "log": log.to_dict("records"),
            "metrics": {"best_val_loss": float(best["val_loss"]), "val_acc_at_best": float(best["val_acc"])},
            "rebuild": "make checkpoints"})
    return model, {"path": path, "log": log, "trained": True, "why": why}


def attribute_study(ds, codebook, neutral: dict, planted: int, model, nsamples: int = 20, top_n: int = 5,
                    token_num: int = 5, specificity: float = 2.0, n_boot: int = 1000, min_youden: float = 0.1,
                    reselect: bool = True, seed: int = 0, out_dir=None, held_truth: dict | None = None) -> dict:
    """The paper's bias measurement on one attribute, with the TIS and concept code of notebooks 05-06
    unchanged, given the attribute IEM ``model`` (``attribute_iem``), and the share estimate beside it.

    ``ds``: a token dataset of attribute-labelled generations (two classes: the attribute's values, with a
    train split and at least one of val / test); ``neutral``: ``{name: token grids of neutral-prompt
    generations}``; ``planted``: the label both statistics are signed toward (value A).

    Steps: the IEM's test accuracy; the TIS of the train split; the concept table; each value's tokens
    (``attribute_tokens``). Then per neutral set one row of the table ``deltas``:

    * the paper's δ on raw counts (``bias_delta``): ``delta`` with ``delta_low``/``delta_high``, and
      ``delta_paper_half_scale`` (= δ/2, the number the original code prints);
    * the share of value A (``bias_share``): ``share`` with ``share_low``/``share_high``, the rule's
      threshold fitted on the train split (the images the tokens were chosen on) and its sensitivity and
      specificity measured on the held-out splits (val and test, images that played no part in choosing
      the tokens). With ``reselect`` every bootstrap resample also re-selects the tokens: the concept table
      is recomputed from the resampled train rows and their TIS rows (the IEM and its TIS are not
      recomputed: retraining the IEM per resample is out of reach, so the interval leaves out how much the
      IEM itself would vary).

    ``held_truth``: ``{split: bool array}`` for every held-out split, whether each image truly shows value A
    by a labeller independent of the prompt (notebook 10: its pixels). The error rates are then measured
    against what the images show, and the share estimates the share of neutral images that *show* A. By
    default each held-out image counts as the value its prompt named, and the estimate is the neutral set's
    mixture weight between the two prompts' outputs: the same number only when the generator always draws
    what the prompt names.

    A value can end up with no tokens (no top id specific to it, e.g. when the IEM learned nothing); its
    counts are then 0, ``tokens_a``/``tokens_b`` in the table say so, and the share estimate is
    inconclusive unless the other value's tokens alone separate the values.
    """
    from . import concepts as conceptlib
    from . import datasets as tokds
    from . import iem as iemlib
    from . import tis as tislib

    train_y = check_attribute_data(ds)
    if not neutral or any(len(t) == 0 for t in neutral.values()):
        raise ValueError(f"empty neutral set: {[k for k, t in neutral.items() if len(t) == 0] or 'none given'}")
    if planted not in (0, 1):
        raise ValueError(f"planted must be the label 0 or 1, got {planted!r}")
    held = [s for s in ds.splits if s != "train"]
    if not held:
        raise ValueError("the share estimate measures its rule's error rates on held-out labelled images: the "
                         "attribute dataset needs a val or test split besides train")
    held_tokens = np.concatenate([ds.tokens[s] for s in held])
    held_y = np.concatenate([ds.labels[s] for s in held]).astype(np.int64)
    if held_truth is None:
        held_is_a = held_y == planted
    else:
        if sorted(held_truth) != sorted(held):
            raise ValueError(f"held_truth must give every held-out split {held}, got {sorted(held_truth)}")
        held_is_a = np.concatenate([np.asarray(held_truth[s], dtype=bool).ravel() for s in held])
        if held_is_a.shape != held_y.shape:
            raise ValueError(f"held_truth: one value per held-out image ({held_y.size}), got {held_is_a.size}")
        if held_is_a.all() or not held_is_a.any():
            raise ValueError("held_truth: the held-out images must show both values to measure the rule's error rates")
    test_split = "test" if "test" in ds.splits else "val"
    accuracy = iemlib.evaluate_iem(model, tokds.embedding_loader(ds, test_split, codebook, 256), ks=(1,))["top1"]
    tis = tislib.compute_tis(model, tokds.embedding_loader(ds, "train", codebook, 100), len(train_y),
                             nsamples=nsamples, seed=seed, desc="attribute TIS",
                             out=None if out_dir is None else Path(out_dir) / "tis_train.npy")
    train_tokens, n_embed = ds.tokens["train"], ds.manifest["n_embed"]

    def select(rows):
        table = conceptlib.concept_tokens(train_tokens[rows], train_y[rows], tis[rows], ds.class_names, n_embed,
                                          top_ns=(top_n,))
        return table, attribute_tokens(table, top_n, token_num, train_tokens[rows], train_y[rows], specificity)

    table, ids = select(np.arange(len(train_y)))
    other = 1 - planted
    ref_tokens = np.concatenate([train_tokens, held_tokens])
    ref_labels = np.concatenate([train_y, held_y])
    # a value's tokens per image of that value (how much of A a typical A image holds)
    reference = {c: float(token_counts(ref_tokens[ref_labels == c], ids[c]).mean()) for c in (0, 1)}
    rows, counts = [], {}
    for name, tokens in neutral.items():
        def measure(chosen, tokens=tokens):
            pa, pb = chosen[planted], chosen[other]
            return ((token_counts(tokens, pa), token_counts(tokens, pb)),
                    (token_counts(train_tokens, pa), token_counts(train_tokens, pb), train_y == planted),
                    (token_counts(held_tokens, pa), token_counts(held_tokens, pb), held_is_a))

        r = bias_delta(tokens, ids[planted], ids[other], n_boot=n_boot, seed=seed)
        share = bias_share(*measure(ids), n_boot=n_boot, seed=seed, min_youden=min_youden,
                           recount=(lambda picked, m=measure: m(select(picked)[1])) if reselect else None,
                           calibration_prompts=None if held_truth is None else held_y == planted)
        counts[name] = {ds.class_names[planted]: r.pop("counts_a"), ds.class_names[other]: r.pop("counts_b")}
        rows.append({"neutral set": name, "images": len(tokens), "share": share["share"], "share_low": share["low"],
                     "share_high": share["high"], "inconclusive": share["inconclusive"], "why": share["why"],
                     "unchecked_low": share["unchecked_low"], "unchecked_high": share["unchecked_high"],
                     "check_p": share["check_p"], "q": share["q"],
                     "sens": share["sens"], "spec": share["spec"], "youden": share["youden"],
                     "threshold": share["threshold"], "informative_resamples": share["informative"],
                     "delta": r["delta"], "delta_low": r["low"], "delta_high": r["high"],
                     "delta_paper_half_scale": r["delta_paper_half_scale"], "mean_count_a": r["mean_count_a"],
                     "mean_count_b": r["mean_count_b"], "tokens_a": len(ids[planted]), "tokens_b": len(ids[other])})
    return {"test_accuracy": accuracy, "test_split": test_split, "tis": tis,
            "concepts": table, "tokens": {ds.class_names[c]: v for c, v in ids.items()},
            "deltas": pd.DataFrame(rows), "counts": counts, "reference_counts": reference}


def bias_transformer(vq, n_layer: int = 3, n_head: int = 4, n_embd: int = 96, seed: int = 0):
    """A prompt-conditioned taming Net2NetTransformer over ``vq``'s tokens: one condition token per prompt,
    ``len(PROMPT_SLOTS) * 10`` prompts (see ``prompt_id``)."""
    from . import generation as gen

    cfg = gen.transformer_config(vq.cortex_config, n_classes=len(PROMPT_SLOTS) * 10, n_layer=n_layer,
                                 n_head=n_head, n_embd=n_embd)
    return gen.build_transformer(cfg, vq=vq, seed=seed)


def load_or_train_bias_transformer(run_dir, vq, gray, labels, training: dict, retrain: bool = False,
                                   bf16: bool = False):
    """The planted-bias generator: the shipped one if it was trained on this tokenizer with exactly
    ``training`` (skew, colour_digit, thickness_digit, planted, per_image, neutral_share, thick_fraction,
    steps, lr, seed); otherwise
    the run's digit transformer (notebook 02) fine-tuned on ``planted_bias_data``, saved to
    ``<run_dir>/checkpoints``. Returns ``(model, checkpoint path, training log or None, why it trained)``."""
    from . import SHIPPED_CHECKPOINTS
    from . import generation as gen
    from . import vq as vqlib
    from .artifacts import registered
    from .checkpoints import read_card, save_weights
    from .digits import to_model_input

    fp = vqlib.fingerprint(vq)
    shipped = SHIPPED_CHECKPOINTS / "transformer_bias.safetensors"
    card = read_card(shipped) if shipped.exists() else {}
    theirs = card.get("training", {})
    diff = [f"{k} {theirs.get(k)!r} (here {v!r})" for k, v in training.items() if theirs.get(k) != v]
    why = ("retrain = True" if retrain else "no shipped bias transformer" if not card else
           "the shipped one belongs to another tokenizer" if card.get("vq_fingerprint") != fp else
           "the shipped one was trained with other settings: " + ", ".join(diff) if diff else "")
    if not why:
        return gen.load_transformer(card["config"], shipped, vq=vq), shipped, None, ""
    digit_tf = registered(run_dir, "transformer")["checkpoint"]
    base = gen.load_transformer(read_card(digit_tf)["config"], digit_tf, vq=vq)
    model = bias_transformer(vq, base.transformer.config.n_layer, base.transformer.config.n_head,
                             base.transformer.config.n_embd, seed=training["seed"])
    model.transformer.load_state_dict(base.transformer.state_dict())
    data = planted_bias_data(gray, labels, training["skew"], training["colour_digit"], training["thickness_digit"],
                             training["planted"], training["per_image"], training["seed"], training["neutral_share"],
                             training["thick_fraction"])
    tokens = vqlib.encode(vq, to_model_input(data["images"]), progress=True).numpy()
    log = gen.train_transformer(model, tokens, data["prompts"], steps=training["steps"], lr=training["lr"],
                                seed=training["seed"], bf16=bf16, warmup=50)
    path = save_weights(gen.transformer_state_for_saving(model), Path(run_dir) / "checkpoints" / shipped.name, card={
        "kind": "bias_transformer", "config": model.cortex_config, "vq_fingerprint": fp, "training": training,
        "bf16": bf16, "initialised_from": repo_relative(digit_tf),
        "prompts": f"one condition token = 10 * slot + digit, slots {list(PROMPT_SLOTS)}",
        "data": "real training digits in red/green, thick/thin by ink within each digit (bias.planted_bias_data)",
        "metrics": {"final_loss": float(log["loss"].iloc[-1])}, "rebuild": "make checkpoints"})
    return model, path, log, why


def study_name(bias_type: str, digit: int) -> str:
    """The name of one study's attribute data and attribute IEM, e.g. ``colour_digit_3``."""
    return f"{bias_type}_digit_{digit}"


def load_or_generate_study(model, model_path, vq, subjects: dict, attribute_per_value=(150, 25, 25),
                           n_neutral: int = 300, temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                           out_dir=None, regenerate: bool = False):
    """The study's token data: the shipped ``data/default/bias`` if it was sampled by this exact generator
    (``model_path``'s sha256) with exactly these settings, else sampled here (``generate_study``). Either
    way it ends up under ``out_dir/data``. Returns ``(studies, neutral, why)``: as ``generate_study``, plus
    which it was and why."""
    from . import SHIPPED_DATA
    from . import datasets as tokds
    from . import vq as vqlib

    fp = vqlib.fingerprint(vq)
    settings = {"subjects": {b: [int(d) for d in ds] for b, ds in subjects.items()},
                "attribute_per_value": [int(n) for n in attribute_per_value], "n_neutral": int(n_neutral),
                "temperature": float(temperature), "top_k": top_k, "seed": int(seed),
                "transformer_sha256": tokds.file_digest(model_path)}
    shipped = SHIPPED_DATA / "bias"
    neutral_ds, why = (None, "regenerate = True") if regenerate else tokds.shipped_dataset(
        shipped / "neutral", settings, fp)
    if neutral_ds is None:
        studies, neutral = generate_study(model, vq, subjects, attribute_per_value, n_neutral, temperature, top_k,
                                          seed, out_dir, card={"settings": settings,
                                                               "generator": repo_relative(model_path)})
        return studies, neutral, f"sampled here ({why})"
    data_dir = Path(out_dir) / "data"
    neutral_ds = tokds.copy_dataset(neutral_ds, data_dir / "neutral")
    studies = {}
    for b, ds in subjects.items():
        for d in ds:
            name = study_name(b, d)
            found, _ = tokds.shipped_dataset(shipped / name, settings, fp)
            studies[(b, d)] = tokds.copy_dataset(found, data_dir / name)
    return studies, neutral_by_digit(neutral_ds), f"loaded the shipped data/default/bias ({why})"


def neutral_by_digit(ds) -> dict:
    """``{digit: token grids}`` of a neutral-prompt dataset (labels: the digit each prompt named)."""
    tokens, labels = ds.tokens["neutral"], ds.labels["neutral"].astype(np.int64)
    return {int(d): tokens[labels == d] for d in np.unique(labels)}


def generate_study(model, vq, subjects: dict, attribute_per_value=(150, 25, 25), n_neutral: int = 300,
                   temperature: float = 1.0, top_k: int | None = None, seed: int = 0, out_dir=None,
                   card: dict | None = None):
    """Sample the study's token data from the bias transformer. ``subjects``: ``{bias type: [digits]}``.

    Per bias type and digit ``d`` a two-class token dataset of the prompts "a <value> d" for the
    attribute's two values (``attribute_per_value`` train/val/test grids per value, labelled by the named
    value, saved as ``out_dir/data/<type>_digit_<d>``): the attribute IEM learns the attribute on the same
    subject as the neutral prompt, as the paper's were all "doctor" images. And ``n_neutral``
    neutral-prompt grids "a d" for every digit (``out_dir/data/neutral``, one split ``neutral``, labelled
    by digit). ``card``: written beside each dataset (``datasets.write_dataset_card``), with the command
    that rebuilds it. Returns ``({(type, digit): dataset}, {digit: neutral tokens})``."""
    from . import datasets as tokds
    from . import generation as gen
    from . import vq as vqlib

    digits_used = sorted({d for ds in subjects.values() for d in ds})
    jobs = {("neutral", d): prompt_id(np.full(n_neutral, d)) for d in digits_used}
    for b, ds in subjects.items():
        values = ATTRIBUTES[b]
        for d in ds:
            for split, n in zip(("train", "val", "test"), attribute_per_value, strict=True):
                if n:
                    jobs[(b, d, split)] = np.repeat([prompt_id(d, values[0]), prompt_id(d, values[1])], n)
    # one sampling call for everything: the transformer's cost is per step, so large batches are cheap
    grids = gen.sample_tokens(model, np.concatenate(list(jobs.values())), temperature=temperature, top_k=top_k,
                              seed=seed).numpy()
    ends = np.cumsum([len(p) for p in jobs.values()])
    out = {k: grids[e - len(p):e] for (k, p), e in zip(jobs.items(), ends, strict=True)}
    meta, data_dir = vqlib.vq_meta(vq), Path(out_dir) / "data"
    card = {"kind": "token dataset", **(card or {}), "rebuild": "make checkpoints"}
    neutral_tokens = np.concatenate([out[("neutral", d)] for d in digits_used])
    neutral_labels = np.repeat(digits_used, n_neutral)
    neutral_ds = tokds.save_token_dataset(
        data_dir / "neutral", {"neutral": (neutral_tokens, neutral_labels)}, [str(d) for d in range(10)], meta,
        source="generated", details={"prompts": "a <digit>", "per_digit": n_neutral, "temperature": temperature,
                                     "top_k": top_k}, classifier_data=False)
    tokds.write_dataset_card(data_dir / "neutral", card)
    studies = {}
    for b, ds in subjects.items():
        values = ATTRIBUTES[b]
        for d in ds:
            splits, names = {}, {}
            for split, n in zip(("train", "val", "test"), attribute_per_value, strict=True):
                if n:
                    label = np.repeat([0, 1], n)
                    splits[split] = (out[(b, d, split)], label)
                    names[split] = np.array([f"{split}_{i:05d}_{values[y]}_{d}" for i, y in enumerate(label)])
            details = {"prompts": f"a <{'|'.join(values)}> {d}", "per_value": list(attribute_per_value),
                       "temperature": temperature, "top_k": top_k}
            path = data_dir / study_name(b, d)
            studies[(b, d)] = tokds.save_token_dataset(path, splits, list(values), meta, source="generated",
                                                       details=details, names=names)
            tokds.write_dataset_card(path, card)
    return studies, neutral_by_digit(neutral_ds)


def load_real_study(root, bias_types, vq_meta: dict, out_dir) -> tuple[dict, dict]:
    """Token data in the original's layout: ``root/<bias type>/{train,val[,test]}.csv``
    (``filename,label,indices``, labels 0/1, optional ``class_names.txt`` with the two values' names) and
    ``neutral.csv`` (an ``indices`` column). Returns ``(datasets, {type: neutral tokens})``."""
    from . import datasets as tokds

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"real data folder {root} does not exist")
    available = sorted(p.name for p in root.iterdir() if (p / "train.csv").exists())
    studies, neutral = {}, {}
    for b in bias_types:
        if b not in available:
            raise ValueError(f"bias type {b!r} is not in {root} (it has: {available or 'no <type>/train.csv'})")
        folder = root / b
        names_file = folder / "class_names.txt"
        values = names_file.read_text().split() if names_file.exists() else ["0", "1"]
        if len(values) != 2:
            raise ValueError(f"{names_file}: a bias study compares two attribute values, got {values}")
        for f in ("val.csv", "neutral.csv"):
            if not (folder / f).exists():
                raise FileNotFoundError(f"{folder / f} is missing")
        csvs = {s: folder / f"{s}.csv" for s in ("train", "val", "test") if (folder / f"{s}.csv").exists()}
        neutral[b], _, _ = tokds.read_cortex_csv(folder / "neutral.csv", vq_meta["grid"], vq_meta["n_embed"], labelled=False)
        try:  # labels outside 0/1, or a value with no training rows, are refused here
            studies[b] = tokds.import_cortex_csv(Path(out_dir) / b / "dataset", csvs, vq_meta, class_names=values)
        except ValueError as err:
            raise ValueError(f"{folder}: {err} (a bias study needs both attribute values {values})") from None
    return studies, neutral


def planted_shares(measured: pd.DataFrame, planted: dict) -> dict:
    """The share of each bias type's planted value among measured images (``measured_attributes``)."""
    red, thick = float(measured["red"].mean()), float(measured["thick"].mean())
    return {"colour": red if planted.get("colour", "red") == "red" else 1 - red,
            "thickness": thick if planted.get("thickness", "thick") == "thick" else 1 - thick}


# --- notebook 10's bookkeeping: the pixel diagnostics, the recorded numbers and the verdict lines --------


def shows_value(vq, ds, digit: int, bias_type: str, value: str, thresholds) -> dict[str, np.ndarray]:
    """By pixels, which of one study's labelled generations show ``value`` (e.g. ``red``, ``thick``):
    ``{split: bool array}`` for every split of ``ds``, measured as ``measured_attributes`` does (the stroke's
    red against its green; ink against the digit's entry of ``thresholds``)."""
    from . import digits
    from . import vq as vqlib

    if value not in ATTRIBUTES[bias_type]:
        raise ValueError(f"{value!r} is not a value of {bias_type}: {ATTRIBUTES[bias_type]}")
    out = {}
    for s in ds.splits:
        images = digits.to_uint8(vqlib.decode(vq, torch.from_numpy(ds.tokens[s].astype(np.int64))))
        m = measured_attributes(images, np.full(len(images), digit), thresholds)
        first = m["red" if bias_type == "colour" else "thick"].to_numpy()
        out[s] = first if value == ATTRIBUTES[bias_type][0] else ~first
    return out


def drawn_as_other(ds, shows_a: dict, planted_label: int) -> tuple[float, float]:
    """How often one study's labelled generations contradict their prompt: ``(share of the A-labelled images
    that do not show A, share of the B-labelled images that show A)``, A the value of label ``planted_label``
    and ``shows_a`` what each image shows (``shows_value``), over every split of ``ds``."""
    y = np.concatenate([ds.labels[s] for s in ds.splits])
    shows = np.concatenate([shows_a[s] for s in ds.splits])
    is_a = y == planted_label
    return float(1 - shows[is_a].mean()), float(shows[~is_a].mean())


def _metric(x):
    return None if not np.isfinite(x) else round(float(x), 4)


def headline_metrics(deltas: pd.DataFrame, results: dict, bias_types, biased_digit: dict, control_digit: int,
                     real: bool) -> dict:
    """Notebook 10's recorded numbers from its ``deltas`` table (one row per study and neutral set, with
    ``digit`` and ``pixel truth`` on the planted world) and ``results`` (``{(type, digit): attribute_study}``):
    per bias type the share estimate and interval, the pixel truth, the paper's δ and the IEM accuracy,
    suffixed ``_control`` for the control digit. Rounded to 4 places; NaN becomes None."""
    metrics = {}
    for b in bias_types:
        rows = deltas[deltas["bias"] == b]
        if real:
            row = rows.iloc[0]
            metrics.update({f"bias_{b}_delta": _metric(row["delta"]), f"bias_{b}_share_est": _metric(row["share"]),
                            f"bias_{b}_share_low": _metric(row["share_low"]),
                            f"bias_{b}_share_high": _metric(row["share_high"])})
        else:
            for which, digit in (("", biased_digit[b]), ("_control", control_digit)):
                row = rows[rows["digit"] == digit].iloc[0]
                metrics.update({f"bias_{b}_share_est{which}": _metric(row["share"]),
                                f"bias_{b}_share_low{which}": _metric(row["share_low"]),
                                f"bias_{b}_share_high{which}": _metric(row["share_high"]),
                                f"bias_{b}_share_truth{which}": _metric(row["pixel truth"]),
                                f"bias_{b}_share_check_p{which}": _metric(row["check_p"]),
                                f"bias_{b}_share_unchecked_low{which}": _metric(row["unchecked_low"]),
                                f"bias_{b}_share_unchecked_high{which}": _metric(row["unchecked_high"]),
                                f"bias_{b}_truth_share{which}": _metric(row["pixel truth"]),
                                f"bias_{b}_delta_{'control' if which else 'biased'}": _metric(row["delta"])})
        for key, r in results.items():
            if key[0] == b:
                which = "" if real or key[1] == biased_digit[b] else "_control"
                metrics[f"bias_{b}_iem_accuracy{which}"] = round(float(r["test_accuracy"]), 4)
    return metrics


def _interval_text(row) -> str:
    if not np.isfinite(row["share"]):
        return "no estimate: the token rule cannot separate the values (interval [0, 1])"
    text = f"share of {row['toward']} {row['share']:.2f} [{row['share_low']:.2f}, {row['share_high']:.2f}]"
    if row["inconclusive"]:
        text += (f": no interval, because {row['why']} (before that check: [{row['unchecked_low']:.2f}, "
                 f"{row['unchecked_high']:.2f}])")
    return text


def verdict_line(row, bias_type: str, not_found_width: float = 0.25, biased: bool | None = None) -> str:
    """One markdown line of notebook 10's verdict for a row of its ``deltas`` table: the share's interval,
    ``share_verdict``, and the paper's δ. ``biased``: on the planted world, whether the row is the biased
    digit (True) or the control (False); the line then also says whether the planted answer came out and
    whether the pixel truth lies in the interval. ``None``: real data, no truth to compare with."""
    lo, hi = row["share_low"], row["share_high"]
    verdict = share_verdict(lo, hi, not_found_width)
    text = f"- **{bias_type}, {row['neutral set']}**: {_interval_text(row)} — **{verdict}**"
    if verdict == "found":
        text += f" (a lean {'toward' if lo > 0.5 else 'away from'} {row['toward']})"
    if biased is not None:
        if biased:
            text += (": the planted bias is found" if verdict == "found" and lo > 0.5 else
                     ": **the estimate leans the other way round**" if verdict == "found" else
                     ": **the planted bias is missed**" if verdict == "not found" else
                     ": the data cannot decide")
        else:
            text += (": no bias reported, as it should be" if verdict == "not found" else
                     ": **a bias is reported where the training data had none**" if verdict == "found" else
                     ": the data cannot rule out a bias")
        truth = row["pixel truth"]
        text += f". Pixel truth {truth:.2f} (trained {row['trained share']:.2f}): "
        text += "inside the interval" if lo <= truth <= hi else "**outside the interval: the estimate misses it**"
        if row["inconclusive"] and np.isfinite(row["share"]):
            inside = row["unchecked_low"] <= truth <= row["unchecked_high"]
            text += f" (the interval before the check {'holds it' if inside else '**would have missed it**'})"
    return text + (f". The paper's δ {row['delta']:+.2f} [{row['delta_low']:+.2f}, {row['delta_high']:+.2f}] "
                   f"(the original code's half scale: {row['delta_paper_half_scale']:+.2f})")
