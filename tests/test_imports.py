"""The package's import hygiene, read from the source (no module is imported): no import circle among the
``cortex_utils`` modules, no ``<module>._<name>`` used from outside its module, imports at the top of a
module unless deferred on purpose (a comment with "deferred" saying why), and taming / Lightning only in the
tokenizer adapter."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "cortex_utils"
MODULES = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
READERS = sorted(
    [*PKG.glob("*.py"), *(REPO / "notebooks").glob("[0-9][0-9]_*.py"), *(REPO / "benchmarks").glob("*.py")]
)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def package_imports(tree: ast.AST, in_package: bool):
    """``[(node, module, alias)]``: every import of a ``cortex_utils`` module in ``tree``; ``alias`` is the
    name it is bound to when the module itself is bound (``from . import x as y``), else None."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "cortex_utils" and len(parts) > 1 and parts[1] in MODULES:
                    out.append((node, parts[1], a.asname if a.asname else None))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 and in_package:
                base = node.module
            elif node.level == 0 and node.module and node.module.split(".")[0] == "cortex_utils":
                base = node.module.partition(".")[2] or None
            else:
                continue
            if base is None:  # from . import x (a module, or a name of the package's __init__)
                out += [(node, a.name, a.asname or a.name) for a in node.names if a.name in MODULES]
            elif base in MODULES:
                out.append((node, base, None))
    return out


def _trees():
    return {p: ast.parse(p.read_text(), filename=str(p)) for p in READERS}


def test_no_import_circle_among_the_modules():
    graph = {m: set() for m in MODULES}
    for p in PKG.glob("*.py"):
        if p.stem != "__init__":
            graph[p.stem] |= {m for _, m, _ in package_imports(ast.parse(p.read_text()), True)} - {p.stem}
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join([*path[path.index(n) :], n]))
            elif n not in state:
                visit(n, [*path, n])
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_circle_finder_finds_one(tmp_path):
    """The import reader sees the forms the modules use (the test above must be able to fail)."""
    tree = ast.parse(
        "from . import vq\nfrom .datasets import load_token_dataset\nimport cortex_utils.tis as t\n"
        "from cortex_utils import iem as iemlib\nfrom cortex_utils.concepts import concept_tokens\n"
    )
    found = [(m, alias) for _, m, alias in package_imports(tree, True)]
    assert found == [("vq", "vq"), ("datasets", None), ("tis", "t"), ("iem", "iemlib"), ("concepts", None)]


def private_uses(tree: ast.AST, own: str | None, in_package: bool) -> list[str]:
    """``module._name`` attribute uses and ``from module import _name`` imports of another module's private
    names."""
    found = []
    aliases = {}
    for node, module, alias in package_imports(tree, in_package):
        if alias:
            aliases[alias] = module
        if (
            isinstance(node, ast.ImportFrom)
            and module != own
            and node.module
            and node.module.endswith(module)
        ):
            found += [f"from {module} import {a.name}" for a in node.names if a.name.startswith("_")]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and aliases[node.value.id] != own
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{aliases[node.value.id]}.{node.attr} (line {node.lineno})")
    return found


def test_no_private_name_used_across_modules():
    bad = {}
    for p, tree in _trees().items():
        in_package = p.parent == PKG
        uses = private_uses(tree, p.stem if in_package else None, in_package)
        if uses:
            bad[_rel(p)] = uses
    assert bad == {}


def test_the_private_use_finder_finds_one():
    tree = ast.parse(
        "from . import evaluation\nfrom .vq import _autocast\nx = evaluation._tokens_np(1)\n"
        "y = evaluation.public(2)\n"
    )
    assert private_uses(tree, "attribution", True) == [
        "from vq import _autocast",
        "evaluation._tokens_np (line 3)",
    ]
    assert private_uses(tree, "evaluation", True) == ["from vq import _autocast"]  # its own names are fine


def deferred_without_reason(path: Path) -> list[str]:
    """Imports inside a function or class body that no comment (on the line or the one above) marks as
    deferred on purpose."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    bad = {}
    for scope in ast.walk(tree):
        if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(scope):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                here, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
                reason = " ".join(x.partition("#")[2] for x in (here, above) if "#" in x)
                if "deferred" not in reason.lower():
                    bad[node.lineno] = f"{_rel(path)}:{node.lineno}: {here.strip()}"  # nested scopes: once
    return [bad[k] for k in sorted(bad)]


def test_imports_sit_at_the_top_unless_deferred_on_purpose():
    assert [b for p in sorted(PKG.glob("*.py")) for b in deferred_without_reason(p)] == []


def test_the_deferral_finder_finds_one(tmp_path):
    p = tmp_path / "m.py"
    p.write_text(
        "import os\n\n\ndef f():\n    import json\n    # deferred: heavy\n    import torch\n"
        "    import yaml  # deferred: optional\n"
    )
    assert [b.split(": ", 1)[1] for b in deferred_without_reason(p)] == ["import json"]


TAMING = re.compile(
    r"^\s*(import (taming|pytorch_lightning|lightning)\b|from (taming|pytorch_lightning|lightning)[\s.])",
    re.M,
)


@pytest.mark.parametrize("root", ["cortex_utils", "notebooks", "benchmarks"])
def test_only_the_tokenizer_adapter_imports_taming_or_lightning(root):
    importing = sorted(_rel(p) for p in (REPO / root).rglob("*.py") if TAMING.search(p.read_text()))
    assert importing == (["cortex_utils/taming_vq.py"] if root == "cortex_utils" else [])
    assert TAMING.search("def f():\n    import pytorch_lightning.utilities as plu\n")
