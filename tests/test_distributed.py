"""torchrun / DDP: shards, 2-process gloo training and TIS against the single-process path, failures.

Three torchrun launches (each pays a few seconds of imports): train, TIS, a rank that dies.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_vq_config

from cortex_run import datasets as tokds
from cortex_run import distributed as D
from cortex_run import tokenizers
from cortex_run.checkpoints import load_iem, save_weights
from cortex_utils import concepts
from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib

C, K, DIM, GRID = 4, 16, 8, (8, 8)
TRAIN = dict(
    arch=1, width=8, epochs=10, batch_size=64, lr=0.01, lr_step=8, lr_gamma=0.1, weight_decay=0.0001, seed=0
)


def _grids(rng, labels):
    """Random ids, and at 40 random positions ids of the class's own quarter of the codebook (easy to
    learn)."""
    t = rng.integers(0, K, size=(len(labels), *GRID))
    for i, c in enumerate(labels):
        pos = rng.choice(GRID[0] * GRID[1], 40, replace=False)
        t[i].flat[pos] = rng.integers(c * K // C, (c + 1) * K // C, size=40)
    return t


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny taming tokenizer (8x8 grid) whose codebook is K random normal rows, saved with its card as a run
    would (the jobs load it with --vq-checkpoint and take its codebook as one process does), and a dataset of
    its ids."""
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    config = tiny_vq_config(n_embed=K, embed_dim=DIM, resolution=16)
    vq = tokenizers.build_vq(config, seed=0)
    vq.model.quantize.embedding.weight.data.copy_(
        torch.from_numpy(rng.normal(size=(K, DIM)).astype(np.float32))
    )
    save_weights(vq.state_dict(), root / "vq.safetensors", card={"config": config})
    splits = {}
    for s, n in {"train": 1200, "val": 200, "test": 400}.items():
        y = np.arange(n) % C
        splits[s] = (_grids(rng, y), y)
    ds = tokds.save_token_dataset(
        root / "ds", splits, [f"c{i}" for i in range(C)], vqlib.vq_meta(vq), source="synthetic"
    )
    return root, ds, vqlib.codebook(vq)


def _accuracy(model, ds, cb):
    return iemlib.evaluate_iem(model, tokds.embedding_loader(ds, "test", cb, batch_size=100))["top1"]


def _single_process_iem(ds, cb):
    """What notebook 03 does with nproc = 1."""
    torch.manual_seed(TRAIN["seed"])
    model = iemlib.build_iem(TRAIN["arch"], DIM, GRID, C, width=TRAIN["width"])
    train = tokds.embedding_loader(ds, "train", cb, batch_size=TRAIN["batch_size"], shuffle=True, seed=0)
    val = tokds.embedding_loader(ds, "val", cb, batch_size=512)
    recipe = iemlib.Training(
        TRAIN["epochs"], TRAIN["lr"], TRAIN["weight_decay"], TRAIN["lr_step"], TRAIN["lr_gamma"]
    )
    iemlib.train_iem(model, train, val, recipe)
    return model


# --- shards (no processes) ---------------------------------------------------------------------


def test_shards_are_contiguous_batch_aligned_and_cover_every_row():
    for n, shards, bs in [(200, 2, 30), (200, 3, 30), (7, 7, 1), (1000, 4, 100), (101, 2, 100)]:
        r = D.shard_ranges(n, shards, bs)
        assert len(r) == shards and r[0][0] == 0 and r[-1][1] == n
        assert all(a < b for a, b in r) and all(r[i][1] == r[i + 1][0] for i in range(shards - 1))
        assert all(a % bs == 0 for a, _ in r)
        sizes = [math_ceil(b - a, bs) for a, b in r]  # batches per shard differ by at most one
        assert max(sizes) - min(sizes) <= 1
    assert D.shard_ranges(200, 2, 30) == [(0, 90), (90, 200)]


