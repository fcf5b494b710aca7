"""What every command shares: the error boundary, console output and progress display."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from odexport.errors import OdexportError

console = Console(stderr=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def is_quiet(quiet: bool = False) -> bool:
    """Plain output when asked, in CI, or when stdout is not a terminal."""
    return quiet or bool(os.environ.get("CI")) or not sys.stdout.isatty()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where a command is (see :func:`run_command`): exit 143, as the shell's."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_exception():
    """A CI timeout or `docker stop` sends SIGTERM: while a command works it is raised as Ctrl-C
    is, so its clean-ups run (temporary files removed, an export's previous output left whole).
    Outside (argument parsing, teardown) the default stands: there is nothing to clean up."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(action: Callable[[], Any]) -> Any:
    """The one error boundary: user errors become one line on stderr and their exit code.

    ``ODEXPORT_DEBUG=1`` re-raises so the traceback is shown.
    """
    from odexport._files import removing_created_folders_on_failure

    debug = os.environ.get("ODEXPORT_DEBUG") == "1"
    try:
        with _sigterm_as_exception(), removing_created_folders_on_failure():
            return action()
    except typer.Exit:
        raise
    except OdexportError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except Terminated:
        err_console.print("terminated (SIGTERM)")
        raise typer.Exit(143) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug: one line, and how to see more
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} -- this is a bug in odexport; "
            "rerun with ODEXPORT_DEBUG=1 for the traceback and report it",
            markup=True,
            highlight=False,
        )
        raise typer.Exit(1) from None


PIPED_TABLE_WIDTH = 160


def print_wide(table: Any) -> None:
    """Print a rich Table; piped or in a CI log with 160 columns, where rich would otherwise squeeze
    it into 80 and wrap its cells mid-value."""
    if console.is_terminal:
        console.print(table, soft_wrap=False)  # its title wraps at the terminal's width too
    else:
        Console(width=max(console.width, PIPED_TABLE_WIDTH), highlight=False, soft_wrap=True).print(table)


def print_table(build: Callable[[tuple[str, ...]], Any], columns: tuple[str, ...], compact: tuple[str, ...]) -> None:
    """Print the rich Table ``build(columns)`` (see :func:`print_wide`); on a terminal too narrow
    for it, ``build(compact)`` instead, with a line naming the columns left out, so that no number
    is broken across lines."""
    table = build(columns)
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum  # unclamped by the terminal
    if not console.is_terminal or natural <= console.width:
        print_wide(table)
        return
    console.print(build(compact), soft_wrap=False)
    left_out = ", ".join(column for column in columns if column not in compact)
    console.print(f"({left_out} left out to fit {console.width} columns: widen the terminal, or use --json)", style="dim", markup=False,
                  soft_wrap=False)  # wrapped on words at the terminal's width, like the table


def print_json(obj: Any) -> None:
    """One machine-readable JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def print_load_notes(console, notes) -> None:
    """One ``note`` line per thing loading chose or ignored (``CheckpointInfo.warnings``, e.g. the
    backbone of a detection checkpoint): commands that load a checkpoint never do so silently."""
    for note in notes:
        console.print(f"note  {note}", markup=False, highlight=False)


@contextlib.contextmanager
def stages(quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """Progress for long work: ``with stages() as stage: stage("load"); ...``.

    On a terminal a rich spinner shows the current stage; with ``--quiet``, in CI or when piped,
    each stage is one plain line on stderr (or nothing with ``--quiet``).
    """
    if is_quiet(quiet):
        def plain(name: str) -> None:
            if not quiet:
                err_console.print(f"-- {name}", markup=False, highlight=False)
        yield plain
        return
    with err_console.status("starting") as status:
        def rich_stage(name: str) -> None:
            status.update(f"[bold]{name}[/]")
        yield rich_stage
