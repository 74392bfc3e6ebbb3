"""TIS speed against the tool a user would pick instead (Captum) and against the machine, its fast mode, its
reduced-variance draws and its memory at the ImageNet VQGAN's shape, all measured in one run.

Workload: the shipped IEMs (``checkpoints/iem1`` ... ``iem4``: width 32, 32-dim embeddings, 8x8 grids, 10
classes) on the first test images of the shipped generated dataset (``data/default/generated``, embedded with
the shipped VQ codebook), SmoothGrad with 20 noisy copies, sigma = 0.2 * (max - min) of the batch, one fixed
noise tensor. For each architecture, at batches of 25 and 100:

* ``ours``: ``tis.smoothgrad`` in the exact mode (float32; the default; passes: ``passes.rows_per_pass``);
* ``captum``: ``NoiseTunnel(Saliency(model)).attribute(nt_type="smoothgrad", abs=False)`` with the same sigma
  and number of draws on the model as loaded, at its best ``nt_samples_batch_size`` (each candidate timed
  once, the best two timed with the rest, the faster kept);
* ``loop`` (batch 25 only): the original's per-sample loop (one ``autograd.grad`` per image per draw,
  ``tests/tis_reference.py``), the reference the exact mode must equal (max |difference| <= 1e-5);
* ``gemm``: the machine's float32 rate, a 2048 x 2048 matrix product at this process's thread setting.

Every timing is the best of ``--rounds`` rounds, each round timing all of them one after the other, so that
load from other jobs on the machine hits them alike and the ratios hold. The TIS work is counted with
``torch.utils.flop_counter`` (the forward and input-gradient passes of all noisy copies; attention through its
matrix products); ``peak fraction`` = work / time / the gemm rate.

Also: the fast mode (``precision="bfloat16"``) per architecture at batch 100, its speed and the top-5
agreement of its TIS with the exact mode's (same noise) beside the agreement of two float32 noise seeds;
the reduced-variance curve (IEM 1, 100 test images: top-5 agreement between noise seeds against the number
of draws, for Gaussian, antithetic and Sobol draws; 3 seeds, every pair); the floor of the original benchmark
(20 plain forward + input-gradient passes of IEM 1's batch of 25); and, in a fresh subprocess so that its peak
resident memory is its own, architecture 1 at width 64 on the ImageNet VQGAN's shape (256-dim embeddings,
16x16 grid, 1000 classes, random weights) with the passes sized from the memory budget (``--f16-batch``
images).

``--steps`` measures instead what each change of the exact mode bought (IEM 1 and the ViT at batch 100): one
pass on the intra-op threads vs passes side by side, the ViT's attention through ``nn.MultiheadAttention`` vs
``scaled_dot_product_attention``, channels-last float32 (faster, but not exact), and ``torch.compile``
(when a C++ compiler is present; compile time reported apart), and a profile of one pass (the operators'
shares of its time); then, per conv IEM, on ``--exact-images`` test
images in batches of 100, the exact mode's max |difference| to the original loop and channels-last's to the
exact mode, batch by batch.

Last line: tis_speedup=<ours vs loop, IEM 1, batch 25> tis_floor_ratio=<ours / 20 plain passes>
tis_max_abs_diff=<max over architectures vs the loop> tis_vs_captum_min=<min over archs and batches of captum
time / ours> tis_peak_fraction_min=<min over archs and batches> tis_bf16_speedup_min=<x>
tis_bf16_top5_min=<min over archs: top-5 agreement bf16 vs float32> tis_seed_top5_min=<the same for two
float32 seeds> tis_rv_top5_<draws>_<n>=<seed-to-seed agreement> tis_f16_images_per_s=<x> tis_f16_peak_mb=<x>
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from cortex_run import REPO_ROOT, passes
from cortex_run.checkpoints import load_iem, load_state_dict
from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib
from cortex_utils.tis import Noise

sys.path.insert(0, str(REPO_ROOT / "tests"))
from tis_reference import smoothgrad_per_sample  # noqa: E402  (the reference loop lives with the tests)

ARCHS, BATCHES, NSAMPLES, SPREAD = (1, 2, 3, 4), (25, 100), 20, 0.2
NT_BATCH = (1, 2, 4, 5, 10, 20)  # Captum nt_samples_batch_size candidates (divisors of the 20 draws)
RV_DRAWS, RV_NSAMPLES, RV_SEEDS = tislib.DRAWS, (4, 10, 20, 40), (1, 2, 3)


def test_batch(n: int):
    """The first ``n`` test images of the shipped generated dataset as embeddings, and their labels."""
    codebook = load_state_dict(REPO_ROOT / "checkpoints" / "vq_mnist.safetensors")[
        "quantize.embedding.weight"
    ]
    data = REPO_ROOT / "data" / "default" / "generated"
    tokens = torch.from_numpy(np.load(data / "test_tokens.npy")[:n].astype(np.int64))
    labels = torch.from_numpy(np.load(data / "test_labels.npy")[:n].astype(np.int64))
    return codebook[tokens].permute(0, 3, 1, 2).contiguous(), labels


def shipped_iem(arch: int) -> torch.nn.Module:
    return load_iem(REPO_ROOT / "checkpoints" / f"iem{arch}.safetensors")


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def best_of_rounds(fns: dict, rounds: int) -> tuple[dict, dict]:
    """Best time of each function over ``rounds`` rounds; every round runs each once, one after the other."""
    best, out = dict.fromkeys(fns, float("inf")), {}
    for _ in range(rounds):
        for key, fn in fns.items():
            t, out[key] = timed(fn)
            best[key] = min(best[key], t)
    return best, out


def captum_smoothgrad(model, x, target, sigma, nt_batch):
    from captum.attr import NoiseTunnel, Saliency

    return NoiseTunnel(Saliency(model)).attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=NSAMPLES,
        stdevs=sigma,
        nt_samples_batch_size=nt_batch,
        target=target,
        abs=False,
    )


def tis_flops(model, x, target, noise) -> int:
    """Multiply-add FLOPs of the forward and input-gradient passes of every noisy copy (attention counted
    through its matrix products: the math backend)."""
    rows = (x.unsqueeze(0) + noise).reshape(-1, *x.shape[1:]).requires_grad_(True)
    with FlopCounterMode(display=False) as counter, sdpa_kernel([SDPBackend.MATH]):
        logits = model(rows).gather(1, target.repeat(len(noise)).view(-1, 1))
        logits.sum().backward(
            inputs=[rows]
        )  # the input gradient only (autograd.grad trips the counter's hooks)
    return counter.get_total_flops()


def gemm(a, b):
    return a @ b


def top5(grad):
    return tislib.reduce_channels(grad, "max").numpy()


def one_pass(model, x, target, noise):
    """SmoothGrad with every noisy copy in one forward + backward pass on the intra-op threads (before the
    passes side by side)."""
    rows = (x.unsqueeze(0) + noise).reshape(-1, *x.shape[1:]).requires_grad_(True)
    logits = model(rows).gather(1, target.repeat(len(noise)).view(-1, 1))
    (grad,) = torch.autograd.grad(logits.sum(), rows)
    return grad.reshape(len(noise), *x.shape).mean(0)


def measure_one(arch: int, model, x, y, rounds: int, a, b) -> dict:
    """One architecture at one batch: ours, Captum at its best nt_samples_batch_size, the gemm, (batch 25) the
    original loop, (batch 100) the fast mode and a second float32 noise seed."""
    batch = len(x)
    noise = Noise(NSAMPLES, SPREAD).draw(x, torch.Generator().manual_seed(0))
    sigma = float(tislib.noise_sigma(x, SPREAD))
    cap = {p: passes.rows_per_pass(model, x, precision=p) for p in tislib.PRECISIONS}
    trial = {nb: timed(lambda nb=nb: captum_smoothgrad(model, x, y, sigma, nb))[0] for nb in NT_BATCH}
    two = sorted(NT_BATCH, key=trial.get)[:2]
    # ours as a user calls it: the noise drawn inside (from the seed that drew `noise`), as Captum draws its
    # own
    fns = {
        "ours": lambda: tislib.smoothgrad(model, x, y, Noise(NSAMPLES, SPREAD), seed=0, batch=cap["float32"]),
        "gemm": lambda: gemm(a, b),
    }
    fns |= {f"captum{nb}": (lambda nb=nb: captum_smoothgrad(model, x, y, sigma, nb)) for nb in two}
    if batch == max(BATCHES):
        fns["bf16"] = lambda: tislib.smoothgrad(
            model, x, y, Noise(NSAMPLES, SPREAD), 0, cap["bfloat16"], precision="bfloat16"
        )
    best, out = best_of_rounds(fns, rounds)
    nb = min(two, key=lambda k: best[f"captum{k}"])
    r = {
        "arch": arch,
        "batch": batch,
        "ours_ms": 1e3 * best["ours"],
        "captum_ms": 1e3 * best[f"captum{nb}"],
        "captum_nt_batch": nb,
        "gemm_gflops": 2 * 2048**3 / best["gemm"] / 1e9,
        "tis_gflop": tis_flops(model, x, y, noise) / 1e9,
    }
    r["vs_captum"] = r["captum_ms"] / r["ours_ms"]
    r["peak_fraction"] = r["tis_gflop"] / (r["ours_ms"] / 1e3) / r["gemm_gflops"]
    if not torch.equal(out["ours"], tislib.smoothgrad(model, x, y, noise, batch=cap["float32"])):
        raise RuntimeError("smoothgrad drew other noise than Noise.draw from the same seed")
    if batch == min(BATCHES):
        t_loop, ref = timed(lambda: smoothgrad_per_sample(model, x, y, noise))
        r["loop_ms"], r["max_abs_diff"] = 1e3 * t_loop, float((out["ours"] - ref).abs().max())
    if "bf16" in out:
        other = tislib.smoothgrad(model, x, y, Noise(NSAMPLES, SPREAD), seed=1, batch=cap["float32"])
        r["bf16_ms"] = 1e3 * best["bf16"]
        r["bf16_top5"] = float(tislib.topk_agreement(top5(out["bf16"]), top5(out["ours"])).mean())
        r["seed_top5"] = float(tislib.topk_agreement(top5(other), top5(out["ours"])).mean())
    print(
        f"IEM {arch} ({iemlib.ARCHITECTURES[arch]}), batch {batch}: ours {r['ours_ms']:.0f} ms, Captum "
        f"{r['captum_ms']:.0f} ms (nt_samples_batch_size {nb}; x{r['vs_captum']:.2f})"
        + (f", loop {r['loop_ms']:.0f} ms (max |diff| {r['max_abs_diff']:.1e})" if "loop_ms" in r else "")
        + f"; {r['tis_gflop']:.1f} GFLOP, {r['tis_gflop'] / r['ours_ms'] * 1e3:.0f} GFLOP/s of the gemm's "
        f"{r['gemm_gflops']:.0f} ({r['peak_fraction']:.2f})"
        + (
            f"; bf16 {r['bf16_ms']:.0f} ms (x{r['ours_ms'] / r['bf16_ms']:.2f}), top-5 vs float32 "
            f"{r['bf16_top5']:.2f}, two float32 seeds {r['seed_top5']:.2f}"
            if "bf16_ms" in r
            else ""
        ),
        flush=True,
    )
    return r


def measure(rounds: int) -> dict:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x_all, y_all = test_batch(max(BATCHES))
    res = {}
    rows = [
        measure_one(arch, shipped_iem(arch), x_all[:batch], y_all[:batch], rounds, a, b)
        for arch in ARCHS
        for batch in BATCHES
    ]
    res["rows"] = rows

    # the original benchmark's floor: 20 plain forward + input-gradient passes of IEM 1's batch of 25
    model, x, y = shipped_iem(1), x_all[: min(BATCHES)], y_all[: min(BATCHES)]
    noise = Noise(NSAMPLES, SPREAD).draw(x, torch.Generator().manual_seed(0))

    def floor():
        for eps in noise:
            xx = (x + eps).requires_grad_(True)
            torch.autograd.grad(model(xx).sum(), xx)

    best, _ = best_of_rounds({"ours": lambda: tislib.smoothgrad(model, x, y, noise), "floor": floor}, rounds)
    res["floor_ratio"] = best["ours"] / best["floor"]
    one = next(r for r in rows if r["arch"] == 1 and r["batch"] == min(BATCHES))
    res["speedup"] = one["loop_ms"] / one["ours_ms"]
    return res


def variance_curve(n_images: int = 100) -> dict:
    """Top-5 agreement between noise seeds (mean over every pair of RV_SEEDS) per kind of draws and
    nsamples."""
    model = shipped_iem(1)
    x, y = test_batch(n_images)
    curve = {}
    for draws in RV_DRAWS:
        for ns in RV_NSAMPLES:
            noise = Noise(ns, SPREAD, draws=draws)  # each seed as dataset_tis seeds a first batch
            maps = [tislib.attribute(model, x, y, noise=noise, seed=s * 1_000_003).numpy() for s in RV_SEEDS]
            curve[draws, ns] = float(tislib.seed_agreement(maps).mean())
        print(
            f"{draws:>10}: top-5 agreement of {len(RV_SEEDS)} noise seeds, {n_images} images, nsamples "
            + ", ".join(f"{ns}: {curve[draws, ns]:.3f}" for ns in RV_NSAMPLES),
            flush=True,
        )
    return curve


def f16_child(batch: int) -> None:
    """Architecture 1 at width 64 on the ImageNet VQGAN's shape; prints one JSON line (run in a
    subprocess)."""
    torch.manual_seed(0)
    model = iemlib.build_iem(1, 256, (16, 16), 1000, width=64)
    model(torch.randn(8, 256, 16, 16))  # touch BatchNorm's running statistics
    model.eval()
    x, y = torch.randn(batch, 256, 16, 16), torch.arange(batch) % 1000
    per_pass = passes.rows_per_pass(model, x)
    t, _ = timed(lambda: tislib.smoothgrad(model, x, y, Noise(NSAMPLES, SPREAD), seed=0, batch=per_pass))
    peak = peak_rss_mb()  # before the fast mode and the FLOP count below
    t_fast = float("nan")
    if tislib.bf16_supported():
        fast = passes.rows_per_pass(model, x, precision="bfloat16")
        t_fast, _ = timed(
            lambda: tislib.smoothgrad(model, x, y, Noise(NSAMPLES, SPREAD), 0, fast, precision="bfloat16")
        )
    noise = Noise(NSAMPLES, SPREAD).draw(x[:1], torch.Generator().manual_seed(0))
    print(
        json.dumps(
            {
                "images_per_s": batch / t,
                "seconds": t,
                "rows_per_pass": per_pass,
                "peak_mb": peak,
                "bf16_images_per_s": batch / t_fast,
                "gflop_per_image": tis_flops(model, x[:1], y[:1], noise) / 1e9,
            }
        )
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM of its own address space (Linux; ru_maxrss can carry the
    parent's peak over fork + exec), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next((ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")), None)
        if line:
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def f16(batch: int, gemm_gflops: float) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--f16-child", str(batch)], capture_output=True, text=True, check=True
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    rate = r["images_per_s"] * r["gflop_per_image"]
    print(
        f"ImageNet VQGAN shape (256 x 16 x 16, IEM 1 at width 64, 1000 classes), batch {batch}, {NSAMPLES} "
        f"draws: {r['images_per_s']:.2f} images/s ({r['seconds']:.1f} s; {r['gflop_per_image']:.1f} GFLOP "
        f"per image, {rate:.0f} GFLOP/s = {rate / gemm_gflops:.2f} of the best gemm rate above), passes of "
        f"<= {r['rows_per_pass']} noisy copies from the {passes.MEMORY_MB} MB budget, peak resident memory "
        f"{r['peak_mb']:.0f} MB; bfloat16 {r['bf16_images_per_s']:.2f} images/s",
        flush=True,
    )
    return r


def mha_forward(layer, h):
    """An encoder layer as before: the attention through ``nn.MultiheadAttention``'s own forward."""
    h2 = layer.ln1(h)
    h = h + layer.drop(layer.bn1(layer.attn(h2, h2, h2, need_weights=False)[0]))
    return h + layer.drop(layer.bn2(layer.mlp(layer.ln2(h))))


