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
# # 13 · Bias detection on real token data (the DALL·E-mini layout)
#
# Notebook 10 measures a generator's bias where the truth is planted. This notebook runs **the same steps,
# through the same functions** of `cortex_utils.bias` (attribute IEM → TIS of its training images → attribute
# tokens → counts → δ and share), on token data in the original CORTEX code's layout for DALL·E-mini, as the
# study of "doctor" images by skin colour and gender in the paper, *Concept-Centric Token Interpretation for
# Vector-Quantized Generative Models* (Yang, Shi, Du, Wu, Tan, Sun, Liu):
#
# ```
# <real_data["dir"]>/<bias type>/train.csv      filename,label,indices   attribute-labelled generations
# (labels 0/1)
#                                /val.csv        the same (held out: the token rule's error rates)
#                                /test.csv       optional, the same
#                                /neutral.csv    indices                  the neutral-prompt generations
#                                /class_names.txt  optional: the two values' names, one per line
# ```
#
# The ids refer to the codebook of `real_data["vq_checkpoint"]` (with `real_data["vq_config"]`, taming's YAML,
# for a taming `.ckpt`; this project's safetensors carry their config on their card). DALL·E-mini decodes with
# the VQGAN f16-16384 of taming transformers (Esser et al. 2021, CVPR): 256-dim codes, a 16×16 grid.
#
# What differs from notebook 10: there is no pixel truth. δ is signed toward the first value (label 0) and the
# share is that value's. The held-out images count as the value their label names, so if the labels are
# prompts the generator did not always follow, the estimate measures the neutral set's mix of the two
# prompts' outputs, not the share of images that show the value (notebook 10, "What the labelled images
# show"); the error-rate check needs a second labelling, so it does not run.
#
# **Without real data** (`real_data["dir"]` empty, the default: DALL·E-mini's weights and generations cannot
# be downloaded here) the notebook writes synthetic CSVs of exactly this layout
# (`prepare.write_synthetic_study`) for the shipped default tokenizer and runs on them: a grid of value 0
# carries id 1 at six positions, a grid of value 1 id 2, and a share `demo["shares"]` of each bias type's
# neutral grids are value 0's. There the answer is known by construction, so the run checks the plumbing
# against it; it says nothing about any generator. The tests run this notebook on such CSVs with a randomly
# initialised f16-16384 VQGAN.

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from cortex_run import SHIPPED_CHECKPOINTS, plots, prepare, report, tokenizers
from cortex_run.artifacts import note_trained, record_metrics, register
from cortex_run.checkpoints import read_card
from cortex_run.notebook import check_parameters, choice, repo_path, require
from cortex_utils import bias
from cortex_utils import vq as vqlib
from cortex_utils.tis import Noise

# %% [markdown]
# The knobs. `real_data` and `demo` are groups (dicts): set only the keys you change, e.g.
# `-p real_data '{dir: data/dalle, vq_checkpoint: data/vqgan/last.ckpt, vq_config: data/vqgan/model.yaml}'`.
#
# * `real_data`: the folder of CSVs, the tokenizer its ids refer to, and whether a `.ckpt` may be fully
#   unpickled (only for files you trust).
# * `bias_types`: the sub-folders of `real_data["dir"]` to study (one study each).
# * `demo`: without real data, the synthetic CSVs: value 0's share of the neutral grids per bias type (in the
#   order of `bias_types`) and how many grids per value and split.
# * The study's knobs, as notebook 10's of the same names: the attribute IEM, SmoothGrad's (Smilkov et al.
#   2017, arXiv:1706.03825) `nsamples`, the tokens (`selection`: `top_n` TIS positions per image, at most
#   `token_num` ids per value, each at least `specificity` times as frequent per image of its value as of the
#   other) and the `statistics` (`n_boot` bootstrap resamples, `reselect_tokens` in each, `min_youden` the
#   least separation a token rule needs, `equivalence_margin` m the largest lean from ½ that still counts as
#   no bias: an interval inside [½ − m, ½ + m] says "no bias beyond ±m").

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the results go to <run_dir>/bias_real (nothing of earlier notebooks is read)
real_data = {"dir": "", "vq_config": "", "vq_checkpoint": "", "trust_pickle": False}  # dir "": the demo
bias_types = ["colour", "thickness"]  # sub-folders of real_data["dir"], one study each
# synthetic CSVs without real data
demo = {"shares": [0.8, 0.5], "train": 600, "held_out": 100, "neutral": 300}
# arch: 1 vgg 2 vgg_deep 3 resnet_se 4 vit
attribute_iem = {"arch": 1, "width": 32, "epochs": 12, "lr": 0.002}
nsamples = 20  # SmoothGrad noisy copies
selection = {"top_n": 5, "token_num": 20, "specificity": 2.0}  # the attribute tokens (notebook 10's knobs)
# as notebook 10's
statistics = {"n_boot": 1000, "min_youden": 0.1, "reselect_tokens": True, "equivalence_margin": 0.1}
seed = 0
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)

