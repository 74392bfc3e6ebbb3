"""make book (cortex_run/book.py): a run's executed notebooks as a static site, checked without a browser.

The smoke test (test_pipeline.py) builds the book of the smoke run and checks it with ``assert_book``; the
browser's view of a default run's book is tests/live/check_book.py's."""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from cortex_run import REPO_ROOT, book

PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc0000003"
        "010100c9fe92ef0000000049454e44ae426082"
    )
).decode()
SLIDERS = {
    "box": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_a", "IPY_MODEL_b"]}},
    "a": {"model_name": "IntSliderModel", "state": {"description": "index", "value": 3, "min": 0, "max": 9}},
    "b": {"model_name": "IntSliderModel", "state": {"description": "top_n", "value": 5, "min": 1, "max": 20}},
}
EXTERNAL = re.compile(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="(?:https?:)?//', re.I)


def executed_notebook(title: str, solution_output: bool = False) -> nbformat.NotebookNode:
    """A small executed notebook with what the book must handle: set-up cells and injected parameters, a
    progress bar saved at 0 % then 100 %, a figure, a row of sliders, a formula, a summary, an exercise with
    its solution and check."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    nb.metadata["widgets"] = {book.WIDGET_STATE: {"state": SLIDERS, "version_major": 2, "version_minor": 0}}
    bars = "scoring:   0%|          | 0/5 [00:00<?, ?it/s]\rscoring: 100%|##########| 5/5 [00:01<00:00]\n"
    bars += "scored 5 images\n"
    view = {
        book.WIDGET_VIEW: {"model_id": "box", "version_major": 2, "version_minor": 0},
        "text/plain": "HBox(children=(IntSlider(value=3)))",
    }
    solution = nbformat.v4.new_code_cell("if solutions:\n    answer_1 = 42", metadata={"tags": ["solution"]})
    if solution_output:
        solution.outputs = [nbformat.v4.new_output("stream", name="stdout", text="42\n")]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {title}\n\nThe score $s = \\max_d g_d$:\n\n$$\\sum_n x_n$$"),
        nbformat.v4.new_code_cell("import numpy as np"),
        nbformat.v4.new_code_cell("run_dir = 'runs/x'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("run_dir = 'x'", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("check_parameters(globals())"),
        nbformat.v4.new_markdown_cell("## Scores"),
        nbformat.v4.new_code_cell(
            "tis = score()", outputs=[nbformat.v4.new_output("stream", name="stdout", text=bars)]
        ),
        nbformat.v4.new_code_cell(
            "show()",
            outputs=[nbformat.v4.new_output("display_data", {"image/png": PNG, "text/plain": "<Figure>"})],
        ),
        nbformat.v4.new_code_cell("display(sliders)", outputs=[nbformat.v4.new_output("display_data", view)]),
        nbformat.v4.new_markdown_cell("## Summary"),
        nbformat.v4.new_code_cell("display(Markdown(f'* {n} images'))"),
        nbformat.v4.new_markdown_cell(
            "## Exercises\n\nAnswer in `answer_1`.", metadata={"tags": ["exercise"]}
        ),
        solution,
        nbformat.v4.new_code_cell("def check_1(answer):\n    assert answer == 42"),
        nbformat.v4.new_code_cell(
            "exercise(1, check_1)",
            metadata={"tags": ["exercise-check"]},
            outputs=[
                nbformat.v4.new_output("stream", name="stdout", text=f"exercise 1: {book.UNANSWERED}\n")
            ],
        ),
    ]
    return nb


def small_run(root: Path, preset: str = "default", name: str = "run") -> Path:
    run = root / name
    run.mkdir(parents=True)
    nbformat.write(executed_notebook("01 · First"), run / "01_vq_model.ipynb")
    nbformat.write(
        executed_notebook("09 · Deeper", solution_output=True), run / "09_codebook_optimization.ipynb"
    )
    (run / "metrics.json").write_text('{"device": "cpu", "pipeline_seconds": 12.5}')
    (run / "parameters.yaml").write_text(yaml.safe_dump({"preset": preset, "parameters": {}}))
    return run


def assert_book(run: Path, site: Path) -> None:
    """Every executed notebook of ``run`` has its page, linked from the landing page; nothing is fetched from
    elsewhere; no output shows an unfinished progress bar or a widget's raw placeholder; every solution is
    folded behind a closed "Show solution"."""
    notebooks = sorted(p.stem for p in run.glob("[0-9][0-9]_*.ipynb"))
    landing = (site / "index.html").read_text()
    assert notebooks and not EXTERNAL.search(landing)
    for name in notebooks:
        page = (site / f"{name}.html").read_text()
        assert f'href="{name}.html"' in landing, name
        assert not EXTERNAL.search(page), name
        outputs = " ".join(re.findall(r'<div class="cell_output.*?</div>\s*</div>', page, re.S))
        assert not book.BAR.search(outputs), name
        assert "HBox(children" not in page and "widget-view+json" not in page, name
        solutions = nbformat.read(run / f"{name}.ipynb", as_version=4).cells
        n = sum("solution" in c.metadata.get("tags", []) for c in solutions)
        assert page.count("tag_solution") == n, name
        assert page.count("Show solution") == n and "<details open" not in page, name
    assert (site / "_static" / "mathjax" / "tex-svg.js").exists()  # the formulas typeset from the site itself


def test_progress_bars_are_left_out():
    saved = "a:   0%|   | 0/5\ra:  60%|## | 3/5\ra: 100%|###| 5/5\nb:  40%|#  | 2/5\ndone: 7 images\n"
    assert book.without_progress_bars(saved) == "done: 7 images\n"
    assert book.without_progress_bars("tick\rtock: 3 of 3\n") == "tock: 3 of 3\n"
    assert book.without_progress_bars("plain text, 50% of it\n") == "plain text, 50% of it\n"


def test_a_page_folds_its_set_up_solutions_and_checks_and_names_its_sliders():
    page = book.for_the_page(executed_notebook("01 · First", solution_output=True))
    assert "widgets" not in page.metadata
    code = {c.source.split("\n")[0]: c for c in page.cells if c.cell_type == "code"}
    assert list(code) == [
        "import numpy as np",  # with the parameters and their check, one fold; the injected cell gone
        "tis = score()",
        "show()",
        "display(sliders)",
        "display(Markdown(f'* {n} images'))",
        "if solutions:",
        "def check_1(answer):",  # with the exercise(...) call after it, one fold
    ]
    set_up = code["import numpy as np"]
    assert "check_parameters" in set_up.source and "run_dir = 'x'" not in set_up.source
    folds = {
        k: (c.metadata.get("mystnb", {}).get("code_prompt_show"), c.metadata.get("tags"))
        for k, c in code.items()
    }
    assert folds["import numpy as np"][0].startswith("Show set-up code")
    assert folds["display(Markdown(f'* {n} images'))"][0] == "Show code"
    assert folds["def check_1(answer):"][0] == "Show answer check"
    assert "exercise(1, check_1)" in code["def check_1(answer):"].source
    assert code["def check_1(answer):"].outputs == []  # "not answered yet" means nothing on a page
    assert folds["if solutions:"] == (
        "Show solution",
        ["solution", "hide-cell"],
    )  # with its output, both folded
    assert folds["tis = score()"] == (None, None) and folds["show()"] == (None, None)
    assert [o.text for o in code["tis = score()"].outputs] == ["scored 5 images\n"]
    (note,) = code["display(sliders)"].outputs
    html = note.data["text/html"]
    assert set(note.data) == {"text/html"} and "<b>index</b> = 3 (of 0 to 9)" in html and "top_n" in html
    quiet = book.for_the_page(executed_notebook("01 · First"))
    assert quiet.cells[-2].metadata.tags == ["solution", "hide-input"]


def test_the_book_of_a_small_run(tmp_path):
    run = small_run(tmp_path)
    index = book.build(run, tmp_path / "out")
    site = index.parent
    assert_book(run, site)
    landing = index.read_text()
    assert (
        "The class path" in landing and "Going deeper" in landing
    )  # 01 in the first group, 09 in the second
    assert landing.index("01_vq_model.html") < landing.index("09_codebook_optimization.html")
    for line in book.readme_parts((REPO_ROOT / "README.md").read_text())["commands"].splitlines():
        assert line.split("#")[0].strip() in re.sub(r"<[^>]+>", "", landing)  # the README's two commands
    assert "math notranslate" in (site / "01_vq_model.html").read_text()  # the formulas reach MathJax
    for name in ("01_vq_model", "09_codebook_optimization"):  # the figure of each page, saved beside it
        (src,) = re.findall(r'<img[^>]*src="([^"]+)"', (site / f"{name}.html").read_text())
        assert (site / src).is_file()


def test_a_page_sphinx_cannot_read_fails_the_build_and_keeps_the_last_site(tmp_path):
    run = small_run(tmp_path)
    out = tmp_path / "out"
    book.build(run, out)
    nb = nbformat.read(run / "01_vq_model.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("A reference to {doc}`a_page_that_is_not_there`."))
    nbformat.write(nb, run / "01_vq_model.ipynb")
    with pytest.raises(SystemExit, match="could not build the pages of"):
        book.build(run, out)
    assert (out / "html" / "index.html").exists() and not list(out.glob(".building-*"))


def test_the_newest_finished_default_run_is_the_one(tmp_path):
    with pytest.raises(SystemExit, match="make pipeline"):
        book.latest_run(tmp_path)
    old = small_run(tmp_path, name="a")
    smoke = small_run(tmp_path, preset="smoke", name="b")
    os.utime(old / "metrics.json", (time.time() - 100, time.time() - 100))
    complete = book.load_preset("default")["notebooks"]
    for run in (old, smoke):
        for name in complete:
            nbformat.write(executed_notebook(name), run / f"{name}.ipynb")
    unfinished = small_run(tmp_path, name="c")  # newest, but without the preset's notebooks
    assert unfinished.exists()
    assert book.latest_run(tmp_path) == old
