# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 15 · Going deeper on TIS: noise, σ, draws and speed
#
# A second session after notebook 05. There, each grid position got a token importance score (TIS), by
# SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825) as in the paper (*Concept-Centric Token Interpretation
# for Vector-Quantized Generative Models*, Yang, Shi, Du, Wu, Tan, Sun, Liu):
#
# $$\mathrm{TIS}_{ij}(x) = \max_{d}\ \frac{1}{N}\sum_{n=1}^{N}
# \frac{\partial f_y(x+\epsilon_n)}{\partial x_{dij}},\qquad \epsilon_n \sim \mathcal{N}(0, \sigma^2 I),
# \quad \sigma = s\,(\max x - \min x).$$
#
# The $\epsilon_n$ are random, so a TIS map is random too. Here we ask what the paper's step leaves open:
#
# 1. **How much of a map is noise?** How many of an image's top-5 positions another noise seed keeps, as
#    $N$ grows.
# 2. **Whose range sets σ?** The paper's code takes max − min over the whole batch; per image is the other
#    choice.
# 3. **Fewer draws for the same answer?** Antithetic and quasi-random (Sobol) noise.
# 4. **A fast mode**: bfloat16, and what it costs the explanation.
#
# Everything reuses notebook 05's work, read from the run directory: its IEM, its settings (seed included)
# and its saved maps.

# %%
import functools
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from cortex_run import datasets as tokds
from cortex_run import tokenizers
from cortex_run.artifacts import record_metrics, registered
from cortex_run.checkpoints import load_run_iem
from cortex_run.notebook import check_parameters, exercise, repo_path, require
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-05 (relative to the repo root)
stability_images = 100  # test images on which the top-5 agreement across seeds and sigmas is measured
stability_nsamples = [5, 20, 100]  # nsamples values of the agreement curve (the run's nsamples is added)
variance_nsamples = [
    4,
    10,
    20,
    40,
]  # even nsamples of the reduced-variance curve (the run's is added if even)
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
solutions = False  # run the exercises' solution cells (a teacher's reveal)

# %%
check_parameters(globals(), "15_tis_deeper")
require(
    stability_images >= 1 and len(stability_nsamples) > 0 and min(stability_nsamples) >= 1,
    "stability_images must be >= 1 and stability_nsamples a non-empty list of values >= 1",
)
require(
    len(variance_nsamples) > 0 and all(ns >= 2 and ns % 2 == 0 for ns in variance_nsamples),
    "variance_nsamples must be a non-empty list of even values >= 2 (antithetic draws come in pairs)",
)
run_dir = repo_path(run_dir)

# %% [markdown]
# Notebook 05's settings, IEM and maps, from the run directory:

# %%
entry = registered(run_dir, "tis")
method, iem_arch, reduction = entry["method"], entry["iem_arch"], entry["reduction"]
nsamples, spread, seed = entry["nsamples"], entry["spread"], entry.get("seed", 0)
vq = tokenizers.load_run_vq(run_dir, device)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
model = load_run_iem(run_dir, iem_arch, ds, device)
codebook = vqlib.codebook(vq)
tis = {s: np.load(Path(entry["path"]) / f"{s}.npy") for s in entry["splits"]}
split = "test" if "test" in tis else entry["splits"][0]
labels = ds.labels[split].astype(np.int64)
tokens = torch.from_numpy(ds.tokens[split].astype(np.int64))
print(f"TIS method: {method} (notebook 05's); SmoothGrad: nsamples {nsamples}, spread {spread}, seed {seed}")

# %% [markdown]
# This notebook studies SmoothGrad's noise whatever `method` the run used (the other methods draw none:
# every seed gives the same map); its numbers are recorded only when the run's TIS are SmoothGrad's.
#
# ## How much of a map is noise?
#
# What the later notebooks use is each map's top-n positions (notebook 06 counts their token ids, notebook
# 07 masks them), so we measure exactly that: the **top-5 agreement** of two maps of an image,
# $|\mathrm{top}_5(a) \cap \mathrm{top}_5(b)| / 5$, averaged over images (`tislib.topk_agreement`). We take
# `stability_images` random test images as one SmoothGrad batch and compute their TIS with two noise seeds at
# several `nsamples`; more copies average more noise out, at a cost linear in `nsamples`.

