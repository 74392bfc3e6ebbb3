import json
import os
import subprocess
import sys

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from cortex_run import REPO_ROOT, book, pipeline

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
sys.path.insert(0, str(REPO_ROOT / "tools"))
import page_check  # noqa: E402  (tools/ is not a package)
import page_stats  # noqa: E402
from test_book import assert_book  # noqa: E402


def _clean_pages(run_dir, names) -> list[str]:
    """What tools/page_check.py finds on the executed notebooks ``names`` of a run (issue 25)."""
    return [p for nb in names for p in page_check.problems(run_dir / f"{nb}.ipynb")]


def _clean_terminal(r) -> None:
    """A clean run prints its progress and nothing a user would read as a failure (the kernels' own logs,
    such as the TCP-transport warning and a shutdown's KeyboardInterrupt, go to <run>/logs)."""
    out = r.stdout + r.stderr
    assert "WARNING" not in out and "KeyboardInterrupt" not in out and "Traceback" not in out, out[-3000:]


def test_every_preset_notebook_exists():
    """The smoke preset runs every notebook; the default every one but those that need what a default run does
    not have: two runs to compare (12) and real token data (13), and the run at the real models' shape (18,
    its own preset: minutes of a random f16 VQGAN); the presets of the encoded real digits (vqvae, encoded)
    also leave out the planted bias study (10), which needs a generator, and the composites (14), whose
    shipped data and IEM belong to the default tokenizer; own-images (a researcher's folder) leaves out the
    same and says why in its 'skipped'."""
    stems = [nb.stem for nb in NOTEBOOKS]
    assert pipeline.load_preset("smoke")["notebooks"] == stems
    assert pipeline.load_preset("default")["notebooks"] == [
        s for s in stems if not s.startswith(("12_", "13_", "18_"))
    ]
    for preset in ("vqvae", "encoded", "own-images"):  # nor the deeper bias study (16), which reads 10's
        assert pipeline.load_preset(preset)["notebooks"] == [
            s for s in stems if not s.startswith(("10_", "12_", "13_", "14_", "16_", "18_"))
        ]
    own = pipeline.load_preset("own-images")
    assert own["requires"] == ["image_folder"] and sorted(own["skipped"]) == sorted(
        set(stems) - set(own["notebooks"])
    )
    assert pipeline.load_preset("compare")["notebooks"] == ["12_compare_tokenizers"]
    assert pipeline.load_preset("bias_real")["notebooks"] == ["13_bias_real_data"]
    assert pipeline.load_preset("real-shape")["notebooks"] == ["18_real_shape"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_takes_a_device(path):
    """Issue 28: every notebook computes, so every one declares ``device``, default "auto" (resolved by
    ``check_parameters``: CUDA, else MPS, else the CPU), and its validation cell is where it is resolved."""
    assert pipeline.parameter_defaults(path.stem).get("device") == '"auto"', path.stem
    assert f'check_parameters(globals(), "{path.stem}")' in path.with_suffix(".py").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    after = nb.cells[tagged[0] + 1]
    assert after.cell_type == "code" and f'check_parameters(globals(), "{path.stem}")' in after.source
    import re

    from cortex_run.notebook import parameter_defaults

    assigned = re.findall(r"^(\w+) = ", nb.cells[tagged[0]].source, flags=re.M)
    assert sorted(assigned) == sorted(parameter_defaults(path.stem)), (
        "papermill must parse every parameter line"
    )
    assert nb.cells[0].cell_type == "markdown"


def test_a_group_parameter_given_in_part_keeps_its_other_defaults():
    """A parameter whose default is a non-empty dict is a group: a value naming some of its keys is completed
    from the default, in the notebook's namespace too; an unknown key or a wrong type is an error naming
    it."""
    from cortex_run.notebook import check_parameters

    ns = {"attribute_iem": {"epochs": 3}, "seed": 1}
    params = check_parameters(ns, "10_bias_detection")
    assert (
        ns["attribute_iem"] == params["attribute_iem"] == {"arch": 1, "width": 32, "epochs": 3, "lr": 0.002}
    )
    ns = {"real_data": {"dir": "x"}}
    check_parameters(ns, "13_bias_real_data")
    assert ns["real_data"] == {"dir": "x", "vq_config": "", "vq_checkpoint": "", "trust_pickle": False}
    with pytest.raises(ValueError, match=r"attribute_iem of 10_bias_detection: unknown key\(s\) \['epoch'\]"):
        check_parameters({"attribute_iem": {"epoch": 3}}, "10_bias_detection")
    with pytest.raises(ValueError, match=r"attribute_iem\['lr'\] must be float"):
        check_parameters({"attribute_iem": {"lr": "fast"}}, "10_bias_detection")
    with pytest.raises(ValueError, match=r"trust_pickle'\] must be bool"):
        check_parameters({"real_data": {"trust_pickle": 1}}, "13_bias_real_data")
    ns = {"torchvision_weights": {"resnet18": "r.pth"}}  # an empty dict default is a free mapping
    assert check_parameters(ns, "07_image_level_explanation")["torchvision_weights"] == {"resnet18": "r.pth"}


def test_unknown_parameter_is_an_error(tmp_path):
    preset = pipeline.load_preset("smoke")
    with pytest.raises(SystemExit, match="unknown parameter 'trian_steps'"):  # before the run directory
        pipeline.run("smoke", [("trian_steps", "5")], run_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="unknown parameter 'source' for 01_vq_model"):
        pipeline.resolve_parameters(preset, [("01_vq_model.source", "encoded")])
    with pytest.raises(SystemExit, match="no notebook '99_x'"):
        pipeline.resolve_parameters(preset, [("99_x.seed", "1")])
    with pytest.raises(SystemExit, match="unknown preset"):
        pipeline.load_preset("nope")
    with pytest.raises(SystemExit, match="no notebook 99_x"):
        pipeline.resolve_parameters({"notebooks": ["99_x"], "parameters": {}}, [])


def test_overrides_apply_where_declared():
    preset = pipeline.load_preset("smoke")
    p = pipeline.resolve_parameters(
        preset,
        [("seed", "3"), ("01_vq_model.train_steps", "7"), ("02_dataset_generation.source", "encoded")],
        extra={"n_show": 5, "02_dataset_generation": {"top_k": 9}},
    )
    assert p["01_vq_model"]["seed"] == 3 and p["02_dataset_generation"]["seed"] == 3
    assert p["01_vq_model"]["train_steps"] == 7 and p["02_dataset_generation"]["source"] == "encoded"
    assert p["01_vq_model"]["n_show"] == 5 and p["02_dataset_generation"]["top_k"] == 9


def test_needs_order_the_notebooks():
    preset = pipeline.load_preset("default")
    needs = pipeline.dependencies(preset)
    assert needs["01_vq_model"] == [] and needs["10_bias_detection"] == [
        "02_dataset_generation",
        "05_compute_tis",
    ]
    order = preset["notebooks"]
    assert all(order.index(n) < order.index(nb) for nb, ns in needs.items() for n in ns)
    # without 'needs' each notebook waits for the one before it
    chain = pipeline.dependencies({"notebooks": ["a", "b", "c"]})
    assert chain == {"a": [], "b": ["a"], "c": ["b"]}
    with pytest.raises(SystemExit, match="does not run"):
        pipeline.dependencies({"notebooks": ["a"], "needs": {"a": ["z"]}})
    # the runner starts the ready notebook with the most notebooks waiting behind it (directly or through
    # others) first; counted by hand on a small chain and on the default preset
    assert pipeline.downstream({"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": []}) == {
        "a": 3,
        "b": 1,
        "c": 0,
        "d": 0,
        "e": 0,
    }
    chain = pipeline.downstream(needs)
    assert chain["10_bias_detection"] == 1 and chain["16_bias_deeper"] == 0
    assert chain["05_compute_tis"] > chain["06_concept_analysis"] > chain["10_bias_detection"]


def _count_up(run_dir, i):
    from cortex_run.artifacts import record_metrics, register

    for k in range(20):
        record_metrics(run_dir, **{f"p{i}_{k}": k})
        register(run_dir, f"m{i}_{k}", checkpoint=str(k))


def test_side_by_side_writers_lose_no_metric(tmp_path):
    from multiprocessing import get_context

    from cortex_run.artifacts import read_metrics

    procs = [get_context("fork").Process(target=_count_up, args=(tmp_path, i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert len(read_metrics(tmp_path)) == 60
    assert len(json.loads((tmp_path / "registry.json").read_text())) == 60


def _run(args, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "cortex_run.pipeline", *args, "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=900,
    )


def _printed(path) -> str:
    """Everything an executed notebook printed or displayed as text (stream, plain text and Markdown
    outputs)."""
    nb = nbformat.read(path, as_version=4)
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return "\n".join(
        o.get("text", "")
        + "".join(str(o.get("data", {}).get(k, "")) for k in ("text/plain", "text/markdown"))
        for o in outs
    )


def _move_a_slider(path, move: str):
    """Run an executed notebook again in a live kernel, as JupyterLab runs it, then run ``move`` (a line that
    moves a slider) in that kernel: the images of the cell that displays the figure through a display handle
    (``display_id=True``) before and after the move, and the outputs of the cell that moved it. The client
    applies the kernel's display updates to the cell that made the display, as a front end does."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}}
    )

    def images(cell):
        return [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]

    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # a front end's kernel: inline figures
    with client.setup_kernel(env=env):
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                client.execute_cell(cell, i)
        (view,) = [c for c in nb.cells if "display_id=True" in c.source]
        before = images(view)
        nb.cells.append(nbformat.v4.new_code_cell(move))
        client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
    return before, images(view), nb.cells[-1].outputs


def test_smoke_preset_runs_every_notebook(tmp_path):
    r = _run(
        ["--preset", "smoke", "--jobs", "2", "-p", "solutions", "true", "-p", "device", "cpu"], tmp_path
    )  # exercises' solutions on; the device given by name (issue 28: every notebook takes it)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _clean_terminal(r)
    run = tmp_path / "run"
    for nb in NOTEBOOKS:
        assert (run / nb.name).exists()
    assert _clean_pages(run, [nb.stem for nb in NOTEBOOKS]) == []
    # make book on this run (issue 29): every notebook has its page, nothing fetched, bars, sliders, solutions
    assert_book(run, book.build(run, tmp_path / "book").parent)
    metrics = json.loads((run / "metrics.json").read_text())
    for key in [
        "vq_test_psnr_db",
        "vq_codebook_usage",
        "generated_evaluator_accuracy",
        "dataset_bytes_per_image",
        "dataset_load_seconds",
        "iem1_test_top1",
        "iem2_test_top1",
        "iem3_test_top1",
        "iem4_test_top1",
        "tis_seconds_per_image",
        "tis_top5_seed_agreement_antithetic_2",
        "tis_top5_seed_agreement_sobol_2",
        "image_level_tis_beats_random",
        "image_level_tis_beats_random_token_space",
        "concept_level_tis_drop",
        "concept_level_frequency_drop",
        "codebook_target_prob_before",
        "codebook_target_prob_after",
        "codebook_opt_concept_overlap",
        "codebook_opt_concept_overlap_chance",
        "codebook_opt_concept_overlap_random_ids",
        "codebook_concept_fill_target_prob",
        "codebook_random_fill_target_prob",
        "codebook_frequency_fill_target_prob",
        "bias_colour_delta_biased",
        "bias_colour_delta_control",
        "bias_thickness_delta_biased",
        "bias_thickness_delta_control",
        "bias_colour_truth_share",
        "bias_thickness_truth_share",
        *[
            f"mitigation_{b}_{k}"
            for b in ("colour", "thickness")
            for k in (
                "share_before",
                "share_after",
                "share_after_random",
                "digit_agreement_after",
                "share_after_high",
                "digit_agreement_after_low",
            )
        ],
        "sanity_rank_corr_smoothgrad",
        "deletion_auc_smoothgrad_pixel",
        "deletion_auc_occlusion_token",
        "recommended_method",
        "tis_method",
        "pipeline_seconds",
        "multiobject_pointing_top5",
        "multiobject_pointing_top5_low",
        "multiobject_pointing_top5_high",
        "multiobject_pointing_chance",
        "multiobject_pointing_random_iem",
        "multiobject_concept_overlap_top5",
        "multiobject_concept_overlap_top5_chance",
        *[f"{nb.stem}_seconds" for nb in NOTEBOOKS],
        *[f"realshape_{k}" for k in ("tis_images_per_s", "iem_step_seconds", "peak_mb", "paper_hours")],
    ]:
        assert key in metrics, key
    assert metrics["tis_method"] == "smoothgrad"  # the paper's, the default
    assert metrics["device"] == "cpu"  # recorded by the notebooks that computed, all on the device given
    assert (
        metrics["models_trained_in_run"] >= 10
    )  # the smoke preset retrains every model (note_trained counts them)
    image_level = pd.read_csv(run / "evaluation" / "image_level.csv")
    assert set(image_level["n"]) == {0, 1, 2} and set(image_level["space"]) == {"pixel", "token"}
    # notebook 08's Table 2 (the class-contrastive baseline is notebook 17's, in its metrics)
    assert set(pd.read_csv(run / "evaluation" / "concept_level.csv")["method"]) == {
        "CORTEX concept",
        "frequency",
        "frequency w/o background",
    }
    assert "concept_level_contrastive_drop" in metrics
    assert (
        len(pd.read_csv(run / "evaluation" / "codebook_level.csv")) == 2 * 2
    )  # 1 image x 2 methods x 2 evaluators
    from cortex_run import datasets as tokds

    grids = tokds.load_token_dataset(
        run / "optimization" / "grids"
    )  # notebook 09's grids, for the overview figure
    assert set(grids.splits) == {
        "source",
        "tokens",
        "embeddings",
        "concept_fill",
        "frequency_fill",
        "random_fill",
    }
    assert all(len(grids.labels[s]) == 1 for s in grids.splits) and str(grids.names["source"][0]).startswith(
        "3->8 "
    )
    assert metrics["dataset_bytes_per_image"] <= 4 * 8 * 8
    tis = np.load(run / "tis" / "iem1_max" / "train.npy")
    assert tis.shape == (30, 8, 8) and np.isfinite(tis).all()
    table = pd.read_parquet(run / "concepts" / "concept_tokens.parquet")
    assert set(table["top_n"]) == {1, 5} and (table.groupby(["top_n", "label"])["count"].sum() > 0).all()
    assert "results in" in r.stdout
    # live use of the notebooks with sliders: the figure is shown once, and a slider redraws it in place
    for name, move in (
        ("05_compute_tis", "index_slider.value = 1"),
        ("09_codebook_optimization", "snap_slider.value = snap_slider.min"),
    ):
        before, after, moved = _move_a_slider(run / f"{name}.ipynb", move)
        assert len(before) == 1 and len(after) == 1 and before != after and moved == [], name
    # the tutorial on another attribution method: the notebooks that compute or read TIS again, on this run's
    # models and data, with -p method occlusion (notebook 05 declares it; the others read it from the run)
    tis_notebooks = [nb for nb in NOTEBOOKS if 5 <= int(nb.stem[:2]) <= 11 or 14 <= int(nb.stem[:2]) <= 16]
    for nb in tis_notebooks:
        assert "TIS method: smoothgrad" in _printed(run / nb.name), nb.stem
    r = _run(
        [
            "--preset",
            "smoke",
            "--only",
            ",".join(nb.stem for nb in tis_notebooks),
            "-p",
            "method",
            "occlusion",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for nb in tis_notebooks:  # each names the method its scores came from
        assert "TIS method: occlusion" in _printed(run / nb.name), nb.stem
    assert json.loads((run / "metrics.json").read_text())["tis_method"] == "occlusion"
    assert np.load(run / "bias" / "colour" / "digit_3" / "tis_train.npy").shape[1:] == (
        8,
        8,
    )  # notebook 10's, by occlusion
    entry = json.loads((run / "registry.json").read_text())["tis"]
    assert entry["method"] == "occlusion" and entry["path"].endswith("iem1_max_occlusion")
    assert np.load(run / "tis" / "iem1_max_occlusion" / "train.npy").shape == (30, 8, 8)
    # the other two dataset sources, on the same run's tokenizer
    r = _run(["--preset", "smoke", "--only", "02_dataset_generation", "-p", "source", "encoded"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    enc = tokds.load_token_dataset(run / "datasets" / "encoded")
    assert enc.manifest["splits"] == {"train": 3500, "val": 750, "test": 750}
    csv = run / "exports" / "encoded_test_embeddings.csv"
    r = _run(
        [
            "--preset",
            "smoke",
            "--only",
            "02_dataset_generation",
            "-p",
            "source",
            "imported",
            "-p",
            "csv_train",
            str(csv),
            "-p",
            "dataset_name",
            "reimported",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    imp = tokds.load_token_dataset(run / "datasets" / "reimported")
    assert (imp.tokens["train"] == enc.tokens["test"]).all()


def test_failing_notebook_is_named_with_its_cell(tmp_path):
    r = _run(["--preset", "smoke", "--only", "01_vq_model", "-p", "learning_rate", "-1"], tmp_path)
    assert r.returncode != 0
    assert "notebook 01_vq_model failed in cell" in r.stderr and "learning_rate must be > 0" in r.stderr
    assert (tmp_path / "run" / "01_vq_model.failed.ipynb").exists()
    assert not (tmp_path / "run" / "01_vq_model.ipynb").exists()


def test_unknown_parameter_injected_by_papermill_directly(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match="unknown parameter"):
        pm.execute_notebook(
            str(REPO_ROOT / "notebooks" / "01_vq_model.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"run_dir": str(tmp_path), "trian_steps": 5},
            kernel_name="python3",
            cwd=str(REPO_ROOT / "notebooks"),
            progress_bar=False,
        )


def test_a_cell_over_the_time_limit_stops_its_notebook(tmp_path):
    r = _run(["--preset", "smoke", "--only", "01_vq_model", "--cell-timeout", "1"], tmp_path)
    assert r.returncode != 0
    assert "notebook 01_vq_model did not finish" in r.stderr and "timed out" in r.stderr
    assert not (tmp_path / "run" / "01_vq_model.ipynb").exists()


def test_default_run_matches_the_expected_metrics(tmp_path):
    """The default run trains nothing and reproduces docs/expected_metrics.json within its tolerances (every
    bar-relevant number, including models_trained_in_run = 0): the test that a wrong result fails."""
    expected = REPO_ROOT / "docs" / "expected_metrics.json"
    if not expected.exists():
        pytest.skip("docs/expected_metrics.json not made yet (benchmarks/make_expected.py)")
    r = _run(["--preset", "default"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _clean_terminal(r)
    v = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "verify_expected.py"), str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert v.returncode == 0, v.stdout[-3000:] + v.stderr[-3000:]
    # every executed page clean; the class path's pages, as executed (displayed markdown counted), fit a class
    run = tmp_path / "run"
    assert _clean_pages(run, pipeline.load_preset("default")["notebooks"]) == []
    pages = [page_stats.stats(run / f"{nb}.ipynb") for nb in pipeline.load_preset("class")["notebooks"]]
    assert sum(p["words"] for p in pages) <= 5000 and sum(p["code_lines"] for p in pages) <= 1200


def test_vqvae_run_matches_its_expected_metrics(tmp_path):
    """The second tokenizer family's run (FSQ VQ-VAE on the encoded real digits) also trains nothing and
    reproduces docs/expected_metrics_vqvae.json: its tokenizer, dataset and IEMs are shipped."""
    expected = REPO_ROOT / "docs" / "expected_metrics_vqvae.json"
    if not expected.exists():
        pytest.skip("docs/expected_metrics_vqvae.json not made yet (benchmarks/make_expected.py)")
    r = _run(["--preset", "vqvae"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    v = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "verify_expected.py"),
            str(tmp_path / "run"),
            "--expected",
            str(expected),
        ],
        capture_output=True,
        text=True,
    )
    assert v.returncode == 0, v.stdout[-3000:] + v.stderr[-3000:]
    assert v.stdout.strip().splitlines()[-1].endswith("verify_off=0")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["models_trained_in_run"] == 0


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_and_its_text_form_agree(path):
    """Each notebook is paired with a text form (jupytext percent format, notebooks/NN_name.py) that a review
    reads as a diff; the two must hold the same cells (make sync-notebooks brings the older one up to
    date)."""
    import jupytext

    text = path.with_suffix(".py")
    assert text.exists(), f"{text.name} is missing: run make sync-notebooks"

    def cells(nb):
        return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]

    assert cells(jupytext.read(path)) == cells(jupytext.read(text)), (
        f"{path.name} and {text.name} differ: run make sync-notebooks (the newer file wins)"
    )


def test_exercise_checks(capsys):
    from cortex_run.notebook import exercise

    assert exercise("1", {}, lambda a: a == 2) is None  # says, and shows no value under the cell
    assert "not answered yet" in capsys.readouterr().out
    assert exercise("1", {"answer_1": 2}, lambda a: a == 2) is None
    assert "your answer holds" in capsys.readouterr().out
    exercise("1", {"answer_1": 3}, lambda a: a == 2, hint="two")
    out = capsys.readouterr().out
    assert "not yet" in out and "hint: two" in out
    with pytest.raises(AssertionError, match="not set"):
        exercise("1", {}, lambda a: a == 2, solutions=True)
    with pytest.raises(AssertionError, match="does not pass"):
        exercise("2", {"answer_2": 3}, lambda a: a == 2, solutions=True)


# --- teaching conventions (issue "Teach the method in the open"); tags as papermill's `parameters` ---------

TEACHING = [p for p in NOTEBOOKS if 3 <= int(p.stem[:2]) <= 11 or 14 <= int(p.stem[:2]) <= 16]
METHOD = [p for p in NOTEBOOKS if 5 <= int(p.stem[:2]) <= 11 or 14 <= int(p.stem[:2]) <= 16]


def _tagged(nb, tag):
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


@pytest.mark.parametrize("path", TEACHING, ids=lambda p: p.stem)
def test_cells_stay_short_and_plumbing_stays_apart(path):
    """No code cell over 25 lines, the `parameters` cell included (knobs that travel together are one group
    parameter, a dict); a cell that records metrics, registers a model or looks one up in the run's registry
    calls none of the method's modules (loading a model or data, ``load_*``, is not the method), so the cells
    on the page are about the method and the plumbing sits apart."""
    import re

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [len(c.source.splitlines()) for c in code if len(c.source.splitlines()) > 25] == []
    method = re.compile(
        r"\b(tislib|conceptlib|concepts|evaluation|opt|optimization|bias|bias_stats|planted_bias|"
        r"attribution|iemlib|gen|"
        r"generation|evaluators|distributed)\.(?!load_)\w+\("
    )
    plumbing = [c.source for c in code if re.search(r"\b(record_metrics|register|registered)\(", c.source)]
    assert [s for s in plumbing if method.search(s)] == []


@pytest.mark.parametrize("path", TEACHING, ids=lambda p: p.stem)
def test_every_notebook_ends_with_checked_exercises(path):
    nb = nbformat.read(path, as_version=4)
    tasks, checks, solutions = (_tagged(nb, t) for t in ("exercise", "exercise-check", "solution"))
    assert len(tasks) >= 2 and all(c.cell_type == "markdown" for c in tasks)
    assert len(checks) >= len(tasks) and all("exercise(" in c.source for c in checks)
    assert len(solutions) >= len(tasks) and all("if solutions" in c.source for c in solutions)
    assert "solutions" in pipeline.parameter_defaults(path.stem)


@pytest.mark.parametrize("path", METHOD, ids=lambda p: p.stem)
def test_every_method_notebook_builds_its_idea_by_hand(path):
    nb = nbformat.read(path, as_version=4)
    assert _tagged(nb, "by-hand"), "a cell tagged by-hand"
    checks = _tagged(nb, "by-hand-check")
    assert checks and any("assert" in c.source for c in checks), "a by-hand-check cell that asserts"


def test_a_library_that_stops_matching_its_by_hand_version_fails_the_run(tmp_path):
    """Break the library on purpose: notebook 06 counts concept tokens by hand and checks the count against
    concepts.concept_tokens; with that function off by one the smoke run must fail in notebook 06's
    by-hand-check cell. (A copy of the repository is run, the broken module first on PYTHONPATH.)"""
    import shutil

    copy = tmp_path / "repo"
    for folder in ("cortex_utils", "notebooks", "checkpoints", "data", "docs"):  # docs: 05's reference for 11
        shutil.copytree(
            REPO_ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__", "cache")
        )
    concepts = copy / "cortex_utils" / "concepts.py"
    concepts.write_text(
        concepts.read_text()
        + (
            "\n\n_concept_tokens = concept_tokens\n\n\n"
            "def concept_tokens(*args, **kwargs):  # broken on purpose by the test\n"
            "    table = _concept_tokens(*args, **kwargs)\n"
            "    table['count'] = table['count'] + 1\n"
            "    return table\n"
        )
    )
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(copy)}
    only = "01_vq_model,02_dataset_generation,03_train_iem,05_compute_tis,06_concept_analysis"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cortex_run.pipeline",
            "--preset",
            "smoke",
            "--only",
            only,
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=copy,
        timeout=900,
    )
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "notebook 06_concept_analysis failed in cell" in out and "AssertionError" in out, out[-3000:]
    nb = nbformat.read(tmp_path / "run" / "06_concept_analysis.failed.ipynb", as_version=4)
    failed = [c for c in nb.cells if c.metadata.get("papermill", {}).get("exception")]
    assert len(failed) == 1 and "by-hand-check" in failed[0].metadata.get("tags", [])
