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
# # 11 · Can we trust the explanations? Sanity checks and alternative attributions
#
# The token importance scores (TIS, notebook 05) of *Concept-Centric Token Interpretation for Vector-Quantized
# Generative Models* (Yang, Shi, Du, Wu, Tan, Sun, Liu; "the paper" below) are SmoothGrad saliency maps
# (Smilkov et al. 2017, *SmoothGrad: removing noise by adding noise*, arXiv:1706.03825), and gradient saliency
# has a known failure: Adebayo et al. (2018, *Sanity Checks for Saliency Maps*, NeurIPS) showed that some
# saliency maps barely change when the model's weights are replaced by random ones, so they describe the
# input, not the model. If that happened here, the concept tokens of notebook 06 would say little about what
# the IEM learned.
#
# This notebook checks, on a subset of the test images:
#
# 1. **five attributions behind one interface** (`cortex_utils.tis.attribute`; SmoothGrad the
#    project's own, the others from Captum): the paper's **SmoothGrad**, plain **gradient**,
#    **gradient × input**, **Integrated Gradients** (from an all-neutral-token grid) and **token occlusion**
#    (replace one token with the neutral token, measure the drop of the target logit). Every one yields one
#    score per grid position, exactly the TIS format, and any one can be the run's TIS (notebook 05's
#    `method`);
# 2. **sanity checks**: re-initialise the IEM's layers from the head down (*cascading* randomization) and all
#    at once (*full*), and train the same IEM on shuffled labels (*data* randomization); compare each
#    method's maps with the trained model's as Adebayo et al. report it: Spearman rank correlation of the
#    **signed** and of the **absolute** maps, and the overlap of the top-`overlap_k` positions. A map that
#    explains the model must change: the bar is a mean rank correlation of the absolute maps ≤
#    `max_rank_corr` (0.3; the parameter group `bars`) under full **and** under data randomization. A **random
#    control** (uniform noise) shows why passing is not enough: it passes trivially;
# 3. **faithfulness**: deletion and insertion curves: the evaluators' target probability as positions are
#    removed (or revealed) in attribution order vs in random order, in pixel space and token space; the
#    bar is a deletion AUC ≤ `max_deletion_ratio` (0.8) × the random order's in `faithfulness_space`
#    (pixel; `bars["space"]`);
# 4. a **recommendation**, computed from 2 and 3 (a method must pass both, or none is recommended; the run's
#    own method, read from the run, is kept if it passes), and **token-space views** of the codebook.

# %%
import copy
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display

from cortex_run import datasets as tokds
from cortex_run import evaluators, plots, prepare, report, tokenizers
from cortex_run.artifacts import atomic_path, note_trained, record_metrics, registered
from cortex_run.checkpoints import load_run_iem
from cortex_run.notebook import check_parameters, choice, exercise, repo_path, require
from cortex_utils import concepts, evaluation, sanity
from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib

# %% [markdown]
# The knobs. Some travel together as a group (a dict): set only the keys you change, e.g.
# `-p curve_points '{images: 5}'`; the others keep their defaults.
#
# * `shuffled_iem`: the IEM trained on shuffled labels: its `epochs` (constant learning rate) and how many
#   random train rows it memorizes (`max_images`; 0: the whole train split; more rows need more epochs).
# * `bars`: the recommendation's two bars: the mean Spearman of the absolute maps at most `max_rank_corr`
#   under full and under data randomization, and a deletion AUC at most `max_deletion_ratio` times the random
#   order's, in masking `space` pixel (black patches) or token (the neutral token).
# * `curve_points`: the deletion / insertion curves use the first `images` of the explained images (token
#   space decodes every point) and `steps` points each (positions removed: 0, 1/8, ..., all).
# * `codebook_map`: which top-n concept table of notebook 06 colours the codebook (`top_n`), whether a
#   t-SNE is drawn beside the PCA (`tsne`; scikit-learn, a few seconds), and how many concept tokens per
#   class the gallery shows (`gallery_tokens`).

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-06 (relative to the repo root)
iem_arch = 1  # which trained IEM to explain (1-4)
split = "test"  # whose images are explained
n_images = 100  # random images of the split (seeded) for the maps and the full / data randomization checks
methods = ["smoothgrad", "gradient", "grad_x_input", "integrated_gradients", "occlusion"]
reduction = "max"  # max | mean over the embedding channels (as the TIS)
nsamples = 20  # SmoothGrad noisy copies
spread = 0.2  # SmoothGrad noise sigma as a fraction of the batch's value range
ig_steps = 16  # Integrated Gradients steps
occlusion_group = 1  # occlude single tokens (1) or g x g blocks of tokens
# the neutral token of occlusion, IG's baseline and token-space masking: background | mean | an id, e.g. "17"
neutral = "background"
cascade_images = 10  # the first of those images for the cascading randomization (maps at every layer step)
shuffled_iem = {"epochs": 30, "max_images": 300}  # the shuffled-label IEM (see its section)
retrain = False  # train the shuffled-label IEM even if the shipped one matches these data and settings
overlap_k = 5  # the sanity checks also report how many of each map's top-k positions (by |score|) survive
bars = {"max_rank_corr": 0.3, "max_deletion_ratio": 0.8, "space": "pixel"}  # the recommendation's two bars
curve_points = {"images": 20, "steps": 8}  # the curves: the first of those images; points (0, 1/8, ..., all)
spaces = ["pixel", "token"]  # masking spaces of the curves
curves = ["deletion", "insertion"]
codebook_map = {"top_n": 5, "tsne": True, "gallery_tokens": 3}  # the codebook views (see their section)
batch_size = 100
seed = 0
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
check_parameters(globals(), "11_trust_the_explanations")
run_dir = repo_path(run_dir)
shuffled_epochs, shuffled_max_images = shuffled_iem["epochs"], shuffled_iem["max_images"]
max_rank_corr, max_deletion_ratio, faithfulness_space = (
    bars[k] for k in ("max_rank_corr", "max_deletion_ratio", "space")
)
curve_images, curve_steps = curve_points["images"], curve_points["steps"]
concept_top_n, tsne, gallery_tokens = (codebook_map[k] for k in ("top_n", "tsne", "gallery_tokens"))
choice("iem_arch", iem_arch, list(iemlib.ARCHITECTURES))
for m in methods:
    choice("methods", m, list(tislib.METHODS))
