"""SmoothGrad's passes sized from a memory budget: how many noisy copies one forward + input-gradient pass
may hold (``tis.smoothgrad``'s ``batch``), for notebook 05 and the torchrun job (``distributed``)."""

from __future__ import annotations

import torch

from cortex_utils.tis import MAX_WORKERS

MEMORY_MB = 1024  # the budget of the passes in flight (up to tis.MAX_WORKERS side by side on the CPU)


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


def rows_per_pass(
    model: torch.nn.Module, embeddings: torch.Tensor, memory_mb: float = MEMORY_MB, precision: str = "float32"
) -> int:
    """Noisy copies per SmoothGrad pass when ``MAX_WORKERS`` passes share ``memory_mb``: its ``batch``."""
    return max(1, int(memory_mb / MAX_WORKERS * 2**20 // bytes_per_row(model, embeddings, precision)))
