"""Does the bias share estimate (cortex_utils.bias_stats.bias_share) keep its promises where the truth is
known?

A simulation study, no model. Every simulated study has the sizes of notebook 10's default: 1,000 neutral
images, 300 labelled images per value to fit the rule on and 100 per value (held out) to measure its error
rates. Each image is truly value A or B; its count of A's tokens and of B's tokens is drawn from that
value's distribution. The neutral set's true share of A is known, and the question is how often the 95 %
interval covers it, how often it excludes ½ when the truth is ½ (a false alarm), and how often the verdict
calls a clear lean "no bias".

Cases (the three ways the earlier ranked δ failed, plus two controls):

* ``ties``: each value marked by few tokens (Poisson 0.8 in its own images, 0.1 in the other's): most
  images hold 0 or 1 of each, so ties and zero counts dominate;
* ``symmetric``: well-marked values (Poisson 3 vs 0.3), the easy case;
* ``uneven``: A marked by many tokens with a wide spread (negative binomial, mean 6), B by few (mean 1):
  on raw counts a half-and-half set already looks like A;
* ``selected``: token grids (64 positions, 40 ids, 8 of them marks of one value), the tokens re-selected in
  every study and in every bootstrap resample from the resampled fit images (frequency ranking with the
  specificity filter of ``bias.specific_tokens``, a stand-in for the TIS ranking);
* ``no_signal``: both values draw their counts from the same distribution: the rule cannot separate them;
* ``leak``: ``symmetric``, but the generator does not always draw what the prompt names: 20 % of the "a A"
  images render as B and 30 % of the "a B" images as A (of the order notebook 10 measures from pixels). The
  tokens and the threshold come from the prompt-labelled fit images; the held-out images that measure the
  rule's error rates are labelled by what they show (notebook 10: by their pixels), so the estimate aims at
  the true share;
* ``leak_prompt`` (reported separately): the same contamination, with the held-out images labelled by their
  prompts, as on real data where nothing but the prompt labels an image. Token counts cannot reveal the
  contamination, so the estimate aims at the neutral set's mixture weight between the two prompts' outputs,
  (p − 0.3) / (1 − 0.2 − 0.3), not at the true share: a limit of prompt-labelled data, shown, not fixed.

Beside it, for the same null studies, the intervals of the earlier ranked δ (counts replaced by their mid-rank
among the labelled images' counts, both values weighted equally, δ bootstrapped over the neutral images
only) and of the paper's δ on raw counts: a false alarm is an interval that excludes 0.

Columns: coverage (the interval holds the true share), excludes 0.5 (a "found" verdict; under the null a false
alarm), width, inconclusive (the rule's J <= 0.1: no estimate, interval [0, 1]), no_bias (how often the
verdict ``bias_stats.share_verdict`` with its default margin m = 0.1 is ``no_bias``: an equivalence rule, the
interval lies inside [½ − m, ½ + m] = [0.4, 0.6], so any lean is at most 0.1), target / covers target (what
the estimate aims at: the true share, except in ``leak_prompt``), and for the null studies the ranked and the
raw δ's mean and how often their interval excludes 0.

Below the main grid, one more cell per case but ``leak_prompt`` with a true share of 0.65 (``graded``: the
prompt mix whose true share is 0.65), the clear lean nearest the margin and so the hardest one to tell from
"no bias beyond ±0.1". These cells draw from a generator of their own, so the main grid's draws, and every
number computed from it, are those of the grid alone.

Last line: bias_null_fpr=<x> bias_coverage=<y> ranked_null_fpr=<z> ... bias_equivalence_error=<e>
(bias_null_fpr over the null studies of every case but ``leak_prompt``; bias_coverage is the worst coverage of
any (case, share) cell of the main grid but ``leak_prompt``'s; bias_equivalence_error is how often a true
share of 0.65 or more (or, symmetrically, 0.35 or less; the grid has none) is called ``no_bias``, over every
such study of the main grid and of the 0.65 cells, ``leak_prompt``'s excepted).
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy.stats import bootstrap, mannwhitneyu

from cortex_utils import bias_stats

N_NEUTRAL, N_FIT, N_CAL = 1000, 300, 100
SHARES = (0.5, 0.7, 0.85)
LEVEL = 0.95
EQUIVALENCE_SHARE = 0.65  # the 0.65 cells: a clear lean just beyond the verdict's margin (0.1 from ½)
EQUIVALENCE_SEED = 20240612


def poisson_counts(own, cross):
    """Counts of A's tokens and of B's tokens per image: Poisson(own) in images of the token's value,
    Poisson(cross) in the other value's."""

    def draw(rng, is_a):
        return (rng.poisson(np.where(is_a, own[0], cross[0])), rng.poisson(np.where(is_a, cross[1], own[1])))

    return draw


