"""``make book``: a finished run's executed notebooks as a static site a reader opens from the file system.

Sphinx with MyST-NB (the notebook reader of Jupyter Book 1) and sphinx-book-theme (its sidebar, page tables of
contents and search) read the saved outputs; nothing is executed and nothing is downloaded. Before Sphinx sees
a notebook, ``for_the_page`` makes it a page: papermill's injected parameters go, progress bars show
finished or not at all, the sliders papermill could not keep become a note (the figure they draw at their
starting position is saved beside them), and the exercises' solutions are folded behind a "Show solution"
button. The landing page (``book/index.md``) takes its opening, commands, glossary and references from the
README.

    python -m cortex_run.book [--run runs/<dir>] [--out book/_build]   # the site: <out>/html/index.html
"""

from __future__ import annotations

import argparse
import html
import importlib
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml
from sphinx.cmd.build import build_main

from . import REPO_ROOT
from .artifacts import read_json
from .pipeline import load_preset

BOOK = REPO_ROOT / "book"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
BAR = re.compile(r"\d+%\|")  # a tqdm progress line: "name:  40%|####      | 2/5 [...]"
HEADING = re.compile(r"^## (.+)$", re.M)
# MathJax 3 as sphinx-mathjax-offline ships it: the one script the pages load (TeX in, SVG out) and the
# parts it loads on demand
MATHJAX = ("tex-svg.js", "input", "output", "ui", "a11y")
# cells folded on the page (MyST-NB's hide-input), by tag or by section: the exercises' solutions and the
# code that checks an answer (it recomputes the answer), the code above a notebook's first section, the code
# that writes its summary. Neighbouring cells of one kind share a fold (a solution keeps its own).
FOLDS = {
    "solution": "solution",
    "exercise-check": "answer check",
    "exercises": "answer check",
    "set-up": "set-up code",
    "summary": "code",
}
UNANSWERED = "not answered yet"  # what a check prints when the run left the answer blank


def latest_run(runs: Path = REPO_ROOT / "runs") -> Path:
    """The newest finished default run under ``runs``: its parameters say preset default, and metrics.json
    and every notebook of the preset are there."""
    notebooks = load_preset("default")["notebooks"]
    done = (
        [
            d
            for d in runs.glob("*/")
            if (d / "metrics.json").exists()
            and (yaml.safe_load((d / "parameters.yaml").read_text()) or {}).get("preset") == "default"
            and all((d / f"{nb}.ipynb").exists() for nb in notebooks)
        ]
        if runs.is_dir()
        else []
    )
    if not done:
        raise SystemExit(
            f"no finished default run under {runs}: run `make pipeline` first, or give RUN=<dir>"
        )
    return max(done, key=lambda d: (d / "metrics.json").stat().st_mtime)


def chapters(run: Path) -> tuple[list[str], list[str]]:
    """The run's executed notebooks: the class path's (in its preset's order), then the others by number."""
    executed = sorted(p.stem for p in run.glob("[0-9][0-9]_*.ipynb"))
    if not executed:
        raise SystemExit(f"{run}: no executed notebooks (NN_name.ipynb) in this run directory")
    first = [nb for nb in load_preset("class")["notebooks"] if nb in executed]
    return first, [nb for nb in executed if nb not in first]


def without_progress_bars(text: str) -> str:
    """A saved stream as a reader should see it: each line's last carriage-return segment (what a terminal
    left on screen), and no progress bar: a finished bar says only that the run waited."""
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join(line for line in lines if not BAR.search(line))


def slider_note(view: dict, state: dict) -> str:
    """The line that stands for a row of sliders: each slider at the value its figure was drawn with."""
    box = state.get(view["model_id"], {}).get("state", {})
    children = [state.get(c.removeprefix("IPY_MODEL_"), {}).get("state", {}) for c in box.get("children", [])]
    sliders = [
        f"<b>{html.escape(s['description'])}</b> = {s['value']} (of {s['min']} to {s['max']})"
        for s in children
        if {"description", "value", "min", "max"} <= s.keys()
    ] or ["sliders"]
    where = "the figure is drawn at these values; in JupyterLab (<code>make lab</code>) the sliders redraw it"
    return f'<p class="book-sliders">Sliders at {", ".join(sliders)}: {where}.</p>'


def sections(cells):
    """Each cell with the title of the ``##`` section it sits in (lower case; "set-up" above the first)."""
    section = "set-up"
    for cell in cells:
        if cell.cell_type == "markdown":
            section = ([h.strip().lower() for h in HEADING.findall(cell.source)] or [section])[-1]
        yield section, cell


def readable(outputs: list, state: dict) -> list:
    """A code cell's outputs as the page shows them: streams without progress bars (gone when nothing else is
    left), a row of sliders as the line that names their values."""
    shown = []
    for out in outputs:
        if out.output_type == "stream":
            out.text = without_progress_bars(out.text)
            if not out.text.strip():
                continue
        elif WIDGET_VIEW in out.get("data", {}):
            note = slider_note(out.data[WIDGET_VIEW], state)
            out = nbformat.v4.new_output("display_data", {"text/html": note})
        shown.append(out)
    return shown


