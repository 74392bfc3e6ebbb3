"""The real shape with random weights (notebook 18): the published VQGAN f16-16384 and an IEM at the
original's size, timed stage by stage on a device, and the paper's ImageNet study extrapolated from those
times.

Random weights make the times and the memory meaningful and the scores not: nothing is downloaded or trained
beyond a few steps. The data are images the tutorial has (the shipped real digits, upsampled) or a folder of
the user's; token ids stay on the host and move to the device in batches, where their embeddings are built.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import device as device_mod
from . import digits
from .evaluators import ImageNetInput


def digit_images(n: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` of the shipped real digits (train split, in their palette colours), the classes taken in turn,
    bilinearly upsampled from 32 to ``size`` px: uint8 ``(n, 3, size, size)`` and their labels."""
    if n < 1:
        raise ValueError(f"need at least one image, got {n}")
    train = digits.load_digits(seed)["train"]
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(train["labels"] == c)) for c in range(len(digits.CLASS_NAMES))]
    pick = np.array([by_class[i % len(by_class)][i // len(by_class)] for i in range(n)])
    x = torch.from_numpy(train["images"][pick]).float()
    up = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8).numpy(), train["labels"][pick]


@contextlib.contextmanager
def stage(seconds: dict, name: str, device):
    """Time the block into ``seconds[name]``: the device's queued work waited for before each clock reading
    (``device.synchronize``), so a GPU's asynchronous kernels are counted where they run."""
    device_mod.synchronize(device)
    t0 = time.perf_counter()
    yield
    device_mod.synchronize(device)
    seconds[name] = time.perf_counter() - t0


def token_batches(tokens, labels, codebook, rows, batch_size: int, device, stamps: list | None = None):
    """Batches ``(embeddings (B, D, h, w), labels (B,), positions (B,))`` on ``device`` for the rows ``rows``
    of the host grids ``tokens`` (any order, repeats allowed): the ids move, their embeddings are built there
    (``codebook[ids]``). ``positions`` count 0, 1, ... over ``rows`` (``tis.dataset_tis``'s rows). With
    ``stamps``, the time (after the device's queued work) at each request of a batch and at the end: the
    differences are the times of the steps between (``iem.train_iem`` asks for a batch after each step)."""
    tokens, labels = torch.as_tensor(np.asarray(tokens)).long(), torch.as_tensor(np.asarray(labels)).long()
    rows, cb = torch.as_tensor(np.asarray(rows)).long(), codebook.detach().to(device)
    for start in range(0, len(rows), batch_size):
        if stamps is not None:
            device_mod.synchronize(device)
            stamps.append(time.perf_counter())
        take = rows[start : start + batch_size]
        x = cb[tokens[take].to(device)].permute(0, 3, 1, 2).contiguous()
        yield x, labels[take].to(device), torch.arange(start, start + len(take))
    if stamps is not None:
        device_mod.synchronize(device)
        stamps.append(time.perf_counter())


def random_judge(arch: str = "resnet50", n_classes: int = 1000, seed: int = 0) -> nn.Module:
    """An independent classifier of the real shape: a torchvision ``arch`` with random weights
    (``weights=None``, nothing downloaded), ``n_classes`` outputs, taking images in [-1, 1] at their own
    size; eval mode."""
    import torchvision  # deferred: seconds to import, and only this judge needs it

    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=n_classes)
    return nn.Sequential(ImageNetInput(None), model).eval()


@dataclass(frozen=True)
class Study:
    """The paper's ImageNet study (1,000 classes: the IEM's head), in images and epochs. The reference gives
    the IEM recipe (80 epochs, batch 512); it does not give how many images were generated, so the split sizes
    are assumptions: ImageNet-1k's 1,281,167 training images (docs/scaling.md's 1.28 M) and 50 per class for
    validation and for test (50,000 each, ImageNet's validation size)."""

    train: int = 1_281_167
    val: int = 50_000
    test: int = 50_000
    epochs: int = 80
    batch_size: int = 512

    def __post_init__(self):
        small = {k: v for k, v in vars(self).items() if v < (0 if k in ("val", "test") else 1)}
        if small:
            raise ValueError(f"the study's counts must be >= 1 (val, test >= 0), got {small}")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train / self.batch_size)


def paper_hours(
    study: Study,
    train_seconds_per_image: float,
    val_seconds_per_image: float,
    tis_images_per_s: float,
    encode_seconds_per_image: float,
) -> dict:
    """The study's hours on the measured device, each stage's cost linear in its images:
    IEM training ``epochs * (train * t_train + val * t_val)`` (a training epoch, then the validation pass
    that picks the best epoch), TIS ``(train + test) / r_TIS`` (the reference scores the train and test
    splits), encoding ``(train + val + test) * t_enc`` (the images as this page makes its tokens; the
    original generated them with a transformer, which is not counted). ``total``: their sum."""
    rates = [train_seconds_per_image, val_seconds_per_image, encode_seconds_per_image]
    if min(rates) < 0 or not tis_images_per_s > 0 or not all(map(math.isfinite, [*rates, tis_images_per_s])):
        raise ValueError(
            f"per-image times must be finite and >= 0 and the TIS rate > 0, got {rates}, {tis_images_per_s}"
        )
    s = study
    hours = {
        "iem": s.epochs * (s.train * train_seconds_per_image + s.val * val_seconds_per_image) / 3600,
        "tis": (s.train + s.test) / tis_images_per_s / 3600,
        "encode": (s.train + s.val + s.test) * encode_seconds_per_image / 3600,
    }
    return hours | {"total": sum(hours.values())}
