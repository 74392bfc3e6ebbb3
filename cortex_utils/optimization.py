"""Codebook-level explanation (the paper's codebook optimisation): change the tokens of one region of the grid
so that the IEM sees another class. Adam maximises the target logit, the gradient masked to the region;
``optimize_tokens`` picks codebook ids by a hard Gumbel-softmax, ``optimize_embeddings`` moves the embeddings
freely, then snaps them to the nearest codes. Tokens outside the region never change.
Saliency vs optimisation: which ids went into the region, how many are concept tokens, and what chance gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import bootstrap

from .devices import device_of
from .progress import tqdm


def _span(x, size: int, name: str) -> slice:
    if isinstance(x, slice):
        x = range(x.start or 0, size if x.stop is None else x.stop, 1 if x.step is None else x.step)
    if isinstance(x, range):
        if x.step != 1:
            raise ValueError(f"{name}: a region must be a contiguous block, got step {x.step}")
        start, stop = x.start, x.stop
    else:
        try:
            start, stop = (int(v) for v in x)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a (start, stop) pair, a range or a slice, got {x!r}") from None
    if stop <= start:
        raise ValueError(f"{name} [{start}, {stop}) is empty")
    if start < 0 or stop > size:
        raise ValueError(f"{name} [{start}, {stop}) lies (partly) outside the grid's [0, {size})")
    return slice(start, stop)


def region_mask(grid, rows, cols) -> np.ndarray:
    """Bool ``(h, w)``, True on the block ``rows x cols`` (each ``(start, stop)``, a range or a slice).
    The paper's block, rows and cols 7-10 of 16: ``region_mask((16, 16), (7, 11), (7, 11))``."""
    h, w = (int(g) for g in grid)
    mask = np.zeros((h, w), dtype=bool)
    mask[_span(rows, h, "rows"), _span(cols, w, "cols")] = True
    return mask


def check_pair(source: int | None, target: int, n_classes: int) -> None:
    """``target`` (and ``source``, unless None) must be classes of the IEM, and two different ones."""
    for name, c in (("source", source), ("target", target)):
        if c is not None and not 0 <= int(c) < n_classes:
            raise ValueError(f"{name} class {c} is outside the IEM's classes [0, {n_classes})")
    if source is not None and int(source) == int(target):
        raise ValueError(f"source and target are the same class ({source}); pick another target")


