"""TIS throughput with 1 vs 2 torchrun processes on this machine, and whether the scores are identical.

Workload: the default IEM (architecture 1, ``checkpoints/iem1``) on the val and test splits of the default
run's generated dataset (``runs/final``: 500 + 500 images, 8x8 grids of 32-dim embeddings), SmoothGrad with
20 noisy copies, batches of 100. Both jobs get the same cores: 1 process x 2 threads vs 2 processes x 1
thread (gloo). Reported: the sharded work's wall time on rank 0 (after start-up: the throughput figure)
and the whole job's wall time (with ``torchrun`` and the imports of every process). The scores of both
jobs are compared with one in-process ``tis.dataset_tis`` run (``np.array_equal``).

Last line: ddp_equal=<0|1> ddp_speedup=<x>   (speedup of the sharded work, 2 processes vs 1)
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cortex_run import REPO_ROOT
from cortex_run import datasets as tokds
from cortex_run import distributed as D
from cortex_run.checkpoints import load_iem
from cortex_utils import tis as tislib


def main(run_dir="runs/final", splits=("val", "test"), batch_size=100, nsamples=20):
    run_dir = (REPO_ROOT / run_dir).resolve()
    if not (run_dir / "registry.json").exists():
        sys.exit(f"error: no run at {run_dir}: run `python -m cortex_run.pipeline --run-dir {run_dir}` first")
    iem = REPO_ROOT / "checkpoints" / "iem1.safetensors"
    opts = dict(run_dir=run_dir, iem=iem, splits=list(splits), batch_size=batch_size, nsamples=nsamples)
    a = argparse.Namespace(
        run_dir=run_dir, dataset=None, vq_checkpoint=None, vq_config=None, trust_pickle=False
    )
    ds, cb = D.resolve_inputs(a)
    n = sum(len(ds.labels[s]) for s in splits)
    cores = os.cpu_count() or 1

    torch.set_num_threads(cores)
    model = load_iem(iem)
    t0 = time.perf_counter()
    ref = {
        s: tislib.dataset_tis(
            model,
            tokds.embedding_loader(ds, s, cb, batch_size=batch_size),
            len(ds.labels[s]),
            noise=tislib.Noise(nsamples),
        )
        for s in splits
    }
    t_inproc = time.perf_counter() - t0

    results, equal = {}, True
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            out_dir = Path(tmp) / f"n{nproc}"
            job = D.launch("tis", nproc=nproc, threads=max(1, cores // nproc), out_dir=out_dir, **opts)
            work = next(i["seconds"] for i in job["info"] if i["rank"] == 0)
            same = all(np.array_equal(np.load(out_dir / f"{s}.npy"), ref[s]) for s in splits)
            equal &= same
            results[nproc] = (work, job["seconds"])
            print(
                f"{nproc} process(es) x {max(1, cores // nproc)} thread(s): sharded work {work:.2f} s "
                f"({n / work:.0f} images/s), whole job {job['seconds']:.1f} s ({n / job['seconds']:.0f} "
                f"images/s), identical to one process: {same}"
            )
    print(
        f"in-process dataset_tis, {cores} threads: {t_inproc:.2f} s ({n / t_inproc:.0f} images/s) for {n} "
        "images"
    )
    speedup = results[1][0] / results[2][0]
    print(
        f"speed-up 2 vs 1 process: sharded work {speedup:.2f}x, whole job "
        f"{results[1][1] / results[2][1]:.2f}x; {cores} cores"
    )
    print(
        f"ddp_equal={int(equal)} ddp_speedup={speedup:.2f} ddp_images_per_s_1={n / results[1][0]:.0f} "
        f"ddp_images_per_s_2={n / results[2][0]:.0f}"
    )


if __name__ == "__main__":
    main()
