"""The planted-bias world of the embedded default: a generator whose bias is known, and the truth in pixels.

A two-stage generator (as DALL·E 2's prior and decoder): the prior (``planted_prior``, ``draw_looks``) gives
each prompted digit a look (red or green, thick or thin) at odds skewed toward a planted value; a taming
transformer trained at even odds (``planted_bias_data``) draws it (``sample_looks``). The truth comes from
pixels (``measured_attributes``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from skimage.filters import threshold_minimum, threshold_otsu
from skimage.morphology import dilation, footprint_rectangle, skeletonize

from cortex_utils import vq as vqlib
from cortex_utils.devices import device_of

from . import SHIPPED_CHECKPOINTS, SHIPPED_DATA
from . import datasets as tokds
from . import generation as gen
from .artifacts import registered, repo_relative
from .cache import load_or_build, lookup
from .checkpoints import read_card, save_weights
from .digits import colourize, to_model_input, to_uint8
from .notebook import choice, require

# --- prompts and the generator's training data ------------------------------------------------------

ATTRIBUTES = {"colour": ("red", "green"), "thickness": ("thick", "thin")}
LOOKS = (("red", "thick"), ("red", "thin"), ("green", "thick"), ("green", "thin"))  # (colour, thickness)
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60)}  # as digits.PALETTE
SKELETON_LEVEL = 0.5  # restroke: a real digit's pixels at least this share of 255 make its shape
STROKE_LEVEL = 0.4  # measuring: a pixel is stroke when at least this share of the image's brightest
STROKES = "thin: the skeleton; thick: the skeleton dilated by 3x3; Gaussian blur 0.5"  # see restroke


def prompt_id(digit, red, thick):
    """The condition token of the prompt "a <red|green> <thick|thin> <digit>": ``10 * look + digit``, the
    look's index in ``LOOKS``. ``red`` and ``thick``: booleans (or arrays of them, as ``digit``)."""
    look = 2 * (1 - np.asarray(red, dtype=np.int64)) + (1 - np.asarray(thick, dtype=np.int64))
    return 10 * look + np.asarray(digit)


def restroke(gray, value: str) -> np.ndarray:
    """Redraw gray digits ``(N, H, W)`` uint8 as their one-pixel skeleton (``thin``) or the skeleton dilated
    by a 3x3 square (``thick``), blurred (sigma 0.5) and scaled to peak 255: the same digit in both values."""
    choice("thickness value", value, list(ATTRIBUTES["thickness"]))
    out = np.zeros(np.shape(gray), dtype=np.float32)
    for i, g in enumerate(np.asarray(gray)):
        skeleton = skeletonize(g > SKELETON_LEVEL * 255)
        out[i] = dilation(skeleton, footprint_rectangle((3, 3))) if value == "thick" else skeleton
    out = ndimage.gaussian_filter(out, (0, 0.5, 0.5))
    peak = np.maximum(out.reshape(len(out), -1).max(1), 1e-6)[:, None, None]
    return np.clip(np.rint(out / peak * 255), 0, 255).astype(np.uint8)


def stroke_width(images) -> np.ndarray:
    """Per image (uint8 ``(N, H, W)`` or ``(N, C, H, W)``), its mean stroke width in pixels. The stroke:
    pixels above ``STROKE_LEVEL`` of the image's brightest, in the brightest channel (colour-blind). A
    stroke of width $w$ and skeleton length $S$ covers about $A = w\\,(S + w)$ pixels (half a width beyond
    each end), so $w = (\\sqrt{S^2 + 4A} - S)/2$; $A/S$ alone would call short strokes wider."""
    x = np.asarray(images, dtype=np.float32)
    x = x.max(1) if x.ndim == 4 else x
    stroke = x > STROKE_LEVEL * x.reshape(len(x), -1).max(1)[:, None, None]
    area = stroke.reshape(len(x), -1).sum(1).astype(np.float64)
    length = np.array([skeletonize(m).sum() for m in stroke], dtype=np.float64)
    return (np.sqrt(length**2 + 4 * area) - length) / 2


