"""Which environment variable changes the CPU kernels (and so the last bits) of what the pipeline computes?

torch 2.14 on x86 draws on three kernel libraries, each with its own instruction-set switch:

* ``ATEN_CPU_CAPABILITY`` (``default`` | ``avx2`` | ``avx512``): ATen's own vectorised kernels (element-wise
  ops, reductions, softmax, BatchNorm, pooling, ...); ``torch.backends.cpu.get_cpu_capability()`` reports it;
* ``ONEDNN_MAX_CPU_ISA`` (``AVX2``, ``AVX512_CORE``, ...): oneDNN, which runs float32 ``conv2d`` on CPU;
* ``MKL_ENABLE_INSTRUCTIONS`` (``AVX2``, ``AVX512``, ...): MKL, which runs float32 matrix products
  (``Linear``).

For each setting a fresh subprocess (one thread, so only the instruction set differs) loads the shipped VQ
codebook (``checkpoints/vq_mnist``) and IEMs (``checkpoints/iem1`` ... ``iem4``), builds a fixed batch of
token grids (random ids from seed 0) as ``codebook[ids]`` embeddings, and computes the IEM logits, the batched
SmoothGrad gradients (``tis.smoothgrad``) and the TIS (``tis.dataset_tis``) of IEM 1, and the VQ
decoder's images of the same grids. Each library's own report of the instruction set it picked is read from
its verbose output (``ONEDNN_VERBOSE``, ``MKL_VERBOSE``). The outputs are compared with the unrestricted run:
a setting "changes kernels" when any output differs in any bit. The unrestricted run is repeated once: it
must match itself bit for bit, so the differences come from the instruction set, not from the run.

Measured here (Xeon with AVX-512 and AMX, torch 2.14.1): each of the three variables alone changes the IEM
logits (by ~3e-6 to 1e-5 on logits up to ~8) and the decoded pixels (~1e-6), and
``ATEN_CPU_CAPABILITY=default`` also changes ``torch.randn``'s numbers (its vectorised normal sampler), i.e.
SmoothGrad's noise. The SmoothGrad gradients of these ReLU / max-pool networks are piecewise constant in the
input, so they mostly stay bit-identical; where a ReLU or max-pool switch flips in one noisy copy, a few TIS
scores jump by ~4e-4 (of scores up to ~0.23). Such jumps, not the last bits, are what can move a top-n
position and the metrics counted from it.

``make verify-isa`` emulates a machine one level below this one: all three variables one level below the
machine's ATen capability (AVX-512 -> ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2``; AVX2 -> ``default`` / ``SSE41`` / ``SSE4_2``), since on this Xeon (AVX-512,
AMX) each of the three alone changes the outputs. ``--print-verify-setting`` prints that for the Makefile
without measuring anything; ``--describe`` prints the current process's capability and ISA variables (the
Makefile keeps it as the run's ``isa.txt``, which make_expected.py records).

Last line: isa_machine=<ATen capability> isa_setting=<the verify-isa setting> isa_changes_kernels=<0|1> and
isa_{logit,smoothgrad,tis,decode}_max_abs_diff=<x> for that setting, then isa_changes_<variable>_<value>=<0|1>
for each variable alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints"

# ATen capabilities from the widest down, and for each the caps of oneDNN and MKL that restrict those
# libraries to the same level (oneDNN has no "no SIMD" level: SSE4.1 / SSE4.2 is the floor of both).
LEVELS = {
    "avx512": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "default": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    },
}
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def level_below(capability: str) -> str:
    """The next ATen level below ``capability`` (``default`` stays ``default``: nothing lies below it)."""
    order = list(LEVELS)
    capability = capability.lower()
    return order[min(order.index(capability) + 1, len(order) - 1)] if capability in order else "default"


def settings_for(capability: str) -> list[tuple]:
    """Each variable alone at the level below the machine's, ATen also at ``default``, then all of them."""
    below = LEVELS[level_below(capability)]
    out = [(), *(((k, v),) for k, v in below.items())]
    if below["ATEN_CPU_CAPABILITY"] != "default":
        out.append((("ATEN_CPU_CAPABILITY", "default"),))
    out.append(tuple(below.items()))
    return out


