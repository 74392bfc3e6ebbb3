"""SmoothGrad's passes sized from a memory budget: how many noisy copies one forward + input-gradient pass
may hold (``tis.smoothgrad``'s ``batch``), for notebook 05 and the torchrun job (``distributed``)."""

from __future__ import annotations

import torch

from cortex_utils.devices import device_of
from cortex_utils.tis import MAX_WORKERS

from . import device

MEMORY_MB = 1024  # the budget of the passes in flight (up to tis.MAX_WORKERS side by side on the CPU)
GPU_SHARE = 0.5  # on a GPU: this share of its free memory (the rest: the model, gradients, fragmentation)


def bytes_per_row(model: torch.nn.Module, embeddings: torch.Tensor, precision: str = "float32") -> int:
    """Memory one noisy copy takes in a forward + input-gradient pass: the tensors autograd keeps for the
    backward pass, measured as the difference between passes of two copies and of one (weights and their
    casts cancel), doubled for the backward pass's own temporaries, plus the copy and its gradient."""

    def saved(k):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = embeddings[:1].repeat(k, *[1] * (embeddings.ndim - 1))
        if precision == "bfloat16":  # as tis.smoothgrad's passes in the fast mode
            x = x.contiguous(memory_format=torch.channels_last)
        with (
            torch.enable_grad(),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"),
        ):
            model(x.requires_grad_(True))
        return sum(storages.values())

    return max(2 * (saved(2) - saved(1)), 0) + 2 * embeddings[:1].nbytes


def rows_per_pass(model: torch.nn.Module, embeddings, memory_mb=None, precision: str = "float32") -> int:
    """Noisy copies per SmoothGrad pass (its ``batch``) on the model's device: on the CPU ``MAX_WORKERS``
    passes side by side share ``memory_mb`` (default ``MEMORY_MB``); on a GPU one pass at a time takes
    ``memory_mb`` (default ``GPU_SHARE`` of the device's free memory)."""
    where = device_of(model)
    free = device.free_memory_mb(where)
    if free is None:  # the CPU (and MPS): a fixed budget
        budget = (MEMORY_MB if memory_mb is None else memory_mb) / MAX_WORKERS
    else:
        budget = GPU_SHARE * free if memory_mb is None else memory_mb
    x = embeddings[:1].to(where)
    return max(1, int(budget * 2**20 // bytes_per_row(model, x, precision)))