def planted_bias_data(gray, labels, copies: int = 4, seed: int = 0) -> dict:
    """Training images for the bias transformer: every real digit ``copies`` times, red or green and thin or
    thick (``restroke``) at even odds, under the prompt naming both ("a red thin 3"). Returns uint8
    ``images``, ``prompts`` (condition tokens) and a ``table`` (digit, red, thick, source_row)."""
    gray, labels = np.asarray(gray), np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    rows = np.tile(np.arange(len(labels)), copies)
    digit = labels[rows]
    red, thick = rng.random(len(rows)) < 0.5, rng.random(len(rows)) < 0.5
    strokes = np.where(thick[:, None, None], restroke(gray, "thick")[rows], restroke(gray, "thin")[rows])
    colours = np.where(red[:, None], COLOURS["red"], COLOURS["green"])
    table = pd.DataFrame({"digit": digit, "red": red, "thick": thick, "source_row": rows})
    return {"images": colourize(strokes, colours), "prompts": prompt_id(digit, red, thick), "table": table}


# --- the generator -----------------------------------------------------------------------------------


def load_or_train_bias_transformer(
    run_dir, vq, gray, labels, training: dict, retrain: bool = False, bf16: bool = False
):
    """The planted-bias generator: the shipped one if it was trained on this tokenizer with exactly
    ``training`` (and ``STROKES``); otherwise trained here on ``planted_bias_data`` and saved to
    ``<run_dir>/checkpoints``, on ``vq``'s device. Returns ``(model, checkpoint path, training log or None,
    why it trained)``."""
    training = {**training, "strokes": STROKES}
    fp = vq.fingerprint
    shipped = SHIPPED_CHECKPOINTS / "transformer_bias.safetensors"
    (model, path, log), why, trained = load_or_build(
        shipped,
        {"vq_fingerprint": fp, "training": training},
        lambda path: (gen.load_transformer(read_card(path)["config"], path, vq=vq), path, None),
        lambda: _train_bias_transformer(run_dir, vq, gray, labels, training, bf16, fp, shipped.name),
        "retrain = True" if retrain else "",
    )
    return model.to(device_of(vq)), path, log, why if trained else ""


def _train_bias_transformer(run_dir, vq, gray, labels, training: dict, bf16: bool, fp: str, name: str):
    """A prompt-conditioned taming transformer (4 heads; one condition token per ``prompt_id``), trained
    from notebook 02's digit transformer when it has this shape, saved as ``<run_dir>/checkpoints/<name>``."""
    layers, width, dropout = training["layers"], training["width"], training.get("dropout", 0.0)
    steps, batch, lr, seed = (training[k] for k in ("steps", "batch", "lr", "seed"))
    cfg = gen.transformer_config(vq.cortex_config, len(LOOKS) * 10, layers, 4, width, dropout=dropout)
    model = gen.build_transformer(cfg, vq=vq, seed=seed)
    digit_tf = registered(run_dir, "transformer")["checkpoint"]
    base = gen.load_transformer(read_card(digit_tf)["config"], digit_tf, vq=vq)
    start = None  # notebook 02's digit transformer when it has this shape, else random weights
    if (base.transformer.config.n_layer, base.transformer.config.n_embd) == (layers, width):
        model.transformer.load_state_dict(base.transformer.state_dict())
        start = repo_relative(digit_tf)
    model.to(device_of(vq))  # initialised on the host, trained where the tokenizer is
    data = planted_bias_data(gray, labels, training["copies"], seed)
    tokens = vqlib.encode(vq, to_model_input(data["images"]), progress=True).numpy()
    log = gen.train_transformer(
        model, tokens, data["prompts"], steps=steps, batch_size=batch, lr=lr, seed=seed, bf16=bf16, warmup=50
    )
    path = save_weights(
        gen.transformer_state_for_saving(model),
        Path(run_dir) / "checkpoints" / name,
        card={
            "kind": "bias_transformer",
            "config": model.cortex_config,
            "vq_fingerprint": fp,
            "training": training,
            "bf16": bf16,
            "initialised_from": start,
            "prompts": f"one condition token = 10 * look + digit, looks {[' '.join(k) for k in LOOKS]}",
            "data": "real training digits redrawn thin or thick and red or green at even odds "
            "(planted_bias.planted_bias_data)",
            "metrics": {"final_loss": float(log["loss"].iloc[-1])},
            "rebuild": "make checkpoints",
        },
    )
    return model, path, log


