"""What the notebooks record and conclude: metric dicts and verdict prose written from a run's numbers."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cortex_utils.bias_stats import share_verdict

from . import REPO_ROOT
from .artifacts import read_json
from .notebook import parameter_defaults


def _metric(x):
    return None if not np.isfinite(x) else round(float(x), 4)


def headline_metrics(deltas: pd.DataFrame, bias_types, biased_digit: dict, control_digit: int) -> dict:
    """Notebook 10's recorded numbers from its ``deltas`` table (one row per study), per bias type for the
    biased digit and (suffix ``_control``) the control digit. Rounded to 4 places; NaN becomes None."""
    metrics = {}
    for b in bias_types:
        rows = deltas[deltas["bias"] == b]
        for which, digit in (("", biased_digit[b]), ("_control", control_digit)):
            row = rows[rows["digit"] == digit].iloc[0]
            metrics |= {
                f"bias_{b}_share_est{which}": _metric(row["share"]),
                f"bias_{b}_share_low{which}": _metric(row["share_low"]),
                f"bias_{b}_share_high{which}": _metric(row["share_high"]),
                f"bias_{b}_share_truth{which}": _metric(row["pixel truth"]),
                f"bias_{b}_share_check_p{which}": _metric(row["check_p"]),
                f"bias_{b}_share_unchecked_low{which}": _metric(row["unchecked_low"]),
                f"bias_{b}_share_unchecked_high{which}": _metric(row["unchecked_high"]),
                f"bias_{b}_truth_share{which}": _metric(row["pixel truth"]),
                f"bias_{b}_delta_{'control' if which else 'biased'}": _metric(row["delta"]),
                f"bias_{b}_iem_accuracy{which}": round(float(row["iem_accuracy"]), 4),
                f"bias_{b}_verdict{which}": str(row["verdict"]),
            }
    return metrics


def real_data_metrics(deltas: pd.DataFrame) -> dict:
    """Notebook 13's recorded numbers from its ``deltas`` table (one row per bias type), as
    ``bias_real_<type>_...`` (a run can hold notebook 10's too). Rounded as ``headline_metrics``."""
    metrics = {}
    for _, row in deltas.iterrows():
        b = row["bias"]
        metrics |= {
            f"bias_real_{b}_delta": _metric(row["delta"]),
            f"bias_real_{b}_share_est": _metric(row["share"]),
            f"bias_real_{b}_share_low": _metric(row["share_low"]),
            f"bias_real_{b}_share_high": _metric(row["share_high"]),
            f"bias_real_{b}_iem_accuracy": round(float(row["iem_accuracy"]), 4),
        }
    return metrics


def _interval_text(row) -> str:
    if not np.isfinite(row["share"]):
        return "no estimate: the token rule cannot separate the values (interval [0, 1])"
    text = f"share of {row['toward']} {row['share']:.2f} [{row['share_low']:.2f}, {row['share_high']:.2f}]"
    if row["inconclusive"]:
        text += (
            f": no interval, because {row['why']} (before that check: [{row['unchecked_low']:.2f}, "
            f"{row['unchecked_high']:.2f}])"
        )
    return text


def verdict_words(verdict: str, margin: float = 0.1) -> str:
    """A ``share_verdict`` as the pages write it: ``no_bias`` becomes "no bias beyond ±margin"."""
    return f"no bias beyond ±{margin:g}" if verdict == "no_bias" else verdict


def verdict_line(row, bias_type: str, margin: float = 0.1, biased: bool | None = None) -> str:
    """One markdown line of verdict for a row of a ``deltas`` table: the share's interval, ``share_verdict``
    and the paper's δ. ``biased`` (planted world: the biased digit's row, or the control's) adds whether the
    planted answer came out and the pixel truth lies in the interval; ``None``: real data, no truth."""
    lo, hi = row["share_low"], row["share_high"]
    verdict = share_verdict(lo, hi, margin)
    shown = verdict_words(verdict, margin)
    text = f"- **{bias_type}, {row['neutral set']}**: {_interval_text(row)} — **{shown}**"
    if verdict == "found":
        text += f" (a lean {'toward' if lo > 0.5 else 'away from'} {row['toward']})"
    if biased is not None:
        if biased:
            found = "the planted bias is found" if lo > 0.5 else "**the estimate leans the other way round**"
            said = {"found": found, "no_bias": "**the planted bias is missed**"}
            text += ": " + said.get(verdict, "the data cannot decide")
        else:
            said = {"found": "**a bias is reported where the training data had none**"}
            said["no_bias"] = "no bias reported, as it should be"
            text += ": " + said.get(verdict, "the data cannot rule out a bias")
        truth = row["pixel truth"]
        text += f". Pixel truth {truth:.2f} (trained {row['trained share']:.2f}): "
        text += (
            "inside the interval" if lo <= truth <= hi else "**outside the interval: the estimate misses it**"
        )
        if row["inconclusive"] and np.isfinite(row["share"]):
            inside = row["unchecked_low"] <= truth <= row["unchecked_high"]
            text += f" (the interval before the check {'holds it' if inside else '**would have missed it**'})"
    return text + (
        f". The paper's δ {row['delta']:+.2f} [{row['delta_low']:+.2f}, {row['delta_high']:+.2f}] "
        f"(the original code's half scale: {row['delta_paper_half_scale']:+.2f})"
    )


def verdict_text(
    verdict: pd.DataFrame, recommended: str, default: str, control: str, space: str, n_images: int, steps: int
) -> list[str]:
    """``sanity.recommend``'s verdict as Markdown lines: one per method, one on the random ``control`` (it
    should pass randomization and fail faithfulness), and the recommendation against ``default``, the run's
    method (deletion AUC in ``space``; ``n_images`` curve images of ``steps`` steps)."""
    lines = []
    for m, r in verdict.iterrows():
        role = " (the run's method)" if m == default else " (control)" if m == control else ""
        who = f"**{m}**{role}"
        lines.append(f"* {who}: " + ("passes both conditions" if r["passes"] else f"fails: {r['failed']}"))
    cr = verdict.loc[control]
    if cr["randomization_ok"] and not cr["faithful"]:
        lines.append(
            f"The random control passes randomization (abs. rank corr. {cr['abs_rank_corr_full']:.3f} full, "
            f"{cr['abs_rank_corr_data']:.3f} data) and fails faithfulness ({cr['deletion_ratio']:.2f} × "
            f"random), as a method that knows nothing must: randomization alone would have recommended noise."
        )
    else:
        lines.append(
            f"**Warning**: the random control {'passes' if cr['passes'] else 'is judged'} oddly "
            f"(randomization {'ok' if cr['randomization_ok'] else 'failed'}, deletion "
            f"{cr['deletion_ratio']:.2f} × random): with {n_images} curve images and {steps} steps the "
            "checks are too coarse to separate noise from a method."
        )
    if recommended == default:
        lines.append(f"Recommendation: keep **{default}**.")
    elif recommended != "none":
        r, d = verdict.loc[recommended], verdict.loc[default]
        lines.append(
            f"Recommendation: **{recommended}**: abs. rank correlation {r['abs_rank_corr_full']:.2f} (full) "
            f"/ {r['abs_rank_corr_data']:.2f} (data), deletion AUC ({space}) {r['deletion_auc']:.3f} = "
            f"{r['deletion_ratio']:.2f} × random (the run's method {d['deletion_auc']:.3f}). "
            f"Passing: {', '.join(m for m in verdict.index[verdict.passes] if m != control)}."
        )
    else:
        lines.append(
            "Recommendation: **none**. No method passes both conditions on this run, so none of the maps, "
            "the TIS included, can be read as an explanation of what the IEM learned; read them with care."
        )
    return lines


def carried_verdict(run_dir, method: str) -> dict:
    """Notebook 11's verdict on ``method`` for a notebook that states it before (or without) running 11: its
    numbers from ``<run_dir>/metrics.json``, else from the reference run (``docs/expected_metrics.json``;
    ``source`` says which), judged by notebook 11's ``bars`` (its default, or the run's parameters.yaml)."""
    bars = ast.literal_eval(parameter_defaults("11_trust_the_explanations")["bars"])
    params = Path(run_dir) / "parameters.yaml"
    if params.exists():
        given = yaml.safe_load(params.read_text()).get("parameters", {}) or {}
        bars.update((given.get("11_trust_the_explanations") or {}).get("bars", {}))
    space = bars["space"]
    keys = {
        "rank_corr_full": f"sanity_abs_rank_corr_{method}",
        "rank_corr_data": f"sanity_data_abs_rank_corr_{method}",
        "deletion_auc": f"deletion_auc_{method}_{space}",
        "random_auc": f"deletion_auc_random_{space}",
        "recommended": "recommended_method",
    }
    metrics = read_json(Path(run_dir) / "metrics.json", default={})
    source = "this run's metrics.json"
    if not all(k in metrics for k in keys.values()):
        expected = read_json(REPO_ROOT / "docs" / "expected_metrics.json")["checked"]
        metrics = {k: v["value"] for k, v in expected.items()}
        source = "the reference default run, docs/expected_metrics.json: notebook 11 has not run here"
    out = {name: metrics[k] for name, k in keys.items()}
    out["deletion_ratio"] = out["deletion_auc"] / out["random_auc"]
    out["randomization_ok"] = max(out["rank_corr_full"], out["rank_corr_data"]) <= bars["max_rank_corr"]
    out["faithful"] = out["deletion_ratio"] <= bars["max_deletion_ratio"]
    return {"source": source, **out, **bars}


def carried_verdict_text(v: dict, method: str, what: str = "the TIS maps") -> str:
    """``carried_verdict`` in a few sentences of Markdown, with how to read ``what`` in its light."""
    verdict = f"it recommends **{v['recommended']}**"
    if v["recommended"] == "none":
        verdict = "no attribution passes both checks, the TIS included"
    head = (
        f"Notebook 11 finds that {verdict} (numbers from {v['source']}). "
        "**Randomization** (Adebayo et al. 2018): "
        f"{method}'s maps keep a rank correlation of {v['rank_corr_full']:.2f} with those of an IEM with "
        f"random weights and {v['rank_corr_data']:.2f} with one trained on shuffled labels (bar: "
        f"≤ {v['max_rank_corr']:g}). **Deletion**: masking the top positions first leaves an area under the "
        f"class-probability curve of {v['deletion_ratio']:.2f} × a random order's (bar: "
        f"≤ {v['max_deletion_ratio']:g})."
    )
    reading = {
        (False, True): f"So the top positions of {what} hold evidence the decision uses, but much of a map's "
        "shape follows the image, not what the IEM learned: read the few highest positions, not the pattern.",
        (True, False): f"So {what} follow what the IEM learned, but their top positions matter little more "
        "than random ones: read their ranking with care.",
        (False, False): f"Neither check supports {what}: treat them as hypotheses for masking (notebooks 07, "
        "08) to test.",
        (True, True): f"Both checks support {what}.",
    }[v["randomization_ok"], v["faithful"]]
    return head + " " + reading


def _compare(diff, more: str, less: str, same: str) -> str:
    return more if diff[1] > 0 else less if diff[2] < 0 else same


def views_verdict(v: dict, alpha: float = 0.05) -> str:
    """One paragraph comparing the saliency and the optimisation views, each comparison worded by the numbers
    in ``v`` (a p-value below ``alpha``, or a ``(mean, low, high)`` difference interval that excludes 0).

    ``v``: ``overlap``, ``chance``, ``p_value``, ``overlap_random``; mean target probabilities ``before``,
    ``optimised``, ``concept_fill``, ``random_fill``; differences ``opt_minus_fill``, ``fill_minus_random``.
    Optional: ``overlap_other``, ``other_chance``, ``target_minus_other`` (against the other classes' concept
    tokens); ``frequency_fill``, ``fill_minus_frequency``; ``per_method`` ({method: (overlap, chance, p)}).
    """

    def iv(d):
        return f"difference {d[0]:+.2f}, 95 % interval [{d[1]:+.2f}, {d[2]:+.2f}]"

    shared = v["p_value"] < alpha
    text = (
        f"Of the distinct ids the optimiser put into the region, {v['overlap']:.0%} are the target's concept "
        f"tokens, against {v['chance']:.0%} expected by chance from the codebook's usage (p = "
        f"{v['p_value']:.3f}; random ids: {v['overlap_random']:.0%}): {'more' if shared else 'not more'} "
        "than chance"
    )
    if v.get("per_method"):
        each = [f"{m} {o:.0%}, chance {c:.0%}, p = {p:.3f}" for m, (o, c, p) in v["per_method"].items()]
        text += f" (per method: {'; '.join(each)})"
    if "overlap_other" in v:  # the target's own tokens, or any digit's strokes?
        lean = _compare(
            v["target_minus_other"],
            "more common among them than",
            "less common among them than",
            "not distinguishably more common among them than",
        )
        # "more common than" a share below chance: say so
        chance = "below their chance of" if v["overlap_other"] < v["other_chance"] else "chance"
        text += (
            f"; the target's concept tokens are {lean} the other classes' ({v['overlap_other']:.0%} on "
            f"average, {chance} {v['other_chance']:.0%}; {iv(v['target_minus_other'])})"
        )
    fill = _compare(v["fill_minus_random"], "above", "below", "not distinguishable from")
    text += (
        f". Placed where they usually sit in the target's training images, the concept tokens alone give the "
        f"evaluators a target probability of {v['concept_fill']:.2f} (before: {v['before']:.2f}), {fill} "
        f"random ids from the codebook's usage ({v['random_fill']:.2f}; {iv(v['fill_minus_random'])}). "
    )
    opt = _compare(
        v["opt_minus_fill"], "more than", "less than", "about as much as (not distinguishable from)"
    )
    text += (
        f"The optimised region gives {v['optimised']:.2f}: {opt} the concept fill "
        f"({iv(v['opt_minus_fill'])}). "
    )
    opt_more, opt_less = v["opt_minus_fill"][1] > 0, v["opt_minus_fill"][2] < 0
    fill_works = v["fill_minus_random"][1] > 0
    if opt_more:
        text += (
            "To make the target appear, the optimisation tells more: it finds what this IEM needs in the "
            "region beyond the tokens counted in real images."
        )
    elif fill_works:
        text += (
            f"To make the target appear, saliency's tokens tell {'more' if opt_less else 'as much'}: placed, "
            "they do it without any optimisation."
        )
    else:
        text += "Neither view makes the target appear beyond random ids here."
    text += " On which ids, " + (
        "the two views agree beyond chance: the optimiser is drawn to the concept tokens."
        if shared
        else "the optimisation tells more: it reaches the target mostly with ids that saliency does not "
        "count among the target's, so the concept tokens are one way to the target, not the only one the IEM "
        "accepts."
    )
    if "frequency_fill" in v:
        d = v["fill_minus_frequency"]
        if d[1] > 0:
            text += (
                " Saliency's choice of ids matters: the target's most frequent non-background ids, placed "
                f"the same way, give {v['frequency_fill']:.2f} ({iv(d)})."
            )
        else:
            text += (
                " But the target's most frequent non-background ids, placed the same way, do "
                f"{'better' if d[2] < 0 else 'about as well'} ({v['frequency_fill']:.2f}; {iv(d)}): much "
                "of the fill's effect comes from placing the target's common tokens where they sit, not from "
                "saliency's choice of them."
            )
    return text
