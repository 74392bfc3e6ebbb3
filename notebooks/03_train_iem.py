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
# # 03 · The information extractor model (IEM)
#
# CORTEX explains a VQGM through a classifier that sees **only tokens**: the **IEM** reads an image's grid
# of token embeddings (`embed_dim × h × w`, each cell its token's codebook row) and predicts the concept,
# here the digit. What it relies on must be in the tokens, so its saliency (how much its output moves
# when a token's embedding moves; notebook 05) tells which tokens carry the concept. The four architectures
# of the CORTEX code:
#
# | # | architecture | idea |
# |---|---|---|
# | 1 | VGG-like CNN | two blocks of 4 conv layers and max-pooling, 3 fully connected layers |
# | 2 | deeper CNN | the same with two more conv layers |
# | 3 | ResNet-SE | residual blocks with squeeze-excitation channel gates |
# | 4 | ViT | a transformer over the token embeddings with a class token |

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display

from cortex_run import datasets as tokds
from cortex_run import prepare, tokenizers
from cortex_run.artifacts import registered
from cortex_run.notebook import check_parameters, exercise, repo_path, require
from cortex_utils import iem as iemlib
from cortex_utils import vq as vqlib

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-02 (relative to the repo root)
retrain = False  # train even if a shipped IEM was trained on this exact dataset with these settings
seed = 0
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
architectures = [1, 2, 3, 4]  # which IEMs to train (1 VGG, 2 deeper VGG, 3 ResNet-SE, 4 ViT)
epochs = 12
batch_size = 128
learning_rate = 0.002
weight_decay = 0.0001
lr_step = 9  # StepLR step in epochs (0: half the epochs)
lr_gamma = 0.1
width = 32  # channels of the first conv stage / ViT width (the original uses 512)
nproc = 1  # > 1: train under torchrun + DistributedDataParallel (batch_size per process; docs/scaling.md)
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
check_parameters(globals(), "03_train_iem")
require(
    len(architectures) > 0 and set(architectures) <= set(iemlib.ARCHITECTURES),
    f"architectures must be a non-empty subset of {sorted(iemlib.ARCHITECTURES)}, got {architectures}",
)
require(min(epochs, batch_size, nproc) >= 1 and width >= 4, "epochs, batch_size, nproc >= 1 and width >= 4")
require(learning_rate > 0 and 0 < lr_gamma <= 1, "learning_rate must be > 0 and lr_gamma in (0, 1]")
run_dir = repo_path(run_dir)

# %% [markdown]
# ## Data: token grids → embeddings
#
# Notebook 02's dataset; the loader looks up `codebook[ids]` per batch.

# %%
vq = tokenizers.load_run_vq(run_dir)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
require(all(s in ds.splits for s in ("train", "val")), f"the dataset needs train and val splits: {ds.splits}")
emb, y, _ = next(iter(tokds.embedding_loader(ds, "val", vqlib.codebook(vq), 8, shuffle=True, seed=seed)))
print(f"{ds.path.name}: {ds.manifest['splits']}; a batch of 8 embeddings: {tuple(emb.shape)}")

# %% [markdown]
# ## Train
#
# As the original: Adam, a step learning-rate decay, cross-entropy; we keep the weights of the epoch with
# the lowest validation loss. A shipped IEM trained on this split with these settings is loaded instead.