# %%
t_stab = time.perf_counter()
n_stab = min(stability_images, len(labels))
stab_rows = np.sort(np.random.default_rng(seed).choice(len(labels), n_stab, replace=False))
x_stab = codebook[tokens[stab_rows]].permute(0, 3, 1, 2).contiguous()
y_stab = torch.from_numpy(labels[stab_rows])


# %%
def stab_tis(ns, noise_seed, how="batch", draws="gaussian", precision="float32"):
    """TIS of the stability images as one batch, sigma per batch or per image; the noise from `noise_seed` as
    `dataset_tis` seeds a batch at row 0 (`noise_seed * 1_000_003`)."""
    noise, seeded = tislib.Noise(ns, spread, how, draws), noise_seed * 1_000_003
    options = {"noise": noise, "seed": seeded, "precision": precision}
    return tislib.attribute(model, x_stab, y_stab, "smoothgrad", reduction, **options).numpy()


curve_ns = sorted(set(stability_nsamples) | {nsamples})
n_big = max(curve_ns)
seed_maps = {ns: [stab_tis(ns, seed + 1), stab_tis(ns, seed + 2)] for ns in curve_ns}

# %% [markdown]
# First look: three of these images, the map notebook 05 saved for each (its batch, its seed) beside the
# maps of two other noise seeds, at the run's `nsamples`. Same image, same IEM: only the noise differs.
# Each map is scaled to its own largest score, so the panels compare where the high scores sit.

# %%
show = list(range(min(3, n_stab)))
saved = "saved by 05" + ("" if method == "smoothgrad" else f" ({method})")
panels = [(saved, tis[split][stab_rows[show]])] + [
    (f"noise seed {seed + k + 1}", seed_maps[nsamples][k][show]) for k in (0, 1)
]
fig, axes = plt.subplots(len(show), 3, figsize=(6.2, 2.0 * len(show)), layout="constrained", squeeze=False)
for col, (name, maps) in enumerate(panels):
    for row, i in enumerate(show):
        m = maps[row] / max(float(maps[row].max()), 1e-12)  # each map over its own largest score
        handle = axes[row, col].imshow(m, cmap="inferno", vmin=0, vmax=1)
        axes[row, col].set_title(f"#{stab_rows[i]}, {name}", fontsize=8)
        axes[row, col].axis("off")
cbar = fig.colorbar(handle, ax=axes, shrink=0.8, label="TIS ÷ the map's largest")
# %% [markdown]
# ## Whose range sets σ?
#
# The paper's code sets σ = `spread` · (max − min) of the **whole batch tensor**, so an image's noise, and
# with it its scores, depends on which images share its batch (notebook 05: its `batch_size`, 100 by
# default; the paper's TIS run: 4). With `sigma = "image"` each image's own range sets its σ, and an image
# gets the same scores in any batch. We compare the two on the very same standard-normal draws (only their
# scale differs). The agreement of two seeds is the yardstick: a change that keeps *fewer* top-5 positions
# than another seed moves the scores beyond their noise.

# %%
keeps = {  # per image: the share of the top-5 positions (sigma per batch, seed + 1) that each change keeps
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
)
print(f"top-5 agreement with the σ-per-batch TIS, {n_stab} {split} images ({stab_seconds:.1f} s)")
display(table.round(3).astype(object).fillna("–"))

# %% [markdown]
# Record the seed agreement at the run's `nsamples` and the largest, and what σ per image keeps.

# %%
if method == "smoothgrad":
    record_metrics(
        run_dir,
        device=device,
        **{f"tis_top5_seed_agreement_{ns}": round(seed_agree[ns], 4) for ns in sorted({nsamples, n_big})},
        tis_top5_sigma_batch_vs_image=round(float(keeps["σ per image (same draws)"][nsamples].mean()), 4),
    )

# %%
values = [float(v.mean()) for per_ns in keeps.values() for v in per_ns.values()]
fig, ax = plt.subplots(figsize=(6.4, 3.2))
ax.plot(curve_ns, [seed_agree[ns] for ns in curve_ns], marker="o", label="another noise seed")
for name, per_ns in list(keeps.items())[1:]:
    ax.plot(list(per_ns), [float(v.mean()) for v in per_ns.values()], "s", ls="none", label=name)
ax.set_xscale("log")
ax.set_xticks(curve_ns, [str(ns) for ns in curve_ns])
ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.05))
ax.set_xlabel("SmoothGrad noisy copies (nsamples)")
ax.set_ylabel("top-5 agreement")
ax.set_title(f"how reproducible are the top-5 positions? ({n_stab} {split} images)", fontsize=9)
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
fig.tight_layout()

