"""Weights on disk: our safetensors with a JSON card, foreign torch checkpoints read safely, state dicts
checked.

A leaf module: it imports torch and safetensors, and no model library (no taming, no pytorch_lightning, no
vector_quantize_pytorch), so loading an IEM or an evaluator costs no tokenizer import.

* ``save_weights(state_dict, path, card)`` writes ``path`` (safetensors) and its card
  ``path.with_suffix(".json")`` (config, data, seed, metrics, the command that rebuilds it);
  ``read_card(path)`` reads the card back.
* ``load_state_dict(path)`` reads safetensors, or a (Lightning) torch checkpoint with
  ``torch.load(weights_only=True)``; a checkpoint that needs full unpickling is refused unless
  ``trust_pickle=True`` (only for files whose origin you trust: unpickling can run code).
* ``check_state_dict(model, state)`` names the first missing, unexpected or misshapen keys before
  ``model.load_state_dict`` would fail with a less helpful message.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .artifacts import atomic_path, write_json


def card_path(weights_path: str | os.PathLike) -> Path:
    """The JSON card beside a weights file (or a dataset folder): ``<name>.json``."""
    return Path(weights_path).with_suffix(".json")


def save_weights(state_dict: dict, path: str | os.PathLike, card: dict) -> Path:
    """Save a state dict as safetensors plus a JSON card (config, data, seed, metrics, rebuild command)."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    write_json(card_path(path), card)
    return path


def read_card(weights_path: str | os.PathLike) -> dict:
    p = card_path(weights_path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint card {p} is missing (every shipped checkpoint has one)")
    return json.loads(p.read_text())


def load_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read weights from safetensors or from a (Lightning) torch checkpoint.

    A Lightning checkpoint's weights sit under its ``state_dict`` key. ``torch.load`` runs with
    ``weights_only=True``; a checkpoint that needs arbitrary unpickling is refused unless
    ``trust_pickle=True`` (only for files whose origin you trust: unpickling can run code).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise ValueError(
                f"{path} cannot be read with torch.load(weights_only=True): it stores pickled Python "
                f"objects ({str(err).splitlines()[0][:200]}). If you trust its origin, pass "
                "trust_pickle=True."
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def check_state_dict(model: torch.nn.Module, state: dict, ignore_prefixes=("loss.",), what="checkpoint"):
    """Raise a ValueError naming the first keys that are missing, unexpected or of another shape; return
    ``state`` without the keys under ``ignore_prefixes`` (taming's checkpoints carry their training loss)."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        lines = [f"the {what} does not match the config:"]
        for label, items in (
            ("shape mismatches", shapes),
            ("missing keys", missing),
            ("unexpected keys", unexpected),
        ):
            if items:
                lines.append(f"  {len(items)} {label}, first: " + "; ".join(items[:5]))
        raise ValueError("\n".join(lines))
    return state
