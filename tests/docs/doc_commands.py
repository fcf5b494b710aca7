"""Find every ``odexport ...`` command shown in README.md and docs/*.md, and the workspace to run them in.

Commands are taken from fenced code blocks:

* ``bash``/``sh``/``shell``/untagged blocks: every line (``\\`` continues a line, ``&&`` separates
  commands, ``# ...`` ends it);
* ``console`` blocks: only lines that start with ``$ `` (the rest is the output shown);
* ``yaml`` blocks (CI recipes): lines whose text starts with ``odexport``.

Only the ``odexport`` commands among them are kept.  A trailing comment ``# exit N`` says that the
command is *expected* to exit with code N (an example of an error).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", REPO / "samples" / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
_EXIT = re.compile(r"#\s*exit\s+(\d+)\b")
SHELL_LANGS = {"", "bash", "sh", "shell", "zsh"}


@dataclass(frozen=True)
class DocCommand:
    doc: str  # path relative to the repository
    line: int  # 1-based line of the command's first line
    text: str  # the command as shown (continuations joined, comment removed)
    expected_exit: int | None  # from a "# exit N" comment
    part: int = 0  # index among the commands joined by && on that line

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}" + (f"+{self.part}" if self.part else "")

    def argv(self) -> list[str]:
        """Arguments after ``odexport`` (a ``> FILE`` redirect is kept as the last two)."""
        args = shlex.split(self.text)
        if not args or args[0] != "odexport":
            raise ValueError(f"not an odexport command: {self.text}")
        return args[1:]


def _strip_comment(line: str) -> tuple[str, int | None]:
    """Remove a shell comment (outside quotes); return the text and a ``# exit N`` code."""
    in_single = in_double = False
    for i, ch in enumerate(line):
        if ch == "'" and not in_double:
            in_single = not in_single
        elif ch == '"' and not in_single:
            in_double = not in_double
        elif ch == "#" and not in_single and not in_double and (i == 0 or line[i - 1].isspace()):
            match = _EXIT.match(line[i:])
            return line[:i].rstrip(), int(match.group(1)) if match else None
    return line.rstrip(), None


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str, int | None]]:
    out, buffer, start, code = [], "", None, None
    for lineno, raw in lines:
        text, exit_code = _strip_comment(raw)
        code = exit_code if exit_code is not None else code
        if start is None:
            start = lineno
        if text.endswith("\\"):
            buffer += text[:-1].strip() + " "
            continue
        buffer += text.strip()
        if buffer.strip():
            out.append((start, buffer.strip(), code))
        buffer, start, code = "", None, None
    return out


def commands_in(path: Path) -> list[DocCommand]:
    rel = path.relative_to(REPO).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    commands: list[DocCommand] = []
    block: list[tuple[int, str]] | None = None
    lang = ""
    for lineno, line in enumerate(lines, start=1):
        fence = _FENCE.match(line)
        if fence:
            if block is None:
                block, lang = [], fence.group(3).lower()
                continue
            commands += _commands_of_block(rel, lang, block)
            block = None
            continue
        if block is not None:
            block.append((lineno, line))
    return commands


def _commands_of_block(rel: str, lang: str, block: list[tuple[int, str]]) -> list[DocCommand]:
    if lang == "console":
        picked, continuing = [], False
        for lineno, line in block:
            stripped = line.strip()
            if stripped.startswith("$ "):
                picked.append((lineno, stripped[2:]))
                continuing = stripped.endswith("\\")
            elif continuing:
                picked.append((lineno, stripped))
                continuing = stripped.endswith("\\")
        logical = _logical_lines(picked)
    elif lang in ("yaml", "yml"):
        picked, continuing = [], False
        for lineno, line in block:
            stripped = line.strip()
            if stripped.startswith("odexport ") or continuing:
                picked.append((lineno, stripped))
                continuing = stripped.endswith("\\")
        logical = _logical_lines(picked)
    elif lang in SHELL_LANGS:
        logical = _logical_lines(block)
    else:
        return []
    found = []
    for lineno, text, code in logical:
        parts = [p.strip() for p in text.split("&&")]
        odexport_parts = [p for p in parts if p.startswith("odexport ") or p == "odexport"]
        for index, part in enumerate(odexport_parts):
            found.append(DocCommand(rel, lineno, part, code, index))
    return found


def all_commands() -> list[DocCommand]:
    return [cmd for path in DOC_FILES for cmd in commands_in(path)]


def setup_commands_in_readme() -> tuple[str, str]:
    """The two set-up commands: the line two lines after each README marker (as .ci/run reads it)."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    found = {}
    for marker in ("<!-- sample-command -->", "<!-- test-command -->"):
        index = lines.index(marker)
        found[marker] = lines[index + 2]
    return found["<!-- sample-command -->"], found["<!-- test-command -->"]


# Docs whose ```python blocks are complete programs (run by the tests); other docs show API sketches.
RUNNABLE_PYTHON_DOCS = ("README.md", "docs/quickstart.md")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(first line, code)`` of every ```python block in ``path``."""
    blocks, current, start, in_python = [], [], 0, False
    in_block = False
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = _FENCE.match(line)
        if fence and not in_block:
            in_block, in_python, current, start = True, fence.group(3).lower() == "python", [], lineno + 1
            continue
        if fence and in_block:
            if in_python:
                blocks.append((start, "\n".join(current)))
            in_block = in_python = False
            continue
        if in_block:
            current.append(line)
    return blocks
