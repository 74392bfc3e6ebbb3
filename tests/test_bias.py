import numpy as np
import pytest
import torch

from cortex_run import planted_bias, prepare, report, tokenizers
from cortex_utils import bias, bias_stats
from cortex_utils.tis import Noise


def standard_delta(a, b):
    """The standard Cliff's δ, pair by pair: P(X > Y) - P(X < Y)."""
    greater = sum(1 for x in a for y in b if x > y)
    less = sum(1 for x in a for y in b if x < y)
    return (greater - less) / (len(a) * len(b))


def original_delta(a, b):
    """The original code's function, pair by pair: (#gt + ½·#ties - nm/2) / nm, half the standard δ."""
    greater = sum(1 for x in a for y in b if x > y)
    ties = sum(1 for x in a for y in b if x == y)
    nm = len(a) * len(b)
    return (greater + 0.5 * ties - nm / 2) / nm


def delta_by_binary_search(a, b):
    """The former ``cliffs_delta``: each ``a_i`` located in the sorted ``b`` by binary search."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.sort(np.asarray(b, dtype=np.float64).ravel())
    below = np.searchsorted(b, a, side="left")  # b_j < a_i
    above = b.size - np.searchsorted(b, a, side="right")  # b_j > a_i
    return float((below.sum() - above.sum()) / (a.size * b.size))


def resampled_by_hand(statistic, n_boot, seed, level=0.95):
    """The former hand-written percentile bootstrap: quantiles of ``n_boot`` draws of ``statistic(rng)``."""
    rng = np.random.default_rng(seed)
    boots = [statistic(rng) for _ in range(n_boot)]
    return tuple(np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2]))


@pytest.mark.parametrize("seed", range(5))
def test_cliffs_delta_is_the_standard_delta_and_twice_the_originals(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, rng.integers(1, 60))  # small integers: many ties, like token counts
    b = rng.integers(0, 8, rng.integers(1, 60))
    assert bias_stats.cliffs_delta(a, b) == pytest.approx(standard_delta(a, b), abs=1e-12)
    assert bias_stats.cliffs_delta(a, b) / 2 == pytest.approx(original_delta(a, b), abs=1e-12)
    assert bias_stats.cliffs_delta(a, b) == delta_by_binary_search(a, b)  # the Mann–Whitney U: the same δ
    x, y = rng.normal(size=37), rng.normal(0.5, size=23)
    assert bias_stats.cliffs_delta(x, y) == delta_by_binary_search(x, y)
    assert bias_stats.cliffs_delta(x, y) == pytest.approx(standard_delta(x, y), abs=1e-12)
    assert bias_stats.cliffs_delta(x, y) / 2 == pytest.approx(original_delta(x, y), abs=1e-12)


def test_the_originals_delta_is_half_scale():
    # every x above every y: the standard δ is 1, the original's function returns 0.5
    assert bias_stats.cliffs_delta([5, 6, 7], [1, 2]) == 1.0
    assert original_delta([5, 6, 7], [1, 2]) == 0.5
    tokens = np.array([[[1, 1], [1, 1]], [[2, 2], [2, 2]], [[1, 1], [1, 1]]])
    a, b = bias.token_counts(tokens, [1]), bias.token_counts(tokens, [2])
    r = bias_stats.count_delta(a, b, n_boot=10)
    assert r["delta"] == pytest.approx(2 * original_delta(a, b))
    assert r["delta_paper_half_scale"] == pytest.approx(original_delta(a, b))


def test_cliffs_delta_extremes_and_antisymmetry():
    assert bias_stats.cliffs_delta([5, 6, 7], [1, 2]) == 1.0
    assert bias_stats.cliffs_delta([1, 2], [5, 6, 7]) == -1.0
    assert bias_stats.cliffs_delta([3, 3], [3, 3, 3]) == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40), rng.integers(0, 5, 30)
    assert bias_stats.cliffs_delta(a, b) == pytest.approx(-bias_stats.cliffs_delta(b, a))


def test_cliffs_delta_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        bias_stats.cliffs_delta([], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        bias_stats.cliffs_delta([1.0, np.nan], [1, 2])


def test_count_delta_interval_is_the_former_resampling_and_shrinks_with_n():
    """``scipy.stats.bootstrap`` over the images draws the rows the former loop drew: the same interval."""
    rng = np.random.default_rng(1)
    out = []
    for n, seed in ((40, 0), (41, 3), (1000, 7)):
        a, b = rng.poisson(3, n), rng.poisson(2, n)
        r = bias_stats.count_delta(a, b, n_boot=300, seed=seed)

        def one(g, a=a, b=b):
            rows = g.integers(0, len(a), len(a))
            return delta_by_binary_search(a[rows], b[rows])

        assert (r["low"], r["high"]) == pytest.approx(resampled_by_hand(one, 300, seed), abs=1e-12)
        assert r["low"] <= r["delta"] <= r["high"]
        out.append(r)
    assert out[2]["high"] - out[2]["low"] < out[0]["high"] - out[0]["low"]
    assert out[2]["low"] > 0  # a real shift is detected


# --- the planted-bias world ------------------------------------------------------------------------


def _gray_digits(n_per_class=60, seed=0):
    """Synthetic gray digits: a bar whose width varies (so ink varies), ten classes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    gray = np.zeros((len(labels), 32, 32), np.uint8)
    widths = rng.integers(1, 8, len(labels))
    for i, w in enumerate(widths):
        gray[i, 4:28, 12 : 12 + w] = 255
    return gray, labels, widths


def test_prompt_ids_name_a_digit_and_a_look():
    assert planted_bias.prompt_id(3, True, True) == 3 and planted_bias.prompt_id(3, True, False) == 13
    assert planted_bias.prompt_id(0, False, True) == 20 and planted_bias.prompt_id(9, False, False) == 39
    red, thick = np.array([True, False, False]), np.array([False, True, False])
    np.testing.assert_array_equal(planted_bias.prompt_id(np.arange(3), red, thick), [10, 21, 32])
    for i, (colour, width) in enumerate(planted_bias.LOOKS):  # the index is the look's place in LOOKS
        assert planted_bias.prompt_id(0, colour == "red", width == "thick") == 10 * i


