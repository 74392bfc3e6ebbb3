"""Several objects with known places: two real digits side by side, the target's place known by construction.

A **composite** puts two real 32x32 digits of one split next to each other. The **target** sits on a random
side and is drawn in one of the palette's colours other than white; the **distractor**, a digit of another
class, is drawn in white. The label is the target's class, so an IEM has to find the coloured digit and read
it: the rule is learnable (colour says which digit counts) while position alone says nothing (the side is
random).

Each half is encoded on its own by the run's tokenizer and the two ``h x w`` grids are put side by side
(``h x 2w``; 8x16 for the shipped VQ model). A token of the left half then depends on the left digit only:
encoding the 64-px-wide image at once would let the encoder's receptive field carry one digit into the other
half's tokens near the seam, and the truth of where the target is would blur. So the target's positions are
known exactly, and the **pointing game** asks what share of each image's top-k TIS positions falls on the
target's half (``pointing_share``), against chance (the half's share of the positions, ``pointing_chance``)
and against the same IEM with randomised weights (``sanity.randomize_full``, the Adebayo control).
``bootstrap_mean`` gives a mean with a percentile interval over images, ``overlap_chance`` the overlap of
random id sets with a reference set (the chance beside a concept-token overlap).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cortex_utils import vq as vqlib
from cortex_utils.iem import build_iem, load_iem, save_iem, shipped_iem, train_iem
from cortex_utils.tis import topk_positions

from . import datasets as tokds
from . import rebuild_command
from .digits import CLASS_NAMES, PALETTE, colourize, to_model_input

SIDES = ("left", "right")  # side 0 / 1 of a composite
DISTRACTOR_COLOUR = "white"
RULE = "target: a palette colour other than white, on a random side; distractor: another class, in white"
COLUMNS = ("side", "distractor", "target_row", "distractor_row", "target_colour")


def pair_digits(labels, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` composites over the digits of one split (their ``labels``): for each, the target's row (the
    classes take turns, in a fresh random order every round, so each class has ``n / classes`` targets give or
    take one; within a class every digit in turn, in a random order, cycled when needed), the distractor's row
    (a random digit of another class), the target's ``side`` (0 left, 1 right, at random) and its colour (a
    ``PALETTE`` index, never white). Deterministic in ``seed``."""
    labels = np.asarray(labels).astype(np.int64)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"need the labels of at least one digit, got shape {labels.shape}")
    if len(np.unique(labels)) < 2:
        raise ValueError("a distractor must be of another class: the digits hold only one class")
    if n < 1:
        raise ValueError(f"the number of composites must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    turns = np.concatenate([rng.permutation(classes) for _ in range(-(-n // len(classes)))])[:n]
    target = np.empty(n, dtype=np.int64)
    for c in classes:
        at, rows = np.flatnonzero(turns == c), rng.permutation(np.flatnonzero(labels == c))
        target[at] = rows[np.arange(len(at)) % len(rows)]
    distractor = np.empty(n, dtype=np.int64)
    for c in np.unique(labels[target]):
        others = np.flatnonzero(labels != c)
        at = np.flatnonzero(labels[target] == c)
        distractor[at] = rng.choice(others, size=len(at))
    colours = [i for i, name in enumerate(PALETTE) if name != DISTRACTOR_COLOUR]
    return {
        "target_row": target,
        "distractor_row": distractor,
        "side": rng.integers(0, 2, n),
        "target_colour": rng.choice(colours, size=n),
        "label": labels[target],
        "distractor": labels[distractor],
    }


def halves(gray, pairs: dict) -> tuple[np.ndarray, np.ndarray]:
    """The left and right digits of each composite as uint8 RGB ``(N, 3, H, W)``: the target in its colour on
    its side, the distractor in white on the other."""
    gray = np.asarray(gray)
    if gray.ndim != 3:
        raise ValueError(f"gray digits must be (N, H, W), got shape {gray.shape}")
    palette = np.array(list(PALETTE.values()), dtype=np.uint8)
    target = colourize(gray[pairs["target_row"]], palette[pairs["target_colour"]])
    white = palette[list(PALETTE).index(DISTRACTOR_COLOUR)]
    distractor = colourize(gray[pairs["distractor_row"]], np.repeat(white[None], len(target), 0))
    right = np.asarray(pairs["side"], dtype=bool)[:, None, None, None]
    return np.where(right, distractor, target), np.where(right, target, distractor)


def side_by_side(left, right):
    """Two stacks of images or grids ``(N, ..., H, W)`` joined along the width -> ``(N, ..., H, 2W)``."""
    if left.shape != right.shape:
        raise ValueError(
            f"the two halves must have the same shape, got {tuple(left.shape)} and {tuple(right.shape)}"
        )
    if isinstance(left, torch.Tensor):
        return torch.cat([left, right], -1)
    return np.concatenate([left, right], -1)


def encode_composites(vq, gray, pairs: dict, batch_size: int = 256) -> np.ndarray:
    """Token grids ``(N, h, 2w)``: each half encoded on its own by ``vq``, the two grids side by side."""
    left, right = halves(gray, pairs)
    ids = [
        vqlib.encode(vq, to_model_input(x), batch_size=batch_size, progress=True).numpy()
        for x in (left, right)
    ]
    return side_by_side(*ids)


def decode_composites(vq, tokens) -> torch.Tensor:
    """Images in [-1, 1] ``(N, C, H, 2W)`` of composite token grids ``(N, h, 2w)``: each half decoded on its
    own."""
    tokens = vqlib.check_token_grids(tokens, vqlib.codebook(vq).shape[0])
    w = vqlib.grid_shape(vq)[1]
    if tokens.shape[2] != 2 * w:
        raise ValueError(
            f"composite grids are {2 * w} tokens wide (two {w}-wide halves), got {tokens.shape[2]}"
        )
    return side_by_side(
        vqlib.decode(vq, tokens[..., :w].contiguous()), vqlib.decode(vq, tokens[..., w:].contiguous())
    )


def composite_meta(vq) -> dict:
    """``vq.vq_meta`` of a composite dataset: the same codebook, a grid twice as wide."""
    meta = vqlib.vq_meta(vq)
    return {**meta, "grid": [meta["grid"][0], 2 * meta["grid"][1]]}


def make_composites(vq, data: dict, sizes: dict, seed: int = 0) -> dict:
    """``{split: (tokens, labels, columns)}`` for ``sizes`` (``{split: n}``) composites of each split of
    ``data`` (``digits.load_digits``): both digits of a composite come from that split."""
    out = {}
    for i, (split, n) in enumerate(sizes.items()):
        if split not in data:
            raise ValueError(f"no digits for split {split!r} (have {sorted(data)})")
        pairs = pair_digits(data[split]["labels"], n, seed=seed * 100 + i)
        out[split] = (
            encode_composites(vq, data[split]["gray"], pairs),
            pairs["label"],
            {c: pairs[c] for c in COLUMNS},
        )
    return out


def composite_dataset(vq, data: dict, sizes: dict, path, shipped_path, seed: int = 0, rebuild: bool = False):
    """The composite token dataset at ``path``: a copy of the shipped one (``shipped_path``) when its card
    says it was made by this tokenizer with these settings, else made here (with its card, so that
    ``make checkpoints`` can ship it). Returns ``(dataset, why, made_here)``."""
    settings = {"sizes": dict(sizes), "seed": seed, "rule": RULE, "vq_fingerprint": vqlib.fingerprint(vq)}
    shipped, why = (
        (None, "rebuild = True")
        if rebuild
        else (
            tokds.shipped_dataset(shipped_path, settings)
            if Path(shipped_path).is_dir()
            else (None, f"nothing at {shipped_path}")
        )
    )
    if shipped is not None:
        return tokds.copy_dataset(shipped, path), why, False
    splits = make_composites(vq, data, sizes, seed)
    details = {"rule": RULE, "sizes": dict(sizes), "seed": seed, "halves": "encoded apart"}
    ds = tokds.save_token_dataset(
        path,
        {s: (t, y) for s, (t, y, _) in splits.items()},
        CLASS_NAMES,
        composite_meta(vq),
        source="composites",
        details=details,
        columns={s: c for s, (_, _, c) in splits.items()},
    )
    tokds.write_dataset_card(
        path, {"kind": "token dataset", "settings": settings, "rebuild": rebuild_command(ds.vq_family)}
    )
    return ds, why, True


def composite_iem(ds, codebook: torch.Tensor, training: dict, path, shipped_path, retrain: bool = False):
    """A VGG-like IEM (architecture 1) on the composites: the shipped one at ``shipped_path`` when it was
    trained on exactly this train split with exactly ``training`` (``epochs``, ``batch_size``, ``lr``,
    ``weight_decay``, ``lr_step``, ``lr_gamma``, ``width``, ``seed``), else trained here and saved to ``path``
    with its card. Returns ``(model, path of its weights, why, trained)``."""
    fp = tokds.split_fingerprint(ds, "train")
    spec = {"in_channels": ds.manifest["embed_dim"], "grid": list(ds.grid), "n_classes": len(ds.class_names)}
    found, why = (None, "retrain = True") if retrain else shipped_iem(shipped_path, fp, training)
    if found:
        return load_iem(found, expect={"arch": 1, **spec}), Path(found), why, False
    torch.manual_seed(training["seed"])
    model = build_iem(1, spec["in_channels"], ds.grid, spec["n_classes"], width=training["width"])
    train = tokds.embedding_loader(
        ds, "train", codebook, training["batch_size"], shuffle=True, seed=training["seed"]
    )
    log, _ = train_iem(
        model,
        train,
        tokds.embedding_loader(ds, "val", codebook, 512),
        epochs=training["epochs"],
        lr=training["lr"],
        weight_decay=training["weight_decay"],
        step_size=training["lr_step"],
        gamma=training["lr_gamma"],
        desc="IEM on composites",
    )
    best = log.loc[log["val_loss"].idxmin()]
    save_iem(
        model,
        path,
        card={
            "kind": "iem_composites",
            "rule": RULE,
            "vq_fingerprint": ds.manifest["vq_fingerprint"],
            "train_fingerprint": fp,
            "training": training,
            "log": log.to_dict("records"),
            "metrics": {"best_val_loss": float(best["val_loss"]), "val_acc_at_best": float(best["val_acc"])},
            "rebuild": rebuild_command(ds.vq_family),
        },
    )
    return model, Path(path), why, True


# --- the pointing game ----------------------------------------------------------------------------------


def _sides(side, n: int) -> np.ndarray:
    side = np.asarray(side)
    if side.shape != (n,):
        raise ValueError(f"need one side per map ({n}), got shape {side.shape}")
    if n and not np.isin(side, (0, 1)).all():
        raise ValueError("sides must be 0 (left) or 1 (right)")
    return side.astype(np.int64)


def _maps(maps) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[2] % 2:
        raise ValueError(f"composite maps must be (N, h, w) with an even width w, got shape {maps.shape}")
    if len(maps) == 0:
        raise ValueError("no maps (an empty stack)")
    return maps


def target_mask(grid, side) -> np.ndarray:
    """Bool ``(N, h, w)``: True on the target's half of each composite grid (``side`` 0: the left half)."""
    h, w = (int(g) for g in grid)
    if w % 2:
        raise ValueError(f"a composite grid has an even width, got {w}")
    side = _sides(side, len(np.asarray(side)))
    right = np.arange(w) >= w // 2
    return np.broadcast_to((right[None] == side[:, None].astype(bool))[:, None, :], (len(side), h, w)).copy()


def target_half(maps, side) -> np.ndarray:
    """The target's half of each map or token grid: ``(N, h, w)`` -> ``(N, h, w / 2)``."""
    maps = _maps(maps)
    side = _sides(side, len(maps))
    w = maps.shape[2] // 2
    return np.where(side[:, None, None] == 1, maps[..., w:], maps[..., :w])


def pointing_share(scores, side, k: int = 5) -> np.ndarray:
    """Per image, the share of its ``k`` highest-TIS positions (``tis.topk_positions``) on the target's half:
    float ``(N,)`` in [0, 1]."""
    scores = _maps(scores)
    side = _sides(side, len(scores))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = topk_positions(scores, k)  # (N, k) flat positions
    column = top % scores.shape[2]
    on_right = column >= scores.shape[2] // 2
    return (on_right == side[:, None].astype(bool)).mean(1)


def pointing_chance(grid) -> float:
    """The share of a composite grid's positions on the target's half: a map that knows nothing points there
    this often."""
    h, w = (int(g) for g in grid)
    return float(target_mask((h, w), [0]).sum() / (h * w))


def bootstrap_mean(
    values, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (one per image) with a percentile bootstrap interval
    (images resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        raise ValueError("no values to average")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot must be >= 1 and level in (0, 1), got {n_boot} and {level}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(low), float(high)


def overlap_chance(reference: dict, weights, k: int, n_draws: int = 2000, seed: int = 0) -> float:
    """The overlap ``|A & B| / |A|`` of ``k`` ids ``A`` drawn at random (without replacement, each id with
    probability proportional to ``weights[c]``, e.g. its usage in class ``c``; all of them when fewer than
    ``k`` have a weight) with each class's reference set ``B`` (``reference``: ``{class: ids}``), averaged
    over draws and classes."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or (weights < 0).any():
        raise ValueError(f"weights must be a non-negative (classes, ids) array, got shape {weights.shape}")
    if not reference:
        raise ValueError("no reference sets")
    rng = np.random.default_rng(seed)
    out = []
    for c, ids in reference.items():
        p = weights[c]
        if not (p > 0).any():
            raise ValueError(f"class {c}: no id has a positive weight to draw from")
        size = min(k, int((p > 0).sum()))
        draws = [rng.choice(len(p), size=size, replace=False, p=p / p.sum()) for _ in range(n_draws)]
        out.append(np.mean([np.isin(d, ids).mean() for d in draws]))
    return float(np.mean(out))