# %%
check_parameters(globals(), "13_bias_real_data")
given = bool(real_data["dir"])
require(len(bias_types) >= 1 and len(set(bias_types)) == len(bias_types), "bias_types: name each study once")
require(
    not given or bool(real_data["vq_checkpoint"]),
    "real_data: dir needs vq_checkpoint (and vq_config for a taming .ckpt): the codebook its ids refer to",
)
require(
    given or (len(demo["shares"]) >= len(bias_types) and all(0 <= s <= 1 for s in demo["shares"])),
    f"demo: one share in [0, 1] per bias type ({bias_types}), got {demo['shares']}",
)
require(
    given or min(demo["train"], demo["held_out"], demo["neutral"]) >= 2,
    f"demo: train, held_out and neutral must be >= 2, got {demo}",
)
require(
    min(nsamples, selection["top_n"], selection["token_num"], statistics["n_boot"], attribute_iem["epochs"])
    >= 1,
    "nsamples, selection's top_n and token_num, statistics' n_boot and attribute_iem's epochs must be >= 1",
)
require(
    selection["specificity"] >= 0
    and 0 <= statistics["min_youden"] < 1
    and 0 < statistics["equivalence_margin"] < 0.5,
    "selection: specificity >= 0; statistics: min_youden in [0, 1), equivalence_margin in (0, 0.5); got "
    f"{statistics}",
)
choice("attribute_iem arch", attribute_iem["arch"], [1, 2, 3, 4])
run_dir = repo_path(run_dir)
out_dir = run_dir / "bias_real"

# %% [markdown]
# ## The tokenizer and the token data
#
# The tokenizer first (its codebook turns ids into the embeddings the IEM reads), then the CSVs, checked
# against it: a row with the wrong number of ids, or an id outside the codebook, is refused with the file and
# the line named. Each bias type becomes a token dataset (notebook 02's format) under `<run_dir>/bias_real`.

# %%
if real_data["vq_checkpoint"]:
    checkpoint = repo_path(real_data["vq_checkpoint"])
    config = repo_path(real_data["vq_config"]) if real_data["vq_config"] else read_card(checkpoint)["config"]
else:  # the demo's tokenizer: the shipped default one (notebook 01's)
    checkpoint = SHIPPED_CHECKPOINTS / "vq_mnist.safetensors"
    config = read_card(checkpoint)["config"]
vq = tokenizers.load_vq(config, checkpoint, trust_pickle=real_data["trust_pickle"])
print(
    f"tokenizer {checkpoint.name}: a {vq.family} with {vq.n_embed} codes of {vq.embed_dim} dims, "
    f"grid {vqlib.grid_shape(vq)}"
)

# %%
if given:
    root = repo_path(real_data["dir"])
else:
    root = out_dir / "synthetic"
    shares = dict(zip(bias_types, demo["shares"][: len(bias_types)], strict=True))
    truth = prepare.write_synthetic_study(root, vqlib.grid_shape(vq), vq.n_embed, shares, demo, seed=seed)
    display(
        Markdown(
            f"**No `real_data['dir']` given: a demonstration on synthetic CSVs** ({root}), whose neutral "
            "grids are value 0's in these shares (the truth): "
            + ", ".join(f"{b} {share:.3f}" for b, share in truth.items())
        )
    )
