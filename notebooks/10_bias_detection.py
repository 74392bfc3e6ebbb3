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
# # 10 · Bias detection
#
# The paper (*Concept-Centric Token Interpretation for Vector-Quantized Generative Models*, Yang et al.) ends
# by asking whether a generator leans toward one value of an attribute the prompt does not name: an IEM on
# "doctor" images labelled by skin colour gave each value's **attribute tokens**, counted in "a doctor".
#
# Real data hides the true bias, so we **plant** one in a two-stage generator (as DALL·E 2's prior and
# decoder, Ramesh et al. 2022). For "a 3" a **prior** picks the image's **look**: red with probability
# `skew` for "a 3", thick with `skew` for "a 5", even odds for "a 7" (the **control**). A taming transformer
# (Esser et al. 2021) then draws "a red thin 3". It learned from real digits drawn red or green and
# **thin** (their one-pixel skeleton) or **thick** (the skeleton widened to three pixels), so the pixels say
# which value an image has. Notebook 16 goes deeper.

# %%
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from cortex_run import digits, evaluators, planted_bias, plots, prepare, report, tokenizers
from cortex_run.artifacts import note_trained, record_metrics, register, registered, write_json
from cortex_run.notebook import check_parameters, exercise, repo_path
from cortex_utils import bias, bias_stats, evaluation
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib

# %% [markdown]
# The knobs. A dict is a group: set only the keys you change, e.g. `-p attribute_iem '{epochs: 3}'`.

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-02 (relative to the repo root)
bias_types = ["colour", "thickness"]  # which studies to run
study_digits = {"colour": 3, "thickness": 5, "control": 7}  # skewed toward planted[...]; control: balanced
planted = {"colour": "red", "thickness": "thick"}
skew = 0.85  # the prior's odds of the planted value for the biased digits (the others: even odds)
generator = {"steps": 8000, "lr": 0.003, "batch": 64, "copies": 6, "layers": 3, "width": 96, "dropout": 0.1}
retrain = False  # train the bias transformer and the attribute IEMs even if the shipped ones match
regenerate = False  # sample the study's generations here even if the shipped ones (data/default/bias) match
bf16 = "auto"  # bfloat16 autocast when training: auto | on | off
sampling = {"temperature": 0.7, "top_k": 10, "guidance": 1.0}  # guidance: toward the prompted digit
attribute_per_value = [300, 100, 100]  # train / val / test generations per attribute value and digit
n_neutral = 1000  # neutral-prompt generations per digit
attribute_iem = {"arch": 1, "width": 32, "epochs": 12, "lr": 0.002}  # arch: notebook 03's numbers, 1 is VGG
nsamples = 20  # SmoothGrad noisy copies
top_n = 5  # TIS positions per image that count toward a value's tokens
token_num = 20  # attribute tokens per value (at most)
specificity = 2.0  # a value's token: this many times more often per image of that value than of the other
n_boot = 1000  # bootstrap resamples for the intervals (δ and share)
min_youden = 0.1  # a token rule with sensitivity + specificity - 1 at most this cannot separate the values
reselect_tokens = True  # re-select the attribute tokens in every bootstrap resample
equivalence_margin = 0.1  # "no bias": the share's interval lies inside [½ − margin, ½ + margin]
seed = 0
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
n_show = 8  # images per row in the figures
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "10_bias_detection")
colour_digit, thickness_digit, control_digit = planted_bias.check_study_parameters(params)
biased_digit = {"colour": colour_digit, "thickness": thickness_digit}
run_dir = repo_path(run_dir)
out_dir = run_dir / "bias"

# %% [markdown]
# ## The planted-bias generator
#
# Notebook 02's digit transformer, fine-tuned on "a red thin 3" prompts (shipped; `retrain = True` trains it).