# %%
print(
    f"With nsamples = {nsamples}, as this run, another noise seed keeps {seed_agree[nsamples]:.0%} of an "
    f"image's top-5 positions on average"
    + (f"; with {n_big}, {seed_agree[n_big]:.0%}." if n_big != nsamples else ".")
)
for name, per_ns in list(keeps.items())[1:]:
    for ns, v in per_ns.items():
        _, _, sign = tislib.paired_mean_se(v, keeps["another noise seed"][ns])  # paired by image
        verdict = {1: "more than", -1: "fewer than", 0: "as many as (within two standard errors)"}[sign]
        print(
            f"{name}, nsamples = {ns}: keeps {v.mean():.0%}, {verdict} another noise seed "
            f"({seed_agree[ns]:.0%})."
        )

# %% [markdown]
# σ per batch stays notebook 05's default because it is the paper's convention: the scores are those the
# original code gives for the same batches. Per-image σ is the choice when scores must not depend on the
# batch, e.g. to compare runs with different `batch_size` (`-p sigma image` on notebook 05).
#
# ## Fewer draws for the same answer?
#
# The spread between two seeds is SmoothGrad's own Monte Carlo noise: each map is a mean over `nsamples`
# random draws. Two classic ways to make such a mean less noisy for the same number of draws keep every draw
# standard normal (so the smoothing is unchanged) and only change how the draws relate to each other:
#
# * **antithetic pairs**: draw ε and use both +ε and −ε. The part of the gradient that changes linearly with
#   the noise cancels within each pair (for a model whose gradient is linear in its input the mean over
#   pairs *is* the noise-free gradient; `tests/test_iem_tis.py` checks that);
# * **quasi-random normals**: a scrambled Sobol point set, so that each value's draws cover the normal
#   distribution evenly instead of by chance (randomised per image, so two seeds still differ).
#
# By hand first, on four test images in float64: antithetic draws are half as many standard-normal draws
# and their negatives, times the batch's σ.

# %% tags=["by-hand"]
x_few = codebook[tokens[:4]].permute(0, 3, 1, 2).double()
sd = spread * (x_few.max() - x_few.min())  # one sigma for the whole batch, as the paper
half = torch.randn((4, *x_few.shape), generator=torch.Generator().manual_seed(seed), dtype=x_few.dtype)
pairs_hand = torch.cat([half, -half]) * sd  # 8 draws: +eps then -eps
indep = (
    torch.randn((8, *x_few.shape), generator=torch.Generator().manual_seed(seed + 1), dtype=x_few.dtype) * sd
)
print(
    f"the largest mean of a value's 8 draws: antithetic {float(pairs_hand.mean(0).abs().max()):.1e}, "
    f"independent {float(indep.mean(0).abs().max()):.2f} (σ = {float(sd):.2f})"
)

# %% [markdown]
# The library's `tislib.Noise(..., draws="antithetic")` must give the same draws from the same seed.

# %% tags=["by-hand-check"]
pairs_lib = tislib.Noise(8, spread, draws="antithetic").draw(x_few, torch.Generator().manual_seed(seed))
torch.testing.assert_close(pairs_lib, pairs_hand)
print("by hand = library: the same 8 antithetic draws")

# %% [markdown]
# Now the measurement: the top-5 agreement of two noise seeds on the stability images, for each kind of
# draws at each `variance_nsamples` (Gaussian: the paper's independent draws). A kind that helps reaches the
# Gaussian curve's agreement with fewer draws; "Gaussian draws for the same agreement" reads that off the
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
    for d in tislib.DRAWS
    for ns in var_ns
}
var_agree = {key: tislib.seed_agreement(m) for key, m in var_maps.items()}  # per image
var_seconds = time.perf_counter() - t_var
gauss_curve = np.array([var_agree["gaussian", ns].mean() for ns in var_ns])
var_table = pd.DataFrame(
    {d: {f"nsamples {ns}": float(var_agree[d, ns].mean()) for ns in var_ns} for d in tislib.DRAWS}
)
print(f"top-5 agreement of two noise seeds, {n_stab} {split} images ({var_seconds:.1f} s)")
display(var_table.round(3))


