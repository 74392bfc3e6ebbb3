"""The device follows the model. A loop of the method runs where its model's weights are: it moves each
batch there and hands its results back on the device its inputs came from (host data stays on the host).
Which device a run uses is the caller's choice (a notebook's ``device`` parameter): move the model there
once, ``model.to(device)``, and call the method as on the CPU."""

from __future__ import annotations

import itertools

import torch


def device_of(model) -> torch.device:
    """Where ``model``'s weights (or buffers) are; the CPU for a model without any."""
    tensors = itertools.chain(model.parameters(), model.buffers()) if hasattr(model, "parameters") else ()
    first = next(iter(tensors), None)
    return first.device if first is not None else torch.device("cpu")
