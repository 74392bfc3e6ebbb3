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
# # 07 · Image-level evaluation: does hiding the high-TIS tokens hurt?
#
# The paper (Yang et al., *Concept-Centric Token Interpretation for Vector-Quantized Generative Models*)
# tests its token importance scores (TIS, notebook 05) so: hiding the tokens they rank highest should make
# **independent** classifiers (notebook 02's evaluators) lose more confidence than hiding **random** tokens.
# We take the ids at an image's top-n TIS positions (or n random ones) and mask **every** position holding
# one: in **pixel space** (the paper) by blacking out its patch; in **token space** by putting a **neutral
# token** (the commonest id) there before decoding.

# %%
import numpy as np
import seaborn as sns
import torch
from IPython.display import Markdown, display
from matplotlib import pyplot as plt

from cortex_run import datasets as tokds
from cortex_run import evaluators, plots, report, tokenizers
from cortex_run.artifacts import atomic_path, record_metrics, registered
from cortex_run.notebook import check_parameters, exercise, repo_path, require
from cortex_utils import evaluation
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-06 (relative to the repo root)
split = "test"  # whose images are masked (needs TIS from notebook 05)
ns = [0, 1, 2, 4, 8, 12]  # how many top-TIS / random positions select the ids to mask
spaces = ["pixel", "token"]  # pixel: black patches; token: neutral token, then decode
# background (most frequent id) | mean (code nearest the codebook mean) | an id, e.g. "17"
neutral = "background"
seed = 0  # random positions
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
max_images = 0  # use the first max_images images of the split (0: all)
torchvision_weights = {}  # extra judges for real ImageNet data, e.g. {"resnet18": "data/resnet18.pth"}
example = 0  # the image the exercises use
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "07_image_level_explanation")
run_dir = repo_path(run_dir)
require(ns and all(isinstance(n, int) and n >= 0 for n in ns), f"ns must be non-negative ints, got {ns}")
spaces = evaluation.check_spaces(spaces)
evaluation.check_neutral(neutral)
require(max_images >= 0, "max_images must be >= 0")

# %% [markdown]
# The split's token grids, their TIS (notebook 05), the evaluators and the neutral token.

# %%
vq = tokenizers.load_run_vq(run_dir, device)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
tis_entry = registered(run_dir, "tis")
require(split in tis_entry["splits"], f"notebook 05 computed TIS for {tis_entry['splits']}, not {split!r}")
rows = slice(max_images or None)  # the first max_images images (all for 0)
tis = np.load(repo_path(tis_entry["path"]) / f"{split}.npy")[rows]
tokens, labels = ds.tokens[split][rows].astype(np.int64), ds.labels[split][rows].astype(np.int64)
require(tis.shape == tokens.shape and np.isfinite(tis).all(), f"the {split} TIS is misaligned or not finite")
n_positions = int(np.prod(ds.grid))
size, n_classes = vqlib.resolution(vq), len(ds.class_names)
judges = evaluators.load_run_evaluators(run_dir, size, n_classes, torchvision_weights, device)

# %%
neutral_id = evaluation.resolve_neutral(vq, tokens, neutral)
print(f"{len(labels)} {split} images, TIS method: {tis_entry['method']}, neutral id {neutral_id}")

# %% [markdown]
# ## By hand: mask the top-n ids and black out their patches
#
# Three images: the ids at the 4 highest-TIS positions; every position holding one gets a black patch
# (-1). Red outlines show what was masked (black on black is invisible).

# %% tags=["by-hand"]
few, n = np.arange(min(3, len(labels))), min(4, n_positions)
(h, w), decoded = ds.grid, vqlib.decode(vq, torch.from_numpy(tokens[few]))
ph, pw = decoded.shape[2] // h, decoded.shape[3] // w  # one token's pixel patch
hand_masks, hand_images = [], []
for j in few:
    best = np.argsort(-tis[j].ravel(), kind="stable")[:n]  # the n highest-TIS positions
    hand_mask = np.isin(tokens[j], tokens[j].ravel()[best])  # every position holding one of their ids
    img = decoded[j].clone()
    for y, x in zip(*np.nonzero(hand_mask), strict=True):
        img[:, y * ph : (y + 1) * ph, x * pw : (x + 1) * pw] = -1.0  # a black patch
    hand_masks.append(hand_mask)
    hand_images.append(img)
