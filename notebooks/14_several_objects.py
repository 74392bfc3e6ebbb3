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
# # 14 · Several objects with known places: does the TIS point at the right one?
#
# Every image so far held one digit, so a TIS map could not be wrong about *where* the concept is. Here each
# image holds **two real digits side by side**, and we know by construction which one carries the label:
#
# * the **target** sits on a random side and is drawn in one of the palette's colours other than white; the
#   **distractor**, a digit of another class, is drawn in white. The label is the target's digit. An IEM
#   must find the coloured digit and read it: colour tells it which digit counts, position tells it nothing;
# * both digits come from the same split of the real digits (the test composites from test digits only);
#   each half is encoded **on its own** by the run's tokenizer and the two 8×8 grids are put side by side
#   (8×16). Encoding the 32×64 image at once would let the encoder's receptive field carry one digit into
#   the other half's tokens near the seam; apart, a left token depends on the left digit only.
#
# The **pointing game**: the share of each test composite's top-k TIS positions that fall on the target's
# half, averaged with a bootstrap 95 % interval over images, against **chance** (the half's share of the
# positions, ½) and against **the same IEM with randomised weights** (the control of Adebayo et al. 2018,
# *Sanity Checks for Saliency Maps*, NeurIPS: a map that points at the target without a trained model only
# describes the input). Then: are the concept tokens a class gets from composites the same as from single
# digits (notebook 06)? The method is the paper's, *Concept-Centric Token Interpretation for Vector-Quantized
# Generative Models* (Yang, Shi, Du, Wu, Tan, Sun, Liu); its images hold one main object, this notebook asks
# what its TIS does with two.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from cortex_run import SHIPPED_CHECKPOINTS, SHIPPED_DATA, composites, digits, plots, tokenizers
from cortex_run import datasets as tokds
from cortex_run.artifacts import atomic_path, note_trained, record_metrics, register, registered
from cortex_run.notebook import check_parameters, exercise, repo_path, require
from cortex_utils import concepts, sanity
from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib

# %% tags=["parameters"]
# iem: the VGG-like IEM's training on the composites (notebook 03's settings)
run_dir = "runs/interactive"  # the run directory of notebooks 01-06 (relative to the repo root)
retrain = False  # make the composites and train their IEM here instead of loading the shipped ones
seed = 0
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
sizes = {"train": 7000, "val": 750, "test": 750}  # composites per split (both digits from that split)
iem = {
    "epochs": 12,
    "batch_size": 128,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "lr_step": 9,
    "lr_gamma": 0.1,
    "width": 32,
}
top_k = 5  # the pointing game's top-k TIS positions (the headline)
ks = [1, 3, 5, 10, 20]  # the top-k values of the table and figure
concept_ids = 5  # how many concept ids per class are compared (the first of each class's ranking)
concept_top_n = 5  # concept tokens from each image's top-n TIS positions (as notebook 06's top-n)
n_boot = 2000  # bootstrap resamples of the images
chance_draws = 2000  # random id sets per class for the overlap's chance
batch_size = 100  # TIS batch (sigma comes from the batch's range, as notebook 05)
n_show = 8  # composites drawn with their TIS
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
check_parameters(globals(), "14_several_objects")
require(
    set(sizes) == {"train", "val", "test"} and min(sizes.values()) >= 2,
    f"sizes needs train, val and test, each >= 2 composites, got {sizes}",
)
require(
    iem["epochs"] >= 1 and iem["batch_size"] >= 2 and iem["width"] >= 4,
    "iem: epochs >= 1, batch_size >= 2, width >= 4",
)
require(top_k in ks and min(ks) >= 1, f"top_k ({top_k}) must be one of ks {ks}, all >= 1")
require(concept_ids >= 1 and concept_top_n >= 1, "concept_ids and concept_top_n must be >= 1")
require(
    n_boot >= 100 and chance_draws >= 1 and batch_size >= 1 and n_show >= 1,
    "n_boot must be >= 100; chance_draws, batch_size and n_show >= 1",
)
run_dir = repo_path(run_dir)

# %% [markdown]
# ## The composites
#
# Made from the real digits (`digits.load_digits`, its train / val / test split) and encoded by this run's
# tokenizer. The repository ships them (`data/default/composites`, with a card): this cell loads them when the
# card says they were made by this very tokenizer with these settings, and makes them here otherwise
# (`retrain = True`, another tokenizer or other sizes). The target's side, the distractor's class and where
# each digit came from are columns of the dataset, one value per image.

