"""Tiny real ONNX files for the TensorRT-free engine tests (built with onnx.helper, checked by onnx.checker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from odexport.runtime.ort_optimize import HAND_BUILT_IR_VERSION


def conv_model(path: Path, dims=("batch", 3, 8, 8), *, fp16: bool = False, out_channels: int = 4, metadata=None) -> Path:
    """``input`` -> Conv 3x3 (pad 1) -> Relu -> ``output``; with ``fp16`` the conv runs in float16 between Casts."""
    channels = dims[1] if isinstance(dims[1], int) else 3
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((out_channels, channels, 3, 3)).astype(np.float16 if fp16 else np.float32)
    nodes = []
    conv_in = "input"
    if fp16:
        nodes.append(helper.make_node("Cast", ["input"], ["input_fp16"], to=TensorProto.FLOAT16, name="cast_in"))
        conv_in = "input_fp16"
    nodes.append(helper.make_node("Conv", [conv_in, "weight"], ["conv"], pads=[1, 1, 1, 1], name="conv0"))
    relu_out = "relu16" if fp16 else "output"
    nodes.append(helper.make_node("Relu", ["conv"], [relu_out], name="relu0"))
    if fp16:
        nodes.append(helper.make_node("Cast", ["relu16"], ["output"], to=TensorProto.FLOAT, name="cast_out"))
    out_dims = (dims[0], out_channels, *dims[2:])
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out_dims))],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=HAND_BUILT_IR_VERSION)
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def two_input_model(path: Path) -> Path:
    """``a`` + ``b`` -> ``sum``, both ``(batch, 4)``."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"], name="add0")],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("a", "b")],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=HAND_BUILT_IR_VERSION)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def custom_op_model(path: Path, *, fp16_in_function: bool = False) -> Path:
    """A ``com.odexport::ODConv2d`` node with a model-local function body (Relu, or Cast->Relu->Cast)."""
    if fp16_in_function:
        body = [
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("Relu", ["x16"], ["y16"]),
            helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
        ]
    else:
        body = [helper.make_node("Relu", ["x"], ["y"])]
    function = helper.make_function("com.odexport", "ODConv2d", ["x"], ["y"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("ODConv2d", ["input"], ["output"], domain="com.odexport", name="layer1.conv")],
        "custom",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 8, 8])],
    )
    model = helper.make_model(graph, functions=[function],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.odexport", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
