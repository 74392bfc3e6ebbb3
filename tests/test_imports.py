"""The packages' import hygiene, read from the source (no module is imported): no import circle among the
modules of ``cortex_utils`` and ``cortex_run``, the method importing nothing of the run, no
``<module>._<name>`` used from outside its module, imports at the top of a module unless deferred on purpose
(a comment with "deferred" saying why), and taming / Lightning only in the tokenizer adapter."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cortex_utils", "cortex_run")  # the method; the run and the embedded world, which may import it
MODULES = {f"{pkg}.{p.stem}" for pkg in PACKAGES for p in (REPO / pkg).glob("*.py")} - {
    f"{pkg}.__init__" for pkg in PACKAGES
}
PACKAGE_FILES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).glob("*.py"))
READERS = sorted(
    [*PACKAGE_FILES, *(REPO / "notebooks").glob("[0-9][0-9]_*.py"), *(REPO / "benchmarks").glob("*.py")]
)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def package_imports(tree: ast.AST, package: str | None):
    """``[(node, "pkg.module", alias)]``: every import of a module of either package in ``tree`` (whose
    relative imports are of ``package``); ``alias`` is the name the module is bound to when the module itself
    is bound (``from . import x as y``), else None."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] in PACKAGES and len(parts) > 1 and ".".join(parts[:2]) in MODULES:
                    out.append((node, ".".join(parts[:2]), a.asname if a.asname else None))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 and package:
                pkg, sub = package, node.module
            elif node.level == 0 and node.module and node.module.split(".")[0] in PACKAGES:
                pkg, _, sub = node.module.partition(".")
            else:
                continue
            if not sub:  # from . import x (a module, or a name of the package's __init__)
                out += [
                    (node, f"{pkg}.{a.name}", a.asname or a.name)
                    for a in node.names
                    if f"{pkg}.{a.name}" in MODULES
                ]
            elif f"{pkg}.{sub}" in MODULES:
                out.append((node, f"{pkg}.{sub}", None))
            elif pkg != package or sub is None:
                pass
    return out


def package_of(path: Path) -> str | None:
    return path.parent.name if path.parent.name in PACKAGES and path.parent.parent == REPO else None


def _trees():
    return {p: ast.parse(p.read_text(), filename=str(p)) for p in READERS}


def import_graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for p in PACKAGE_FILES:
        own = f"{package_of(p)}.{p.stem}"
        found = {m for _, m, _ in package_imports(ast.parse(p.read_text()), package_of(p))} - {own}
        graph.setdefault(own, set()).update(found)
    return graph


def test_no_import_circle_among_the_modules():
    graph = import_graph()
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join([*path[path.index(n) :], n]))
            elif n not in state:
                visit(n, [*path, n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_method_imports_nothing_of_the_run():
    """``cortex_utils`` (the method) never imports ``cortex_run`` (the house and the embedded world)."""
    upward = {
        _rel(p): sorted(
            m
            for _, m, _ in package_imports(ast.parse(p.read_text()), "cortex_utils")
            if m.startswith("cortex_run")
        )
        for p in (REPO / "cortex_utils").glob("*.py")
    }
    assert {f: ms for f, ms in upward.items() if ms} == {}
    # nor by name, through importlib (the text may mention the house; code may not load it)
    assert not [p for p in (REPO / "cortex_utils").glob("*.py") if "import_module" in p.read_text()]


def test_the_import_reader_sees_every_form():
    """The import reader sees the forms the modules use (the tests above must be able to fail)."""
    tree = ast.parse(
        "from . import vq\nfrom .datasets import load_token_dataset\nimport cortex_utils.tis as t\n"
        "from cortex_utils import iem as iemlib\nfrom cortex_utils.concepts import concept_tokens\n"
    )
    found = [(m, alias) for _, m, alias in package_imports(tree, "cortex_run")]
    assert sorted(found, key=str) == [
        ("cortex_run.datasets", None),
        ("cortex_utils.concepts", None),
        ("cortex_utils.iem", "iemlib"),
        ("cortex_utils.tis", "t"),
    ]
    found = [(m, alias) for _, m, alias in package_imports(tree, "cortex_utils")]
    assert ("cortex_utils.vq", "vq") in found and ("cortex_utils.datasets", None) not in found


def private_uses(tree: ast.AST, own: str | None, package: str | None) -> list[str]:
    """``module._name`` attribute uses and ``from module import _name`` imports of another module's private
    names."""
    found = []
    aliases = {}
    for node, module, alias in package_imports(tree, package):
        module = module.split(".")[1]
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
        package = package_of(p)
        uses = private_uses(tree, p.stem if package else None, package)
        if uses:
            bad[_rel(p)] = uses
    assert bad == {}


def test_the_private_use_finder_finds_one():
    tree = ast.parse(
        "from . import evaluation\nfrom .vq import _autocast\nx = evaluation._tokens_np(1)\n"
        "y = evaluation.public(2)\n"
    )
    assert private_uses(tree, "attribution", "cortex_utils") == [
        "from vq import _autocast",
        "evaluation._tokens_np (line 3)",
    ]
    assert private_uses(tree, "evaluation", "cortex_utils") == [
        "from vq import _autocast"
    ]  # its own names are fine


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
    assert [b for p in PACKAGE_FILES for b in deferred_without_reason(p)] == []


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


@pytest.mark.parametrize("root", ["cortex_utils", "cortex_run", "notebooks", "benchmarks", "docs"])
def test_only_the_tokenizer_adapter_imports_taming_or_lightning(root):
    importing = sorted(_rel(p) for p in (REPO / root).rglob("*.py") if TAMING.search(p.read_text()))
    assert importing == (["cortex_run/taming_vq.py"] if root == "cortex_run" else [])
    assert TAMING.search("def f():\n    import pytorch_lightning.utilities as plu\n")
