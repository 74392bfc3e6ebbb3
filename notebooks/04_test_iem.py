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
import torch
from IPython.display import display

from cortex_utils import datasets as tokds
from cortex_utils import iem as iemlib
from cortex_utils import plots
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import record_metrics, registered
from cortex_utils.notebook import check_parameters, repo_path, require

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory of notebooks 01-03 (relative to the repo root)
architectures = [1, 2, 3, 4]  # which trained IEMs to test
split = "test"
batch_size = 512

# %%
params = check_parameters(globals(), "04_test_iem")
require(len(architectures) > 0 and set(architectures) <= set(iemlib.ARCHITECTURES),
        f"architectures must be a non-empty subset of {sorted(iemlib.ARCHITECTURES)}")
require(batch_size >= 1, "batch_size must be >= 1")
run_dir = repo_path(run_dir)
params

# %%
vq = vqlib.load_run_vq(run_dir)
ds = tokds.load_token_dataset(registered(run_dir, "dataset")["path"], vq=vq)
require(split in ds.splits, f"split {split!r} not in the dataset ({ds.splits})")
loader = tokds.embedding_loader(ds, split, vqlib.codebook(vq), batch_size=batch_size)
expect = {"in_channels": ds.manifest["embed_dim"], "grid": list(ds.grid), "n_classes": len(ds.class_names)}
rows, preds = [], {}
for arch in architectures:
    model = iemlib.load_iem(registered(run_dir, f"iem{arch}")["checkpoint"], expect={"arch": arch, **expect})
    res = iemlib.evaluate_iem(model, loader)
    logits, labels = iemlib.predict(model, loader)
    preds[arch] = logits.argmax(1).numpy()
    rows.append({"IEM": arch, "architecture": iemlib.ARCHITECTURES[arch],
                 **{k: res[k] for k in ("top1", "top3", "top5", "top10")}})
    record_metrics(run_dir, **{f"iem{arch}_test_top1": round(res["top1"], 4)})
table = pd.DataFrame(rows)
display(table.style.format({k: "{:.3f}" for k in ("top1", "top3", "top5", "top10")}))
if 1 in architectures:
    top1 = float(table.loc[table["IEM"] == 1, "top1"].iloc[0])
    print(f"IEM 1 top-1 on {split}: {top1:.3f} (bar 0.95) -> " + ("meets the bar" if top1 >= 0.95 else "BELOW the bar"))

# %%
long = table.melt(id_vars=["IEM", "architecture"], value_vars=["top1", "top3", "top5", "top10"], var_name="k", value_name="accuracy")
plots.bar_table(long, x="architecture", y="accuracy", hue="k", title=f"IEM accuracy on the {split} split", ylim=(0, 1.02));

# %%
labels = ds.labels[split].astype(np.int64)
for arch in architectures[:2]:
    plots.confusion(labels, preds[arch], ds.class_names, title=f"IEM {arch} ({iemlib.ARCHITECTURES[arch]}), {split} split");
