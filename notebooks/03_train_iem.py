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
# CORTEX explains a VQGM through a classifier that sees **only tokens**: the IEM takes an image's grid of
# token embeddings (`embed_dim × h × w`, each cell the codebook vector of its token) and predicts the
# concept (here: the digit). Whatever the IEM relies on must be in the tokens, so its saliency
# (notebook 05) tells which tokens carry the concept. The explanations are only as good as the IEM,
# so we train the paper's four architectures and compare them:
#
# | # | architecture | idea |
# |---|---|---|
# | 1 | VGG-like CNN | 4 conv-BN-ReLU, max-pool, 4 more, max-pool, three FC layers with dropout |
# | 2 | deeper CNN | the same with two more conv layers after the second pool |
# | 3 | ResNet + squeeze-excitation | two stages of three residual blocks with channel gates, global pooling |
# | 4 | ViT | each token embedding projected, CLS token, learned positions, pre-LN encoder |
#
# Training follows the original: Adam, step learning-rate decay, cross-entropy, keep the weights with the
# best validation loss.

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from IPython.display import display

from cortex_utils import datasets as tokds
from cortex_utils import distributed, rebuild_command, shipped_checkpoints
from cortex_utils import iem as iemlib
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import note_trained, register, registered
from cortex_utils.checkpoints import read_card
from cortex_utils.notebook import check_parameters, exercise, repo_path, require

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-02 (relative to the repo root)
retrain = False  # train even if a shipped IEM was trained on this exact dataset with these settings
seed = 0
architectures = [1, 2, 3, 4]  # which IEMs to train (1 VGG, 2 deeper VGG, 3 ResNet-SE, 4 ViT)
epochs = 12
batch_size = 128
learning_rate = 0.002
weight_decay = 0.0001
lr_step = 9  # StepLR step in epochs (0: half the epochs)
lr_gamma = 0.1
width = 32  # channels of the first conv stage / ViT width (the original uses 512)
# processes: > 1 trains under torchrun + DistributedDataParallel (batch_size per process; docs/scaling.md)
nproc = 1
solutions = False  # run the exercises' solution cells (a teacher's reveal; make test runs them)

# %%
params = check_parameters(globals(), "03_train_iem")
require(
    len(architectures) > 0 and set(architectures) <= set(iemlib.ARCHITECTURES),
    f"architectures must be a non-empty subset of {sorted(iemlib.ARCHITECTURES)}, got {architectures}",
)
require(epochs >= 1 and batch_size >= 1 and width >= 4, "epochs, batch_size must be >= 1 and width >= 4")
require(learning_rate > 0 and 0 < lr_gamma <= 1, "learning_rate must be > 0 and lr_gamma in (0, 1]")
require(nproc >= 1, f"nproc must be >= 1, got {nproc}")
run_dir = repo_path(run_dir)
(run_dir / "iem").mkdir(parents=True, exist_ok=True)
params

# %% [markdown]
# ## Data: token grids → embeddings
#
# The dataset from notebook 02, read through the tokenizer of this run (a dataset made with another
# codebook is refused). The loader looks up `codebook[ids]` for each batch.

# %%
vq = vqlib.load_run_vq(run_dir)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
codebook = vqlib.codebook(vq)
require(
    all(s in ds.splits for s in ("train", "val")), f"the dataset needs train and val splits, has {ds.splits}"
)
shape = (ds.manifest["embed_dim"], *ds.grid)
print(
    f"dataset {ds.path.name}: {ds.manifest['splits']} images, {len(ds.class_names)} classes, IEM input "
    f"{shape}"
)

# %% [markdown]
# ## Train the four IEMs
#
# Each model's best-validation weights go to `<run_dir>/iem/iem<k>.safetensors` with a JSON card (settings,
# the fingerprint of the train split, the per-epoch log), and the log also to `iem<k>_log.csv`.
#
# The repository ships the four IEMs trained on the default generated dataset (`checkpoints/`), and those
# trained on the second tokenizer family's encoded digits (`checkpoints/vqvae_fsq/`). A shipped IEM is used
# only when it is exactly what this cell would train: same train split (by content fingerprint) and same
# settings; anything else, or `retrain = True`, trains here (about two minutes for all four on 2 CPU cores).
#
# With `nproc > 1` the training runs as a `torchrun` job of `nproc` processes (gloo on CPU, NCCL on GPUs):
# the same `train_iem`, the model wrapped in `DistributedDataParallel`, each process on its share of every
# epoch with batches of `batch_size` (BatchNorm sees the single-process batch size; the global batch is
# `nproc × batch_size`). The notebook waits with a progress bar; a failing process is named. On several
# machines, run the `torchrun` command of `docs/scaling.md` instead.

