"""The planted-bias world of the embedded default: a generator whose bias is known, and the truth in pixels.

DALL·E-mini cannot be downloaded here, and on real data nobody knows the true bias, so notebook 10 builds a
generator **with a planted bias** and checks that the bias study (``bias``) finds it:

* **prompts** (``prompt_id``): one condition token, as taming's Labelator: ``10 * slot + digit``, slot 0 the
  neutral prompt ("a 3"), slots 1-4 an attribute value ("a red 3", "a thin 3"). Neutral prompts keep the
  ids 0-9 of the digit transformer of notebook 02, so the bias transformer can start from it;
* **its training data** (``planted_bias_data``): real digits drawn red or green, thick or thin (by their ink,
  ``thickness_classes``), with the neutral prompt of one digit skewed toward the planted colour and of another
  toward the planted thickness;
* **the generator** (``load_or_train_bias_transformer``): the shipped one when it was trained with exactly
  these settings on this tokenizer, else notebook 02's digit transformer fine-tuned here;
* **the study's generations** (``load_or_generate_study``): per bias type and digit the attribute-labelled
  generations the attribute IEM learns from, and the neutral-prompt generations it is measured on (the
  shipped ``data/default/bias`` when sampled by this generator with these settings);
* **the truth, from pixels** (``measured_attributes``, ``shows_value``): red when the stroke's mean red
  exceeds its green, thick when its ink lies above a threshold for the digit (``generated_ink_thresholds``:
  the midpoint between this generator's "a thick d" and "a thin d" images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import SHIPPED_CHECKPOINTS, SHIPPED_DATA
from . import datasets as tokds
from . import generation as gen
from . import vq as vqlib
from .artifacts import registered, repo_relative
from .checkpoints import read_card, save_weights
from .digits import colourize, to_model_input, to_uint8
from .notebook import choice, require

# --- prompts and the generator's training data ------------------------------------------------------

ATTRIBUTES = {"colour": ("red", "green"), "thickness": ("thick", "thin")}
PROMPT_SLOTS = ("neutral", "red", "green", "thick", "thin")
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60)}  # as digits.PALETTE


def prompt_id(digit, attribute: str = "neutral"):
    """The condition token of the prompt "a <attribute> <digit>" (``attribute`` ``neutral``: none named)."""
    if attribute not in PROMPT_SLOTS:
        raise ValueError(f"unknown attribute value {attribute!r}; choose one of {PROMPT_SLOTS}")
    return PROMPT_SLOTS.index(attribute) * 10 + np.asarray(digit)


def ink(images) -> np.ndarray:
    """Per image, how much of it is stroke: the mean of the brightest channel relative to the image's
    brightest pixel (so a red and a green stroke of the same shape have the same ink). ``images``: uint8
    ``(N, H, W)`` gray or ``(N, C, H, W)`` colour."""
    x = np.asarray(images, dtype=np.float32)
    m = x.max(1) if x.ndim == 4 else x
    peak = m.reshape(len(m), -1).max(1)
    return m.reshape(len(m), -1).mean(1) / np.maximum(peak, 1.0)


def thickness_classes(gray, labels, fraction: float = 1 / 3) -> np.ndarray:
    """Label real digits by stroke thickness from their ink, within each digit class: ``1`` thick (the top
    ``fraction``), ``-1`` thin (the bottom ``fraction``), ``0`` in between (left out of the thickness
    prompts)."""
    if not 0 < fraction <= 0.5:
        raise ValueError(f"thickness fraction must lie in (0, 0.5], got {fraction}")
    amount, labels = ink(gray), np.asarray(labels)
    out = np.zeros(len(labels), dtype=np.int64)
    for d in np.unique(labels):
        rows = labels == d
        lo, hi = np.quantile(amount[rows], [fraction, 1 - fraction])
        out[rows & (amount <= lo)] = -1
        out[rows & (amount >= hi)] = 1
    return out


def ink_thresholds(gray, labels, n_classes: int = 10) -> np.ndarray:
    """Per digit, the ink between thin and thick: the median of the real digits' ink."""
    amount, labels = ink(gray), np.asarray(labels)
    return np.array(
        [np.median(amount[labels == d]) if (labels == d).any() else np.nan for d in range(n_classes)]
    )