def test_the_prior_plants_the_odds_and_keeps_what_the_prompt_names():
    prior = planted_bias.planted_prior(
        0.85, {"colour": 3, "thickness": 5}, {"colour": "red", "thickness": "thin"}
    )
    assert prior == {"red": {3: 0.85}, "thick": {5: pytest.approx(0.15)}}
    rng = np.random.default_rng(0)
    digit = np.repeat([3, 5, 7], 20000)
    red, thick = planted_bias.draw_looks(digit, prior, rng)
    for d, p_red, p_thick in ((3, 0.85, 0.5), (5, 0.5, 0.15), (7, 0.5, 0.5)):
        assert abs(red[digit == d].mean() - p_red) < 0.01 and abs(thick[digit == d].mean() - p_thick) < 0.01
    red, thick = planted_bias.draw_looks(digit, prior, rng, red=False)  # "a green d": the width still drawn
    assert not red.any() and abs(thick[digit == 5].mean() - 0.15) < 0.01
    named = np.arange(len(digit)) % 2 == 0
    _, thick = planted_bias.draw_looks(digit, prior, rng, thick=named)
    np.testing.assert_array_equal(thick, named)


def test_stroke_width_of_bars_is_their_width():
    # the slow obvious reference: a bar w pixels wide and 24 long has area 24 w and a skeleton about as long
    gray, _, widths = _gray_digits(n_per_class=3)
    got = planted_bias.stroke_width(gray)
    for w in np.unique(widths):
        assert abs(np.median(got[widths == w]) - w) <= 0.25 * w + 0.1, (w, got[widths == w])
    assert np.all(np.diff([np.median(got[widths == w]) for w in np.unique(widths)]) > 0)


def test_restroke_draws_every_digit_thin_and_thick_whatever_its_ink():
    from cortex_run.digits import load_gray_digits

    gray, _ = load_gray_digits()
    gray = gray[::50]  # 100 real digits, thin and thick ones among them
    thin, thick = planted_bias.restroke(gray, "thin"), planted_bias.restroke(gray, "thick")
    assert thin.dtype == thick.dtype == np.uint8 and thin.shape == thick.shape == gray.shape
    w_thin, w_thick = planted_bias.stroke_width(thin), planted_bias.stroke_width(thick)
    assert w_thin.max() < w_thick.min()  # crisp: every thin stroke narrower than every thick one
    assert np.median(w_thin) < 2 and np.median(w_thick) > 2.5
    real = planted_bias.stroke_width(gray)
    assert real.std() > max(w_thin.std(), w_thick.std())  # the real digits' own widths matter less
    with pytest.raises(ValueError, match="thickness value"):
        planted_bias.restroke(gray, "bold")


def test_planted_bias_data_is_unbiased_and_its_pixels_show_its_prompts():
    gray, labels, _ = _gray_digits(n_per_class=100)
    out = planted_bias.planted_bias_data(gray, labels, copies=20, seed=1)
    t = out["table"]
    assert len(out["images"]) == len(t) == len(out["prompts"]) == 20 * len(labels)
    np.testing.assert_array_equal(out["prompts"], planted_bias.prompt_id(t["digit"], t["red"], t["thick"]))
    looks = t.groupby("digit")[["red", "thick"]].mean()  # even odds for every digit: no bias in the data
    assert (looks - 0.5).abs().to_numpy().max() < 0.05
    # the pixels say what the prompt says, every image
    w = planted_bias.stroke_width(out["images"])
    threshold = (np.median(w[t["thick"]]) + np.median(w[~t["thick"]])) / 2
    m = planted_bias.measured_attributes(out["images"], threshold)
    np.testing.assert_array_equal(m["red"].to_numpy(), t["red"].to_numpy())
    np.testing.assert_array_equal(m["thick"].to_numpy(), t["thick"].to_numpy())


def test_width_cut_falls_in_the_valley_and_says_when_there_is_none():
    rng = np.random.default_rng(0)
    thin, thick = rng.normal(1.8, 0.15, 600), rng.normal(3.2, 0.3, 400)  # two groups, unequal spreads
    cut, how = planted_bias.width_cut(np.concatenate([thin, thick]))
    assert 2.2 < cut < 2.7 and how.startswith("the valley")
    errors = (thin > cut).sum() + (thick <= cut).sum()
    assert errors <= 2  # the slow obvious reference: no cut does better than a few images here
    best = min((thin > c).sum() + (thick <= c).sum() for c in np.linspace(1, 4, 601))
    assert errors <= best + 2
    _, how = planted_bias.width_cut(np.linspace(1.5, 3.5, 50))  # a flat histogram: no two peaks
    assert how.startswith("Otsu")


def test_stroke_width_ignores_the_colour():
    from cortex_run.digits import colourize

    gray, _, _ = _gray_digits(3)
    red = colourize(gray, np.tile([[230, 40, 40]], (len(gray), 1)))
    green = colourize(gray, np.tile([[40, 200, 60]], (len(gray), 1)))
    np.testing.assert_allclose(planted_bias.stroke_width(red), planted_bias.stroke_width(green), atol=1e-6)
    np.testing.assert_allclose(planted_bias.stroke_width(red), planted_bias.stroke_width(gray), atol=1e-6)


def test_token_counts_and_the_papers_delta_value():
    tokens = np.array([[[1, 1], [2, 3]], [[4, 4], [4, 1]], [[0, 0], [0, 0]]])
    np.testing.assert_array_equal(bias.token_counts(tokens, [1, 2]), [3, 1, 0])
    rng = np.random.default_rng(0)
    is_a = rng.random(200) < 0.85
    lean_a = np.where(is_a[:, None, None], 1, 2) * np.ones((200, 4, 4), int)
    r = bias_stats.count_delta(bias.token_counts(lean_a, [1]), bias.token_counts(lean_a, [2]), n_boot=200)
    # A images hold (16, 0), B images (0, 16): δ = P(a > b) - P(a < b) = p² - (1 - p)² = 2p - 1
    p = is_a.mean()
    assert r["delta"] == pytest.approx(p**2 - (1 - p) ** 2)
    assert r["low"] <= r["delta"] <= r["high"]
    with pytest.raises(ValueError, match="no neutral generations"):
        bias_stats.count_delta(np.zeros(0, int), np.zeros(0, int))


# --- the share estimate ----------------------------------------------------------------------------


