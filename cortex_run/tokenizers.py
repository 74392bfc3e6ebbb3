"""Tokenizers by family: build and load any model that implements ``cortex_utils.vq.Tokenizer``.

A family is a module with a class implementing the protocol and two functions, ``build(config, seed)`` and
``load(config, checkpoint, trust_pickle)``, named in ``FAMILIES``. A tokenizer's ``state_dict`` is what to
save: each family leaves out what inference does not need."""

import importlib
from pathlib import Path

from cortex_utils.vq import check_tokenizer

from . import DEFAULT_FAMILY
from .artifacts import registered

# family -> the module that builds and loads it (DEFAULT_FAMILY, taming's VQGAN, is also the family of
# datasets and registries made before there were families; vqvae_fsq: vector-quantize-pytorch's FSQ)
FAMILIES = {"taming_vqgan": "cortex_run.taming_vq", "vqvae_fsq": "cortex_run.vqvae"}


def family_of(config) -> str:
    """A config's family: its ``family`` key, else taming (a taming config or a path to its YAML)."""
    return config.get("family", DEFAULT_FAMILY) if isinstance(config, dict) else DEFAULT_FAMILY


def adapter(family: str):
    """The module that builds and loads tokenizers of ``family``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tokenizer family {family!r} (known: {', '.join(FAMILIES)})")
    return importlib.import_module(FAMILIES[family])


def build_vq(config, seed: int | None = None):
    """A randomly initialised tokenizer (eval mode) of ``config``'s family."""
    vq = adapter(family_of(config)).build(config, seed=seed)
    check_tokenizer(vq)
    return vq


def load_vq(config, checkpoint: str | Path, trust_pickle: bool = False):
    """The tokenizer of ``config`` with the weights in ``checkpoint`` (taming's ``.ckpt`` or safetensors)."""
    vq = adapter(family_of(config)).load(config, checkpoint, trust_pickle=trust_pickle)
    check_tokenizer(vq)
    return vq


def load_run_vq(run_dir: str | Path, device: str = "cpu"):
    """The tokenizer notebook 01 registered in ``run_dir`` (shipped, retrained or a user's checkpoint), on
    ``device``."""
    entry = registered(run_dir, "vq")
    vq = load_vq(entry["config"], entry["checkpoint"], trust_pickle=entry.get("trust_pickle", False))
    return vq.to(device)
