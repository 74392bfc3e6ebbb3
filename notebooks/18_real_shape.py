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
# # 18 · Going deeper: the real shape, with random weights
#
# The tutorial runs CORTEX small: 32-pixel digits, an 8×8 grid of 256 codes of dimension 32, an IEM of
# 0.3 M parameters, 10 classes. The paper (Yang, Shi, Du, Wu, Tan, Sun, Liu: *Concept-Centric Token
# Interpretation for Vector-Quantized Generative Models*) runs it on ImageNet: the taming VQGAN f16-16384
# (256-pixel images, a 16×16 grid of 16,384 codes of dimension 256), an IEM of 129 M parameters and 1,000
# classes. Everything the method does grows with that shape. Before you bring a GPU and the real models, this
# page measures **what the real shape costs on the device at hand**, stage by stage, and extrapolates the
# paper's whole study to hours there.
#
# **The weights are random.** Nothing is downloaded and nothing is trained beyond a few steps: the times and
# the memory are those of the real models (they depend on the shapes, not on the values), **the scores mean
# nothing**. The data are images the tutorial has, the shipped real digits upsampled to 256 px (or a folder
# of your own images), encoded by the random VQGAN.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from cortex_run import datasets as tokds
from cortex_run import device as device_mod
from cortex_run import digits, passes, realshape, taming_vq, tokenizers
from cortex_run.artifacts import record_metrics
from cortex_run.notebook import check_parameters, exercise, repo_path, require
from cortex_utils import evaluation
from cortex_utils import iem as iemlib
from cortex_utils import optimization as opt
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib

# %% tags=["parameters"]
run_dir = "runs/interactive"  # where metrics.json and the token dataset go (relative to the repo root)
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
precision = "float32"  # TIS: float32 | bfloat16 (SmoothGrad's fast mode, where the device computes in bf16)
images = 16  # images encoded into the token dataset (the real digits at 256 px, or image_folder's)
image_folder = ""  # optional: an ImageFolder tree (root/<class>/<image>) to encode instead of the digits
encode_batch = 4  # images per encoder pass
iem = {"arch": 1, "width": 512, "classes": 1000, "batch_size": 16, "steps": 4}  # IEM 1 at the original's size
tis_images = 64  # images scored by TIS (the encoded grids, taken in turn)
tis_batch = 16  # images per TIS batch
nsamples = 20  # SmoothGrad's noisy copies (the paper's 20)
masking = {"images": 2, "top_n": 10}  # one masking step: grids, the ids at their top-n TIS positions
optimization = {"steps": 2, "rows": [7, 11], "cols": [7, 11]}  # the paper's block: rows and cols 7-10 of 16
paper = {"train": 1281167, "val": 50000, "test": 50000, "epochs": 80, "batch_size": 512}  # realshape.Study
seed = 0
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "18_real_shape")
tislib.check_choice(precision, tislib.PRECISIONS, "precision")
require(
    min(images, encode_batch, tis_images, tis_batch, nsamples, masking["top_n"]) >= 1, "counts must be >= 1"
)
require(
    iem["batch_size"] >= 2 and iem["steps"] >= 1, "the IEM trains on batches of >= 2 (BatchNorm), >= 1 step"
)
require(1 <= masking["images"] <= min(images, tis_images), "masking images: between 1 and images, tis_images")
study = realshape.Study(**paper)
run_dir = repo_path(run_dir)
device_mod.reset_peak(device)
seconds = {}  # each stage's wall time, the device's queued work waited for (realshape.stage)
load = os.getloadavg()[0]  # on a shared CPU other work slows every stage: the page says how busy it was
print(f"device: {device}; TIS precision: {precision}; load average {load:.1f} on {os.cpu_count()} cores")

# %% [markdown]
# ## 1. The published VQGAN, random weights
#
# `taming_vq.IMAGENET_F16_16384_CONFIG` is taming's `vqgan_imagenet_f16_16384` model config: the
# architecture of the paper's tokenizer, built here with random weights and moved to the device.

# %%
with realshape.stage(seconds, "build", device):
    vq = tokenizers.build_vq(taming_vq.IMAGENET_F16_16384_CONFIG, seed=seed).to(device)
codebook = vqlib.codebook(vq)  # (16384, 256), on the host: the token grids' embeddings are built per batch
n_vq = sum(p.numel() for p in vq.parameters())
print(
    f"VQGAN f16-16384: {n_vq / 1e6:.1f} M parameters; {vq.image_size} px -> a {vq.grid[0]}x{vq.grid[1]} grid "
    f"of {vq.n_embed:,} codes of dimension {vq.embed_dim}; built in {seconds['build']:.1f} s"
)