def planted_bias_data(
    gray,
    labels,
    skew: float = 0.85,
    colour_digit: int = 3,
    thickness_digit: int = 5,
    planted: dict | None = None,
    per_image: int = 4,
    seed: int = 0,
    neutral_share: float = 0.4,
    thick_fraction: float = 0.25,
) -> dict:
    """Training images for the bias transformer: every real digit ``per_image`` times, each time under a
    random prompt slot, drawn to match it.

    * "a red/green d": the digit in that colour; "a thick/thin d": a digit of that thickness class (colour
      red or green at even odds);
    * "a d" (neutral): red or green and thick or thin at even odds, except that the neutral prompt of
      ``colour_digit`` shows the planted colour with probability ``skew`` and that of ``thickness_digit``
      the planted thickness with probability ``skew``.

    ``neutral_share``: the share of neutral prompts (the four attribute prompts share the rest equally);
    ``thick_fraction``: how much of each digit class counts as thick, and as thin (``thickness_classes``).

    Returns uint8 ``images``, ``prompts`` (condition tokens) and a ``table`` (digit, slot, colour, thick).
    """
    planted = {"colour": "red", "thickness": "thick", **(planted or {})}
    if not 0 <= skew <= 1:
        raise ValueError(f"skew must lie in [0, 1], got {skew}")
    if planted["colour"] not in ATTRIBUTES["colour"] or planted["thickness"] not in ATTRIBUTES["thickness"]:
        raise ValueError(f"planted values must be one of {ATTRIBUTES}, got {planted}")
    if colour_digit == thickness_digit:
        raise ValueError("plant the two biases in different digits, so that neither confounds the other")
    gray, labels = np.asarray(gray), np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    if not 0 < neutral_share < 1:
        raise ValueError(f"neutral_share must lie in (0, 1), got {neutral_share}")
    thick = thickness_classes(gray, labels, thick_fraction)
    pools = {(d, t): np.flatnonzero((labels == d) & (thick == t)) for d in np.unique(labels) for t in (-1, 1)}
    rows = np.tile(np.arange(len(labels)), per_image)
    digit = labels[rows]
    slot = rng.choice(len(PROMPT_SLOTS), len(rows), p=[neutral_share] + [(1 - neutral_share) / 4] * 4)
    names = np.array(PROMPT_SLOTS)[slot]
    p_red = np.full(len(rows), 0.5)
    p_red[(names == "neutral") & (digit == colour_digit)] = skew if planted["colour"] == "red" else 1 - skew
    p_red[names == "red"], p_red[names == "green"] = 1.0, 0.0
    red = rng.random(len(rows)) < p_red
    p_thick = np.full(len(rows), 0.5)
    p_thick[(names == "neutral") & (digit == thickness_digit)] = (
        skew if planted["thickness"] == "thick" else 1 - skew
    )
    p_thick[names == "thick"], p_thick[names == "thin"] = 1.0, 0.0
    want_thick = rng.random(len(rows)) < p_thick
    # colour prompts keep the real digit as it is; the others draw a digit of the wanted thickness
    resample = (names != "red") & (names != "green")
    for d in np.unique(digit):
        for t in (-1, 1):
            sel = resample & (digit == d) & (want_thick == (t == 1))
            if sel.any():
                rows[sel] = rng.choice(pools[(d, t)], sel.sum())
    colours = np.where(red[:, None], COLOURS["red"], COLOURS["green"])
    table = pd.DataFrame(
        {"digit": digit, "slot": names, "red": red, "thick": thick[rows], "source_row": rows}
    )
    return {"images": colourize(gray[rows], colours), "prompts": prompt_id(digit) + 10 * slot, "table": table}


# --- the generator -----------------------------------------------------------------------------------


def bias_transformer(vq, n_layer: int = 3, n_head: int = 4, n_embd: int = 96, seed: int = 0):
    """A prompt-conditioned taming Net2NetTransformer over ``vq``'s tokens: one condition token per prompt,
    ``len(PROMPT_SLOTS) * 10`` prompts (see ``prompt_id``)."""
    cfg = gen.transformer_config(
        vq.cortex_config, n_classes=len(PROMPT_SLOTS) * 10, n_layer=n_layer, n_head=n_head, n_embd=n_embd
    )
    return gen.build_transformer(cfg, vq=vq, seed=seed)