# --- the study's generations ---------------------------------------------------------------------------


def study_name(bias_type: str, digit: int) -> str:
    """The name of one study's attribute data and attribute IEM, e.g. ``colour_digit_3``."""
    return f"{bias_type}_digit_{digit}"


def planted_prior(skew: float, biased_digit: dict, planted: dict) -> dict:
    """The sampler's prior over looks: ``{"red": {digit: P(red)}, "thick": {digit: P(thick)}}`` for the
    digits it biases (``biased_digit``: bias type -> digit), every other digit at even odds. The biased
    digit of a type shows its ``planted`` value with probability ``skew``."""
    key = {"colour": "red", "thickness": "thick"}  # each type's first value
    odds = {b: skew if planted[b] == ATTRIBUTES[b][0] else 1 - skew for b in biased_digit}
    return {key[b]: {int(d): odds[b]} for b, d in biased_digit.items()}


def draw_looks(digit, prior: dict, rng, red=None, thick=None):
    """The sampler's first stage: per prompted digit, whether red and whether thick. A value the prompt
    names (``red`` / ``thick``: booleans or arrays) is kept (its draw still made); one left open is drawn
    with the ``prior``'s probability for that digit (``planted_prior``; 0.5 for digits it does not name)."""
    digit = np.asarray(digit)
    drawn = {}
    for key, named in (("red", red), ("thick", thick)):
        p = np.array([prior.get(key, {}).get(int(d), 0.5) for d in digit])
        draws = rng.random(len(digit)) < p
        drawn[key] = draws if named is None else np.broadcast_to(np.asarray(named, dtype=bool), digit.shape)
    return drawn["red"], drawn["thick"]


def sample_looks(model, digit, red, thick, sampling: dict, seed: int = 0, suppress=None) -> torch.Tensor:
    """The sampler's second stage: one token grid per prompt "a <red|green> <thick|thin> <digit>", guided
    toward the digit against the same look's ten digits (``generation.sample_guided``) with ``sampling``'s
    ``guidance``, ``temperature`` and ``top_k`` (0: none)."""
    labels = prompt_id(digit, red, thick)
    rivals = (labels - np.asarray(digit))[:, None] + np.arange(10)
    return gen.sample_guided(
        model, labels, rivals, sampling["guidance"], sampling["temperature"], sampling["top_k"] or None, seed,
        suppress,
    )  # fmt: skip


