"""Concept analysis (the paper's concept-level explanation): which codebook ids sit at each image's most
important positions, counted per class; and its baselines: the most frequent ids per class (optionally
without the ``background_tokens``), and the ids frequent in a class relative to all classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .tis import topk_positions
from .vq import check_token_grids, decode, grid_shape


def top_tokens(tokens: np.ndarray, tis: np.ndarray, n: int) -> np.ndarray:
    """Codebook ids at each image's top-``n`` TIS positions (``tis.topk_positions``): ``(N, n)``."""
    tokens = np.asarray(tokens)
    if tokens.shape != np.shape(tis):
        raise ValueError(f"tokens {tokens.shape} and TIS {np.shape(tis)} must be aligned (same shape)")
    if n < 1:
        raise ValueError(f"top-n must be >= 1, got {n}")
    return np.take_along_axis(tokens.reshape(len(tokens), -1), topk_positions(tis, n), 1)


def _ranked(counts: np.ndarray, class_names, top: int, value_name: str, extra: dict | None = None):
    """``counts`` (C, K) -> tidy table of each class's ``top`` ids by count (ties: smaller id first)."""
    order = np.argsort(-counts, axis=1, kind="stable")[:, :top]
    label, token = np.repeat(np.arange(len(order)), order.shape[1]), order.ravel()
    df = pd.DataFrame({"label": label, "class_name": np.asarray(class_names, dtype=object)[label]})
    df["rank"] = np.tile(np.arange(1, order.shape[1] + 1), len(order))
    df["token"] = token
    for k, v in {value_name: counts, **(extra or {})}.items():
        df[k] = v[label, token]
    return df[df[value_name] > 0].reset_index(drop=True) if value_name == "count" else df


def concept_tokens(
    tokens, labels, tis, class_names, n_embed: int, top_ns=(1, 5, 10, 20), top: int = 100
) -> pd.DataFrame:
    """For each top-n and class: the ids found at the images' top-n TIS positions, ranked by count.

    Columns: top_n, label, class_name, rank, token, count, images (how many of the class's images hold the
    id among their top-n), share (count / all top-n slots of the class); label -1 ranks over all classes.
    """
    _check_present(np.bincount(np.asarray(labels).astype(np.int64), minlength=len(class_names)), class_names)
    counts = concept_counts(tokens, labels, tis, len(class_names), n_embed, top_ns)
    return concept_table(counts, class_names, top_ns, top)


def _check_present(present: np.ndarray, class_names) -> None:
    if (present == 0).any():
        raise ValueError(
            f"class(es) with no images: {[class_names[i] for i in np.flatnonzero(present == 0)][:10]}"
        )


def concept_counts(tokens, labels, tis, n_classes: int, n_embed: int, top_ns=(1, 5, 10, 20)) -> dict:
    """The counts behind ``concept_tokens``: per top-n the ``(C, K)`` id counts (``counts<n>``) and image
    counts (``images<n>``), plus the images per class (``present``). Counts of disjoint row blocks add up."""
    labels = np.asarray(labels).astype(np.int64)
    out = {"present": np.bincount(labels, minlength=n_classes)}
    for n in top_ns:
        ids = top_tokens(tokens, tis, n)
        out[f"counts{n}"] = token_frequencies(ids, labels, n_classes, n_embed)
        # images holding the id at least once among their top-n (dedupe within an image)
        srt = np.sort(ids, 1)
        first = np.diff(srt, axis=1, prepend=-1) != 0
        out[f"images{n}"] = np.bincount(
            (labels[:, None] * n_embed + srt)[first], minlength=n_classes * n_embed
        ).reshape(n_classes, n_embed)
    return out


