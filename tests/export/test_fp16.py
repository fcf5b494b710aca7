"""``--fp16``: the mixed-precision model runs in onnxruntime CPU, follows the precision policy and
stays close to fp32 PyTorch (top-1 agreement >= 99 %, max relative error <= 1e-2 on 64 seeded
inputs).

Max relative error is ``max |fp16 - fp32| / max |fp32|`` over the logits (see
:mod:`odexport.export.verify`)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from odexport.export.onnx_export import export_onnx
from odexport.export.precision import FP16_POLICY, node_role, precision_violations
from odexport.export.verify import ort_session
from odexport.models import create_model
from tests.export.test_export_contract import SHAPE, small_model
from tests.export.test_zoo import _perturbed

SAMPLES = 64


def _agreement(model, path, shape, chunk=16):
    x = np.random.default_rng(0).standard_normal((SAMPLES, *shape)).astype(np.float32)
    session = ort_session(str(path))
    got = np.concatenate([session.run(None, {"input": x[i : i + chunk]})[0] for i in range(0, SAMPLES, chunk)])
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(x[i : i + chunk])).numpy() for i in range(0, SAMPLES, chunk)])
    assert got.dtype == np.float32 and got.shape == ref.shape
    top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
    max_rel = float(np.abs(ref - got).max() / np.abs(ref).max())
    return top1, max_rel


def _types(proto):
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) + list(inferred.graph.input)}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return inferred, types


@pytest.mark.parametrize("form", ["decomposed", "custom"])
def test_dy_resnet_tiny_fp16(tmp_path, form):
    model = _perturbed(create_model("dy_resnet_tiny"))
    result = export_onnx(model, tmp_path / "m.onnx", form=form, input_shape=(3, 32, 32), fp16=True)
    assert result.parity.passed and result.parity.precision == "fp16"
    top1, max_rel = _agreement(model, result.path, (3, 32, 32))
    assert top1 >= 0.99 and max_rel <= 1e-2, (top1, max_rel)
    proto = onnx.load(str(result.path))
    assert precision_violations(proto) == []
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_plan_with_fp16_is_the_plan_the_fp16_export_makes(tmp_path):
    """`odexport onnx --plan --fp16` printed the fp32 plan: patch variants and measured CPU choices
    that the fp16 export does not use."""
    from odexport.export.plan import plan_forms

    model = create_model("od_resnet_tiny").eval()
    planned = [p.variant for p in plan_forms(model, form="decomposed", input_shape=(3, 32, 32), fp16=True)]
    assert planned != [p.variant for p in plan_forms(model, form="decomposed", input_shape=(3, 32, 32))]  # fp16 changes it here
    result = export_onnx(model, tmp_path / "m.onnx", form="decomposed", input_shape=(3, 32, 32), fp16=True, check=False)
    assert [p.variant for p in result.forms] == planned


def test_precision_policy_node_by_node(tmp_path):
    """Attention and aggregation nodes compute in fp32, feature convolutions and matmuls in fp16."""
    model = _perturbed(small_model())
    result = export_onnx(model, tmp_path / "m.onnx", form="decomposed", input_shape=SHAPE, fp16=True)
    assert result.parity.passed
    inferred, types = _types(onnx.load(str(result.path)))
    layers = {p.name for p in result.forms}
    seen = {"fp16-conv": 0, "fp32-attention-conv": 0, "fp32-softmax": 0, "fp32-aggregation": 0}
    for node in inferred.graph.node:
        role = node_role(node, layers)
        floats = {types.get(n) for n in node.input if types.get(n) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
        if node.op_type in ("Softmax", "Sigmoid"):
            assert floats == {onnx.TensorProto.FLOAT}, node.name
            seen["fp32-softmax"] += 1
        if node.op_type in ("Conv", "MatMul") and role == "feature":
            assert floats == {onnx.TensorProto.FLOAT16}, node.name
            seen["fp16-conv"] += 1
        if node.op_type == "Conv" and role == "attention":
            assert floats == {onnx.TensorProto.FLOAT}, node.name
            seen["fp32-attention-conv"] += 1
        if role == "aggregation":
            assert floats <= {onnx.TensorProto.FLOAT}, node.name
            seen["fp32-aggregation"] += 1
    assert all(seen.values()), seen


def test_policy_is_data_and_the_checker_can_fail(tmp_path):
    assert FP16_POLICY.decide("Conv", "feature") == "fp16"
    assert FP16_POLICY.decide("Conv", "attention") == "fp32"
    assert FP16_POLICY.decide("MatMul", "aggregation") == "fp32"
    assert FP16_POLICY.decide("Softmax", "feature") == "fp32"
    assert FP16_POLICY.decide("Relu", "feature") == "follow"
    fp32 = export_onnx(small_model(), tmp_path / "m.onnx", form="decomposed", input_shape=SHAPE, check=False)
    problems = precision_violations(onnx.load(str(fp32.path)))
    assert problems and all("policy says fp16" in p for p in problems)


@pytest.mark.slow
def test_od_mobilenetv2_050_fp16_reference_checkpoint(tmp_path):
    """The reference training script's od_mobilenetv2_050 (K=4) checkpoint, at 224x224."""
    from odexport.pipeline import model_from_checkpoint
    from tests.conftest import refdata_path

    loaded = model_from_checkpoint(refdata_path("odconv", "od_mobilenetv2_050_k4.pth.tar"))
    assert loaded.info.arch == "od_mobilenetv2_050"
    shape = (3, 224, 224)
    result = export_onnx(loaded.model, tmp_path / "m.onnx", form="auto", input_shape=shape, fp16=True)
    assert result.parity.passed
    top1, max_rel = _agreement(loaded.model, result.path, shape)
    assert top1 >= 0.99 and max_rel <= 1e-2, (top1, max_rel)
    assert precision_violations(onnx.load(str(result.path))) == []
