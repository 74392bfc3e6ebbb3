# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 16 · Bias detection, going deeper
#
# A second session on notebook 10's bias study, the step of *Concept-Centric Token Interpretation for
# Vector-Quantized Generative Models* (Yang, Shi, Du, Wu, Tan, Sun, Liu) that asks whether a generator's
# neutral prompt leans toward one value of an attribute. Notebook 10 ran it on a generator with a planted bias
# and saved what it found in the run directory: the generator, the study's generations, each value's
# attribute tokens, the stroke-width threshold that gives the truth, and its table of results. This notebook
# reads those (only the mitigation samples new images, with seeds of its own) and goes beyond the paper's
# step:
#
# 1. **what the labelled images show**: how often a generation contradicts its prompt, and the check that
#    guards the share estimate's one assumption;
# 2. **why a share and not δ alone**, and how the share's interval was validated by simulation where the
#    truth is known;
# 3. **mitigation**: if the attribute tokens carry the attribute, does a generator that may not draw them
#    lean less?

# %%
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from cortex_run import datasets as tokds
from cortex_run import evaluators, planted_bias, plots, tokenizers
from cortex_run import generation as gen
from cortex_run import mitigation as mitlib
from cortex_run.artifacts import record_metrics, registered
from cortex_run.checkpoints import read_card
from cortex_run.notebook import check_parameters, exercise, repo_path, require
from cortex_utils import bias_stats
from cortex_utils import concepts as conceptlib
from cortex_utils import vq as vqlib

# %% [markdown]
# The knobs: `mitigation` (how the control edit picks its ids, and how large a drop in digit agreement the
# verdict tolerates) and `simulation` (how many simulated studies check the share's interval, with how many
# bootstrap resamples each). Everything about the study itself comes from notebook 10.

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebook 10 (relative to the repo root)
mitigation = {"control_pool": 3, "max_digit_drop": 0.1}  # control ids: among this many of similar frequency
simulation = {"studies": 100, "n_boot": 200, "seed": 0}  # simulated studies per case and share
n_show = 8  # images per row in the figures
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "16_bias_deeper")
require(
    mitigation["control_pool"] >= 1 and 0 <= mitigation["max_digit_drop"] <= 1,
    f"mitigation: control_pool >= 1 and max_digit_drop in [0, 1], got {mitigation}",
)
require(simulation["studies"] >= 1 and simulation["n_boot"] >= 1, "simulation: studies and n_boot >= 1")
run_dir = repo_path(run_dir)
out_dir = run_dir / "bias"

# %% [markdown]
# What notebook 10 saved (its registry entries point at the files):

# %%
entry = registered(run_dir, "bias_study")
study = json.loads(Path(entry["file"]).read_text())
deltas = pd.read_csv(entry["deltas"])
tf_path = registered(run_dir, "bias_transformer")["checkpoint"]
print(f"TIS method: {study['tis_method']} (notebook 10's attribute tokens come from it)")

# %%
bias_types, planted, seed, sampling = (study[k] for k in ("bias_types", "planted", "seed", "sampling"))
control_digit = study["study_digits"]["control"]
biased_digit = {b: study["study_digits"][b] for b in bias_types}
prior = planted_bias.planted_prior(
    study["skew"], {b: study["study_digits"][b] for b in ("colour", "thickness")}, planted
)
vq = tokenizers.load_run_vq(run_dir, device)
tf = gen.load_transformer(read_card(tf_path)["config"], tf_path, vq=vq).to(device)
keys = [(b, d) for b in bias_types for d in (biased_digit[b], control_digit)]  # notebook 10's order
studies = {
    (b, d): tokds.load_token_dataset(out_dir / "data" / planted_bias.study_name(b, d)) for b, d in keys
}
neutral = planted_bias.neutral_by_digit(tokds.load_token_dataset(out_dir / "data" / "neutral"))
tokens = {key: study["tokens"][planted_bias.study_name(*key)] for key in keys}
ids = {key: {int(c): np.asarray(v, dtype=np.int64) for c, v in t.items()} for key, t in tokens.items()}
planted_label = {(b, d): planted_bias.ATTRIBUTES[b].index(planted[b]) for b, d in keys}
width_threshold = study["width_threshold"]  # thick: a stroke wider than this (pixels)
n_neutral = sum(len(z) for z in neutral.values())
print(f"{len(studies)} studies, {n_neutral} neutral generations; the generator: {Path(tf_path).name}")

