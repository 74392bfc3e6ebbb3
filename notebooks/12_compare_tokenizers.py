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
# The reviewers asked whether CORTEX applies to "any model with a codebook". Notebooks 01–11 reach the
# tokenizer only through `cortex_utils.vq.Tokenizer`, so the same notebooks run on a second family: a VQ-VAE
# whose quantizer is **finite scalar quantization** (FSQ, from `vector-quantize-pytorch`), where a token is a
# point of a fixed 8×6×5 lattice instead of a learned codebook vector (notebook 01 says why we chose it).
#
# This notebook puts finished runs side by side: by default `make compare`'s two runs, the taming VQGAN
# (`--preset encoded`) and the FSQ VQ-VAE (`--preset vqvae`), both on **the same real digits**, encoded (the
# same split, so test image *i* is the same digit in both). Every number below is read from the runs'
# `metrics.json` and result files, or computed here from their saved TIS; nothing is typed in.
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

# %%
import json
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display

from cortex_utils import concepts, plots
from cortex_utils import datasets as tokds
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import read_metrics, record_metrics, registered
from cortex_utils.notebook import check_parameters, repo_path, require

# %% tags=["parameters"]
run_dir = "runs/interactive"  # where this notebook records its own numbers (relative to the repo root)
runs = {}  # label -> a finished run directory to compare; {} -> this run_dir alone
top = 5  # the top positions whose share of the TIS mass is measured
n_show = 6  # test digits shown per run

# %%
params = check_parameters(globals(), "12_compare_tokenizers")
run_dir = repo_path(run_dir)
runs = {str(k): repo_path(v) for k, v in (runs or {"this run": run_dir}).items()}
missing = [f"{k}: {v}" for k, v in runs.items() if not (v / "metrics.json").is_file()]
require(not missing, f"these runs have no metrics.json (run them first, e.g. make compare): {missing}")
require(top >= 1 and n_show >= 1, "top and n_show must be >= 1")
params

# %% [markdown]
# ## The runs
#
# Each run's tokenizer, its dataset and its test TIS (from the IEM notebook 05 explained).

# %%
metrics = {k: read_metrics(v) for k, v in runs.items()}
info = {}
for k, v in runs.items():
    vq = vqlib.load_run_vq(v)
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
ax.legend(fontsize=8)
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
    ax.legend()
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
record_metrics(
    run_dir,
    **{
        f"compare_{re.sub(r'[^0-9A-Za-z]+', '_', k)}_tis_top{top}_mass_share": round(float(s.mean()), 4)
        for k, s in shares.items()
    },
)
print(json.dumps({k: round(float(s.mean()), 4) for k, s in shares.items()}))

# %% [markdown]
# ## Questions
#
# 1. The FSQ codebook spans only 3 of its 32 dimensions (notebook 01). Why can the IEM still tell the digits
#    apart, and what does SmoothGrad's noise (added in all 32 dimensions) do to a 3-dimensional codebook?
# 2. Two FSQ tokens whose lattice points differ in one level are neighbours by construction. Look at the
#    concept tokens of notebook 06 in the `vqvae` run: are a class's concept tokens neighbours on the lattice?
# 3. Look at the decoded digits above, drawn in colour: which family keeps each digit's colour? Compute the
#    mean colour error per test digit (decoded minus original, averaged over the ink) for both runs.
# 4. A residual quantizer gives each position several ids. How would you define "the token at a position"
#    for notebook 06's counting, and what would the protocol's `codebook()` return?
