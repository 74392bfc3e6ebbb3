"""Attribution methods behind one interface: each maps an IEM, embeddings ``(N, D, h, w)`` and each sample's
target class to one score per grid position ``(N, h, w)``, the TIS format:

    scores = attribute(model, embeddings, target, method="smoothgrad", reduction="max", **options)

``METHODS`` is the registry, a name -> a function ``(model, x, target, **options)`` that returns per-value
attributions ``(N, D, h, w)``. ``attribute`` checks the batch once (``iem.check_batch``: shape, eval mode,
targets), runs the method and reduces over the embedding channels (``reduce_channels``: ``max``, the paper's,
or ``mean``). Every method takes the same keyword options and uses those it needs (as Captum's methods share
``inputs``, ``target`` and ``baselines``):

* ``smoothgrad`` (the paper's TIS, the default): ``smoothgrad.smoothgrad``, the project's one SmoothGrad:
  signed gradients averaged over ``nsamples`` noisy copies, sigma = ``spread`` * (max - min) of the batch
  (``sigma``, ``draws``, ``precision``: see there). The noise comes from ``seed`` (``noise_chunk``: in
  Captum's order, see ``smoothgrad.smoothgrad_noise``) or is given as ``noise``;
* ``gradient``: Captum's ``Saliency`` (signed gradient, no noise);
* ``grad_x_input``: Captum's ``InputXGradient``;
* ``integrated_gradients``: Captum's ``IntegratedGradients`` from ``baseline`` (default zeros; notebooks 05
  and 11 use the neutral token's embedding everywhere, i.e. an all-background grid) in ``steps`` steps;
* ``occlusion``: Captum's ``FeatureAblation`` with one feature per grid position (or per ``group`` x ``group``
  block): the drop of the target logit when that position's embedding is replaced by ``baseline`` (the
  neutral token's embedding = putting the neutral token there).

``attribute_tokens`` runs ``attribute`` over token grids in batches (notebook 11); ``tis.compute_tis`` over a
dataset's loader (notebook 05). Where we differ from Captum: SmoothGrad is ours, not Captum's
``NoiseTunnel(Saliency)``; given the same noise the two agree (``tests/test_attribution.py``), ours in a
fraction of the time (``benchmarks/tis_speed.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from .iem import check_batch
from .progress import tqdm
from .smoothgrad import smoothgrad, smoothgrad_noise

REDUCTIONS = ("max", "mean")


# Captum (about a second to import, and matplotlib with it) is imported by the methods that use it, so that
# SmoothGrad, the default, and every module that only computes TIS with it never load it.


def _smoothgrad(
    model,
    x,
    target,
    nsamples=20,
    spread=0.2,
    sigma="batch",
    draws="gaussian",
    precision="float32",
    noise=None,
    noise_chunk=None,
    generator=None,
    where="batch",
    **_,
):
    if noise is None:
        noise = smoothgrad_noise(x, nsamples, spread, generator, sigma, draws, noise_chunk)
    return smoothgrad(model, x, target, noise=noise, where=where, precision=precision)


def _gradient(model, x, target, **_):
    from captum.attr import Saliency  # deferred: captum takes a second to import; SmoothGrad needs none of it

    return Saliency(model).attribute(x.requires_grad_(), target=target, abs=False)


def _grad_x_input(model, x, target, **_):
    from captum.attr import InputXGradient  # deferred: as Saliency above

    return InputXGradient(model).attribute(x.requires_grad_(), target=target)


def _integrated_gradients(model, x, target, baseline=None, steps=16, max_batch=1024, **_):
    from captum.attr import IntegratedGradients  # deferred: as Saliency above

    return IntegratedGradients(model).attribute(
        x.requires_grad_(),
        baselines=baseline,
        target=target,
        n_steps=steps,
        internal_batch_size=max(max_batch, len(x)),
    )


def position_groups(grid, group: int = 1) -> torch.Tensor:
    """``(h, w)`` feature ids: one per grid position (``group`` 1) or per ``group`` x ``group`` block."""
    h, w = grid
    if group < 1:
        raise ValueError(f"the occlusion group size must be >= 1, got {group}")
    r = torch.arange(h)[:, None] // group
    c = torch.arange(w)[None, :] // group
    return r * ((w + group - 1) // group) + c


def _occlusion(model, x, target, baseline=None, group=1, max_batch=1024, **_):
    from captum.attr import FeatureAblation  # deferred: as Saliency above

    mask = position_groups(x.shape[2:], group)[None, None].expand(1, x.shape[1], -1, -1)
    per_eval = max(1, min(int(mask.max()) + 1, max_batch // max(len(x), 1)))
    return FeatureAblation(model).attribute(
        x, baselines=baseline, target=target, feature_mask=mask, perturbations_per_eval=per_eval
    )


METHODS = {
    "smoothgrad": _smoothgrad,
    "gradient": _gradient,
    "grad_x_input": _grad_x_input,
    "integrated_gradients": _integrated_gradients,
    "occlusion": _occlusion,
}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {list(METHODS)}")


def reduce_channels(grad: torch.Tensor, reduction: str = "max") -> torch.Tensor:
    """``(N, D, h, w)`` signed attributions -> ``(N, h, w)`` scores."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    return grad.amax(1) if reduction == "max" else grad.mean(1)