# %%
vq = tokenizers.load_run_vq(run_dir, device)  # the generator and its decoder run there
data = digits.load_digits(seed)
training = dict(generator, seed=seed)
gray, labels, use_bf16 = data["train"]["gray"], data["train"]["labels"], vqlib.use_bf16(bf16)
tf, tf_path, tf_log, why = planted_bias.load_or_train_bias_transformer(
    run_dir, vq, gray, labels, training, retrain, use_bf16
)
print(f"bias transformer: {f'trained here ({why})' if why else 'the shipped one (same settings, tokenizer)'}")
if tf_log is not None:
    note_trained(run_dir, "the bias transformer")

# %%
register(run_dir, "bias_transformer", checkpoint=str(tf_path))  # later notebooks load the same generator

# %% [markdown]
# ## The study's images
#
# Per bias type, two studies: the biased digit and the control. The attribute IEM learns from "a red 3" and
# "a green 3"; the neutral images are `n_neutral` each of "a 3", "a 5", "a 7".
#
# The transformer samples with **classifier-free guidance** (Ho & Salimans 2022) toward the digit: the
# prompt's next-token log-probabilities $\log p_c$ are pushed away from $\log p_u$, the mixture of the same
# look's ten digit prompts,
#
# $$\log p_c + g\,(\log p_c - \log p_u),\qquad g = \texttt{guidance},$$
#
# so tokens that say "3" rather than "some digit" gain; the look is the same in every term.

# %%
subjects = {b: [biased_digit[b], control_digit] for b in bias_types}
prior = planted_bias.planted_prior(skew, biased_digit, planted)
sizes = {"attribute_per_value": attribute_per_value, "n_neutral": n_neutral}
studies, neutral, why = planted_bias.load_or_generate_study(
    tf, tf_path, vq, subjects, prior, sizes, sampling, seed, out_dir, regenerate=regenerate or retrain
)
neutral_of = {(b, d): neutral[d] for b, d in studies}  # each study's neutral generations: its digit's
planted_label = {(b, d): planted_bias.ATTRIBUTES[b].index(planted[b]) for b, d in studies}  # A's label
set_name = {(b, d): f"{'biased' if d == biased_digit[b] else 'control'} (digit {d})" for b, d in studies}
print(f"study data: {why}")

# %% [markdown]
# ## The truth, from pixels
#
# **Red** if the stroke's mean red exceeds its green. **Thick** if its width $w$ exceeds `width_threshold`: a
# stroke of width $w$ whose skeleton is $S$ long covers $A\approx w\,(S+w)$ pixels, so
# $w=(\sqrt{S^2+4A}-S)/2$; the threshold is the valley of the thickness studies' width histogram (Prewitt &
# Mendelsohn 1966).

# %%
pictures = {key: planted_bias.pictures(vq, ds) for key, ds in studies.items()}  # decoded once, uint8
widths = {  # per thickness study, every generation's width, whatever its prompt named
    f"thick/thin prompts, digit {d}": planted_bias.stroke_width(
        np.concatenate(list(pictures[(b, d)].values()))
    )
    for b, d in studies
    if b == "thickness"
}
width_threshold, how = planted_bias.width_cut(np.concatenate([*widths.values()])) if widths else (np.nan, "")
print(f"thick: a stroke wider than {width_threshold:.2f} pixels ({how})")
if widths:
    plots.width_histogram(widths, width_threshold)

# %% [markdown]
# One row per prompt, the rules' calls under each image. Does the generator draw what it is asked?

# %%
named = {"": {}, "red ": {"red": 1}, "green ": {"red": 0}, "thick ": {"thick": 1}, "thin ": {"thick": 0}}
shown = [(d, word) for d in (colour_digit, thickness_digit, control_digit) for word in named]
rng = np.random.default_rng(seed)
looks = [planted_bias.draw_looks(np.full(n_show, d), prior, rng, **named[word]) for d, word in shown]
red, thick = (np.concatenate([look[i] for look in looks]) for i in (0, 1))
grid_digits = np.repeat([d for d, _ in shown], n_show)
grid = vqlib.decode(vq, planted_bias.sample_looks(tf, grid_digits, red, thick, sampling, seed))
calls = planted_bias.measured_attributes(digits.to_uint8(grid), width_threshold)
said = np.where(calls["red"], "red", "green") + " " + np.where(calls["thick"], "thick", "thin")
names = [f'"a {word}{d}"' for d, word in shown]
captions = dict(zip(names, np.split(said, len(names)), strict=True))
plots.rows_of_images(dict(zip(names, grid.split(n_show), strict=True)), n_show, captions=captions)

