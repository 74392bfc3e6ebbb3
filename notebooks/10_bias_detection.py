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
# The paper's most practical use of CORTEX: does a generator **lean toward one value of an attribute** when
# the prompt does not name it? For DALL·E-mini the authors generated "doctor" images, labelled them by skin
# colour (or gender), trained an IEM on that attribute, took each value's **attribute tokens** from the TIS
# concept analysis, and counted those tokens in generations from the neutral prompt "a doctor". If one
# value's tokens turn up more often, the neutral prompt is biased toward it. The paper's effect size is
# **Cliff's δ** between the two values' per-image token counts: +1 if every image holds more of value A's
# tokens than any image holds of B's, −1 the other way round, 0 for no difference. (The original code's
# function returns half of that, in [−0.5, 0.5]; the tables give both.)
#
# δ says *that* the two count lists differ, not *how many* images lean which way, and it reports a
# difference whenever the two values' token sets differ in size, even for a neutral set that is half and
# half. So beside it this notebook estimates the **share** of neutral images that show the planted value,
# with an interval whose coverage was checked on simulated data where the truth is known
# (`benchmarks/bias_calibration.py`). The verdict rests on that share.
#
# DALL·E-mini cannot be downloaded here, and on real data nobody knows the true bias. So this notebook
# builds a generator **with a planted bias** where the truth is known, and checks that the method finds it:
#
# * a prompt-conditioned taming transformer on coloured digits: a prompt is a digit and optionally one
#   attribute value (*"a 3"*, *"a red 3"*, *"a thin 3"*), one condition token as taming's class-conditional
#   models use;
# * in its training data the neutral prompt of one digit shows the planted colour (red) with probability
#   `skew`, the neutral prompt of another digit the planted stroke thickness (thick), and the **control
#   digit** is balanced in both;
# * two bias types, as the paper's two: **colour** (like skin colour, a property of the pixels) and **stroke
#   thickness** (like gender, a property of the shape, labelled from the real digits' ink).
#
# The planted world lives in `cortex_utils.planted_bias`, the study's steps in `cortex_utils.bias`, their
# statistics in `cortex_utils.bias_stats`. Notebook 13 runs the same steps on token data in the original's
# DALL·E-mini layout.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from cortex_utils import bias, bias_stats, digits, evaluators, planted_bias, plots
from cortex_utils import concepts as conceptlib
from cortex_utils import generation as gen
from cortex_utils import mitigation as mitlib
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import note_trained, record_metrics, register, registered
from cortex_utils.notebook import check_parameters, choice, exercise, repo_path, require

# %% [markdown]
# The knobs. Some travel together as a group (a dict): set only the keys you change, e.g.
# `-p attribute_iem '{epochs: 3}'`; the others keep their defaults.
#
# * `study_digits`: the digit whose neutral prompt is skewed toward `planted["colour"]`, the one skewed toward
#   `planted["thickness"]`, and the control digit (balanced in both).
# * `generator`: how the planted-bias transformer is fine-tuned from notebook 02's: `steps` (batches of 64) at
#   learning rate `lr`; each real training digit appears `per_image` times under random prompts, a share
#   `neutral_share` of them neutral; the thickest and the thinnest `thick_fraction` of each digit class are
#   "thick" and "thin".
# * `sampling`: `temperature` (1.0 keeps the generator's own attribute shares, lower sharpens toward the
#   majority) and `top_k` (0: sample among all tokens).
# * `attribute_iem`: the attribute IEM's architecture, width, epochs and learning rate.

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-02 (relative to the repo root)
bias_types = ["colour", "thickness"]  # which studies to run
study_digits = {"colour": 3, "thickness": 5, "control": 7}  # skewed toward planted[...]; control: balanced
planted = {"colour": "red", "thickness": "thick"}
skew = 0.85  # share of the planted value in the biased digits' neutral training images
generator = {"steps": 1500, "lr": 0.003, "per_image": 4, "neutral_share": 0.4, "thick_fraction": 0.25}
retrain = False  # train the bias transformer and the attribute IEMs even if the shipped ones match
regenerate = False  # sample the study's generations here even if the shipped ones (data/default/bias) match
bf16 = "auto"  # bfloat16 autocast when training: auto | on | off
sampling = {"temperature": 1.0, "top_k": 0}  # 1.0: the generator's own shares; top_k 0: every token
attribute_per_value = [300, 50, 50]  # train / val / test generations per attribute value and digit
n_neutral = 300  # neutral-prompt generations per digit
attribute_iem = {"arch": 1, "width": 32, "epochs": 12, "lr": 0.002}  # arch: notebook 03's numbers, 1 is VGG
nsamples = 20  # SmoothGrad noisy copies
top_n = 5  # TIS positions per image that count toward a value's tokens
token_num = 20  # attribute tokens per value (at most)
specificity = 2.0  # a value's token: this many times more often per image of that value than of the other
n_boot = 1000  # bootstrap resamples for the intervals (δ and share)
min_youden = 0.1  # a token rule with sensitivity + specificity - 1 at most this cannot separate the values
reselect_tokens = True  # re-select the attribute tokens in every bootstrap resample
not_found_width = 0.25  # "not found" needs an interval around ½ at most this wide (else "inconclusive")
seed = 0
n_show = 8  # images per row in the figures
mitigation = {"control_pool": 3, "max_digit_drop": 0.1}  # control ids: among this many of similar frequency
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "10_bias_detection")
colour_digit, thickness_digit, control_digit = (study_digits[k] for k in ("colour", "thickness", "control"))
require(len(bias_types) >= 1 and len(set(bias_types)) == len(bias_types), "bias_types: name each study once")
for b in bias_types:
    choice("bias_types entry", b, list(planted_bias.ATTRIBUTES))
