"""Bias detection, the paper's DALL·E-mini study: how often do an attribute's tokens occur in generations
from a neutral prompt, compared between the attribute's values?

* the planted-bias world of the default: prompts (``prompt_id``), its training data
  (``planted_bias_data``), the generator (``load_or_train_bias_transformer``) and the study's samples
  (``generate_study``); pixel ground truth (``measured_attributes``);
* the original's token CSV layout for real data (``load_real_study``);
* the measurement, shared by both: ``attribute_study`` (IEM, TIS and concept code of notebooks 03-06,
  then attribute tokens and δ).

The effect size is Cliff's δ between two samples ``a`` and ``b`` (here: per neutral image, the counts of
value A's and of value B's tokens): ``δ = (#{a_i > b_j} - #{a_i < b_j}) / (n·m)``, in [-1, 1]. The original
counts the pairs in an O(n·m) double loop; here each ``a_i`` is located in the sorted ``b`` by binary
search, O((n + m) log m), the same number (it is the Mann–Whitney U statistic rescaled, ties counted half).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch


def cliffs_delta(a, b) -> float:
    """Cliff's δ of sample ``a`` against sample ``b`` (positive: values in ``a`` tend to be larger)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError(f"Cliff's delta needs two non-empty samples, got sizes {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("Cliff's delta: the samples contain NaN or Inf")
    below = np.searchsorted(b, a, side="left")  # b_j < a_i
    above = b.size - np.searchsorted(b, a, side="right")  # b_j > a_i
    return float((below.sum() - above.sum()) / (a.size * b.size))


def bootstrap_delta(a, b, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(δ, low, high)``: Cliff's δ and a percentile bootstrap confidence interval (both samples resampled)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    delta = cliffs_delta(a, b)
    rng = np.random.default_rng(seed)
    boots = np.array([cliffs_delta(rng.choice(a, a.size), rng.choice(b, b.size)) for _ in range(n_boot)])
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return delta, float(lo), float(hi)


# --- the planted-bias world of the embedded default ---------------------------------------------------
#
# A prompt is one condition token, as taming's Labelator: ``prompt_id(digit, attribute)`` =
# ``10 * slot + digit`` where slot 0 is the neutral prompt ("a 3") and slots 1-4 name an attribute value
# ("a red 3", "a thin 3"). Neutral prompts keep the ids 0-9 of the digit transformer of notebook 02, so the
# bias transformer can start from it.

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
    return np.array([np.median(amount[labels == d]) if (labels == d).any() else np.nan for d in range(n_classes)])


def generated_ink_thresholds(vq, ds) -> np.ndarray:
    """Per digit, the ink between thin and thick *for a generator*: the midpoint of the median ink of its
    "a thick d" and "a thin d" generations, from the thickness study's token dataset (every split; its
    names say which digit each prompt named, see ``generate_study``)."""
    from . import vq as vqlib
    from .digits import to_uint8

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
    return pd.DataFrame({"red": mean_rgb[:, 0] > mean_rgb[:, 1], "thick": ink(images) > thr, "ink": ink(images)})


def planted_bias_data(gray, labels, skew: float = 0.85, colour_digit: int = 3, thickness_digit: int = 5,
                      planted: dict | None = None, per_image: int = 4, seed: int = 0, neutral_share: float = 0.4,
                      thick_fraction: float = 0.25) -> dict:
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
    from .digits import colourize

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
    p_thick[(names == "neutral") & (digit == thickness_digit)] = skew if planted["thickness"] == "thick" else 1 - skew
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
    table = pd.DataFrame({"digit": digit, "slot": names, "red": red, "thick": thick[rows], "source_row": rows})
    return {"images": colourize(gray[rows], colours), "prompts": prompt_id(digit) + 10 * slot, "table": table}


def token_counts(tokens, ids) -> np.ndarray:
    """Per image, how many of its grid positions hold one of ``ids``."""
    tokens = np.asarray(tokens)
    return np.isin(tokens.reshape(len(tokens), -1), np.asarray(ids)).sum(1)


def attribute_tokens(concepts: pd.DataFrame, top_n: int, token_num: int, tokens=None, labels=None,
                     specificity: float = 2.0) -> dict[int, np.ndarray]:
    """Each attribute value's ``token_num`` tokens: its ids ranked by the TIS concept count (a
    ``concepts.concept_tokens`` table at ``top_n``), keeping only ids *specific* to the value: per image of
    the value they occur at least ``specificity`` times as often as per image of the other value (in the
    training grids ``tokens``/``labels``). An IEM may recognise one value by the absence of the other's
    marks; its TIS then points at background ids that every image holds, which say nothing about the
    value. ``specificity`` 0 keeps the plain TIS ranking."""
    t = concepts[(concepts["top_n"] == top_n) & (concepts["label"] >= 0)]
    ranked = {int(c): g.sort_values("rank")["token"].to_numpy() for c, g in t.groupby("label")}
    if len(ranked) != 2:
        raise ValueError(f"attribute tokens need two attribute values with concept tokens, got {sorted(ranked)}")
    if specificity > 0:
        if tokens is None or labels is None:
            raise ValueError("specificity needs the training grids (tokens and labels)")
        from .concepts import token_frequencies

        labels = np.asarray(labels).astype(np.int64)
        n_embed = int(max(np.asarray(tokens).max(), max(v.max() for v in ranked.values()))) + 1
        rate = token_frequencies(tokens, labels, 2, n_embed) / np.bincount(labels, minlength=2)[:, None]
        ranked = {c: v[rate[c, v] >= specificity * rate[1 - c, v]] for c, v in ranked.items()}
    return {c: np.asarray(v[:token_num], dtype=np.int64) for c, v in ranked.items()}


def balanced_rank(counts, reference_counts, reference_labels) -> np.ndarray:
    """Where each of ``counts`` sits among a reference's counts, with the reference's values weighted
    equally: the mean over its values of the mid-rank share (the share of that value's counts below, plus
    half the share equal). A set that mixes the values half and half maps to a mean of ½."""
    counts = np.asarray(counts, dtype=np.float64)
    reference_counts, reference_labels = np.asarray(reference_counts, dtype=np.float64), np.asarray(reference_labels)
    values = np.unique(reference_labels)
    out = np.zeros(len(counts))
    for v in values:
        ref = np.sort(reference_counts[reference_labels == v])
        out += (np.searchsorted(ref, counts, "left") + np.searchsorted(ref, counts, "right")) / (2 * len(ref))
    return out / len(values)


def bias_delta(neutral_tokens, tokens_a, tokens_b, reference=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """The paper's measurement on neutral generations: per image, the count of value A's tokens and of
    value B's; Cliff's δ of the A counts against the B counts (positive: the neutral prompt leans to A),
    with a bootstrap interval. ``reference``: ``(token grids, labels)`` of attribute-labelled images; each
    value's counts are then replaced by their ``balanced_rank`` among that reference's counts of the same
    tokens (see ``attribute_study``)."""
    if len(neutral_tokens) == 0:
        raise ValueError("no neutral generations to measure")
    a, b = token_counts(neutral_tokens, tokens_a), token_counts(neutral_tokens, tokens_b)
    xa, xb = a, b
    if reference is not None:
        ref_tokens, ref_labels = reference
        xa = balanced_rank(a, token_counts(ref_tokens, tokens_a), ref_labels)
        xb = balanced_rank(b, token_counts(ref_tokens, tokens_b), ref_labels)
    delta, lo, hi = bootstrap_delta(xa, xb, n_boot=n_boot, seed=seed)
    return {"delta": delta, "low": lo, "high": hi, "mean_count_a": float(a.mean()), "mean_count_b": float(b.mean()),
            "counts_a": a, "counts_b": b}


def attribute_study(ds, codebook, neutral: dict, planted: int, arch: int = 1, width: int = 32, epochs: int = 12,
                    lr: float = 2e-3, batch_size: int = 64, nsamples: int = 20, top_n: int = 5, token_num: int = 5,
                    specificity: float = 2.0, calibrate: bool = True, n_boot: int = 1000, seed: int = 0,
                    out_dir=None) -> dict:
    """The paper's bias measurement on one attribute, with the IEM, TIS and concept code of notebooks 03-06
    unchanged.

    ``ds``: a token dataset of attribute-labelled generations (two classes: the attribute's values, with a
    train and a val split, optionally test); ``neutral``: ``{name: token grids of neutral-prompt
    generations}``; ``planted``: the label the δ is signed toward. Returns the IEM and its log, its test
    accuracy, the TIS of the train split, the concept table, each value's tokens and one row of δ per
    neutral set. A value can end up with no tokens (no top id specific to it, e.g. when the IEM learned
    nothing); its counts are then 0 and ``tokens_a``/``tokens_b`` in the table say so.

    With ``calibrate`` (default) each value's counts are ranked against a balanced reference before δ:
    the same tokens' counts in the attribute-labelled generations (every split), both values weighted
    equally (``balanced_rank``). Two token sets need not be equally common, nor their counts equally
    spread (a value recognised by many tokens against one recognised by few), and δ on raw counts then
    reports a bias in a neutral set that mixes the values half and half; after ranking such a set gives
    δ ≈ 0, and one leaning to A ranks A's counts high and B's low. ``delta_raw_counts`` in the table is the
    paper's δ on raw counts, for comparison.
    """
    from . import concepts as conceptlib
    from . import datasets as tokds
    from . import iem as iemlib
    from . import tis as tislib

    if len(ds.class_names) != 2:
        raise ValueError(f"a bias study compares two attribute values, the dataset has {ds.class_names}")
    train_y = ds.labels["train"].astype(np.int64)
    present = np.bincount(train_y, minlength=2)
    if (present == 0).any():
        missing = [ds.class_names[i] for i in np.flatnonzero(present == 0)]
        raise ValueError(f"only one attribute value in the training generations (none of {missing})")
    if not neutral or any(len(t) == 0 for t in neutral.values()):
        raise ValueError(f"empty neutral set: {[k for k, t in neutral.items() if len(t) == 0] or 'none given'}")
    if planted not in (0, 1):
        raise ValueError(f"planted must be the label 0 or 1, got {planted!r}")
    iemlib.seed_everything(seed)
    model = iemlib.build_iem(arch, ds.manifest["embed_dim"], ds.grid, 2, width)
    train = tokds.embedding_loader(ds, "train", codebook, batch_size, shuffle=True, seed=seed)
    val = tokds.embedding_loader(ds, "val", codebook, 256)
    log, _ = iemlib.train_iem(model, train, val, epochs=epochs, lr=lr, desc="train attribute IEM")
    test_split = "test" if "test" in ds.splits else "val"
    accuracy = iemlib.evaluate_iem(model, tokds.embedding_loader(ds, test_split, codebook, 256), ks=(1,))["top1"]
    tis = tislib.compute_tis(model, tokds.embedding_loader(ds, "train", codebook, 100), len(train_y),
                             nsamples=nsamples, seed=seed, desc="attribute TIS",
                             out=None if out_dir is None else Path(out_dir) / "tis_train.npy")
    table = conceptlib.concept_tokens(ds.tokens["train"], train_y, tis, ds.class_names, ds.manifest["n_embed"],
                                      top_ns=(top_n,))
    ids = attribute_tokens(table, top_n, token_num, ds.tokens["train"], train_y, specificity)
    other = 1 - planted
    ref_tokens = np.concatenate([ds.tokens[s] for s in ds.splits])
    ref_labels = np.concatenate([ds.labels[s] for s in ds.splits]).astype(np.int64)
    # a value's tokens per image of that value (how much of A a typical A image holds)
    reference = {c: float(token_counts(ref_tokens[ref_labels == c], ids[c]).mean()) for c in (0, 1)}
    rows, counts = [], {}
    for name, tokens in neutral.items():
        r = bias_delta(tokens, ids[planted], ids[other], reference=(ref_tokens, ref_labels) if calibrate else None,
                       n_boot=n_boot, seed=seed)
        raw = cliffs_delta(r["counts_a"], r["counts_b"])
        counts[name] = {ds.class_names[planted]: r.pop("counts_a"), ds.class_names[other]: r.pop("counts_b")}
        rows.append({"neutral set": name, "images": len(tokens), **r, "delta_raw_counts": raw,
                     "tokens_a": len(ids[planted]), "tokens_b": len(ids[other])})
    return {"model": model, "log": log, "test_accuracy": accuracy, "test_split": test_split, "tis": tis,
            "concepts": table, "tokens": {ds.class_names[c]: v for c, v in ids.items()},
            "deltas": pd.DataFrame(rows), "counts": counts, "reference_counts": reference}


def bias_transformer(vq, n_layer: int = 3, n_head: int = 4, n_embd: int = 96, seed: int = 0):
    """A prompt-conditioned taming Net2NetTransformer over ``vq``'s tokens: one condition token per prompt,
    ``len(PROMPT_SLOTS) * 10`` prompts (see ``prompt_id``)."""
    from . import generation as gen

    cfg = gen.transformer_config(vq.cortex_config, n_classes=len(PROMPT_SLOTS) * 10, n_layer=n_layer,
                                 n_head=n_head, n_embd=n_embd)
    return gen.build_transformer(cfg, vq=vq, seed=seed)


def load_or_train_bias_transformer(run_dir, vq, gray, labels, training: dict, retrain: bool = False,
                                   bf16: bool = False):
    """The planted-bias generator: the shipped one if it was trained on this tokenizer with exactly
    ``training`` (skew, colour_digit, thickness_digit, planted, per_image, neutral_share, thick_fraction,
    steps, lr, seed); otherwise
    the run's digit transformer (notebook 02) fine-tuned on ``planted_bias_data``, saved to
    ``<run_dir>/checkpoints``. Returns ``(model, checkpoint path, training log or None, why it trained)``."""
    from . import SHIPPED_CHECKPOINTS
    from . import generation as gen
    from . import vq as vqlib
    from .artifacts import read_card, registered, save_weights
    from .digits import to_model_input

    fp = vqlib.fingerprint(vq)
    shipped = SHIPPED_CHECKPOINTS / "transformer_bias.safetensors"
    card = read_card(shipped) if shipped.exists() else {}
    theirs = card.get("training", {})
    diff = [f"{k} {theirs.get(k)!r} (here {v!r})" for k, v in training.items() if theirs.get(k) != v]
    why = ("retrain = True" if retrain else "no shipped bias transformer" if not card else
           "the shipped one belongs to another tokenizer" if card.get("vq_fingerprint") != fp else
           "the shipped one was trained with other settings: " + ", ".join(diff) if diff else "")
    if not why:
        return gen.load_transformer(card["config"], shipped, vq=vq), shipped, None, ""
    digit_tf = registered(run_dir, "transformer")["checkpoint"]
    base = gen.load_transformer(read_card(digit_tf)["config"], digit_tf, vq=vq)
    model = bias_transformer(vq, base.transformer.config.n_layer, base.transformer.config.n_head,
                             base.transformer.config.n_embd, seed=training["seed"])
    model.transformer.load_state_dict(base.transformer.state_dict())
    data = planted_bias_data(gray, labels, training["skew"], training["colour_digit"], training["thickness_digit"],
                             training["planted"], training["per_image"], training["seed"], training["neutral_share"],
                             training["thick_fraction"])
    tokens = vqlib.encode(vq, to_model_input(data["images"]), progress=True).numpy()
    log = gen.train_transformer(model, tokens, data["prompts"], steps=training["steps"], lr=training["lr"],
                                seed=training["seed"], bf16=bf16, warmup=50)
    path = save_weights(gen.transformer_state_for_saving(model), Path(run_dir) / "checkpoints" / shipped.name, card={
        "kind": "bias_transformer", "config": model.cortex_config, "vq_fingerprint": fp, "training": training,
        "bf16": bf16, "initialised_from": _repo_relative(digit_tf),
        "prompts": f"one condition token = 10 * slot + digit, slots {list(PROMPT_SLOTS)}",
        "data": "real training digits in red/green, thick/thin by ink within each digit (bias.planted_bias_data)",
        "metrics": {"final_loss": float(log["loss"].iloc[-1])}, "rebuild": "make checkpoints"})
    return model, path, log, why


def _repo_relative(path) -> str:
    from . import REPO_ROOT

    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def generate_study(model, vq, subjects: dict, attribute_per_value=(150, 25, 25), n_neutral: int = 300,
                   temperature: float = 1.0, top_k: int | None = None, seed: int = 0, out_dir=None):
    """Sample the study's token data from the bias transformer. ``subjects``: ``{bias type: [digits]}``.

    Per bias type and digit ``d`` a two-class token dataset of the prompts "a <value> d" for the
    attribute's two values (``attribute_per_value`` train/val/test grids per value, labelled by the named
    value, saved under ``out_dir/<type>/digit_<d>/dataset``): the attribute IEM learns the attribute on
    the same subject as the neutral prompt, as the paper's were all "doctor" images. And ``n_neutral``
    neutral-prompt grids "a d" for every digit (saved as ``out_dir/neutral_tokens.npz``, key
    ``digit_<d>``). Returns ``({(type, digit): dataset}, {digit: neutral tokens})``."""
    from . import datasets as tokds
    from . import generation as gen
    from . import vq as vqlib
    from .artifacts import atomic_path

    digits_used = sorted({d for ds in subjects.values() for d in ds})
    jobs = {("neutral", d): prompt_id(np.full(n_neutral, d)) for d in digits_used}
    for b, ds in subjects.items():
        values = ATTRIBUTES[b]
        for d in ds:
            for split, n in zip(("train", "val", "test"), attribute_per_value, strict=True):
                if n:
                    jobs[(b, d, split)] = np.repeat([prompt_id(d, values[0]), prompt_id(d, values[1])], n)
    # one sampling call for everything: the transformer's cost is per step, so large batches are cheap
    grids = gen.sample_tokens(model, np.concatenate(list(jobs.values())), temperature=temperature, top_k=top_k,
                              seed=seed).numpy()
    ends = np.cumsum([len(p) for p in jobs.values()])
    out = {k: grids[e - len(p):e] for (k, p), e in zip(jobs.items(), ends, strict=True)}
    neutral = {d: out[("neutral", d)] for d in digits_used}
    with atomic_path(Path(out_dir) / "neutral_tokens.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{f"digit_{d}": t for d, t in neutral.items()})
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
            details = {"prompts": f"a <{'|'.join(values)}> {d}", "per_value": list(attribute_per_value),
                       "temperature": temperature, "top_k": top_k}
            studies[(b, d)] = tokds.save_token_dataset(Path(out_dir) / b / f"digit_{d}" / "dataset", splits,
                                                       list(values), vqlib.vq_meta(vq), source="generated",
                                                       details=details, names=names)
    return studies, neutral


def load_real_study(root, bias_types, vq_meta: dict, out_dir) -> tuple[dict, dict]:
    """Token data in the original's layout: ``root/<bias type>/{train,val[,test]}.csv``
    (``filename,label,indices``, labels 0/1, optional ``class_names.txt`` with the two values' names) and
    ``neutral.csv`` (an ``indices`` column). Returns ``(datasets, {type: neutral tokens})``."""
    from . import datasets as tokds

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"real data folder {root} does not exist")
    available = sorted(p.name for p in root.iterdir() if (p / "train.csv").exists())
    studies, neutral = {}, {}
    for b in bias_types:
        if b not in available:
            raise ValueError(f"bias type {b!r} is not in {root} (it has: {available or 'no <type>/train.csv'})")
        folder = root / b
        names_file = folder / "class_names.txt"
        values = names_file.read_text().split() if names_file.exists() else ["0", "1"]
        if len(values) != 2:
            raise ValueError(f"{names_file}: a bias study compares two attribute values, got {values}")
        for f in ("val.csv", "neutral.csv"):
            if not (folder / f).exists():
                raise FileNotFoundError(f"{folder / f} is missing")
        csvs = {s: folder / f"{s}.csv" for s in ("train", "val", "test") if (folder / f"{s}.csv").exists()}
        neutral[b], _, _ = tokds.read_cortex_csv(folder / "neutral.csv", vq_meta["grid"], vq_meta["n_embed"], labelled=False)
        try:  # labels outside 0/1, or a value with no training rows, are refused here
            studies[b] = tokds.import_cortex_csv(Path(out_dir) / b / "dataset", csvs, vq_meta, class_names=values)
        except ValueError as err:
            raise ValueError(f"{folder}: {err} (a bias study needs both attribute values {values})") from None
    return studies, neutral


def planted_shares(measured: pd.DataFrame, planted: dict) -> dict:
    """The share of each bias type's planted value among measured images (``measured_attributes``)."""
    red, thick = float(measured["red"].mean()), float(measured["thick"].mean())
    return {"colour": red if planted.get("colour", "red") == "red" else 1 - red,
            "thickness": thick if planted.get("thickness", "thick") == "thick" else 1 - thick}
