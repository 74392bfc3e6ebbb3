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
# # 17 · Going deeper: concept tokens and masking, measured more ways
#
# A second session after notebooks 06-08, which follow the steps of the paper (Yang, Shi, Du, Wu, Tan, Sun,
# Liu: *Concept-Centric Token Interpretation for Vector-Quantized Generative Models*). Here we ask what
# those steps leave open:
#
# 1. Are a class's concept tokens **concentrated** on a few ids, and do they differ from the ids the class
#    simply contains most (notebook 06's tables)?
# 2. What does **token-space** masking look like, and how much more does TIS masking hurt than random masking
#    (notebook 07's table)?
# 3. Notebook 08's sets hide very different amounts of the image. Normalised by what they hide, and against
#    a **class-specific** baseline, do the concept tokens still hurt most?
#
# Everything is read from the run directory: notebook 06's tables, 07's and 08's saved results and settings.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display

from cortex_run import datasets as tokds
from cortex_run import evaluators, plots, tokenizers
from cortex_run.artifacts import record_metrics, registered
from cortex_run.notebook import check_parameters, exercise, repo_path, require
from cortex_utils import concepts, evaluation
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-08 (relative to the repo root)
token_nums = [1, 3, 8, 16]  # the sweep over the number of ids masked per class (pixel space)
example = 0  # the test image of the token-space picture
seed = 0  # its random positions (notebook 07's default seed)
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "17_masking_deeper")
run_dir = repo_path(run_dir)
require(len(token_nums) > 0 and min(token_nums) >= 1, f"token_nums must be ints >= 1, got {token_nums}")
s08 = registered(run_dir, "concept_level")  # notebook 08's settings and Table 2
spaces, top_n, token_num = evaluation.check_spaces(s08["spaces"]), s08["top_n"], s08["token_num"]
vq = tokenizers.load_run_vq(run_dir, device)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
K, n_cls = ds.manifest["n_embed"], len(ds.class_names)
folder = repo_path(registered(run_dir, "concepts")["path"])
tables = {m: pd.read_parquet(folder / f"{m}_tokens.parquet") for m in ("concept", "frequency", "contrastive")}
train = ds.tokens["train"].astype(np.int64), ds.labels["train"].astype(np.int64)
tokens, labels = ds.tokens[s08["split"]].astype(np.int64), ds.labels[s08["split"]].astype(np.int64)
judges = evaluators.load_run_evaluators(
    run_dir, vqlib.resolution(vq), n_cls, s08["torchvision_weights"], device
)
print(f"notebook 08's settings: top_n {top_n}, token_num {token_num}, spaces {spaces}, split {s08['split']}")

# %% [markdown]
# ## 1. Concentrated or spread out?
#
# If a class has a concept, a few ids should take a large share of its top-n slots. Per class: the share of
# all its top-n TIS slots that its k highest-ranked concept tokens cover.

# %%
t = tables["concept"]
t = t[(t.top_n == top_n) & (t.label >= 0)].copy()
t["cumulative share"] = t.groupby("label")["share"].cumsum()
fig, ax = plt.subplots(figsize=(7, 3.2))
sns.lineplot(  # the first ten classes (all of the digits)
    data=t[(t["rank"] <= 30) & (t.label < 10)],
    x="rank",
    y="cumulative share",
    hue="class_name",
    ax=ax,
    palette="tab10",
)
ax.set(xlabel="k (first concept tokens)", ylabel=f"share of the top-{top_n} slots")
sns.move_legend(
    ax, "upper left", bbox_to_anchor=(1.01, 1), title="class" if n_cls <= 10 else "class (first 10)"
)
fig.tight_layout()
plt.show()
first10 = t[t["rank"] == 10].set_index("class_name")["cumulative share"]
print(f"the first 10 concept tokens cover {first10.min():.0%}-{first10.max():.0%} of a class's top-n slots")

# %% [markdown]
# ## 2. Concept tokens vs the ids a class contains most
#
# If the concept tokens were just the frequent ones, CORTEX would add nothing. For every class and top-n:
# the share of the first 20 concept tokens that are also among the class's 20 most **frequent** ids, or its
# 20 most **class-specific** ids (contrastive: frequent in the class relative to all classes).

