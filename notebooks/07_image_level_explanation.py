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
# If the token importance scores (notebook 05) point at the tokens that carry the concept, hiding those
# tokens should make **independent** classifiers (the evaluators, trained on real digits and never on tokens)
# lose confidence in the image's class, more than hiding the same number of randomly chosen tokens.
#
# As the original: for each test image take the codebook ids at its **top-n TIS positions** (or at n
# **random** positions, seeded) and mask **every** position of the image that holds one of those ids. Two
# ways to mask:
#
# * **pixel space** (the original): decode the tokens, then black out the image patch of each masked position;
# * **token space** (the reviewers' question): replace the masked tokens with a neutral token before decoding.
#   Our neutral token is the most frequent id of the split, which on black-background digits is the
#   background code, so a masked position decodes to background, the token-space analogue of a black patch.
#
# The original used n = 0, 5, …, 50 on a 16×16 grid (up to ~20 % of the positions); on our 8×8 grid the
# default n goes up to 12.

# %%
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from IPython.display import display

from cortex_utils import datasets as tokds
from cortex_utils import evaluation, evaluators, plots
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import atomic_path, record_metrics, registered
from cortex_utils.notebook import check_parameters, exercise, repo_path, require

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-06 (relative to the repo root)
split = "test"  # whose images are masked (needs TIS from notebook 05)
ns = [0, 1, 2, 4, 8, 12]  # how many top-TIS / random positions select the ids to mask
spaces = ["pixel", "token"]  # pixel: black patches; token: neutral token, then decode
# background (most frequent id) | mean (code nearest the codebook mean) | an id, e.g. "17"
neutral = "background"
seed = 0  # random positions
max_images = 0  # use the first max_images images of the split (0: all)
torchvision_weights = {}  # extra judges for real ImageNet data, e.g. {"resnet18": "data/resnet18.pth"}
example = 0  # the image shown in the first figure
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "07_image_level_explanation")
run_dir = repo_path(run_dir)
require(
    len(ns) > 0 and all(isinstance(n, int) and n >= 0 for n in ns), f"ns must be non-negative ints, got {ns}"
)
spaces = evaluation.check_spaces(spaces)
evaluation.check_neutral(neutral)
require(max_images >= 0, "max_images must be >= 0")
params

# %% [markdown]
# ## The ingredients
#
# The test split's token grids and labels, their TIS from notebook 05 (by the run's attribution method), and
# the evaluators registered by notebook 02 (plus any local torchvision classifiers for real ImageNet data).
# Every image needs a TIS map.

# %%
vq = vqlib.load_run_vq(run_dir)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
tis_entry = registered(run_dir, "tis")
require(
    split in tis_entry["splits"], f"notebook 05 computed TIS for {tis_entry['splits']}, not for {split!r}"
)
tis = np.load(repo_path(tis_entry["path"]) / f"{split}.npy")
tokens, labels = ds.tokens[split].astype(np.int64), ds.labels[split].astype(np.int64)
require(tis.shape == tokens.shape, f"TIS {tis.shape} is not aligned with the {split} tokens {tokens.shape}")
require(
    np.isfinite(tis).all(),
    f"the {split} TIS holds NaN/Inf (rows {np.flatnonzero(~np.isfinite(tis).all((1, 2)))[:5]})",
)
if max_images:
    tokens, labels, tis = tokens[:max_images], labels[:max_images], tis[:max_images]
n_positions = int(np.prod(ds.grid))
require(max(ns) <= n_positions, f"n = {max(ns)} exceeds the {n_positions} positions of the {ds.grid} grid")
judges = evaluators.load_run_evaluators(
    run_dir, vqlib.resolution(vq), len(ds.class_names), torchvision_weights
)

# %% [markdown]
# Token-space masking puts a **neutral token** where a masked id sat: by default the split's most frequent id,
# the background code (`neutral`).

# %%
neutral_id = evaluation.resolve_neutral(vq, tokens, neutral)
print(
    f"{len(labels)} {split} images; TIS method: {tis_entry['method']} (IEM {tis_entry['iem_arch']}, "
    f"{tis_entry['reduction']}); evaluators {list(judges)}, neutral token {neutral_id}"
)

# %% [markdown]
# ## What masking looks like
#
# One image, n = 4: the ids at its 4 highest-TIS positions vs at 4 random positions, and every position
# holding them, masked in pixel space and in token space.

# %%
i, n = min(example, len(labels) - 1), min(4, n_positions)
one = tokens[i : i + 1]
sel = {
    "TIS": tislib.topk_positions(tis[i : i + 1], n),
    "random": evaluation.random_positions(1, ds.grid, n, seed),
}
original = vqlib.decode(vq, torch.from_numpy(one))
shown, titles = [original[0]], [f"class {ds.class_names[labels[i]]}"]
for name, pos in sel.items():
    m = evaluation.positions_holding(one, evaluation.ids_at(one, pos))
    shown += [
        evaluation.mask_pixels(original, m)[0],
        vqlib.decode(vq, torch.from_numpy(evaluation.mask_tokens(one, m, neutral_id)))[0],
    ]
    titles += [f"{name}: pixel ({m.sum()} pos.)", f"{name}: token"]
