"""Draw README.md's overview figure from a finished default run (nothing typed by hand).

    python docs/overview_figure.py runs/verify            # -> docs/overview.png

For one test digit of each of four classes: the decoded token grid, its TIS map (notebook 05) with the top-5
positions boxed, and the image with every position holding one of those five ids blacked out (notebook 07's
image-level masking); the titles give the cnn evaluator's probability of the true class before and after.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cortex_utils import datasets as tokds  # noqa: E402
from cortex_utils import evaluation, evaluators, plots  # noqa: E402
from cortex_utils import vq as vqlib  # noqa: E402
from cortex_utils.artifacts import registered  # noqa: E402

CLASSES, TOP_N = (2, 3, 5, 8), 5


def main(run_dir: str, out: str = str(ROOT / "docs" / "overview.png")) -> None:
    run = Path(run_dir)
    vq = vqlib.load_run_vq(run)
    ds = tokds.load_token_dataset(registered(run, "dataset")["path"], vq=vq)
    tokens, labels = ds.tokens["test"].astype(np.int64), ds.labels["test"].astype(np.int64)
    tis = np.load(run / "tis" / "iem1_max" / "test.npy")
    rows = np.array([np.flatnonzero(labels == c)[0] for c in CLASSES])
    images = vqlib.decode(vq, torch.from_numpy(tokens[rows]))
    top = evaluation.top_tis_positions(tis[rows], TOP_N)
    masked = evaluation.mask_pixels(images, evaluation.positions_holding(tokens[rows], evaluation.ids_at(tokens[rows], top)))
    judge = {"cnn": evaluators.load_run_evaluators(run, vqlib.resolution(vq), len(ds.class_names))["cnn"]}
    before = evaluation.target_scores(judge, images, labels[rows])["cnn"][1]
    after = evaluation.target_scores(judge, masked, labels[rows])["cnn"][1]
    fig, axes = plt.subplots(3, len(rows), figsize=(1.9 * len(rows), 6.2))
    for j in range(len(rows)):
        axes[0, j].imshow(plots.to_hwc(images[j]))
        axes[0, j].set_title(f"digit {labels[rows[j]]}: p = {before[j]:.2f}", fontsize=9)
        plots.tis_overlay(axes[1, j], images[j], tis[rows[j]], title=f"TIS (brighter: higher), top {TOP_N} boxed", top=top[j])
        axes[2, j].imshow(plots.to_hwc(masked[j]))
        axes[2, j].set_title(f"their ids masked: p = {after[j]:.2f}", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("which tokens carry the digit? (p: an independent classifier's probability of the digit)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python docs/overview_figure.py RUN_DIR [OUT.png]")
    main(*sys.argv[1:3])
