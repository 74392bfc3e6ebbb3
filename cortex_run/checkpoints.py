"""Weights on disk: our safetensors with a JSON card beside them (config, data, seed, metrics, the command
that rebuilds them), foreign torch checkpoints read safely, state dicts checked key by key; a damaged file
is an error that names it. No model library is imported here (loading an IEM costs no tokenizer import).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cortex_utils.iem import ARCHITECTURES, build_iem

from .artifacts import atomic_path, read_json, registered, write_json


def card_path(weights_path: str | os.PathLike) -> Path:
    """The JSON card beside a weights file or a dataset folder: ``<name>.json``."""
    return Path(weights_path).with_suffix(".json")


def save_weights(state_dict: dict, path: str | os.PathLike, card: dict) -> Path:
    """Save a state dict as safetensors, then its card (last: a card stands only beside a whole file)."""
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
    return read_json(p)


def load_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Weights from safetensors or a (Lightning) torch checkpoint, read with ``weights_only=True``; one that
    needs full unpickling is refused unless ``trust_pickle=True`` (only for files you trust: it runs code)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError) as err:
        raise ValueError(f"{path} cannot be read ({err}): it is damaged or truncated") from None
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise ValueError(
                f"{path} cannot be read with torch.load(weights_only=True): it stores pickled Python objects "
                f"({str(err).splitlines()[0][:200]}). If you trust its origin, pass trust_pickle=True."
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model"):  # Lightning's checkpoints; torchvision's reference training scripts
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
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
    problems = {"shape mismatches": shapes, "missing keys": missing, "unexpected keys": unexpected}
    if any(problems.values()):
        lines = [f"  {len(v)} {label}, first: " + "; ".join(v[:5]) for label, v in problems.items() if v]
        raise ValueError("\n".join([f"the {what} does not match the config:", *lines]))
    return state


def save_iem(model: torch.nn.Module, path: str | os.PathLike, card: dict) -> Path:
    """An IEM's weights, its ``cortex_spec`` on the card (``load_iem`` rebuilds it from there)."""
    return save_weights(model.state_dict(), path, card={**card, "spec": model.cortex_spec})


def load_iem(path: str | os.PathLike, expect: dict | None = None) -> torch.nn.Module:
    """An IEM saved by ``save_iem``, in eval mode; ``expect`` (e.g. ``{"arch": "vgg", "in_channels": 32}``)
    must match its spec."""
    spec = read_card(path)["spec"]
    for k, v in (expect or {}).items():
        if k == "arch":
            v = ARCHITECTURES.get(v, v)
        if spec.get(k) != (list(v) if isinstance(v, tuple) else v):
            raise ValueError(f"{path} holds an IEM with {k} = {spec.get(k)!r}, expected {v!r}")
    model = build_iem(spec["arch"], spec["in_channels"], spec["grid"], spec["n_classes"], spec["width"])
    state = check_state_dict(model, load_state_dict(path), ignore_prefixes=(), what=f"IEM {path}")
    model.load_state_dict(state)
    return model.eval()


def dataset_spec(ds) -> dict:
    """What an IEM must match to read the token dataset ``ds`` (the ``expect`` of ``load_iem``)."""
    return {"in_channels": ds.manifest["embed_dim"], "grid": list(ds.grid), "n_classes": len(ds.class_names)}


def load_run_iem(run_dir: str | os.PathLike, arch: int, ds, device: str = "cpu") -> torch.nn.Module:
    """The IEM ``iem<arch>`` notebook 03 registered in ``run_dir``, checked against the dataset ``ds``, on
    ``device``."""
    path = registered(run_dir, f"iem{arch}")["checkpoint"]
    return load_iem(path, expect={"arch": arch, **dataset_spec(ds)}).to(device)