for b, v in planted.items():
    choice("planted key", b, list(planted_bias.ATTRIBUTES))
    choice(f"planted[{b!r}]", v, planted_bias.ATTRIBUTES[b])
require(
    len({colour_digit, thickness_digit, control_digit}) == 3
    and all(0 <= d <= 9 for d in (colour_digit, thickness_digit, control_digit)),
    f"study_digits must name three different digits 0-9, got {study_digits}",
)

# %%
require(0 <= skew <= 1, f"skew must lie in [0, 1], got {skew}")
require(
    generator["steps"] >= 1 and generator["lr"] > 0 and generator["per_image"] >= 1,
    f"generator: steps, per_image >= 1 and lr > 0, got {generator}",
)
require(
    0 < generator["neutral_share"] < 1 and 0 < generator["thick_fraction"] <= 0.5,
    f"generator: neutral_share must lie in (0, 1), thick_fraction in (0, 0.5], got {generator}",
)
require(
    sampling["temperature"] > 0 and sampling["top_k"] >= 0,
    f"sampling: temperature > 0 and top_k >= 0, got {sampling}",
)
require(
    len(attribute_per_value) == 3 and min(attribute_per_value[:2]) >= 1 and attribute_per_value[2] >= 0,
    "attribute_per_value: [train, val, test] with train and val >= 1",
)
require(specificity >= 0, "specificity must be >= 0")

# %%
require(
    0 <= min_youden < 1 and 0 < not_found_width <= 1,
    "min_youden must lie in [0, 1), not_found_width in (0, 1]",
)
require(
    n_neutral >= 1
    and nsamples >= 1
    and top_n >= 1
    and token_num >= 1
    and attribute_iem["epochs"] >= 1
    and n_boot >= 1,
    "n_neutral, nsamples, top_n, token_num, attribute_iem epochs and n_boot must be >= 1",
)
choice("attribute_iem arch", attribute_iem["arch"], [1, 2, 3, 4])
require(
    mitigation["control_pool"] >= 1 and 0 <= mitigation["max_digit_drop"] <= 1,
    f"mitigation: control_pool >= 1 and max_digit_drop in [0, 1], got {mitigation}",
)
choice("bf16", bf16, ["auto", "on", "off"])
run_dir = repo_path(run_dir)
out_dir = run_dir / "bias"
params
# %% [markdown]
# ## The planted-bias generator
#
# The training data: every real training digit `per_image` times (`generator`), each time under a random
# prompt (neutral with probability `neutral_share`) and drawn to match it (red or green; from the thickest or
# the thinnest `thick_fraction` of its class by ink). Neutral prompts show
# red/green and thick/thin at even odds — except for the two biased digits. The transformer starts from the
# digit transformer of notebook 02 (neutral prompts keep its condition tokens 0–9) and is fine-tuned. The
# shipped one loads when it was trained with exactly these settings on this tokenizer; otherwise it trains
# (a few minutes).

# %%
biased_digit = {"colour": colour_digit, "thickness": thickness_digit}
vq = vqlib.load_run_vq(run_dir)
data = digits.load_digits(seed)
training = {
    "skew": skew,
    "colour_digit": colour_digit,
    "thickness_digit": thickness_digit,
    "planted": planted,
    **generator,
    "seed": seed,
}
tf, tf_path, tf_log, why = planted_bias.load_or_train_bias_transformer(
    run_dir, vq, data["train"]["gray"], data["train"]["labels"], training, retrain, vqlib.use_bf16(bf16)
)
print(
    f"trained the bias transformer ({why})"
    if why
    else "loaded the shipped bias transformer (same settings, same tokenizer)"
)
if tf_log is not None:
    note_trained(run_dir, "the bias transformer")
    plots.training_curves(tf_log, ["loss"], title="bias transformer fine-tuning")

# %%
register(
    run_dir, "bias_transformer", checkpoint=str(tf_path)
)  # the registry notes which generator this run used

# %% [markdown]
# What each prompt produces for the three digits of the study (one row per prompt):

