"""The results of a benchmark's markdown page: every time in its tables, every target's verdict.

``--json`` (:func:`benchmarks._harness.save`) holds what :func:`results_from_markdown` reads from
the page a script wrote, and ``benchmarks/compare.py`` reads with it the pages of scripts that
predate ``--json``: a case and a target carry the same name either way.
"""

from __future__ import annotations

import re
from typing import Any

_NUMBER = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_HEADER_UNIT = re.compile(r"(?:^|[\s\[(])(s|ms|us|µs)(?:$|[\s\])/])")
_VERDICTS = {"**met**": True, "**NOT met**": False, "**more accurate**": True,
             "**NOT more accurate**": False}  # fmt: skip


def _seconds(cell: str, header_unit: str | None) -> float | None:
    match = re.fullmatch(rf"({_NUMBER})\s*(s|ms|us|µs)", cell)
    if match:
        return float(match[1]) * _UNITS[match[2]]
    if header_unit and re.fullmatch(_NUMBER, cell):
        return float(cell) * _UNITS[header_unit]
    return None


def _labels(cell: str) -> bool:
    """Whether a cell names a case (text, an integer, ``-``) rather than holding a measurement."""
    return not re.match(r"[<>=~ ]*-?\d", cell) or re.fullmatch(r"\d+", cell) is not None


def _target_name(text: str) -> str:
    """``text`` without parentheses that hold ``name: value``: they say what was measured (the
    fastest baseline, say), which may differ between runs of the same target."""
    kept, group, depth = [], [], 0
    for char in text:
        depth += char == "("
        (group if depth else kept).append(char)
        if char == ")" and depth:
            depth -= 1
            if not depth:
                kept += [] if ":" in "".join(group) else group
                group = []
    return " ".join("".join(kept + group).split())


def _read_table(section: str, header: list[str], rows: list[list[str]], out: dict) -> None:
    rows = [(row + [""] * len(header))[: len(header)] for row in rows]
    # A repeated column name gets its place: "ms", "ms #2".
    header = [
        f"{n} #{header[:i].count(n) + 1}" if n in header[:i] else n for i, n in enumerate(header)
    ]
    if "verdict" in header:
        for row in rows:
            verdict = row[header.index("verdict")]
            holds = True if verdict.startswith("PASS") else False if "FAIL" in verdict else None
            out["targets"].append({"target": _target_name(row[0]), "holds": holds})
        return
    units = [(m[1] if (m := _HEADER_UNIT.search(name)) else None) for name in header]
    times = [[_seconds(c, unit) for c, unit in zip(row, units, strict=True)] for row in rows]
    first_time = min((i for row in times for i, t in enumerate(row) if t is not None), default=0)
    for row, seconds in zip(rows, times, strict=True):
        label = []
        for cell in row[:first_time]:
            if not _labels(cell):
                break
            label.append(cell)
        for measure, value in zip(header, seconds, strict=True):
            if value is not None:
                case = {"section": section, "case": " | ".join(label), "measure": measure}
                out["cases"].append({**case, "seconds": value})


def results_from_markdown(page: str) -> dict[str, list[dict[str, Any]]]:
    """Every time in a page's tables and every target's verdict.

    A case is named by its section (the last heading), its row (the leading cells that are text
    or integers, before the first column with a time) and its column, and its time is in
    seconds; so a table puts its times before measurements that may print as integers. A target
    is a row of a table with a ``verdict`` column (PASS or FAIL) or a bullet that ends in
    ``: PASS``/``: FAIL`` or carries ``**met**``/``**NOT met**`` (or ``**more accurate**``/
    ``**NOT more accurate**``); ``holds`` is None for other verdicts (UNDECIDED, n/a).

    Example:
        >>> page = "## CNN\\n| method | order | time |\\n|---|---|---|\\n| hope | 4 | 2.5 ms |"
        >>> results = results_from_markdown(page + "\\n- limit (order 10): PASS")
        >>> results["cases"][0]["case"], results["cases"][0]["seconds"], results["targets"][0]
        ('hope | 4', 0.0025, {'target': 'limit (order 10)', 'holds': True})
    """
    out: dict[str, list[dict[str, Any]]] = {"cases": [], "targets": []}
    lines, section, index = page.splitlines(), "", 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        elif line.startswith("|") and index < len(lines) and lines[index].startswith("|--"):
            header, rows = _cells(line), []
            index += 1
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(_cells(lines[index]))
                index += 1
            _read_table(section, header, rows, out)
        elif line.startswith("- "):
            verdicts = [v for k, v in _VERDICTS.items() if k in line]
            end = re.search(r": (PASS|FAIL)$", line)
            if verdicts or end:
                holds = verdicts[-1] if verdicts else end[1] == "PASS"
                out["targets"].append({"target": line[2:].split(": ")[0], "holds": holds})
    return out


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]
