import numpy as np
import pytest
import torch

from cortex_utils import bias


def naive_delta(a, b):
    """The original's definition, pair by pair."""
    greater = sum(1 for x in a for y in b if x > y)
    less = sum(1 for x in a for y in b if x < y)
    return (greater - less) / (len(a) * len(b))


@pytest.mark.parametrize("seed", range(5))
def test_cliffs_delta_equals_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, rng.integers(1, 60))  # small integers: many ties, like token counts
    b = rng.integers(0, 8, rng.integers(1, 60))
    assert bias.cliffs_delta(a, b) == pytest.approx(naive_delta(a, b), abs=1e-12)
    x, y = rng.normal(size=37), rng.normal(0.5, size=23)
    assert bias.cliffs_delta(x, y) == pytest.approx(naive_delta(x, y), abs=1e-12)


def test_cliffs_delta_extremes_and_antisymmetry():
    assert bias.cliffs_delta([5, 6, 7], [1, 2]) == 1.0
    assert bias.cliffs_delta([1, 2], [5, 6, 7]) == -1.0
    assert bias.cliffs_delta([3, 3], [3, 3, 3]) == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40), rng.integers(0, 5, 30)
    assert bias.cliffs_delta(a, b) == pytest.approx(-bias.cliffs_delta(b, a))


