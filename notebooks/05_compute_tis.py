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
# # 05 · Token importance scores (TIS)
#
# Which grid positions does the IEM (notebook 03) rely on to name the class? The paper, *Concept-Centric
# Token Interpretation for Vector-Quantized Generative Models* (Yang, Shi, Du, Wu, Tan, Sun, Liu), scores
# each position with **SmoothGrad** (Smilkov et al. 2017, arXiv:1706.03825): the gradient of the class logit,
# averaged over noisy copies of the input, reduced over the embedding channels:
#
# $$\mathrm{TIS}_{ij}(x) = \max_{d}\ \frac{1}{N}\sum_{n=1}^{N}
# \frac{\partial f_y(x+\epsilon_n)}{\partial x_{dij}},\qquad \epsilon_n \sim \mathcal{N}(0, \sigma^2 I),
# \quad \sigma = s\,(\max x - \min x).$$
#
# $x$: an image's grid of codebook embeddings (channels $d$, positions $ij$; token ids are discrete and have
# no gradient, their embeddings do); $f_y$: the IEM's logit for the image's class $y$; $N$ = `nsamples`;
# $s$ = `spread`; max and min over the whole batch, as the paper's code. By hand on four images first, then
# every train image (notebook 06 counts their tokens) and test image (notebook 07 masks them). Notebook 15, a
# second session, measures how much of a map is noise and compares other choices of σ and of the draws.

# %%
import copy
import time

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from cortex_run import datasets as tokds
from cortex_run import distributed, passes, plots, report, tokenizers
from cortex_run.artifacts import record_metrics, register, registered
from cortex_run.checkpoints import load_run_iem
from cortex_run.notebook import check_parameters, choice, exercise, repo_path, require
from cortex_utils import evaluation
from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-04 (relative to the repo root)
iem_arch = 1  # which trained IEM to explain (1-4)
# smoothgrad (the paper's) | gradient | grad_x_input | integrated_gradients | occlusion (notebook 11)
method = "smoothgrad"
nsamples = 20  # SmoothGrad's noisy copies N
spread = 0.2  # s: the noise sigma as a share of the value range
sigma = "batch"  # whose value range: batch (the paper's) | image (each image's own; notebook 15)
reduction = "max"  # max | mean over the embedding channels
ig_steps = 16  # Integrated Gradients steps (method integrated_gradients)
occlusion_group = 1  # occlude single tokens (1) or g x g blocks (method occlusion)
neutral = "background"  # IG's baseline and occlusion's token: background | mean | an id, e.g. "17"
batch_size = 100
splits = ["train", "test"]
seed = 0
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
precision = "float32"  # float32 | bfloat16: SmoothGrad's fast mode, where the device computes in bf16
n_show = 2  # test images per class in the figure
nproc = 1  # > 1: a torchrun job of nproc processes (the same scores; docs/scaling.md)
solutions = False  # run the exercises' solution cells (a teacher's reveal)

# %%
check_parameters(globals(), "05_compute_tis")
choice("method", method, list(tislib.METHODS))
choice("reduction", reduction, tislib.REDUCTIONS)
choice("iem_arch", iem_arch, list(iemlib.ARCHITECTURES))
choice("sigma", sigma, tislib.SIGMAS)
require(nsamples >= 1 and spread >= 0 and batch_size >= 1, "nsamples, batch_size must be >= 1, spread >= 0")
require(ig_steps >= 1 and occlusion_group >= 1, "ig_steps and occlusion_group must be >= 1")
require(n_show >= 1 and nproc >= 1, f"n_show and nproc must be >= 1, got {n_show}, {nproc}")
require(nproc == 1 or (sigma, method) == ("batch", "smoothgrad"), "nproc > 1: smoothgrad, sigma batch only")
evaluation.check_neutral(neutral)
run_dir = repo_path(run_dir)

