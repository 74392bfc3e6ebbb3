"""How long a page is: words of markdown and non-blank code lines of a notebook (either form), papermill's
injected-parameters cell not counted. Issue 25's class-path bars are sums of these over the class preset.

    python tools/page_stats.py notebooks/05_compute_tis.py runs/<run>/05_compute_tis.ipynb ...
    python tools/page_stats.py --preset class runs/<run>      # the class path's totals
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import yaml


def stats(path: Path) -> dict:
    """``{"words": words of markdown, "code_lines": non-blank code lines}`` of one notebook. Words are split
    at white space; markdown a code cell displays (an executed notebook's ``text/markdown`` outputs, such as a
    Summary's bullets) counts as markdown too."""
    nb = jupytext.read(path)
    words = code = 0
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "markdown":
            words += len(cell.source.split())
        elif cell.cell_type == "code":
            code += sum(1 for line in cell.source.splitlines() if line.strip())
            for out in cell.get("outputs", []):
                words += len(str(out.get("data", {}).get("text/markdown", "")).split())
    return {"words": words, "code_lines": code}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="notebooks (.ipynb or .py), or one run directory with --preset")
    ap.add_argument("--preset", help="count the preset's notebooks in the run directory given")
    a = ap.parse_args(argv)
    if a.preset:
        root = Path(__file__).resolve().parents[1]
        names = yaml.safe_load((root / "cortex_run" / "presets" / f"{a.preset}.yaml").read_text())[
            "notebooks"
        ]
        paths = [Path(a.paths[0]) / f"{n}.ipynb" for n in names]
    else:
        paths = [Path(p) for p in a.paths]
    total = {"words": 0, "code_lines": 0}
    for p in paths:
        s = stats(p)
        total = {k: total[k] + s[k] for k in total}
        print(f"{p.name}: {s['words']} words, {s['code_lines']} code lines")
    if len(paths) > 1:
        print(f"total: {total['words']} words, {total['code_lines']} code lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
