"""Draw README.md's overview figure from a finished default run (nothing typed by hand).

    python docs/overview_figure.py runs/verify            # -> docs/overview.png

For one test digit of each of four classes: the decoded token grid, its TIS map (notebook 05) with the top-5
positions boxed, and the image with every position holding one of those five ids blacked out (notebook 07's
image-level masking); the titles give the cnn evaluator's probability of the true class before and after.
The last row is notebook 09's codebook optimisation, read from the grids it saved
(``<run>/optimization/grids``): a test 3, its region (dashed) optimised by each method so that the IEM sees an 8,
and the region filled with the 8's concept tokens instead; the titles give the cnn evaluator's probability of 8.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cortex_run import datasets as tokds  # noqa: E402
from cortex_run import evaluators, plots, tokenizers  # noqa: E402
from cortex_run.artifacts import registered  # noqa: E402
from cortex_utils import evaluation  # noqa: E402
from cortex_utils import tis as tislib  # noqa: E402
from cortex_utils import vq as vqlib  # noqa: E402

CLASSES, TOP_N = (2, 3, 5, 8), 5
PAIR = (3, 8)  # the codebook-optimisation row: source -> target
PANELS = {
    "source": "a test {s}",
    "tokens": "tokens optimised",
    "embeddings": "embeddings optimised",
    "concept_fill": "{t}'s concept tokens",
}


def optimisation_row(run: Path, vq, judge, axes) -> None:
    """Notebook 09's first 3 -> 8 source image: source, each method's optimised grid and the concept fill."""
    grids = tokds.load_token_dataset(registered(run, "optimization")["path"], vq=vq)
    details = grids.manifest["details"]
    s, t = PAIR
    names = [str(n) for n in grids.names["source"]]
    matches = [j for j, n in enumerate(names) if n.startswith(f"{s}->{t} ")]
    if not matches:
        raise SystemExit(f"the run's notebook 09 optimised no {s} -> {t} pair (rows: {names})")
    j = matches[0]
    shown = [k for k in PANELS if k in grids.tokens]
    images = vqlib.decode(
        vq, torch.from_numpy(np.stack([grids.tokens[k][j].astype(np.int64) for k in shown]))
    )
    p = evaluation.target_scores(judge, images, [t] * len(shown))["cnn"][1]
    size = vqlib.resolution(vq)
    (r0, r1), (c0, c1) = details["rows"], details["cols"]
    ph, pw = size // grids.grid[0], size // grids.grid[1]
    for ax, k, img, pk in zip(axes, shown, images, p, strict=False):
        ax.imshow(plots.to_hwc(img))
        ax.set_title(f"{PANELS[k].format(s=s, t=t)}\np({t}) = {pk:.2f}", fontsize=8.5)
        if k != "source":
            ax.add_patch(
                Rectangle(
                    (c0 * pw - 0.5, r0 * ph - 0.5),
                    (c1 - c0) * pw,
                    (r1 - r0) * ph,
                    fill=False,
                    ec="white",
                    lw=1.2,
                    ls="--",
                )
            )


def main(run_dir: str, out: str = str(ROOT / "docs" / "overview.png")) -> None:
    run = Path(run_dir)
    vq = tokenizers.load_run_vq(run)
    ds = tokds.load_token_dataset(registered(run, "dataset")["path"], vq=vq)
    tokens, labels = ds.tokens["test"].astype(np.int64), ds.labels["test"].astype(np.int64)
    tis = np.load(run / "tis" / "iem1_max" / "test.npy")
    rows = np.array([np.flatnonzero(labels == c)[0] for c in CLASSES])
    images = vqlib.decode(vq, torch.from_numpy(tokens[rows]))
    top = tislib.topk_positions(tis[rows], TOP_N)
    masked = evaluation.mask_pixels(
        images, evaluation.positions_holding(tokens[rows], evaluation.ids_at(tokens[rows], top))
    )
    judge = {"cnn": evaluators.load_run_evaluators(run, vqlib.resolution(vq), len(ds.class_names))["cnn"]}
    before = evaluation.target_scores(judge, images, labels[rows])["cnn"][1]
    after = evaluation.target_scores(judge, masked, labels[rows])["cnn"][1]
    fig, axes = plt.subplots(4, len(rows), figsize=(1.9 * len(rows), 8.8))
    for j in range(len(rows)):
        axes[0, j].imshow(plots.to_hwc(images[j]))
        axes[0, j].set_title(f"digit {labels[rows[j]]}: p = {before[j]:.2f}", fontsize=9)
        plots.tis_overlay(
            axes[1, j],
            images[j],
            tis[rows[j]],
            title=f"TIS (brighter: higher)\ntop {TOP_N} boxed",
            top=top[j],
        )
        axes[2, j].imshow(plots.to_hwc(masked[j]))
        axes[2, j].set_title(f"their ids masked: p = {after[j]:.2f}", fontsize=9)
    optimisation_row(run, vq, judge, axes[3])
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(
        "which tokens carry the digit? (p: an independent classifier's probability of the digit)\n"
        f"bottom row: a {PAIR[0]} whose dashed region is rewritten so that the IEM sees an {PAIR[1]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python docs/overview_figure.py RUN_DIR [OUT.png]")
    main(*sys.argv[1:3])