require(
    len(methods) == len(set(methods)) and len(methods) > 0,
    f"methods must be distinct and non-empty, got {methods}",
)
choice("reduction", reduction, tislib.REDUCTIONS)

# %%
evaluation.check_neutral(neutral)
require(
    n_images >= 2 and cascade_images >= 2 and curve_images >= 1,
    "n_images and cascade_images must be >= 2, curve_images >= 1",
)
require(
    nsamples >= 1 and spread >= 0 and ig_steps >= 1 and occlusion_group >= 1 and batch_size >= 1,
    "nsamples, ig_steps, occlusion_group and batch_size must be >= 1, spread >= 0",
)
require(
    shuffled_epochs >= 1 and shuffled_max_images >= 0,
    "shuffled_epochs must be >= 1, shuffled_max_images >= 0",
)
require(0 < max_rank_corr <= 1, f"max_rank_corr must lie in (0, 1], got {max_rank_corr}")
require(0 < max_deletion_ratio <= 1, f"max_deletion_ratio must lie in (0, 1], got {max_deletion_ratio}")
require(overlap_k >= 1, f"overlap_k must be >= 1, got {overlap_k}")
# %%
choice("faithfulness_space", faithfulness_space, list(evaluation.SPACES))
require(
    faithfulness_space in spaces,
    f"faithfulness_space {faithfulness_space!r} must be one of the curves' spaces {spaces}",
)
require(curve_steps >= 1, "curve_steps must be >= 1")
spaces = evaluation.check_spaces(spaces)
require(
    len(curves) > 0 and set(curves) <= set(sanity.CURVES),
    f"curves must be a non-empty subset of {sanity.CURVES}",
)
require("deletion" in curves, "the deletion curve is needed for the recommendation")
require(gallery_tokens >= 0 and concept_top_n >= 1, "gallery_tokens must be >= 0, concept_top_n >= 1")

# %% [markdown]
# ## The ingredients
#
# The VQ model, the token dataset and IEM of notebooks 01–03, the evaluators of notebook 02, and the
# neutral token (as in notebook 07, by default the most frequent id of the split: the background code).
# Integrated Gradients starts from a grid holding the neutral token everywhere, and occlusion puts the
# neutral token at the occluded position: both baselines are real tokens, not zero vectors.

# %%
vq = tokenizers.load_run_vq(run_dir, device)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
require(split in ds.splits, f"split {split!r} not in the dataset ({ds.splits})")
model = load_run_iem(run_dir, iem_arch, ds, device)
codebook = vqlib.codebook(vq)
all_tokens = ds.tokens[split].astype(np.int64)
n = min(n_images, len(all_tokens))
subset = np.random.default_rng(seed).permutation(len(all_tokens))[
    :n
]  # random rows: splits are ordered by class
tokens, labels = all_tokens[subset], ds.labels[split][subset].astype(np.int64)
judges = evaluators.load_run_evaluators(run_dir, vqlib.resolution(vq), len(ds.class_names), device=device)
method = registered(run_dir, "tis")[
    "method"
]  # the run's TIS (notebook 05): the recommendation keeps it if it passes
require(method in methods, f"the run's TIS method {method!r} must be one of the methods compared, {methods}")

# %%
neutral_id = evaluation.resolve_neutral(vq, all_tokens, neutral)
settings = (tislib.Noise(nsamples, spread), seed, ig_steps, occlusion_group, codebook[neutral_id])
options = {m: tislib.method_options(m, *settings) | {"reduction": reduction} for m in tislib.METHODS}
n_positions = int(np.prod(ds.grid))
require(
    overlap_k <= n_positions,
    f"overlap_k must be at most the {n_positions} positions of a grid, got {overlap_k}",
)
print(
    f"{n} random {split} images ({np.bincount(labels).min()}-{np.bincount(labels).max()} per class), IEM "
    f"{iem_arch} ({model.cortex_spec['arch']}), grid {ds.grid}, neutral token {neutral_id}, evaluators "
    f"{list(judges)}; TIS method: {method} (the run's, notebook 05)"
)

# %% [markdown]
# ## One interface, five attributions
#
# `tislib.attribute(model, embeddings, target, method=..., **options)` returns `(N, h, w)` scores for any
# method, each with its own options (`options[m]` above); `attribute_tokens` does the same from token grids
# in batches. A method name that does not exist, an option the method does not take, or an IG baseline of
# the wrong shape, is refused with the valid choices:

# %%
x0 = codebook[torch.from_numpy(tokens[:2])].permute(0, 3, 1, 2)
for what, bad in (
    ("method 'lime'", {"method": "lime"}),
    ("the gradient with SmoothGrad's noise", {"method": "gradient", "noise": tislib.Noise(100)}),
    ("IG with a 3x3 baseline", {"method": "integrated_gradients", "baseline": torch.zeros(3, 3)}),
):
    try:
        tislib.attribute(model, x0, labels[:2], **bad)
    except ValueError as err:
        print(f"{what} -> ValueError: {err}")

# %% [markdown]
# SmoothGrad is the project's own (`tislib.smoothgrad`, notebook 05), not Captum's
# `NoiseTunnel(Saliency)`, which a user would pick instead. Captum draws an image's noisy copies one after
# another; drawn in that order from the same seed (`Noise(..., chunk=nsamples)`), the two get the very same
# noise and must agree:

# %%
from captum.attr import NoiseTunnel, Saliency

x8, y8 = codebook[torch.from_numpy(tokens[:8])].permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels[:8])
in_captums_order = tislib.Noise(nsamples, spread, chunk=nsamples)
ours = tislib.attribute(model, x8, y8, "smoothgrad", reduction, noise=in_captums_order, seed=seed)
with torch.random.fork_rng(devices=[]):  # Captum draws from the global RNG: seeded here, restored afterwards
    torch.manual_seed(seed)
    captum_sg = tislib.reduce_channels(
        NoiseTunnel(Saliency(copy.deepcopy(model).cpu())).attribute(  # Captum's noise: the CPU's RNG
            x8.clone().requires_grad_(),
            nt_type="smoothgrad",
            nt_samples=nsamples,
            stdevs=float(spread * (x8.max() - x8.min())),
            target=y8,
            abs=False,
        ),
        reduction,
    )
