"""The house rules of the package, checked from its source: no import cycle between hope_attr
modules, no module over ~500 lines, no function over ~80 lines of code (docs/architecture.md).

Imports inside functions count too (a late import is still a dependency); imports under
``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hope_attr"
MAX_MODULE_LINES = 500
MAX_FUNCTION_CODE_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, module: str) -> set[str]:
    """The hope_attr modules ``module`` names in its imports.

    Importing ``a.b.c`` also runs ``a/b/__init__.py``; those implicit edges are left out, or every
    package whose ``__init__`` re-exports a child would count as a cycle (Python resolves that
    order by itself). A package's own imports of its children do count.
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")
                package = package[: len(package) - node.level + (module in _PACKAGES)]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in MODULES and name != module}


_PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}
GRAPH = {name: _imported(ast.parse(path.read_text()), name) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return components


def test_the_checker_finds_a_cycle() -> None:
    """The checker itself, on a graph with a known cycle and on one without."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from hope_attr.engine import jet\n")
    assert "hope_attr.engine.jet" in _imported(tree, "hope_attr.other")


def test_no_import_cycle_between_hope_attr_modules() -> None:
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name]} has {lines} lines: split it by idea"


def _code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef, source: list[str]) -> int:
    """Lines of code in ``function``: no blank lines, comments or docstring."""
    body = function.body
    doc = body[0] if body and isinstance(body[0], ast.Expr) else None
    skip = (
        set(range(doc.lineno, doc.end_lineno + 1))
        if doc is not None
        and isinstance(doc.value, ast.Constant)
        and isinstance(doc.value.value, str)
        else set()
    )
    count = 0
    for number in range(function.lineno, function.end_lineno + 1):
        text = source[number - 1].strip()
        if text and not text.startswith("#") and number not in skip:
            count += 1
    return count


@pytest.mark.parametrize("name", sorted(MODULES))
def test_functions_stay_short(name: str) -> None:
    text = MODULES[name].read_text()
    source = text.splitlines()
    long = [
        f"{node.name} (line {node.lineno}): {lines} lines of code"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (lines := _code_lines(node, source)) > MAX_FUNCTION_CODE_LINES
    ]
    assert not long, f"{MODULES[name]}: split {long}"
