"""The package's layers (docs/architecture.md), enforced on the import graph of every module, including
imports inside functions: each layer imports only from the layers below it, and only the command layer
parses arguments."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bcrdist"
GROUND = {"errors", "config", "config_reference", "fileio", "transforms", "noise", "metrics", "paired",
          "progress"}
# the package itself (`bcrdist.load_model`, `__version__`) and `python -m bcrdist` sit on top of everything;
# importing `__version__` from it is importing ground
TOP = {"bcrdist", "bcrdist.__main__"}

# layer → the layers it may import (besides itself and the ground modules)
ALLOWED = {
    "ground": set(),
    "physics": set(),
    "mnn": set(),
    "models": {"physics", "mnn"},
    "distributed": {"physics", "mnn", "models"},
    "data": {"physics", "mnn", "distributed"},
    "train": {"physics", "mnn", "models", "distributed", "data"},
    "launch": {"physics", "mnn", "models", "distributed", "data", "train"},
    "cli": {"physics", "mnn", "models", "distributed", "data", "train", "launch"},
    "top": {"physics", "mnn", "models", "distributed", "data", "train", "launch", "cli"},
}
# the explicit exclusions, spelled out so that a change of ALLOWED cannot quietly drop them
FORBIDDEN = {
    "physics": {"mnn", "models", "distributed", "data", "train", "launch", "cli"},
    "mnn": {"physics", "models", "distributed", "data", "train", "launch", "cli"},
    "models": {"distributed", "data", "train", "launch", "cli"},
    "distributed": {"data", "train", "launch", "cli"},
    "data": {"train", "models", "launch", "cli"},
}


def layer_of(module: str) -> str:
    """'bcrdist.data.format' → 'data'; ground modules → 'ground'; the package and __main__ → 'top'."""
    if module in TOP:
        return "top"
    parts = module.split(".")
    if parts[1] in GROUND:
        return "ground"
    return parts[1]


def target_layer(module: str) -> str:
    """The layer an import reaches: `from bcrdist import __version__` reaches ground."""
    if module in ("bcrdist", "bcrdist.__version__"):
        return "ground"
    return layer_of(module)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; relative imports resolved), at any depth of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_layers_cover_every_module():
    unknown = {module_name(p) for p in MODULES if layer_of(module_name(p)) not in ALLOWED}
    assert not unknown, f"modules outside any layer: {sorted(unknown)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_follow_the_layers(path):
    me = layer_of(module_name(path))
    bad = []
    for target in sorted(imports(path)):
        if not target.startswith("bcrdist"):
            continue
        other = target_layer(target)
        if other in ("ground", me):
            continue
        if other not in ALLOWED[me] or other in FORBIDDEN.get(me, set()):
            bad.append(f"{target} ({other})")
    assert not bad, f"{module_name(path)} ({me}) imports from layers above it: {bad}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_ground_modules_import_only_ground(path):
    if layer_of(module_name(path)) != "ground":
        return
    bad = [t for t in imports(path) if t.startswith("bcrdist") and target_layer(t) != "ground"]
    assert not bad, f"{module_name(path)} is a ground module but imports {sorted(bad)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_only_the_command_layer_parses_arguments(path):
    if layer_of(module_name(path)) == "cli":
        return
    assert "argparse" not in imports(path), f"{module_name(path)} imports argparse outside bcrdist.cli"


def test_the_checker_sees_a_violation(tmp_path):
    """The graph walker finds imports inside functions and resolves relative ones."""
    pkg = tmp_path / "bcrdist" / "physics"
    pkg.mkdir(parents=True)
    bad = pkg / "bad.py"
    bad.write_text("def f():\n    from bcrdist.train import trainer\n    from ..data import format\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "bcrdist"
    try:
        found = imports(bad)
    finally:
        PACKAGE = saved
    assert "bcrdist.train.trainer" in found and "bcrdist.data.format" in found


def test_no_module_is_too_large_or_vaguely_named():
    names = {"logging", "_common", "cli_common", "utils", "misc", "helpers"}
    for path in MODULES:
        assert path.stem not in names, f"{path}: say what the module holds"
        lines = len(path.read_text().splitlines())
        assert lines <= 600, f"{path}: {lines} lines (at most 600: one concern per file)"