# %%
train_fp = tokds.split_fingerprint(ds, "train")
training = {
    "epochs": epochs,
    "batch_size": batch_size,
    "lr": learning_rate,
    "weight_decay": weight_decay,
    "lr_step": lr_step or max(1, epochs // 2),
    "lr_gamma": lr_gamma,
    "width": width,
    "seed": seed,
}
if nproc > 1:  # another run than the single-process one: a shipped IEM does not match
    training["nproc"] = nproc
spec = {"in_channels": ds.manifest["embed_dim"], "grid": list(ds.grid), "n_classes": len(ds.class_names)}
train = tokds.embedding_loader(ds, "train", codebook, batch_size=batch_size, shuffle=True, seed=seed)
val = tokds.embedding_loader(ds, "val", codebook, batch_size=512)

# %% [markdown]
# First, which shipped IEM is exactly what we would train here (`shipped_iem` compares the train split's
# fingerprint and every training setting with the checkpoint's card)?

# %%
shipped = {}
for arch in architectures:
    shipped[arch] = (
        (None, "retrain = True")
        if retrain
        else iemlib.shipped_iem(
            shipped_checkpoints(ds.vq_family) / f"iem{arch}.safetensors", train_fp, training
        )
    )
    print(
        f"IEM {arch} ({iemlib.ARCHITECTURES[arch]}): {'load' if shipped[arch][0] else 'train'} "
        f"({shipped[arch][1]})"
    )

# %% [markdown]
# Then load those, and train the others: a fresh model (seeded), Adam + StepLR, the best-validation weights
# kept.

# %%
todo = [arch for arch in architectures if not shipped[arch][0]]
models, logs = dict.fromkeys(architectures), dict.fromkeys(architectures)  # in this order, filled below
for arch in architectures:
    if shipped[arch][0]:
        models[arch] = iemlib.load_iem(shipped[arch][0], expect={"arch": arch, **spec})
        logs[arch] = pd.DataFrame(read_card(shipped[arch][0])["log"])
        logs[arch].to_csv(run_dir / "iem" / f"iem{arch}_log.csv", index=False)

# %%
if nproc > 1:  # torchrun: the same train_iem on every process, DDP; rank 0 writes weights and log
    for arch in todo:
        log_csv = run_dir / "iem" / f"iem{arch}_log.csv"
        out = run_dir / "iem" / f"iem{arch}.safetensors"
        distributed.launch(
            "train-iem",
            nproc=nproc,
            run_dir=run_dir,
            arch=arch,
            out=out,
            log_csv=log_csv,
            width=width,
            epochs=epochs,
            batch_size=batch_size,
            lr=learning_rate,
            weight_decay=weight_decay,
            lr_step=training["lr_step"],
            lr_gamma=lr_gamma,
            seed=seed,
        )
        models[arch] = iemlib.load_iem(out, expect={"arch": arch, **spec})
        logs[arch] = pd.read_csv(log_csv)

# %%
if nproc == 1:
    for arch in todo:
        log_csv = run_dir / "iem" / f"iem{arch}_log.csv"
        torch.manual_seed(seed)
        models[arch] = iemlib.build_iem(arch, spec["in_channels"], ds.grid, spec["n_classes"], width=width)
        logs[arch], _ = iemlib.train_iem(
            models[arch],
            train,
            val,
            epochs=epochs,
            lr=learning_rate,
            weight_decay=weight_decay,
            step_size=training["lr_step"],
            gamma=lr_gamma,
            log_csv=log_csv,
            desc=f"IEM {arch} ({iemlib.ARCHITECTURES[arch]})",
        )

# %% [markdown]
# A model trained here is saved with its card: where its data came from, the settings, the per-epoch log.

# %%
paths = {}
for arch in architectures:
    paths[arch] = shipped[arch][0]
    if not paths[arch]:
        best = logs[arch].loc[logs[arch]["val_loss"].idxmin()]
        paths[arch] = iemlib.save_iem(
            models[arch],
            run_dir / "iem" / f"iem{arch}.safetensors",
            card={
                "kind": "iem",
                "dataset": str(ds.path),
                "vq_fingerprint": ds.manifest["vq_fingerprint"],
                "train_fingerprint": train_fp,
                "training": training,
                "log": logs[arch].to_dict("records"),
                "metrics": {
                    "best_val_loss": float(best["val_loss"]),
                    "val_acc_at_best": float(best["val_acc"]),
                },
                "rebuild": rebuild_command(ds.vq_family),
            },
        )
        note_trained(run_dir, f"IEM {arch}")

# %% [markdown]
# Register the IEMs of this run, so the later notebooks load the same ones.

# %%
for arch in architectures:
    register(run_dir, f"iem{arch}", checkpoint=str(paths[arch]), arch=iemlib.ARCHITECTURES[arch])

# %% [markdown]
# ## How did they do?
#
# Each model's best epoch (lowest validation loss, the weights we kept), its size and where it came from.

# %%
summary = []
for arch in architectures:
    log, best = logs[arch], logs[arch].loc[logs[arch]["val_loss"].idxmin()]
    summary.append(
        {
            "IEM": arch,
            "architecture": iemlib.ARCHITECTURES[arch],
            "parameters": iemlib.count_parameters(models[arch]),
            "source": "shipped" if shipped[arch][0] else "trained here",
            "best epoch": int(best["epoch"]),
            "val loss": best["val_loss"],
            "val accuracy": best["val_acc"],
            "train seconds": log["seconds"].sum(),
        }
    )
display(pd.DataFrame(summary))

# %%
curves = pd.concat([logs[arch].assign(iem=f"{arch} {iemlib.ARCHITECTURES[arch]}") for arch in architectures])
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
sns.lineplot(data=curves, x="epoch", y="val_acc", hue="iem", marker="o", ax=axes[0]).set_title(
    "validation accuracy"
)
sns.lineplot(data=curves, x="epoch", y="train_loss", hue="iem", ax=axes[1]).set_title("training loss")
fig.tight_layout()

# %% [markdown]
# ## Exercises

# %% [markdown] tags=["exercise"]
# **1. How big is each IEM?** A model's parameters are the numbers its optimiser changes: every weight and
# bias tensor. Count them for each IEM in `models` yourself (hint: `model.parameters()` yields the tensors,
# `t.numel()` counts a tensor's numbers). Which architecture is largest, and which part of it holds most of
# its parameters (look at `models[1]`: is it the convolutions or the fully connected head)?
#
# Write your answer as `answer_1 = {arch: count, ...}`: a dict from the IEM number (int) to its parameter
# count (int).

# %% tags=["solution"]
if solutions:
    answer_1 = {arch: sum(t.numel() for t in models[arch].parameters()) for arch in architectures}
    print(answer_1)


# %% tags=["exercise-check"]
def check_1(a):
    truth = {arch: iemlib.count_parameters(models[arch]) for arch in architectures}
    assert set(a) == set(truth), f"give a count for each IEM in {sorted(truth)}, got keys {sorted(a)}"
    wrong = {k: a[k] for k in truth if int(a[k]) != truth[k]}
    assert not wrong, f"the counts of IEM(s) {sorted(wrong)} are off"
    return True


exercise(
    "1",
    globals(),
    check=check_1,
    hint="sum t.numel() over model.parameters(), one model at a time",
    solutions=solutions,
)
# %% [markdown] tags=["exercise"]
# **2. Which IEM reached the lowest validation loss, and when?** Read the per-epoch logs (`logs[arch]`, one
# `pandas` table per IEM, also written to `<run_dir>/iem/iem<k>_log.csv`) and find the IEM and the epoch
# with the lowest `val_loss` over all of them. Is it the same IEM as the one with the best validation
# accuracy? Does the best epoch come before or after the learning-rate step (`lr_step`)?
#
# Write your answer as `answer_2 = (arch, epoch)`: two ints, the IEM number and the epoch as in the log's
# `epoch` column.

# %% tags=["solution"]
if solutions:
    best_of = {arch: logs[arch]["val_loss"].min() for arch in architectures}
    arch_best = min(best_of, key=best_of.get)
    answer_2 = (arch_best, int(logs[arch_best].loc[logs[arch_best]["val_loss"].idxmin(), "epoch"]))
    print(answer_2)


# %% tags=["exercise-check"]
def check_2(a):
    arch, epoch = int(a[0]), int(a[1])
    on_disk = {
        k: pd.read_csv(run_dir / "iem" / f"iem{k}_log.csv") for k in architectures
    }  # the logs as written
    assert arch in on_disk, f"IEM {arch} was not trained in this run ({architectures})"
    lowest = min(log["val_loss"].min() for log in on_disk.values())
    row = on_disk[arch].loc[on_disk[arch]["epoch"] == epoch, "val_loss"]
    assert len(row) == 1, f"IEM {arch}'s log has no epoch {epoch}"
    assert abs(float(row.iloc[0]) - lowest) <= 1e-9 * max(1.0, abs(lowest)), (
        f"IEM {arch} at epoch {epoch} has val_loss {float(row.iloc[0]):.4f}; the lowest is {lowest:.4f}"
    )
    return True


exercise(
    "2",
    globals(),
    check=check_2,
    hint="take each log's val_loss minimum, then the smallest of those",
    solutions=solutions,
)