# %%
shown = [
    (d, slot) for d in (colour_digit, thickness_digit, control_digit) for slot in planted_bias.PROMPT_SLOTS
]
prompts = np.repeat([int(planted_bias.prompt_id(d, slot)) for d, slot in shown], n_show)
samples = gen.sample_tokens(
    tf,
    prompts,
    temperature=sampling["temperature"],
    top_k=sampling["top_k"] or None,
    seed=seed,
    progress=False,
)
images = vqlib.decode(vq, samples)
rows = {
    (f'"a {d}"' if slot == "neutral" else f'"a {slot} {d}"'): images[i * n_show : (i + 1) * n_show]
    for i, (d, slot) in enumerate(shown)
}
plots.rows_of_images(rows, ncols=n_show)
# %% [markdown]
# ## Attribute data and neutral generations
#
# For each bias type and each digit studied (the biased one and the control), the IEM's training data are
# generations from that digit's **attribute-specified** prompts ("a red 3" / "a green 3"), labelled by the
# value the prompt names: the same subject as the neutral prompt, as the paper's were all "doctor"
# images. The neutral generations come from the neutral prompts "a 3", "a 5", "a 7". The attribute data
# are token datasets (notebook 02's format). The default's are shipped in `data/default/bias` (sampled once
# by the shipped generator, so every CPU measures the same generations) and copied to `<run_dir>/bias/data`;
# they are sampled here instead when the generator or a setting differs, or with `regenerate = True`.
# Both statistics are signed toward the planted value (A).

# %%
subjects = {b: [biased_digit[b], control_digit] for b in bias_types}
studies, neutral, why = planted_bias.load_or_generate_study(
    tf,
    tf_path,
    vq,
    subjects,
    attribute_per_value,
    n_neutral,
    sampling["temperature"],
    sampling["top_k"] or None,
    seed,
    out_dir,
    regenerate=regenerate or retrain,
)

# %%
print(f"study data: {why}")
neutral_of = {(b, d): neutral[d] for b, d in studies}  # each study's neutral generations: its digit's
set_name = {(b, d): f"{'biased' if d == biased_digit[b] else 'control'} (digit {d})" for b, d in studies}
planted_label = {(b, d): planted_bias.ATTRIBUTES[b].index(planted[b]) for b, d in studies}
display(
    pd.DataFrame(
        {
            f"{b} · {d}": {**{s: len(y) for s, y in ds.labels.items()}, "neutral": len(neutral_of[(b, d)])}
            for (b, d), ds in studies.items()
        }
    ).T
)
# %% [markdown]
# ## What the labelled images show
#
# A prompt names a value, but the generator does not always draw it: some "a red 3" images come out green,
# some "a thick 5" images with little ink. The share estimate below measures how often its token rule errs on
# held-out labelled images; if those images are labelled by their prompts, the contradicting ones count as
# errors of the rule, and the estimate becomes the neutral set's *mix of the two prompts' outputs*, not the
# share of images that *show* the value (the simulation's `leak_prompt` case). On the planted world the pixels
# say what each image shows, so the held-out images are labelled by their pixels: *red* if the stroke's mean
# red exceeds its green, *thick* if its ink (stroke pixels relative to the image's brightest) lies above the
# midpoint between the median ink of this generator's "a thick d" and "a thin d" images. (Generated strokes
# carry less ink than real ones, so a threshold from real digits would call most generations thin.) The
# simulation's `leak` case checks that this keeps the interval honest. Real data has only its labels
# (notebook 13).
#
# The images drawn against their prompt also test the correction's one assumption: that how often the token
# rule calls an image A depends only on which value it shows. Among images that show the same value, the
# rule should call the ones prompted A and the ones prompted B alike (`bias_stats.error_rate_check`, a
# permutation test pooled over the two values, `check_p`). For a value that is either there or not (red) it
# should; for a matter of degree (a stroke just above the ink midpoint is "thick" by pixels, but its tokens
# look thin) it need not, and then the error rates measured on these half-and-half images do not carry over
# to a neutral set of another mix: no interval is given (the simulation's `graded` case measures how often
# the check fires there, and that it stays quiet in `leak`).

# %%
thresholds = planted_bias.ink_thresholds(
    data["train"]["gray"], data["train"]["labels"]
)  # real digits: a fallback
for (b, d), ds in studies.items():
    if b == "thickness":  # this generator's own thick / thin midpoint for the digits it was asked about
        thresholds[d] = planted_bias.generated_ink_thresholds(vq, ds)[d]
shows = {
    (b, d): planted_bias.shows_value(vq, ds, d, b, planted[b], thresholds) for (b, d), ds in studies.items()
}
drawn_wrong = {
    key: planted_bias.drawn_as_other(studies[key], shows[key], planted_label[key]) for key in studies
}
display(pd.DataFrame(drawn_wrong, index=["A-prompted, drawn as B", "B-prompted, drawn as A"]).T.round(3))
held_truth = {key: {s: v for s, v in shows[key].items() if s != "train"} for key in studies}
for key, truth in held_truth.items():  # a tiny run may draw one value only: then only the prompts label them
    if len({bool(x) for v in truth.values() for x in v}) < 2:
        print(
            f"{key}: every held-out image shows the same value by its pixels; labelled by their prompts "
            "instead"
        )
        held_truth[key] = None

# %% [markdown]
# ## The study, step by step
#
# Exactly the steps of notebooks 03–06, through the same functions, on each attribute dataset, one step per
# cell: **attribute IEM → TIS of its training images → attribute tokens → counts in the neutral and the
# held-out images → δ and share estimate**.
#
# **1. The attribute IEM.** Two classes, the attribute's two values, learnt from the attribute data's
# training split (notebook 03's architectures and training loop). The shipped one loads when it was trained
# on exactly these data with these settings, as notebook 03 loads its IEMs; else it is trained here. Its
# accuracy on the held-out test images says whether it learnt the attribute at all: an IEM at chance has
# TIS maps that say nothing about the attribute.

