"""`odexport --help` and every command's `--help` are complete and never import torch.

Run in a fresh interpreter (a subprocess), because the test session itself has torch imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

COMMANDS = ("inspect", "run", "reparam", "onnx", "ort", "trt", "check", "bench", "doctor")

# Runs the CLI in-process on argv and reports which heavy modules got imported.
_PROBE = r"""
import json, sys
sys.argv = ["odexport"] + json.loads(sys.argv[1])
from odexport.cli.app import app
code = 0
try:
    app(standalone_mode=False)
except SystemExit as exc:
    code = exc.code or 0
heavy = sorted(m for m in ("torch", "onnx", "onnxruntime", "onnxscript", "tensorrt", "numpy") if m in sys.modules)
sys.stderr.write("\n" + json.dumps({"code": code, "heavy": heavy}) + "\n")
"""


def _help(args: list[str]) -> tuple[str, dict]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args)],
        capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": "", "NO_COLOR": "1"},
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return proc.stdout, report


def _registered_commands() -> list[str]:
    from odexport.cli.app import app

    return sorted(cmd.name or cmd.callback.__name__ for cmd in app.registered_commands)


def test_every_planned_command_is_registered():
    assert sorted(COMMANDS) == _registered_commands()


def test_root_help_lists_every_command_without_importing_torch():
    out, report = _help(["--help"])
    assert report["code"] == 0
    assert report["heavy"] == [], f"`odexport --help` imported {report['heavy']}"
    for command in COMMANDS:
        assert command in out
    assert "Exit codes" in out


def test_python_dash_m_runs_the_cli_under_its_own_name():
    """`python -m odexport` where the script is not on PATH; usage lines still say `odexport`."""
    version = subprocess.run([sys.executable, "-m", "odexport", "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip().startswith("odexport "), version
    usage = subprocess.run([sys.executable, "-m", "odexport", "onnx", "--help"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and "Usage: odexport onnx" in usage.stdout, usage.stdout[:300]
    missing = subprocess.run([sys.executable, "-m", "odexport", "onnx", "/nonexistent/model.pt"], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    imported = subprocess.run([sys.executable, "-c", "import odexport.__main__; print('imported')"], capture_output=True, text=True,
                              timeout=120)
    assert imported.stdout.strip() == "imported"  # importing it (pydoc, module walkers) does not run the CLI


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_is_complete_and_light(command):
    out, report = _help([command, "--help"])
    assert report["code"] == 0
    assert report["heavy"] == [], f"`odexport {command} --help` imported {report['heavy']}"
    assert f"Usage: odexport {command}" in out
    assert "--help" in out
    # Every option has a help text: typer prints the option, its type and then the help; an option
    # line that ends right after the type has none.
    from odexport.cli.app import app
    import typer.main

    click_command = typer.main.get_command(app).commands[command]
    for param in click_command.params:
        if param.param_type_name == "option" and param.name != "help":
            assert param.help, f"odexport {command} {param.opts[0]} has no help text"


@pytest.mark.parametrize("command", COMMANDS)
def test_command_description_is_not_hard_wrapped(command):
    """Typer (rich markup mode) keeps a docstring's single line breaks, so a paragraph wrapped in the
    source comes out ragged at every terminal width: each paragraph must be one line."""
    import inspect

    from odexport.cli.app import app

    info = next(c for c in app.registered_commands if (c.name or c.callback.__name__) == command)
    paragraphs = inspect.cleandoc(info.help or info.callback.__doc__ or "").split("\n\n")
    wrapped = [p for p in paragraphs if "\n" in p]
    assert not wrapped, f"odexport {command}: paragraph wrapped in the source: {wrapped[0][:80]!r}"
