"""Check a run's metrics.json against docs/expected_metrics.json (format: docs/expected_metrics.md).

    python benchmarks/verify_expected.py RUN_DIR [--expected docs/expected_metrics.json]

Lists every checked key outside its tolerance (expected, got, tolerance) and every checked key missing from
the run; keys the expected file holds as informational (timings) are not checked, and keys the run has but
the file lacks are only named. Exit 0 when all checked keys pass, 1 when any is off or missing, 2 when the run
directory, its metrics.json or the expected file does not exist.

Last line: verify_keys=<checked keys> verify_off=<off or missing>
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXPECTED = ROOT / "docs" / "expected_metrics.json"
# float slack: tolerances are decimal numbers, the difference of two rounded values is not exactly one
REL_EPS = 1e-9


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_key(entry: dict, got) -> tuple[bool, str]:
    """(passes, how far off) for one checked key."""
    want, tol = entry["value"], entry.get("tolerance", 0)
    if is_number(want) and is_number(got):
        diff = abs(got - want)
        if not math.isfinite(got):
            return False, "not finite"
        return diff <= tol + REL_EPS * max(1.0, abs(want)), f"|diff| {diff:.4g}"
    return (type(got) is type(want) and got == want), "differs" if got != want else "type differs"


def fmt_tol(entry: dict) -> str:
    if entry.get("kind") == "exact" or not entry.get("tolerance"):
        return "exact"
    return f"± {entry['tolerance']:g} ({entry.get('kind', '?')})"


def verify(run_dir: str | Path, expected_path: str | Path) -> tuple[list[str], list[str], int, int]:
    """(report lines, notes, keys checked, keys off or missing); raises FileNotFoundError for missing
    inputs."""
    run_dir, expected_path = Path(run_dir), Path(expected_path)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} does not exist: the run did not finish a notebook that records metrics"
        )
    if not expected_path.is_file():
        raise FileNotFoundError(
            f"expected metrics {expected_path} do not exist (benchmarks/make_expected.py writes them)"
        )
    metrics = json.loads(metrics_path.read_text())
    expected = json.loads(expected_path.read_text())
    checked = expected.get("checked")
    if not isinstance(checked, dict):
        raise ValueError(f"{expected_path} has no 'checked' mapping: not an expected-metrics file")
    lines, off = [], 0
    for key, entry in checked.items():
        if key not in metrics:
            off += 1
            lines.append(
                f"MISSING {key}: expected {entry['value']!r} {fmt_tol(entry)}, not in {metrics_path}"
            )
            continue
        ok, how = check_key(entry, metrics[key])
        if not ok:
            off += 1
            lines.append(
                f"OFF     {key}: expected {entry['value']!r}, got {metrics[key]!r} ({how}), tolerance "
                f"{fmt_tol(entry)}"
            )
    known = set(checked) | set(expected.get("informational", {}))
    notes = (
        [f"not in the expected file (not checked): {', '.join(sorted(set(metrics) - known))}"]
        if set(metrics) - known
        else []
    )
    if expected.get("provisional"):
        notes.append(f"NOTE: {expected_path} is marked provisional (not made from the final runs)")
    return lines, notes, len(checked), off


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # `make benchmarks` runs every script here without arguments: nothing to check
        print("usage: verify_expected.py RUN_DIR [--expected docs/expected_metrics.json]")
        print("verify_expected=usage (needs a RUN_DIR; nothing done)")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", metavar="RUN_DIR")
    ap.add_argument("--expected", default=str(DEFAULT_EXPECTED), help="the expected metrics (%(default)s)")
    args = ap.parse_args(argv)
    try:
        lines, notes, n, off = verify(args.run_dir, args.expected)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in (*lines, *notes):
        print(line)
    print(f"{args.run_dir}: {n - off} of {n} checked keys within tolerance of {args.expected}")
    print(f"verify_keys={n} verify_off={off}")
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
