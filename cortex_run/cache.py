"""The house's one cache: load a file when its card says it is what building it here would give, else build.

A cached file (weights, or a dataset folder) has a JSON card beside it holding the settings it was built
with, its inputs by fingerprint, and for a folder the sha256 of each of its files.
"""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoints import card_path, read_card
from .datasets import file_digest

FIX = "restore it (git checkout) or rebuild the shipped files (make checkpoints)"


def differences(card: dict, expect: dict) -> list[str]:
    """The entries of ``expect`` that ``card`` does not hold, as ``"key theirs (here ours)"``. A dict entry
    is compared key by key (the card's may hold more keys)."""
    out = []
    for k, ours in expect.items():
        theirs = card.get(k)
        if isinstance(ours, dict) and isinstance(theirs, dict):
            out += [f"{kk} {theirs.get(kk)!r} (here {v!r})" for kk, v in ours.items() if theirs.get(kk) != v]
        elif theirs != ours:
            out.append(f"{k} {theirs!r} (here {ours!r})")
    return out


def lookup(path: str | os.PathLike, expect: dict) -> tuple[Path | None, str]:
    """``(path, why)`` when the card beside ``path`` holds ``expect``; ``(None, why not)`` when it holds
    other settings or nothing is there. Raises, naming the file, when the file or its card is missing while
    the other is there, the card is damaged, or a file of a folder differs from its sha256 on the card."""
    path = Path(path)
    if not path.exists() and not card_path(path).exists():
        return None, f"nothing at {path}"
    card = read_card(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing beside its card {card_path(path).name}: {FIX}")
    diff = differences(card, expect)
    if diff:
        return None, f"{path.name} was made with other settings: " + ", ".join(diff)
    for name, digest in card.get("files", {}).items():
        if not (path / name).exists():
            raise FileNotFoundError(f"shipped file {path / name} is missing: {FIX}")
        if file_digest(path / name) != digest:
            raise ValueError(f"shipped file {path / name} is damaged (its sha256 is not the card's): {FIX}")
    return path, f"the card of {path.name} holds these exact inputs and settings"


def load_or_build(path, expect: dict, load, build, rebuild: str = ""):
    """``(load(path), why, False)`` when ``lookup(path, expect)`` finds it, else ``(build(), why not, True)``.
    ``rebuild``: a reason to build without looking (e.g. ``"retrain = True"``)."""
    found, why = (None, rebuild) if rebuild else lookup(path, expect)
    return (load(found), why, False) if found else (build(), why, True)