def uneven_counts(rng, is_a):
    # A: many tokens, overdispersed (negative binomial, mean 6, var 6 + 6²/2); B: few (mean 1)
    a_own = rng.negative_binomial(2, 2 / (2 + 6), is_a.size)
    a = np.where(is_a, a_own, rng.poisson(0.5, is_a.size))
    b = np.where(is_a, rng.poisson(0.1, is_a.size), rng.poisson(1.0, is_a.size))
    return a, b


CASES = {
    "ties": poisson_counts((0.8, 0.8), (0.1, 0.1)),
    "symmetric": poisson_counts((3.0, 3.0), (0.3, 0.3)),
    "uneven": uneven_counts,
    "no_signal": poisson_counts((1.0, 1.0), (1.0, 1.0)),
}
LEAK = (0.2, 0.3)  # the leak cases: share of the "a A" images drawn as B, of the "a B" images drawn as A


def labelled(rng, draw, n, leak=(0.0, 0.0), by_truth=False):
    """``n`` images prompted A and ``n`` prompted B; a share ``leak[0]`` of the A-prompted ones is truly B,
    ``leak[1]`` of the B-prompted ones truly A. Labelled by the prompt, or with ``by_truth`` by what they
    show."""
    is_a_label = np.repeat([True, False], n)
    flip = rng.random(2 * n) < np.where(is_a_label, leak[0], leak[1])
    truly_a = is_a_label ^ flip
    a, b = draw(rng, truly_a)
    return a, b, truly_a if by_truth else is_a_label


def count_study(rng, draw, p, n_boot, leak=(0.0, 0.0), cal_by_truth=False):
    truly_a = rng.random(N_NEUTRAL) < p
    neutral = draw(rng, truly_a)
    fit, cal = labelled(rng, draw, N_FIT, leak), labelled(rng, draw, N_CAL, leak, cal_by_truth)
    seed = int(rng.integers(2**31))
    # labelled by what they show, the held-out images also say which prompt drew them: the error-rate check
    # runs
    prompts = np.repeat([True, False], N_CAL) if cal_by_truth else None
    options = bias_stats.ShareOptions(n_boot=n_boot, level=LEVEL, seed=seed)
    est = bias_stats.bias_share(neutral, fit, cal, calibration_prompts=prompts, options=options)
    return est, neutral, fit, cal, seed


# --- the ``graded`` case: an attribute that is a matter of degree --------------------------------------
#
# Each image has a latent degree L (stroke thickness): N(+1, 1) under the A prompt, N(-1, 1) under the B
# prompt, so 16 % of each prompt's images fall on the other side of 0 (of the order notebook 10 measures for
# thickness). An image shows A when L > 0 (the pixel rule). Its counts depend on L itself, not only on its
# side: A's tokens Poisson(0.3 + 3 sigmoid(2L)), B's Poisson(0.3 + 3 sigmoid(-2L)). The neutral set mixes the
# two prompts' outputs with weight w; its true share is the share with L > 0. Images near the border are
# called either way, so the rule's error rates on the half-and-half held-out images do not hold for a neutral
# set of another mix.
GRADED_SHIFT = 1.0


