"""Can we trust an attribution? Sanity checks (Adebayo et al., 2018) and faithfulness curves (notebook 11).

Attributions are maps ``(N, h, w)``, one score per grid position, from any method of ``attribution.METHODS``.

**Sanity checks**: re-initialise the IEM's layers from the head down (``randomize_cascade``) or all at once
(``randomize_full``), or train it on shuffled labels (``shuffled_label_iem``), and compare the maps with the
trained model's per image, as Adebayo et al. report it: Spearman rank correlation of the signed maps
(``spearman``) and of their absolute values (``abs_spearman``: a map whose sign turns random while its
magnitudes stay put has a signed correlation near 0 but still marks the same positions), and the share of
shared top-k positions (``top_k_intersection``); ``map_similarity`` gives all three. An explanation that
survives randomization does not explain the model. Passing is necessary, not sufficient:
``random_attribution`` (uniform noise, a method that knows nothing) passes trivially, so ``recommend`` also
asks for a deletion AUC clearly below the random order's.

**Faithfulness** (deletion / insertion): remove grid positions in attribution order (``tis.topk_positions``;
or reveal them, for insertion) and follow the evaluators' target probability; ``removal_curve`` is the generic
loop, ``faithfulness_curves`` runs it in pixel space (black patches) and token space (neutral token, then
decode) with the masking helpers of ``evaluation``; ``curve_auc`` integrates the curves.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from cortex_run import REPO_ROOT, rebuild_command, shipped_checkpoints
from cortex_run.checkpoints import read_card
from cortex_run.datasets import embedding_loader, split_fingerprint
from cortex_run.notebook import declared_parameters

from . import evaluation
from .iem import build_iem, load_iem, save_iem, shipped_iem, train_iem
from .progress import tqdm
from .tis import topk_positions

CURVES = ("deletion", "insertion")
RANDOM_CONTROL = "random_control"  # the name of the uniform-noise control row (``random_attribution``)
_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)


# --- sanity checks: randomized models ----------------------------------------------------------------


def cascade_steps(model: torch.nn.Module) -> list[list[str]]:
    """The IEM's parameterized modules grouped into randomization steps, **head first**.

    Modules are taken in definition order (the forward order of these IEMs); each step is one weight layer
    (conv, linear, attention, or a module's own parameters such as the ViT's position table) together with
    the normalization layers that follow it.
    """
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
    """A copy of ``model`` (eval mode) with ``modules`` (names) re-initialised by their own initializers.

    BatchNorm layers get their initial affine parameters and running statistics (mean 0, variance 1).
    """
    out = copy.deepcopy(model)
    known = dict(out.named_modules())
    missing = [m for m in modules if m not in known]
    if missing:
        raise ValueError(f"no module(s) {missing} in the model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in modules:
            _reinit(known[name])
    return out.eval()


def randomize_cascade(model: torch.nn.Module, seed: int = 0) -> list[tuple[str, torch.nn.Module]]:
    """Cascading randomization: ``[(step name, model)]`` where model ``k`` has the first ``k + 1`` steps of
    ``cascade_steps`` (from the head down) re-initialised; the last one is fully randomized. A step is
    named after its weight layer."""
    steps, done, out = cascade_steps(model), [], []
    for i, step in enumerate(steps):
        done += step
        out.append((step[-1] or "(root)", randomize(model, done, seed + i)))
    return out


def randomize_full(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every layer re-initialised at once."""
    return randomize(model, [m for step in cascade_steps(model) for m in step], seed)