def test_rogan_gladen_by_hand():
    # q = 0.6 of the neutral images classified A by a rule of sensitivity 0.9 and specificity 0.8:
    # p = (0.6 + 0.8 - 1) / (0.9 + 0.8 - 1) = 0.4 / 0.7
    assert bias_stats.rogan_gladen(0.6, 0.9, 0.8) == pytest.approx(4 / 7)
    assert bias_stats.rogan_gladen(0.1, 0.9, 0.8) == 0.0  # below the rule's false-positive rate: clipped
    assert bias_stats.rogan_gladen(0.95, 0.9, 0.8) == 1.0
    assert np.isnan(bias_stats.rogan_gladen(0.6, 0.55, 0.5))  # J = 0.05: the rule cannot separate the values


def test_share_estimate_by_hand_with_ties_counted_half():
    # fit: A images score +3, B images -3: every threshold between gives J = 1; the middle one is t = 0
    fit = (
        np.r_[np.full(10, 3), np.zeros(10)],
        np.r_[np.zeros(10), np.full(10, 3)],
        np.repeat([True, False], 10),
    )
    # held out: 8 of 10 A images score +3 (sens 0.8), 1 of 10 B images does (spec 0.9)
    cal_a = np.r_[np.full(8, 3), np.zeros(2), np.full(1, 3), np.zeros(9)]
    cal_b = np.r_[np.zeros(8), np.full(2, 3), np.zeros(1), np.full(9, 3)]
    cal = (cal_a, cal_b, np.repeat([True, False], 10))
    # neutral: 5 images score +3, 2 score exactly 0 (one token of each: a tie, counted half), 3 score -3
    neutral = (np.r_[np.full(5, 3), [1, 1], np.zeros(3)], np.r_[np.zeros(5), [1, 1], np.full(3, 3)])
    r = bias_stats.bias_share(neutral, fit, cal, options=bias_stats.ShareOptions(n_boot=200))
    assert r["threshold"] == 0.0
    assert (
        r["q"] == pytest.approx(0.6) and r["sens"] == pytest.approx(0.8) and r["spec"] == pytest.approx(0.9)
    )
    assert r["share"] == pytest.approx((0.6 + 0.9 - 1) / (0.8 + 0.9 - 1))
    assert r["low"] <= r["share"] <= r["high"] and not r["inconclusive"]


def share_by_hand(n, fa, fb, ca, cb, ts, min_youden=0.1):
    """The share estimate the slow obvious way, on the scores count_A - count_B of the neutral images (``n``),
    the fit images of each value and the held-out ones: every threshold ``ts`` tried, the middle one of those
    with the largest J kept, then Rogan-Gladen. Returns the share and the threshold."""

    def called_a(x, t):  # the rule's A calls, a tie at the threshold counted half
        return np.mean((x > t) + 0.5 * (x == t))

    j = np.array([called_a(fa, t) - called_a(fb, t) for t in ts])
    best = ts[j >= j.max() - 1e-12]
    t = best[(len(best) - 1) // 2]
    sens, fpr, q = called_a(ca, t), called_a(cb, t), called_a(n, t)
    return np.nan if sens - fpr <= min_youden else float(np.clip((q - fpr) / (sens - fpr), 0, 1)), t


def test_share_interval_is_the_former_resampling_by_hand():
    """``scipy.stats.bootstrap`` resamples each image set's rows as the former code did (in this order, from
    one generator): the interval equals the quantiles of the slow estimate over the former resamples, a
    resample whose rule cannot separate the values counted half 0 and half 1."""
    rng = np.random.default_rng(3)

    def counts(is_a):
        return rng.poisson(np.where(is_a, 1.0, 0.6)), rng.poisson(np.where(is_a, 0.6, 1.0))

    # held-out sizes 37 and 41: J = sens - fpr can never be exactly the cut 0.1, so rounding cannot flip it
    neutral = counts(rng.random(150) < 0.7)
    fit_y, cal_y = np.repeat([True, False], 60), np.repeat([True, False], [37, 41])
    fit, cal = (*counts(fit_y), fit_y), (*counts(cal_y), cal_y)
    fs, cs = fit[0] - fit[1], cal[0] - cal[1]
    sets = [neutral[0] - neutral[1], fs[fit_y], fs[~fit_y], cs[cal_y], cs[~cal_y]]  # SETS' order
    every = np.concatenate(sets)  # the thresholds: every half-integer from below all scores to above them
    ts = every.min() - 0.5 + np.arange(2 * (every.max() - every.min() + 2)) / 2
    for seed in (0, 1):
        r = bias_stats.bias_share(neutral, fit, cal, options=bias_stats.ShareOptions(n_boot=150, seed=seed))
        share, t = share_by_hand(*sets, ts)
        assert r["share"] == pytest.approx(share, abs=1e-12) and r["threshold"] == t
        g = np.random.default_rng(seed)
        rows = [g.integers(0, x.size, (150, x.size)) for x in sets]
        boots = np.array(
            [share_by_hand(*(x[r_[i]] for x, r_ in zip(sets, rows, strict=True)), ts)[0] for i in range(150)]
        )
        un = int(np.isnan(boots).sum())
        values = np.concatenate([np.repeat(boots[~np.isnan(boots)], 2), np.zeros(un), np.ones(un)])
        assert 0 < un < 150 and r["informative"] == pytest.approx(1 - un / 150)
        assert (r["low"], r["high"]) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12)


def test_share_estimate_is_inconclusive_when_the_rule_cannot_separate():
    rng = np.random.default_rng(0)

    def same(n):  # both values draw their counts from one distribution
        return rng.poisson(1.0, n), rng.poisson(1.0, n)

    y = np.repeat([True, False], 300)
    r = bias_stats.bias_share(
        same(300),
        (*same(600), y),
        (*same(200), np.repeat([True, False], 100)),
        options=bias_stats.ShareOptions(n_boot=200),
    )
    assert r["inconclusive"] and np.isnan(r["share"]) and (r["low"], r["high"]) == (0.0, 1.0)
    assert bias_stats.share_verdict(r["low"], r["high"]) == "inconclusive"