def load_or_generate_study(
    model, model_path, vq, subjects: dict, prior: dict, sizes: dict, sampling: dict, seed: int = 0,
    out_dir=None, regenerate: bool = False,
):  # fmt: skip
    """The study's token data under ``out_dir/data``: the shipped ``data/default/bias`` if sampled by this
    exact generator (``model_path``'s sha256) with these settings, else sampled here (``generate_study``).
    Returns ``(studies, neutral, why)``."""
    settings = {
        "subjects": {b: [int(d) for d in ds] for b, ds in subjects.items()},
        "prior": {k: {str(d): float(p) for d, p in v.items()} for k, v in prior.items()},
        "attribute_per_value": [int(n) for n in sizes["attribute_per_value"]],
        "n_neutral": int(sizes["n_neutral"]),
        "sampling": {k: sampling[k] for k in ("temperature", "top_k", "guidance")},
        "seed": int(seed),
        "transformer_sha256": tokds.file_digest(model_path),
    }
    shipped, data_dir = SHIPPED_DATA / "bias", Path(out_dir) / "data"

    def copy(name):  # one shipped dataset of the study, checked against this tokenizer, copied into the run
        found, why = lookup(shipped / name, {"settings": settings})
        require(found is not None, f"the shipped data/default/bias do not belong together: {why}")
        return tokds.copy_dataset(tokds.load_token_dataset(found, vq), data_dir / name)

    def load(_):
        studies = {(b, d): copy(study_name(b, d)) for b, ds in subjects.items() for d in ds}
        return studies, neutral_by_digit(copy("neutral"))

    def sample():
        card = {"settings": settings, "generator": repo_relative(model_path)}
        return generate_study(model, vq, subjects, prior, sizes, sampling, seed, out_dir, card)

    (studies, neutral), why, sampled = load_or_build(
        shipped / "neutral", {"settings": settings}, load, sample, "regenerate = True" if regenerate else ""
    )
    how = f"sampled here ({why})" if sampled else f"loaded the shipped data/default/bias ({why})"
    return studies, neutral, how


def neutral_by_digit(ds) -> dict:
    """``{digit: token grids}`` of a neutral-prompt dataset (labels: the digit each prompt named)."""
    tokens, labels = ds.tokens["neutral"], ds.labels["neutral"].astype(np.int64)
    return {int(d): tokens[labels == d] for d in np.unique(labels)}


def generate_study(
    model, vq, subjects: dict, prior: dict, sizes: dict, sampling: dict, seed: int = 0, out_dir=None,
    card: dict | None = None,
):  # fmt: skip
    """Sample the study's token data: per type and digit ``d`` of ``subjects``, the two-class dataset
    ``out_dir/data/<type>_digit_<d>`` of prompts "a <value> d" (the other attribute at even odds); for every
    digit, ``n_neutral`` grids "a d" with looks from ``prior`` (``out_dir/data/neutral``). ``card`` is written
    beside each. Returns ``({(type, digit): dataset}, {digit: neutral tokens})``."""
    per_value, n_neutral = sizes["attribute_per_value"], sizes["n_neutral"]
    rng = np.random.default_rng(seed)
    digits_used = sorted({d for ds in subjects.values() for d in ds})
    jobs = {("neutral", d): draw_looks(np.full(n_neutral, d), prior, rng) for d in digits_used}
    for b, ds in subjects.items():
        for d in ds:
            for split, n in zip(("train", "val", "test"), per_value, strict=True):
                if n:
                    # the type's first value (red, thick), then its second
                    first = np.repeat([True, False], n)
                    named = {"red": first} if b == "colour" else {"thick": first}
                    jobs[(b, d, split)] = draw_looks(np.full(2 * n, d), {}, rng, **named)
    digit = np.concatenate([np.full(len(r), k[1]) for k, (r, _) in jobs.items()])
    red, thick = (np.concatenate([look[i] for look in jobs.values()]) for i in (0, 1))
    # one sampling call for everything: the transformer's cost is per step, so large batches are cheap
    grids = sample_looks(model, digit, red, thick, sampling, seed).numpy()
    ends = np.cumsum([len(r) for r, _ in jobs.values()])[:-1]
    out = dict(zip(jobs, np.split(grids, ends), strict=True))
    meta, data_dir = vqlib.vq_meta(vq), Path(out_dir) / "data"
    card = {"kind": "token dataset", **(card or {}), "rebuild": "make checkpoints"}
    how = {k: sampling[k] for k in ("temperature", "top_k", "guidance")}
    neutral_tokens = np.concatenate([out[("neutral", d)] for d in digits_used])
    neutral = {"neutral": (neutral_tokens, np.repeat(digits_used, n_neutral))}
    details = {"prompts": "a <digit>, its look drawn from the prior", "per_digit": n_neutral, **how}
    neutral_ds = tokds.save_token_dataset(
        data_dir / "neutral", neutral, list("0123456789"), meta, "generated", details, classifier_data=False
    )
    tokds.write_dataset_card(data_dir / "neutral", card)
    studies = {}
    for b, ds in subjects.items():
        values = ATTRIBUTES[b]
        for d in ds:
            splits, names = {}, {}
            for split, n in zip(("train", "val", "test"), per_value, strict=True):
                if n:
                    label = np.repeat([0, 1], n)
                    splits[split] = (out[(b, d, split)], label)
                    names[split] = np.array([f"{split}_{i:05d}_{values[y]}_{d}" for i, y in enumerate(label)])
            details = {"prompts": f"a <{'|'.join(values)}> {d}", "per_value": list(per_value), **how}
            path = data_dir / study_name(b, d)
            studies[(b, d)] = tokds.save_token_dataset(
                path, splits, list(values), meta, source="generated", details=details, names=names
            )
            tokds.write_dataset_card(path, card)
    return studies, neutral_by_digit(neutral_ds)


