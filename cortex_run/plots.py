"""Figures shared by the notebooks (matplotlib / seaborn). Each draws its figure and returns nothing (so a
cell ending with one shows it once), except ``tis_overlay`` (the map, for a colorbar) and ``tis_grid`` /
``tis_explorer`` (the Figure: end such a cell with ``;``). Every heat map has a labelled colorbar."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.collections import LineCollection

from cortex_utils.tis import topk_positions


def to_hwc(img) -> np.ndarray:
    """An image ``(C, H, W)``, uint8 or floats in [-1, 1] -> uint8 ``(H, W, C)``."""
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.dtype != np.uint8:
        a = np.clip((a + 1) * 127.5, 0, 255).astype(np.uint8)
    return a.transpose(1, 2, 0) if a.ndim == 3 and a.shape[0] in (1, 3) else a


def _panels(n: int, ncols: int, size: float, tall: float):
    """A figure of ``n`` panels, ``ncols`` a row, every axis off."""
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * tall), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def _show(ax, image, title=None) -> np.ndarray:
    """Draw one image (pixels as squares); returns it as drawn, ``(H, W[, C])``."""
    img = to_hwc(image).squeeze()
    ax.imshow(img, cmap="gray", interpolation="nearest")
    if title is not None:
        ax.set_title(str(title), fontsize=8)
    return img


def image_grid(images, titles=None, ncols: int = 8, size: float = 1.2, suptitle: str | None = None):
    """Show images (uint8 or [-1, 1] floats, ``(N, C, H, W)``) in a grid."""
    fig, axes = _panels(len(images), ncols, size, 1.1)
    for i in range(len(images)):
        _show(axes.flat[i], images[i], None if titles is None else titles[i])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()


def rows_of_images(rows: dict, ncols: int = 10, size: float = 1.1, captions: dict | None = None):
    """One labelled row per entry of ``rows`` (name -> images), e.g. originals over reconstructions.
    ``captions``: optional name -> one short text per image, written under it."""
    tall = 1.4 if captions else 1.15
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * size, len(rows) * size * tall), squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set(xticks=[], yticks=[])
            if c < len(imgs):
                _show(ax, imgs[c])
                if captions and c < len(captions[name]):
                    ax.set_xlabel(captions[name][c], fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()


def training_curves(log: pd.DataFrame, columns, title: str = ""):
    """One panel per column of ``log`` against ``step`` (markers where a column is logged now and then)."""
    cols = [c for c in columns if c in log]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3), squeeze=False)
    for ax, c in zip(axes.flat, cols, strict=True):
        sns.lineplot(
            data=log.dropna(subset=[c]), x="step", y=c, ax=ax, marker="o" if log[c].isna().any() else None
        )
        ax.set_title(c)
    fig.suptitle(title)
    fig.tight_layout()


def codebook_usage(counts: np.ndarray, title: str = "codebook usage"):
    """Sorted code frequencies (log scale) with the share of used entries."""
    counts = np.asarray(counts)
    used = (counts > 0).mean()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(np.arange(len(counts)), np.sort(counts)[::-1], width=1.0, color="tab:blue")
    ax.set(yscale="log", xlabel="codebook entries, most used first", ylabel="occurrences")
    ax.set_title(f"{title}: {used:.0%} of {len(counts)} entries used")
    fig.tight_layout()


def confusion(true, pred, class_names, title: str = "confusion", normalize: bool = True):
    n = len(class_names)
    m = np.zeros((n, n))
    np.add.at(m, (np.asarray(true), np.asarray(pred)), 1)
    if normalize:
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
    side = min(n, 24)  # many classes: a figure of bounded size, labelled where the names still fit
    fig, ax = plt.subplots(figsize=(0.5 * side + 2, 0.45 * side + 1.5))
    sns.heatmap(
        m,
        annot=n <= 12,
        fmt=".2f" if normalize else "g",
        cmap="Blues",
        ax=ax,
        cbar_kws={"label": "share of the true class" if normalize else "images"},
        xticklabels=list(class_names) if n <= 40 else "auto",
        yticklabels=list(class_names) if n <= 40 else "auto",
    )
    ax.set(xlabel="predicted", ylabel="true / conditioning class", title=title)
    fig.tight_layout()


def tis_overlay(ax, image, scores, title: str = "", top=None, vmax: float | None = None):
    """An image with its per-position scores laid over it (upsampled), the ``top`` positions boxed; colours
    run from 0 to ``vmax`` (default: the largest score). Returns the map, for ``plt.colorbar``."""
    img = _show(ax, image)
    scores = np.asarray(scores, dtype=float)
    h, w = scores.shape
    H, W = img.shape[:2]
    handle = ax.imshow(
        scores,
        cmap="inferno",
        alpha=0.55,
        extent=(-0.5, W - 0.5, H - 0.5, -0.5),
        interpolation="nearest",
        vmin=min(0.0, float(scores.min())),
        vmax=vmax if vmax is not None else float(scores.max()),
    )
    if top is not None:
        ph, pw = H / h, W / w
        for p in np.asarray(top).ravel():
            r, c = divmod(int(p), w)
            ax.add_patch(plt.Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, ec="cyan", lw=1.2))
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return handle


def tis_grid(images, scores, titles, ncols: int = 8, size: float = 1.5, top_n: int = 0, suptitle: str = ""):
    """Images with their TIS maps, ``top_n`` > 0 boxing each one's top positions. Each map is divided by its
    largest score, so one colorbar (0 to 1) reads every panel. Returns the Figure."""
    fig, axes = _panels(len(images), ncols, size, 1.15)
    tops = topk_positions(scores, top_n) if top_n else [None] * len(images)
    handle = None
    for i in range(len(images)):
        m = np.asarray(scores[i], dtype=float)
        m = m / m.max() if m.max() > 0 else m
        handle = tis_overlay(axes.flat[i], images[i], m, str(titles[i]), top=tops[i], vmax=1.0)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    if handle is not None:
        fig.colorbar(handle, ax=axes, fraction=0.02, pad=0.01, label="TIS ÷ the image's largest")
    return fig


def tis_explorer(image, tokens, scores, top_n: int, title: str = ""):
    """One image three ways: the decoded image, its token ids, its TIS map with the top-n boxed."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.5))
    axes[0].imshow(to_hwc(image).squeeze(), cmap="gray")
    axes[0].set_title(title or "image")
    axes[0].axis("off")
    grid = np.asarray(tokens)
    axes[1].imshow(np.asarray(scores), cmap="Greys", alpha=0.35)
    top = set(topk_positions(np.asarray(scores)[None], top_n)[0].tolist())
    for (r, c), t in np.ndenumerate(grid):
        hot = r * grid.shape[1] + c in top
        style = {"color": "crimson", "weight": "bold"} if hot else {"color": "black", "weight": "normal"}
        axes[1].text(c, r, str(t), ha="center", va="center", fontsize=7, **style)
    axes[1].set(title=f"token ids (top-{top_n} TIS in red)", xticks=[], yticks=[])
    handle = tis_overlay(axes[2], image, scores, f"TIS, top-{top_n} boxed", top=sorted(top))
    fig.tight_layout()
    fig.colorbar(handle, ax=axes[2], fraction=0.046, pad=0.02, label="TIS")
    return fig