# %%
vq = tokenizers.load_run_vq(run_dir)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
require(set(splits) <= set(ds.splits), f"splits {splits} not all in the dataset ({ds.splits})")
model = load_run_iem(run_dir, iem_arch, ds, device)
codebook = vqlib.codebook(vq)
folder = f"iem{iem_arch}_{reduction}" + ("" if sigma == "batch" else "_sigma-image")
out_dir = run_dir / "tis" / (folder + ("" if method == "smoothgrad" else f"_{method}"))

# %% [markdown]
# ## SmoothGrad by hand
#
# The formula as plain loops on four test images: σ from the batch, seeded standard-normal draws times σ,
# one gradient per noisy copy per image. In float64, so that rounding cannot flip a ReLU at its kink.

# %% tags=["by-hand"]
hand_split = "test" if "test" in ds.splits else ds.splits[0]
model64 = copy.deepcopy(model).double().cpu()  # by hand on the CPU
x_few = codebook[torch.from_numpy(ds.tokens[hand_split][:4].astype(np.int64))].permute(0, 3, 1, 2).double()
y_few = torch.from_numpy(ds.labels[hand_split][:4].astype(np.int64))
sd = spread * (x_few.max() - x_few.min())  # one sigma for the whole batch, as the paper
g = torch.Generator().manual_seed(seed)
draws = torch.randn((nsamples, *x_few.shape), generator=g, dtype=x_few.dtype)  # N noise draws
grad_sum = torch.zeros_like(x_few)
for eps in draws:  # one noisy copy of the batch
    for i in range(len(x_few)):  # one image at a time
        noisy = (x_few[i] + sd * eps[i]).unsqueeze(0).requires_grad_(True)
        target_logit = model64(noisy)[0, y_few[i]]
        grad_sum[i] += torch.autograd.grad(target_logit, noisy)[0][0]
tis_hand = (grad_sum / nsamples).amax(1)  # mean over the copies, then max over the channels -> (4, h, w)
print("top-5 positions per image:", tislib.topk_positions(tis_hand.numpy(), 5).tolist())

# %% [markdown]
# The library's `tislib.smoothgrad` draws the same noise from the same seed (`tislib.Noise`: $N$ draws, $s$),
# so it must agree; it is faster because all noisy copies go through one forward and one backward pass.

# %% tags=["by-hand-check"]
tis_lib = tislib.smoothgrad(model64, x_few, y_few, tislib.Noise(nsamples, spread), seed).amax(1)
np.testing.assert_allclose(
    tis_lib.numpy(), tis_hand.numpy(), rtol=1e-9, atol=1e-9 * float(tis_hand.abs().max())
)
hand_diff = float((tis_lib - tis_hand).abs().max())
print(f"by hand = library: max |difference| {hand_diff:.2e}")

# %% [markdown]
# ## Every image
#
# `method` picks the run's scores (the later notebooks read it from the run), with its own options. They are
# saved per split in `<run_dir>/tis/`, row for row with the dataset.

# %%
neutral_id = evaluation.resolve_neutral(vq, ds.tokens[hand_split], neutral)  # IG's and occlusion's
noise = tislib.Noise(nsamples, spread, sigma)
options = tislib.method_options(method, noise, seed, ig_steps, occlusion_group, codebook[neutral_id])
if method == "smoothgrad":  # noisy copies per backward pass, from a memory budget (the size of one copy)
    options["batch"] = passes.rows_per_pass(model, x_few.float(), precision=precision)
    options["precision"] = precision
t0, tis, n_scored = time.perf_counter(), {}, {s: len(ds.labels[s]) for s in splits}
if nproc > 1:  # a torchrun job of nproc processes: the same scores (docs/scaling.md)
    job = dict(run_dir=run_dir, iem_arch=iem_arch, nsamples=nsamples, spread=spread, reduction=reduction)
    tis = distributed.tis_job(ds, splits, out_dir, nproc, batch_size, seed=seed, **job)