# %%
codebook = vqlib.codebook(vq)
iem_training = {**attribute_iem, "batch_size": 64, "seed": seed}
iems, iem_info, accuracy = {}, {}, {}
for (b, d), ds in studies.items():
    name = planted_bias.study_name(b, d)
    iems[(b, d)], iem_info[name] = bias.attribute_iem(ds, codebook, name, iem_training, retrain, out_dir)
    accuracy[(b, d)], split = bias.iem_accuracy(iems[(b, d)], ds, codebook)
    print(
        f"attribute IEM {name}: {'trained here' if iem_info[name]['trained'] else 'loaded'} "
        f"({iem_info[name]['why']}); accuracy {accuracy[(b, d)]:.3f} on its {split} split"
    )

# %% [markdown]
# Record which attribute IEMs this run trained, and where each one is:

# %%
for name, info in iem_info.items():
    if info["trained"]:
        note_trained(run_dir, f"the attribute IEM {name}")
    if info["path"]:
        register(run_dir, f"attribute_iem_{name}", checkpoint=str(info["path"]))

# %% [markdown]
# **2. The TIS of its training images.** The run's attribution method, notebook 05's `method` (SmoothGrad by
# default, with `nsamples` noisy copies), on the images the IEM learnt from: which positions decide between
# the two values. The method and its options come from the run's registry:

# %%
tis_entry = registered(run_dir, "tis")  # notebook 05's method; IG and occlusion start from its neutral token
tis_options = {
    "method": tis_entry["method"],
    "steps": tis_entry["ig_steps"],
    "group": tis_entry["occlusion_group"],
    "baseline": codebook[tis_entry["neutral_id"]],
}
print(f"TIS method: {tis_entry['method']} (notebook 05's)")

# %%
tis = {
    (b, d): bias.attribute_tis(
        iems[(b, d)],
        ds,
        codebook,
        nsamples,
        seed,
        **tis_options,
        out=out_dir / b / f"digit_{d}" / "tis_train.npy",
    )
    for (b, d), ds in studies.items()
}

# %% [markdown]
# **3. Attribute tokens.** Notebook 06's concept analysis: count which ids sit at each training image's
# top-`top_n` TIS positions, per value, and keep each value's `token_num` most counted ids. One addition to
# the paper's recipe, `specificity`: an IEM can recognise one value by the *absence* of the other's marks; its
# TIS then points at background ids that every image holds. A value's token must occur at least
# `specificity` times as often per image of that value as per image of the other.

# %%
selection = {"top_n": top_n, "token_num": token_num, "specificity": specificity}
ids = {key: bias.select_attribute_tokens(ds, tis[key], **selection)[1] for key, ds in studies.items()}
value_ids = {key: {studies[key].class_names[c]: v for c, v in ids[key].items()} for key in studies}

# %% [markdown]
# Each value's attribute tokens, and what they look like (a grid filled with that one id):

# %%
for (b, d), by_value in value_ids.items():
    display(Markdown(f"**{b}, digit {d}**"))
    display(pd.DataFrame({v: pd.Series(v_ids, dtype="Int64") for v, v_ids in by_value.items()}).T)
    for v, v_ids in by_value.items():
        if not len(v_ids):
            display(
                Markdown(
                    f"*{b}: the value **{v}** has no tokens of its own (its top ids are all shared with the "
                    "other value): the IEM found nothing that tells it apart, and its counts below are 0.*"
                )
            )
    tiles = {f"{b}: {v}": conceptlib.token_tiles(vq, v_ids) for v, v_ids in by_value.items() if len(v_ids)}
    if tiles:
        plots.rows_of_images(tiles, ncols=max(len(v_ids) for v_ids in by_value.values()))
        plt.show()

# %% [markdown]
# **4. Counts.** Per image, how many of its positions hold A's tokens and how many hold B's: in the neutral
# generations (what the study measures), in the IEM's training images (where the tokens were chosen) and in
# the held-out attribute images (val and test, labelled by what they show, above). The histograms show the
# neutral counts: a neutral prompt that leans to one value shows that value's counts shifted right.

