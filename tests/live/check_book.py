"""Check the built book (``make book``) as a reader would meet it: every page opened from the file system.

Headless Chromium (Debian's, driven by Playwright) opens the landing page, follows every link that stays in
the site, and on each page it reaches: times the load (until the page's ``load`` event and MathJax's
typesetting are done), counts the images and those that did not load, checks every link in the site (the
file exists, and so does the heading a ``#fragment`` names), and looks for what the outputs must not show: a
progress bar short of 100 %, a widget's raw placeholder, a solution not folded. A full-page screenshot of
each page goes to ``--out``. Links out of the site are counted, not followed (offline).

Not collected by pytest (it needs a browser). Once per machine:

    apt-get install -y chromium                      # Debian's Chromium
    .venv/bin/pip install -e ".[live]"               # the Playwright client (no browser download)

then, after ``make book``:

    .venv/bin/python tests/live/check_book.py book/_build/html --out runs/book-check

Last line: ``book_pages=<n> book_images=<n> book_broken_images=<n> book_broken_links=<n>
book_max_page_seconds=<s>`` and the page checks; the exit status is 1 if an image or link is broken, a page
took 5 s or more, or a page shows what it must not.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MAX_SECONDS = 5.0
UNFINISHED_BAR = re.compile(r"\b(?!100%)\d{1,2}%\|")
PLACEHOLDERS = ("HBox(children", "IntSlider(", "Loading widget", "application/vnd.jupyter.widget")

TYPESET = """() => new Promise(done => {
    if (window.MathJax && window.MathJax.Hub) { window.MathJax.Hub.Queue(() => done(true)); }
    else { done(false); }
})"""
IMAGES = (
    "() => Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete && i.naturalWidth > 0])"
)
OUTPUT_TEXT = "() => Array.from(document.querySelectorAll('.cell_output')).map(o => o.innerText).join('\\n')"
LINKS = "() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
# a solution cell's code must sit in a <details> that is closed when the page opens
OPEN_SOLUTIONS = """() => Array.from(document.querySelectorAll('.tag_solution')).filter(cell => {
    const folds = cell.querySelectorAll('details');
    return folds.length === 0 || Array.from(folds).some(d => d.open);
}).length"""


def anchors(path: Path, cache: dict) -> set[str]:
    if path not in cache:
        cache[path] = set(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))
    return cache[path]


def check_link(href: str, site: Path, cache: dict) -> str | None:
    """None if the link works offline; else why not. Links out of the site are not judged here."""
    url, fragment = urldefrag(href)
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    target = Path(unquote(parsed.path))
    if target.is_dir():
        target = target / "index.html"
    if not target.exists():
        return f"no file {target}"
    if fragment and target.suffix == ".html" and unquote(fragment) not in anchors(target, cache):
        return f"no #{fragment} in {target.name}"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path, nargs="?", default=Path("book/_build/html"))
    ap.add_argument("--out", type=Path, default=Path("runs/book-check"), help="screenshots go here")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    site = args.site.resolve()
    if not (site / "index.html").is_file():
        raise SystemExit(f"{site}: no index.html (build the book first: make book)")
    args.out.mkdir(parents=True, exist_ok=True)
    todo, seen, cache = [(site / "index.html").as_uri()], set(), {}
    totals = {"images": 0, "broken_images": 0, "broken_links": 0, "external_links": 0, "failed_requests": 0}
    shows = {"frozen_bars": 0, "widget_placeholders": 0, "open_solutions": 0}
    slowest = 0.0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        failed = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        while todo:
            url = todo.pop(0)
            if url in seen:
                continue
            seen.add(url)
            name = Path(urlparse(url).path).name
            failed.clear()
            start = time.perf_counter()
            page.goto(url, wait_until="load")
            page.evaluate(TYPESET)
            seconds = time.perf_counter() - start
            slowest = max(slowest, seconds)
            images = page.evaluate(IMAGES)
            broken = [src for src, ok in images if not ok]
            text = page.evaluate(OUTPUT_TEXT)
            found = {
                "frozen_bars": len(UNFINISHED_BAR.findall(text)),
                "widget_placeholders": sum(text.count(p) for p in PLACEHOLDERS),
                "open_solutions": page.evaluate(OPEN_SOLUTIONS),
            }
            bad_links = []
            for href in page.evaluate(LINKS):
                why = check_link(href, site, cache)
                if why:
                    bad_links.append(f"{href}: {why}")
                elif urlparse(href).scheme == "file":
                    target = urldefrag(href)[0]
                    if target.endswith(".html") and target.startswith(site.as_uri()):
                        todo.append(target)
                elif urlparse(href).scheme in ("http", "https"):
                    totals["external_links"] += 1
            page.screenshot(path=str(args.out / f"{Path(name).stem}.png"), full_page=True)
            totals["images"] += len(images)
            totals["broken_images"] += len(broken)
            totals["broken_links"] += len(bad_links)
            totals["failed_requests"] += len(failed)
            for key, n in found.items():
                shows[key] += n
            flags = [f"{k}={v}" for k, v in found.items() if v]
            flags += [f"failed_requests={len(failed)}"] if failed else []
            print(f"{name}: {seconds:.2f} s, {len(images)} images, {len(broken)} broken", *flags)
            for what in broken + bad_links + failed:
                print(f"  {what}")
        browser.close()
    ok = not (
        totals["broken_images"] or totals["broken_links"] or any(shows.values()) or slowest >= MAX_SECONDS
    )
    print(
        f"book_pages={len(seen)} book_images={totals['images']} book_broken_images={totals['broken_images']} "
        f"book_broken_links={totals['broken_links']} book_max_page_seconds={slowest:.2f} "
        f"book_external_links={totals['external_links']} book_failed_requests={totals['failed_requests']} "
        + " ".join(f"book_{k}={v}" for k, v in shows.items())
        + f" book_ok={ok}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