# %%
def gaussian_draws_for(agreement):
    """nsamples at which the Gaussian curve reaches `agreement` (log-interpolated), or why it cannot be
    read."""
    if not np.all(np.diff(gauss_curve) > 0):
        return "not read (the Gaussian curve does not rise at every step)"
    if not gauss_curve.min() <= agreement <= gauss_curve.max():
        return "outside the Gaussian curve"
    return f"~{np.exp(np.interp(agreement, gauss_curve, np.log(var_ns))):.0f}"


var_values = [float(v.mean()) for v in var_agree.values()]
fig, ax = plt.subplots(figsize=(6.4, 3.2))
for d, marker in zip(tislib.DRAWS, "osd", strict=True):
    ax.plot(var_ns, [var_agree[d, ns].mean() for ns in var_ns], marker=marker, label=f"{d} draws")
ax.set_xscale("log")
ax.set_xticks(var_ns, [str(ns) for ns in var_ns])
ax.set_ylim(max(0.0, min(var_values) - 0.05), min(1.0, max(var_values) + 0.05))
ax.set_xlabel("SmoothGrad noisy copies (nsamples)")
ax.set_ylabel("top-5 agreement of two noise seeds")
ax.set_title(f"reduced-variance draws vs the paper's Gaussian draws ({n_stab} {split} images)", fontsize=9)
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
fig.tight_layout()

# %% [markdown]
# Per `nsamples`: each kind against the Gaussian draws, paired by image, with two standard errors as the bar
# for "more" or "less" reproducible; then the agreement of each kind at the run's `nsamples` (if even) is
# recorded.

# %%
for d in tislib.DRAWS[1:]:
    for ns in var_ns:
        diff, se, sign = tislib.paired_mean_se(var_agree[d, ns], var_agree["gaussian", ns])
        verdict = {1: "more reproducible", -1: "less reproducible", 0: "as reproducible (within 2 s.e.)"}[
            sign
        ]
        print(
            f"{d}, nsamples {ns}: {var_agree[d, ns].mean():.3f} vs Gaussian "
            f"{var_agree['gaussian', ns].mean():.3f} ({diff:+.3f} ± {se:.3f}): {verdict}; "
            f"Gaussian draws for the same: {gaussian_draws_for(var_agree[d, ns].mean())}"
        )

# %%
if method == "smoothgrad" and nsamples in var_ns:
    record_metrics(
        run_dir,
        **{
            f"tis_top5_seed_agreement_{d}_{nsamples}": round(float(var_agree[d, nsamples].mean()), 4)
            for d in tislib.DRAWS[1:]
        },
    )

# %% [markdown]
# The paper's Gaussian draws stay the default: another kind of draws changes the noise, so every map (and
# what later notebooks count from it) would change as much as with another seed; `draws="antithetic"` or
# `"sobol"` (`tislib.Noise`) is the option where the lines above show a gain.
#
# ## The fast mode: bfloat16
#
# `precision="bfloat16"` computes the forward and backward passes in bfloat16 (16-bit floats with float32's
# range; autocast keeps sums and normalisations in float32) where the CPU or GPU has bfloat16 instructions. It
# rounds every activation to ~3 significant digits, so its maps differ from float32's. By how much, compared
# with the method's own noise? We compute the stability images' TIS in bfloat16 with the *same* noise as a
# float32 map and count the top-5 positions they share, beside what another noise seed shares.

# %%
fast_native = tislib.bf16_supported(device)
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
    print(f"{device} has no bfloat16 instructions (AVX512-BF16 or AMX on a CPU): no fast mode here")

# %%
if fast_native and method == "smoothgrad":
    record_metrics(run_dir, tis_top5_bf16_vs_float32=round(float(fast_agree.mean()), 4))

