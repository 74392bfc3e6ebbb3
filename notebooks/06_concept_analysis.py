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
# # 06 · Concept tokens
#
# A token is part of a concept if it keeps showing up where the IEM looks. For every training image we
# take the codebook ids at its **top-n TIS positions** (n ∈ 1, 5, 10, 20) and count them per class: the
# ranked ids are the class's **concept tokens**, with how often and in how many images they occur. The same
# counting over all classes gives the global ranking.
#
# A natural baseline is plain **frequency**: the ids that occur most in a class's images (the original's
# baseline), and a **class-contrastive** variant: ids much more frequent in the class than overall. If the
# concept tokens were just the frequent ones, CORTEX would add nothing; the overlap plot shows how much
# they differ.
#
# The scores are the run's TIS from notebook 05, by the attribution method it was given (`method`; the
# paper's SmoothGrad by default); the cell that loads them says which.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import display

from cortex_utils import concepts, plots
from cortex_utils import datasets as tokds
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import atomic_path, register, registered
from cortex_utils.notebook import check_parameters, exercise, repo_path, require

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-05 (relative to the repo root)
top_ns = [1, 5, 10, 20]  # how many of each image's highest-TIS positions to read
top = 100  # ranked ids kept per class (concept and frequency tables)
show_top_n = 5  # the top-n used in the figures
tokens_per_class = 6  # concept tokens drawn per class
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "06_concept_analysis")
run_dir = repo_path(run_dir)
vq = vqlib.load_run_vq(run_dir)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
n_positions = int(np.prod(ds.grid))
require(
    len(top_ns) > 0 and all(1 <= n <= n_positions for n in top_ns),
    f"top_ns must lie in [1, {n_positions}] (the grid has {n_positions} positions), got {top_ns}",
)
require(show_top_n in top_ns, f"show_top_n ({show_top_n}) must be one of top_ns {top_ns}")
require(top >= 1 and tokens_per_class >= 1, "top and tokens_per_class must be >= 1")
tis_entry = registered(run_dir, "tis")
require("train" in tis_entry["splits"], "notebook 05 must have computed TIS for the train split")
tis = np.load(repo_path(tis_entry["path"]) / "train.npy")
tokens, labels = ds.tokens["train"], ds.labels["train"].astype(np.int64)
require(tis.shape == tokens.shape, f"TIS {tis.shape} is not aligned with the train tokens {tokens.shape}")
print(
    f"TIS method: {tis_entry['method']} (notebook 05: IEM {tis_entry['iem_arch']}, {tis_entry['reduction']} "
    "over the channels)"
)
params

# %% [markdown]
# ## By hand: count the ids at the most important positions
#
# The whole idea fits in a few plain lines. For every training image of a class: sort its TIS, take the
# `show_top_n` highest positions, read the codebook ids sitting there and add them to a counter. The ids
# counted most often are the class's concept tokens (ties: the smaller id first). Here for three classes.

# %% tags=["by-hand"]
from collections import Counter

n, few = show_top_n, list(range(min(3, len(ds.class_names))))
by_hand = {}
for c in few:
    counter = Counter()
    for i in np.flatnonzero(labels == c):
        best = np.argsort(-tis[i].ravel(), kind="stable")[:n]  # this image's top-n TIS positions
        counter.update(tokens[i].ravel()[best].tolist())  # the ids sitting there
    by_hand[c] = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:top]  # most counted first
for c in few:
    print(f"class {ds.class_names[c]}: (id, count) {by_hand[c][:5]}")

# %% [markdown]
# ## At scale: every class and every top-n at once
#
# `concepts.concept_tokens` does the same counting for all classes and all top-n values together: one stable
# `argsort` over every image's TIS (`tis.topk_positions`), then one `bincount` over (class, id) pairs, instead
# of a Python loop per image. It also counts in how many images each id occurs and the global ranking.

# %%
K = ds.manifest["n_embed"]
table = concepts.concept_tokens(tokens, labels, tis, ds.class_names, K, top_ns=top_ns, top=top)
freq = concepts.frequency_tokens(tokens, labels, ds.class_names, K, top=top)
contrast = concepts.frequency_tokens(tokens, labels, ds.class_names, K, top=top, contrastive=True)
display(table[(table.top_n == show_top_n) & (table["rank"] <= 3)].head(33))

# %% [markdown]
# The by-hand counts must equal the library's table for that top-n: the same ids, counts and order.

# %% tags=["by-hand-check"]
for c in few:
    lib = table[(table.top_n == n) & (table.label == c)]
    assert list(zip(lib.token.tolist(), lib["count"].tolist(), strict=True)) == by_hand[c], (
        f"class {c} differs"
    )
print(f"by hand == concepts.concept_tokens (top-n {n}, classes {[ds.class_names[c] for c in few]})")

# %% [markdown]
# Save the three tables and register them for notebooks 07-08.

