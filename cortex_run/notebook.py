"""Checks for every notebook's validation cell (the cell right after ``parameters``).

Papermill injects parameters as plain assignments, so a misspelt name would silently do nothing;
``check_parameters`` turns it into an error, and checks each value against its default's type.

A parameter whose default is a non-empty dict is a *group* of knobs that travel together (e.g. the settings an
attribute IEM is trained with): a value given for it may name only some of the group's keys, and
``check_parameters`` completes it from the default (``-p attribute_iem '{epochs: 3}'`` changes the epochs
only); a key the default lacks is an error. An empty dict default is a free mapping and is left as given.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np

from . import REPO_ROOT

_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_PARAMETER_TYPES = (bool, int, float, str, list, dict, tuple, type(None))


def declared_parameters(notebook: str) -> dict:
    """``{name: {"default": source text}}`` for each assignment in the notebook's ``parameters`` cell.

    Read straight from the notebook file with ``ast`` (papermill's own inspector costs seconds per kernel).
    """
    path = REPO_ROOT / "notebooks" / f"{notebook}.ipynb"
    cells = [
        c
        for c in json.loads(path.read_text())["cells"]
        if "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    if not cells:
        raise ValueError(f"{path} has no cell tagged 'parameters'")
    src = "".join(cells[0]["source"])
    out = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = {"default": ast.get_source_segment(src, node.value)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = {"default": ast.get_source_segment(src, node.value)}
    return out


def check_parameters(namespace: dict, notebook: str) -> dict:
    """Raise ValueError for an unknown parameter name or a value of the wrong type; return the parameters.

    ``namespace`` is the notebook's ``globals()`` right after the parameters (and papermill's injected)
    cells; only plain values (what papermill can inject) count, so imported modules, functions and
    constants such as paths are not mistaken for parameters. A group parameter (non-empty dict default) given
    in part is completed from its default, in ``namespace`` too, so the notebook reads the whole group.
    """
    declared = declared_parameters(notebook)
    values = {
        k: v
        for k, v in namespace.items()
        if not k.startswith("_") and k not in _IPYTHON_NAMES and isinstance(v, _PARAMETER_TYPES)
    }
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ValueError(f"unknown parameter(s) for {notebook}: {unknown}. Known: {sorted(declared)}")
    for name, info in declared.items():
        default = _literal(info["default"])
        v = values.get(name)
        if default is None or v is None:
            continue
        ok = isinstance(v, type(default)) or (isinstance(default, float) and isinstance(v, int))
        if isinstance(default, bool) != isinstance(v, bool):
            ok = False
        if not ok:
            raise ValueError(
                f"parameter {name} of {notebook} must be {type(default).__name__} "
                f"(default {info['default']}), got {v!r}"
            )
        if isinstance(default, dict) and default:
            values[name] = namespace[name] = complete_group(name, v, default, notebook)
    return {k: values[k] for k in declared if k in values}


def complete_group(name: str, value: dict, default: dict, notebook: str = "") -> dict:
    """A group parameter's value with the keys it leaves out taken from ``default``; each given key must be
    one of the default's, of its default's type (ints are accepted for floats)."""
    unknown = sorted(set(value) - set(default))
    if unknown:
        raise ValueError(
            f"parameter {name}{f' of {notebook}' if notebook else ''}: unknown key(s) {unknown}. "
            f"Known: {sorted(default)}"
        )
    for key, v in value.items():
        d = default[key]
        ok = (isinstance(v, type(d)) or (isinstance(d, float) and isinstance(v, int))) and isinstance(
            d, bool
        ) == isinstance(v, bool)
        if d is not None and not ok:
            raise ValueError(
                f"parameter {name}[{key!r}] must be {type(d).__name__} (default {d!r}), got {v!r}"
            )
    return {**default, **value}


def _literal(src: str):
    try:
        return ast.literal_eval(src)
    except (ValueError, SyntaxError):
        return None


def require(condition: bool, message: str) -> None:
    """A parameter check with a message that says what is wrong and what is allowed."""
    if not condition:
        raise ValueError(message)


def choice(name: str, value, allowed) -> None:
    require(value in allowed, f"parameter {name} = {value!r}; choose one of {list(allowed)}")


def repo_path(p: str | Path) -> Path:
    """A path parameter: absolute, or relative to the repository root."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