# %% [markdown]
# Over all the study's images: how often the pixels show the value a prompt names (the rules' accuracy), and
# how often notebook 02's independent evaluators read the prompted digit in the neutral images.

# %%
shows, held_truth, rule_accuracy = {}, {}, {}
for b, d in studies:
    shows[(b, d)] = planted_bias.shows_value(pictures[(b, d)], b, planted[b], width_threshold)
    held_truth[(b, d)] = {s: v for s, v in shows[(b, d)].items() if s != "train"}  # val, test: pixel labels
    if len({x for v in held_truth[(b, d)].values() for x in v}) < 2:  # e.g. a barely trained generator
        print(f"{b}, digit {d}: every held-out image shows one value; they keep their prompts' labels")
        held_truth[(b, d)] = None
for b in bias_types:
    ok = [planted_bias.prompt_agreement(studies[k], shows[k], planted_label[k]) for k in shows if k[0] == b]
    rule_accuracy[b] = sum(a for a, _ in ok) / sum(n for _, n in ok)
    print(f"{b}: {rule_accuracy[b]:.2%} of {sum(n for _, n in ok)} prompted images show the named value")
judges = evaluators.load_run_evaluators(run_dir, vqlib.resolution(vq), 10, device=device)
images = {d: vqlib.decode(vq, torch.from_numpy(z.astype(np.int64))) for d, z in neutral.items()}
read_as = {
    k: np.concatenate([evaluation.predict_logits(m, x).argmax(1).numpy() == d for d, x in images.items()])
    for k, m in judges.items()
}
digit_agreement = float(np.mean([r.mean() for r in read_as.values()]))
print(f"neutral prompts: the evaluators read the prompted digit in {digit_agreement:.1%} of images")

# %% [markdown]
# ## 1 · The attribute IEM
#
# Two classes, the attribute's values (notebook 03's architectures). An IEM at chance has nothing to explain.

# %%
codebook, recipe = vqlib.codebook(vq), {**attribute_iem, "batch_size": 64, "seed": seed}
iems, iem_info, accuracy = {}, {}, {}
for (b, d), ds in studies.items():
    name = planted_bias.study_name(b, d)
    iems[(b, d)], iem_info[name] = prepare.attribute_iem(ds, codebook, name, recipe, retrain, out_dir, device)
    accuracy[(b, d)], split = prepare.iem_accuracy(iems[(b, d)], ds, codebook)
    how = f"trained here ({iem_info[name]['why']})" if iem_info[name]["trained"] else "loaded"
    print(f"attribute IEM {name}: {how}; accuracy {accuracy[(b, d)]:.3f} on its {split} split")

# %%
for name, info in iem_info.items():
    if info["trained"]:
        note_trained(run_dir, f"the attribute IEM {name}")
    if info["path"]:
        register(run_dir, f"attribute_iem_{name}", checkpoint=str(info["path"]))

# %% [markdown]
# ## 2 · TIS
#
# The run's attribution method (notebook 05's) on the IEM's training images: which positions decide the value.

# %%
tis_entry = registered(run_dir, "tis")  # IG and occlusion start from notebook 05's neutral token
print(f"TIS method: {tis_entry['method']} (notebook 05's)")

# %%
e = tis_entry  # the run's method (notebook 05's) with its own options; SmoothGrad: this nsamples
args = (tislib.Noise(nsamples), seed, e["ig_steps"], e["occlusion_group"], codebook[e["neutral_id"]])
tis_options = tislib.method_options(e["method"], *args)
train_tis = {(b, d): out_dir / b / f"digit_{d}" / "tis_train.npy" for b, d in studies}
tis = {
    k: prepare.attribute_tis(iems[k], ds, codebook, e["method"], train_tis[k], **tis_options)
    for k, ds in studies.items()
}

