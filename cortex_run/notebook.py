"""Checks for every notebook's validation cell (the cell right after ``parameters``), and its exercises.

Papermill injects parameters as plain assignments, so ``check_parameters`` makes a misspelt name an error and
checks each value against its default's type. A non-empty dict default is a *group* (``-p attribute_iem
'{epochs: 3}'`` changes one key, the others keep their defaults); an empty dict default is a free mapping.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np

from . import REPO_ROOT, device

_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_PARAMETER_TYPES = (bool, int, float, str, list, dict, tuple, type(None))


def parameter_defaults(notebook: str) -> dict:
    """``{name: default source text}`` of the notebook's ``parameters`` cell (papermill's inspector)."""
    # papermill's import pulls in jsonschema's optional IRI grammar (rfc3987_syntax builds a parser for about
    # 1.3 s), which reading a parameters cell never uses: leaving it out makes the import ~0.2 s in a kernel
    sys.modules.setdefault("rfc3987_syntax", None)
    import papermill  # deferred: only the parameter checks need it (see above)

    path = REPO_ROOT / "notebooks" / f"{notebook}.ipynb"
    return {k: v["default"] for k, v in papermill.inspect_notebook(str(path)).items()}


def check_parameters(namespace: dict, notebook: str) -> dict:
    """The parameters among the plain values of ``namespace`` (the notebook's ``globals()``), a group given in
    part completed, in ``namespace`` too; ValueError for an unknown name or a value of the wrong type."""
    declared = parameter_defaults(notebook)
    values = {
        k: v
        for k, v in namespace.items()
        if not k.startswith("_") and k not in _IPYTHON_NAMES and isinstance(v, _PARAMETER_TYPES)
    }
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ValueError(f"unknown parameter(s) for {notebook}: {unknown}. Known: {sorted(declared)}")
    if "device" in values:  # "auto" or a name -> the device of this machine it names ("cpu", "cuda:0")
        values["device"] = namespace["device"] = device.resolve(values.get("device"), f"device of {notebook}")
    for name, text in declared.items():
        try:
            default = ast.literal_eval(text)
        except (ValueError, SyntaxError):  # a default computed in the cell: its type is not checked
            continue
        v = values.get(name)
        if default is None or v is None:
            continue
        _check_type(f"{name} of {notebook}", v, default, text)
        if isinstance(default, dict) and default:
            unknown = sorted(set(v) - set(default))
            if unknown:
                known = sorted(default)
                raise ValueError(f"parameter {name} of {notebook}: unknown key(s) {unknown}. Known: {known}")
            for key, value in v.items():
                if default[key] is not None:
                    _check_type(f"{name}[{key!r}]", value, default[key], repr(default[key]))
            values[name] = namespace[name] = {**default, **v}
    return {k: values[k] for k in declared if k in values}


def _check_type(label: str, value, default, text: str) -> None:
    """``value`` must have ``default``'s type (an int is accepted for a float, only a bool for a bool)."""
    ok = isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
    if not ok or isinstance(default, bool) != isinstance(value, bool):
        kind = type(default).__name__
        raise ValueError(f"parameter {label} must be {kind} (default {text}), got {value!r}")


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


# --- exercises: a markdown cell (tag ``exercise``) names the answer variable, a ``solution`` cell sets it
# only with the ``solutions`` parameter on (make test runs so), an ``exercise-check`` cell calls ``exercise``.


def exercise(name: str, namespace: dict, check, hint: str = "", solutions: bool = False) -> None:
    """Print whether ``namespace[f"answer_{name}"]`` passes ``check`` (True, or AssertionError saying what is
    wrong, never the true value). With ``solutions`` on, an unset or failing answer is an error, and so is a
    check whose message for a wrong answer made from it (``wrong_answers``) shows the solution's value."""
    key = f"answer_{name}"
    answer = namespace.get(key)
    if answer is None:
        if solutions:
            raise AssertionError(f"exercise {name}: solutions are on but {key} is not set by its cell")
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
    """``(passed, message)``; a check that raises anything else on a malformed answer has failed."""
    try:
        return bool(check(answer)), ""
    except AssertionError as err:
        return False, f" ({err})"
    except Exception as err:  # a wrong answer of another shape
        return False, f" ({type(err).__name__}: {err})"


def wrong_answers(answer) -> list:
    """Wrong answers made from a right one: every number moved (a float x -> 1.5 x + 1, an int -> x + 1), a
    string changed; a sequence's numbers one at a time and all together."""

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
    """How a solution's values would read in a message: each float at 2-6 decimals and as ``repr``, each int
    of two or more digits (one-digit ints appear in messages for other reasons), strings of 3+ characters."""
    if isinstance(answer, dict):
        answer = list(answer.values())
    texts = set()
    for v in answer if isinstance(answer, list | tuple) else [answer]:
        if isinstance(v, bool):
            continue
        if isinstance(v, float | np.floating) and np.isfinite(v) and v not in (0.0, 1.0):
            texts |= {f"{float(v):.{d}f}" for d in range(2, 7)} | {repr(float(v))}
        elif isinstance(v, int | np.integer) and abs(int(v)) >= 10:
            texts.add(str(int(v)))
        elif isinstance(v, str) and len(v) >= 3:
            texts.add(v)
    return sorted(texts)


def class_ids(values, class_names, parameter: str = "classes") -> list[int]:
    """``values`` (class indices, or the dataset's class names) as class indices; ValueError naming
    ``parameter`` and this dataset's classes for a value that is neither (e.g. a digit on a folder of 3)."""
    names = [str(c) for c in class_names]
    out = []
    for v in values:
        if isinstance(v, str) and v in names:
            out.append(names.index(v))
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names):
            out.append(v)
        else:
            some = ", ".join(f"{i} {n!r}" for i, n in enumerate(names[:12])) + (
                ", ..." if len(names) > 12 else ""
            )
            raise ValueError(
                f"{parameter}: {v!r} is not a class of this dataset, which has {len(names)} classes "
                f"({some}); give class indices or class names"
            )
    return out
