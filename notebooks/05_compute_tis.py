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
# on that image only, so one backward pass over many noisy copies gives the same numbers
# (`tests/test_iem_tis.py` checks it to 1e-5; `benchmarks/tis_speed.py` measures the speed against Captum and
# against the machine's own rate). At the end two options beyond the paper: reduced-variance noise (fewer
# draws for the same answer?) and a fast bfloat16 mode (what does it cost the explanation?).
#
# SmoothGrad is one attribution method among several behind one interface (`attribution.attribute`; notebook
# 11 compares them and checks which can be trusted). The parameter `method` chooses the one whose scores this
# run uses (default `smoothgrad`, the paper's); the later notebooks read the scores, and the method, from the
# run, so `-p method occlusion` runs the whole tutorial on occlusion's scores.

# %%
import copy
import time

import ipywidgets as widgets
import numpy as np
import pandas as pd
import torch
from IPython.display import display

from cortex_utils import attribution, distributed, evaluation, plots
from cortex_utils import datasets as tokds
from cortex_utils import iem as iemlib
from cortex_utils import smoothgrad as sglib
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import record_metrics, register, registered
from cortex_utils.notebook import check_parameters, choice, exercise, repo_path, require

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-04 (relative to the repo root)
iem_arch = 1  # which trained IEM to explain (1-4)
# the run's TIS: smoothgrad (the paper's) | gradient | grad_x_input | integrated_gradients | occlusion
method = "smoothgrad"
nsamples = 20  # SmoothGrad noisy copies
spread = 0.2  # noise sigma as a fraction of the batch's value range
sigma = "batch"  # whose value range sets the noise: batch (the paper's) | image (each image's own)
reduction = "max"  # max | mean over the embedding channels
ig_steps = 16  # Integrated Gradients steps (method integrated_gradients)
occlusion_group = 1  # occlude single tokens (1) or g x g blocks of tokens (method occlusion)
# IG's baseline and occlusion's token: background | mean | an id, e.g. "17" (as notebook 11)
neutral = "background"
batch_size = 100
splits = ["train", "test"]
seed = 0
n_show = 8  # images per class in the figures
stability_images = 100  # test images on which the top-5 agreement across seeds and sigmas is measured
stability_nsamples = [5, 20, 100]  # nsamples values of the agreement curve (the run's nsamples is added)
# even nsamples of the reduced-variance curve (the run's is added if even)
variance_nsamples = [4, 10, 20, 40]
nproc = 1  # processes: > 1 shards the rows over a torchrun job (same scores exactly; docs/scaling.md)
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "05_compute_tis")
choice("method", method, list(attribution.METHODS))
choice("reduction", reduction, attribution.REDUCTIONS)
choice("iem_arch", iem_arch, list(iemlib.ARCHITECTURES))
choice("sigma", sigma, sglib.SIGMAS)
require(
    nsamples >= 1 and spread >= 0 and batch_size >= 1, "nsamples and batch_size must be >= 1, spread >= 0"
)
require(ig_steps >= 1 and occlusion_group >= 1, "ig_steps and occlusion_group must be >= 1")
evaluation.check_neutral(neutral)
require(nproc >= 1, f"nproc must be >= 1, got {nproc}")

# %%
require(
    nproc == 1 or (sigma == "batch" and method == "smoothgrad"),
    'the torchrun job (nproc > 1) computes SmoothGrad with sigma = "batch" only; use nproc = 1',
)
require(
    stability_images >= 1 and len(stability_nsamples) > 0 and min(stability_nsamples) >= 1,
    "stability_images must be >= 1 and stability_nsamples a non-empty list of values >= 1",
)
require(
    len(variance_nsamples) > 0 and all(ns >= 2 and ns % 2 == 0 for ns in variance_nsamples),
    f"variance_nsamples must be a non-empty list of even values >= 2 (antithetic draws come in pairs), got "
    f"{variance_nsamples}",
)
run_dir = repo_path(run_dir)
params
# %%
vq = vqlib.load_run_vq(run_dir)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
require(set(splits) <= set(ds.splits), f"splits {splits} not all in the dataset ({ds.splits})")
model = iemlib.load_run_iem(run_dir, iem_arch, ds)
codebook = vqlib.codebook(vq)
out_dir = (
    run_dir
    / "tis"
    / (
        f"iem{iem_arch}_{reduction}"
        + ("" if sigma == "batch" else "_sigma-image")
        + ("" if method == "smoothgrad" else f"_{method}")
    )
)