# %% [markdown]
# ## 3 · Attribute tokens
#
# Notebook 06's concept count per value (the ids at each training image's top-`top_n` TIS positions, the
# `token_num` most counted), keeping an id only if `specificity` times as frequent per image of its value as
# of the other: an IEM may spot a value by the *absence* of marks.

# %%
selection = {"top_n": top_n, "token_num": token_num, "specificity": specificity}
ids = {key: bias.select_attribute_tokens(ds, tis[key], **selection)[1] for key, ds in studies.items()}
for (b, d), by_label in ids.items():
    for c, v in by_label.items():
        print(f"{b}, digit {d}, {studies[(b, d)].class_names[c]}: {[int(i) for i in v] or 'none (counts 0)'}")

# %% [markdown]
# ## 4 · Counts
#
# Per image, how many positions hold A's tokens (A: the planted value) and B's. The two token sets differ, so
# compare each histogram with its own labelled images (§6), not with the other.

# %%
counts, panels = {}, {}
for key, ds in studies.items():
    counts[key] = bias.study_counts(ds, ids[key], neutral_of[key], planted_label[key], held_truth[key])
    a_b = [ds.class_names[c] for c in (planted_label[key], 1 - planted_label[key])]  # A, then B
    panels[f"{key[0]}: {set_name[key]}"] = dict(zip(a_b, counts[key]["neutral"], strict=True))
plots.count_histograms(panels)

# %% [markdown]
# ## 5 · The paper's δ
#
# The paper's effect size is Cliff's δ (Cliff 1993, *Psychological Bulletin*) between the neutral images' A
# counts $a_1..a_n$ and B counts $b_1..b_m$:
#
# $$\delta=\frac{\#\{(i,j):a_i>b_j\}-\#\{(i,j):a_i<b_j\}}{n\,m}\in[-1,1],$$
#
# +1 when every image holds more A tokens than any holds B tokens (the original code prints δ/2). By hand:

# %% tags=["by-hand"]
one = next(iter(studies))  # the first study, e.g. ("colour", 3)
count_a, count_b = (c.tolist() for c in counts[one]["neutral"])  # per neutral image: A's tokens, B's tokens
wins = losses = 0
for x in count_a:  # every (A count, B count) pair
    for y in count_b:
        wins += x > y
        losses += x < y
delta_by_hand = (wins - losses) / (len(count_a) * len(count_b))
pairs = len(count_a) * len(count_b)
print(f"{one[0]}, digit {one[1]}: {wins} pairs A > B, {losses} A < B of {pairs}: δ = {delta_by_hand:+.3f}")

# %% [markdown]
# ## 6 · The share of A
#
# δ says *that* counts differ, not *how many* images lean, and strays from 0 at half and half when the two
# token sets differ (the controls below). So we estimate the **share** $p$ of neutral images showing A. A
# rule calls an image A when A's count beats B's by more than $t$ (fitted on the training images). It calls
# a share $q$ of the neutral images A; on held-out images it calls A images A at rate sens, B images B at
# rate spec. Then
# $q=\text{sens}\cdot p+(1-\text{spec})(1-p)$; solved for $p$ (Rogan & Gladen 1978, *American Journal of
# Epidemiology*):
#
# $$\hat p=\frac{q+\text{spec}-1}{\text{sens}+\text{spec}-1}.$$
#
# Its 95 % interval bootstraps all three image sets, re-selecting the tokens each time.

# %%
estimates = {}
for key, ds in studies.items():
    args = (ds, tis[key], neutral_of[key], planted_label[key], held_truth[key])
    recount = bias.recount_on(*args, **selection) if reselect_tokens else None
    estimates[key] = {**bias.estimate_bias(counts[key], n_boot, min_youden, seed, recount), "bias": key[0]}