# %% [markdown]
# ## 2. A token dataset of the real shape
#
# The shipped real digits, bilinearly upsampled from 32 to 256 px (or `image_folder`'s images, resized and
# centre-cropped), encoded batch by batch: each batch moves to the device, its ids come back to the host.

# %%
if image_folder:
    pics, labels, class_names, _ = tokds.read_image_folder(repo_path(image_folder), vq.image_size)
    keep = np.random.default_rng(seed).permutation(len(pics))[:images]
    pics, labels = pics[keep], labels[keep]
else:
    pics, labels = realshape.digit_images(images, vq.image_size, seed)
    class_names = digits.CLASS_NAMES
with realshape.stage(seconds, "encode", device):
    grids = torch.cat(
        [
            vqlib.encode(vq, digits.to_model_input(pics[i : i + encode_batch]))
            for i in range(0, len(pics), encode_batch)
        ]
    )
encode_per_image = seconds["encode"] / len(pics)
print(
    f"{len(pics)} images encoded in {seconds['encode']:.1f} s: {encode_per_image:.2f} s per image, "
    f"{len(pics) / seconds['encode']:.2f} images/s; grids {tuple(grids.shape)}"
)

# %% [markdown]
# Saved in the tutorial's token-dataset format (ids as uint16 for 16,384 codes, the original stored 256 KB of
# float32 embeddings per image). The labels are the digits' 10 classes; the IEM below has the paper's
# **1,000 outputs** (its cost is that of the real head, and a target class is any of them). A random VQGAN
# uses its codebook very unevenly.

# %%
meta = vqlib.vq_meta(vq)
ds = tokds.save_token_dataset(
    run_dir / "realshape" / "tokens", {"train": (grids.numpy(), labels)}, class_names, meta,
    source="real-shape (random VQGAN)", classifier_data=False,
)  # fmt: skip
used = np.unique(grids.numpy())
print(
    f"{tokds.dataset_bytes(ds.path) / len(pics):,.0f} bytes per image on disk; {len(used):,} distinct ids "
    f"of {vq.n_embed:,} in {grids.numel():,} positions"
)

# %% [markdown]
# ## 3. The IEM at the original's size: a few training steps
#
# IEM 1 (the VGG) at the original's width 512 on 256×16×16 embeddings, 1,000 classes, trained by the
# library's own `iem.train_iem` (Adam, the original's recipe) for one epoch of `iem["steps"]` batches of
# `iem["batch_size"]` grids. The batches record when each is asked for: the gaps are the steps. The first
# step also allocates the optimiser's state and warms the kernels, so the step time is the median of the
# others.

# %%
torch.manual_seed(seed)
model = iemlib.build_iem(iem["arch"], vq.embed_dim, vq.grid, iem["classes"], iem["width"]).to(device)
B, rng, stamps, val_seconds = iem["batch_size"], np.random.default_rng(seed), [], {}
train_rows, val_rows = np.resize(rng.permutation(len(grids)), B * iem["steps"]), np.arange(min(B, len(grids)))


def validate(m):  # train_iem's validation pass after the epoch, timed
    with realshape.stage(val_seconds, "val", device):
        return iemlib.evaluate_iem(m, realshape.token_batches(grids, labels, codebook, val_rows, B, device))


train = realshape.token_batches(grids, labels, codebook, train_rows, B, device, stamps=stamps)
with realshape.stage(seconds, "iem", device):
    log, _ = iemlib.train_iem(
        model, train, None, iemlib.Training(epochs=1), desc="IEM, one epoch of the steps", evaluate=validate
    )

# %%
steps = np.diff(stamps)
step_seconds = float(np.median(steps[1:] if len(steps) > 1 else steps))
val_per_image = val_seconds["val"] / len(val_rows)
print(
    f"IEM {iem['arch']} ({iemlib.ARCHITECTURES[iem['arch']]}), width {iem['width']}: "
    f"{iemlib.count_parameters(model) / 1e6:.1f} M parameters"
)
print(
    f"steps of batch {B}: {', '.join(f'{s:.2f}' for s in steps)} s -> {step_seconds:.2f} s per step, "
    f"{step_seconds / B * 1000:.0f} ms per image; validation {val_per_image * 1000:.0f} ms per image"
)

