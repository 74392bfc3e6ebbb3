"""The bias study, the paper's DALL·E-mini measurement: do a generator's neutral-prompt generations lean
toward one value of an attribute?

One study is a token dataset of attribute-labelled generations (two classes, the attribute's values A and B;
a train split and at least one held-out split, val or test) and the neutral-prompt generations to measure.
Its steps, each a function that notebook 10 (the planted-bias generator of ``planted_bias``) and notebook 13
(token CSVs in the original's layout, ``load_real_study``) call in turn:

1. ``attribute_iem``: an IEM of notebook 03 trained on the attribute (or the shipped one); ``iem_accuracy``;
2. ``attribute_tis``: its TIS of the training images (notebook 05's ``tis.compute_tis``);
3. ``select_attribute_tokens``: notebook 06's concept table at ``top_n`` and, per value, its ``token_num``
   most counted ids that are specific to it (``specific_tokens``);
4. ``study_counts``: per image, how many positions hold A's tokens and how many B's (``token_counts``), in the
   neutral generations, in the training images and in the held-out images;
5. ``estimate_bias``: the paper's Cliff's δ of the neutral counts and the share of A among the neutral
   generations with its interval (the statistics: ``bias_stats``); ``recount_on`` re-selects the tokens in
   every bootstrap resample.

Then what the notebooks record (``headline_metrics``, ``real_data_metrics``) and conclude (``verdict_line``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cortex_run import SHIPPED_CHECKPOINTS
from cortex_run import datasets as tokds
from cortex_run.artifacts import repo_relative
from cortex_run.checkpoints import read_card

from . import concepts as conceptlib
from . import iem as iemlib
from . import tis as tislib
from .bias_stats import bias_share, count_delta, share_verdict

CONCEPT_TABLE_TOP = 100  # ids per value in the attribute concept table, before the specificity filter
TIS_BATCH = 100  # SmoothGrad's noise scale is set per batch: the study's TIS, and its numbers, depend on it


# --- 1. the attribute IEM ------------------------------------------------------------------------------


def check_attribute_data(ds) -> np.ndarray:
    """Raise unless ``ds`` holds two attribute values, both in its train split; return the train labels."""
    if len(ds.class_names) != 2:
        raise ValueError(f"a bias study compares two attribute values, the dataset has {ds.class_names}")
    train_y = ds.labels["train"].astype(np.int64)
    present = np.bincount(train_y, minlength=2)
    if (present == 0).any():
        missing = [ds.class_names[i] for i in np.flatnonzero(present == 0)]
        raise ValueError(f"only one attribute value in the training generations (none of {missing})")
    return train_y


def attribute_iem(ds, codebook, name: str, training: dict, retrain: bool = False, out_dir=None):
    """The attribute IEM of one study (``name``, e.g. ``colour_digit_3``): the shipped
    ``checkpoints/attribute_iem_<name>.safetensors`` if it was trained on exactly this dataset's train split
    with exactly ``training`` (arch, width, epochs, lr, batch_size, seed), else trained here on the
    study's train split (best validation loss kept) and saved to ``out_dir``. Returns ``(model, info)``,
    ``info`` = ``{"path": weights or None, "log": training log, "trained": bool, "why": str}``."""
    check_attribute_data(ds)
    fp = tokds.split_fingerprint(ds, "train")
    spec = {
        "arch": training["arch"],
        "in_channels": ds.manifest["embed_dim"],
        "grid": list(ds.grid),
        "n_classes": 2,
    }
    shipped, why = (
        (None, "retrain = True")
        if retrain
        else iemlib.shipped_iem(SHIPPED_CHECKPOINTS / f"attribute_iem_{name}.safetensors", fp, training)
    )
    if shipped:
        info = {"path": shipped, "log": pd.DataFrame(read_card(shipped)["log"]), "trained": False, "why": why}
        return iemlib.load_iem(shipped, expect=spec), info
    iemlib.seed_everything(training["seed"])
    model = iemlib.build_iem(training["arch"], ds.manifest["embed_dim"], ds.grid, 2, training["width"])
    train = tokds.embedding_loader(
        ds, "train", codebook, training["batch_size"], shuffle=True, seed=training["seed"]
    )
    val = tokds.embedding_loader(ds, "val", codebook, 256)
    log, _ = iemlib.train_iem(
        model, train, val, epochs=training["epochs"], lr=training["lr"], desc=f"train attribute IEM {name}"
    )
    path = None
    if out_dir is not None:
        best = log.loc[log["val_loss"].idxmin()]
        path = iemlib.save_iem(
            model,
            Path(out_dir) / f"attribute_iem_{name}.safetensors",
            card={
                "kind": "attribute_iem",
                "study": name,
                "dataset": repo_relative(ds.path) if ds.path else None,
                "vq_fingerprint": ds.manifest["vq_fingerprint"],
                "train_fingerprint": fp,
                "training": training,
                "log": log.to_dict("records"),
                "metrics": {
                    "best_val_loss": float(best["val_loss"]),
                    "val_acc_at_best": float(best["val_acc"]),
                },
                "rebuild": "make checkpoints",
            },
        )
    return model, {"path": path, "log": log, "trained": True, "why": why}


def held_out_splits(ds) -> list[str]:
    """The study's held-out splits (every split but train): they measure the IEM's accuracy and the token
    rule's error rates, so there must be one."""
    held = [s for s in ds.splits if s != "train"]
    if not held:
        raise ValueError(
            "the share estimate measures its rule's error rates on held-out labelled images: the "
            "attribute dataset needs a val or test split besides train"
        )
    return held


