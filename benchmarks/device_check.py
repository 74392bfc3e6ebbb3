"""Does the tutorial compute the same on a GPU as on the CPU, and how much faster: the smoke preset on the
device and on the CPU, compared key by key, and the real-shape preset on the device.

    python benchmarks/device_check.py [--device cuda] [--keep] [--real-shape | --no-real-shape]
        [--preset smoke]

For the device (``--device``, default ``cuda``; any name ``cortex_run.device.resolve`` takes) and for ``cpu``:
``python -m cortex_run.pipeline --preset smoke --run-dir <dir> -p device <device> --jobs 1`` into
runs/device-check/smoke-cpu and runs/device-check/smoke-on-<device>, each timed (wall time of the whole
pipeline process, notebook kernels' start-up included; its output goes to a .log beside the run directory).
The two runs' metrics.json are compared on the headline keys:
every key docs/expected_metrics.json checks (``checked``) that the CPU run records, the device run's value
against the CPU run's within that key's tolerance, by ``verify_expected.check_key`` (the ``device`` key
itself, which differs by design, is left out); a key the CPU run records and the device run lacks is off.
Then, with ``--real-shape`` (the default), ``--preset real-shape -p device <device>`` (the published VQGAN
f16-16384 shape, random weights; notebooks/18_real_shape) and its figures read from its metrics.json. The
run directories are deleted afterwards unless ``--keep``.

The smoke preset retrains every model for a few steps on a few images, so a flip of one near-tied value
moves a key by one image of a few dozen, more than the floors of the default run's tolerances allow:
``--preset default`` (shipped models, nothing trained; the run the tolerances were made for) is the stricter
comparison. The smoke run's wall time is mostly kernel start-up; the real-shape figures are the speed figures.

On a machine without the device it says so, runs the CPU half only and exits 0. Exit 1 when a run fails or a
key is off, else 0.

Last line: device=<resolved device> device_equal=<0|1> device_speedup=<cpu time / device time>
smoke_cpu_seconds=<x> smoke_device_seconds=<x> keys_compared=<n> keys_off=<n>
realshape_tis_images_per_s=<x> realshape_iem_step_seconds=<x> realshape_peak_mb=<x> realshape_paper_hours=<x>
-- or, without the device: device=cpu <kind>=absent not_run=<what could not run> smoke_cpu_seconds=<x>
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import verify_expected  # this directory (the script's own): the expected file's check of one key

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "device-check"
REALSHAPE_KEYS = (
    "realshape_tis_images_per_s",
    "realshape_iem_step_seconds",
    "realshape_peak_mb",
    "realshape_paper_hours",
)
NOT_COMPARED = ("device",)  # recorded by every run, different by design


def compare(cpu: dict, device: dict, checked: dict) -> tuple[list[str], int, int]:
    """(one line per key off, keys compared, keys off): every key of ``checked`` (an expected file's
    ``{key: {"value", "tolerance", ...}}``) that the CPU run's metrics ``cpu`` hold, the device run's value
    within the key's tolerance of the CPU run's; a key the device run lacks is off."""
    lines, n, off = [], 0, 0
    for key, entry in checked.items():
        if key in NOT_COMPARED or key not in cpu:
            continue
        n += 1
        tol = {"value": cpu[key], "tolerance": entry.get("tolerance", 0), "kind": entry.get("kind")}
        if key not in device:
            off += 1
            lines.append(f"MISSING {key}: the CPU run has {cpu[key]!r}, the device run does not record it")
            continue
        ok, how = verify_expected.check_key(tol, device[key])
        if not ok:
            off += 1
            lines.append(
                f"OFF     {key}: cpu {cpu[key]!r}, device {device[key]!r} ({how}), tolerance "
                f"{verify_expected.fmt_tol(tol)}"
            )
    return lines, n, off


def device_kind(name: str) -> str:
    """``"cuda"`` for ``"cuda:1"``, the name itself otherwise (for the messages and the last line)."""
    return name.split(":")[0]


def available(name: str) -> tuple[str | None, str]:
    """(the resolved device, "") if this machine has ``name``, else (None, why not)."""
    from cortex_run.device import resolve  # deferred: imports torch

    try:
        return resolve(name), ""
    except ValueError as err:
        return None, str(err)


def run_pipeline(preset: str, device: str, run_dir: Path) -> tuple[float | None, dict, str]:
    """(wall seconds or None if it failed, its metrics.json, the log path) of one pipeline run on ``device``,
    into a fresh ``run_dir``."""
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.json is merged into, never replaced: start afresh
    log = run_dir.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cortex_run.pipeline", "--preset", preset, "--run-dir", str(run_dir)]
    cmd += ["-p", "device", device, "--jobs", "1"]
    print(f"running {' '.join(cmd[1:])} (log: {log.relative_to(ROOT)}) ...", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-8:]
        print(f"FAILED ({rc}) after {seconds:.1f} s:\n  " + "\n  ".join(tail), flush=True)
        return None, metrics, str(log)
    print(f"  done in {seconds:.1f} s (device recorded: {metrics.get('device', 'none')})", flush=True)
    return seconds, metrics, str(log)


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="the device to compare with the CPU (%(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories (runs/device-check/)")
    ap.add_argument(
        "--real-shape",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run --preset real-shape on the device (default: yes)",
    )
    ap.add_argument("--preset", default="smoke", help="the preset both devices run (%(default)s)")
    ap.add_argument(
        "--expected", default=str(verify_expected.DEFAULT_EXPECTED), help="the tolerances (%(default)s)"
    )
    args = ap.parse_args(argv)
    checked = json.loads(Path(args.expected).read_text())["checked"]
    kind = device_kind(args.device)
    resolved, why = available(args.device)
    if resolved is None:
        print(f"no {args.device} here: {why}; running the CPU half only")
    slug, name = (resolved or "cpu").replace(":", ""), Path(args.preset).stem  # the preset: a name or a path
    dirs = {"cpu": RUNS / f"{name}-cpu"}
    if resolved is not None:
        dirs["device"] = RUNS / f"{name}-on-{slug}"  # apart from the CPU run even for --device cpu
        if args.real_shape:
            dirs["real_shape"] = RUNS / f"real-shape-{slug}"
    failed, status = False, 0
    try:
        cpu_s, cpu_m, _ = run_pipeline(args.preset, "cpu", dirs["cpu"])
        failed |= cpu_s is None
        if resolved is None:
            not_run = [f"{kind}_{name}", "comparison", "speedup"]
            not_run += [f"real_shape_{kind}"] if args.real_shape else []
            cpu_txt = f"{cpu_s:.1f}" if cpu_s is not None else "failed"
            print(f"device=cpu {kind}=absent not_run={','.join(not_run)} {name}_cpu_seconds={cpu_txt}")
            return 1 if failed else 0
        dev_s, dev_m, _ = run_pipeline(args.preset, args.device, dirs["device"])
        failed |= dev_s is None
        fields = [f"device={resolved}"]
        if cpu_s is not None and dev_s is not None:
            lines, n, off = compare(cpu_m, dev_m, checked)
            for line in lines:
                print(line)
            print(f"{n - off} of {n} headline keys of the {name} runs within tolerance of each other")
            status = 1 if off else 0
            fields += [f"device_equal={int(not off)}", f"device_speedup={cpu_s / dev_s:.2f}"]
            fields += [f"{name}_cpu_seconds={cpu_s:.1f}", f"{name}_device_seconds={dev_s:.1f}"]
            fields += [f"keys_compared={n}", f"keys_off={off}"]
        else:
            fields += ["device_equal=failed", "device_speedup=failed"]
        if args.real_shape:
            rs_s, rs_m, _ = run_pipeline("real-shape", args.device, dirs["real_shape"])
            failed |= rs_s is None
            for key in sorted(k for k in rs_m if k.startswith("realshape_")):
                print(f"  {key}: {fmt(rs_m[key])}")
            fields += [f"{k}={fmt(rs_m[k]) if k in rs_m else 'missing'}" for k in REALSHAPE_KEYS]
        print(" ".join(fields))
        return 1 if failed else status
    finally:
        if not args.keep:
            for d in dirs.values():
                shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
