"""Imports flow one way: cli -> config -> commands -> data/models/optim -> engine. Read from the source (ast)."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGE = REPO / "cnnlab"


def imported_modules(path) -> set[str]:
    """Every cnnlab module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("cnnlab")}


def test_nothing_in_cnnlab_imports_the_cli():
    importers = [
        str(p.relative_to(REPO))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__main__.py" and p != PACKAGE / "cli.py" and "cnnlab.cli" in imported_modules(p)
    ]
    assert importers == []


def test_the_schema_imports_no_data_module():
    assert not {m for m in imported_modules(PACKAGE / "config.py") if m.startswith("cnnlab.data")}


def test_no_module_over_450_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}


def test_the_trainer_reads_on_two_screens():
    assert len((PACKAGE / "engine" / "trainer.py").read_text().splitlines()) < 400