# --- exercises ----------------------------------------------------------------------------------------------
#
# Each exercise in notebooks 03-11 is three cells: a markdown cell (tag ``exercise``) that sets the task and
# names the answer variable (``answer_1``, ...), a ``solution`` cell that assigns it only when the notebook's
# ``solutions`` parameter is on (a teacher's reveal; make test runs every notebook so), and an
# ``exercise-check`` cell that calls ``exercise``. Unanswered, the check only says so, so a run stays green.


def exercise(name: str, namespace: dict, check, hint: str = "", solutions: bool = False) -> None:
    """Check the answer to exercise ``name``: ``namespace[f"answer_{name}"]`` (the notebook's ``globals()``).

    ``check(answer)`` returns True when the answer holds (or raises AssertionError with a message saying what
    is wrong or which step to re-check, never the true value). Prints what it found ("your answer holds",
    "not yet (...)" or "not answered yet") and returns nothing, so the check cell shows only that line. With
    ``solutions`` on, a missing or wrong answer is an
    error (the solution cells must pass their own checks), and so is a check whose message, for a wrong
    answer made from the solution's (``wrong_answers``), shows the solution's value (``truth_texts``).
    """
    key = f"answer_{name}"
    answer = namespace.get(key)
    if answer is None:
        if solutions:
            raise AssertionError(
                f"exercise {name}: solutions are on but {key} is not set by its solution cell"
            )
        print(f"exercise {name}: not answered yet (set {key} = ... in a cell above this one)")
        return
    ok, why = _run_check(check, answer)
    if ok:
        print(f"exercise {name}: your answer holds")
    else:
        print(f"exercise {name}: not yet{why}" + (f" - hint: {hint}" if hint else ""))
        if solutions:
            raise AssertionError(f"exercise {name}: the solution does not pass its own check{why}")
    if solutions:
        truths = truth_texts(answer)
        for wrong in wrong_answers(answer):
            passed, message = _run_check(check, wrong)
            own = truth_texts(wrong)  # a message may repeat what the student gave
            leaked = [t for t in truths if t in message + hint and t not in own]
            if not passed and leaked:
                raise AssertionError(
                    f"exercise {name}: a wrong answer's message shows the solution's value {leaked[0]!r}"
                )


def _run_check(check, answer) -> tuple[bool, str]:
    """``(passed, message)``: a check that raises anything but AssertionError on a malformed answer counts
    as failed with that error's text."""
    try:
        return bool(check(answer)), ""
    except AssertionError as err:
        return False, f" ({err})"
    except Exception as err:  # a wrong answer of another shape
        return False, f" ({type(err).__name__}: {err})"


def wrong_answers(answer) -> list:
    """A few wrong answers made from a right one: every number moved (x -> 1.5 x + 1, an int -> x + 1), a
    string changed, a sequence's numbers moved one at a time and all together."""

    def move(x):
        if isinstance(x, bool):
            return not x
        if isinstance(x, int | np.integer):
            return int(x) + 1
        if isinstance(x, float | np.floating):
            return float(x) * 1.5 + 1.0
        if isinstance(x, str):
            return x + "?"
        return x

    if isinstance(answer, list | tuple):
        out = [type(answer)(move(v) for v in answer)]
        for i in range(len(answer)):
            out.append(type(answer)(move(v) if j == i else v for j, v in enumerate(answer)))
        return out
    if isinstance(answer, dict):
        return [{k: move(v) for k, v in answer.items()}]
    return [move(answer)]


def truth_texts(answer) -> list[str]:
    """How a solution's numbers would read in a message: each float at 2-6 decimals and as ``repr``, each int
    of two or more digits (one-digit ints, such as class indices, appear in messages for other reasons), and
    strings of three or more characters."""
    values = (
        list(answer.values())
        if isinstance(answer, dict)
        else list(answer)
        if isinstance(answer, list | tuple)
        else [answer]
    )
    texts = set()
    for v in values:
        if isinstance(v, bool):
            continue
        if isinstance(v, float | np.floating) and np.isfinite(v) and v not in (0.0, 1.0):
            texts |= {f"{float(v):.{d}f}" for d in range(2, 7)} | {repr(float(v))}
        elif isinstance(v, int | np.integer) and abs(int(v)) >= 10:
            texts.add(str(int(v)))
        elif isinstance(v, str) and len(v) >= 3:
            texts.add(v)
    return sorted(texts)
