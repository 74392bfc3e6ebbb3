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
# # 01 · The tokenizer: a VQ model on real handwritten digits
#
# This tutorial rebuilds CORTEX from *Concept-Centric Token Interpretation for Vector-Quantized Generative
# Models* by Tianze Yang, Yucheng Shi, Mengnan Du, Xuansheng Wu, Qiaoyu Tan, Jin Sun and Ninghao Liu ("the
# paper"; an earlier version, *CORTEX: Concept-Oriented Token Explanation in Vector-Quantized Generative
# Model*, was an ICLR 2025 submission, discussed on OpenReview).
#
# A **vector-quantized generative model** (VQGM) encodes an image into a small grid of vectors and replaces
# each by the nearest row of a learned table, the **codebook**; that row's index is a **token**. A decoder
# turns a grid of tokens back into pixels. CORTEX explains a VQGM in the language of these tokens.
#
# Our tokenizer is a small `VQModel` from taming transformers (Esser et al. 2021, *Taming Transformers for
# High-Resolution Image Synthesis*, CVPR). Parameters swap in a second family (`vqvae_fsq`: tokens are points
# of a fixed lattice), another codebook size, your checkpoint, or retraining (see `cortex_run/prepare.py`).

# %%
import time

_t0 = time.perf_counter()  # the imports' wall time is what every kernel start pays
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from cortex_run import digits, plots, prepare, tokenizers
from cortex_run.artifacts import record_metrics, register
from cortex_run.notebook import check_parameters, choice, repo_path, require
from cortex_utils import vq as vqlib

_import_seconds = time.perf_counter() - _t0

# %% tags=["parameters"]
run_dir = "runs/interactive"  # where this run's artifacts and metrics.json go (relative to the repo root)
seed = 0  # data split and colours, model initialisation
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
family = "taming_vqgan"  # the tokenizer family: taming_vqgan (the default) | vqvae_fsq (VQ-VAE with FSQ)
codebook_size = 256  # taming: how many codes (shipped: 64, 256 the default, 1024; retrain for another size)
retrain = False  # train the family's model here instead of loading the shipped checkpoint
train_steps = 550  # optimisation steps when retraining (batch of 64 digits each)
batch_size = 64
learning_rate = 0.001
revive_every = 50  # taming: steps between dead-code revivals (0: never)
bf16 = "auto"  # bfloat16 autocast when retraining: auto (on with AMX tiles) | on | off
discriminator_weight = 0.0  # taming: > 0 adds taming's patch discriminator (hinge loss)
checkpoint_out = ""  # where a retrained model is saved ("" -> <run_dir>/checkpoints)
vq_config = ""  # a taming config YAML, e.g. vqgan_imagenet_f16_16384/configs/model.yaml
vq_checkpoint = ""  # its Lightning .ckpt (or our .safetensors); "" -> the embedded default
trust_pickle = False  # allow a .ckpt that needs full unpickling (only for files you trust)
n_show = 10  # images per row in the figures

# %%
check_parameters(globals(), "01_vq_model")
require(train_steps >= 1 and batch_size >= 1, "train_steps and batch_size must be >= 1")
require(learning_rate > 0, "learning_rate must be > 0")
choice("bf16", bf16, ["auto", "on", "off"])
choice("family", family, list(tokenizers.FAMILIES))
require(bool(vq_config) == bool(vq_checkpoint), "give both vq_config and vq_checkpoint, or neither")
run_dir = repo_path(run_dir)
run_dir.mkdir(parents=True, exist_ok=True)
_ = torch.manual_seed(seed)

# %% [markdown]
# ## The data: real digits, in colour
#
# 5,000 real MNIST digits, split 70 / 15 / 15 % into train / validation / test, padded to 32×32 and drawn
# in one of eight colours.

# %%
data = digits.load_digits(seed=seed)
print(", ".join(f"{s}: {len(d['labels'])} images" for s, d in data.items()))
labels = data["train"]["labels"]
pick = [np.flatnonzero(labels == c)[k] for k in range(2) for c in range(10)]
plots.image_grid(data["train"]["images"][pick], titles=labels[pick], ncols=n_show, suptitle="training digits")

# %% [markdown]
# ## The tokenizer

# %%
training = {"steps": train_steps, "batch_size": batch_size, "lr": learning_rate, "bf16": bf16}
training.update(revive_every=revive_every, discriminator_weight=discriminator_weight)
options = dict(retrain=retrain, vq_config=vq_config, vq_checkpoint=vq_checkpoint, trust_pickle=trust_pickle)
tok = prepare.tokenizer(family, codebook_size, data, seed=seed, training=training, **options)
vq, meta = tok["vq"].to(device), vqlib.vq_meta(tok["vq"])
print(f"{meta['vq_family']}, {tok['origin']}: {meta['n_embed']} codes of width {meta['embed_dim']}")
if tok["log"] is not None:
    curves = ("loss", "train_psnr_db", "val_psnr_db", "revived_total", "batch_codes_used")
    plots.training_curves(tok["log"], [c for c in curves if c in tok["log"]], title="VQ training")