def iem_accuracy(model, ds, codebook) -> tuple[float, str]:
    """``(top-1 accuracy, split)`` of the attribute IEM on the study's test split (its val split when it has
    no test split)."""
    held_out_splits(ds)
    split = "test" if "test" in ds.splits else "val"
    return iemlib.evaluate_iem(model, tokds.embedding_loader(ds, split, codebook, 256), ks=(1,))[
        "top1"
    ], split


# --- 2. the TIS of the training images -----------------------------------------------------------------


def attribute_tis(
    model, ds, codebook, nsamples: int = 20, seed: int = 0, out=None, method: str = "smoothgrad", **options
) -> np.ndarray:
    """The attribute IEM's TIS of the study's training images, ``(N, h, w)``: ``tis.compute_tis`` by
    ``method`` (the run's, notebook 05's; SmoothGrad by default; ``options``: its ``steps``, ``baseline``,
    ``group``) in batches of ``TIS_BATCH``, written to ``out`` (``.npy``) when given."""
    train_y = check_attribute_data(ds)
    return tislib.compute_tis(
        model,
        tokds.embedding_loader(ds, "train", codebook, TIS_BATCH),
        len(train_y),
        nsamples=nsamples,
        seed=seed,
        desc="attribute TIS",
        out=out,
        method=method,
        **options,
    )


# --- 3. attribute tokens -------------------------------------------------------------------------------


def select_attribute_tokens(
    ds, tis, top_n: int = 5, token_num: int = 20, specificity: float = 2.0, rows=None
) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """Each attribute value's tokens, from the TIS of the training images: notebook 06's concept table
    (``concepts.concept_tokens`` at ``top_n``) of the train split's ``rows`` (default all of them; the
    bootstrap passes a resample), then ``specific_tokens``. Returns ``(table, {label: ids})``."""
    tokens, labels, tis = _training_rows(ds, tis, rows)
    table = conceptlib.concept_tokens(
        tokens,
        labels,
        tis,
        ds.class_names,
        ds.manifest["n_embed"],
        top_ns=(top_n,),
        top=CONCEPT_TABLE_TOP,
    )
    return table, specific_tokens(table, top_n, token_num, tokens, labels, specificity)


