"""The documentation: every example runs, and the site's configuration is consistent.

* Every ```python block of README.md and docs/*.md runs without raising. Each block runs in a
  fresh namespace, in the repository root, with matplotlib's Agg backend. A block preceded by the
  line ``<!-- no-test -->`` is skipped (for blocks that need data or a long time). Rules
  registered by a block are removed afterwards, so a failing block cannot leak into the next one.
  A README.md block followed by the line ``prints`` and a ```text block prints exactly that.
* Every ``<!-- hope-attr: ARGS -->`` command of docs/*.md (the site shows its output, see
  ``docs/hooks/run_examples.py``) runs and exits with status 0.
* mkdocs.yml lists every page and notebook, and only existing ones; included files exist; the
  API reference covers ``hope_attr.__all__``; CI runs the README's test command.

These are the fast checks; ``mkdocs build --strict`` (part of the test command) also executes
the notebooks and validates every link.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml

import hope_attr
from hope_attr.engine import registry as _registry

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
    importlib.import_module("hope_attr.engine.expansion")  # the built-in rules, before the snapshot
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


def shown_outputs(text: str, path: str) -> list[tuple[Block, str]]:
    """``(block, output)`` for each ```python block followed by the line ``prints`` and a
    ```text block: what the page says the block prints (README.md has no build to compute it)."""
    lines = text.splitlines()
    shown = []
    for block in python_blocks(text, path):
        index = block.line - 1 + block.source.count("\n") + 1  # the line after the closing fence
        following = [line.strip() for line in lines[index:] if line.strip()]
        if following[:2] != ["prints", "```text"]:
            continue
        start = lines.index("```text", index) + 1
        end = lines.index("```", start)
        shown.append((block, "\n".join(lines[start:end])))
    return shown


README_OUTPUTS = shown_outputs((ROOT / "README.md").read_text(encoding="utf-8"), "README.md")


def test_the_readme_shows_the_quickstart_output() -> None:
    assert README_OUTPUTS, "README.md: the quickstart should be followed by 'prints' and its output"


@pytest.mark.parametrize("block, output", README_OUTPUTS, ids=lambda v: getattr(v, "name", ""))
def test_readme_output_is_what_the_block_prints(block: Block, output: str, isolated: None) -> None:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block.source, block.path, "exec"), {"__name__": "__main__"})  # noqa: S102
    assert printed.getvalue().rstrip() == output, f"update the output shown after {block.name}"


# --------------------------------------------------------------------------- the site's examples
def _hook() -> ModuleType:
    """docs/hooks/run_examples.py, the MkDocs hook that runs the examples whose output is shown."""
    path = ROOT / "docs" / "hooks" / "run_examples.py"
    spec = importlib.util.spec_from_file_location("run_examples", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands() -> list[tuple[str, str]]:
    """``(page, ARGS)`` of every ``<!-- hope-attr: ARGS -->`` line in docs/*.md."""
    mark = re.compile(r"^<!-- hope-attr:\s*(?P<args>.+?)\s*-->$", re.MULTILINE)
    return [
        (page.name, match["args"])
        for page in sorted((ROOT / "docs").glob("*.md"))
        for match in mark.finditer(page.read_text(encoding="utf-8"))
    ]


@pytest.mark.parametrize("page, args", _commands(), ids=[f"{p}:{a}" for p, a in _commands()])
def test_cli_command_shown_on_the_site_runs(page: str, args: str, isolated: None) -> None:
    output = _hook().run_command(args)
    assert output, f"hope-attr {args} ({page}) printed nothing"
    if args.split()[-1] == "--help":
        assert output.startswith("usage: hope-attr")


def test_hook_renders_commands_and_block_outputs() -> None:
    page = "\n".join(
        [
            "Text.",
            "<!-- hope-attr: --help -->",
            "<!-- show-output -->",
            "",
            "```python",
            "print(6 * 7)",
            "```",
        ]
    )
    rendered = _hook().render(page, "test.md").split("\n")
    assert rendered[1:3] == ["```console", "$ hope-attr --help"]
    assert rendered[3].startswith("usage: hope-attr")
    assert rendered[-3:] == ['```text title="Output"', "42", "```"]


def test_hook_checks_committed_outputs_and_refreshes_them() -> None:
    # GitHub hides the markers (HTML comments): a page commits the outputs after them, and the
    # build fails when a committed output is no longer what the command prints.
    from mkdocs.exceptions import PluginError

    hook = _hook()
    bare = "Text.\n<!-- hope-attr: --help -->\nMore text."
    committed = hook.refresh(bare)
    lines = committed.split("\n")
    assert lines[:4] == ["Text.", "<!-- hope-attr: --help -->", "```console", "$ hope-attr --help"]
    assert lines[4].startswith("usage: hope-attr") and lines[-2:] == ["```", "More text."]
    assert hook.refresh(committed) == committed
    assert hook.render(committed, "test.md") == hook.render(bare, "test.md")  # shown once
    stale = committed.replace("show this help message", "show an old help message")
    with pytest.raises(PluginError, match=r"not what the command prints.*docs/test\.md"):
        hook.render(stale, "test.md")


def _pages_with_committed_outputs() -> list[Path]:
    return [
        page
        for page in sorted((ROOT / "docs").glob("*.md"))
        if "```console\n$ hope-attr" in page.read_text(encoding="utf-8")
    ]


def test_the_cli_page_commits_every_output() -> None:
    # Regression: on GitHub docs/cli.md showed only the markers, which are HTML comments.
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    markers = [args for page, args in _commands() if page == "cli.md"]
    assert markers and all(f"\n```console\n$ hope-attr {args}\n" in text for args in markers)


@pytest.mark.parametrize("page", _pages_with_committed_outputs(), ids=lambda page: page.name)
def test_committed_outputs_are_current(page: Path, isolated: None) -> None:
    text = page.read_text(encoding="utf-8")
    assert _hook().refresh(text) == text, (
        f"run `python docs/hooks/run_examples.py docs/{page.name}` to update the outputs"
    )


def test_hook_fails_the_build_on_a_failing_example() -> None:
    from mkdocs.exceptions import PluginError

    hook = _hook()
    with pytest.raises(PluginError, match="ZeroDivisionError"):
        hook.render("<!-- show-output -->\n```python\nprint(1 / 0)\n```", "test.md")
    with pytest.raises(PluginError, match="exited with status 2"):
        hook.render("<!-- hope-attr: expand --no-such-option -->", "test.md")


# ------------------------------------------------------------------------ the site's structure
def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def _nav_files(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return []


def test_nav_lists_every_page_and_notebook_and_nothing_else() -> None:
    docs = ROOT / "docs"
    nav = _nav_files(_config()["nav"])
    missing = [f for f in nav if not (docs / f).is_file()]
    assert not missing, f"mkdocs.yml lists pages that do not exist: {missing}"
    pages = {p.relative_to(docs).as_posix() for p in docs.glob("*.md")}
    notebooks = {p.relative_to(docs).as_posix() for p in docs.glob("notebooks/*.ipynb")}
    # A notebook missing from the nav would still be executed, but could not be found.
    left_out = sorted((pages | notebooks) - set(nav))
    assert not left_out, f"add these to the nav of mkdocs.yml: {left_out}"


def test_included_files_exist() -> None:
    # A path may end in a line range (``file.md:3:`` from line 3 on), which names no file.
    include = re.compile(r'^-{1,2}8<-{1,2}\s+"(?P<path>[^":]+)(:\d*){0,2}"', re.MULTILINE)
    found = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for match in include.finditer(page.read_text(encoding="utf-8")):
            found.append(match["path"])
            assert (ROOT / match["path"]).is_file(), f"{page.name} includes {match['path']}"
    assert "benchmarks/results/derivatives.md" in found


def test_api_reference_covers_the_public_names() -> None:
    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: hope_attr\.(\w+)$", reference, re.MULTILINE))
    missing = sorted(set(hope_attr.__all__) - documented)
    assert not missing, f"docs/api.md lacks '::: hope_attr.NAME' for {missing}"


def test_notebooks_are_executed_by_the_build_and_fail_it() -> None:
    plugins = {
        name: options
        for plugin in _config()["plugins"]
        for name, options in (plugin.items() if isinstance(plugin, dict) else [(plugin, {})])
    }
    jupyter = plugins["mkdocs-jupyter"]
    assert jupyter["execute"] is True and jupyter["allow_errors"] is False
    assert jupyter.get("cache") is False  # the cache ignores changes to hope_attr
    assert _config()["strict"] is True


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^```bash\n(.*?)\n```", readme, re.MULTILINE | re.DOTALL)
    test_command = [c for c in commands if "python -m pytest" in c]
    assert len(test_command) == 1, "README.md should have one ```bash block with the tests"
    assert "mkdocs build --strict" in test_command[0]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command[0] in ci, ".ci/run must run the README's test command verbatim"


def test_the_version_is_the_newest_release_in_the_changelog() -> None:
    # One source for the version (pyproject.toml); the changelog's newest release matches it.
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE).group(1)
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.MULTILINE)
    assert releases and releases[0] == version
    assert hope_attr.__version__ == version


# ------------------------------------------------------------------------------ the notebooks
NOTEBOOKS = sorted((ROOT / "docs" / "notebooks").glob("*.ipynb"))


def _hook_module(name: str) -> ModuleType:
    path = ROOT / "docs" / "hooks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_its_figures(path: Path) -> None:
    # GitHub shows the committed outputs; the site re-executes the notebook (the hook
    # notebook_figures.py checks the rendered page the same way).
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    first = "".join(code[0]["source"])
    assert "%matplotlib inline" in first, "MPLBACKEND=Agg (CI) would make plt.show() draw nothing"
    assert "IProgress not found" in first, "filter tqdm's warning before anything imports tqdm"
    assert all(cell["execution_count"] is not None for cell in code), "commit it executed"
    images = 0
    for cell in code:
        for output in cell["outputs"]:
            assert output["output_type"] != "error", path.name
            data = output.get("data", {})
            images += "image/png" in data
            text = "".join(data.get("text/plain", []))
            assert "<Figure" not in text or "image/png" in data, f"{path.name}: {text}"
            if output["output_type"] == "stream":
                assert "TqdmWarning" not in "".join(output["text"]), f"{path.name}: tqdm warning"
    expected = _hook_module("notebook_figures").drawing_cells(notebook)
    assert expected > 0 and images >= expected, f"{path.name}: {images} images, {expected} cells"


def test_notebook_links_to_pages_become_site_urls() -> None:
    # Regression: mkdocs-jupyter renders a notebook itself, so MkDocs neither rewrote nor checked
    # its links: "../audit.md" reached the site as it was, a 404 next to the notebook's page.
    from types import SimpleNamespace

    from mkdocs.structure.files import File, Files

    hook = _hook_module("notebook_figures")
    audit = File("audit.md", "docs", "site", use_directory_urls=True)
    notebook_page = File("notebooks/dataset_audit.md", "docs", "site", use_directory_urls=True)
    assert notebook_page.url == "notebooks/dataset_audit/"  # where mkdocs-jupyter puts it too
    html = (
        '<a href="../audit.md#ray">a</a> <a href="../nowhere.md">b</a> '
        '<a href="https://example.org/notes.md">c</a> <a href="#section">d</a>'
    )
    page = SimpleNamespace(file=notebook_page)
    resolved, missing = hook.resolve_links(html, page, Files([audit, notebook_page]))
    assert resolved == html.replace("../audit.md#ray", "../../audit/#ray")
    assert missing == ["../nowhere.md"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_links_to_pages_exist(path: Path) -> None:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    text = "".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown")
    for target in re.findall(r"\]\(([^):#]+\.(?:md|ipynb))(?:#[^)]*)?\)", text):
        linked = (path.parent / target).resolve()
        assert linked.is_file() and (ROOT / "docs") in linked.parents, f"{path.name}: {target}"


def test_notebook_hook_rejects_pages_without_figures() -> None:
    hook = _hook_module("notebook_figures")
    notebook = {"cells": [{"cell_type": "code", "source": ["x = 1\n", "plt.show()"]}]}
    image = '<img alt="a figure" src="data:image/png;base64,iVBO">'
    assert hook.problems(f"<p>{image}</p>", notebook) == []
    assert "1 drawing cell" in hook.problems("<p>nothing drawn</p>", notebook)[0]
    as_text = image + "&lt;Figure size 640x480 with 1 Axes&gt;"
    assert "text instead" in hook.problems(as_text, notebook)[0]
    assert "IProgress" in hook.problems(image + "TqdmWarning: IProgress not found", notebook)[0]
    plugins = _config()["hooks"]
    assert "docs/hooks/notebook_figures.py" in plugins
