import copy
import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from cortex_run import taming_vq, tokenizers  # noqa: E402

# The published ImageNet VQGAN f16-16384 (taming's model.yaml), the architecture notebook 18 builds.
IMAGENET_F16_16384_CONFIG = taming_vq.IMAGENET_F16_16384_CONFIG


def tiny_vq_config(n_embed=32, embed_dim=8, resolution=16):
    cfg = copy.deepcopy(taming_vq.DEFAULT_VQ_CONFIG)
    cfg["params"].update(n_embed=n_embed, embed_dim=embed_dim)
    cfg["params"]["ddconfig"].update(resolution=resolution, ch=32, ch_mult=[1, 2], z_channels=8)
    return cfg


@pytest.fixture
def tiny_config():
    return tiny_vq_config()


@pytest.fixture
def tiny_vq(tiny_config):
    return tokenizers.build_vq(tiny_config, seed=0)


@pytest.fixture
def one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a busy 2-core machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