parity = float((captum_sg - ours).abs().max() / ours.abs().max())
print(
    "Captum's NoiseTunnel(Saliency) vs the project's SmoothGrad, same noise: max |difference| = "
    f"{parity:.2e} of the largest score"
)
assert parity < 1e-4, "the project's SmoothGrad no longer gives Captum's maps for the same noise"

# %% [markdown]
# The maps of the trained IEM for every method (each image's own class as the target). Beside them runs a
# **random control**, `sanity.random_attribution`: uniform noise in [-1, 1), a fresh draw for every
# model it "explains". It knows nothing about model or input; every check below must tell it apart from a
# real attribution, or the check is too weak to mean anything.

# %%
maps, seconds = {}, {}
for m in methods:
    t0 = time.perf_counter()
    maps[m] = tislib.attribute_tokens(model, codebook, tokens, labels, m, batch_size, **options[m])
    seconds[m] = time.perf_counter() - t0
display(pd.Series({m: 1000 * s / n for m, s in seconds.items()}, name="ms per image").round(2).to_frame())
control = sanity.RANDOM_CONTROL
compared = [*methods, control]  # every table below has the control as its last row
maps[control] = sanity.random_attribution(maps[methods[0]].shape, seed=seed)

# %%
show = np.unique(labels, return_index=True)[1][:6]  # the first image of each class in the sample, six at most
images = vqlib.decode(vq, torch.from_numpy(tokens[show]))
fig, axes = plt.subplots(
    len(methods), len(show), figsize=(1.5 * len(show), 1.6 * len(methods)), squeeze=False
)
for r, m in enumerate(methods):
    for c, i in enumerate(show):
        a = np.abs(maps[m][i]) / max(np.abs(maps[m][i]).max(), 1e-12)  # each map on its own scale, 0 to 1
        handle = plots.tis_overlay(axes[r, c], images[c], a, f"{m}" if c == 0 else "", vmax=1.0)
first = "" if len(show) == len(ds.class_names) else f", {len(show)} of {len(ds.class_names)} classes"
fig.suptitle(f"attribution maps of the trained IEM (one image per class{first})")
fig.tight_layout()
fig.colorbar(handle, ax=axes, shrink=0.6, label="|score| ÷ the map's largest")
plt.show()


# %%
def maps_of(some_model, m, rows, draw):
    """Maps of the first `rows` images by method `m` for `some_model`; the control draws fresh noise (seed
    `draw`)."""
    if m == control:
        return sanity.random_attribution((rows, *ds.grid), seed=draw)
    return tislib.attribute_tokens(
        some_model, codebook, tokens[:rows], labels[:rows], m, batch_size=batch_size, **options[m]
    )


# %% [markdown]
# ## By hand: does a map change when the weights are random?
#
# Before the checks at scale, the whole idea on three images in plain torch and numpy. Re-initialise a
# copy of the IEM (every layer that has an initializer gets fresh weights), take the gradient of each
# image's class logit with respect to its embeddings for both models, reduce over the channels as the TIS
# does, and keep the absolute values: how strongly each position matters, whatever the sign.

# %% tags=["by-hand"]
cpu_model = copy.deepcopy(model).cpu()  # by hand on the CPU, whatever the run's device
random_iem = copy.deepcopy(cpu_model)  # a copy: the trained IEM stays as it is
with torch.random.fork_rng(devices=[]):  # leave the global RNG alone (the numbers below do not move)
    torch.manual_seed(seed)
    for layer in random_iem.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
random_iem.eval()