def concept_table(counts: dict, class_names, top_ns=(1, 5, 10, 20), top: int = 100) -> pd.DataFrame:
    """``concept_tokens``'s table from ``concept_counts`` (possibly summed over row blocks)."""
    present = counts["present"]
    _check_present(present, class_names)
    frames = []
    for n in top_ns:
        c, images = counts[f"counts{n}"], counts[f"images{n}"]
        df = _ranked(c, class_names, top, "count", {"images": images, "share": c / (present[:, None] * n)})
        total = c.sum(0, keepdims=True)
        extra = {"images": images.sum(0, keepdims=True), "share": total / (present.sum() * n)}
        glob = _ranked(total, ["all"], top, "count", extra).assign(label=-1)
        frames += [df.assign(top_n=n), glob.assign(top_n=n)]
    out = pd.concat(frames, ignore_index=True)
    return out[["top_n", "label", "class_name", "rank", "token", "count", "images", "share"]]


def images_with_token(tokens, labels, tis, n: int, label: int, token: int) -> np.ndarray:
    """Rows of class ``label`` whose top-``n`` TIS positions hold ``token``."""
    ids = top_tokens(tokens, tis, n)
    return np.flatnonzero((np.asarray(labels) == label) & (ids == token).any(1))


def token_frequencies(tokens, labels, n_classes: int, n_embed: int) -> np.ndarray:
    """``(C, K)`` occurrences of every id in every class's token grids."""
    labels = np.asarray(labels).astype(np.int64)
    keys = labels[:, None] * n_embed + np.asarray(tokens).reshape(len(labels), -1).astype(np.int64)
    return np.bincount(keys.ravel(), minlength=n_classes * n_embed).reshape(n_classes, n_embed)


def background_tokens(tokens, labels, n_embed: int, share: float = 0.5) -> np.ndarray:
    """The background: the fewest ids, most frequent first, whose frequencies add up to ``share`` of the
    grids (an id's frequency: its share of a class's positions, averaged over the classes present). Sorted.
    On black-background digits these are the black codes, whose masking hides nothing."""
    if not 0 <= share < 1:
        raise ValueError(f"share must lie in [0, 1) (the fraction of all grid positions), got {share}")
    labels = np.asarray(labels).astype(np.int64)
    if len(labels) == 0 or len(labels) != len(tokens):
        raise ValueError(
            f"need one label per token grid and at least one grid: {len(tokens)} grids, {len(labels)} labels"
        )
    freq = token_frequencies(tokens, labels, int(labels.max()) + 1, n_embed)
    freq = freq[freq.sum(1) > 0]
    mean_share = (freq / freq.sum(1, keepdims=True)).mean(0)
    order = np.argsort(-mean_share, kind="stable")
    n = int(np.searchsorted(np.cumsum(mean_share[order]), share - 1e-12)) + 1 if share > 0 else 0
    return np.sort(order[:n])


def frequency_tokens(
    tokens, labels, class_names, n_embed: int, top=100, contrastive=False, smoothing=1.0, exclude=()
) -> pd.DataFrame:
    """The baseline: per class, the ``top`` most frequent ids; with ``contrastive``, ids ranked by how much
    more frequent they are in the class than overall (log ratio of smoothed rates). Ids in ``exclude``
    (e.g. ``background_tokens``) are never ranked; the counts and rates of the others are unchanged."""
    freq = token_frequencies(tokens, labels, len(class_names), n_embed)
    exclude = np.asarray(exclude, dtype=np.int64).ravel()
    if exclude.size and (exclude.min() < 0 or exclude.max() >= n_embed):
        raise ValueError(
            f"excluded ids must lie in [0, {n_embed}), got [{int(exclude.min())}, {int(exclude.max())}]"
        )
    drop = np.isin(np.arange(n_embed), exclude)
    if not contrastive:
        return _ranked(np.where(drop, 0, freq), class_names, top, "count")
    rate_c = (freq + smoothing) / (freq.sum(1, keepdims=True) + smoothing * n_embed)
    total = freq.sum(0, keepdims=True)
    rate_all = (total + smoothing) / (total.sum() + smoothing * n_embed)
    score = np.log(rate_c / rate_all)
    score[(freq == 0) | drop] = -np.inf  # never pick an id the class does not contain, nor an excluded one
    df = _ranked(score, class_names, top, "score", {"count": freq})
    return df[np.isfinite(df["score"])].reset_index(drop=True)