rows = [{"digit": d, "neutral set": set_name[(b, d)], **estimates[(b, d)]} for b, d in studies]
deltas = pd.DataFrame(rows)
deltas["iem_accuracy"] = [accuracy[key] for key in studies]
deltas["toward"] = [studies[key].class_names[planted_label[key]] for key in studies]
drawn = [planted_bias.drawn_as_other(studies[k], shows[k], planted_label[k]) for k in studies]  # notebook 16
deltas["A prompted, drawn as B"], deltas["B prompted, drawn as A"] = zip(*drawn, strict=True)

# %% [markdown]
# By hand for the first study, with its fitted $t$:

# %% tags=["by-hand"]
t = estimates[one]["threshold"]
held_a, held_b, held_is_a = counts[one]["calibration"]  # held-out counts, and which images show A


def calls(a, b):  # 1 when A's count beats B's by more than t, ½ exactly at t
    return (a - b > t) + 0.5 * (a - b == t)


q = calls(*counts[one]["neutral"]).mean()
sens, spec = calls(held_a, held_b)[held_is_a].mean(), 1 - calls(held_a, held_b)[~held_is_a].mean()
share_by_hand = (q + spec - 1) / (sens + spec - 1)
print(f"q = {q:.3f}, sens = {sens:.3f}, spec = {spec:.3f}: share = {share_by_hand:.3f}")

# %% [markdown]
# The same from `cortex_utils.bias_stats` (which clips the share to [0, 1]):

# %% tags=["by-hand-check"]
np.testing.assert_allclose(bias_stats.cliffs_delta(count_a, count_b), delta_by_hand, rtol=0, atol=1e-12)
np.testing.assert_allclose(estimates[one]["delta"], delta_by_hand, rtol=0, atol=1e-12)
got = [estimates[one][k] for k in ("q", "sens", "spec")]
np.testing.assert_allclose(got, [q, sens, spec], rtol=0, atol=1e-12)
expected = float(np.clip(share_by_hand, 0, 1)) if sens + spec - 1 > min_youden else np.nan
np.testing.assert_allclose(estimates[one]["share"], expected, rtol=0, atol=1e-12)
print("by hand = library: Cliff's δ, q, sens, spec and the Rogan–Gladen share")

# %% [markdown]
# ## Against the truth
#
# The truth: the share of neutral images whose pixels show A. Three verdicts, from the interval alone:
#
# * **no bias beyond ±m** when it lies inside $[\tfrac12-m,\ \tfrac12+m]$ ($m$ = `equivalence_margin`);
# * **found** when it excludes ½ (on the control, a false alarm);
# * **inconclusive** otherwise.
#
# An **error-rate check** on the held-out images withholds the interval when the token rule errs differently
# on images of one value (its `check_p` < 0.05; notebook 16).

# %%
pixels = {d: planted_bias.measured_attributes(digits.to_uint8(x), width_threshold) for d, x in images.items()}
deltas["pixel truth"] = [planted_bias.planted_shares(pixels[d], planted)[b] for b, d in studies]
bounds = deltas[["share_low", "share_high"]].to_numpy()
deltas["verdict"] = [bias_stats.share_verdict(lo, hi, equivalence_margin) for lo, hi in bounds]
metrics = report.headline_metrics(deltas, bias_types, biased_digit, control_digit)
metrics |= {f"bias_{b}_pixel_rule_accuracy": round(a, 4) for b, a in rule_accuracy.items()}
metrics["bias_generator_digit_agreement"] = round(digit_agreement, 4)
columns = ["pixel truth", "share", "share_low", "share_high", "check_p", "verdict", "delta"]
deltas.set_index(["bias", "neutral set"])[columns].round(3)

# %% [markdown]
# Record the results (notebook 16 reads them):

# %%
record_metrics(run_dir, **metrics, device=device)
deltas.to_csv(out_dir / "deltas.csv", index=False)
tokens = {f"{b}_digit_{d}": {str(c): v.tolist() for c, v in by.items()} for (b, d), by in ids.items()}
keep = ["bias_types", "study_digits", "planted", "skew", "sampling", "n_neutral", "seed"]
keep += ["equivalence_margin", "attribute_per_value"]
study = {k: params[k] for k in keep} | {"tis_method": tis_entry["method"], "tokens": tokens}
study |= {"regenerate": regenerate or retrain, "width_threshold": width_threshold}
write_json(out_dir / "study.json", study)
register(run_dir, "bias_study", file=str(out_dir / "study.json"), deltas=str(out_dir / "deltas.csv"))

