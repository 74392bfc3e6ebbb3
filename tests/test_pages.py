"""The pages a student reads (issue 25): the page checker finds what it should, the student copy holds no
solution, an exercise's message never shows the solution's value, and the class path is what the README says.
The executed notebooks themselves are checked in test_pipeline (the smoke and default runs)."""

import sys

import nbformat
import pytest

from cortex_run import REPO_ROOT, pipeline
from cortex_run.notebook import exercise, truth_texts, wrong_answers

sys.path.insert(0, str(REPO_ROOT / "tools"))
import page_check  # noqa: E402  (tools/ is not a package)
import page_stats  # noqa: E402
import student_copy  # noqa: E402

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CLASS = [
    "01_vq_model",
    "02_dataset_generation",
    "03_train_iem",
    "04_test_iem",
    "05_compute_tis",
    "06_concept_analysis",
    "07_image_level_explanation",
    "08_concept_level_explanation",
    "10_bias_detection",
]


def _page(cells, tmp_path):
    nb = nbformat.v4.new_notebook(cells=cells)
    path = tmp_path / "page.ipynb"
    nbformat.write(nb, path)
    return page_check.problems(path)


def _code(*outputs, tags=()):
    cell = nbformat.v4.new_code_cell("x", metadata={"tags": list(tags)})
    cell.outputs = [nbformat.from_dict(o) for o in outputs]
    return cell


def _stream(text, name="stdout"):
    return {"output_type": "stream", "name": name, "text": text}


def _result(plain, **data):
    return {
        "output_type": "execute_result",
        "execution_count": 1,
        "metadata": {},
        "data": {"text/plain": plain, **data},
    }


END = [
    nbformat.v4.new_markdown_cell("## Summary\n- a"),
    nbformat.v4.new_markdown_cell("## Questions\n1. b?"),
    nbformat.v4.new_markdown_cell("## Exercises"),
]


def test_a_clean_page_passes(tmp_path):
    bar = "sample:   0%|   | 0/8 [00:00<?, ?it/s]\rsample: 100%|###| 8/8 [00:01<00:00, 7.9it/s]\n"
    cells = [_code(_stream("IEM 1 top-1: 0.970\n"), _stream(bar)), _code(_result("0.5")), *END]
    assert _page(cells, tmp_path) == []
    # papermill saves each redraw of a plain bar as an output of its own; a front end joins them
    parts = [
        _stream("\rTIS:   0%|   | 0/9"),
        _stream("\rTIS:  44%|#  | 4/9"),
        _stream("\rTIS: 100%|###| 9/9\n"),
    ]
    assert _page([_code(*parts), *END], tmp_path) == []
    assert "progress bar" in _page([_code(*parts[:2]), *END], tmp_path)[0]


@pytest.mark.parametrize(
    "output, says",
    [
        (_stream("\n".join(map(str, range(41)))), "over 40"),
        (_stream("careful\n", name="stderr"), "stderr"),
        (_stream("sample:   0%|   | 0/8 [00:00<?, ?it/s]"), "progress bar"),
        (
            {
                "output_type": "display_data",
                "metadata": {},
                "data": {
                    "text/plain": "TIS train:   0%|          | 0/3000 [00:00<?, ?it/s]",
                    "application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2},
                },
            },
            "progress bar",
        ),
        (_result("Text(0.5, 1.02, 'title')"), "echoed"),
        (_result("<seaborn.axisgrid.FacetGrid at 0x7feea74276d0>"), "echoed"),
        (_result("{'run_dir': 'runs/x', 'seed': 0}"), "echoed"),
        (_stream("Working with z of shape (1, 64, 8, 8) = 4096 dimensions.\n"), "chatter"),
    ],
)
def test_the_page_checker_finds(output, says, tmp_path):
    found = _page([_code(output), *END], tmp_path)
    assert len(found) >= 1 and says in found[0], found


