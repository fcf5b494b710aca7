"""The examples at the end of every command's --help name options that command has, and fit a
narrow terminal (a wrapped command cannot be copied)."""

from __future__ import annotations

import shlex

import pytest
import typer.main

from odexport.cli.app import app

COMMANDS = sorted(typer.main.get_command(app).commands.items())


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_example_uses_options_of_its_command(name, command):
    assert command.epilog and command.epilog.startswith("Examples:"), f"odexport {name} --help has no examples"
    options = {opt for param in command.params if param.param_type_name == "option" for opt in (*param.opts, *param.secondary_opts)}
    lines = command.epilog.splitlines()[1:]
    examples = [line for line in lines if not line.startswith("#")]
    assert examples and len(examples) == len(lines) - len(examples), "each example comes after one comment line"
    for line in lines:
        assert len(line) <= 78, f"{line!r} wraps on an 80-column terminal"
    for example in examples:
        words = shlex.split(example)
        assert words[:2] == ["odexport", name], example
        unknown = [word.split("=")[0] for word in words if word.startswith("-") and word.split("=")[0] not in options]
        assert not unknown, f"{example!r}: odexport {name} has no option {unknown}"
