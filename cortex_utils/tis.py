"""Token importance scores (TIS): SmoothGrad saliency of the IEM's target logit w.r.t. its input embeddings.

As the paper's code: sigma = ``spread`` * (max - min) of the batch tensor; ``nsamples`` noisy copies; for
each copy the gradient of every sample's own target-class logit w.r.t. the input; the mean over copies;
then the *signed* mean gradient reduced over the embedding channels by ``max`` (default) or ``mean``
-> one score per grid position.

``sigma="batch"`` (the default, the paper's) takes the range of the whole batch tensor, so an image's noise
level, and with it its scores, depends on the batch size and on which images share its batch;
``sigma="image"`` takes each image's own range instead (the same scores in any batch). ``topk_agreement``
measures how many of two score maps' top-k positions coincide, e.g. for two noise seeds.

The original calls ``autograd.grad`` once per sample per noise draw. In eval mode a sample's logits depend
on that sample's input only, so the gradient of the *sum* of the target logits w.r.t. the batch holds every
sample's own gradient: one backward pass over all noisy copies of the whole batch gives the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .iem import check_input

REDUCTIONS = ("max", "mean")
SIGMAS = ("batch", "image")


def noise_sigma(embeddings: torch.Tensor, spread: float = 0.2, sigma: str = "batch") -> torch.Tensor:
    """SmoothGrad's noise standard deviation for a batch ``(N, ...)``.

    ``"batch"`` (the paper's): ``spread * (max - min)`` over the whole batch tensor, a 0-d tensor shared by
    every image. ``"image"``: ``spread * (max - min)`` over each image's own values, shape ``(N, 1, ..., 1)``
    (broadcasts against the batch).
    """
    if sigma not in SIGMAS:
        raise ValueError(f"unknown sigma {sigma!r}; choose one of {SIGMAS}")
    if sigma == "batch":
        return spread * (embeddings.max() - embeddings.min())
    flat = embeddings.reshape(len(embeddings), -1)
    rng = flat.amax(1) - flat.amin(1)
    return (spread * rng).reshape(len(embeddings), *([1] * (embeddings.ndim - 1)))


def smoothgrad_noise(embeddings: torch.Tensor, nsamples: int = 20, spread: float = 0.2,
                     generator: torch.Generator | None = None, sigma: str = "batch") -> torch.Tensor:
    """The ``(nsamples, *embeddings.shape)`` Gaussian noise SmoothGrad adds: standard normal draws times
    ``noise_sigma(embeddings, spread, sigma)`` (the batch's range by default, as the paper; ``"image"``:
    each image's own). The draws are the same for both ``sigma`` choices; only their scale differs."""
    scale = noise_sigma(embeddings, spread, sigma)
    # drawn on the CPU generator and moved: the same numbers whatever device the embeddings are on
    return torch.randn((nsamples, *embeddings.shape), generator=generator, dtype=embeddings.dtype).to(
        embeddings.device) * scale


def smoothgrad(model: torch.nn.Module, embeddings: torch.Tensor, target: torch.Tensor, nsamples: int = 20,
               spread: float = 0.2, noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
               where: str = "batch", max_batch: int = 1024, sigma: str = "batch") -> torch.Tensor:
    """Mean gradient of each sample's ``target`` logit over noisy copies -> same shape as ``embeddings``.

    In eval mode every sample's logit depends on that sample only, so the noisy copies of all draws are
    stacked into batches of up to ``max_batch`` and one backward pass gives all their gradients.
    ``sigma``: the noise scale from the batch's range (``"batch"``, the paper's) or each image's own
    (``"image"``); see ``noise_sigma``. Ignored when ``noise`` is given.
    """
    check_input(model, embeddings, where)
    if model.training:
        raise RuntimeError("TIS needs the IEM in eval mode (call model.eval()): in training mode BatchNorm "
                           "mixes the samples of a batch")
    if noise is None:
        noise = smoothgrad_noise(embeddings, nsamples, spread, generator, sigma)
    n = len(embeddings)
    target = torch.as_tensor(target).long().view(1, n).expand(len(noise), n).reshape(-1, 1)
    noisy = (embeddings.unsqueeze(0) + noise).reshape(-1, *embeddings.shape[1:])  # draw-major: (S * N, D, h, w)
    grads = []
    for i in range(0, len(noisy), max(max_batch, 1)):
        x = noisy[i:i + max_batch].requires_grad_(True)
        (g,) = torch.autograd.grad(model(x).gather(1, target[i:i + max_batch]).sum(), x)
        grads.append(g)
    grad = torch.cat(grads).reshape(len(noise), *embeddings.shape).mean(0)
    if not torch.isfinite(grad).all():
        raise FloatingPointError(f"NaN or Inf in the gradients of {where}")
    return grad


def reduce_channels(grad: torch.Tensor, reduction: str = "max") -> torch.Tensor:
    """``(N, D, h, w)`` signed gradients -> ``(N, h, w)`` scores."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    return grad.amax(1) if reduction == "max" else grad.mean(1)


def token_importance(model, embeddings, target, nsamples=20, spread=0.2, reduction="max", noise=None,
                     generator=None, where="batch", sigma="batch") -> torch.Tensor:
    """TIS of one batch: ``(N, h, w)``. ``sigma``: ``"batch"`` (the paper's) or ``"image"``, see ``noise_sigma``."""
    return reduce_channels(smoothgrad(model, embeddings, target, nsamples, spread, noise, generator, where,
                                      sigma=sigma), reduction)


def compute_tis(model, loader, n_images: int, nsamples: int = 20, spread: float = 0.2, reduction: str = "max",
                seed: int = 0, out: str | Path | None = None, desc: str = "TIS",
                rows: tuple[int, int] | None = None, sigma: str = "batch") -> np.ndarray:
    """TIS for every image of a (non-shuffled) embedding loader -> float32 ``(N, h, w)`` aligned with the
    dataset's rows; the target is each image's label.

    With ``out`` (a ``.npy`` path) the scores are written into a memory-mapped array in place, chunk by
    chunk, with a sidecar ``<out>.done.npy`` marking finished rows: an interrupted run resumes where it
    stopped. Each batch's noise comes from ``seed`` and the batch's first row, so a resumed or re-chunked
    run gives the same numbers.

    ``rows=(start, stop)``: only those rows of the ``n_images`` (a shard, ``cortex_utils.distributed``); the
    loader must yield exactly them, and the result (and ``out``) holds ``stop - start`` rows. With ``start``
    a multiple of the loader's batch size the batches, and so the scores, are those of the full run.

    ``sigma="batch"`` (default, the paper's): the noise scale comes from each batch's range, so the scores
    depend on the loader's batch size; ``"image"``: from each image's own range (see ``noise_sigma``).
    """
    if sigma not in SIGMAS:
        raise ValueError(f"unknown sigma {sigma!r}; choose one of {SIGMAS}")
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
                raise ValueError(f"{out} holds TIS of shape {scores.shape}, expected {(n_rows, *grid)}; delete it")
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
                raise ValueError(f"the loader yields rows {rows.min()}-{rows.max()} outside rows {start}-{stop - 1}")
            local = rows - start
            if done[local].all():
                continue
            g = torch.Generator().manual_seed(seed * 1_000_003 + int(rows[0]))
            scores[local] = token_importance(model, x, y, nsamples, spread, reduction, generator=g, sigma=sigma,
                                             where=f"batch {b} (rows {rows[0]}-{rows[-1]})").cpu().numpy()
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



def topk_positions(scores, k: int = 5) -> np.ndarray:
    """Flat indices of the ``k`` highest scores of each map: ``(N, h, w)`` (or ``(N, P)``) -> int ``(N, k)``,
    highest first; ties go to the smaller position index (a stable sort)."""
    flat = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if not 1 <= k <= flat.shape[1]:
        raise ValueError(f"k must lie in [1, {flat.shape[1]}] (positions per map), got {k}")
    return np.argsort(-flat, axis=1, kind="stable")[:, :k]


def topk_agreement(a, b, k: int = 5) -> np.ndarray:
    """Per image, the share of ``a``'s top-k positions that are also among ``b``'s: ``|top_k(a) & top_k(b)| / k``.

    ``a`` and ``b`` are score maps of the same images, ``(N, h, w)`` or ``(N, P)``; returns float ``(N,)`` in
    [0, 1] (1: the same k positions, in any order). Symmetric in ``a`` and ``b``. Take the mean for one number,
    e.g. the agreement of TIS computed with two noise seeds.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"score maps of different shapes: {a.shape} vs {b.shape}")
    ta, tb = topk_positions(a, k), topk_positions(b, k)
    return np.array([len(np.intersect1d(x, y)) for x, y in zip(ta, tb, strict=True)], dtype=np.float64) / k



def batched_token_importance(model, embeddings, target, batch_size: int, nsamples: int = 20, spread: float = 0.2,
                             reduction: str = "max", seed: int = 0, sigma: str = "batch") -> np.ndarray:
    """TIS of a stack of images ``(N, D, h, w)`` cut into SmoothGrad batches of ``batch_size`` -> float32
    ``(N, h, w)``: with ``sigma="batch"`` each batch's range sets its images' noise level, so the batch size
    matters (e.g. the run's 100 vs the original's 4). The noise of the batch starting at row ``i`` comes from
    ``seed * 1_000_003 + i``, as in ``compute_tis``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target = torch.as_tensor(target).long()
    out = [token_importance(model, embeddings[i:i + batch_size], target[i:i + batch_size], nsamples, spread,
                            reduction, generator=torch.Generator().manual_seed(seed * 1_000_003 + i), sigma=sigma,
                            where=f"rows {i}-{min(i + batch_size, len(embeddings)) - 1}").cpu().numpy()
           for i in range(0, len(embeddings), batch_size)]
    return np.concatenate(out).astype(np.float32, copy=False)


def seed_agreement(maps, k: int = 5) -> np.ndarray:
    """Reproducibility of the top-k positions across noise seeds: ``maps`` holds two or more score arrays of
    the same images, one per seed; per image, ``topk_agreement`` averaged over every pair -> float ``(N,)``."""
    maps = [np.asarray(m) for m in maps]
    if len(maps) < 2:
        raise ValueError(f"seed agreement needs the maps of at least two seeds, got {len(maps)}")
    return np.mean([topk_agreement(maps[i], maps[j], k) for i in range(len(maps)) for j in range(i + 1, len(maps))],
                   axis=0)