# %% [markdown]
# ## 4. TIS: SmoothGrad with the paper's 20 noisy copies
#
# `tis.dataset_tis` scores `tis_images` grids (the encoded ones, taken in turn: the cost does not depend on
# which), each against its label, in batches of `tis_batch`. The rate is what this stage measures: the default
# 64 keeps the page within minutes on a 2-core CPU (the paper scores every image; on a GPU raise
# `tis_images` to a few hundred for a steadier rate). As notebook 05, the noisy copies go through the
# IEM in passes sized by `passes.rows_per_pass` from a memory budget (on a GPU, from its free memory).

# %%
model.eval()
tis_rows = np.arange(tis_images) % len(grids)
x_few = codebook[grids[:2]].permute(0, 3, 1, 2)
per_pass = passes.rows_per_pass(model, x_few, precision=precision)
loader = realshape.token_batches(grids, labels, codebook, tis_rows, tis_batch, device)
options = dict(noise=tislib.Noise(nsamples), seed=seed, batch=per_pass, precision=precision)
with realshape.stage(seconds, "tis", device):
    tis = tislib.dataset_tis(model, loader, tis_images, **options)
tis_rate = tis_images / seconds["tis"]
print(
    f"TIS of {tis_images} images ({nsamples} noisy copies, passes of {per_pass}, {precision}): "
    f"{seconds['tis']:.1f} s, {tis_rate:.2f} images/s, {1 / tis_rate:.2f} s per image"
)

# %% [markdown]
# ## 5. One masking step
#
# The paper's image-level evaluation, once: in `masking["images"]` grids, every position holding an id found
# at the image's top-n TIS positions gets the neutral token (the most frequent id), the VQGAN decodes the
# masked grids, and an independent classifier of the real shape judges them: torchvision's ResNet-50, random
# weights, 1,000 classes, at 256 px.

# %%
m, top_n = masking["images"], masking["top_n"]
judge = realshape.random_judge("resnet50", iem["classes"], seed).to(device)
t, neutral = grids[:m].numpy(), evaluation.neutral_token(vq, grids.numpy(), "background")
with realshape.stage(seconds, "masking", device):
    hidden = evaluation.positions_holding(t, evaluation.ids_at(t, tislib.topk_positions(tis[:m], top_n)))
    masked = vqlib.decode(vq, torch.from_numpy(evaluation.mask_tokens(t, hidden, neutral)))
    ((logit, prob),) = evaluation.target_scores({"resnet50": judge}, masked, labels[:m]).values()
print(
    f"{m} grids, {hidden.reshape(m, -1).sum(1).mean():.1f} positions masked per grid: "
    f"{seconds['masking']:.1f} s "
    f"({seconds['masking'] / m:.2f} s per image); the judge's probability of the label {prob.mean():.2e} "
    f"(random weights: a meaningless number, not even 1 / {iem['classes']}: a random network is not uniform)"
)

# %% [markdown]
# ## 6. One codebook-optimisation step
#
# The paper's codebook-level explanation: `optimization.optimize_tokens` changes the ids of the 4×4 block
# (rows and columns 7-10) of one grid towards another class for `optimization["steps"]` Adam steps of a hard
# Gumbel-softmax over all 16,384 codes, then the VQGAN decodes the result.

# %%
region = opt.region_mask(vq.grid, optimization["rows"], optimization["cols"])
source, target = int(labels[0]), (int(labels[0]) + 1) % iem["classes"]
search = opt.TokenSearch(steps=optimization["steps"], seed=seed, progress=False)
with realshape.stage(seconds, "optimization", device):
    found = opt.optimize_tokens(model, codebook, grids[0], region, target, search, source=source)
    optimized = vqlib.decode(vq, found["tokens"][None])
changed = int((found["tokens"] != grids[0]).sum())
print(
    f"{optimization['steps']} steps over a {int(region.sum())}-position block, {changed} ids changed, "
    f"decoded: {seconds['optimization']:.1f} s"
)

# %% [markdown]
# What the random VQGAN makes of the digits: the inputs at 256 px, the masked grids decoded, and the grid
# whose block was optimised. Noise, as it should be from random weights; only the tensor shapes, and so the
# costs, are real.

# %%
shown = [*pics[:m], *digits.to_uint8(masked), *digits.to_uint8(optimized)]
titles = [f"input: {class_names[y]}" for y in labels[:m]] + ["masked, decoded"] * m + ["optimised block"]
fig, axes = plt.subplots(1, len(shown), figsize=(1.7 * len(shown), 2.0))
for ax, img, title in zip(axes, shown, titles, strict=True):
    ax.imshow(img.transpose(1, 2, 0))
    ax.set_title(title, fontsize=8)
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Where the time goes
#
# Each stage's wall time (the device's queued work waited for before each clock reading) and its unit cost.
# The peak memory is the CUDA allocator's peak on a GPU, the process's peak resident set on the CPU.

