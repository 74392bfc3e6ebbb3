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
# Which positions of a token grid does the IEM rely on for its decision? CORTEX answers with
# **SmoothGrad**: the gradient of the IEM's logit for the image's class with respect to the input
# embeddings, averaged over `nsamples` noisy copies of the input (noise σ = `spread` × (max − min) of the
# batch, as the original; `sigma = "image"` takes each image's own range instead), then reduced over the
# embedding channels (`max`, the original's default, or `mean`) to **one score per grid position**. We compute
# it for the train split (concept analysis, notebook 06) and the test split (image-level evaluation, later
# notebooks), then measure how much of a map is noise: how many of its top-5 positions another noise seed, or
# the other choice of σ, keeps.
#
# The original computed one backward pass per image per noise draw; in eval mode each image's logit depends
# on that image only, so one backward pass over all noisy copies of the whole batch gives the same numbers
# (`tests/test_iem_tis.py` checks it to 1e-5; `benchmarks/tis_speed.py` measures the speed-up).

# %%
import time

import ipywidgets as widgets
import numpy as np
import pandas as pd
import torch
from IPython.display import display

from cortex_utils import datasets as tokds
from cortex_utils import distributed, plots
from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import record_metrics, register, registered
from cortex_utils.notebook import check_parameters, choice, repo_path, require

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-04 (relative to the repo root)
iem_arch = 1  # which trained IEM to explain (1-4)
nsamples = 20  # SmoothGrad noisy copies
spread = 0.2  # noise sigma as a fraction of the batch's value range
sigma = "batch"  # whose value range sets the noise: batch (the paper's) | image (each image's own)
reduction = "max"  # max | mean over the embedding channels
batch_size = 100
splits = ["train", "test"]
seed = 0
n_show = 8  # images per class in the figures
stability_images = 100  # test images on which the top-5 agreement across seeds and sigmas is measured
stability_nsamples = [5, 20, 100]  # nsamples values of the agreement curve (the run's nsamples is added)
nproc = 1  # processes: > 1 shards the rows over a torchrun job (same scores exactly; docs/scaling.md)

# %%
params = check_parameters(globals(), "05_compute_tis")
choice("reduction", reduction, tislib.REDUCTIONS)
choice("iem_arch", iem_arch, list(iemlib.ARCHITECTURES))
choice("sigma", sigma, tislib.SIGMAS)
require(nsamples >= 1 and spread >= 0 and batch_size >= 1, "nsamples and batch_size must be >= 1, spread >= 0")
require(nproc >= 1, f"nproc must be >= 1, got {nproc}")
require(nproc == 1 or sigma == "batch", 'the torchrun job (nproc > 1) computes sigma = "batch" only; use nproc = 1')
require(stability_images >= 1 and len(stability_nsamples) > 0 and min(stability_nsamples) >= 1,
        "stability_images must be >= 1 and stability_nsamples a non-empty list of values >= 1")
run_dir = repo_path(run_dir)
params

# %%
vq = vqlib.load_run_vq(run_dir)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
require(set(splits) <= set(ds.splits), f"splits {splits} not all in the dataset ({ds.splits})")
model = iemlib.load_iem(registered(run_dir, f"iem{iem_arch}")["checkpoint"],
                        expect={"arch": iem_arch, "in_channels": ds.manifest["embed_dim"], "grid": list(ds.grid),
                                "n_classes": len(ds.class_names)})
codebook = vqlib.codebook(vq)
out_dir = run_dir / "tis" / (f"iem{iem_arch}_{reduction}" + ("" if sigma == "batch" else "_sigma-image"))

# %% [markdown]
# ## Compute the scores
#
# Scores are written chunk by chunk into `<run_dir>/tis/iem<k>_<reduction>/<split>.npy`, aligned with the
# dataset's rows; an interrupted run picks up where it stopped. (With `sigma = "image"` the folder is
# `iem<k>_<reduction>_sigma-image`.)
#
# With `nproc > 1` a `torchrun` job of `nproc` processes computes them: each process takes a contiguous,
# batch-aligned block of rows (the batches, and so the noise, are those of one process: the scores are
# identical), writes it as a shard file, and process 0 merges the shards into the same `<split>.npy`. A
# failed job names the failing process and keeps the finished shards; running the cell again resumes.
# The time then includes starting the processes (several seconds).

