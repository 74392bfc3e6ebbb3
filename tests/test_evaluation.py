import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cortex_run.evaluators import load_torchvision
from cortex_utils import evaluation as ev
from cortex_utils import vq as vqlib
from cortex_utils.concepts import top_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def _evaluators(size=16, n_classes=3):
    torch.manual_seed(0)
    return {
        name: nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, n_classes)).eval() for name in ("a", "b")
    }


def _scores(model, images, labels):
    with torch.no_grad():
        logits = model(images)
    idx = torch.as_tensor(labels)[:, None]
    return logits.gather(1, idx)[:, 0].numpy(), logits.softmax(1).gather(1, idx)[:, 0].numpy()


# --- masking ---------------------------------------------------------------------------------------


def test_mask_pixels_blacks_out_exactly_the_masked_patches():
    rng = np.random.default_rng(0)
    images = torch.tensor(rng.uniform(-0.9, 0.9, (2, 3, 8, 12)), dtype=torch.float32)
    mask = np.zeros((2, 4, 3), dtype=bool)
    mask[0, 1, 2] = mask[0, 3, 0] = mask[1, 0, 0] = True
    out = ev.mask_pixels(images, mask)
    expected = images.clone()
    for n, y, x in zip(*np.nonzero(mask), strict=True):
        expected[n, :, 2 * y : 2 * y + 2, 4 * x : 4 * x + 4] = -1
    assert torch.equal(out, expected)
    assert (out == -1).sum() == 3 * 3 * 2 * 4  # three patches of 2x4 pixels in 3 channels, nothing else
    assert (images > -1).all()  # the input is untouched
    assert torch.equal(ev.mask_pixels(images, torch.from_numpy(mask)), expected)
    with pytest.raises(ValueError, match="not a multiple of the grid"):
        ev.mask_pixels(images, np.zeros((2, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="must be a bool array"):
        ev.mask_pixels(images, mask.astype(int))
    with pytest.raises(ValueError, match=r"must have shape \(2, h, w\)"):
        ev.mask_pixels(images, mask[:1])


def test_positions_holding_shared_and_per_image_sets():
    tokens = np.array([[[1, 2], [3, 1]], [[2, 2], [5, 1]], [[0, 4], [4, 3]]], dtype=np.uint8)
    shared = ev.positions_holding(tokens, [1, 4])
    assert shared.tolist() == [
        [[True, False], [False, True]],
        [[False, False], [False, True]],
        [[False, True], [True, False]],
    ]
    assert ev.positions_holding(tokens, 2).sum() == 3
    ragged = ev.positions_holding(tokens, [np.array([1]), np.array([2, 5]), np.array([], dtype=int)])
    loop = np.stack([np.isin(t, s) for t, s in zip(tokens, [[1], [2, 5], []], strict=True)])
    assert np.array_equal(ragged, loop)
    per_row = ev.positions_holding(
        torch.as_tensor(tokens.astype(np.int64)), np.array([[3, 3], [1, 9], [0, 4]])
    )
    assert per_row.tolist() == [
        [[False, False], [True, False]],
        [[False, False], [False, True]],
        [[True, True], [True, False]],
    ]
    with pytest.raises(ValueError, match="3 sets for 2 token grids|2 sets for 3 token grids"):
        ev.positions_holding(tokens, [np.array([1]), np.array([2])])
    with pytest.raises(ValueError, match=">= 0"):
        ev.positions_holding(tokens, [-1])


def test_positions_mask_and_ids_at():
    tokens = np.arange(12).reshape(2, 2, 3)
    pos = np.array([[0, 5], [4, 4]])
    assert ev.ids_at(tokens, pos).tolist() == [[0, 5], [10, 10]]
    m = ev.positions_mask(pos, (2, 3))
    assert m.sum() == 3 and m[0, 0, 0] and m[0, 1, 2] and m[1, 1, 1]
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        ev.positions_mask(np.array([[6]]), (2, 3))


def test_mask_tokens_changes_exactly_the_masked_positions():
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 30, (3, 4, 4)).astype(np.uint8)
    mask = rng.random((3, 4, 4)) < 0.3
    out = ev.mask_tokens(tokens, mask, 0)
    assert out.dtype == np.uint8 and out is not tokens
    assert (out[mask] == 0).all() and np.array_equal(out[~mask], tokens[~mask])
    assert (tokens > 0).all()  # the input is untouched
    tt = torch.as_tensor(tokens.astype(np.int64))
    out_t = ev.mask_tokens(tt, torch.from_numpy(mask), 7)
    assert out_t.dtype == torch.int64 and torch.equal(
        out_t[~torch.from_numpy(mask)], tt[~torch.from_numpy(mask)]
    )
    assert (out_t[torch.from_numpy(mask)] == 7).all()
    with pytest.raises(ValueError, match="does not fit"):
        ev.mask_tokens(tokens, mask, 300)
    with pytest.raises(ValueError, match=r"\(3, 4, 4\)"):
        ev.mask_tokens(tokens, mask[:, :2], 0)


def test_neutral_token_choices():
    tokens = np.array([[[3, 3], [3, 1]], [[1, 2], [3, 0]]])
    cb = torch.tensor([[0.0, 0.0], [4.0, 4.0], [1.0, 1.2], [-1.0, 0.0], [2.0, 2.0]])
    assert ev.neutral_token(cb, tokens, "background") == 3
    mean = cb.mean(0)
    assert ev.neutral_token(cb, how="mean") == int(((cb - mean) ** 2).sum(1).argmin()) == 2
    with pytest.raises(ValueError, match="needs the token grids"):
        ev.neutral_token(cb, how="background")
    with pytest.raises(ValueError, match="unknown neutral"):
        ev.neutral_token(cb, tokens, how="median")


def test_neutral_parameter_is_checked_and_resolved(tiny_vq):
    tokens = np.array([[[3, 3], [3, 1]], [[1, 2], [3, 0]]])
    assert ev.resolve_neutral(tiny_vq, tokens, "17") == ev.resolve_neutral(tiny_vq, tokens, 17) == 17
    assert ev.resolve_neutral(tiny_vq, tokens, "background") == 3  # the most frequent id
    with pytest.raises(ValueError, match=r"neutral must be an id \(e.g. '17'\) or one of"):
        ev.check_neutral("median")
    with pytest.raises(ValueError, match=r"neutral id 32 is outside the codebook \[0, 32\)"):
        ev.resolve_neutral(tiny_vq, tokens, "32")


def test_random_positions_are_seeded_unique_and_nested():
    a = ev.random_positions(50, (4, 4), 10, seed=3)
    assert a.shape == (50, 10)
    assert np.array_equal(a, ev.random_positions(50, (4, 4), 10, seed=3))
    assert not np.array_equal(a, ev.random_positions(50, (4, 4), 10, seed=4))
    assert all(len(set(row)) == 10 for row in a) and a.min() >= 0 and a.max() < 16
    assert len({tuple(row) for row in a}) > 1  # each image gets its own draw
    assert np.array_equal(ev.random_positions(50, (4, 4), 4, seed=3), a[:, :4])
    assert ev.random_positions(5, (4, 4), 0).shape == (5, 0)
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        ev.random_positions(5, (4, 4), 17)


# --- experiments -----------------------------------------------------------------------------------


def _data(n=6, grid=(8, 8), k=32, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, k, (n, *grid))
    tokens[:, :, :2] = 5  # a frequent "background" id
    return tokens, np.arange(n) % 3, rng.random((n, *grid)).astype(np.float32)


QUIET = ev.Masking(spaces=ev.SPACES, progress=False)  # both spaces, no bar


def test_image_level_experiment_table(tiny_vq):
    tokens, labels, tis = _data()
    evals = _evaluators()
    table = ev.image_level_experiment(
        tiny_vq,
        tokens,
        labels,
        tis,
        evals,
        ns=(0, 2, 5),
        options=ev.Masking(ev.SPACES, seed=1, progress=False),
    )
    assert list(table.columns) == [
        "space",
        "evaluator",
        "n",
        "selection",
        "n_images",
        "mean_masked",
        "masked_fraction",
        "mean_logit",
        "mean_prob",
        "logit_drop",
        "prob_drop",
    ]
    assert len(table) == 2 * 2 * 3 * 3 and (table.n_images == 6).all()
    assert set(table.selection) == {"original", "tis", "random"}

    originals = vqlib.decode(tiny_vq, torch.as_tensor(tokens))
    for name, model in evals.items():
        logit, prob = _scores(model, originals, labels)
        rows = table[(table.evaluator == name) & ((table.n == 0) | (table.selection == "original"))]
        assert np.allclose(rows.mean_logit, logit.mean(), atol=1e-6)
        assert np.allclose(rows.mean_prob, prob.mean(), atol=1e-6)
        assert (rows.mean_masked == 0).all() and np.allclose(rows.prob_drop, 0, atol=1e-6)

    # TIS, pixel space, n = 5, by hand: all positions holding the ids at the top-5 TIS positions
    mask = np.stack([np.isin(t, ids) for t, ids in zip(tokens, top_tokens(tokens, tis, 5), strict=True)])
    logit, prob = _scores(evals["a"], ev.mask_pixels(originals, mask), labels)
    row = table[
        (table.space == "pixel") & (table.evaluator == "a") & (table.n == 5) & (table.selection == "tis")
    ].iloc[0]
    assert row.mean_logit == pytest.approx(logit.mean(), abs=1e-5)
    assert row.mean_masked == pytest.approx(mask.reshape(6, -1).sum(1).mean())
    assert row.mean_masked > 5  # the frequent id 5 brings extra positions along
    # random, token space, n = 2, by hand (neutral = the most frequent id, 5)
    pos = ev.random_positions(6, (8, 8), 2, seed=1)
    mask = np.stack(
        [np.isin(t.ravel(), t.ravel()[p]).reshape(8, 8) for t, p in zip(tokens, pos, strict=True)]
    )
    masked = np.where(mask, 5, tokens)
    logit, prob = _scores(evals["b"], vqlib.decode(tiny_vq, torch.as_tensor(masked)), labels)
    row = table[
        (table.space == "token") & (table.evaluator == "b") & (table.n == 2) & (table.selection == "random")
    ].iloc[0]
    assert row.mean_prob == pytest.approx(prob.mean(), abs=1e-6)

    per = ev.image_level_experiment(
        tiny_vq, tokens, labels, tis, evals, (0, 3), ev.Masking("pixel", progress=False), per_image=True
    )
    assert len(per) == 1 * 2 * 2 * 3 * 6 and {"image", "label", "logit", "prob", "n_masked"} <= set(
        per.columns
    )
    with pytest.raises(ValueError, match=r"every n must lie in \[0, 64\]"):
        ev.image_level_experiment(tiny_vq, tokens, labels, tis, evals, (0, 65), QUIET)
    with pytest.raises(ValueError, match="aligned"):
        ev.image_level_experiment(tiny_vq, tokens, labels, tis[:, :4], evals, (1,), QUIET)


def test_tis_beats_random_on_a_hand_made_table():
    rows = []
    # (evaluator, n): original, tis, random probabilities
    cells = {
        ("a", 0): (0.9, 0.9, 0.9),
        ("a", 5): (0.9, 0.5, 0.7),
        ("a", 10): (0.9, 0.6, 0.4),
        ("b", 5): (0.8, 0.1, 0.2),
        ("b", 10): (0.8, 0.8, 0.8),
    }
    for (name, n), probs in cells.items():
        for sel, p in zip(("original", "tis", "random"), probs, strict=True):
            rows.append({"space": "pixel", "evaluator": name, "n": n, "selection": sel, "mean_prob": p})
            rows.append({"space": "token", "evaluator": name, "n": n, "selection": sel, "mean_prob": 1 - p})
    table = pd.DataFrame(rows)
    assert ev.tis_beats_random(table, "pixel") == pytest.approx(
        2 / 4
    )  # n = 0 is not counted; a tie is no win
    assert ev.tis_beats_random(table, "token") == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="no rows"):
        ev.tis_beats_random(table, "latent")