def test_cliffs_delta_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        bias.cliffs_delta([], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        bias.cliffs_delta([1.0, np.nan], [1, 2])


def test_bootstrap_interval_contains_delta_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = bias.bootstrap_delta(rng.poisson(3, 40), rng.poisson(2, 40), n_boot=300)
    large = bias.bootstrap_delta(rng.poisson(3, 1000), rng.poisson(2, 1000), n_boot=300)
    for d, lo, hi in (small, large):
        assert lo <= d <= hi
    assert (large[2] - large[1]) < (small[2] - small[1])
    assert large[1] > 0  # a real shift is detected


# --- the planted-bias world ------------------------------------------------------------------------

def _gray_digits(n_per_class=60, seed=0):
    """Synthetic gray digits: a bar whose width varies (so ink varies), ten classes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    gray = np.zeros((len(labels), 32, 32), np.uint8)
    widths = rng.integers(1, 8, len(labels))
    for i, w in enumerate(widths):
        gray[i, 4:28, 12:12 + w] = 255
    return gray, labels, widths


def test_prompt_ids_and_unknown_attribute():
    assert bias.prompt_id(3) == 3 and bias.prompt_id(3, "red") == 13 and bias.prompt_id(0, "thin") == 40
    np.testing.assert_array_equal(bias.prompt_id(np.arange(3), "green"), [20, 21, 22])
    with pytest.raises(ValueError, match="unknown attribute value 'blue'"):
        bias.prompt_id(1, "blue")


def test_thickness_classes_split_each_digit_in_thirds_by_ink():
    gray, labels, widths = _gray_digits()
    t = bias.thickness_classes(gray, labels)
    assert set(np.unique(t)) == {-1, 0, 1}
    assert (bias.thickness_classes(gray, labels, 0.25) != 0).sum() < (t != 0).sum()
    for d in range(10):
        rows = labels == d
        assert widths[rows & (t == 1)].min() > widths[rows & (t == -1)].max()


def test_planted_bias_data_has_the_planted_shares():
    gray, labels, _ = _gray_digits(n_per_class=100)
    out = bias.planted_bias_data(gray, labels, skew=0.9, colour_digit=3, thickness_digit=5, per_image=20, seed=1)
    t = out["table"]
    assert len(out["images"]) == len(t) == len(out["prompts"]) == 20 * len(labels)
    np.testing.assert_array_equal(out["prompts"], t["digit"] + 10 * t["slot"].map(bias.PROMPT_SLOTS.index))
    assert abs((t["slot"] == "neutral").mean() - 0.4) < 0.02
    neutral = t[t["slot"] == "neutral"]
    share = neutral.groupby("digit")[["red"]].mean()["red"]
    assert abs(share[3] - 0.9) < 0.05 and abs(share[7] - 0.5) < 0.08 and abs(share[5] - 0.5) < 0.08
    thick_share = (neutral[neutral["thick"] != 0].groupby("digit")["thick"].apply(lambda s: (s == 1).mean()))
    assert abs(thick_share[5] - 0.9) < 0.05 and abs(thick_share[7] - 0.5) < 0.08 and abs(thick_share[3] - 0.5) < 0.08
    assert (t.loc[t["slot"] == "red", "red"]).all() and not (t.loc[t["slot"] == "green", "red"]).any()
    assert (t.loc[t["slot"] == "thick", "thick"] == 1).all() and (t.loc[t["slot"] == "thin", "thick"] == -1).all()
    # the pixels say what the table says
    m = bias.measured_attributes(out["images"], t["digit"].to_numpy(), bias.ink_thresholds(gray, labels))
    np.testing.assert_array_equal(m["red"].to_numpy(), t["red"].to_numpy())
    sure = t["thick"] != 0
    assert (m["thick"][sure].to_numpy() == (t["thick"][sure] == 1).to_numpy()).mean() > 0.95


def test_planted_bias_data_bad_settings():
    gray, labels, _ = _gray_digits(10)
    with pytest.raises(ValueError, match="skew"):
        bias.planted_bias_data(gray, labels, skew=1.5)
    with pytest.raises(ValueError, match="different digits"):
        bias.planted_bias_data(gray, labels, colour_digit=4, thickness_digit=4)
    with pytest.raises(ValueError, match="planted values"):
        bias.planted_bias_data(gray, labels, planted={"colour": "blue"})
    with pytest.raises(ValueError, match="neutral_share"):
        bias.planted_bias_data(gray, labels, neutral_share=1.0)
    with pytest.raises(ValueError, match="thickness fraction"):
        bias.planted_bias_data(gray, labels, thick_fraction=0.6)


def test_ink_ignores_the_colour():
    from cortex_utils.digits import colourize

    gray, _, _ = _gray_digits(3)
    red = colourize(gray, np.tile([[230, 40, 40]], (len(gray), 1)))
    green = colourize(gray, np.tile([[40, 200, 60]], (len(gray), 1)))
    np.testing.assert_allclose(bias.ink(red), bias.ink(green), atol=1e-6)
    np.testing.assert_allclose(bias.ink(red), bias.ink(gray), atol=1e-6)


def test_token_counts_and_delta_sign():
    tokens = np.array([[[1, 1], [2, 3]], [[4, 4], [4, 1]], [[0, 0], [0, 0]]])
    np.testing.assert_array_equal(bias.token_counts(tokens, [1, 2]), [3, 1, 0])
    rng = np.random.default_rng(0)
    lean_a = np.where(rng.random((200, 1, 1)) < 0.85, 1, 2) * np.ones((200, 4, 4), int)
    r = bias.bias_delta(lean_a, [1], [2], n_boot=200)
    assert r["delta"] > 0.5 and r["low"] <= r["delta"] <= r["high"]
    with pytest.raises(ValueError, match="no neutral generations"):
        bias.bias_delta(np.zeros((0, 4, 4), int), [1], [2])


def test_balanced_rank_centres_a_half_and_half_mix():
    rng = np.random.default_rng(1)
    ref = np.concatenate([rng.poisson(6, 300), rng.poisson(1, 100)])  # unequal value sizes: weighted equally
    labels = np.repeat([0, 1], [300, 100])
    mix = np.concatenate([rng.poisson(6, 500), rng.poisson(1, 500)])
    assert abs(bias.balanced_rank(mix, ref, labels).mean() - 0.5) < 0.03
    assert bias.balanced_rank(rng.poisson(6, 500), ref, labels).mean() > 0.7


def test_calibrated_delta_ignores_unequal_token_sets():
    """Value A is marked by six copies of id 1, value B by one copy of id 2: on raw counts a half-and-half
    neutral set already leans to A (δ = 0.25); ranked against the balanced reference it does not."""
    def grids(labels):
        g = np.zeros((len(labels), 4, 4), int)
        g.reshape(len(labels), -1)[labels == 0, :6] = 1
        g.reshape(len(labels), -1)[labels == 1, :1] = 2
        return g

    ref_labels = np.repeat([0, 1], 50)
    half = grids(np.repeat([0, 1], 100))
    raw = bias.bias_delta(half, [1], [2], n_boot=20)
    assert raw["delta"] == pytest.approx(0.25)
    calibrated = bias.bias_delta(half, [1], [2], reference=(grids(ref_labels), ref_labels), n_boot=20)
    assert calibrated["delta"] == pytest.approx(0.0)
    leaning = grids(np.repeat([0, 1], [170, 30]))  # 85 % A: δ = 0.85² - 0.15²
    r = bias.bias_delta(leaning, [1], [2], reference=(grids(ref_labels), ref_labels), n_boot=20)
    assert r["delta"] == pytest.approx(0.85 ** 2 - 0.15 ** 2)
    np.testing.assert_array_equal(r["counts_a"][:2], [6, 6])  # the raw counts are kept for the plots


def test_attribute_tokens_keep_only_ids_specific_to_their_value():
    import pandas as pd

    table = pd.DataFrame({"top_n": 5, "label": [0, 0, 0, 1, 1, 1, -1], "rank": [1, 2, 3, 1, 2, 3, 1],
                          "token": [7, 1, 2, 7, 3, 4, 7]})
    # id 7 is everywhere; 1, 2 only in value 0's grids; 3, 4 only in value 1's
    tokens = np.array([[7, 1, 2], [7, 1, 2], [7, 3, 4], [7, 3, 4]]).reshape(4, 1, 3)
    labels = np.array([0, 0, 1, 1])
    ids = bias.attribute_tokens(table, 5, 2, tokens, labels, specificity=2.0)
    np.testing.assert_array_equal(ids[0], [1, 2])
    np.testing.assert_array_equal(ids[1], [3, 4])
    np.testing.assert_array_equal(bias.attribute_tokens(table, 5, 2, specificity=0)[0], [7, 1])
    with pytest.raises(ValueError, match="needs the training grids"):
        bias.attribute_tokens(table, 5, 2)
    with pytest.raises(ValueError, match="two attribute values"):
        bias.attribute_tokens(table[table["label"] != 1], 5, 2, specificity=0)


def _marked_grids(labels, rng, marks=(1, 2), n_marks=4):
    """8x8 grids of background ids 4-15 with ``n_marks`` positions holding the label's mark id."""
    grids = rng.integers(4, 6, (len(labels), 8, 8))
    for i, y in enumerate(labels):
        pos = rng.choice(64, n_marks, replace=False)
        grids[i].reshape(-1)[pos] = marks[y]
    return grids


def test_attribute_study_finds_a_planted_lean_and_not_a_balanced_one(tmp_path, one_thread):
    from cortex_utils import datasets as tokds

    rng = np.random.default_rng(0)
    meta = {"vq_fingerprint": "synthetic", "n_embed": 16, "embed_dim": 8, "grid": [8, 8]}
    splits = {}
    for split, n in (("train", 200), ("val", 40)):
        y = np.repeat([0, 1], n // 2)
        splits[split] = (_marked_grids(y, rng), y)
    ds = tokds.save_token_dataset(tmp_path / "ds", splits, ["a", "b"], meta, source="synthetic")
    codebook = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    leaning = _marked_grids((rng.random(300) > 0.85).astype(int), rng)  # 85 % "a"
    balanced = _marked_grids(np.repeat([0, 1], 150), rng)
    r = bias.attribute_study(ds, codebook, {"leaning": leaning, "balanced": balanced}, planted=0, width=16, epochs=15, lr=5e-3, batch_size=32,
                             nsamples=4, top_n=3, token_num=1, n_boot=200)
    assert r["test_accuracy"] > 0.9
    assert list(r["tokens"]["a"]) == [1] and list(r["tokens"]["b"]) == [2]
    d = r["deltas"].set_index("neutral set")
    assert d.loc["leaning", "delta"] > 0.5
    assert abs(d.loc["balanced", "delta"]) < 0.15
    assert d.loc["leaning", "low"] <= d.loc["leaning", "delta"] <= d.loc["leaning", "high"]
    assert set(r["counts"]["leaning"]) == {"a", "b"}


def test_attribute_study_bad_input(tmp_path):
    from cortex_utils import datasets as tokds

    rng = np.random.default_rng(0)
    meta = {"vq_fingerprint": "synthetic", "n_embed": 16, "embed_dim": 8, "grid": [8, 8]}
    y = np.zeros(10, int)
    three = tokds.save_token_dataset(tmp_path / "three", {"train": (_marked_grids(y, rng), np.arange(10) % 3)},
                                     ["a", "b", "c"], meta, source="synthetic")
    codebook = torch.randn(16, 8)
    with pytest.raises(ValueError, match="two attribute values"):
        bias.attribute_study(three, codebook, {"n": _marked_grids(y, rng)}, planted=0)
    two = tokds.save_token_dataset(tmp_path / "two", {"train": (_marked_grids(y, rng), y % 2 + (np.arange(10) % 2)),
                                                      "val": (_marked_grids(y, rng), y)}, ["a", "b"], meta, source="s")
    with pytest.raises(ValueError, match="empty neutral set"):
        bias.attribute_study(two, codebook, {"n": np.zeros((0, 8, 8), int)}, planted=0)
    with pytest.raises(ValueError, match="planted"):
        bias.attribute_study(two, codebook, {"n": _marked_grids(y, rng)}, planted=2)


# --- the real DALL·E-mini layout --------------------------------------------------------------------

def _write_csv(path, tokens, labels=None):
    import pandas as pd

    rows = {"filename": [f"img_{i}.png" for i in range(len(tokens))]}
    if labels is not None:
        rows["label"] = labels
    rows["indices"] = ["[" + ", ".join(map(str, t.ravel().tolist())) + "]" for t in tokens]
    pd.DataFrame(rows).to_csv(path, index=False)


def write_dalle_layout(root, grid=(16, 16), n_embed=16384, types=("colour", "thickness"), n_train=40, seed=0):
    """A synthetic file set in the original's layout: per bias type train/val/test CSVs
    (filename,label,indices) and neutral.csv (indices only); background ids 3-5, value 0 marks its grids
    with id 1, value 1 with id 2."""
    rng = np.random.default_rng(seed)

    def grids(labels):
        g = rng.integers(3, 6, (len(labels), *grid))
        for i, y in enumerate(labels):
            g[i].reshape(-1)[rng.choice(g[i].size, 6, replace=False)] = (1, 2)[y]
        return g

    for t in types:
        (root / t).mkdir(parents=True)
        for split, n in (("train", n_train), ("val", 10), ("test", 10)):
            y = np.arange(n) % 2
            _write_csv(root / t / f"{split}.csv", grids(y), y)
        _write_csv(root / t / "neutral.csv", grids((rng.random(30) > 0.8).astype(int)))
    (root / "colour" / "class_names.txt").write_text("light\ndark\n")
    return root


def test_real_layout_loads_and_bad_files_are_named(tmp_path):
    meta = {"vq_fingerprint": "f", "n_embed": 64, "embed_dim": 4, "grid": [4, 4]}
    root = write_dalle_layout(tmp_path / "real", grid=(4, 4), n_embed=64)
    studies, neutral = bias.load_real_study(root, ["colour", "thickness"], meta, tmp_path / "out")
    assert studies["colour"].class_names == ["light", "dark"] and studies["thickness"].class_names == ["0", "1"]
    assert neutral["colour"].shape == (30, 4, 4) and len(studies["colour"].labels["train"]) == 40
    with pytest.raises(ValueError, match="bias type 'gender' is not in"):
        bias.load_real_study(root, ["gender"], meta, tmp_path / "o2")
    # wrong grid length, ids beyond the codebook
    with pytest.raises(ValueError, match="token ids, expected 9"):
        bias.load_real_study(root, ["colour"], {**meta, "grid": [3, 3]}, tmp_path / "o3")
    with pytest.raises(ValueError, match="outside the codebook"):
        bias.load_real_study(root, ["colour"], {**meta, "n_embed": 4}, tmp_path / "o4")
    # only one attribute value present
    one = write_dalle_layout(tmp_path / "one", grid=(4, 4), n_embed=64, types=("colour",))
    _write_csv(one / "colour" / "train.csv", np.full((5, 4, 4), 3), np.zeros(5, int))
    with pytest.raises(ValueError, match="both attribute values"):
        bias.load_real_study(one, ["colour"], meta, tmp_path / "o5")
    assert not (tmp_path / "o5" / "colour" / "dataset").exists()
    # empty neutral set
    empty = write_dalle_layout(tmp_path / "empty", grid=(4, 4), n_embed=64, types=("colour",))
    (empty / "colour" / "neutral.csv").write_text("indices\n")
    with pytest.raises(ValueError, match="no rows"):
        bias.load_real_study(empty, ["colour"], meta, tmp_path / "o6")


def test_notebook_runs_on_the_dalle_layout_with_a_random_f16_16384_model(tmp_path):
    """Notebook 10's real-data path end to end: synthetic CSVs in the original's layout and the published
    VQGAN f16-16384 architecture with random weights (the real DALL·E-mini data and weights are not here)."""
    import json

    import papermill as pm
    import yaml

    from cortex_utils import REPO_ROOT
    from cortex_utils import vq as vqlib

    torch.manual_seed(0)
    model = vqlib.build_vq(vqlib.IMAGENET_F16_16384_CONFIG)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({"model": vqlib.IMAGENET_F16_16384_CONFIG}))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "last.ckpt")
    del model
    root = write_dalle_layout(tmp_path / "real")
    run = tmp_path / "run"
    pm.execute_notebook(str(REPO_ROOT / "notebooks" / "10_bias_detection.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters={"run_dir": str(run), "real_data_dir": str(root), "vq_config": str(tmp_path / "model.yaml"),
                                    "vq_checkpoint": str(tmp_path / "last.ckpt"), "iem_width": 8, "iem_epochs": 3,
                                    "nsamples": 2, "token_num": 2, "top_n": 3, "n_boot": 50},
                        kernel_name="python3", cwd=str(REPO_ROOT / "notebooks"), progress_bar=False,
                        )
    metrics = json.loads((run / "metrics.json").read_text())
    for t in ("colour", "thickness"):
        assert -1 <= metrics[f"bias_{t}_delta"] <= 1
        assert (run / "bias" / t / "dataset" / "manifest.json").exists()
