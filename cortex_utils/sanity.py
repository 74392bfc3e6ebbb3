"""Can we trust an attribution? (notebook 11) Sanity checks (Adebayo et al., 2018): randomize the IEM's layers
(``randomize_cascade``, ``randomize_full``) and compare its maps ``(N, h, w)`` with the trained model's
(``map_similarity``); a map that survives randomization does not explain the model. Faithfulness: deletion /
insertion curves (``faithfulness_curves``), the evaluators' target probability as positions are masked in
attribution order. ``random_attribution`` passes the first trivially and must fail the second (``recommend``).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from . import evaluation
from .devices import device_of
from .progress import tqdm
from .tis import check_choice, topk_agreement, topk_positions

CURVES = ("deletion", "insertion")
BOTH_SPACES = evaluation.Masking(evaluation.SPACES)  # the curves' default: pixel and token space
RANDOM_CONTROL = "random_control"  # the name of the uniform-noise control row (``random_attribution``)
_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)


# --- sanity checks: randomized models ----------------------------------------------------------------


def cascade_steps(model: torch.nn.Module) -> list[list[str]]:
    """The IEM's parameterized modules grouped into randomization steps, **head first** (reversed definition
    order): each step is one weight layer (or a module's own parameters, e.g. a ViT's position table) with the
    normalization layers that follow it."""
    owners = [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    steps, pending = [], []
    for name in reversed(owners):
        pending.append(name)
        if not isinstance(model.get_submodule(name), _NORMS):
            steps.append(pending)
            pending = []
    if pending:  # normalization layers before the first weight layer
        steps.append(pending)
    return steps


def _reinit(module: torch.nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
    if reset is not None:  # the layer's own initializer (attention layers call it _reset_parameters)
        reset()
    else:  # own parameters without an initializer (ViT class token and positions): small Gaussian, as built
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.normal_(0.0, 0.02)


def randomize(model: torch.nn.Module, modules, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` (eval mode) with ``modules`` (names) re-initialised by their own initializers."""
    device = device_of(model)
    out = copy.deepcopy(model).cpu()  # re-initialised by the CPU's generator: the same weights anywhere
    known = dict(out.named_modules())
    missing = [m for m in modules if m not in known]
    if missing:
        raise ValueError(f"no module(s) {missing} in the model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in modules:
            _reinit(known[name])
    return out.to(device).eval()


def randomize_cascade(model: torch.nn.Module, seed: int = 0) -> list[tuple[str, torch.nn.Module]]:
    """Cascading randomization: ``[(weight layer, model)]``, model ``k`` with the first ``k + 1`` steps of
    ``cascade_steps`` (from the head down) re-initialised."""
    steps, done, out = cascade_steps(model), [], []
    for i, step in enumerate(steps):
        done += step
        out.append((step[-1] or "(root)", randomize(model, done, seed + i)))
    return out


def randomize_full(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every layer re-initialised at once."""
    return randomize(model, [m for step in cascade_steps(model) for m in step], seed)


def spearman(a, b) -> np.ndarray:
    """Spearman rank correlation of each image's two maps: ``(N, h, w)`` x 2 -> ``(N,)`` (ties: mean ranks;
    NaN where a map is constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"need two aligned stacks of maps (N, ...), got {a.shape} and {b.shape}")
    ra, rb = (rankdata(x.reshape(len(x), -1), axis=1) for x in (a, b))  # then Pearson of the ranks
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), np.nan)


def abs_spearman(a, b) -> np.ndarray:
    """``spearman`` of the absolute maps: do they mark the same positions, whatever the sign? (A randomized
    model may flip signs at random while the magnitudes still follow the input.)"""
    return spearman(np.abs(np.asarray(a, dtype=np.float64)), np.abs(np.asarray(b, dtype=np.float64)))


