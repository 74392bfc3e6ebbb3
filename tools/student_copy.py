"""A student's copy of the notebooks (``make student``): every solution cell replaced by a blank answer cell.

A notebook's exercises are a markdown cell tagged ``exercise``, a solution cell tagged ``solution`` (it runs
only with the parameter ``solutions = True``, the teacher's reveal) and a check cell (``exercise-check``).
In the copy each solution cell becomes a code cell tagged ``answer`` holding ``answer_<n> = None`` and a
comment; until the student replaces ``None``, the check says "not answered yet". Everything else is the
notebook as committed (no outputs).

    python tools/student_copy.py --out student      # student/NN_name.ipynb for every numbered notebook
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def answer_names(cell) -> list[str]:
    """The answer variables a solution cell sets (``answer_1 = ...``), in order."""
    return list(dict.fromkeys(re.findall(r"^\s*(answer_\w+)\s*=", cell.source, flags=re.M)))


def student_notebook(nb):
    """A copy of ``nb`` with each ``solution`` cell replaced by a blank ``answer`` cell."""
    nb = nbformat.from_dict(nb)  # a copy
    cells = []
    for cell in nb.cells:
        if "solution" not in cell.metadata.get("tags", []):
            cells.append(cell)
            continue
        names = answer_names(cell)
        if not names:
            raise ValueError(f"a solution cell sets no answer_<n> variable:\n{cell.source[:200]}")
        source = "# Your answer: replace None (the exercise above says what to give).\n" + "\n".join(
            f"{n} = None" for n in names
        )
        cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": ["answer"]}))
    nb.cells = cells
    return nb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "student"), help="where to write the copy (default student/)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    sources = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    copies = {p.name: student_notebook(nbformat.read(p, as_version=4)) for p in sources}  # all, then write
    out.mkdir(parents=True, exist_ok=True)
    for name, nb in copies.items():
        nbformat.write(nb, out / name)
    print(f"{len(copies)} student notebooks in {out} (solutions removed; answers blank)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
