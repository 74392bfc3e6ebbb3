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
# # 12 · Two tokenizer families, side by side
#
# CORTEX is the method of *Concept-Centric Token Interpretation for Vector-Quantized Generative Models*
# (Yang, Shi, Du, Wu, Tan, Sun, Liu); its reviewers asked whether it applies to "any model with a codebook".
# Notebooks 01–11 reach the tokenizer only through `cortex_utils.vq.Tokenizer`, so the same notebooks run on
# a second family: a VQ-VAE whose quantizer is **finite scalar quantization** (FSQ, from
# `vector-quantize-pytorch`), where a token is a point of a fixed 8×6×5 lattice instead of a learned codebook
# vector (notebook 01 says why we chose it).
#
# This notebook puts finished runs side by side: by default `make compare`'s two runs, the taming VQGAN
# (taming transformers, Esser et al. 2021, CVPR; `--preset encoded`) and the FSQ VQ-VAE (`--preset vqvae`),
# both on **the same real digits**, encoded (the same split, so test image *i* is the same digit in both).
# Every number below is read from the runs' `metrics.json` and result files, or computed here from their saved
# TIS; nothing is typed in.
#
# The questions, and where each answer comes from:
#
# * how faithful is the tokenizer, how much of its codebook is used? From notebook 01: `vq_test_psnr_db`,
#   `vq_codebook_usage`.
# * can the IEM read the digit from the tokens? From notebook 04: `iem1_test_top1`.
# * how concentrated is the explanation? From notebook 05's test TIS: share of an image's TIS mass in its
#   top-5 positions.
# * does hiding the top-TIS tokens hurt more than hiding random ones? From notebook 07:
#   `image_level_tis_beats_random`, its table.
# * can a region be rewritten into another digit? From notebook 09: `codebook_target_prob_before` / `_after`.
#
# With `codebook_size_study = True` (`make codebook-sizes`: the same taming model with 64, 256 and 1,024
# codes) the last section puts the runs in one table, one row per codebook size, every figure beside its
# control.

# %%
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from cortex_run import compare, plots, tokenizers
from cortex_run import datasets as tokds
from cortex_run.artifacts import read_metrics, record_metrics, registered, write_json
from cortex_run.notebook import check_parameters, repo_path, require
from cortex_utils import concepts
from cortex_utils import vq as vqlib

# %% tags=["parameters"]
run_dir = "runs/interactive"  # where this notebook records its own numbers (relative to the repo root)
runs = {}  # label -> a finished run directory to compare; {} -> this run_dir alone
top = 5  # the top positions whose share of the TIS mass is measured
n_show = 6  # test digits shown per run
codebook_size_study = False  # the runs differ only in codebook size: one row per size (codebook_sizes.csv)
results_out = ""  # the study's table also as JSON here (relative to the repo root; "" -> none)
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)

# %%
check_parameters(globals(), "12_compare_tokenizers")
run_dir = repo_path(run_dir)
runs = {str(k): repo_path(v) for k, v in (runs or {"this run": run_dir}).items()}
missing = [f"{k}: {v}" for k, v in runs.items() if not (v / "metrics.json").is_file()]
require(not missing, f"these runs have no metrics.json (run them first, e.g. make compare): {missing}")
require(top >= 1 and n_show >= 1, "top and n_show must be >= 1")
require(
    not results_out or codebook_size_study,
    "results_out writes the codebook-size table: set codebook_size_study",
)

# %% [markdown]
# ## The runs
#
# Each run's tokenizer, its dataset and its test TIS (from the IEM notebook 05 explained).

# %%
metrics = {k: read_metrics(v) for k, v in runs.items()}
info = {}
for k, v in runs.items():
    vq = tokenizers.load_run_vq(v, device)
    ds = tokds.load_token_dataset(registered(v, "dataset")["path"], vq=vq)
    tis_entry = registered(v, "tis")
    require("test" in tis_entry["splits"], f"{k}: notebook 05 computed no test TIS")
    tis = np.load(repo_path(tis_entry["path"]) / "test.npy")
    info[k] = {"vq": vq, "ds": ds, "tis": tis, "iem": tis_entry["iem_arch"]}