# %%
if fast_native:
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    ax.hist(
        [fast_agree, keeps["another noise seed"][nsamples]],
        bins=np.arange(-0.1, 1.2, 0.2),
        rwidth=0.9,
        label=["bfloat16 vs float32 (same noise)", "float32: another noise seed"],
    )
    ax.set_xlabel("share of an image's top-5 positions kept")
    ax.set_ylabel("images")
    ax.set_title(f"what bfloat16 moves vs what the noise moves ({n_stab} {split} images)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()

# %% [markdown]
# ## One pass for many copies
#
# The original computed one backward pass per image per noise draw. In eval mode each image's logit depends
# on that image only, so one backward pass over many noisy copies gives the same numbers (notebook 05's
# by-hand check; `tests/test_iem_tis.py` to 1e-5); `benchmarks/tis_speed.py` measures the speed against
# Captum and against the machine's own rate. Notebook 05's `nproc > 1` shards the rows over a `torchrun` job
# of `nproc` processes: each process takes a contiguous, batch-aligned block of rows (the batches, and so the
# noise, are those of one process: the scores are identical) and process 0 merges the shards
# (`docs/scaling.md`).

# %% [markdown]
# ## Summary

# %%
bullets = [
    f"Another noise seed keeps {seed_agree[nsamples]:.1%} of an image's top-5 positions at nsamples "
    f"{nsamples} (notebook 05's), {seed_agree[n_big]:.1%} at {n_big} ({n_stab} {split} images).",
    f"σ per image instead of per batch keeps {keeps['σ per image (same draws)'][nsamples].mean():.1%} "
    f"(same draws, nsamples {nsamples}).",
    *(
        f"{d} draws at nsamples {ns}: agreement {var_agree[d, ns].mean():.3f} vs Gaussian "
        f"{var_agree['gaussian', ns].mean():.3f}."
        for d in tislib.DRAWS[1:]
        for ns in [nsamples if nsamples in var_ns else var_ns[-1]]
    ),
    (
        f"bfloat16 shares {fast_agree.mean():.1%} of float32's top-5 positions (same noise)."
        if fast_native
        else "bfloat16 is not native on this CPU: not measured."
    ),
]
display(Markdown("\n".join(f"- {b}" for b in bullets)))

# %% [markdown]
# ## Questions
#
# 1. Why is a SmoothGrad map random, and which part of it do the later notebooks use?
# 2. What is the top-5 agreement of two maps?
# 3. Why does notebook 05's σ depend on which images share a batch?
# 4. What is the yardstick for "this change moves the scores beyond their noise"?
# 5. What cancels within an antithetic pair?
# 6. Why do the paper's Gaussian draws stay the default even where another kind helps?
# 7. What does bfloat16 round, and what is it compared against?
# 8. Why can one backward pass serve many noisy copies?

# %% [markdown]
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1. How many noisy copies?** Among `nsamples` ∈ [1, 2, 5, 10, 20, 50], which is the smallest at which two
# noise seeds (`stab_tis(ns, seed + 1)` and `stab_tis(ns, seed + 2)`) keep on average at least 80% of an
# image's top-5 positions (`tislib.seed_agreement`)? `answer_1 = ...`: an int (0 if none reaches 0.8).


# %%
@functools.cache
def agreement_at(ns):
    """Mean top-5 agreement of two noise seeds on the stability images at `ns` copies (cached)."""
    return float(tislib.seed_agreement([stab_tis(ns, seed + 1), stab_tis(ns, seed + 2)]).mean())


# %% tags=["solution"]
if solutions:
    answer_1 = next((ns for ns in [1, 2, 5, 10, 20, 50] if agreement_at(ns) >= 0.8), 0)
    print(answer_1)


# %% tags=["exercise-check"]
def check_1(answer):
    candidates = [1, 2, 5, 10, 20, 50]
    assert answer in candidates or answer == 0, "choose one of the six listed nsamples values, or 0"
    first = next((ns for ns in candidates if agreement_at(ns) >= 0.8), 0)
    assert answer != 0 or first == 0, "some nsamples does reach 0.8: compute the agreement at each"
    assert answer == 0 or agreement_at(answer) >= 0.8, "at that nsamples the agreement is still below 0.8"
    assert answer == first, "a smaller nsamples already reaches 0.8: stop at the first"
    return True


exercise("1", globals(), check=check_1, hint="more copies average more noise out", solutions=solutions)

# %% [markdown] tags=["exercise"]
# **2. Fully stable maps.** At the run's `nsamples`, on how many of the stability images do the two noise
# seeds share *all* five top-5 positions (`seed_maps[nsamples]`)? `answer_2 = ...`: an int.

# %% tags=["solution"]
if solutions:
    answer_2 = int((tislib.seed_agreement(seed_maps[nsamples]) == 1).sum())
    print(answer_2)


# %% tags=["exercise-check"]
def check_2(answer):
    full = tislib.topk_agreement(*seed_maps[nsamples]) == 1
    assert 0 <= int(answer) <= len(full), f"count images: between 0 and {len(full)}"
    assert int(answer) == int(full.sum()), "not that count: an image counts when its agreement is exactly 1"
    return True


exercise(
    "2", globals(), check=check_2, hint="tislib.topk_agreement per image, then == 1", solutions=solutions
)