else:  # batch by batch into <out_dir>/<split>.npy (an interrupted run resumes)
    for s in splits:
        loader, path = tokds.embedding_loader(ds, s, codebook, batch_size), out_dir / f"{s}.npy"
        tis[s] = tislib.dataset_tis(model, loader, n_scored[s], method, reduction, path, **options)
per_image = (time.perf_counter() - t0) / sum(n_scored.values())
scored = ", ".join(f"{n} {s}" for s, n in n_scored.items())
print(f"TIS method: {method}; scored {scored} images, {per_image * 1000:.2f} ms per image")

# %% [markdown]
# Record where the scores are and how they were made.

# %%
record_metrics(run_dir, tis_method=method, tis_seconds_per_image=round(per_image, 5), device=device)
register(
    run_dir, "tis", path=str(out_dir), method=method, iem_arch=iem_arch, reduction=reduction,
    nsamples=nsamples, spread=spread, sigma=sigma, ig_steps=ig_steps, occlusion_group=occlusion_group,
    neutral_id=neutral_id, splits=splits, seed=seed, precision=precision,
)  # fmt: skip

# %% [markdown]
# ## Where does the IEM look?
#
# Test images with their maps laid over them (the five highest positions boxed).

# %%
split = "test" if "test" in tis else splits[0]
labels = ds.labels[split].astype(np.int64)
tokens = torch.from_numpy(ds.tokens[split].astype(np.int64))
n_cls = min(len(ds.class_names), 10)
rows = np.concatenate([np.flatnonzero(labels == c)[:n_show] for c in range(n_cls)])
images = vqlib.decode(vq, tokens[rows])
titles = [ds.class_names[labels[r]] for r in rows]
fig = plots.tis_grid(
    images, tis[split][rows], titles, ncols=10, top_n=5, suptitle=f"TIS ({method}), {split} images"
)
# %% [markdown]
# The mean map of a class: where the IEM looks for that class in general.

# %%
means = np.stack([tis[split][labels == c].mean(0) for c in range(n_cls)])
fig, axes = plt.subplots(1, n_cls, figsize=(1.5 * n_cls + 1, 1.9), layout="constrained")
for c, ax in zip(range(n_cls), np.atleast_1d(axes), strict=True):
    handle = ax.imshow(means[c], cmap="inferno", vmin=min(0.0, means.min()), vmax=means.max())
    ax.set_title(ds.class_names[c], fontsize=9)
    ax.axis("off")
fig.suptitle(f"mean TIS per class ({split} split, {method}; one colour scale)", fontsize=10)
cbar = fig.colorbar(handle, ax=axes, shrink=0.9, label="mean TIS")
# %% [markdown]
# ## Can we trust these maps?
#
# A map always looks like an answer; notebook 11 (a later session) tests whether it is one.

# %%
trust = report.carried_verdict(run_dir, method)
display(Markdown(report.carried_verdict_text(trust, method)))

# %% [markdown]
# ## Explore
#
# An image, its token ids (top-n in red) and its map; in a live notebook the sliders redraw it.


# %%
def explore_figure(index=0, top_n=5):
    fig = plots.tis_explorer(
        vqlib.decode(vq, tokens[index : index + 1])[0], ds.tokens[split][index], tis[split][index], top_n,
        title=f"{split} #{index}: class {ds.class_names[labels[index]]}",
    )  # fmt: skip
    plt.close(fig)  # shown through the display handle below, not a second time by the inline backend
    return fig


index_slider = widgets.IntSlider(0, 0, len(labels) - 1, description="index")
top_slider = widgets.IntSlider(5, 1, min(20, int(np.prod(ds.grid))), description="top_n")
display(widgets.HBox([index_slider, top_slider]))
explorer = display(explore_figure(0, 5), display_id=True)
for slider in (index_slider, top_slider):
    slider.observe(
        lambda _: explorer.update(explore_figure(index_slider.value, top_slider.value)), names="value"
    )

# %% [markdown]
# ## Summary