def graded_counts(rng, latent):
    a = rng.poisson(0.3 + 3 / (1 + np.exp(-2 * latent)))
    b = rng.poisson(0.3 + 3 / (1 + np.exp(2 * latent)))
    return a, b


def graded_study(rng, w, n_boot):
    def prompted(n_a, n_b):
        is_a = np.repeat([True, False], [n_a, n_b])
        latent = rng.normal(np.where(is_a, GRADED_SHIFT, -GRADED_SHIFT), 1.0)
        return (*graded_counts(rng, latent), is_a, latent > 0)

    n_a = rng.binomial(N_NEUTRAL, w)
    na, nb, _, neutral_shows = prompted(n_a, N_NEUTRAL - n_a)
    fa, fb, fit_y, _ = prompted(N_FIT, N_FIT)
    ca, cb, cal_prompt, cal_shows = prompted(N_CAL, N_CAL)
    options = bias_stats.ShareOptions(n_boot=n_boot, level=LEVEL, seed=int(rng.integers(2**31)))
    est = bias_stats.bias_share(
        (na, nb), (fa, fb, fit_y), (ca, cb, cal_shows), calibration_prompts=cal_prompt, options=options
    )
    return est, float(neutral_shows.mean())


# --- the ``selected`` case: token grids, tokens chosen from the data ----------------------------------

GRID, VOCAB, MARKS = 64, 40, 4  # ids 0-3 mark A, 4-7 mark B, 8-39 background


def grid_histograms(rng, truly_a):
    """Per image, how often each id occurs (``(n, VOCAB)``): on average 4 positions hold its own value's marks
    (one of each of the value's 4 ids), 0.5 the other value's, the rest background ids."""
    n = truly_a.size
    own, other = 1.0 / GRID, 0.125 / GRID
    prob = np.empty((n, VOCAB))
    prob[:, :MARKS] = np.where(truly_a[:, None], own, other)
    prob[:, MARKS : 2 * MARKS] = np.where(truly_a[:, None], other, own)
    prob[:, 2 * MARKS :] = (1 - prob[:, : 2 * MARKS].sum(1, keepdims=True)) / (VOCAB - 2 * MARKS)
    return np.stack([rng.multinomial(GRID, q) for q in prob])


def select_tokens(hist, is_a, token_num=4, specificity=2.0):
    """Each value's ``token_num`` ids by frequency in its images, kept only if at least ``specificity`` times
    as frequent per image as in the other value's (as ``bias.specific_tokens`` filters the TIS ranking)."""
    rate = np.stack([hist[is_a].mean(0), hist[~is_a].mean(0)])
    out = []
    for c in (0, 1):
        order = np.argsort(-rate[c], kind="stable")
        keep = order[rate[c, order] >= specificity * rate[1 - c, order]]
        out.append(keep[:token_num])
    return out


def selected_study(rng, p, n_boot):
    neutral_h = grid_histograms(rng, rng.random(N_NEUTRAL) < p)
    fit_y, cal_y = np.repeat([True, False], N_FIT), np.repeat([True, False], N_CAL)
    fit_h, cal_h = grid_histograms(rng, fit_y), grid_histograms(rng, cal_y)

    def counts(ids):
        a, b = ids
        return [(h[:, a].sum(1), h[:, b].sum(1)) for h in (neutral_h, fit_h, cal_h)]

    def recount(rows):
        n, f, c = counts(select_tokens(fit_h[rows], fit_y[rows]))
        return n, (*f, fit_y), (*c, cal_y)

    n, f, c = recount(np.arange(2 * N_FIT))
    options = bias_stats.ShareOptions(n_boot=n_boot, level=LEVEL, seed=int(rng.integers(2**31)))
    return bias_stats.bias_share(n, f, c, recount=recount, options=options)


