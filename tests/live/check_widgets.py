"""Check the widgets of notebooks 05 and 09 in a live JupyterLab, as a student would meet them.

Papermill has no widget front end, so the smoke run cannot see what a slider does. This script starts
``jupyter lab --no-browser`` from this repository's .venv, opens each notebook in a headless Chromium driven
by Playwright, runs all its cells, and then, in the explorer cell: counts the figures (there must be exactly
one), moves each slider with the keyboard, and checks that the one figure is redrawn in place (still one
figure, another picture). Screenshots of the explorer cell before and after each move are saved.

Not collected by pytest (it needs a browser and minutes). Once per machine:

    apt-get install -y chromium                      # Debian's Chromium, the browser driven here
    .venv/bin/pip install -e ".[live]"               # the Playwright client (no browser download)

then, on a finished default run (the notebooks run on a copy of it, so the run itself is not touched):

    .venv/bin/python tests/live/check_widgets.py runs/d --out runs/live-check

Last line: key=value pairs (``<notebook>_figures_before``, ``_figures_after_<slider>``, ``_changed_<slider>``,
``live_widgets_ok``); the exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
# notebook -> (a line that only its explorer cell holds, the sliders' descriptions in the order they appear)
NOTEBOOKS = {
    "05_compute_tis": ("explorer = display(explore_figure(", ["index", "top_n"]),
    "09_codebook_optimization": ("view = display(step_through(", ["run", "snapshot"]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parameterised_copy(name: str, run_dir: Path, folder: Path) -> Path:
    """The notebook with its ``parameters`` cell's run_dir pointed at ``run_dir`` (as papermill would inject)."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f'run_dir = "{run_dir}"  # set by tests/live/check_widgets.py' if line.startswith("run_dir = ")
                            else line for line in cell.source.splitlines())
    out = folder / f"{name}.ipynb"
    nbformat.write(nb, out)
    return out