def random_attribution(shape, seed: int = 0) -> np.ndarray:
    """The control attribution: uniform noise in [-1, 1), float32 ``(N, h, w)``, independent of model and
    input. It passes every randomization check trivially and must fail the faithfulness one."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=tuple(shape)).astype(np.float32)


def map_similarity(trained, randomized, k: int = 5) -> pd.DataFrame:
    """Per image (a row), how much of the trained model's map survives in a randomized model's: ``spearman``,
    ``abs_spearman`` and ``top_k`` (``tis.topk_agreement`` of the absolute maps)."""
    return pd.DataFrame(
        {
            "image": np.arange(len(trained)),
            "spearman": spearman(trained, randomized),
            "abs_spearman": abs_spearman(trained, randomized),
            "top_k": topk_agreement(trained, randomized, k, absolute=True),
        }
    )


def _above(value: float, bar: float) -> str:
    """``value`` with two decimals, or with as many more as it takes to read as above ``bar`` (0.3004 > 0.3,
    not 0.30 > 0.3)."""
    digits = 2
    while round(value, digits) <= bar and digits < 6:
        digits += 1
    return f"{value:.{digits}f}"


def recommend(
    table: pd.DataFrame,
    random_auc: float,
    default: str,
    max_rank_corr: float = 0.3,
    max_auc_ratio: float = 0.8,
    controls=(),
) -> tuple[str, pd.DataFrame]:
    """Which attribution can be trusted? ``table``: per method, ``abs_rank_corr_full`` / ``_data`` (mean
    ``abs_spearman`` under model and data randomization) and ``deletion_auc``. A method passes if both are at
    most ``max_rank_corr`` and its deletion AUC at most ``max_auc_ratio`` × ``random_auc``. Returns
    ``default`` if it passes, else the passing method (not a ``controls``) of lowest ``deletion_ratio``, else
    ``"none"``; and the table with ``deletion_ratio, randomization_ok, faithful, passes, failed`` (why)."""
    need = ["abs_rank_corr_full", "abs_rank_corr_data", "deletion_auc"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}; it needs {need}")
    if not np.isfinite(random_auc) or random_auc <= 0:
        raise ValueError(f"the random order's deletion AUC must be a positive number, got {random_auc}")
    if not 0 < max_auc_ratio <= 1 or not 0 < max_rank_corr <= 1:
        raise ValueError(
            f"max_auc_ratio and max_rank_corr must lie in (0, 1], got {max_auc_ratio}, {max_rank_corr}"
        )
    if default not in table.index:
        raise ValueError(f"the default method {default!r} is not in the table ({list(table.index)})")
    out = table.copy()
    out["deletion_ratio"] = out["deletion_auc"] / random_auc
    full_ok = out["abs_rank_corr_full"] <= max_rank_corr  # NaN -> False
    data_ok = out["abs_rank_corr_data"] <= max_rank_corr
    out["randomization_ok"] = full_ok & data_ok
    out["faithful"] = out["deletion_ratio"] <= max_auc_ratio
    out["passes"] = out["randomization_ok"] & out["faithful"]

    def reasons(m):
        r = out.loc[m]
        why = [
            f"abs. rank corr. {_above(r[f'abs_rank_corr_{kind}'], max_rank_corr)} > {max_rank_corr:g} under "
            f"{kind} randomization"
            if np.isfinite(r[f"abs_rank_corr_{kind}"])
            else f"no abs. rank corr. under {kind} randomization (constant maps)"
            for kind, ok in (("full", full_ok[m]), ("data", data_ok[m]))
            if not ok
        ]
        if not r["faithful"]:
            why.append(
                f"deletion AUC {r['deletion_auc']:.3f} = {_above(r['deletion_ratio'], max_auc_ratio)} × "
                f"random's ({random_auc:.3f}) > {max_auc_ratio:g}"
            )
        return "; ".join(why)

    out["failed"] = [reasons(m) for m in out.index]
    candidates = out[out["passes"] & ~out.index.isin(list(controls))]
    if default in candidates.index:
        return default, out
    if len(candidates):
        return str(candidates["deletion_ratio"].idxmin()), out
    return "none", out


# --- faithfulness: deletion and insertion curves --------------------------------------------------------


def curve_steps(n_positions: int, steps: int) -> np.ndarray:
    """How many positions are removed at each point of a curve: ``steps`` + 1 counts from 0 to all."""
    if not 1 <= steps <= n_positions:
        raise ValueError(f"steps must lie in [1, {n_positions}] (the grid's positions), got {steps}")
    return np.unique(np.round(np.linspace(0, n_positions, steps + 1)).astype(int))


def removal_curve(order, grid, score, steps: int = 8, curve: str = "deletion"):
    """``(fractions (K,), scores (K, ..., N))``: ``score(mask)`` of a bool mask ``(N, h, w)`` (True = masked)
    as the first k positions of ``order`` ``(N, h*w)`` go (``deletion``) or all but them (``insertion``)."""
    check_choice(curve, CURVES, "curve")
    order = np.asarray(order, dtype=np.int64)
    hw = int(grid[0]) * int(grid[1])
    if order.ndim != 2 or order.shape[1] != hw:
        raise ValueError(f"order must rank all {hw} positions of each image: (N, {hw}), got {order.shape}")
    ks = curve_steps(hw, steps)
    values = []
    for k in ks:
        mask = evaluation.positions_mask(order[:, :k], grid)
        values.append(np.asarray(score(mask if curve == "deletion" else ~mask)))
    return ks / hw, np.stack(values)


def _check_curve_inputs(tokens, labels, scores: dict, curves):
    """Token grids, labels and curve names, checked: one label per grid, maps aligned with the grids."""
    t, labels = evaluation.check_grids(tokens, labels)
    bad = [m for m, s in scores.items() if np.shape(s) != t.shape]
    if not scores or bad:
        raise ValueError(
            f"every attribution must be aligned with the token grids {t.shape}; misaligned: {bad}"
        )
    if "random" in scores:
        raise ValueError("'random' is the reference order; give the attributions other names")
    curves = (curves,) if isinstance(curves, str) else tuple(curves)
    bad_curves = [c for c in curves if c not in CURVES]
    if bad_curves or not curves:
        raise ValueError(f"unknown curve(s) {bad_curves}; choose from {CURVES}")
    return t, labels, curves


def faithfulness_curves(
    vq, tokens, labels, scores: dict, evaluators: dict, options=BOTH_SPACES, curves=CURVES, steps=8
) -> pd.DataFrame:
    """Deletion / insertion curves of every attribution in ``scores`` (name -> ``(N, h, w)``) and a ``random``
    order, masked as ``options`` say: per (space, curve, method, evaluator, fraction), ``k`` (positions
    removed or kept) and ``mean_prob``, the mean probability of each image's label."""
    t, labels, curves = _check_curve_inputs(tokens, labels, scores, curves)
    grid, hw = t.shape[1:], t.shape[1] * t.shape[2]
    spaces, batch_size = evaluation.check_spaces(options.spaces), options.batch_size
    evaluation.check_evaluators(evaluators)
    neutral = evaluation.resolve_neutral(vq, t, options.neutral) if "token" in spaces else None
    orders = {m: topk_positions(s, None) for m, s in scores.items()}
    orders["random"] = evaluation.random_positions(len(t), grid, hw, options.seed)
    originals = evaluation.decode_tokens(vq, torch.from_numpy(t), batch_size)

    def judge(imgs):
        res = evaluation.target_scores(evaluators, imgs, labels, batch_size)
        return np.stack([res[name][1] for name in evaluators])  # (E, N) target probabilities

    cache = {}  # nothing masked / everything masked: the same for every order

    def score_in(space):
        def score(mask):
            key = (space, "none" if not mask.any() else "all" if mask.all() else None)
            if key[1] is not None and key in cache:
                return cache[key]
            if space == "pixel":
                out = judge(evaluation.mask_pixels(originals, mask))
            else:
                masked = torch.from_numpy(evaluation.mask_tokens(t, mask, neutral))
                out = judge(originals if not mask.any() else evaluation.decode_tokens(vq, masked, batch_size))
            if key[1] is not None:
                cache[key] = out
            return out

        return score

    frames = []
    jobs = [(s, c, m) for s in spaces for c in curves for m in orders]
    for space, curve, method in tqdm(jobs, desc="deletion / insertion curves", disable=not options.progress):
        fractions, values = removal_curve(orders[method], grid, score_in(space), steps, curve)
        k = np.round(fractions * hw).astype(int)
        for e, name in enumerate(evaluators):
            key = {"space": space, "curve": curve, "method": method, "evaluator": name}
            frames.append(
                pd.DataFrame({**key, "fraction": fractions, "k": k, "mean_prob": values[:, e].mean(1)})
            )
    return pd.concat(frames, ignore_index=True)


def curve_auc(table: pd.DataFrame) -> pd.DataFrame:
    """The area under every curve of ``faithfulness_curves`` and the mean over evaluators (``mean``).
    Deletion: lower is better; insertion: higher is better."""
    keys = ["space", "curve", "method", "evaluator"]
    table = table.astype({"mean_prob": np.float64}).sort_values("fraction")
    rows = [
        dict(zip(keys, k, strict=True), auc=float(np.trapezoid(g["mean_prob"], g["fraction"])))
        for k, g in table.groupby(keys, sort=False)
    ]
    out = pd.DataFrame(rows)
    mean = out.groupby(keys[:3], sort=False)["auc"].mean().reset_index().assign(evaluator="mean")
    return pd.concat([out, mean[out.columns]], ignore_index=True)