def steps(rounds: int, exact_images: int) -> None:
    """What each change of the exact mode bought, IEM 1 and the ViT at batch 100, and how far channels-last
    float32 moves the conv IEMs' scores (printed, not summarised)."""
    x, y = test_batch(100)
    noise = Noise(NSAMPLES, SPREAD).draw(x, torch.Generator().manual_seed(0))
    for arch in (1, 4):
        steps_one(arch, shipped_iem(arch), x, y, noise, rounds)
        profile_pass(arch, shipped_iem(arch), x, y)
    if exact_images:
        x, y = test_batch(exact_images)
        for arch in (1, 2, 3):
            channels_last_drift(arch, x, y)


def profile_pass(arch: int, model, x, y, rows: int = 250, top: int = 8) -> None:
    """Where one pass's time goes: ``rows`` noisy copies' forward + input gradient on one thread (as a
    worker runs it), the operators with the largest share of the profiled time."""
    reps = -(-rows // len(x))
    xx, target = x.repeat(reps, 1, 1, 1)[:rows], y.repeat(reps)[:rows, None]

    def one():
        inp = xx.clone().requires_grad_(True)
        torch.autograd.grad(model(inp).gather(1, target).sum(), inp)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one()
        with torch.profiler.profile() as prof:
            for _ in range(3):
                one()
    finally:
        torch.set_num_threads(threads)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    print(
        f"IEM {arch}, one pass of {rows} noisy copies on one thread: "
        + ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f} %" for e in ops[:top]),
        flush=True,
    )


