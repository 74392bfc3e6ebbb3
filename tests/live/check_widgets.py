"""Check the widgets of notebooks 05 and 09 in a live JupyterLab, as a student would meet them.

Papermill has no widget front end, so the smoke run cannot see what a slider does. This script starts
``jupyter lab --no-browser`` from this repository's .venv, opens each notebook in a headless Chromium driven
by Playwright, runs all its cells, and then, in the explorer cell: counts the figures (there must be exactly
one); for each slider presses the arrow key three times (the one figure must be redrawn in place: still one,
another picture), three times back (it must come back to the first picture: the figure follows the slider,
not a redraw still queued), then drags it with the mouse and, once the figure has settled, steps one value
away and back (the settled picture must be the slider's final value's). How many redraws one drag caused and
how long the figure took to settle are reported, not judged (ipywidgets coalesces a drag's values into a few
updates). Screenshots of the explorer cell are saved after the moves. Every other cell must show as many
figures live as in the run's papermill copy (``RUN_DIR/<notebook>.ipynb``): no figure shown twice, none lost.

Not collected by pytest (it needs a browser and minutes). Once per machine:

    apt-get install -y chromium                      # Debian's Chromium, the browser driven here
    .venv/bin/pip install -e ".[live]"               # the Playwright client (no browser download)

then, on a finished default run (the notebooks run on a copy of it, so the run itself is not touched):

    .venv/bin/python tests/live/check_widgets.py runs/d --out runs/live-check

Last line: key=value pairs per notebook and slider (``figures_after``, ``changed``, ``returns``,
``figures_after_drag``, ``drag_final_matches``; informational: ``drag_redraws``, ``drag_settle_seconds``, from
the start of the drag to the last redraw) and ``live_widgets_ok``; the exit status is 1 if any check
failed.
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
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
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
    """The notebook with its ``parameters`` cell's run_dir pointed at ``run_dir`` (as papermill would
    inject)."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(
        f'run_dir = "{run_dir}"  # set by tests/live/check_widgets.py'
        if line.startswith("run_dir = ")
        else line
        for line in cell.source.splitlines()
    )
    out = folder / f"{name}.ipynb"
    nbformat.write(nb, out)
    return out


def start_lab(root: Path, port: int, token: str, log) -> subprocess.Popen:
    # every cell in the page (JupyterLab 4 otherwise renders only the cells near the viewport), no news pop-up
    settings = root / ".settings"
    for plugin, values in {
        "notebook-extension/tracker": {"windowingMode": "none"},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        folder, name = plugin.split("/")
        f = settings / "@jupyterlab" / folder / f"{name}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    cmd = [
        str(ROOT / ".venv" / "bin" / "jupyter"),
        "lab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={root / '.ws'}",
        f"--LabApp.user_settings_dir={settings}",
        "--ServerApp.disable_check_xsrf=True",
    ] + (["--allow-root"] if os.geteuid() == 0 else [])
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(
                    f"jupyter lab exited early (status {proc.returncode}); see its log"
                ) from None
            time.sleep(1)
    proc.terminate()
    raise SystemExit("jupyter lab did not answer within 120 s")


def run_all_cells(page, timeout_s: float) -> None:
    """Run > Run All Cells, then wait until no cell is queued or running ([*]) and the kernel is idle."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
    try:  # JupyterLab may ask which kernel to start: the notebook's own (preselected)
        page.get_by_role("button", name="Select", exact=True).click(timeout=10_000)
    except PlaywrightTimeout:
        pass
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


def slider_handle(page, cell, description: str):
    """The draggable handle of the slider labelled ``description``."""
    slider = cell.locator(".widget-slider").filter(has=page.get_by_text(description, exact=True))
    return slider.first.locator(".noUi-handle").first


def kernel_idle(page) -> bool:
    return page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0


def settle(page, cell, quiet_s: float = 3.0, timeout_s: float = 180) -> tuple[list[str], int]:
    """Wait until the kernel is idle and the cell's figures have stayed the same for ``quiet_s``. Returns the
    final digests and how many different pictures the cell showed on the way (redraws seen; polled every
    0.2 s, so a lower bound)."""
    last, seen = figures(cell), 0
    stable_since, deadline = time.time(), time.time() + timeout_s
    while time.time() < deadline:
        now = figures(cell)
        if now != last:
            last, seen, stable_since = now, seen + 1, time.time()
        if kernel_idle(page) and time.time() - stable_since >= quiet_s:
            return now, seen
        page.wait_for_timeout(200)
    raise TimeoutError(f"the figure did not settle within {timeout_s:.0f} s")


def press(page, handle, key: str, times: int) -> None:
    handle.focus()
    for _ in range(times):
        handle.press(key)
        page.wait_for_timeout(150)


def drag(page, handle, dx: float) -> None:
    """Drag the handle ``dx`` pixels with the mouse, in small steps as a hand would."""
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y, steps=25)
    page.mouse.up()


def check_slider(
    page, cell, description: str, start: list[str], out: Path, stem: str
) -> tuple[dict, list[str]]:
    """Keys away and back (the figure must change, then return to the first picture), then a mouse drag (how
    many redraws one drag causes, and how long the figure takes to settle)."""
    away, back = ("ArrowLeft", "ArrowRight") if description == "snapshot" else ("ArrowRight", "ArrowLeft")
    r, shots = {}, []
    handle = slider_handle(page, cell, description)
    press(page, handle, away, 3)
    moved, _ = settle(page, cell)
    r["figures_after"], r["changed"] = len(moved), int(moved != start)
    shots.append(out / f"{stem}_{description}_1_keys.png")
    cell.screenshot(path=shots[-1])
    press(page, handle, back, 3)
    returned, _ = settle(page, cell)
    r["returns"] = int(returned == start)
    t0 = time.time()
    drag(page, handle, -90 if description == "snapshot" else 90)
    dragged, redraws = settle(page, cell)
    r["drag_redraws"], r["drag_settle_seconds"] = redraws, round(time.time() - t0 - 3.0, 1)
    r["figures_after_drag"] = len(dragged)
    shots.append(out / f"{stem}_{description}_2_drag.png")
    cell.screenshot(path=shots[-1])
    press(
        page, handle, away, 1
    )  # one step away and back: the picture after the drag is the slider's own value's
    settle(page, cell)
    press(page, handle, back, 1)
    again, _ = settle(page, cell)
    r["drag_final_matches"] = int(again == dragged and dragged != start)
    return r, shots


def check_notebook(
    browser, base: str, token: str, name: str, out: Path, timeout_s: float, executed: Path
) -> dict:
    page = browser.new_page()
    page.goto(f"{base}/lab/tree/{name}.ipynb?token={token}&reset")
    try:
        return _check(page, name, out, timeout_s, executed)
    except Exception:
        page.screenshot(path=out / f"{name}_failed.png", full_page=True)
        raise
    finally:
        page.close()


def live_figure_counts(page) -> list[int]:
    """Images shown in each code cell's outputs, in the live notebook."""
    return page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')]
                              .map(c => c.querySelectorAll('.jp-OutputArea img').length)""")


def papermill_figure_counts(executed: Path) -> list[int] | None:
    """The same count in a papermill run's executed copy (its injected-parameters cell left out)."""
    if not executed.is_file():
        return None
    nb = nbformat.read(executed, as_version=4)
    return [
        sum("image/png" in o.get("data", {}) for o in c.outputs)
        for c in nb.cells
        if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])
    ]


