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
# # 02 · A labelled token dataset
#
# CORTEX learns what a concept looks like *in tokens* from token grids labelled with their concept. The
# paper (*Concept-Centric Token Interpretation for Vector-Quantized Generative Models*, Yang et al., see
# notebook 01) samples them per class from a **class-conditional transformer**.
# `source` picks where this run's grids come from:
#
# | `source` | the token grids |
# |---|---|
# | `generated` (default) | sampled per class by a taming `Net2NetTransformer` (class token → 64 tokens) |
# | `encoded` | real images through the tokenizer: the MNIST digits, or `image_folder` |
# | `imported` | the original CORTEX CSVs (`filename,label,indices`) |
#
# The second tokenizer family (`vqvae_fsq`) has no transformer here, so its dataset is `encoded`.

# %%
import time

import numpy as np
import torch
from IPython.display import Markdown, display

from cortex_run import datasets as tokds
from cortex_run import digits, evaluators, plots, prepare, tokenizers
from cortex_run import generation as gen
from cortex_run.artifacts import record_metrics
from cortex_run.notebook import check_parameters, choice, repo_path, require
from cortex_utils import evaluation
from cortex_utils import vq as vqlib

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory notebook 01 wrote (relative to the repo root)
seed = 0
device = "auto"  # where models compute: auto (CUDA, else MPS, else CPU) | cpu | cuda:1 (docs/scaling.md)
source = "generated"  # generated | encoded | imported
dataset_name = ""  # folder name under <run_dir>/datasets ("" -> the source's name)
retrain = False  # retrain the transformer and the evaluators instead of loading the shipped ones
regenerate = False  # make the whole dataset here instead of loading the shipped one (data/<family>/)
keep_evaluators = False  # with retrain: still load the shipped evaluators
transformer_steps = 2000  # training steps (batch of 64 token grids) when retraining
transformer_lr = 0.003
transformer_layers = 3
transformer_heads = 4
transformer_width = 96
colourings = 4  # each training digit is tokenized in this many random colours for the transformer
bf16 = "auto"  # bfloat16 autocast when retraining: auto (on with AMX tiles) | on | off
per_class_train = 300  # generated images per class and split
per_class_val = 50
per_class_test = 50
temperature = 0.7  # sampling temperature (below 1: fewer off-class samples, less variety)
top_k = 10  # sample among the k most likely tokens (0: all)
evaluator = {"steps": 400, "floor": 0.8}  # evaluators: training steps (batch 64); held-out accuracy floor
transformer_config = ""  # a taming Net2NetTransformer config YAML (e.g. cin_transformer), with...
transformer_checkpoint = ""  # ...its .ckpt; "" -> the embedded default
trust_pickle = False  # allow a .ckpt that needs full unpickling (only for files you trust)
image_folder = ""  # with source "encoded": an ImageFolder tree of real images ("" -> the MNIST digits)
csv_train = ""  # with source "imported": the original CORTEX split CSVs
csv_val = ""
csv_test = ""
n_show = 10

# %%
check_parameters(globals(), "02_dataset_generation")
choice("source", source, ["generated", "encoded", "imported"])
choice("bf16", bf16, ["auto", "on", "off"])
require(min(per_class_train, per_class_val, per_class_test) >= 1, "per_class_* must be >= 1")
require(temperature > 0 and top_k >= 0 and transformer_lr > 0, "temperature, transformer_lr > 0, top_k >= 0")
require(min(transformer_steps, evaluator["steps"], colourings) >= 1, "steps and colourings must be >= 1")
require(0 <= evaluator["floor"] <= 1, "the evaluator floor must lie in [0, 1]")
require(bool(transformer_config) == bool(transformer_checkpoint), "give both transformer_* files, or neither")
require(source != "imported" or bool(csv_train), "source=imported needs at least csv_train")
run_dir = repo_path(run_dir)
dataset_dir = run_dir / "datasets" / (dataset_name or source)
_ = torch.manual_seed(seed)

# %% [markdown]
# ## The tokenizer and two independent judges
#
# Token ids mean something only with *their* codebook, so the dataset records the fingerprint of notebook
# 01's tokenizer. Two **evaluators**, pixel classifiers (a CNN and a ResNet) trained only on real images (the
# digits, or your `image_folder`'s), will judge whether grids show their class; their held-out accuracy is the
# ceiling.

# %%
vq = tokenizers.load_run_vq(run_dir, device)
meta = vqlib.vq_meta(vq)
data, class_names = prepare.images_for_run(image_folder if source == "encoded" else "", meta, seed)
judges = prepare.evaluators_for_run(
    run_dir, data, retrain=retrain and not keep_evaluators, evaluator=evaluator, seed=seed, device=device
)
real = digits.to_model_input(data["test"]["images"])
for arch, model in judges.items():
    print(f"{arch} on the real test images: {evaluators.accuracy(model, real, data['test']['labels']):.3f}")

# %% [markdown]
# ## The prior: a class-conditional transformer
#
# The **prior** is the generative half of the VQGM: a model of which token grids are likely, here given a
# class. It writes a grid one token at a time after the class token. The shipped one learned from the training
# digits' token grids; `retrain = True` trains it here (needed with a retrained tokenizer).