# %%
counts = {
    key: bias.study_counts(ds, ids[key], neutral_of[key], planted_label[key], held_truth[key])
    for key, ds in studies.items()
}
value_names = {
    key: [ds.class_names[c] for c in (planted_label[key], 1 - planted_label[key])]  # A, then B
    for key, ds in studies.items()
}
plots.count_histograms(
    {
        f"{key[0]}: {set_name[key]}": dict(zip(value_names[key], counts[key]["neutral"], strict=True))
        for key in studies
    }
)
# %% [markdown]
# **5. δ and the share estimate.** Two statistics from the same counts, both signed toward the planted value
# (A):
#
# * **the paper's δ** (`delta`): Cliff's δ of the neutral images' A counts against their B counts; the
#   interval is a bootstrap over the neutral images. `delta_paper_half_scale` is the number the original code
#   would print for the same counts (its function returns δ/2).
# * **the share of A** (`share`): classify every neutral image by its counts (A when it holds more of A's
#   tokens than of B's by more than a threshold; an image exactly at the threshold counts half to each), fit
#   the threshold on the IEM's training images, measure how often the rule errs on the held-out attribute
#   images (`sens`, `spec`), and correct the share the rule calls A (`q`) for those errors (Rogan–Gladen:
#   share = (q + spec − 1) / (sens + spec − 1)). The 95 % interval is a bootstrap over everything the
#   estimate depends on: the neutral images, the held-out images behind the error rates, and the training
#   images the tokens and the threshold are chosen on (`reselect_tokens`: `bias.recount_on` selects the
#   tokens again in every resample, from the resampled images and their TIS rows; the IEM is not retrained
#   per resample, so its own variability is left out). A rule that cannot tell the values apart
#   (sens + spec − 1 ≤ `min_youden`) gives no number and the interval [0, 1].
#
# Why not δ alone: δ on raw counts is not a share. Two token sets need not be equally common, nor their
# counts equally spread (a value recognised by twenty tokens against one recognised by three), and then a
# half-and-half neutral set already gets a δ well away from 0 (the simulation's `uneven` case: +0.42 on
# average). An earlier version of this notebook ranked each value's counts against the attribute data
# before δ. That is not a sound statistic: tied counts (mostly zeros) became strict wins or losses decided by
# noise in the reference, and the bootstrap resampled only the neutral images, so on simulated half-and-half
# neutral sets its 95 % interval excluded 0 in 72 % of the studies, in 99 % where ties dominate
# (`ranked_null_fpr` in `benchmarks/bias_calibration.py`; the share's interval excluded ½ in 4 %). It is gone.

# %%
estimates = {}
for key, ds in studies.items():
    recount = (
        bias.recount_on(ds, tis[key], neutral_of[key], planted_label[key], held_truth[key], **selection)
        if reselect_tokens
        else None
    )
    estimates[key] = bias.estimate_bias(counts[key], n_boot, min_youden, seed, recount)
deltas = pd.DataFrame(
    [
        {
            "bias": b,
            "neutral set": set_name[(b, d)],
            **estimates[(b, d)],
            "toward": studies[(b, d)].class_names[planted_label[(b, d)]],
            "iem_accuracy": accuracy[(b, d)],
        }
        for b, d in studies
    ]
)

# %%
deltas.to_csv(out_dir / "deltas.csv", index=False)
deltas[
    [
        "bias",
        "neutral set",
        "images",
        "toward",
        "share",
        "share_low",
        "share_high",
        "check_p",
        "q",
        "sens",
        "spec",
        "delta",
        "delta_low",
        "delta_high",
        "delta_paper_half_scale",
        "mean_count_a",
        "mean_count_b",
        "tokens_a",
        "tokens_b",
        "iem_accuracy",
    ]
].round(3)
# %% [markdown]
# The paper's δ with its 95 % interval. δ mixes two things, how many images lean and how many tokens each
# value has: two histograms of different spread give δ ≠ 0 even for a half-and-half set, which is why the
# verdict below rests on the share.

# %%
plots.delta_bars(deltas)
# %% [markdown]
# ## By hand: δ and the share for one study
#
# Both statistics fit in a few plain lines. Cliff's δ is a count over **all pairs** of one neutral image's
# A count and another's B count: (#pairs A > B − #pairs A < B) / (n·m). Take the first study's neutral set:

# %% tags=["by-hand"]
one = next(iter(studies))  # the first study, e.g. ("colour", 3)
count_a, count_b = (c.tolist() for c in counts[one]["neutral"])  # per neutral image: A's tokens, B's tokens
wins = losses = 0
for x in count_a:  # every (A count, B count) pair
    for y in count_b:
        wins += x > y
        losses += x < y
delta_by_hand = (wins - losses) / (len(count_a) * len(count_b))
print(
    f"{one[0]}, {set_name[one]}: {wins} pairs A > B, {losses} pairs A < B, of {len(count_a) * len(count_b)}: "
    f"δ = {delta_by_hand:+.4f} (the original code's half scale: {delta_by_hand / 2:+.4f})"
)

# %% [markdown]
# The share: the rule calls a share `q` of the neutral images A. A true share `p` of A images would give
# q = sens·p + (1 − spec)·(1 − p) (true A images called A, plus B images wrongly called A); solved for p,
# that is Rogan–Gladen:

# %% tags=["by-hand"]
q, sens, spec = (float(estimates[one][k]) for k in ("q", "sens", "spec"))
share_by_hand = (
    (q + spec - 1) / (sens + spec - 1) if sens + spec != 1 else np.nan
)  # a rule that tells nothing
print(
    f"q = {q:.3f}, sens = {sens:.3f}, spec = {spec:.3f}: share = ({q:.3f} + {spec:.3f} - 1) / "
    f"({sens:.3f} + {spec:.3f} - 1) = {share_by_hand:.3f} (the library clips it to [0, 1])"
)

