"""Where a notebook computes: its ``device`` parameter resolved, and what that device has (memory, bf16).

``"auto"`` picks CUDA if present, else Apple's MPS, else the CPU; a name such as ``"cuda:1"`` or ``"cpu"``
is taken as given, after checking that this machine has it. Models move there once; data stays on the host
and each library loop moves its batches to its model's device (``cortex_utils``: "the device follows the
model").
"""

from __future__ import annotations

import resource
import sys

import torch

KINDS = ("auto", "cpu", "cuda", "cuda:<index>", "mps")


def resolve(name: str, parameter: str = "device") -> str:
    """The device ``name`` names on this machine, as a string for ``.to()`` (``"cpu"``, ``"cuda:0"``,
    ``"mps"``); ValueError naming ``parameter`` for an unknown name or a device this machine lacks."""
    if not isinstance(name, str):
        raise ValueError(
            f"parameter {parameter} must be a string such as 'auto', 'cpu' or 'cuda:0', got {name!r}"
        )
    if name == "auto":
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"parameter {parameter}: unknown device {name!r}; known: {', '.join(KINDS)}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"parameter {parameter}: {name!r} asked for, but this machine has no CUDA device"
            )
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ValueError(
                f"parameter {parameter}: {name!r} asked for, but this machine has {n} CUDA device(s)"
            )
        return f"cuda:{index}"
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"parameter {parameter}: {name!r} asked for, but MPS is not available here")
    if dev.index not in (None, 0) and dev.type == "cpu":
        raise ValueError(f"parameter {parameter}: {name!r}: the CPU has no index; use 'cpu'")
    return dev.type


def free_memory_mb(device: str | torch.device) -> float | None:
    """Free memory of a CUDA device in MB (``torch.cuda.mem_get_info``); None elsewhere (the CPU keeps its
    fixed budget, ``passes.MEMORY_MB``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0] / 2**20


def reset_peak(device: str | torch.device) -> None:
    """Start counting a CUDA device's peak memory afresh (the CPU's peak is the process's, and only grows)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: str | torch.device) -> float:
    """Peak memory in MB: CUDA's allocated peak since ``reset_peak``; on the CPU (and MPS) the process's peak
    resident set (``ru_maxrss``: KB on Linux, bytes on macOS)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (before reading a clock); nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
