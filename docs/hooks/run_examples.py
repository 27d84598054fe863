"""MkDocs hook: examples whose output the site shows are run when the site is built.

Two markers, each on a line of its own:

* ``<!-- hope-attr: ARGS -->`` becomes a console block with ``$ hope-attr ARGS`` and what the
  command prints (:func:`hope_attr.cli.main`, in this process, at a fixed width), so the
  documented options and outputs cannot drift from the code. ``ARGS`` may end in ``--help``.
* ``<!-- show-output -->`` right before a ```` ```python ```` block appends what the block prints,
  in a block titled "Output".

Numbers shown on the site therefore come from the code that was run to build it. A command or
block that fails fails the build; ``tests/test_docs.py`` runs the same examples under pytest.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import traceback
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
COMMAND_MARK = "<!-- hope-attr:"
SHOW_OUTPUT = "<!-- show-output -->"
_WIDTH = "88"  # argparse wraps its help at $COLUMNS
os.environ.setdefault("MPLBACKEND", "Agg")  # examples that draw must not open windows


def run_command(args: str) -> str:
    """What ``hope-attr ARGS`` prints (stdout), run in this process.

    Raises:
        RuntimeError: the command exits with a nonzero status.
    """
    from hope_attr.cli import main

    argv = shlex.split(args)
    out = io.StringIO()
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH
    try:
        with contextlib.redirect_stdout(out):
            status = main(argv)
    except SystemExit as exit_:  # argparse exits after printing --help
        status = exit_.code
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    if status not in (0, None):
        raise RuntimeError(f"hope-attr {args} exited with status {status}:\n{out.getvalue()}")
    return out.getvalue().rstrip()


def run_block(source: str, name: str) -> str:
    """What a python block prints, run in a fresh namespace from the repository root."""
    out = io.StringIO()
    previous = Path.cwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(source, name, "exec"), {"__name__": "__main__"})  # noqa: S102
    finally:
        os.chdir(previous)
    return out.getvalue().rstrip()


def render(markdown: str, page_name: str) -> str:
    """The page with every marker replaced or followed by the output it asks for."""
    lines = markdown.split("\n")
    result: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if stripped.startswith(COMMAND_MARK) and stripped.endswith("-->"):
            args = stripped[len(COMMAND_MARK) : -len("-->")].strip()
            result += ["```console", f"$ hope-attr {args}", _run(run_command, args), "```"]
            index += 1
            continue
        if stripped == SHOW_OUTPUT:
            start = index + 1
            while start < len(lines) and not lines[start].strip():
                start += 1
            if start == len(lines) or not lines[start].startswith("```python"):
                raise PluginError(f"{page_name}: {SHOW_OUTPUT} must come right before ```python")
            end = start + 1
            while end < len(lines) and lines[end].rstrip() != "```":
                end += 1
            source = "\n".join(lines[start + 1 : end]) + "\n"
            output = _run(run_block, source, f"{page_name} (line {start + 2})")
            if not output:
                raise PluginError(f"{page_name}: the block after {SHOW_OUTPUT} prints nothing")
            result += lines[start : end + 1]
            result += ["", '```text title="Output"', output, "```"]
            index = end + 1
            continue
        result.append(line)
        index += 1
    return "\n".join(result)


def _run(function, *args: str) -> str:
    try:
        return function(*args)
    except Exception as error:  # report the example's own traceback and fail the build
        details = "".join(traceback.format_exception(error))
        raise PluginError(f"a documentation example failed:\n{details}") from error


def on_page_markdown(markdown: str, page, **kwargs: object) -> str:
    return render(markdown, page.file.src_uri)