# %%
vq = tokenizers.load_run_vq(run_dir, device)
codebook = vqlib.codebook(vq)
data = digits.load_digits(seed)
ds, why, made = composites.composite_dataset(
    vq,
    data,
    sizes,
    run_dir / "datasets" / "composites",
    SHIPPED_DATA / "composites",
    seed=seed,
    rebuild=retrain,
)
print(
    f"composites: {'made here' if made else 'loaded the shipped data/default/composites'} ({why}); "
    f"grid {ds.grid}, {ds.manifest['splits']}"
)
tokens, labels = ds.tokens["test"].astype(np.int64), ds.labels["test"].astype(np.int64)
side, distractor = ds.columns["test"]["side"], ds.columns["test"]["distractor"]

# %%
images = composites.decode_composites(vq, tokens[:n_show])
titles = [
    f"label {y} ({composites.SIDES[s]}), distractor {d}"
    for y, s, d in zip(labels, side, distractor, strict=False)
]
plots.image_grid(
    images,
    titles[:n_show],
    ncols=4,
    size=2.4,
    suptitle="test composites, decoded (each half from its own 8×8 tokens)",
)
# %% [markdown]
# ## An IEM on the composites
#
# The VGG-like IEM (architecture 1, notebook 03's settings) on the 8×16 grids of token embeddings. The shipped
# one (`checkpoints/iem1_composites`) is loaded when it was trained on exactly this train split with these
# settings; else it is trained here (about two minutes on 2 cores). How often does it name the target, and how
# often the distractor instead?

# %%
model, iem_path, why, trained = composites.composite_iem(
    ds,
    codebook,
    {**iem, "seed": seed},
    run_dir / "iem" / "iem1_composites.safetensors",
    SHIPPED_CHECKPOINTS / "iem1_composites.safetensors",
    retrain=retrain,
    device=device,
)
print(f"IEM on composites: {'trained here' if trained else 'loaded'} {iem_path.name} ({why})")
logits, _ = iemlib.predict(model, tokds.embedding_loader(ds, "test", codebook, batch_size=512))
pred = logits.argmax(1).numpy()
accuracy, to_distractor = float((pred == labels).mean()), float((pred == distractor).mean())
print(f"test composites: the target's digit {accuracy:.1%}, the distractor's {to_distractor:.1%}")

# %%
register(run_dir, "composites", path=str(ds.path))
register(run_dir, "iem1_composites", checkpoint=str(iem_path), arch="vgg")
if trained:
    note_trained(run_dir, "the IEM on composites")
_ = record_metrics(
    run_dir,
    device=device,
    multiobject_iem_test_top1=round(accuracy, 4),
    multiobject_iem_predicts_distractor=round(to_distractor, 4),
)
# %% [markdown]
# ## TIS of the composites
#
# The run's attribution method and settings (notebook 05's, read from the run) on every test composite, for
# the trained IEM and for the same architecture with every layer re-initialised (`sanity.randomize_full`).
# Both explain the composite's label.

# %%
entry = registered(run_dir, "tis")
print(f"TIS method: {entry['method']} (settings of notebook 05: {entry['reduction']} over the channels)")

# %%
noise = tislib.Noise(entry["nsamples"], entry["spread"], entry["sigma"])
settings = (noise, seed, entry["ig_steps"], entry["occlusion_group"], codebook[entry["neutral_id"]])
options = tislib.method_options(entry["method"], *settings) | {"reduction": entry["reduction"]}
loader = tokds.embedding_loader(ds, "test", codebook, batch_size=batch_size)
randomized = sanity.randomize_full(model, seed=seed)
n, method = len(labels), entry["method"]
tis = tislib.dataset_tis(model, loader, n, method, desc="TIS, trained IEM", **options)
tis_random = tislib.dataset_tis(randomized, loader, n, method, desc="TIS, randomised IEM", **options)
suptitle = f"TIS of the trained IEM; its top-{top_k} positions boxed"
plots.tis_grid(images, tis[:n_show], titles[:n_show], ncols=4, size=2.4, top_n=top_k, suptitle=suptitle)
plt.show()
# %%
out = run_dir / "tis" / f"composites_{entry['method']}"
out.mkdir(parents=True, exist_ok=True)
for name, scores in {"test": tis, "test_randomized_iem": tis_random}.items():
    with atomic_path(out / f"{name}.npy") as tmp:
        np.save(tmp, scores)
