"""The layout keeps its promises: no import cycle among the project's modules, the engine imports no transport,
and every module says its job in its first line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "service")


def project_modules() -> dict[str, Path]:
    """Every module of the installed packages, by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


MODULES = project_modules()


def imported_modules(name: str, path: Path) -> set[str]:
    """The project modules a module imports, at any level of its code (imports inside functions count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def cycle_through(start: str) -> list[str] | None:
    """A chain of imports leading from ``start`` back to itself, if there is one (a package's own __init__ is
    not counted as importing its submodules back)."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        current, chain = stack.pop()
        for target in GRAPH[current]:
            if target == start:
                return [*chain, start]
            if target not in seen and not start.startswith(target + "."):
                seen.add(target)
                stack.append((target, [*chain, target]))
    return None


def test_the_layout_has_the_three_parts():
    assert (ROOT / "protocol" / "engine" / "__init__.py").is_file()
    assert any((ROOT / "protocol" / "content").glob("*/publication.json"))
    for transport in ("service/cds_hooks", "service/page"):
        assert (ROOT / transport / "__init__.py").is_file()
    assert "service.cli" in MODULES and "service.fhir_api" in MODULES


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_cycle(name):
    assert cycle_through(name) is None, " -> ".join(cycle_through(name) or [])


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("protocol")))
def test_the_engine_imports_no_transport(name):
    assert not {target for target in GRAPH[name] if target.split(".")[0] == "service"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_opens_with_a_line_saying_its_job(name):
    docstring = ast.get_docstring(ast.parse(MODULES[name].read_text(encoding="utf-8")))
    assert docstring and docstring.splitlines()[0].strip(), f"{MODULES[name]} has no module docstring"


def test_the_checker_sees_a_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "protocol.engine.record", GRAPH["protocol.engine.record"] | {"protocol.engine.apply"})
    assert cycle_through("protocol.engine.apply") is not None
