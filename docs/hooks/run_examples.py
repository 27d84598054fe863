"""MkDocs hook: examples whose output the site shows are run when the site is built.

Two markers, each on a line of its own:

* ``<!-- hope-attr: ARGS -->`` becomes a console block with ``$ hope-attr ARGS`` and what the
  command prints (:func:`hope_attr.cli.main`, in this process, at a fixed width), so the
  documented options and outputs cannot drift from the code. ``ARGS`` may end in ``--help``.
  The page may carry that block in its source, right after the marker, so that it reads on
  GitHub too (which hides the comment); the build then checks that the committed block is what
  the command prints now, and fails if not. ``python docs/hooks/run_examples.py PAGE.md``
  writes or refreshes the committed blocks of a page.
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
import sys
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


def _command_args(line: str) -> str | None:
    """``ARGS`` of a ``<!-- hope-attr: ARGS -->`` line, else ``None``."""
    stripped = line.strip()
    if stripped.startswith(COMMAND_MARK) and stripped.endswith("-->"):
        return stripped[len(COMMAND_MARK) : -len("-->")].strip()
    return None


def _console_block(args: str, output: str) -> list[str]:
    return ["```console", f"$ hope-attr {args}", *output.split("\n"), "```"]


def _committed_block(lines: list[str], start: int, args: str) -> tuple[list[str], int] | None:
    """The console block of ``hope-attr ARGS`` committed after its marker (blank lines
    between them allowed), and the index after it; ``None`` when the marker stands alone."""
    index = start
    while index < len(lines) and not lines[index].strip():
        index += 1
    if lines[index : index + 2] != ["```console", f"$ hope-attr {args}"]:
        return None
    end = index + 2
    while end < len(lines) and lines[end].rstrip() != "```":
        end += 1
    return lines[index : end + 1], end + 1


def _stale(page_name: str, args: str, committed: list[str], current: list[str]) -> str:
    first = next(
        (i for i, (a, b) in enumerate(zip(committed, current, strict=False)) if a != b),
        min(len(committed), len(current)),
    )

    def line(block: list[str]) -> str:
        return repr(block[first]) if first < len(block) else "(the end of the block)"

    return (
        f"{page_name}: the committed output of `hope-attr {args}` is not what the command prints "
        f"now (line {first + 1} of the block: committed {line(committed)}, now {line(current)}). "
        f"Update the page with `python docs/hooks/run_examples.py docs/{page_name}`."
    )


def render(markdown: str, page_name: str) -> str:
    """The page with every marker replaced or followed by the output it asks for.

    Raises:
        PluginError: an example fails, or a committed command output is stale.
    """
    lines = markdown.split("\n")
    result: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        args = _command_args(line)
        if args is not None:
            block = _console_block(args, _run(run_command, args))
            committed = _committed_block(lines, index + 1, args)
            if committed is not None and committed[0] != block:
                raise PluginError(_stale(page_name, args, committed[0], block))
            result += block
            index = index + 1 if committed is None else committed[1]
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


def refresh(markdown: str) -> str:
    """The page's source with the current output committed after every command marker.

    Markers stay, so that the build can check the committed outputs; ``show-output`` blocks
    are left alone (their outputs are only added on the site).
    """
    lines = markdown.split("\n")
    result: list[str] = []
    index = 0
    while index < len(lines):
        args = _command_args(lines[index])
        if args is None:
            result.append(lines[index])
            index += 1
            continue
        committed = _committed_block(lines, index + 1, args)
        result += [lines[index], *_console_block(args, run_command(args))]
        index = index + 1 if committed is None else committed[1]
    return "\n".join(result)


def on_page_markdown(markdown: str, page, **kwargs: object) -> str:
    return render(markdown, page.file.src_uri)


def main(paths: list[str]) -> int:
    """``python docs/hooks/run_examples.py PAGE.md ...``: refresh the committed outputs."""
    if not paths:
        print("usage: python docs/hooks/run_examples.py PAGE.md [PAGE.md ...]", file=sys.stderr)
        return 2
    for name in paths:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        updated = refresh(text)
        if updated != text:
            path.write_text(updated, encoding="utf-8")
        print(f"{path}: {'updated' if updated != text else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
