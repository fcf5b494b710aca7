"""The ``odexport`` command line: a thin Typer shell over the library.

Command modules import the library inside their functions so that ``odexport --help`` never
imports torch.
"""

from odexport.cli.app import app, main

__all__ = ["app", "main"]
