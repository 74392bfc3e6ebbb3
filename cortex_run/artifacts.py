"""Files every stage writes: atomically (to a temporary name, then renamed into place, so an interrupted run
never leaves a half-written file), JSON, the run's metrics and model registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from . import REPO_ROOT


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds. The block
    writes a file or a directory there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"nothing was written for {path}")
        if path.is_dir() and not path.is_symlink():
            os.replace(path, tmp / ".old")  # removed with tmp
        if target.is_file():
            os.chmod(target, 0o644)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: str | os.PathLike, default=None):
    """The JSON in ``path`` (``default`` if there is no such file, when given); a file that is not valid JSON
    (half-written, edited by hand) is an error that names it."""
    path = Path(path)
    if default is not None and not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): it is damaged or half-written") from None


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def repo_relative(path: str | os.PathLike) -> str:
    """A path as recorded on a card or manifest: relative to the repository root when inside it, so the
    shipped files are the same on every checkout."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


@contextlib.contextmanager
def _updating(run_dir: str | os.PathLike, name: str):
    """The JSON object in ``<run_dir>/<name>``, changed in the block and written back, all under the run's
    lock (notebooks run side by side with ``pipeline --jobs``)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        obj = read_json(Path(run_dir) / name, {})
        yield obj
        write_json(Path(run_dir) / name, obj)


def read_metrics(run_dir: str | os.PathLike) -> dict:
    return read_json(Path(run_dir) / "metrics.json", {})


def record_metrics(run_dir: str | os.PathLike, **values) -> None:
    """Merge headline numbers into ``<run_dir>/metrics.json`` (one flat JSON object). Returns nothing, so a
    notebook cell that ends with it shows nothing (read them back with ``read_metrics``)."""
    for k, v in values.items():
        if isinstance(v, (dict, list, tuple)):
            raise TypeError(f"metric {k} must be a scalar, got {type(v).__name__}")
    with _updating(run_dir, "metrics.json") as metrics:
        if metrics.get("device", values.get("device")) != values.get("device", metrics.get("device")):
            # notebooks of one run on different devices: all of them, e.g. "cpu+cuda:0"
            values["device"] = "+".join(sorted({*metrics["device"].split("+"), values["device"]}))
        metrics.update({k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()})


def note_trained(run_dir: str | os.PathLike, what: str, n: int = 1) -> int:
    """Add ``n`` to ``models_trained_in_run`` in ``metrics.json`` (the default run loads every model it uses,
    so there it stays 0) and say what was trained. Returns the new count."""
    with _updating(run_dir, "metrics.json") as metrics:
        metrics["models_trained_in_run"] = int(metrics.get("models_trained_in_run", 0)) + n
    print(f"trained in this run: {what} (models trained so far: {metrics['models_trained_in_run']})")
    return metrics["models_trained_in_run"]


def register(run_dir: str | os.PathLike, role: str, **entry) -> None:
    """Note in ``<run_dir>/registry.json`` which model plays ``role`` (vq, transformer, evaluator_cnn, ...)
    in this run, so later notebooks load the same one."""
    with _updating(run_dir, "registry.json") as models:
        models[role] = {k: (str(v) if isinstance(v, Path) else v) for k, v in entry.items()}


def registered(run_dir: str | os.PathLike, role: str) -> dict:
    p = Path(run_dir) / "registry.json"
    models = read_json(p, {})
    if role not in models:
        raise FileNotFoundError(
            f"no '{role}' model registered in {p}: run the notebook that trains or loads it first "
            f"(registered: {sorted(models) or 'none'})"
        )
    return models[role]
