"""Several objects with known places (cortex_run.composites): composition, the pointing game, the shipped
files."""

import numpy as np
import pytest
import torch

from cortex_run import SHIPPED_CHECKPOINTS, SHIPPED_DATA, composites, digits, tokenizers
from cortex_run import datasets as tokds
from cortex_utils import vq as vqlib

WHITE = list(digits.PALETTE).index("white")


def _gray(n, size=16, seed=0):
    """Distinct random 'digits': each image its own pattern, so where one lands can be told apart."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size)).astype(np.uint8)


def test_pairs_hold_a_target_and_a_distractor_of_another_class():
    labels = np.repeat(np.arange(10), 7)
    pairs = composites.pair_digits(labels, 150, seed=3)
    assert (labels[pairs["target_row"]] == pairs["label"]).all()
    assert (labels[pairs["distractor_row"]] == pairs["distractor"]).all()
    assert (pairs["label"] != pairs["distractor"]).all()
    assert set(pairs["side"]) == {0, 1} and WHITE not in set(pairs["target_colour"])
    assert np.bincount(pairs["target_row"], minlength=70).min() >= 2  # every digit in turn, cycled past 70
    assert (np.bincount(pairs["label"]) == 15).all()  # the classes take turns
    again = composites.pair_digits(labels, 150, seed=3)
    assert all((again[k] == pairs[k]).all() for k in pairs)


def test_each_digit_lands_on_its_side_in_its_colour():
    gray, labels = _gray(20), np.arange(20) % 4
    pairs = composites.pair_digits(labels, 20, seed=0)
    left, right = composites.halves(gray, pairs)
    palette = np.array(list(digits.PALETTE.values()), dtype=np.uint8)
    target = digits.colourize(gray[pairs["target_row"]], palette[pairs["target_colour"]])
    distractor = digits.colourize(gray[pairs["distractor_row"]], np.repeat(palette[WHITE][None], 20, 0))
    for i, s in enumerate(pairs["side"]):
        assert (left[i] == (target if s == 0 else distractor)[i]).all()
        assert (right[i] == (distractor if s == 0 else target)[i]).all()


def test_each_half_is_encoded_on_its_own(tiny_vq, one_thread):
    gray, labels = _gray(6), np.array([0, 1, 2, 0, 1, 2])
    pairs = composites.pair_digits(labels, 6, seed=1)
    tokens = composites.encode_composites(tiny_vq, gray, pairs)
    h, w = vqlib.grid_shape(tiny_vq)
    assert tokens.shape == (6, h, 2 * w)
    left, right = composites.halves(gray, pairs)
    assert (tokens[..., :w] == vqlib.encode(tiny_vq, digits.to_model_input(left)).numpy()).all()
    assert (tokens[..., w:] == vqlib.encode(tiny_vq, digits.to_model_input(right)).numpy()).all()
    assert composites.decode_composites(tiny_vq, tokens).shape == (6, 3, 16, 32)
    with pytest.raises(ValueError, match="two 8-wide halves"):
        composites.decode_composites(tiny_vq, tokens[..., :w])


def test_pointing_share_on_maps_whose_truth_is_known():
    side = np.array([0, 1, 1, 0])
    on_target = composites.target_mask((4, 8), side).astype(float)
    assert on_target.shape == (4, 4, 8) and (on_target.sum((1, 2)) == 16).all()
    assert (on_target[1, :, 4:] == 1).all() and (on_target[0, :, 4:] == 0).all()
    assert (composites.pointing_share(on_target, side, 5) == 1).all()  # all mass on the target's half
    assert (composites.pointing_share(1 - on_target, side, 5) == 0).all()  # all on the distractor
    assert composites.pointing_chance((4, 8)) == 0.5
    rng = np.random.default_rng(0)  # maps that know nothing point at the target at chance
    noise, sides = rng.random((4000, 4, 8)), rng.integers(0, 2, 4000)
    assert abs(composites.pointing_share(noise, sides, 5).mean() - 0.5) < 0.02
    one = np.zeros((1, 4, 8))
    one[0, 2, 6] = 1  # one hot position on the right: top-1 points there, top-2 adds the first left position
    assert composites.pointing_share(one, [1], 1)[0] == 1 and composites.pointing_share(one, [1], 2)[0] == 0.5
    assert (
        composites.target_half(np.arange(64).reshape(2, 4, 8), [1, 0])[0]
        == np.arange(32).reshape(4, 8)[:, 4:]
    ).all()


@pytest.mark.parametrize(
    "maps, side, k, message",
    [
        (np.zeros((2, 4, 7)), [0, 1], 5, "even width"),
        (np.zeros((0, 4, 8)), [], 5, "empty"),
        (np.zeros((2, 4, 8)), [0], 5, "one side per map"),
        (np.zeros((2, 4, 8)), [0, 2], 5, "0 \\(left\\) or 1 \\(right\\)"),
        (np.zeros((2, 4, 8)), [0, 1], 0, "k must be >= 1"),
        (np.zeros((2, 4, 8)), [0, 1], 33, "k must lie in"),
    ],
)
def test_bad_maps_get_clear_errors(maps, side, k, message):
    with pytest.raises(ValueError, match=message):
        composites.pointing_share(maps, np.asarray(side), k)


def test_bad_pairs_get_clear_errors():
    with pytest.raises(ValueError, match="at least one digit"):
        composites.pair_digits([], 3)
    with pytest.raises(ValueError, match="another class"):
        composites.pair_digits([2, 2, 2], 3)
    with pytest.raises(ValueError, match="must be >= 1"):
        composites.pair_digits([0, 1], 0)


def resampled_by_hand(values, n_boot, seed, level=0.95):
    """The former hand-written percentile bootstrap of a mean over images: ``(low, high)``."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    return tuple(np.quantile(means, [(1 - level) / 2, (1 + level) / 2]))


