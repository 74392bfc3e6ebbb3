"""Explanation evaluation by masking: hide the tokens an explanation points at and watch independent
classifiers (the evaluators) lose confidence in the target class.

As the original: a *selection* of codebook ids is made (the ids at an image's top-n TIS positions, at n
random positions, or a class's concept / baseline token set) and **every** grid position holding one of
those ids is masked. Two ways to mask:

* ``pixel`` (the original): decode the original tokens, then black out (value -1) the image patch of each
  masked position (patch = image size / grid size);
* ``token``: replace the masked positions' ids with a neutral id (``neutral_token``), then decode.

Token grids are integer ``(N, h, w)`` (numpy or torch); position masks are bool ``(N, h, w)``; images are
float ``(N, C, H, W)`` in [-1, 1]. Evaluators are a dict ``name -> model`` taking such images.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cortex_run.evaluators import predict_logits

from .progress import tqdm
from .tis import topk_positions
from .vq import codebook, decode

SPACES = ("pixel", "token")
NEUTRAL = ("background", "mean")
SELECTIONS = ("original", "tis", "random")


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


def _per_image(ids, n_images: int) -> bool:
    """Is ``ids`` one id set per image (list of arrays, 2-D or ragged array) rather than one shared set?"""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, np.ndarray):
        if ids.dtype == object:
            per = ids.ndim == 1 and all(np.ndim(a) >= 1 for a in ids)
        else:
            per = ids.ndim == 2
    elif isinstance(ids, (list, tuple)):
        per = len(ids) > 0 and all(np.ndim(a) >= 1 for a in ids)
    else:
        return False
    if per and len(ids) != n_images:
        raise ValueError(f"per-image id sets: got {len(ids)} sets for {n_images} token grids")
    return per


def positions_holding(tokens, ids) -> np.ndarray:
    """Bool ``(N, h, w)``: every position whose id is in the selected set.

    ``ids`` is either one set shared by all images (an int, a 1-D array or a list of ints) or one set per
    image (a 2-D array ``(N, n)`` or a list of N arrays, possibly of different lengths).
    """
    t = as_token_grids(tokens)
    if _per_image(ids, len(t)):
        sets = [np.asarray(a, dtype=np.int64).ravel() for a in ids]
        flat = np.concatenate(sets) if sets else np.zeros(0, np.int64)
        if flat.size and flat.min() < 0:
            raise ValueError(f"codebook ids must be >= 0, got {int(flat.min())}")
        m = int(max(t.max(initial=0), flat.max(initial=0))) + 1
        rows = np.repeat(np.arange(len(t)), [len(s) for s in sets])
        keys = np.arange(len(t))[:, None, None] * m + t  # (image, id) pairs as one integer
        return np.isin(keys, rows * m + flat)
    flat = np.asarray(ids, dtype=np.int64).ravel()
    if flat.size and flat.min() < 0:
        raise ValueError(f"codebook ids must be >= 0, got {int(flat.min())}")
    return np.isin(t, flat)


def positions_mask(positions, grid) -> np.ndarray:
    """Flat positions ``(N, n)`` (row-major grid indices) -> bool ``(N, h, w)``: mask exactly those positions
    (not every position holding their ids; for that use
    ``positions_holding(tokens, ids_at(tokens, positions))``)."""
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
    """``(N, n)`` flat positions per image, drawn without replacement, reproducible from ``seed``.

    The draw for ``n`` is the first ``n`` columns of a fixed random permutation per image, so for one seed
    the selections are nested: ``random_positions(N, g, 5, s)`` is ``random_positions(N, g, 10, s)[:, :5]``.
    """
    hw = int(grid[0]) * int(grid[1])
    if not 0 <= n <= hw:
        raise ValueError(f"n must lie in [0, {hw}] (the grid has {hw} positions), got {n}")
    rng = np.random.default_rng(seed)
    return rng.random((n_images, hw)).argsort(1, kind="stable")[:, :n]


# --- masking ---------------------------------------------------------------------------------------


def mask_pixels(images: torch.Tensor, position_mask, value: float = -1.0) -> torch.Tensor:
    """Black out (``value`` -1 = black in [-1, 1]) the ``H/h x W/w`` patch of every masked grid position.

    Returns a new tensor; the input is unchanged.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not torch.is_floating_point(images):
        raise ValueError("images must be a float tensor (N, C, H, W) in [-1, 1]")
    return images.masked_fill(_pixel_mask(images, position_mask)[:, None], value)


