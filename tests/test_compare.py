"""Notebook 12's table of finished runs (cortex_run.compare) on fake run directories."""

import numpy as np
import pandas as pd
import pytest

from cortex_run import compare
from cortex_run import datasets as tokds
from cortex_run.artifacts import record_metrics, register


def _fake_run(path, n_embed, seed):
    """A run directory as notebooks 01-08 leave it: metrics, the registered dataset and test TIS, notebook
    07's table."""
    rng = np.random.default_rng(seed)
    tokens, labels = rng.integers(0, n_embed, (20, 4, 4)), np.arange(20) % 2
    meta = {
        "vq_family": "taming_vqgan",
        "vq_fingerprint": "f",
        "n_embed": n_embed,
        "embed_dim": 8,
        "grid": [4, 4],
    }
    tokds.save_token_dataset(
        path / "datasets" / "encoded",
        {"train": (tokens, labels), "test": (tokens, labels)},
        ["a", "b"],
        meta,
        source="encoded",
    )
    register(path, "dataset", path=str(path / "datasets" / "encoded"), source="encoded")
    tis = rng.random((20, 4, 4))
    (path / "tis").mkdir()
    np.save(path / "tis" / "test.npy", tis)
    register(path, "tis", path=str(path / "tis"), iem_arch=1, splits=["train", "test"])
    record_metrics(
        path,
        vq_test_psnr_db=25.0 + seed,
        vq_codebook_usage=0.5,
        iem1_test_top1=0.9,
        image_level_tis_beats_random=1.0,
        concept_level_tis_drop=0.7,
        concept_level_frequency_drop=None,
    )
    (path / "evaluation").mkdir()
    pd.DataFrame(
        {
            "space": ["pixel"] * 6 + ["token"] * 2,
            "n": [0, 1, 2, 0, 1, 2, 1, 1],
            "selection": ["tis"] * 3 + ["random"] * 3 + ["tis", "random"],
            "prob_drop": [0.0, 0.4, 0.6, 0.0, 0.1, 0.3, 9.0, 9.0],
        }
    ).to_csv(path / "evaluation" / "image_level.csv")
    return tokens, labels, tis


def test_read_run_on_fake_runs(tmp_path):
    rows = {}
    for k in (8, 32):
        (tmp_path / f"k{k}").mkdir()
        tokens, labels, tis = _fake_run(tmp_path / f"k{k}", k, seed=k)
        rows[f"k{k}"] = row = compare.read_run(tmp_path / f"k{k}", top=3)
        assert row["codebook_size"] == k and row["family"] == "taming_vqgan" and row["psnr_db"] == 25.0 + k
        assert (
            np.isnan(row["concept_mask_logit_drop_frequency"])
            and row["concept_mask_logit_drop_concept"] == 0.7
        )
        # by hand: ids at each image's 3 highest-TIS positions, distinct per class, mean over the two classes
        flat_t, flat_s = tokens.reshape(20, -1), tis.reshape(20, -1)
        top_ids = np.array([t[np.argsort(-s)[:3]] for t, s in zip(flat_t, flat_s, strict=True)])
        assert row["class_distinct_ids_tis"] == np.mean(
            [len(set(top_ids[labels == c].ravel())) for c in (0, 1)]
        )
        share = np.mean([np.sort(s)[-3:].sum() / s.sum() for s in flat_s])
        assert row["tis_top_share"] == pytest.approx(share) and row["tis_top_share_even"] == 3 / 16
        assert 1 <= row["class_distinct_ids_random"] <= min(k, 30)
        # pixel space, n >= 1 only: TIS (0.4 + 0.6) / 2, random (0.1 + 0.3) / 2
        assert row["image_mask_prob_drop_tis"] == pytest.approx(0.5)
        assert row["image_mask_prob_drop_random"] == pytest.approx(0.2)
    table = compare.runs_table(rows)
    assert list(table.index) == ["k8", "k32"] and list(table.columns[:2]) == ["family", "codebook_size"]
    cols = list(table.columns)
    for figure, control in compare.CONTROLS.items():
        assert cols.index(control) == cols.index(figure) + 1


def test_a_run_without_notebook_07_gets_nan_masking(tmp_path):
    _fake_run(tmp_path, 8, seed=0)
    (tmp_path / "evaluation" / "image_level.csv").unlink()
    row = compare.read_run(tmp_path)
    assert np.isnan(row["image_mask_prob_drop_tis"]) and np.isnan(row["image_mask_prob_drop_random"])


def test_class_distinct_ids_and_bad_input():
    ids = np.array([[1, 1, 2], [2, 3, 3], [5, 5, 5]])
    assert compare.class_distinct_ids(ids, np.array([0, 0, 1])) == (3 + 1) / 2
    with pytest.raises(ValueError, match="aligned"):
        compare.class_distinct_ids(ids, np.array([0, 1]))
    with pytest.raises(ValueError, match="random"):
        compare.image_mask_drops(
            pd.DataFrame({"space": ["pixel"], "n": [1], "selection": ["tis"], "prob_drop": [0.1]})
        )
    with pytest.raises(ValueError, match="aligned"):
        compare.run_row({}, np.zeros((2, 4, 4), int), np.zeros(2, int), np.zeros((2, 2, 2)), None)