# %% [markdown]
# ## SmoothGrad by hand
#
# First the idea in a few plain lines, on four test images: one noise level σ = `spread` · (max − min) of the
# batch, `nsamples` noisy copies of each image (standard-normal draws from a fixed `torch.Generator` seed,
# times σ), and for every copy of every image the gradient of that image's target logit with respect to its
# noisy input. The mean over the copies is a smoothed gradient of shape (D, h, w); its max over the D
# embedding channels leaves one score per grid position. We work in float64 (a copy of the IEM): in float32
# the by-hand and the batched arithmetic round differently, and a rounding difference can flip a ReLU at its
# kink, which moves a score by far more than the rounding itself.

# %% tags=["by-hand"]
hand_split = "test" if "test" in ds.splits else ds.splits[0]
model64 = copy.deepcopy(model).double()
x_few = codebook[torch.from_numpy(ds.tokens[hand_split][:4].astype(np.int64))].permute(0, 3, 1, 2).double()
y_few = torch.from_numpy(ds.labels[hand_split][:4].astype(np.int64))
sd = spread * (x_few.max() - x_few.min())  # one sigma for the whole batch, as the paper
draws = torch.randn(
    (nsamples, *x_few.shape), generator=torch.Generator().manual_seed(seed), dtype=x_few.dtype
)
grad_sum = torch.zeros_like(x_few)
for eps in draws:  # one noisy copy of the batch
    for i in range(len(x_few)):  # one image at a time
        noisy = (x_few[i] + sd * eps[i]).unsqueeze(0).requires_grad_(True)
        target_logit = model64(noisy)[0, y_few[i]]
        grad_sum[i] += torch.autograd.grad(target_logit, noisy)[0][0]
tis_hand = (grad_sum / nsamples).amax(1)  # mean over the copies, then max over the channels -> (4, h, w)
print(tis_hand.shape, "top-5 positions per image:", tislib.topk_positions(tis_hand.numpy(), 5).tolist())

# %% [markdown]
# The library's `attribution.attribute(..., "smoothgrad")` draws the same noise from the same seed
# (`smoothgrad.smoothgrad_noise`), so it must give the same maps. It differs only in speed: it puts all noisy
# copies of the whole batch through one forward and one backward pass, instead of one pass per copy per image.

# %% tags=["by-hand-check"]
tis_lib = attribution.attribute(model64, x_few, y_few, "smoothgrad", "max", nsamples, spread, seed=seed)
np.testing.assert_allclose(
    tis_lib.numpy(), tis_hand.numpy(), rtol=1e-9, atol=1e-9 * float(tis_hand.abs().max())
)
print(f"by hand = library: max |difference| {float((tis_lib - tis_hand).abs().max()):.2e}")

# %% [markdown]
# ## Compute the scores
#
# The scores come from `method`: `smoothgrad` (the default, the paper's, as above), or any other method of
# `attribution.METHODS`, each one score per grid position: `gradient`, `grad_x_input`, `integrated_gradients`
# (from a grid holding the neutral token everywhere, in `ig_steps` steps) or `occlusion` (the drop of the
# target logit when the neutral token replaces a position, or an `occlusion_group` block). The neutral token
# is the one notebooks 07 and 11 use (by default the most frequent id: the background code).
#
# Scores are written chunk by chunk into `<run_dir>/tis/iem<k>_<reduction>/<split>.npy`, aligned with the
# dataset's rows; an interrupted run picks up where it stopped. (With `sigma = "image"` the folder is
# `iem<k>_<reduction>_sigma-image`; with another method, `_<method>` is added.)
#
# With `nproc > 1` a `torchrun` job of `nproc` processes computes them: each process takes a contiguous,
# batch-aligned block of rows (the batches, and so the noise, are those of one process: the scores are
# identical), writes it as a shard file, and process 0 merges the shards into the same `<split>.npy`. A
# failed job names the failing process and keeps the finished shards; running the cell again resumes.
# The time then includes starting the processes (several seconds).

