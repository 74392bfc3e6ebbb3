"""Token importance scores (TIS), the paper's image-level explanation. An attribution method gives the target
logit's attributions to the embeddings ``(N, D, h, w)``; reduced over the channels (``max``, the paper's, or
``mean``) they are the TIS, one score per grid position ``(N, h, w)``. SmoothGrad is the paper's method, the
others (``METHODS``) come from Captum; ``dataset_tis`` scores every image of a loader (notebook 05).
"""

from __future__ import annotations

import inspect
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.quasirandom import SobolEngine

from .devices import device_of
from .iem import check_batch
from .progress import tqdm

SIGMAS = ("batch", "image")  # whose value range sets the noise scale: the batch's (the paper's), the image's
DRAWS = ("gaussian", "antithetic", "sobol")  # the paper's independent draws and two reduced-variance kinds
PRECISIONS = ("float32", "bfloat16")  # the exact mode and the fast mode
REDUCTIONS = ("max", "mean")
MAX_WORKERS = 4  # SmoothGrad's passes side by side on the CPU, at most
MIN_PASSES, MIN_ROWS = 8, 128  # on the CPU: at least 8 passes, unless that makes them smaller than 128 copies
CAPTUM_ROWS = 1024  # the rows of the Captum passes that drew notebook 11's noise (attribute_tokens)