def gradient_map(some_model, x, y):
    """d logit_y / d embeddings, reduced over the channels like the TIS: (N, h, w)."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(some_model(x)[torch.arange(len(x)), y].sum(), x)
    return grad.amax(1) if reduction == "max" else grad.mean(1)


x3, y3 = codebook[torch.from_numpy(tokens[:3])].permute(0, 3, 1, 2), torch.from_numpy(labels[:3])
trained3 = (
    gradient_map(cpu_model, x3, y3).abs().flatten(1).double().numpy()
)  # one row of h*w positions per image
random3 = gradient_map(random_iem, x3, y3).abs().flatten(1).double().numpy()

# %% [markdown]
# Spearman's ρ is Pearson's correlation of the ranks. The rank of a value is how many values of its map
# are smaller, plus one (tied values share their mean rank); without ties it equals the textbook
# 1 − 6Σd² / (n(n² − 1)), d the rank differences.


# %% tags=["by-hand"]
def ranks(row):
    """Rank of each value in its row, 1 = smallest; tied values share their mean rank."""
    below = (row[:, None] > row[None, :]).sum(1)
    equal = (row[:, None] == row[None, :]).sum(1)
    return below + (equal + 1) / 2


def pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / np.sqrt((a**2).sum() * (b**2).sum())


rho_by_hand = np.array([pearson(ranks(t), ranks(r)) for t, r in zip(trained3, random3, strict=True)])
d_rank = np.array([ranks(t) - ranks(r) for t, r in zip(trained3, random3, strict=True)])
textbook = 1 - 6 * (d_rank**2).sum(1) / (n_positions * (n_positions**2 - 1))  # exact only without ties
print(f"|gradient| maps, trained vs re-initialised IEM, {n_positions} positions each")
print("Spearman by hand (Pearson of ranks):", rho_by_hand.round(4), " textbook formula:", textbook.round(4))

# %% [markdown]
# The same numbers from the library the rest of the notebook uses, on the very same maps (and the
# gradient maps themselves against `tislib.attribute(..., "gradient")`):

# %% tags=["by-hand-check"]
stack = (3, *ds.grid)
np.testing.assert_allclose(
    sanity.abs_spearman(trained3.reshape(stack), random3.reshape(stack)), rho_by_hand, rtol=1e-9, atol=1e-12
)
np.testing.assert_allclose(
    sanity.spearman(trained3.reshape(stack), random3.reshape(stack)), rho_by_hand, rtol=1e-9, atol=1e-12
)
library3 = tislib.attribute(model, x3, y3, "gradient", reduction=reduction).abs().flatten(1).double().numpy()
np.testing.assert_allclose(library3, trained3, rtol=1e-5, atol=1e-6 * trained3.max())
print("by hand == sanity.abs_spearman / spearman on the same maps; the gradient maps == tislib.attribute")

# %% [markdown]
# At scale, `sanity.map_similarity` does this for every image and method at once: pandas ranks all
# rows of an `(N, h·w)` stack in one call (mean ranks for ties, no n² comparison), the correlation is one
# vectorised expression over the rows, and the maps come from `tislib.attribute_tokens` in batches;
# `sanity.randomize_full` also re-initialises parameters that have no initializer (e.g. a ViT's position
# table) and names every step.

# %% [markdown]
# ## Sanity check 1: cascading model randomization
#
# Starting from the classification head, the IEM's layers are re-initialised one at a time (with their own
# initializers; BatchNorm statistics reset), keeping the earlier randomizations, until the whole network is
# random. After every step each method's maps are compared with the trained model's maps by Spearman rank
# correlation, per image, of the signed maps and of their absolute values. A method that explains the
# model should lose its correlation as soon as the head is gone; a method whose curve stays high is mostly
# an input detector. Watch the two panels differ: a randomized model can flip the *signs* of a map at
# random (signed correlation near 0) while its *magnitudes* still sit on the strokes of the digit.

# %%
k = min(cascade_images, n)
cascade = sanity.randomize_cascade(model, seed=seed)
layer_names = [f"{type(model.get_submodule(layer)).__name__} {layer}" for layer, _ in cascade]
rows, example = [], {}  # example: the first image's map at every step, for the figure below
for step, (_, rand_model) in enumerate(cascade):
    for m in compared:
        rand_maps = maps_of(rand_model, m, k, draw=seed + 1 + step)
        sim = sanity.map_similarity(maps[m][:k], rand_maps, overlap_k)
        rows.append(sim.assign(step=step + 1, layer=layer_names[step], method=m))
        example[m, step] = rand_maps[0]
cascade_table = pd.concat(rows, ignore_index=True)

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), sharey=True)
for ax, col, what in zip(axes, ["spearman", "abs_spearman"], ["signed maps", "absolute maps"], strict=True):
    sns.lineplot(
        data=cascade_table,
        x="step",
        y=col,
        hue="method",
        style="method",
        hue_order=compared,
        style_order=compared,
        markers=True,
        errorbar="sd",
        ax=ax,
        legend=ax is axes[-1],
    )
    ax.set_xticks(range(1, len(cascade) + 1), layer_names, rotation=60, ha="right", fontsize=7)
    ax.axhline(0, color="gray", lw=0.6)
    ax.set_xlabel(f"layers re-initialised so far (the head first; {model.cortex_spec['arch']} module names)")
    ax.set_ylabel("Spearman vs trained")
    ax.set_title(f"{what}", fontsize=9)
axes[1].axhline(max_rank_corr, color="crimson", ls="--", lw=1, label=f"bar {max_rank_corr}")
axes[1].legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
fig.suptitle(f"cascading randomization: rank correlation with the trained IEM's maps ({k} images, mean ± sd)")
fig.tight_layout()
# %%
picked = sorted({0, len(cascade) // 4, len(cascade) // 2, 3 * len(cascade) // 4, len(cascade) - 1})
i = 0
fig, axes = plt.subplots(
    len(methods), len(picked) + 1, figsize=(1.5 * (len(picked) + 1), 1.6 * len(methods)), squeeze=False
)
for r, m in enumerate(methods):
    for c, a in enumerate([maps[m][i], *(example[m, s] for s in picked)]):
        im = axes[r, c].imshow(np.abs(a) / max(np.abs(a).max(), 1e-12), cmap="inferno", vmin=0, vmax=1)
        axes[r, c].set_title(
            ("trained" if c == 0 else f"to {layer_names[picked[c - 1]]}") if r == 0 else "", fontsize=7
        )
    axes[r, 0].set_ylabel(m, fontsize=8)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(f"one {split} image (class {ds.class_names[labels[i]]}) as the cascade proceeds")
fig.tight_layout()
fig.colorbar(im, ax=axes, shrink=0.6, label="|score| ÷ the map's largest")
plt.show()

# %% [markdown]
# ## Sanity checks 2 and 3: full model randomization and data randomization
#
# *Full*: every layer re-initialised at once. *Data*: an IEM of the same architecture trained from scratch
# on `shuffled_max_images` training images with **shuffled labels**, long enough to memorize them (its
# weights are kept where it fits those random labels best); whatever it learned cannot be the digit concepts,
# so maps that still look like the trained model's do not reflect what the trained model learned. Means over
# the `n_images` images. The repository ships this IEM, trained once on the default data
# (`checkpoints/iem1_shuffled_labels`), so every CPU compares against the same one; it is trained here when
# the data or the settings differ, or with `retrain = True`.
#
# Three measures, as Adebayo et al. report them: Spearman of the **signed** maps, Spearman of the
# **absolute** maps, and the share of each map's **top-`overlap_k` positions** (by |score|) that the
# randomized model's map keeps (two unrelated maps share `overlap_k` / (h·w) of them). The bar is on the
# absolute maps: the sign of a score can turn random while the ranking of positions by magnitude, the
# thing that says *where* the evidence is, survives; a signed correlation near 0 then hides a map that
# still marks the same positions. The bar applies to **both** randomizations: full randomization destroys
# everything the model learned, data randomization keeps a model that learned to fit these very inputs,
# only not the concept; a map that explains the concept must change under either (the two can disagree:
# the shuffled-label IEM's weights are trained, so they have a trained model's scale and structure). The
# signed and absolute correlations differ only for maps that carry a sign: the share of negative scores
# printed below says which do (a max over the embedding channels, `reduction = "max"`, is rarely negative).

# %%
full_model = sanity.randomize_full(model, seed=seed)
shuffled_model, shuffled_log, trained = prepare.shuffled_label_iem(
    model,
    ds,
    codebook,
    f"iem{iem_arch}_shuffled_labels",
    {"epochs": shuffled_epochs, "max_images": shuffled_max_images, "seed": seed},
    retrain=retrain,
    out_dir=run_dir / "iem",
)
if trained:
    note_trained(run_dir, "the shuffled-label IEM")
test_acc = iemlib.evaluate_iem(shuffled_model, tokds.embedding_loader(ds, split, codebook, batch_size=256))[
    "top1"
]
kept = shuffled_log.loc[shuffled_log["select_loss"].idxmin()]
print(
    f"shuffled-label IEM ({len(shuffled_log)} epochs): fits {kept['select_acc']:.1%} of its shuffled "
    f"training labels (epoch {int(kept['epoch'])} kept); {test_acc:.1%} on the true {split} labels (chance "
    f"{1 / len(ds.class_names):.0%})"
)

# %% [markdown]
# Each method's maps under both randomized models, compared image by image with the trained model's maps:

# %%
rows = []
for j, (kind, rand_model) in enumerate([("full", full_model), ("data", shuffled_model)]):
    for m in compared:
        rand_maps = maps_of(rand_model, m, n, draw=seed + 1 + len(cascade) + j)
        rows.append(sanity.map_similarity(maps[m], rand_maps, overlap_k).assign(randomization=kind, method=m))
similarity = pd.concat(rows, ignore_index=True)
measures = {
    "spearman": "Spearman, signed maps",
    "abs_spearman": "Spearman, absolute maps",
    "top_k": f"top-{overlap_k} overlap (absolute maps)",
}
means = similarity.groupby(["randomization", "method"])[list(measures)].mean()
summary = means.unstack(0).reindex(compared)[[(c, kind) for c in measures for kind in ("full", "data")]]
summary.columns = pd.MultiIndex.from_tuples(
    [(measures[c], kind) for c, kind in summary.columns], names=["measure", "randomization"]
)
display(summary.round(3))
print(
    "share of negative scores in the trained IEM's maps: "
    + ", ".join(f"{m} {(maps[m] < 0).mean():.1%}" for m in compared)
)

# %%
chance = overlap_k / n_positions  # two independent random rankings share k / n of their top k
fig, axes = plt.subplots(1, len(measures), figsize=(14, 3.6), sharey=True)
for ax, (col, label) in zip(axes, measures.items(), strict=True):
    sns.barplot(
        data=similarity,
        x="method",
        y=col,
        hue="randomization",
        order=compared,
        hue_order=["full", "data"],
        errorbar="sd",
        ax=ax,
        legend=ax is axes[0],
    )
    ax.axhline(0, color="gray", lw=0.6)
    ax.set_xlabel("attribution method")
    ax.set_ylabel("similarity to the trained IEM's maps")
    ax.set_title(label, fontsize=9)
    ax.tick_params(axis="x", labelsize=7, rotation=45)
axes[1].axhline(max_rank_corr, color="crimson", ls="--", lw=1, label=f"bar ≤ {max_rank_corr}")
axes[1].legend(fontsize=7)
axes[2].axhline(chance, color="gray", ls=":", lw=1, label=f"chance {chance:.2f}")
axes[2].legend(fontsize=7)
fig.suptitle(f"how much of the trained IEM's maps survives randomization (mean ± sd over {n} images)")
fig.tight_layout()

# %% [markdown]
# Record the headline numbers: the mean rank correlations (signed and absolute) under both randomizations.

# %%
prefix = {"full": "sanity_", "data": "sanity_data_"}
_ = record_metrics(
    run_dir,
    **{
        f"{prefix[kind]}{'abs_' if col == 'abs_spearman' else ''}rank_corr_{m}": round(
            float(means.loc[(kind, m), col]), 4
        )
        for kind in prefix
        for m in compared
        for col in ("spearman", "abs_spearman")
    },
)
# %% [markdown]
# ## Faithfulness: deletion and insertion curves
#
# Rank each image's positions by a method's scores; **delete** the top k (pixel space: black patches of the
# decoded image; token space: the neutral token, then decode), for k from 0 to every position, and follow
# the evaluators' probability of the image's class. A faithful ranking makes it fall fast: a **low deletion
# AUC**. **Insertion** starts from the fully masked image and reveals the top k: a **high insertion AUC**.
# A random order is the reference. Unlike notebook 07, exactly the ranked positions are masked (not every
# position holding their ids), so the curves compare rankings. The random control runs through the same
# curves: ranking positions by noise *is* a random order, so its curves should lie near the random order's
# (two random orders differ by chance over `curve_images` images).

# %%
c = min(curve_images, n)
curve_table = sanity.faithfulness_curves(
    vq,
    tokens[:c],
    labels[:c],
    {m: maps[m][:c] for m in compared},
    judges,
    options=evaluation.Masking(spaces=spaces, neutral=neutral_id, seed=seed, batch_size=batch_size),
    curves=curves,
    steps=curve_steps,
)
aucs = sanity.curve_auc(curve_table)
out = run_dir / "evaluation"
out.mkdir(exist_ok=True)
with atomic_path(out / "faithfulness_curves.csv") as tmp:
    curve_table.to_csv(tmp, index=False)

# %%
mean_curves = (
    curve_table.groupby(["space", "curve", "method", "fraction"], sort=False)["mean_prob"]
    .mean()
    .reset_index()
)
g = sns.relplot(
    data=mean_curves,
    x="fraction",
    y="mean_prob",
    hue="method",
    style="method",
    col="space",
    row="curve",
    kind="line",
    markers=True,
    height=2.7,
    aspect=1.3,
    facet_kws={"ylim": (0, 1.02)},
    hue_order=[*compared, "random"],
)
g.set_axis_labels("fraction of positions removed / revealed", "target probability")
g.figure.suptitle(f"faithfulness curves ({c} images, mean over the evaluators)", y=1.02)
plt.show()
# %%
table = aucs[aucs.evaluator == "mean"].pivot_table(index="method", columns=["curve", "space"], values="auc")
table = table.reindex([*compared, "random"])
fig, axes = plt.subplots(
    1, len(curves), figsize=(3.2 * len(curves) + 1, 0.45 * len(table) + 1.2), squeeze=False
)
for ax, cv in zip(axes[0], curves, strict=True):
    sns.heatmap(
        table[cv],
        annot=True,
        fmt=".3f",
        cmap="viridis_r" if cv == "deletion" else "viridis",
        cbar_kws={"label": f"{cv} AUC"},
        ax=ax,
    )
    ax.set_title(f"{cv} AUC ({'lower' if cv == 'deletion' else 'higher'} is better)")
    ax.set_ylabel("")
fig.tight_layout()
deletion = table["deletion"]

# %% [markdown]
# Record the headline numbers: every method's deletion AUC in every space.

# %%
_ = record_metrics(
    run_dir,
    **{
        f"deletion_auc_{m}_{s}": round(float(deletion.loc[m, s]), 4)
        for m in [*compared, "random"]
        for s in spaces
    },
)
# %% [markdown]
# ## Verdict and recommendation
#
# Passing randomization is **necessary, not sufficient**: the random control above changes completely
# under any randomization, yet it explains nothing. So a method **passes** (`sanity.recommend`) only
# if both
#
# 1. **randomization**: the mean rank correlation of its *absolute* maps is at most `max_rank_corr` under
#    full randomization **and** under data randomization (the maps change when what the model learned is
#    destroyed, whichever way), and
# 2. **faithfulness**: its deletion AUC in `faithfulness_space` is at most `max_deletion_ratio` × the random
#    order's (deleting its top positions first hurts the evaluators clearly faster than deleting at
#    random). Pixel space by default: black patches are the same operation whatever the method, while
#    token-space deletion puts the neutral token, the very operation occlusion scores (and IG's baseline),
#    which would favour those two by construction. The token-space AUCs stay in the table.
#
# The recommendation is the run's method (notebook 05's `method`) if it passes, otherwise the passing method
# with the lowest deletion AUC; the random control is judged like the others but never recommended. If nothing
# passes, the recommendation is `none`. All of it, the text included, is computed from the tables above.

# %%
space = faithfulness_space
random_auc = float(deletion.loc["random", space])
recommended, verdict = sanity.recommend(
    pd.DataFrame(
        {
            "abs_rank_corr_full": means.loc["full", "abs_spearman"].reindex(compared),
            "abs_rank_corr_data": means.loc["data", "abs_spearman"].reindex(compared),
            "deletion_auc": deletion.loc[compared, space],
        }
    ),
    random_auc,
    method,
    max_rank_corr,
    max_deletion_ratio,
    controls=[control],
)

# %%
shown = pd.DataFrame(
    {
        "rank corr. (full)": means.loc["full", "spearman"].reindex(compared),
        "abs rank corr. (full)": verdict["abs_rank_corr_full"],
        "rank corr. (data)": means.loc["data", "spearman"].reindex(compared),
        "abs rank corr. (data)": verdict["abs_rank_corr_data"],
        **{f"deletion AUC ({s})": deletion.loc[compared, s] for s in spaces},
        **{f"÷ random ({s})": deletion.loc[compared, s] / deletion.loc["random", s] for s in spaces},
        "randomization ok": verdict["randomization_ok"],
        "faithful": verdict["faithful"],
        "passes": verdict["passes"],
    }
)
display(shown.round(3).T)  # one column per method: the table fits the page
# %% [markdown]
# The two conditions as one picture: each method is a segment between its full (●) and data (□)
# randomization scores, at the height of its deletion AUC ratio; the green corner passes both.

# %%
fig, ax = plt.subplots(figsize=(8.5, 4.2))
ax.fill_between(
    [-1, max_rank_corr], 0, max_deletion_ratio, color="palegreen", alpha=0.5, zorder=0, label="passes both"
)
palette = dict(zip(compared, sns.color_palette("tab10", len(compared)), strict=True))
for m, r in verdict.iterrows():
    lo, hi = sorted([r["abs_rank_corr_full"], r["abs_rank_corr_data"]])
    ax.plot([lo, hi], [r["deletion_ratio"]] * 2, color=palette[m], lw=1.2, label=m)
    ax.plot(r["abs_rank_corr_full"], r["deletion_ratio"], "o", color=palette[m], ms=7)
    ax.plot(r["abs_rank_corr_data"], r["deletion_ratio"], "s", color=palette[m], ms=7, mfc="white")
ax.axvline(max_rank_corr, color="crimson", ls="--", lw=1)
ax.axhline(max_deletion_ratio, color="crimson", ls="--", lw=1)
ax.plot([], [], "o", color="gray", label="full randomization")
ax.plot([], [], "s", color="gray", mfc="white", label="data randomization")
xs = verdict[["abs_rank_corr_full", "abs_rank_corr_data"]].to_numpy()
ax.set_xlim(min(-0.1, np.nanmin(xs) - 0.05), max(1.0, np.nanmax(xs) + 0.05))
ax.set_ylim(0, max(1.1, verdict["deletion_ratio"].max() + 0.1))
ax.set_xlabel("mean Spearman of the absolute maps, trained vs randomized IEM")
ax.set_ylabel(f"deletion AUC ({space}) ÷ random order's")
ax.set_title(
    f"the two conditions: pass = left of {max_rank_corr} and below {max_deletion_ratio}", fontsize=10
)
ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
fig.tight_layout()

# %%
lines = report.verdict_text(verdict, recommended, method, control, space, c, curve_steps)
display(Markdown("\n\n".join(lines)))

# %% [markdown]
# Record the headline number: the recommended method.

# %%
_ = record_metrics(run_dir, recommended_method=recommended, device=device)
# %% [markdown]
# ## Token space: the codebook and its concepts (a question of the paper's reviewers)
#
# Every codebook vector embedded in 2-D (PCA, and t-SNE), coloured by the class it is most strongly
# associated with: the class in whose images it most often sits among the top-`concept_top_n` TIS positions
# (notebook 06's concept table; grey: never among them). Marker size grows with that share. If concept
# tokens clustered by class, the IEM could be reading codebook geometry alone; scattered concept tokens
# mean the class is carried by which tokens appear where.

# %%
entry = registered(run_dir, "concepts")
require(
    concept_top_n in entry["top_ns"],
    f"notebook 06 analysed top_ns {entry['top_ns']}; concept_top_n = {concept_top_n} is not among them",
)
concept_table = pd.read_parquet(repo_path(entry["path"]) / "concept_tokens.parquet")

# %%
ct = concept_table[(concept_table.top_n == concept_top_n) & (concept_table.label >= 0)]
best = ct.sort_values("share", ascending=False).drop_duplicates("token").set_index("token")
K = len(codebook)
assoc = np.array(["none"] * K, dtype=object)
share = np.zeros(K)
assoc[best.index.to_numpy()] = best["class_name"].to_numpy()
share[best.index.to_numpy()] = best["share"].to_numpy()

# %%
cb = codebook.detach().double().numpy()
centred = cb - cb.mean(0)
_, sv, vt = np.linalg.svd(centred, full_matrices=False)
views = {f"PCA ({(sv[:2] ** 2).sum() / (sv**2).sum():.1%} of the variance)": centred @ vt[:2].T}
if tsne:
    try:
        from sklearn.manifold import TSNE

        views["t-SNE"] = TSNE(
            2, perplexity=min(30.0, (K - 1) / 3), init="pca", random_state=seed
        ).fit_transform(cb)
    except ImportError:
        print("scikit-learn is not installed: t-SNE skipped")

# %%
order = ["none", *ds.class_names]
colours = "tab10" if len(ds.class_names) <= 10 else "husl"  # tab10 repeats after ten classes
palette = {
    "none": "lightgray",
    **dict(zip(ds.class_names, sns.color_palette(colours, len(ds.class_names)), strict=True)),
}

# %%
fig, axes = plt.subplots(1, len(views), figsize=(5.2 * len(views) + 1, 4.4), squeeze=False)
for ax, (title, xy) in zip(axes[0], views.items(), strict=True):
    df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "class": assoc, "share": share})
    sns.scatterplot(
        data=df,
        x="x",
        y="y",
        hue="class",
        hue_order=order,
        palette=palette,
        size="share",
        sizes=(12, 140),
        ax=ax,
        legend="auto" if ax is axes[0, -1] and len(order) <= 21 else False,  # a legend of at most 20 classes
        edgecolor="none",
    )
    ax.set_title(f"codebook, {title}")
    ax.set_xticks([])
    ax.set_yticks([])
if len(axes[0][-1].get_legend_handles_labels()[0]):
    axes[0, -1].legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
fig.tight_layout()
print(f"{(assoc != 'none').sum()} of {K} codebook ids are a top-{concept_top_n} concept token of some class")
# %% [markdown]
# A gallery of concept tokens as image patches: for each class its first `gallery_tokens` concept tokens
# (top-`concept_top_n`), each shown by crops of training images where it sits among the top positions.

# %%
if gallery_tokens:
    train_tis = np.load(repo_path(entry["tis"]) / "train.npy")  # the TIS notebook 06 counted
    train_tokens, train_labels = ds.tokens["train"].astype(np.int64), ds.labels["train"].astype(np.int64)
    sets = concepts.token_sets(concept_table, gallery_tokens, top_n=concept_top_n)
    n_cls = min(len(ds.class_names), 10)
    where = {
        (cls, int(tok)): concepts.images_with_token(
            train_tokens, train_labels, train_tis, concept_top_n, cls, tok
        )[:3]
        for cls in range(n_cls)
        for tok in sets.get(cls, [])[:gallery_tokens]
    }
    needed = np.unique(np.concatenate([np.zeros(0, np.int64), *where.values()]))
    decoded = vqlib.decode(vq, torch.from_numpy(train_tokens[needed])).numpy() if len(needed) else None

# %%
if gallery_tokens:
    fig, axes = plt.subplots(
        n_cls, gallery_tokens, figsize=(1.9 * gallery_tokens, 0.8 * n_cls), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for (cls, tok), rows in where.items():
        j = list(sets[cls]).index(tok)
        crops = (
            concepts.token_crops(decoded[np.searchsorted(needed, rows)], train_tokens[rows], tok, max_crops=3)
            if len(rows)
            else []
        )
        if len(crops):
            axes[cls, j].imshow(plots.to_hwc(np.concatenate(list(crops), axis=2)))
        axes[cls, j].set_title(f"id {tok}", fontsize=7)
    for cls in range(n_cls):
        axes[cls, 0].text(
            -0.1, 0.5, ds.class_names[cls], transform=axes[cls, 0].transAxes, ha="right", va="center"
        )
    fig.suptitle(f"concept tokens (top-{concept_top_n}) as patches")
    fig.tight_layout()

# %% [markdown]
# ## Summary

# %%
real = verdict.drop(index=control)
names = {
    key: ", ".join(real.index[real[key].astype(bool)]) or "none"
    for key in ("randomization_ok", "faithful", "passes")
}
v = verdict.loc[method]
passing = (
    f"**No attribution passes both checks, the TIS ({method}) included**: none of them both changes enough "
    "when the model is randomized and ranks positions faithfully in deletion."
    if names["passes"] == "none"
    else f"Passing both checks: {names['passes']}; recommended: **{recommended}**."
)

# %%
display(
    Markdown(
        f"""