def snap_to_codebook(embeddings: torch.Tensor, codebook: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Nearest codebook id (exact L2; ties: the smaller id) of every position: ``(D, h, w)`` -> ``(h, w)``,
    ``(N, D, h, w)`` -> ``(N, h, w)`` (int64)."""
    cb = codebook.detach().float()
    e = embeddings.detach().float()
    e = e[None] if embeddings.ndim == 3 else e
    if e.ndim != 4 or e.shape[1] != cb.shape[1]:
        raise ValueError(
            f"embeddings must be (N, {cb.shape[1]}, h, w) or ({cb.shape[1]}, h, w) for a codebook "
            f"{tuple(cb.shape)}, got {tuple(embeddings.shape)}"
        )
    flat = e.permute(0, 2, 3, 1).reshape(-1, e.shape[1])
    exact = "donot_use_mm_for_euclid_dist"
    ids = torch.cat([torch.cdist(x, cb, compute_mode=exact).argmin(1) for x in flat.split(chunk)])
    ids = ids.reshape(len(e), *e.shape[2:])
    return ids[0] if embeddings.ndim == 3 else ids


def check_outside_unchanged(original, optimized, region_mask) -> None:
    """Raise ``AssertionError`` unless every token outside ``region_mask`` ``(h, w)`` is the original one;
    grids ``(h, w)`` or ``(N, h, w)``. A violation is a bug of the optimizers, so it stops the run."""
    a, b = torch.as_tensor(np.asarray(original)), torch.as_tensor(np.asarray(optimized))
    r = torch.as_tensor(np.asarray(region_mask, dtype=bool))
    if a.shape != b.shape or tuple(a.shape[-2:]) != tuple(r.shape):
        raise ValueError(f"grids {tuple(a.shape)}, {tuple(b.shape)} must match the region's {tuple(r.shape)}")
    changed = int((a != b)[..., ~r].sum())
    if changed:
        raise AssertionError(f"{changed} token(s) changed outside the optimized region")


def _prepare(iem, codebook, tokens, region, target, source, steps):
    """Validate the inputs; the IEM in eval mode; the codebook, grid, region and original embedding grid on
    the IEM's device, and the original target logit."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cb = codebook.detach().float()
    if cb.ndim != 2:
        raise ValueError(f"the codebook must be (K, D), got {tuple(codebook.shape)}")
    t = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens).long().cpu()
    if t.ndim != 2:
        raise ValueError(f"tokens must be one token grid (h, w), got shape {tuple(t.shape)}")
    if t.min() < 0 or t.max() >= len(cb):
        raise ValueError(f"token ids must lie in [0, {len(cb)}), got [{int(t.min())}, {int(t.max())}]")
    r = torch.as_tensor(np.asarray(region) if not isinstance(region, torch.Tensor) else region).cpu()
    if r.dtype != torch.bool or tuple(r.shape) != tuple(t.shape):
        raise ValueError(
            f"region_mask must be bool of the grid's shape {tuple(t.shape)}, got "
            f"{r.dtype} {tuple(r.shape)} (see region_mask)"
        )
    if not r.any():
        raise ValueError("region_mask is empty: nothing to optimize")
    iem.eval()
    device = device_of(iem)
    cb, t, r = cb.to(device), t.to(device), r.to(device)
    emb0 = cb[t].permute(2, 0, 1)[None].contiguous()  # (1, D, h, w)
    with torch.no_grad():
        out = iem(emb0)
    if out.ndim != 2 or len(out) != 1:
        raise ValueError(f"the IEM must return logits (1, n_classes), got {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise FloatingPointError("NaN or Inf in the IEM output for the original tokens (before step 0)")
    check_pair(source, target, out.shape[1])
    return cb, t, r, emb0, float(out[0, int(target)])


def _target_logit(iem, x, target: int, step: int) -> torch.Tensor:
    out = iem(x)
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"NaN or Inf in the IEM output at step {step}")
    return out[0, int(target)]


def _snapshot_due(step: int, steps: int, every: int) -> bool:
    return bool(every) and (step % every == 0 or step == steps - 1)


@dataclass(frozen=True)
class Search:
    """The optimiser's settings: Adam's ``steps`` and ``lr``; a grid kept every ``snapshot_every`` steps."""

    steps: int = 500
    lr: float = 0.01
    snapshot_every: int = 0
    progress: bool = True


@dataclass(frozen=True)
class TokenSearch(Search):
    """Token mode's settings: ``Search``'s, the Gumbel-softmax temperature ``tau``, the ``seed`` of its noise
    and ``init_logit``, the initial logits' size (+ at the original id, - elsewhere)."""

    tau: float = 1.0
    seed: int = 0
    init_logit: float = 300.0


