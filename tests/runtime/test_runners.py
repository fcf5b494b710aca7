"""Runners: real torch modules and real onnxruntime sessions, checked against torch's own forward."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from odexport._optional import available
from odexport.errors import InputError, MissingDependencyError
from odexport.runtime import InferenceError, artifact_kind, capabilities, normalise_backend, open_runner
from odexport.runtime.onnxruntime_runner import OrtRunner
from odexport.runtime.torch_runner import TorchRunner
from odexport.runtime.ort_optimize import HAND_BUILT_IR_VERSION


def _x(batch=3, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, 3, 16, 16)).astype(np.float32)


def test_torch_runner_matches_eager_forward(tiny_net):
    x = _x()
    runner = TorchRunner(tiny_net, input_shape=(3, 16, 16))
    with torch.no_grad():
        expected = tiny_net(torch.from_numpy(x)).numpy()
    out = runner.infer(x)
    assert list(out) == ["output"]
    np.testing.assert_array_equal(out["output"], expected)
    assert runner.backend == "torch-cpu" and runner.precision == "fp32"
    assert runner.outputs[0].name == "output" and runner.outputs[0].shape == ("batch", 10)


def test_torch_runner_float64_is_a_copy_and_more_exact(tiny_net):
    x = _x()
    runner = TorchRunner(tiny_net, dtype="float64", input_shape=(3, 16, 16))
    assert next(tiny_net.parameters()).dtype == torch.float32, "the caller's model must not be converted"
    with torch.no_grad():
        exact = tiny_net.double()(torch.from_numpy(x).double()).numpy()
    tiny_net.float()
    out = runner.infer(x)["output"]
    assert out.dtype == np.float64 and runner.precision == "fp64"
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-12)


def test_torch_runner_rejects_wrong_sample_shape(tiny_net):
    runner = TorchRunner(tiny_net, input_shape=(3, 16, 16))
    with pytest.raises(InputError, match="axis 1 has size 4"):
        runner.infer(np.zeros((1, 4, 16, 16), np.float32))
    with pytest.raises(InputError, match="rank 3"):
        runner.infer(np.zeros((3, 16, 16), np.float32))


def test_torch_runner_cuda_without_gpu_is_missing_dependency(tiny_net):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(MissingDependencyError):
        TorchRunner(tiny_net, device="cuda")


@pytest.mark.gpu
def test_torch_runner_cuda_matches_cpu_and_times_with_events(tiny_net):
    x = _x()
    cpu = TorchRunner(tiny_net, input_shape=(3, 16, 16)).infer(x)["output"]
    gpu = TorchRunner(tiny_net, device="cuda", input_shape=(3, 16, 16), cuda_graphs=True)
    np.testing.assert_allclose(gpu.infer(x)["output"], cpu, atol=1e-5, rtol=1e-5)  # TF32 off: fp32 rounding only
    timer = gpu.timer(x)
    assert all(timer() > 0 for _ in range(3))


def test_ort_runner_matches_torch(tiny_net, tiny_onnx):
    x = _x(batch=5)
    runner = OrtRunner(tiny_onnx, threads=1)
    assert runner.backend == "onnxruntime-cpu" and runner.precision == "fp32"
    assert runner.inputs[0].name == "input" and runner.inputs[0].shape[1:] == (3, 16, 16)
    assert not isinstance(runner.inputs[0].shape[0], int), "the batch axis should be dynamic"
    with torch.no_grad():
        expected = tiny_net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runner.infer(x)["output"], expected, atol=1e-5, rtol=1e-5)


def test_ort_runner_casts_float64_input(tiny_onnx):
    runner = OrtRunner(tiny_onnx)
    x = _x()
    np.testing.assert_array_equal(runner.infer(x.astype(np.float64))["output"], runner.infer(x)["output"])


def test_an_input_the_cast_would_change_is_refused(tiny_onnx, tmp_path):
    """Runners cast inputs to the model's dtype; float -> integer would drop fractions silently."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Cast", ["index"], ["output"], to=TensorProto.FLOAT)], "cast",
                              [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch", 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])])
    path = tmp_path / "int_input.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=HAND_BUILT_IR_VERSION), path)
    runner = OrtRunner(path)
    np.testing.assert_array_equal(runner.infer(np.array([[1, 2, 3]], np.int32))["output"], [[1.0, 2.0, 3.0]])  # exact widening
    with pytest.raises(InputError, match="the cast would drop the fractions"):
        runner.infer(np.array([[1.5, 2.0, 3.0]], np.float32))
    with pytest.raises(InputError, match="has dtype <U1"):
        OrtRunner(tiny_onnx).infer(np.full((1, 3, 8, 8), "a"))


def test_ort_runner_baked_batch_is_rejected_with_a_clear_error(tiny_onnx_fixed):
    runner = OrtRunner(tiny_onnx_fixed)
    assert runner.inputs[0].shape[0] == 2
    runner.infer(_x(batch=2))
    with pytest.raises(InputError, match="axis 0 has size 3, the model expects 2"):
        runner.infer(_x(batch=3))


def test_ort_runner_graph_error_is_inference_error(tmp_path, tiny_net):
    """A batch baked into a Reshape (dynamic input axis, constant inside) fails at run time."""
    from tests.runtime._models import export_plain

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_net

        def forward(self, x):
            return self.net(x).reshape(2, 10) * 2

    path = export_plain(Flat().eval(), tmp_path / "reshape.onnx")
    runner = OrtRunner(path)
    runner.infer(_x(batch=2))
    with pytest.raises(InferenceError, match="onnxruntime failed"):
        runner.infer(_x(batch=3))


def test_ort_runner_spinning_off_and_threads_are_applied(tiny_onnx):
    runner = OrtRunner(tiny_onnx, threads=1, allow_spinning=False)
    options = runner.session.get_session_options()  # what the live session was made with
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    default = OrtRunner(tiny_onnx, threads=2)
    assert default.session.get_session_options().intra_op_num_threads == 2
    assert default.spinning and not runner.spinning
    timer = runner.timer(_x(batch=1))
    assert all(timer() > 0 for _ in range(3))


def test_ort_runner_detects_fp16(tmp_path, tiny_onnx):
    proto = onnx.load(tiny_onnx)
    for init in proto.graph.initializer:
        half = numpy_helper.to_array(init).astype(np.float16)
        init.CopyFrom(numpy_helper.from_array(half, init.name))
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    path = tmp_path / "half.onnx"
    onnx.save(proto, path)
    runner = OrtRunner(path)
    assert runner.precision == "fp16"
    out = runner.infer(_x())["output"]  # float32 input is cast to the graph's float16
    assert out.dtype == np.float16
    ref = OrtRunner(tiny_onnx).infer(_x())["output"]
    np.testing.assert_allclose(out.astype(np.float32), ref, atol=2e-2, rtol=2e-2)


def test_ort_runner_bad_file_is_input_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(InputError, match="cannot load"):
        OrtRunner(bad)
    with pytest.raises(InputError, match="does not exist"):
        OrtRunner(tmp_path / "missing.onnx")


def test_ort_cuda_without_provider_is_missing_dependency(tiny_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(MissingDependencyError, match="CUDA execution provider"):
        OrtRunner(tiny_onnx, device="cuda")


def test_ort_cuda_that_falls_back_to_the_cpu_is_refused(tiny_onnx, monkeypatch):
    """A GPU build whose CUDA libraries do not load lists the provider, then onnxruntime starts the
    session on the CPU with only a warning.  Here the provider is listed but absent, which makes a
    real session do exactly that: the runner must refuse it, not time the CPU as the GPU."""
    import warnings

    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    listed = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *listed])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # onnxruntime's fallback warning must not leak either
        with pytest.raises(MissingDependencyError, match="could not start its CUDA execution provider"):
            OrtRunner(tiny_onnx, device="cuda")