# %% [markdown]
# ## The attribute tokens, as pictures
#
# What each value's first attribute tokens look like on their own (a grid filled with that one id). A token
# is a piece of texture and colour, not a digit: its meaning is where it sits.

# %%
tiles = {}
for (b, d), by_label in ids.items():
    for c, v in by_label.items():
        if len(v):
            tiles[f"{studies[(b, d)].class_names[c]} ({d})"] = conceptlib.token_tiles(vq, v[:n_show])
if tiles:
    plots.rows_of_images(tiles, ncols=n_show)

# %% [markdown]
# ## 1 · What the labelled images show
#
# A prompt names a value, but a generator need not draw it: an "a red 3" could come out green, an "a thick
# 5" thin. The share estimate measures how often its token rule errs on held-out labelled images. Were those
# labelled by their prompts, the images that contradict their prompt would count as errors of the rule, and
# the estimate would become the neutral set's *mix of the two prompts' outputs*, not the share of images that
# *show* the value. So notebook 10 labels them by their pixels (red if the stroke's mean red exceeds its
# green; thick if its mean stroke width lies above the valley of the thickness studies' width histogram).
#
# How often the labelled images contradict their prompts:

# %%
table = deltas.set_index(["bias", "digit"])[["A prompted, drawn as B", "B prompted, drawn as A"]]
table.round(3)  # measured by notebook 10 (planted_bias.drawn_as_other), from the images' pixels

# %% [markdown]
# The images drawn against their prompt also test the one assumption of the Rogan–Gladen correction
# (Rogan & Gladen 1978, *American Journal of Epidemiology*): how often the token rule calls an image A
# depends only on which value it *shows*. Among images that show the same value, the rule
# should call the A-prompted and the B-prompted ones alike; `bias_stats.error_rate_check` tests that (a
# permutation test pooled over the two values; `check_p` is its p-value). For a value that is there or not
# it should hold. When the check fails (p < 0.05) notebook 10 gives no interval ([0, 1], "inconclusive");
# the interval before the check is kept for reading. The check can only test images drawn against their
# prompt: when the table above holds almost none, it has little to test and passes; it earns its keep on a
# generator that disobeys, and on an attribute that comes in degrees:
#
# **The hard case, named.** An earlier version of this world called a real digit "thick" when it held more
# ink than most of its class: thickness as a matter of degree, as most real attributes are. A stroke just
# above the ink midpoint was then thick by pixels while its tokens looked thin, so the rule's error rates
# differed between the thick-prompted and the thin-prompted images, the check failed on both thickness sets,
# and neither got an interval. We dropped that world for one whose two values are apart by construction (a
# one-pixel skeleton against a three-pixel stroke), because a tutorial's planted world should show the
# method working where the truth is crisp. The lesson stays: on a real attribute that comes in degrees
# (skin tone, age), run the check, and expect it to fail. `benchmarks/bias_calibration.py` simulates such a
# graded attribute and reports how often the check catches it.

# %%
columns = ["check_p", "share", "share_low", "share_high", "unchecked_low", "unchecked_high", "pixel truth"]
deltas.set_index(["bias", "neutral set"])[columns].round(3)

# %% [markdown]
# The rest of the estimate, per study (columns): the share the rule calls A (`q`), its error rates on the
# held-out images (`sens`, `spec`, Youden's J = sens + spec − 1), its threshold on count A − count B, the
# share of bootstrap resamples whose rule could still separate the values, and the counts behind δ:

# %%
rest = ["q", "sens", "spec", "youden", "threshold", "informative_resamples", "tokens_a", "tokens_b"]
rest += ["mean_count_a", "mean_count_b", "delta", "delta_low", "delta_high", "iem_accuracy"]
deltas.set_index(["bias", "digit"])[rest].T.round(3).map("{:g}".format)  # counts as counts, not 16.000

# %% [markdown]
# ## 2 · Why a share, and is its interval honest?
#
# Cliff's δ (Cliff 1993, *Psychological Bulletin*) on raw counts is not a share. Two values' token sets need
# not be equally common nor their counts equally spread (a value recognised by twenty tokens against one
# recognised by three), and then a half-and-half neutral set already gets a δ well away from 0. An earlier
# version of notebook 10 ranked each value's counts against the attribute data before δ; tied counts (mostly
# zeros) then became wins or losses decided by noise, and its interval excluded 0 in most simulated
# half-and-half studies. The share estimate replaced it.
#
# Where the truth is known the claim can be tested. Below, simulated studies of notebook 10's sizes
# (`n_neutral` neutral images, `n_fit` labelled images per value to fit the rule, `n_held` per value held out:
# notebook 10's training split, and its validation and test splits together), in two
# cases: **symmetric** (each value marked by its tokens about equally: Poisson 3 in its own images, 0.3 in the
# other's) and **uneven** (A marked by many tokens with a wide spread, B by few). Each row: how often δ's
# interval excludes 0, how often the share's 95 % interval holds the true share, how often it excludes ½
# (a "found"; at a true share of ½ a false alarm), and how often it says "no bias beyond ±m" (at 0.85, an
# error). `benchmarks/bias_calibration.py` runs the full study (more
# cases: ties, leaks, graded attributes, tokens re-selected per resample).

# %% tags=["by-hand"]
rng = np.random.default_rng(simulation["seed"])


def symmetric(is_a):  # per image: (count of A's tokens, count of B's tokens)
    return rng.poisson(np.where(is_a, 3.0, 0.3)), rng.poisson(np.where(is_a, 0.3, 3.0))


def uneven(is_a):  # A: many tokens, widely spread (negative binomial, mean 6); B: few (mean 1)
    a = np.where(is_a, rng.negative_binomial(2, 0.25, is_a.size), rng.poisson(0.5, is_a.size))
    return a, np.where(is_a, rng.poisson(0.1, is_a.size), rng.poisson(1.0, is_a.size))


def labelled(draw, n):  # n images of each value, with their labels
    is_a = np.repeat([True, False], n)
    return (*draw(is_a), is_a)


# %%
rows, boot, margin = [], simulation["n_boot"], study["equivalence_margin"]
n_fit, n_held = study["attribute_per_value"][0], sum(study["attribute_per_value"][1:])
for case, draw in {"symmetric": symmetric, "uneven": uneven}.items():
    for p in (0.5, 0.85):
        for _ in range(simulation["studies"]):
            counts = draw(rng.random(study["n_neutral"]) < p)
            d = bias_stats.count_delta(*counts, n_boot=boot, seed=int(rng.integers(2**31)))
            fit, held = labelled(draw, n_fit), labelled(draw, n_held)
            options = bias_stats.ShareOptions(n_boot=boot, seed=int(rng.integers(2**31)))
            s = bias_stats.bias_share(counts, fit, held, options=options)
            rows.append(
                {
                    "case": case,
                    "true share": p,
                    "mean δ": d["delta"],
                    "δ excludes 0": d["low"] > 0 or d["high"] < 0,
                    "share covers truth": s["low"] <= p <= s["high"],
                    "share excludes ½": s["low"] > 0.5 or s["high"] < 0.5,
                    "no bias": bias_stats.share_verdict(s["low"], s["high"], margin) == "no_bias",
                }
            )
simulated = pd.DataFrame(rows).groupby(["case", "true share"]).mean()
simulated.round(3)

# %% [markdown]
# Why the uneven case fools δ, on one simulated half-and-half set: δ by hand over every pair (+1 where the A
# count is larger, −1 where smaller), checked against `bias_stats.cliffs_delta`. The A counts spread far more
# widely than the B counts, so most pairs are wins for A although exactly as many images show B as A.