def _training_rows(ds, tis, rows=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The train split's token grids, labels and TIS maps at ``rows`` (default all), the maps checked
    against the images."""
    train_y = check_attribute_data(ds)
    tis = np.asarray(tis)
    if len(tis) != len(train_y):
        raise ValueError(f"one TIS map per training image: {len(train_y)} images, {len(tis)} maps")
    rows = np.arange(len(train_y)) if rows is None else np.asarray(rows)
    return ds.tokens["train"][rows], train_y[rows], tis[rows]


def specific_tokens(
    concepts: pd.DataFrame, top_n: int, token_num: int, tokens=None, labels=None, specificity: float = 2.0
) -> dict[int, np.ndarray]:
    """Each attribute value's ``token_num`` tokens: its ids ranked by the TIS concept count (a
    ``concepts.concept_tokens`` table at ``top_n``), keeping only ids *specific* to the value: per image of
    the value they occur at least ``specificity`` times as often as per image of the other value (in the
    training grids ``tokens``/``labels``). An IEM may recognise one value by the absence of the other's
    marks; its TIS then points at background ids that every image holds, which say nothing about the
    value. ``specificity`` 0 keeps the plain TIS ranking."""
    t = concepts[(concepts["top_n"] == top_n) & (concepts["label"] >= 0)]
    ranked = {int(c): g.sort_values("rank")["token"].to_numpy() for c, g in t.groupby("label")}
    return _specific(ranked, token_num, tokens, labels, specificity)


def attribute_token_ids(
    ds, tis, top_n: int = 5, token_num: int = 20, specificity: float = 2.0, rows=None
) -> dict[int, np.ndarray]:
    """``select_attribute_tokens``'s ids without its table, for the bootstrap, which selects the tokens again
    on every resample (building the table costs most of the time there): the same ranking, each value's ids
    by their TIS concept count (``concepts.concept_counts``; ties: the smaller id; the table's first
    ``CONCEPT_TABLE_TOP`` with a count), then ``specific_tokens``'s filter."""
    tokens, labels, tis = _training_rows(ds, tis, rows)
    present = np.bincount(np.asarray(labels).astype(np.int64), minlength=len(ds.class_names))
    if (present == 0).any():
        raise ValueError(
            f"class(es) with no images: {[ds.class_names[i] for i in np.flatnonzero(present == 0)]}"
        )
    counts = conceptlib.concept_counts(
        tokens, labels, tis, len(ds.class_names), ds.manifest["n_embed"], top_ns=(top_n,)
    )[f"counts{top_n}"]
    order = np.argsort(-counts, axis=1, kind="stable")[:, :CONCEPT_TABLE_TOP]
    ranked = {c: order[c][counts[c, order[c]] > 0] for c in range(len(counts))}
    ranked = {c: v for c, v in ranked.items() if len(v)}
    return _specific(ranked, token_num, tokens, labels, specificity)


def _specific(ranked: dict, token_num: int, tokens, labels, specificity: float) -> dict[int, np.ndarray]:
    """``specific_tokens`` from each value's ranked ids."""
    if len(ranked) != 2:
        raise ValueError(
            f"attribute tokens need two attribute values with concept tokens, got {sorted(ranked)}"
        )
    if specificity > 0:
        if tokens is None or labels is None:
            raise ValueError("specificity needs the training grids (tokens and labels)")
        labels = np.asarray(labels).astype(np.int64)
        n_embed = int(max(np.asarray(tokens).max(), max(v.max() for v in ranked.values()))) + 1
        rate = (
            conceptlib.token_frequencies(tokens, labels, 2, n_embed)
            / np.bincount(labels, minlength=2)[:, None]
        )
        ranked = {c: v[rate[c, v] >= specificity * rate[1 - c, v]] for c, v in ranked.items()}
    return {c: np.asarray(v[:token_num], dtype=np.int64) for c, v in ranked.items()}


# --- 4. counts -----------------------------------------------------------------------------------------


def token_counts(tokens, ids) -> np.ndarray:
    """Per image, how many of its grid positions hold one of ``ids``."""
    tokens = np.asarray(tokens)
    return np.isin(tokens.reshape(len(tokens), -1), np.asarray(ids)).sum(1)