* {passing}
* The TIS ({method}): mean Spearman of its absolute maps with the trained IEM's {v["abs_rank_corr_full"]:.3f}
  under full and {v["abs_rank_corr_data"]:.3f} under data randomization (bar ≤ {max_rank_corr}); deletion AUC
  {v["deletion_ratio"]:.3f} × the random order's in {space} space (bar ≤ {max_deletion_ratio}).
* Maps that change enough under both randomizations: {names["randomization_ok"]}; faithful rankings
  (deletion): {names["faithful"]}. The random control changes completely (mean
  Spearman {verdict.loc[control, "abs_rank_corr_full"]:.3f} under full randomization) and explains nothing:
  passing randomization alone means little.
* The shuffled-label IEM fits {kept["select_acc"]:.1%} of its random training labels and {test_acc:.1%} of
  the true {split} labels (chance {1 / len(ds.class_names):.0%}): it learned nothing about the classes.
* {(assoc != "none").sum()} of {K} codebook ids are a top-{concept_top_n} concept token of some class.
"""
    )
)

# %% [markdown]
# ## Questions
#
# 1. What failure of saliency maps did Adebayo et al. (2018) show, and why does it matter for concept tokens?
# 2. What is re-initialised in cascading, in full and in data randomization?
# 3. Why is the bar on the rank correlation of the *absolute* maps, not the signed ones?
# 4. Why must a method pass the randomization checks *and* the deletion check?
# 5. What does the random control pass, and what does that teach about the randomization checks?
# 6. What does a low deletion AUC mean, and what is it compared with?
# 7. Why is the deletion bar judged in pixel space by default?
# 8. How is Spearman's ρ computed by hand, and how are ties ranked?
# 9. What would codebook vectors clustered by class in the PCA view have suggested?

# %% [markdown]
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1. One image's top positions under full randomization.** Compute the SmoothGrad maps of the first
# image (`tokens[:1]`, target `labels[:1]`) for the trained IEM (`model`) and for the fully randomized one
# (`full_model`), with `tislib.attribute_tokens(..., "smoothgrad", **options["smoothgrad"])`. How many of the
# `overlap_k` positions with the largest |score| do the two maps share? Compare with chance
# (`overlap_k` × `overlap_k` / (h·w)). Write your answer as `answer_1 = ...` (an int from 0 to `overlap_k`).

# %% tags=["solution"]
if solutions:
    one = [
        tislib.attribute_tokens(
            mdl, codebook, tokens[:1], labels[:1], "smoothgrad", batch_size, **options["smoothgrad"]
        )
        for mdl in (model, full_model)
    ]
    answer_1 = round(overlap_k * float(tislib.topk_agreement(*one, k=overlap_k, absolute=True)[0]))


# %% tags=["exercise-check"]
def check_1(answer):
    a, b = (
        np.abs(
            tislib.attribute_tokens(
                mdl, codebook, tokens[:1], labels[:1], "smoothgrad", batch_size, **options["smoothgrad"]
            )
        ).ravel()
        for mdl in (model, full_model)
    )
    top = [set(np.argsort(-v, kind="stable")[:overlap_k].tolist()) for v in (a, b)]
    assert int(answer) == len(top[0] & top[1]), (
        "recount the shared positions of the two top-k sets (by |score|)"
    )
    return True


exercise(
    "1",
    globals(),
    check=check_1,
    hint="rank by np.abs(map), take the first overlap_k of each, intersect",
    solutions=solutions,
)
# %% [markdown] tags=["exercise"]
# **2. The most faithful ranking.** Which attribution method (one of `methods`, not the control) has the
# lowest deletion AUC in `faithfulness_space`? Is it the one recommended above, and if not, why not?
# Write your answer as `answer_2 = ...` (a method name, a str).

# %% tags=["solution"]
if solutions:
    answer_2 = str(deletion.loc[methods, faithfulness_space].idxmin())


# %% tags=["exercise-check"]
def check_2(answer):
    sub = curve_table[
        (curve_table.space == faithfulness_space) & (curve_table.curve == "deletion")
    ].sort_values("fraction")
    per = {
        m: np.mean(
            [
                np.trapezoid(g["mean_prob"], g["fraction"])
                for _, g in sub[sub.method == m].groupby("evaluator")
            ]
        )
        for m in methods
    }  # the AUCs recomputed from the curves: trapezoids, mean over the evaluators
    assert answer in per, "name one of the attribution methods in `methods` (not the control)"
    return per[answer] <= min(per.values()) + 1e-9  # a tie: either name holds


exercise(
    "2",
    globals(),
    check=check_2,
    hint="the deletion table above, column faithfulness_space; lower is better",
    solutions=solutions,
)
# %% [markdown] tags=["exercise"]
# **3. Delete the least important positions first.** Negate the run's method's maps
# (`-maps[method]`) for the first 5 images, and compute their deletion AUC in `faithfulness_space`
# (mean over the evaluators, `curve_steps` steps; `sanity.faithfulness_curves` and `curve_auc`). Is it
# above the random order's? What does that say about the ranking at the other end of the map? Write your
# answer as `answer_3 = ...` (a float).

# %% tags=["solution"]
if solutions:
    neg = sanity.faithfulness_curves(
        vq,
        tokens[:5],
        labels[:5],
        {"negated": -maps[method][:5]},
        judges,
        options=evaluation.Masking(
            spaces=[faithfulness_space], neutral=neutral_id, seed=seed, batch_size=batch_size, progress=False
        ),
        curves=["deletion"],
        steps=curve_steps,
    )
    neg_auc = sanity.curve_auc(neg)
    answer_3 = float(neg_auc[(neg_auc.method == "negated") & (neg_auc.evaluator == "mean")]["auc"].iloc[0])


# %%
def check_3(answer):
    t, y = tokens[:5], labels[:5]
    order = np.argsort(maps[method][:5].reshape(len(t), -1), axis=1, kind="stable")  # lowest score first
    originals, ks = vqlib.decode(vq, torch.from_numpy(t)), sanity.curve_steps(n_positions, curve_steps)
    probs = []  # (K, evaluators): mean target probability after deleting the first k positions
    for kk in ks:
        mask = evaluation.positions_mask(order[:, :kk], ds.grid)
        imgs = (
            evaluation.mask_pixels(originals, mask)
            if faithfulness_space == "pixel"
            else vqlib.decode(vq, torch.from_numpy(evaluation.mask_tokens(t, mask, neutral_id)))
        )
        probs.append([p.mean() for _, p in evaluation.target_scores(judges, imgs, y).values()])
    truth = float(np.trapezoid(np.array(probs), ks / n_positions, axis=0).mean())
    assert abs(float(answer) - truth) < 5e-4, (
        "recompute: rank by the negated map, delete, trapezoid AUC, mean over evaluators"
    )
    return True


# %% tags=["exercise-check"]
exercise(
    "3",
    globals(),
    check=check_3,
    hint="faithfulness_curves(..., {'negated': -maps[method][:5]}, ...)",
    solutions=solutions,
)
