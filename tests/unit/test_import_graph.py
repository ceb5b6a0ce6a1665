"""caravan's import graph has no circle, and every module imports on its own in a fresh interpreter.

The static check reads every module's import statements: at module level and inside functions
(lazy imports, which is how the ``errors`` ↔ ``secrets`` circle hid); only ``if TYPE_CHECKING:``
blocks are left out, since they never run. Backends registered as ``"caravan.module:Class"``
strings and loaded with ``importlib`` are data, not import statements, and are not followed.
Importing a submodule also runs its parent packages' ``__init__``; that edge is implied, not
written, and is left out (otherwise every re-export in ``caravan/__init__`` would be a circle).
"""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "caravan").rglob("*.py"))}


def _owner(name: str) -> str | None:
    """The caravan module that ``name`` (a module, or a name inside one) lives in."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else None


def imports_of(name: str) -> dict[str, str]:
    """The caravan modules ``name`` imports, each with where (``line N``, ``lazy, line N``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: dict[str, str] = {}

    def add(target: str | None, node: ast.AST, lazy: bool) -> None:
        if target and target != name:
            found.setdefault(target, f"{'lazy, ' if lazy else ''}line {getattr(node, 'lineno', '?')}")

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit_else(child, lazy)
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(_owner(alias.name), child, lazy)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[:len(package.split(".")) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                for alias in child.names:  # `from . import x` may name a submodule
                    add(_owner(f"{module}.{alias.name}") if f"{module}.{alias.name}" in MODULES else _owner(module),
                        child, lazy)
            visit(child, inner)

    def visit_else(node: ast.If, lazy: bool) -> None:
        for child in node.orelse:
            visit(ast.Module(body=[child], type_ignores=[]), lazy)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One circle in ``graph`` as a list of modules (the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state:
                cycle = walk(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = walk(start)
            if cycle:
                return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, str]]) -> str:
    return " -> ".join(f"{a} ({graph[a][b]})" for a, b in itertools.pairwise(cycle)) + f" -> {cycle[-1]}"


def test_the_finder_sees_lazy_imports_and_circles() -> None:
    # The checker itself must be able to fail: the old circle (a lazy import in errors.py) is found.
    graph = {"caravan.errors": {"caravan.secrets": "lazy, line 86"}, "caravan.secrets": {"caravan.errors": "line 31"}}
    assert find_cycle(graph) == ["caravan.errors", "caravan.secrets", "caravan.errors"]
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {}}) is None
    lazy = imports_of("caravan.secrets")
    assert lazy["caravan.secrets.vault"].startswith("lazy"), "imported inside a function"
    assert not lazy["caravan.errors"].startswith("lazy")
    assert "caravan.artifacts" in imports_of("caravan")  # `from .artifacts import ...`


def test_the_import_graph_of_caravan_has_no_circle() -> None:
    graph = {name: imports_of(name) for name in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle: {describe(cycle, graph)}"


# One interpreter, caravan's modules forgotten before each import: each one is imported first, as
# in a fresh interpreter, without paying the interpreter's start-up per module.
_IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "caravan" or m.startswith("caravan.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""


def test_every_module_imports_first_on_its_own() -> None:
    names = sorted(MODULES)
    assert "caravan.errors" in names and "caravan.redaction" in names
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH, json.dumps(names)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert failures == {}, "\n".join(f"{name}:\n{text}" for name, text in failures.items())


@pytest.mark.parametrize("low", ["caravan.redaction", "caravan.version"])
def test_the_lowest_modules_import_nothing_from_caravan(low: str) -> None:
    assert imports_of(low) == {}