def shuffled_label_iem(
    model: torch.nn.Module,
    ds,
    codebook: torch.Tensor,
    epochs: int = 3,
    lr: float = 2e-3,
    batch_size: int = 64,
    max_images: int = 0,
    select_images: int = 500,
    seed: int = 0,
    desc: str = "IEM on shuffled labels",
):
    """Data randomization: an IEM of ``model``'s architecture trained on the train split with its labels
    permuted (``max_images`` > 0: on that many random rows of the split, drawn with ``seed``).

    The test asks for a model that *fits* the random labels, so the weights kept (``iem.train_iem`` keeps
    the best "validation" loss) are those with the lowest loss on ``select_images`` of the shuffled
    training rows themselves. Returns ``(model in eval mode, training log)``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    rng = np.random.default_rng(seed)
    n = len(ds.labels["train"])
    sub = (
        np.arange(n) if max_images <= 0 else np.sort(rng.permutation(n)[:max_images])
    )  # splits are ordered by class
    tokens, labels = ds.tokens["train"][sub], rng.permutation(ds.labels["train"][sub])
    pick = slice(0, select_images if select_images > 0 else len(labels))
    shuffled = dataclasses.replace(
        ds,
        tokens={"train": tokens, "select": tokens[pick]},
        labels={"train": labels, "select": labels[pick]},
        names={},
    )
    spec = model.cortex_spec
    torch.manual_seed(seed)
    out = build_iem(spec["arch"], spec["in_channels"], spec["grid"], spec["n_classes"], spec["width"])
    log, _ = train_iem(
        out,
        embedding_loader(shuffled, "train", codebook, batch_size, shuffle=True, seed=seed),
        embedding_loader(shuffled, "select", codebook, 256),
        epochs=epochs,
        lr=lr,
        step_size=epochs,
        desc=desc,
    )  # constant learning rate: memorizing needs every epoch
    return out.eval(), log.rename(columns={"val_loss": "select_loss", "val_acc": "select_acc"})


def shipped_or_shuffled_label_iem(
    model: torch.nn.Module,
    ds,
    codebook: torch.Tensor,
    name: str,
    epochs: int = 3,
    max_images: int = 0,
    seed: int = 0,
    retrain: bool = False,
    out_dir=None,
):
    """The shuffled-label IEM of ``shuffled_label_iem``: the shipped ``<name>.safetensors`` of the dataset's
    tokenizer family (``shipped_checkpoints``: ``checkpoints/`` for the default) when it was trained on
    exactly this train split with exactly these settings, else trained here and saved to ``out_dir``. Returns
    ``(model, log, trained)``."""
    spec = dict(model.cortex_spec)
    training = {
        "labels": "shuffled",
        "arch": spec["arch"],
        "width": spec["width"],
        "epochs": epochs,
        "max_images": max_images,
        "select_images": 500,
        "lr": 2e-3,
        "batch_size": 64,
        "seed": seed,
    }
    fp = split_fingerprint(ds, "train")
    shipped, _ = (
        (None, "")
        if retrain
        else shipped_iem(shipped_checkpoints(ds.vq_family) / f"{name}.safetensors", fp, training)
    )
    if shipped:
        log = pd.DataFrame(read_card(shipped)["log"])
        return (
            load_iem(shipped, expect={k: spec[k] for k in ("arch", "in_channels", "grid", "n_classes")}),
            log,
            False,
        )
    out, log = shuffled_label_iem(
        model,
        ds,
        codebook,
        epochs=epochs,
        lr=training["lr"],
        batch_size=training["batch_size"],
        max_images=max_images,
        select_images=training["select_images"],
        seed=seed,
    )
    if out_dir is not None:
        save_iem(
            out,
            Path(out_dir) / f"{name}.safetensors",
            card={
                "kind": "shuffled_label_iem",
                "vq_fingerprint": ds.manifest["vq_fingerprint"],
                "train_fingerprint": fp,
                "training": training,
                "log": log.to_dict("records"),
                "rebuild": rebuild_command(ds.vq_family),
            },
        )
    return out, log, True


def spearman(a, b) -> np.ndarray:
    """Spearman rank correlation of each image's two maps: ``(N, h, w)`` x 2 -> ``(N,)`` (ties: mean ranks;
    NaN where a map is constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"need two aligned stacks of maps (N, ...), got {a.shape} and {b.shape}")
    ra = pd.DataFrame(a.reshape(len(a), -1)).rank(axis=1).to_numpy()
    rb = pd.DataFrame(b.reshape(len(b), -1)).rank(axis=1).to_numpy()
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), np.nan)