def machine_capability() -> str:
    """ATen's capability in a fresh process without any of the ISA variables (this process may have them)."""
    env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES}
    return subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def label(setting) -> str:
    return ",".join(f"{k}={v}" for k, v in setting) or "unrestricted"


# --- the worker: runs in a subprocess under one setting --------------------------------------------------


def worker(out: str, n_images: int = 64, seed: int = 0) -> None:
    import numpy as np
    import torch

    from cortex_run import tokenizers
    from cortex_run.checkpoints import load_iem, read_card
    from cortex_utils import tis as tislib
    from cortex_utils import vq as vqlib

    torch.set_num_threads(1)
    card = read_card(CKPT / "vq_mnist.safetensors")
    vq = tokenizers.load_vq(card["config"], CKPT / "vq_mnist.safetensors")
    codebook = vqlib.codebook(vq)
    h, w = vqlib.grid_shape(vq)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(codebook), (n_images, h, w), generator=g)
    x = vqlib.embed(codebook, ids)
    target = torch.arange(n_images) % 10
    results = {"capability": torch.backends.cpu.get_cpu_capability()}
    arrays = {}
    with torch.no_grad():
        for arch in (1, 2, 3, 4):
            model = load_iem(CKPT / f"iem{arch}.safetensors")
            arrays[f"logits_iem{arch}"] = model(x).numpy()
    model = load_iem(CKPT / "iem1.safetensors")
    arrays["smoothgrad"] = tislib.smoothgrad(model, x, target, tislib.Noise(20, 0.2), seed).numpy()
    loader = [
        (x[i : i + 32], target[i : i + 32], torch.arange(i, min(i + 32, n_images)))
        for i in range(0, n_images, 32)
    ]
    arrays["tis"] = tislib.dataset_tis(
        model, loader, n_images, desc="", noise=tislib.Noise(20, 0.2), seed=seed
    )
    arrays["decode"] = vqlib.decode(vq, ids[:16]).numpy()
    np.savez(out, **arrays)
    Path(out).with_suffix(".json").write_text(json.dumps(results))


# --- the driver ------------------------------------------------------------------------------------------


def run_setting(setting, tmp: Path) -> dict:
    import numpy as np

    env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES}
    env.update(dict(setting))
    env.update(ONEDNN_VERBOSE="1", MKL_VERBOSE="1", OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    out = tmp / f"{len(list(tmp.glob('*.npz')))}.npz"
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", str(out)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker under {label(setting)} failed:\n{proc.stderr[-3000:]}")
    log = proc.stdout + proc.stderr
    onednn = re.search(r"onednn_verbose,[^\n]*info,cpu,isa:([^\n]*)", log)
    mkl = re.search(r"MKL_VERBOSE oneMKL [^\n]*? architecture ([^\n]*?), Lnx", log)
    return {
        "capability": json.loads(out.with_suffix(".json").read_text())["capability"],
        "onednn_isa": _short(onednn.group(1)) if onednn else "(no oneDNN call)",
        "mkl_isa": _short(mkl.group(1)) if mkl else "(no MKL call)",
        "arrays": dict(np.load(out)),
    }


def _short(text: str) -> str:
    """A library's instruction-set sentence -> its widest vector ISA, plus AMX when it is on."""
    for name in ("AVX10", "AVX-512", "AVX512", "AVX2", "AVX", "SSE4"):
        if name in text:
            return name.replace("AVX512", "AVX-512") + (" + AMX" if "AMX" in text else "")
    return text[:24]


def max_abs(arrays: dict, prefix: str) -> float:
    return max(float(abs(v).max()) for k, v in arrays.items() if k.startswith(prefix))


def max_abs_diff(a: dict, b: dict, prefix: str) -> float:
    return max(
        float(abs(a[k].astype("float64") - b[k].astype("float64")).max()) for k in a if k.startswith(prefix)
    )


