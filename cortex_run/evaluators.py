"""Independent judges: pixel classifiers trained on *real* training digits only (never on generated
images or token embeddings). They score generated images and, later, masked and optimized ones.

Two architectures that see images differently: ``cnn`` (plain conv stack, max-pooling) and
``resnet`` (residual blocks, global average pooling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from cortex_utils.progress import tqdm

from . import digits
from .artifacts import registered
from .checkpoints import check_state_dict, load_state_dict, read_card

EVALUATORS = ("cnn", "resnet")


def build_evaluator(arch: str, n_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
    if arch == "cnn":
        w = width
        return nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.LazyLinear(128),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(128, n_classes),
        )
    if arch == "resnet":
        w = width

        def block(cin, cout, stride):
            return _Residual(cin, cout, stride)

        return nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            block(w, w, 2),
            block(w, 2 * w, 2),
            block(2 * w, 2 * w, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * w, n_classes),
        )
    raise ValueError(f"unknown evaluator architecture {arch!r}; choose one of {EVALUATORS}")


class _Residual(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.skip(x))


def _shift(x: torch.Tensor, rng: np.random.Generator, max_shift: int = 2) -> torch.Tensor:
    dx, dy = rng.integers(-max_shift, max_shift + 1, 2)
    return torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))


def train_evaluator(
    arch: str,
    train_gray: np.ndarray,
    train_labels: np.ndarray,
    val_images: torch.Tensor,
    val_labels: np.ndarray,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    n_classes: int = 10,
) -> tuple[nn.Module, pd.DataFrame]:
    """Train on real digits in random palette colours, with small random shifts."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_evaluator(arch, n_classes)
    model(torch.zeros(2, 3, *train_gray.shape[1:]))  # materialise lazy layers
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2))
    y_all = torch.as_tensor(train_labels).long()
    log = []
    model.train()
    for step in tqdm(range(steps), desc=f"train evaluator ({arch})"):
        i = rng.integers(0, len(train_gray), batch_size)
        x = _shift(digits.augment_batch(train_gray[i], rng), rng)
        loss = F.cross_entropy(model(x), y_all[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.append(
                {"step": step, "loss": loss.item(), "val_accuracy": accuracy(model, val_images, val_labels)}
            )
            model.train()
    model.eval()
    return model, pd.DataFrame(log)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits for images in [-1, 1] ``(N, 3, H, W)``."""
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def accuracy(model: nn.Module, images: torch.Tensor, labels) -> float:
    pred = predict_logits(model, images).argmax(1).numpy()
    return float((pred == np.asarray(labels)).mean())


def load_evaluator(path, arch: str, n_classes: int = 10, image_size: int = 32) -> nn.Module:
    """Load our safetensors evaluator; refuses one trained for another image size or class count."""
    card = read_card(path)
    if card.get("arch") != arch:
        raise ValueError(f"{path} holds a '{card.get('arch')}' evaluator, not '{arch}'")
    if card.get("image_size") != image_size or card.get("n_classes") != n_classes:
        raise ValueError(
            f"{path} was trained on {card.get('image_size')}px images with {card.get('n_classes')} "
            f"classes; this data has {image_size}px and {n_classes} classes"
        )
    model = build_evaluator(arch, n_classes)
    model(torch.zeros(2, 3, image_size, image_size))
    model.load_state_dict(
        check_state_dict(model, load_state_dict(path), ignore_prefixes=(), what=f"evaluator {path}")
    )
    return model.eval()


# --- ImageNet classifiers (torchvision), as the original's evaluators ----------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _ImageNetInput(nn.Module):
    """Images in [-1, 1] at any size -> ``image_size`` (bilinear, antialiased) with ImageNet normalization."""

    def __init__(self, image_size: int):
        super().__init__()
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (N, 3, H, W) (or 1 channel) in [-1, 1], got {tuple(x.shape)}")
        x = (x.expand(-1, 3, -1, -1) + 1) / 2
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return (x - self.mean) / self.std


def load_torchvision(arch: str, weights_path, image_size: int = 224) -> nn.Module:
    """A torchvision classifier (e.g. ``resnet18``, ``resnet50``, ``vit_b_16``, ``vit_b_32``) built with
    ``weights=None`` and loaded from a local state dict (``torch.load(..., weights_only=True)``; a
    ``.safetensors`` file also works). Never downloads anything.

    Returns ``nn.Sequential(preprocess, model)`` in eval mode: it takes images in [-1, 1] at any size,
    resizes them to ``image_size`` (bilinear) and applies ImageNet normalization before the model.
    """
    import torchvision  # deferred: five seconds to import, and only ImageNet judges need it

    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights file at {path} (torchvision weights are never downloaded here; "
            f"save a state dict there first)"
        )
    try:
        kwargs = {"image_size": image_size} if arch.startswith("vit_") else {}
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    except ValueError as e:
        raise ValueError(f"unknown torchvision architecture {arch!r}: {e}") from None
    if path.suffix == ".safetensors":
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and len(state) == 1 and next(iter(state)) in ("state_dict", "model"):
        state = next(iter(state.values()))
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    model.load_state_dict(check_state_dict(model, state, ignore_prefixes=(), what=f"{arch} weights {path}"))
    return nn.Sequential(_ImageNetInput(image_size), model).eval()


def load_run_evaluators(
    run_dir, image_size: int, n_classes: int, torchvision_weights: dict | None = None
) -> dict:
    """The judges of a run: the evaluators notebook 02 registered (``evaluator_cnn``, ``evaluator_resnet``),
    checked against this data's image size and class count, plus any ``{arch: local weights path}`` of
    torchvision ImageNet classifiers (for real taming checkpoints; never downloaded)."""
    judges, skipped = {}, []
    for arch in EVALUATORS:
        entry = registered(run_dir, f"evaluator_{arch}")
        try:
            judges[arch] = load_evaluator(
                entry["checkpoint"], arch, n_classes=n_classes, image_size=image_size
            )
        except ValueError as e:  # e.g. the digit evaluators next to a real ImageNet tokenizer
            skipped.append(str(e))
    for arch, path in (torchvision_weights or {}).items():
        judges[arch] = load_torchvision(arch, path)
    if not judges:
        raise ValueError(
            "no evaluator fits this data: "
            + "; ".join(skipped)
            + ". Give local torchvision weights (e.g. {'resnet18': 'data/resnet18.pth'})."
        )
    return judges