def token_sets(table: pd.DataFrame, k: int, top_n: int | None = None) -> dict[int, np.ndarray]:
    """Each class's first ``k`` ids of a ranked table (concept or frequency) -> {label: ids}."""
    t = table if top_n is None else table[table["top_n"] == top_n]
    t = t[(t["label"] >= 0) & (t["rank"] <= k)]
    return {int(c): g.sort_values("rank")["token"].to_numpy() for c, g in t.groupby("label")}


def overlap(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> pd.Series:
    """Per class, the fraction of ``a``'s ids that are also in ``b``."""
    return pd.Series({c: float(np.isin(a[c], b.get(c, [])).mean()) if len(a[c]) else np.nan for c in a})


def position_counts(tokens, n_embed: int) -> np.ndarray:
    """``(h, w, K)``: how often each codebook id sits at each grid position, over the given token grids."""
    t = check_token_grids(tokens, n_embed).numpy()
    n, h, w = t.shape
    keys = np.arange(h * w)[None] * n_embed + t.reshape(n, -1)
    return np.bincount(keys.ravel(), minlength=h * w * n_embed).reshape(h, w, n_embed)


def arrange_tokens(counts: np.ndarray, ids, region) -> np.ndarray:
    """Place a token set where it usually sits: each position of ``region`` (bool ``(h, w)``) gets the id of
    ``ids`` most often there in ``counts`` (``position_counts``; ties and never: the id listed first).
    Returns ``(h, w)`` int64 ids, -1 outside the region."""
    ids = np.asarray(ids, dtype=np.int64).ravel()
    counts, region = np.asarray(counts), np.asarray(region, dtype=bool)
    if ids.size == 0:
        raise ValueError("no ids to arrange (an empty token set)")
    if counts.ndim != 3 or counts.shape[:2] != region.shape:
        raise ValueError(
            f"counts must be (h, w, K) position counts over the region's grid {region.shape}, "
            f"got {counts.shape}"
        )
    if ids.min() < 0 or ids.max() >= counts.shape[2]:
        raise ValueError(f"ids must lie in [0, {counts.shape[2]}), got [{int(ids.min())}, {int(ids.max())}]")
    best = ids[counts[..., ids].argmax(-1)]  # argmax: the first maximum, so ties (and all-zero) -> earlier id
    return np.where(region, best, -1)


def token_tiles(vq, ids) -> torch.Tensor:
    """What a token looks like on its own: decode a grid filled with that id, for each id -> images."""
    h, w = grid_shape(vq)
    grids = torch.tensor(np.array(ids, dtype=np.int64))[:, None, None].expand(-1, h, w)
    return decode(vq, grids.contiguous())


def token_crops(images, tokens, token: int, rows=None, max_crops: int = 6) -> np.ndarray:
    """Image patches (``(n, C, ph, pw)``) where ``token`` occurs, from ``rows`` (default: all images)."""
    images, tokens = np.asarray(images), np.asarray(tokens)
    rows = np.arange(len(tokens)) if rows is None else np.asarray(rows)
    h, w = tokens.shape[1:]
    ph, pw = images.shape[2] // h, images.shape[3] // w
    r, y, x = np.nonzero(tokens[rows] == token)
    crops = [
        images[rows[i], :, yy * ph : (yy + 1) * ph, xx * pw : (xx + 1) * pw]
        for i, yy, xx in list(zip(r, y, x, strict=True))[:max_crops]
    ]
    return np.stack(crops) if crops else np.zeros((0, images.shape[1], ph, pw), images.dtype)


def top_tis_share(tis, k: int) -> np.ndarray:
    """Per image ``(N, h, w)``: the share of its absolute TIS on its ``k`` highest-TIS positions, how
    concentrated an explanation is (``k / (h * w)`` for an even map, 1 for a map on ``k`` positions)."""
    flat = np.abs(np.asarray(tis, dtype=np.float64).reshape(len(tis), -1))
    return np.take_along_axis(flat, topk_positions(tis, k), 1).sum(1) / flat.sum(1).clip(min=1e-30)