# %%
tis, seconds = {}, {}
if nproc > 1:
    for split in splits:
        distributed.check_world(len(ds.labels[split]), batch_size, nproc)
    job = distributed.launch("tis", nproc=nproc, run_dir=run_dir, iem_arch=iem_arch, out_dir=out_dir, splits=splits,
                             nsamples=nsamples, spread=spread, reduction=reduction, batch_size=batch_size, seed=seed)
    n_all = sum(len(ds.labels[s]) for s in splits)
    for split in splits:
        tis[split] = np.load(out_dir / f"{split}.npy")
        seconds[split] = job["seconds"] * len(ds.labels[split]) / n_all  # the job's wall time, shared by rows
for split in (s for s in splits if nproc == 1):
    loader = tokds.embedding_loader(ds, split, codebook, batch_size=batch_size)
    t0 = time.perf_counter()
    tis[split] = tislib.compute_tis(model, loader, len(ds.labels[split]), nsamples=nsamples, spread=spread,
                                    reduction=reduction, seed=seed, out=out_dir / f"{split}.npy", desc=f"TIS {split}",
                                    sigma=sigma)
    seconds[split] = time.perf_counter() - t0
n_total = sum(len(ds.labels[s]) for s in splits)
per_image = sum(seconds.values()) / n_total
register(run_dir, "tis", path=str(out_dir), iem_arch=iem_arch, reduction=reduction, nsamples=nsamples,
         spread=spread, sigma=sigma, splits=splits)
record_metrics(run_dir, tis_seconds_per_image=round(per_image, 5))
display(pd.DataFrame({"images": {s: len(ds.labels[s]) for s in splits}, "seconds": seconds}))
print(f"{per_image * 1000:.2f} ms per image ({nsamples} noisy copies each)")

# %% [markdown]
# ## Where does the IEM look?
#
# Bright cells are the positions whose embeddings move the class logit most. Below: test images of each
# class with their TIS maps (the five highest boxed), and the mean TIS map per class.

# %%
split = "test" if "test" in tis else splits[0]
labels = ds.labels[split].astype(np.int64)
tokens = torch.from_numpy(ds.tokens[split].astype(np.int64))
rows = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(min(len(ds.class_names), 10))])
images = vqlib.decode(vq, tokens[rows])
plots.tis_grid(images, tis[split][rows], [ds.class_names[labels[r]] for r in rows], ncols=10, top_n=5);

# %%
import matplotlib.pyplot as plt

n_cls = min(len(ds.class_names), 10)
fig, axes = plt.subplots(1, n_cls, figsize=(1.6 * n_cls, 1.9))
for c, ax in zip(range(n_cls), np.atleast_1d(axes), strict=True):
    ax.imshow(tis[split][labels == c].mean(0), cmap="inferno")
    ax.set_title(ds.class_names[c])
    ax.axis("off")
fig.suptitle(f"mean TIS per class ({split})")
fig.tight_layout()

# %% [markdown]
# ## How stable are the scores?
#
# SmoothGrad averages gradients over *random* noise, so a TIS map is itself random: another noise seed gives
# another map. What the later notebooks use is each map's top-n positions (notebook 06 counts their token ids,
# notebook 07 masks them), so we measure exactly that: the **top-5 agreement** of two maps of an image,
# |top-5(a) ∩ top-5(b)| / 5, averaged over images (`tislib.topk_agreement`). We take `stability_images` random
# test images as one SmoothGrad batch and compute their TIS with two noise seeds at several `nsamples`; more
# noisy copies average more of the noise out, at a cost linear in `nsamples`.
#
# The noise level has a second, quieter dependence. The original sets σ = `spread` · (max − min) of the
# **whole batch tensor**, so an image's noise, and with it its scores, depends on how many and which images
# share its batch (this run: batches of `batch_size`; the original's TIS run: 4). With `sigma = "image"`
# (`tislib.smoothgrad`, `compute_tis` and this notebook take it) each image's own range sets its σ, and an
# image gets the same scores in any batch; it is what σ per batch gives for a batch of one image, and the
# original's batches of 4 sit between the two. We compare σ per batch with σ per image on the very same
# standard-normal draws (only their scale differs). The agreement of two seeds is the yardstick: a change that
# keeps *fewer* top-5 positions than another seed moves the scores beyond their noise; one that keeps more
# matters less than the noise does.
#
# The scores above use σ per batch (`sigma = "batch"`, the default) because it is the paper's convention: the
# scores are those the original code gives for the same batches, and the numbers stay comparable with the
# paper's. Per-image σ is the choice when scores must not depend on the batch, e.g. to compare runs with
# different `batch_size`.