# %%
tf, tf_path = None, None
if source == "generated":
    recipe = {"steps": transformer_steps, "lr": transformer_lr, "layers": transformer_layers}
    recipe.update(heads=transformer_heads, width=transformer_width, colourings=colourings, bf16=bf16)
    files = {"config": transformer_config, "checkpoint": transformer_checkpoint, "trust_pickle": trust_pickle}
    tf, tf_path, tf_log, class_names = prepare.transformer_for_run(
        run_dir, vq, data, retrain=retrain, seed=seed, training=recipe, **files
    )
    if tf_log is not None:
        plots.training_curves(tf_log, ["loss", "val_loss"], title="transformer training")

# %% [markdown]
# Sampling, by hand: `n_show` grids per class (ten classes at most), each position drawn among the
# `top_k` most likely tokens at `temperature`, then decoded to pixels.

# %%
if tf is not None:
    live_labels = np.repeat(np.arange(min(len(class_names), 10)), n_show)
    draw = {"temperature": temperature, "top_k": top_k or None, "seed": seed + 1, "progress": False}
    live = gen.sample_tokens(tf, live_labels, **draw)
    live_images = vqlib.decode(vq, live)
    print(f"{len(live)} grids of shape {tuple(live.shape[1:])}; the first: {live[0, 0].tolist()} ...")
    rows = {class_names[c]: live_images[live_labels == c] for c in np.unique(live_labels)}
    plots.rows_of_images(rows, ncols=n_show)

# %% [markdown]
# ## The dataset
#
# Sampled on two computers, a dataset differs in the odd token (float32 logits differ in the last bits), so
# the default one is shipped (`data/default/generated`) and loaded when every setting matches its card.

# %%
sampling = {
    "per_class": {"train": per_class_train, "val": per_class_val, "test": per_class_test},
    "temperature": temperature,
    "top_k": top_k,
}
ds, made = prepare.token_dataset(
    run_dir, dataset_dir, vq, data, source=source, seed=seed, regenerate=regenerate or retrain, tf=tf,
    tf_path=tf_path, class_names=class_names, own_transformer=bool(transformer_checkpoint), sampling=sampling,
    image_folder=image_folder, csvs={"train": csv_train, "val": csv_val, "test": csv_test},
)  # fmt: skip
print(f"dataset: {made}")
print(", ".join(f"{s}: {len(y)} grids" for s, y in ds.labels.items()), f"over {len(ds.class_names)} classes")

# %% [markdown]
# ## Do the evaluators see the intended class?
#
# Each evaluator classifies every decoded test grid; accuracy is against the class the grid was generated
# for (or labelled with). Our bar for generated data: **90 %**.

# %%
shown = "test" if "test" in ds.tokens else next(iter(ds.tokens))  # an import may hold only some splits
labels = ds.labels[shown].astype(np.int64)
images = vqlib.decode(vq, torch.from_numpy(ds.tokens[shown].astype(np.int64)))
judged = ds.class_names == class_names and data["test"]["images"].shape[1:] == images.shape[1:]
preds = {a: evaluation.predict_logits(m, images).argmax(1).numpy() for a, m in judges.items() if judged}
mean_acc = float(np.mean([(p == labels).mean() for p in preds.values()])) if judged else float("nan")
print(
    f"mean evaluator accuracy on the {source} {shown} grids: {mean_acc:.3f}"
    if judged
    else "no evaluator fits"
)
if judged:
    plots.confusion(labels, preds["cnn"], ds.class_names, title=f"cnn evaluator on {source} {shown} grids")

# %%
if judged and source == "generated":
    record_metrics(run_dir, generated_evaluator_accuracy=round(mean_acc, 4))

# %% [markdown]
# ## The format: small and fast
#
# Per split, ids (uint8 for ≤ 256 codes) and labels as `.npy`, plus `manifest.json`; the original CORTEX
# stored a 256 KB embedding an image. Embeddings (`codebook[ids]`) are looked up when read.

# %%
t0 = time.perf_counter()
loaded = tokds.load_token_dataset(dataset_dir, vq=vq)
load_seconds = time.perf_counter() - t0
bytes_per_image = tokds.dataset_bytes(dataset_dir) / sum(len(y) for y in loaded.labels.values())
record_metrics(run_dir, dataset_bytes_per_image=round(bytes_per_image, 2), device=device)
record_metrics(run_dir, dataset_load_seconds=round(load_seconds, 4))
print(f"{bytes_per_image:.1f} bytes an image, all splits loaded in {load_seconds * 1000:.1f} ms")
csv = tokds.export_cortex_csv(loaded, shown, run_dir / f"exports/{dataset_dir.name}_{shown}_embeddings.csv")
print(f"the {shown} split in the original CSV layout: exports/{csv.name}")

# %% [markdown]
# ## Summary

# %%
n_grids, origin = sum(len(y) for y in ds.labels.values()), made.split(" (")[0]
display(Markdown(f"""
- {n_grids} token grids of {len(ds.class_names)} classes, {origin}.
- The evaluators agree with the grids' classes on {mean_acc:.1%} of the {shown} split.
- A grid costs {bytes_per_image:.0f} bytes on disk.
"""))  # fmt: skip

# %% [markdown]
# ## Questions
#
# 1. Why does CORTEX need token grids labelled with their concept?
# 2. How does the class-conditional transformer produce a grid?
# 3. What do `temperature` and `top_k` change in sampling?
# 4. Why are the evaluators trained on real digits only?
# 5. Why does the repository ship the generated dataset instead of sampling it in every run?
# 6. Why is a token grid so much smaller on disk than its embeddings?