# %% tags=["by-hand-check"]
is_a = np.repeat([True, False], 150)  # exactly half and half
a_u, b_u = uneven(is_a)
delta_by_hand = np.sign(a_u[:, None] - b_u[None, :]).mean()  # every (A count, B count) pair
np.testing.assert_allclose(bias_stats.cliffs_delta(a_u, b_u), delta_by_hand, rtol=0, atol=1e-12)
print(f"half-and-half, uneven tokens: δ = {delta_by_hand:+.3f} (by hand = library)")

# %% [markdown]
# ## 3 · Mitigation: editing the attribute tokens out
#
# If the planted value's attribute tokens really carry it, a generator that may not draw them should show the
# value less often: detection would then also give a cure. So the neutral prompt of each biased digit is
# sampled again with those ids **suppressed** (a logit of −∞ on them at every step; the generator draws its
# next most likely allowed id instead, `cortex_run.mitigation`), and the result is measured **from pixels**
# with the rule that gave the truth, not from tokens (a token edit scores itself well by construction).
#
# Two things could fake a success. Taking *any* ids out changes the images (the **control**: the same edit
# with as many other ids, drawn once with notebook 10's `seed`, each among the `mitigation["control_pool"]`
# ids that the unedited neutral generations use about as often as the attribute id it stands for; neither
# value's attribute ids are eligible. A draw uniform over all used ids would mostly pick rare ids and barely
# touch the images, too weak a control.) And an edit can push the attribute away by wrecking the digit: the
# independent evaluators of notebook 02 say whether each edited image still shows the prompted digit (*kept*:
# every evaluator's top class is the digit). Shares and agreements get Wilson's 95 % interval (Wilson 1927),
# changes Newcombe's (Newcombe 1998; `bias_stats`, coverage checked by simulation in
# `tests/test_mitigation.py`). The edited generations are token datasets like the study's
# (`<run_dir>/bias/data/mitigation_<type>` and `..._random`), shipped in `data/default/bias` for the default
# and sampled here when the run's attribute ids or settings differ from their card's. They are sampled with
# other seeds than the study's (`seed` + 1, + 2): with the same seed their first token would be drawn from the
# same random numbers as the unedited set's, and the sets would not be the independent samples the intervals
# of their differences assume.
#
# What to expect in this world: the look is decided before any token is drawn. The prior picks red for "a 3",
# and the prompt "a red 3" then tells the transformer to draw red, so the edit only takes away the ids the
# study found for red, not the instruction. Whether the transformer still draws red without them (with other
# ids that carry the colour) is what the measurement below shows. A generator whose bias sits in its weights,
# as DALL·E-mini's, has no such instruction to follow.

# %%
edit_ids, control_ids = {}, {}
for b in bias_types:
    key = (b, biased_digit[b])
    edit_ids[b] = ids[key][planted_label[key]]  # the planted value's tokens
    if not len(edit_ids[b]):
        print(f"{b}: the study found no {planted[b]} tokens, so there is nothing to edit out")
        continue
    both_values = np.concatenate(list(ids[key].values()))
    control_ids[b] = mitlib.control_ids(
        neutral[key[1]], edit_ids[b], both_values, seed, mitigation["control_pool"]
    )
for b in control_ids:
    z = neutral[biased_digit[b]]
    for what, suppress in (("attribute", edit_ids[b]), ("control", control_ids[b])):
        share = mitlib.token_share(z, suppress)
        print(f"{b}, {what} ids {[int(i) for i in suppress]}: {share:.1%} of the neutral grids' positions")

# %%
edited, edit_seed = {}, {"after": seed + 1, "after_random": seed + 2}  # three independent samples
for b in control_ids:
    for s, suppress in (("after", edit_ids[b]), ("after_random", control_ids[b])):
        name = f"mitigation_{b}" + ("_random" if s == "after_random" else "")
        edited[(b, s)], why = mitlib.load_or_sample_edited(
            tf, tf_path, vq, name, biased_digit[b], suppress, study["n_neutral"], prior, sampling,
            edit_seed[s], out_dir, study["regenerate"],
        )  # fmt: skip
        print(f"{b}, {s.replace('_', ' ')}: {why}")

