"""Where TensorRT or a GPU is missing: every TensorRT entry point exits 3 with what is missing and the fix.

Skipped on a machine that has both (there the tensorrt-marked tests run instead).
"""

from __future__ import annotations

import pytest

from odexport._optional import available, cuda_available
from odexport.errors import MissingDependencyError

pytestmark = pytest.mark.skipif(available("tensorrt") and cuda_available(),
                                reason="TensorRT and a GPU are present: the missing-TensorRT path cannot be shown here")


def _assert_names_what_is_missing(error: MissingDependencyError) -> None:
    text = str(error)
    assert error.exit_code == 3
    assert "pip install 'odexport[trt]'" in text and "CUDA GPU" in text
    if not available("tensorrt"):
        assert "TensorRT is not installed" in text and "'tensorrt'" in text
    if not cuda_available():
        assert "no CUDA GPU is available" in text


def test_require_tensorrt():
    from odexport.engine.environment import require_tensorrt

    with pytest.raises(MissingDependencyError) as info:
        require_tensorrt("building a TensorRT engine")
    assert str(info.value).startswith("building a TensorRT engine needs TensorRT and a CUDA GPU: ")
    _assert_names_what_is_missing(info.value)


def test_build_checks_its_inputs_then_stops_before_writing(tmp_path):
    from odexport.engine.build import BuildOptions, build_engine
    from odexport.engine.profiles import BatchProfile
    from odexport.errors import InputError
    from tests.engine._onnx import conv_model

    onnx_path = conv_model(tmp_path / "m.onnx", dims=(2, 3, 8, 8))
    with pytest.raises(InputError, match="fixed batch of 2"):  # input errors come first (exit 1)
        build_engine(onnx_path, tmp_path / "m.engine", BuildOptions(profiles=[BatchProfile(1, 2, 4)]))
    with pytest.raises(InputError, match="is the input .* itself"):  # the ONNX file as the engine: before TensorRT
        build_engine(onnx_path, onnx_path)
    with pytest.raises(InputError, match="is the input .* itself"):
        build_engine(onnx_path, tmp_path / "m.engine", BuildOptions(timing_cache=onnx_path))
    with pytest.raises(MissingDependencyError) as info:
        build_engine(onnx_path, tmp_path / "m.engine", BuildOptions(timing_cache=tmp_path / "trt.cache"))
    _assert_names_what_is_missing(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_runner_and_probe(tmp_path):
    from odexport.runtime import open_runner
    from odexport.runtime.tensorrt_runner import TrtRunner, probe

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"an engine from somewhere else")
    with pytest.raises(MissingDependencyError) as info:
        TrtRunner(engine)
    _assert_names_what_is_missing(info.value)
    with pytest.raises(MissingDependencyError):
        open_runner(engine)
    capability = probe()
    assert capability.backend == "tensorrt" and capability.available is False
    assert "pip install 'odexport[trt]'" in capability.detail


@pytest.mark.parametrize("name", ["FP8", "INT4", "FP4"])
def test_an_engine_io_type_without_an_array_type_is_an_input_error(name):
    """TensorRT 10's FP8/INT4/FP4 I/O tensors cannot be fed or read as arrays: a one-line error
    naming the type and the fix, not a TypeError that the CLI reports as a bug."""
    from types import SimpleNamespace

    from odexport.engine import _trt
    from odexport.errors import InputError

    as_trt_enum = SimpleNamespace(name=name)  # what pybind's DataType members expose
    for convert in (_trt.numpy_dtype_name, _trt.torch_dtype):
        with pytest.raises(InputError, match=f"TensorRT type {name}, which odexport cannot feed or read"):
            convert(as_trt_enum)
    assert _trt.numpy_dtype_name(SimpleNamespace(name="HALF")) == "float16"