def study_counts(ds, ids: dict, neutral, planted: int, held_truth: dict | None = None) -> dict:
    """Per image, how many of its positions hold value A's tokens and how many B's: A is the label
    ``planted`` (both statistics are signed toward it), ``ids`` each label's tokens
    (``select_attribute_tokens``).

    * ``neutral``: ``(A counts, B counts)`` of the neutral-prompt generations ``neutral`` (token grids);
    * ``fit``: ``(A counts, B counts, is A)`` of the training images, the ones the tokens were selected on
      (the share's threshold is fitted there);
    * ``calibration``: the same for the held-out images (val and test, which played no part in choosing the
      tokens), which measure the token rule's error rates;
    * ``calibration_prompts``: with ``held_truth``, whether each held-out image's prompt named A, else None;
    * ``n_tokens``: how many tokens A and B have.

    ``held_truth``: ``{split: bool array}`` for every held-out split, whether each image truly shows A by a
    labeller independent of the prompt (notebook 10: its pixels). The error rates are then measured against
    what the images show, and the share estimates the share of neutral images that *show* A. By default each
    held-out image counts as the value its prompt named, and the estimate is the neutral set's mixture weight
    between the two prompts' outputs: the same number only when the generator always draws what the prompt
    names. A value with no tokens (no top id specific to it) counts 0 everywhere."""
    train_y = check_attribute_data(ds)
    if len(neutral) == 0:
        raise ValueError("empty neutral set: no neutral generations to measure")
    if planted not in (0, 1):
        raise ValueError(f"planted must be the label 0 or 1, got {planted!r}")
    held = held_out_splits(ds)
    held_tokens = np.concatenate([ds.tokens[s] for s in held])
    held_y = np.concatenate([ds.labels[s] for s in held]).astype(np.int64)
    if held_truth is None:
        held_is_a = held_y == planted
    else:
        if sorted(held_truth) != sorted(held):
            raise ValueError(f"held_truth must give every held-out split {held}, got {sorted(held_truth)}")
        held_is_a = np.concatenate([np.asarray(held_truth[s], dtype=bool).ravel() for s in held])
        if held_is_a.shape != held_y.shape:
            raise ValueError(
                f"held_truth: one value per held-out image ({held_y.size}), got {held_is_a.size}"
            )
        if held_is_a.all() or not held_is_a.any():
            raise ValueError(
                "held_truth: the held-out images must show both values to measure the rule's error rates"
            )
    a, b = ids[planted], ids[1 - planted]
    train = ds.tokens["train"]
    return {
        "neutral": (token_counts(neutral, a), token_counts(neutral, b)),
        "fit": (token_counts(train, a), token_counts(train, b), train_y == planted),
        "calibration": (token_counts(held_tokens, a), token_counts(held_tokens, b), held_is_a),
        "calibration_prompts": None if held_truth is None else held_y == planted,
        "n_tokens": (len(a), len(b)),
    }


# --- 5. the estimate -----------------------------------------------------------------------------------


def recount_on(
    ds,
    tis,
    neutral,
    planted: int,
    held_truth: dict | None = None,
    top_n: int = 5,
    token_num: int = 20,
    specificity: float = 2.0,
):
    """The bootstrap's token re-selection (``bias_stats.bias_share``'s ``recount``): a function of resampled
    training rows that selects the tokens again on those rows (``select_attribute_tokens`` with the TIS rows
    of those images; the IEM and its TIS are not recomputed: retraining the IEM per resample is out of reach,
    so the interval leaves out how much the IEM itself would vary) and returns ``study_counts``'s ``neutral``,
    ``fit`` and ``calibration`` with the new tokens."""

    def recount(rows):
        ids = attribute_token_ids(ds, tis, top_n, token_num, specificity, rows=rows)
        counts = study_counts(ds, ids, neutral, planted, held_truth)
        return counts["neutral"], counts["fit"], counts["calibration"]

    return recount


def estimate_bias(
    counts: dict, n_boot: int = 1000, min_youden: float = 0.1, seed: int = 0, recount=None
) -> dict:
    """Both statistics of one study from its counts (``study_counts``), signed toward A; one row of the
    study's table:

    * the paper's δ on raw counts (``bias_stats.count_delta``): ``delta`` with ``delta_low``/``delta_high``
      (a bootstrap over the neutral images), ``delta_paper_half_scale`` (= δ/2, the number the original code
      prints), ``mean_count_a``/``mean_count_b``;
    * the share of A among the neutral images (``bias_stats.bias_share``): ``share`` with
      ``share_low``/``share_high``, the rule's ``threshold`` fitted on the training images and its ``sens``
      and ``spec`` measured on the held-out images, ``q`` (the share the rule calls A), ``check_p`` (the
      error-rate check, with ``held_truth``), ``inconclusive`` and ``why``,
      ``unchecked_low``/``unchecked_high`` (the interval before the check). ``recount``: ``recount_on(...)``
      to re-select the tokens in every bootstrap resample (None: the tokens stay as they are).
    """
    r = count_delta(*counts["neutral"], n_boot=n_boot, seed=seed)
    share = bias_share(
        counts["neutral"],
        counts["fit"],
        counts["calibration"],
        n_boot=n_boot,
        seed=seed,
        min_youden=min_youden,
        recount=recount,
        calibration_prompts=counts["calibration_prompts"],
    )
    return {
        "images": len(counts["neutral"][0]),
        "share": share["share"],
        "share_low": share["low"],
        "share_high": share["high"],
        "inconclusive": share["inconclusive"],
        "why": share["why"],
        "unchecked_low": share["unchecked_low"],
        "unchecked_high": share["unchecked_high"],
        "check_p": share["check_p"],
        "q": share["q"],
        "sens": share["sens"],
        "spec": share["spec"],
        "youden": share["youden"],
        "threshold": share["threshold"],
        "informative_resamples": share["informative"],
        "delta": r["delta"],
        "delta_low": r["low"],
        "delta_high": r["high"],
        "delta_paper_half_scale": r["delta_paper_half_scale"],
        "mean_count_a": r["mean_count_a"],
        "mean_count_b": r["mean_count_b"],
        "tokens_a": counts["n_tokens"][0],
        "tokens_b": counts["n_tokens"][1],
    }


