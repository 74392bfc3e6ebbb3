"""Is an executed notebook a clean page? Reads the saved file (as a student opens it) and lists what a reader
should not see (issue 25):

- a text output over 40 lines;
- a figure shown twice in one cell (the same image twice, or an image beside a Figure's repr);
- a progress bar left unfinished (tqdm's widget saved as "0%|", or a text bar whose last state is not 100 %);
- an object repr (``Text(0.5, ...)``, ``<... at 0x...>``, ``[<matplotlib...]``) or a dict echoed as a value;
- library chatter (taming's "Working with z of shape"), and anything on stderr outside a cell tagged
  ``demonstration``;
- an end that is not ``## Summary`` then ``## Questions``, both before the exercises.

    python tools/page_check.py runs/<run>/*.ipynb      # prints "ok" per clean file; exit 1 on any problem
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

MAX_LINES = 40
REPR = re.compile(
    r"^\s*(\[?<[\w.]+(?: object)? at 0x[0-9a-f]+>|Text\(|\[?<matplotlib|\[?<Axes|<Figure size|<seaborn|"
    r"Line2D\(|<BarContainer|\(<Figure|\[Text\()"
)
CHATTER = ("Working with z of shape",)


def _text(out) -> str:
    """The text a front end shows for an output (a rich output's plain-text fallback is not shown)."""
    if out.get("output_type") == "stream":
        return out.get("text", "")
    data = out.get("data", {})
    rich = ("image/png", "text/html", "text/markdown", "application/vnd.jupyter.widget-view+json")
    return "" if any(k in data for k in rich) else str(data.get("text/plain", ""))


def _shown(text: str) -> str:
    """What a front end shows of a stream: each line after its last carriage return."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def _merged(outputs) -> list:
    """The outputs as a front end shows them: consecutive stream outputs of one name joined (papermill saves
    each write of a progress bar as an output of its own)."""
    merged = []
    for out in outputs:
        last = merged[-1] if merged else None
        if out.get("output_type") == "stream" and last and last.get("output_type") == "stream":
            if last.get("name") == out.get("name"):
                merged[-1] = {**last, "text": last.get("text", "") + out.get("text", "")}
                continue
        merged.append(out)
    return merged


def problems(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"{path.name} cell {i}"
        demo = "demonstration" in cell.metadata.get("tags", [])
        images = []
        for out in _merged(cell.get("outputs", [])):
            data = out.get("data", {})
            text = _text(out)
            shown = _shown(text).strip("\n")
            if len(shown.splitlines()) > MAX_LINES:
                found.append(f"{where}: an output of {len(shown.splitlines())} lines (over {MAX_LINES})")
            if out.get("output_type") == "stream" and out.get("name") == "stderr" and not demo:
                found.append(f"{where}: stderr: {shown.strip()[:120]!r}")
            if "image/png" in data:
                images.append(data["image/png"])
            widget = (
                str(data.get("text/plain", "")) if "application/vnd.jupyter.widget-view+json" in data else ""
            )
            if re.search(r"\d+%\|", widget) and not re.search(r"\b100%\|", widget):
                found.append(f"{where}: a progress bar widget saved unfinished: {widget.strip()[:80]!r}")
            for line in shown.splitlines():
                if re.search(r"\d+%\|", line) and not re.search(r"\b100%\|", line):
                    found.append(f"{where}: a progress bar left at {line.strip()[:80]!r}")
            if out.get("output_type") != "stream" and (REPR.match(text) or text.lstrip().startswith("{")):
                found.append(f"{where}: a value echoed: {text.strip()[:80]!r}")
            found += [f"{where}: library chatter: {c!r}" for c in CHATTER if c in text]
        if len(images) != len(set(images)):
            found.append(f"{where}: the same figure shown twice")
    md = [(i, c.source.lstrip()) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]
    heads = {name: [i for i, s in md if s.startswith(f"## {name}")] for name in ("Summary", "Questions")}
    exercises = [i for i, c in enumerate(nb.cells) if "exercise" in c.metadata.get("tags", [])]
    exercises += [i for i, s in md if s.startswith("## Exercises")]
    first_exercise = min(exercises, default=len(nb.cells))
    if not heads["Summary"] or not heads["Questions"]:
        found.append(f"{path.name}: no '## Summary' and '## Questions' sections")
    elif not heads["Summary"][0] < heads["Questions"][0] < first_exercise:
        found.append(f"{path.name}: '## Summary', then '## Questions', must come before the exercises")
    return found


def main(argv=None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        print(__doc__)
        return 2
    bad = 0
    for path in paths:
        found = problems(path)
        bad += bool(found)
        print("\n".join(found) if found else f"{path.name}: ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