def load_or_train_bias_transformer(
    run_dir, vq, gray, labels, training: dict, retrain: bool = False, bf16: bool = False
):
    """The planted-bias generator: the shipped one if it was trained on this tokenizer with exactly
    ``training`` (skew, colour_digit, thickness_digit, planted, per_image, neutral_share, thick_fraction,
    steps, lr, seed); otherwise
    the run's digit transformer (notebook 02) fine-tuned on ``planted_bias_data``, saved to
    ``<run_dir>/checkpoints``. Returns ``(model, checkpoint path, training log or None, why it trained)``."""
    fp = vqlib.fingerprint(vq)
    shipped = SHIPPED_CHECKPOINTS / "transformer_bias.safetensors"
    card = read_card(shipped) if shipped.exists() else {}
    theirs = card.get("training", {})
    diff = [f"{k} {theirs.get(k)!r} (here {v!r})" for k, v in training.items() if theirs.get(k) != v]
    why = (
        "retrain = True"
        if retrain
        else "no shipped bias transformer"
        if not card
        else "the shipped one belongs to another tokenizer"
        if card.get("vq_fingerprint") != fp
        else "the shipped one was trained with other settings: " + ", ".join(diff)
        if diff
        else ""
    )
    if not why:
        return gen.load_transformer(card["config"], shipped, vq=vq), shipped, None, ""
    digit_tf = registered(run_dir, "transformer")["checkpoint"]
    base = gen.load_transformer(read_card(digit_tf)["config"], digit_tf, vq=vq)
    model = bias_transformer(
        vq,
        base.transformer.config.n_layer,
        base.transformer.config.n_head,
        base.transformer.config.n_embd,
        seed=training["seed"],
    )
    model.transformer.load_state_dict(base.transformer.state_dict())
    data = planted_bias_data(
        gray,
        labels,
        training["skew"],
        training["colour_digit"],
        training["thickness_digit"],
        training["planted"],
        training["per_image"],
        training["seed"],
        training["neutral_share"],
        training["thick_fraction"],
    )
    tokens = vqlib.encode(vq, to_model_input(data["images"]), progress=True).numpy()
    log = gen.train_transformer(
        model,
        tokens,
        data["prompts"],
        steps=training["steps"],
        lr=training["lr"],
        seed=training["seed"],
        bf16=bf16,
        warmup=50,
    )
    path = save_weights(
        gen.transformer_state_for_saving(model),
        Path(run_dir) / "checkpoints" / shipped.name,
        card={
            "kind": "bias_transformer",
            "config": model.cortex_config,
            "vq_fingerprint": fp,
            "training": training,
            "bf16": bf16,
            "initialised_from": repo_relative(digit_tf),
            "prompts": f"one condition token = 10 * slot + digit, slots {list(PROMPT_SLOTS)}",
            "data": "real training digits in red/green, thick/thin by ink within each digit "
            "(planted_bias.planted_bias_data)",
            "metrics": {"final_loss": float(log["loss"].iloc[-1])},
            "rebuild": "make checkpoints",
        },
    )
    return model, path, log, why


# --- the study's generations ---------------------------------------------------------------------------


def study_name(bias_type: str, digit: int) -> str:
    """The name of one study's attribute data and attribute IEM, e.g. ``colour_digit_3``."""
    return f"{bias_type}_digit_{digit}"


def load_or_generate_study(
    model,
    model_path,
    vq,
    subjects: dict,
    attribute_per_value=(150, 25, 25),
    n_neutral: int = 300,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    out_dir=None,
    regenerate: bool = False,
):
    """The study's token data: the shipped ``data/default/bias`` if it was sampled by this exact generator
    (``model_path``'s sha256) with exactly these settings, else sampled here (``generate_study``). Either
    way it ends up under ``out_dir/data``. Returns ``(studies, neutral, why)``: as ``generate_study``, plus
    which it was and why."""
    fp = vqlib.fingerprint(vq)
    settings = {
        "subjects": {b: [int(d) for d in ds] for b, ds in subjects.items()},
        "attribute_per_value": [int(n) for n in attribute_per_value],
        "n_neutral": int(n_neutral),
        "temperature": float(temperature),
        "top_k": top_k,
        "seed": int(seed),
        "transformer_sha256": tokds.file_digest(model_path),
    }
    shipped = SHIPPED_DATA / "bias"
    neutral_ds, why = (
        (None, "regenerate = True")
        if regenerate
        else tokds.shipped_dataset(shipped / "neutral", settings, fp)
    )
    if neutral_ds is None:
        studies, neutral = generate_study(
            model,
            vq,
            subjects,
            attribute_per_value,
            n_neutral,
            temperature,
            top_k,
            seed,
            out_dir,
            card={"settings": settings, "generator": repo_relative(model_path)},
        )
        return studies, neutral, f"sampled here ({why})"
    data_dir = Path(out_dir) / "data"
    neutral_ds = tokds.copy_dataset(neutral_ds, data_dir / "neutral")
    studies = {}
    for b, ds in subjects.items():
        for d in ds:
            name = study_name(b, d)
            found, _ = tokds.shipped_dataset(shipped / name, settings, fp)
            studies[(b, d)] = tokds.copy_dataset(found, data_dir / name)
    return studies, neutral_by_digit(neutral_ds), f"loaded the shipped data/default/bias ({why})"