# %%
bullets = [
    f"SmoothGrad by hand matches `tislib.smoothgrad` to {hand_diff:.1e} ({len(x_few)} images, float64).",
    f"TIS method **{method}**: {sum(n_scored.values())} images scored, {per_image * 1000:.2f} ms per image.",
    f"Randomization: rank correlation {trust['rank_corr_full']:.2f} with a random IEM's maps (bar "
    f"{trust['max_rank_corr']:g}); deletion: {trust['deletion_ratio']:.2f} × random's area (bar "
    f"{trust['max_deletion_ratio']:g}); notebook 11 recommends: {trust['recommended']}.",
]
display(Markdown("\n".join(f"- {b}" for b in bullets)))

# %% [markdown]
# ## Questions
#
# 1. What does one TIS value score: a pixel, a token id or a grid position?
# 2. What do $N$, $\sigma$ and $f_y$ stand for in the TIS formula?
# 3. Why is the noise added to embeddings, not to token ids?
# 4. Why does the by-hand check run in float64?
# 5. Which of notebook 11's two checks do the maps fail?
# 6. So which part of a map should you read?

# %% [markdown]
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1. No noise.** With `spread = 0` SmoothGrad is the plain gradient. For the first 5 images of `split`,
# how many of the top-5 positions of `tis[split][i]` does the σ = 0 map keep? `answer_1 = [...]`: 5 ints.

# %% tags=["solution"]
if solutions:
    x5 = codebook[tokens[:5]].permute(0, 3, 1, 2)
    no_noise = tislib.Noise(nsamples, 0.0)
    tis0 = tislib.attribute(model, x5, labels[:5], "smoothgrad", reduction, noise=no_noise).numpy()
    answer_1 = [int(round(5 * a)) for a in tislib.topk_agreement(tis[split][:5], tis0, 5)]
    print(answer_1)


# %% tags=["exercise-check"]
def check_1(answer):
    x5 = codebook[tokens[:5]].permute(0, 3, 1, 2)
    no_noise = tislib.Noise(nsamples, 0.0)
    plain = tislib.attribute(model, x5, labels[:5], "smoothgrad", reduction, noise=no_noise).numpy()
    kept = np.round(5 * tislib.topk_agreement(tis[split][:5], plain)).astype(int)
    assert len(answer) == 5 and all(0 <= int(a) <= 5 for a in answer), "give 5 counts, each from 0 to 5"
    wrong = [i for i in range(5) if int(answer[i]) != kept[i]]
    assert not wrong, f"re-check image(s) {wrong}: compare the top-5 of the stored map and the σ = 0 map"
    return True


exercise(
    "1", globals(), check=check_1, hint="tislib.topk_agreement: the share of 5 kept", solutions=solutions
)
# %% [markdown] tags=["exercise"]
# **2. The most concentrated map.** Which image of `split` has the largest share of its map in its top 5
# (sum of its 5 highest scores ÷ sum of all absolute scores)? `answer_2 = ...`: its row, an int.

# %% tags=["solution"]
if solutions:
    flat = tis[split].reshape(len(tis[split]), -1)
    share = np.sort(flat, axis=1)[:, -5:].sum(1) / np.abs(flat).sum(1)
    answer_2 = int(share.argmax())
    print(answer_2, f"{share.max():.1%}")


# %% tags=["exercise-check"]
def check_2(answer):
    flat = tis[split].reshape(len(tis[split]), -1).astype(np.float64)
    top5 = np.take_along_axis(flat, tislib.topk_positions(flat, 5), axis=1).sum(1)
    share = top5 / np.abs(flat).sum(1)
    assert 0 <= int(answer) < len(share), f"no image {answer} in {split}"
    assert share[int(answer)] >= share.max() - 1e-9, "another image has a larger share: re-check the argmax"
    return True


exercise(
    "2", globals(), check=check_2, hint="np.sort each flattened map; sum the 5 largest", solutions=solutions
)