def test_concept_level_overall_is_the_mean_over_classes(tiny_vq):
    tokens, labels, _ = _data(n=9)
    evals = _evaluators()
    sets = {
        "cortex": {0: np.array([5, 7, 9]), 1: np.array([3]), 2: np.array([11, 12])},
        "frequency": {0: np.array([5]), 1: np.array([1, 2])},
    }
    table = ev.concept_level_experiment(
        tiny_vq,
        tokens,
        labels,
        sets,
        evals,
        token_num=2,
        options=QUIET,
    )
    assert len(table) == 2 * 2 * 2 * 4
    metrics = [
        "original_logit",
        "masked_logit",
        "logit_drop",
        "original_prob",
        "masked_prob",
        "prob_drop",
        "mean_masked",
    ]
    for _, g in table.groupby(["space", "method", "evaluator"]):
        overall = g[g.label == -1]
        assert len(overall) == 1 and g.label.iloc[-1] == -1
        per_class = g[g.label >= 0]
        assert np.allclose(overall[metrics].to_numpy()[0], per_class[metrics].mean().to_numpy())
        assert overall.n_images.iloc[0] == 9
    assert np.allclose(table.logit_drop, table.original_logit - table.masked_logit)
    # class 0, cortex (first 2 ids: 5, 7), pixel space, evaluator a, by hand
    sel = labels == 0
    originals = vqlib.decode(tiny_vq, torch.as_tensor(tokens[sel]))
    logit, _ = _scores(evals["a"], ev.mask_pixels(originals, np.isin(tokens[sel], [5, 7])), labels[sel])
    row = table[
        (table.space == "pixel") & (table.method == "cortex") & (table.evaluator == "a") & (table.label == 0)
    ].iloc[0]
    assert row.masked_logit == pytest.approx(logit.mean(), abs=1e-5) and row.n_tokens == 2
    missing = table[(table.method == "frequency") & (table.label == 2)]  # no ids given: nothing masked
    assert (missing.n_tokens == 0).all() and np.allclose(missing.logit_drop, 0, atol=1e-6)
    with pytest.raises(ValueError, match="method name"):
        ev.concept_level_experiment(tiny_vq, tokens, labels, {0: np.array([1])}, evals, options=QUIET)
    # pre-decoded images (a sweep decodes once) give the same table; a wrong count is refused
    decoded = vqlib.decode(tiny_vq, torch.as_tensor(tokens))
    again = ev.concept_level_experiment(
        tiny_vq,
        tokens,
        labels,
        sets,
        evals,
        token_num=2,
        options=QUIET,
        images=decoded,
    )
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(ValueError, match="decoded images"):
        ev.concept_level_experiment(tiny_vq, tokens, labels, sets, evals, options=QUIET, images=decoded[:3])


