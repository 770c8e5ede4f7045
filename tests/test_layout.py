"""The house rules of the code's layout, enforced: each file one job, small enough to read.

No module over 600 lines, no function body over 100 lines, no class with more than 25 methods,
no import circles among ccdwatch's modules (docs/architecture.md is the map).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ccdwatch"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_modules_functions_and_classes_stay_small():
    too_long, long_functions, big_classes = [], [], []
    for path in MODULES:
        text = path.read_text()
        if len(text.splitlines()) > 600:
            too_long.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None \
                    and node.end_lineno - node.lineno > 100:
                long_functions.append(f"{_name(path)}.{node.name}: {node.end_lineno - node.lineno} lines")
            if isinstance(node, ast.ClassDef):
                methods = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
                if len(methods) > 25:
                    big_classes.append(f"{_name(path)}.{node.name}: {len(methods)} methods")
    assert not too_long and not long_functions and not big_classes, (too_long, long_functions, big_classes)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """ccdwatch modules imported at module level (not inside functions: those are lazy on purpose)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports do not run
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            # `from pkg import submodule` needs the submodule, not what pkg's __init__ exports
            names = subs if all(n in modules for n in subs) else [node.module, *subs]
        found |= {n for n in names if n in modules}
    return found


def test_no_import_circles():
    modules = {_name(p): p for p in MODULES}
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