# %% [markdown]
# Measured from pixels: the share of the planted value and the evaluators' agreement with the prompted digit,
# before (notebook 10's own neutral generations, so the share before is its pixel truth), after the edit and
# after the control edit:

# %%
judges = evaluators.load_run_evaluators(run_dir, vqlib.resolution(vq), 10, device=device)  # notebook 02's
sets = {
    b: {"before": neutral[biased_digit[b]], **{s: edited[(b, s)].tokens["neutral"] for s in mitlib.SETS[1:]}}
    for b in control_ids
}
measured = {
    b: {
        s: mitlib.measure(vq, z, biased_digit[b], b, planted[b], width_threshold, judges)
        for s, z in by_set.items()
    }
    for b, by_set in sets.items()
}
mitigation_table = {b: mitlib.summary(m) for b, m in measured.items()}
truth = deltas.set_index(["bias", "digit"])["pixel truth"]
for b, t in mitigation_table.items():  # the same pixel rule as notebook 10's truth, on the same images
    np.testing.assert_allclose(t.loc["before", "share"], truth[(b, biased_digit[b])], rtol=0, atol=1e-9)
shown = pd.concat(mitigation_table, names=["bias", "set"]).T if mitigation_table else None
shown.astype(float).round(3).map("{:g}".format) if shown is not None else None  # 1000 images, not 1000.000

# %% [markdown]
# What the edit does to the images (the first `n_show` of each set):

# %%
row_names = {"before": "before", "after": "edited", "after_random": "control"}
for b, by_set in sets.items():
    grids = {
        row_names[s]: torch.as_tensor(np.asarray(z[:n_show]), dtype=torch.long) for s, z in by_set.items()
    }
    display(Markdown(f"**{b}**, digit {biased_digit[b]}: before, edited (attribute ids out), control"))
    plots.rows_of_images({k: vqlib.decode(vq, z) for k, z in grids.items()}, ncols=n_show)
    plots.plt.show()

# %% [markdown]
# The verdict, computed from the intervals: the edit **works** when the planted share fell and ended nearer ½
# than before, when it fell further than under the control edit (the interval of the difference lies below 0),
# and when the interval of the change in digit agreement rules out drops larger than
# `mitigation["max_digit_drop"]`.

# %%
mitigation_lines = [
    mitlib.verdict(measured[b], b, planted[b], mitigation["max_digit_drop"]) for b in measured
]
mitigation_lines += [f"- **{b}**: no attribute tokens, no edit" for b in bias_types if b not in measured]
display(Markdown("\n".join(mitigation_lines)))
mitigation_metrics = {
    k: v for b in bias_types for k, v in mitlib.metrics(mitigation_table.get(b), b, measured.get(b)).items()
}

# %%
record_metrics(run_dir, **mitigation_metrics, device=device)
print(f"recorded {len(mitigation_metrics)} mitigation numbers in metrics.json")
# %% [markdown]
# ## Summary

