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
# The paper (Yang, Shi, Du, Wu, Tan, Sun, Liu: *Concept-Centric Token Interpretation for Vector-Quantized
# Generative Models*) calls a codebook id a **concept token** of a class if it keeps showing up where the
# IEM looks. For every training image we read the ids at its **top-n TIS positions** (notebook 05) and count
# them per class; the most counted ids are the class's concept tokens.

# %%
from collections import Counter

import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from cortex_run import datasets as tokds
from cortex_run import plots, tokenizers
from cortex_run.artifacts import atomic_path, record_metrics, register, registered
from cortex_run.notebook import check_parameters, class_ids, exercise, repo_path, require
from cortex_utils import concepts, evaluation
from cortex_utils import vq as vqlib

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-05 (relative to the repo root)
top_ns = [1, 5, 10, 20]  # how many of each image's highest-TIS positions to read
top = 100  # ranked ids kept per class (concept and frequency tables)
show_top_n = 5  # the top-n used in the figures
tokens_per_class = 3  # concept tokens drawn per class in the gallery
gallery_classes = [0, 3, 7]  # the classes the gallery shows (indices or class names)
background_share = 0.5  # the background: the commonest ids, filling this share of the grids (as notebook 08)
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "06_concept_analysis")
run_dir = repo_path(run_dir)
vq = tokenizers.load_run_vq(run_dir, device)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
n_positions, K = int(np.prod(ds.grid)), ds.manifest["n_embed"]
require(all(1 <= n <= n_positions for n in top_ns), f"top_ns must lie in [1, {n_positions}], got {top_ns}")
require(show_top_n in top_ns, f"show_top_n ({show_top_n}) must be one of top_ns {top_ns}")
require(min(top, tokens_per_class) >= 1, "top and tokens_per_class must be >= 1")
require(0 <= background_share < 1, "background_share must lie in [0, 1)")
tis_entry = registered(run_dir, "tis")
require("train" in tis_entry["splits"], "notebook 05 must have computed TIS for the train split")
tis = np.load(repo_path(tis_entry["path"]) / "train.npy")
tokens, labels = ds.tokens["train"], ds.labels["train"].astype(np.int64)
require(tis.shape == tokens.shape, f"TIS {tis.shape} is not aligned with the train tokens {tokens.shape}")
print(f"{len(labels)} train images; TIS method: {tis_entry['method']} (IEM {tis_entry['iem_arch']})")

# %% [markdown]
# ## By hand: count the ids at the most important positions
#
# For each training image of a class: sort its TIS, read the ids at the `show_top_n` highest positions,
# count them. Ties: the smaller id first.

# %% tags=["by-hand"]
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
# With $t_{i,p}$ the id at position $p$ of image $i$ and $y_i$ its class, the count
# of id $k$ for class $c$ is
#
# $$\mathrm{count}_c(k) = \sum_{i:\, y_i = c} \; \sum_{p \,\in\, \mathrm{top}_n(\mathrm{TIS}_i)}
# \mathbb{1}\left[t_{i,p} = k\right],$$
#
# and the concept tokens of $c$ are the ids sorted by $\mathrm{count}_c$, highest first.
# `concepts.concept_tokens` computes it for all classes and top-n values with one `bincount`; notebook 08's
# baselines (the most **frequent** and most **class-specific** ids per class) are counted too.

# %%
table = concepts.concept_tokens(tokens, labels, tis, ds.class_names, K, top_ns=top_ns, top=top)
freq = concepts.frequency_tokens(tokens, labels, ds.class_names, K, top=top)
contrast = concepts.frequency_tokens(tokens, labels, ds.class_names, K, top=top, contrastive=True)

# %% [markdown]
# The by-hand counts must equal the library's: same ids, counts and order.

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

# %% [markdown]
# ## How many concept tokens are background?
#
# Backgrounds fill most grid positions with a few **background** codes (black ones on the digits), as in
# notebook 08 (`concepts.background_tokens`): the commonest ids over all classes, until they fill
# `background_share` of the grids. Marked with * among each class's first 10 concept tokens:

# %%
background = concepts.background_tokens(tokens, labels, K, share=background_share)
first10 = concepts.token_sets(table, 10, top_n=show_top_n)
kept = table[~table.token.isin(background)].sort_values(["top_n", "label", "rank"])
kept["rank"] = kept.groupby(["top_n", "label"]).cumcount() + 1  # the ranks once the background is skipped
no_bg = concepts.token_sets(kept, 10, top_n=show_top_n)
n_bg = {c: int(np.isin(ids, background).sum()) for c, ids in first10.items()}
bg_share = sum(n_bg.values()) / sum(map(len, first10.values()))
neutral_id = evaluation.resolve_neutral(vq, ds.tokens["test"], "background")  # notebook 07's neutral token
marked = {c: " ".join(f"{t}*" if t in background else f"{t}" for t in ids) for c, ids in first10.items()}
bg_table = pd.DataFrame({"first 10 concept tokens (* = background)": marked, "background": n_bg})
bg_table["first 10 without background"] = pd.Series({c: " ".join(map(str, v)) for c, v in no_bg.items()})
display(bg_table.set_axis([ds.class_names[c] for c in bg_table.index]))
print(f"{len(background)} background ids: {bg_share:.0%} of the classes' first 10 concept tokens")

# %%
_ = record_metrics(run_dir, concept_tokens_background_share=round(bg_share, 4), device=device)

# %% [markdown]
# Why would a black code be a concept token? Where a digit has **no** stroke is part of its shape too (the
# open side of a 7, the hole of a 0). It matters later: notebooks 07-08 black out the concept tokens'
# patches, and blacking out a black patch hides nothing, so masking cannot show that a background concept
# token matters.
#
# ## What the concept tokens look like
#
# A few classes' first concept tokens, each in two training digits where it is a top-n token, its cells
# outlined in red ("bg": a background id). A token is a patch of a digit *in its colour*: the same stroke
# drawn in another colour is another id, so one class's concept tokens can share a colour.

# %%
sets = concepts.token_sets(table, tokens_per_class, top_n=show_top_n)
picked = [(c, int(t)) for c in class_ids(gallery_classes, ds.class_names, "gallery_classes") for t in sets[c]]
rows = np.concatenate(
    [np.resize(concepts.images_with_token(tokens, labels, tis, show_top_n, c, t), 2) for c, t in picked]
)
shown = vqlib.decode(vq, torch.from_numpy(tokens[rows].astype(np.int64)))
outlined = tokens[rows] == np.repeat([t for _, t in picked], 2)[:, None, None]
titles = [f"class {ds.class_names[c]}: id {t}" + " bg" * (t in background) for c, t in picked for _ in (0, 1)]
plots.outlined_grid(shown, outlined, titles, ncols=2 * tokens_per_class, size=1.7)

# %% [markdown]
# ## Summary

# %%
c7 = min(len(ds.class_names) - 1, 7)
summary = f"""
* Concept tokens: the ids counted most at the top-{show_top_n} TIS positions of {len(labels)} training
  images; the by-hand count equals `concepts.concept_tokens`.
* {len(background)} of {K} ids are background: {bg_share:.0%} of the classes' first 10 concept tokens.
* Class {ds.class_names[c7]}: {n_bg.get(c7, 0)} of its first 10 are background, its first is id
  {first10[c7][0] if c7 in first10 else "-"}; notebook 07's neutral token is id {neutral_id}.
"""
display(Markdown(summary))

# %% [markdown]
# ## Questions
#
# 1. What is counted to find a class's concept tokens, and at which positions?
# 2. What does $\mathrm{count}_c(k)$ add up, and over which images?
# 3. How does notebook 08 decide which ids are background?
# 4. Why can a black background code be a concept token of a digit?
# 5. Why can blacking out a background concept token not show that it matters?
#
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1.** Without reading `table`, find a class `c`'s first 3 concept tokens at top-n = `show_top_n`
# (`concepts.top_tokens` and `np.bincount` help). Answer `answer_1 = {c: [id, id, id]}`, most counted first.

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
        assert list(ids) == truth[int(c)].tolist(), (
            f"class {c}: other ids or another order; re-check the ties"
        )
    return True


exercise(
    "1",
    globals(),
    check=check_1,
    hint="count per image's top-n ids, then sort by count (ties: smaller id)",
    solutions=solutions,
)

# %% [markdown] tags=["exercise"]
# **2.** Are concept tokens class-specific? Among the classes' first 10 concept tokens (top-n =
# `show_top_n`), how many distinct ids belong to more than one class? Answer `answer_2 = ...` (a number).

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
