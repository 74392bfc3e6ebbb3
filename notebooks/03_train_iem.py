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

from cortex_utils import SHIPPED_CHECKPOINTS, distributed
from cortex_utils import datasets as tokds
from cortex_utils import iem as iemlib
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import note_trained, read_card, register, registered
from cortex_utils.notebook import check_parameters, repo_path, require

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
nproc = 1  # processes: > 1 trains under torchrun + DistributedDataParallel (batch_size per process; docs/scaling.md)

# %%
params = check_parameters(globals(), "03_train_iem")
require(len(architectures) > 0 and set(architectures) <= set(iemlib.ARCHITECTURES),
        f"architectures must be a non-empty subset of {sorted(iemlib.ARCHITECTURES)}, got {architectures}")
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
require(all(s in ds.splits for s in ("train", "val")), f"the dataset needs train and val splits, has {ds.splits}")
shape = (ds.manifest["embed_dim"], *ds.grid)
print(f"dataset {ds.path.name}: {ds.manifest['splits']} images, {len(ds.class_names)} classes, IEM input {shape}")

# %% [markdown]
# ## Train the four IEMs
#
# Each model's best-validation weights go to `<run_dir>/iem/iem<k>.safetensors` with a JSON card (settings,
# the fingerprint of the train split, the per-epoch log), and the log also to `iem<k>_log.csv`.
#
# The repository ships the four IEMs trained on the default generated dataset. A shipped IEM is used only
# when it is exactly what this cell would train: same train split (by content fingerprint) and same
# settings; anything else, or `retrain = True`, trains here (about two minutes for all four on 2 CPU cores).
#
# With `nproc > 1` the training runs as a `torchrun` job of `nproc` processes (gloo on CPU, NCCL on GPUs):
# the same `train_iem`, the model wrapped in `DistributedDataParallel`, each process on its share of every
# epoch with batches of `batch_size` (BatchNorm sees the single-process batch size; the global batch is
# `nproc × batch_size`). The notebook waits with a progress bar; a failing process is named. On several
# machines, run the `torchrun` command of `docs/scaling.md` instead.

# %%
train_fp = tokds.split_fingerprint(ds, "train")
training = {"epochs": epochs, "batch_size": batch_size, "lr": learning_rate, "weight_decay": weight_decay,
            "lr_step": lr_step or max(1, epochs // 2), "lr_gamma": lr_gamma, "width": width, "seed": seed}
if nproc > 1:  # another run than the single-process one: a shipped IEM does not match
    training["nproc"] = nproc
spec = {"in_channels": ds.manifest["embed_dim"], "grid": list(ds.grid), "n_classes": len(ds.class_names)}
train = tokds.embedding_loader(ds, "train", codebook, batch_size=batch_size, shuffle=True, seed=seed)
val = tokds.embedding_loader(ds, "val", codebook, batch_size=512)
logs, summary = [], []
for arch in architectures:
    name = iemlib.ARCHITECTURES[arch]
    shipped, why = (None, "retrain = True") if retrain else iemlib.shipped_iem(
        SHIPPED_CHECKPOINTS / f"iem{arch}.safetensors", train_fp, training)
    if shipped:
        model, path = iemlib.load_iem(shipped, expect={"arch": arch, **spec}), shipped
        log = pd.DataFrame(read_card(shipped)["log"])
        log.to_csv(run_dir / "iem" / f"iem{arch}_log.csv", index=False)
    elif nproc > 1:  # torchrun: the same train_iem on every process, DDP; rank 0 writes weights and log
        out = run_dir / "iem" / f"iem{arch}.safetensors"
        distributed.launch("train-iem", nproc=nproc, run_dir=run_dir, arch=arch, out=out,
                           log_csv=run_dir / "iem" / f"iem{arch}_log.csv", width=width, epochs=epochs,
                           batch_size=batch_size, lr=learning_rate, weight_decay=weight_decay,
                           lr_step=training["lr_step"], lr_gamma=lr_gamma, seed=seed)
        model = iemlib.load_iem(out, expect={"arch": arch, **spec})
        log = pd.read_csv(run_dir / "iem" / f"iem{arch}_log.csv")
    else:
        torch.manual_seed(seed)
        model = iemlib.build_iem(arch, spec["in_channels"], ds.grid, spec["n_classes"], width=width)
        log, _ = iemlib.train_iem(model, train, val, epochs=epochs, lr=learning_rate, weight_decay=weight_decay,
                                  step_size=training["lr_step"], gamma=lr_gamma,
                                  log_csv=run_dir / "iem" / f"iem{arch}_log.csv", desc=f"IEM {arch} ({name})")
    if not shipped:
        best = log.loc[log["val_loss"].idxmin()]
        path = iemlib.save_iem(model, run_dir / "iem" / f"iem{arch}.safetensors", card={
            "kind": "iem", "dataset": str(ds.path), "vq_fingerprint": ds.manifest["vq_fingerprint"],
            "train_fingerprint": train_fp, "training": training, "log": log.to_dict("records"),
            "metrics": {"best_val_loss": float(best["val_loss"]), "val_acc_at_best": float(best["val_acc"])},
            "rebuild": "make checkpoints"})
        note_trained(run_dir, f"IEM {arch}")
    print(f"IEM {arch} ({name}): {'loaded' if shipped else 'trained here'} ({why})")
    register(run_dir, f"iem{arch}", checkpoint=str(path), arch=name)
    logs.append(log.assign(iem=f"{arch} {name}"))
    best = log.loc[log["val_loss"].idxmin()]
    summary.append({"IEM": arch, "architecture": name, "parameters": iemlib.count_parameters(model),
                    "source": "shipped" if shipped else "trained here", "best epoch": int(best["epoch"]),
                    "val loss": best["val_loss"], "val accuracy": best["val_acc"], "train seconds": log["seconds"].sum()})
display(pd.DataFrame(summary))

# %%
curves = pd.concat(logs)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
sns.lineplot(data=curves, x="epoch", y="val_acc", hue="iem", marker="o", ax=axes[0]).set_title("validation accuracy")
sns.lineplot(data=curves, x="epoch", y="train_loss", hue="iem", ax=axes[1]).set_title("training loss")
fig.tight_layout()
