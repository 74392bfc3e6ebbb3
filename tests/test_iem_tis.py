import numpy as np
import pytest
import torch
from tis_reference import smoothgrad_per_sample

from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib

GRID = (8, 8)


@pytest.fixture(params=[1, 2, 3, 4], ids=lambda a: iemlib.ARCHITECTURES[a])
def model(request):
    torch.manual_seed(0)
    m = iemlib.build_iem(request.param, in_channels=6, grid=GRID, n_classes=5, width=16)
    m(torch.randn(4, 6, *GRID))  # touch BatchNorm statistics
    return m.eval()


def test_every_architecture_maps_grids_to_logits(model):
    assert model(torch.randn(3, 6, *GRID)).shape == (3, 5)


def test_wrong_input_shape_and_nan_are_named(model):
    with pytest.raises(ValueError, match=r"expects embeddings \(N, 6, 8, 8\)"):
        iemlib.check_input(model, torch.randn(2, 7, *GRID))
    x = torch.randn(2, 6, *GRID)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf in the embeddings \\(batch 3\\)"):
        tislib.token_importance(model, x, torch.tensor([0, 1]), nsamples=2, where="batch 3")


@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_batched_tis_equals_per_sample_loop(model, reduction):
    torch.manual_seed(1)
    x = torch.randn(5, 6, *GRID)
    target = torch.tensor([0, 1, 2, 3, 4])
    noise = tislib.smoothgrad_noise(x, nsamples=4, spread=0.2, generator=torch.Generator().manual_seed(0))
    fast = tislib.token_importance(model, x, target, noise=noise, reduction=reduction)
    ref = tislib.reduce_channels(smoothgrad_per_sample(model, x, target, noise), reduction)
    assert fast.shape == (5, *GRID)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


def test_noise_scale_follows_batch_range():
    x = torch.zeros(2, 3, 4, 4)
    x[0, 0, 0, 0] = 5.0
    noise = tislib.smoothgrad_noise(x, nsamples=200, spread=0.2, generator=torch.Generator().manual_seed(0))
    assert abs(noise.std().item() - 1.0) < 0.02  # 0.2 * (5 - 0)


def test_training_mode_is_refused(model):
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        tislib.token_importance(model, torch.randn(2, 6, *GRID), torch.tensor([0, 1]), nsamples=1)


def test_unknown_reduction():
    with pytest.raises(ValueError, match="choose one of"):
        tislib.reduce_channels(torch.zeros(1, 2, 3, 3), "ave")


def test_compute_tis_resumes_and_matches(tmp_path):
    from cortex_utils import datasets as tokds

    torch.manual_seed(0)
    model = iemlib.build_iem(1, 6, GRID, 3, width=8).eval()
    rng = np.random.default_rng(0)
    meta = {"vq_fingerprint": "x", "n_embed": 16, "embed_dim": 6, "grid": list(GRID)}
    ds = tokds.save_token_dataset(tmp_path / "ds", {"train": (rng.integers(0, 16, (10, 8, 8)), np.arange(10) % 3)},
                                  ["a", "b", "c"], meta, source="t")
    cb = torch.randn(16, 6)
    full = tislib.compute_tis(model, tokds.embedding_loader(ds, "train", cb, batch_size=4), 10, nsamples=3)
    # interrupt after the first chunk, then resume into the same file
    loader = tokds.embedding_loader(ds, "train", cb, batch_size=4)
    first = [next(iter(loader))]
    with pytest.raises(RuntimeError, match="missing for 6 images"):
        tislib.compute_tis(model, first, 10, nsamples=3, out=tmp_path / "tis.npy")
    assert (tmp_path / "tis.done.npy").exists()
    resumed = tislib.compute_tis(model, loader, 10, nsamples=3, out=tmp_path / "tis.npy")
    np.testing.assert_allclose(resumed, full, atol=1e-6)
    assert not (tmp_path / "tis.done.npy").exists()


def test_iem_checkpoint_round_trip_and_architecture_check(tmp_path):
    m = iemlib.build_iem(3, 6, GRID, 5, width=16).eval()
    p = iemlib.save_iem(m, tmp_path / "iem.safetensors", card={"epochs": 1})
    again = iemlib.load_iem(p, expect={"arch": 3, "in_channels": 6, "grid": GRID})
    x = torch.randn(2, 6, *GRID)
    torch.testing.assert_close(again(x), m(x))
    with pytest.raises(ValueError, match="arch = 'resnet_se', expected 'vgg'"):
        iemlib.load_iem(p, expect={"arch": 1})
    with pytest.raises(ValueError, match="in_channels = 6, expected 32"):
        iemlib.load_iem(p, expect={"in_channels": 32})


def test_unknown_architecture_and_small_grid():
    with pytest.raises(ValueError, match="unknown IEM architecture 7"):
        iemlib.build_iem(7, 6, GRID, 5)
    with pytest.raises(ValueError, match="at least 4x4"):
        iemlib.build_iem(1, 6, (2, 2), 5)
