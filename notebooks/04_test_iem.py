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
# # 04 · How well do the IEMs recognise the concept?
#
# Before trusting an IEM's saliency we check that it recognises the classes from tokens alone. As the
# original CORTEX code, we report **top-k accuracy** on the held-out test split: the share of images whose
# true class is among the model's k highest logits. Our bar: IEM 1 reaches 95 % top-1.

# %%
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from cortex_run import datasets as tokds
from cortex_run import plots, tokenizers
from cortex_run.artifacts import record_metrics, registered
from cortex_run.checkpoints import load_run_iem
from cortex_run.notebook import check_parameters, exercise, repo_path, require
from cortex_utils import iem as iemlib
from cortex_utils import vq as vqlib

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-03 (relative to the repo root)
architectures = [1, 2, 3, 4]  # which trained IEMs to test
split = "test"
batch_size = 512
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
check_parameters(globals(), "04_test_iem")
require(set(architectures) <= set(iemlib.ARCHITECTURES), "architectures: a non-empty subset of 1-4")
require(len(architectures) > 0 and batch_size >= 1, "architectures must not be empty, batch_size >= 1")
run_dir = repo_path(run_dir)

# %%
vq = tokenizers.load_run_vq(run_dir)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
require(split in ds.splits, f"split {split!r} not in the dataset ({ds.splits})")
loader = tokds.embedding_loader(ds, split, vqlib.codebook(vq), batch_size=batch_size)
models = {arch: load_run_iem(run_dir, arch, ds, device) for arch in architectures}

# %%
ks = ["top1", "top3", "top5", "top10"]
rows, preds, logits_of = {}, {}, {}
for arch in architectures:
    res = iemlib.evaluate_iem(models[arch], loader)
    logits_of[arch], labels = iemlib.predict(models[arch], loader)
    preds[arch] = logits_of[arch].argmax(1).numpy()
    rows[f"{arch} {iemlib.ARCHITECTURES[arch]}"] = [res[k] for k in ks]
table = pd.DataFrame.from_dict(rows, orient="index", columns=ks)
display(table.style.format("{:.3f}"))

# %%
for arch, top1 in zip(architectures, table["top1"], strict=True):
    record_metrics(run_dir, device=device, **{f"iem{arch}_test_top1": round(float(top1), 4)})

# %% [markdown]
# Top-k accuracy rises with k (the y axis starts just below the lowest bar).

# %%
ax = table.plot.bar(figsize=(7, 3), rot=0, width=0.8)
low = np.floor(table.values.min() * 50) / 50  # the axis starts just below the lowest bar
ax.set(ylim=(low, 1.005), ylabel="accuracy", xlabel="IEM", title=f"top-k accuracy on the {split} split")
ax.axhline(0.95, color="grey", linestyle="--", linewidth=1, label="bar (IEM 1 top-1)")
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
ax.figure.tight_layout()

# %% [markdown]
# The confusion matrix of the first IEM: which digits does it mix up?

# %%
labels = ds.labels[split].astype(np.int64)
arch = architectures[0]
plots.confusion(labels, preds[arch], ds.class_names, title=f"IEM {arch} ({iemlib.ARCHITECTURES[arch]})")

# %% [markdown]
# ## Summary

# %%
top1 = table["top1"]
first = top1.iloc[0]
display(Markdown(f"""
- Top-1 on the {split} split: {top1.min():.3f} to {top1.max():.3f}; the best: IEM {top1.idxmax()}.
- Top-3 reaches {table['top3'].max():.3f}.
- IEM {arch}'s top-1, {first:.3f}, {"meets" if first >= 0.95 else "misses"} the 95 % bar.
"""))  # fmt: skip

# %% [markdown]
# ## Questions
#
# 1. What does top-k accuracy measure?
# 2. Why check the IEM before explaining it?
# 3. Why does top-k accuracy never fall as k grows?
# 4. What does a row of the confusion matrix show?
# 5. What is top-k accuracy when k is the number of classes?

# %% [markdown]
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1. Top-k accuracy by hand.** `logits_of[arch]` holds IEM `arch`'s test logits (a row per image, in the
# order of `labels`). Pick a k and compute the first IEM's top-k accuracy yourself. Answer
# `answer_1 = (k, accuracy)`.

# %% tags=["solution"]
if solutions:
    order = np.argsort(-logits_of[architectures[0]].numpy(), axis=1)  # classes by logit, largest first
    answer_1 = (2, float(np.mean([label in row[:2] for row, label in zip(order, labels, strict=True)])))


# %% tags=["exercise-check"]
def check_1(a):
    k, acc = int(a[0]), float(a[1])
    assert 1 <= k <= len(ds.class_names), f"k must be between 1 and {len(ds.class_names)}"
    truth = iemlib.evaluate_iem(models[architectures[0]], loader, ks=(k,))[f"top{k}"]
    assert abs(acc - truth) < 5e-4, f"not the top-{k} accuracy: is the true class among each row's {k} best?"
    return True


exercise("1", globals(), check=check_1, hint="np.argsort(-logits, axis=1)[:, :k]", solutions=solutions)

# %% [markdown] tags=["exercise"]
# **2. Which classes does the first IEM mix up most?** Count its confusion matrix from
# `preds[architectures[0]]` and `labels` and find the pair of different classes with the most images of
# one predicted as the other. Answer `answer_2 = (true_class, predicted_class)`.

# %% tags=["solution"]
if solutions:
    counts = pd.crosstab(labels, preds[architectures[0]]).stack()
    counts = counts[counts.index.get_level_values(0) != counts.index.get_level_values(1)]
    answer_2 = tuple(int(c) for c in counts.idxmax()) if len(counts) else (0, 1)  # none off-diagonal: any


# %% tags=["exercise-check"]
def check_2(a):
    true, pred, n = int(a[0]), int(a[1]), len(ds.class_names)
    assert true != pred and 0 <= true < n and 0 <= pred < n, f"give two different class indices in 0..{n - 1}"
    m = np.zeros((n, n), dtype=int)
    np.add.at(m, (labels, preds[architectures[0]]), 1)
    np.fill_diagonal(m, -1)
    assert m[true, pred] == m.max(), "another pair has more images: rows are true classes, columns predicted"
    return True


exercise(
    "2",
    globals(),
    check=check_2,
    hint="np.add.at(m, (labels, preds), 1)",
    solutions=solutions,
)