# --- the truth, from pixels -----------------------------------------------------------------------------


def width_cut(widths) -> tuple[float, str]:
    """The valley between the two peaks of the histogram of ``widths`` (``threshold_minimum``: the fewest
    images lie near it), or Otsu's cut when it will not smooth to two peaks. Returns ``(cut, how)``."""
    widths = np.asarray(widths, dtype=np.float64)
    try:
        return float(threshold_minimum(widths)), "the valley between the histogram's two peaks"
    except RuntimeError:
        return float(threshold_otsu(widths)), "Otsu's cut: the widths' histogram has no two peaks"


def measured_attributes(images, threshold: float) -> pd.DataFrame:
    """The ground truth of generated images, from pixels: ``red`` (the stroke's mean red exceeds its
    green) and ``thick`` (its ``stroke_width`` exceeds ``threshold`` pixels, see ``width_cut``)."""
    x = np.asarray(images, dtype=np.float32)
    stroke = x.max(1, keepdims=True) > STROKE_LEVEL * x.max((1, 2, 3), keepdims=True)[:, :1]
    mean_rgb = (x * stroke).sum((2, 3)) / np.maximum(stroke.sum((2, 3)), 1)
    width = stroke_width(images)
    return pd.DataFrame({"red": mean_rgb[:, 0] > mean_rgb[:, 1], "thick": width > threshold, "width": width})


def planted_shares(measured: pd.DataFrame, planted: dict) -> dict:
    """The share of each bias type's planted value among measured images (``measured_attributes``)."""
    red, thick = float(measured["red"].mean()), float(measured["thick"].mean())
    return {
        "colour": red if planted.get("colour", "red") == "red" else 1 - red,
        "thickness": thick if planted.get("thickness", "thick") == "thick" else 1 - thick,
    }


def pictures(vq, ds) -> dict[str, np.ndarray]:
    """A study's generations decoded once: ``{split: uint8 images}``."""
    return {s: to_uint8(vqlib.decode(vq, torch.from_numpy(z.astype(np.int64)))) for s, z in ds.tokens.items()}


def shows_value(images: dict, bias_type: str, value: str, threshold: float) -> dict[str, np.ndarray]:
    """By pixels (``measured_attributes``), which images show ``value`` (e.g. ``red``, ``thick``):
    ``{split: uint8 images}`` -> ``{split: bool array}``."""
    if value not in ATTRIBUTES[bias_type]:
        raise ValueError(f"{value!r} is not a value of {bias_type}: {ATTRIBUTES[bias_type]}")
    column, first = "red" if bias_type == "colour" else "thick", value == ATTRIBUTES[bias_type][0]
    return {s: measured_attributes(x, threshold)[column].to_numpy() == first for s, x in images.items()}


