"""``python -m odexport``: the CLI where the ``odexport`` script is not on PATH."""

from odexport.cli.app import main

main()
