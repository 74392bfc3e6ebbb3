"""The codebook-size study: the shipped VQ models of 64, 256 and 1,024 codes, the size check, the preset."""

import json
import os
import subprocess
import sys

import pytest
from safetensors import safe_open

from cortex_run import REPO_ROOT, SHIPPED_CHECKPOINTS, codebook_sizes, pipeline, taming_vq
from cortex_run.checkpoints import read_card

SIZES = [64, 256, 1024]


def test_an_unshipped_size_names_the_shipped_ones_and_the_command(tmp_path):
    for k in (64, 256):
        cfg = {"config": {"params": {"n_embed": k}}}
        (tmp_path / codebook_sizes.shipped_name(k)).with_suffix(".json").write_text(json.dumps(cfg))
        (tmp_path / codebook_sizes.shipped_name(k)).write_bytes(b"")
    (tmp_path / "vq_mnist_k512.json").write_text(
        json.dumps({"config": {"params": {"n_embed": 512}}})
    )  # no weights
    assert codebook_sizes.shipped_sizes(tmp_path) == [64, 256]
    codebook_sizes.check_size(64, tmp_path)
    with pytest.raises(ValueError) as err:
        codebook_sizes.check_size(512, tmp_path)
    msg = str(err.value)
    assert "codebook_size = 512" in msg and "shipped: 64, 256" in msg
    assert "-p retrain true -p codebook_size 512" in msg and "--only 01_vq_model" in msg


@pytest.mark.parametrize("k", SIZES)
def test_the_shipped_cards_match_their_weights(k):
    """Each size's card: the default's config but n_embed, the default's training recipe and seed, its rebuild
    command; the weights hold a codebook of k codes and load into the model the card describes."""
    weights = SHIPPED_CHECKPOINTS / codebook_sizes.shipped_name(k)
    card, default = read_card(weights), read_card(SHIPPED_CHECKPOINTS / "vq_mnist.safetensors")
    expected = json.loads(json.dumps(taming_vq.DEFAULT_VQ_CONFIG))
    expected["params"]["n_embed"] = k
    assert card["config"] == expected
    assert card["seed"] == default["seed"] and card["data"] == default["data"]
    recipe = ("steps", "batch_size", "lr", "revive_every", "discriminator_weight", "bf16")
    assert {r: card["training"][r] for r in recipe} == {r: default["training"][r] for r in recipe}
    with safe_open(str(weights), "pt") as f:
        assert f.get_slice("quantize.embedding.weight").get_shape() == [k, 32]
    vq = taming_vq.load(card["config"], weights)
    assert vq.n_embed == k and vq.fingerprint == card["fingerprint"]
    assert set(card["metrics"]) == {"test_psnr_db", "test_codebook_usage"}
    if k != 256:
        assert card["rebuild"] == codebook_sizes.train_command(k)
    assert codebook_sizes.shipped_sizes() == SIZES


def test_the_preset_runs_01_to_08_for_each_size_then_notebook_12():
    preset = pipeline.load_preset("codebook-sizes")
    plan = pipeline.sub_runs(preset)
    assert sorted(p["resolved"]["01_vq_model"]["codebook_size"] for p in plan) == SIZES
    one = pipeline.load_preset("one_codebook_size")["notebooks"]
    assert one == [
        f"0{i}_{n}"
        for i, n in enumerate(
            [
                "vq_model",
                "dataset_generation",
                "train_iem",
                "test_iem",
                "compute_tis",
                "concept_analysis",
                "image_level_explanation",
                "concept_level_explanation",
            ],
            1,
        )
    ]
    for p in plan:
        k = p["resolved"]["01_vq_model"]["codebook_size"]
        assert p["run_dir"] == REPO_ROOT / f"runs/codebook-sizes/k{k}"
        assert p["preset"] == "one_codebook_size" and list(p["resolved"]) == one
        assert p["resolved"]["02_dataset_generation"]["source"] == "encoded"
        assert p["resolved"]["03_train_iem"]["architectures"] == [1]
    assert preset["notebooks"] == ["12_compare_tokenizers"]
    summary = preset["parameters"]["12_compare_tokenizers"]
    assert sorted(REPO_ROOT / v for v in summary["runs"].values()) == sorted(p["run_dir"] for p in plan)
    assert summary["codebook_size_study"] is True


def test_a_preset_with_runs_finishes_them_first_in_order(tmp_path, monkeypatch):
    """run() runs each entry of ``runs`` (with its parameters and the -p overrides) before its own notebooks;
    a bad entry or an unknown parameter stops it before any run starts."""
    calls, run = [], pipeline.run
    monkeypatch.setattr(pipeline, "run", lambda *a, **kw: calls.append(a))
    preset = tmp_path / "two.yaml"
    preset.write_text(
        "runs:\n"
        "  - {run_dir: runs/a, preset: one_codebook_size, parameters: {codebook_size: 64}}\n"
        "  - {run_dir: runs/b, preset: one_codebook_size}\nnotebooks: []\n"
    )
    run(str(preset), [("03_train_iem.epochs", "2")], run_dir=str(tmp_path / "summary"))
    assert [(c[0], c[3], c[7]) for c in calls] == [
        ("one_codebook_size", str(REPO_ROOT / "runs/a"), {"codebook_size": 64}),
        ("one_codebook_size", str(REPO_ROOT / "runs/b"), {}),
    ]
    assert all(c[1] == [("03_train_iem.epochs", "2")] for c in calls)
    calls.clear()
    with pytest.raises(SystemExit, match="unknown parameter 'trian_steps'"):
        run(str(preset), [("trian_steps", "5")], run_dir=str(tmp_path / "summary"))
    preset.write_text("runs:\n  - {preset: one_codebook_size}\nnotebooks: []\n")
    with pytest.raises(SystemExit, match="needs run_dir and preset"):
        run(str(preset), [], run_dir=str(tmp_path / "summary"))
    assert calls == []


def test_notebook_01_refuses_an_unshipped_size(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cortex_run.pipeline",
            "--preset",
            "default",
            "--only",
            "01_vq_model",
            "-p",
            "codebook_size",
            "512",
            "--jobs",
            "1",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MPLBACKEND": "Agg"},
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert r.returncode != 0 and "failed in cell" in r.stderr
    assert "no shipped VQ model has codebook_size = 512" in r.stderr
    assert "-p retrain true -p codebook_size 512" in r.stderr
    assert not (tmp_path / "run" / "registry.json").exists()
