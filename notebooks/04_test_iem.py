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
# Before trusting an IEM's saliency we check that it actually recognises the classes from tokens alone.
# As the original, we report **top-1/3/5/10 accuracy** on the held-out test split, and a confusion matrix
# shows which classes it mixes up. Our bar: **IEM 1 reaches ≥ 95 % top-1** on the default generated dataset.

# %%
import numpy as np
import pandas as pd
from IPython.display import display

from cortex_utils import datasets as tokds
from cortex_utils import iem as iemlib
from cortex_utils import plots
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import record_metrics, registered
from cortex_utils.notebook import check_parameters, exercise, repo_path, require

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-03 (relative to the repo root)
architectures = [1, 2, 3, 4]  # which trained IEMs to test
split = "test"
batch_size = 512
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "04_test_iem")
require(
    len(architectures) > 0 and set(architectures) <= set(iemlib.ARCHITECTURES),
    f"architectures must be a non-empty subset of {sorted(iemlib.ARCHITECTURES)}",
)
require(batch_size >= 1, "batch_size must be >= 1")
run_dir = repo_path(run_dir)
params

# %%
vq = vqlib.load_run_vq(run_dir)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
require(split in ds.splits, f"split {split!r} not in the dataset ({ds.splits})")
loader = tokds.embedding_loader(ds, split, vqlib.codebook(vq), batch_size=batch_size)
models = {arch: iemlib.load_run_iem(run_dir, arch, ds) for arch in architectures}

# %% [markdown]
# Top-k accuracy: the share of test images whose true class is among the model's k highest logits.

# %%
rows, preds, logits_of = [], {}, {}
for arch in architectures:
    res = iemlib.evaluate_iem(models[arch], loader)
    logits_of[arch], labels = iemlib.predict(models[arch], loader)
    preds[arch] = logits_of[arch].argmax(1).numpy()
    rows.append(
        {
            "IEM": arch,
            "architecture": iemlib.ARCHITECTURES[arch],
            **{k: res[k] for k in ("top1", "top3", "top5", "top10")},
        }
    )
table = pd.DataFrame(rows)
display(table.style.format({k: "{:.3f}" for k in ("top1", "top3", "top5", "top10")}))
if 1 in architectures:
    top1 = float(table.loc[table["IEM"] == 1, "top1"].iloc[0])
    print(
        f"IEM 1 top-1 on {split}: {top1:.3f} (bar 0.95) -> "
        + ("meets the bar" if top1 >= 0.95 else "BELOW the bar")
    )

# %% [markdown]
# Record the headline numbers.

# %%
for arch, top1 in zip(table["IEM"], table["top1"], strict=True):
    record_metrics(run_dir, **{f"iem{arch}_test_top1": round(float(top1), 4)})

# %%
long = table.melt(
    id_vars=["IEM", "architecture"],
    value_vars=["top1", "top3", "top5", "top10"],
    var_name="k",
    value_name="accuracy",
)
plots.bar_table(
    long, x="architecture", y="accuracy", hue="k", title=f"IEM accuracy on the {split} split", ylim=(0, 1.02)
)
# %%
labels = ds.labels[split].astype(np.int64)
for arch in architectures[:2]:
    plots.confusion(
        labels, preds[arch], ds.class_names, title=f"IEM {arch} ({iemlib.ARCHITECTURES[arch]}), {split} split"
    )

# %% [markdown]
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1. Top-k accuracy by hand.** `logits_of[arch]` holds IEM `arch`'s logits on the test split (one row per
# image, one column per class, in the order of `labels`). Choose a k (1 ≤ k ≤ the number of classes, not
# necessarily one of the table's) and compute the top-k accuracy of the first IEM (`architectures[0]`)
# yourself: for each image, is the true class among the k largest logits? How fast does the accuracy
# approach 1 as k grows, and what is it at k = the number of classes?
#
# Write your answer as `answer_1 = (k, accuracy)`: an int and a float in [0, 1].

# %% tags=["solution"]
if solutions:
    k = 2
    order = np.argsort(
        -logits_of[architectures[0]].detach().numpy(), axis=1
    )  # classes by logit, largest first
    answer_1 = (k, float(np.mean([label in row[:k] for row, label in zip(order, labels, strict=True)])))
    print(answer_1)


# %% tags=["exercise-check"]
def check_1(a):
    k, acc = int(a[0]), float(a[1])
    assert 1 <= k <= len(ds.class_names), f"k must be between 1 and {len(ds.class_names)}, got {k}"
    truth = iemlib.evaluate_iem(models[architectures[0]], loader, ks=(k,))[f"top{k}"]
    assert abs(acc - truth) < 1e-6, f"top-{k} accuracy {acc:.4f}, expected something else"
    return True


exercise(
    "1",
    globals(),
    check=check_1,
    hint="np.argsort(-logits, axis=1)[:, :k] are each image's k best classes",
    solutions=solutions,
)
# %% [markdown] tags=["exercise"]
# **2. Which classes does the first IEM mix up most?** From its predictions (`preds[architectures[0]]`)
# and the true labels (`labels`), count the confusion matrix yourself (rows: true class, columns:
# predicted class) and find the pair of *different* classes with the most test images of the true class
# predicted as the other. Do the two digits look alike?
#
# Write your answer as `answer_2 = (true_class, predicted_class)`: two class indices (ints, the rows and
# columns of the matrix; `ds.class_names` names them).

# %% tags=["solution"]
if solutions:
    counts = pd.crosstab(pd.Series(labels, name="true"), pd.Series(preds[architectures[0]], name="predicted"))
    pairs = counts.stack()
    pairs = pairs[pairs.index.get_level_values(0) != pairs.index.get_level_values(1)]
    answer_2 = tuple(int(c) for c in pairs.idxmax()) if len(pairs) else (0, 1)  # no off-diagonal pair: any
    print(answer_2, ds.class_names[answer_2[0]], "->", ds.class_names[answer_2[1]])


# %% tags=["exercise-check"]
def check_2(a):
    true, pred = int(a[0]), int(a[1])
    n = len(ds.class_names)
    assert true != pred and 0 <= true < n and 0 <= pred < n, f"give two different class indices in 0..{n - 1}"
    m = np.zeros((n, n), dtype=int)
    np.add.at(m, (labels, preds[architectures[0]]), 1)
    np.fill_diagonal(m, -1)
    assert m[true, pred] == m.max(), (
        f"{m[true, pred]} images of class {true} went to {pred}; a pair has {m.max()}"
    )
    return True


exercise(
    "2",
    globals(),
    check=check_2,
    hint="count with np.add.at(m, (labels, preds), 1), ignore the diagonal",
    solutions=solutions,
)