def abs_spearman(a, b) -> np.ndarray:
    """``spearman`` of the absolute maps: do the two maps mark the same positions as important, whatever
    the sign? (Adebayo et al. report both.) A randomized model can flip every sign at random, which drives
    the signed correlation to 0, while the magnitudes still follow the input (where the strokes are)."""
    return spearman(np.abs(np.asarray(a, dtype=np.float64)), np.abs(np.asarray(b, dtype=np.float64)))


def top_k_intersection(a, b, k: int = 5, absolute: bool = True) -> np.ndarray:
    """Share of each image's top-``k`` positions that the two maps have in common: ``(N, h, w)`` x 2 ->
    ``(N,)`` in [0, 1]. ``absolute``: rank by ``|score|`` (else by the signed score, highest first, as
    ``tis.topk_positions``). Two independent random rankings share ``k / (h*w)`` of them on average
    (``top_k_chance``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"need two aligned stacks of maps (N, ...), got {a.shape} and {b.shape}")
    hw = int(np.prod(a.shape[1:]))
    if not 1 <= k <= hw:
        raise ValueError(f"k must lie in [1, {hw}] (the positions of a map), got {k}")
    if absolute:
        a, b = np.abs(a), np.abs(b)
    ta, tb = topk_positions(a, k), topk_positions(b, k)
    return np.array([len(np.intersect1d(x, y)) / k for x, y in zip(ta, tb, strict=True)])


def top_k_chance(k: int, n_positions: int) -> float:
    """Expected ``top_k_intersection`` of two independent random rankings of ``n_positions``: ``k / n``."""
    return k / n_positions


def random_attribution(shape, seed: int = 0) -> np.ndarray:
    """The control attribution: uniform noise in [-1, 1), float32 of ``shape`` ``(N, h, w)``, independent of
    model and input. It is what a method that knows nothing scores: a fresh draw per model (another
    ``seed``) is uncorrelated with the first, so it **passes** every randomization check trivially, and
    deleting positions in its order is deleting them at random, so it must **fail** the faithfulness one."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=tuple(shape)).astype(np.float32)


def map_similarity(trained, randomized, k: int = 5) -> pd.DataFrame:
    """Per image, how much of the trained model's map survives in a randomized model's: ``spearman``
    (signed), ``abs_spearman`` and ``top_k`` (``top_k_intersection`` of the absolute maps). One row per
    image: ``image``, ``spearman``, ``abs_spearman``, ``top_k``."""
    return pd.DataFrame(
        {
            "image": np.arange(len(trained)),
            "spearman": spearman(trained, randomized),
            "abs_spearman": abs_spearman(trained, randomized),
            "top_k": top_k_intersection(trained, randomized, k),
        }
    )