# %%
k, rows = 20, []
for n in sorted(tables["concept"].top_n.unique()):
    cs = concepts.token_sets(tables["concept"], k, top_n=n)
    for base in ("frequency", "contrastive"):
        ov = concepts.overlap(cs, concepts.token_sets(tables[base], k))
        rows += [{"top-n": n, "baseline": base, "class": c, "overlap": v} for c, v in ov.items()]
ov = pd.DataFrame(rows)
display(ov.groupby(["baseline", "top-n"])["overlap"].mean().unstack().round(3))
fig, ax = plt.subplots(figsize=(6, 3))
sns.barplot(data=ov, x="top-n", y="overlap", hue="baseline", ax=ax, errorbar=None)
ax.set(
    ylabel=f"share of the first {k} concept\ntokens in the baseline's {k}", ylim=(0, ov.overlap.max() * 1.15)
)
sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Token-space masking, and how much more TIS masking hurts
#
# Notebook 07 masked in two spaces. In token space the masked positions get the neutral token before
# decoding; the decoder mixes neighbouring tokens, so the change is not confined to the masked cells (red).
# One test image, the ids at its 4 highest-TIS positions or at 4 random positions.

# %%
tis = np.load(repo_path(registered(run_dir, "tis")["path"]) / f"{s08['split']}.npy")
i, n = min(example, len(labels) - 1), 4
one = tokens[i : i + 1]
original = vqlib.decode(vq, torch.from_numpy(one))
shown, masks, titles = [original[0]], [np.zeros(ds.grid, bool)], [f"class {ds.class_names[labels[i]]}"]
for name, pos in {
    "TIS": tislib.topk_positions(tis[i : i + 1], n),
    "random": evaluation.random_positions(1, ds.grid, n, seed),
}.items():
    m = evaluation.positions_holding(one, evaluation.ids_at(one, pos))
    token_masked = evaluation.mask_tokens(one, m, s08["neutral"])
    shown += [evaluation.mask_pixels(original, m)[0], vqlib.decode(vq, torch.from_numpy(token_masked))[0]]
    masks += [m[0], m[0]]
    titles += [f"{name}: pixel ({m.sum()} pos.)", f"{name}: token"]
plots.outlined_grid(torch.stack(shown), masks, titles, ncols=5, size=1.9)

# %% [markdown]
# From notebook 07's table: the drop in the probability of the class after TIS masking minus the drop after
# random masking, per n, evaluator and space. Above 0: TIS masking hurts more.

# %%
image_level = pd.read_csv(run_dir / "evaluation" / "image_level.csv")
drops = image_level[(image_level.n >= 1) & (image_level.selection != "original")].pivot_table(
    index=["space", "evaluator", "n"], columns="selection", values="prob_drop"
)
gap = (drops["tis"] - drops["random"]).rename("gap").reset_index()
fig, ax = plt.subplots(figsize=(6.5, 3))
sns.lineplot(data=gap, x="n", y="gap", hue="evaluator", style="space", markers=True, ax=ax)
ax.axhline(0, color="gray", lw=0.8)
ax.set(xlabel="n (positions whose ids are masked)", ylabel="TIS drop - random drop")
sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1))
fig.tight_layout()
plt.show()
print(f"largest gap: {gap.gap.max():.3f} (n = {int(gap.loc[gap.gap.idxmax(), 'n'])})")

# %% [markdown]
# ## 4. Notebook 08's sets, normalised by what they hide
#
# Notebook 08's Table 2 plus a class-specific baseline: each class's first `token_num` **contrastive** ids.
# We mask them exactly as notebook 08 masked its sets, and add them to its saved table.

# %%
background = concepts.background_tokens(*train, K, share=s08["background_share"])
k_max = max(token_num, *token_nums)
no_bg = concepts.frequency_tokens(*train, ds.class_names, K, top=k_max, exclude=background)
sets = {
    "CORTEX concept": concepts.token_sets(tables["concept"], k_max, top_n=top_n),
    "frequency": concepts.token_sets(tables["frequency"], k_max),
    "frequency w/o background": concepts.token_sets(no_bg, k_max),
    "contrastive": concepts.token_sets(tables["contrastive"], k_max),
}

# %%
decoded = vqlib.decode(vq, torch.from_numpy(tokens))
extra = evaluation.concept_level_experiment(
    vq,
    tokens,
    labels,
    {"contrastive": sets["contrastive"]},
    judges,
    token_num,
    evaluation.Masking(spaces, s08["neutral"], progress=False),
    images=decoded,
)
table = pd.concat([pd.read_csv(repo_path(s08["path"])), extra], ignore_index=True)
overall = table[table.label < 0].set_index(["method", "space", "evaluator"])
display(overall[["logit_drop", "masked_prob", "mean_masked"]].round(3))