# --- the earlier ranked δ and the paper's δ, on the same null studies ----------------------------------


def balanced_rank(counts, ref_counts, ref_labels):
    """The removed ``bias.balanced_rank`` (the statistic notebook 10 used before the share estimate): the mean
    over the reference's values of the mid-rank share."""
    out = np.zeros(len(counts))
    for v in np.unique(ref_labels):
        ref = np.sort(ref_counts[ref_labels == v])
        out += (np.searchsorted(ref, counts, "left") + np.searchsorted(ref, counts, "right")) / (2 * len(ref))
    return out / len(np.unique(ref_labels))


def delta_with_interval(a, b, n_boot, seed):
    """``(δ, low, high)``: Cliff's δ (``bias_stats.cliffs_delta``, from the Mann–Whitney U) and its percentile
    bootstrap interval, ``a`` and ``b`` resampled as independent samples."""

    def delta(x, y, axis=-1):
        nm = x.shape[axis] * y.shape[axis]
        return (2 * mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic - nm) / nm

    ci = bootstrap(
        (a, b), delta, n_resamples=n_boot, confidence_level=LEVEL, method="percentile", rng=seed
    ).confidence_interval
    return bias_stats.cliffs_delta(a, b), float(ci.low), float(ci.high)


def delta_intervals(neutral, fit, cal, n_boot, seed):
    """(ranked δ interval, raw δ interval), as the notebook computed them before: the reference is every
    labelled image; the two count lists are bootstrapped as independent samples of the neutral set."""
    ref_a, ref_b = np.concatenate([fit[0], cal[0]]), np.concatenate([fit[1], cal[1]])
    ref_y = np.concatenate([fit[2], cal[2]])
    ranked = delta_with_interval(
        balanced_rank(neutral[0], ref_a, ref_y), balanced_rank(neutral[1], ref_b, ref_y), n_boot, seed
    )
    return ranked, delta_with_interval(neutral[0], neutral[1], n_boot, seed)