@pytest.mark.gpu
def test_ort_cuda_runs_fp32_as_fp32_and_times_with_io_binding(tiny_net, tiny_onnx):
    """The session is really on the GPU (not a silent CPU fallback), and with TF32 off its fp32
    numbers are the CPU's to float32 rounding."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    x = _x(batch=5)
    runner = OrtRunner(tiny_onnx, device="cuda")
    assert runner.backend == "onnxruntime-cuda" and runner.session.get_providers()[0] == "CUDAExecutionProvider"
    with torch.no_grad():
        expected = tiny_net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runner.infer(x)["output"], expected, atol=1e-5, rtol=1e-5)
    timer = runner.timer(x)
    assert all(timer() > 0 for _ in range(3))


@pytest.mark.gpu
def test_ort_cuda_graph_timer_per_batch_size(tiny_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    runner = OrtRunner(tiny_onnx, device="cuda", cuda_graphs=True)
    for batch in (1, 4):  # a captured graph has fixed shapes: one session per batch size
        timer = runner.timer(_x(batch=batch))
        assert all(timer() > 0 for _ in range(3))
    assert len(runner._graph_sessions) == 2
    runner.close()


def test_ort_cuda_graphs_need_cuda(tiny_onnx):
    with pytest.raises(InputError, match="CUDA graphs need device cuda"):
        OrtRunner(tiny_onnx, cuda_graphs=True)


def test_open_runner_dispatch(tiny_net, tiny_onnx, tmp_path):
    assert isinstance(open_runner(tiny_net, input_shape=(3, 16, 16)), TorchRunner)
    runner = open_runner(tiny_onnx)
    assert isinstance(runner, OrtRunner) and runner.source == tiny_onnx
    assert artifact_kind("model.plan") == "engine" and artifact_kind("model.pth.tar") == "checkpoint"
    assert normalise_backend("ORT") == "onnxruntime" and normalise_backend("trt") == "tensorrt"
    with pytest.raises(InputError, match="unknown backend"):
        open_runner(tiny_onnx, backend="tvm")
    with pytest.raises(InputError, match="build an engine"):
        open_runner(tiny_onnx, backend="tensorrt")
    with pytest.raises(InputError, match="export it first"):
        open_runner(tiny_net, backend="onnxruntime")
    with pytest.raises(InputError, match="does not exist"):
        open_runner(tmp_path / "nothing.onnx")


def test_open_runner_engine_without_tensorrt_is_exit_3(tmp_path):
    if available("tensorrt") and torch.cuda.is_available():
        pytest.skip("TensorRT is available here")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(MissingDependencyError) as info:
        open_runner(engine)
    assert info.value.exit_code == 3


def test_capabilities_report_every_backend():
    found = {c.backend: c for c in capabilities()}
    assert set(found) == {"torch", "onnxruntime", "tensorrt"}
    assert found["torch"].available and "cpu" in found["torch"].devices
    assert found["onnxruntime"].available and "cpu" in found["onnxruntime"].devices
    if not available("tensorrt"):
        assert not found["tensorrt"].available and found["tensorrt"].detail


def test_ort_cpu_rewrite_of_runtime_weight_conv_is_exact(tmp_path):
    """A Conv whose weight is computed in the graph, run with and without the NCHWc rewrite."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w0 = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "w0")
    scale = numpy_helper.from_array(np.full((1,), 0.5, np.float32), "scale")
    nodes = [helper.make_node("Mul", ["w0", "scale"], ["w"]),
             helper.make_node("Conv", ["input", "w"], ["output"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "runtime_weight", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8, 12, 12])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], [w0, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=HAND_BUILT_IR_VERSION)
    path = tmp_path / "rw.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
    plain = OrtRunner(path).infer(x)["output"]
    rewritten = OrtRunner(path, cpu_rewrite=True, threads=1)
    assert rewritten.rewrite_report is not None
    np.testing.assert_allclose(rewritten.infer(x)["output"], plain, atol=1e-5, rtol=1e-5)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(numpy_helper.to_array(w0) * 0.5), padding=1)
    np.testing.assert_allclose(plain, expected.numpy(), atol=1e-4, rtol=1e-4)