titles = [f"image {j}" for j in few] + [f"{m.sum()} positions masked" for m in hand_masks]
plots.outlined_grid(torch.cat([decoded, torch.stack(hand_images)]), hand_masks * 2, titles, ncols=len(few))

# %% [markdown]
# The library (`positions_holding`, `mask_pixels`, all images at once) must agree.

# %% tags=["by-hand-check"]
lib_ids = evaluation.ids_at(tokens[few], tislib.topk_positions(tis[few], n))
lib_mask = evaluation.positions_holding(tokens[few], lib_ids)
np.testing.assert_array_equal(lib_mask, np.stack(hand_masks))
assert torch.equal(evaluation.mask_pixels(decoded, lib_mask), torch.stack(hand_images)), "images differ"
print(f"by hand == evaluation.positions_holding + mask_pixels (images {few.tolist()}, n = {n})")

# %% [markdown]
# ## The experiment
#
# The mean probability of the image's class for every n, selection, space and evaluator (saved to
# `evaluation/image_level.csv`). Notebook 17 shows token-space masking, which is not local.

# %%
table = evaluation.image_level_experiment(
    vq, tokens, labels, tis, judges, ns, evaluation.Masking(spaces, neutral_id, seed)
)
out = run_dir / "evaluation"
out.mkdir(exist_ok=True)
with atomic_path(out / "image_level.csv") as tmp:
    table.to_csv(tmp, index=False)
g = sns.relplot(
    table, x="n", y="mean_prob", hue="selection", col="evaluator", row="space", kind="line", height=2.5
)
g.set_axis_labels("n (positions read)", "mean probability of the class")
g.set_titles("{row_name} space, {col_name}")
plt.show()

# %% [markdown]
# The bar: in pixel space, TIS masking hurts more than random masking at every n ≥ 1 for every evaluator;
# does token space agree? Random positions are a weak control where much of a grid is background: a random
# position may select a black id whose patches are black already.

# %%
frac = {space: evaluation.tis_beats_random(table, space) for space in spaces}
for space, f in frac.items():
    print(f"{space} space: TIS beats random in {f:.0%} of the (evaluator, n >= 1) cells")
metrics = {"image_level_tis_beats_random": round(frac["pixel"], 4)} if "pixel" in frac else {}
if "token" in frac:
    metrics["image_level_tis_beats_random_token_space"] = round(frac["token"], 4)

# %%
_ = record_metrics(run_dir, **metrics, device=device)

# %% [markdown]
# ## Notebook 11's verdict
#
# Notebook 11 checks every attribution twice: **randomization** (Adebayo et al. 2018, *Sanity Checks for
# Saliency Maps*, NeurIPS: the maps should change when the IEM's weights or labels are randomized) and
# **deletion** (masking the top positions first should hurt clearly faster than random).

# %%
v = report.carried_verdict(run_dir, tis_entry["method"])
full, data, ratio = v["rank_corr_full"], v["rank_corr_data"], v["deletion_ratio"]
print(f"notebook 11 recommends: {v['recommended']} (none: no method passes both checks); from {v['source']}")
print(f"the TIS: rank correlation {full:.2f} (weights), {data:.2f} (labels); bar <= {v['max_rank_corr']:g}")
print(f"the TIS: deletion area {ratio:.2f} x the random order's; bar <= {v['max_deletion_ratio']:g}")

# %% [markdown]
# How to read the masking results in that light: beating random masking is what the **deletion** check
# asks. Failing **randomization** means the maps also follow the image itself (where the strokes are), and
# hiding strokes hurts any digit classifier. So "TIS beats random" shows that the top positions matter to
# the evaluators, not that they are what the IEM learned.

# %% [markdown]
# ## Summary