def _pixel_mask(images: torch.Tensor, position_mask) -> torch.Tensor:
    """Bool ``(N, H, W)``: the grid mask blown up to the pixels of its patches."""
    m = _mask_np(position_mask, len(images))
    (h, w), (H, W) = m.shape[1:], images.shape[2:]
    if H % h or W % w:
        raise ValueError(f"image size {H}x{W} is not a multiple of the grid {h}x{w}")
    up = torch.from_numpy(m).to(images.device)
    return up.repeat_interleave(H // h, 1).repeat_interleave(W // w, 2)


def masked_patch_mean(images: torch.Tensor, position_mask) -> float:
    """Mean value (over pixels and channels) of ``images`` inside the patches of the masked positions: what a
    mask hides. In [-1, 1]; -1 means every hidden pixel was already black. NaN when nothing is masked."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not torch.is_floating_point(images):
        raise ValueError("images must be a float tensor (N, C, H, W) in [-1, 1]")
    up = _pixel_mask(images, position_mask)
    n = int(up.sum()) * images.shape[1]
    return float((images * up[:, None]).sum() / n) if n else float("nan")


def neutral_token(vq_or_codebook=None, tokens=None, how: str = "background") -> int:
    """The id that replaces masked positions in token space.

    * ``"background"`` (default): the most frequent id in ``tokens`` (ties: the smaller id). On digits drawn
      on a black background this is the background code, so masking decodes to (near) background, the
      token-space analogue of the original's black patch.
    * ``"mean"``: the codebook row nearest (L2) to the codebook mean, a "content-free" code that does not
      depend on the data; it need not look like background.
    """
    if how not in NEUTRAL:
        raise ValueError(f"unknown neutral token choice {how!r}; choose one of {NEUTRAL}")
    cb = None
    if vq_or_codebook is not None:
        cb = vq_or_codebook if isinstance(vq_or_codebook, torch.Tensor) else codebook(vq_or_codebook)
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
        return torch.where(
            torch.from_numpy(m).to(tokens.device),
            torch.tensor(neutral, dtype=tokens.dtype, device=tokens.device),
            tokens,
        )
    dtype = np.asarray(tokens).dtype
    if neutral > np.iinfo(dtype).max:
        raise ValueError(f"neutral id {neutral} does not fit the tokens' dtype {dtype}")
    return np.where(m, neutral, np.asarray(tokens)).astype(dtype)


# --- scoring ---------------------------------------------------------------------------------------


def check_evaluators(evaluators) -> dict:
    """``evaluators`` as given, if it is a non-empty dict name -> model; else a ValueError saying what it must
    be."""
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
    parts = [
        target_scores(
            evaluators, make_images(slice(i, i + batch_size)), targets[i : i + batch_size], batch_size
        )
        for i in range(0, n_images, batch_size)
    ]
    return {
        k: (np.concatenate([p[k][0] for p in parts]), np.concatenate([p[k][1] for p in parts]))
        for k in evaluators
    }


def check_neutral(neutral) -> None:
    """A neutral-token parameter must be an id (an int, or its digits as text, e.g. ``"17"``) or a name from
    ``NEUTRAL``; anything else is refused (the id's range is checked by ``resolve_neutral``)."""
    if not (isinstance(neutral, int) or str(neutral).isdigit() or neutral in NEUTRAL):
        raise ValueError(f"neutral must be an id (e.g. '17') or one of {NEUTRAL}, got {neutral!r}")


def resolve_neutral(vq, tokens, neutral) -> int:
    """The neutral id to mask with: ``neutral`` itself when it is an id (an int or its digits as text),
    else ``neutral_token(vq, tokens, neutral)``; an id outside the codebook is refused."""
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
    """Token grids ``(N, h, w)`` (a tensor) decoded to images, in batches of at most 64."""
    return decode(
        vq, tokens_t, batch_size=min(batch_size, 64)
    )  # the decoder is fastest on small batches (CPU cache)


# --- image level -----------------------------------------------------------------------------------


def image_level_experiment(
    vq,
    tokens,
    labels,
    tis,
    evaluators: dict,
    ns=tuple(range(0, 55, 5)),
    spaces=SPACES,
    neutral="background",
    seed: int = 0,
    batch_size: int = 256,
    per_image: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Mask the ids at each image's top-n TIS positions vs at n random positions; score with every evaluator.

    For each ``n`` and selection, the ids found at the selected positions are collected per image and every
    position of that image holding one of them is masked (as the original). ``neutral`` (token space) is an
    id or a ``neutral_token`` choice computed on ``tokens``. Random positions use ``random_positions(...,
    seed)`` (nested over n). The target is each image's label.

    Returns one row per (space, evaluator, n, selection) with columns ``space, evaluator, n, selection,
    n_images, mean_masked`` (mean number of masked positions per image), ``masked_fraction`` (of the grid),
    ``mean_logit, mean_prob`` (target logit / softmax probability) and ``logit_drop, prob_drop`` (original
    minus this row; 0 for the original). The ``original`` rows repeat for every n; at n = 0 nothing is
    masked. With ``per_image`` the unaggregated rows are returned instead (``image, label, logit, prob,
    n_masked``).
    """
    t = as_token_grids(tokens)
    n_img, (h, w) = len(t), t.shape[1:]
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != n_img or n_img == 0:
        raise ValueError(
            f"need one label per token grid and at least one grid: {n_img} grids, {len(labels)} labels"
        )
    tis = np.asarray(tis)
    if tis.size != t.size or len(tis) != n_img:
        raise ValueError(f"TIS {tis.shape} must be aligned with the token grids {t.shape}")
    check_evaluators(evaluators)
    spaces = check_spaces(spaces)
    ns = [int(n) for n in ns]
    bad = [n for n in ns if not 0 <= n <= h * w]
    if bad or not ns:
        raise ValueError(f"every n must lie in [0, {h * w}] (the grid is {h}x{w}), got {bad or ns}")
    neutral_id = resolve_neutral(vq, t, neutral) if "token" in spaces else None

    tokens_t = torch.from_numpy(t)
    originals = decode_tokens(vq, tokens_t, batch_size)
    orig = _score_batches(evaluators, labels, lambda s: originals[s], n_img, batch_size)
    rand_all = random_positions(n_img, (h, w), max(ns), seed)
    frames = []

    def add(space, n, selection, scores, n_masked):
        for name, (logit, prob) in scores.items():
            frames.append(
                pd.DataFrame(
                    {
                        "space": space,
                        "evaluator": name,
                        "n": n,
                        "selection": selection,
                        "image": np.arange(n_img),
                        "label": labels,
                        "logit": logit,
                        "prob": prob,
                        "n_masked": n_masked,
                    }
                )
            )

    for n in tqdm(ns, desc="image-level masking", disable=not progress):
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
            if "pixel" in spaces:
                scores = _score_batches(
                    evaluators, labels, lambda s, m=mask: mask_pixels(originals[s], m[s]), n_img, batch_size
                )
                add("pixel", n, selection, scores, n_masked)
            if "token" in spaces:
                masked = torch.from_numpy(mask_tokens(t, mask, neutral_id))
                scores = _score_batches(
                    evaluators,
                    labels,
                    lambda s, m=masked: decode_tokens(vq, m[s], batch_size),
                    n_img,
                    batch_size,
                )
                add("token", n, selection, scores, n_masked)
    rows = pd.concat(frames, ignore_index=True)
    if per_image:
        return rows
    keys = ["space", "evaluator", "n", "selection"]
    table = (
        rows.groupby(keys, sort=False)
        .agg(
            n_images=("image", "size"),
            mean_masked=("n_masked", "mean"),
            mean_logit=("logit", "mean"),
            mean_prob=("prob", "mean"),
        )
        .reset_index()
    )
    table["masked_fraction"] = table["mean_masked"] / (h * w)
    base = table[table.selection == "original"].set_index(["space", "evaluator", "n"])
    idx = pd.MultiIndex.from_frame(table[["space", "evaluator", "n"]])
    table["logit_drop"] = base["mean_logit"].reindex(idx).to_numpy() - table["mean_logit"]
    table["prob_drop"] = base["mean_prob"].reindex(idx).to_numpy() - table["mean_prob"]
    return table[
        [
            "space",
            "evaluator",
            "n",
            "selection",
            "n_images",
            "mean_masked",
            "masked_fraction",
            "mean_logit",
            "mean_prob",
            "logit_drop",
            "prob_drop",
        ]
    ]


def tis_beats_random(table: pd.DataFrame, space: str = "pixel") -> float:
    """Fraction of the (evaluator, n >= 1) cells of ``space`` where masking by TIS lowers the mean target
    probability more than masking at random positions (drop = original - masked)."""
    t = table[(table["space"] == space) & (table["n"] >= 1)]
    if t.empty:
        raise ValueError(f"the table has no rows with space = {space!r} and n >= 1")
    p = t.pivot_table(index=["evaluator", "n"], columns="selection", values="mean_prob", aggfunc="mean")
    missing = [s for s in SELECTIONS if s not in p.columns]
    if missing:
        raise ValueError(f"the table lacks selection(s) {missing} for space {space!r}")
    p = p.dropna(subset=list(SELECTIONS))
    if p.empty:
        raise ValueError(f"no (evaluator, n) cell of space {space!r} has all of {SELECTIONS}")
    drop_tis = p["original"] - p["tis"]
    drop_random = p["original"] - p["random"]
    return float((drop_tis > drop_random).mean())


# --- concept level ---------------------------------------------------------------------------------


def concept_level_experiment(
    vq,
    tokens,
    labels,
    token_sets: dict,
    evaluators: dict,
    token_num: int | None = None,
    spaces=("pixel",),
    neutral="background",
    class_names=None,
    batch_size: int = 256,
    progress: bool = True,
    images: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Mask, in each class's images, every position holding one of the class's first ``token_num`` ids.

    ``token_sets`` maps a method name to ``{label: ids}`` (ranked, e.g. ``concepts.token_sets``), e.g.
    ``{"cortex": ..., "frequency": ..., "contrastive": ...}``; a class missing from a method's dict gets
    no ids (nothing masked). ``token_num=None`` uses every id given. The target is each image's label.

    Returns one row per (space, method, evaluator, class) with columns ``space, method, evaluator, label,
    class_name, n_images, n_tokens, mean_masked, original_logit, masked_logit, logit_drop, original_prob,
    masked_prob, prob_drop`` (class means), plus per (space, method, evaluator) an ``overall`` row
    (label -1): the unweighted mean over the class rows (``n_images`` is their sum). ``images``: the
    decoded ``tokens``, if already at hand (a sweep over ``token_num`` decodes them once).
    """
    t = as_token_grids(tokens)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(t) or len(t) == 0:
        raise ValueError(
            f"need one label per token grid and at least one grid: {len(t)} grids, {len(labels)} labels"
        )
    if (
        not isinstance(token_sets, dict)
        or not token_sets
        or not all(isinstance(v, dict) for v in token_sets.values())
    ):
        raise ValueError("token_sets must be a non-empty dict method name -> {label: ids}")
    if token_num is not None and token_num < 1:
        raise ValueError(f"token_num must be >= 1 (or None for all ids), got {token_num}")
    check_evaluators(evaluators)
    spaces = check_spaces(spaces)
    classes = np.unique(labels)
    if class_names is None:
        class_names = [str(c) for c in range(classes.max() + 1)]
    if classes.max() >= len(class_names):
        raise ValueError(f"label {classes.max()} has no name among {len(class_names)} class names")
    neutral_id = resolve_neutral(vq, t, neutral) if "token" in spaces else None

    if images is not None and len(images) != len(t):
        raise ValueError(f"{len(images)} decoded images for {len(t)} token grids")
    originals = decode_tokens(vq, torch.from_numpy(t), batch_size) if images is None else images
    orig = _score_batches(evaluators, labels, lambda s: originals[s], len(t), batch_size)
    rows = []
    for method, sets in tqdm(token_sets.items(), desc="concept-level masking", disable=not progress):
        chosen = {c: np.asarray(sets.get(int(c), []), dtype=np.int64).ravel()[:token_num] for c in classes}
        mask = positions_holding(t, [chosen[c] for c in labels])
        n_masked = mask.reshape(len(t), -1).sum(1)
        for space in spaces:
            if space == "pixel":
                scores = _score_batches(
                    evaluators, labels, lambda s, m=mask: mask_pixels(originals[s], m[s]), len(t), batch_size
                )
            else:
                masked = torch.from_numpy(mask_tokens(t, mask, neutral_id))
                scores = _score_batches(
                    evaluators,
                    labels,
                    lambda s, m=masked: decode_tokens(vq, m[s], batch_size),
                    len(t),
                    batch_size,
                )
            for name in evaluators:
                for c in classes:
                    sel = labels == c
                    ol, op = orig[name][0][sel].mean(), orig[name][1][sel].mean()
                    ml, mp = scores[name][0][sel].mean(), scores[name][1][sel].mean()
                    rows.append(
                        {
                            "space": space,
                            "method": method,
                            "evaluator": name,
                            "label": int(c),
                            "class_name": class_names[c],
                            "n_images": int(sel.sum()),
                            "n_tokens": len(chosen[c]),
                            "mean_masked": float(n_masked[sel].mean()),
                            "original_logit": ol,
                            "masked_logit": ml,
                            "logit_drop": ol - ml,
                            "original_prob": op,
                            "masked_prob": mp,
                            "prob_drop": op - mp,
                        }
                    )
    table = pd.DataFrame(rows)
    keys = ["space", "method", "evaluator"]
    overall = (
        table.groupby(keys, sort=False)
        .agg(
            n_images=("n_images", "sum"),
            **{c: (c, "mean") for c in table.columns if c not in (*keys, "label", "class_name", "n_images")},
        )
        .reset_index()
    )
    overall["label"], overall["class_name"] = -1, "overall"
    out = pd.concat([table, overall[table.columns]], ignore_index=True)
    out["_group"] = out.groupby(keys, sort=False).ngroup()  # groups in order of appearance, overall row last
    out["_overall"] = out["label"] < 0
    return (
        out.sort_values(["_group", "_overall"], kind="stable")
        .drop(columns=["_group", "_overall"])
        .reset_index(drop=True)
    )


def drop_per_position(table: pd.DataFrame) -> pd.DataFrame:
    """Normalise a ``concept_level_experiment`` table by how much each method hides.

    From the overall rows (label -1), per (space, method, evaluator): ``logit_drop``, ``prob_drop``,
    ``positions_masked`` (the overall ``mean_masked``: masked positions per image, averaged as the drop is,
    over the classes' means) and ``drop_per_position`` = ``logit_drop / positions_masked``, the ratio of
    the two means over the same images (NaN when nothing is masked).
    """
    need = {"space", "method", "evaluator", "label", "logit_drop", "prob_drop", "mean_masked"}
    if not need <= set(table.columns):
        raise ValueError(f"not a concept_level_experiment table: lacks {sorted(need - set(table.columns))}")
    out = table[table["label"] < 0][
        ["space", "method", "evaluator", "logit_drop", "prob_drop", "mean_masked"]
    ]
    if out.empty:
        raise ValueError("the table has no overall rows (label -1)")
    out = out.rename(columns={"mean_masked": "positions_masked"}).reset_index(drop=True)
    out["drop_per_position"] = out["logit_drop"] / out["positions_masked"].where(out["positions_masked"] > 0)
    return out


def drop_at_positions(sweep: pd.DataFrame, positions: float, value: str = "logit_drop") -> pd.DataFrame:
    """A matched comparison: each method's ``value`` at the same number of masked positions per image.

    ``sweep`` holds the overall rows (label -1) of ``concept_level_experiment`` at several ``token_num``;
    per (space, method, evaluator) its points (``mean_masked``, ``value``), plus (0, 0) (nothing masked,
    nothing lost), are linearly interpolated at ``positions``. NaN where the curve does not reach that far
    (no extrapolation). Returns ``space, method, evaluator, positions, <value>, max_masked``.
    """
    if positions < 0:
        raise ValueError(f"positions must be >= 0, got {positions}")
    rows = []
    for (space, method, ev), g in sweep[sweep["label"] < 0].groupby(
        ["space", "method", "evaluator"], sort=False
    ):
        x = np.concatenate([[0.0], g["mean_masked"].to_numpy(float)])
        y = np.concatenate([[0.0], g[value].to_numpy(float)])
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        keep = np.r_[x[1:] != x[:-1], True]  # equal positions masked: the last point (same mask, same drop)
        x, y = x[keep], y[keep]
        at = float(np.interp(positions, x, y)) if positions <= x[-1] else float("nan")
        rows.append(
            {
                "space": space,
                "method": method,
                "evaluator": ev,
                "positions": float(positions),
                value: at,
                "max_masked": float(x[-1]),
            }
        )
    return pd.DataFrame(rows, columns=["space", "method", "evaluator", "positions", value, "max_masked"])