# %%
neutral_id = evaluation.resolve_neutral(vq, ds.tokens[hand_split], neutral)
options = {
    "steps": ig_steps,
    "baseline": codebook[neutral_id],
    "group": occlusion_group,
}  # IG's and occlusion's

# %%
tis, seconds = distributed.compute_tis_splits(
    model,
    ds,
    codebook,
    splits,
    out_dir,
    nproc=nproc,
    run_dir=run_dir,
    iem_arch=iem_arch,
    nsamples=nsamples,
    spread=spread,
    reduction=reduction,
    batch_size=batch_size,
    seed=seed,
    sigma=sigma,
    method=method,
    **options,
)

# %%
per_image = sum(seconds.values()) / sum(len(ds.labels[s]) for s in splits)
display(pd.DataFrame({"images": {s: len(ds.labels[s]) for s in splits}, "seconds": seconds}))
print(
    f"TIS method: {method}"
    + (
        f" ({nsamples} noisy copies per image)"
        if method == "smoothgrad"
        else f" (the neutral token: id {neutral_id})"
        if method in ("integrated_gradients", "occlusion")
        else ""
    )
    + f"; {per_image * 1000:.2f} ms per image"
)
# %% [markdown]
# Record the headline numbers: where the scores are, the method and its settings (the later notebooks read
# them), and the time per image.

# %%
register(
    run_dir,
    "tis",
    path=str(out_dir),
    method=method,
    iem_arch=iem_arch,
    reduction=reduction,
    nsamples=nsamples,
    spread=spread,
    sigma=sigma,
    ig_steps=ig_steps,
    occlusion_group=occlusion_group,
    neutral_id=neutral_id,
    splits=splits,
)
record_metrics(run_dir, tis_method=method, tis_seconds_per_image=round(per_image, 5))

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
plots.tis_grid(images, tis[split][rows], [ds.class_names[labels[r]] for r in rows], ncols=10, top_n=5)
# %%
import matplotlib.pyplot as plt

n_cls = min(len(ds.class_names), 10)
fig, axes = plt.subplots(1, n_cls, figsize=(1.6 * n_cls, 1.9))
for c, ax in zip(range(n_cls), np.atleast_1d(axes), strict=True):
    ax.imshow(tis[split][labels == c].mean(0), cmap="inferno")
    ax.set_title(ds.class_names[c])
    ax.axis("off")
fig.suptitle(f"mean TIS per class ({split}; {method})")
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
# (`smoothgrad.smoothgrad`, `tislib.compute_tis` and this notebook take it) each image's own range sets its σ,
# and an image gets the same scores in any batch; it is what σ per batch gives for a batch of one image, and
# the original's batches of 4 sit between the two. We compare σ per batch with σ per image on the very same
# standard-normal draws (only their scale differs). The agreement of two seeds is the yardstick: a change that
# keeps *fewer* top-5 positions than another seed moves the scores beyond their noise; one that keeps more
# matters less than the noise does.
#
# The scores above use σ per batch (`sigma = "batch"`, the default) because it is the paper's convention: the
# scores are those the original code gives for the same batches, and the numbers stay comparable with the
# paper's. Per-image σ is the choice when scores must not depend on the batch, e.g. to compare runs with
# different `batch_size`.
#
# This section and the next two study SmoothGrad's noise, whatever `method` the run uses (the other methods
# draw none: every seed gives the same map); their numbers are recorded only when the run's TIS are
# SmoothGrad's.

# %%
t_stab = time.perf_counter()
n_stab = min(stability_images, len(labels))
stab_rows = np.sort(np.random.default_rng(seed).choice(len(labels), n_stab, replace=False))
x_stab = codebook[tokens[stab_rows]].permute(0, 3, 1, 2).contiguous()
y_stab = torch.from_numpy(labels[stab_rows])