def channels_last_drift(arch: int, x_all, y_all, batch: int = 100) -> None:
    """Max |difference| per batch of 100 test images: the exact mode against the original loop, and
    channels-last float32 against the exact mode (same noise). One batch can agree to 1e-8 where the next
    does not: a ReLU whose input lies within rounding of zero in some noisy copy switches its gradient on
    or off."""
    model = shipped_iem(arch)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    loop, drift, agree, largest = [], [], [], 0.0
    for i in tqdm(range(0, len(x_all), batch), desc=f"IEM {arch}: exactness", leave=False):
        x, y = x_all[i : i + batch], y_all[i : i + batch]
        noise = Noise(NSAMPLES, SPREAD).draw(x, torch.Generator().manual_seed(i))
        ours = tislib.smoothgrad(model, x, y, noise)
        loop.append(float((ours - smoothgrad_per_sample(model, x, y, noise)).abs().max()))
        moved = tislib.smoothgrad(cl, x.contiguous(memory_format=torch.channels_last), y, noise)
        drift.append(float((moved - ours).abs().max()))
        agree.append(tislib.topk_agreement(top5(moved), top5(ours)))
        largest = max(largest, float(ours.abs().max()))
    print(
        f"IEM {arch}, {len(x_all)} test images in batches of {batch}: max |diff| exact mode vs the original "
        f"loop {' '.join(f'{d:.0e}' for d in loop)}; channels-last float32 vs the exact mode "
        f"{' '.join(f'{d:.0e}' for d in drift)} (largest |gradient| {largest:.2f}; top-5 TIS agreement "
        f"{np.concatenate(agree).mean():.4f})",
        flush=True,
    )