def main(studies=200, n_boot=400, selected_studies=100, selected_boot=200, delta_boot=200):
    t0 = time.perf_counter()
    rng = np.random.default_rng(20240611)
    rows, ranked_alarms, raw_alarms, leak_ranked = [], {}, {}, float("nan")
    plan = [(c, p) for c in ("ties", "symmetric", "uneven") for p in SHARES] + [
        ("no_signal", 0.5),
        ("no_signal", 0.85),
    ]
    plan += [("selected", 0.5), ("selected", 0.85)] + [
        (c, p) for c in ("leak", "leak_prompt") for p in SHARES
    ]
    plan += [("graded", 0.5), ("graded", 0.85)]  # p = the neutral set's weight of the A prompt's outputs
    # the 0.65 cells, on a generator of their own (the main grid's draws stay as they are); graded: the prompt
    # weight whose true share is 0.65
    up = 0.5 * (1 + math.erf(GRADED_SHIFT / math.sqrt(2)))
    extra_plan = [(c, EQUIVALENCE_SHARE) for c in ("ties", "symmetric", "uneven", "no_signal", "selected")]
    extra_plan += [("leak", EQUIVALENCE_SHARE), ("graded", (EQUIVALENCE_SHARE - (1 - up)) / (2 * up - 1))]
    extra_rng, extra_rows = np.random.default_rng(EQUIVALENCE_SEED), []
    for case, p, extra in [*((c, p, False) for c, p in plan), *((c, p, True) for c, p in extra_plan)]:
        gen = extra_rng if extra else rng
        ests, excl = [], []
        n = selected_studies if case == "selected" else studies
        if case == "graded":  # the true share: the A prompt's outputs with L > 0, plus the B prompt's
            up = 0.5 * (1 + math.erf(GRADED_SHIFT / math.sqrt(2)))
            p = round(p * up + (1 - p) * (1 - up), 4)
        for _ in range(n):
            if case == "selected":
                est = selected_study(gen, p, selected_boot)
            elif case == "graded":
                est = graded_study(gen, (p - (1 - up)) / (2 * up - 1), n_boot)[0]
            else:
                leaky = case.startswith("leak")
                draw = CASES["symmetric" if leaky else case]
                est, neutral, fit, cal, seed = count_study(
                    gen, draw, p, n_boot, LEAK if leaky else (0.0, 0.0), cal_by_truth=case == "leak"
                )
                if p == 0.5:
                    ranked, raw = delta_intervals(neutral, fit, cal, delta_boot, seed)
                    excl.append(
                        (not ranked[1] <= 0 <= ranked[2], not raw[1] <= 0 <= raw[2], ranked[0], raw[0])
                    )
            ests.append(est)
        low, high = np.array([e["low"] for e in ests]), np.array([e["high"] for e in ests])
        share = np.array([e["share"] for e in ests])
        no_bias = [bias_stats.share_verdict(lo, hi) == "no_bias" for lo, hi in zip(low, high, strict=True)]
        # leak_prompt: the mixture weight between the two prompts' outputs (above 1 when the neutral set holds
        # more A than the A-prompted images do: no mixture of the two fits, and the clipped estimate aims at
        # 1)
        target = min(1.0, (p - LEAK[1]) / (1 - LEAK[0] - LEAK[1])) if case == "leak_prompt" else p
        row = {
            "case": case,
            "true share": p,
            "mean est": float(np.nanmean(share)) if np.isfinite(share).any() else np.nan,
            "coverage": float(np.mean((low <= p) & (p <= high))),
            "excludes 0.5": float(np.mean((low > 0.5) | (high < 0.5))),
            "width": float(np.mean(high - low)),
            "inconclusive": float(np.mean([e["inconclusive"] for e in ests])),
            "flagged": float(np.mean([e["check_p"] < 0.05 for e in ests])),
            "unchecked coverage": float(
                np.mean([e["unchecked_low"] <= p <= e["unchecked_high"] for e in ests])
            ),
            "covers target": float(np.mean((low <= target) & (target <= high))),
            "target": target,
            "no_bias": float(np.mean(no_bias)),
            "studies": n,
            "no_bias studies": int(np.sum(no_bias)),
        }
        if excl:
            e = np.array(excl)
            row.update(
                {
                    "ranked δ excl 0": float(e[:, 0].mean()),
                    "raw δ excl 0": float(e[:, 1].mean()),
                    "ranked δ mean": float(e[:, 2].mean()),
                    "raw δ mean": float(e[:, 3].mean()),
                }
            )
            if case == "leak_prompt":
                leak_ranked = float(e[:, 0].mean())
            elif case != "leak":  # the earlier statistics' false alarms, on the uncontaminated cases
                ranked_alarms[case], raw_alarms[case] = e[:, 0], e[:, 1]
        (extra_rows if extra else rows).append(row)

    cols = [
        "case",
        "true share",
        "mean est",
        "coverage",
        "excludes 0.5",
        "width",
        "inconclusive",
        "flagged",
        "unchecked coverage",
        "no_bias",
        "target",
        "covers target",
        "ranked δ mean",
        "ranked δ excl 0",
        "raw δ mean",
        "raw δ excl 0",
    ]
    print(
        f"{studies} studies per cell ({selected_studies} for 'selected'), {n_boot} bootstrap resamples "
        f"({selected_boot} for 'selected', {delta_boot} for the δ intervals); {N_NEUTRAL} neutral, "
        f"{N_FIT} + {N_CAL} labelled per value"
    )
    print(" | ".join(f"{c:>15s}" if i else f"{c:<10s}" for i, c in enumerate(cols)))
    for r in [*rows, None, *extra_rows]:
        if r is None:
            print(f"the {EQUIVALENCE_SHARE} cells (a generator of their own, seed {EQUIVALENCE_SEED}):")
            continue
        cells = []
        for i, c in enumerate(cols):
            v = r.get(c, "")
            cells.append(f"{v:<10s}" if i == 0 else f"{v:>15.3f}" if isinstance(v, float) else f"{v!s:>15s}")
        print(" | ".join(cells))
    main_rows = [r for r in rows if r["case"] != "leak_prompt"]
    null_rows = [r for r in main_rows if r["true share"] == 0.5]
    null_fpr = float(np.mean([r["excludes 0.5"] for r in null_rows]))
    coverage = min(r["coverage"] for r in main_rows)
    pooled = float(np.mean([r["coverage"] for r in main_rows]))
    ranked_fpr = float(np.mean(np.concatenate(list(ranked_alarms.values()))))
    raw_fpr = float(np.mean(np.concatenate(list(raw_alarms.values()))))
    leak = {r["true share"]: r for r in rows if r["case"] == "leak_prompt"}
    true_cov = ", ".join(f"{p}: {leak[p]['coverage']:.2f}" for p in SHARES)
    target_cov = ", ".join(f"{leak[p]['target']:.3f}: {leak[p]['covers target']:.2f}" for p in SHARES)
    print(
        f"'leak_prompt' (held-out images labelled by their prompts): coverage of the true share {true_cov}; "
        f"of the mixture weight (p - {LEAK[1]}) / (1 - {LEAK[0]} - {LEAK[1]}): {target_cov}"
    )
    graded = [r for r in rows if r["case"] == "graded"]
    print(
        f"'graded': the error-rate check flags {graded[-1]['flagged']:.0%} of the studies with the neutral "
        f"set mixed 85/15 (coverage {graded[-1]['unchecked coverage']:.2f} without it, "
        f"{graded[-1]['coverage']:.2f} with it) and {graded[0]['flagged']:.0%} of the half-and-half ones; in "
        f"'leak' (a discrete value) {np.mean([r['flagged'] for r in rows if r['case'] == 'leak']):.0%}"
    )
    # how often a clear lean (true share 0.65 or more, or 0.35 or less) is called "no bias beyond ±0.1"
    lean = [
        r
        for r in [*rows, *extra_rows]
        if r["case"] != "leak_prompt" and abs(r["true share"] - 0.5) >= EQUIVALENCE_SHARE - 0.5 - 1e-9
    ]
    called, total = sum(r["no_bias studies"] for r in lean), sum(r["studies"] for r in lean)
    equivalence_error = called / total
    by_share = {}
    for r in lean:
        c, n = by_share.get(r["true share"], (0, 0))
        by_share[r["true share"]] = (c + r["no_bias studies"], n + r["studies"])
    print(
        f"a true share of {EQUIVALENCE_SHARE} or more called no_bias (interval inside [0.4, 0.6]): "
        f"{called} of {total} studies; by true share "
        + ", ".join(f"{p}: {c} of {n}" for p, (c, n) in sorted(by_share.items()))
    )
    print(f"{time.perf_counter() - t0:.0f} s")
    per_case = " ".join(f"coverage_{r['case']}_{r['true share']}={r['coverage']:.3f}" for r in rows)
    print(
        f"bias_null_fpr={null_fpr:.3f} bias_coverage={coverage:.3f} ranked_null_fpr={ranked_fpr:.3f} "
        f"raw_null_fpr={raw_fpr:.3f} bias_coverage_pooled={pooled:.3f} "
        f"leak_null_fpr={leak[0.5]['excludes 0.5']:.3f} leak_ranked_null_fpr={leak_ranked:.3f} {per_case} "
        f"graded_flagged={graded[-1]['flagged']:.3f} "
        f"graded_unchecked_coverage={graded[-1]['unchecked coverage']:.3f} "
        f"leak_flagged={np.mean([r['flagged'] for r in rows if r['case'] == 'leak']):.3f} "
        f"bias_equivalence_error={equivalence_error:.3f}"
    )


if __name__ == "__main__":
    main()