def count_histograms(panels: dict):
    """A bias study's counts: one panel per study (``panels``: title -> ``{value: per-image counts of that
    value's tokens}``), each value's counts as a histogram of the share of images."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2), squeeze=False)
    for ax, (title, by_value) in zip(axes[0], panels.items(), strict=True):
        frame = pd.concat([pd.DataFrame({"count": c, "tokens of": v}) for v, c in by_value.items()])
        named = all(matplotlib.colors.is_color_like(v) for v in by_value)  # "red", "green": drawn so
        sns.histplot(
            frame,
            x="count",
            hue="tokens of",
            palette={v: v for v in by_value} if named else None,
            discrete=True,
            element="step",
            stat="proportion",
            common_norm=False,
            ax=ax,
        )
        ax.set(title=title, xlabel="positions holding the value's tokens")
        ax.title.set_fontsize(9)
        sns.move_legend(ax, "lower center", bbox_to_anchor=(0.5, 1.12), ncol=2, frameon=False, fontsize=7)
    fig.tight_layout()


def width_histogram(widths: dict, threshold: float):
    """Stroke widths (``widths``: name -> per-image widths in pixels) as step histograms, with the thin /
    thick ``threshold`` as a dashed line."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    frame = pd.concat([pd.DataFrame({"width": w, "images": name}) for name, w in widths.items()])
    sns.histplot(frame, x="width", hue="images", element="step", bins=60, ax=ax)
    ax.axvline(threshold, color="k", ls="--", lw=1)
    ax.text(threshold, ax.get_ylim()[1] * 0.95, f" threshold {threshold:.2f}", fontsize=8, va="top")
    ax.set(xlabel="mean stroke width (pixels)", ylabel="images")
    fig.tight_layout()


