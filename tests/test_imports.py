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


SCHEMA = PACKAGE / "schema"


def test_the_schema_imports_no_data_module_and_nothing_heavy():
    """`register` runs on every start (`cnnlab --help` included): the schemas stay dataclasses and checks."""
    for path in sorted(SCHEMA.glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        heavy = {m for m in modules if m.split(".")[0] in ("torch", "torchvision", "matplotlib", "numpy", "PIL")}
        data = {m for m in modules if m.startswith(("cnnlab.data", "cnnlab.engine", "cnnlab.commands"))}
        assert heavy | data == set(), path.name


def test_each_command_validates_with_its_own_schema_module():
    """A command's schema and validation live in cnnlab/schema/<command>.py, imported by that command only."""
    commands = {"train": "train", "evaluate": "evaluate", "predict": "predict", "features": "features"}
    commands |= {"export": "export", "preview": "preview"}
    for command, schema in commands.items():
        imported = imported_modules(PACKAGE / "commands" / f"{command}.py")
        own = {m for m in imported if m.startswith("cnnlab.schema.") and m.count(".") == 2}
        assert own - {"cnnlab.schema.common"} == {f"cnnlab.schema.{schema}"}, (command, own)
    assert not (PACKAGE / "config.py").exists()


def test_no_module_over_450_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}


def test_the_trainer_reads_on_two_screens():
    assert len((PACKAGE / "engine" / "trainer.py").read_text().splitlines()) < 400