# %%
t_stab = time.perf_counter()
n_stab = min(stability_images, len(labels))
stab_rows = np.sort(np.random.default_rng(seed).choice(len(labels), n_stab, replace=False))
x_stab = codebook[tokens[stab_rows]].permute(0, 3, 1, 2).contiguous()
y_stab = torch.from_numpy(labels[stab_rows])


def stab_tis(ns, noise_seed, how="batch", batch=n_stab):
    """TIS of the stability images in batches of `batch`, noise from `noise_seed`, sigma per batch or per image."""
    return tislib.batched_token_importance(model, x_stab, y_stab, batch, ns, spread, reduction, noise_seed, how)


curve_ns = sorted(set(stability_nsamples) | {nsamples})
n_big = max(curve_ns)
seed_maps = {ns: [stab_tis(ns, seed + 1), stab_tis(ns, seed + 2)] for ns in curve_ns}
# per image: the share of the top-5 positions (of the sigma-per-batch map, seed + 1) that each change keeps
keeps = {"another noise seed": {ns: tislib.seed_agreement(m) for ns, m in seed_maps.items()},
         "σ per image (same draws)": {ns: tislib.topk_agreement(seed_maps[ns][0], stab_tis(ns, seed + 1, "image"))
                                      for ns in sorted({nsamples, n_big})}}
stab_seconds = time.perf_counter() - t_stab
seed_agree = {ns: float(v.mean()) for ns, v in keeps["another noise seed"].items()}
table = pd.DataFrame({name: {f"nsamples {ns}": float(v.mean()) for ns, v in per_ns.items()} for name, per_ns in keeps.items()}).T
print(f"top-5 agreement with the σ-per-batch TIS of {n_stab} {split} images (one batch; {stab_seconds:.1f} s)")
display(table.round(3).astype(object).fillna("–"))
record_metrics(run_dir, **{f"tis_top5_seed_agreement_{ns}": round(seed_agree[ns], 4) for ns in sorted({nsamples, n_big})},
               tis_top5_sigma_batch_vs_image=round(float(keeps["σ per image (same draws)"][nsamples].mean()), 4))

fig, ax = plt.subplots(figsize=(5.4, 3.3))
ax.plot(curve_ns, [seed_agree[ns] for ns in curve_ns], marker="o", label="another noise seed")
for name, per_ns in list(keeps.items())[1:]:
    ax.plot(list(per_ns), [float(v.mean()) for v in per_ns.values()], "s", ls="none", label=name)
ax.set_xscale("log")
ax.set_xticks(curve_ns, [str(ns) for ns in curve_ns])
ax.set_ylim(0, 1)
ax.set_xlabel("SmoothGrad noisy copies (nsamples)")
ax.set_ylabel(f"top-5 agreement with σ per batch of {n_stab}")
ax.set_title(f"how reproducible are the top-5 TIS positions? ({n_stab} {split} images)", fontsize=9)
ax.legend(fontsize=7, loc="lower right")
fig.tight_layout()
plt.show()

print(f"With nsamples = {nsamples}, as this run, another noise seed keeps {seed_agree[nsamples]:.0%} of an image's "
      "top-5 positions on average" + (f"; with {n_big}, {seed_agree[n_big]:.0%}." if n_big != nsamples else "."))
for name, per_ns in list(keeps.items())[1:]:
    for ns, v in per_ns.items():
        diff = v - keeps["another noise seed"][ns]  # paired by image
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
        verdict = ("more than" if diff.mean() > 2 * se else "fewer than" if diff.mean() < -2 * se
                   else "as many as (within two standard errors)")
        print(f"{name}, nsamples = {ns}: keeps {v.mean():.0%}, {verdict} another noise seed ({seed_agree[ns]:.0%}).")


# %% [markdown]
# ## Explore
#
# Pick an image and a top-n: the decoded image, its token ids (the top-n in red) and its TIS map.
# In a live notebook the sliders are interactive; a papermill run shows one static example.

# %%
def explore(index=0, top_n=5):
    plots.tis_explorer(images_all[index], ds.tokens[split][index], tis[split][index], top_n,
                       title=f"{split} #{index}: class {ds.class_names[labels[index]]}")
    plt.show()


images_all = vqlib.decode(vq, tokens)
n_positions = int(np.prod(ds.grid))
explore(0, 5)
widgets.interact(explore, index=widgets.IntSlider(0, 0, len(labels) - 1), top_n=widgets.IntSlider(5, 1, min(20, n_positions)));
