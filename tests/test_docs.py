"""Every ```python block of README.md and docs/*.md runs without raising.

Each block runs in a fresh namespace, in the repository root, with matplotlib's Agg backend.
A block preceded by the line ``<!-- no-test -->`` is skipped (for blocks that need data or a long
time). Rules registered by a block are removed afterwards, so a failing block cannot leak into
the next one.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hope_attr import _registry

ROOT = Path(__file__).resolve().parents[1]
NO_TEST = "<!-- no-test -->"
_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    number: int  # 1-based among the file's python blocks
    line: int  # 1-based line of the first line of code
    source: str
    skip: bool

    @property
    def name(self) -> str:
        return f"{self.path} block {self.number} (line {self.line})"


def python_blocks(text: str, path: str) -> list[Block]:
    """The ```python fenced blocks of a Markdown text, with their ``<!-- no-test -->`` marks."""
    lines = text.splitlines()
    blocks: list[Block] = []
    previous = ""  # the last non-blank line outside a code block
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            if lines[index].strip():
                previous = lines[index].strip()
            index += 1
            continue
        fence, info = match["fence"], match["info"]
        close = re.compile(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$")
        end = index + 1
        while end < len(lines) and not close.match(lines[end]):
            end += 1
        if info.split()[:1] == ["python"]:
            blocks.append(
                Block(
                    path=path,
                    number=len(blocks) + 1,
                    line=index + 2,
                    source="\n".join(lines[index + 1 : end]) + "\n",
                    skip=previous == NO_TEST,
                )
            )
        previous = ""
        index = end + 1
    return blocks


def _documents() -> list[Path]:
    readme = ROOT / "README.md"
    return ([readme] if readme.exists() else []) + sorted((ROOT / "docs").glob("*.md"))


def _all_blocks() -> list[Block]:
    blocks = []
    for document in _documents():
        path = document.relative_to(ROOT).as_posix()
        blocks.extend(python_blocks(document.read_text(encoding="utf-8"), path))
    return blocks


BLOCKS = _all_blocks()


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch):
    """Repository root as working directory, Agg backend; registry, dtype and RNG restored."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")
    module_rules = dict(_registry._MODULE_RULES)
    function_rules = dict(_registry._FUNCTION_RULES)
    default_dtype = torch.get_default_dtype()
    rng_state = torch.random.get_rng_state()
    yield
    torch.random.set_rng_state(rng_state)
    torch.set_default_dtype(default_dtype)
    _registry._MODULE_RULES.clear()
    _registry._MODULE_RULES.update(module_rules)
    _registry._FUNCTION_RULES.clear()
    _registry._FUNCTION_RULES.update(function_rules)
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(
            b,
            id=f"{b.path}:block{b.number}",
            marks=pytest.mark.skip(reason=f"marked {NO_TEST}") if b.skip else (),
        )
        for b in BLOCKS
    ],
)
def test_block_runs(block: Block, isolated: None) -> None:
    # Pad with blank lines so that tracebacks give the line number in the Markdown file.
    code = compile("\n" * (block.line - 1) + block.source, block.path, "exec")
    namespace = {"__name__": "__main__", "__file__": os.fspath(ROOT / block.path)}
    failure = None
    try:
        exec(code, namespace)  # noqa: S102 - the repository's own documentation
    except (Exception, SystemExit) as error:
        details = "".join(traceback.format_exception(error))
        failure = f"{block.name} raised {type(error).__name__}: {error}\n\n{details}"
    if failure is not None:  # outside the except clause: no "during handling" chain
        pytest.fail(failure, pytrace=False)


def test_the_docs_have_python_blocks() -> None:
    assert any(b.path.startswith("docs/") for b in BLOCKS), "no ```python block found in docs/"


def test_parser_reads_marks_and_ignores_other_fences() -> None:
    text = "\n".join(
        [
            "```python",
            "a = 1",
            "```",
            "",
            NO_TEST,
            "",
            "```python",
            "raise SystemExit",
            "```",
            "````markdown",
            "```python",
            "nested = True",
            "```",
            "````",
            "```text",
            "not python",
            "```",
            "```python title='b'",
            "b = 2",
            "```",
        ]
    )
    blocks = python_blocks(text, "x.md")
    assert [(b.number, b.line, b.source, b.skip) for b in blocks] == [
        (1, 2, "a = 1\n", False),
        (2, 8, "raise SystemExit\n", True),
        (3, 19, "b = 2\n", False),
    ]
