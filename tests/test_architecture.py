"""The layering rules of README.md's "Architecture" section, checked on the import graph.

Every `import` (module level or inside a function) of every module under pipeline_v2/ is read
with `ast`; a rule broken names the importing module and what it imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pipeline_v2

PACKAGE = "pipeline_v2"
ROOT = Path(pipeline_v2.__file__).resolve().parent

# Pure vocabulary: decisions, statuses, config, gates, templates, run-dir naming.
PURE = ("plan", "models", "config", "gates", "templates", "paths")
# What pure modules must never reach: the machinery that does I/O or runs things.
MACHINERY = ("daemon", "store", "stages", "cli", "control", "deployer")
# The engine: usable without the pipeline (a paper trader runs on the engine alone).
ENGINE = ("backtest", "paper")
# The one module allowed to import the CLI: `python -m pipeline_v2`.
CLI_ENTRY = "pipeline_v2.__main__"


def module_names(root: Path) -> dict[str, Path]:
    """Every module under `root`, by dotted name (a package by its own name)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The pipeline_v2 modules one file imports, at any depth of its code."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import name`: the submodule pkg.name if there is one, else pkg.
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known
                       else node.module for alias in node.names]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                yield target


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the pipeline_v2 modules it imports."""
    known = module_names(root)
    return {name: set(imports_of(path, known)) for name, path in known.items()}


def unit(module: str) -> str:
    """The top-level module or subpackage a module belongs to (`store`, `daemon`, ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rule_violations(edges: dict[str, set[str]]) -> list[str]:
    """Each import that breaks a layering rule, as `importer -> imported (rule)`."""
    broken = []
    for importer, targets in sorted(edges.items()):
        for target in sorted(targets):
            src, dst = unit(importer), unit(target)
            if src in PURE and dst in MACHINERY:
                broken.append(f"{importer} -> {target} (pure code imports machinery)")
            if src in ENGINE and dst not in ENGINE:
                broken.append(f"{importer} -> {target} (the engine imports the pipeline)")
            if src == "backtest" and dst == "paper":
                broken.append(f"{importer} -> {target} (the backtest engine imports paper)")
            if dst == "cli" and src != "cli" and importer != CLI_ENTRY:
                broken.append(f"{importer} -> {target} (only the CLI's entry imports the CLI)")
            if src == "daemon" and dst == "control":
                broken.append(f"{importer} -> {target} (the daemon imports the CLI's commands)")
    return broken


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between top-level modules / subpackages (Tarjan's SCCs of size > 1)."""
    units: dict[str, set[str]] = {}
    for importer, targets in edges.items():
        src = unit(importer)
        if not src:
            continue  # the root package only re-exports the stage-author API
        units.setdefault(src, set()).update(unit(t) for t in targets if unit(t) not in ("", src))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in units.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(units):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_it_should() -> None:
    edges = graph()
    assert "pipeline_v2.models" in edges["pipeline_v2.plan"]
    assert "pipeline_v2.store" in edges["pipeline_v2.daemon"]
    assert "pipeline_v2.cli" in edges["pipeline_v2.__main__"]


def test_every_layering_rule_holds() -> None:
    assert rule_violations(graph()) == []


def test_no_import_cycles_between_modules_or_packages() -> None:
    assert cycles(graph()) == []


def test_the_rules_catch_what_they_are_for() -> None:
    edges = {
        "pipeline_v2.config.sections": {"pipeline_v2.stages.gates"},
        "pipeline_v2.backtest.data": {"pipeline_v2.errors"},
        "pipeline_v2.daemon": {"pipeline_v2.control"},
        "pipeline_v2.control": {"pipeline_v2.cli"},
        "pipeline_v2.plan": {"pipeline_v2.stages.runner"},
        "pipeline_v2.stages.runner": {"pipeline_v2.plan"},
    }
    assert len(rule_violations(edges)) == 5
    assert cycles(edges) == [["plan", "stages"]]