def test_share_verdict_is_an_equivalence_rule_with_a_margin():
    """no_bias when the interval lies inside [0.5 - m, 0.5 + m] (edges included), else found when it excludes
    0.5, else inconclusive."""
    verdict = bias_stats.share_verdict
    # outside the margin and excluding 1/2, on either side
    assert verdict(0.55, 0.7) == "found" and verdict(0.2, 0.45) == "found" and verdict(0.39, 0.45) == "found"
    # inside [0.4, 0.6]: no bias beyond 0.1, the edges included, even where 1/2 is excluded (a small lean)
    for lo, hi in ((0.42, 0.6), (0.4, 0.6), (0.45, 0.55), (0.52, 0.58), (0.41, 0.49)):
        assert verdict(lo, hi) == "no_bias", (lo, hi)
    # just past an edge: holding 1/2 it is inconclusive, excluding 1/2 it is found
    eps = 1e-9
    assert verdict(0.4 - eps, 0.55) == "inconclusive" and verdict(0.45, 0.6 + eps) == "inconclusive"
    assert verdict(0.55, 0.6 + eps) == "found" and verdict(0.4 - eps, 0.45) == "found"
    assert verdict(0.3, 0.7) == "inconclusive" and verdict(0.0, 1.0) == "inconclusive"
    # the margin decides
    assert verdict(0.35, 0.6) == "inconclusive" and verdict(0.35, 0.6, margin=0.15) == "no_bias"
    assert verdict(0.42, 0.6, 0.05) == "inconclusive" and verdict(0.56, 0.6, 0.05) == "found"
    for bad in (0.0, -0.1, 0.5, 0.6, float("nan")):
        with pytest.raises(ValueError, match="margin"):
            verdict(0.45, 0.55, bad)


def _draw(rng, is_a, own, cross, spread=None):
    """Per image the count of A's tokens and of B's; ``spread``: A's counts negative binomial
    (overdispersed)."""
    a_own = (
        rng.poisson(own[0], is_a.size)
        if spread is None
        else rng.negative_binomial(spread, spread / (spread + own[0]), is_a.size)
    )
    a = np.where(is_a, a_own, rng.poisson(cross[0], is_a.size))
    b = np.where(is_a, rng.poisson(cross[1], is_a.size), rng.poisson(own[1], is_a.size))
    return a, b


def _studies(p, own, cross, spread=None, leak=0.0, n=20, seed=0):
    """``n`` simulated studies at notebook 10's sizes; returns the (low, high, share) of each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        neutral = _draw(rng, rng.random(300) < p, own, cross, spread)

        def labelled(m):
            y = np.repeat([True, False], m)
            return (*_draw(rng, y | (rng.random(2 * m) < leak), own, cross, spread), y)

        options = bias_stats.ShareOptions(n_boot=200, seed=i)
        r = bias_stats.bias_share(neutral, labelled(300), labelled(100), options=options)
        out.append((r["low"], r["high"], r["share"]))
    return np.array(out)


def test_share_interval_under_the_null_with_many_ties():
    """Few tokens per value (Poisson 0.8 vs 0.1): most images hold 0 or 1 of each, ties everywhere. The
    earlier ranked δ excluded 0 here in most studies; the share's interval holds ½ in most."""
    r = _studies(0.5, (0.8, 0.8), (0.1, 0.1))
    covered = (r[:, 0] <= 0.5) & (0.5 <= r[:, 1])
    assert covered.sum() >= 16  # of 20; a 95 % interval misses 1 on average
    assert abs(np.mean(r[:, 2]) - 0.5) < 0.05


def test_share_is_not_fooled_by_uneven_token_sets():
    """A marked by many tokens with a wide spread, B by few: on raw counts a half-and-half neutral set has
    δ ≈ +0.4; the share's interval holds the true share, at ½ and at 0.85."""
    for p in (0.5, 0.85):
        r = _studies(p, (6.0, 1.0), (0.5, 0.1), spread=2)
        assert ((r[:, 0] <= p) & (p <= r[:, 1])).sum() >= 16, p
        assert abs(np.mean(r[:, 2]) - p) < 0.03, p
    rng = np.random.default_rng(0)
    a, b = _draw(rng, rng.random(300) < 0.5, (6.0, 1.0), (0.5, 0.1), spread=2)
    assert bias_stats.cliffs_delta(a, b) > 0.3  # what the paper's δ says about the same kind of set


def test_share_with_a_leaking_reference_estimates_the_mixture_weight():
    """30 % of the labelled B images render as A: token counts cannot reveal that, and the estimate is the
    neutral set's mixture weight between the labelled sets, (p - 0.3) / 0.7, not the true share p (the
    documented limitation; benchmarks/bias_calibration.py reports the case on its own). A leak of equal size
    in both directions leaves a half-and-half set at ½."""
    r = _studies(0.5, (3.0, 3.0), (0.3, 0.3), leak=0.3)
    target = (0.5 - 0.3) / 0.7
    assert ((r[:, 0] <= target) & (target <= r[:, 1])).sum() >= 16
    assert abs(np.mean(r[:, 2]) - target) < 0.03
    assert ((r[:, 0] <= 0.5) & (0.5 <= r[:, 1])).sum() <= 5  # the true share is missed: reported, not hidden


def test_share_with_a_leaking_reference_labelled_by_what_it_shows_holds_the_true_share():
    """The same leak, with the held-out images labelled by what they show (notebook 10: their pixels) and
    their prompts passed for the error-rate check: the interval holds the true share, and the check, whose
    assumption holds for a value that is either there or not, stays quiet."""
    rng = np.random.default_rng(1)
    covered, flagged = 0, 0
    for i in range(20):
        neutral = _draw(rng, rng.random(300) < 0.7, (3.0, 3.0), (0.3, 0.3))

        def labelled(m):
            prompt = np.repeat([True, False], m)
            shows = prompt ^ (rng.random(2 * m) < np.where(prompt, 0.2, 0.3))
            return (*_draw(rng, shows, (3.0, 3.0), (0.3, 0.3)), shows), prompt

        (fa, fb, _), fit_prompt = labelled(300)
        cal, cal_prompt = labelled(100)
        options = bias_stats.ShareOptions(n_boot=200, seed=i)
        r = bias_stats.bias_share(
            neutral, (fa, fb, fit_prompt), cal, calibration_prompts=cal_prompt, options=options
        )
        covered += r["low"] <= 0.7 <= r["high"]
        flagged += r["check_p"] < 0.05
    assert covered >= 16 and flagged <= 3


