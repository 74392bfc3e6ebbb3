"""TIS speed: batched SmoothGrad (all noisy copies of the batch in one backward pass) vs the original's per-sample loop (one
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

    def floor():  # 20 plain forward + backward passes of the batch, gradient to the input only (what TIS needs)
        for eps in noise:
            xx = (x + eps).requires_grad_(True)
            torch.autograd.grad(model(xx).sum(), xx)

    def floor_weights():  # the same with loss.backward(), which also fills every weight's gradient
        for eps in noise:
            xx = (x + eps).requires_grad_(True)
            model(xx).sum().backward()

    t_fast, fast = best_of(lambda: tislib.smoothgrad(model, x, target, noise=noise), repeats)
    t_ref, ref = best_of(lambda: smoothgrad_per_sample(model, x, target, noise), 1)
    t_floor, _ = best_of(floor, repeats)
    t_floor_w, _ = best_of(floor_weights, repeats)
    diff = (fast - ref).abs().max().item()
    print(f"batch {batch}, {nsamples} noise draws: batched {t_fast * 1e3:.1f} ms, per-sample loop {t_ref * 1e3:.1f} ms, "
          f"{nsamples} plain forward+backward {t_floor * 1e3:.1f} ms to the input ({t_floor_w * 1e3:.1f} ms with "
          f"weight gradients, ratio {t_fast / t_floor_w:.2f}); max |difference| {diff:.2e}")
    print(f"tis_speedup={t_ref / t_fast:.1f} tis_floor_ratio={t_fast / t_floor:.2f} tis_max_abs_diff={diff:.2e}")


if __name__ == "__main__":
    main()
