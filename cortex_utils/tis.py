"""Token importance scores (TIS): one score per grid position of every image of a dataset, by an attribution
method of the IEM's target logit w.r.t. its input embeddings (``attribution.METHODS``). The paper's, the
default, is SmoothGrad (``smoothgrad``; 20 noisy copies, sigma = 0.2 * (max - min) of the batch) reduced over
the embedding channels by ``max`` (default) or ``mean``.

``compute_tis`` runs ``attribution.attribute`` over a (non-shuffled) embedding loader, writing the scores as
it goes (an interrupted run resumes); ``batched_token_importance`` does the same for a stack of embeddings in
memory. ``topk_positions`` ranks each map's positions, the one "top positions" helper (concept tokens, masking
and the faithfulness curves use it); ``topk_agreement`` and ``seed_agreement`` measure how many of two maps'
top-k positions coincide, e.g. for two SmoothGrad noise seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .attribution import attribute, check_method
from .progress import tqdm
from .smoothgrad import DRAWS, SIGMAS, check_precision


def compute_tis(
    model,
    loader,
    n_images: int,
    nsamples: int = 20,
    spread: float = 0.2,
    reduction: str = "max",
    seed: int = 0,
    out: str | Path | None = None,
    desc: str = "TIS",
    rows: tuple[int, int] | None = None,
    sigma: str = "batch",
    precision: str = "float32",
    draws: str = "gaussian",
    method: str = "smoothgrad",
    steps: int = 16,
    baseline=None,
    group: int = 1,
) -> np.ndarray:
    """TIS for every image of a (non-shuffled) embedding loader -> float32 ``(N, h, w)`` aligned with the
    dataset's rows, by ``method`` (``attribution.METHODS``; SmoothGrad, the paper's, by default); the target
    is each image's label. ``steps`` (IG), ``baseline`` (IG, occlusion) and ``group`` (occlusion): see
    ``attribution.attribute``.

    With ``out`` (a ``.npy`` path) the scores are written into a memory-mapped array in place, chunk by
    chunk, with a sidecar ``<out>.done.npy`` marking finished rows: an interrupted run resumes where it
    stopped. Each batch's noise comes from ``seed`` and the batch's first row, so a resumed or re-chunked
    run gives the same numbers.

    ``rows=(start, stop)``: only those rows of the ``n_images`` (a shard, ``cortex_run.distributed``); the
    loader must yield exactly them, and the result (and ``out``) holds ``stop - start`` rows. With ``start``
    a multiple of the loader's batch size the batches, and so the scores, are those of the full run.

    ``sigma="batch"`` (default, the paper's): the noise scale comes from each batch's range, so the scores
    depend on the loader's batch size; ``"image"``: from each image's own range (see
    ``smoothgrad.noise_sigma``). ``precision`` (``"float32"``, the exact mode, or ``"bfloat16"``, the fast
    mode) and ``draws`` (``"gaussian"``, the paper's, or a reduced-variance kind): see
    ``smoothgrad.smoothgrad``. The other methods draw no noise.
    """
    check_method(method)
    if sigma not in SIGMAS:
        raise ValueError(f"unknown sigma {sigma!r}; choose one of {SIGMAS}")
    if draws not in DRAWS:
        raise ValueError(f"unknown draws {draws!r}; choose one of {DRAWS}")
    check_precision(precision)
    model.eval()
    grid = model.cortex_spec["grid"]
    start, stop = (0, n_images) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= start < stop <= n_images:
        raise ValueError(f"rows {rows} must satisfy 0 <= start < stop <= n_images ({n_images})")
    n_rows = stop - start
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        done_path = out.with_suffix(".done.npy")
        if out.exists() and done_path.exists():
            scores = np.load(out, mmap_mode="r+")
            done = np.load(done_path)
            if scores.shape != (n_rows, *grid):
                raise ValueError(
                    f"{out} holds TIS of shape {scores.shape}, expected {(n_rows, *grid)}; delete it"
                )
        else:
            scores = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n_rows, *grid))
            done = np.zeros(n_rows, dtype=bool)
            np.save(done_path, done)
    else:
        scores, done = np.zeros((n_rows, *grid), dtype=np.float32), np.zeros(n_rows, dtype=bool)
    with tqdm(total=n_rows, initial=int(done.sum()), desc=desc) as bar:
        for b, (x, y, rows) in enumerate(loader):
            rows = rows.numpy()
            if rows.min() < start or rows.max() >= stop:
                raise ValueError(
                    f"the loader yields rows {rows.min()}-{rows.max()} outside rows {start}-{stop - 1}"
                )
            local = rows - start
            if done[local].all():
                continue
            scores[local] = (
                attribute(
                    model,
                    x,
                    y,
                    method,
                    reduction,
                    nsamples,
                    spread,
                    steps,
                    baseline,
                    group,
                    seed=seed * 1_000_003 + int(rows[0]),
                    where=f"batch {b} (rows {rows[0]}-{rows[-1]})",
                    sigma=sigma,
                    draws=draws,
                    precision=precision,
                )
                .cpu()
                .numpy()
            )
            done[local] = True
            if out is not None:
                scores.flush()
                np.save(done_path, done)
            bar.update(len(local))
    if not done.all():
        raise RuntimeError(f"TIS missing for {int((~done).sum())} images: the loader did not cover every row")
    if out is not None:
        done_path.unlink()
        return np.load(out)
    return scores


def topk_positions(scores, k: int | None = 5) -> np.ndarray:
    """Flat indices of the ``k`` highest scores of each map: ``(N, h, w)`` (or ``(N, P)``) -> int ``(N, k)``,
    highest first; ties go to the smaller position index (a stable sort). ``k=None``: every position, ranked;
    ``k=0``: none."""
    flat = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    k = flat.shape[1] if k is None else k
    if not 0 <= k <= flat.shape[1]:
        raise ValueError(f"k must lie in [0, {flat.shape[1]}] (positions per map), got {k}")
    return np.argsort(-flat, axis=1, kind="stable")[:, :k]


def topk_agreement(a, b, k: int = 5) -> np.ndarray:
    """Per image, the share of ``a``'s top-k positions that are also among ``b``'s:
    ``|top_k(a) & top_k(b)| / k``.

    ``a`` and ``b`` are score maps of the same images, ``(N, h, w)`` or ``(N, P)``; returns float ``(N,)`` in
    [0, 1] (1: the same k positions, in any order). Symmetric in ``a`` and ``b``. Take the mean for one
    number, e.g. the agreement of TIS computed with two noise seeds.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"score maps of different shapes: {a.shape} vs {b.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ta, tb = topk_positions(a, k), topk_positions(b, k)
    return np.array([len(np.intersect1d(x, y)) for x, y in zip(ta, tb, strict=True)], dtype=np.float64) / k


def paired_difference(a, b, bar: float = 2.0) -> tuple[float, float, int]:
    """Per-image values ``a`` against ``b`` of the same images (e.g. two top-5 agreements): the mean of the
    paired differences ``a - b``, its standard error, and the direction: ``1`` when the mean lies more than
    ``bar`` standard errors above 0, ``-1`` more than that below, ``0`` within (one image: no standard error,
    direction 0)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    return mean, se, 1 if mean > bar * se else -1 if mean < -bar * se else 0


def batched_token_importance(
    model,
    embeddings,
    target,
    batch_size: int,
    nsamples: int = 20,
    spread: float = 0.2,
    reduction: str = "max",
    seed: int = 0,
    sigma: str = "batch",
    precision: str = "float32",
    draws: str = "gaussian",
) -> np.ndarray:
    """SmoothGrad TIS of a stack of images ``(N, D, h, w)`` cut into batches of ``batch_size`` -> float32
    ``(N, h, w)``: with ``sigma="batch"`` each batch's range sets its images' noise level, so the batch size
    matters (e.g. the run's 100 vs the original's 4). The noise of the batch starting at row ``i`` comes from
    ``seed * 1_000_003 + i``, as in ``compute_tis``. ``precision``, ``draws``: see
    ``smoothgrad.smoothgrad``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target = torch.as_tensor(target).long()
    out = [
        attribute(
            model,
            embeddings[i : i + batch_size],
            target[i : i + batch_size],
            "smoothgrad",
            reduction,
            nsamples,
            spread,
            seed=seed * 1_000_003 + i,
            where=f"rows {i}-{min(i + batch_size, len(embeddings)) - 1}",
            sigma=sigma,
            draws=draws,
            precision=precision,
        )
        .cpu()
        .numpy()
        for i in range(0, len(embeddings), batch_size)
    ]
    return np.concatenate(out).astype(np.float32, copy=False)


def seed_agreement(maps, k: int = 5) -> np.ndarray:
    """Reproducibility of the top-k positions across noise seeds: ``maps`` holds two or more score arrays of
    the same images, one per seed; per image, ``topk_agreement`` averaged over every pair -> float
    ``(N,)``."""
    maps = [np.asarray(m) for m in maps]
    if len(maps) < 2:
        raise ValueError(f"seed agreement needs the maps of at least two seeds, got {len(maps)}")
    return np.mean(
        [topk_agreement(maps[i], maps[j], k) for i in range(len(maps)) for j in range(i + 1, len(maps))],
        axis=0,
    )