display(
    pd.DataFrame(
        {
            k: {
                "family": i["vq"].family,
                "codebook": f"{i['vq'].n_embed} × {i['vq'].embed_dim}",
                "grid": "×".join(map(str, i["ds"].grid)),
                "dataset": i["ds"].manifest["source"],
                "test images": len(i["ds"].labels["test"]),
                "TIS of IEM": i["iem"],
            }
            for k, i in info.items()
        }
    )
)

# %% [markdown]
# ## How concentrated is the explanation?
#
# For one image, by hand: sort its TIS, take the `top` highest positions and divide their absolute scores by
# the sum over all positions. A map that spreads evenly over the 64 positions gives `top / 64`; a map that
# points at a few tokens gives close to 1.

# %% tags=["by-hand"]
first = next(iter(info.values()))
one = first["tis"][0].ravel()
best = np.argsort(-one, kind="stable")[:top]
hand_share = np.abs(one[best]).sum() / np.abs(one).sum()
print(
    f"test image 0: the top-{top} positions {sorted(best.tolist())} hold {hand_share:.1%} of its |TIS| "
    f"(even spread: {top / one.size:.1%})"
)


# %% [markdown]
# The same for every test image of every run with `concepts.top_tis_share` (checked against the hand
# computation).

# %% tags=["by-hand-check"]
assert np.isclose(concepts.top_tis_share(first["tis"][:1], top)[0], hand_share)
shares = {k: concepts.top_tis_share(i["tis"], top) for k, i in info.items()}
print("checked: concepts.top_tis_share agrees with the hand computation")

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for k, s in shares.items():
    ax.hist(s, bins=30, range=(0, 1), alpha=0.6, label=f"{k} (mean {s.mean():.2f})")
ax.axvline(top / first["tis"][0].size, color="k", ls="--", label="even spread")
ax.set_xlabel(f"share of an image's |TIS| in its top-{top} positions")
ax.set_ylabel("test images")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
fig.tight_layout()

# %% [markdown]
# ## Side by side
#
# The headline numbers of each run. "TIS beats random" is the share of notebook 07's (evaluator, n ≥ 1) cells,
# pixel space, where masking the ids at the top-n TIS positions lowers the evaluators' target probability
# more than masking the ids at n random positions (1.0: in every cell).

# %%
rows = {
    "reconstruction PSNR, real test digits (dB)": "vq_test_psnr_db",
    "codebook usage, real test digits": "vq_codebook_usage",
    "IEM 1 (VGG) test top-1": "iem1_test_top1",
    "TIS beats random (pixel space)": "image_level_tis_beats_random",
    "TIS beats random (token space)": "image_level_tis_beats_random_token_space",
    "codebook optimisation: target probability before": "codebook_target_prob_before",
    "codebook optimisation: target probability after": "codebook_target_prob_after",
}
table = pd.DataFrame(
    {k: {name: m.get(key, np.nan) for name, key in rows.items()} for k, m in metrics.items()}
)
table.loc[f"mean share of |TIS| in the top-{top} positions"] = {k: float(s.mean()) for k, s in shares.items()}
display(table.round(3))

# %% [markdown]
# Masking, curve by curve: notebook 07's mean target probability against the number of positions whose ids are
# masked, top-TIS against random, pixel space (mean over the evaluators).

# %%
fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3), squeeze=False)
for ax, (k, v) in zip(axes[0], runs.items(), strict=True):
    csv = v / "evaluation" / "image_level.csv"
    if not csv.is_file():
        ax.set_title(f"{k}: no notebook 07 table")
        continue
    t = pd.read_csv(csv)
    t = t[t["space"] == "pixel"].groupby(["selection", "n"])["mean_prob"].mean().unstack(0)
    for sel in ("tis", "random"):
        ax.plot(t.index, t[sel], marker="o", label=sel)
    ax.set_xlabel("n (positions whose ids are masked)")
    ax.set_ylabel("evaluators' target probability")
    ax.set_title(k)
    ax.legend(title="masked positions", fontsize=8)
