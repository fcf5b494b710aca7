"""``python -m odexport``: the CLI where the ``odexport`` script is not on PATH."""

from odexport.cli.app import main

if __name__ == "__main__":
    main()