# %% [markdown]
# The same numbers from `cortex_utils.bias_stats`. `cliffs_delta` does not visit every pair: it sorts one
# sample and locates each value of the other in it by binary search, O((n + m) log m) instead of O(n·m);
# `rogan_gladen` clips to [0, 1] and gives no number (NaN) for a rule with sens + spec − 1 ≤ `min_youden`.

# %% tags=["by-hand-check"]
np.testing.assert_allclose(bias_stats.cliffs_delta(count_a, count_b), delta_by_hand, rtol=0, atol=1e-12)
np.testing.assert_allclose(estimates[one]["delta"], delta_by_hand, rtol=0, atol=1e-12)
expected = float(np.clip(share_by_hand, 0, 1)) if sens + spec - 1 > min_youden else np.nan
np.testing.assert_allclose(bias_stats.rogan_gladen(q, sens, spec, min_youden), expected, rtol=0, atol=1e-12)
np.testing.assert_allclose(estimates[one]["share"], expected, rtol=0, atol=1e-12)
print("by hand = library: Cliff's δ and the Rogan–Gladen share")

# %% [markdown]
# ## Against the truth
#
# On the planted default the truth is in the pixels of the neutral generations, measured as for the held-out
# images above. If the method works, the share's interval holds the pixel share (`pixel truth`). `trained
# share` is what the neutral prompt showed in the generator's training data; `A drawn as B` / `B drawn as A`
# repeat how often the labelled images contradict their prompts.

# %%
images = {d: digits.to_uint8(vqlib.decode(vq, torch.from_numpy(z))) for d, z in neutral.items()}
shares = {
    d: planted_bias.planted_shares(
        planted_bias.measured_attributes(images[d], np.full(len(z), d), thresholds), planted
    )
    for d, z in neutral.items()
}

# %%
deltas["digit"] = [d for _, d in studies]
deltas["trained share"] = [skew if d == biased_digit[b] else 0.5 for b, d in studies]
deltas["pixel truth"] = [shares[d][b] for b, d in studies]
deltas["A drawn as B"] = [drawn_wrong[key][0] for key in studies]
deltas["B drawn as A"] = [drawn_wrong[key][1] for key in studies]
metrics = bias.headline_metrics(deltas, bias_types, biased_digit, control_digit)
deltas[
    [
        "bias",
        "neutral set",
        "trained share",
        "pixel truth",
        "A drawn as B",
        "B drawn as A",
        "share",
        "share_low",
        "share_high",
        "check_p",
        "delta",
        "delta_paper_half_scale",
        "iem_accuracy",
    ]
].round(3)

# %% [markdown]
# Record the headline numbers:

# %%
record_metrics(run_dir, **metrics)

# %%
fig, ax = plt.subplots(figsize=(5.0, 4.4))
for b, marker in zip(bias_types, "os", strict=False):
    sub = deltas[deltas["bias"] == b]
    ok = sub[np.isfinite(sub["share"])]
    err = [ok["share"] - ok["share_low"], ok["share_high"] - ok["share"]]
    bars = ax.errorbar(ok["pixel truth"], ok["share"], yerr=err, fmt=marker, label=b, capsize=3)
    none = sub[~np.isfinite(sub["share"])]  # inconclusive: the interval is [0, 1]
    ax.vlines(none["pixel truth"], 0, 1, color=bars[0].get_color(), ls="--", lw=1)
    for _, row in sub.iterrows():
        y = row["share"] if np.isfinite(row["share"]) else 0.5
        ax.annotate(
            f"digit {row['digit']}",
            (row["pixel truth"], y),
            xytext=(5, -10),
            textcoords="offset points",
            fontsize=7,
        )
ax.plot([0, 1], [0, 1], color="k", lw=0.7, ls="--", label="estimate = truth")
ax.axhline(0.5, color="k", lw=0.5, ls=":")
ax.axvline(0.5, color="k", lw=0.5, ls=":")
ax.set(xlim=(0, 1), ylim=(0, 1), title="share estimate vs ground truth")
ax.set_xlabel("share of the planted value by pixels (truth)")
ax.set_ylabel("share estimated from tokens (95 % interval)")
ax.legend(fontsize=8, loc="upper left")
fig.tight_layout()

# %%
for d, im in images.items():
    plots.image_grid(im[:n_show], ncols=n_show, suptitle=f'neutral prompt "a {d}"')


# %% [markdown]
# ## Verdict
#
# Computed from this run, from the share's 95 % interval: **found** if it excludes ½ (on the planted side for
# a biased digit; on the control digit that is a false alarm), **not found** if it holds ½ and is at most
# `not_found_width` wide (so a lean much beyond ½ ± `not_found_width`/2 is ruled out), **inconclusive**
# otherwise (also when the error-rate check fails: then there is no interval, and the line gives the one
# before the check for reading). Each line says whether the pixel truth lies inside the interval, and gives
# the paper's δ.

