"""The codebook-size study: the default taming VQ model trained with 64, 256 and 1,024 codes, same recipe.
The default's 256 is ``checkpoints/vq_mnist.safetensors``, another size ``vq_mnist_k<k>.safetensors``."""

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
        weights = card.with_suffix(".safetensors")
        if weights.exists() and weights.name == shipped_name(k):
            sizes.append(k)
    return sorted(sizes)


def train_command(codebook_size: int) -> str:
    """The command that trains ``codebook_size`` codes with the default's recipe into checkpoints/ (bf16 on,
    as the default was trained; quoted so that YAML keeps it a string)."""
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