def steps_one(arch, model, x, y, noise, rounds):
    fns = {
        "one pass, intra-op threads": lambda: one_pass(model, x, y, noise),
        "passes side by side (default)": lambda: tislib.smoothgrad(model, x, y, noise),
    }
    if arch == 4:
        old = copy.deepcopy(model)
        for layer in old.layers:
            layer.forward = lambda h, layer=layer: mha_forward(layer, h)
        fns["attention via nn.MultiheadAttention"] = lambda: tislib.smoothgrad(old, x, y, noise)
    else:
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        fns["channels-last float32"] = lambda: tislib.smoothgrad(
            cl, x.contiguous(memory_format=torch.channels_last), y, noise
        )
    if shutil.which("g++") or shutil.which("clang++"):
        compiled = torch.compile(model)
        t_compile, _ = timed(lambda: tislib.smoothgrad(compiled, x, y, noise))
        fns[f"torch.compile (first call {t_compile:.0f} s)"] = lambda: tislib.smoothgrad(
            compiled, x, y, noise
        )
    best, out = best_of_rounds(fns, rounds)
    base = out["passes side by side (default)"]
    for k, t in best.items():
        print(
            f"IEM {arch}, batch 100: {k:<40} {t * 1e3:7.0f} ms  max |diff| vs default "
            f"{float((out[k] - base).abs().max()):.1e}",
            flush=True,
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (best of)")
    ap.add_argument("--f16-batch", type=int, default=100, help="images in the ImageNet-shape batch")
    ap.add_argument("--steps", action="store_true", help="measure each change of the exact mode instead")
    ap.add_argument(
        "--exact-images",
        type=int,
        default=500,
        help="with --steps: test images on which channels-last is compared with the exact mode (0: skip)",
    )
    ap.add_argument("--f16-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.f16_child:
        f16_child(args.f16_child)
        return 0
    if args.steps:
        steps(args.rounds, args.exact_images)
        return 0
    print(
        f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"bfloat16 {'native' if tislib.bf16_supported() else 'not native'}; load average {load()} "
        "(other jobs on the machine slow every timing; the ratios are measured side by side)",
        flush=True,
    )
    res = measure(args.rounds)
    curve = variance_curve()
    big = f16(args.f16_batch, max(r["gemm_gflops"] for r in res["rows"]))
    print(f"load average at the end {load()}")
    rows = res["rows"]
    fast = [r for r in rows if "bf16_ms" in r]
    keys = {
        "tis_speedup": f"{res['speedup']:.1f}",
        "tis_floor_ratio": f"{res['floor_ratio']:.2f}",
        "tis_max_abs_diff": f"{max(r['max_abs_diff'] for r in rows if 'max_abs_diff' in r):.2e}",
        "tis_vs_captum_min": f"{min(r['vs_captum'] for r in rows):.2f}",
        "tis_peak_fraction_min": f"{min(r['peak_fraction'] for r in rows):.2f}",
        "tis_bf16_speedup_min": f"{min(r['ours_ms'] / r['bf16_ms'] for r in fast):.2f}",
        "tis_bf16_top5_min": f"{min(r['bf16_top5'] for r in fast):.3f}",
        "tis_seed_top5_min": f"{min(r['seed_top5'] for r in fast):.3f}",
    }
    keys |= {f"tis_rv_top5_{d}_{ns}": f"{curve[d, ns]:.3f}" for d in RV_DRAWS for ns in (NSAMPLES,)}
    keys |= {"tis_f16_images_per_s": f"{big['images_per_s']:.2f}", "tis_f16_peak_mb": f"{big['peak_mb']:.0f}"}
    print(" ".join(f"{k}={v}" for k, v in keys.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
