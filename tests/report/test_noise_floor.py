"""The reference's own rounding noise floors the default atol, and only the default.

The network below cancels large numbers (sum of x*3 + 1000 minus the offset), so float32 rounding
moves its outputs by ~1e-2 however it is computed: PyTorch float32 vs float64 differ by that
much, and so does onnxruntime's float32 from PyTorch's.  A gate at 1e-5 of the output scale would
fail this correct export; the floor (5 x the measured noise) passes it, and a user's explicit
atol is still applied as given.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from odexport.pipeline import check_parity
from odexport.report.compare import NOISE_MARGIN, Tolerance, ToleranceOverrides, compare_arrays


class Cancelling(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        s = (x * 3 + 1000.0).sum(dim=(2, 3)) - 1000.0 * x.shape[2] * x.shape[3]
        return self.fc(s)


@pytest.fixture(scope="module")
def cancelling(tmp_path_factory):
    torch.manual_seed(0)
    model = Cancelling().eval()
    path = tmp_path_factory.mktemp("noise") / "cancel.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 16, 16),), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    return model, str(path)


def test_noise_floor_passes_a_correct_but_ill_conditioned_export(cancelling):
    model, path = cancelling
    report = check_parity(model, [path], input_shape=(3, 16, 16), batch_sizes=(1, 4))
    noise = report.reference["rounding_noise"]["output"]
    assert noise > 1e-3, "float32 vs float64 of this network must differ visibly"
    out = report.candidates[0].batches[0].outputs[0]
    assert out.atol == pytest.approx(NOISE_MARGIN * noise), "the floor is above 1e-5 of this output's scale"
    assert report.passed, report.candidates[0].failures


def test_without_the_floor_the_same_export_fails(cancelling):
    model, path = cancelling
    report = check_parity(model, [path], input_shape=(3, 16, 16), batch_sizes=(1, 4), noise_margin=0)
    assert report.reference["rounding_noise"] == {}
    assert not report.passed


def test_explicit_atol_is_not_widened(cancelling):
    model, path = cancelling
    report = check_parity(model, [path], input_shape=(3, 16, 16), batch_sizes=(1,),
                          tolerances=ToleranceOverrides.parse(["1e-6"]))
    assert report.candidates[0].batches[0].outputs[0].atol == 1e-6
    assert not report.passed


def test_tolerance_floor_arithmetic():
    ref = np.array([[1.0, 2.0]])
    floored = Tolerance(atol=1e-5, rtol=0.0, scaled_atol=True, noise_atol=0.1)
    assert compare_arrays(ref, ref + 0.05, floored).passed
    assert compare_arrays(ref, ref + 0.05, floored).atol == 0.1
    assert ToleranceOverrides().resolve("output", "fp32", noise_atol=0.3).noise_atol == 0.3
    assert ToleranceOverrides.parse(["1e-3"]).resolve("output", "fp32", noise_atol=0.3).noise_atol == 0.0


def test_export_check_uses_the_same_floor_and_only_by_default(cancelling, tmp_path):
    """``odexport onnx``'s own check (compare_with_torch): fixed 1e-4 tolerances fail this correct
    export, the measured float64 floor passes it; a wrong weight fails either way."""
    import onnx
    from onnx import numpy_helper

    from odexport.export.verify import NOISE_FLOOR_FACTOR, compare_with_torch

    model, path = cancelling
    result = compare_with_torch(model, path, (3, 16, 16), batches=(1, 4))
    assert result.passed, result.summary()
    floored = [c for c in result.comparisons if c.noise_floor is not None]
    # the floor was needed (fixed tolerances fail, next line) and holds: 5x the fp32 noise > error
    assert floored and all(1e-3 < c.noise_floor / NOISE_FLOOR_FACTOR and c.max_abs <= c.noise_floor for c in floored)
    assert not compare_with_torch(model, path, (3, 16, 16), batches=(1,), atol=1e-4, rtol=1e-4).passed
    proto = onnx.load(path)
    weight = next(t for t in proto.graph.initializer if numpy_helper.to_array(t).shape == (10, 3))
    changed = numpy_helper.to_array(weight).copy()
    changed[0, 0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(changed, weight.name))
    wrong = tmp_path / "wrong.onnx"
    onnx.save(proto, str(wrong))
    assert not compare_with_torch(model, str(wrong), (3, 16, 16), batches=(1,)).passed


@pytest.mark.parametrize("precision,weight_scale", [("fp32", 1e-5), ("fp16", 1e-3)])
def test_export_check_holds_small_outputs_to_their_own_scale(tmp_path, precision, weight_scale):
    """A small output (a regression near zero) exported 5% off: the export's own check passed it
    with an absolute 1e-4 (fp32) or 1e-3 (fp16) term as wide as the whole output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from odexport.export.verify import compare_with_torch

    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 3).eval()
    with torch.no_grad():
        model.weight.mul_(weight_scale)
        model.bias.zero_()

    def exported(scale: float) -> str:
        weight = numpy_helper.from_array(model.weight.detach().numpy() * np.float32(scale), "w")
        graph = helper.make_graph(
            [helper.make_node("Conv", ["input", "w"], ["output"])], "small",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, 6, 6])], [weight])
        path = tmp_path / f"small_{scale}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
        return str(path)

    assert compare_with_torch(model, exported(1.0), (3, 8, 8), batches=(1, 2), precision=precision).passed
    result = compare_with_torch(model, exported(1.05), (3, 8, 8), batches=(1, 2), precision=precision)
    assert not result.passed and max(c.max_abs for c in result.comparisons) < {"fp32": 1e-4, "fp16": 1e-3}[precision]


def test_per_layer_floor_widens_the_default_atol_only():
    """Per-layer values follow the outputs' rule: the reference's noise floors the default atol, and
    an atol the user gave is applied as given (floored, a real divergence read "no dynamic conv
    diverges"). An attention compared as (B, C, 1, 1) against the flat (B, C) is the same values."""
    from odexport.report.parity import per_layer_parity

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 8, 4, 4))
    got = ref + 1e-3  # within 5 x the noise below, far outside 1e-6
    attention = rng.random((2, 8))
    values = {"batch_size": 2, "torch": {"conv": {"output": ref, "attention.channel": attention}},
              "candidate": {"conv": {"output": got, "attention.channel": attention.reshape(2, 8, 1, 1)}},
              "noise": {"conv": {"output": 1e-3}}}
    by_default = per_layer_parity(values, ToleranceOverrides(), "fp32")
    assert by_default.first_divergence is None and len(by_default.layers) == 2
    given = per_layer_parity(values, ToleranceOverrides(atol=1e-6), "fp32").first_divergence
    assert given is not None and given.component == "output"
