"""Run one benchmark script for two source trees and print their results side by side.

Example, the code before and after a change, three rounds, the script's own options after ``--``::

    python benchmarks/compare.py --old /work/base --new . default_env --rounds 3 -- --repeats 5

What it does:

* **Each tree runs its own script with its own package.** The script is ``TREE/benchmarks/
  SCRIPT.py``, run with ``TREE`` as working directory and first on ``PYTHONPATH`` (ahead of an
  editable install, which Python consults after ``PYTHONPATH``). The child checks this itself:
  before running the script it imports ``hope_attr`` and stops with an error unless the module
  lies inside ``TREE``; the page lists the file each side imported.
* **Rounds alternate.** Each round runs the script once for the old tree, then once for the new
  one, so that the machine's drift over the run (load, temperature, other jobs) falls on both
  alike. A script's own rounds or repeats (``--repeats``) stay inside one run; per case, the page
  gives the median over the rounds of each side.
* **Results come from the pages the scripts write**, in the same way for both trees: a script
  built on :mod:`benchmarks._harness` writes them with ``--json PATH``; an older one (without
  ``--json``) writes only its markdown page (``--markdown PATH``, ``--out PATH`` for
  ``continuation``), which is read by :func:`benchmarks._results.results_from_markdown`, the
  very function ``--json`` is filled by. A case (a time in a table: section, row, column) and a
  target (a verdict) therefore carry the same name on both sides whichever way they were read;
  this holds as long as the two scripts print the same tables, which is what a refactoring of
  the benchmarks must keep. A case only one side has is listed with the other side empty.
  Running the new script with the old package instead would not need the page, but only works
  for scripts that use nothing but public API, which most of them do not.

For each case the page gives the old and new medians and their ratio new/old (below 1: the new
tree is faster); for each target, in how many rounds it held on each side. ``--markdown PATH`` and
``--json PATH`` also write the comparison; ``--keep DIR`` keeps every run's page, JSON and log.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __name__ == "__main__":  # run as a script: this checkout's benchmarks
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _harness, _results  # noqa: E402

SIDES = ("old", "new")
PAGE_FLAGS = {"continuation": "--out"}  # the option that writes a script's markdown page

# Run in the child before the script: refuse a hope_attr from outside the tree, then run the
# script as ``python SCRIPT ARGS`` would (its folder first on sys.path, ``__name__ == "__main__"``).
BOOTSTRAP = """
import json, runpy, sys
from pathlib import Path
tree, report, script = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), sys.argv[3]
import hope_attr
found = Path(hope_attr.__file__).resolve()
if tree not in found.parents:
    sys.exit(f"compare.py: the child imported hope_attr from {found}, not from the tree {tree}: "
             f"give --old/--new a source tree that holds hope_attr/ (the child puts it first on "
             f"PYTHONPATH, ahead of an installed hope_attr)")
report.write_text(json.dumps({"hope_attr": str(found)}))
sys.argv = sys.argv[3:]
sys.path[0] = str(Path(script).resolve().parent)
runpy.run_path(script, run_name="__main__")
"""


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """compare.py's own arguments, and the script's (those after the first ``--``)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    own, script_args = split_arguments(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", help="a script of benchmarks/, e.g. default_env")
    parser.add_argument("--old", type=Path, required=True, help="the tree before the change")
    parser.add_argument("--new", type=Path, default=Path("."), help="the tree after it (.)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per tree, alternating")
    parser.add_argument("--keep", type=Path, help="keep every run's page, JSON and log here")
    _harness.add_outputs(parser)
    args = parser.parse_args(own)
    args.script = Path(args.script).stem
    if "--rounds" in script_args:
        parser.error(
            "--rounds is compare.py's option: put it before `--` (what follows `--` goes to the "
            "benchmark script)"
        )
    for side in SIDES:
        script = getattr(args, side) / "benchmarks" / f"{args.script}.py"
        if not script.is_file():
            parser.error(f"--{side}: {script} does not exist (is --{side} a source tree?)")
        flag = PAGE_FLAGS.get(args.script, "--markdown")
        if flag not in script.read_text() and "_harness" not in script.read_text():
            parser.error(
                f"--{side}: {script} writes no results page (it has no {flag} option), so "
                "there is nothing to compare: compare a script that writes one"
            )
    return args, script_args


def git_commit(tree: Path) -> str:
    done = subprocess.run(
        ["git", "log", "-1", "--format=%h %s"], cwd=tree, capture_output=True, text=True
    )
    if done.returncode != 0:
        return "not a git checkout"
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True)
    return done.stdout.strip()[:72] + (" (with uncommitted changes)" if dirty.stdout else "")