def gumbel_pick(z: torch.Tensor, tau: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A hard, straight-through Gumbel-softmax selection per row of ``z`` and the chosen ids; the noise
    -log(-log U) comes from ``torch.rand``, whose stream (not ``exponential_``'s) is the same on every CPU."""
    u = torch.rand(z.shape, generator=g).to(z.device)  # drawn on the CPU: the same noise on every device
    gumbel = -(-u.clamp(1e-30, 1 - 1e-7).log()).log()
    soft = ((z + gumbel) / tau).softmax(-1)
    choice = soft.argmax(-1)
    hard = F.one_hot(choice, z.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft, choice


def optimize_tokens(
    iem, codebook: torch.Tensor, tokens, region_mask, target: int, options=TokenSearch(), source=None
) -> dict:
    """Token mode: Adam on logits ``(h*w, K)`` over codebook ids, the region's rows drawn from N(0, 1); each
    step feeds ``gumbel_pick``'s ``one_hot @ codebook`` to the IEM. Returns ``tokens`` (of the best step),
    ``final_tokens``, ``best_step``, ``best_logit``, ``original_logit``, ``history``, ``snapshots``."""
    steps, tau, init_logit = options.steps, options.tau, options.init_logit
    if tau <= 0:
        raise ValueError(f"the Gumbel-softmax temperature tau must be > 0, got {tau}")
    cb, t, region, _, original_logit = _prepare(iem, codebook, tokens, region_mask, target, source, steps)
    (h, w), (K, D) = t.shape, cb.shape
    orig, inside = t.flatten(), region.flatten()
    ridx = inside.nonzero()[:, 0]
    g = torch.Generator().manual_seed(options.seed)
    logits = torch.full((h * w, K), -float(init_logit), device=cb.device)
    logits[torch.arange(h * w, device=cb.device), orig] = float(init_logit)
    logits[ridx] = torch.randn(len(ridx), K, generator=g).to(cb.device)
    logits.requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=options.lr)
    base = cb[orig]  # (h*w, D): one_hot(original) @ codebook
    history, snapshots = [], []
    best_logit, best_ids, best_step = -np.inf, None, -1
    bar = tqdm(range(steps), desc="optimize tokens", disable=not options.progress)
    for step in bar:
        onehot, choice = gumbel_pick(logits[ridx], tau, g)
        emb = base.index_put((ridx,), onehot @ cb).T.reshape(1, D, h, w)
        logit = _target_logit(iem, emb, target, step)
        ids = orig.clone()
        ids[ridx] = choice
        value = logit.item()
        history.append((step, value))
        if value > best_logit:
            best_logit, best_ids, best_step = value, ids, step
        if _snapshot_due(step, steps, options.snapshot_every):
            snapshots.append((step, ids.reshape(h, w).clone().cpu()))
        (grad,) = torch.autograd.grad(-logit, logits)
        grad[~inside] = 0  # the original masks the gradient to the block's rows
        logits.grad = grad
        opt.step()
        if step % max(1, steps // 100) == 0:
            bar.set_postfix(logit=f"{value:.2f}", best=f"{best_logit:.2f}")
    orig, best_ids, ids, region = orig.cpu(), best_ids.cpu(), ids.cpu(), region.cpu()  # results: on the host
    for grid in (best_ids, ids):
        check_outside_unchanged(orig.reshape(h, w), grid.reshape(h, w), region)
    return {
        "tokens": best_ids.reshape(h, w),
        "final_tokens": ids.reshape(h, w),
        "best_step": best_step,
        "best_logit": best_logit,
        "original_logit": original_logit,
        "history": pd.DataFrame(history, columns=["step", "target_logit"]),
        "snapshots": snapshots,
    }


def optimize_embeddings(
    iem, codebook: torch.Tensor, tokens, region_mask, target: int, options=Search(), source=None
) -> dict:
    """Embedding mode: Adam on the ``(1, D, h, w)`` embedding grid, then snapped to the nearest codes. Returns
    ``embeddings``, ``tokens`` (snapped), ``original_logit``, ``final_logit``, ``snapped_logit``, ``history``
    and ``snapshots``. Nothing is random; ``TokenSearch`` options are refused."""
    if isinstance(options, TokenSearch):
        raise TypeError("embedding mode takes Search options: tau, seed and init_logit are token mode's")
    steps = options.steps
    cb, t, region, emb0, original_logit = _prepare(iem, codebook, tokens, region_mask, target, source, steps)
    keep = (~region)[None, None]  # (1, 1, h, w)
    emb = emb0.clone().requires_grad_(True)
    opt = torch.optim.Adam([emb], lr=options.lr)
    history, snapshots = [], []

    def snapped(x, step):  # the snapped grid (outside: the original ids) and its target logit
        ids = snap_to_codebook(x[0], cb)
        ids[~region] = t[~region]
        with torch.no_grad():
            return ids, _target_logit(iem, cb[ids].permute(2, 0, 1)[None], target, step).item()

    bar = tqdm(range(steps), desc="optimize embeddings", disable=not options.progress)
    for step in bar:
        logit = _target_logit(iem, emb, target, step)
        value, snap_value = logit.item(), np.nan
        if _snapshot_due(step, steps, options.snapshot_every):
            ids, snap_value = snapped(emb.detach(), step)
            snapshots.append((step, ids.cpu()))
        history.append((step, value, snap_value))
        (grad,) = torch.autograd.grad(-logit, emb)
        emb.grad = grad.masked_fill(keep, 0.0)
        opt.step()
        if step % max(1, steps // 100) == 0:
            bar.set_postfix(logit=f"{value:.2f}")
    final = emb.detach().clone()
    if not torch.equal(final.masked_select(keep), emb0.masked_select(keep)):
        raise AssertionError("the embeddings changed outside the region")
    ids, snapped_logit = snapped(final, steps)
    ids = ids.cpu()  # results: on the host
    check_outside_unchanged(t.cpu(), ids, region.cpu())
    with torch.no_grad():
        final_logit = _target_logit(iem, final, target, steps).item()
    return {
        "embeddings": final.cpu(),
        "tokens": ids,
        "original_logit": original_logit,
        "final_logit": final_logit,
        "snapped_logit": snapped_logit,
        "snapshots": snapshots,
        "history": pd.DataFrame(history, columns=["step", "target_logit", "snapped_logit"]),
    }


# --- saliency vs optimisation --------------------------------------------------------------------


def fill_region(tokens, region_mask, fill) -> np.ndarray:
    """``tokens`` ``(h, w)`` or ``(N, h, w)`` with the region's positions taken from ``fill`` (one grid for
    all, or one per grid; e.g. ``concepts.arrange_tokens``' output), the rest unchanged; int64."""
    t = np.asarray(tokens).astype(np.int64)
    r = np.asarray(region_mask, dtype=bool)
    f = np.asarray(fill).astype(np.int64)
    if t.shape[-2:] != r.shape or f.shape not in (r.shape, t.shape):
        raise ValueError(
            f"tokens {t.shape}, region {r.shape} and fill {f.shape} must share the grid (fill: one "
            "grid, or one per token grid)"
        )
    if (f[..., r] < 0).any():
        raise ValueError("fill holds a negative id inside the region")
    out = np.where(r, f, t)
    check_outside_unchanged(t, out, r)
    return out


def new_region_ids(before, after, region_mask) -> list[np.ndarray]:
    """What the optimiser put into the region: per pair of ``(N, h, w)`` grids, the ids ``after`` holds where
    it differs from ``before`` inside the region (row-major)."""
    a, b = np.asarray(before).astype(np.int64), np.asarray(after).astype(np.int64)
    r = np.asarray(region_mask, dtype=bool)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1:] != r.shape:
        raise ValueError(
            f"before {a.shape} and after {b.shape} must be (N, h, w) grids of the region's {r.shape}"
        )
    return [g[r][g0[r] != g[r]] for g0, g in zip(a, b, strict=True)]


def _shares(draws: np.ndarray, concept: np.ndarray) -> np.ndarray:
    """Row-wise ``concept_share`` of an ``(M, n)`` int array (n >= 1)."""
    srt = np.sort(draws, axis=1)
    first = np.ones_like(srt, dtype=bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]  # each distinct id once
    return (first & np.isin(srt, concept)).sum(1) / first.sum(1)


def concept_share(ids, concept_ids) -> float:
    """The share of the distinct ``ids`` among ``concept_ids`` (NaN for no ids); a repeated id counts once."""
    ids = np.asarray(ids, dtype=np.int64).ravel()
    return float(_shares(ids[None], np.asarray(concept_ids, dtype=np.int64))[0]) if ids.size else float("nan")


def _usage_p(usage) -> np.ndarray:
    u = np.asarray(usage, dtype=np.float64).ravel()
    if u.size == 0 or (u < 0).any() or not np.isfinite(u).all() or u.sum() <= 0:
        raise ValueError("usage must be non-negative counts per codebook id with a positive sum")
    return u / u.sum()


def _per_grid_sets(concept_ids, n_grids: int) -> list[np.ndarray]:
    """One concept id set shared by all grids (a 1-D array / list of ints), or one set per grid."""
    if len(concept_ids) and all(np.ndim(c) >= 1 for c in concept_ids):
        if len(concept_ids) != n_grids:
            raise ValueError(f"{len(concept_ids)} concept id sets for {n_grids} grids")
        return [np.asarray(c, dtype=np.int64).ravel() for c in concept_ids]
    return [np.asarray(concept_ids, dtype=np.int64).ravel()] * n_grids


def _draw(p: np.ndarray, seed: int, j: int, size) -> np.ndarray:
    """Codebook ids drawn i.i.d. with probabilities ``p``, grid ``j`` from its own stream (``seed``, j)."""
    return np.random.default_rng([seed, j]).choice(len(p), size=size, p=p)


def overlap_null(sizes, concept_ids, usage, n_draws: int = 2000, seed: int = 0) -> np.ndarray:
    """``(n_draws,)``: the mean ``concept_share`` over the grids of size > 0 when grid j's new ids are
    ``sizes[j]`` ids drawn i.i.d. from ``usage`` (counts per codebook id), each grid from its own stream.
    ``concept_ids``: one set for every grid, or one per grid."""
    p = _usage_p(usage)
    sets = _per_grid_sets(concept_ids, len(sizes))
    used = [(j, int(n)) for j, n in enumerate(sizes) if int(n) > 0]
    if not used:
        raise ValueError("no grid with a new id: nothing to compare with chance")
    return np.mean([_shares(_draw(p, seed, j, (n_draws, n)), sets[j]) for j, n in used], axis=0)


def random_ids_like(ids_per_grid, usage, seed: int = 0) -> list[np.ndarray]:
    """The random-id control: as many ids per grid as ``ids_per_grid`` holds, drawn as ``overlap_null``'s."""
    p = _usage_p(usage)
    return [_draw(p, seed, j, np.size(ids)) for j, ids in enumerate(ids_per_grid)]


def overlap_vs_chance(ids_per_grid, concept_ids, usage, n_draws: int = 2000, seed: int = 0) -> dict:
    """``overlap`` (the mean ``concept_share`` over the grids that got a new id), ``chance`` (its mean under
    ``overlap_null``), the one-sided Monte Carlo ``p_value`` and ``grids`` (how many entered)."""
    ids_per_grid = [np.asarray(i, dtype=np.int64).ravel() for i in ids_per_grid]
    sets = _per_grid_sets(concept_ids, len(ids_per_grid))
    used = [j for j, i in enumerate(ids_per_grid) if i.size]
    if not used:
        return {"overlap": float("nan"), "chance": float("nan"), "p_value": float("nan"), "grids": 0}
    observed = float(np.mean([concept_share(ids_per_grid[j], sets[j]) for j in used]))
    null = overlap_null([len(i) for i in ids_per_grid], sets, usage, n_draws, seed)
    p = (1 + int((null >= observed - 1e-12).sum())) / (n_draws + 1)
    return {"overlap": observed, "chance": float(null.mean()), "p_value": p, "grids": len(used)}


def mean_difference_interval(
    a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of paired differences ``a - b``, its percentile bootstrap interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if np.shape(a) != np.shape(b) or d.ndim != 1 or d.size == 0 or not np.isfinite(d).all():
        raise ValueError(
            f"need two equally long, finite 1-D arrays of paired values, got {np.shape(a)}, {np.shape(b)}"
        )
    if d.size == 1:
        return float(d[0]), float(d[0]), float(d[0])
    ci = bootstrap((d,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile", rng=seed)
    return float(d.mean()), float(ci.confidence_interval.low), float(ci.confidence_interval.high)
