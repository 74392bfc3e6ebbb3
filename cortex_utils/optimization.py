"""Codebook-level explanation: change the tokens of one image region so that the IEM sees another class.

As the original: a fixed block of the grid is optimized for the IEM's target logit (loss = -logit, Adam,
the gradient masked to the block), everything outside the block stays as it was. Two modes:

* ``optimize_tokens``: a logits matrix ``(h*w, K)`` over codebook ids, initialised to ``+init_logit`` at
  each position's original id and ``-init_logit`` elsewhere, the block's rows redrawn from N(0, 1); a hard
  (straight-through) Gumbel-softmax picks one id per position; embeddings = one-hot @ codebook.
* ``optimize_embeddings``: the embedding grid itself is optimized, then snapped to the nearest codes.

Tokens outside the region never change: by construction (the gradient is zeroed there and the outside ids
are the original ones), and ``check_outside_unchanged`` raises if they ever do; both functions call it on
what they return. It is an invariant, not a result.

Snapshots: instead of a callback, both functions take ``snapshot_every=k`` and return a list of
``(step, token grid)`` taken every k steps and at the last step (in embedding mode, the snapped grid);
a notebook widget can page through them afterwards.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def _span(x, size: int, name: str) -> tuple[int, int]:
    if isinstance(x, slice):
        if x.step not in (None, 1):
            raise ValueError(f"{name}: a region must be a contiguous block, got step {x.step}")
        start, stop = x.start or 0, size if x.stop is None else x.stop
    elif isinstance(x, range):
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
    return start, stop


def region_mask(grid, rows, cols) -> np.ndarray:
    """Bool ``(h, w)``, True on the block ``rows x cols``; each a half-open ``(start, stop)`` pair, a ``range``
    or a ``slice``. The paper's block (rows/cols 7-10 of 16) is ``region_mask((16, 16), (7, 11), (7, 11))``."""
    h, w = (int(g) for g in grid)
    r0, r1 = _span(rows, h, "rows")
    c0, c1 = _span(cols, w, "cols")
    mask = np.zeros((h, w), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def check_pair(source: int, target: int, n_classes: int) -> None:
    """A (source class -> target class) pair must name two different classes of the IEM."""
    for name, c in (("source", source), ("target", target)):
        if not 0 <= int(c) < n_classes:
            raise ValueError(f"{name} class {c} is outside the IEM's classes [0, {n_classes})")
    if int(source) == int(target):
        raise ValueError(f"source and target are the same class ({source}); pick another target")


def snap_to_codebook(embeddings: torch.Tensor, codebook: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Nearest codebook id (exact L2; ties: the smaller id) of every position: ``(D, h, w)`` -> ``(h, w)``,
    ``(N, D, h, w)`` -> ``(N, h, w)`` (int64)."""
    cb = codebook.detach().float()
    e = embeddings.detach().float()
    squeeze = e.ndim == 3
    if squeeze:
        e = e[None]
    if e.ndim != 4 or e.shape[1] != cb.shape[1]:
        raise ValueError(f"embeddings must be (N, {cb.shape[1]}, h, w) or ({cb.shape[1]}, h, w) for a codebook "
                         f"{tuple(cb.shape)}, got {tuple(embeddings.shape)}")
    n, d, h, w = e.shape
    flat = e.permute(0, 2, 3, 1).reshape(-1, d)
    ids = torch.cat([torch.cdist(flat[i:i + chunk], cb, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
                     for i in range(0, len(flat), chunk)]) if len(flat) else torch.zeros(0, dtype=torch.long)
    ids = ids.reshape(n, h, w)
    return ids[0] if squeeze else ids


def check_outside_unchanged(original, optimized, region_mask) -> None:
    """Raise ``AssertionError`` unless every token outside the region is the original one.

    ``original`` and ``optimized``: token grids ``(h, w)`` or stacks ``(N, h, w)`` (tensors or arrays);
    ``region_mask``: bool ``(h, w)``. The optimizers guarantee this by construction; a violation is a bug,
    so it stops the run (an explicit ``raise``, not an ``assert`` statement that ``python -O`` would drop).
    """
    a, b = torch.as_tensor(np.asarray(original)), torch.as_tensor(np.asarray(optimized))
    r = torch.as_tensor(np.asarray(region_mask, dtype=bool))
    if a.shape != b.shape or tuple(a.shape[-2:]) != tuple(r.shape):
        raise ValueError(f"token grids {tuple(a.shape)} and {tuple(b.shape)} must match each other and the "
                         f"region's grid {tuple(r.shape)}")
    changed = int((a != b)[..., ~r].sum())
    if changed:
        raise AssertionError(f"{changed} token(s) changed outside the optimized region")


def _prepare(iem, codebook, tokens, region, target, source):
    """Validate the inputs; the IEM in eval mode; the original embedding grid and its logits."""
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
        raise ValueError(f"region_mask must be bool of the grid's shape {tuple(t.shape)}, got "
                         f"{r.dtype} {tuple(r.shape)} (see region_mask)")
    if not r.any():
        raise ValueError("region_mask is empty: nothing to optimize")
    iem.eval()
    emb0 = cb[t].permute(2, 0, 1)[None].contiguous()  # (1, D, h, w)
    with torch.no_grad():
        out = iem(emb0)
    if out.ndim != 2 or len(out) != 1:
        raise ValueError(f"the IEM must return logits (1, n_classes), got {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise FloatingPointError("NaN or Inf in the IEM output for the original tokens (before step 0)")
    n_classes = out.shape[1]
    if not 0 <= int(target) < n_classes:
        raise ValueError(f"target class {target} is outside the IEM's classes [0, {n_classes})")
    if source is not None:
        check_pair(source, target, n_classes)
    return cb, t, r, emb0, float(out[0, int(target)])


def _target_logit(iem, x, target: int, step: int) -> torch.Tensor:
    out = iem(x)
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"NaN or Inf in the IEM output at step {step}")
    return out[0, target]


def _snapshot_due(step: int, steps: int, every: int) -> bool:
    return bool(every) and (step % every == 0 or step == steps - 1)


def optimize_tokens(iem, codebook: torch.Tensor, tokens, region_mask, target: int, steps: int = 500,
                    lr: float = 0.01, tau: float = 1.0, seed: int = 0, init_logit: float = 300.0,
                    source: int | None = None, snapshot_every: int = 0, progress: bool = True) -> dict:
    """Token mode: optimize a logits matrix over codebook ids inside the region (see the module docstring).

    Each step draws a hard Gumbel-softmax selection (straight-through), feeds ``one_hot @ codebook`` to the
    IEM, and takes an Adam step on ``-target logit`` with the gradient zeroed outside the region's rows.
    Outside the region the selection is the one-hot of the original id: with the +-``init_logit`` rows the
    original's sampling there is deterministic anyway, so only the region's rows are sampled (the same
    numbers without drawing noise for every position; it also keeps outside tokens exact for any init_logit).
    The IEM is put in eval mode; ``source`` (optional) is checked to differ from ``target``.

    Returns a dict: ``tokens`` (the best step's grid: highest target logit of the hard selection, int64
    ``(h, w)``), ``final_tokens`` (the last step's), ``best_step``, ``best_logit``, ``original_logit``,
    ``history`` (DataFrame: step, target_logit) and ``snapshots`` (list of (step, grid); see the module).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if tau <= 0:
        raise ValueError(f"the Gumbel-softmax temperature tau must be > 0, got {tau}")
    cb, t, region, _, original_logit = _prepare(iem, codebook, tokens, region_mask, target, source)
    target = int(target)
    (h, w), (K, D) = t.shape, cb.shape
    orig = t.flatten()
    inside = region.flatten()
    ridx = inside.nonzero()[:, 0]
    g = torch.Generator().manual_seed(seed)
    logits = torch.full((h * w, K), -float(init_logit))
    logits[torch.arange(h * w), orig] = float(init_logit)
    logits[ridx] = torch.randn(len(ridx), K, generator=g)
    logits.requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    base = cb[orig]  # (h*w, D): one_hot(original) @ codebook
    history, snapshots = [], []
    best_logit, best_ids, best_step = -np.inf, None, -1
    bar = tqdm(range(steps), desc="optimize tokens", disable=not progress)
    for step in bar:
        z = logits[ridx]
        # Gumbel noise -log(-log U) from torch.rand (its stream is the same on every CPU; exponential_'s is not)
        gumbel = -(-torch.rand(z.shape, generator=g).clamp(1e-30, 1 - 1e-7).log()).log()
        soft = ((z + gumbel) / tau).softmax(-1)
        choice = soft.argmax(-1)
        hard = F.one_hot(choice, K).to(soft.dtype)
        onehot = hard - soft.detach() + soft  # straight-through: forward hard, backward soft
        emb = base.index_put((ridx,), onehot @ cb).T.reshape(1, D, h, w)
        logit = _target_logit(iem, emb, target, step)
        ids = orig.clone()
        ids[ridx] = choice
        value = logit.item()
        history.append((step, value))
        if value > best_logit:
            best_logit, best_ids, best_step = value, ids, step
        if _snapshot_due(step, steps, snapshot_every):
            snapshots.append((step, ids.reshape(h, w).clone()))
        (grad,) = torch.autograd.grad(-logit, logits)
        grad[~inside] = 0  # the original masks the gradient to the block's rows
        logits.grad = grad
        opt.step()
        if step % max(1, steps // 100) == 0:
            bar.set_postfix(logit=f"{value:.2f}", best=f"{best_logit:.2f}")
    for grid in (best_ids, ids):
        check_outside_unchanged(orig.reshape(h, w), grid.reshape(h, w), region)
    return {"tokens": best_ids.reshape(h, w), "final_tokens": ids.reshape(h, w), "best_step": best_step,
            "best_logit": best_logit, "original_logit": original_logit,
            "history": pd.DataFrame(history, columns=["step", "target_logit"]), "snapshots": snapshots}


def optimize_embeddings(iem, codebook: torch.Tensor, tokens, region_mask, target: int, steps: int = 500,
                        lr: float = 0.01, seed: int = 0, source: int | None = None, snapshot_every: int = 0,
                        progress: bool = True) -> dict:
    """Embedding mode: optimize the ``(1, D, h, w)`` embedding grid (initialised from the codebook rows of
    ``tokens``) for the target logit, gradient zeroed outside the region; then snap to the nearest codes.

    Nothing here is random (``seed`` is accepted for the same call signature as ``optimize_tokens``).
    Outside the region the embeddings stay bitwise the original codebook rows, so their snapped ids are the
    original ids (set explicitly, so that duplicate codebook rows cannot swap an id for its twin).

    Returns a dict: ``embeddings`` (final, ``(1, D, h, w)``), ``tokens`` (snapped ids, int64 ``(h, w)``),
    ``original_logit``, ``final_logit`` (free embeddings), ``snapped_logit`` (IEM on the snapped grid),
    ``history`` (DataFrame: step, target_logit of the free embeddings before that step's update, and
    snapped_logit at snapshot steps, else NaN) and ``snapshots`` (list of (step, snapped grid)).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cb, t, region, emb0, original_logit = _prepare(iem, codebook, tokens, region_mask, target, source)
    target = int(target)
    keep = (~region)[None, None]  # (1, 1, h, w)
    emb = emb0.clone().requires_grad_(True)
    opt = torch.optim.Adam([emb], lr=lr)
    history, snapshots = [], []

    def snapped(x):
        ids = snap_to_codebook(x[0], cb)
        ids[~region] = t[~region]
        return ids

    bar = tqdm(range(steps), desc="optimize embeddings", disable=not progress)
    for step in bar:
        logit = _target_logit(iem, emb, target, step)
        value, snap_value = logit.item(), np.nan
        if _snapshot_due(step, steps, snapshot_every):
            ids = snapped(emb.detach())
            with torch.no_grad():
                snap_value = _target_logit(iem, cb[ids].permute(2, 0, 1)[None], target, step).item()
            snapshots.append((step, ids))
        history.append((step, value, snap_value))
        (grad,) = torch.autograd.grad(-logit, emb)
        emb.grad = grad.masked_fill(keep, 0.0)
        opt.step()
        if step % max(1, steps // 100) == 0:
            bar.set_postfix(logit=f"{value:.2f}")
    final = emb.detach().clone()
    if not torch.equal(final.masked_select(keep), emb0.masked_select(keep)):
        raise AssertionError("the embeddings changed outside the region")
    ids = snapped(final)
    check_outside_unchanged(t, ids, region)
    with torch.no_grad():
        final_logit = _target_logit(iem, final, target, steps).item()
        snapped_logit = _target_logit(iem, cb[ids].permute(2, 0, 1)[None], target, steps).item()
    return {"embeddings": final, "tokens": ids, "original_logit": original_logit, "final_logit": final_logit,
            "snapped_logit": snapped_logit, "snapshots": snapshots,
            "history": pd.DataFrame(history, columns=["step", "target_logit", "snapped_logit"])}
