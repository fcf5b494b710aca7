"""What TensorRT's ONNX parser is given (runs without TensorRT).

onnx-tensorrt keys model-local functions by name alone, so every `com.odexport::ODConv2d` node of
the custom form would run the first body defined under that name. The build hands the parser a
copy with every function inlined instead; the copy must compute what the export computes, here
checked in onnxruntime (which tells overloads apart) against the original file."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from odexport.engine.build import onnx_for_parser
from odexport.models import create_model
from odexport.pipeline import onnx_from_model

SHAPE = (3, 16, 16)


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_a_custom_form_export_is_parsed_from_an_inlined_copy(tmp_path):
    model = create_model("od_resnet_tiny").eval()
    custom = tmp_path / "custom.onnx"
    onnx_from_model(model, custom, form="custom", input_shape=SHAPE, check=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    parsed, shared = onnx_for_parser(custom, scratch)
    assert shared == ["com.odexport::ODConv2d"] and parsed.parent == scratch
    copy = onnx.load(str(parsed))
    assert not copy.functions and not [n for n in copy.graph.node if n.domain == "com.odexport"]
    assert (scratch / "custom.onnx.data").is_file()  # weights beside it, whatever the model's size
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(_run(parsed, x), _run(custom, x), rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.onnx", "custom.onnx.json", "scratch"]  # the export is untouched


def test_a_model_without_overloaded_functions_is_parsed_as_it_is(tmp_path):
    model = create_model("od_resnet_tiny").eval()
    decomposed = tmp_path / "decomposed.onnx"
    onnx_from_model(model, decomposed, form="decomposed", input_shape=SHAPE, check=False)
    assert onnx_for_parser(decomposed, tmp_path) == (decomposed, [])