def expand_baseline(baseline, embeddings: torch.Tensor) -> torch.Tensor | None:
    """A baseline for IG / occlusion broadcast to ``embeddings`` ``(N, D, h, w)``.

    Accepts ``None`` (zeros), one embedding ``(D,)`` put at every position (e.g. the neutral token's
    codebook row), one grid ``(D, h, w)`` or ``(1, D, h, w)``, or one per sample ``(N, D, h, w)``.
    """
    if baseline is None:
        return None
    b = torch.as_tensor(baseline, dtype=embeddings.dtype)
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


def attribute(
    model: torch.nn.Module,
    embeddings: torch.Tensor,
    target,
    method: str = "smoothgrad",
    reduction: str = "max",
    nsamples: int = 20,
    spread: float = 0.2,
    steps: int = 16,
    baseline=None,
    group: int = 1,
    seed: int | None = 0,
    max_batch: int = 1024,
    where: str = "batch",
    *,
    sigma: str = "batch",
    draws: str = "gaussian",
    precision: str = "float32",
    noise: torch.Tensor | None = None,
    noise_chunk: int | None = None,
) -> torch.Tensor:
    """Scores ``(N, h, w)`` of one batch by ``method`` (see ``METHODS``), reduced over channels by
    ``reduction``.

    SmoothGrad: ``nsamples``, ``spread``, ``sigma``, ``draws``, ``precision`` (``smoothgrad.smoothgrad``); its
    noise comes from a generator seeded with ``seed`` (``None``: the global RNG), drawn draw after draw, or
    ``noise_chunk`` draws at a time in Captum's order (``smoothgrad.smoothgrad_noise``), or is given as
    ``noise``. IG: ``steps``; IG and occlusion: ``baseline`` (``expand_baseline``); occlusion: ``group``
    (block size). ``max_batch`` bounds the rows of one of IG's or occlusion's forward passes (roughly);
    SmoothGrad sizes its passes from a memory budget.
    """
    check_method(method)
    target = check_batch(model, embeddings, target, where)
    if nsamples < 1 or steps < 1:
        raise ValueError(f"nsamples and steps must be >= 1, got {nsamples} and {steps}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    attr = METHODS[method](
        model,
        embeddings.detach().clone(),
        target,
        nsamples=nsamples,
        spread=spread,
        steps=steps,
        baseline=expand_baseline(baseline, embeddings),
        group=group,
        max_batch=max_batch,
        where=where,
        sigma=sigma,
        draws=draws,
        precision=precision,
        noise=noise,
        noise_chunk=noise_chunk,
        generator=generator,
    )
    if not torch.isfinite(attr).all():
        raise FloatingPointError(f"NaN or Inf in the {method} attributions of {where}")
    return reduce_channels(attr.detach(), reduction)


def attribute_tokens(
    model,
    codebook: torch.Tensor,
    tokens,
    targets,
    method: str = "smoothgrad",
    batch_size: int = 100,
    progress: bool = False,
    **options,
) -> np.ndarray:
    """``attribute`` over token grids ``(N, h, w)`` in batches of ``batch_size`` -> float32 ``(N, h, w)``.

    Batch ``b``'s SmoothGrad noise comes from ``seed + b`` (``options["seed"]``, default 0), ``max_batch //
    len(batch)`` draws at a time in Captum's order: the noise Captum's ``NoiseTunnel(Saliency)`` draws from
    that seed with passes of ``max_batch`` rows (``options["max_batch"]``, default 1024), which computed these
    maps before the project's SmoothGrad did (notebook 11's numbers stay theirs).
    """
    t = torch.as_tensor(np.asarray(tokens)).long()
    targets = np.asarray(targets, dtype=np.int64)
    if t.ndim != 3 or len(targets) != len(t):
        raise ValueError(
            f"need token grids (N, h, w) and one target each, got {tuple(t.shape)} and {len(targets)}"
        )
    seed = options.pop("seed", 0)
    max_batch, nsamples = options.get("max_batch", 1024), options.get("nsamples", 20)
    gaussian = options.get("draws", "gaussian") == "gaussian"
    out = []
    for b, i in enumerate(tqdm(range(0, len(t), batch_size), desc=method, disable=not progress, leave=False)):
        x = codebook[t[i : i + batch_size]].permute(0, 3, 1, 2).contiguous()
        chunk = max(1, min(nsamples, max_batch // len(x))) if gaussian else None
        out.append(
            attribute(
                model,
                x,
                targets[i : i + batch_size],
                method,
                seed=None if seed is None else seed + b,
                where=f"rows {i}-{i + len(x) - 1}",
                noise_chunk=chunk,
                **options,
            )
        )
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, *t.shape[1:]), np.float32)
