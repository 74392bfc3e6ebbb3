"""Many processes, GPUs and machines with PyTorch's own engine (``torchrun`` / ``torch.distributed``).

Thin helpers, no framework. The same functions run in one process (no ``torchrun``: rank 0 of 1) and
under ``torchrun``, which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous::

    torchrun --standalone --nproc-per-node 2 -m cortex_run.distributed tis --run-dir runs/final --iem-arch 1
    torchrun --standalone --nproc-per-node 2 -m cortex_run.distributed train-iem --run-dir runs/final \\
        --arch 1 --out runs/final/iem/iem1_ddp.safetensors
    torchrun --standalone --nproc-per-node 2 -m cortex_run.distributed generate --run-dir runs/final \\
        --out runs/final/datasets/generated_ddp

* **Shards** are contiguous row ranges of a split, aligned to the batch size: a TIS batch's noise
  depends on the batch (its value range and first row), so the batches, and the scores, are exactly
  those of the single-process run. Shard ``s`` goes to rank ``s % world_size``; each rank writes its
  shard files atomically, rank 0 merges them after a barrier. A complete shard is never recomputed: a
  failed job keeps the finished shards and the re-run resumes (within a TIS shard, by batch).
* **IEM training** is ``iem.train_iem`` itself, with the model wrapped in ``DistributedDataParallel``
  and a ``DistributedSampler``. Each rank trains on batches of ``batch_size`` (global batch ``world x
  batch_size``, fewer steps per epoch): the IEMs' BatchNorm needs the single-process batch size to train
  as well (a 2-rank run with half batches lost 13 points on the test's task; SyncBatchNorm, which would
  keep the global batch, is CUDA-only). On GPUs ``--sync-bn`` splits ``batch_size`` over the ranks
  instead. Validation runs on each rank's share of the validation split and the sums are all-reduced, after
  BatchNorm's running statistics are broadcast from rank 0, so every rank holds the same weights and picks the
  same epoch.
* **Backend**: NCCL when CUDA is available (one GPU per process, ``LOCAL_RANK``), gloo on CPU.
* ``launch(...)`` runs ``python -m torch.distributed.run`` as a subprocess (what a notebook calls),
  shows the ranks' progress as tqdm bars and raises naming the failed rank(s).
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
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib
from cortex_utils.concepts import concept_counts, concept_table
from cortex_utils.progress import tqdm

from . import REPO_ROOT, tokenizers
from . import datasets as tokds
from .artifacts import atomic_path, registered
from .checkpoints import read_card

COMMANDS = ("train-iem", "tis", "concepts", "generate")
PROGRESS, INFO, FAILED = "CORTEX_PROGRESS ", "CORTEX_INFO ", "CORTEX_FAILED "
# test hook: this rank raises once the other ranks' shards exist
FAIL_RANK_ENV = "CORTEX_DISTRIBUTED_FAIL_RANK"


# --- who am I ----------------------------------------------------------------------------------


def rank() -> int:
    """This process's global rank: from the process group, else ``RANK`` (torchrun), else 0."""
    return (
        dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))
    )


