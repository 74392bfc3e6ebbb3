"""TIS speed: batched SmoothGrad (one backward per noise draw) vs the original's per-sample loop (one
autograd.grad per image per draw), and vs the floor of 20 plain forward+backward passes, on the same IEM
(architecture 1 at the notebooks' default width 32, embed_dim 32, 8x8 grid, 10 classes) and the same batch of 25.

Last line: tis_speedup=<x> tis_floor_ratio=<y> tis_max_abs_diff=<z>
"""

import sys
import time
from pathlib import Path

import torch

from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tis_reference import smoothgrad_per_sample  # noqa: E402  (the reference loop lives with the tests)


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(batch=25, nsamples=20, repeats=3):
    torch.manual_seed(0)
    model = iemlib.build_iem(1, 32, (8, 8), 10, width=32)  # the notebooks' default width
    model(torch.randn(64, 32, 8, 8))
    model.eval()
    x = torch.randn(batch, 32, 8, 8)
    target = torch.arange(batch) % 10
    noise = tislib.smoothgrad_noise(x, nsamples, 0.2, torch.Generator().manual_seed(0))

    def floor():
        for eps in noise:
            xx = (x + eps).requires_grad_(True)
            model(xx).sum().backward()

    t_fast, fast = best_of(lambda: tislib.smoothgrad(model, x, target, noise=noise), repeats)
    t_ref, ref = best_of(lambda: smoothgrad_per_sample(model, x, target, noise), 1)
    t_floor, _ = best_of(floor, repeats)
    diff = (fast - ref).abs().max().item()
    print(f"batch {batch}, {nsamples} noise draws: batched {t_fast * 1e3:.1f} ms, per-sample loop {t_ref * 1e3:.1f} ms, "
          f"{nsamples} plain forward+backward {t_floor * 1e3:.1f} ms; max |difference| {diff:.2e}")
    print(f"tis_speedup={t_ref / t_fast:.1f} tis_floor_ratio={t_fast / t_floor:.2f} tis_max_abs_diff={diff:.2e}")


if __name__ == "__main__":
    main()
