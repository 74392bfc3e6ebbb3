"""SmoothGrad as the paper computes it, written once: the mean gradient of each image's target logit with
respect to its input embeddings over ``nsamples`` noisy copies, ``(N, D, h, w)`` -> ``(N, D, h, w)``.

As the paper's code: sigma = ``spread`` * (max - min) of the batch tensor (``sigma="batch"``), so an image's
noise level, and with it its gradients, depends on the batch size and on which images share its batch;
``sigma="image"`` takes each image's own range instead (the same gradients in any batch). The attribution
interface (``attribution.attribute(..., "smoothgrad")``) reduces the result over the channels to one score per
grid position, the TIS.

The original calls ``autograd.grad`` once per sample per noise draw. In eval mode a sample's logits depend
on that sample's input only, so the gradient of the *sum* of the target logits w.r.t. the batch holds every
sample's own gradient: one backward pass over many noisy copies gives the same numbers. ``smoothgrad`` cuts
the copies into passes sized from a memory budget and, on the CPU, runs a few passes side by side, one per
thread (``benchmarks/tis_speed.py`` measures it against Captum's ``NoiseTunnel`` and against the machine's
matrix-product rate).

Two options beyond the paper, both off by default: ``precision="bfloat16"`` (the fast mode: bfloat16
autocast where the device has it; notebook 05 measures how many top-5 positions it moves against how many
another noise seed moves) and reduced-variance noise (``draws="antithetic"``: pairs +eps, -eps;
``draws="sobol"``: quasi-random normals), which notebook 05 compares with the paper's independent draws by
the top-5 agreement between noise seeds.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.quasirandom import SobolEngine

from .iem import check_batch

SIGMAS = ("batch", "image")
PRECISIONS = ("float32", "bfloat16")  # the exact mode and the fast mode
DRAWS = ("gaussian", "antithetic", "sobol")  # the paper's independent draws and two reduced-variance kinds
MEMORY_MB = 1024  # memory budget of the passes in flight when smoothgrad sizes them (max_batch=None)
MAX_WORKERS = 4  # passes side by side on the CPU, at most (each then holds at most MEMORY_MB / MAX_WORKERS)
MIN_PASSES, MIN_ROWS = 8, 128  # on the CPU: at least 8 passes, unless that makes them smaller than 128 copies


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


def smoothgrad_noise(
    embeddings: torch.Tensor,
    nsamples: int = 20,
    spread: float = 0.2,
    generator: torch.Generator | None = None,
    sigma: str = "batch",
    draws: str = "gaussian",
    chunk: int | None = None,
) -> torch.Tensor:
    """The ``(nsamples, *embeddings.shape)`` noise SmoothGrad adds: standard normal draws times
    ``noise_sigma(embeddings, spread, sigma)`` (the batch's range by default, as the paper; ``"image"``:
    each image's own). The draws are the same for both ``sigma`` choices; only their scale differs.

    ``draws``: ``"gaussian"`` (the paper's: independent draws); ``"antithetic"``: ``nsamples / 2`` draws and
    their negatives (draw ``s + nsamples / 2`` is ``-`` draw ``s``), which cancels the part of the gradient
    that changes linearly with the noise; ``"sobol"``: quasi-random normals, a scrambled Sobol point set of
    ``nsamples`` points in the ``D * h * w`` values of an image (at most ``SobolEngine.MAXDIM``), randomised
    per image by a random digital shift and mapped through the normal quantile, so that each image's draws
    are spread more evenly than independent ones (with ``nsamples`` a power of 2 each value's draws fall one
    in each of ``nsamples`` equally likely strata). Every kind is standard normal per value.

    ``chunk`` (Gaussian draws only) is the order in which the normals come from the generator. ``None``: draw
    after draw, each for the whole batch (the original loop's order). ``k``: ``k`` draws at a time, image by
    image within them (an image's ``k`` copies consecutive), the order of Captum's ``NoiseTunnel`` with
    ``nt_samples_batch_size=k``: from a generator seeded as Captum's global one, the very noise it adds.
    """
    if draws not in DRAWS:
        raise ValueError(f"unknown draws {draws!r}; choose one of {DRAWS}")
    if chunk is not None and (draws != "gaussian" or chunk < 1):
        raise ValueError(
            f"chunk orders Gaussian draws and must be >= 1, got chunk={chunk} with draws={draws!r}"
        )
    scale = noise_sigma(embeddings, spread, sigma)
    shape = (nsamples, *embeddings.shape)
    if draws == "gaussian" and chunk is None:
        eps = torch.randn(shape, generator=generator, dtype=embeddings.dtype)
    elif draws == "gaussian":
        n = len(embeddings)
        eps = torch.cat(
            [
                torch.randn(
                    (n, min(chunk, nsamples - s), *shape[2:]), generator=generator, dtype=embeddings.dtype
                ).transpose(0, 1)
                for s in range(0, nsamples, chunk)
            ]
        )
    elif draws == "antithetic":
        if nsamples % 2:
            raise ValueError(
                f"antithetic draws come in pairs (+eps, -eps): nsamples must be even, got {nsamples}"
            )
        half = torch.randn((nsamples // 2, *embeddings.shape), generator=generator, dtype=embeddings.dtype)
        eps = torch.cat([half, -half])
    else:
        eps = _sobol_normals(shape, generator).to(embeddings.dtype)
    # drawn on the CPU generator and moved: the same numbers whatever device the embeddings are on
    return eps.to(embeddings.device) * scale


def _sobol_normals(shape, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normals ``(S, N, ...)`` from one scrambled Sobol set of S points in the per-image dimension,
    randomised per image by a random digital shift (XOR of the points' binary digits), in float64."""
    nsamples, n, dim = shape[0], shape[1], math.prod(shape[2:])
    if dim > SobolEngine.MAXDIM:
        raise ValueError(
            f"Sobol draws cover at most {SobolEngine.MAXDIM} values per image, these images have "
            f"{dim}; use draws='antithetic'"
        )
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


def check_precision(precision: str, device: torch.device | str = "cpu") -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "bfloat16" and not bf16_supported(device):
        raise ValueError(
            f"precision='bfloat16' needs a device that computes in bfloat16 (a CPU with AVX512-BF16 "
            f"or AMX, a GPU with bf16); {torch.device(device)} here does not: use 'float32'"
        )


def _pass_inputs(x: torch.Tensor, precision: str) -> torch.Tensor:
    """A pass's input: channels-last for the fast mode (faster convolutions; other rounding)."""
    return x.contiguous(memory_format=torch.channels_last) if precision == "bfloat16" else x


def bytes_per_row(model: torch.nn.Module, embeddings: torch.Tensor, precision: str = "float32") -> int:
    """Memory one noisy copy takes in a forward + input-gradient pass: the tensors autograd keeps for the
    backward pass, measured as the difference between passes of two copies and of one (weights and their
    casts cancel), doubled for the backward pass's own temporaries, plus the copy and its gradient."""

    def saved(k):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = _pass_inputs(embeddings[:1].repeat(k, *[1] * (embeddings.ndim - 1)), precision).requires_grad_(
            True
        )
        with (
            torch.enable_grad(),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"),
        ):
            model(x)
        return sum(storages.values())

    return max(2 * (saved(2) - saved(1)), 0) + 2 * embeddings[:1].nbytes


def rows_per_pass(
    model: torch.nn.Module, embeddings: torch.Tensor, memory_mb: float = MEMORY_MB, precision: str = "float32"
) -> int:
    """How many noisy copies one forward + backward pass may hold within ``memory_mb`` (``bytes_per_row``)."""
    return max(1, int(memory_mb * 2**20 // bytes_per_row(model, embeddings, precision)))


def pass_size(
    model: torch.nn.Module,
    embeddings: torch.Tensor,
    copies: int,
    memory_mb: float = MEMORY_MB,
    precision: str = "float32",
) -> int:
    """Noisy copies per pass when ``smoothgrad`` sizes the passes: ``memory_mb / MAX_WORKERS`` worth
    (``rows_per_pass``) and, on the CPU, at most 1 / ``MIN_PASSES`` of the ``copies`` (but not below
    ``MIN_ROWS``), so that no worker waits long for another."""
    size = rows_per_pass(model, embeddings, memory_mb / MAX_WORKERS, precision)
    if embeddings.device.type == "cpu":
        size = min(size, max(-(-copies // MIN_PASSES), MIN_ROWS))
    return max(1, size)


def _workers(device: torch.device, passes: int) -> int:
    """Passes run side by side on the CPU: up to ``MAX_WORKERS``, as many as there are threads, each pass on
    ``threads // workers`` threads (a worker on one thread waits on no other thread, where two threads
    sharing each small operation wait at every one of them)."""
    return max(1, min(MAX_WORKERS, torch.get_num_threads(), passes)) if device.type == "cpu" else 1


def smoothgrad(
    model: torch.nn.Module,
    embeddings: torch.Tensor,
    target,
    nsamples: int = 20,
    spread: float = 0.2,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    where: str = "batch",
    max_batch: int | None = None,
    sigma: str = "batch",
    precision: str = "float32",
    draws: str = "gaussian",
    memory_mb: float = MEMORY_MB,
) -> torch.Tensor:
    """Mean gradient of each sample's ``target`` logit over noisy copies -> same shape as ``embeddings``.

    In eval mode every sample's logit depends on that sample only, so the noisy copies of all draws are
    stacked (draw-major) and cut into passes of up to ``max_batch`` copies; one backward pass gives all the
    gradients of a pass. ``max_batch=None`` sizes the passes from ``memory_mb`` (``pass_size``); besides the
    passes in flight the noise and the gradients of every copy are kept (``2 * nsamples`` times the batch's
    size). On the CPU up to ``MAX_WORKERS`` passes run side by side (``_workers``). The passes depend on the
    batch, the model and ``memory_mb``, not on the number of threads, so neither do the numbers.
    ``noise``: the ``(S, N, ...)`` noise to add (``smoothgrad_noise``); without it ``nsamples`` draws come
    from ``generator``. ``sigma``: the noise scale from the batch's range (``"batch"``, the paper's) or each
    image's own (``"image"``); see ``noise_sigma``. ``draws``: see ``smoothgrad_noise``. Both ignored when
    ``noise`` is given.

    ``precision="float32"`` (the exact mode) runs the kernels of the original's one gradient per image per
    draw and equals its numbers up to float32 rounding (``tests/test_iem_tis.py``: <= 1e-5); ``"bfloat16"``
    (the fast mode) computes the passes in bfloat16 autocast with channels-last inputs, where the device
    supports it (``bf16_supported``).
    """
    target = check_batch(model, embeddings, target, where)[:, None]
    check_precision(precision, embeddings.device)
    if nsamples < 1:
        raise ValueError(f"nsamples must be >= 1, got {nsamples}")
    if noise is None:
        noise = smoothgrad_noise(embeddings, nsamples, spread, generator, sigma, draws)
    n, rows = len(embeddings), len(noise) * len(embeddings)
    flat_noise = noise.reshape(rows, *embeddings.shape[1:])
    per_pass = max_batch or pass_size(model, embeddings, rows, memory_mb, precision)
    grads = torch.empty_like(flat_noise)

    def one_pass(start):  # the input gradients of the noisy copies start, ..., start + per_pass - 1
        stop = min(start + per_pass, rows)
        index = torch.arange(start, stop, device=embeddings.device) % n
        x = _pass_inputs(embeddings[index] + flat_noise[start:stop], precision).requires_grad_(True)
        with torch.enable_grad():
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                logits = model(x).gather(1, target[index])
            (grads[start:stop],) = torch.autograd.grad(logits.sum(), x)

    starts = range(0, rows, per_pass)
    workers = _workers(embeddings.device, len(starts))
    if workers == 1:
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
    grad = grads.reshape(len(noise), *embeddings.shape).mean(0)
    if not torch.isfinite(grad).all():
        raise FloatingPointError(f"NaN or Inf in the gradients of {where}")
    return grad