def start_lab(root: Path, port: int, token: str, log) -> subprocess.Popen:
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(root / ".runtime"), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    cmd = [str(ROOT / ".venv" / "bin" / "jupyter"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={root / '.ws'}",
           "--ServerApp.disable_check_xsrf=True"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"jupyter lab exited early (status {proc.returncode}); see its log") from None
            time.sleep(1)
    proc.terminate()
    raise SystemExit("jupyter lab did not answer within 120 s")


def run_all_cells(page, timeout_s: float) -> None:
    """Run > Run All Cells, then wait until no cell is queued or running ([*]) and the kernel is idle."""
    page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=180_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()
    page.wait_for_timeout(3_000)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        busy = page.evaluate("""() => [...document.querySelectorAll('.jp-InputArea-prompt')]
                                       .some(p => p.textContent.includes('*'))""")
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        if not busy and idle:
            return
        page.wait_for_timeout(2_000)
    raise TimeoutError(f"the notebook did not finish within {timeout_s:.0f} s")


def errors_shown(page) -> list[str]:
    """Tracebacks in any output, and code cells that never ran (Run All stops at an error)."""
    return page.evaluate("""() => {
        const tb = [...document.querySelectorAll('.jp-OutputArea-output')]
            .map(e => e.textContent).filter(t => t.includes('Traceback (most recent call last)'))
            .map(t => t.slice(0, 400));
        const unrun = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
            .filter(p => p.textContent.trim() === '[ ]:').length;
        return unrun ? [...tb, unrun + ' code cell(s) did not run'] : tb;
    }""")


def explorer_cell(page, marker: str):
    """The code cell whose source holds ``marker``."""
    cells = page.locator(".jp-CodeCell")
    for i in range(cells.count()):
        if marker in cells.nth(i).locator(".jp-InputArea-editor").inner_text():
            return cells.nth(i)
    raise AssertionError(f"no cell holds {marker!r}")


def figures(cell) -> list[str]:
    """A digest of every image in the cell's outputs (matplotlib figures arrive as image/png)."""
    srcs = cell.locator(".jp-OutputArea img").evaluate_all("imgs => imgs.map(i => i.src)")
    return [hashlib.sha256(s.encode()).hexdigest()[:12] for s in srcs]


def move_slider(page, cell, description: str, presses: int = 3) -> None:
    """Focus the slider labelled ``description`` and press the right arrow key ``presses`` times."""
    slider = cell.locator(".widget-slider", has=page.locator(f"label:text-is('{description}')"))
    if slider.count() == 0:  # ipywidgets 8 labels
        slider = cell.locator(".widget-slider").filter(has_text=description)
    handle = slider.first.locator(".noUi-handle, .slider-handle, [role='slider']").first
    handle.focus()
    key = "ArrowRight" if description != "snapshot" else "ArrowLeft"  # 09's snapshot slider starts at its maximum
    for _ in range(presses):
        handle.press(key)
        page.wait_for_timeout(300)


def wait_for_change(page, cell, before: list[str], timeout_ms: int = 30_000) -> list[str]:
    deadline = time.time() + timeout_ms / 1000
    now = figures(cell)
    while time.time() < deadline:
        now = figures(cell)
        if now and now != before:
            page.wait_for_timeout(1_000)  # let a second redraw (if any) arrive before counting
            return figures(cell)
        page.wait_for_timeout(500)
    return now


def check_notebook(browser, base: str, token: str, name: str, out: Path, timeout_s: float) -> dict:
    marker, sliders = NOTEBOOKS[name]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/lab/tree/{name}.ipynb?token={token}&reset")
    run_all_cells(page, timeout_s)
    result = {"errors": errors_shown(page)}
    cell = explorer_cell(page, marker)
    cell.scroll_into_view_if_needed()
    page.wait_for_timeout(1_000)
    shots = [out / f"{name}_0_before.png"]
    cell.screenshot(path=shots[0])
    before = figures(cell)
    result["figures_before"] = len(before)
    result["sliders"] = cell.locator(".widget-slider").count()
    for k, description in enumerate(sliders, start=1):
        move_slider(page, cell, description)
        after = wait_for_change(page, cell, before)
        result[f"figures_after_{description}"] = len(after)
        result[f"changed_{description}"] = int(after != before and len(after) > 0)
        shots.append(out / f"{name}_{k}_after_{description}.png")
        cell.screenshot(path=shots[-1])
        before = after
    page.screenshot(path=out / f"{name}_page.png")
    result["screenshots"] = [str(s) for s in shots]
    page.close()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a finished default run (copied; the copy is what the notebooks write into)")
    ap.add_argument("--out", default="runs/live-check", help="screenshots and the lab's log go here")
    ap.add_argument("--notebooks", nargs="+", default=list(NOTEBOOKS), choices=list(NOTEBOOKS))
    ap.add_argument("--timeout", type=float, default=1200, help="seconds a notebook may take to run")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    src = Path(args.run_dir).resolve()
    if not (src / "registry.json").is_file():
        raise SystemExit(f"{src} is not a finished run (no registry.json)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="live-widgets-", dir=ROOT / "runs"))
    run_copy = work / "run"
    shutil.copytree(src, run_copy, ignore=shutil.ignore_patterns("*.ipynb", ".lock"))
    for name in args.notebooks:
        parameterised_copy(name, run_copy, work)
    port, token = free_port(), secrets.token_hex(16)
    results = {}
    with open(out / "jupyter_lab.log", "w") as log:
        lab = start_lab(work, port, token, log)
        try:
            with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
                browser = pw.chromium.launch_persistent_context(profile, executable_path=args.chromium,
                                                                args=CHROMIUM_FLAGS, headless=True)
                for name in args.notebooks:
                    results[name] = check_notebook(browser, f"http://127.0.0.1:{port}", token, name, out, args.timeout)
                browser.close()
        finally:
            lab.terminate()
            try:
                lab.wait(timeout=30)
            except subprocess.TimeoutExpired:
                lab.kill()
    shutil.rmtree(work, ignore_errors=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = True
    pairs = []
    for name, r in results.items():
        short = name[:2]
        nb_ok = r["figures_before"] == 1 and not r["errors"]
        for description in NOTEBOOKS[name][1]:
            nb_ok &= r[f"figures_after_{description}"] == 1 and r[f"changed_{description}"] == 1
            pairs += [f"nb{short}_figures_after_{description}={r[f'figures_after_{description}']}",
                      f"nb{short}_changed_{description}={r[f'changed_{description}']}"]
        pairs.insert(0, f"nb{short}_figures_before={r['figures_before']}")
        if r["errors"]:
            print(f"{name}: error output shown: {r['errors'][:3]}")
        ok &= nb_ok
    print(f"screenshots in {out}")
    print(" ".join([*pairs, f"live_widgets_ok={int(ok)}"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
