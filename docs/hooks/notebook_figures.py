"""MkDocs hook: a notebook page must show its figures, and no stray warnings or figure reprs.

The notebooks are executed by mkdocs-jupyter in a kernel that inherits the build's environment;
with ``MPLBACKEND=Agg`` (CI) ``plt.show()`` draws nothing and the page silently loses every
figure. The notebooks switch to the inline backend in their first cell; this hook makes sure
that it worked, after each notebook page is rendered:

* every code cell that draws (``plt.show()``, or a figure as the cell's last expression) gives
  at least one ``data:image/png`` image on the page;
* no output reads ``<Figure size ...>`` (a figure shown as text instead of an image);
* no tqdm ``IProgress`` warning is rendered.

A failure fails the build (``mkdocs build --strict``); ``tests/test_docs.py`` checks the same
on the outputs committed with the notebooks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mkdocs.exceptions import PluginError

_IMAGE = re.compile(r"<img[^>]+src=\"data:image/png;base64,")
_FIGURE_TEXT = re.compile(r"&lt;Figure size \d+")


def drawing_cells(notebook: dict) -> int:
    """How many code cells draw a figure (``plt.show()`` or a last line naming a figure)."""
    count = 0
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).rstrip().splitlines()
        if any("plt.show()" in line for line in lines) or (lines and lines[-1] == "figure"):
            count += 1
    return count


def problems(html: str, notebook: dict) -> list[str]:
    """What is wrong with a rendered notebook page (empty when nothing)."""
    found = []
    images, expected = len(_IMAGE.findall(html)), drawing_cells(notebook)
    if images < expected:
        found.append(
            f"{images} figure(s) rendered for {expected} drawing cell(s): is the first code cell's "
            "'%matplotlib inline' missing? (MPLBACKEND=Agg makes plt.show() draw nothing)"
        )
    if _FIGURE_TEXT.search(html):
        found.append("a figure is shown as '<Figure size ...>' text instead of an image")
    if "TqdmWarning" in html:  # the warning as printed (the filter in the source names it too)
        found.append(
            "tqdm's IProgress warning is rendered: filter it in the first code cell "
            '(warnings.filterwarnings("ignore", message="IProgress not found"))'
        )
    return found


def on_post_page(output: str, page, config, **kwargs: object) -> str:
    source = page.file.abs_src_path
    if source and source.endswith(".ipynb"):
        notebook = json.loads(Path(source).read_text(encoding="utf-8"))
        found = problems(output, notebook)
        if found:
            raise PluginError(f"{page.file.src_uri}: " + "; ".join(found))
    return output