def world_size() -> int:
    return (
        dist.get_world_size()
        if dist.is_available() and dist.is_initialized()
        else int(os.environ.get("WORLD_SIZE", 1))
    )


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init(backend: str | None = None) -> torch.device:
    """Join the process group torchrun described (NCCL with CUDA, else gloo); one process: nothing to join.
    Returns this rank's device."""
    device = torch.device(f"cuda:{local_rank()}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --- shards ------------------------------------------------------------------------------------


def shard_ranges(n_rows: int, n_shards: int, batch_size: int = 1) -> list[tuple[int, int]]:
    """``n_shards`` contiguous ``(start, stop)`` row ranges covering ``n_rows``, each starting on a batch
    boundary (a multiple of ``batch_size``) and holding whole batches (the last may end in a partial one);
    the batches are spread as evenly as possible."""
    if n_rows < 1 or n_shards < 1 or batch_size < 1:
        raise ValueError(f"need n_rows, n_shards, batch_size >= 1, got {n_rows}, {n_shards}, {batch_size}")
    n_batches = math.ceil(n_rows / batch_size)
    if n_shards > n_batches:
        raise ValueError(
            f"{n_shards} shards for {n_rows} rows in batches of {batch_size}: the dataset has only "
            f"{n_batches} batch(es), so at most {n_batches} shards (processes); use fewer processes "
            f"or a smaller batch size"
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


def even_ranges(n_rows: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges of nearly equal size (some may be empty)."""
    cuts = [i * n_rows // parts for i in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


# --- progress lines (parsed by launch) ---------------------------------------------------------


def _emit(prefix: str, **payload) -> None:
    # one write per line (below the pipe's atomic size): the ranks' lines do not interleave
    sys.stdout.write(prefix + json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


_MESSAGE = re.compile(r"CORTEX_(PROGRESS|INFO|FAILED) ")


def _messages(line: str):
    """``(kind, payload)`` for every message in an output line; the rest of the line as ``("text", str)``."""
    pos, text = 0, []
    for m in _MESSAGE.finditer(line):
        if m.start() < pos:
            continue
        text.append(line[pos : m.start()])
        try:
            payload, end = json.JSONDecoder().raw_decode(line, m.end())
        except json.JSONDecodeError:
            pos = m.start()
            break
        yield m.group(1), payload
        pos = end
    rest = "".join(text) + line[pos:]
    if rest.strip():
        yield "text", rest


def report(task: str, done: int, total: int) -> None:
    """One progress line for ``launch`` (only when launched by it): this rank's ``done`` of the task's
    ``total`` over all ranks."""
    if os.environ.get("CORTEX_PROGRESS_LINES"):
        _emit(PROGRESS, task=task, rank=rank(), done=int(done), total=int(total))


class Reporting:
    """A loader that reports every batch it yields (``report``); passes ``sampler`` and ``len`` through."""

    def __init__(self, loader, task: str, total: int, start: int = 0, count=len):
        self.loader, self.task, self.total, self.done, self.count = loader, task, total, start, count
        self.sampler = getattr(loader, "sampler", None)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            self.done += self.count(batch)
            report(self.task, self.done, self.total)


# --- inputs: the same dataset, tokenizer and codebook as one process -----------------------------


def load_tokenizer(a):
    """The tokenizer the dataset's ids refer to: ``--vq-checkpoint`` (its config from ``--vq-config``, else
    from its card), or the run directory's (``vq.load_run_vq``)."""
    if a.vq_checkpoint:
        config = a.vq_config or read_card(a.vq_checkpoint)["config"]
        return tokenizers.load_vq(config, a.vq_checkpoint, trust_pickle=a.trust_pickle)
    if not a.run_dir:
        raise ValueError("give --run-dir, or --vq-checkpoint (the tokenizer the dataset's ids refer to)")
    return tokenizers.load_run_vq(a.run_dir)


def resolve_inputs(a) -> tuple:
    """``(dataset, codebook)`` as a notebook has them: the dataset of ``--dataset`` or the run directory's,
    loaded with its tokenizer (``load_tokenizer``; a dataset of another codebook is refused), and that
    tokenizer's ``vq.codebook``."""
    path = a.dataset or (registered(a.run_dir, "dataset")["path"] if a.run_dir else None)
    if not path:
        raise ValueError("give --run-dir, or --dataset with --vq-checkpoint")
    vq = load_tokenizer(a)
    return tokds.load_token_dataset(path, vq=vq), vqlib.codebook(vq)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def _settings_key(**settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _file_sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _fail_hook(shard_files: list[Path], where: str) -> None:
    """Test hook: with ``CORTEX_DISTRIBUTED_FAIL_RANK=<r>`` (or ``<r>:<split>``), rank r waits (up to 120 s)
    until the other ranks' shard files exist, then raises (a rank that dies after the others finished)."""
    want, _, split = os.environ.get(FAIL_RANK_ENV, "").partition(":")
    if want != str(rank()) or (split and split != where):
        return
    t0 = time.time()
    while not all(p.exists() for p in shard_files) and time.time() - t0 < 120:
        time.sleep(0.2)
    raise RuntimeError(f"rank {rank()} fails on purpose ({FAIL_RANK_ENV})")


# --- commands (run on every rank) --------------------------------------------------------------


def cmd_tis(a) -> None:
    """TIS of each split, sharded over the ranks; rank 0 merges into ``<out_dir>/<split>.npy``."""
    device = init(a.backend)
    ds, codebook = resolve_inputs(a)
    iem_path = a.iem or registered(a.run_dir, f"iem{a.iem_arch}")["checkpoint"]
    model = iemlib.load_iem(iem_path, expect=iemlib.dataset_spec(ds)).to(device)
    out_dir = Path(a.out_dir or Path(a.run_dir) / "tis" / f"iem{a.iem_arch}_{a.reduction}")
    r, w = rank(), world_size()
    barrier()
    t0 = time.perf_counter()  # after start-up and loading: the sharded work and the merge
    for split in a.splits:
        n = len(ds.labels[split])
        n_shards = a.shards or w
        ranges = shard_ranges(n, n_shards, a.batch_size)
        mine = shards_of_rank(n_shards, r, w)
        key = _settings_key(
            iem=_file_sha(iem_path),
            data=ds.manifest["vq_fingerprint"],
            split=split,
            n=n,
            nsamples=a.nsamples,
            spread=a.spread,
            reduction=a.reduction,
            seed=a.seed,
            bs=a.batch_size,
        )
        shard_dir = out_dir / "shards" / key
        files = [shard_dir / f"{split}.{s0:09d}-{s1:09d}.npy" for s0, s1 in ranges]
        _fail_hook([files[s] for s in range(n_shards) if s not in mine], split)
        done = sum(ranges[s][1] - ranges[s][0] for s in mine if files[s].exists())
        report(f"TIS {split}", done, n)
        for s in mine:
            if files[s].exists():  # finished by an earlier, interrupted job
                continue
            partial = files[s].with_name(files[s].stem + ".partial.npy")
            rows = tokds.embedding_loader(ds, split, codebook, a.batch_size, rows=ranges[s], device=device)
            loader = Reporting(rows, f"TIS {split}", n, start=done, count=lambda batch: len(batch[2]))
            tislib.compute_tis(
                model,
                loader,
                n,
                nsamples=a.nsamples,
                spread=a.spread,
                reduction=a.reduction,
                seed=a.seed,
                out=partial,
                desc=f"TIS {split} rank {r} rows {ranges[s][0]}-{ranges[s][1]}",
                rows=ranges[s],
            )
            os.replace(partial, files[s])
            done = loader.done
        barrier()
        if r == 0:
            merged = np.concatenate([np.load(f) for f in files])
            _atomic_save(out_dir / f"{split}.npy", merged)
            for f in files:
                f.unlink()
        barrier()
    if r == 0:
        _emit(
            INFO,
            rank=r,
            out_dir=str(out_dir),
            splits=a.splits,
            shards=a.shards or w,
            world_size=w,
            seconds=time.perf_counter() - t0,
        )


def cmd_train_iem(a) -> None:
    """``iem.train_iem`` under DDP; rank 0 saves the best-validation weights and the log."""
    device = init(a.backend)
    ds, codebook = resolve_inputs(a)
    r, w = rank(), world_size()
    split_batch = bool(a.sync_bn and device.type == "cuda")  # else each rank's BatchNorm sees batch_size
    if split_batch and a.batch_size % w:
        raise ValueError(
            f"with --sync-bn the batch size {a.batch_size} is split over the ranks and must be "
            f"divisible by the world size {w}"
        )
    per_rank = a.batch_size // w if split_batch else a.batch_size
    spec = {"in_channels": ds.manifest["embed_dim"], "grid": list(ds.grid), "n_classes": len(ds.class_names)}
    torch.manual_seed(a.seed)  # the notebook's initialisation; DDP also broadcasts rank 0's weights
    model = iemlib.build_iem(a.arch, spec["in_channels"], ds.grid, spec["n_classes"], width=a.width).to(
        device
    )
    if split_batch:  # SyncBatchNorm is CUDA-only in training
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model
    if w > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        net.cortex_spec = model.cortex_spec
    n_train = len(ds.labels["train"])
    sampler = torch.utils.data.DistributedSampler(
        range(n_train), num_replicas=w, rank=r, shuffle=True, seed=a.seed
    )
    train = tokds.embedding_loader(ds, "train", codebook, per_rank, sampler=sampler, device=device)
    steps = a.epochs * len(train)
    train = Reporting(train, f"train IEM {a.arch}", steps * w, count=lambda batch: 1)
    val = tokds.embedding_loader(
        ds, "val", codebook, a.eval_batch_size, rows=even_ranges(len(ds.labels["val"]), w)[r], device=device
    )

    def evaluate(net_):
        module = net_.module if hasattr(net_, "module") else net_
        if w > 1:
            for b in module.buffers():  # BatchNorm statistics: rank 0's, so all ranks evaluate one model
                dist.broadcast(b, 0)
        module.eval()
        ks = (1, 3, 5, 10)
        sums = torch.zeros(2 + len(ks), dtype=torch.float64, device=device)
        with torch.no_grad():
            for x, y, _ in val:
                logits = module(x)
                ranks = logits.argsort(1, descending=True)
                sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
                sums[1] += len(y)
                for j, k in enumerate(ks):
                    sums[2 + j] += (ranks[:, : min(k, logits.shape[1])] == y[:, None]).any(1).sum()
        if w > 1:
            dist.all_reduce(sums)
        out = {"loss": (sums[0] / sums[1]).item()}
        out.update({f"top{k}": (sums[2 + j] / sums[1]).item() for j, k in enumerate(ks)})
        return out

    step_size = a.lr_step or max(1, a.epochs // 2)
    log, _ = iemlib.train_iem(
        net,
        train,
        None,
        epochs=a.epochs,
        lr=a.lr,
        weight_decay=a.weight_decay,
        step_size=step_size,
        gamma=a.lr_gamma,
        log_csv=a.log_csv if r == 0 else None,
        desc=f"IEM {a.arch} rank {r}",
        evaluate=evaluate,
    )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = hashlib.sha256(b"".join(v.contiguous().numpy().tobytes() for v in state.values())).hexdigest()[
        :16
    ]
    _emit(INFO, rank=r, state_sha=digest, rows_per_epoch=len(sampler))
    if r == 0:
        best = log.loc[log["val_loss"].idxmin()]
        iemlib.save_iem(
            model.cpu(),
            a.out,
            card={
                "kind": "iem",
                "dataset": str(ds.path),
                "vq_fingerprint": ds.manifest["vq_fingerprint"],
                "training": {
                    "epochs": a.epochs,
                    "batch_size": a.batch_size,
                    "lr": a.lr,
                    "weight_decay": a.weight_decay,
                    "lr_step": step_size,
                    "lr_gamma": a.lr_gamma,
                    "width": a.width,
                    "seed": a.seed,
                    "nproc": w,
                },
                "distributed": {
                    "world_size": w,
                    "backend": dist.get_backend() if dist.is_initialized() else None,
                    "per_rank_batch": per_rank,
                    "global_batch": per_rank * w,
                    "sync_bn": split_batch,
                },
                "log": pd.DataFrame(log).to_dict("records"),
                "metrics": {
                    "best_val_loss": float(best["val_loss"]),
                    "val_acc_at_best": float(best["val_acc"]),
                },
            },
        )
    barrier()


def merge_counts(parts: list[dict]) -> dict:
    return {k: sum(p[k] for p in parts) for k in parts[0]}


def cmd_concepts(a) -> None:
    """Concept-token counts sharded over the ranks (TIS from ``--tis-dir``); rank 0 merges into a CSV."""
    init(a.backend)
    ds = tokds.load_token_dataset(a.dataset or registered(a.run_dir, "dataset")["path"])
    tis_dir = Path(a.tis_dir or registered(a.run_dir, "tis")["path"])
    tis = np.load(tis_dir / f"{a.split}.npy", mmap_mode="r")
    r, w = rank(), world_size()
    n, n_shards = len(ds.labels[a.split]), a.shards or w
    ranges = shard_ranges(n, n_shards, a.batch_size)
    out = Path(a.out or tis_dir / f"concept_tokens_{a.split}.csv")
    files = [out.parent / "shards" / f"{out.stem}.{s0:09d}-{s1:09d}.npz" for s0, s1 in ranges]
    mine = shards_of_rank(n_shards, r, w)
    _fail_hook([files[s] for s in range(n_shards) if s not in mine], a.split)
    for s in mine:
        s0, s1 = ranges[s]
        if not files[s].exists():
            part = concept_counts(
                ds.tokens[a.split][s0:s1],
                ds.labels[a.split][s0:s1],
                np.asarray(tis[s0:s1]),
                len(ds.class_names),
                ds.manifest["n_embed"],
                a.top_ns,
            )
            with atomic_path(files[s]) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **part)
        report(f"concepts {a.split}", s1 - s0, n)
    barrier()
    if r == 0:
        parts = [dict(np.load(f)) for f in files]
        table = concept_table(merge_counts(parts), ds.class_names, a.top_ns, a.top)
        with atomic_path(out) as tmp:
            table.to_csv(tmp, index=False)
        for f in files:
            f.unlink()
        _emit(INFO, rank=r, out=str(out))
    barrier()


def cmd_generate(a) -> None:
    """A generated token dataset, sampled in shards over the ranks; rank 0 writes the dataset.

    Shard ``[start, stop)`` of split ``i`` samples with seed ``(seed * 100 + i) * 1_000_003 + start``: the
    dataset depends on the shards (``--shards``), not on how many processes computed them. It is a
    different sample than notebook 02's single-process one (one random stream per split).
    """
    from . import generation as gen  # deferred on purpose: it imports taming, which only this command needs

    init(a.backend)
    vq = tokenizers.load_run_vq(a.run_dir)
    tf_path = a.transformer or registered(a.run_dir, "transformer")["checkpoint"]
    tf = gen.load_transformer(a.transformer_config or read_card(tf_path)["config"], tf_path, vq=vq)
    n_classes = tf.cond_stage_model.n_classes
    class_names = [str(i) for i in range(n_classes)]
    r, w = rank(), world_size()
    out = Path(a.out)
    per_split = {"train": a.per_class_train, "val": a.per_class_val, "test": a.per_class_test}
    key = _settings_key(
        tf=_file_sha(tf_path), per=per_split, t=a.temperature, k=a.top_k, seed=a.seed, bs=a.batch_size
    )
    shard_dir = out.parent / f".{out.name}.shards" / key
    splits = {}
    for i, (split, per_class) in enumerate(per_split.items()):
        labels = gen.balanced_labels(n_classes, per_class)
        n_shards = a.shards or w
        ranges = shard_ranges(len(labels), n_shards, a.batch_size)
        files = [shard_dir / f"{split}.{s0:09d}-{s1:09d}.npy" for s0, s1 in ranges]
        mine = shards_of_rank(n_shards, r, w)
        _fail_hook([files[s] for s in range(n_shards) if s not in mine], split)
        done = 0
        for s in mine:
            s0, s1 = ranges[s]
            if not files[s].exists():
                tokens = gen.sample_tokens(
                    tf,
                    labels[s0:s1],
                    temperature=a.temperature,
                    top_k=a.top_k or None,
                    batch_size=a.batch_size,
                    seed=(a.seed * 100 + i) * 1_000_003 + s0,
                )
                _atomic_save(files[s], tokens.numpy())
            done += s1 - s0
            report(f"generate {split}", done, len(labels))
        splits[split] = (files, labels)
    barrier()
    if r == 0:
        data = {
            s: (np.concatenate([np.load(f) for f in files]), labels) for s, (files, labels) in splits.items()
        }
        tokds.save_token_dataset(
            out,
            data,
            class_names,
            vqlib.vq_meta(vq),
            source="generated",
            details={
                "per_class": per_split,
                "temperature": a.temperature,
                "top_k": a.top_k,
                "seed": a.seed,
                "transformer": str(tf_path),
                "shards": a.shards or w,
                "world_size": w,
            },
        )
        for files, _ in splits.values():
            for f in files:
                f.unlink()
        _emit(INFO, rank=r, out=str(out))
    barrier()


# --- command line ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m cortex_run.distributed",
        description="Run under torchrun (or alone as one process). " + __doc__.split("\n")[0],
    )
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument(
            "--run-dir", help="a run directory: dataset, tokenizer and models from its registry.json"
        )
        p.add_argument("--dataset", help="token dataset folder (overrides the run directory's)")
        p.add_argument(
            "--vq-checkpoint", help="the tokenizer the dataset's ids refer to (overrides the run directory's)"
        )
        p.add_argument("--vq-config", help="its config (a taming YAML); default: the checkpoint's card")
        p.add_argument(
            "--trust-pickle", action="store_true", help="fully unpickle a .ckpt (only files you trust)"
        )
        p.add_argument("--shards", type=int, default=0, help="shards per split (default: the world size)")
        p.add_argument(
            "--threads",
            type=int,
            default=0,
            help="torch threads per process (default: cores / local processes)",
        )
        p.add_argument("--backend", help="process-group backend (default: nccl with CUDA, else gloo)")
        p.add_argument("--seed", type=int, default=0)
        return p

    p = common(sub.add_parser("tis", help="token importance scores, sharded"))
    p.add_argument("--iem", help="IEM checkpoint (default: the run's iem<arch>)")
    p.add_argument("--iem-arch", type=int, default=1)
    p.add_argument("--out-dir", help="default: <run-dir>/tis/iem<arch>_<reduction>")
    p.add_argument("--splits", nargs="+", default=["train", "test"])
    p.add_argument("--nsamples", type=int, default=20)
    p.add_argument("--spread", type=float, default=0.2)
    p.add_argument("--reduction", default="max", choices=["max", "mean"])
    p.add_argument("--batch-size", type=int, default=100)

    p = common(sub.add_parser("train-iem", help="train an IEM with DistributedDataParallel"))
    p.add_argument("--arch", type=int, default=1)
    p.add_argument(
        "--out", required=True, help="where rank 0 saves the weights (.safetensors, with a JSON card)"
    )
    p.add_argument("--log-csv")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="batch per process (what BatchNorm sees; global batch = world size x this); with "
        "--sync-bn on GPUs the global batch, split over the ranks",
    )
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--weight-decay", type=float, default=0.0001)
    p.add_argument("--lr-step", type=int, default=9)
    p.add_argument("--lr-gamma", type=float, default=0.1)
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="GPUs only: SyncBatchNorm over the ranks and --batch-size split over them (the "
        "single-process batch statistics exactly)",
    )

    p = common(sub.add_parser("concepts", help="concept-token counts, sharded"))
    p.add_argument("--tis-dir", help="default: the run's registered TIS")
    p.add_argument("--split", default="train")
    p.add_argument("--top-ns", type=int, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--top", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=1000, help="shard granularity in rows")
    p.add_argument("--out", help="CSV (default: <tis-dir>/concept_tokens_<split>.csv)")

    p = common(sub.add_parser("generate", help="sample a generated token dataset, sharded"))
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--transformer", help="checkpoint (default: the run's registered transformer)")
    p.add_argument("--transformer-config", help="taming config (default: the checkpoint's card)")
    p.add_argument("--per-class-train", type=int, default=300)
    p.add_argument("--per-class-val", type=int, default=50)
    p.add_argument("--per-class-test", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=500)
    return ap


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(a.threads or max(1, (os.cpu_count() or 1) // local_world))
    try:
        {"tis": cmd_tis, "train-iem": cmd_train_iem, "concepts": cmd_concepts, "generate": cmd_generate}[
            a.command
        ](a)
    except BaseException as err:
        if not isinstance(err, (SystemExit, KeyboardInterrupt)):
            _emit(FAILED, rank=rank(), error=f"{type(err).__name__}: {err}")
        raise
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


# --- the launcher (what a notebook calls) ------------------------------------------------------


class DistributedJobError(RuntimeError):
    def __init__(self, message: str, ranks: list[int]):
        super().__init__(message)
        self.ranks = ranks


def _cli_options(options: dict) -> list[str]:
    out = []
    for k, v in options.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            out.append(flag)
        elif isinstance(v, (list, tuple)):
            out += [flag, *map(str, v)]
        else:
            out += [flag, str(v)]
    return out


def torchrun_command(
    command: str,
    nproc: int = 1,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "cortex",
    **options,
) -> list[str]:
    """The ``python -m torch.distributed.run ...`` argv for one machine (``--standalone``) or for this
    machine's part of an ``nnodes`` job (c10d rendezvous at ``rdzv_endpoint``, host:port)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; choose one of {COMMANDS}")
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"nproc and nnodes must be >= 1, got {nproc}, {nnodes}")
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--max-restarts=0"]
    if nnodes == 1:
        argv.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError("several machines need rdzv_endpoint (host:port of a machine all can reach)")
        argv += [
            f"--nnodes={nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}",
            f"--rdzv-id={rdzv_id}",
        ]
        if node_rank is not None:
            argv.append(f"--node-rank={node_rank}")
    return argv + ["-m", "cortex_run.distributed", command, *_cli_options(options)]


def check_world(n_rows: int, batch_size: int, world: int, shards: int = 0) -> None:
    """Raise before launching if ``world`` processes cannot share ``n_rows`` rows in batches of
    ``batch_size``."""
    n_shards = shards or world
    shard_ranges(n_rows, n_shards, batch_size)
    shards_of_rank(n_shards, 0, world)


def launch(
    command: str,
    nproc: int = 2,
    nnodes: int = 1,
    threads: int | None = None,
    env: dict | None = None,
    quiet: bool = False,
    **options,
) -> dict:
    """Run ``command`` under torchrun with ``nproc`` processes on this machine and wait, with one tqdm bar
    per task. Returns ``{"seconds", "info": [per-rank info dicts], "output": last lines}``; raises
    ``DistributedJobError`` naming the failed rank(s). ``options`` are the command's flags
    (``run_dir=..., splits=["train"]``). Threads per process default to cores / ``nproc``."""
    argv = torchrun_command(command, nproc=nproc, nnodes=nnodes, **options)
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    if "--threads" not in argv:
        argv += ["--threads", str(threads)]
    full_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "CORTEX_PROGRESS_LINES": "1",
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": str(threads),
        **(env or {}),
    }
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), full_env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    bars, progress, info, failed, tail = (
        {},
        collections.defaultdict(dict),
        [],
        {},
        collections.deque(maxlen=60),
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
        env=full_env,
        bufsize=1,
    )
    try:
        for line in proc.stdout:
            for kind, p in _messages(line.rstrip("\n")):
                if kind == "PROGRESS":
                    progress[p["task"]][p["rank"]] = p["done"]
                    if p["task"] not in bars:
                        bars[p["task"]] = tqdm(
                            total=p["total"], desc=f"{p['task']} ({nproc * nnodes} processes)", disable=quiet
                        )
                    bar = bars[p["task"]]
                    bar.update(sum(progress[p["task"]].values()) - bar.n)
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
    seconds = time.perf_counter() - t0
    if rc != 0:
        text = "\n".join(tail)
        root = re.findall(r"Root Cause.*?rank\s*:\s*(\d+)", text, flags=re.S)
        # the first rank to report its error is blamed: the others usually fail after it (a collective with a
        # dead peer), so they are listed but not blamed. torchrun's own "Root Cause" only when no rank
        # reported: it orders by error-file timestamps in whole seconds, and a tie can name the wrong rank
        ranks = [next(iter(failed))] if failed else sorted({int(x) for x in root})
        others = sorted(set(failed) - set(ranks))
        first = next(
            (failed[r] for r in ranks if r in failed), next(iter(failed.values()), "see the output below")
        )
        named = ", ".join(map(str, ranks)) if ranks else "unknown (no rank reported an error)"
        also = f" (then rank(s) {', '.join(map(str, others))})" if others else ""
        raise DistributedJobError(
            f"distributed {command} failed on rank(s) {named}{also} (exit code {rc}): {first}\n"
            f"completed shards are kept; the same command resumes.\n--- last output ---\n{text}",
            ranks,
        )
    return {"seconds": seconds, "info": info, "output": list(tail)}


def compute_tis_splits(
    model,
    ds,
    codebook: torch.Tensor,
    splits,
    out_dir: str | Path,
    *,
    nproc: int = 1,
    run_dir: str | Path | None = None,
    iem_arch: int = 1,
    nsamples: int = 20,
    spread: float = 0.2,
    reduction: str = "max",
    batch_size: int = 100,
    seed: int = 0,
    sigma: str = "batch",
    method: str = "smoothgrad",
    **options,
) -> tuple[dict, dict]:
    """TIS of each split in ``splits`` -> ``({split: (N, h, w) scores}, {split: seconds})``, written to
    ``<out_dir>/<split>.npy``: in this process (``nproc == 1``, ``tis.compute_tis`` batch by batch, by
    ``method`` with the attribution ``options`` ``steps``, ``baseline``, ``group``) or by a ``torchrun`` job
    of ``nproc`` processes (``launch("tis", ...)``; the same scores exactly, SmoothGrad with ``sigma="batch"``
    only). With ``nproc > 1`` each split's seconds are the job's wall time shared out by rows (start-up
    included); ``run_dir`` and ``iem_arch`` name what the job loads (the in-process branch uses ``model``,
    ``ds`` and ``codebook``)."""
    tis, seconds = {}, {}
    if nproc > 1:
        if sigma != "batch" or method != "smoothgrad":
            raise ValueError(
                'the torchrun job (nproc > 1) computes SmoothGrad with sigma = "batch" only; use nproc = 1'
            )
        for split in splits:
            check_world(len(ds.labels[split]), batch_size, nproc)
        job = launch(
            "tis",
            nproc=nproc,
            run_dir=run_dir,
            iem_arch=iem_arch,
            out_dir=out_dir,
            splits=list(splits),
            nsamples=nsamples,
            spread=spread,
            reduction=reduction,
            batch_size=batch_size,
            seed=seed,
        )
        n_all = sum(len(ds.labels[s]) for s in splits)
        for split in splits:
            tis[split] = np.load(Path(out_dir) / f"{split}.npy")
            seconds[split] = job["seconds"] * len(ds.labels[split]) / n_all
        return tis, seconds
    for split in splits:
        loader = tokds.embedding_loader(ds, split, codebook, batch_size=batch_size)
        t0 = time.perf_counter()
        tis[split] = tislib.compute_tis(
            model,
            loader,
            len(ds.labels[split]),
            nsamples=nsamples,
            spread=spread,
            reduction=reduction,
            seed=seed,
            out=Path(out_dir) / f"{split}.npy",
            desc=f"TIS {split}",
            sigma=sigma,
            method=method,
            **options,
        )
        seconds[split] = time.perf_counter() - t0
    return tis, seconds


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