def fold(cell, kind: str) -> None:
    """Fold a code cell behind a "Show ..." button: its input, and the output of a solution or check."""
    what = FOLDS[kind]
    code = [line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")]
    if kind == "set-up" and all(line.startswith(("import ", "from ")) for line in code):
        what = "imports"
    elif kind == "set-up" and "parameters" in cell.metadata.get("tags", []):
        what = "parameters"
    whole = kind not in ("set-up", "summary") and cell.outputs
    cell.metadata.tags = [*cell.metadata.get("tags", []), "hide-cell" if whole else "hide-input"]
    cell.metadata["mystnb"] = {"code_prompt_show": f"Show {what}", "code_prompt_hide": f"Hide {what}"}


def for_the_page(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of an executed notebook made ready to read as a page (see the module's docstring)."""
    nb = nbformat.from_dict(nb)
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    cells, kinds = [], []
    for section, cell in sections(nb.cells):
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags:
            continue
        kind = None
        if cell.cell_type == "code":
            kind = next((t for t in tags if t in FOLDS), section if section in FOLDS else None)
            kind = "exercise-check" if kind == "exercises" else kind  # a check's helpers fold with it
            cell.outputs = readable(cell.outputs, state)
            if FOLDS.get(kind) == "answer check":
                cell.outputs = [o for o in cell.outputs if UNANSWERED not in o.get("text", "")]
            if kind not in (None, "solution") and kinds and kinds[-1] == kind:
                cells[-1].source += "\n\n" + cell.source  # one fold for neighbouring cells of one kind
                cells[-1].outputs += cell.outputs
                continue
        cells.append(cell)
        kinds.append(kind)
    for cell, kind in zip(cells, kinds, strict=True):
        if kind is not None:
            fold(cell, kind)
    nb.cells = cells
    return nb


def readme_parts(readme: str) -> dict[str, str]:
    """The parts of the README the landing page shows: its opening paragraph, the fresh-machine commands
    ``make pipeline`` and ``make test``, the glossary and the references."""

    def section(title):
        return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0].strip()

    commands = [
        line
        for line in section("On a fresh machine").splitlines()
        if line.startswith(("make pipeline ", "make test "))
    ]
    return {
        "opening": readme.split("\n", 1)[1].strip().split("\n\n", 1)[0],
        "commands": "\n".join(commands),
        "glossary": section("Glossary"),
        "references": section("References"),
    }


def title(nb: nbformat.NotebookNode) -> str:
    """A notebook's title: the first ``# `` heading of its first Markdown cell."""
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    return next((line[2:].strip() for line in first.splitlines() if line.startswith("# ")), "untitled")


def landing(run: Path, first: list[str], deeper: list[str]) -> str:
    """``book/index.md`` with the README's parts, the run it shows and the two tables of contents."""
    metrics = read_json(run / "metrics.json", {})
    preset = (yaml.safe_load((run / "parameters.yaml").read_text()) or {}).get("preset", "?")
    about = (
        f"That run: the run directory `runs/{run.name}` (preset {preset}, device {metrics.get('device', '?')}"
    )
    seconds = metrics.get("pipeline_seconds")
    about += f", {seconds:.0f} s" if isinstance(seconds, int | float) else ""
    about += time.strftime(", %d %B %Y).", time.localtime((run / "metrics.json").stat().st_mtime))
    missing = [
        p
        for p in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
        if p.stem not in first + deeper
    ]
    if missing:
        titles = "; ".join(title(nbformat.read(p, as_version=4)) for p in missing)
        about += f" Not in this run (they need other presets; the repository's README says how): {titles}."

    def toc(caption, names):  # the sidebar's group (hidden here) and the page's own list of the notebooks
        listed = "\n".join(f"* {{doc}}`{name}`" for name in names)
        return f"```{{toctree}}\n:caption: {caption}\n:hidden:\n\n" + "\n".join(names) + "\n```\n\n" + listed

    text = (BOOK / "index.md").read_text()
    parts = {**readme_parts((REPO_ROOT / "README.md").read_text()), "run": about}
    parts |= {"class": toc("The class path", first), "deeper": toc("Going deeper", deeper)}
    for key, value in parts.items():
        text = text.replace(f"<!-- {key} -->", value)
    return text


def build(run: Path, out: Path, quiet: bool = True) -> Path:
    """Build the site of ``run`` into ``out/html`` (replaced whole only once Sphinx succeeded); returns the
    landing page. Sphinx's warnings are errors: a page that cannot be read fails the build, by name."""
    run, out = Path(run), Path(out)
    first, deeper = chapters(run)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".building-") as tmp:
        src, site = Path(tmp) / "src", Path(tmp) / "html"
        mathjax = (
            Path(importlib.import_module("sphinx-mathjax-offline").__file__).parent / "static" / "mathjax"
        )
        (src / "_assets" / "mathjax").mkdir(parents=True)
        for part in MATHJAX:
            copy = shutil.copytree if (mathjax / part).is_dir() else shutil.copy
            copy(mathjax / part, src / "_assets" / "mathjax" / part)
        shutil.copy(BOOK / "book.css", src / "_assets")
        shutil.copy(BOOK / "conf.py", src / "conf.py")
        (src / "index.md").write_text(landing(run, first, deeper))
        for name in first + deeper:
            nb = nbformat.read(run / f"{name}.ipynb", as_version=4)
            nbformat.write(for_the_page(nb), src / f"{name}.ipynb")
        args = [str(src), str(site), "-b", "html", "-W", "--keep-going", "-j", "1"] + (
            ["-q"] if quiet else []
        )
        if build_main(args) != 0:
            raise SystemExit(f"make book: Sphinx could not build the pages of {run} (its messages above)")
        shutil.rmtree(out / "html", ignore_errors=True)
        site.rename(out / "html")
    return out / "html" / "index.html"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="a finished run directory (default: the newest default run)")
    ap.add_argument("--out", type=Path, default=BOOK / "_build", help="where the site goes (<out>/html)")
    args = ap.parse_args(argv)
    run = args.run or latest_run()
    if not (run / "metrics.json").exists():
        raise SystemExit(f"--run {run}: not a finished run (no metrics.json)")
    index = build(run, args.out)
    print(f"book of {run}: open {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