OUTPUTS = {"logit": "logits_", "smoothgrad": "smoothgrad", "tis": "tis", "decode": "decode"}


def compare(ref: dict, other: dict) -> dict:
    return {name: max_abs_diff(other["arrays"], ref["arrays"], prefix) for name, prefix in OUTPUTS.items()}


def verify_isa_setting(capability: str) -> str:
    """The env assignments ``make verify-isa`` uses: every library one level below the machine's ATen
    capability (here all three variables change the outputs; a variable that changes nothing does no harm)."""
    return " ".join(f"{k}={v}" for k, v in LEVELS[level_below(capability)].items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument(
        "--print-verify-setting",
        action="store_true",
        help="only print the env assignments `make verify-isa` uses on this machine (a second)",
    )
    ap.add_argument(
        "--describe",
        action="store_true",
        help="only print this process's ATen capability and ISA variables (for a run's isa.txt)",
    )
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if args.describe:
        import torch

        isa_vars = " ".join(f"{k}={os.environ[k]}" for k in ISA_VARIABLES if k in os.environ)
        print(
            f"ATen {torch.backends.cpu.get_cpu_capability()}; {isa_vars or 'no ISA variable set'}; "
            f"torch {torch.__version__}"
        )
        return 0
    machine = machine_capability()
    chosen = verify_isa_setting(machine)
    if args.print_verify_setting:
        print(chosen)
        return 0
    settings = settings_for(machine)
    with tempfile.TemporaryDirectory(prefix="isa_kernels.") as tmp:
        runs = {label(s): run_setting(s, Path(tmp)) for s in settings}
        repeat = compare(runs["unrestricted"], run_setting((), Path(tmp)))
    ref = runs["unrestricted"]
    diffs = {name: compare(ref, r) for name, r in runs.items() if name != "unrestricted"}
    print(
        f"one thread; outputs compared with the unrestricted run (machine: ATen {machine}); "
        f"largest |value| of the reference: "
        + ", ".join(f"{n} {max_abs(ref['arrays'], p):.3g}" for n, p in OUTPUTS.items())
    )
    print(
        f"{'setting':<80} {'ATen':>8} {'oneDNN':>14} {'MKL':>14}   max |diff|: logits / SmoothGrad / TIS / "
        "decoded"
    )
    for name, r in runs.items():
        d = diffs.get(name)
        ds = "(reference)" if d is None else " / ".join(f"{d[k]:.2e}" for k in OUTPUTS)
        print(f"{name:<80} {r['capability']:>8} {r['onednn_isa']:>14} {r['mkl_isa']:>14}   {ds}")
    print(
        "unrestricted, run again: max |diff| "
        + " / ".join(f"{repeat[k]:.2e}" for k in OUTPUTS)
        + (
            " (bit-identical)"
            if not any(repeat.values())
            else " (NOT deterministic: the diffs above are unreliable)"
        )
    )
    verdicts = []
    for s in settings:
        if len(s) == 1:
            ch = any(v > 0 for v in diffs[label(s)].values())
            verdicts.append(f"isa_changes_{s[0][0].lower()}_{s[0][1].lower()}={int(ch)}")
            print(f"{label(s)}: {'changes' if ch else 'does NOT change'} the outputs here")
    d = diffs[label(tuple(LEVELS[level_below(machine)].items()))]
    if level_below(machine) == machine.lower():
        print(f"NOTE: ATen reports {machine}, the lowest level: nothing below it to compare with")
    print(f"make verify-isa uses: {chosen}")
    print(
        f"isa_machine={machine} isa_setting={chosen.replace(' ', ',')} "
        f"isa_changes_kernels={int(any(v > 0 for v in d.values()))} "
        f"isa_repeat_max_abs_diff={max(repeat.values()):.2e} "
        + " ".join(f"isa_{k}_max_abs_diff={v:.2e}" for k, v in d.items())
        + " "
        + " ".join(verdicts)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
