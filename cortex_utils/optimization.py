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

Saliency vs optimisation (the last section): which ids did the optimiser put into the region
(``new_region_ids``), what share of them are the target class's concept tokens (``concept_share``), and
how much of that share chance gives (``overlap_vs_chance``: the same statistic for ids drawn i.i.d. from
the codebook's usage, with a Monte Carlo p-value); ``fill_region`` writes a token set (e.g. the concept
tokens, ``concepts.arrange_tokens``) or random ids into the region instead; ``paired_difference`` and
``views_verdict`` turn the numbers into the comparison's words.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .progress import tqdm


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
    """Bool ``(h, w)``, True on the block ``rows x cols``; each a half-open ``(start, stop)`` pair, a
    ``range`` or a ``slice``. The paper's block (rows/cols 7-10 of 16) is
    ``region_mask((16, 16), (7, 11), (7, 11))``."""
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
        raise ValueError(
            f"embeddings must be (N, {cb.shape[1]}, h, w) or ({cb.shape[1]}, h, w) for a codebook "
            f"{tuple(cb.shape)}, got {tuple(embeddings.shape)}"
        )
    n, d, h, w = e.shape
    flat = e.permute(0, 2, 3, 1).reshape(-1, d)
    ids = (
        torch.cat(
            [
                torch.cdist(flat[i : i + chunk], cb, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
                for i in range(0, len(flat), chunk)
            ]
        )
        if len(flat)
        else torch.zeros(0, dtype=torch.long)
    )
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
        raise ValueError(
            f"token grids {tuple(a.shape)} and {tuple(b.shape)} must match each other and the "
            f"region's grid {tuple(r.shape)}"
        )
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
        raise ValueError(
            f"region_mask must be bool of the grid's shape {tuple(t.shape)}, got "
            f"{r.dtype} {tuple(r.shape)} (see region_mask)"
        )
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


def optimize_tokens(
    iem,
    codebook: torch.Tensor,
    tokens,
    region_mask,
    target: int,
    steps: int = 500,
    lr: float = 0.01,
    tau: float = 1.0,
    seed: int = 0,
    init_logit: float = 300.0,
    source: int | None = None,
    snapshot_every: int = 0,
    progress: bool = True,
) -> dict:
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
        # Gumbel noise -log(-log U) from torch.rand (its stream is the same on every CPU; exponential_'s is
        # not)
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
    iem,
    codebook: torch.Tensor,
    tokens,
    region_mask,
    target: int,
    steps: int = 500,
    lr: float = 0.01,
    seed: int = 0,
    source: int | None = None,
    snapshot_every: int = 0,
    progress: bool = True,
) -> dict:
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
    return {
        "embeddings": final,
        "tokens": ids,
        "original_logit": original_logit,
        "final_logit": final_logit,
        "snapped_logit": snapped_logit,
        "snapshots": snapshots,
        "history": pd.DataFrame(history, columns=["step", "target_logit", "snapped_logit"]),
    }


# --- saliency vs optimisation --------------------------------------------------------------------


def fill_region(tokens, region_mask, fill) -> np.ndarray:
    """Token grids with the region's positions taken from ``fill``, the rest unchanged.

    ``tokens``: ``(h, w)`` or ``(N, h, w)``; ``fill``: ``(h, w)`` (the same for every grid) or ``(N, h, w)``,
    only its region positions are read (e.g. ``concepts.arrange_tokens``' output, -1 outside). Returns int64
    of ``tokens``' shape.
    """
    t = np.asarray(tokens).astype(np.int64)
    r = np.asarray(region_mask, dtype=bool)
    f = np.asarray(fill).astype(np.int64)
    if (
        t.shape[-2:] != r.shape
        or f.shape[-2:] != r.shape
        or f.ndim > t.ndim
        or (f.ndim == 3 and len(f) != len(t))
    ):
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
    """Per pair of grids, the ids ``after`` holds at the region positions where it differs from ``before``
    (row-major): what the optimiser put into the region. ``before``/``after``: ``(N, h, w)``."""
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
    """The share of the distinct ``ids`` that are among ``concept_ids`` (NaN for no ids): a set overlap, as
    ``concepts.overlap``; an id the optimiser repeated over several positions counts once."""
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


