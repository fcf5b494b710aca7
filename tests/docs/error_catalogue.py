"""Every user-facing error odexport can raise, read from the source (no import of the package).

Each ``raise SomeError("message", "hint")`` of a :class:`odexport.errors.OdexportError` subclass is
found with :mod:`ast`; its message and hint templates are rendered with ``<name>`` for each
interpolated value.  ``docs/troubleshooting.md`` holds the generated catalogue between two markers;
``tests/docs/test_troubleshooting.py`` fails when a message is missing from it.

Regenerate the catalogue after changing or adding an error::

    python -m tests.docs.error_catalogue --write
"""

from __future__ import annotations

import argparse
import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "odexport"
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
START, END = "<!-- error-catalogue:start -->", "<!-- error-catalogue:end -->"

# class -> exit code (odexport/errors.py and the subclasses defined elsewhere)
EXIT_CODES = {
    "OdexportError": 1,
    "StoppedError": 130,
    "InputError": 1,
    "CheckpointError": 1,
    "ArchitectureError": 1,
    "ExportError": 1,
    "InferenceError": 1,
    "EngineCompatibilityError": 1,
    "ParityError": 2,
    "MissingDependencyError": 3,
}

# The stage each package belongs to, in pipeline order (the catalogue's sections).
STAGES = [
    ("checkpoint", "Loading checkpoints and inputs", ("odexport/checkpoint", "odexport/convert", "odexport/models", "odexport/layers", "odexport/analysis")),
    ("reparam", "Reparameterising (`odexport reparam`)", ("odexport/reparam",)),
    ("export", "Exporting to ONNX (`odexport onnx`)", ("odexport/export",)),
    ("runtime", "Running and comparing (`odexport run`, `check`, `bench`)", ("odexport/runtime", "odexport/report", "odexport/pipeline", "odexport/_memory")),
    ("tensorrt", "TensorRT (`odexport trt`, engines)", ("odexport/engine",)),
    ("cli", "Command-line options", ("odexport/cli",)),
    ("other", "Optional dependencies and the rest", ("odexport",)),
]


@dataclass(frozen=True)
class ErrorSite:
    path: str  # relative to the repository, e.g. odexport/checkpoint/reader.py
    line: int
    cls: str
    message: str  # rendered template
    hint: str | None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.cls]

    @property
    def stage(self) -> str:
        for key, _, prefixes in STAGES:
            if any(self.path.startswith(p) for p in prefixes):
                return key
        return "other"


def _placeholder(expr: ast.expr) -> str:
    """``<name>`` for an interpolated value: the last plain name in the expression."""
    if isinstance(expr, ast.Name):
        return f"<{expr.id.strip('_')}>"
    if isinstance(expr, ast.Attribute):
        return f"<{expr.attr.strip('_')}>"
    if isinstance(expr, ast.Call):
        if isinstance(expr.func, ast.Name) and expr.func.id in ("len",) and expr.args:
            return "<N>"
        if expr.args:
            return _placeholder(expr.args[0])
        return _placeholder(expr.func)
    if isinstance(expr, ast.Subscript):
        return _placeholder(expr.value)
    if isinstance(expr, ast.BinOp):
        return _placeholder(expr.left)
    return "<...>"


def _render(node: ast.expr | None, constants: dict[str, str]) -> str | None:
    """The text of a message/hint template, or None if it is not a string expression."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                inner = value.value
                if isinstance(inner, ast.Name) and inner.id in constants:
                    parts.append(constants[inner.id])
                else:
                    parts.append(_placeholder(inner))
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _render(node.left, constants), _render(node.right, constants)
        return (left if left is not None else _placeholder(node.left)) + (right if right is not None else _placeholder(node.right))
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    if isinstance(node, ast.IfExp):
        body, other = _render(node.body, constants), _render(node.orelse, constants)
        if body is not None and other is not None:
            return f"{body} / {other}"
    return _placeholder(node)


def _module_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` (and f-strings of such), used as shared hints."""
    constants: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            text = _render(stmt.value, constants)
            if text is not None and not (text.startswith("<") and text.endswith(">")):
                constants[stmt.targets[0].id] = text
    return constants


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def collect(package: Path = PACKAGE) -> list[ErrorSite]:
    sites = []
    # hints shared by several modules live in errors.py and are imported by name
    shared = _module_constants(ast.parse((package / "errors.py").read_text(encoding="utf-8")))
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = {**shared, **_module_constants(tree)}
        rel = path.relative_to(package.parent).as_posix()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or _call_name(node) not in EXIT_CODES:
                continue
            if rel == "odexport/errors.py":
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            message_node = node.args[0] if node.args else keywords.get("message")
            hint_node = node.args[1] if len(node.args) > 1 else keywords.get("hint")
            message = _render(message_node, constants)
            if message is None:
                continue
            sites.append(ErrorSite(rel, node.lineno, _call_name(node), message, _render(hint_node, constants)))
    return sites


def normalise(text: str) -> str:
    """Whitespace-insensitive form used to find a message in the docs."""
    return re.sub(r"\s+", " ", text).strip()


def _cell(text: str | None) -> str:
    if text is None:
        return ""
    if text.startswith("<") and text.endswith(">") and " " not in text:
        return "(depends on the case; printed after the message)"
    return normalise(text).replace("|", "\\|").replace("`", "'")


def render_catalogue(sites: list[ErrorSite]) -> str:
    lines = [START, ""]
    by_stage: dict[str, list[ErrorSite]] = {}
    for site in sites:
        by_stage.setdefault(site.stage, []).append(site)
    for key, title, _ in STAGES:
        entries = by_stage.get(key)
        if not entries:
            continue
        lines += [f"### {title}", "", "| exit | message | fix printed with it | raised in |", "| --- | --- | --- | --- |"]
        seen = set()
        for site in sorted(entries, key=lambda s: (s.path, s.line)):
            row = (site.exit_code, _cell(site.message), _cell(site.hint), site.path)
            if row in seen:
                continue
            seen.add(row)
            lines.append(f"| {row[0]} | `{row[1]}` | {row[2]} | `{row[3]}` |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def current_catalogue(text: str) -> str | None:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0:
        return None
    return text[start:end + len(END)]


def write(path: Path = TROUBLESHOOTING) -> None:
    text = path.read_text(encoding="utf-8")
    old = current_catalogue(text)
    if old is None:
        raise SystemExit(f"{path} has no {START} ... {END} section")
    path.write_text(text.replace(old, render_catalogue(collect())), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the catalogue in {TROUBLESHOOTING.relative_to(REPO)}")
    args = parser.parse_args()
    if args.write:
        write()
    else:
        print(render_catalogue(collect()))


if __name__ == "__main__":
    main()