fig.tight_layout()

# %% [markdown]
# The first test digit of each class through each tokenizer, and each run's TIS map of it (brighter: more
# important; each map divided by the largest score of its run's maps shown). Where the runs hold the same
# encoded real digits (the same split), column *j* is the same digit in every row.

# %%
panels, picked = {}, {}
for k, i in info.items():
    labels = i["ds"].labels["test"]
    picked[k] = np.array([np.flatnonzero(labels == c)[0] for c in np.unique(labels)[:n_show]])
    panels[f"{k}: decoded"] = vqlib.decode(
        i["vq"], torch.from_numpy(i["ds"].tokens["test"][picked[k]].astype(np.int64))
    )
plots.rows_of_images(panels, ncols=min(len(p) for p in picked.values()))
plt.show()
# %%
ncols = min(len(p) for p in picked.values())
fig, axes = plt.subplots(len(info), ncols, figsize=(1.4 * ncols, 1.5 * len(info)), squeeze=False)
for row, (k, i) in zip(axes, info.items(), strict=True):
    maps = i["tis"][picked[k][:ncols]]
    for j, ax in enumerate(row):
        im = ax.imshow(maps[j] / maps.max(), cmap="magma", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"label {i['ds'].labels['test'][picked[k][j]]}", fontsize=8)
    row[0].set_ylabel(k, fontsize=8)
fig.colorbar(im, ax=axes, shrink=0.8, label="TIS / the run's largest shown")
fig.suptitle("TIS maps")
plt.show()
# %% [markdown]
# ## What the runs say
#
# Written from the table above.

# %%
lines = []
for k in runs:
    m, s = metrics[k], shares[k]
    beats = m.get("image_level_tis_beats_random")
    lines.append(
        f"* **{k}** ({info[k]['vq'].family}, {info[k]['ds'].manifest['source']} data): PSNR "
        f"{m.get('vq_test_psnr_db', float('nan')):.1f} dB, {m.get('vq_codebook_usage', float('nan')):.0%} of "
        f"{info[k]['vq'].n_embed} codes used; the IEM reads the digit from the tokens in "
        f"{m.get('iem1_test_top1', float('nan')):.1%} of the test images; the top-{top} positions hold "
        f"{s.mean():.0%} of an image's TIS mass (even spread {top / first['tis'][0].size:.0%}); top-TIS "
        f"masking beats random in {beats:.0%} of the pixel-space cells"
        if beats is not None
        else f"* **{k}**: notebook 07 was not run"
    )
if len(runs) == 2:
    (a, sa), (b, sb) = shares.items()
    more, less = (a, b) if sa.mean() > sb.mean() else (b, a)
    lines.append(
        f"\nMean top-{top} share of the TIS mass: {a} {sa.mean():.1%}, {b} {sb.mean():.1%}: "
        + (
            "about equally concentrated."
            if abs(sa.mean() - sb.mean()) < 0.005
            else f"the explanations of **{more}** are the more concentrated."
        )
    )
print("\n".join(lines))

# %% [markdown]
# Recorded as `compare_<label>_tis_top<top>_mass_share` in this notebook's `metrics.json` (the label's other
# characters as `_`).

# %%
_ = record_metrics(
    run_dir,
    device=device,
    **{
        f"compare_{re.sub(r'[^0-9A-Za-z]+', '_', k)}_tis_top{top}_mass_share": round(float(s.mean()), 4)
        for k, s in shares.items()
    },
)

