"""Independent judges: pixel classifiers trained on real training digits only (never on generated images or
token embeddings), two that see differently: ``cnn`` (conv stack, max-pooling) and ``resnet`` (residual
blocks, global average pooling); and torchvision's ImageNet classifiers from local weights."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from cortex_utils.evaluation import predict_logits
from cortex_utils.progress import tqdm

from . import digits
from .artifacts import registered
from .checkpoints import check_state_dict, load_state_dict, read_card

EVALUATORS = ("cnn", "resnet")


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def build_evaluator(arch: str, n_classes: int = 10) -> nn.Module:
    """An untrained ``cnn`` or ``resnet`` for RGB images (the cnn's first linear layer is lazy)."""
    w = 16  # channels of the first layers
    if arch == "cnn":
        return nn.Sequential(
            *_conv(3, w),
            *_conv(w, w),
            nn.MaxPool2d(2),
            *_conv(w, 2 * w),
            nn.MaxPool2d(2),
            *_conv(2 * w, 2 * w),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.LazyLinear(128),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(128, n_classes),
        )
    if arch == "resnet":
        return nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            _Residual(w, w, 2),
            _Residual(w, 2 * w, 2),
            _Residual(2 * w, 2 * w, 1),
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
    max_shift = max(max_shift, x.shape[-1] // 16)  # 2 pixels at 32 px, in proportion above
    dx, dy = rng.integers(-max_shift, max_shift + 1, 2)
    return torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))


def train_evaluator(
    arch: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: torch.Tensor,
    val_labels: np.ndarray,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    n_classes: int = 10,
    device: str = "cpu",
) -> tuple[nn.Module, pd.DataFrame]:
    """Train on real images with small random shifts, on ``device`` (the weights initialised and the batches
    drawn on the host, as on the CPU). ``train_images``: gray digits ``(N, H, W)``, each batch drawn in random
    palette colours, or uint8 images ``(N, 3, H, W)`` (a user's image folder) as they are."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gray = train_images.ndim == 3
    model = build_evaluator(arch, n_classes)
    model(torch.zeros(2, 3, *train_images.shape[-2:]))  # materialise lazy layers
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2))
    y_all = torch.as_tensor(train_labels).long()
    log = []
    model.train()
    for step in tqdm(range(steps), desc=f"train evaluator ({arch})"):
        i = rng.integers(0, len(train_images), batch_size)
        x = digits.augment_batch(train_images[i], rng) if gray else digits.to_model_input(train_images[i])
        x = _shift(x, rng)
        loss = F.cross_entropy(model(x.to(device)), y_all[i].to(device))
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


def accuracy(model: nn.Module, images: torch.Tensor, labels) -> float:
    pred = predict_logits(model, images).argmax(1).cpu().numpy()
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


# ImageNet classifiers (torchvision), as the original's evaluators
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetInput(nn.Module):
    """Images in [-1, 1] -> ImageNet-normalized, as torchvision's classifiers take them; resized to
    ``image_size`` (bilinear, antialiased) unless it is None (a classifier at the images' own size)."""

    def __init__(self, image_size: int | None):
        super().__init__()
        self.size = None if image_size is None else (int(image_size), int(image_size))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (N, 3, H, W) (or 1 channel) in [-1, 1], got {tuple(x.shape)}")
        x = (x.expand(-1, 3, -1, -1) + 1) / 2
        if self.size is not None and tuple(x.shape[2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std


def load_torchvision(arch: str, weights_path, image_size: int = 224) -> nn.Module:
    """A torchvision classifier (``resnet18``, ``vit_b_16``, ...) from a local state dict (``.pth`` or
    ``.safetensors``); never downloads. Its class count is its head's (the state dict's last matrix): 1,000
    for ImageNet weights, K for a model fine-tuned on your K classes. In eval mode, it takes images in
    [-1, 1] at any size, resized to ``image_size`` (bilinear) and ImageNet-normalized."""
    import torchvision  # deferred: five seconds to import, and only ImageNet judges need it

    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights file at {path} (torchvision weights are never downloaded here; "
            f"save a state dict there first)"
        )
    raw = load_state_dict(path)
    matrices = [v for k, v in raw.items() if k.endswith("weight") and v.ndim == 2]
    try:
        kwargs = {"image_size": image_size} if arch.startswith("vit_") else {}
        kwargs["num_classes"] = int(matrices[-1].shape[0]) if matrices else 1000
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    except ValueError as e:
        raise ValueError(f"unknown torchvision architecture {arch!r}: {e}") from None
    state = check_state_dict(model, raw, ignore_prefixes=(), what=f"{arch} weights {path}")
    model.load_state_dict(state)
    return nn.Sequential(ImageNetInput(image_size), model).eval()


def load_run_evaluators(
    run_dir, image_size: int, n_classes: int, torchvision_weights: dict | None = None, device: str = "cpu"
) -> dict:
    """The judges of a run, on ``device``: the evaluators notebook 02 registered (``evaluator_cnn``,
    ``evaluator_resnet``: the shipped digit ones, or those trained on the run's image folder), checked
    against this data's image size and class count (one below its accuracy floor is named as a weak judge),
    plus any ``{arch: local weights path}`` of torchvision ImageNet classifiers (for real taming
    checkpoints; never downloaded)."""
    judges, skipped = {}, []
    for arch in EVALUATORS:
        entry = registered(run_dir, f"evaluator_{arch}")
        try:
            judges[arch] = load_evaluator(
                entry["checkpoint"], arch, n_classes=n_classes, image_size=image_size
            )
        except ValueError as e:  # e.g. the digit evaluators next to a real ImageNet tokenizer
            skipped.append(str(e))
            continue
        acc, floor = entry.get("test_accuracy"), entry.get("floor")
        if acc is not None and floor is not None and acc < floor:
            print(
                f"weak judge: the {arch} evaluator classifies {acc:.1%} of the held-out test images right, "
                f"below the floor of {floor:.0%} (notebook 02): the verdicts it judges here are weak"
            )
    for arch, path in (torchvision_weights or {}).items():
        judges[arch] = load_torchvision(arch, path)
        heads = [m for m in judges[arch].modules() if isinstance(m, nn.Linear)]
        if heads and heads[-1].out_features != n_classes:
            k = heads[-1].out_features
            raise ValueError(f"{path}: a {arch} of {k} classes cannot judge data of {n_classes} classes")
    if not judges:
        raise ValueError(
            "no evaluator fits this data: "
            + "; ".join(skipped)
            + ". Give local torchvision weights (e.g. {'resnet18': 'data/resnet18.pth'})."
        )
    return {name: model.to(device) for name, model in judges.items()}
