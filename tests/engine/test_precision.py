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


def test_a_tensorrt_without_fp16_flag_is_strongly_typed_whatever_its_version_says():
    plan = plan_precision("10.99", fp16=True, onnx_precision="mixed", has_fp16_flag=False)
    assert plan.strongly_typed and not plan.fp16_builder_flag


def test_tf32_is_off_unless_asked():
    assert plan_precision("10.13", False, "fp32").tf32 is False
    assert plan_precision("10.13", False, "fp32", tf32=True).tf32 is True


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
