"""Files every stage writes: weights with a JSON card, atomic writes, the run's metrics and model registry.

Our own weights are safetensors; foreign checkpoints (taming's Lightning ``.ckpt``) are read with
``torch.load(weights_only=True)`` and only unpickled fully behind an explicit ``trust_pickle=True``.
Every write goes to a temporary name first and is renamed into place, so an interrupted run never leaves
a half-written file where a later notebook would read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch



@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and for directories (the block creates whichever it wants at the temporary path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"nothing was written for {path}")
        if path.is_dir() and not path.is_symlink():
            old = tmp / ".old"
            os.replace(path, old)
        if target.is_file():
            os.chmod(target, 0o644)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def repo_relative(path: str | os.PathLike) -> str:
    """A path as recorded on a card or manifest: relative to the repository root when inside it, so the
    shipped files are the same on every checkout."""
    from . import REPO_ROOT

    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def card_path(weights_path: str | os.PathLike) -> Path:
    return Path(weights_path).with_suffix(".json")


def save_weights(state_dict: dict, path: str | os.PathLike, card: dict) -> Path:
    """Save a state dict as safetensors plus a JSON card (config, data, seed, metrics, rebuild command)."""
    from safetensors.torch import save_file

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
    import torch
    from safetensors.torch import load_file

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
                f"objects ({str(err).splitlines()[0][:200]}). If you trust its origin, pass trust_pickle=True."
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


@contextlib.contextmanager
def _run_lock(run_dir: str | os.PathLike):
    """Hold ``<run_dir>/.lock`` while a run-wide file is read, changed and written back: notebooks that
    run side by side (``pipeline --jobs``) share ``metrics.json`` and ``registry.json``."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_metrics(run_dir: str | os.PathLike) -> dict:
    p = Path(run_dir) / "metrics.json"
    return json.loads(p.read_text()) if p.exists() else {}


def record_metrics(run_dir: str | os.PathLike, **values) -> dict:
    """Merge headline numbers into ``<run_dir>/metrics.json`` (one flat JSON object)."""
    for k, v in values.items():
        if isinstance(v, (dict, list, tuple)):
            raise TypeError(f"metric {k} must be a scalar, got {type(v).__name__}")
    with _run_lock(run_dir):
        metrics = read_metrics(run_dir)
        metrics.update({k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()})
        write_json(Path(run_dir) / "metrics.json", metrics)
    return metrics


def note_trained(run_dir: str | os.PathLike, what: str, n: int = 1) -> int:
    """Add ``n`` to ``models_trained_in_run`` in ``metrics.json`` (the default run loads every model it uses,
    so there it stays 0) and say what was trained. Returns the new count."""
    with _run_lock(run_dir):
        metrics = read_metrics(run_dir)
        metrics["models_trained_in_run"] = int(metrics.get("models_trained_in_run", 0)) + n
        write_json(Path(run_dir) / "metrics.json", metrics)
    print(f"trained in this run: {what} (models trained so far: {metrics['models_trained_in_run']})")
    return metrics["models_trained_in_run"]


def register(run_dir: str | os.PathLike, role: str, **entry) -> None:
    """Note in ``<run_dir>/registry.json`` which model plays ``role`` (vq, transformer, evaluator_cnn, ...)
    in this run, so later notebooks load the same one."""
    p = Path(run_dir) / "registry.json"
    with _run_lock(run_dir):
        models = json.loads(p.read_text()) if p.exists() else {}
        models[role] = {k: (str(v) if isinstance(v, Path) else v) for k, v in entry.items()}
        write_json(p, models)


def registered(run_dir: str | os.PathLike, role: str) -> dict:
    p = Path(run_dir) / "registry.json"
    models = json.loads(p.read_text()) if p.exists() else {}
    if role not in models:
        raise FileNotFoundError(
            f"no '{role}' model registered in {p}: run the notebook that trains or loads it first "
            f"(registered: {sorted(models) or 'none'})"
        )
    return models[role]
