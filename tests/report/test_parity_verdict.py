"""How a candidate's rejected batch is worded: a baked-in batch, or another sample shape."""

from __future__ import annotations

import numpy as np

from odexport.report.parity import parity_report
from odexport.runtime.parity import CandidateRun


def _report(detail: str):
    reference = {"output": np.ones((2, 10), np.float32)}
    run = CandidateRun("model.onnx", "onnxruntime-cpu", "fp32", ("batch", 3, 64, 64), errors={2: detail})
    return parity_report({"artifact": "ckpt.pth"}, {}, [2], reference, [run])


def test_a_shape_complaint_on_a_dynamic_input_reads_as_a_baked_batch():
    detail = "[ONNXRuntimeError] Reshape: the input tensor cannot be reshaped to the requested shape {1,512}"
    candidate = _report(detail).candidates[0]
    assert not candidate.passed and "batch seems baked in" in candidate.batches[0].error


def test_a_rejected_sample_axis_is_not_called_a_baked_batch():
    detail = "input 'input' axis 2 has size 32, the model expects 64 (shape ('batch', 3, 64, 64))"
    candidate = _report(detail).candidates[0]
    assert not candidate.passed and candidate.batches[0].error == detail