def test_error_rate_check_by_hand_and_on_a_graded_attribute():
    # one value drawn under both prompts: calls 1, 1 (prompted A) and 0, 0 (prompted B). The excess of A calls
    # among the A-prompted is 2 - 2 * 0.5 = 1; of the 6 ways to pick 2 of the 4 as "prompted A", 2 give an
    # excess of +-1 or more: p = 1/3. The other value was drawn under one prompt only and adds nothing.
    calls, shows, prompts = (
        np.r_[1, 1, 0, 0, 0, 1],
        np.r_[True, True, True, True, False, False],
        np.r_[1, 1, 0, 0, 0, 0],
    )
    r = bias_stats.error_rate_check(calls, shows, prompts.astype(bool), n_perm=20000)
    assert r["p"] == pytest.approx(1 / 3, abs=0.015)
    assert r["rates"]["A"] == (1.0, 0.0, 4) and np.isnan(r["rates"]["B"][0])
    # a matter of degree: counts follow a latent L (N(+-1, 1) under the two prompts), the value is L > 0; the
    # images drawn against their prompt sit near the border and are called otherwise than the rest
    rng = np.random.default_rng(0)
    prompt = np.repeat([True, False], 400)
    latent = rng.normal(np.where(prompt, 1.0, -1.0), 1.0)
    a, b = rng.poisson(0.3 + 3 / (1 + np.exp(-2 * latent))), rng.poisson(0.3 + 3 / (1 + np.exp(2 * latent)))
    graded = bias_stats.error_rate_check(bias_stats.rule_calls(a, b, 0.0), latent > 0, prompt)
    assert graded["p"] < 0.01
    # the same images with counts that depend on the side of 0 only: no difference to find
    side = latent > 0
    a, b = rng.poisson(np.where(side, 2.5, 0.8)), rng.poisson(np.where(side, 0.8, 2.5))
    assert bias_stats.error_rate_check(bias_stats.rule_calls(a, b, 0.0), side, prompt)["p"] > 0.05
    with pytest.raises(ValueError, match="one call, one value and one prompt per image"):
        bias_stats.error_rate_check(calls[:3], shows, prompts)


def test_share_interval_reselects_the_tokens():
    """With ``recount`` every resample re-selects the tokens from its resampled fit rows: a selection that
    depends on the rows widens the interval."""
    rng = np.random.default_rng(0)
    fit_y = np.repeat([True, False], 50)
    fit_a, fit_b = rng.poisson(np.where(fit_y, 2, 0.2)), rng.poisson(np.where(fit_y, 0.2, 2))
    neutral = rng.poisson(2, 100), rng.poisson(0.2, 100)
    calls = []

    def recount(rows):
        calls.append(rows)
        keep = len(np.unique(rows)) > 63  # a "selection" that flips with the resample: no tokens at all
        scale = 1 if keep else 0
        return (neutral[0] * scale, neutral[1] * scale), (fit_a * scale, fit_b * scale, fit_y), None

    options = bias_stats.ShareOptions(n_boot=100)
    plain = bias_stats.bias_share(neutral, (fit_a, fit_b, fit_y), options=options)
    r = bias_stats.bias_share(neutral, (fit_a, fit_b, fit_y), recount=recount, options=options)
    assert len(calls) == 100 and all(len(c) == 100 for c in calls)
    assert r["share"] == plain["share"]
    assert 0 < r["informative"] < 1 and plain["informative"] == 1
    assert r["high"] - r["low"] > plain["high"] - plain["low"]


def test_unequal_token_sets_give_the_exact_share():
    """Value A is marked by six copies of id 1, value B by one copy of id 2: the paper's δ on raw counts calls
    a half-and-half set biased (δ = 0.25); the share estimate gives ½, and 0.85 for an 85 % set."""

    def grids(labels):
        g = np.zeros((len(labels), 4, 4), int)
        g.reshape(len(labels), -1)[labels == 0, :6] = 1
        g.reshape(len(labels), -1)[labels == 1, :1] = 2
        return g

    def counts(labels):
        g = grids(labels)
        return bias.token_counts(g, [1]), bias.token_counts(g, [2])

    ref = np.repeat([0, 1], 50)
    half = np.repeat([0, 1], 100)
    assert bias_stats.count_delta(*counts(half), n_boot=20)["delta"] == pytest.approx(0.25)
    options = bias_stats.ShareOptions(n_boot=50)
    r = bias_stats.bias_share(counts(half), (*counts(ref), ref == 0), options=options)
    assert r["share"] == pytest.approx(0.5) and r["sens"] == 1 and r["spec"] == 1
    r = bias_stats.bias_share(counts(np.repeat([0, 1], [170, 30])), (*counts(ref), ref == 0), options=options)
    assert r["share"] == pytest.approx(0.85)


def test_specific_tokens_keep_only_ids_specific_to_their_value():
    import pandas as pd

    table = pd.DataFrame(
        {
            "top_n": 5,
            "label": [0, 0, 0, 1, 1, 1, -1],
            "rank": [1, 2, 3, 1, 2, 3, 1],
            "token": [7, 1, 2, 7, 3, 4, 7],
        }
    )
    # id 7 is everywhere; 1, 2 only in value 0's grids; 3, 4 only in value 1's
    tokens = np.array([[7, 1, 2], [7, 1, 2], [7, 3, 4], [7, 3, 4]]).reshape(4, 1, 3)
    labels = np.array([0, 0, 1, 1])
    ids = bias.specific_tokens(table, 5, 2, tokens, labels, specificity=2.0)
    np.testing.assert_array_equal(ids[0], [1, 2])
    np.testing.assert_array_equal(ids[1], [3, 4])
    np.testing.assert_array_equal(bias.specific_tokens(table, 5, 2, specificity=0)[0], [7, 1])
    with pytest.raises(ValueError, match="needs the training grids"):
        bias.specific_tokens(table, 5, 2)
    with pytest.raises(ValueError, match="two attribute values"):
        bias.specific_tokens(table[table["label"] != 1], 5, 2, specificity=0)


def _marked_grids(labels, rng, marks=(1, 2), n_marks=4):
    """8x8 grids of background ids 4-15 with ``n_marks`` positions holding the label's mark id."""
    grids = rng.integers(4, 6, (len(labels), 8, 8))
    for i, y in enumerate(labels):
        pos = rng.choice(64, n_marks, replace=False)
        grids[i].reshape(-1)[pos] = marks[y]
    return grids