plots.image_grid(torch.stack(shown), titles, ncols=5, size=1.8)
# %% [markdown]
# ## By hand: mask the top-n ids and black out their patches
#
# For three test images, in plain numpy / torch: sort the TIS, take the ids at the n = 4 highest positions,
# mark **every** position holding one of those ids, and paint each marked position's pixel patch
# (image size / grid size) black (-1) in the decoded image.

# %% tags=["by-hand"]
few, n = np.arange(min(3, len(labels))), min(4, n_positions)
(h, w), decoded = ds.grid, vqlib.decode(vq, torch.from_numpy(tokens[few]))
ph, pw = decoded.shape[2] // h, decoded.shape[3] // w  # one token's pixel patch
hand_masks, hand_images = [], []
for j in few:
    best = np.argsort(-tis[j].ravel(), kind="stable")[:n]  # the n highest-TIS positions
    ids = tokens[j].ravel()[best]  # the ids sitting there
    hand_mask = np.isin(tokens[j], ids)  # every position holding one of them
    img = decoded[j].clone()
    for y, x in zip(*np.nonzero(hand_mask), strict=True):
        img[:, y * ph : (y + 1) * ph, x * pw : (x + 1) * pw] = -1.0  # a black patch
    hand_masks.append(hand_mask)
    hand_images.append(img)
print("masked positions per image:", [int(m.sum()) for m in hand_masks])
plots.image_grid(
    torch.cat([decoded, torch.stack(hand_images)]),
    [f"image {j}" for j in few] + [f"image {j}, top-{n} ids masked" for j in few],
    ncols=len(few),
    size=1.8,
)
# %% [markdown]
# The library's functions (used by the experiment below) must give exactly the same masks and images.
# They do it for all images at once: `positions_holding` tests (image, id) pairs with one `np.isin`, and
# `mask_pixels` blows the grid mask up to pixels with `repeat_interleave` and fills it in one `masked_fill`.

# %% tags=["by-hand-check"]
lib_mask = evaluation.positions_holding(
    tokens[few], evaluation.ids_at(tokens[few], tislib.topk_positions(tis[few], n))
)
np.testing.assert_array_equal(lib_mask, np.stack(hand_masks))
assert torch.equal(evaluation.mask_pixels(decoded, lib_mask), torch.stack(hand_images)), (
    "masked images differ"
)
print(f"by hand == evaluation.positions_holding + mask_pixels (images {few.tolist()}, n = {n})")

# %% [markdown]
# Token-space masking is not local: the decoder's receptive field spans neighbouring tokens, so a replaced
# token also changes how its neighbours decode, and a background token placed next to strokes need not
# decode to black. Pixel-space masking changes exactly the masked patches. Both are reported below.
#
# ## The experiment
#
# For every n, selection (original / TIS / random), masking space and evaluator: the mean target-class
# logit and probability over the split. The table is saved to `<run_dir>/evaluation/image_level.csv`.

# %%
table = evaluation.image_level_experiment(
    vq, tokens, labels, tis, judges, ns=ns, spaces=spaces, neutral=neutral_id, seed=seed
)
out = run_dir / "evaluation"
out.mkdir(exist_ok=True)
with atomic_path(out / "image_level.csv") as tmp:
    table.to_csv(tmp, index=False)
display(
    table.pivot_table(index=["space", "evaluator", "n"], columns="selection", values="mean_prob").round(3)
)

# %%
g = sns.relplot(
    data=table,
    x="n",
    y="mean_prob",
    hue="selection",
    style="selection",
    col="evaluator",
    row="space",
    kind="line",
    markers=True,
    height=2.8,
    aspect=1.3,
    facet_kws={"ylim": (0, 1.02)},
)
g.set_axis_labels("n (positions whose ids are masked)", "mean target probability")
g.figure.suptitle("target probability after masking: top-TIS vs random", y=1.02)
# %% [markdown]
# ## Verdict
#
# The bar for the default: in pixel space, masking by TIS lowers the target probability more than random
# masking at every n ≥ 1 for every evaluator. The same count in token space says whether replacing tokens
# before decoding agrees. The numbers below are computed from the table above.

# %%
frac = {space: evaluation.tis_beats_random(table, space) for space in spaces}
for space, f in frac.items():
    cells = table[(table.space == space) & (table.n >= 1)][["evaluator", "n"]].drop_duplicates()
    print(f"{space} space: TIS beats random in {f:.0%} of the {len(cells)} (evaluator, n >= 1) cells")
if "pixel" in frac:
    print("pixel space bar (every cell): " + ("met" if frac["pixel"] == 1.0 else "NOT met"))