def stab_tis(ns, noise_seed, how="batch", batch=n_stab, draws="gaussian", precision="float32"):
    """TIS of the stability images in batches of `batch`, noise from `noise_seed`, sigma per batch or per
    image."""
    return tislib.batched_token_importance(
        model, x_stab, y_stab, batch, ns, spread, reduction, noise_seed, how, draws=draws, precision=precision
    )


curve_ns = sorted(set(stability_nsamples) | {nsamples})
n_big = max(curve_ns)
seed_maps = {ns: [stab_tis(ns, seed + 1), stab_tis(ns, seed + 2)] for ns in curve_ns}

# %%
# per image: the share of the top-5 positions (of the sigma-per-batch map, seed + 1) that each change keeps
keeps = {
    "another noise seed": {ns: tislib.seed_agreement(m) for ns, m in seed_maps.items()},
    "σ per image (same draws)": {
        ns: tislib.topk_agreement(seed_maps[ns][0], stab_tis(ns, seed + 1, "image"))
        for ns in sorted({nsamples, n_big})
    },
}
stab_seconds = time.perf_counter() - t_stab
seed_agree = {ns: float(v.mean()) for ns, v in keeps["another noise seed"].items()}
table = pd.DataFrame(
    {name: {f"nsamples {ns}": float(v.mean()) for ns, v in per_ns.items()} for name, per_ns in keeps.items()}
).T
print(
    f"top-5 agreement with the σ-per-batch TIS of {n_stab} {split} images (one batch; {stab_seconds:.1f} s)"
)
display(table.round(3).astype(object).fillna("–"))
# %% [markdown]
# Record the headline numbers: the seed agreement at the run's `nsamples` and the largest, and how many top-5
# positions σ per image keeps.

# %%
if method == "smoothgrad":
    record_metrics(
        run_dir,
        **{f"tis_top5_seed_agreement_{ns}": round(seed_agree[ns], 4) for ns in sorted({nsamples, n_big})},
        tis_top5_sigma_batch_vs_image=round(float(keeps["σ per image (same draws)"][nsamples].mean()), 4),
    )

# %%
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

# %%
print(
    f"With nsamples = {nsamples}, as this run, another noise seed keeps {seed_agree[nsamples]:.0%} of an "
    f"image's top-5 positions on average"
    + (f"; with {n_big}, {seed_agree[n_big]:.0%}." if n_big != nsamples else ".")
)
for name, per_ns in list(keeps.items())[1:]:
    for ns, v in per_ns.items():
        _, _, sign = tislib.paired_difference(v, keeps["another noise seed"][ns])  # paired by image
        verdict = {1: "more than", -1: "fewer than", 0: "as many as (within two standard errors)"}[sign]
        print(
            f"{name}, nsamples = {ns}: keeps {v.mean():.0%}, {verdict} another noise seed "
            f"({seed_agree[ns]:.0%})."
        )


# %% [markdown]
# ## Fewer draws for the same answer?
#
# The spread between two noise seeds is SmoothGrad's own Monte Carlo noise: each map is a mean over `nsamples`
# random draws. Two classic ways to make such a mean less noisy for the same number of draws keep every single
# draw standard normal (so the smoothing is unchanged) and only change how the draws relate to each other:
#
# * **antithetic pairs**: draw ε and use both +ε and −ε. The part of the gradient that changes linearly with
#   the noise cancels within each pair (for a model whose gradient is linear in its input the mean over pairs
#   *is* the noise-free gradient; `tests/test_iem_tis.py` checks that);
# * **quasi-random normals**: a scrambled Sobol point set, so that each value's draws cover the normal
#   distribution evenly instead of by chance (randomised per image, so two seeds still differ).
#
# By hand first: antithetic draws are half as many standard normal draws and their negatives.