def overlap_null(sizes, concept_ids, usage, n_draws: int = 2000, seed: int = 0) -> np.ndarray:
    """``(n_draws,)``: the mean ``concept_share`` over grids when grid j's new ids are ``sizes[j]`` ids drawn
    i.i.d. from ``usage`` (counts per codebook id, e.g. how often each id sits in the region of the training
    grids). ``concept_ids``: one set for every grid, or one per grid. Grids of size 0 are left out (as
    ``overlap_vs_chance`` leaves them out). Grid j draws from its own stream (``seed``, j), so a change in one
    grid's size leaves the others' draws as they were."""
    p = _usage_p(usage)
    sets = _per_grid_sets(concept_ids, len(sizes))
    used = [(j, int(n)) for j, n in enumerate(sizes) if int(n) > 0]
    if not used:
        raise ValueError("no grid with a new id: nothing to compare with chance")
    return np.mean(
        [
            _shares(np.random.default_rng([seed, j]).choice(len(p), size=(n_draws, n), p=p), sets[j])
            for j, n in used
        ],
        axis=0,
    )


def random_ids_like(ids_per_grid, usage, seed: int = 0) -> list[np.ndarray]:
    """The random-id control: as many ids per grid as ``ids_per_grid`` holds, drawn i.i.d. from ``usage``
    (grid j from its own stream: ``seed``, j)."""
    p = _usage_p(usage)
    return [
        np.random.default_rng([seed, j]).choice(len(p), size=np.size(ids), p=p)
        for j, ids in enumerate(ids_per_grid)
    ]


def overlap_vs_chance(ids_per_grid, concept_ids, usage, n_draws: int = 2000, seed: int = 0) -> dict:
    """The observed overlap against chance: ``overlap`` (mean ``concept_share`` over the grids that got a new
    id), ``chance`` (its mean under ``overlap_null``: as many ids per grid, drawn from ``usage``), ``p_value``
    (one-sided Monte Carlo: the share of null means >= the observed one, the observed counted among them) and
    ``grids`` (how many grids entered). ``concept_ids``: one set for every grid, or one per grid."""
    ids_per_grid = [np.asarray(i, dtype=np.int64).ravel() for i in ids_per_grid]
    sets = _per_grid_sets(concept_ids, len(ids_per_grid))
    used = [j for j, i in enumerate(ids_per_grid) if i.size]
    if not used:
        return {"overlap": float("nan"), "chance": float("nan"), "p_value": float("nan"), "grids": 0}
    observed = float(np.mean([concept_share(ids_per_grid[j], sets[j]) for j in used]))
    null = overlap_null([len(i) for i in ids_per_grid], sets, usage, n_draws, seed)
    p = (1 + int((null >= observed - 1e-12).sum())) / (n_draws + 1)
    return {"overlap": observed, "chance": float(null.mean()), "p_value": p, "grids": len(used)}