def test_mean_interval_and_overlap_chance():
    values = np.r_[np.zeros(50), np.ones(50)]
    mean, low, high = composites.mean_interval(values, 2000, seed=0)
    assert mean == 0.5 and 0.38 < low < 0.45 and 0.55 < high < 0.62
    assert (low, high) == pytest.approx(resampled_by_hand(values, 2000, 0), abs=1e-12)  # the same draws
    shares = np.random.default_rng(1).random(31)
    got = composites.mean_interval(shares, 300, seed=4)
    assert got[1:] == pytest.approx(resampled_by_hand(shares, 300, 4), abs=1e-12)
    assert composites.mean_interval(np.full(10, 0.3)) == pytest.approx((0.3, 0.3, 0.3))
    assert composites.mean_interval([0.4]) == (0.4, 0.4, 0.4)
    with pytest.raises(ValueError, match="no values"):
        composites.mean_interval([])
    weights = np.zeros((2, 10))
    weights[:, :5] = 1  # every draw is ids 0-4
    assert composites.overlap_chance({0: np.arange(5), 1: np.arange(5, 10)}, weights, 5, 20) == 0.5
    weights[:, :] = 1  # 5 of 10 ids: expected overlap 1/2
    assert abs(composites.overlap_chance({0: np.arange(5)}, weights, 5, 4000) - 0.5) < 0.02
    assert composites.overlap_chance({0: np.arange(1)}, np.eye(2, 10), 5, 10) == 1  # the one id with a weight
    with pytest.raises(ValueError, match="no id has a positive weight"):
        composites.overlap_chance({0: np.arange(5)}, np.zeros((2, 10)), 5, 10)


META = {"vq_fingerprint": "abc", "n_embed": 16, "embed_dim": 4, "grid": [2, 4]}


def test_the_dataset_round_trips_with_its_side_labels(tmp_path):
    rng = np.random.default_rng(0)
    splits = {s: (rng.integers(0, 16, (6, 2, 4)), np.arange(6) % 2) for s in ("train", "test")}
    columns = {s: {"side": rng.integers(0, 2, 6), "distractor": np.arange(6) % 3} for s in splits}
    ds = tokds.save_token_dataset(
        tmp_path / "c", splits, ["a", "b"], META, source="composites", columns=columns
    )
    back = tokds.load_token_dataset(tmp_path / "c")
    assert back.manifest["columns"] == ["distractor", "side"]
    for s in splits:
        assert all((back.columns[s][c] == columns[s][c]).all() for c in ("side", "distractor"))
    assert ds.columns.keys() == back.columns.keys()
    assert tokds.load_token_dataset(_plain(tmp_path)).columns == {}  # datasets without columns as before


