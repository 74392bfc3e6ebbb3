"""Several objects with known places: two real digits side by side, the target's place known by construction.

A **composite** pairs the **target** (its class is the label; a random side, a palette colour other than
white) with a white **distractor** of another class. Each half is encoded on its own (no token near the seam
sees the other digit), the two ``h x w`` grids side by side (``h x 2w``). The **pointing game**: the share of
an image's top-k TIS positions on the target's half (``pointing_share``) against chance (``pointing_chance``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.stats import bootstrap

from cortex_utils import vq as vqlib
from cortex_utils.iem import Training, build_iem, train_iem
from cortex_utils.tis import topk_positions

from . import datasets as tokds
from . import rebuild_command
from .cache import load_or_build
from .checkpoints import dataset_spec, load_iem, save_iem
from .digits import CLASS_NAMES, PALETTE, colourize, to_model_input

SIDES = ("left", "right")  # side 0 / 1 of a composite
DISTRACTOR_COLOUR = "white"
RULE = "target: a palette colour other than white, on a random side; distractor: another class, in white"
COLUMNS = ("side", "distractor", "target_row", "distractor_row", "target_colour")


def pair_digits(labels, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` composites over the digits of one split (their ``labels``): the target's row (classes take turns
    in a fresh random order each round, a class's digits cycled), the distractor's row (another class), the
    target's ``side`` (0 left, 1 right) and colour (a ``PALETTE`` index, never white), both classes."""
    labels = np.asarray(labels).astype(np.int64)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"need the labels of at least one digit, got shape {labels.shape}")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError("a distractor must be of another class: the digits hold only one class")
    if n < 1:
        raise ValueError(f"the number of composites must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    turns = np.concatenate([rng.permutation(classes) for _ in range(-(-n // len(classes)))])[:n]
    target = np.empty(n, dtype=np.int64)
    for c in classes:
        at, rows = np.flatnonzero(turns == c), rng.permutation(np.flatnonzero(labels == c))
        target[at] = rows[np.arange(len(at)) % len(rows)]
    distractor = np.empty(n, dtype=np.int64)
    for c in np.unique(labels[target]):
        at = np.flatnonzero(labels[target] == c)
        distractor[at] = rng.choice(np.flatnonzero(labels != c), size=len(at))
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


def encode_composites(vq, gray, pairs: dict, batch_size: int = 256) -> np.ndarray:
    """Token grids ``(N, h, 2w)``: each half encoded on its own by ``vq``, the two grids side by side."""
    ids = [
        vqlib.encode(vq, to_model_input(x), batch_size=batch_size, progress=True).numpy()
        for x in halves(gray, pairs)
    ]
    return np.concatenate(ids, -1)


def decode_composites(vq, tokens) -> torch.Tensor:
    """Images in [-1, 1] ``(N, C, H, 2W)`` of composite grids ``(N, h, 2w)``, each half decoded apart."""
    tokens = vqlib.check_token_grids(tokens, vqlib.codebook(vq).shape[0])
    w = vqlib.grid_shape(vq)[1]
    if tokens.shape[2] != 2 * w:
        raise ValueError(
            f"composite grids are {2 * w} tokens wide (two {w}-wide halves), got {tokens.shape[2]}"
        )
    left, right = tokens[..., :w].contiguous(), tokens[..., w:].contiguous()
    return torch.cat([vqlib.decode(vq, left), vqlib.decode(vq, right)], -1)


def composite_dataset(vq, data: dict, sizes: dict, path, shipped_path, seed: int = 0, rebuild: bool = False):
    """``(dataset, why, made_here)``: the composite token dataset at ``path``, ``sizes[split]`` composites of
    each split of ``data`` (``digits.load_digits``); a copy of the shipped one if its card matches."""
    settings = {"sizes": dict(sizes), "seed": seed, "rule": RULE, "vq_fingerprint": vq.fingerprint}
    expect = {"settings": settings}

    def make():
        splits, columns = {}, {}
        for i, (split, n) in enumerate(sizes.items()):
            if split not in data:
                raise ValueError(f"no digits for split {split!r} (have {sorted(data)})")
            pairs = pair_digits(data[split]["labels"], n, seed=seed * 100 + i)
            splits[split] = (encode_composites(vq, data[split]["gray"], pairs), pairs["label"])
            columns[split] = {c: pairs[c] for c in COLUMNS}
        meta = vqlib.vq_meta(vq)
        meta["grid"] = [meta["grid"][0], 2 * meta["grid"][1]]  # the same codebook, a grid twice as wide
        details = {"rule": RULE, "sizes": dict(sizes), "seed": seed, "halves": "encoded apart"}
        ds = tokds.save_token_dataset(
            path, splits, CLASS_NAMES, meta, source="composites", details=details, columns=columns
        )
        card = {"kind": "token dataset", "settings": settings, "rebuild": rebuild_command(ds.vq_family)}
        tokds.write_dataset_card(path, card)
        return ds

    def copy(found):
        return tokds.copy_dataset(tokds.load_token_dataset(found), path)

    return load_or_build(shipped_path, expect, copy, make, "rebuild = True" if rebuild else "")


def composite_iem(
    ds, codebook: torch.Tensor, training: dict, path, shipped_path, retrain=False, device="cpu"
):
    """A VGG-like IEM (architecture 1) on the composites: the shipped one when it was trained on exactly this
    train split with exactly ``training`` (``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``lr_step``,
    ``lr_gamma``, ``width``, ``seed``), else trained here; on ``device``. Returns ``(model, weights path,
    why, trained)``."""
    expect = {"train_fingerprint": tokds.split_fingerprint(ds, "train"), "training": training}
    spec = {"arch": 1, **dataset_spec(ds)}

    def train():
        torch.manual_seed(training["seed"])
        model = build_iem(1, spec["in_channels"], ds.grid, spec["n_classes"], width=training["width"])
        model.to(device)
        train = tokds.embedding_loader(
            ds, "train", codebook, training["batch_size"], shuffle=True, seed=training["seed"]
        )
        val = tokds.embedding_loader(ds, "val", codebook, 512)
        recipe = Training(*(training[k] for k in ("epochs", "lr", "weight_decay", "lr_step", "lr_gamma")))
        log, _ = train_iem(model, train, val, recipe, desc="IEM on composites")
        best = log.loc[log["val_loss"].idxmin()]
        card = {"kind": "iem_composites", "rule": RULE, "vq_fingerprint": ds.manifest["vq_fingerprint"]}
        metrics = {"best_val_loss": float(best["val_loss"]), "val_acc_at_best": float(best["val_acc"])}
        card.update(expect, log=log.to_dict("records"), metrics=metrics)
        card["rebuild"] = rebuild_command(ds.vq_family)
        return model, Path(save_iem(model, path, card=card))

    (model, where), why, trained = load_or_build(
        shipped_path,
        expect,
        lambda found: (load_iem(found, expect=spec), Path(found)),
        train,
        "retrain = True" if retrain else "",
    )
    return model.to(device), where, why, trained


# --- the pointing game ----------------------------------------------------------------------------------


def _sides(side, n: int) -> np.ndarray:
    side = np.asarray(side)
    if side.shape != (n,):
        raise ValueError(f"need one side per map ({n}), got shape {side.shape}")
    if n and not np.isin(side, (0, 1)).all():
        raise ValueError("sides must be 0 (left) or 1 (right)")
    return side.astype(np.int64)


def _maps(maps, side) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[2] % 2:
        raise ValueError(f"composite maps must be (N, h, w) with an even width w, got shape {maps.shape}")
    if len(maps) == 0:
        raise ValueError("no maps (an empty stack)")
    return maps, _sides(side, len(maps))


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
    maps, side = _maps(maps, side)
    w = maps.shape[2] // 2
    return np.where(side[:, None, None] == 1, maps[..., w:], maps[..., :w])


def pointing_share(scores, side, k: int = 5) -> np.ndarray:
    """Per image, the share (float ``(N,)``) of its ``k`` highest-TIS positions on the target's half."""
    scores, side = _maps(scores, side)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    on_target = target_mask(scores.shape[1:], side).reshape(len(scores), -1)
    return np.take_along_axis(on_target, topk_positions(scores, k), 1).mean(1)


def pointing_chance(grid) -> float:
    """The share of a composite grid's positions on the target's half: where a map knowing nothing points."""
    return float(target_mask(grid, [0]).mean())


def mean_interval(
    values, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (one per image) with a percentile bootstrap interval over
    the images (``scipy.stats.bootstrap``; one image: no spread)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        raise ValueError("no values to average")
    if len(values) == 1:
        return float(values[0]), float(values[0]), float(values[0])
    ci = bootstrap(
        (values,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile", rng=seed
    )
    return float(values.mean()), float(ci.confidence_interval.low), float(ci.confidence_interval.high)


def overlap_chance(reference: dict, weights, k: int, n_draws: int = 2000, seed: int = 0) -> float:
    """The overlap ``|A & B| / |A|`` of ``k`` ids ``A`` drawn without replacement, each with probability
    proportional to ``weights[c]`` (e.g. its usage in class ``c``; all when fewer have a weight), with each
    class's reference set ``B`` (``reference``: ``{class: ids}``), averaged over draws and classes."""
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