# %% [markdown]
# ## Codebook size
#
# With `codebook_size_study` the runs are the same taming model trained with different numbers of codes, on
# the same real digits. One row per size (`compare.read_run`), each figure with its control in the next
# column:
#
# * PSNR and codebook usage of the tokenizer, the test accuracy of the IEM the run explained (IEM 1);
# * `tis_top_share`: the mean share of an image's |TIS| at its top-`top` positions, beside an even spread;
# * `class_distinct_ids_tis`: for each class, how many distinct ids its test images hold at their top-`top`
#   TIS positions (mean over classes), beside the same count at `top` random positions per image;
# * masking: the evaluators' target-probability drop when the ids at the top-TIS positions are masked, beside
#   random positions (notebook 07, pixel space, mean over evaluators and n ≥ 1), and the share of its cells
#   where TIS wins; the target-logit drop when a class's concept tokens are masked, beside its most frequent
#   tokens (notebook 08).
#
# First `class_distinct_ids` by hand for one class of the first run, against the function.

# %% tags=["by-hand"]
ids = concepts.top_tokens(first["ds"].tokens["test"], first["tis"], top)
labels0 = first["ds"].labels["test"]
hand_distinct = len(set(ids[labels0 == labels0[0]].ravel().tolist()))
one_class = compare.class_distinct_ids(ids[labels0 == labels0[0]], labels0[labels0 == labels0[0]])
assert hand_distinct == one_class
print(
    f"class {labels0[0]}: its {int((labels0 == labels0[0]).sum())} test images hold {hand_distinct} distinct "
    f"ids at their top-{top} TIS positions ({top * int((labels0 == labels0[0]).sum())} positions); checked"
)

# %%
if codebook_size_study:
    sizes = {k: int(i["vq"].n_embed) for k, i in info.items()}
    require(
        len(set(sizes.values())) == len(sizes), f"codebook_size_study needs one run per size, got {sizes}"
    )
    require(
        all(i["vq"].family == "taming_vqgan" for i in info.values()), "codebook_size_study: taming runs only"
    )
sizes_table = compare.runs_table({k: compare.read_run(v, top=top) for k, v in runs.items()})
if codebook_size_study:
    sizes_table = sizes_table.drop(columns="family").set_index("codebook_size").sort_index()
display(sizes_table.round(3).T)  # one column per run: the table fits the page
for figure, control in compare.CONTROLS.items():
    above = [str(k) for k, r in sizes_table.iterrows() if r[figure] > r[control]]
    print(
        f"{figure} above its control ({control}) for: {', '.join(above) or 'none'} of {len(sizes_table)} rows"
    )

# %%
panels = {
    "PSNR (dB)": ["psnr_db"],
    "codebook usage": ["codebook_usage"],
    "IEM 1 test top-1": ["iem_test_top1"],
    f"share of |TIS| at top-{top}": ["tis_top_share", "tis_top_share_even"],
    "distinct ids per class": ["class_distinct_ids_tis", "class_distinct_ids_random"],
    "image masking: prob. drop": ["image_mask_prob_drop_tis", "image_mask_prob_drop_random"],
    "concept masking: logit drop": ["concept_mask_logit_drop_concept", "concept_mask_logit_drop_frequency"],
}
x = sizes_table.index if codebook_size_study else sizes_table["codebook_size"]
fig, axes = plt.subplots(2, 4, figsize=(12, 5.6))
axes.flat[-1].axis("off")
for ax, (title, cols) in zip(axes.flat, panels.items(), strict=False):
    for col, style in zip(cols, ("-o", "--s"), strict=False):
        ax.plot(x, sizes_table[col], style, label=col.rsplit("_", 1)[-1])
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(x)), [str(v) for v in sorted(set(x))], minor=False)
    ax.minorticks_off()
    ax.set_xlabel("codebook size (codes)")
    ax.set_ylabel(title)
    if len(cols) > 1:
        ax.legend(fontsize=7)
fig.suptitle("each figure against the codebook size (dashed: its control)")
fig.tight_layout()

# %% [markdown]
# Recorded with the codebook size in the key (`codebook_size_<k>_<column>`), the table as `codebook_sizes.csv`
# in this run and, with `results_out`, as JSON with the machine it ran on (the README's table is rendered from
# it).