def test_custom_form_is_refused_on_an_onnxruntime_that_ignores_overloads(tmp_path):
    """onnxruntime before 1.27 runs one body for every `com.odexport::ODConv2d` node, whatever its
    overload (seen: 1.18-1.26 fail to load the custom form, or return another body's result where
    the shapes fit). The runner says so (exit 3) instead of running it; the decomposed form, whose
    functions are not overloaded, runs anywhere."""
    import onnx

    from odexport.errors import MissingDependencyError
    from odexport.models import create_model
    from odexport.pipeline import onnx_from_model
    from odexport.export.verify import refuse_ignored_overloads
    from odexport.runtime.onnxruntime_runner import OrtRunner

    model = create_model("od_resnet_tiny").eval()
    custom, decomposed = tmp_path / "custom.onnx", tmp_path / "decomposed.onnx"
    onnx_from_model(model, custom, form="custom", input_shape=(3, 16, 16), check=False)
    onnx_from_model(model, decomposed, form="decomposed", input_shape=(3, 16, 16), check=False)
    overloads = {f.overload for f in onnx.load(custom).functions if f.name == "ODConv2d"}
    assert len(overloads) > 1  # the premise: several layer configurations, one op name
    with pytest.raises(MissingDependencyError) as caught:
        refuse_ignored_overloads("1.26.2", custom, custom.name)
    assert "onnxruntime 1.26.2 ignores ONNX function overloads" in caught.value.message
    assert "com.odexport::ODConv2d" in caught.value.message and "--form decomposed" in caught.value.hint
    with pytest.raises(MissingDependencyError):
        refuse_ignored_overloads("1.18.0", custom.read_bytes(), "the model")
    refuse_ignored_overloads("1.26.2", decomposed, decomposed.name)
    refuse_ignored_overloads("1.27.0", custom, custom.name)
    refuse_ignored_overloads("1.28.0.dev20260101", custom, custom.name)
    with pytest.raises(MissingDependencyError):  # a release it cannot read is not assumed to be new enough
        refuse_ignored_overloads("unknown", custom, custom.name)
    with OrtRunner(custom) as runner:  # this machine's onnxruntime honours them (the package requires it)
        assert runner.infer(np.zeros((1, 3, 16, 16), np.float32))


