"""The paper's evaluation by masking: select codebook ids (at an image's top-n TIS positions, at n random
positions, or a class's concept set), mask **every** position holding one, and watch independent classifiers
(the evaluators, ``name -> model``) lose confidence in the target class. ``pixel`` masking (the original)
blacks out the decoded patches; ``token`` masking puts a neutral id there and decodes. Token grids are
integer ``(N, h, w)``, position masks bool ``(N, h, w)``, images float ``(N, C, H, W)`` in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from .devices import device_of
from .progress import tqdm
from .tis import topk_positions
from .vq import codebook, decode

SPACES = ("pixel", "token")
NEUTRAL = ("background", "mean")
SELECTIONS = ("original", "tis", "random")
IMAGE_LEVEL_COLUMNS = [
    *("space", "evaluator", "n", "selection", "n_images", "mean_masked", "masked_fraction"),
    *("mean_logit", "mean_prob", "logit_drop", "prob_drop"),
]
CONCEPT_LEVEL_COLUMNS = [
    *("space", "method", "evaluator", "label", "n_images", "n_tokens", "mean_masked"),
    *("original_logit", "masked_logit", "logit_drop", "original_prob", "masked_prob", "prob_drop"),
]


@dataclass(frozen=True)
class Masking:
    """How the experiments mask and score: the ``spaces`` to mask in (``SPACES``), the ``neutral`` token of
    token space (an id or a ``NEUTRAL`` choice), the seed of the random positions, the batch size."""

    spaces: tuple = ("pixel",)
    neutral: object = "background"
    seed: int = 0
    batch_size: int = 256
    progress: bool = True


# --- selecting positions --------------------------------------------------------------------------
def as_token_grids(tokens, name: str = "tokens") -> np.ndarray:
    """Token grids (numpy or torch) as an int64 numpy array ``(N, h, w)``; anything else is refused."""
    t = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if t.ndim != 3:
        raise ValueError(f"{name} must be token grids (N, h, w), got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"{name} must hold integer codebook ids, got dtype {t.dtype}")
    return t.astype(np.int64, copy=False)


def _mask_np(mask, n_images: int, grid=None, name: str = "position_mask") -> np.ndarray:
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.dtype != bool:
        raise ValueError(f"{name} must be a bool array (True = masked), got dtype {m.dtype}")
    want = f"({n_images}, {grid[0]}, {grid[1]})" if grid is not None else f"({n_images}, h, w)"
    if m.ndim != 3 or len(m) != n_images or (grid is not None and m.shape[1:] != tuple(grid)):
        raise ValueError(f"{name} must have shape {want} (N, h, w), got {m.shape}")
    return m


def positions_holding(tokens, ids) -> np.ndarray:
    """Bool ``(N, h, w)``: every position whose id is in the selected set, one shared by all images (an int
    or a 1-D array) or one per image (an ``(N, n)`` array or a list of N arrays of any lengths)."""
    t = as_token_grids(tokens)
    ids = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else ids
    listed = isinstance(ids, (list, tuple)) or (isinstance(ids, np.ndarray) and ids.dtype == object)
    per_image = (len(ids) > 0 and all(np.ndim(a) >= 1 for a in ids)) if listed else np.ndim(ids) == 2
    if per_image and len(ids) != len(t):
        raise ValueError(f"per-image id sets: got {len(ids)} sets for {len(t)} token grids")
    sets = [np.asarray(a, dtype=np.int64).ravel() for a in (ids if per_image else [ids])]
    flat = np.concatenate(sets) if sets else np.zeros(0, np.int64)
    if flat.size and flat.min() < 0:
        raise ValueError(f"codebook ids must be >= 0, got {int(flat.min())}")
    if not per_image:
        return np.isin(t, flat)
    m = int(max(t.max(initial=0), flat.max(initial=0))) + 1
    rows = np.repeat(np.arange(len(t)), [len(s) for s in sets])
    keys = np.arange(len(t))[:, None, None] * m + t  # (image, id) pairs as one integer
    return np.isin(keys, rows * m + flat)


def positions_mask(positions, grid) -> np.ndarray:
    """Flat positions ``(N, n)`` (row-major grid indices) -> bool ``(N, h, w)``: exactly those positions (not
    every position holding their ids: ``positions_holding(tokens, ids_at(tokens, positions))``)."""
    pos = np.asarray(positions, dtype=np.int64)
    h, w = grid
    if pos.ndim != 2:
        raise ValueError(f"positions must be (N, n) flat grid indices, got shape {pos.shape}")
    if pos.size and (pos.min() < 0 or pos.max() >= h * w):
        raise ValueError(
            f"flat positions must lie in [0, {h * w}) for a {h}x{w} grid, got "
            f"[{int(pos.min())}, {int(pos.max())}]"
        )
    mask = np.zeros((len(pos), h * w), dtype=bool)
    np.put_along_axis(mask, pos, True, axis=1)
    return mask.reshape(len(pos), h, w)


def ids_at(tokens, positions) -> np.ndarray:
    """The ids at flat positions ``(N, n)`` of each token grid -> ``(N, n)``."""
    t = as_token_grids(tokens)
    pos = np.asarray(positions, dtype=np.int64)
    if pos.ndim != 2 or len(pos) != len(t):
        raise ValueError(f"positions must be (N, n) with N = {len(t)} token grids, got shape {pos.shape}")
    return np.take_along_axis(t.reshape(len(t), -1), pos, 1)


def random_positions(n_images: int, grid, n: int, seed: int = 0) -> np.ndarray:
    """``(N, n)`` distinct flat positions per image: the first ``n`` of a seeded permutation (nested in n)."""
    hw = int(grid[0]) * int(grid[1])
    if not 0 <= n <= hw:
        raise ValueError(f"n must lie in [0, {hw}] (the grid has {hw} positions), got {n}")
    rng = np.random.default_rng(seed)
    return rng.random((n_images, hw)).argsort(1, kind="stable")[:, :n]


# --- masking ---------------------------------------------------------------------------------------
def mask_pixels(images: torch.Tensor, position_mask, value: float = -1.0) -> torch.Tensor:
    """A copy of ``images`` with the patch of every masked grid position set to ``value`` (-1: black)."""
    return images.masked_fill(_pixel_mask(images, position_mask)[:, None], value)


def _pixel_mask(images: torch.Tensor, position_mask) -> torch.Tensor:
    """Bool ``(N, H, W)``: the grid mask blown up to the pixels of its patches."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not torch.is_floating_point(images):
        raise ValueError("images must be a float tensor (N, C, H, W) in [-1, 1]")
    m = _mask_np(position_mask, len(images))
    (h, w), (H, W) = m.shape[1:], images.shape[2:]
    if H % h or W % w:
        raise ValueError(f"image size {H}x{W} is not a multiple of the grid {h}x{w}")
    up = torch.from_numpy(m).to(images.device)
    return up.repeat_interleave(H // h, 1).repeat_interleave(W // w, 2)


def masked_patch_mean(images: torch.Tensor, position_mask) -> float:
    """Mean value of ``images`` in the patches of the masked positions, what a mask hides: -1 if they were
    all black already, NaN when nothing is masked."""
    up = _pixel_mask(images, position_mask)
    n = int(up.sum()) * images.shape[1]
    return float((images * up[:, None]).sum() / n) if n else float("nan")


def neutral_token(vq_or_codebook=None, tokens=None, how: str = "background") -> int:
    """The id that replaces masked positions in token space: ``"background"``, the most frequent id in
    ``tokens`` (ties: the smaller; on black-background digits the black code, as the original's black patch),
    or ``"mean"``, the codebook row nearest (L2) to the codebook mean (data-free; need not look like
    background)."""
    if how not in NEUTRAL:
        raise ValueError(f"unknown neutral token choice {how!r}; choose one of {NEUTRAL}")
    cb = vq_or_codebook
    if cb is not None and not isinstance(cb, torch.Tensor):
        cb = codebook(cb)
    if how == "background":
        if tokens is None:
            raise ValueError("neutral_token(how='background') needs the token grids to count ids in")
        t = as_token_grids(tokens)
        if t.size == 0:
            raise ValueError("neutral_token(how='background'): the token grids are empty")
        if cb is not None and t.max() >= len(cb):
            raise ValueError(f"token ids must lie in [0, {len(cb)}), got max {int(t.max())}")
        return int(np.bincount(t.ravel()).argmax())
    if cb is None:
        raise ValueError("neutral_token(how='mean') needs the VQ model or its codebook")
    cb = cb.detach().float().cpu()
    d = torch.cdist(cb.mean(0, keepdim=True), cb, compute_mode="donot_use_mm_for_euclid_dist")
    return int(d.argmin())


def mask_tokens(tokens, position_mask, neutral: int):
    """Replace the masked positions with the ``neutral`` id; a new array of the input's type and dtype."""
    t = as_token_grids(tokens)
    m = _mask_np(position_mask, len(t), t.shape[1:])
    neutral = int(neutral)
    if neutral < 0:
        raise ValueError(f"the neutral id must be >= 0, got {neutral}")
    if isinstance(tokens, torch.Tensor):
        return tokens.masked_fill(torch.from_numpy(m).to(tokens.device), neutral)
    dtype = np.asarray(tokens).dtype
    if neutral > np.iinfo(dtype).max:
        raise ValueError(f"neutral id {neutral} does not fit the tokens' dtype {dtype}")
    return np.where(m, neutral, np.asarray(tokens)).astype(dtype)


# --- scoring ---------------------------------------------------------------------------------------
@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """An evaluator's logits for images in [-1, 1] ``(N, 3, H, W)``, computed on the model's device,
    returned on the images'."""
    model.eval()
    device, batches = device_of(model), range(0, len(images), batch_size)
    return torch.cat([model(images[i : i + batch_size].to(device)).to(images.device) for i in batches])


def check_evaluators(evaluators) -> dict:
    """``evaluators``, if it is a non-empty dict name -> model; else a ValueError."""
    if not isinstance(evaluators, dict) or not evaluators:
        raise ValueError("evaluators must be a non-empty dict name -> model (images in [-1, 1] -> logits)")
    return evaluators


def target_scores(evaluators: dict, images: torch.Tensor, targets, batch_size: int = 256) -> dict:
    """``{name: (target logit (N,), target probability (N,))}`` (numpy) for every evaluator."""
    targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    out = {}
    for name, model in check_evaluators(evaluators).items():
        logits = predict_logits(model, images, batch_size).float().cpu()
        if len(targets) and (targets.min() < 0 or targets.max() >= logits.shape[1]):
            raise ValueError(f"targets must lie in [0, {logits.shape[1]}) for evaluator {name!r}")
        idx = targets[:, None]
        out[name] = (logits.gather(1, idx)[:, 0].numpy(), logits.softmax(1).gather(1, idx)[:, 0].numpy())
    return out


def _score_batches(evaluators, targets, make_images, n_images: int, batch_size: int) -> dict:
    """Score images produced batch by batch (``make_images(slice)``), holding one batch at a time."""
    parts = []
    for i in range(0, n_images, batch_size):
        s = slice(i, i + batch_size)
        parts.append(target_scores(evaluators, make_images(s), targets[s], batch_size))
    return {k: tuple(np.concatenate([p[k][j] for p in parts]) for j in (0, 1)) for k in evaluators}


def check_neutral(neutral) -> None:
    """Refuse a neutral-token parameter that is neither an id (an int or its digits) nor in ``NEUTRAL``."""
    if not (isinstance(neutral, int) or str(neutral).isdigit() or neutral in NEUTRAL):
        raise ValueError(f"neutral must be an id (e.g. '17') or one of {NEUTRAL}, got {neutral!r}")


def resolve_neutral(vq, tokens, neutral) -> int:
    """The id to mask with: ``neutral`` itself if an id inside the codebook, else ``neutral_token``."""
    check_neutral(neutral)
    if isinstance(neutral, str) and not neutral.isdigit():
        return neutral_token(vq, tokens, neutral)
    if not 0 <= int(neutral) < len(codebook(vq)):
        raise ValueError(f"neutral id {neutral} is outside the codebook [0, {len(codebook(vq))})")
    return int(neutral)


def check_spaces(spaces) -> tuple:
    """A masking space or several -> a non-empty tuple of names from ``SPACES``; anything else is refused."""
    spaces = (spaces,) if isinstance(spaces, str) else tuple(spaces)
    bad = [s for s in spaces if s not in SPACES]
    if bad or not spaces:
        raise ValueError(f"unknown masking space(s) {bad}; choose from {SPACES}")
    return spaces


def decode_tokens(vq, tokens_t: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Token grids decoded in batches of at most 64 (the decoder is fastest on small batches: CPU cache)."""
    return decode(vq, tokens_t, batch_size=min(batch_size, 64))


def check_grids(tokens, labels) -> tuple[np.ndarray, np.ndarray]:
    """Token grids and one label per grid (at least one grid)."""
    t, labels = as_token_grids(tokens), np.asarray(labels, dtype=np.int64)
    if len(labels) != len(t) or len(t) == 0:
        raise ValueError(
            f"need one label per token grid and at least one grid: {len(t)} grids, {len(labels)} labels"
        )
    return t, labels


def _masked_scores(vq, t, originals, mask, labels, evaluators, neutral_id, options) -> dict:
    """``{space: target_scores}`` of the images with ``mask`` masked, in each space of ``options``."""
    n, b, out = len(t), options.batch_size, {}
    if "pixel" in options.spaces:
        out["pixel"] = _score_batches(evaluators, labels, lambda s: mask_pixels(originals[s], mask[s]), n, b)
    if "token" in options.spaces:
        masked = torch.from_numpy(mask_tokens(t, mask, neutral_id))
        out["token"] = _score_batches(evaluators, labels, lambda s: decode_tokens(vq, masked[s], b), n, b)
    return out


# --- image level -----------------------------------------------------------------------------------
def image_level_experiment(
    vq, tokens, labels, tis, evaluators: dict, ns=tuple(range(0, 55, 5)), options=Masking(), per_image=False
) -> pd.DataFrame:
    """Mask, in each image, every position holding an id found at its top-n TIS positions, vs at n random
    positions (nested over n); score each image's label with every evaluator.

    Returns one row per (space, evaluator, n, selection) with ``IMAGE_LEVEL_COLUMNS`` (the ``original``
    rows repeat for every n); with ``per_image`` the rows per image (``image, label, logit, prob, n_masked``).
    """
    t, labels = check_grids(tokens, labels)
    n_img, (h, w) = len(t), t.shape[1:]
    tis = np.asarray(tis)
    if tis.size != t.size or len(tis) != n_img:
        raise ValueError(f"TIS {tis.shape} must be aligned with the token grids {t.shape}")
    check_evaluators(evaluators)
    options = replace(options, spaces=check_spaces(options.spaces))
    spaces, batch_size = options.spaces, options.batch_size
    ns = [int(n) for n in ns]
    bad = [n for n in ns if not 0 <= n <= h * w]
    if bad or not ns:
        raise ValueError(f"every n must lie in [0, {h * w}] (the grid is {h}x{w}), got {bad or ns}")
    neutral_id = resolve_neutral(vq, t, options.neutral) if "token" in spaces else None

    originals = decode_tokens(vq, torch.from_numpy(t), batch_size)
    orig = _score_batches(evaluators, labels, lambda s: originals[s], n_img, batch_size)
    rand_all = random_positions(n_img, (h, w), max(ns), options.seed)
    frames = []

    def add(space, n, selection, scores, n_masked):
        for name, (logit, prob) in scores.items():
            key = {"space": space, "evaluator": name, "n": n, "selection": selection}
            per = {"image": np.arange(n_img), "label": labels, "logit": logit, "prob": prob}
            frames.append(pd.DataFrame({**key, **per, "n_masked": n_masked}))

    for n in tqdm(ns, desc="image-level masking", disable=not options.progress):
        zero = np.zeros(n_img, dtype=np.int64)
        for space in spaces:
            add(space, n, "original", orig, zero)
        for selection, pos in (("tis", topk_positions(tis, n)), ("random", rand_all[:, :n])):
            if n == 0:
                for space in spaces:
                    add(space, n, selection, orig, zero)
                continue
            mask = positions_holding(t, ids_at(t, pos))
            n_masked = mask.reshape(n_img, -1).sum(1)
            masked = _masked_scores(vq, t, originals, mask, labels, evaluators, neutral_id, options)
            for space, scores in masked.items():
                add(space, n, selection, scores, n_masked)
    rows = pd.concat(frames, ignore_index=True)
    if per_image:
        return rows
    return _image_level_means(rows, h * w)


def _image_level_means(rows: pd.DataFrame, n_positions: int) -> pd.DataFrame:
    """Per (space, evaluator, n, selection): means over the images, and the drops from the original."""
    keys = ["space", "evaluator", "n", "selection"]
    agg = {"n_images": ("image", "size"), "mean_masked": ("n_masked", "mean")}
    agg |= {"mean_logit": ("logit", "mean"), "mean_prob": ("prob", "mean")}
    table = rows.groupby(keys, sort=False).agg(**agg).reset_index()
    table["masked_fraction"] = table["mean_masked"] / n_positions
    base = table[table.selection == "original"].set_index(keys[:3])
    idx = pd.MultiIndex.from_frame(table[keys[:3]])
    for v in ("logit", "prob"):
        table[f"{v}_drop"] = base[f"mean_{v}"].reindex(idx).to_numpy() - table[f"mean_{v}"]
    return table[IMAGE_LEVEL_COLUMNS]


def tis_beats_random(table: pd.DataFrame, space: str = "pixel") -> float:
    """Fraction of the (evaluator, n >= 1) cells of ``space`` where masking by TIS lowers the mean target
    probability more than masking at random positions (drop = original - masked)."""
    t = table[(table["space"] == space) & (table["n"] >= 1)]
    if t.empty:
        raise ValueError(f"the table has no rows with space = {space!r} and n >= 1")
    p = t.pivot_table(index=["evaluator", "n"], columns="selection", values="mean_prob", aggfunc="mean")
    p = p.reindex(columns=list(SELECTIONS)).dropna()
    if p.empty:
        raise ValueError(f"no (evaluator, n) cell of space {space!r} has all of {SELECTIONS}")
    return float(((p["original"] - p["tis"]) > (p["original"] - p["random"])).mean())


# --- concept level ---------------------------------------------------------------------------------
def concept_level_experiment(
    vq, tokens, labels, token_sets: dict, evaluators: dict, token_num=None, options=Masking(), images=None
) -> pd.DataFrame:
    """Mask, in each class's images, every position holding one of the class's first ``token_num`` ids (all
    if None) of each method's ``token_sets`` (``{method: {label: ids}}``, ranked: ``concepts.token_sets``);
    score each image's label with every evaluator.

    Returns one row per (space, method, evaluator, class) with ``CONCEPT_LEVEL_COLUMNS`` (class means), then
    an ``overall`` row (label -1) per (space, method, evaluator). ``images``: the decoded ``tokens``, if at
    hand.
    """
    t, labels = check_grids(tokens, labels)
    dicts = isinstance(token_sets, dict) and all(isinstance(v, dict) for v in token_sets.values())
    if not dicts or not token_sets:
        raise ValueError("token_sets must be a non-empty dict method name -> {label: ids}")
    if token_num is not None and token_num < 1:
        raise ValueError(f"token_num must be >= 1 (or None for all ids), got {token_num}")
    check_evaluators(evaluators)
    options = replace(options, spaces=check_spaces(options.spaces))
    spaces, batch_size = options.spaces, options.batch_size
    classes = np.unique(labels)
    neutral_id = resolve_neutral(vq, t, options.neutral) if "token" in spaces else None

    if images is not None and len(images) != len(t):
        raise ValueError(f"{len(images)} decoded images for {len(t)} token grids")
    originals = decode_tokens(vq, torch.from_numpy(t), batch_size) if images is None else images
    orig = _score_batches(evaluators, labels, lambda s: originals[s], len(t), batch_size)
    rows = []
    for method, sets in tqdm(token_sets.items(), desc="concept-level masking", disable=not options.progress):
        chosen = {c: np.asarray(sets.get(int(c), []), dtype=np.int64).ravel()[:token_num] for c in classes}
        mask = positions_holding(t, [chosen[c] for c in labels])
        n_masked = mask.reshape(len(t), -1).sum(1)
        masked = _masked_scores(vq, t, originals, mask, labels, evaluators, neutral_id, options)
        for space in spaces:
            scores = masked[space]
            for name in evaluators:
                for c in classes:
                    sel = labels == c
                    ol, op = orig[name][0][sel].mean(), orig[name][1][sel].mean()
                    ml, mp = scores[name][0][sel].mean(), scores[name][1][sel].mean()
                    counts = (int(sel.sum()), len(chosen[c]), float(n_masked[sel].mean()))
                    rows.append((space, method, name, int(c), *counts, ol, ml, ol - ml, op, mp, op - mp))
    return _with_overall_rows(pd.DataFrame(rows, columns=CONCEPT_LEVEL_COLUMNS))


def _with_overall_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per (space, method, evaluator), after its class rows, their mean (``n_images``: sum) as label -1."""
    keys = ["space", "method", "evaluator"]
    means = {c: (c, "mean") for c in table.columns if c not in (*keys, "label", "n_images")}
    overall = table.groupby(keys, sort=False).agg(n_images=("n_images", "sum"), **means).reset_index()
    overall["label"] = -1
    out = pd.concat([table, overall[table.columns]], ignore_index=True)
    group = out.groupby(keys, sort=False).ngroup()  # in order of appearance
    return out.iloc[np.lexsort((out["label"] < 0, group))].reset_index(drop=True)  # lexsort is stable


def drop_per_position(table: pd.DataFrame) -> pd.DataFrame:
    """The overall rows (label -1) of a ``concept_level_experiment`` table normalised by how much each method
    hides: ``drop_per_position`` = ``logit_drop / positions_masked`` (the overall ``mean_masked``; NaN when
    nothing is masked)."""
    cols = ["space", "method", "evaluator", "logit_drop", "prob_drop", "mean_masked"]
    if missing := sorted({*cols, "label"} - set(table.columns)):
        raise ValueError(f"not a concept_level_experiment table: lacks {missing}")
    out = table.loc[table["label"] < 0, cols]
    if out.empty:
        raise ValueError("the table has no overall rows (label -1)")
    out = out.rename(columns={"mean_masked": "positions_masked"}).reset_index(drop=True)
    out["drop_per_position"] = out["logit_drop"] / out["positions_masked"].where(out["positions_masked"] > 0)
    return out


def drop_at_positions(sweep: pd.DataFrame, positions: float, value: str = "logit_drop") -> pd.DataFrame:
    """Each method's ``value`` at the same number of masked positions per image: per (space, method,
    evaluator), the overall rows of a ``concept_level_experiment`` sweep over ``token_num`` (points
    ``(mean_masked, value)``, plus (0, 0)) interpolated linearly at ``positions``; NaN beyond the last point.
    """
    if positions < 0:
        raise ValueError(f"positions must be >= 0, got {positions}")
    rows, keys = [], ["space", "method", "evaluator"]
    for key, g in sweep[sweep["label"] < 0].groupby(keys, sort=False):
        x = np.concatenate([[0.0], g["mean_masked"].to_numpy(float)])
        y = np.concatenate([[0.0], g[value].to_numpy(float)])
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        keep = np.r_[x[1:] != x[:-1], True]  # equal positions masked: the last point (same mask, same drop)
        x, y = x[keep], y[keep]
        at = float(np.interp(positions, x, y)) if positions <= x[-1] else float("nan")
        rows.append((*key, float(positions), at, float(x[-1])))
    return pd.DataFrame(rows, columns=[*keys, "positions", value, "max_masked"])
