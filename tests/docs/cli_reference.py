"""Generate ``docs/cli.md`` from the real ``--help`` of every command.

Each ``odexport CMD --help`` is rendered in a subprocess on a very wide terminal without colour, so
every option is one row of its panel; the rows are parsed into tables.  ``tests/docs/test_cli_doc.py``
checks that every command and option the CLI has is documented in ``docs/cli.md``.

Regenerate after changing a command::

    python -m tests.docs.cli_reference --write
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI_DOC = REPO / "docs" / "cli.md"
COMMANDS = ("inspect", "run", "reparam", "onnx", "ort", "trt", "check", "bench", "doctor")

_TYPE = r"<[^>]+>(?:\s+\[[^\]]*\])?"
# Some Typer/Rich versions join an option's long names with a comma ("--input,--inputs"), and some
# print no type for a flag ("--json   Print one JSON object"): the type is optional, and without it
# the help starts after two spaces.
_OPTION_ROW = re.compile(
    rf"^(?P<req>\*)?\s*(?P<names>-[\w-]+(?:(?:,|\s+)-[\w-]+)*)(?:\s+(?P<type>{_TYPE})\s*|\s\s+|\s*$)(?P<help>.*)$"
)
_ARGUMENT_ROW = re.compile(rf"^(?P<req>\*)?\s*(?P<name>[\w.]+(?:\.\.\.)?)\s+(?P<type>{_TYPE})\s*(?P<help>.*)$")
_DEFAULT = re.compile(r"\s*\[default: (?P<value>[^\]]*)\]")
_REQUIRED = re.compile(r"\s*\[required\]")


@dataclass
class Param:
    names: list[str]
    type: str
    help: str
    required: bool = False
    default: str | None = None


@dataclass
class CommandHelp:
    name: str
    usage: str
    description: list[str]
    arguments: list[Param] = field(default_factory=list)
    options: list[Param] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)  # option-like rows no regex matched


def render_help(args: list[str]) -> str:
    """The text ``odexport ARGS`` prints (a fresh interpreter, 1000 columns, no colour)."""
    env = dict(os.environ, COLUMNS="1000", NO_COLOR="1", TERM="dumb")
    env.pop("FORCE_COLOR", None)
    code = "import sys; from odexport.cli.app import app; sys.argv = ['odexport'] + sys.argv[1:]; app()"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"odexport {' '.join(args)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return proc.stdout


def _finish(param: Param) -> Param:
    text = param.help
    match = _DEFAULT.search(text)
    if match:
        param.default = match.group("value")
        text = _DEFAULT.sub("", text)
    if _REQUIRED.search(text):
        param.required = True
        text = _REQUIRED.sub("", text)
    param.help = " ".join(text.split())
    return param


def parse_help(name: str, text: str) -> CommandHelp:
    lines = [line.rstrip() for line in text.splitlines()]
    usage, description, panels = "", [], {}
    panel: str | None = None
    for raw in lines:
        line = raw.strip()
        if line.startswith("Usage:"):
            usage = line[len("Usage:"):].strip()
        elif line.startswith("╭"):
            panel = line.strip("╭─╮ ").split("─")[0].strip()
            panels[panel] = []
        elif line.startswith("╰"):
            panel = None
        elif panel is not None:
            panels[panel].append(line.strip("│").strip())
        elif usage and not panels:
            description.append(line)
    cmd = CommandHelp(name, usage, _paragraphs(description))
    for title, rows in panels.items():
        target = cmd.arguments if title == "Arguments" else cmd.options
        regex = _ARGUMENT_ROW if title == "Arguments" else _OPTION_ROW
        current: Param | None = None
        for row in rows:
            match = regex.match(row)
            if match:
                if current:
                    target.append(_finish(current))
                names = [match.group("name")] if title == "Arguments" else re.split(r"[\s,]+", match.group("names"))
                current = Param(names, match.group("type") or "<bool>", match.group("help"), bool(match.group("req")))
            elif title != "Arguments" and row.lstrip("* ").startswith("-"):
                cmd.unparsed.append(row)
            elif current and row:
                current.help += " " + row
        if current:
            target.append(_finish(current))
    return cmd


def _paragraphs(lines: list[str]) -> list[str]:
    paragraphs, current = [], []
    for line in lines + [""]:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return paragraphs


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _option_names(param: Param) -> str:
    return ", ".join(f"`{n}`" for n in param.names)


def render_markdown(root: CommandHelp, commands: list[CommandHelp]) -> str:
    out = [
        "# Command-line reference",
        "",
        "<!-- Generated from the real `--help` of every command by `python -m tests.docs.cli_reference --write`;",
        "     tests/docs/test_cli_doc.py fails when a command or option is missing. Do not edit by hand. -->",
        "",
        "`odexport` is a thin shell over the library (`odexport.pipeline`); every command below has a",
        "library equivalent. Progress goes to stderr (a spinner on a terminal, plain lines in CI or when",
        "piped, nothing with `--quiet`); `--json` prints exactly one JSON object on stdout.",
        "`python -m odexport` runs the same commands where the `odexport` script is not on PATH.",
        "",
    ]
    out += [f"{p}" for p in root.description] + [""]
    out += [
        "## Exit codes",
        "",
        "| code | meaning |",
        "| --- | --- |",
        "| 0 | success |",
        "| 1 | usage or input error: bad file, unknown architecture, shape mismatch, bad option value |",
        "| 2 | parity failure: a check ran and the numbers are outside tolerance |",
        "| 3 | missing optional dependency or hardware (TensorRT, CUDA, matplotlib) |",
        "| 130 | interrupted (Ctrl-C): the command stopped and cleaned up, nothing half-written is left |",
        "| 143 | terminated (SIGTERM, e.g. a CI timeout or `docker stop`): stopped and cleaned up as for 130 |",
        "",
        "Every error is one line on stderr, `error: <problem> -- <fix>`, without a traceback (set",
        "`ODEXPORT_DEBUG=1` to see one), and no output file is left half-written. Every message is listed",
        "with its cause and fix in [troubleshooting.md](troubleshooting.md).",
        "",
        "When whatever reads its output stops early (`odexport inspect m.pt | head -1`), odexport ends",
        "as any Unix tool does there, by SIGPIPE (the shell's status 141), never with one of the codes",
        "above.",
        "",
        "## Commands",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for cmd in commands:
        out.append(f"| [`{cmd.name}`](#odexport-{cmd.name}) | {_md(cmd.description[0] if cmd.description else '')} |")
    out += ["", "Global options: `odexport --version`, `odexport --help`.", ""]
    for cmd in commands:
        out += [f"## odexport {cmd.name}", "", "```text", f"odexport {cmd.usage.split(' ', 1)[1] if ' ' in cmd.usage else ''}".rstrip(), "```", ""]
        out += [p for para in cmd.description for p in (para, "")]
        if cmd.arguments:
            out += ["| argument | type | description |", "| --- | --- | --- |"]
            for arg in cmd.arguments:
                req = " (required)" if arg.required else ""
                out.append(f"| `{arg.names[0]}`{req} | `{_md(arg.type)}` | {_md(arg.help)} |")
            out.append("")
        if cmd.options:
            out += ["| option | type | default | description |", "| --- | --- | --- | --- |"]
            for opt in cmd.options:
                req = " (required)" if opt.required else ""
                default = f"`{_md(opt.default)}`" if opt.default is not None else ""
                out.append(f"| {_option_names(opt)}{req} | `{_md(opt.type)}` | {default} | {_md(opt.help)} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def collect() -> tuple[CommandHelp, list[CommandHelp]]:
    root = parse_help("odexport", render_help(["--help"]))
    return root, [parse_help(name, render_help([name, "--help"])) for name in COMMANDS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {CLI_DOC.relative_to(REPO)}")
    args = parser.parse_args()
    text = render_markdown(*collect())
    if args.write:
        CLI_DOC.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