def test_a_custom_form_file_whose_bodies_a_tool_dropped_is_named(tmp_path):
    """Tools that rewrite ONNX files can strip the custom form's function bodies and still write a
    file that passes onnx.checker: onnx.version_converter drops every local function,
    onnx.utils.extract_model keeps one body per name, onnx-graphsurgeon drops the overloads.
    onnxruntime then fails ("not a registered function/op"); the runner and `odexport ort` name the
    cause and the fix (exit 1) rather than pointing at onnx.checker or "running as exported"."""
    from onnx import version_converter

    from odexport.layers.odconv import ODConv2d
    from odexport.pipeline import onnx_from_model
    from odexport.runtime.ort_specialise import specialise_onnx

    model = torch.nn.Sequential(ODConv2d(4, 8, 3, padding=1, kernel_num=2), torch.nn.ReLU(), ODConv2d(8, 8, 1, kernel_num=4)).eval()
    custom = tmp_path / "custom.onnx"
    onnx_from_model(model, custom, form="custom", input_shape=(4, 8, 8), check=False)
    proto = onnx.load(custom)
    assert len({f.overload for f in proto.functions if f.domain == "com.odexport"}) == 2  # the premise

    converted = tmp_path / "converted.onnx"
    onnx.save(version_converter.convert_version(proto, proto.opset_import[0].version), converted)
    onnx.checker.check_model(onnx.load(converted), full_check=True)  # what made the file look fine
    with pytest.raises(InputError) as stripped:
        OrtRunner(converted)
    assert "custom-form layers without their function bodies (2 com.odexport::ODConv2d node(s))" in stripped.value.message
    assert "onnx.inliner.inline_local_functions" in stripped.value.hint and "--form decomposed" in stripped.value.hint
    assert str(converted) in stripped.value.message
    with pytest.raises(InputError, match="without their function bodies") as rewritten:  # `bench --cpu-rewrite`
        OrtRunner(converted, cpu_rewrite=True)
    assert str(converted) in rewritten.value.message
    with pytest.raises(InputError, match="without their function bodies"):
        specialise_onnx(converted, tmp_path / "converted.ort-cpu.onnx", batch_sizes=(1,), measure=False, check=False)
    assert not (tmp_path / "converted.ort-cpu.onnx").exists()

    merged = onnx.load(custom)  # what onnx-graphsurgeon writes: the overloads gone, the bodies kept
    for function in merged.functions:
        function.overload = ""
    for node in merged.graph.node:
        node.overload = ""
    onnx.save(merged, tmp_path / "merged.onnx")
    with pytest.raises(InputError, match="several times under one identity"):
        OrtRunner(tmp_path / "merged.onnx")

    with OrtRunner(custom) as runner:  # the file as exported runs
        assert runner.infer(np.zeros((2, 4, 8, 8), np.float32))


def test_open_runner_passes_spinning_off_to_the_session(tiny_onnx):
    """bench opens its sessions through open_runner: spinning off must reach the live session."""
    quiet = open_runner(tiny_onnx, allow_spinning=False)
    assert quiet.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert not quiet.spinning and open_runner(tiny_onnx).spinning


def test_outputs_are_returned_under_their_own_names(tmp_path):
    """Two outputs of different shapes: each value under its name, in onnxruntime as in PyTorch
    (a tuple's outputs are named output, output_1)."""
    from onnx import TensorProto, helper

    from odexport.runtime.torch_runner import torch_dtype

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0), helper.make_node("Relu", ["input"], ["relu"])],
        "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["batch", 3, 4, 4]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 3])])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    got = OrtRunner(path).infer({"input": x})
    assert got["relu"].shape == (2, 3, 4, 4) and got["pooled"].shape == (2, 3)
    np.testing.assert_allclose(got["pooled"], x.mean(axis=(2, 3)), rtol=1e-6)

    class Pair(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x), x.mean(dim=(2, 3))

    pair = TorchRunner(Pair(), input_shape=(3, 4, 4)).infer({"input": x})
    assert pair["output"].shape == (2, 3, 4, 4) and pair["output_1"].shape == (2, 3)
    with pytest.raises(InputError, match="unsupported dtype torch.int32"):
        torch_dtype(torch.int32)


def test_torch_runner_applies_its_thread_count(tiny_net):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        TorchRunner(tiny_net, threads=1, input_shape=(3, 16, 16))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