# %% [markdown]
# A set that masks more can lower the logit more without its ids mattering more, and one that hides only
# black background loses almost nothing however much it hides. Per set (first space, mean over the
# evaluators): the **positions masked per image**, the **drop per masked position**
# (`evaluation.drop_per_position`) and **what the mask hides**, the mean pixel value of the masked patches
# in the original images (−1: every hidden pixel was already black).

# %%
eff = evaluation.drop_per_position(table)
cols = ["logit_drop", "positions_masked", "drop_per_position"]
head = eff[eff.space == spaces[0]].groupby("method", sort=False)[cols].mean()
head["hidden_pixel_mean"] = pd.Series(
    {
        m: evaluation.masked_patch_mean(
            decoded, evaluation.positions_holding(tokens, [s.get(int(c), [])[:token_num] for c in labels])
        )
        for m, s in sets.items()
    }
)
display(head.round(3))
bg_mask = np.isin(tokens, background)
print(
    f"the {len(background)} background ids hold {bg_mask.mean():.0%} of the {s08['split']} positions; their "
    f"patches' mean pixel value is {evaluation.masked_patch_mean(decoded, bg_mask):.2f} (-1 = black)"
)

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
labels_of = {
    "positions_masked": "positions masked per image",
    "logit_drop": "target logit drop",
    "drop_per_position": "logit drop per masked position",
}
for ax, (col, label) in zip(axes, labels_of.items(), strict=True):
    hue = None if col == "positions_masked" else "evaluator"  # the positions do not depend on the judge
    sns.barplot(data=eff[eff.space == spaces[0]], x="method", y=col, hue=hue, ax=ax, errorbar=None)
    ax.set(xlabel="token set", ylabel=label, title=f"{label} ({spaces[0]} space)")
    ax.set_xticks(ax.get_xticks(), [t.get_text().replace(" ", "\n", 1) for t in ax.get_xticklabels()])
axes[1].legend().remove()
sns.move_legend(axes[2], "upper left", bbox_to_anchor=(1.02, 1))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. How many tokens? The same number of masked positions
#
# The same comparison in pixel space for `token_num` in `token_nums`. The **matched comparison** reads every
# set's drop at the same number of masked positions per image, the number the concept tokens mask at
# notebook 08's `token_num` (dashed line): `evaluation.drop_at_positions` interpolates linearly along each
# set's curve from nothing masked (no drop), and does not extrapolate: a set whose `max(token_nums)` ids never
# mask that many positions gets no value.

# %%
sweep = pd.concat(
    [
        evaluation.concept_level_experiment(
            vq,
            tokens,
            labels,
            sets,
            judges,
            token_num=k,
            options=evaluation.Masking(progress=False),
            images=decoded,
        ).assign(token_num=k)
        for k in token_nums
    ]
)
sweep = sweep[sweep.label < 0]

# %%
matched_at = float(eff.loc[eff.method == "CORTEX concept", "positions_masked"].iloc[0])
matched = evaluation.drop_at_positions(sweep, matched_at)
head["matched_drop"] = matched.groupby("method", sort=False)["logit_drop"].mean()
display(
    matched.pivot_table(index="method", columns="evaluator", values="logit_drop", sort=False, dropna=False)
    .assign(max_positions_masked=matched.groupby("method", sort=False)["max_masked"].first())
    .round(3)
)

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
for ax, x, xlabel in zip(
    axes,
    ("token_num", "mean_masked"),
    ("ids masked per class (token_num)", "positions masked per image"),
    strict=True,
):
    sns.lineplot(data=sweep, x=x, y="logit_drop", hue="method", style="evaluator", markers=True, ax=ax)
    ax.set(xlabel=xlabel, ylabel="target logit drop", title=f"logit drop vs {xlabel.split(' (')[0]}")
axes[1].axvline(matched_at, color="grey", ls="--", lw=1)
axes[0].legend().remove()
sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Verdict
#
# Each baseline against the concept tokens on the drop itself, on the drop per masked position, and at an
# equal number of masked positions (first space, mean over the evaluators; the matched comparison is in pixel
# space).

