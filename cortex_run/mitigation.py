"""Bias mitigation by token editing: take the attribute tokens the bias study found out of the generator.

The bias study (``bias``) finds a value's **attribute tokens**, the ids the attribute IEM's TIS points at for
that value. If they carry the attribute, a generator that may not draw them should show the value less
often. Notebook 10 tests that on the planted-bias generator (``planted_bias``):

* **the edit** (``load_or_sample_edited``): the neutral prompt of the biased digit sampled with the planted
  value's attribute ids suppressed (``generation.sample_tokens(suppress=...)``: a logit of -inf on them at
  every step, so the generator draws its next most likely allowed id instead);
* **the control** (``control_ids``): the same edit with as many other ids, drawn once with a seed, each from
  the ids the unedited neutral generations use about as often as the attribute id it stands for (a
  frequency-matched draw): suppressing a common token changes more of an image than a rare one, so an edit of
  random but rare ids would be an unfairly weak control. Neither value's attribute ids are eligible;
* **from pixels** (``measure``): per generation whether it shows the planted value (the study's pixel rule,
  ``planted_bias.measured_attributes``) and whether every independent evaluator still sees the prompted
  digit; shares with Wilson intervals, differences with Newcombe's (``bias_stats``), and a verdict
  (``verdict``) that asks for a move toward balance beyond the control's with the digit kept.

The edited generations are token datasets like the study's (``<out_dir>/data/mitigation_<type>`` and
``..._random``, one split ``neutral``); the default run loads the shipped ones in ``data/default/bias`` when
their card names this generator, these suppressed ids and these sampling settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cortex_utils import vq as vqlib
from cortex_utils.bias_stats import difference_interval, share_interval

from . import SHIPPED_DATA
from . import datasets as tokds
from . import generation as gen
from .artifacts import repo_relative
from .checkpoints import card_path
from .digits import to_uint8
from .evaluators import predict_logits
from .planted_bias import ATTRIBUTES, draw_looks, sample_looks, shows_value

SETS = ("before", "after", "after_random")  # unedited, attribute ids suppressed, control ids suppressed


def control_ids(neutral_tokens, attribute_ids, exclude=(), seed: int = 0, pool: int = 3) -> np.ndarray:
    """As many ids as ``attribute_ids``, none of them in ``attribute_ids`` or ``exclude``, frequency-matched:
    for each attribute id (most frequent first) one id drawn uniformly among the ``pool`` still unpicked ids
    whose count in ``neutral_tokens`` (the unedited generations) is closest to its count on a log scale. Only
    ids the generations use are candidates. Sorted int64."""
    ids = np.unique(np.asarray(attribute_ids, dtype=np.int64))
    if ids.size == 0:
        raise ValueError("control_ids: no attribute ids to match")
    if pool < 1:
        raise ValueError(f"control_ids: pool must be >= 1, got {pool}")
    tokens = np.asarray(neutral_tokens, dtype=np.int64).ravel()
    counts = np.bincount(tokens, minlength=int(max(tokens.max(), ids.max())) + 1)
    banned = np.union1d(ids, np.asarray(exclude, dtype=np.int64))
    free = np.setdiff1d(np.flatnonzero(counts), banned)
    if free.size < ids.size:
        raise ValueError(
            f"control_ids: {ids.size} ids to match but only {free.size} other ids occur in the "
            "neutral generations"
        )
    rng = np.random.default_rng(seed)
    picked = []
    for i in ids[np.argsort(-counts[ids], kind="stable")]:
        gap = np.abs(np.log1p(counts[free]) - np.log1p(counts[i]))
        nearest = free[np.argsort(gap, kind="stable")[:pool]]
        choice = int(rng.choice(nearest))
        picked.append(choice)
        free = free[free != choice]
    return np.sort(np.array(picked, dtype=np.int64))


def token_share(tokens, ids) -> float:
    """The share of all grid positions of ``tokens`` that hold one of ``ids`` (how much an edit must
    redraw)."""
    return float(np.isin(np.asarray(tokens), np.asarray(ids)).mean())


def load_or_sample_edited(
    model,
    model_path,
    vq,
    name: str,
    digit: int,
    suppress,
    n: int,
    prior: dict,
    sampling: dict,
    seed: int = 0,
    out_dir=None,
    regenerate: bool = False,
):
    """``n`` generations of the neutral prompt "a <digit>" (looks drawn from ``prior``, images sampled with
    ``sampling``, as ``planted_bias.generate_study`` does) with the ids ``suppress`` never drawn, as a token
    dataset ``<out_dir>/data/<name>`` (split ``neutral``, labelled by digit; its card records the settings,
    the suppressed ids and the generator's sha256). The shipped ``data/default/bias/<name>`` is loaded (and
    copied there) when its card holds exactly these settings; otherwise they are sampled here.
    Returns ``(dataset, why)``."""
    suppress = sorted(int(i) for i in np.unique(np.asarray(suppress)))
    gen.suppression_mask(
        np.asarray(suppress, dtype=np.int64), model.transformer.config.vocab_size
    )  # checks them
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    fp = vqlib.fingerprint(vq)
    settings = {
        "digit": int(digit),
        "suppressed_ids": suppress,
        "n": int(n),
        "prior": {k: {str(d): float(p) for d, p in v.items()} for k, v in prior.items()},
        "sampling": {k: sampling[k] for k in ("temperature", "top_k", "guidance")},
        "seed": int(seed),
        "transformer_sha256": tokds.file_digest(model_path),
    }
    shipped, path = SHIPPED_DATA / "bias" / name, Path(out_dir) / "data" / name
    found, why = (
        (None, "regenerate = True")
        if regenerate
        else (None, f"no shipped {name}")
        if not card_path(shipped).exists()
        else tokds.shipped_dataset(shipped, settings, fp)
    )
    if found is not None:
        return tokds.copy_dataset(found, path), f"loaded the shipped data/default/bias/{name} ({why})"
    red, thick = draw_looks(np.full(n, digit), prior, np.random.default_rng(seed))
    tokens = sample_looks(model, np.full(n, digit), red, thick, sampling, seed, suppress)
    details = {"prompts": f"a {digit}", "suppressed_ids": suppress, **settings["sampling"], "seed": seed}
    ds = tokds.save_token_dataset(
        path,
        {"neutral": (tokens.numpy(), np.full(n, digit))},
        [str(d) for d in range(10)],
        vqlib.vq_meta(vq),
        source="generated",
        details=details,
        classifier_data=False,
    )
    tokds.write_dataset_card(
        path,
        {
            "kind": "token dataset",
            "settings": settings,
            "generator": repo_relative(model_path),
            "rebuild": "make checkpoints",
        },
    )
    return ds, f"sampled here ({why})"


def measure(
    vq, tokens, digit: int, bias_type: str, value: str, threshold: float, evaluators: dict
) -> pd.DataFrame:
    """Per generation, from its pixels: ``shows`` (it shows ``value`` of ``bias_type`` by the study's rule,
    ``planted_bias.shows_value`` with the stroke-width ``threshold``), each evaluator's
    ``<name>_digit`` (its top class is ``digit``) and ``kept`` (every evaluator's is)."""
    if value not in ATTRIBUTES[bias_type]:
        raise ValueError(f"{value!r} is not a value of {bias_type}: {ATTRIBUTES[bias_type]}")
    if not evaluators:
        raise ValueError("measure needs at least one evaluator to tell whether the digit is kept")
    images = vqlib.decode(vq, torch.as_tensor(np.asarray(tokens), dtype=torch.long))
    shows = shows_value({"all": to_uint8(images)}, bias_type, value, threshold)["all"]
    out = pd.DataFrame({"shows": shows})
    for k, model in evaluators.items():
        with torch.no_grad():
            out[f"{k}_digit"] = predict_logits(model, images).argmax(1).numpy() == digit
    out["kept"] = out[[f"{k}_digit" for k in evaluators]].all(axis=1)
    return out


def summary(measured: dict, level: float = 0.95) -> pd.DataFrame:
    """One row per set of ``measured`` (``{set name: measure(...)}``): images, the share showing the value and
    the share keeping the digit, each with its Wilson interval, and each evaluator's own share."""
    rows = {}
    for s, m in measured.items():
        share, digit = share_interval(m["shows"], level), share_interval(m["kept"], level)
        rows[s] = {
            "images": len(m),
            "share": share[0],
            "share_low": share[1],
            "share_high": share[2],
            "digit_agreement": digit[0],
            "digit_agreement_low": digit[1],
            "digit_agreement_high": digit[2],
            **{c: float(m[c].mean()) for c in m if c.endswith("_digit")},
        }
    return pd.DataFrame(rows).T


def changes(measured: dict, level: float = 0.95) -> dict:
    """The three differences the verdict reads, each ``(difference, low, high)`` (Newcombe's interval):
    ``change`` (the share after the edit minus before), ``change_vs_random`` (after the edit minus after the
    control edit) and ``digit_change`` (the digit agreement after the edit minus before)."""
    before, after, rand = (measured[s] for s in SETS)
    pairs = {
        "change": (after["shows"], before["shows"]),
        "change_vs_random": (after["shows"], rand["shows"]),
        "digit_change": (after["kept"], before["kept"]),
    }
    return {k: tuple(float(x) for x in difference_interval(a, b, level)) for k, (a, b) in pairs.items()}


def metrics(table: pd.DataFrame | None, bias_type: str, measured: dict | None = None) -> dict:
    """The recorded numbers of one bias type's ``summary`` (rows ``SETS``): ``mitigation_<type>_share_<set>``
    and ``mitigation_<type>_digit_agreement_<set>``, each with ``_low`` / ``_high``, and with ``measured`` the
    ``changes`` (``mitigation_<type>_change``, ``_change_vs_random``, ``_digit_change``, each with ``_low`` /
    ``_high``); rounded to 4 places. ``table`` None (no edit was possible): every key None."""
    out = {}
    for s in SETS:
        for what in ("share", "digit_agreement"):
            for suffix in ("", "_low", "_high"):
                out[f"mitigation_{bias_type}_{what}_{s}{suffix}"] = (
                    None if table is None else round(float(table.loc[s, what + suffix]), 4)
                )
    if table is not None and measured is None:
        return out
    diffs = changes(measured) if table is not None else {}
    for name in ("change", "change_vs_random", "digit_change"):
        for i, suffix in enumerate(("", "_low", "_high")):
            out[f"mitigation_{bias_type}_{name}{suffix}"] = round(diffs[name][i], 4) if diffs else None
    return out


def verdict(
    measured: dict, bias_type: str, value: str, max_digit_drop: float = 0.1, level: float = 0.95
) -> str:
    """One markdown line from ``measured`` (``{set: measure(...)}`` for ``SETS``): whether the edit moved the
    share of ``value`` toward ½ (its share fell and ended nearer ½ than before), beyond the control's move
    (the edited share's Newcombe interval against the control's lies below 0), with the digit kept (the
    interval of the change in digit agreement excludes drops larger than ``max_digit_drop``). It works when
    all three hold."""
    before, after, rand = (measured[s] for s in SETS)
    p0, p1 = before["shows"].mean(), after["shows"].mean()
    d_edit, d_rand, d_digit = changes(measured, level).values()
    toward = d_edit[2] < 0 and abs(p1 - 0.5) < abs(p0 - 0.5)
    beyond, kept = d_rand[2] < 0, d_digit[1] >= -max_digit_drop
    works = toward and beyond and kept
    leaned = share_interval(before["shows"], level)[1] > 0.5
    note = (
        "" if leaned else f"(no lean toward {value} is established before the edit: its interval reaches ½) "
    )

    def iv(d):
        return f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]"

    return (
        f"- **{bias_type}**: {note}the share of {value} went {p0:.2f} → {p1:.2f} (change {iv(d_edit)}: "
        f"{'it fell, toward balance' if toward else '**it did not fall toward balance**'}); against the "
        f"random edit ({rand['shows'].mean():.2f}) {iv(d_rand)}: "
        f"{'beyond the control' if beyond else '**not beyond the control**'}; digit agreement "
        f"{before['kept'].mean():.2f} → {after['kept'].mean():.2f} (change {iv(d_digit)}: "
        f"{'kept' if kept else f'**a drop beyond {max_digit_drop:.2f} is not ruled out**'}). "
        + ("**The edit works.**" if works else "**The edit does not work here.**")
    )