def _check(page, name: str, out: Path, timeout_s: float, executed: Path) -> dict:
    marker, sliders = NOTEBOOKS[name]
    run_all_cells(page, timeout_s)
    result = {"errors": errors_shown(page)}
    live, batch = live_figure_counts(page), papermill_figure_counts(executed)
    result["figures_per_cell_live"], result["figures_per_cell_papermill"] = live, batch
    result["cells_whose_figures_differ"] = (
        None
        if batch is None
        else [i for i, (a, b) in enumerate(zip(live, batch, strict=False)) if a != b]
        + ([] if len(live) == len(batch) else ["cell counts differ"])
    )
    cell = explorer_cell(page, marker)
    cell.scroll_into_view_if_needed()
    start, _ = settle(page, cell)
    shots = [out / f"{name}_0_start.png"]
    cell.screenshot(path=shots[0])
    result["figures_before"] = len(start)
    result["sliders"] = cell.locator(".widget-slider").count()
    for description in sliders:
        r, more = check_slider(page, cell, description, start, out, name)
        result.update({f"{k}_{description}": v for k, v in r.items()})
        shots += more
        start, _ = settle(page, cell)  # the next slider starts from what is shown now
    page.screenshot(path=out / f"{name}_page.png")
    result["screenshots"] = [str(s) for s in shots]
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "run_dir", help="a finished default run (copied; the copy is what the notebooks write into)"
    )
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
    (ROOT / "runs").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="live-widgets-", dir=ROOT / "runs"))
    results = {}
    try:
        run_copy = work / "run"
        shutil.copytree(src, run_copy, ignore=shutil.ignore_patterns("*.ipynb", ".lock"))
        for name in args.notebooks:
            parameterised_copy(name, run_copy, work)
        port, token = free_port(), secrets.token_hex(16)
        with open(out / "jupyter_lab.log", "w") as log:
            lab = start_lab(work, port, token, log)
            try:
                with (
                    sync_playwright() as pw,
                    tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile,
                ):
                    browser = pw.chromium.launch_persistent_context(
                        profile,
                        executable_path=args.chromium,
                        args=CHROMIUM_FLAGS,
                        headless=True,
                        viewport={"width": 1400, "height": 1000},
                    )
                    for name in args.notebooks:
                        results[name] = check_notebook(
                            browser,
                            f"http://127.0.0.1:{port}",
                            token,
                            name,
                            out,
                            args.timeout,
                            src / f"{name}.ipynb",
                        )
                    browser.close()
            finally:
                lab.terminate()
                try:
                    lab.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    lab.kill()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = True
    pairs = []
    for name, r in results.items():
        short = name[:2]
        differ = r["cells_whose_figures_differ"]
        nb_ok = r["figures_before"] == 1 and not r["errors"] and not differ
        pairs.append(f"nb{short}_figures_before={r['figures_before']}")
        pairs.append(
            f"nb{short}_cells_whose_figures_differ_from_papermill="
            + ("unchecked" if differ is None else str(len(differ)))
        )
        if differ:
            print(
                f"{name}: figures per cell, live {r['figures_per_cell_live']} vs papermill "
                f"{r['figures_per_cell_papermill']}: cells {differ} differ"
            )
        for d in NOTEBOOKS[name][1]:
            nb_ok &= all(
                r[f"{k}_{d}"] == 1
                for k in ("figures_after", "changed", "returns", "figures_after_drag", "drag_final_matches")
            )
            pairs += [
                f"nb{short}_{k}_{d}={r[f'{k}_{d}']}"
                for k in (
                    "figures_after",
                    "changed",
                    "returns",
                    "figures_after_drag",
                    "drag_final_matches",
                    "drag_redraws",
                    "drag_settle_seconds",
                )
            ]
        if r["errors"]:
            print(f"{name}: error output shown: {r['errors'][:3]}")
        ok &= nb_ok
    print(f"screenshots in {out}")
    print(" ".join([*pairs, f"live_widgets_ok={int(ok)}"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
