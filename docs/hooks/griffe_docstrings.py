"""Griffe extension for the API reference: read the project's docstrings as they are written.

* ``Example:`` is the Google-style section the project uses (the Napoleon spelling); griffe only
  knows ``Examples:`` and would render the doctest as a quote. It is read as ``Examples:``.
* Sphinx roles (``:func:`hope_attr.expand```, ``:mod:``, ``:meth:``, ``:class:``) have no meaning
  in Markdown; they are shown as inline code.

Only the text handed to the renderer changes; the source is untouched.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|meth|mod|class|attr|data|exc|obj):`~?(?P<target>[^`]+)`")


def rewrite(text: str) -> str:
    """The docstring text with ``Example:`` sections and Sphinx roles made Markdown-friendly."""
    text = _EXAMPLE.sub(r"\g<indent>Examples:", text)
    return _ROLE.sub(r"`\g<target>`", text)


class ProjectDocstrings(griffe.Extension):
    """Apply :func:`rewrite` to every docstring once the object tree is built."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
