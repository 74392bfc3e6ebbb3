"""Many processes, GPUs and machines with PyTorch's own engine (``torchrun`` / ``torch.distributed``).
The same functions run in one process (rank 0 of 1)::

    torchrun --standalone --nproc-per-node 2 -m cortex_run.distributed tis --run-dir runs/final --iem-arch 1
    torchrun --standalone --nproc-per-node 2 -m cortex_run.distributed train-iem --run-dir runs/final \\
        --arch 1 --out runs/final/iem/iem1_ddp.safetensors

TIS shards are batch-aligned row ranges (a batch's noise depends on the batch, so the scores are exactly one
process's), each kept once written: a failed job resumes. IEM training is ``iem.train_iem`` in
``DistributedDataParallel`` (docs/scaling.md). ``launch`` runs a job from a notebook and names a failed rank.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib
from cortex_utils.progress import tqdm

from . import REPO_ROOT, passes, tokenizers
from . import datasets as tokds
from .artifacts import atomic_path, registered
from .checkpoints import dataset_spec, load_iem, read_card, save_iem

COMMANDS = ("train-iem", "tis")
PROGRESS, INFO, FAILED = "CORTEX_PROGRESS ", "CORTEX_INFO ", "CORTEX_FAILED "


def rank() -> int:
    """This process's global rank: from the process group, else ``RANK`` (torchrun), else 0."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init(backend: str | None = None) -> torch.device:
    """This rank's device, after joining torchrun's process group (NCCL with CUDA, else gloo), if any."""
    device = torch.device(f"cuda:{local_rank()}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return device


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard_ranges(n_rows: int, n_shards: int, batch_size: int = 1) -> list[tuple[int, int]]:
    """``n_shards`` contiguous ``(start, stop)`` row ranges of whole batches (the last may end in a partial
    one) covering ``n_rows``, as even as possible."""
    if n_rows < 1 or n_shards < 1 or batch_size < 1:
        raise ValueError(f"need n_rows, n_shards, batch_size >= 1, got {n_rows}, {n_shards}, {batch_size}")
    n_batches = math.ceil(n_rows / batch_size)
    if n_shards > n_batches:
        raise ValueError(
            f"{n_shards} shards for {n_rows} rows in batches of {batch_size}: there are only {n_batches} "
            f"batch(es), so at most {n_batches} shards (processes); use fewer processes or smaller batches"
        )
    cuts = [min(n_rows, (i * n_batches // n_shards) * batch_size) for i in range(n_shards + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def shards_of_rank(n_shards: int, rank_: int, world: int) -> list[int]:
    """The shards rank ``rank_`` of ``world`` computes: ``rank_, rank_ + world, ...``."""
    if world > n_shards:
        raise ValueError(
            f"world size {world} is larger than the number of shards ({n_shards}): "
            f"{world - n_shards} process(es) would have nothing to do; use at most {n_shards} processes"
        )
    if not 0 <= rank_ < world:
        raise ValueError(f"rank {rank_} outside [0, {world})")
    return list(range(rank_, n_shards, world))


def check_world(n_rows: int, batch_size: int, world: int, shards: int = 0) -> None:
    """Raise, before a launch, if ``world`` processes cannot share ``n_rows`` rows in batches."""
    shard_ranges(n_rows, shards or world, batch_size)
    shards_of_rank(shards or world, 0, world)


# --- progress lines (parsed by launch) ----------------------------------------------------------------------
def _emit(prefix: str, **payload) -> None:
    # one write per line (below the pipe's atomic size): the ranks' lines do not interleave
    sys.stdout.write(prefix + json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


_MESSAGE = re.compile(r"CORTEX_(PROGRESS|INFO|FAILED) ")


def _messages(line: str):
    """``(kind, payload)`` for every message in an output line; the rest of the line as ``("text", str)``."""
    pos, text = 0, ""
    for m in _MESSAGE.finditer(line):
        if m.start() < pos:  # inside a message's payload
            continue
        try:
            payload, end = json.JSONDecoder().raw_decode(line, m.end())
        except json.JSONDecodeError:
            break
        text, pos = text + line[pos : m.start()], end
        yield m.group(1), payload
    if (text + line[pos:]).strip():
        yield "text", text + line[pos:]


def report(task: str, done: int, total: int) -> None:
    """A progress line for ``launch`` (when launched by it): this rank's ``done`` of ``total`` over all."""
    if os.environ.get("CORTEX_PROGRESS_LINES"):
        _emit(PROGRESS, task=task, rank=rank(), done=int(done), total=int(total))


class Reporting:
    """A loader that reports every batch it yields (``report``), with its ``sampler``."""

    def __init__(self, loader, task: str, total: int, start: int = 0, count=len):
        self.loader, self.task, self.total, self.done, self.count = loader, task, total, start, count
        self.sampler = getattr(loader, "sampler", None)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            self.done += self.count(batch)
            report(self.task, self.done, self.total)


# --- the commands (run on every rank) -----------------------------------------------------------------------
def resolve_inputs(a) -> tuple:
    """``(dataset, codebook)`` as a notebook has them: ``--dataset`` or the run's, loaded with the tokenizer
    its ids refer to (``--vq-checkpoint``, else the run's; another codebook's dataset is refused)."""
    path = a.dataset or (registered(a.run_dir, "dataset")["path"] if a.run_dir else None)
    if not path:
        raise ValueError("give --run-dir, or --dataset with --vq-checkpoint")
    if a.vq_checkpoint:
        config = a.vq_config or read_card(a.vq_checkpoint)["config"]
        vq = tokenizers.load_vq(config, a.vq_checkpoint, trust_pickle=a.trust_pickle)
    elif a.run_dir:
        vq = tokenizers.load_run_vq(a.run_dir)
    else:
        raise ValueError("give --run-dir, or --vq-checkpoint (the tokenizer the dataset's ids refer to)")
    return tokds.load_token_dataset(path, vq=vq), vqlib.codebook(vq)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def cmd_tis(a, device, ds, codebook) -> None:
    """SmoothGrad TIS of each split, a ``tis.dataset_tis`` per shard; rank 0 merges into ``<split>.npy``."""
    iem_path = a.iem or registered(a.run_dir, f"iem{a.iem_arch}")["checkpoint"]
    model = load_iem(iem_path, expect=dataset_spec(ds)).to(device).eval()
    one = codebook.to(device)[torch.zeros(1, *ds.grid, dtype=torch.long, device=device)].permute(0, 3, 1, 2)
    noise, per_pass = tislib.Noise(a.nsamples, a.spread), passes.rows_per_pass(model, one)
    out_dir = Path(a.out_dir or Path(a.run_dir) / "tis" / f"iem{a.iem_arch}_{a.reduction}")
    r, w = rank(), world_size()
    barrier()
    t0 = time.perf_counter()  # after start-up and loading: the sharded work and the merge
    for split in a.splits:
        n, n_shards = len(ds.labels[split]), a.shards or w
        ranges, mine = shard_ranges(n, n_shards, a.batch_size), shards_of_rank(n_shards, r, w)
        settings = [_sha(Path(iem_path).read_bytes()), ds.manifest["vq_fingerprint"], split, n, a.nsamples]
        key = _sha(json.dumps([*settings, a.spread, a.reduction, a.seed, a.batch_size]).encode())
        files = [out_dir / "shards" / key / f"{split}.{s0:09d}-{s1:09d}.npy" for s0, s1 in ranges]
        done = sum(ranges[s][1] - ranges[s][0] for s in mine if files[s].exists())
        report(f"TIS {split}", done, n)
        for s in (s for s in mine if not files[s].exists()):  # a finished shard is kept from an earlier job
            partial = files[s].with_name(files[s].stem + ".partial.npy")
            rows = tokds.embedding_loader(ds, split, codebook, a.batch_size, rows=ranges[s], device=device)
            loader = Reporting(rows, f"TIS {split}", n, start=done, count=lambda batch: len(batch[2]))
            desc = f"TIS {split} rank {r} rows {ranges[s][0]}-{ranges[s][1]}"
            options = {"noise": noise, "seed": a.seed, "batch": per_pass}
            tislib.dataset_tis(model, loader, ranges[s], "smoothgrad", a.reduction, partial, desc, **options)
            os.replace(partial, files[s])
            done = loader.done
        barrier()
        if r == 0:  # the shards' rows, in order, into <out_dir>/<split>.npy
            with atomic_path(out_dir / f"{split}.npy") as tmp:
                np.save(tmp, np.concatenate([np.load(f) for f in files]))
            for f in files:
                f.unlink()
        barrier()
    if r == 0:
        info = {"out_dir": str(out_dir), "splits": a.splits, "shards": a.shards or w, "world_size": w}
        _emit(INFO, rank=r, seconds=time.perf_counter() - t0, **info)


def cmd_train_iem(a, device, ds, codebook) -> None:
    """``iem.train_iem`` under DDP; rank 0 saves the best-validation weights and the log."""
    r, w = rank(), world_size()
    split_batch = bool(a.sync_bn and device.type == "cuda")  # else each rank's BatchNorm sees batch_size
    if split_batch and a.batch_size % w:
        raise ValueError(f"--sync-bn splits the batch size {a.batch_size} over {w} ranks: not divisible")
    per_rank = a.batch_size // w if split_batch else a.batch_size
    torch.manual_seed(a.seed)  # the notebook's initialisation; DDP also broadcasts rank 0's weights
    spec = dataset_spec(ds)
    model = iemlib.build_iem(a.arch, spec["in_channels"], ds.grid, spec["n_classes"], a.width).to(device)
    if split_batch:  # SyncBatchNorm is CUDA-only in training
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model
    if w > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        net.cortex_spec = model.cortex_spec
    sampler = DistributedSampler(range(len(ds.labels["train"])), num_replicas=w, rank=r, seed=a.seed)
    train = tokds.embedding_loader(ds, "train", codebook, per_rank, sampler=sampler, device=device)
    train = Reporting(train, f"train IEM {a.arch}", a.epochs * len(train) * w, count=lambda batch: 1)
    val_rows = shard_ranges(len(ds.labels["val"]), w)[r]  # this rank's share of the validation split
    val = tokds.embedding_loader(ds, "val", codebook, a.eval_batch_size, rows=val_rows, device=device)

    def evaluate(_):  # the model on this rank's share, the sums all-reduced
        if w > 1:
            for b in model.buffers():  # BatchNorm statistics: rank 0's, so all ranks evaluate one model
                dist.broadcast(b, 0)
        model.eval()
        ks = (1, 3, 5, 10)
        sums = torch.zeros(2 + len(ks), dtype=torch.float64, device=device)
        with torch.no_grad():
            for x, y, _ in val:
                logits = model(x)
                ranks = logits.argsort(1, descending=True)
                sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
                sums[1] += len(y)
                for j, k in enumerate(ks):
                    sums[2 + j] += (ranks[:, : min(k, logits.shape[1])] == y[:, None]).any(1).sum()
        if w > 1:
            dist.all_reduce(sums)
        tops = (sums[2:] / sums[1]).tolist()
        return {"loss": (sums[0] / sums[1]).item()} | {f"top{k}": v for k, v in zip(ks, tops, strict=True)}

    step_size = a.lr_step or max(1, a.epochs // 2)
    training = iemlib.Training(a.epochs, a.lr, a.weight_decay, step_size, a.lr_gamma)
    log_csv, desc = a.log_csv if r == 0 else None, f"IEM {a.arch} rank {r}"
    log, _ = iemlib.train_iem(net, train, None, training, log_csv=log_csv, desc=desc, evaluate=evaluate)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = _sha(b"".join(v.contiguous().numpy().tobytes() for v in state.values()))
    _emit(INFO, rank=r, state_sha=digest, rows_per_epoch=len(sampler))
    if r == 0:
        best = log.loc[log["val_loss"].idxmin()]
        keys = ("epochs", "batch_size", "lr", "weight_decay", "lr_gamma", "width", "seed")
        recipe = {k: getattr(a, k) for k in keys} | {"lr_step": step_size, "nproc": w}
        backend = dist.get_backend() if dist.is_initialized() else None
        ddp = {"world_size": w, "backend": backend, "per_rank_batch": per_rank, "global_batch": per_rank * w}
        card = {"kind": "iem", "dataset": str(ds.path), "vq_fingerprint": ds.manifest["vq_fingerprint"]}
        card |= {"training": recipe, "distributed": ddp | {"sync_bn": split_batch}}
        card["log"] = log.to_dict("records")
        card["metrics"] = {
            "best_val_loss": float(best["val_loss"]),
            "val_acc_at_best": float(best["val_acc"]),
        }
        save_iem(model.cpu(), a.out, card=card)
    barrier()


# --- command line -------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cortex_run.distributed", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name, help):
        p = sub.add_parser(name, help=help)
        p.add_argument("--run-dir", help="a run directory: dataset, tokenizer and models from its registry")
        p.add_argument("--dataset", help="token dataset folder (overrides the run directory's)")
        p.add_argument("--vq-checkpoint", help="the tokenizer the dataset's ids refer to")
        p.add_argument("--vq-config", help="its config (a taming YAML); default: the checkpoint's card")
        p.add_argument("--trust-pickle", action="store_true", help="unpickle a .ckpt (only files you trust)")
        p.add_argument("--shards", type=int, default=0, help="shards per split (default: the world size)")
        p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: cores / local)")
        p.add_argument("--backend", help="process-group backend (default: nccl with CUDA, else gloo)")
        p.add_argument("--seed", type=int, default=0)
        return p

    p = command("tis", "token importance scores (SmoothGrad), sharded")
    p.add_argument("--iem", help="IEM checkpoint (default: the run's iem<arch>)")
    p.add_argument("--iem-arch", type=int, default=1)
    p.add_argument("--out-dir", help="default: <run-dir>/tis/iem<arch>_<reduction>")
    p.add_argument("--splits", nargs="+", default=["train", "test"])
    p.add_argument("--nsamples", type=int, default=20)
    p.add_argument("--spread", type=float, default=0.2)
    p.add_argument("--reduction", default="max", choices=["max", "mean"])
    p.add_argument("--batch-size", type=int, default=100)

    p = command("train-iem", "train an IEM with DistributedDataParallel")
    p.add_argument("--arch", type=int, default=1)
    p.add_argument("--out", required=True, help="where rank 0 saves the weights (.safetensors, with a card)")
    p.add_argument("--log-csv")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128, help="per process (global: world size x this)")
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--weight-decay", type=float, default=0.0001)
    p.add_argument("--lr-step", type=int, default=9)
    p.add_argument("--lr-gamma", type=float, default=0.1)
    p.add_argument("--sync-bn", action="store_true", help="GPUs: SyncBatchNorm, the batch split over ranks")
    return ap


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(a.threads or max(1, (os.cpu_count() or 1) // local_world))
    try:
        device = init(a.backend)
        {"tis": cmd_tis, "train-iem": cmd_train_iem}[a.command](a, device, *resolve_inputs(a))
    except Exception as err:
        _emit(FAILED, rank=rank(), error=f"{type(err).__name__}: {err}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


# --- the launcher (what a notebook calls) -------------------------------------------------------------------
class DistributedJobError(RuntimeError):
    def __init__(self, message: str, ranks: list[int]):
        super().__init__(message)
        self.ranks = ranks


def _cli_options(options: dict) -> list[str]:
    """``{"iem_arch": 1, "splits": ["a"], "sync_bn": True}`` -> ``--iem-arch 1 --splits a --sync-bn``."""
    out = []
    for k, v in options.items():
        if v is not None and v is not False:
            values = [] if v is True else v if isinstance(v, list | tuple) else [v]
            out += ["--" + k.replace("_", "-"), *map(str, values)]
    return out


def torchrun_command(command: str, nproc: int = 1, nnodes: int = 1, rdzv_endpoint=None, **options) -> list:
    """The ``python -m torch.distributed.run ...`` argv for one machine, or this one's part of an ``nnodes``
    job (c10d at ``rdzv_endpoint``, host:port); ``options``: ``node_rank``, ``rdzv_id``, the job's flags."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; choose one of {COMMANDS}")
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"nproc and nnodes must be >= 1, got {nproc}, {nnodes}")
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--max-restarts=0"]
    node_rank, rdzv_id = options.pop("node_rank", None), options.pop("rdzv_id", "cortex")
    if nnodes == 1:
        argv.append("--standalone")
    elif not rdzv_endpoint:
        raise ValueError("several machines need rdzv_endpoint (host:port of a machine all can reach)")
    else:
        argv += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
        argv += [f"--rdzv-id={rdzv_id}"] + ([f"--node-rank={node_rank}"] if node_rank is not None else [])
    return argv + ["-m", "cortex_run.distributed", command, *_cli_options(options)]


def launch(command: str, nproc: int = 2, threads=None, env=None, quiet: bool = False, **options) -> dict:
    """Run ``torchrun_command(command, nproc, **options)`` and wait, with a tqdm bar per task; ``threads`` per
    process default to cores / ``nproc``. Returns ``{"seconds", "info": [per rank], "output": last lines}``;
    raises ``DistributedJobError`` naming the failed rank(s)."""
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    argv = torchrun_command(command, nproc=nproc, threads=threads, **options)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "CORTEX_PROGRESS_LINES": "1", "TQDM_DISABLE": "1"}
    full_env |= {"OMP_NUM_THREADS": str(threads), **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH")) if p)
    bars, progress, info, failed = {}, collections.defaultdict(dict), [], {}
    tail = collections.deque(maxlen=60)
    processes = nproc * options.get("nnodes", 1)
    t0 = time.perf_counter()
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "bufsize": 1}
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=full_env, **pipe)
    try:
        for line in proc.stdout:
            for kind, p in _messages(line.rstrip("\n")):
                if kind == "PROGRESS":
                    progress[p["task"]][p["rank"]] = p["done"]
                    if p["task"] not in bars:
                        desc = f"{p['task']} ({processes} processes)"
                        bars[p["task"]] = tqdm(total=p["total"], desc=desc, disable=quiet)
                    bars[p["task"]].update(sum(progress[p["task"]].values()) - bars[p["task"]].n)
                elif kind == "INFO":
                    info.append(p)
                elif kind == "FAILED":
                    failed.setdefault(int(p["rank"]), p["error"])
                    tail.append(f"rank {p['rank']}: {p['error']}")
                else:
                    tail.append(p)
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    finally:
        for bar in bars.values():
            bar.close()
    if rc != 0:
        text = "\n".join(tail)
        # the first rank to report its error is blamed (the others usually fail after it, in a collective with
        # a dead peer); else torchrun's "Root Cause", which orders by error-file times in whole seconds
        root = re.findall(r"Root Cause.*?rank\s*:\s*(\d+)", text, flags=re.S)
        ranks = [next(iter(failed))] if failed else sorted({int(x) for x in root})
        others = sorted(set(failed) - set(ranks))
        first = next(iter(failed.values()), "see the output below")
        named = ", ".join(map(str, ranks)) if ranks else "unknown (no rank reported an error)"
        also = f" (then rank(s) {', '.join(map(str, others))})" if others else ""
        raise DistributedJobError(
            f"distributed {command} failed on rank(s) {named}{also} (exit code {rc}): {first}\n"
            f"completed shards are kept; the same command resumes.\n--- last output ---\n{text}",
            ranks,
        )
    return {"seconds": time.perf_counter() - t0, "info": info, "output": list(tail)}


def tis_job(ds, splits, out_dir, nproc: int, batch_size: int = 100, **flags) -> dict:
    """``{split: (N, h, w)}`` TIS by ``launch("tis", ...)`` on ``nproc`` processes (exactly one process's
    ``tis.dataset_tis``), also in ``<out_dir>/<split>.npy``; ``flags``: the job's (``run_dir``, ...)."""
    for split in splits:
        check_world(len(ds.labels[split]), batch_size, nproc)
    launch("tis", nproc=nproc, out_dir=out_dir, splits=list(splits), batch_size=batch_size, **flags)
    return {split: np.load(Path(out_dir) / f"{split}.npy") for split in splits}


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