# %% [markdown]
# ## How good is it? Held-out test digits
#
# **PSNR** compares each reconstruction with its original (higher is better; our bar: 24 dB). **Codebook
# usage** is the share of codebook rows occurring in the test digits' tokens (bar: 50 %); CORTEX can never
# explain an unused row.

# %%
test = digits.to_model_input(data["test"]["images"])
if (size := vqlib.resolution(vq)) != test.shape[-1]:  # a model of another resolution: digits resized
    test = F.interpolate(test, size=(size, size), mode="bilinear", align_corners=False)
report = vqlib.reconstruction_report(vq, test)
one = [int(np.flatnonzero(data["test"]["labels"] == c)[0]) for c in range(10)]  # a digit per class
psnr, usage = round(report["psnr_db"], 3), round(report["codebook_usage"], 4)
record_metrics(run_dir, vq_family=meta["vq_family"], vq_test_psnr_db=psnr, vq_codebook_usage=usage)
record_metrics(run_dir, kernel_import_seconds=round(_import_seconds, 2), device=device)
print(f"test PSNR {report['psnr_db']:.2f} dB, codebook usage {report['codebook_usage']:.1%}")

# %%
shown = one[:n_show]
plots.rows_of_images(
    {"original": test[shown], "reconstruction": report["reconstructions"][shown]}, ncols=n_show
)
plots.codebook_usage(report["counts"], title="test digits")

# %% [markdown]
# ## An image is a grid of tokens
#
# Each cell is one token, covering a 4×4-pixel patch.

# %%
fig, axes = plt.subplots(2, 4, figsize=(10, 5))
for ax_img, ax_grid, i in zip(axes[0::1, 0::2].flat, axes[0::1, 1::2].flat, one[:4], strict=True):
    grid = report["tokens"][i].numpy()
    ax_img.imshow(plots.to_hwc(test[i]))
    ax_grid.imshow(grid, cmap="tab20", interpolation="nearest")
    for (r, c), t in np.ndenumerate(grid):
        ax_grid.text(c, r, str(t), ha="center", va="center", fontsize=6)
    ax_img.set_title(f"test digit {data['test']['labels'][i]}")
    ax_grid.set_title("its token ids")
for ax in axes.flat:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## How many directions do the codebook's rows use?
#
# Centre the codebook; with singular values $s_i$, direction $i$ holds the share $s_i^2 / \sum_j s_j^2$ of
# the rows' variance.

# %%
cb = vqlib.codebook(vq)
sv = torch.linalg.svdvals(cb - cb.mean(0))
share = (sv**2 / (sv**2).sum()).numpy()
dims = int((sv > 1e-4 * sv[0]).sum())  # directions with a non-zero singular value
fig, ax = plt.subplots(figsize=(6, 2.6))
ax.bar(np.arange(1, len(share) + 1), share)
ax.set(xlabel="direction, largest first", ylabel="share of variance", title=f"{meta['vq_family']} codebook")
fig.tight_layout()
print(f"2 leading directions: {share[:2].sum():.1%} of the variance; 5 leading: {share[:5].sum():.1%}")
print(f"the rows span {dims} of {meta['embed_dim']} dimensions (non-zero singular values)")

# %% [markdown]
# ## Keep it for the next notebooks
#
# `registry.json` records this run's tokenizer (a retrained one is saved first, with a card).

# %%
weights = prepare.save_tokenizer(run_dir, tok, report, data, codebook_size, checkpoint_out)
entry = {"family": family, "config": tok["config"], "checkpoint": str(weights), "trust_pickle": trust_pickle}
register(run_dir, "vq", **entry, fingerprint=meta["vq_fingerprint"])
print(f"this run's tokenizer: {weights.name}")

# %% [markdown]
# ## Summary

# %%
h, w = meta["grid"]
display(
    Markdown(f"""
- A digit becomes {h}×{w} tokens from {meta["n_embed"]} codes.
- Test reconstructions: {report["psnr_db"]:.1f} dB PSNR; {report["codebook_usage"]:.0%} of the codes occur.
- Two of the codebook's {meta["embed_dim"]} directions hold {share[:2].sum():.1%} of its variance.
""")
)

# %% [markdown]
# ## Questions
#
# 1. What is a token, and what is the codebook?
# 2. Which pixels does one token of the 8×8 grid cover?
# 3. What do PSNR and codebook usage measure?
# 4. Why can CORTEX never explain an unused codebook row?
# 5. How do we measure how many directions the codebook's rows use?