# %%
last = table[(table.space == spaces[0]) & (table.evaluator == list(judges)[0]) & (table.n == max(ns))]
p = last.set_index("selection")["mean_prob"]
summary = f"""
* TIS masking beats random masking in {", ".join(f"{f:.0%} of the {s}-space cells" for s, f in frac.items())}.
* At n = {max(ns)} ({spaces[0]} space, {list(judges)[0]}): probability {p["tis"]:.3f} after TIS masking,
  {p["random"]:.3f} after random masking, {p["original"]:.3f} unmasked.
* Notebook 11 recommends: {v["recommended"]}; the TIS's rank correlations under randomization are
  {full:.2f} and {data:.2f}, its deletion ratio {ratio:.2f}.
"""
display(Markdown(summary))

# %% [markdown]
# ## Questions
#
# 1. Why are the evaluators, not the IEM, the judges?
# 2. For a given n, are n positions masked, or more?
# 3. How does token-space masking differ from pixel-space masking?
# 4. Why are the masked regions outlined?
# 5. Which of notebook 11's checks does this experiment resemble?
# 6. Why does beating random masking not show what the IEM learned?
#
# ## Exercises
#
# `drop(masks)` gives the first evaluator's drop in the probability of the class of image `example` for each
# position mask, in pixel space.


# %%
ex = min(example, len(labels) - 1)
one = tokens[ex : ex + 1]


def drop(masks, ev=list(judges)[0]):
    img = vqlib.decode(vq, torch.from_numpy(one))
    masked = evaluation.mask_pixels(img.expand(len(masks), -1, -1, -1), np.stack(masks))
    p = [evaluation.target_scores({ev: judges[ev]}, x, labels[[ex] * len(x)])[ev][1] for x in (img, masked)]
    return p[0][0] - p[1]


# %% [markdown] tags=["exercise"]
# **1.** For image `example`, mask every position holding the ids at n = 4 **random** positions
# (`evaluation.random_positions(1, ds.grid, 4, seed)`). How much does the probability drop? Answer
# `answer_1 = ...` (a number; 3 decimals are enough).

# %% tags=["solution"]
if solutions:
    ids_1 = one[0].ravel()[evaluation.random_positions(1, ds.grid, 4, seed)[0]]
    answer_1 = float(drop([np.isin(one[0], ids_1)])[0])

# %% tags=["exercise-check"]
rand_ids = evaluation.ids_at(one, evaluation.random_positions(1, ds.grid, 4, seed))
rand_mask = evaluation.positions_holding(one, rand_ids)
exercise(
    "1",
    globals(),
    check=lambda a: abs(float(a) - drop([rand_mask[0]])[0]) < 5e-4,
    hint="the ids at the random positions, every position holding them, then drop([mask])",
    solutions=solutions,
)

# %% [markdown] tags=["exercise"]
# **2.** For image `example`, mask the ids at its top-n TIS positions for n = 1, 2, … up to the whole grid.
# At which n does the drop first exceed 0.5? Answer `answer_2 = ...` (a number; -1 if it never does).

# %% tags=["solution"]
if solutions:
    order = np.argsort(-tis[ex].ravel(), kind="stable")  # positions, highest TIS first
    d = drop([np.isin(one[0], one[0].ravel()[order[:k]]) for k in range(1, n_positions + 1)])
    answer_2 = int(np.flatnonzero(d > 0.5)[0]) + 1 if (d > 0.5).any() else -1  # entry k-1 masks the top k

# %% tags=["exercise-check"]
top = [evaluation.ids_at(one, tislib.topk_positions(tis[ex : ex + 1], k)) for k in range(1, n_positions + 1)]
first = np.flatnonzero(drop([evaluation.positions_holding(one, ids)[0] for ids in top]) > 0.5)
exercise(
    "2",
    globals(),
    check=lambda a: int(a) == (int(first[0]) + 1 if len(first) else -1),
    hint="loop n over 1..(grid positions); the drop is the original minus the masked probability",
    solutions=solutions,
)