def _plain(tmp_path):
    return tokds.save_token_dataset(
        tmp_path / "plain",
        {"train": (np.zeros((2, 2, 4), int), np.array([0, 1]))},
        ["a", "b"],
        META,
        source="x",
    ).path


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"train": {"side": np.zeros(5, int)}}, "one integer per image"),
        ({"train": {"side": np.zeros(6)}}, "one integer per image"),
        ({"train": {"labels": np.zeros(6, int)}}, "identifier other than"),
        ({"train": {"side": np.zeros(6, int)}, "test": {"side": np.zeros(6, int)}}, "for every split"),
    ],
)
def test_bad_columns_are_refused_and_nothing_is_written(tmp_path, columns, message):
    splits = {"train": (np.zeros((6, 2, 4), int), np.arange(6) % 2)}
    with pytest.raises(ValueError, match=message):
        tokds.save_token_dataset(
            tmp_path / "c", splits, ["a", "b"], META, source="composites", columns=columns
        )
    assert not (tmp_path / "c").exists()


def test_the_shipped_composite_iem_matches_the_shipped_composites():
    """data/default/composites was made by the shipped VQ model with the notebook's default settings, and the
    shipped IEM on composites was trained on exactly its train split: the default run loads both."""
    from cortex_run import cache
    from cortex_run.checkpoints import load_iem, read_card

    vq_card = read_card(SHIPPED_CHECKPOINTS / "vq_mnist.safetensors")
    vq = tokenizers.load_vq(vq_card["config"], SHIPPED_CHECKPOINTS / "vq_mnist.safetensors")
    settings = {
        "sizes": {"train": 7000, "val": 750, "test": 750},
        "seed": 0,
        "rule": composites.RULE,
        "vq_fingerprint": vq.fingerprint,
    }
    found, why = cache.lookup(SHIPPED_DATA / "composites", {"settings": settings})
    assert found is not None, why
    ds = tokds.load_token_dataset(found, vq)
    assert ds.grid == (8, 16) and set(ds.columns["test"]) == set(composites.COLUMNS)
    card = read_card(SHIPPED_CHECKPOINTS / "iem1_composites.safetensors")
    assert card["train_fingerprint"] == tokds.split_fingerprint(ds, "train")
    assert card["vq_fingerprint"] == vq.fingerprint and card["spec"]["grid"] == [8, 16]
    model = load_iem(SHIPPED_CHECKPOINTS / "iem1_composites.safetensors")
    assert model(torch.zeros(2, 32, 8, 16)).shape == (2, 10)


def test_the_composite_iem_is_trained_saved_and_then_loaded(tmp_path, one_thread):
    """Trained (and saved with its card) when nothing matches; the saved weights are then loaded as the
    shipped ones for the same train split and settings, and refused for other settings."""
    rng = np.random.default_rng(0)
    meta = {"vq_fingerprint": "abc", "n_embed": 16, "embed_dim": 4, "grid": [4, 8]}
    splits = {s: (rng.integers(0, 16, (n, 4, 8)), np.arange(n) % 2) for s, n in (("train", 12), ("val", 4))}
    ds = tokds.save_token_dataset(tmp_path / "c", splits, ["a", "b"], meta, source="composites")
    training = {
        "epochs": 1,
        "batch_size": 4,
        "lr": 0.01,
        "weight_decay": 0.0,
        "lr_step": 1,
        "lr_gamma": 0.1,
        "width": 4,
        "seed": 0,
    }
    codebook = torch.randn(16, 4)
    model, path, why, trained = composites.composite_iem(
        ds, codebook, training, tmp_path / "iem.safetensors", tmp_path / "nothing.safetensors"
    )
    assert trained and path.exists() and why.startswith("nothing at")
    again, path2, _, trained2 = composites.composite_iem(
        ds, codebook, training, tmp_path / "other.safetensors", path
    )
    assert not trained2 and path2 == path
    x = torch.randn(3, 4, 4, 8)
    assert torch.allclose(model.eval()(x), again(x))
    _, _, why, trained3 = composites.composite_iem(
        ds, codebook, {**training, "width": 8}, tmp_path / "w8.safetensors", path
    )
    assert trained3 and "width 4 (here 8)" in why
