"""Notebook 18 (the real shape with random weights): the extrapolation of the paper's study against a slow
step-by-step reference and numbers worked by hand, the helpers it times with, and its presets."""

import math

import numpy as np
import pytest
import torch

from cortex_run import pipeline, realshape, taming_vq


def _slow_hours(study, t_train, t_val, rate, t_enc):
    """The study walked through as it runs: every epoch its batches of training images, then its validation
    images one by one; TIS image by image over train and test; every image encoded once."""
    iem = 0.0
    for _ in range(study.epochs):
        for start in range(0, study.train, study.batch_size):
            iem += min(study.batch_size, study.train - start) * t_train
        for _ in range(study.val):
            iem += t_val
    tis = sum(1 / rate for _ in range(study.train + study.test))
    enc = sum(t_enc for _ in range(study.train + study.val + study.test))
    return {"iem": iem / 3600, "tis": tis / 3600, "encode": enc / 3600, "total": (iem + tis + enc) / 3600}


@pytest.mark.parametrize(
    "study, times",
    [
        (realshape.Study(train=1000, val=100, test=50, epochs=3, batch_size=64), (0.2, 0.07, 0.5, 1.2)),
        (realshape.Study(train=777, val=0, test=13, epochs=2, batch_size=512), (1.5, 0.0, 3.0, 0.0)),
    ],
)
def test_paper_hours_match_the_slow_reference(study, times):
    got, want = realshape.paper_hours(study, *times), _slow_hours(study, *times)
    assert set(got) == set(want)
    for k in want:
        assert math.isclose(got[k], want[k], rel_tol=1e-9), k


def test_paper_hours_by_hand():
    """The default study (1,281,167 + 50,000 + 50,000 images, 80 epochs) at 0.2 s per training image, 0.07 s
    per validation image, 0.5 TIS images/s and 1.2 s per encoded image, worked on paper:
    IEM 80 x (256,233.4 + 3,500) s = 20,778,672 s = 5,771.8533 h; TIS 1,331,167 / 0.5 = 2,662,334 s =
    739.5372 h; encoding 1,381,167 x 1.2 = 1,657,400.4 s = 460.3890 h; total 6,971.7795 h."""
    hours = realshape.paper_hours(realshape.Study(), 0.2, 0.07, 0.5, 1.2)
    assert hours["iem"] == pytest.approx(5771.8533, abs=1e-4)
    assert hours["tis"] == pytest.approx(739.5372, abs=1e-4)
    assert hours["encode"] == pytest.approx(460.3890, abs=1e-4)
    assert hours["total"] == pytest.approx(6971.7795, abs=1e-4)
    assert realshape.Study().steps_per_epoch == 2503  # 1,281,167 / 512 = 2,502.3: one smaller batch


@pytest.mark.parametrize(
    "times", [(0.2, 0.07, 0.0, 1.2), (-0.1, 0.07, 0.5, 1.2), (0.2, float("nan"), 0.5, 1.2), (0.2, 0, 0.5, -1)]
)
def test_paper_hours_refuse_impossible_rates(times):
    with pytest.raises(ValueError, match="per-image times"):
        realshape.paper_hours(realshape.Study(), *times)


def test_a_study_needs_images_and_epochs():
    with pytest.raises(ValueError, match="train"):
        realshape.Study(train=0)
    with pytest.raises(ValueError, match="epochs"):
        realshape.Study(epochs=0)
    assert realshape.Study(val=0, test=0).val == 0


def test_token_batches_build_the_embeddings_and_stamp_each_step():
    codebook = torch.randn(50, 4)
    tokens = torch.randint(0, 50, (3, 2, 2))
    labels = np.array([7, 8, 9])
    rows = np.array([2, 0, 1, 2, 0])  # any order, repeats allowed
    stamps = []
    batches = list(realshape.token_batches(tokens, labels, codebook, rows, 2, "cpu", stamps=stamps))
    assert [len(b[1]) for b in batches] == [2, 2, 1] and len(stamps) == 4
    assert np.all(np.diff(stamps) >= 0)
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, codebook[tokens[rows]].permute(0, 3, 1, 2))
    assert torch.cat([b[1] for b in batches]).tolist() == labels[rows].tolist()
    assert torch.cat([b[2] for b in batches]).tolist() == [0, 1, 2, 3, 4]  # positions over rows (TIS rows)


def test_digit_images_take_the_classes_in_turn_at_256_px():
    pics, labels = realshape.digit_images(12, size=64, seed=0)
    assert pics.shape == (12, 3, 64, 64) and pics.dtype == np.uint8
    assert labels.tolist() == [*range(10), 0, 1]
    assert pics.max() > 100 and (pics[:, :, :4, :4] == 0).all()  # a coloured digit on black, padded edges


def test_stage_times_the_block():
    seconds = {}
    with realshape.stage(seconds, "nap", "cpu"):
        sum(range(10_000))
    assert 0 <= seconds["nap"] < 5


def test_the_judge_is_random_and_of_the_real_shape():
    judge = realshape.random_judge("resnet18", n_classes=1000, seed=0)
    with torch.no_grad():
        out = judge(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 1000) and not judge.training


def test_the_published_vqgan_config_lives_in_taming_vq():
    dd = taming_vq.IMAGENET_F16_16384_CONFIG["params"]["ddconfig"]
    side = dd["resolution"] // 2 ** (len(dd["ch_mult"]) - 1)
    assert (taming_vq.IMAGENET_F16_16384_CONFIG["params"]["n_embed"], side) == (16384, 16)


def test_the_presets_run_notebook_18_only_where_they_should():
    """real-shape runs notebook 18 alone with its defaults; smoke runs it tiny; the default and the class path
    (whose time must not grow) do not; it reads nothing from other notebooks."""
    preset = pipeline.load_preset("real-shape")
    assert preset["notebooks"] == ["18_real_shape"]
    assert pipeline.resolve_parameters(preset, []) == {"18_real_shape": {}}
    smoke = pipeline.load_preset("smoke")
    assert "18_real_shape" in smoke["notebooks"]
    tiny = pipeline.resolve_parameters(smoke, [])["18_real_shape"]
    assert tiny["tis_images"] <= 4 and tiny["iem"]["width"] <= 16
    for name in ("default", "class"):
        assert "18_real_shape" not in pipeline.load_preset(name)["notebooks"]
    assert pipeline.NEEDS["18_real_shape"] == [] and "18_data_and_iem_deeper" not in pipeline.NEEDS
