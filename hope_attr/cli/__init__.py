"""The ``hope-attr`` command line (:func:`main`); ``python -m hope_attr.cli`` runs it too.

Importing this package imports neither torch nor captum: ``hope-attr --help`` answers at once.
"""

from hope_attr.cli.main import main

__all__ = ["main"]