def recommend(
    table: pd.DataFrame,
    random_auc: float,
    default: str,
    max_rank_corr: float = 0.3,
    max_auc_ratio: float = 0.8,
    controls=(),
) -> tuple[str, pd.DataFrame]:
    """The recommendation rule: which attribution can be trusted on this run?

    ``table`` has one row per method (index) with ``abs_rank_corr_full`` and ``abs_rank_corr_data`` (mean
    ``abs_spearman`` under full model randomization and under the shuffled-label IEM) and ``deletion_auc``
    (in the masking space the rule uses); ``random_auc`` is the random order's deletion AUC there.

    A method **passes** if both

    * randomization: its mean absolute rank correlation is at most ``max_rank_corr`` under full **and**
      under data randomization (the maps change when what the model learned is destroyed; a NaN mean,
      from constant maps, fails), and
    * faithfulness: its deletion AUC is at most ``max_auc_ratio`` times the random order's (deleting its
      top positions first hurts the evaluators clearly faster than deleting positions at random).

    Returns ``(recommended, judged)``: ``default`` if it passes, else the passing method with the lowest
    ``deletion_ratio``, else ``"none"``; rows in ``controls`` are judged but never recommended. ``judged``
    is ``table`` plus ``deletion_ratio``, ``randomization_ok``, ``faithful``, ``passes`` and ``failed`` (the
    conditions a method failed, with its numbers; empty if it passes).
    """
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
            f"abs. rank corr. {r[f'abs_rank_corr_{kind}']:.2f} > {max_rank_corr:g} under {kind} randomization"
            if np.isfinite(r[f"abs_rank_corr_{kind}"])
            else f"no abs. rank corr. under {kind} randomization (constant maps)"
            for kind, ok in (("full", full_ok[m]), ("data", data_ok[m]))
            if not ok
        ]
        if not r["faithful"]:
            why.append(
                f"deletion AUC {r['deletion_auc']:.3f} = {r['deletion_ratio']:.2f} × random's "
                f"({random_auc:.3f}) > {max_auc_ratio:g}"
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
    """Follow ``score(mask)`` as positions go in ``order`` (``(N, h*w)``, first = most important).

    ``deletion``: the first k positions of each order are masked; ``insertion``: all but the first k are.
    ``score(mask)`` takes a bool ``(N, h, w)`` mask (True = masked) and returns an array ``(..., N)``.
    Returns ``(fractions (K,), scores (K, ..., N))`` with fractions k / (h*w) from 0 to 1.
    """
    if curve not in CURVES:
        raise ValueError(f"unknown curve {curve!r}; choose one of {CURVES}")
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


def auc(fractions, values) -> np.ndarray:
    """Trapezoidal area under ``values`` (``(K, ...)``) over ``fractions`` in [0, 1]."""
    f = np.asarray(fractions, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    return ((v[1:] + v[:-1]) / 2 * np.diff(f).reshape(-1, *([1] * (v.ndim - 1)))).sum(0)


def faithfulness_curves(
    vq,
    tokens,
    labels,
    scores: dict,
    evaluators: dict,
    spaces=evaluation.SPACES,
    curves=CURVES,
    steps: int = 8,
    neutral: int = 0,
    seed: int = 0,
    batch_size: int = 256,
    images: torch.Tensor | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Deletion / insertion curves of every attribution in ``scores`` (name -> ``(N, h, w)``) plus a
    ``random`` order (``evaluation.random_positions``, ``seed``), in pixel and/or token space.

    Returns one row per (space, curve, method, evaluator, fraction) with ``k`` (positions removed or kept)
    and ``mean_prob`` (mean target probability over the images); the target is each image's label.
    ``images``: the decoded ``tokens``, if already at hand.
    """
    t = evaluation.as_token_grids(tokens)
    labels = np.asarray(labels, dtype=np.int64)
    grid, hw = t.shape[1:], t.shape[1] * t.shape[2]
    if len(labels) != len(t) or not len(t):
        raise ValueError(
            f"need one label per token grid and at least one grid: {len(t)} grids, {len(labels)} labels"
        )
    bad = [m for m, s in scores.items() if np.shape(s) != t.shape]
    if not scores or bad:
        raise ValueError(
            f"every attribution must be aligned with the token grids {t.shape}; misaligned: {bad}"
        )
    if "random" in scores:
        raise ValueError("'random' is the reference order; give the attributions other names")
    spaces = evaluation.check_spaces(spaces)
    curves = (curves,) if isinstance(curves, str) else tuple(curves)
    bad_curves = [c for c in curves if c not in CURVES]
    if bad_curves or not curves:
        raise ValueError(f"unknown curve(s) {bad_curves}; choose from {CURVES}")
    evaluation.check_evaluators(evaluators)
    orders = {m: topk_positions(s, None) for m, s in scores.items()}
    orders["random"] = evaluation.random_positions(len(t), grid, hw, seed)
    originals = evaluation.decode_tokens(vq, torch.from_numpy(t), batch_size) if images is None else images
    if len(originals) != len(t):
        raise ValueError(f"{len(originals)} decoded images for {len(t)} token grids")

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
    for space, curve, method in tqdm(jobs, desc="deletion / insertion curves", disable=not progress):
        fractions, values = removal_curve(orders[method], grid, score_in(space), steps, curve)
        for e, name in enumerate(evaluators):
            frames.append(
                pd.DataFrame(
                    {
                        "space": space,
                        "curve": curve,
                        "method": method,
                        "evaluator": name,
                        "fraction": fractions,
                        "k": np.round(fractions * hw).astype(int),
                        "mean_prob": values[:, e].mean(1),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def curve_auc(table: pd.DataFrame) -> pd.DataFrame:
    """AUC of every (space, curve, method, evaluator) curve of ``faithfulness_curves``, plus the mean over
    evaluators (``evaluator`` = ``mean``). Deletion: lower is better; insertion: higher is better."""
    keys = ["space", "curve", "method", "evaluator"]
    rows = [
        dict(zip(keys, k, strict=True), auc=float(auc(g["fraction"], g["mean_prob"])))
        for k, g in table.sort_values("fraction").groupby(keys, sort=False)
    ]
    out = pd.DataFrame(rows)
    mean = out.groupby(keys[:3], sort=False)["auc"].mean().reset_index().assign(evaluator="mean")
    return pd.concat([out, mean[out.columns]], ignore_index=True)


def verdict_text(
    verdict: pd.DataFrame, recommended: str, default: str, control: str, space: str, n_images: int, steps: int
) -> list[str]:
    """The verdict of ``recommend`` in words: one Markdown line per method (passes, or what it failed), one
    on the random ``control`` (it should pass randomization and fail faithfulness; otherwise the checks are
    too coarse for ``n_images`` curve images and ``steps`` steps), and the recommendation (with the
    numbers of the recommended method against the ``default``'s, deletion AUC in ``space``). ``default`` is
    the method the run's TIS come from (notebook 05's ``method``), kept if it passes."""
    lines = []
    for m, r in verdict.iterrows():
        role = " (the run's method)" if m == default else " (control)" if m == control else ""
        who = f"**{m}**{role}"
        lines.append(f"* {who}: " + ("passes both conditions" if r["passes"] else f"fails: {r['failed']}"))
    cr = verdict.loc[control]
    if cr["randomization_ok"] and not cr["faithful"]:
        lines.append(
            f"The random control passes randomization (abs. rank corr. {cr['abs_rank_corr_full']:.3f} full, "
            f"{cr['abs_rank_corr_data']:.3f} data) and fails faithfulness ({cr['deletion_ratio']:.2f} × "
            f"random), as a method that knows nothing must: randomization alone would have recommended noise."
        )
    else:
        lines.append(
            f"**Warning**: the random control {'passes' if cr['passes'] else 'is judged'} oddly "
            f"(randomization {'ok' if cr['randomization_ok'] else 'failed'}, deletion "
            f"{cr['deletion_ratio']:.2f} × random): with {n_images} curve images and {steps} steps the "
            "checks are too coarse to separate noise from a method."
        )
    if recommended == default:
        lines.append(f"Recommendation: keep **{default}**.")
    elif recommended != "none":
        r, d = verdict.loc[recommended], verdict.loc[default]
        lines.append(
            f"Recommendation: **{recommended}**: abs. rank correlation {r['abs_rank_corr_full']:.2f} (full) "
            f"/ {r['abs_rank_corr_data']:.2f} (data), deletion AUC ({space}) {r['deletion_auc']:.3f} = "
            f"{r['deletion_ratio']:.2f} × random (the run's method {d['deletion_auc']:.3f}). "
            f"Passing: {', '.join(m for m in verdict.index[verdict.passes] if m != control)}."
        )
    else:
        lines.append(
            "Recommendation: **none**. No method passes both conditions on this run, so none of the maps, "
            "the TIS included, can be read as an explanation of what the IEM learned; read them with care."
        )
    return lines


def carried_verdict(run_dir, method: str) -> dict:
    """Notebook 11's verdict on ``method``, for a notebook that states it before (or without) running 11.

    The numbers come from ``<run_dir>/metrics.json`` when notebook 11 recorded them there, else from the
    reference default run (``docs/expected_metrics.json``); ``source`` says which. The bars are notebook
    11's ``bars`` parameter (its default, or the run's value in ``parameters.yaml``). Returns ``{"source",
    "recommended", "rank_corr_full", "rank_corr_data", "deletion_auc", "random_auc", "deletion_ratio",
    "randomization_ok", "faithful", "max_rank_corr", "max_deletion_ratio", "space"}``.
    """
    bars = ast.literal_eval(declared_parameters("11_trust_the_explanations")["bars"]["default"])
    params = Path(run_dir) / "parameters.yaml"
    if params.exists():
        given = yaml.safe_load(params.read_text()).get("parameters", {}) or {}
        bars.update((given.get("11_trust_the_explanations") or {}).get("bars", {}))
    space = bars["space"]
    keys = {
        "rank_corr_full": f"sanity_abs_rank_corr_{method}",
        "rank_corr_data": f"sanity_data_abs_rank_corr_{method}",
        "deletion_auc": f"deletion_auc_{method}_{space}",
        "random_auc": f"deletion_auc_random_{space}",
        "recommended": "recommended_method",
    }
    p = Path(run_dir) / "metrics.json"
    metrics = json.loads(p.read_text()) if p.exists() else {}
    source = "this run's metrics.json"
    if not all(k in metrics for k in keys.values()):
        expected = json.loads((REPO_ROOT / "docs" / "expected_metrics.json").read_text())["checked"]
        metrics = {k: v["value"] for k, v in expected.items()}
        source = "the reference default run, docs/expected_metrics.json: notebook 11 has not run here"
    out = {name: metrics[k] for name, k in keys.items()}
    out["deletion_ratio"] = out["deletion_auc"] / out["random_auc"]
    out["randomization_ok"] = max(out["rank_corr_full"], out["rank_corr_data"]) <= bars["max_rank_corr"]
    out["faithful"] = out["deletion_ratio"] <= bars["max_deletion_ratio"]
    return {"source": source, **out, **bars}


def carried_verdict_text(v: dict, method: str, what: str = "the TIS maps") -> str:
    """Notebook 11's verdict (``carried_verdict``) in a few sentences of markdown, with how to read ``what``
    in its light."""
    verdict = (
        "no attribution passes both checks, the TIS included"
        if v["recommended"] == "none"
        else f"it recommends **{v['recommended']}**"
    )
    head = (
        f"Notebook 11 finds that {verdict} (numbers from {v['source']}). "
        "**Randomization** (Adebayo et al. 2018): "
        f"{method}'s maps keep a rank correlation of {v['rank_corr_full']:.2f} with those of an IEM with "
        f"random weights and {v['rank_corr_data']:.2f} with one trained on shuffled labels (bar: "
        f"≤ {v['max_rank_corr']:g}). **Deletion**: masking the top positions first leaves an area under the "
        f"class-probability curve of {v['deletion_ratio']:.2f} × a random order's (bar: "
        f"≤ {v['max_deletion_ratio']:g})."
    )
    reading = {
        (False, True): f"So the top positions of {what} hold evidence the decision uses, but much of a map's "
        "shape follows the image, not what the IEM learned: read the few highest positions, not the pattern.",
        (True, False): f"So {what} follow what the IEM learned, but their top positions matter little more "
        "than random ones: read their ranking with care.",
        (False, False): f"Neither check supports {what}: treat them as hypotheses for masking (notebooks 07, "
        "08) to test.",
        (True, True): f"Both checks support {what}.",
    }[v["randomization_ok"], v["faithful"]]
    return head + " " + reading