# --- real token data in the original's layout (notebook 13) ---------------------------------------------


def load_real_study(root, bias_types, vq_meta: dict, out_dir) -> tuple[dict, dict]:
    """Token data in the original's layout: ``root/<bias type>/{train,val[,test]}.csv``
    (``filename,label,indices``, labels 0/1, optional ``class_names.txt`` with the two values' names) and
    ``neutral.csv`` (an ``indices`` column). Returns ``(datasets, {type: neutral tokens})``."""
    root = Path(root)
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
        neutral[b], _, _ = tokds.read_cortex_csv(
            folder / "neutral.csv", vq_meta["grid"], vq_meta["n_embed"], labelled=False
        )
        try:  # labels outside 0/1, or a value with no training rows, are refused here
            studies[b] = tokds.import_cortex_csv(
                Path(out_dir) / b / "dataset", csvs, vq_meta, class_names=values
            )
        except ValueError as err:
            raise ValueError(f"{folder}: {err} (a bias study needs both attribute values {values})") from None
    return studies, neutral


def write_synthetic_study(
    root,
    grid,
    n_embed: int,
    shares: dict,
    n_train: int = 40,
    n_held: int = 10,
    n_neutral: int = 30,
    class_names: dict | None = None,
    seed: int = 0,
) -> dict:
    """Token CSVs in the original's layout whose answer is known (notebook 13 without real data, and the
    tests): per bias type of ``shares`` a folder ``root/<type>`` with ``train.csv``, ``val.csv``, ``test.csv``
    (``filename,label,indices``; ``n_train`` / ``n_held`` / ``n_held`` grids, labels 0 and 1 alternating) and
    ``neutral.csv`` (``n_neutral`` grids, no labels), optionally ``class_names.txt`` (``class_names[type]``).
    A grid holds background ids 3-5 and, at 6 random positions, its value's mark: id 1 for value 0, id 2 for
    value 1. Each neutral grid is value 0's with probability ``shares[type]``. Returns the truth:
    ``{type: the share of value 0 among its neutral grids}``."""
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
        for split, n in (("train", n_train), ("val", n_held), ("test", n_held)):
            y = np.arange(n) % 2
            tokds.write_cortex_csv(root / b / f"{split}.csv", grids(y), y)
        neutral = (rng.random(n_neutral) >= share).astype(int)
        tokds.write_cortex_csv(root / b / "neutral.csv", grids(neutral))
        truth[b] = float((neutral == 0).mean())
        if class_names and b in class_names:
            (root / b / "class_names.txt").write_text("\n".join(class_names[b]) + "\n")
    return truth


# --- what the notebooks record and conclude ------------------------------------------------------------


def _metric(x):
    return None if not np.isfinite(x) else round(float(x), 4)


def headline_metrics(deltas: pd.DataFrame, bias_types, biased_digit: dict, control_digit: int) -> dict:
    """Notebook 10's recorded numbers from its table ``deltas`` (one row per study, with ``digit``, ``pixel
    truth``, ``iem_accuracy`` and ``verdict``): per bias type the share estimate and interval, the pixel
    truth, the paper's δ, the attribute IEM's accuracy and the verdict (``bias_stats.share_verdict``),
    suffixed ``_control`` for the control digit. Rounded to 4 places; NaN becomes None."""
    metrics = {}
    for b in bias_types:
        rows = deltas[deltas["bias"] == b]
        for which, digit in (("", biased_digit[b]), ("_control", control_digit)):
            row = rows[rows["digit"] == digit].iloc[0]
            metrics.update(
                {
                    f"bias_{b}_share_est{which}": _metric(row["share"]),
                    f"bias_{b}_share_low{which}": _metric(row["share_low"]),
                    f"bias_{b}_share_high{which}": _metric(row["share_high"]),
                    f"bias_{b}_share_truth{which}": _metric(row["pixel truth"]),
                    f"bias_{b}_share_check_p{which}": _metric(row["check_p"]),
                    f"bias_{b}_share_unchecked_low{which}": _metric(row["unchecked_low"]),
                    f"bias_{b}_share_unchecked_high{which}": _metric(row["unchecked_high"]),
                    f"bias_{b}_truth_share{which}": _metric(row["pixel truth"]),
                    f"bias_{b}_delta_{'control' if which else 'biased'}": _metric(row["delta"]),
                    f"bias_{b}_iem_accuracy{which}": round(float(row["iem_accuracy"]), 4),
                    f"bias_{b}_verdict{which}": str(row["verdict"]),
                }
            )
    return metrics