if "token" in frac and "pixel" in frac:
    agree = (
        "agrees" if frac["token"] == 1.0 else ("partly agrees" if frac["token"] > 0.5 else "does not agree")
    )
    print(f"token-space masking {agree} with pixel-space masking")

# %% [markdown]
# Record the headline numbers.

# %%
metrics = {"image_level_tis_beats_random": round(frac["pixel"], 4)} if "pixel" in frac else {}
if "token" in frac:
    metrics["image_level_tis_beats_random_token_space"] = round(frac["token"], 4)
record_metrics(run_dir, **metrics)
# %%
drops = table[(table.n >= 1) & (table.selection != "original")].pivot_table(
    index=["space", "evaluator", "n"], columns="selection", values="prob_drop"
)
fig, ax = plt.subplots(figsize=(6, 3))
sns.lineplot(
    data=(drops["tis"] - drops["random"]).rename("TIS drop - random drop").reset_index(),
    x="n",
    y="TIS drop - random drop",
    hue="evaluator",
    style="space",
    markers=True,
    ax=ax,
)
ax.axhline(0, color="gray", lw=0.8)
ax.set_title("how much more TIS masking lowers the target probability than random")
fig.tight_layout()

# %% [markdown]
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1.** A random baseline for one image: for image `example`, take the ids at n = 4 **random** positions
# (`evaluation.random_positions(1, ds.grid, 4, seed)`), mask every position holding them in pixel space, and
# report the first evaluator's (`list(judges)[0]`) target probability drop (original minus masked). Write
# your answer as `answer_1 = ...` (a number).

# %% tags=["solution"]
if solutions:
    ex = min(example, len(labels) - 1)
    one_row = evaluation.image_level_experiment(
        vq,
        tokens[ex : ex + 1],
        labels[ex : ex + 1],
        tis[ex : ex + 1],
        judges,
        ns=[4],
        spaces=["pixel"],
        seed=seed,
        per_image=True,
        progress=False,
    )
    r = one_row[one_row.evaluator == list(judges)[0]].set_index("selection")["prob"]
    answer_1 = float(r["original"] - r["random"])


# %% tags=["exercise-check"]
ex = min(example, len(labels) - 1)


def drops_of(masks, i=ex, ev=list(judges)[0]):
    """The first evaluator's target probability drop on image i for each position mask (pixel space)."""
    img = vqlib.decode(vq, torch.from_numpy(tokens[i : i + 1]))
    masked = evaluation.mask_pixels(img.expand(len(masks), -1, -1, -1), np.stack(masks))
    p0 = evaluation.target_scores({ev: judges[ev]}, img, labels[i : i + 1])[ev][1][0]
    return p0 - evaluation.target_scores({ev: judges[ev]}, masked, labels[[i] * len(masks)])[ev][1]


one = tokens[ex : ex + 1]
rand_mask = evaluation.positions_holding(
    one, evaluation.ids_at(one, evaluation.random_positions(1, ds.grid, 4, seed))
)
exercise(
    "1",
    globals(),
    check=lambda a: abs(float(a) - drops_of([rand_mask[0]])[0]) < 1e-4,
    hint="positions_holding(one, ids_at(one, positions)), then mask_pixels and target_scores",
    solutions=solutions,
)

# %% [markdown] tags=["exercise"]
# **2.** How much must be hidden? For image `example` and the first evaluator, mask (pixel space) the ids at
# its top-n TIS positions for n = 1, 2, … up to the whole grid. At which n does the target probability drop
# first exceed 0.5? Write your answer as `answer_2 = ...` (a number; -1 if it never does).

# %% tags=["solution"]
if solutions:
    order, ev = np.argsort(-tis[ex].ravel(), kind="stable"), list(judges)[0]  # positions, highest TIS first
    masks = np.stack([np.isin(one[0], one[0].ravel()[order[:k]]) for k in range(1, n_positions + 1)])
    img = vqlib.decode(vq, torch.from_numpy(one))
    p0 = evaluation.target_scores({ev: judges[ev]}, img, labels[ex : ex + 1])[ev][1][0]
    p = evaluation.target_scores(
        {ev: judges[ev]},
        evaluation.mask_pixels(img.expand(len(masks), -1, -1, -1), masks),
        labels[[ex] * len(masks)],
    )[ev][1]
    over = np.flatnonzero(p0 - p > 0.5)
    answer_2 = int(over[0]) + 1 if len(over) else -1  # row k-1 masks the top-k ids

# %% tags=["exercise-check"]
top_masks = [
    evaluation.positions_holding(one, evaluation.ids_at(one, tislib.topk_positions(tis[ex : ex + 1], k)))[0]
    for k in range(1, n_positions + 1)
]
first = np.flatnonzero(drops_of(top_masks) > 0.5)
exercise(
    "2",
    globals(),
    check=lambda a: int(a) == (int(first[0]) + 1 if len(first) else -1),
    hint="loop n over 1..64 (the grid's positions); the drop is original minus masked probability",
    solutions=solutions,
)