# %%
lines = [
    bias.verdict_line(row, row["bias"], not_found_width, row["digit"] == biased_digit[row["bias"]])
    for _, row in deltas.iterrows()
]
for (b, d), acc in accuracy.items():
    if acc < 0.65:  # two balanced classes: 0.5 is chance
        lines.append(
            f"- *{b}, digit {d}: the attribute IEM is close to chance (accuracy {acc:.2f}), so its TIS says "
            "little; the tokens above owe most to the `specificity` filter, a frequency contrast, not to "
            "what the IEM learned.*"
        )
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Mitigation: editing the attribute tokens out
#
# If the planted value's attribute tokens really carry it, a generator that may not draw them should show the
# value less often: detection would then also give a cure. So the neutral prompt of each biased digit is
# sampled again with those ids **suppressed** (a logit of −∞ on them at every step; the generator draws its
# next most likely allowed id instead, `cortex_utils.mitigation`), and the result is measured **from pixels**
# with the rule that gave the truth above, not from tokens (a token edit scores itself well by construction).
#
# Two things could fake a success. Taking *any* ids out changes the images (the **control**: the same edit
# with as many other ids, drawn once with `seed`, each among the `mitigation["control_pool"]` ids that the
# unedited neutral generations use about as often as the attribute id it stands for; neither value's attribute
# ids are eligible. A draw uniform over all used ids would mostly pick rare ids and barely touch the images,
# too weak a control.) And an edit can push the attribute away by wrecking the digit: the independent
# evaluators of notebook 02 say whether each edited image still shows the prompted digit (*kept*: every
# evaluator's top class is the digit). Shares and agreements get Wilson's 95 % interval, changes Newcombe's
# (`bias_stats`, coverage checked by simulation in `tests/test_mitigation.py`). The edited generations are
# token datasets like the study's (`<run_dir>/bias/data/mitigation_<type>` and `..._random`), shipped in
# `data/default/bias` for the default and sampled here when the run's attribute ids or settings differ from
# their card's. They are sampled with other seeds than the study's (`seed` + 1, + 2): with the same seed their
# first token would be drawn from the same random numbers as the unedited set's, and the sets would not be the
# independent samples the intervals of their differences assume.

# %%
edit_ids, control_ids = {}, {}
for b in bias_types:
    key = (b, biased_digit[b])
    edit_ids[b] = np.asarray(ids[key][planted_label[key]], dtype=np.int64)  # the planted value's tokens
    if not len(edit_ids[b]):
        print(f"{b}: the study found no {planted[b]} tokens, so there is nothing to edit out")
        continue
    both_values = np.concatenate([np.asarray(v, dtype=np.int64) for v in ids[key].values()])
    control_ids[b] = mitlib.control_ids(
        neutral_of[key], edit_ids[b], both_values, seed, mitigation["control_pool"]
    )
display(
    pd.DataFrame(
        {
            b: {
                "suppressed (attribute)": list(edit_ids[b]),
                "control": list(control_ids[b]),
                "positions held, attribute": mitlib.token_share(neutral[biased_digit[b]], edit_ids[b]),
                "positions held, control": mitlib.token_share(neutral[biased_digit[b]], control_ids[b]),
            }
            for b in control_ids
        }
    ).T
)

# %%
edited = {}
edit_seed = {"after": seed + 1, "after_random": seed + 2}  # not the study's: three independent samples
for b in control_ids:
    for s, suppress in (("after", edit_ids[b]), ("after_random", control_ids[b])):
        name = f"mitigation_{b}" + ("_random" if s == "after_random" else "")
        edited[(b, s)], why = mitlib.load_or_sample_edited(
            tf,
            tf_path,
            vq,
            name,
            biased_digit[b],
            suppress,
            n_neutral,
            sampling["temperature"],
            sampling["top_k"] or None,
            edit_seed[s],
            out_dir,
            regenerate or retrain,
        )
        print(f"{b}, {s.replace('_', ' ')}: {why}")

# %% [markdown]
# Measured from pixels: the share of the planted value and the evaluators' agreement with the prompted digit,
# before (the study's own neutral generations, so the share before is the pixel truth above), after the edit
# and after the control edit:

# %%
judges = evaluators.load_run_evaluators(run_dir, vqlib.resolution(vq), 10)  # notebook 02's independent judges
measured = {
    b: {
        "before": neutral[biased_digit[b]],
        **{s: edited[(b, s)].tokens["neutral"] for s in ("after", "after_random")},
    }
    for b in control_ids
}
measured = {
    b: {s: mitlib.measure(vq, z, biased_digit[b], b, planted[b], thresholds, judges) for s, z in sets.items()}
    for b, sets in measured.items()
}
mitigation_table = {b: mitlib.summary(m) for b, m in measured.items()}
for b, t in mitigation_table.items():  # the same pixel rule as the truth above, on the same images
    np.testing.assert_allclose(t.loc["before", "share"], shares[biased_digit[b]][b], rtol=0, atol=1e-12)
display(pd.concat(mitigation_table, names=["bias", "set"]).astype(float).round(3))

# %% [markdown]
# The same numbers as a figure: the planted value's share (left; ½ is balance, the dashed line what the
# study's token estimate said before) and the digit agreement (right), each with its 95 % interval.

# %%
token_estimate = {
    b: deltas[(deltas["bias"] == b) & (deltas["digit"] == biased_digit[b])].iloc[0]["share"]
    for b in mitigation_table
}
names = {b: f"{b} (digit {biased_digit[b]}, {planted[b]})" for b in mitigation_table}
plots.mitigation_bars(mitigation_table, token_estimate, names)
# %% [markdown]
# What the edit does to the images (the first `n_show` of each set):