studies, neutral = prepare.load_real_study(root, bias_types, vqlib.vq_meta(vq), out_dir)
display(
    pd.DataFrame(
        {
            b: {
                **{s: len(y) for s, y in ds.labels.items()},
                "neutral": len(neutral[b]),
                "values": " / ".join(ds.class_names),
            }
            for b, ds in studies.items()
        }
    ).T
)

# %% [markdown]
# ## The study, step by step (notebook 10's steps)
#
# **1. The attribute IEM**, trained on each bias type's training split (there is no shipped one for your
# data), and its accuracy on the held-out images: an IEM at chance has TIS maps that say nothing about the
# attribute.

# %%
codebook = vqlib.codebook(vq)
iem_training = {**attribute_iem, "batch_size": 64, "seed": seed}
fitted = {
    b: prepare.attribute_iem(ds, codebook, f"{b}_real", iem_training, out_dir=out_dir, device=device)
    for b, ds in studies.items()
}
iems, iem_info = {b: model for b, (model, _) in fitted.items()}, {b: info for b, (_, info) in fitted.items()}
held_out = {b: prepare.iem_accuracy(iems[b], ds, codebook) for b, ds in studies.items()}  # (accuracy, split)
accuracy = {b: acc for b, (acc, _) in held_out.items()}
display(
    pd.DataFrame(
        {
            "IEM": {b: "trained here" if i["trained"] else "loaded" for b, i in iem_info.items()},
            "why": {b: i["why"] for b, i in iem_info.items()},
            "accuracy": accuracy,
            "on split": {b: split for b, (_, split) in held_out.items()},
        }
    ).round(3)
)

# %%
for b, info in iem_info.items():
    if info["trained"]:
        note_trained(run_dir, f"the attribute IEM {b}_real")
    if info["path"]:
        register(run_dir, f"attribute_iem_{b}_real", checkpoint=str(info["path"]))

# %% [markdown]
# **2. The TIS of its training images** (notebook 05's SmoothGrad), **3. each value's attribute tokens**
# (notebook 06's concept counts at `selection["top_n"]`, the `token_num` most counted ids specific to the
# value):

# %%
tis = {
    b: prepare.attribute_tis(
        iems[b], ds, codebook, out=out_dir / b / "tis_train.npy", noise=Noise(nsamples), seed=seed
    )
    for b, ds in studies.items()
}
ids = {b: bias.select_attribute_tokens(ds, tis[b], **selection)[1] for b, ds in studies.items()}
lines = [
    f"- **{b}**, {ds.class_names[c]}: " + (", ".join(str(int(t)) for t in v) or "none")
    for b, ds in studies.items()
    for c, v in ids[b].items()
]
display(Markdown("Each value's attribute tokens (ids, most counted first):\n\n" + "\n".join(lines)))

# %% [markdown]
# **4. Counts**: per image, how many positions hold each value's tokens; the histograms show the neutral
# generations' (a neutral prompt that leans to one value shows that value's counts shifted right).

# %%
counts = {b: bias.study_counts(ds, ids[b], neutral[b], planted=0) for b, ds in studies.items()}
plots.count_histograms(
    {
        f"{b}: neutral prompt": dict(zip(ds.class_names, counts[b]["neutral"], strict=True))
        for b, ds in studies.items()
    }
)
plt.show()
# %% [markdown]
# **5. δ and the share estimate**, signed toward the first value (label 0): the paper's Cliff's δ (Cliff 1993,
# *Psychological Bulletin*) of the neutral counts, and the share of neutral images the token rule calls value
# 0, corrected for the rule's error rates on the held-out images (Rogan & Gladen 1978, *American Journal of
# Epidemiology*), with a bootstrap interval that re-selects the tokens in every resample
# (`statistics["reselect_tokens"]`). Notebook 10 explains both, and why the verdict rests on the share.

# %%
estimates = {}
for b, ds in studies.items():
    recount = (
        bias.recount_on(ds, tis[b], neutral[b], 0, **selection) if statistics["reselect_tokens"] else None
    )
    estimates[b] = bias.estimate_bias(
        counts[b], statistics["n_boot"], statistics["min_youden"], seed, recount
    )
