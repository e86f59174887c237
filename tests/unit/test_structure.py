"""The shape issue #10 asked for, held: no import cycle among the shipped modules (function-level
imports included), and no shipped Python file much over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("chalicelib", "dispatcher")


def shipped() -> list[Path]:
    return [ROOT / "app.py", ROOT / "manage.py", *(p for d in (*PACKAGES, "infra") for p in (ROOT / d).rglob("*.py"))]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module in PACKAGES:
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif node.module.startswith(tuple(f"{p}." for p in PACKAGES)):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(tuple(f"{p}." for p in PACKAGES))}
    return found


def test_no_module_imports_in_a_cycle() -> None:
    graph = {
        module_name(p): imports(p) for p in [ROOT / "app.py", *(q for d in PACKAGES for q in (ROOT / d).glob("*.py"))]
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep])
            elif not state.get(dep):
                visit(dep, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [])
    assert cycles == []


def test_no_shipped_python_file_is_much_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in shipped() if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}