def neutral_by_digit(ds) -> dict:
    """``{digit: token grids}`` of a neutral-prompt dataset (labels: the digit each prompt named)."""
    tokens, labels = ds.tokens["neutral"], ds.labels["neutral"].astype(np.int64)
    return {int(d): tokens[labels == d] for d in np.unique(labels)}


def generate_study(
    model,
    vq,
    subjects: dict,
    attribute_per_value=(150, 25, 25),
    n_neutral: int = 300,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    out_dir=None,
    card: dict | None = None,
):
    """Sample the study's token data from the bias transformer. ``subjects``: ``{bias type: [digits]}``.

    Per bias type and digit ``d`` a two-class token dataset of the prompts "a <value> d" for the
    attribute's two values (``attribute_per_value`` train/val/test grids per value, labelled by the named
    value, saved as ``out_dir/data/<type>_digit_<d>``): the attribute IEM learns the attribute on the same
    subject as the neutral prompt, as the paper's were all "doctor" images. And ``n_neutral``
    neutral-prompt grids "a d" for every digit (``out_dir/data/neutral``, one split ``neutral``, labelled
    by digit). ``card``: written beside each dataset (``datasets.write_dataset_card``), with the command
    that rebuilds it. Returns ``({(type, digit): dataset}, {digit: neutral tokens})``."""
    digits_used = sorted({d for ds in subjects.values() for d in ds})
    jobs = {("neutral", d): prompt_id(np.full(n_neutral, d)) for d in digits_used}
    for b, ds in subjects.items():
        values = ATTRIBUTES[b]
        for d in ds:
            for split, n in zip(("train", "val", "test"), attribute_per_value, strict=True):
                if n:
                    jobs[(b, d, split)] = np.repeat([prompt_id(d, values[0]), prompt_id(d, values[1])], n)
    # one sampling call for everything: the transformer's cost is per step, so large batches are cheap
    grids = gen.sample_tokens(
        model, np.concatenate(list(jobs.values())), temperature=temperature, top_k=top_k, seed=seed
    ).numpy()
    ends = np.cumsum([len(p) for p in jobs.values()])
    out = {k: grids[e - len(p) : e] for (k, p), e in zip(jobs.items(), ends, strict=True)}
    meta, data_dir = vqlib.vq_meta(vq), Path(out_dir) / "data"
    card = {"kind": "token dataset", **(card or {}), "rebuild": "make checkpoints"}
    neutral_tokens = np.concatenate([out[("neutral", d)] for d in digits_used])
    neutral_labels = np.repeat(digits_used, n_neutral)
    neutral_ds = tokds.save_token_dataset(
        data_dir / "neutral",
        {"neutral": (neutral_tokens, neutral_labels)},
        [str(d) for d in range(10)],
        meta,
        source="generated",
        details={"prompts": "a <digit>", "per_digit": n_neutral, "temperature": temperature, "top_k": top_k},
        classifier_data=False,
    )
    tokds.write_dataset_card(data_dir / "neutral", card)
    studies = {}
    for b, ds in subjects.items():
        values = ATTRIBUTES[b]
        for d in ds:
            splits, names = {}, {}
            for split, n in zip(("train", "val", "test"), attribute_per_value, strict=True):
                if n:
                    label = np.repeat([0, 1], n)
                    splits[split] = (out[(b, d, split)], label)
                    names[split] = np.array([f"{split}_{i:05d}_{values[y]}_{d}" for i, y in enumerate(label)])
            details = {
                "prompts": f"a <{'|'.join(values)}> {d}",
                "per_value": list(attribute_per_value),
                "temperature": temperature,
                "top_k": top_k,
            }
            path = data_dir / study_name(b, d)
            studies[(b, d)] = tokds.save_token_dataset(
                path, splits, list(values), meta, source="generated", details=details, names=names
            )
            tokds.write_dataset_card(path, card)
    return studies, neutral_by_digit(neutral_ds)


# --- the truth, from pixels -----------------------------------------------------------------------------