register(run_dir, "tis_composites", path=str(out), method=entry["method"], splits=["test"])

# %% [markdown]
# ## The pointing game by hand
#
# For a few test composites: rank the 8×16 = 128 positions by TIS, take the `top_k` highest, and count those
# whose column lies in the target's half (columns 0-7 for a target on the left, 8-15 on the right).

# %% tags=["by-hand"]
few = range(4)
width = tis.shape[2]
by_hand = []
for i in few:
    best = np.argsort(-tis[i].ravel(), kind="stable")[:top_k]  # flat positions, highest first
    columns = best % width
    on_target = (columns >= width // 2) if side[i] == 1 else (columns < width // 2)
    by_hand.append(on_target.sum() / top_k)
    print(
        f"composite {i}: target {labels[i]} on the {composites.SIDES[side[i]]}; top-{top_k} columns "
        f"{columns.tolist()} -> share on target {by_hand[-1]:.2f}"
    )

# %% tags=["by-hand-check"]
assert np.allclose(by_hand, composites.pointing_share(tis[list(few)], side[list(few)], top_k))
print("by hand == composites.pointing_share")

# %% [markdown]
# ## At scale: every test composite, several k
#
# `composites.pointing_share` for all test composites at each k, its mean with a bootstrap 95 % interval over
# images (`composites.mean_interval`), for the trained and the randomised IEM; chance is the target half's
# share of the positions (`composites.pointing_chance`: ½, whatever k).

# %%
chance = composites.pointing_chance(ds.grid)
rows = []
for k in ks:
    for who, maps in (("trained IEM", tis), ("randomised IEM", tis_random)):
        mean, low, high = composites.mean_interval(
            composites.pointing_share(maps, side, k), n_boot, seed=seed
        )
        rows.append({"k": k, "IEM": who, "share on target": mean, "low": low, "high": high, "chance": chance})
pointing = pd.DataFrame(rows)
(run_dir / "evaluation").mkdir(exist_ok=True)
with atomic_path(run_dir / "evaluation" / "pointing.csv") as tmp:
    pointing.to_csv(tmp, index=False)
display(pointing.round(3))

# %%
fig, ax = plt.subplots(figsize=(9, 3.4))
for (who, g), colour in zip(pointing.groupby("IEM", sort=False), ("tab:blue", "tab:gray"), strict=True):
    ax.errorbar(
        g["k"],
        g["share on target"],
        yerr=[g["share on target"] - g["low"], g["high"] - g["share on target"]],
        marker="o",
        capsize=3,
        color=colour,
        label=who,
    )
ax.axhline(chance, color="k", ls="--", lw=1, label="chance (the half's share of positions)")
ax.set(
    xlabel="k (top-k TIS positions per composite)",
    ylabel="share on the target's half",
    title="pointing game on the test composites (95 % bootstrap intervals)",
)
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
fig.tight_layout()

# %%
head = pointing[pointing["k"] == top_k].set_index("IEM")
_ = record_metrics(
    run_dir,
    multiobject_pointing_top5=round(head.loc["trained IEM", "share on target"], 4),
    multiobject_pointing_top5_low=round(head.loc["trained IEM", "low"], 4),
    multiobject_pointing_top5_high=round(head.loc["trained IEM", "high"], 4),
    multiobject_pointing_chance=round(chance, 4),
    multiobject_pointing_random_iem=round(head.loc["randomised IEM", "share on target"], 4),
    multiobject_pointing_random_iem_low=round(head.loc["randomised IEM", "low"], 4),
    multiobject_pointing_random_iem_high=round(head.loc["randomised IEM", "high"], 4),
)
# %% [markdown]
# ## Are a class's concept tokens the same as from single digits?
#
# Like for like: a composite's **target half** is an 8×8 grid of one digit, as notebook 06's images are, so
# its concept tokens are counted exactly as notebook 06 counts them (`concepts.concept_tokens` on the target
# halves' ids and TIS, the top-`concept_top_n` positions of each), over the test composites. The reference is
# the run's notebook 06 table (single generated digits, the run's IEM). The overlap is the share of a class's
# first `concept_ids` ids from composites that are among its first `concept_ids` from single digits, averaged
# over the classes. Chance: as many ids drawn at random by their usage in the class's target halves, the
# background ids (`concepts.background_tokens`, the black codes) left out as notebook 08's baseline does.
# And a ceiling: how well two disjoint halves of the test composites (every other image of each class) agree
# on the composites' own concept tokens, i.e. how much the counting noise of half the images moves the sets.

# %%
single = pd.read_parquet(repo_path(registered(run_dir, "concepts")["path"]) / "concept_tokens.parquet")
require(
    concept_top_n in set(single["top_n"]),
    f"notebook 06 counted top-n {sorted(set(single['top_n']))}, not {concept_top_n}",
)

# %%
K = ds.manifest["n_embed"]
half_tokens, half_tis = composites.target_half(tokens, side), composites.target_half(tis, side)
table = concepts.concept_tokens(half_tokens, labels, half_tis, ds.class_names, K, top_ns=[concept_top_n])
from_composites = concepts.token_sets(table, concept_ids, top_n=concept_top_n)
from_single = concepts.token_sets(single, concept_ids, top_n=concept_top_n)
per_class = concepts.overlap(from_composites, from_single)
usage = concepts.token_frequencies(half_tokens, labels, len(ds.class_names), K).astype(float)
usage[:, concepts.background_tokens(half_tokens, labels, K)] = 0
overlap_chance = composites.overlap_chance(from_single, usage, concept_ids, chance_draws, seed=seed)

# %%
parity = np.zeros(len(labels), dtype=int)  # the split-half ceiling: every other image of each class
for c in range(len(ds.class_names)):
    parity[np.flatnonzero(labels == c)[1::2]] = 1
halves = [parity == r for r in (0, 1)]
halves_tables = [
    concepts.concept_tokens(half_tokens[h], labels[h], half_tis[h], ds.class_names, K, top_ns=[concept_top_n])
    for h in halves
]
halves_sets = [concepts.token_sets(t, concept_ids, top_n=concept_top_n) for t in halves_tables]
split_half = concepts.overlap(*halves_sets)

# %%
display(
    pd.DataFrame(
        {
            "from composites": {c: v.tolist() for c, v in from_composites.items()},
            "from single digits": {c: from_single[c].tolist() for c in from_composites},
            "overlap": per_class,
            "split-half overlap": split_half,
        }
    )
)
print(f"mean overlap {per_class.mean():.2f}; chance {overlap_chance:.2f}; split-half {split_half.mean():.2f}")

# %%
fig, ax = plt.subplots(figsize=(10, 3))
x = np.arange(len(per_class))
ax.bar(x - 0.2, per_class.values, 0.4, color="tab:blue", label="composites vs single digits")
ax.bar(
    x + 0.2,
    split_half.reindex(per_class.index).values,
    0.4,
    color="tab:orange",
    label="composites: one half of the images vs the other (ceiling)",
)
ax.set_xticks(x, [ds.class_names[c] for c in per_class.index])
ax.axhline(overlap_chance, color="k", ls="--", lw=1, label="chance (ids drawn by usage, no background)")
ax.set(
    xlabel="class (digit)",
    ylabel=f"overlap of the first {concept_ids} ids",
    title="concept tokens: composites' target halves vs single digits",
)
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
fig.tight_layout()

# %%
_ = record_metrics(
    run_dir,
    multiobject_concept_overlap_top5=round(float(per_class.mean()), 4),
    multiobject_concept_overlap_top5_chance=round(overlap_chance, 4),
    multiobject_concept_overlap_top5_split_half=round(float(split_half.mean()), 4),
)
# %% [markdown]
# ## What the numbers say
#
# The sentence below is written from this run's numbers: whether the interval of the trained IEM's pointing
# share lies above chance and above the randomised IEM's interval, and where the concept overlap lies between
# its chance and the composites' own split-half agreement (an overlap near that ceiling cannot tell the two
# data sources apart; one near chance says their concept tokens differ).

# %%
t, r = head.loc["trained IEM"], head.loc["randomised IEM"]
verdict = (
    "above chance and above the randomised IEM"
    if t["low"] > max(chance, r["high"])
    else "above chance, but not clearly above the randomised IEM"
    if t["low"] > chance
    else "not above chance"
)
print(
    f"top-{top_k} pointing share {t['share on target']:.2f} [{t['low']:.2f}, {t['high']:.2f}]: {verdict} "
    f"(chance {chance:.2f}; randomised IEM {r['share on target']:.2f} [{r['low']:.2f}, {r['high']:.2f}]). "
    f"Concept overlap with single digits {per_class.mean():.2f}: "
    f"{'above' if per_class.mean() > overlap_chance else 'not above'} chance ({overlap_chance:.2f}), "
    f"{'below' if per_class.mean() < split_half.mean() else 'not below'} what two halves of the composites "
    f"share with each other ({split_half.mean():.2f})."
)

# %% [markdown]
# ## Summary

# %%
display(
    Markdown(
        f"""
* On {len(labels)} test composites (two digits side by side, the coloured one the label) the IEM names the
  target's digit in {accuracy:.1%} of them and the distractor's in {to_distractor:.1%}.
* A share {t["share on target"]:.3f} of each composite's top-{top_k} TIS positions falls on the target's
  half (95 % interval [{t["low"]:.3f}, {t["high"]:.3f}]): {verdict}.
* Chance is {chance:.3f}; the same IEM with random weights points {r["share on target"]:.3f} of them at
  the target ([{r["low"]:.3f}, {r["high"]:.3f}]).
* A class's first {concept_ids} concept tokens from the composites' target halves share {per_class.mean():.2f}
  with those from single digits (notebook 06), against {overlap_chance:.2f} by chance and
  {split_half.mean():.2f} between two halves of the composites themselves.
"""
    )
)

# %% [markdown]
# ## Questions
#
# 1. How does the IEM know which of the two digits carries the label?
# 2. Why is each half of a composite encoded on its own rather than the 32×64 image at once?
# 3. What is the pointing game's share, and what is its chance level?
# 4. Why is the same IEM with randomised weights a control for the pointing game?
# 5. How are the concept tokens of composites counted so that they compare like for like with notebook 06's?
# 6. What does the split-half overlap measure, and why is it a ceiling?
# 7. Why are the background ids left out of the overlap's chance?

# %% [markdown]
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1. Where does the randomised IEM point?** A map that knows nothing about the label might still prefer one
# side, e.g. the brighter digit. For the randomised IEM's maps (`tis_random`), compute the share of the
# top-`top_k` positions that fall on the **left** half, averaged over the test composites (hint:
# `composites.pointing_share` with every side set to 0).
#
# Write your answer as `answer_1 = share` (a float).

# %% tags=["solution"]
if solutions:
    answer_1 = float(
        composites.pointing_share(tis_random, np.zeros(len(tis_random), dtype=int), top_k).mean()
    )


# %% tags=["exercise-check"]
def check_1(a):
    flat = np.argsort(-tis_random.reshape(len(tis_random), -1), axis=1, kind="stable")[:, :top_k]
    truth = float(((flat % tis_random.shape[2]) < tis_random.shape[2] // 2).mean())
    assert abs(float(a) - truth) < 5e-4, (
        "not the left share: rank the randomised IEM's maps, take the top_k, count columns < half the width"
    )
    return True


exercise(
    "1", globals(), check=check_1, hint="every side 0 makes the left half the 'target'", solutions=solutions
)
# %% [markdown] tags=["exercise"]
# **2. Does the IEM look at the target more when it is right?** Split the test composites by whether the
# IEM's prediction (`pred`) equals the label, and compute the mean top-`top_k` pointing share of the trained
# IEM's maps in each group.
#
# Write your answer as `answer_2 = (share when right, share when wrong)` (two floats; `nan` for an empty
# group).

# %% tags=["solution"]
if solutions:
    share = composites.pointing_share(tis, side, top_k)
    right = pred == labels
    answer_2 = (
        float(share[right].mean()) if right.any() else float("nan"),
        float(share[~right].mean()) if (~right).any() else float("nan"),
    )


# %% tags=["exercise-check"]
def check_2(a):
    share, right = composites.pointing_share(tis, side, top_k), pred == labels
    for got, group in zip(a, (right, ~right), strict=True):
        want = share[group].mean() if group.any() else float("nan")
        assert np.isclose(float(got), want, atol=5e-4, rtol=0, equal_nan=True), (
            "a group's mean is off: re-check the split by pred == labels and the pointing shares"
        )
    return True


exercise(
    "2",
    globals(),
    check=check_2,
    hint="composites.pointing_share(tis, side, top_k)[pred == labels]",
    solutions=solutions,
)