def drawn_as_other(ds, shows_a: dict, planted_label: int) -> tuple[float, float]:
    """How often one study's labelled generations contradict their prompt, over all splits: ``(share of the
    A-labelled not showing A, share of the B-labelled showing A)``, A the value of label ``planted_label``
    and ``shows_a`` from ``shows_value``."""
    y = np.concatenate([ds.labels[s] for s in ds.splits])
    shows = np.concatenate([shows_a[s] for s in ds.splits])
    is_a = y == planted_label
    return float(1 - shows[is_a].mean()), float(shows[~is_a].mean())


def prompt_agreement(ds, shows_a: dict, planted_label: int) -> tuple[int, int]:
    """``(agreeing, total)``: how many of one study's labelled generations (all splits, both values) show
    the value their prompt named, by the pixel rule."""
    y = np.concatenate([ds.labels[s] for s in ds.splits])
    shows = np.concatenate([shows_a[s] for s in ds.splits])
    return int((shows == (y == planted_label)).sum()), len(y)


# --- notebook 10's parameter checks ----------------------------------------------------------------------


def check_study_parameters(p: dict) -> tuple[int, int, int]:
    """Notebook 10's parameter checks (``p`` from ``notebook.check_parameters``): a ValueError names the first
    bad one. Returns the colour, the thickness and the control digit of ``study_digits``."""
    bias_types, digits, gen_p, sampling = p["bias_types"], p["study_digits"], p["generator"], p["sampling"]
    require(len(set(bias_types)) == len(bias_types) >= 1, "bias_types: name each study once")
    for b in bias_types:
        choice("bias_types entry", b, list(ATTRIBUTES))
    for b, v in p["planted"].items():
        choice("planted key", b, list(ATTRIBUTES))
        choice(f"planted[{b!r}]", v, ATTRIBUTES[b])
    picked = tuple(digits[k] for k in ("colour", "thickness", "control"))
    require(
        len(set(picked)) == 3 and all(0 <= d <= 9 for d in picked),
        f"study_digits must name three different digits 0-9, got {digits}",
    )
    require(0 <= p["skew"] <= 1, f"skew must lie in [0, 1], got {p['skew']}")
    require(
        min(gen_p["steps"], gen_p["copies"], gen_p["batch"], gen_p["layers"]) >= 1 and gen_p["lr"] > 0,
        f"generator: steps, copies, batch, layers >= 1 and lr > 0, got {gen_p}",
    )
    require(
        gen_p["width"] >= 4 and gen_p["width"] % 4 == 0,
        f"generator: width must be a positive multiple of the 4 attention heads, got {gen_p['width']}",
    )
    require(0 <= gen_p["dropout"] < 1, f"generator: dropout must lie in [0, 1), got {gen_p}")
    require(
        sampling["temperature"] > 0 and sampling["top_k"] >= 0 and sampling["guidance"] >= 0,
        f"sampling: temperature > 0, top_k >= 0 and guidance >= 0, got {sampling}",
    )
    per_value = p["attribute_per_value"]
    require(
        len(per_value) == 3 and min(per_value[:2]) >= 1 and per_value[2] >= 0,
        "attribute_per_value: [train, val, test] with train and val >= 1",
    )
    require(p["specificity"] >= 0, "specificity must be >= 0")
    require(
        0 <= p["min_youden"] < 1 and 0 < p["equivalence_margin"] < 0.5,
        "min_youden must lie in [0, 1), equivalence_margin in (0, 0.5)",
    )
    counts = ("n_neutral", "nsamples", "top_n", "token_num", "n_boot")
    require(
        all(p[k] >= 1 for k in counts) and p["attribute_iem"]["epochs"] >= 1,
        "n_neutral, nsamples, top_n, token_num, attribute_iem epochs and n_boot must be >= 1",
    )
    choice("attribute_iem arch", p["attribute_iem"]["arch"], [1, 2, 3, 4])
    choice("bf16", p["bf16"], ["auto", "on", "off"])
    return picked