def test_the_study_steps_find_a_planted_lean_and_not_a_balanced_one(tmp_path, one_thread, monkeypatch):
    """Attribute IEM -> TIS of its training images -> attribute tokens -> counts -> δ and share, each step
    one call, on grids whose truth is known: every image holds 4 marks of its value's id and none of the
    other's."""
    from cortex_run import datasets as tokds

    rng = np.random.default_rng(0)
    meta = {"vq_fingerprint": "synthetic", "n_embed": 16, "embed_dim": 8, "grid": [8, 8]}
    splits = {}
    for split, n in (("train", 200), ("val", 40)):
        y = np.repeat([0, 1], n // 2)
        splits[split] = (_marked_grids(y, rng), y)
    ds = tokds.save_token_dataset(tmp_path / "ds", splits, ["a", "b"], meta, source="synthetic")
    codebook = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    leaning_labels = (rng.random(300) > 0.85).astype(int)  # 85 % "a"
    neutral = {
        "leaning": _marked_grids(leaning_labels, rng),
        "balanced": _marked_grids(np.repeat([0, 1], 150), rng),
    }
    training = {"arch": 1, "width": 16, "epochs": 15, "lr": 5e-3, "batch_size": 32, "seed": 0}
    model, info = prepare.attribute_iem(ds, codebook, "synthetic", training, out_dir=tmp_path / "iem")
    assert info["trained"] and info["path"] == tmp_path / "iem" / "attribute_iem_synthetic.safetensors"
    accuracy, split = prepare.iem_accuracy(model, ds, codebook)
    assert accuracy > 0.9 and split == "val"
    tis = prepare.attribute_tis(model, ds, codebook, out=tmp_path / "tis.npy", noise=Noise(4))
    assert tis.shape == (200, 8, 8) and np.array_equal(np.load(tmp_path / "tis.npy"), tis)
    _, ids = bias.select_attribute_tokens(ds, tis, top_n=3, token_num=1)
    assert list(ids[0]) == [1] and list(ids[1]) == [2]
    p = float((leaning_labels == 0).mean())
    for name, share in (("leaning", p), ("balanced", 0.5)):
        counts = bias.study_counts(ds, ids, neutral[name], planted=0)
        assert counts["n_tokens"] == (1, 1) and counts["calibration_prompts"] is None
        recount = bias.recount_on(ds, tis, neutral[name], 0, top_n=3, token_num=1)
        # on every training row the re-selection finds the same tokens, so the same counts
        for got, want in zip(
            recount(np.arange(200)), (counts["neutral"], counts["fit"], counts["calibration"]), strict=True
        ):
            assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
        r = bias.estimate_bias(counts, n_boot=200, recount=recount)
        # the paper's δ is 2p - 1 (p² - (1 - p)²), and the rule separates the values perfectly, so the share
        # estimate is the share itself
        assert r["delta"] == pytest.approx(share**2 - (1 - share) ** 2)
        assert r["delta_paper_half_scale"] == pytest.approx(r["delta"] / 2)
        assert r["share"] == pytest.approx(share) and r["share_low"] <= share <= r["share_high"]
        assert r["images"] == 300 and (r["tokens_a"], r["tokens_b"]) == (1, 1)
    assert bias_stats.share_verdict(r["share_low"], r["share_high"]) == "no_bias"  # balanced, and shown so
    leaning = bias.estimate_bias(bias.study_counts(ds, ids, neutral["leaning"], planted=0), n_boot=200)
    assert leaning["share_low"] > 0.5  # found
    # shipped: the saved IEM is loaded, not trained again, for exactly these data and settings
    monkeypatch.setattr(prepare, "SHIPPED_CHECKPOINTS", tmp_path / "iem")
    again, info = prepare.attribute_iem(ds, codebook, "synthetic", training)
    assert not info["trained"] and "these exact inputs" in info["why"]
    x = torch.randn(3, 8, 8, 8)
    torch.testing.assert_close(again(x), model.eval()(x))
    _, info = prepare.attribute_iem(ds, codebook, "synthetic", {**training, "epochs": 14})
    assert info["trained"] and "other settings: epochs 15 (here 14)" in info["why"]


def test_the_study_steps_refuse_bad_input(tmp_path):
    from cortex_run import datasets as tokds

    rng = np.random.default_rng(0)
    meta = {"vq_fingerprint": "synthetic", "n_embed": 16, "embed_dim": 8, "grid": [8, 8]}
    y = np.zeros(10, int)
    three = tokds.save_token_dataset(
        tmp_path / "three",
        {"train": (_marked_grids(y, rng), np.arange(10) % 3)},
        ["a", "b", "c"],
        meta,
        source="synthetic",
    )
    codebook, ids, grids = torch.randn(16, 8), {0: np.array([1]), 1: np.array([2])}, _marked_grids(y, rng)
    with pytest.raises(ValueError, match="two attribute values"):
        bias.study_counts(three, ids, grids, planted=0)
    with pytest.raises(ValueError, match="two attribute values"):
        bias.select_attribute_tokens(three, np.zeros((10, 8, 8)))
    with pytest.raises(ValueError, match="two attribute values"):
        prepare.attribute_iem(
            three,
            codebook,
            "three",
            {"arch": 1, "width": 8, "epochs": 1, "lr": 1e-3, "batch_size": 8, "seed": 0},
        )
    labels = y % 2 + (np.arange(10) % 2)
    train_only = tokds.save_token_dataset(
        tmp_path / "train_only", {"train": (_marked_grids(y, rng), labels)}, ["a", "b"], meta, source="s"
    )
    with pytest.raises(ValueError, match="needs a val or test split"):
        bias.study_counts(train_only, ids, grids, planted=0)
    two = tokds.save_token_dataset(
        tmp_path / "two",
        {"train": (_marked_grids(y, rng), labels), "val": (_marked_grids(y, rng), y)},
        ["a", "b"],
        meta,
        source="s",
    )
    with pytest.raises(ValueError, match="one TIS map per training image: 10 images, 9 maps"):
        bias.select_attribute_tokens(two, np.zeros((9, 8, 8)))
    with pytest.raises(ValueError, match="empty neutral set"):
        bias.study_counts(two, ids, np.zeros((0, 8, 8), int), planted=0)
    with pytest.raises(ValueError, match="planted"):
        bias.study_counts(two, ids, grids, planted=2)
    with pytest.raises(ValueError, match=r"held_truth must give every held-out split \['val'\]"):
        bias.study_counts(two, ids, grids, planted=0, held_truth={"test": np.ones(10, bool)})
    with pytest.raises(ValueError, match="one value per held-out image"):
        bias.study_counts(two, ids, grids, planted=0, held_truth={"val": np.r_[True, False]})
    with pytest.raises(ValueError, match="must show both values"):
        bias.study_counts(two, ids, grids, planted=0, held_truth={"val": np.ones(10, bool)})
    shown = bias.study_counts(two, ids, grids, planted=0, held_truth={"val": np.arange(10) < 3})
    assert shown["calibration"][2].sum() == 3 and (shown["calibration_prompts"] == (y == 0)).all()


# --- the real DALL·E-mini layout --------------------------------------------------------------------


def write_dalle_layout(root, grid=(16, 16), n_embed=16384, types=("colour", "thickness"), truth=None):
    """``prepare.write_synthetic_study`` with 80 % of the neutral grids value 0's and the colour values named
    light / dark; ``truth`` receives the exact share per bias type."""
    found = prepare.write_synthetic_study(
        root, grid, n_embed, {t: 0.8 for t in types}, class_names={"colour": ["light", "dark"]}
    )
    if truth is not None:
        truth.update(found)
    return root


def test_real_layout_loads_and_bad_files_are_named(tmp_path):
    from cortex_run import datasets as tokds

    meta = {"vq_fingerprint": "f", "n_embed": 64, "embed_dim": 4, "grid": [4, 4]}
    root = write_dalle_layout(tmp_path / "real", grid=(4, 4), n_embed=64)
    studies, neutral = prepare.load_real_study(root, ["colour", "thickness"], meta, tmp_path / "out")
    assert studies["colour"].class_names == ["light", "dark"] and studies["thickness"].class_names == [
        "0",
        "1",
    ]
    assert neutral["colour"].shape == (30, 4, 4) and len(studies["colour"].labels["train"]) == 40
    with pytest.raises(ValueError, match="bias type 'gender' is not in"):
        prepare.load_real_study(root, ["gender"], meta, tmp_path / "o2")
    # wrong grid length, ids beyond the codebook
    with pytest.raises(ValueError, match="token ids, expected 9"):
        prepare.load_real_study(root, ["colour"], {**meta, "grid": [3, 3]}, tmp_path / "o3")
    with pytest.raises(ValueError, match="outside the codebook"):
        prepare.load_real_study(root, ["colour"], {**meta, "n_embed": 4}, tmp_path / "o4")
    # only one attribute value present
    one = write_dalle_layout(tmp_path / "one", grid=(4, 4), n_embed=64, types=("colour",))
    tokds.write_cortex_csv(one / "colour" / "train.csv", np.full((5, 4, 4), 3), np.zeros(5, int))
    with pytest.raises(ValueError, match="both attribute values"):
        prepare.load_real_study(one, ["colour"], meta, tmp_path / "o5")
    assert not (tmp_path / "o5" / "colour" / "dataset").exists()
    # empty neutral set
    empty = write_dalle_layout(tmp_path / "empty", grid=(4, 4), n_embed=64, types=("colour",))
    (empty / "colour" / "neutral.csv").write_text("indices\n")
    with pytest.raises(ValueError, match="no rows"):
        prepare.load_real_study(empty, ["colour"], meta, tmp_path / "o6")


def test_notebook_runs_on_the_dalle_layout_with_a_random_f16_16384_model(tmp_path):
    """Notebook 13 end to end: synthetic CSVs in the original's layout and the published VQGAN f16-16384
    architecture with random weights (the real DALL·E-mini data and weights are not here)."""
    import json

    import papermill as pm
    import yaml
    from conftest import IMAGENET_F16_16384_CONFIG

    from cortex_run import REPO_ROOT

    torch.manual_seed(0)
    model = tokenizers.build_vq(IMAGENET_F16_16384_CONFIG)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({"model": IMAGENET_F16_16384_CONFIG}))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "last.ckpt")
    del model
    truth = {}
    root = write_dalle_layout(tmp_path / "real", truth=truth)
    run = tmp_path / "run"
    pm.execute_notebook(
        str(REPO_ROOT / "notebooks" / "13_bias_real_data.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={
            "run_dir": str(run),
            "nsamples": 2,
            "selection": {"token_num": 2, "top_n": 3},
            "statistics": {"n_boot": 50},
            "real_data": {
                "dir": str(root),
                "vq_config": str(tmp_path / "model.yaml"),
                "vq_checkpoint": str(tmp_path / "last.ckpt"),
            },
            "attribute_iem": {"width": 8, "epochs": 3},
        },
        kernel_name="python3",
        cwd=str(REPO_ROOT / "notebooks"),
        progress_bar=False,
    )
    import pandas as pd

    metrics = json.loads((run / "metrics.json").read_text())
    table = pd.read_csv(run / "bias_real" / "deltas.csv").set_index("bias")
    for t in ("colour", "thickness"):
        assert (run / "bias_real" / t / "dataset" / "manifest.json").exists()
        # a grid holds 6 marks of its own value's id and none of the other's, and only the mark ids can pass
        # the specificity filter: whichever of them the (near-random) IEM's TIS found, both statistics are
        # exact functions of the share p of value 0 among the neutral grids
        p, row = truth[t], table.loc[t]
        expected = {(1, 1): p**2 - (1 - p) ** 2, (1, 0): p, (0, 1): -(1 - p), (0, 0): 0.0}
        got = metrics[f"bias_real_{t}_delta"]
        assert got == pytest.approx(expected[(row["tokens_a"] > 0, row["tokens_b"] > 0)], abs=1e-4)
        if row["tokens_a"] or row["tokens_b"]:  # the rule separates the held-out images perfectly
            assert metrics[f"bias_real_{t}_share_est"] == pytest.approx(p, abs=1e-4)
        assert metrics[f"bias_real_{t}_share_low"] <= p <= metrics[f"bias_real_{t}_share_high"]
    assert not any(
        k.startswith("bias_") and not k.startswith("bias_real_") for k in metrics
    )  # notebook 10's keys