# %%
for b in control_ids:
    z = {
        s: torch.as_tensor(np.asarray(v), dtype=torch.long)
        for s, v in (
            ("before", neutral[biased_digit[b]]),
            *((s, edited[(b, s)].tokens["neutral"]) for s in ("after", "after_random")),
        )
    }
    display(
        Markdown(
            f"**{b}**, digit {biased_digit[b]}: before, edited (attribute ids out), control (control ids out)"
        )
    )
    row_names = {"before": "before", "after": "edited", "after_random": "control"}
    plots.rows_of_images({row_names[s]: vqlib.decode(vq, v[:n_show]) for s, v in z.items()}, ncols=n_show)
    plt.show()

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
record_metrics(run_dir, **mitigation_metrics)

# %% [markdown]
# ## Exercises
#
# The exercises use the first bias type of `bias_types` (colour in the default): `biased_key` is its
# biased digit's study, `control_key` its control digit's, and `biased_row` the biased study's row of
# `deltas`. A study's neutral counts are `counts[key]["neutral"]`, a pair (A counts, B counts) with A the
# planted value.

# %%
biased_key, control_key = (bias_types[0], biased_digit[bias_types[0]]), (bias_types[0], control_digit)
biased_row = deltas[(deltas["bias"] == biased_key[0]) & (deltas["digit"] == biased_key[1])].iloc[0]

# %% [markdown] tags=["exercise"]
# **1.** What number would the original code print as δ for the control study (`control_key`)? Its
# function works on the half scale [−0.5, 0.5]: (#pairs A > B + ½·#ties − n·m/2) / (n·m). Use the counts in
# `counts[control_key]["neutral"]`. Write your answer as `answer_1 = ...` (a number). Does the control
# digit, trained at half and half, get δ ≈ 0?

# %% tags=["solution"]
if solutions:
    answer_1 = bias_stats.cliffs_delta(*counts[control_key]["neutral"]) / 2


# %% tags=["exercise-check"]
def check_1(answer):
    a, b = (np.asarray(c, dtype=float) for c in counts[control_key]["neutral"])
    diff = a[:, None] - b[None, :]  # every pair, the original's double loop at once
    truth = ((diff > 0).sum() + 0.5 * (diff == 0).sum() - diff.size / 2) / diff.size
    assert abs(float(answer) - truth) < 1e-9, "not the original's half-scale δ of the control's counts"
    return True


exercise("1", globals(), check=check_1, hint="the standard δ of the same counts, halved", solutions=solutions)

# %% [markdown] tags=["exercise"]
# **2.** The simplest rule there is: in what share of the biased study's neutral images (`biased_key`) do
# the planted value's tokens **strictly outnumber** the other value's? (Planted value first in
# `counts[biased_key]["neutral"]`; the ids are in `ids[biased_key]`, by label.) Write your answer as
# `answer_2 = ...` (a number in [0, 1]). Compare it with the corrected `share` in `deltas`: why do they
# differ?

# %% tags=["solution"]
if solutions:
    a_2, b_2 = counts[biased_key]["neutral"]
    answer_2 = float((a_2 > b_2).mean())


# %% tags=["exercise-check"]
def check_2(answer):
    label_a = planted_label[biased_key]
    ids_a, ids_b = ids[biased_key][label_a], ids[biased_key][1 - label_a]
    flat = neutral_of[biased_key].reshape(len(neutral_of[biased_key]), -1)  # recount from the raw token grids
    truth = float((np.isin(flat, ids_a).sum(1) > np.isin(flat, ids_b).sum(1)).mean())
    assert abs(float(answer) - truth) < 1e-9, (
        "not the share of neutral images with more A tokens than B tokens"
    )
    return True


exercise(
    "2", globals(), check=check_2, hint="compare the two count arrays image by image", solutions=solutions
)

# %% [markdown] tags=["exercise"]
# **3.** Suppose the token rule never called a B image A (specificity 1.0). What would the Rogan–Gladen
# share of the biased study be, with its measured `q` and `sens` (in `biased_row`)?
# Write your answer as `answer_3 = ...` (a number in [0, 1]; `bias_stats.rogan_gladen` with `min_youden=0`
# helps). Is it above or below the reported `share`, and why?

# %% tags=["solution"]
if solutions:
    answer_3 = bias_stats.rogan_gladen(biased_row["q"], biased_row["sens"], 1.0, min_youden=0.0)


# %% tags=["exercise-check"]
def check_3(answer):
    q_3, sens_3 = float(biased_row["q"]), float(biased_row["sens"])
    truth = min(1.0, q_3 / sens_3) if sens_3 > 0 else np.nan  # (q + 1 - 1) / (sens + 1 - 1)
    assert np.isclose(float(answer), truth, rtol=0, atol=1e-9, equal_nan=True), (
        "not (q + spec - 1) / (sens + spec - 1), spec = 1"
    )
    return True


exercise("3", globals(), check=check_3, hint="with spec = 1 the formula is q / sens", solutions=solutions)
