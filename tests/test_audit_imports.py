"""hope_attr.audit has no import cycle, counting imports inside functions too.

Every ``import`` statement of the package's modules is read from their source (wherever it sits),
and the graph of imports between the package's modules must be acyclic. A module importing the
package itself (``hope_attr.audit``) counts as importing every module ``__init__`` imports.
Optional third-party imports (ray, h5py, tqdm) are outside the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "hope_attr.audit"
FOLDER = Path(__file__).resolve().parents[1] / "hope_attr" / "audit"


def imports_of(path: Path, module: str) -> set[str]:
    """The modules of the package that ``path`` imports, anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parent = module.rsplit(".", node.level)[0] if module != PACKAGE else PACKAGE
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    known = set(modules())
    return {name for name in found if name in known}


def modules() -> dict[str, Path]:
    found = {PACKAGE: FOLDER / "__init__.py"}
    for path in FOLDER.glob("*.py"):
        if path.name != "__init__.py":
            found[f"{PACKAGE}.{path.stem}"] = path
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == 1:
                return path[path.index(successor) :] + [successor]
            if successor not in state and (cycle := visit(successor)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_audit_package_has_no_import_cycle() -> None:
    graph = {name: imports_of(path, name) - {name} for name, path in modules().items()}
    assert graph[PACKAGE], "the package's __init__ imports its modules"
    assert f"{PACKAGE}._batch" in graph[f"{PACKAGE}._ray"]  # the edge that replaced the cycle
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    # The former _run <-> _ray cycle: _ray imported _run at the top, _run imported _ray inside
    # attribute_dataset.
    run = tmp_path / "_run.py"
    run.write_text("def f():\n    from hope_attr.audit._ray import run_on_ray\n")
    ray = tmp_path / "_ray.py"
    ray.write_text("from hope_attr.audit._run import Plan\n")
    graph = {
        f"{PACKAGE}._run": imports_of(run, f"{PACKAGE}._run"),
        f"{PACKAGE}._ray": imports_of(ray, f"{PACKAGE}._ray"),
    }
    assert find_cycle(graph) == [f"{PACKAGE}._ray", f"{PACKAGE}._run", f"{PACKAGE}._ray"]
