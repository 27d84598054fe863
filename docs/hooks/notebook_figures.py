"""MkDocs hook: a notebook page must show its figures, no stray warnings or figure reprs, and
its links to other pages must work.

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

Links: mkdocs-jupyter renders a notebook to HTML itself, so MkDocs neither rewrites nor validates
its links. A notebook links to a page by its source file, ``[audit page](../audit.md)``, which
works on GitHub and in Jupyter; :func:`resolve_links` turns such links into the page's URL on the
site (``../../audit/``) and fails the build when the file is not a page of the site.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError

_IMAGE = re.compile(r"<img[^>]+src=\"data:image/png;base64,")
# A relative link to a Markdown or notebook file (no scheme: "https:" has a colon).
_SOURCE_LINK = re.compile(r'href="(?P<target>[^":#?]+\.(?:md|ipynb))(?P<anchor>#[^"]*)?"')
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


def resolve_links(html: str, page, files) -> tuple[str, list[str]]:
    """``html`` with links to source files replaced by their pages' URLs, relative to ``page``,
    and the links whose file is not a page of the site."""
    folder = posixpath.dirname(page.file.src_uri)
    missing: list[str] = []

    def replace(match: re.Match) -> str:
        target = posixpath.normpath(posixpath.join(folder, match["target"]))
        linked = files.get_file_from_path(target)
        if linked is None:
            missing.append(match["target"])
            return match[0]
        return f'href="{linked.url_relative_to(page.file)}{match["anchor"] or ""}"'

    return _SOURCE_LINK.sub(replace, html), missing


def on_page_content(html: str, page, config, files, **kwargs: object) -> str:
    source = page.file.abs_src_path
    if not (source and source.endswith(".ipynb")):
        return html
    html, missing = resolve_links(html, page, files)
    if missing:
        raise PluginError(
            f"{page.file.src_uri} links to files that are not pages of the site: {missing} "
            "(write the link relative to the notebook, to a page in docs/)"
        )
    return html


def on_post_page(output: str, page, config, **kwargs: object) -> str:
    source = page.file.abs_src_path
    if source and source.endswith(".ipynb"):
        notebook = json.loads(Path(source).read_text(encoding="utf-8"))
        found = problems(output, notebook)
        if found:
            raise PluginError(f"{page.file.src_uri}: " + "; ".join(found))
    return output
