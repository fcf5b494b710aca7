"""Parser errors rendered with node index, name and operator; names completed from the ONNX (no TensorRT).

The records are what :func:`issues_from_parser` copies out of ``trt.OnnxParser``; the completion
of missing node names reads the real ONNX file the parser was given.
"""

from __future__ import annotations

from odexport.engine.parser_errors import ParserIssue, complete_node_names, format_parser_issues, onnx_nodes, parser_error
from odexport.errors import ExportError
from tests.engine._onnx import conv_model, custom_op_model


def test_every_error_is_one_line_with_its_node():
    issues = [
        ParserIssue("UNSUPPORTED_NODE", "Assertion failed: group must be static", 7, "layer2.conv/Conv", "Conv"),
        ParserIssue("INVALID_NODE", "bad attribute", 12, "", "Softmax"),
        ParserIssue("MODEL_DESERIALIZE_FAILED", "cannot read file"),
    ]
    text = format_parser_issues(issues, "model.onnx")
    lines = text.splitlines()
    assert lines[0] == "TensorRT's ONNX parser rejected model.onnx with 3 errors:"
    assert lines[1] == "  node 7 'layer2.conv/Conv' (Conv): UNSUPPORTED_NODE: Assertion failed: group must be static"
    assert lines[2] == "  node 12 (Softmax): INVALID_NODE: bad attribute"
    assert lines[3] == "  model: MODEL_DESERIALIZE_FAILED: cannot read file"


def test_errors_inside_a_function_body_name_the_function():
    issue = ParserIssue("UNSUPPORTED_NODE", "no importer", 2, "n2", "Einsum", ("ODConv2d",))
    assert issue.where() == "node 2 'n2' (Einsum) in function ODConv2d"


def test_missing_node_names_come_from_the_onnx(tmp_path):
    path = conv_model(tmp_path / "m.onnx")
    assert onnx_nodes(path) == [("conv0", "Conv"), ("relu0", "Relu")]
    completed = complete_node_names([ParserIssue("UNSUPPORTED_NODE", "x", 1), ParserIssue("INTERNAL_ERROR", "y")], path)
    assert completed[0].node_name == "relu0" and completed[0].node_operator == "Relu"
    assert completed[1].node_name == ""  # not tied to a node: left as it was


def test_custom_domain_operators_are_qualified(tmp_path):
    path = custom_op_model(tmp_path / "c.onnx")
    assert onnx_nodes(path) == [("layer1.conv", "com.odexport::ODConv2d")]


def test_parser_error_hint_for_custom_ops(tmp_path):
    path = custom_op_model(tmp_path / "c.onnx")
    issues = complete_node_names([ParserIssue("UNSUPPORTED_NODE", "Plugin not found, are the plugin name, version, and namespace correct?", 0)], path)
    error = parser_error(issues, path)
    assert isinstance(error, ExportError) and error.exit_code == 1
    assert "node 0 'layer1.conv' (com.odexport::ODConv2d)" in str(error)
    assert "--form decomposed" in error.hint and "--plugin" in error.hint


def test_parser_error_without_errors_still_says_what_to_do(tmp_path):
    error = parser_error([], tmp_path / "m.onnx")
    assert "reported no error" in error.message and "onnx.checker" in error.hint


def test_completion_keeps_the_parsers_own_names_and_leaves_function_bodies_alone(tmp_path):
    """A node index inside a function body is not a top-level index: no name is borrowed for it;
    a name the parser gave wins over the ONNX's."""
    path = conv_model(tmp_path / "m.onnx")
    inside, named, bare = complete_node_names([ParserIssue("UNSUPPORTED_NODE", "a", 0, "", "", ("ODConv2d",)),
                                               ParserIssue("UNSUPPORTED_NODE", "b", 1, "parser_name", ""),
                                               ParserIssue("UNSUPPORTED_NODE", "c", 0)], path)
    assert (inside.node_name, inside.node_operator) == ("", "")
    assert (named.node_name, named.node_operator) == ("parser_name", "Relu")
    assert (bare.node_name, bare.node_operator) == ("conv0", "Conv")
    assert ParserIssue("X", "d", -1, "named").where() == "node 'named'"


def test_hints_fit_the_failure(tmp_path):
    """A custom op's own error is not the grouped Conv's ("Conv" inside "ODConv2d" is no Conv);
    a grouped Conv gets the fixed-batch hint; an IR version the parser lacks, the opset one."""
    custom = parser_error([ParserIssue("UNSUPPORTED_NODE", "unsupported kernel shape", 2, "c", "com.odexport::ODConv2d")], tmp_path / "m.onnx")
    assert "grouped form" not in custom.hint and "--form decomposed" in custom.hint
    grouped = parser_error([ParserIssue("UNSUPPORTED_NODE", "group must be static", 7, "layer2/Conv", "Conv")], tmp_path / "m.onnx")
    assert grouped.hint.startswith("the grouped form needs a fixed batch")
    layer = parser_error([ParserIssue("UNSUPPORTED_NODE", "IConvolutionLayer: kernel weights has count 432 but 144 was expected")],
                         tmp_path / "m.onnx")
    assert layer.hint.startswith("the grouped form needs a fixed batch")
    ir = parser_error([ParserIssue("INVALID_MODEL", "unsupported IR version 12")], tmp_path / "m.onnx")
    assert ir.hint.startswith("re-export with an opset this TensorRT supports")