def real_data_metrics(deltas: pd.DataFrame) -> dict:
    """Notebook 13's recorded numbers from its table ``deltas`` (one row per bias type): the paper's δ, the
    share estimate and its interval, and the attribute IEM's accuracy, as ``bias_real_<type>_...`` (apart from
    notebook 10's keys, so both can share a run). Rounded to 4 places; NaN becomes None."""
    metrics = {}
    for _, row in deltas.iterrows():
        b = row["bias"]
        metrics.update(
            {
                f"bias_real_{b}_delta": _metric(row["delta"]),
                f"bias_real_{b}_share_est": _metric(row["share"]),
                f"bias_real_{b}_share_low": _metric(row["share_low"]),
                f"bias_real_{b}_share_high": _metric(row["share_high"]),
                f"bias_real_{b}_iem_accuracy": round(float(row["iem_accuracy"]), 4),
            }
        )
    return metrics


def _interval_text(row) -> str:
    if not np.isfinite(row["share"]):
        return "no estimate: the token rule cannot separate the values (interval [0, 1])"
    text = f"share of {row['toward']} {row['share']:.2f} [{row['share_low']:.2f}, {row['share_high']:.2f}]"
    if row["inconclusive"]:
        text += (
            f": no interval, because {row['why']} (before that check: [{row['unchecked_low']:.2f}, "
            f"{row['unchecked_high']:.2f}])"
        )
    return text


def verdict_words(verdict: str, margin: float = 0.1) -> str:
    """A ``share_verdict`` as the pages write it: ``no_bias`` becomes "no bias beyond ±margin"."""
    return f"no bias beyond ±{margin:g}" if verdict == "no_bias" else verdict


def verdict_line(row, bias_type: str, margin: float = 0.1, biased: bool | None = None) -> str:
    """One markdown line of notebook 10's verdict for a row of its ``deltas`` table: the share's interval,
    ``share_verdict``, and the paper's δ. ``biased``: on the planted world, whether the row is the biased
    digit (True) or the control (False); the line then also says whether the planted answer came out and
    whether the pixel truth lies in the interval. ``None``: real data, no truth to compare with."""
    lo, hi = row["share_low"], row["share_high"]
    verdict = share_verdict(lo, hi, margin)
    shown = verdict_words(verdict, margin)
    text = f"- **{bias_type}, {row['neutral set']}**: {_interval_text(row)} — **{shown}**"
    if verdict == "found":
        text += f" (a lean {'toward' if lo > 0.5 else 'away from'} {row['toward']})"
    if biased is not None:
        if biased:
            text += (
                ": the planted bias is found"
                if verdict == "found" and lo > 0.5
                else ": **the estimate leans the other way round**"
                if verdict == "found"
                else ": **the planted bias is missed**"
                if verdict == "no_bias"
                else ": the data cannot decide"
            )
        else:
            text += (
                ": no bias reported, as it should be"
                if verdict == "no_bias"
                else ": **a bias is reported where the training data had none**"
                if verdict == "found"
                else ": the data cannot rule out a bias"
            )
        truth = row["pixel truth"]
        text += f". Pixel truth {truth:.2f} (trained {row['trained share']:.2f}): "
        text += (
            "inside the interval" if lo <= truth <= hi else "**outside the interval: the estimate misses it**"
        )
        if row["inconclusive"] and np.isfinite(row["share"]):
            inside = row["unchecked_low"] <= truth <= row["unchecked_high"]
            text += f" (the interval before the check {'holds it' if inside else '**would have missed it**'})"
    return text + (
        f". The paper's δ {row['delta']:+.2f} [{row['delta_low']:+.2f}, {row['delta_high']:+.2f}] "
        f"(the original code's half scale: {row['delta_paper_half_scale']:+.2f})"
    )