def run_once(tree: Path, name: str, script_args: list[str], folder: Path, tag: str) -> dict:
    """Run ``tree``'s script once; its cases and targets, and the hope_attr it imported."""
    tree = tree.resolve()
    script = tree / "benchmarks" / f"{name}.py"
    page, data, report = folder / f"{tag}.md", folder / f"{tag}.json", folder / f"{tag}.who"
    command = [sys.executable, "-c", BOOTSTRAP, str(tree), str(report), str(script)]
    command += [*script_args, PAGE_FLAGS.get(name, "--markdown"), str(page)]
    writes_json = "_harness" in script.read_text()
    if writes_json:
        command += ["--json", str(data)]
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    with open(folder / f"{tag}.log", "w") as log:
        done = subprocess.run(
            command, cwd=tree, env={**os.environ, "PYTHONPATH": path}, stdout=log, stderr=log
        )
    if done.returncode != 0:
        tail = (folder / f"{tag}.log").read_text()[-3000:]
        raise SystemExit(
            f"compare.py: {script} failed (exit {done.returncode}); its output:\n{tail}"
        )
    if writes_json:
        results = json.loads(data.read_text())
    else:
        results = _results.results_from_markdown(page.read_text())
    return {**results, "hope_attr": json.loads(report.read_text())["hope_attr"]}


def collect(runs: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Per case ``(section, case, measure)`` and per target, each side's values over the rounds."""
    cases: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    targets: dict[str, dict[str, list[bool | None]]] = {}
    for side in SIDES:
        for run in runs[side]:
            for case in run["cases"]:
                key = (case["section"], case["case"], case["measure"])
                cases.setdefault(key, {"old": [], "new": []})[side].append(case["seconds"])
            for target in run["targets"]:
                entry = targets.setdefault(target["target"], {"old": [], "new": []})
                entry[side].append(target["holds"])
    return cases, targets


def seconds_text(values: list[float]) -> str:
    if not values:
        return "-"
    value = statistics.median(values)
    return f"{value:.3g} s" if value >= 1 else f"{value * 1e3:.3g} ms"


def holds_text(values: list[bool | None]) -> str:
    if not values:
        return "-"
    held = sum(value is True for value in values)
    word = "holds" if held == len(values) else "FAILS" if held == 0 else "mixed"
    return f"{word} ({held} of {len(values)})"


def render(args: argparse.Namespace, script_args: list[str], runs: dict, started: float) -> str:
    cases, targets = collect(runs)
    rounds = len(runs["new"])
    command = ["python", "benchmarks/compare.py", *sys.argv[1:]] if sys.argv[1:] else []
    lines = [f"# {args.script}: old vs new", ""]
    if command:
        lines.append(f"- command: `{' '.join(command)}`")
    for side in SIDES:
        tree = getattr(args, side).resolve()
        imported = sorted({run["hope_attr"] for run in runs[side]})
        lines.append(f"- {side}: {tree} (git {git_commit(tree)}), hope_attr from {imported[0]}")
    lines += [
        f"- script arguments: `{' '.join(script_args) or '(none)'}`; {rounds} round(s), each "
        f"running old then new; values are medians over the rounds; "
        f"total wall time {time.perf_counter() - started:.0f} s",
        "",
        "## Targets",
        "",
    ]
    rows = [[name, holds_text(v["old"]), holds_text(v["new"])] for name, v in targets.items()]
    lines += [_harness.table(["target", "old", "new"], rows) if rows else "(none)", ""]
    sections: dict[str, list[list[str]]] = {}
    for (section, case, measure), values in cases.items():
        old, new = values["old"], values["new"]
        ratio = f"{statistics.median(new) / statistics.median(old):.2f}" if old and new else "-"
        # A case names its row by several cells ("resnet18 | 4 | 10"): escape the pipes.
        row = [case.replace("|", "\\|"), measure, seconds_text(old), seconds_text(new), ratio]
        sections.setdefault(section, []).append(row)
    for section, rows in sections.items():
        header = ["case", "measure", "old", "new", "new/old"]
        lines += [f"## {section}", "", _harness.table(header, rows), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args, script_args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="compare-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for round_ in range(1, args.rounds + 1):
            for side in SIDES:
                start = time.perf_counter()
                tag = f"{side}-{round_}"
                runs[side].append(
                    run_once(getattr(args, side), args.script, script_args, folder, tag)
                )
                print(
                    f"round {round_}/{args.rounds}, {side}: {time.perf_counter() - start:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    page = render(args, script_args, runs, started)
    print(page)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(page + "\n")
    if args.json:
        cases, targets = collect(runs)
        data = {
            "script": args.script,
            "script_args": script_args,
            "trees": {side: str(getattr(args, side).resolve()) for side in SIDES},
            "cases": [
                dict(zip(("section", "case", "measure"), key, strict=True), **values)
                for key, values in cases.items()
            ],  # fmt: skip
            "targets": [{"target": name, **values} for name, values in targets.items()],
        }
        args.json.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