# %%
training = {"epochs": epochs, "batch_size": batch_size, "lr": learning_rate, "weight_decay": weight_decay}
training.update(lr_step=lr_step or max(1, epochs // 2), lr_gamma=lr_gamma, width=width, seed=seed)
models, logs, origin = prepare.iems_for_run(
    run_dir, ds, vq, architectures, training, retrain=retrain, nproc=nproc, device=device
)
for arch in architectures:
    print(f"IEM {arch} ({iemlib.ARCHITECTURES[arch]}): {origin[arch]}")

# %% [markdown]
# One batch through the first IEM: a logit per class and image; the largest is the prediction.

# %%
first = models[architectures[0]].eval()
with torch.no_grad():
    logits = first(emb.to(device))
print(f"logits {tuple(logits.shape)}; predicted {logits.argmax(1).tolist()}, true {y.tolist()}")

# %% [markdown]
# ## How did they do?
#
# Each model's best epoch (lowest validation loss: the weights we kept).

# %%
rows = {}
for a in architectures:
    best = logs[a].loc[logs[a]["val_loss"].idxmin()]
    rows[f"{a} {iemlib.ARCHITECTURES[a]}"] = [int(best["epoch"]), best["val_acc"]]
summary = pd.DataFrame.from_dict(rows, orient="index", columns=["best epoch", "val accuracy"])
display(summary.style.format({"val accuracy": "{:.3f}"}))

# %%
curves = pd.concat([logs[a].assign(IEM=f"{a} {iemlib.ARCHITECTURES[a]}") for a in architectures])
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
sns.lineplot(data=curves, x="epoch", y="val_acc", hue="IEM", marker="o", ax=axes[0], legend=False)
sns.lineplot(data=curves, x="epoch", y="train_loss", hue="IEM", ax=axes[1])
axes[0].set(title="validation accuracy", ylabel="accuracy")
axes[1].set(title="training loss", ylabel="cross-entropy")
sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.01, 1), frameon=False)
fig.tight_layout()

# %% [markdown]
# ## Summary

# %%
acc = summary["val accuracy"]
display(Markdown(f"""
- IEM input: token embeddings of shape {tuple(emb.shape[1:])}.
- Best validation accuracy: {acc.max():.3f} (IEM {acc.idxmax()}).
- Lowest: {acc.min():.3f} (IEM {acc.idxmin()}).
"""))  # fmt: skip

# %% [markdown]
# ## Questions
#
# 1. What does the IEM read, and why only tokens?
# 2. Why must the IEM classify well?
# 3. Which weights do we keep from training, and why?
# 4. When is a shipped IEM loaded instead of trained?
# 5. What does one logit of the IEM stand for?

# %% [markdown]
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1. How big is each IEM?** Count the parameters of each model in `models` yourself
# (`model.parameters()` yields the tensors, `t.numel()` counts one). Which part of IEM 1 holds most: the
# convolutions or the fully connected head? Answer `answer_1 = {arch: count, ...}` (ints).

# %% tags=["solution"]
if solutions:
    answer_1 = {arch: sum(t.numel() for t in models[arch].parameters()) for arch in architectures}
    print(answer_1)


# %% tags=["exercise-check"]
def check_1(a):
    truth = {arch: iemlib.count_parameters(models[arch]) for arch in architectures}
    assert set(a) == set(truth), f"give a count for each IEM in {sorted(truth)}, got keys {sorted(a)}"
    wrong = sorted(k for k in truth if int(a[k]) != truth[k])
    assert not wrong, f"the counts of IEM(s) {wrong} are off: did you count every weight and bias tensor?"
    return True


exercise("1", globals(), check=check_1, hint="sum t.numel() over model.parameters()", solutions=solutions)

# %% [markdown] tags=["exercise"]
# **2. Which IEM reached the lowest validation loss, and when?** Search the per-epoch logs (`logs[arch]`)
# for the lowest `val_loss` over all IEMs. Before or after the learning-rate step? Answer
# `answer_2 = (arch, epoch)` (ints, the epoch as in the log's `epoch` column).

# %% tags=["solution"]
if solutions:
    best_of = {arch: logs[arch]["val_loss"].min() for arch in architectures}
    arch_best = min(best_of, key=best_of.get)
    answer_2 = (arch_best, int(logs[arch_best].loc[logs[arch_best]["val_loss"].idxmin(), "epoch"]))


# %% tags=["exercise-check"]
def check_2(a):
    arch, epoch = int(a[0]), int(a[1])
    on_disk = {k: pd.read_csv(run_dir / "iem" / f"iem{k}_log.csv") for k in architectures}  # as written
    assert arch in on_disk, f"IEM {arch} was not trained in this run ({architectures})"
    row = on_disk[arch].loc[on_disk[arch]["epoch"] == epoch, "val_loss"]
    assert len(row) == 1, f"IEM {arch}'s log has no epoch {epoch}"
    lowest = min(log["val_loss"].min() for log in on_disk.values())
    assert float(row.iloc[0]) <= lowest, "another IEM or epoch has a lower val_loss: compare all the logs"
    return True


exercise(
    "2", globals(), check=check_2, hint="each log's val_loss minimum, then the smallest", solutions=solutions
)
