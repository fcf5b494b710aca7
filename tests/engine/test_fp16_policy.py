"""The ONNX that ``odexport trt --fp16`` builds from: which nodes are fp16, which fp32, and its parity.

Strongly typed TensorRT (>= 10.12, and 11 where weak typing is gone) computes every tensor in the
type the ONNX gives it, so the mixed-precision ONNX made by the export (``fp16=True``) *is* the
engine's precision policy.  Checked here on CPU, per node, on the exported files:

* the export engineer's own policy check (:func:`odexport.export.precision_violations`) passes;
* independently of the role labels the export writes: model inputs/outputs are fp32, every
  sigmoid/softmax and the convolution or matmul producing its logits compute in fp32, the stem
  convolution computes in fp16;
* the engine builder reads the file as mixed precision and plans a strongly typed fp16 build
  (a weakly typed build with the FP16 flag on TensorRT < 10.12);
* onnxruntime runs it at batch 1, 4 and 8 within 1e-2 (relative to the largest output) of fp32
  PyTorch.

Also: the exports fit the engine builder's input checks (input ``input`` with a symbolic batch, or
the grouped form's fixed batch, which accepts no other profile).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from odexport.engine.build import BuildOptions, check_build_inputs
from odexport.engine.precision import onnx_precision, plan_precision
from odexport.engine.profiles import BatchProfile
from odexport.export import onnx_export as export
from odexport.errors import InputError  # noqa: E402
from odexport.models import create_model  # noqa: E402

SAMPLE = (3, 32, 32)
CASES = [("od_resnet_tiny", "decomposed"), ("dy_resnet_tiny", "custom")]
# ops that pass a value through unchanged in precision (layout, scaling by a constant, bias)
PASS_THROUGH = {"Div", "Mul", "Add", "Sub", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}


def _model(name):
    torch.manual_seed(0)
    return create_model(name).eval()


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{f}" for n, f in CASES])
def exported(request, tmp_path_factory):
    name, form = request.param
    model = _model(name)
    path = tmp_path_factory.mktemp("fp16") / f"{name}_{form}_fp16.onnx"
    export.export_onnx(model, path, form=form, input_shape=SAMPLE, fp16=True, target="gpu", check=False)
    return name, model, path


def _typed_flat_graph(path):
    """The model with local functions inlined and every value's element type (by shape inference)."""
    import onnx.inliner

    model = onnx.load(str(path))
    flat = onnx.inliner.inline_local_functions(model) if len(model.functions) else model
    inferred = onnx.shape_inference.infer_shapes(flat, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return inferred, types


def _float_inputs(node, types):
    return [types.get(n) for n in node.input if n and types.get(n) in (TensorProto.FLOAT, TensorProto.FLOAT16)]


def test_the_exports_own_policy_check_passes(exported):
    from odexport.export.precision import precision_violations

    _, _, path = exported
    assert precision_violations(onnx.load(str(path))) == []


def test_attention_is_fp32_and_the_stem_conv_fp16(exported):
    _, _, path = exported
    graph, types = _typed_flat_graph(path)
    for value in (*graph.graph.input, *graph.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
    producers = {out: node for node in graph.graph.node for out in node.output}

    gates = [n for n in graph.graph.node if n.op_type in ("Softmax", "Sigmoid")]
    assert gates, "a dynamic-conv model has attention gates"
    for gate in gates:
        assert _float_inputs(gate, types) == [TensorProto.FLOAT], f"{gate.name} ({gate.op_type}) is not fp32"
        # walk up to the layer that makes the logits: it must compute in fp32 as well
        node = producers.get(gate.input[0])
        while node is not None and node.op_type in PASS_THROUGH:
            node = producers.get(node.input[0])
        assert node is not None and node.op_type in ("Conv", "Gemm", "MatMul"), f"no logits producer above {gate.name}"
        assert all(t == TensorProto.FLOAT for t in _float_inputs(node, types)), f"logits {node.name} ({node.op_type}) are not fp32"

    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    stem = next(n for n in convs if producers.get(n.input[0]) is None or producers[n.input[0]].op_type == "Cast")
    assert all(t == TensorProto.FLOAT16 for t in _float_inputs(stem, types)), f"stem {stem.name} is not fp16"
    assert sum(all(t == TensorProto.FLOAT16 for t in _float_inputs(n, types)) for n in convs) >= 2


def test_the_builder_plans_an_fp16_engine_from_it(exported):
    _, _, path = exported
    assert onnx_precision(path) == "mixed"
    inputs = check_build_inputs(path, BuildOptions(profiles=[BatchProfile(1, 4, 8)], fp16=True))
    assert inputs.onnx_precision == "mixed"
    assert [(s.name, s.dims[1:], s.batch_is_dynamic) for s in inputs.signature.inputs] == [("input", SAMPLE, True)]
    assert inputs.profiles[0].shapes["input"] == ((1, *SAMPLE), (4, *SAMPLE), (8, *SAMPLE))
    for version in ("10.12.0.36", "10.15.1.29", "11.0.0"):
        plan = plan_precision(version, True, inputs.onnx_precision)
        assert plan.strongly_typed and not plan.fp16_builder_flag and plan.precision == "fp16"
    legacy = plan_precision("10.8.0.43", True, inputs.onnx_precision)
    assert legacy.fp16_builder_flag and not legacy.strongly_typed


def test_onnxruntime_parity_with_fp32_pytorch(exported):
    import onnxruntime

    _, model, path = exported
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 4, 8):
        x = np.random.default_rng(batch).standard_normal((batch, *SAMPLE)).astype(np.float32)
        (got,) = session.run(None, {"input": x})
        with torch.inference_mode():
            want = model(torch.from_numpy(x)).numpy()
        assert got.dtype == np.float32 and got.shape == want.shape
        error = np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want))
        assert error <= 1e-2, (batch, error)


def test_the_grouped_form_fits_the_engine_builder_at_its_fixed_batch(tmp_path):
    model = _model("dy_resnet_tiny")
    grouped = tmp_path / "grouped.onnx"
    export.export_onnx(model, grouped, form="grouped", batch=4, input_shape=SAMPLE, target="gpu", check=False)
    fixed = check_build_inputs(grouped, BuildOptions())
    assert fixed.onnx_precision == "fp32"
    assert fixed.profiles[0].batch == BatchProfile(4, 4, 4)
    with pytest.raises(InputError, match="fixed batch of 4"):
        check_build_inputs(grouped, BuildOptions(profiles=[BatchProfile(1, 4, 8)]))
