"""The bias study, the paper's DALL·E-mini measurement: do a generator's neutral-prompt generations lean
toward one value of an attribute? From a token dataset of attribute-labelled generations (values A and B;
train and a held-out split) and the IEM's TIS of its training images: each value's tokens
(``select_attribute_tokens``), how many of them every image holds (``study_counts``), and the paper's Cliff's
δ of the neutral counts with the share of A among the neutral generations (``estimate_bias``, ``bias_stats``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import concepts as conceptlib
from .bias_stats import ShareOptions, bias_share, count_delta

CONCEPT_TABLE_TOP = 100  # ids per value in the attribute concept table, before the specificity filter


# --- 1. the attribute data -----------------------------------------------------------------------------


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


# --- 2. attribute tokens -------------------------------------------------------------------------------


def select_attribute_tokens(
    ds, tis, top_n: int = 5, token_num: int = 20, specificity: float = 2.0, rows=None
) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """Each attribute value's tokens: notebook 06's concept table at ``top_n`` of the train split's ``rows``
    (default all), then ``specific_tokens``. Returns ``(table, {label: ids})``."""
    tokens, labels, tis = _training_rows(ds, tis, rows)
    table = conceptlib.concept_tokens(
        tokens, labels, tis, ds.class_names, ds.manifest["n_embed"], top_ns=(top_n,), top=CONCEPT_TABLE_TOP
    )
    return table, specific_tokens(table, top_n, token_num, tokens, labels, specificity)


def _training_rows(ds, tis, rows=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The train split's token grids, labels and TIS maps at ``rows`` (default all)."""
    train_y = check_attribute_data(ds)
    tis = np.asarray(tis)
    if len(tis) != len(train_y):
        raise ValueError(f"one TIS map per training image: {len(train_y)} images, {len(tis)} maps")
    rows = np.arange(len(train_y)) if rows is None else np.asarray(rows)
    return ds.tokens["train"][rows], train_y[rows], tis[rows]


def specific_tokens(
    concepts: pd.DataFrame, top_n: int, token_num: int, tokens=None, labels=None, specificity: float = 2.0
) -> dict[int, np.ndarray]:
    """Each value's ``token_num`` top ids of the concept table at ``top_n`` that are *specific* to it: per
    image of the value, at least ``specificity`` times as frequent (in the training grids ``tokens``) as per
    image of the other (0: no filter). It drops background ids an IEM may point at when it recognises one
    value by the absence of the other's marks."""
    t = concepts[(concepts["top_n"] == top_n) & (concepts["label"] >= 0)]
    ranked = {int(c): g.sort_values("rank")["token"].to_numpy() for c, g in t.groupby("label")}
    return _specific(ranked, token_num, tokens, labels, specificity)


def attribute_token_ids(
    ds, tis, top_n: int = 5, token_num: int = 20, specificity: float = 2.0, rows=None
) -> dict[int, np.ndarray]:
    """``select_attribute_tokens``'s ids without its (slow) table, for the bootstrap's re-selection: the same
    ranking, from ``concepts.concept_counts`` (ties: the smaller id)."""
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
        frequencies = conceptlib.token_frequencies(tokens, labels, 2, n_embed)
        rate = frequencies / np.bincount(labels, minlength=2)[:, None]
        ranked = {c: v[rate[c, v] >= specificity * rate[1 - c, v]] for c, v in ranked.items()}
    return {c: np.asarray(v[:token_num], dtype=np.int64) for c, v in ranked.items()}


# --- 3. counts -----------------------------------------------------------------------------------------


def token_counts(tokens, ids) -> np.ndarray:
    """Per image, how many of its grid positions hold one of ``ids``."""
    tokens = np.asarray(tokens)
    return np.isin(tokens.reshape(len(tokens), -1), np.asarray(ids)).sum(1)


def study_counts(ds, ids: dict, neutral, planted: int, held_truth: dict | None = None) -> dict:
    """Per image, how many positions hold value A's tokens and how many B's (A: the label ``planted``;
    ``ids``: each label's tokens): ``neutral`` ``(A, B)`` of the neutral generations, ``fit`` ``(A, B, is A)``
    of the training images, ``calibration`` the same of the held-out images, ``calibration_prompts`` and
    ``n_tokens``. ``held_truth`` (``{split: bool array}``): whether each held-out image shows A, by a labeller
    independent of the prompt; by default each counts as the value its prompt named."""
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


# --- 4. the estimate -----------------------------------------------------------------------------------


def recount_on(
    ds, tis, neutral, planted: int, held_truth=None, top_n: int = 5, token_num: int = 20, specificity=2.0
):
    """The bootstrap's token re-selection (``bias_stats.bias_share``'s ``recount``): resampled training rows
    -> ``study_counts``' ``neutral``, ``fit`` and ``calibration`` with the tokens selected on them (the IEM
    and its TIS are not recomputed)."""

    def recount(rows):
        ids = attribute_token_ids(ds, tis, top_n, token_num, specificity, rows=rows)
        counts = study_counts(ds, ids, neutral, planted, held_truth)
        return counts["neutral"], counts["fit"], counts["calibration"]

    return recount


def estimate_bias(
    counts: dict, n_boot: int = 1000, min_youden: float = 0.1, seed: int = 0, recount=None
) -> dict:
    """Both statistics of one study from its ``study_counts``, signed toward A, as one row of the study's
    table: the paper's δ (``bias_stats.count_delta``: ``delta``, ``delta_low``, ``delta_high``) and the share
    of A among the neutral images (``bias_stats.bias_share``: ``share``, ``share_low``, ``share_high``, ...).
    ``recount``: ``recount_on(...)`` re-selects the tokens in every bootstrap resample."""
    r = count_delta(*counts["neutral"], n_boot=n_boot, seed=seed)
    share = bias_share(
        counts["neutral"],
        counts["fit"],
        counts["calibration"],
        recount=recount,
        calibration_prompts=counts["calibration_prompts"],
        options=ShareOptions(n_boot=n_boot, seed=seed, min_youden=min_youden),
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
