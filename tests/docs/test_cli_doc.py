"""docs/cli.md documents every command and every option the CLI has (read from the real --help)."""

from __future__ import annotations

import re

import pytest

from tests.docs.cli_reference import CLI_DOC, COMMANDS, parse_help, render_help


def _section(text: str, command: str) -> str:
    match = re.search(rf"^## odexport {command}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"docs/cli.md has no section for `odexport {command}`"
    return match.group(1)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_is_documented(command):
    text = CLI_DOC.read_text(encoding="utf-8")
    section = _section(text, command)
    help_ = parse_help(command, render_help([command, "--help"]))
    assert help_.options, f"could not parse the options of `odexport {command} --help`"
    assert not help_.unparsed, f"rows of `odexport {command} --help` the parser does not read: {help_.unparsed}"
    missing = [name for opt in help_.options for name in opt.names if f"`{name}`" not in section]
    missing += [arg.names[0] for arg in help_.arguments if f"`{arg.names[0]}`" not in section]
    assert not missing, (
        f"docs/cli.md does not document {missing} of `odexport {command}`; "
        "run `python -m tests.docs.cli_reference --write`"
    )


def test_exit_codes_are_documented():
    text = CLI_DOC.read_text(encoding="utf-8")
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |"):
        assert code in text