# %%
out = run_dir / "concepts"
out.mkdir(exist_ok=True)
for name, df in {"concept_tokens": table, "frequency_tokens": freq, "contrastive_tokens": contrast}.items():
    with atomic_path(out / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(out / f"{name}.parquet") as tmp:
        df.to_parquet(tmp, index=False)
register(
    run_dir, "concepts", path=str(out), top_ns=top_ns, tis=tis_entry["path"], tis_method=tis_entry["method"]
)
print(f"saved to {out}: concept_tokens / frequency_tokens / contrastive_tokens (.csv, .parquet)")

# %% [markdown]
# ## Concentrated or spread out?
#
# If a class has a concept, a few ids should take a large share of its top-n slots. The curve shows, per
# class, the share of all top-n slots covered by its k highest-ranked ids.

# %%
t = table[(table.top_n == show_top_n) & (table.label >= 0)].copy()
t["cumulative share"] = t.groupby("label")["share"].cumsum()
fig, ax = plt.subplots(figsize=(6, 3.2))
sns.lineplot(
    data=t[t["rank"] <= 30], x="rank", y="cumulative share", hue="class_name", ax=ax, palette="tab10"
)
ax.set_title(f"share of top-{show_top_n} TIS slots covered by the k first concept tokens")
fig.tight_layout()

# %% [markdown]
# ## What the concept tokens look like
#
# Each row is a class; each column one of its first concept tokens (top-n = `show_top_n`). The large tile
# decodes a grid made only of that token; the small crops are patches of training images where the token
# sits among the top-n positions.

# %%
sets = concepts.token_sets(table, tokens_per_class, top_n=show_top_n)
n_cls = min(len(ds.class_names), 10)
fig, axes = plt.subplots(
    n_cls, tokens_per_class * 2, figsize=(tokens_per_class * 2 * 0.9, n_cls * 0.95), squeeze=False
)
for ax in axes.flat:
    ax.axis("off")
for c in range(n_cls):
    ids = sets.get(c, [])
    tiles = concepts.token_tiles(vq, ids) if len(ids) else []
    for j, tok in enumerate(ids):
        axes[c, 2 * j].imshow(plots.to_hwc(tiles[j]))
        axes[c, 2 * j].set_title(f"{tok}", fontsize=7)
        rows = concepts.images_with_token(tokens, labels, tis, show_top_n, c, tok)[:4]  # decode only these
        decoded = vqlib.decode(vq, torch.from_numpy(tokens[rows].astype(np.int64))).numpy()
        crops = concepts.token_crops(decoded, tokens[rows], tok, max_crops=4)
        if len(crops):
            axes[c, 2 * j + 1].imshow(plots.to_hwc(np.concatenate(list(crops), axis=2)))
    axes[c, 0].text(-0.6, 0.5, ds.class_names[c], transform=axes[c, 0].transAxes, ha="right", va="center")
fig.suptitle(
    f"first {tokens_per_class} concept tokens per class: token tile | crops from images where it is a "
    f"top-{show_top_n} token"
)
fig.tight_layout()

# %% [markdown]
# ## Concept tokens vs frequency tokens
#
# For every class and top-n: the fraction of the first 20 concept tokens that are also among the class's
# 20 most frequent ids (the original baseline) or its 20 most class-specific ids (contrastive).

# %%
k = 20
rows = []
for n in top_ns:
    cs = concepts.token_sets(table, k, top_n=n)
    for base_name, base in (("frequency", freq), ("contrastive", contrast)):
        ov = concepts.overlap(cs, concepts.token_sets(base, k))
        rows += [
            {"top_n": n, "baseline": base_name, "class": ds.class_names[c], "overlap": v}
            for c, v in ov.items()
        ]
ov = pd.DataFrame(rows)
display(ov.groupby(["baseline", "top_n"])["overlap"].mean().unstack().round(3))
g = sns.catplot(data=ov, x="top_n", y="overlap", hue="baseline", kind="bar", height=3, aspect=1.8)
g.set_axis_labels("top-n", f"share of first {k} concept tokens in the baseline's first {k}")
# %% [markdown]
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1.** Pick a class `c` and find its 3 most frequent concept tokens at top-n = `show_top_n` (5 by
# default) without reading `table`: count the ids at each of its images' top-n TIS positions yourself
# (`concepts.top_tokens` and `np.bincount` help). Write your answer as `answer_1 = {c: [id, id, id]}` (a dict
# from the class label to a list of 3 ids, most frequent first).

# %% tags=["solution"]
if solutions:
    c = min(3, len(ds.class_names) - 1)
    counts = np.bincount(
        concepts.top_tokens(tokens[labels == c], tis[labels == c], show_top_n).ravel(), minlength=K
    )
    order = np.argsort(-counts, kind="stable")[:3]  # ties: the smaller id first
    answer_1 = {c: [int(i) for i in order if counts[i] > 0]}


# %% tags=["exercise-check"]
def check_1(a):
    assert isinstance(a, dict) and a, "answer_1 must be a non-empty dict {label: [3 ids]}"
    truth = concepts.token_sets(table, 3, top_n=show_top_n)
    for c, ids in a.items():
        assert list(ids) == truth[int(c)].tolist(), f"class {c}: expected other ids (or order)"
    return True


exercise(
    "1",
    globals(),
    check=check_1,
    hint="count per image's top-n ids, then sort by count (ties: smaller id)",
    solutions=solutions,
)

# %% [markdown] tags=["exercise"]
# **2.** Are concept tokens class-specific? Take each class's first 10 concept tokens at top-n =
# `show_top_n`. How many distinct ids are a concept token of more than one class? Write your answer as
# `answer_2 = ...` (a number).

# %% tags=["solution"]
if solutions:
    first10 = table[(table.top_n == show_top_n) & (table.label >= 0) & (table["rank"] <= 10)]
    answer_2 = int((first10.groupby("token")["label"].nunique() > 1).sum())

# %% tags=["exercise-check"]
shared = Counter(np.concatenate(list(concepts.token_sets(table, 10, top_n=show_top_n).values())).tolist())
exercise(
    "2",
    globals(),
    check=lambda a: int(a) == sum(v > 1 for v in shared.values()),
    hint="concepts.token_sets(table, 10, top_n=show_top_n) gives each class's first 10 ids",
    solutions=solutions,
)
