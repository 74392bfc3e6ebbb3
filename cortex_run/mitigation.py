"""Bias mitigation by token editing: take the attribute tokens the bias study found out of the generator.

Notebook 16 samples the neutral prompt with those ids suppressed (``load_or_sample_edited``), against a
control edit of as many frequency-matched ids (``control_ids``), and measures from pixels whether the planted
value grew rarer with the digit kept (``measure``, ``summary``, ``changes``, ``verdict``).
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
from .cache import load_or_build
from .digits import to_uint8
from .evaluators import predict_logits
from .planted_bias import draw_looks, sample_looks, shows_value

SETS = ("before", "after", "after_random")  # unedited, attribute ids suppressed, control ids suppressed


def control_ids(neutral_tokens, attribute_ids, exclude=(), seed: int = 0, pool: int = 3) -> np.ndarray:
    """As many ids as ``attribute_ids``, none in ``attribute_ids`` or ``exclude``, frequency-matched: for
    each attribute id (most frequent first) one drawn uniformly among the ``pool`` unpicked ids whose log
    count in ``neutral_tokens`` is closest to its own (suppressing a common token changes more than a rare
    one, so random rare ids would be a weak control). Only ids the generations use. Sorted int64."""
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
        raise ValueError(f"control_ids: {ids.size} ids to match but only {free.size} other ids occur")
    rng = np.random.default_rng(seed)
    picked = []
    for i in ids[np.argsort(-counts[ids], kind="stable")]:
        gap = np.abs(np.log1p(counts[free]) - np.log1p(counts[i]))
        nearest = free[np.argsort(gap, kind="stable")[:pool]]
        picked.append(int(rng.choice(nearest)))
        free = free[free != picked[-1]]
    return np.sort(np.array(picked, dtype=np.int64))


def token_share(tokens, ids) -> float:
    """The share of grid positions of ``tokens`` holding one of ``ids`` (how much an edit must redraw)."""
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
    """``n`` generations of the neutral prompt "a <digit>" (as ``planted_bias.generate_study``) with the ids
    ``suppress`` never drawn, as the token dataset ``<out_dir>/data/<name>`` (split ``neutral``): the shipped
    ``data/default/bias/<name>`` when its card holds exactly these settings, else sampled here.
    Returns ``(dataset, why)``."""
    suppress = sorted(int(i) for i in np.unique(np.asarray(suppress)))
    gen.suppression_mask(suppress, model.transformer.config.vocab_size)  # checks them
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
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

    def sample():
        red, thick = draw_looks(np.full(n, digit), prior, np.random.default_rng(seed))
        tokens = sample_looks(model, np.full(n, digit), red, thick, sampling, seed, suppress)
        details = {"prompts": f"a {digit}", "suppressed_ids": suppress, **settings["sampling"], "seed": seed}
        splits = {"neutral": (tokens.numpy(), np.full(n, digit))}
        ds = tokds.save_token_dataset(
            path, splits, list("0123456789"), vqlib.vq_meta(vq), "generated", details, classifier_data=False
        )
        card = {"kind": "token dataset", "settings": settings, "generator": repo_relative(model_path)}
        tokds.write_dataset_card(path, {**card, "rebuild": "make checkpoints"})
        return ds

    ds, why, sampled = load_or_build(
        shipped,
        {"settings": settings},
        lambda found: tokds.copy_dataset(tokds.load_token_dataset(found, vq), path),
        sample,
        "regenerate = True" if regenerate else "",
    )
    return ds, f"sampled here ({why})" if sampled else f"loaded the shipped data/default/bias/{name} ({why})"


def measure(
    vq, tokens, digit: int, bias_type: str, value: str, threshold: float, evaluators: dict
) -> pd.DataFrame:
    """Per generation, from its pixels: ``shows`` (``value`` of ``bias_type``, by
    ``planted_bias.shows_value`` with the stroke-width ``threshold``), each evaluator's ``<name>_digit``
    (its top class is ``digit``) and ``kept`` (every evaluator's is)."""
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
    """One row per set of ``measured`` (``{set: measure(...)}``): images, the shares showing the value and
    keeping the digit with Wilson intervals, and each evaluator's own share."""
    rows = {}
    for s, m in measured.items():
        rows[s] = {"images": len(m)}
        for what, column in (("share", "shows"), ("digit_agreement", "kept")):
            keys = (what, f"{what}_low", f"{what}_high")
            rows[s].update(zip(keys, share_interval(m[column], level), strict=True))
        rows[s].update({c: float(m[c].mean()) for c in m if c.endswith("_digit")})
    return pd.DataFrame(rows).T


def changes(measured: dict, level: float = 0.95) -> dict:
    """The verdict's differences, each ``(difference, low, high)`` (Newcombe): ``change`` (share after minus
    before the edit), ``change_vs_random`` (after the edit minus after the control) and ``digit_change``
    (digit agreement after minus before)."""
    before, after, rand = (measured[s] for s in SETS)
    pairs = {
        "change": (after["shows"], before["shows"]),
        "change_vs_random": (after["shows"], rand["shows"]),
        "digit_change": (after["kept"], before["kept"]),
    }
    return {k: tuple(float(x) for x in difference_interval(a, b, level)) for k, (a, b) in pairs.items()}


def metrics(table: pd.DataFrame | None, bias_type: str, measured: dict | None = None) -> dict:
    """The recorded numbers of one type's ``summary``: ``mitigation_<type>_{share,digit_agreement}_<set>``
    and, with ``measured``, its ``changes`` as ``mitigation_<type>_<change>``; each with ``_low`` / ``_high``,
    rounded to 4 places. ``table`` None (no edit was possible): every key None."""
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
    """One markdown line from ``measured`` (``{set: measure(...)}`` for ``SETS``): the edit works when the
    share of ``value`` fell and ended nearer ½, beyond the control (the Newcombe interval against it lies
    below 0), with the digit kept (its interval excludes drops larger than ``max_digit_drop``)."""
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
