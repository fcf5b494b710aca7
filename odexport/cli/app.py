"""The Typer application: one small module per command, registered here."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from odexport import __version__

# Click's UsageError, wherever this typer takes Click from (a dependency, or vendored since 0.2x)
_UsageError = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError")


class _InputErrorExitGroup(TyperGroup):
    """Click exits 2 on a usage error (unknown option, bad value); 2 is our parity failure.

    A CI gate must not read a mistyped ``odexport check --atoll`` as "the model diverged", so a
    usage error leaves with 1, the input-error code, like every other bad input -- and, like every
    other error, as one line (``error: <problem> -- <fix>``), not Click's usage block.
    """

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _UsageError as exc:  # the subcommand's own options and arguments
            _usage_error(exc)


def _usage_error(exc) -> None:
    """Report a usage error in one line and leave with 1; a bare command asking for its help
    (Click's ``NoArgsIsHelpError``) still shows the help."""
    exc.exit_code = 1
    if type(exc).__name__ == "NoArgsIsHelpError":
        raise exc
    from rich.markup import escape

    from odexport.cli._common import err_console

    command = exc.ctx.command_path if exc.ctx is not None else "odexport"
    problem = " ".join(exc.format_message().split()).rstrip(".")
    err_console.print(f"[bold red]error:[/] {escape(problem)} -- see '{escape(command)} --help'",
                      markup=True, highlight=False)
    raise typer.Exit(1) from None


app = typer.Typer(
    name="odexport",
    cls=_InputErrorExitGroup,
    help="Take trained dynamic-convolution CNNs (ODConv, DY-Conv) to ONNX Runtime and TensorRT, "
    "with a dynamic batch and a parity gate.\n\nExit codes: 0 success, 1 input error, "
    "2 parity failure, 3 missing optional dependency or hardware, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).",
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
    import signal

    # a reader that closes the pipe early (`| head`) ends the process as it ends `cat`: by SIGPIPE
    # (status 141); Python's default turns it into an exception that rich reports as exit 1, the
    # code of an input error, with nothing said
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app(prog_name="odexport")  # also under `python -m odexport`, where argv[0] is __main__.py