# %%
units = {
    "build": "the VQGAN, once",
    "encode": f"{encode_per_image:.2f} s per image",
    "iem": f"{step_seconds:.2f} s per step of {B}",
    "tis": f"{1 / tis_rate:.2f} s per image",
    "masking": f"{seconds['masking'] / m:.2f} s per image",
    "optimization": f"{seconds['optimization']:.1f} s for {optimization['steps']} steps + decode",
}
table = pd.DataFrame({"seconds": pd.Series(seconds).round(1), "unit cost": pd.Series(units)})
display(table)
peak_mb = device_mod.peak_mb(device)
print(
    f"all stages: {sum(seconds.values()):.0f} s; peak memory {peak_mb:,.0f} MB on {device}; load average "
    f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} now ({os.cpu_count()} cores)"
)

# %%
fig, ax = plt.subplots(figsize=(6.5, 2.8))
ax.barh(list(seconds)[::-1], list(seconds.values())[::-1], color="tab:blue")
ax.set(xlabel="seconds (wall time)", ylabel="stage", title=f"the real shape on {device}, random weights")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 8. The paper's study on this device
#
# Each stage's cost is taken as linear in its images, at the unit costs just measured. With $E$ epochs,
# $N_\text{train}$, $N_\text{val}$, $N_\text{test}$ images, a training step of $t_\text{step}$ seconds at
# batch $B$, validation at $t_\text{val}$ s per image, TIS at $r$ images/s and encoding at $t_\text{enc}$ s
# per image:
#
# $$T_\text{IEM} = E\left(N_\text{train}\,\frac{t_\text{step}}{B} + N_\text{val}\,t_\text{val}\right),\qquad
# T_\text{TIS} = \frac{N_\text{train} + N_\text{test}}{r},\qquad
# T_\text{enc} = (N_\text{train} + N_\text{val} + N_\text{test})\,t_\text{enc}$$
#
# and the total $T = T_\text{IEM} + T_\text{TIS} + T_\text{enc}$. The assumptions:
#
# * **Image counts.** The reference gives the recipe (1,000 classes, IEM trained 80 epochs at batch 512) but
#   not how many images were generated. `paper` assumes ImageNet-1k's 1,281,167 training images (as
#   docs/scaling.md) and 50 per class for validation and for test; change them there.
# * **Batch size.** The step is timed at batch $B$, not 512: $t_\text{step}/B$ per image holds if the cost
#   per image does not fall with the batch. On a CPU it falls a little; on a GPU a lot, so there set
#   `iem["batch_size"]` as large as memory allows before reading $T_\text{IEM}$.
# * **What is counted.** IEM training with its validation passes, TIS of the train and test splits (as the
#   reference), and making the tokens by **encoding** images, as this page does. The original generated its
#   images with taming's class-conditional transformer, which is not measured here. Masking and codebook
#   optimisation (the evaluation) are left out; their unit costs are in the table above.

# %% tags=["by-hand"]
t_img = step_seconds / B  # seconds per training image
hand = {
    "iem": study.epochs * (study.train * t_img + study.val * val_per_image) / 3600,
    "tis": (study.train + study.test) / tis_rate / 3600,
    "encode": (study.train + study.val + study.test) * encode_per_image / 3600,
}
hand["total"] = hand["iem"] + hand["tis"] + hand["encode"]
print(", ".join(f"{k} {v:,.0f} h" for k, v in hand.items()))

# %% tags=["by-hand-check"]
hours = realshape.paper_hours(study, t_img, val_per_image, tis_rate, encode_per_image)
assert all(np.isclose(hours[k], hand[k], rtol=1e-12) for k in hand), (hours, hand)
display(
    pd.DataFrame(
        {"hours": pd.Series(hours), "days": pd.Series(hours) / 24, "share": pd.Series(hours) / hours["total"]}
    ).round(2)
)
print(f"the paper's study on {device}: {hours['total']:,.0f} hours ({hours['total'] / 24:,.1f} days)")

# %% [markdown]
# Record the numbers.

