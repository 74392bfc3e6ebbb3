"""The codebook-size study: the default taming VQ model trained with 64, 256 and 1,024 codes, same recipe.

* ``shipped_name(k)``: the file of the shipped model with ``k`` codes (``checkpoints/vq_mnist.safetensors`` is
  the default's 256; another size is ``vq_mnist_k<k>.safetensors``); ``shipped_sizes()`` the sizes whose card
  is in ``checkpoints/``; ``check_size(k)`` refuses a size that is not shipped, naming the shipped sizes and
  the command that trains it; ``train_command(k)`` that command (written on the card of what it trains).

A leaf module (json only): notebook 12's table of the study (``table``) reads finished runs without a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import SHIPPED_CHECKPOINTS

DEFAULT_SIZE = 256  # the default run's model, checkpoints/vq_mnist.safetensors


def shipped_name(codebook_size: int = DEFAULT_SIZE) -> str:
    return (
        "vq_mnist.safetensors" if codebook_size == DEFAULT_SIZE else f"vq_mnist_k{codebook_size}.safetensors"
    )


def shipped_sizes(folder: str | Path = SHIPPED_CHECKPOINTS) -> list[int]:
    """The codebook sizes of the taming VQ models shipped in ``folder`` (read from their cards)."""
    sizes = []
    for card in sorted(Path(folder).glob("vq_mnist*.json")):
        k = json.loads(card.read_text())["config"]["params"]["n_embed"]
        if card.with_suffix(".safetensors").exists() and card.with_suffix(
            ".safetensors"
        ).name == shipped_name(k):
            sizes.append(k)
    return sorted(sizes)


def train_command(codebook_size: int) -> str:
    """The command that trains the model of ``codebook_size`` codes with the default's recipe into
    checkpoints/ (bf16 on, quoted so that YAML keeps it a string: the default was trained in bfloat16, on a
    machine where ``auto`` turns it on)."""
    size = "" if codebook_size == DEFAULT_SIZE else f" -p codebook_size {codebook_size}"
    return (
        f"python -m cortex_run.pipeline --preset default --only 01_vq_model -p retrain true{size}"
        " -p bf16 \"'on'\" -p checkpoint_out checkpoints"
    )


def check_size(codebook_size: int, folder: str | Path = SHIPPED_CHECKPOINTS) -> None:
    """Raise a ValueError unless a model of ``codebook_size`` codes is shipped in ``folder``."""
    sizes = shipped_sizes(folder)
    if codebook_size not in sizes:
        raise ValueError(
            f"no shipped VQ model has codebook_size = {codebook_size} (shipped: "
            f"{', '.join(map(str, sizes))}). Train one with the default's recipe: "
            f"{train_command(codebook_size)} (or -p retrain true in this run)"
        )
