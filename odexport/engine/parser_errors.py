"""Every ONNX-parser error as one readable line with the node's index, name and operator.

``trt.OnnxParser`` collects errors as ``ParserError`` objects (``code()``, ``desc()``, ``node()``,
and from TensorRT 10 ``node_name()``, ``node_operator()`` and ``local_function_stack()`` for errors
inside an ONNX function body).  :func:`issues_from_parser` copies them into plain
:class:`ParserIssue` records (reading only the accessors this TensorRT has), and the node names are
completed from the ONNX file itself when the parser leaves them empty.  :func:`format_parser_issues`
renders all of them, with a hint for the failures odexport's own forms can run into.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from odexport.errors import ExportError

#: odexport's custom-op node types (form "custom"): one node per dynamic conv with a function body
CUSTOM_OP_TYPES = ("ODConv2d", "DynamicConv2d", "DyConv2d")


@dataclass(frozen=True)
class ParserIssue:
    """One ONNX-parser error, TensorRT-free."""

    code: str
    description: str
    node_index: int = -1  # -1: not tied to a node (e.g. the file could not be read)
    node_name: str = ""
    node_operator: str = ""
    local_functions: tuple[str, ...] = ()  # ONNX functions the failing node sits in, outermost first
    source: str = ""  # "file:line (function)" inside the parser, for a bug report

    def where(self) -> str:
        if self.node_index < 0 and not self.node_name:
            return "model"
        parts = [f"node {self.node_index}" if self.node_index >= 0 else "node"]
        if self.node_name:
            parts.append(f"'{self.node_name}'")
        if self.node_operator:
            parts.append(f"({self.node_operator})")
        text = " ".join(parts)
        if self.local_functions:
            text += " in function " + " > ".join(self.local_functions)
        return text


def issues_from_parser(parser) -> list[ParserIssue]:
    """Copy ``parser.get_error(i)`` for every ``i < parser.num_errors`` into :class:`ParserIssue` records."""
    issues = []
    for index in range(int(parser.num_errors)):
        error = parser.get_error(index)
        issues.append(
            ParserIssue(
                code=_call(error, "code", "UNKNOWN", str).split(".")[-1],
                description=_call(error, "desc", "", str).strip(),
                node_index=_call(error, "node", -1, int),
                node_name=_call(error, "node_name", "", str),
                node_operator=_call(error, "node_operator", "", str),
                local_functions=tuple(_call(error, "local_function_stack", (), lambda v: tuple(str(s) for s in v))),
                source=_source(error),
            )
        )
    return issues


def complete_node_names(issues: list[ParserIssue], onnx_path: str | Path) -> list[ParserIssue]:
    """Fill empty node names/operators from the ONNX graph (top-level errors only, by node index)."""
    if not any(i.node_index >= 0 and not i.local_functions and not (i.node_name and i.node_operator) for i in issues):
        return issues
    try:
        nodes = onnx_nodes(onnx_path)
    except Exception:  # the names are a courtesy; never hide the parser's own error behind ours
        return issues
    completed = []
    for issue in issues:
        if 0 <= issue.node_index < len(nodes) and not issue.local_functions:
            name, op = nodes[issue.node_index]
            issue = ParserIssue(issue.code, issue.description, issue.node_index, issue.node_name or name,
                                issue.node_operator or op, issue.local_functions, issue.source)
        completed.append(issue)
    return completed


def onnx_nodes(onnx_path: str | Path) -> list[tuple[str, str]]:
    """``(name, "domain::op_type" or "op_type")`` of every top-level node, in graph order (the parser's index)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [(n.name, f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in model.graph.node]


def format_parser_issues(issues: list[ParserIssue], onnx_name: str = "the ONNX model") -> str:
    """One block: a headline, then one line per error (``node 12 'name' (Op): CODE: description``)."""
    lines = [f"TensorRT's ONNX parser rejected {onnx_name} with {len(issues)} error{'s' if len(issues) != 1 else ''}:"]
    for issue in issues:
        lines.append(f"  {issue.where()}: {issue.code}: {issue.description}")
    return "\n".join(lines)


def parser_error(issues: list[ParserIssue], onnx_path: str | Path) -> ExportError:
    """The :class:`ExportError` a failed parse raises: every issue, and the fix that fits them."""
    name = Path(onnx_path).name
    if not issues:
        return ExportError(
            f"TensorRT's ONNX parser could not read {name} and reported no error",
            "check the file with `python -c \"import onnx; onnx.checker.check_model('" + str(onnx_path) + "', full_check=True)\"`",
        )
    return ExportError(format_parser_issues(issues, name), _hint(issues))


def _hint(issues: list[ParserIssue]) -> str:
    text = " ".join(f"{i.node_operator} {i.description}" for i in issues)
    if any(op in text for op in CUSTOM_OP_TYPES) and ("plugin" in text.lower() or "function" in text.lower()):
        return ("this ONNX uses the custom-op form; without --plugin the parser inlines its function body, so re-export it "
                "with `odexport onnx CKPT --form decomposed`, or pass the plugin that implements the op with --plugin")
    # the standard Conv (a word, or TensorRT's IConvolutionLayer; not the "Conv" inside the custom
    # ops' ODConv2d / DyConv2d)
    if (re.search(r"(?<![A-Za-z])Conv(?![A-Za-z0-9])", text) or "ConvolutionLayer" in text) and (
            "group" in text.lower() or "kernel" in text.lower()):
        return ("the grouped form needs a fixed batch in TensorRT; re-export with `--form decomposed` for a dynamic batch, "
                "or with `--form grouped --batch N` and build with --profile N")
    if "opset" in text.lower() or "IR version" in text:
        return "re-export with an opset this TensorRT supports, e.g. `odexport onnx CKPT --opset 17`"
    return "re-export with `odexport onnx CKPT --form decomposed` (standard ops only), or report the node above with `odexport doctor --json`"


def _call(error, name: str, default, convert):
    method = getattr(error, name, None)
    if method is None:
        return default
    try:
        value = method()
    except Exception:
        return default
    try:
        return convert(value)
    except (TypeError, ValueError):
        return default


def _source(error) -> str:
    file, line, func = _call(error, "file", "", str), _call(error, "line", -1, int), _call(error, "func", "", str)
    if not file:
        return ""
    return f"{Path(file).name}:{line}" + (f" ({func})" if func else "")