# %%
sim = simulated.reset_index()
uneven = sim[(sim["true share"] == 0.5) & (sim["case"] == "uneven")].iloc[0]
lines = [
    f"- Labelled generations contradict their prompt in at most {table.to_numpy().max():.1%} of the images "
    "(by pixels); notebook 10 labels its held-out images by their pixels all the same, so that a generator "
    "that disobeys cannot move the estimate.",
    f"- Simulated half-and-half studies: δ's interval excludes 0 in {uneven['δ excludes 0']:.0%} of "
    f"the uneven ones (mean δ {uneven['mean δ']:+.2f}); the share's excludes ½ in "
    f"{uneven['share excludes ½']:.0%}.",
    f"- The share's 95 % interval held the true share in {sim['share covers truth'].min():.0%} to "
    f"{sim['share covers truth'].max():.0%} of the simulated studies (per case and share).",
]
for b, t in mitigation_table.items():
    share, agree = t["share"].astype(float), t["digit_agreement"].astype(float)
    lines.append(
        f"- Mitigation, {b}: share of {planted[b]} {share['before']:.2f} → {share['after']:.2f} "
        f"(control edit {share['after_random']:.2f}); digit agreement {agree['before']:.2f} → "
        f"{agree['after']:.2f}: "
        + (
            "the edit works."
            if "**The edit works.**" in mitigation_lines[list(measured).index(b)]
            else "the edit does not work here."
        )
    )
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Questions
#
# 1. Why would prompt labels make the share estimate measure the mix of the two prompts' outputs instead of
#    the share of images that show a value?
# 2. What assumption does the Rogan–Gladen correction make, and how does the error-rate check test it?
# 3. Why may that assumption fail for an attribute that comes in degrees (the earlier ink-based "thick") but
#    hold for one that is there or not (red; the skeleton against the widened stroke)?
# 4. Why does δ move away from 0 for a half-and-half set in the uneven case, while the share does not?
# 5. What does "the interval covers the truth in 95 % of studies" mean, and how does the simulation test it?
# 6. Why is the mitigation measured from pixels rather than from tokens?
# 7. What does the control edit rule out, and why are its ids drawn among ids of similar frequency?
# 8. Why are the edited sets sampled with seeds other than the study's?

# %% [markdown]
# ## Exercises
#
# The exercises use the first bias type (`bias_types[0]`, colour by default): `biased_row` is its biased
# digit's row of notebook 10's table `deltas`.

# %%
first = bias_types[0]
biased_row = deltas[(deltas["bias"] == first) & (deltas["digit"] == biased_digit[first])].iloc[0]

# %% [markdown] tags=["exercise"]
# **1.** Suppose the token rule never called a B image A (spec = 1). What would the Rogan–Gladen share of the
# biased study be, with its measured `q` and `sens` (full precision, in `biased_row`)? Write
# `answer_1 = ...` (a number in [0, 1]). Is it above or below the reported `share`, and why?

# %% tags=["solution"]
if solutions:
    answer_1 = bias_stats.rogan_gladen(biased_row["q"], biased_row["sens"], 1.0, min_youden=0.0)


# %% tags=["exercise-check"]
def check_1(answer):
    q_1, sens_1 = float(biased_row["q"]), float(biased_row["sens"])
    truth = min(1.0, q_1 / sens_1) if sens_1 > 0 else np.nan  # (q + 1 - 1) / (sens + 1 - 1)
    assert np.isclose(float(answer), truth, rtol=0, atol=5e-4, equal_nan=True), (
        "not (q + spec - 1) / (sens + spec - 1) with spec = 1: check which of q and sens is on top"
    )
    return True


exercise("1", globals(), check=check_1, hint="with spec = 1 the formula is q / sens", solutions=solutions)

# %% [markdown] tags=["exercise"]
# **2.** By how much did the edit change the share of the planted value for the first bias type (after minus
# before, from `mitigation_table[bias_types[0]]`, a negative number if it fell)? Write `answer_2 = ...`
# (three decimals suffice). How does it compare with the control edit's change?

# %% tags=["solution"]
if solutions:
    t_2 = mitigation_table[first].astype(float)
    answer_2 = t_2.loc["after", "share"] - t_2.loc["before", "share"]


# %% tags=["exercise-check"]
def check_2(answer):
    shows = {s: measured[first][s]["shows"].mean() for s in ("before", "after")}
    assert float(answer) <= 1 and float(answer) >= -1, "a change of a share lies in [-1, 1]"
    assert abs(float(answer) - (shows["after"] - shows["before"])) <= 1e-3, (
        "not the share after the edit minus the share before: check the rows 'after' and 'before'"
    )
    return True


exercise("2", globals(), check=check_2, hint="two entries of the column 'share'", solutions=solutions)
