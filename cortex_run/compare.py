"""Finished runs side by side (notebook 12): one row of headline numbers per run (``read_run``), each beside
the control it is read against (``CONTROLS``):

* PSNR, codebook usage (notebook 01) and the IEM's accuracy (04), from ``metrics.json``;
* the share of an image's |TIS| at its ``top`` positions, against an even spread (``top / positions``);
* per class, the distinct ids at the top TIS positions (mean over classes), against ``top`` random positions;
* masking (07, pixel space, n >= 1; 08): the target's drop with the top-TIS ids masked, against random
  positions; with a class's concept tokens masked, against its most frequent tokens.
"""

import contextlib
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cortex_utils.concepts import top_tis_share, top_tokens
from cortex_utils.evaluation import ids_at, random_positions

from .artifacts import read_metrics, registered
from .datasets import load_token_dataset

# figure -> its control (the column read beside it)
CONTROLS = {
    "tis_top_share": "tis_top_share_even",
    "class_distinct_ids_tis": "class_distinct_ids_random",
    "image_mask_prob_drop_tis": "image_mask_prob_drop_random",
    "concept_mask_logit_drop_concept": "concept_mask_logit_drop_frequency",
}
FROM_METRICS = {
    "psnr_db": "vq_test_psnr_db",
    "codebook_usage": "vq_codebook_usage",
    "iem_test_top1": "iem1_test_top1",
    "image_mask_tis_beats_random": "image_level_tis_beats_random",
    "concept_mask_logit_drop_concept": "concept_level_tis_drop",
    "concept_mask_logit_drop_frequency": "concept_level_frequency_drop",
}


def class_distinct_ids(ids: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the distinct ids a class's images hold at the chosen positions (``ids``: N, n)."""
    ids, labels = np.asarray(ids), np.asarray(labels)
    if len(ids) != len(labels) or not len(ids):
        raise ValueError(f"ids ({len(ids)} images) and labels ({len(labels)}) must be aligned and non-empty")
    return float(np.mean([len(np.unique(ids[labels == c])) for c in np.unique(labels)]))


def image_mask_drops(image_level: pd.DataFrame, space: str = "pixel") -> dict:
    """Mean target-probability drop over (evaluator, n >= 1) cells of notebook 07's table, TIS and random."""
    t = image_level[(image_level["space"] == space) & (image_level["n"] >= 1)]
    drops = t.groupby("selection")["prob_drop"].mean()
    missing = [s for s in ("tis", "random") if s not in drops.index]
    if missing:
        raise ValueError(
            f"notebook 07's table has no {space}-space rows with n >= 1 for selection(s) {missing}"
        )
    return {
        "image_mask_prob_drop_tis": float(drops["tis"]),
        "image_mask_prob_drop_random": float(drops["random"]),
    }


def run_row(
    metrics: dict, tokens, labels, tis, image_level: pd.DataFrame | None, top: int = 5, seed: int = 0
) -> dict:
    """One run's headline numbers and their controls (NaN where the run did not compute one)."""
    tokens, tis = np.asarray(tokens), np.asarray(tis)
    if tokens.shape != tis.shape:
        raise ValueError(f"tokens {tokens.shape} and TIS {tis.shape} must be aligned (same test images)")
    row = {
        name: np.nan if metrics.get(key) is None else float(metrics[key])
        for name, key in FROM_METRICS.items()
    }
    positions = tis[0].size
    row["tis_top_share"] = float(top_tis_share(tis, top).mean())
    row["tis_top_share_even"] = top / positions
    row["class_distinct_ids_tis"] = class_distinct_ids(top_tokens(tokens, tis, top), labels)
    rand = ids_at(tokens, random_positions(len(tokens), tis.shape[1:], top, seed))
    row["class_distinct_ids_random"] = class_distinct_ids(rand, labels)
    row.update(
        image_mask_drops(image_level)
        if image_level is not None
        else {"image_mask_prob_drop_tis": np.nan, "image_mask_prob_drop_random": np.nan}
    )
    return row


def read_run(run_dir: str | os.PathLike, top: int = 5, seed: int = 0) -> dict:
    """``run_row`` of a finished run (notebooks 01-05 at least), with its tokenizer's family and size."""
    run_dir = Path(run_dir)
    ds = load_token_dataset(registered(run_dir, "dataset")["path"])
    tis_entry = registered(run_dir, "tis")
    if "test" not in tis_entry["splits"]:
        raise ValueError(f"{run_dir}: notebook 05 computed no test TIS")
    csv = run_dir / "evaluation" / "image_level.csv"
    row = run_row(
        read_metrics(run_dir),
        ds.tokens["test"],
        ds.labels["test"],
        np.load(Path(tis_entry["path"]) / "test.npy"),
        pd.read_csv(csv) if csv.is_file() else None,
        top=top,
        seed=seed,
    )
    return {"family": ds.vq_family, "codebook_size": int(ds.manifest["n_embed"]), **row}


# the table's columns in order, each control right after its figure
COLUMNS = [
    "psnr_db",
    "codebook_usage",
    "iem_test_top1",
    "tis_top_share",
    "tis_top_share_even",
    "class_distinct_ids_tis",
    "class_distinct_ids_random",
    "image_mask_prob_drop_tis",
    "image_mask_prob_drop_random",
    "image_mask_tis_beats_random",
    "concept_mask_logit_drop_concept",
    "concept_mask_logit_drop_frequency",
]


def runs_table(rows: dict) -> pd.DataFrame:
    """Rows (label -> ``run_row`` dict, other keys first) as a table in the order of ``COLUMNS``."""
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table[[c for c in table.columns if c not in COLUMNS] + COLUMNS]


def machine() -> str:
    """Where (and how busy) a table's numbers were measured: CPU, cores, torch version, load."""
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    load = f", 1-min load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.system()}{load}"