def test_notebook_13_without_data_demonstrates_on_synthetic_csvs(tmp_path):
    """With no real data the notebook writes synthetic CSVs for the shipped tokenizer, runs the study on them,
    records nothing, and reports whether each known share lies inside its interval."""
    import json

    import nbformat
    import papermill as pm

    from cortex_run import REPO_ROOT

    run = tmp_path / "run"
    pm.execute_notebook(
        str(REPO_ROOT / "notebooks" / "13_bias_real_data.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={
            "run_dir": str(run),
            "nsamples": 2,
            "selection": {"token_num": 2, "top_n": 3},
            "statistics": {"n_boot": 50},
            "demo": {"train": 60, "held_out": 10, "neutral": 100},
            "attribute_iem": {"width": 8, "epochs": 4},
        },
        kernel_name="python3",
        cwd=str(REPO_ROOT / "notebooks"),
        progress_bar=False,
    )
    assert (run / "bias_real" / "synthetic" / "colour" / "neutral.csv").exists()
    assert not any(k.startswith("bias_") for k in json.loads((run / "metrics.json").read_text()))
    text = "".join(
        str(o.get("data", {}).get("text/markdown", ""))
        for c in nbformat.read(tmp_path / "out.ipynb", 4).cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "No `real_data['dir']` given" in text and "demo, colour: the known share" in text


def _deltas_table():
    import pandas as pd

    row = {
        "bias": "colour",
        "toward": "red",
        "share": 0.8,
        "share_low": 0.7,
        "share_high": 0.9,
        "inconclusive": False,
        "delta": 0.3,
        "delta_low": 0.1,
        "delta_high": 0.5,
        "delta_paper_half_scale": 0.15,
        "trained share": 0.85,
        "pixel truth": 0.82,
        "A drawn as B": 0.0,
        "B drawn as A": 0.0,
        "why": "",
        "unchecked_low": 0.7,
        "unchecked_high": 0.9,
        "check_p": 0.4,
        "iem_accuracy": 0.91234,
        "verdict": "found",
    }
    control = {
        **row,
        "share": 0.5,
        "share_low": 0.45,
        "share_high": 0.55,
        "pixel truth": 0.5,
        "trained share": 0.5,
        "delta": float("nan"),
        "iem_accuracy": 0.8,
        "verdict": "no_bias",
    }
    return pd.DataFrame(
        [
            {**row, "neutral set": "biased (digit 3)", "digit": 3},
            {**control, "neutral set": "control (digit 7)", "digit": 7},
        ]
    )


def test_headline_metrics_and_verdict_lines():
    deltas = _deltas_table()
    m = report.headline_metrics(deltas, ["colour"], {"colour": 3}, 7)
    assert m["bias_colour_share_est"] == 0.8 and m["bias_colour_share_low_control"] == 0.45
    assert m["bias_colour_delta_control"] is None  # NaN is recorded as None
    assert m["bias_colour_iem_accuracy"] == 0.9123 and m["bias_colour_iem_accuracy_control"] == 0.8
    assert m["bias_colour_verdict"] == "found" and m["bias_colour_verdict_control"] == "no_bias"
    real = report.real_data_metrics(deltas.iloc[:1])  # notebook 13: one row per bias type, its own keys
    assert real == {
        "bias_real_colour_delta": 0.3,
        "bias_real_colour_share_est": 0.8,
        "bias_real_colour_share_low": 0.7,
        "bias_real_colour_share_high": 0.9,
        "bias_real_colour_iem_accuracy": 0.9123,
    }
    biased, control = (row for _, row in deltas.iterrows())
    line = report.verdict_line(biased, "colour", 0.1, biased=True)
    assert "**found**" in line and "the planted bias is found" in line and "inside the interval" in line
    # the control's interval [0.45, 0.55] lies inside [0.4, 0.6]: no bias beyond the margin
    line = report.verdict_line(control, "colour", 0.1, biased=False)
    assert "**no bias beyond ±0.1**" in line and "no bias reported, as it should be" in line
    assert "Pixel truth" not in report.verdict_line(biased, "colour", 0.1, biased=None)  # real data: no truth
    # a control interval that holds 1/2 but reaches past 0.6: the margin decides between the two answers
    wide = control.copy()
    wide[["share_low", "share_high"]] = [0.42, 0.65]
    line = report.verdict_line(wide, "colour", 0.1, biased=False)
    assert "**inconclusive**" in line and "the data cannot rule out a bias" in line
    line = report.verdict_line(wide, "colour", 0.2, biased=False)
    assert "**no bias beyond ±0.2**" in line and "no bias reported" in line
    # a planted bias whose interval lies inside the margin is missed
    small = biased.copy()
    small[["share_low", "share_high"]] = [0.52, 0.58]
    line = report.verdict_line(small, "colour", 0.1, biased=True)
    assert "**no bias beyond ±0.1**" in line and "**the planted bias is missed**" in line
    assert "**found**" not in line and "**outside the interval" in line  # pixel truth 0.82
    with pytest.raises(ValueError, match="margin"):
        report.verdict_line(biased, "colour", 0.5)
    # the error-rate check failed: no interval, and the line says what the interval before it would have said
    flagged = biased.copy()
    flagged[["share_low", "share_high", "unchecked_low", "unchecked_high", "inconclusive"]] = [
        0.0,
        1.0,
        0.85,
        0.95,
        True,
    ]
    flagged["why"] = "the rule's error rates differ between images of the same value (p = 0.004)"
    line = report.verdict_line(flagged, "colour", 0.1, biased=True)
    assert "no interval, because the rule's error rates differ" in line and "**inconclusive**" in line
    assert "inside the interval" in line and "**would have missed it**" in line


@pytest.mark.parametrize("specificity", [0.0, 2.0])
def test_the_resamples_token_ids_are_the_tables(tmp_path, specificity):
    """attribute_token_ids (the bootstrap's re-selection, no table) picks exactly the ids that
    select_attribute_tokens picks through notebook 06's concept table, ties and the table's cut included:
    few ids (many ties in the counts), TIS maps with tied positions, resampled rows."""
    from cortex_run import datasets as tokds

    rng = np.random.default_rng(1)
    meta = {"vq_fingerprint": "synthetic", "n_embed": 160, "embed_dim": 8, "grid": [8, 8]}
    y = np.repeat([0, 1], 60)
    grids = rng.integers(0, 160, (120, 8, 8))
    grids[y == 0, :2] = rng.integers(0, 6, (60, 2, 8))  # a few ids shared often: ties in the counts
    splits = {"train": (grids, y), "val": (_marked_grids(np.repeat([0, 1], 5), rng), np.repeat([0, 1], 5))}
    ds = tokds.save_token_dataset(tmp_path / "ds", splits, ["a", "b"], meta, source="synthetic")
    tis = rng.integers(0, 4, (120, 8, 8)).astype(float)  # tied scores within a map
    for rows in [None, *(rng.integers(0, 120, 120) for _ in range(20))]:
        _, want = bias.select_attribute_tokens(ds, tis, 5, 20, specificity, rows=rows)
        got = bias.attribute_token_ids(ds, tis, 5, 20, specificity, rows=rows)
        assert sorted(got) == sorted(want) and all(np.array_equal(got[c], want[c]) for c in want)