# %% tags=["by-hand"]
half = torch.randn((4, *x_few.shape), generator=torch.Generator().manual_seed(seed), dtype=x_few.dtype)
pairs_hand = torch.cat([half, -half]) * sd  # 8 draws: +eps then -eps, times the batch's sigma
pairs_lib = sglib.smoothgrad_noise(x_few, 8, spread, torch.Generator().manual_seed(seed), draws="antithetic")
torch.testing.assert_close(pairs_lib, pairs_hand)
indep = (
    torch.randn((8, *x_few.shape), generator=torch.Generator().manual_seed(seed + 1), dtype=x_few.dtype) * sd
)
print(
    f"by hand = library; the largest mean of a value's 8 draws: {float(pairs_hand.mean(0).abs().max()):.1e} "
    f"(8 independent draws: {float(indep.mean(0).abs().max()):.2f}, for sigma {float(sd):.2f})"
)

# %% [markdown]
# Now the measurement, as above: the top-5 agreement of two noise seeds on the stability images, for each kind
# of draws at each `variance_nsamples` (Gaussian: the paper's independent draws). A kind that helps reaches
# the Gaussian curve's agreement with fewer draws; "Gaussian draws for the same agreement" reads that off the
# Gaussian curve (interpolated in log nsamples).

# %%
t_var = time.perf_counter()
var_ns = sorted(set(variance_nsamples) | ({nsamples} if nsamples % 2 == 0 else set()))
var_maps = {
    (d, ns): (
        seed_maps[ns]
        if d == "gaussian" and ns in seed_maps
        else [stab_tis(ns, seed + 1, draws=d), stab_tis(ns, seed + 2, draws=d)]
    )
    for d in sglib.DRAWS
    for ns in var_ns
}
var_agree = {key: tislib.seed_agreement(m) for key, m in var_maps.items()}  # per image
var_seconds = time.perf_counter() - t_var
gauss_curve = np.array([var_agree["gaussian", ns].mean() for ns in var_ns])


# %%
def gaussian_draws_for(agreement):
    """nsamples at which the Gaussian curve reaches `agreement` (log-interpolated), or why it cannot be
    read."""
    if not np.all(np.diff(gauss_curve) > 0):
        return "not read (the Gaussian curve does not rise at every step)"
    if not gauss_curve.min() <= agreement <= gauss_curve.max():
        return "outside the Gaussian curve"
    return f"~{np.exp(np.interp(agreement, gauss_curve, np.log(var_ns))):.0f}"


var_table = pd.DataFrame(
    {d: {f"nsamples {ns}": float(var_agree[d, ns].mean()) for ns in var_ns} for d in sglib.DRAWS}
).T
print(f"top-5 agreement of two noise seeds, {n_stab} {split} images ({var_seconds:.1f} s)")
display(var_table.round(3))
# %%
fig, ax = plt.subplots(figsize=(5.4, 3.3))
for d, marker in zip(sglib.DRAWS, "osd", strict=True):
    ax.plot(var_ns, [var_agree[d, ns].mean() for ns in var_ns], marker=marker, label=f"{d} draws")
ax.set_xscale("log")
ax.set_xticks(var_ns, [str(ns) for ns in var_ns])
ax.set_ylim(0, 1)
ax.set_xlabel("SmoothGrad noisy copies (nsamples)")
ax.set_ylabel("top-5 agreement of two noise seeds")
ax.set_title(f"reduced-variance draws vs the paper's Gaussian draws ({n_stab} {split} images)", fontsize=9)
ax.legend(fontsize=7, loc="lower right")
fig.tight_layout()
plt.show()

# %% [markdown]
# Per `nsamples`: each kind against the Gaussian draws, paired by image, with two standard errors as the bar
# for "more" or "less" reproducible; then the agreement of each kind at the run's `nsamples` (if even) is
# recorded.