# %%
record_metrics(
    run_dir,
    device=device,
    realshape_encode_seconds=round(seconds["encode"], 3),
    realshape_encode_images_per_s=round(len(pics) / seconds["encode"], 4),
    realshape_iem_step_seconds=round(step_seconds, 4),
    realshape_iem_batch_size=B,
    realshape_iem_seconds=round(seconds["iem"], 3),
    realshape_tis_seconds=round(seconds["tis"], 3),
    realshape_tis_images_per_s=round(tis_rate, 4),
    realshape_masking_seconds=round(seconds["masking"], 3),
    realshape_optimization_seconds=round(seconds["optimization"], 3),
    realshape_peak_mb=round(peak_mb, 1),
    realshape_paper_iem_hours=round(hours["iem"], 2),
    realshape_paper_tis_hours=round(hours["tis"], 2),
    realshape_paper_encode_hours=round(hours["encode"], 2),
    realshape_paper_hours=round(hours["total"], 2),
)

# %% [markdown]
# ## Summary

# %%
names = {"iem": "IEM training", "tis": "TIS", "encode": "encoding"}
top = max(names, key=hours.get)
top_share = hours[top] / hours["total"]
n_iem = iemlib.count_parameters(model) / 1e6
summary = f"""
* On **{device}** (load average {load:.1f} on {os.cpu_count()} cores at the start), with random weights
  (the times and memory are the real models', the scores are not): the VQGAN f16-16384
  ({n_vq / 1e6:.0f} M parameters) encodes {len(pics) / seconds["encode"]:.2f} images/s at 256 px; a step of
  IEM {iem["arch"]} at width {iem["width"]} ({n_iem:.1f} M parameters, {iem["classes"]:,} classes) takes
  {step_seconds:.2f} s at batch {B}; TIS with {nsamples} noisy copies runs at {tis_rate:.2f} images/s
  ({precision}).
* One masking step: {seconds["masking"] / m:.2f} s per image (decode + judge); one optimisation of
  {optimization["steps"]} steps with its decode: {seconds["optimization"]:.1f} s. Peak memory
  {peak_mb:,.0f} MB.
* The paper's study ({study.train:,} + {study.val:,} + {study.test:,} images, {study.epochs} epochs) would
  take **{hours["total"]:,.0f} hours ({hours["total"] / 24:,.0f} days)** here: IEM training
  {hours["iem"]:,.0f} h, TIS {hours["tis"]:,.0f} h, encoding {hours["encode"]:,.0f} h. The largest share:
  {names[top]} ({top_share:.0%}).
"""
display(Markdown(summary))

# %% [markdown]
# ## Questions
#
# 1. Why are the times and the memory of this page meaningful with random weights, and the scores not?
# 2. Which stage dominates the paper's study on this device, and by how much would a device 100× faster at
#    every stage shorten the study? Which term would a larger batch on a GPU shrink most?
# 3. Why does TIS cost far more per image than a training step per image, though both run the IEM forward and
#    backward?
# 4. The original generated its images with a transformer instead of encoding them: what is missing from
#    $T$ for that route, and what would you measure to add it?
# 5. Why is the step time the median of the steps after the first?
#
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1.** How many optimiser steps does the paper's IEM training take, at its batch size, over all its
# epochs (the last batch of an epoch may be smaller)? Use `study`. Answer `answer_1 = ...` (an int).

# %% tags=["solution"]
if solutions:
    answer_1 = study.epochs * -(-study.train // study.batch_size)

# %% tags=["exercise-check"]
exercise(
    "1",
    globals(),
    check=lambda a: int(a) == study.epochs * study.steps_per_epoch,
    hint="steps per epoch: the training images over the batch size, rounded up; then times the epochs",
    solutions=solutions,
)

# %% [markdown] tags=["exercise"]
# **2.** The test split alone: how many hours would its TIS take on this device at this run's rate? And with
# the fast mode, if it were 1.5× faster? Answer `answer_2 = (hours_float32, hours_fast)`.

# %% tags=["solution"]
if solutions:
    h2 = study.test / tis_rate / 3600
    answer_2 = (h2, h2 / 1.5)


# %% tags=["exercise-check"]
def check_2(a):
    want = study.test / tis_rate / 3600
    if not np.isclose(a[0], want, rtol=1e-3):
        raise AssertionError("the first number is off: test images / (images per second), in hours")
    if not np.isclose(a[1], want / 1.5, rtol=1e-3):
        raise AssertionError("the second number is off: 1.5x faster divides the time")
    return True


exercise("2", globals(), check=check_2, hint="3,600 seconds an hour", solutions=solutions)