# --- torchvision evaluators ------------------------------------------------------------------------


def test_load_torchvision_resizes_normalizes_and_checks(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), path)
    model = load_torchvision("resnet18", path, image_size=64)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(x)
        up = torch.nn.functional.interpolate((x + 1) / 2, size=(64, 64), mode="bilinear", antialias=True)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        want = ref((up - mean[:, None, None]) / std[:, None, None])
    assert out.shape == (2, 1000) and torch.allclose(out, want, atol=1e-4)

    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_torchvision("resnet18", tmp_path / "missing.pt")
    state = ref.state_dict()
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"missing keys, first: fc\.bias"):
        load_torchvision("resnet18", tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unknown torchvision architecture"):
        load_torchvision("resnet_nope", path)


def test_a_torchvision_classifier_of_your_own_classes_judges_them(tmp_path):
    """Issue 30: a torchvision model fine-tuned on K classes (its head says K) loads with K outputs, and
    judges a run's data only when the class counts agree (an ImageNet head on 3 classes is refused)."""
    import torchvision

    from cortex_run.artifacts import register
    from cortex_run.checkpoints import save_weights
    from cortex_run.evaluators import build_evaluator, load_run_evaluators

    torch.manual_seed(0)
    mine = tmp_path / "r18_mine.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=3).state_dict(), mine)
    assert load_torchvision("resnet18", mine, image_size=32)(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    run = tmp_path / "run"  # a run whose notebook 02 trained its evaluators on 3 classes
    for arch in ("cnn", "resnet"):
        model = build_evaluator(arch, 3)
        model(torch.zeros(2, 3, 32, 32))
        card = {"kind": "evaluator", "arch": arch, "image_size": 32, "n_classes": 3}
        register(
            run,
            f"evaluator_{arch}",
            checkpoint=str(save_weights(model.state_dict(), run / f"evaluator_{arch}.safetensors", card)),
        )
    judges = load_run_evaluators(run, 32, 3, {"resnet18": str(mine)})
    assert sorted(judges) == ["cnn", "resnet", "resnet18"]
    imagenet = tmp_path / "r18_imagenet.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), imagenet)
    with pytest.raises(ValueError, match="a resnet18 of 1000 classes cannot judge data of 3 classes"):
        load_run_evaluators(run, 32, 3, {"resnet18": str(imagenet)})


# --- fair concept-level comparison ---------------------------------------------------------------


def test_concept_level_positions_masked_and_drop_per_position(tiny_vq):
    # 3 images of 2 classes, 8x8 grids; class 0 holds id 5 at 3 and 1 positions, class 1 id 7 at 4
    tokens = np.zeros((3, 8, 8), dtype=np.int64)
    tokens[0, 0, :3] = 5
    tokens[1, 4, 4] = 5
    tokens[2, 2:4, 2:4] = 7
    labels = np.array([0, 0, 1])
    sets = {
        "narrow": {0: np.array([5]), 1: np.array([7])},
        "background": {0: np.array([0]), 1: np.array([0])},
        "none": {},
    }
    table = ev.concept_level_experiment(
        tiny_vq,
        tokens,
        labels,
        sets,
        _evaluators(n_classes=2),
        options=ev.Masking(progress=False),
    )
    got = table.set_index(["method", "evaluator", "label"])["mean_masked"]
    assert got[("narrow", "a", 0)] == 2 and got[("narrow", "a", 1)] == 4 and got[("narrow", "a", -1)] == 3
    assert got[("background", "b", 0)] == 62 and got[("background", "b", 1)] == 60
    eff = ev.drop_per_position(table)
    assert len(eff) == 3 * 2 and set(eff.columns) >= {"positions_masked", "drop_per_position", "logit_drop"}
    overall = table[table.label < 0].reset_index(drop=True)
    assert np.allclose(eff["drop_per_position"][:4], (overall.logit_drop / overall.mean_masked)[:4])
    assert eff[eff.method == "none"]["drop_per_position"].isna().all()  # nothing masked: no per-position drop
    with pytest.raises(ValueError, match="not a concept_level_experiment table"):
        ev.drop_per_position(table.drop(columns="mean_masked"))


def test_drop_at_positions_interpolates_each_sweep_curve():
    sweep = pd.DataFrame(
        {
            "space": "pixel",
            "evaluator": "a",
            "label": -1,
            "method": ["x", "x", "x", "y", "y"],
            "token_num": [1, 3, 8, 1, 3],
            "mean_masked": [1.0, 2.0, 4.0, 0.5, 0.5],
            "logit_drop": [0.2, 0.6, 1.0, 0.3, 0.3],
        }
    )
    at = ev.drop_at_positions(sweep, 3.0).set_index("method")
    assert at.loc["x", "logit_drop"] == pytest.approx(0.8) and at.loc["x", "max_masked"] == 4
    assert np.isnan(at.loc["y", "logit_drop"])  # y never masks 3 positions: no extrapolation
    low = ev.drop_at_positions(sweep, 0.25).set_index("method")[
        "logit_drop"
    ]  # between (0, 0) and the first point
    assert low["x"] == pytest.approx(0.05) and low["y"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="positions must be >= 0"):
        ev.drop_at_positions(sweep, -1)


def test_masked_patch_mean_is_what_the_mask_hides():
    images = -torch.ones(2, 3, 8, 8)
    images[0, :, :4, :4] = 1.0  # a white patch at grid position (0, 0) of image 0 (grid 2x2)
    mask = np.zeros((2, 2, 2), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True
    assert ev.masked_patch_mean(images, mask) == pytest.approx(0.0)  # one white, one black patch
    mask[0, 0, 0] = False
    assert ev.masked_patch_mean(images, mask) == pytest.approx(-1.0)  # black on black
    assert np.isnan(ev.masked_patch_mean(images, np.zeros((2, 2, 2), dtype=bool)))