# %%
for d in sglib.DRAWS[1:]:
    for ns in var_ns:
        diff, se, sign = tislib.paired_difference(var_agree[d, ns], var_agree["gaussian", ns])
        verdict = {
            1: "more reproducible",
            -1: "less reproducible",
            0: "as reproducible (within two standard errors)",
        }[sign]
        print(
            f"{d} draws, nsamples = {ns}: agreement {var_agree[d, ns].mean():.3f} vs Gaussian "
            f"{var_agree['gaussian', ns].mean():.3f} ({diff:+.3f} ± {se:.3f} per image): {verdict}; "
            f"Gaussian draws for the same agreement: {gaussian_draws_for(var_agree[d, ns].mean())}"
        )

# %%
if method == "smoothgrad" and nsamples in var_ns:
    record_metrics(
        run_dir,
        **{
            f"tis_top5_seed_agreement_{d}_{nsamples}": round(float(var_agree[d, nsamples].mean()), 4)
            for d in sglib.DRAWS[1:]
        },
    )

# %% [markdown]
# The paper's Gaussian draws stay the default: a kind of draws changes the noise, so every map (and what later
# notebooks count from it) would change as much as with another seed; `draws="antithetic"` or `"sobol"`
# (`tislib.compute_tis`, `smoothgrad.smoothgrad`) is the option where the lines above show a gain.

# %% [markdown]
# ## The fast mode: bfloat16
#
# `precision="bfloat16"` computes the forward and backward passes in bfloat16 (16-bit floats with float32's
# range; autocast keeps sums and normalisations in float32) where the CPU or GPU has bfloat16 instructions. It
# rounds every activation to ~3 significant digits, so its maps differ from float32's. The question is by how
# much compared with the method's own noise: we compute the stability images' TIS in bfloat16 with the *same*
# noise as a float32 map and count the top-5 positions they share, beside what another noise seed shares.

# %%
fast_native = sglib.bf16_supported()
if fast_native:
    t0 = time.perf_counter()
    exact_maps = stab_tis(nsamples, seed + 1)
    t_exact, t0 = time.perf_counter() - t0, time.perf_counter()
    fast_maps = stab_tis(nsamples, seed + 1, precision="bfloat16")
    t_fast = time.perf_counter() - t0
    fast_agree = tislib.topk_agreement(fast_maps, exact_maps)
    print(
        f"nsamples {nsamples}, {n_stab} images: float32 {t_exact:.2f} s, bfloat16 {t_fast:.2f} s "
        f"(x{t_exact / t_fast:.2f}; a small workload: benchmarks/tis_speed.py measures at scale)"
    )
    print(
        f"top-5 positions shared with float32 (same noise): {fast_agree.mean():.1%}; "
        f"with another float32 noise seed: {seed_agree[nsamples]:.1%}"
    )
else:
    print("this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): the fast mode is not available here")

# %%
if fast_native and method == "smoothgrad":
    record_metrics(run_dir, tis_top5_bf16_vs_float32=round(float(fast_agree.mean()), 4))