# %% [markdown]
# Estimates against the truth:

# %%
plots.share_vs_truth(deltas)

# %% [markdown]
# ## Summary

# %%
lines = []
for _, r in deltas.iterrows():
    inside = "inside" if r["share_low"] <= r["pixel truth"] <= r["share_high"] else "**outside**"
    share = f"{r['share']:.2f}" if r["share"] >= 0 else "no estimate"
    iv = f"{r['toward']} {share} [{r['share_low']:.2f}, {r['share_high']:.2f}]"
    why = " (error-rate check failed)" if r["inconclusive"] and r["share"] >= 0 else ""
    truth = f"truth {r['pixel truth']:.2f}, {inside}; δ {r['delta']:+.2f}"
    verdict = report.verdict_words(r["verdict"], equivalence_margin)
    lines.append(f"- {r['bias']}, {r['neutral set']}: {iv}, **{verdict}**{why}; {truth}")
rules = ", ".join(f"{b} {a:.2%}" for b, a in rule_accuracy.items())
lines.append(
    f"- The generator: the pixel rules confirm the prompted value in {rules}; the evaluators read the "
    f"prompted digit in {digit_agreement:.1%} of the neutral images."
)
low, high = min(accuracy.values()), max(accuracy.values())
lines.append(
    f"- Attribute IEM accuracy: {f'{low:.2f} to {high:.2f}' if low < high else f'{low:.2f} for each'}."
)
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Questions
#
# 1. Why plant a bias rather than study a real generator?
# 2. How are attribute tokens chosen? What does `specificity` guard against?
# 3. Why can δ be far from 0 at half and half?
# 4. What are $q$, sens and spec, and where is each measured?
# 5. When is a verdict "inconclusive" rather than "no bias beyond ±m"?
# 6. The bias sits in the generator's prior, not its weights. Would the study notice the difference?

# %% [markdown]
# ## Exercises
#
# `biased_key` and `control_key`: the first bias type's two studies; `counts[key]["neutral"]`: their neutral
# (A, B) counts.

# %%
biased_key, control_key = (bias_types[0], biased_digit[bias_types[0]]), (bias_types[0], control_digit)

# %% [markdown] tags=["exercise"]
# **1.** What does the original code print as δ for the control study? Its half scale is
# (#pairs A > B + ½·#ties − n·m/2) / (n·m). Write `answer_1 = ...` (three decimals suffice). Near 0?

# %% tags=["solution"]
if solutions:
    answer_1 = bias_stats.cliffs_delta(*counts[control_key]["neutral"]) / 2


# %% tags=["exercise-check"]
def check_1(answer):
    a, b = (np.asarray(c, dtype=float) for c in counts[control_key]["neutral"])
    diff = a[:, None] - b[None, :]  # every pair at once
    truth = ((diff > 0).sum() + 0.5 * (diff == 0).sum() - diff.size / 2) / diff.size
    assert abs(float(answer) - truth) <= 5e-4, "not the half-scale δ of the control's counts: check n·m/2"
    return True


exercise("1", globals(), check=check_1, hint="count every (A, B) pair: wins, ties", solutions=solutions)

# %% [markdown] tags=["exercise"]
# **2.** In what share of the biased study's neutral images do A's tokens **strictly outnumber** B's? Write
# `answer_2 = ...`. Why does it differ from `share`?

# %% tags=["solution"]
if solutions:
    a_2, b_2 = counts[biased_key]["neutral"]
    answer_2 = float((a_2 > b_2).mean())


# %% tags=["exercise-check"]
def check_2(answer):
    a, b = counts[biased_key]["neutral"]
    assert abs(float(answer) - float((a > b).mean())) <= 5e-4, "not the share of images with more A than B"
    return True


exercise("2", globals(), check=check_2, hint="compare the counts image by image", solutions=solutions)
