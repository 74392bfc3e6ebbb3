"""Issue 30: a researcher's own labelled image folder through ``--preset own-images``, with data the test
makes (coloured shapes, not digits): every notebook the preset lists runs, judged by the run's own
evaluators, trained in notebook 02 on the folder's classes, never by the shipped digit classifiers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from cortex_run import REPO_ROOT, pipeline

sys.path.insert(0, str(REPO_ROOT / "tools"))
import page_check  # noqa: E402  (tools/ is not a package)

SHAPES = ("circle", "square", "triangle")
COLOURS = ((230, 60, 50), (60, 180, 75), (60, 100, 230), (240, 200, 40), (200, 80, 220))


def shape_folder(root, per_class: int = 30, size: int = 32, seed: int = 0):
    """``root/<shape>/<i>.png``: filled circles, squares and triangles, size x size RGB, each in one of a few
    colours, sizes and positions on a dark background of random shade."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shade = tuple(int(v) for v in rng.integers(0, 60, 3))
            img = Image.new("RGB", (size, size), shade)
            r = rng.uniform(0.22, 0.34) * size  # half the shape's width
            cx, cy = rng.uniform(r + 1, size - r - 1, 2)
            colour = COLOURS[rng.integers(len(COLOURS))]
            box = [cx - r, cy - r, cx + r, cy + r]
            draw = ImageDraw.Draw(img)
            if shape == "circle":
                draw.ellipse(box, fill=colour)
            elif shape == "square":
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            img.save(root / shape / f"{i:04d}.png")
    return root


# the smoke sizes of 03-17 (as presets/smoke.yaml) and of notebook 02's evaluators
SMOKE = {
    "03_train_iem.epochs": 1,
    "03_train_iem.width": 8,
    "05_compute_tis.nsamples": 2,
    "05_compute_tis.batch_size": 16,
    "06_concept_analysis.top_ns": [1, 5],
    "06_concept_analysis.show_top_n": 1,
    "06_concept_analysis.tokens_per_class": 2,
    "07_image_level_explanation.ns": [0, 1, 2],
    "07_image_level_explanation.max_images": 12,
    "08_concept_level_explanation.top_n": 1,
    "08_concept_level_explanation.token_num": 1,
    "09_codebook_optimization.images_per_pair": 1,
    "09_codebook_optimization.steps": 4,
    "09_codebook_optimization.snapshot_every": 2,
    "11_trust_the_explanations.n_images": 8,
    "11_trust_the_explanations.cascade_images": 4,
    "11_trust_the_explanations.nsamples": 2,
    "11_trust_the_explanations.ig_steps": 2,
    "11_trust_the_explanations.shuffled_iem": {"epochs": 1, "max_images": 64},
    "11_trust_the_explanations.curve_points": {"images": 4, "steps": 2},
    "11_trust_the_explanations.codebook_map": {"top_n": 1, "tsne": False, "gallery_tokens": 1},
    "15_tis_deeper.stability_images": 8,
    "15_tis_deeper.stability_nsamples": [1, 2],
    "17_masking_deeper.token_nums": [1, 2],
}


def _run(*args, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cortex_run.pipeline", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_the_preset_requires_the_folder_and_names_what_it_skips(tmp_path):
    """Without ``-p image_folder`` the run stops at once (no run directory), naming the parameter; the preset
    runs 01-09, 11, 15 and 17 and gives a reason for each notebook it leaves out."""
    with pytest.raises(SystemExit, match=r"requires -p image_folder \(a parameter of 02_dataset_"):
        pipeline.run("own-images", [], run_dir=str(tmp_path / "run"))
    with pytest.raises(SystemExit, match="requires -p image_folder"):
        pipeline.run("own-images", [("image_folder", '""')], run_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    preset = pipeline.load_preset("own-images")
    stems = sorted(pipeline.NEEDS)
    assert sorted([*preset["notebooks"], *preset["skipped"]]) == stems
    planted = ("10_", "12_", "13_", "14_", "16_", "18_")  # the planted worlds, other runs, the real shape
    assert set(preset["skipped"]) == {s for s in stems if s.startswith(planted)}
    # a preset's 'skipped' names notebooks it does not run, each with a reason
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"notebooks": ["01_vq_model"], "skipped": {"01_vq_model": "x"}}))
    with pytest.raises(SystemExit, match="'skipped' maps notebooks it does not run"):
        pipeline.load_preset(str(bad))


def test_own_images_end_to_end(tmp_path):
    """A folder of three shape classes through the own-images preset at smoke size: every listed notebook
    runs; the evaluators that judge 07-17 are the run's own (trained in 02 on the shapes, saved and registered
    under the run directory, their held-out accuracy in metrics.json); no page mentions the shipped digit
    evaluators."""
    folder = shape_folder(tmp_path / "shapes", per_class=30)
    run_dir = tmp_path / "run"
    args = ["--preset", "own-images", "--run-dir", str(run_dir), "-p", "image_folder", str(folder)]
    args += ["-p", "02_dataset_generation.evaluator", "{steps: 30}"]
    for name, value in SMOKE.items():
        args += ["-p", name, json.dumps(value)]
    r = _run(*args)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    preset = pipeline.load_preset("own-images")
    for nb, why in preset["skipped"].items():  # the log says what is left out, and why
        assert f"[{nb}] skipped by preset own-images: {why}" in r.stdout
    for nb in preset["notebooks"]:  # each ran, and its page is clean on another dataset too (issue 25)
        assert page_check.problems(run_dir / f"{nb}.ipynb") == [], nb
    registry = json.loads((run_dir / "registry.json").read_text())
    for arch in ("cnn", "resnet"):
        path = (REPO_ROOT / registry[f"evaluator_{arch}"]["checkpoint"]).resolve()
        assert path.is_relative_to(run_dir.resolve()), path
        assert path.exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"evaluator_cnn_test_accuracy", "evaluator_resnet_test_accuracy"} <= set(metrics)
    dataset = json.loads((REPO_ROOT / registry["dataset"]["path"] / "manifest.json").read_text())
    assert dataset["class_names"] == list(SHAPES)
    for nb in preset["notebooks"][2:]:  # after 02, judges come from the run's registry, nowhere else
        source = (REPO_ROOT / "notebooks" / f"{nb}.py").read_text()
        assert "load_evaluator(" not in source and "SHIPPED_CHECKPOINTS" not in source, nb
    for nb in preset["notebooks"]:
        text = (run_dir / f"{nb}.ipynb").read_text()
        assert "checkpoints/evaluator_" not in text.replace(f"{run_dir}/checkpoints/evaluator_", ""), nb


def test_class_parameters_take_indices_or_names():
    """Notebooks 06 and 09 name classes (``gallery_classes``, ``pairs``) by index or by the folder's class
    name; a digit on a folder of three shapes is an error naming the parameter and the classes there are."""
    from cortex_run.notebook import class_ids

    assert class_ids([0, "triangle"], SHAPES, "pairs") == [0, 2]
    assert class_ids([3, 8], [str(d) for d in range(10)], "pairs") == [3, 8]  # the digits as before
    with pytest.raises(
        ValueError, match=r"gallery_classes: 3 is not a class of this dataset, which has 3 classes"
    ):
        class_ids([0, 3, 7], SHAPES, "gallery_classes")
    with pytest.raises(ValueError, match="'hexagon' is not a class"):
        class_ids(["hexagon"], SHAPES, "pairs")
