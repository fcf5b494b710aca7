"""Typing mode and precision flags per TensorRT version, and reading an ONNX's precision (no TensorRT)."""

from __future__ import annotations

import pytest

from odexport.engine.precision import onnx_precision, parse_version, plan_precision, version_at_least
from odexport.errors import InputError, MissingDependencyError
from tests.engine._onnx import conv_model, custom_op_model


def test_parse_version():
    assert parse_version("10.13.0.35") == (10, 13, 0, 35)
    assert parse_version("11.0.0rc1") == (11, 0, 0)
    assert parse_version("10.8") == (10, 8)
    assert version_at_least("10.12.0.36", (10, 12))
    assert version_at_least("11.0.0", (10, 15))
    assert not version_at_least("10.11.0.33", (10, 12))
    assert version_at_least("10", (10, 0))
    with pytest.raises(InputError):
        parse_version("unknown")


@pytest.mark.parametrize("version", ["10.12.0.36", "10.15.1.29", "11.0.0.1", "11.4.0"])
def test_fp16_on_strongly_typed_versions_uses_the_mixed_onnx(version):
    plan = plan_precision(version, fp16=True, onnx_precision="mixed")
    assert plan.precision == "fp16" and plan.strongly_typed
    assert not plan.fp16_builder_flag  # TensorRT 11 has no BuilderFlag.FP16; 10.12+ does not need it


@pytest.mark.parametrize("version", ["10.12.0.36", "11.0.0.1"])
def test_fp16_with_an_fp32_onnx_on_strongly_typed_versions_is_an_error(version):
    with pytest.raises(InputError) as info:
        plan_precision(version, fp16=True, onnx_precision="fp32", onnx_name="model.onnx")
    text = str(info.value)
    assert "model.onnx is fp32" in text and "odexport onnx CKPT --fp16" in text and "odexport trt CKPT --fp16" in text


@pytest.mark.parametrize("version", ["10.0.1.6", "10.8.0.43", "10.11.0.33"])
def test_older_10x_sets_the_fp16_builder_flag(version):
    for onnx_kind in ("mixed", "fp32"):
        plan = plan_precision(version, fp16=True, onnx_precision=onnx_kind)
        assert plan.precision == "fp16" and plan.fp16_builder_flag and not plan.strongly_typed
        assert any("weak" in n or "BuilderFlag.FP16" in n for n in plan.notes)


@pytest.mark.parametrize("version, strongly", [("10.8.0.43", False), ("10.12.0.36", True), ("11.0.0", True)])
def test_fp32_builds(version, strongly):
    plan = plan_precision(version, fp16=False, onnx_precision="fp32")
    assert plan.precision == "fp32" and plan.strongly_typed is strongly
    assert not plan.fp16_builder_flag and not plan.tf32


def test_a_mixed_onnx_builds_fp16_even_without_the_option():
    plan = plan_precision("10.13.0.35", fp16=False, onnx_precision="mixed", onnx_name="m_fp16.onnx")
    assert plan.precision == "fp16" and plan.strongly_typed
    assert any("m_fp16.onnx is mixed precision" in n for n in plan.notes)


@pytest.mark.parametrize("version", ["10.8", "10.99"])
def test_a_tensorrt_without_fp16_flag_is_strongly_typed_whatever_its_version_says(version):
    plan = plan_precision(version, fp16=True, onnx_precision="mixed", has_fp16_flag=False)
    assert plan.strongly_typed and not plan.fp16_builder_flag


def test_tf32_is_off_unless_asked():
    assert plan_precision("10.13", False, "fp32").tf32 is False
    assert plan_precision("10.13", False, "fp32", tf32=True).tf32 is True
    assert plan_precision("10.13", True, "mixed", tf32=True).tf32 is True  # the fp32 parts of a mixed build too


def test_tensorrt_8_is_unsupported():
    with pytest.raises(MissingDependencyError, match="TensorRT 8.6.1 is too old") as info:
        plan_precision("8.6.1", fp16=False, onnx_precision="fp32")
    assert info.value.exit_code == 3 and "odexport[trt]" in str(info.value)


def test_onnx_precision_reads_the_graph(tmp_path):
    assert onnx_precision(conv_model(tmp_path / "fp32.onnx")) == "fp32"
    assert onnx_precision(conv_model(tmp_path / "fp16.onnx", fp16=True)) == "mixed"


def test_onnx_precision_looks_inside_function_bodies(tmp_path):
    assert onnx_precision(custom_op_model(tmp_path / "c32.onnx")) == "fp32"
    assert onnx_precision(custom_op_model(tmp_path / "c16.onnx", fp16_in_function=True)) == "mixed"


def test_onnx_precision_finds_fp16_in_constants_and_subgraphs(tmp_path):
    """fp16 only in a Constant node's value, or only in a Cast inside an If branch: still mixed."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def io(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])

    constant = helper.make_node("Constant", [], ["c16"], value=numpy_helper.from_array(np.ones((1,), np.float16)))
    graph = helper.make_graph([constant, helper.make_node("Cast", ["c16"], ["c32"], to=TensorProto.FLOAT),
                               helper.make_node("Add", ["x", "c32"], ["y"])], "g", [io("x")], [io("y")])
    onnx.save(helper.make_model(graph), tmp_path / "constant.onnx")
    assert onnx_precision(tmp_path / "constant.onnx") == "mixed"

    def branch(name, to):
        casts = [helper.make_node("Cast", ["x"], [f"{name}_h"], to=to), helper.make_node("Cast", [f"{name}_h"], [f"{name}_o"], to=TensorProto.FLOAT)]
        return helper.make_graph(casts, name, [], [io(f"{name}_o")])

    condition = helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(np.array(True)))
    switch = helper.make_node("If", ["b"], ["y"], then_branch=branch("t", TensorProto.FLOAT16), else_branch=branch("e", TensorProto.FLOAT))
    onnx.save(helper.make_model(helper.make_graph([condition, switch], "g", [io("x")], [io("y")])), tmp_path / "if.onnx")
    assert onnx_precision(tmp_path / "if.onnx") == "mixed"