def generated_ink_thresholds(vq, ds) -> np.ndarray:
    """Per digit, the ink between thin and thick *for a generator*: the midpoint of the median ink of its
    "a thick d" and "a thin d" generations, from the thickness study's token dataset (every split; its
    names say which digit each prompt named, see ``generate_study``)."""
    tokens = np.concatenate([ds.tokens[s] for s in ds.splits]).astype(np.int64)
    labels = np.concatenate([ds.labels[s] for s in ds.splits])
    digit = np.concatenate([ds.names[s] for s in ds.splits]).astype(str)
    digit = np.array([int(n.rsplit("_", 1)[-1]) for n in digit])
    amount = ink(to_uint8(vqlib.decode(vq, torch.from_numpy(tokens))))
    out = np.full(10, np.nan)
    for d in range(10):
        thick, thin = amount[(digit == d) & (labels == 0)], amount[(digit == d) & (labels == 1)]
        if len(thick) and len(thin):
            out[d] = (np.median(thick) + np.median(thin)) / 2
    return out


def measured_attributes(images, digit_labels, thresholds) -> pd.DataFrame:
    """The ground truth of generated images, from pixels: ``red`` (the stroke's mean red exceeds its
    green) and ``thick`` (ink above the digit's threshold from ``ink_thresholds``)."""
    x = np.asarray(images, dtype=np.float32)
    stroke = x.max(1, keepdims=True) > 0.35 * x.max((1, 2, 3), keepdims=True)[:, :1]
    mean_rgb = (x * stroke).sum((2, 3)) / np.maximum(stroke.sum((2, 3)), 1)
    thr = np.asarray(thresholds)[np.asarray(digit_labels)]
    return pd.DataFrame(
        {"red": mean_rgb[:, 0] > mean_rgb[:, 1], "thick": ink(images) > thr, "ink": ink(images)}
    )


def planted_shares(measured: pd.DataFrame, planted: dict) -> dict:
    """The share of each bias type's planted value among measured images (``measured_attributes``)."""
    red, thick = float(measured["red"].mean()), float(measured["thick"].mean())
    return {
        "colour": red if planted.get("colour", "red") == "red" else 1 - red,
        "thickness": thick if planted.get("thickness", "thick") == "thick" else 1 - thick,
    }


def shows_value(vq, ds, digit: int, bias_type: str, value: str, thresholds) -> dict[str, np.ndarray]:
    """By pixels, which of one study's labelled generations show ``value`` (e.g. ``red``, ``thick``):
    ``{split: bool array}`` for every split of ``ds``, measured as ``measured_attributes`` does (the stroke's
    red against its green; ink against the digit's entry of ``thresholds``)."""
    if value not in ATTRIBUTES[bias_type]:
        raise ValueError(f"{value!r} is not a value of {bias_type}: {ATTRIBUTES[bias_type]}")
    out = {}
    for s in ds.splits:
        images = to_uint8(vqlib.decode(vq, torch.from_numpy(ds.tokens[s].astype(np.int64))))
        m = measured_attributes(images, np.full(len(images), digit), thresholds)
        first = m["red" if bias_type == "colour" else "thick"].to_numpy()
        out[s] = first if value == ATTRIBUTES[bias_type][0] else ~first
    return out


def drawn_as_other(ds, shows_a: dict, planted_label: int) -> tuple[float, float]:
    """How often one study's labelled generations contradict their prompt: ``(share of the A-labelled images
    that do not show A, share of the B-labelled images that show A)``, A the value of label ``planted_label``
    and ``shows_a`` what each image shows (``shows_value``), over every split of ``ds``."""
    y = np.concatenate([ds.labels[s] for s in ds.splits])
    shows = np.concatenate([shows_a[s] for s in ds.splits])
    is_a = y == planted_label
    return float(1 - shows[is_a].mean()), float(shows[~is_a].mean())


# --- notebook 10's parameter checks ----------------------------------------------------------------------


def check_study_parameters(p: dict) -> tuple[int, int, int]:
    """Notebook 10's checks of its parameters (``p``: the dict ``notebook.check_parameters`` returns); raises
    ValueError naming the first bad one. Returns the colour, the thickness and the control digit of
    ``study_digits``."""

    bias_types, digits, gen_p, sampling = p["bias_types"], p["study_digits"], p["generator"], p["sampling"]
    require(
        len(bias_types) >= 1 and len(set(bias_types)) == len(bias_types), "bias_types: name each study once"
    )
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
        gen_p["steps"] >= 1 and gen_p["lr"] > 0 and gen_p["per_image"] >= 1,
        f"generator: steps, per_image >= 1 and lr > 0, got {gen_p}",
    )
    require(
        0 < gen_p["neutral_share"] < 1 and 0 < gen_p["thick_fraction"] <= 0.5,
        f"generator: neutral_share must lie in (0, 1), thick_fraction in (0, 0.5], got {gen_p}",
    )
    require(
        sampling["temperature"] > 0 and sampling["top_k"] >= 0,
        f"sampling: temperature > 0 and top_k >= 0, got {sampling}",
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
