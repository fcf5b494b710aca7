"""The Typer application: one small module per command, registered here."""

from __future__ import annotations

import typer

from odexport import __version__

app = typer.Typer(
    name="odexport",
    help="Take trained dynamic-convolution CNNs (ODConv, DY-Conv) to ONNX Runtime and TensorRT, "
    "with a dynamic batch and a parity gate.\n\nExit codes: 0 success, 1 input error, "
    "2 parity failure, 3 missing optional dependency or hardware.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"odexport {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """odexport command line."""


def _register() -> None:
    from odexport.cli import commands  # noqa: F401  (each module adds its command to ``app``)


_register()


def main() -> None:
    app()
