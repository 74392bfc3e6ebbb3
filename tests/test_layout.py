"""The packaging list matches the tree: every ``package-data`` pattern of pyproject.toml names files that
exist, and every non-Python file of the package is covered by one."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_package_data_matches_the_tree():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]
    for package, patterns in data.items():
        root = REPO / package
        empty = [p for p in patterns if not list(root.glob(p))]
        assert empty == [], f"package-data patterns of {package} that match no file: {empty}"
        covered = {f for p in patterns for f in root.glob(p)}
        files = {
            f
            for f in root.rglob("*")
            if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts
        }
        assert sorted(map(str, files - covered)) == []
