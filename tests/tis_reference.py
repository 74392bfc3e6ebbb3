"""The per-sample TIS reference: the original CORTEX loop, one ``autograd.grad`` per image per noise draw
(``create_graph=True`` as in the paper's code). Used by the parity test and by benchmarks/tis_speed.py."""

import torch


def smoothgrad_per_sample(model, embeddings, target, noise):
    target = torch.as_tensor(target).long()
    total = torch.zeros_like(embeddings)
    for eps in noise:
        x = (embeddings + eps).requires_grad_(True)
        out = model(x)
        for i in range(len(x)):
            (g,) = torch.autograd.grad(out[i, target[i]], x, retain_graph=True, create_graph=True)
            total[i] += g[i].detach()
    return total / len(noise)