def delta_bars(deltas: pd.DataFrame, toward: str = "the planted value"):
    """The paper's Cliff's δ of each row of a bias study's table (``bias``, ``neutral set``, ``delta``,
    ``delta_low``, ``delta_high``), with its interval."""
    fig, ax = plt.subplots(figsize=(4.5, 0.5 + 0.6 * len(deltas)))
    ax.barh(
        [f"{b}\n{n}" for b, n in zip(deltas["bias"], deltas["neutral set"], strict=True)],
        deltas["delta"],
        xerr=[deltas["delta"] - deltas["delta_low"], deltas["delta_high"] - deltas["delta"]],
        capsize=3,
        color="tab:gray",
    )
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlim=(-1, 1), xlabel=f"the paper's Cliff's δ (raw counts)\ntoward {toward}")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()


def outlined_grid(images, masks, titles=None, ncols: int = 8, size: float = 1.6, color: str = "red"):
    """Images ``(N, C, H, W)`` with the token-grid cells of ``masks`` (bool ``(N, h, w)``) outlined, so a
    masked patch stays visible where masking made it black on black."""
    masks = np.asarray(masks, dtype=bool)
    fig, axes = _panels(len(images), ncols, size, 1.12)
    for i in range(len(images)):
        ax = axes.flat[i]
        img = _show(ax, images[i], None if titles is None else titles[i])
        m = np.pad(masks[i], 1)  # a border of False: every region's edge is a change
        ph, pw = img.shape[0] / masks.shape[1], img.shape[1] / masks.shape[2]
        segs = []
        for y, x in zip(*np.nonzero(m[1:-1, 1:-1]), strict=True):
            x0, y0, x1, y1 = x * pw - 0.5, y * ph - 0.5, (x + 1) * pw - 0.5, (y + 1) * ph - 0.5
            segs += [[(x0, y0), (x1, y0)]] if not m[y, x + 1] else []  # cell above unmasked
            segs += [[(x0, y1), (x1, y1)]] if not m[y + 2, x + 1] else []  # below
            segs += [[(x0, y0), (x0, y1)]] if not m[y + 1, x] else []  # left
            segs += [[(x1, y0), (x1, y1)]] if not m[y + 1, x + 2] else []  # right
        ax.add_collection(LineCollection(segs, colors=color, linewidths=1.5))
    fig.tight_layout()


def share_vs_truth(deltas: pd.DataFrame):
    """Per study (``deltas``: ``bias``, ``digit``, ``share``, ``share_low``, ``share_high``, ``pixel truth``)
    the share estimated from tokens (95 % interval) against the pixels' truth. A withheld interval ([0, 1]) is
    a hollow marker; no estimate, a dashed line over [0, 1]."""
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for k, (b, marker) in enumerate(zip(deltas["bias"].unique(), "osd^", strict=False)):
        sub = deltas[deltas["bias"] == b]
        share = sub["share"].astype(float)
        withheld = (sub["share_low"] <= 0) & (sub["share_high"] >= 1)
        ok = sub[np.isfinite(share) & ~withheld]
        err = [ok["share"] - ok["share_low"], ok["share_high"] - ok["share"]]
        bars = ax.errorbar(
            ok["pixel truth"], ok["share"], yerr=err, fmt=marker, label=b if len(ok) else None, capsize=3
        )
        colour = bars[0].get_color()
        held = sub[np.isfinite(share) & withheld]
        ax.scatter(held["pixel truth"], held["share"], marker=marker, facecolors="none", edgecolors=colour,
                   label=f"{b}: interval withheld" if len(held) else None)  # fmt: skip
        ax.vlines(sub[~np.isfinite(share)]["pixel truth"], 0, 1, color=colour, ls="--", lw=1)
        for _, row in sub.iterrows():  # labels right of the first type's markers, left of the next's
            y = row["share"] if np.isfinite(row["share"]) else 0.5
            right = k % 2 == 0
            ax.annotate(
                f"digit {row['digit']}",
                (row["pixel truth"], y),
                xytext=(6, -12) if right else (-8, 4),
                ha="left" if right else "right",
                textcoords="offset points",
                fontsize=7,
            )
    ax.plot([0, 1], [0, 1], color="k", lw=0.7, ls="--", label="estimate = truth")
    ax.axhline(0.5, color="k", lw=0.5, ls=":")
    ax.axvline(0.5, color="k", lw=0.5, ls=":")
    ax.set(xlim=(0, 1), ylim=(0, 1), title="share estimate vs ground truth")
    ax.set_xlabel("share of the planted value by pixels (truth)")
    ax.set_ylabel("share estimated from tokens (95 % interval)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
