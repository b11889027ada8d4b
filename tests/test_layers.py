"""The floors of the code: `core/` is the ground and imports no app, and no module imports
itself back through others (an import circle). A lazy import (inside a function) counts
too, except in a Celery task module: tasks are the outer layer, and import the service
they run inside the task, so the service can import the task it enqueues at the top."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("core", "marketplace", "events", "broker", "billing", "market", "backoffice", "config")


def _modules() -> dict[str, Path]:
    modules = {}
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


MODULES = _modules()


def _imports(path: Path, *, lazy: bool) -> set[str]:
    """The project modules a file imports at the top, and with ``lazy`` inside functions too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


ALL_IMPORTS = {name: _imports(path, lazy=True) - {name} for name, path in MODULES.items()}
GRAPH = {
    name: _imports(path, lazy=not name.endswith(".tasks")) - {name} for name, path in MODULES.items()
}


def test_core_imports_no_app():
    offenders = {
        name: sorted(target for target in targets if target.split(".")[0] != "core")
        for name, targets in ALL_IMPORTS.items()
        if name.split(".")[0] == "core"
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return out


def test_no_import_circle():
    assert _cycles() == []


@pytest.mark.parametrize("package", ["marketplace", "broker", "billing"])
def test_lower_floors_do_not_import_the_back_office(package):
    assert not [
        name
        for name, targets in ALL_IMPORTS.items()
        if name.split(".")[0] == package and any(target.startswith("backoffice") for target in targets)
    ]