# %%
if fast_native:
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    ax.hist(
        [fast_agree, keeps["another noise seed"][nsamples]],
        bins=np.arange(-0.1, 1.2, 0.2),
        rwidth=0.9,
        label=["bfloat16 vs float32 (same noise)", "float32: another noise seed"],
    )
    ax.set_xlabel("share of an image's top-5 positions kept")
    ax.set_ylabel("images")
    ax.set_title(f"what bfloat16 moves vs what the noise moves ({n_stab} {split} images)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Explore
#
# Pick an image and a top-n: the decoded image, its token ids (the top-n in red) and its TIS map.
# The figure is drawn once; in a live notebook the sliders redraw it in place (a papermill run keeps the first
# drawing: image 0, top-5).


# %%
def explore_figure(index=0, top_n=5):
    fig = plots.tis_explorer(
        images_all[index],
        ds.tokens[split][index],
        tis[split][index],
        top_n,
        title=f"{split} #{index}: class {ds.class_names[labels[index]]}",
    )
    plt.close(fig)  # shown through the display handle below, not a second time by the inline backend
    return fig


images_all = vqlib.decode(vq, tokens)
n_positions = int(np.prod(ds.grid))
index_slider = widgets.IntSlider(0, 0, len(labels) - 1, description="index")
top_slider = widgets.IntSlider(5, 1, min(20, n_positions), description="top_n")
display(widgets.HBox([index_slider, top_slider]))
explorer = display(explore_figure(0, 5), display_id=True)
for slider in (index_slider, top_slider):
    slider.observe(
        lambda _: explorer.update(explore_figure(index_slider.value, top_slider.value)), names="value"
    )

# %% [markdown]
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1. No noise.** With `spread = 0` SmoothGrad is the plain gradient (every noisy copy is the image itself).
# Compute the σ = 0 TIS of the first 5 images of the `split` shown above (`attribution.attribute` with
# `"smoothgrad"`, `reduction`, `spread=0.0`) and compare each with its stored map `tis[split][i]`: how many of
# its top-5 positions stay? Write your answer as `answer_1 = [...]`, a list of 5 ints (0-5), one per image.

# %% tags=["solution"]
if solutions:
    x5 = codebook[tokens[:5]].permute(0, 3, 1, 2)
    tis0 = attribution.attribute(model, x5, labels[:5], "smoothgrad", reduction, nsamples, 0.0).numpy()
    answer_1 = [int(round(5 * a)) for a in tislib.topk_agreement(tis[split][:5], tis0, 5)]
    print(answer_1)


# %% tags=["exercise-check"]
def check_1(answer):
    plain = attribution.attribute(
        model, codebook[tokens[:5]].permute(0, 3, 1, 2), labels[:5], "smoothgrad", reduction, nsamples, 0.0
    ).numpy()
    kept = [
        len(np.intersect1d(a, b))
        for a, b in zip(tislib.topk_positions(tis[split][:5]), tislib.topk_positions(plain), strict=True)
    ]
    assert len(answer) == 5, f"expected 5 counts, got {len(answer)}"
    return [int(a) for a in answer] == kept


exercise(
    "1",
    globals(),
    check=check_1,
    hint="tislib.topk_agreement gives the share of 5 kept, per image",
    solutions=solutions,
)
# %% [markdown] tags=["exercise"]
# **2. The most concentrated map.** For each image of `split`, the share of its TIS mass in its top-5
# positions: the sum of its 5 highest scores over the sum of the absolute values of all its scores. Which
# image has the largest share? Write your answer as `answer_2 = ...`, an int (the image's row in `split`).

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
    return share[int(answer)] >= share.max() - 1e-9


exercise(
    "2", globals(), check=check_2, hint="np.sort each flattened map; take the 5 largest", solutions=solutions
)
# %% [markdown] tags=["exercise"]
# **3. How many noisy copies?** Among `nsamples` ∈ [1, 2, 5, 10, 20, 50], which is the smallest at which two
# noise seeds (`stab_tis(ns, seed + 1)` and `stab_tis(ns, seed + 2)`, the stability images above) keep on
# average at least 80% of an image's top-5 positions (`tislib.seed_agreement`)? Write your answer as
# `answer_3 = ...`, an int (0 if none reaches 0.8).

# %% tags=["solution"]
if solutions:
    candidates = [1, 2, 5, 10, 20, 50]
    agree = {
        ns: float(tislib.seed_agreement([stab_tis(ns, seed + 1), stab_tis(ns, seed + 2)]).mean())
        for ns in candidates
    }
    answer_3 = next((ns for ns in candidates if agree[ns] >= 0.8), 0)
    print(answer_3, {ns: round(a, 3) for ns, a in agree.items()})


# %% tags=["exercise-check"]
def check_3(answer):
    candidates = [1, 2, 5, 10, 20, 50]
    assert answer in candidates or answer == 0, f"{answer} is not one of {candidates} (or 0)"
    for ns in candidates:  # recompute in order; stop at the first that reaches 0.8
        reached = tislib.seed_agreement([stab_tis(ns, seed + 1), stab_tis(ns, seed + 2)]).mean() >= 0.8
        if reached or ns == answer:
            return reached and ns == answer
    return answer == 0


exercise(
    "3",
    globals(),
    check=check_3,
    hint="more copies average more noise out; stop at the first >= 0.8",
    solutions=solutions,
)