def test_the_page_checker_finds_a_figure_shown_twice_and_a_missing_end(tmp_path):
    png = {
        "output_type": "display_data",
        "metadata": {},
        "data": {"image/png": "iVBOR", "text/plain": "<Figure>"},
    }
    found = _page([_code(png, {**_result("<Figure size 10x10>"), "data": {"image/png": "iVBOR"}})], tmp_path)
    assert any("shown twice" in f for f in found) and any("Summary" in f for f in found)
    found = _page([_code(png), END[1], END[0], END[2]], tmp_path)  # questions before the summary
    assert found and "before the exercises" in found[0]
    assert (
        _page([_code(_stream("to stderr on purpose\n", "stderr"), tags=["demonstration"]), *END], tmp_path)
        == []
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_student_copy_has_no_solution(path):
    nb = nbformat.read(path, as_version=4)
    copy = student_copy.student_notebook(nb)
    solutions = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    answers = [c for c in copy.cells if "answer" in c.metadata.get("tags", [])]
    assert not [c for c in copy.cells if "solution" in c.metadata.get("tags", [])]
    assert len(answers) == len(solutions) and len(copy.cells) == len(nb.cells)
    kept = [c.source for c in nb.cells if "solution" not in c.metadata.get("tags", [])]
    assert [c.source for c in copy.cells if "answer" not in c.metadata.get("tags", [])] == kept
    for sol, ans in zip(
        solutions, answers, strict=True
    ):  # blank: each answer variable set to None, nothing else
        code = [ln for ln in ans.source.splitlines() if ln.strip() and not ln.startswith("#")]
        assert code == [f"{n} = None" for n in student_copy.answer_names(sol)] and code


def test_make_student_writes_every_notebook(tmp_path):
    assert student_copy.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]


def test_an_unanswered_exercise_in_the_student_copy_says_so(capsys):
    exercise("1", {"answer_1": None}, lambda a: a == 2)
    assert "not answered yet" in capsys.readouterr().out


def test_a_check_that_shows_the_truth_fails_with_solutions_on(capsys):
    truth = 0.9312

    # (raise, not assert: pytest rewrites a test file's asserts to show their operands)
    def leaky(a):
        if abs(a - truth) >= 5e-4:
            raise AssertionError(f"got {a:.4f}, expected {truth:.4f}")
        return True

    def fair(a):
        if abs(a - truth) >= 5e-4:
            raise AssertionError("not the share of test images: re-check the denominator")
        return True

    with pytest.raises(AssertionError, match="shows the solution's value '0.93"):
        exercise("1", {"answer_1": truth}, leaky, solutions=True)
    exercise("1", {"answer_1": truth}, fair, solutions=True)
    assert "your answer holds" in capsys.readouterr().out
    exercise("1", {"answer_1": 0.5}, fair)
    out = capsys.readouterr().out
    assert "not yet" in out and "re-check the denominator" in out and "0.93" not in out

    def echoes(a):  # repeating the student's own numbers is not a leak, even where one of them is right
        if abs(a[1] - truth) >= 5e-4 or a[0] != 3:
            raise AssertionError(f"top-{a[0]} accuracy {a[1]:.4f} does not hold: re-check k")
        return True

    exercise("1", {"answer_1": (3, truth)}, echoes, solutions=True)
    assert "your answer holds" in capsys.readouterr().out
    assert "0.931" in truth_texts((3, 0.9312)) and "3" not in truth_texts((3, 0.9312))
    assert wrong_answers((3, 0.5)) == [(4, 1.75), (4, 0.5), (3, 1.75)]


def test_the_class_path():
    """The class preset runs the paper's steps in order, each of them a notebook the default runs too, and
    nothing a class notebook reads comes from a notebook outside the class path."""
    preset = pipeline.load_preset("class")
    assert preset["notebooks"] == CLASS
    assert set(CLASS) <= set(pipeline.load_preset("default")["notebooks"])
    for nb in CLASS:
        assert set(pipeline.NEEDS[nb]) <= set(CLASS), nb


def test_the_class_path_fits_a_class():
    """Issue 25's bars on the committed pages: at most 5,000 words of markdown and 1,200 non-blank code lines
    over the class path (the executed pages' displayed markdown is counted in test_pipeline's default run)."""
    total = [page_stats.stats(REPO_ROOT / "notebooks" / f"{nb}.ipynb") for nb in CLASS]
    assert sum(s["words"] for s in total) <= 5000
    assert sum(s["code_lines"] for s in total) <= 1200