def check_choice(value, choices, what: str) -> None:
    """Refuse a ``value`` that is not one of ``choices``, naming ``what`` it is and the choices."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {choices}")


# --- 1. SmoothGrad, the paper's method ---------------------------------------------------------------------


def noise_sigma(embeddings: torch.Tensor, spread: float = 0.2, sigma: str = "batch") -> torch.Tensor:
    """SmoothGrad's noise standard deviation for a batch ``(N, ...)``: ``spread * (max - min)`` over the
    whole batch (``"batch"``, the paper's; 0-d) or over each image (``"image"``; ``(N, 1, ..., 1)``)."""
    check_choice(sigma, SIGMAS, "sigma")
    if sigma == "batch":
        return spread * (embeddings.max() - embeddings.min())
    flat = embeddings.reshape(len(embeddings), -1)
    rng = flat.amax(1) - flat.amin(1)
    return (spread * rng).reshape(len(embeddings), *([1] * (embeddings.ndim - 1)))


@dataclass(frozen=True)
class Noise:
    """SmoothGrad's noise: ``nsamples`` normals per value times ``noise_sigma``; ``draws`` ``"gaussian"`` (the
    paper's), ``"antithetic"`` (draws and their negatives) or ``"sobol"``. ``chunk`` ``k``: k Gaussian draws
    image by image, the order of Captum's ``NoiseTunnel`` with ``nt_samples_batch_size=k``."""

    nsamples: int = 20
    spread: float = 0.2
    sigma: str = "batch"
    draws: str = "gaussian"
    chunk: int | None = None

    def __post_init__(self):
        if self.nsamples < 1:
            raise ValueError(f"nsamples must be >= 1, got {self.nsamples}")
        check_choice(self.sigma, SIGMAS, "sigma")
        check_choice(self.draws, DRAWS, "draws")
        if self.chunk is not None and (self.draws != "gaussian" or self.chunk < 1):
            raise ValueError(f"chunk orders Gaussian draws and must be >= 1, got {self.chunk} ({self.draws})")
        if self.draws == "antithetic" and self.nsamples % 2:
            raise ValueError(f"antithetic draws come in pairs: nsamples must be even, got {self.nsamples}")

    def draw(self, embeddings: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The ``(nsamples, *embeddings.shape)`` noise, from ``generator`` (``None``: the global one)."""
        shape, dtype = (self.nsamples, *embeddings.shape), embeddings.dtype
        if self.draws == "gaussian" and self.chunk is None:
            eps = torch.randn(shape, generator=generator, dtype=dtype)
        elif self.draws == "gaussian":
            n, k = len(embeddings), self.chunk  # k draws of image 0, k of image 1, ..., then the next k
            parts = [(n, min(k, shape[0] - s), *shape[2:]) for s in range(0, shape[0], k)]
            eps = torch.cat([torch.randn(p, generator=generator, dtype=dtype).transpose(0, 1) for p in parts])
        elif self.draws == "antithetic":
            half = torch.randn((shape[0] // 2, *shape[1:]), generator=generator, dtype=dtype)
            eps = torch.cat([half, -half])
        else:
            eps = sobol_normals(shape, generator).to(dtype)
        # drawn on the CPU generator and moved: the same numbers whatever device the embeddings are on
        return eps.to(embeddings.device) * noise_sigma(embeddings, self.spread, self.sigma)


def sobol_normals(shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normals ``(S, N, ...)`` (float64) from one scrambled Sobol set of S points, shifted per image
    by a random digital shift: with S a power of 2, each value's draws fall one in each of S strata."""
    nsamples, n, dim = shape[0], shape[1], math.prod(shape[2:])
    if dim > SobolEngine.MAXDIM:
        raise ValueError(f"Sobol draws cover at most {SobolEngine.MAXDIM} values per image, these have {dim}")
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    bits = SobolEngine.MAXBIT  # the engine's points are integers / 2 ** bits
    points = SobolEngine(dim, scramble=True, seed=seed).draw(nsamples, dtype=torch.float64)  # (S, dim)
    shift = torch.randint(2**bits, (n, dim), generator=generator)
    ints = (points * 2**bits).long()[:, None] ^ shift[None]  # a digital shift keeps the set's strata
    return torch.special.ndtri((ints.double() + 0.5) / 2**bits).reshape(shape)


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Does ``device`` compute in bfloat16 natively (a CPU with AVX512-BF16 or AMX, a GPU with bf16)?"""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return device.type == "cpu" and any(getattr(torch.cpu, f, lambda: False)() for f in flags)


def smoothgrad(
    model, embeddings, target, noise=Noise(), seed=0, batch=None, precision="float32"
) -> torch.Tensor:
    """SmoothGrad: the mean gradient of each image's ``target`` logit over its noisy copies (``noise``: an
    ``(S, N, ...)`` tensor, or a ``Noise`` drawn with ``seed``). An image's logit depends on that image only
    (eval mode), so one backward pass of the summed logits gives every copy's gradient; a pass takes at most
    ``batch`` copies. ``precision="bfloat16"`` (the fast mode) runs the passes in bfloat16 autocast. Runs on
    the model's device; the gradients stay there."""
    embeddings = embeddings.to(device_of(model))
    target = check_batch(model, embeddings, target)[:, None]
    check_choice(precision, PRECISIONS, "precision")
    if precision == "bfloat16" and not bf16_supported(embeddings.device):
        raise ValueError(f"'bfloat16' needs a device that computes in bfloat16, not {embeddings.device}")
    if isinstance(noise, Noise):
        noise = noise.draw(embeddings, None if seed is None else torch.Generator().manual_seed(seed))
    n, rows = len(embeddings), len(noise) * len(embeddings)
    flat_noise = noise.reshape(rows, *embeddings.shape[1:])
    per_pass = batch or rows
    if embeddings.device.type == "cpu":
        per_pass = min(per_pass, max(-(-rows // MIN_PASSES), MIN_ROWS))
    grads = torch.empty_like(flat_noise)

    def one_pass(start):  # the input gradients of the noisy copies start, ..., start + per_pass - 1
        stop = min(start + per_pass, rows)
        index = torch.arange(start, stop, device=embeddings.device) % n
        x = embeddings[index] + flat_noise[start:stop]
        if precision == "bfloat16":  # channels-last: faster convolutions in the fast mode (other rounding)
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        with torch.enable_grad():
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                logits = model(x).gather(1, target[index])
            (grads[start:stop],) = torch.autograd.grad(logits.sum(), x)

    starts = range(0, rows, per_pass)
    # on the CPU side by side, each on threads // workers threads (a worker on one thread waits on no other)
    workers = max(1, min(MAX_WORKERS, torch.get_num_threads(), len(starts)))
    if embeddings.device.type != "cpu" or workers == 1:
        for start in starts:
            one_pass(start)
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(threads // workers)  # the workers' threads start with this setting
        try:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one_pass, starts))
        finally:
            torch.set_num_threads(threads)
    return grads.reshape(len(noise), *embeddings.shape).mean(0)


# --- 2. the other attributions (Captum) and the one interface -----------------------------------------------


def gradient(model, embeddings, target):
    """The signed gradient of the target logit: Captum's ``Saliency``."""
    from captum.attr import Saliency  # deferred: captum takes a second to import; SmoothGrad needs none of it

    return Saliency(model).attribute(embeddings.requires_grad_(), target=target, abs=False)


def grad_x_input(model, embeddings, target):
    """Gradient times input: Captum's ``InputXGradient``."""
    from captum.attr import InputXGradient  # deferred: as in gradient

    return InputXGradient(model).attribute(embeddings.requires_grad_(), target=target)


def integrated_gradients(model, embeddings, target, baseline=None, steps: int = 16, batch: int = 1024):
    """Captum's ``IntegratedGradients`` from ``baseline`` (``expand_baseline``), ``batch`` rows a pass."""
    from captum.attr import IntegratedGradients  # deferred: as in gradient

    return IntegratedGradients(model).attribute(
        embeddings.requires_grad_(),
        baselines=expand_baseline(baseline, embeddings),
        target=target,
        n_steps=steps,
        internal_batch_size=max(batch, len(embeddings)),
    )


def occlusion(model, embeddings, target, baseline=None, group: int = 1, batch: int = 1024):
    """The drop of the target logit when a position's (or a ``group`` x ``group`` block's) embedding is
    replaced by ``baseline``: Captum's ``FeatureAblation``."""
    from captum.attr import FeatureAblation  # deferred: as in gradient

    groups = position_groups(embeddings.shape[2:], group)  # on the host: its size needs no device sync
    per_eval = max(1, min(int(groups.max()) + 1, batch // max(len(embeddings), 1)))
    mask = groups.to(embeddings.device)[None, None].expand(1, embeddings.shape[1], -1, -1)
    return FeatureAblation(model).attribute(
        embeddings,
        baselines=expand_baseline(baseline, embeddings),
        target=target,
        feature_mask=mask,
        perturbations_per_eval=per_eval,
    )


def position_groups(grid, group: int = 1) -> torch.Tensor:
    """``(h, w)`` feature ids: one per grid position (``group`` 1) or per ``group`` x ``group`` block."""
    h, w = grid
    if group < 1:
        raise ValueError(f"the occlusion group size must be >= 1, got {group}")
    return torch.arange(h)[:, None] // group * ((w + group - 1) // group) + torch.arange(w)[None, :] // group


def expand_baseline(baseline, embeddings: torch.Tensor) -> torch.Tensor | None:
    """A baseline ``(D,)`` (e.g. the neutral token's embedding), ``(D, h, w)``, ``(1, D, h, w)`` or
    ``(N, D, h, w)`` broadcast to ``embeddings`` ``(N, D, h, w)``; ``None`` (zeros) stays None."""
    if baseline is None:
        return None
    b = torch.as_tensor(baseline, dtype=embeddings.dtype, device=embeddings.device)
    N, D, h, w = embeddings.shape
    if b.shape == (D,):
        b = b[:, None, None].expand(D, h, w)
    if b.shape == (D, h, w):
        b = b[None]
    if b.ndim != 4 or b.shape[1:] != (D, h, w) or len(b) not in (1, N):
        raise ValueError(
            f"the baseline must have shape ({D},), ({D}, {h}, {w}), (1, {D}, {h}, {w}) or "
            f"({N}, {D}, {h}, {w}) for embeddings {tuple(embeddings.shape)}; got {tuple(b.shape)}"
        )
    if not torch.isfinite(b).all():
        raise ValueError("NaN or Inf in the baseline")
    return b.expand(N, D, h, w).contiguous()


METHODS = {f.__name__: f for f in (smoothgrad, gradient, grad_x_input, integrated_gradients, occlusion)}


def check_method(method: str, options: dict, reduction: str = "max") -> None:
    """Refuse an unknown method or reduction, and an option the method does not take (naming it)."""
    check_choice(method, list(METHODS), "attribution method")
    check_choice(reduction, REDUCTIONS, "reduction")
    takes = list(inspect.signature(METHODS[method]).parameters)[3:]
    if unknown := ", ".join(sorted(set(options) - set(takes))):
        raise ValueError(f"{method} takes no option {unknown}; its options: {', '.join(takes) or 'none'}")


def method_options(method, noise=Noise(), seed=0, steps=16, group=1, baseline=None) -> dict:
    """The options ``method`` takes out of settings for every method (e.g. a notebook's parameters)."""
    check_method(method, {})
    return {
        "smoothgrad": {"noise": noise, "seed": seed},
        "integrated_gradients": {"steps": steps, "baseline": baseline},
        "occlusion": {"group": group, "baseline": baseline},
    }.get(method, {})


def reduce_channels(grad: torch.Tensor, reduction: str = "max") -> torch.Tensor:
    """``(N, D, h, w)`` signed attributions -> ``(N, h, w)`` scores."""
    check_choice(reduction, REDUCTIONS, "reduction")
    return grad.amax(1) if reduction == "max" else grad.mean(1)


def attribute(model, embeddings, target, method="smoothgrad", reduction="max", where="batch", **options):
    """Scores ``(N, h, w)`` of one batch by ``method`` with its own ``options`` (``METHODS[method]``'s
    keywords, e.g. SmoothGrad's ``noise`` and ``seed``), reduced over the channels by ``reduction``; computed
    on the model's device, returned on the embeddings'."""
    check_method(method, options, reduction)
    x = embeddings.detach().to(device_of(model), copy=True)
    target = check_batch(model, x, target, where)
    return finite_scores(METHODS[method](model, x, target, **options), where, reduction).to(embeddings.device)


def finite_scores(attr: torch.Tensor, where: str, reduction: str) -> torch.Tensor:
    """Attributions ``(N, D, h, w)`` reduced to scores ``(N, h, w)``; NaN or Inf is an error naming
    ``where``."""
    if not torch.isfinite(attr).all():
        raise FloatingPointError(f"NaN or Inf in the attributions of {where}")
    return reduce_channels(attr.detach(), reduction)


def attribute_tokens(model, codebook, tokens, targets, method="smoothgrad", batch_size=100, **options):
    """``attribute`` over token grids ``(N, h, w)`` in batches of ``batch_size`` -> float32 ``(N, h, w)``.
    Batch ``b``'s SmoothGrad noise comes from ``seed + b``, in the order Captum's ``NoiseTunnel`` drew it with
    passes of ``CAPTUM_ROWS`` rows (notebook 11's numbers)."""
    t = torch.as_tensor(np.asarray(tokens)).long()
    targets = np.asarray(targets, dtype=np.int64)
    if t.ndim != 3 or len(targets) != len(t):
        raise ValueError(f"need token grids (N, h, w), a target each: got {tuple(t.shape)}, {len(targets)}")
    if method == "smoothgrad":
        seed, noise = options.pop("seed", 0), options.pop("noise", Noise())
    out = []
    for b, i in enumerate(range(0, len(t), batch_size)):
        x = codebook[t[i : i + batch_size]].permute(0, 3, 1, 2).contiguous()
        if method == "smoothgrad":
            chunk = max(1, min(noise.nsamples, CAPTUM_ROWS // len(x))) if noise.draws == "gaussian" else None
            options |= {"noise": replace(noise, chunk=chunk), "seed": None if seed is None else seed + b}
        where = f"rows {i}-{i + len(x) - 1}"
        out.append(attribute(model, x, targets[i : i + batch_size], method, where=where, **options))
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, *t.shape[1:]), np.float32)


# --- 3. the TIS of a dataset --------------------------------------------------------------------------------


def dataset_tis(model, loader, rows, method="smoothgrad", reduction="max", out=None, desc="TIS", **options):
    """The TIS (float32 ``(n, h, w)``) of every image a non-shuffled loader of ``(embeddings, labels, rows)``
    yields, each label its target. ``rows``: ``n`` or a shard ``(start, stop)``. SmoothGrad's noise of the
    batch at row ``i`` comes from ``seed * 1_000_003 + i``: a resumed or sharded run gives the same numbers.
    With ``out`` (``.npy``) the scores are written batch by batch and an interrupted run resumes."""
    check_method(method, options, reduction)
    seed = options.pop("seed", 0) if method == "smoothgrad" else None
    start, stop = (0, int(rows)) if np.ndim(rows) == 0 else (int(rows[0]), int(rows[1]))
    if not 0 <= start < stop:
        raise ValueError(f"rows {rows} must be n >= 1 or (start, stop) with 0 <= start < stop")
    model.eval()
    device, shape = device_of(model), (stop - start, *model.cortex_spec["grid"])
    done = np.zeros(shape[0], dtype=bool)
    if out is None:
        scores = np.zeros(shape, dtype=np.float32)
    else:
        out, done_path = Path(out), Path(out).with_suffix(".done.npy")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and done_path.exists():
            scores, done = np.load(out, mmap_mode="r+"), np.load(done_path)
            if scores.shape != shape:
                raise ValueError(f"{out} holds TIS of shape {scores.shape}, expected {shape}; delete it")
        else:
            scores = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=shape)
            np.save(done_path, done)
    with tqdm(total=shape[0], initial=int(done.sum()), desc=desc) as bar:
        for b, (x, y, index) in enumerate(loader):
            index = index.numpy()
            if index.min() < start or index.max() >= stop:
                raise ValueError(f"loader rows {index.min()}-{index.max()} outside rows {start}-{stop - 1}")
            local = index - start
            if done[local].all():
                continue
            where = f"batch {b} (rows {index[0]}-{index[-1]})"
            own = {} if seed is None else {"seed": seed * 1_000_003 + int(index[0])}
            x = x.detach().to(device, copy=True)  # the batch to the model's device
            y = check_batch(model, x, y, where)
            attr = METHODS[method](model, x, y, **options, **own)  # smoothgrad, ...
            scores[local] = finite_scores(attr, where, reduction).cpu().numpy()
            done[local] = True
            if out is not None:
                scores.flush()
                np.save(done_path, done)
            bar.update(len(local))
    if not done.all():
        raise RuntimeError(f"TIS missing for {int((~done).sum())} images: the loader did not cover every row")
    if out is None:
        return scores
    done_path.unlink()
    return np.load(out)


# --- 4. top positions and agreement -------------------------------------------------------------------------


def topk_positions(scores, k: int | None = 5) -> np.ndarray:
    """Flat indices of the ``k`` highest scores of each map ``(N, h, w)`` or ``(N, P)`` -> int ``(N, k)``,
    highest first, ties to the smaller index; ``k=None``: every position."""
    flat = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    k = flat.shape[1] if k is None else k
    if not 0 <= k <= flat.shape[1]:
        raise ValueError(f"k must lie in [0, {flat.shape[1]}] (positions per map), got {k}")
    return np.argsort(-flat, axis=1, kind="stable")[:, :k]


def topk_agreement(a, b, k: int = 5, absolute: bool = False) -> np.ndarray:
    """Per image, the share of ``a``'s top-k positions also among ``b``'s: maps ``(N, h, w)`` or ``(N, P)`` ->
    ``(N,)``; ``absolute``: ranked by ``|score|``. Two random rankings share ``k / P`` on average."""
    a, b = (np.abs(np.asarray(x)) if absolute else np.asarray(x) for x in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"score maps of different shapes: {a.shape} vs {b.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ta, tb = topk_positions(a, k), topk_positions(b, k)
    return np.array([len(np.intersect1d(x, y)) for x, y in zip(ta, tb, strict=True)], dtype=np.float64) / k


def seed_agreement(maps, k: int = 5) -> np.ndarray:
    """Per image, ``topk_agreement`` averaged over every pair of ``maps`` (those of two or more seeds)."""
    maps = [np.asarray(m) for m in maps]
    if len(maps) < 2:
        raise ValueError(f"seed agreement needs the maps of at least two seeds, got {len(maps)}")
    pairs = [(i, j) for i in range(len(maps)) for j in range(i + 1, len(maps))]
    return np.mean([topk_agreement(maps[i], maps[j], k) for i, j in pairs], axis=0)


def paired_mean_se(a, b, bar: float = 2.0) -> tuple[float, float, int]:
    """The mean of paired differences ``a - b``, its standard error and the direction: ``1`` (``-1``) when the
    mean lies more than ``bar`` standard errors above (below) 0, else ``0``."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    return mean, se, 1 if mean > bar * se else -1 if mean < -bar * se else 0