# %%
measures = {
    "logit_drop": "drop",
    "drop_per_position": "drop per masked position",
    "matched_drop": f"drop at {matched_at:.2f} positions masked",
}
lost, unmeasured = [], []
for b in [m for m in sets if m != "CORTEX concept"]:
    parts = []
    for col, what in measures.items():
        c, v = head.loc["CORTEX concept", col], head.loc[b, col]
        if not (np.isfinite(c) and np.isfinite(v)):
            parts.append(f"{what}: not measured")
            unmeasured.append(f"{b} ({what})")
            continue
        parts.append(f"{what} {c:.3f} vs {v:.3f}")
        if c <= v:
            lost.append(f"{b} on the {what} ({v:.3f} vs {c:.3f})")
    print(f"CORTEX vs {b}: " + "; ".join(parts))

# %%
if lost:
    conclusion = (
        "the concept tokens do NOT win everywhere; the baseline hurts at least as much for " + ", ".join(lost)
    )
else:
    conclusion = "the concept tokens hurt the evaluators more than every baseline on every measure" + (
        " that could be measured" if unmeasured else ""
    )
print(f"Conclusion: {conclusion}.")
if unmeasured:
    print("not measured (the sweep never masks that many positions): " + ", ".join(unmeasured))

# %% [markdown]
# Record the numbers (names as notebook 08 recorded them before they moved here).


# %%
def num(x):
    return round(float(x), 4) if np.isfinite(x) else None


keys = {
    "CORTEX concept": "concept",
    "frequency": "frequency",
    "frequency w/o background": "frequency_no_background",
    "contrastive": "contrastive",
}
_ = record_metrics(
    run_dir,
    device=device,
    concept_level_contrastive_drop=num(head.loc["contrastive", "logit_drop"]),
    concept_level_matched_positions=num(matched_at),
    **{f"concept_level_positions_masked_{keys[m]}": num(head.loc[m, "positions_masked"]) for m in sets},
    **{f"concept_level_drop_per_position_{keys[m]}": num(head.loc[m, "drop_per_position"]) for m in sets},
    **{f"concept_level_matched_drop_{keys[m]}": num(head.loc[m, "matched_drop"]) for m in sets},
)

# %% [markdown]
# ## Summary

# %%
r, rc = head.loc["CORTEX concept"], head.loc["contrastive"]
freq_overlap = ov[(ov["top-n"] == top_n) & (ov.baseline == "frequency")].overlap.mean()
summary = f"""
* The first 10 concept tokens cover {first10.min():.0%}-{first10.max():.0%} of a class's top-{top_n} TIS
  slots; {freq_overlap:.0%} of the first 20 are among the class's 20 most frequent ids.
* TIS masking beats random masking by up to {gap.gap.max():.3f} in the probability of the class (notebook
  07's table).
* Concept tokens: {r.positions_masked:.2f} positions masked per image, {r.drop_per_position:.3f} logit drop
  per masked position; contrastive ids: {rc.positions_masked:.2f} and {rc.drop_per_position:.3f}.
* {conclusion[0].upper() + conclusion[1:]}.
"""
display(Markdown(summary))

# %% [markdown]
# ## Questions
#
# 1. What does the cumulative-share curve measure, and what would a class without a concept look like?
# 2. Why compare the concept tokens with the most frequent ids at all?
# 3. Why does token-space masking change pixels outside the masked cells?
# 4. Why can a set that masks more positions lower the logit more without its ids mattering more?
# 5. What does the mean pixel value of the hidden patches tell about the frequency baseline?
# 6. How does `evaluation.drop_at_positions` compare sets at an equal number of masked positions, and when
#    does it give no value?
#
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1.** From the overall rows of `table` (label -1) in the first space, compute the **frequency** set's drop
# per masked position yourself: its logit drop averaged over the evaluators, divided by its positions
# masked per image (`mean_masked`). Answer `answer_1 = ...` (a number; 3 decimals are enough).

# %% tags=["solution"]
if solutions:
    rows_1 = table[(table.label < 0) & (table.space == spaces[0]) & (table.method == "frequency")]
    answer_1 = float(rows_1.logit_drop.mean() / rows_1.mean_masked.mean())

# %% tags=["exercise-check"]
exercise(
    "1",
    globals(),
    check=lambda a: abs(float(a) - head.loc["frequency", "drop_per_position"]) < 5e-4,
    hint="filter label < 0, the first space and the method; then mean drop / mean positions masked",
    solutions=solutions,
)