deltas = pd.DataFrame(
    [
        {
            "bias": b,
            "neutral set": "neutral prompt",
            **estimates[b],
            "toward": ds.class_names[0],
            "iem_accuracy": accuracy[b],
        }
        for b, ds in studies.items()
    ]
)
deltas.to_csv(out_dir / "deltas.csv", index=False)
metrics = report.real_data_metrics(deltas) if given else {}  # the demo's numbers are not a finding

# %% [markdown]
# δ and the share with their 95 % intervals, then the table: `q` is the share of neutral images the token rule
# calls value 0 before the correction, `sens` / `spec` the rule's sensitivity and specificity on the held-out
# images, `delta_paper_half_scale` δ/2 (the number the original code prints), `tokens_a` / `tokens_b` how
# many attribute tokens each value has.

# %%
plots.delta_bars(deltas, toward="value 0")
plt.show()
shown = ["toward", "share", "share_low", "share_high", "q", "sens", "spec", "delta", "delta_low"]
shown += ["delta_high", "delta_paper_half_scale", "tokens_a", "tokens_b", "iem_accuracy"]
display(deltas.set_index("bias")[shown].round(3).T)  # one column per bias type: the table fits the page

# %% [markdown]
# Record the headline numbers (real data only, as `bias_real_<type>_...`):

# %%
_ = record_metrics(run_dir, **metrics, device=device)

# %% [markdown]
# ## Verdict
#
# From the share's 95 % interval, with m = `statistics["equivalence_margin"]`: **no bias beyond ±m** if the
# interval lies inside [½ − m, ½ + m] (an equivalence rule: any lean is at most m), else **found** if it
# excludes ½, **inconclusive** otherwise (it holds ½ but reaches beyond the margin: the data cannot tell).
# With the demo's synthetic data, also whether the known share lies inside the interval.

# %%
lines = [
    report.verdict_line(row, row["bias"], statistics["equivalence_margin"]) for _, row in deltas.iterrows()
]
lines += [
    f"- *{b}: the attribute IEM is close to chance (accuracy {acc:.2f}); the tokens owe most to the "
    "`specificity` filter, not to what the IEM learned.*"
    for b, acc in accuracy.items()
    if acc < 0.65
]
if not given:
    lines += [
        f"- demo, {row['bias']}: the known share {truth[row['bias']]:.3f} lies "
        f"{'inside' if row['share_low'] <= truth[row['bias']] <= row['share_high'] else '**outside**'} "
        f"the interval [{row['share_low']:.2f}, {row['share_high']:.2f}]"
        for _, row in deltas.iterrows()
    ]
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Summary

# %%
bullets = [
    f"* {'Real data' if given else 'A demonstration on synthetic CSVs (no real data given)'}: "
    f"{len(studies)} bias types, {', '.join(f'{b} {len(neutral[b])}' for b in studies)} neutral grids."
]
bullets += [
    f"* **{row['bias']}**: share of the first value ({row['toward']}) {row['share']:.3f}, 95 % interval "
    f"[{row['share_low']:.3f}, {row['share_high']:.3f}]"
    + (f" (known share {truth[row['bias']]:.3f})" if not given else "")
    + f"; Cliff's δ {row['delta']:+.3f}; attribute IEM accuracy {row['iem_accuracy']:.3f}."
    for _, row in deltas.head(4).iterrows()
]
display(Markdown("\n".join(bullets)))

# %% [markdown]
# ## Questions
#
# 1. Which files does the DALL·E-mini layout hold per bias type, and what does each row carry?
# 2. Why is the attribute IEM's held-out accuracy checked before its TIS is used?
# 3. How are a value's attribute tokens chosen from the TIS of the training images?
# 4. What does Cliff's δ compare, and toward which value is it signed here?
# 5. Why is the share corrected with the Rogan–Gladen estimator, and from which images are the error rates?
# 6. When is a bias called found, no bias beyond ±m, or inconclusive?
# 7. Why does the demonstration on synthetic CSVs say nothing about any generator?