# %%
if codebook_size_study:
    sizes_table.to_csv(run_dir / "codebook_sizes.csv")
    record_metrics(
        run_dir,
        **{
            f"codebook_size_{k}_{c}": None if pd.isna(v) else round(float(v), 4)
            for k, row in sizes_table.iterrows()
            for c, v in row.items()
        },
    )
    if results_out:
        write_json(
            repo_path(results_out),
            {
                "about": "python -m cortex_run.pipeline --preset codebook-sizes (make codebook-sizes), "
                "notebook 12",
                "machine": compare.machine(),
                "top": top,
                "controls": compare.CONTROLS,
                "run_seconds": {
                    int(i["vq"].n_embed): metrics[k].get("pipeline_seconds") for k, i in info.items()
                },
                "rows": {
                    int(k): {c: None if pd.isna(v) else round(float(v), 4) for c, v in row.items()}
                    for k, row in sizes_table.iterrows()
                },
            },
        )
        print(f"wrote {results_out}")
    print(f"wrote {run_dir / 'codebook_sizes.csv'}")

# %% [markdown]
# ## Summary

# %%
bullets = [
    f"* **{k}** ({info[k]['vq'].family}): PSNR {metrics[k].get('vq_test_psnr_db', float('nan')):.1f} dB, "
    f"{metrics[k].get('vq_codebook_usage', float('nan')):.0%} of {info[k]['vq'].n_embed} codes used, IEM 1 "
    f"test top-1 {metrics[k].get('iem1_test_top1', float('nan')):.3f}; the top-{top} positions hold "
    f"{shares[k].mean():.1%} of an image's |TIS| (even spread {top / first['tis'][0].size:.1%})"
    for k in list(runs)[:4]
]
beats = {k: m.get("image_level_tis_beats_random") for k, m in metrics.items()}
bullets.append(
    "* Top-TIS masking beats random masking (notebook 07, pixel space) in "
    + ", ".join(f"{v:.0%} of the cells for {k}" for k, v in beats.items() if v is not None)
    if any(v is not None for v in beats.values())
    else "* Notebook 07 was not run on these runs: no masking comparison."
)
above = {f: sum(bool(r[f] > r[c]) for _, r in sizes_table.iterrows()) for f, c in compare.CONTROLS.items()}
bullets.append(
    f"* Each figure above its control, of {len(sizes_table)} runs: "
    + "; ".join(f"{f} {n}" for f, n in above.items())
)
display(Markdown("\n".join(bullets)))

# %% [markdown]
# ## Questions
#
# 1. What is the difference between a learned codebook (taming VQGAN) and an FSQ lattice?
# 2. Why can the same notebooks 01–11 run on both tokenizer families?
# 3. How is the share of an image's |TIS| in its top positions computed, and what is it for an even spread?
# 4. Which notebook's numbers say whether hiding the top-TIS tokens hurts more than hiding random ones?
# 5. What does `class_distinct_ids_tis` count, and what is its control?
# 6. Why must the two runs hold the same encoded real digits for column *j* to be the same digit?

# %% [markdown]
# ## Exercises
#
# Open questions, no checks.
#
# 1. The FSQ codebook spans only 3 of its 32 dimensions (notebook 01). Why can the IEM still tell the digits
#    apart, and what does SmoothGrad's noise (Smilkov et al. 2017; added in all 32 dimensions) do to a
#    3-dimensional codebook?
# 2. Two FSQ tokens whose lattice points differ in one level are neighbours by construction. Look at the
#    concept tokens of notebook 06 in the `vqvae` run: are a class's concept tokens neighbours on the lattice?
# 3. Look at the decoded digits above, drawn in colour: which family keeps each digit's colour? Compute the
#    mean colour error per test digit (decoded minus original, averaged over the ink) for both runs.
# 4. A residual quantizer gives each position several ids. How would you define "the token at a position"
#    for notebook 06's counting, and what would the protocol's `codebook()` return?