def paired_difference(
    a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired units (e.g. source images) and its percentile bootstrap interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or not np.isfinite(d).all():
        raise ValueError(
            f"need two equally long, finite 1-D arrays of paired values, got {np.shape(a)}, {np.shape(b)}"
        )
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def _compare(diff, more: str, less: str, same: str) -> str:
    mean, lo, hi = diff
    return more if lo > 0 else less if hi < 0 else same


def views_verdict(v: dict, alpha: float = 0.05) -> str:
    """One paragraph comparing the saliency and the optimisation views; every comparison's wording follows the
    numbers in ``v`` (a p-value below ``alpha``, or a ``paired_difference`` interval that excludes 0).

    ``v``: ``overlap``, ``chance``, ``p_value``, ``overlap_random`` (the random-id control); ``before``,
    ``optimised``, ``concept_fill``, ``random_fill`` (mean target probabilities); ``opt_minus_fill``,
    ``fill_minus_random`` (paired over the source images). Optional: ``overlap_other``, ``other_chance`` and
    ``target_minus_other`` (the same ids against the other classes' concept tokens; paired over the grids),
    ``frequency_fill`` and ``fill_minus_frequency`` (the target's frequent ids placed the same way),
    ``per_method`` ({method: (overlap, chance, p_value)}, quoted beside the pooled overlap).
    """

    def iv(d):
        return f"difference {d[0]:+.2f}, 95 % interval [{d[1]:+.2f}, {d[2]:+.2f}]"

    shared = v["p_value"] < alpha
    text = (
        f"Of the distinct ids the optimiser put into the region, {v['overlap']:.0%} are the target's concept "
        f"tokens, against {v['chance']:.0%} expected by chance from the codebook's usage (p = "
        f"{v['p_value']:.3f}; random ids: {v['overlap_random']:.0%}): "
        + ("more" if shared else "not more")
        + " than chance"
    )
    if v.get("per_method"):
        text += (
            " (per method: "
            + "; ".join(
                f"{m} {o:.0%}, chance {c:.0%}, p = {p:.3f}" for m, (o, c, p) in v["per_method"].items()
            )
            + ")"
        )
    if "overlap_other" in v:  # the target's own tokens, or any digit's strokes?
        lean = _compare(
            v["target_minus_other"],
            "more common among them than",
            "less common among them than",
            "not distinguishably more common among them than",
        )
        text += (
            f"; the target's concept tokens are {lean} the other classes' ({v['overlap_other']:.0%} on "
            f"average, chance {v['other_chance']:.0%}; {iv(v['target_minus_other'])})"
        )
    fill = _compare(v["fill_minus_random"], "above", "below", "not distinguishable from")
    text += (
        f". Placed where they usually sit in the target's training images, the concept tokens alone give the "
        f"evaluators a target probability of {v['concept_fill']:.2f} (before: {v['before']:.2f}), {fill} "
        f"random ids from the codebook's usage ({v['random_fill']:.2f}; {iv(v['fill_minus_random'])}). "
    )
    opt = _compare(
        v["opt_minus_fill"], "more than", "less than", "about as much as (not distinguishable from)"
    )
    text += (
        f"The optimised region gives {v['optimised']:.2f}: {opt} the concept fill "
        f"({iv(v['opt_minus_fill'])}). "
    )
    opt_more, opt_less = v["opt_minus_fill"][1] > 0, v["opt_minus_fill"][2] < 0
    fill_works = v["fill_minus_random"][1] > 0
    if opt_more:
        text += (
            "To make the target appear, the optimisation tells more: it finds what this IEM needs in the "
            "region beyond the tokens counted in real images."
        )
    elif fill_works:
        text += (
            "To make the target appear, saliency's tokens tell "
            + ("more" if opt_less else "as much")
            + ": placed, they do it without any optimisation."
        )
    else:
        text += "Neither view makes the target appear beyond random ids here."
    if shared:
        text += (
            " On which ids, the two views agree beyond chance: the optimiser is drawn to the concept tokens."
        )
    else:
        text += (
            " On which ids, the optimisation tells more: it reaches the target mostly with ids that saliency "
            "does not count among the target's, so the concept tokens are one way to the target, not the "
            "only one the IEM accepts."
        )
    if "frequency_fill" in v:
        d = v["fill_minus_frequency"]
        if d[1] > 0:
            text += (
                " Saliency's choice of ids matters: the target's most frequent non-background ids, placed "
                f"the same way, give {v['frequency_fill']:.2f} ({iv(d)})."
            )
        else:
            text += (
                " But the target's most frequent non-background ids, placed the same way, do "
                + ("better" if d[2] < 0 else "about as well")
                + f" ({v['frequency_fill']:.2f}; {iv(d)}): much "
                "of the fill's effect comes from placing the target's common tokens where they sit, not from "
                "saliency's choice of them."
            )
    return text