def math_ceil(n, d):
    return -(-n // d)


def test_more_shards_than_batches_or_ranks_than_shards_is_an_error():
    with pytest.raises(ValueError, match="only 2 batch"):
        D.shard_ranges(150, 3, 100)
    with pytest.raises(ValueError, match="world size 3 is larger than the number of shards \\(2\\)"):
        D.shards_of_rank(2, 0, 3)
    with pytest.raises(ValueError, match="at most 2 shards"):
        D.check_world(n_rows=200, batch_size=100, world=4)
    assert D.shards_of_rank(5, 1, 2) == [1, 3]


def test_single_process_fallback(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert (D.rank(), D.world_size(), D.local_rank()) == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (D.rank(), D.world_size()) == (3, 4)


def test_sharded_concept_counts_merge_to_the_full_table(tiny):
    _, ds, _ = tiny
    rng = np.random.default_rng(1)
    t, y = ds.tokens["train"], ds.labels["train"]
    tis = rng.normal(size=t.shape).astype(np.float32)
    parts = [
        concepts.concept_counts(t[a:b], y[a:b], tis[a:b], C, K, (1, 5))
        for a, b in D.shard_ranges(len(y), 3, 50)
    ]
    merged = {k: sum(p[k] for p in parts) for k in parts[0]}
    got = concepts.concept_table(merged, ds.class_names, (1, 5), top=10)
    want = concepts.concept_tokens(t, y, tis, ds.class_names, K, top_ns=(1, 5), top=10)
    pd.testing.assert_frame_equal(got, want)


def test_tis_rows_argument_checks_the_loader(tiny):
    _, ds, cb = tiny
    torch.manual_seed(0)
    model = iemlib.build_iem(1, DIM, GRID, C, width=8).eval()
    loader = tokds.embedding_loader(ds, "test", cb, batch_size=50)
    with pytest.raises(ValueError, match="outside rows 50-99"):
        tislib.dataset_tis(model, loader, (50, 100), noise=tislib.Noise(1))


def test_shard_loaders_are_the_one_process_loader(tiny):
    """A shard's rows, a sampler's share and batches built on a device come from ``datasets.embedding_loader``
    itself: the same batches as the whole split's loader."""
    _, ds, cb = tiny
    whole = list(tokds.embedding_loader(ds, "val", cb, batch_size=30))
    shard = list(tokds.embedding_loader(ds, "val", cb, batch_size=30, rows=(60, 200), device="cpu"))
    assert len(shard) == len(whole) - 2
    for (x, y, r), (x0, y0, r0) in zip(shard, whole[2:], strict=True):
        assert torch.equal(x, x0) and torch.equal(y, y0) and torch.equal(r, r0)
    sampler = torch.utils.data.DistributedSampler(range(200), num_replicas=2, rank=1, shuffle=True, seed=0)
    rows = torch.cat([r for _, _, r in tokds.embedding_loader(ds, "val", cb, batch_size=30, sampler=sampler)])
    assert rows.tolist() == list(sampler)
    with pytest.raises(ValueError, match="without shuffle or rows"):
        tokds.embedding_loader(ds, "val", cb, sampler=sampler, shuffle=True)
    with pytest.raises(ValueError, match="rows 100-300 outside the 200 rows"):
        tokds.embedding_loader(ds, "val", cb, rows=(100, 300))


def test_jobs_read_the_dataset_with_its_own_tokenizer(tiny, tmp_path):
    """The jobs load the tokenizer and take its codebook (``vq.codebook``) as a notebook does; a dataset of
    another codebook is refused by the same check."""
    import argparse

    root, ds, cb = tiny
    a = argparse.Namespace(
        run_dir=None,
        dataset=ds.path,
        vq_checkpoint=root / "vq.safetensors",
        vq_config=None,
        trust_pickle=False,
    )
    got, codebook = D.resolve_inputs(a)
    assert torch.equal(codebook, cb) and got.manifest == ds.manifest
    other = tokenizers.build_vq(tiny_vq_config(n_embed=K, embed_dim=DIM, resolution=16), seed=1)
    save_weights(
        other.state_dict(),
        tmp_path / "other.safetensors",
        card={"config": other.cortex_config},
    )
    with pytest.raises(ValueError, match="tokenized by a VQ model with codebook fingerprint"):
        D.resolve_inputs(argparse.Namespace(**{**vars(a), "vq_checkpoint": tmp_path / "other.safetensors"}))
    with pytest.raises(ValueError, match="give --run-dir, or --vq-checkpoint"):
        D.resolve_inputs(argparse.Namespace(**{**vars(a), "vq_checkpoint": None}))


# --- torchrun, 2 processes, gloo ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_iem(tiny):
    root, ds, _ = tiny
    out = root / "iem_ddp.safetensors"
    res = D.launch(
        "train-iem",
        nproc=2,
        threads=1,
        quiet=True,
        dataset=ds.path,
        vq_checkpoint=root / "vq.safetensors",
        out=out,
        log_csv=root / "iem_ddp_log.csv",
        **TRAIN,
    )
    return out, res


def test_ddp_training_syncs_ranks_and_matches_single_process_accuracy(tiny, ddp_iem, one_thread):
    _, ds, cb = tiny
    path, res = ddp_iem
    by_rank = {i["rank"]: i for i in res["info"]}
    assert sorted(by_rank) == [0, 1]
    assert (
        by_rank[0]["state_sha"] == by_rank[1]["state_sha"]
    )  # the same weights and BN statistics on both ranks
    assert by_rank[0]["rows_per_epoch"] + by_rank[1]["rows_per_epoch"] == 1200  # each rank saw half the data
    ddp_model = load_iem(path)
    log = pd.read_csv(path.with_name("iem_ddp_log.csv"))
    assert len(log) == TRAIN["epochs"] and log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]
    acc_ddp, acc_single = _accuracy(ddp_model, ds, cb), _accuracy(_single_process_iem(ds, cb), ds, cb)
    print(f"test accuracy: 1 process {acc_single:.3f}, 2 processes {acc_ddp:.3f}")
    assert acc_single > 0.6  # the task is learnt at all (chance: 0.25)
    assert abs(acc_ddp - acc_single) <= 0.01


# the job's sitecustomize.py (on its PYTHONPATH): rank 1 dies in split val once rank 0 finished its shards
DYING_RANK = """
import os

if os.environ.get("RANK") == "1":
    import time
    from pathlib import Path

    from cortex_utils import tis

    dataset_tis = tis.dataset_tis

    def dying(model, loader, rows, method="smoothgrad", reduction="max", out=None, *args, **options):
        if out is not None and Path(out).name.startswith("val."):
            t0 = time.time()
            while len([p for p in Path(out).parent.glob("val.*[0-9].npy")]) < 2 and time.time() - t0 < 120:
                time.sleep(0.2)
            raise RuntimeError("rank 1 fails on purpose")
        return dataset_tis(model, loader, rows, method, reduction, out, *args, **options)

    tis.dataset_tis = dying
"""


@pytest.fixture(scope="module")
def ddp_tis(tiny, ddp_iem):
    """One launch for two tests: split test (3 shards over 2 ranks) completes and is merged; in split val
    rank 1 dies (``DYING_RANK`` patches its ``tis.dataset_tis``) after rank 0 finished its shards."""
    root, ds, _ = tiny
    hook = root / "dying_rank"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(DYING_RANK)
    out_dir = root / "tis_ddp"
    opts = dict(
        dataset=ds.path,
        vq_checkpoint=root / "vq.safetensors",
        iem=ddp_iem[0],
        out_dir=out_dir,
        splits=["test", "val"],
        nsamples=3,
        batch_size=30,
        seed=2,
    )
    try:
        D.launch("tis", nproc=2, threads=1, quiet=True, env={"PYTHONPATH": str(hook)}, shards=3, **opts)
    except D.DistributedJobError as err:
        return opts, err
    return opts, None


def _reference_tis(ds, cb, path, split):
    loader = tokds.embedding_loader(ds, split, cb, batch_size=30)
    return tislib.dataset_tis(load_iem(path), loader, len(ds.labels[split]), noise=tislib.Noise(3), seed=2)


def test_ddp_tis_equals_single_process_exactly(tiny, ddp_iem, ddp_tis, one_thread):
    _, ds, cb = tiny
    opts, _ = ddp_tis
    got = np.load(opts["out_dir"] / "test.npy")
    assert got.dtype == np.float32 and np.array_equal(got, _reference_tis(ds, cb, ddp_iem[0], "test"))
    assert not list((opts["out_dir"] / "shards").rglob("test.*.npy"))  # merged shards are removed


def test_a_dying_rank_is_named_and_completed_shards_resume(tiny, ddp_iem, ddp_tis, one_thread, monkeypatch):
    _, ds, cb = tiny
    opts, err = ddp_tis
    assert err is not None and err.ranks == [1]
    assert "failed on rank(s) 1 " in str(err) and "rank 1 fails on purpose" in str(err)
    kept = list((opts["out_dir"] / "shards").rglob("val.*.npy"))
    # rank 0's shards of val (shards 0 and 2 of 3), complete
    assert sorted(p.name for p in kept) == ["val.000000000-000000060.npy", "val.000000120-000000200.npy"]
    assert not (opts["out_dir"] / "val.npy").exists()
    # resume in this process (rank 0 of 1 runs all three shards): the kept shards are not recomputed
    for p in kept:
        np.save(p, np.full((len(np.load(p)), *GRID), 7.0, np.float32))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    D.main(["tis", "--threads", "1", "--shards", "3", *D._cli_options({**opts, "splits": ["val"]})])
    got = np.load(opts["out_dir"] / "val.npy")
    ref = _reference_tis(ds, cb, ddp_iem[0], "val")
    assert (got[:60] == 7.0).all() and (got[120:] == 7.0).all() and np.array_equal(got[60:120], ref[60:120])
