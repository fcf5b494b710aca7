"""TensorRT end to end: build engines for tiny ODConv and DY-Conv models in every export form, run them
through :class:`TrtRunner` at batch 1, 4 and 8, and compare with PyTorch.

Marked ``tensorrt``: conftest skips them (with the reason) where TensorRT or a CUDA GPU is missing,
and ``--require-gpu`` turns the skip into a failure on a GPU machine.  They use only public entry
points (``onnx_from_model``, ``engine_from_onnx``, ``TrtRunner``, the ``odexport trt`` command), so
they run unchanged wherever TensorRT exists.  Builds use optimisation level 1 to stay quick.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from odexport.runtime.ort_optimize import HAND_BUILT_IR_VERSION

pytestmark = pytest.mark.tensorrt

MODELS = ("od_resnet_tiny", "dy_resnet_tiny")
SAMPLE = (3, 32, 32)
BATCHES = (1, 4, 8)
FP32_TOLERANCE = 1e-4  # max |engine - torch| / max |torch|; TF32 is off, so fp32 is fp32
FP16_TOLERANCE = 1e-2


def _model(name):
    import torch

    from odexport.models import create_model

    torch.manual_seed(0)
    return create_model(name).eval()


def _reference(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want)) / max(np.max(np.abs(want)), 1e-12))


def _inputs(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, *SAMPLE)).astype(np.float32)


def _export(model, path, form, *, batch=None, fp16=False):
    from odexport.pipeline import onnx_from_model

    onnx_from_model(model, path, form=form, batch=batch, input_shape=SAMPLE, fp16=fp16, target="gpu")
    return path


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("form", ["custom", "decomposed"])
def test_dynamic_batch_engine_matches_pytorch(tmp_path, name, form):
    from odexport.pipeline import engine_from_onnx
    from odexport.runtime.tensorrt_runner import TrtRunner

    model = _model(name)
    onnx_path = _export(model, tmp_path / f"{name}_{form}.onnx", form)
    result = engine_from_onnx(onnx_path, tmp_path / "model.engine", profiles=["1:4:8"], opt_level=1)
    assert result.metadata.precision == "fp32" and result.metadata.batch_profiles[0].text() == "1:4:8"
    # the parser keys local functions by name: the custom form's per-layer bodies are inlined first
    assert any("inlined before parsing" in note for note in result.metadata.notes) == (form == "custom")
    with TrtRunner(result.engine_path) as runner:
        assert runner.profiles[0].text() == "1:4:8"
        for batch in BATCHES:
            x = _inputs(batch)
            (out,) = runner.infer({"input": x}).values()
            assert out.shape[0] == batch
            assert _relative_error(out, _reference(model, x)) <= FP32_TOLERANCE, (name, form, batch)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", BATCHES)
def test_grouped_form_engine_at_its_fixed_batch(tmp_path, name, batch):
    from odexport.pipeline import engine_from_onnx
    from odexport.runtime.tensorrt_runner import TrtRunner

    model = _model(name)
    onnx_path = _export(model, tmp_path / f"{name}_grouped{batch}.onnx", "grouped", batch=batch)
    result = engine_from_onnx(onnx_path, tmp_path / "grouped.engine", opt_level=1)  # the fixed batch decides the profile
    assert result.metadata.batch_profiles[0].text() == f"{batch}:{batch}:{batch}"
    with TrtRunner(result.engine_path) as runner:
        x = _inputs(batch)
        (out,) = runner.infer(x).values()
        assert _relative_error(out, _reference(model, x)) <= FP32_TOLERANCE


@pytest.mark.parametrize("name", MODELS)
def test_fp16_engine_from_the_mixed_precision_onnx(tmp_path, name):
    from odexport.engine.precision import STRONGLY_TYPED_FROM, version_at_least
    from odexport.pipeline import engine_from_onnx
    from odexport.runtime.tensorrt_runner import TrtRunner

    model = _model(name)
    onnx_path = _export(model, tmp_path / f"{name}_fp16.onnx", "decomposed", fp16=True)
    result = engine_from_onnx(onnx_path, tmp_path / "fp16.engine", profiles=["1:4:8"], fp16=True, opt_level=1)
    meta = result.metadata
    assert meta.precision == "fp16"
    if version_at_least(meta.target.tensorrt_version, STRONGLY_TYPED_FROM):
        assert meta.strongly_typed and not meta.fp16_builder_flag
    else:
        assert meta.fp16_builder_flag and not meta.strongly_typed
    with TrtRunner(result.engine_path) as runner:
        assert runner.precision == "mixed"
        for batch in BATCHES:
            x = _inputs(batch)
            (out,) = runner.infer(x).values()
            assert _relative_error(out, _reference(model, x)) <= FP16_TOLERANCE, (name, batch)


def test_several_profiles_and_batches_outside_them(tmp_path):
    from odexport.errors import InputError
    from odexport.pipeline import engine_from_onnx
    from odexport.runtime.tensorrt_runner import TrtRunner

    model = _model("od_resnet_tiny")
    onnx_path = _export(model, tmp_path / "m.onnx", "decomposed")
    result = engine_from_onnx(onnx_path, tmp_path / "m.engine", profiles=["1:1:1", "2:4:8"], opt_level=1)
    with TrtRunner(result.engine_path) as runner:
        assert [p.text() for p in runner.profiles] == ["1:1:1", "2:4:8"]
        for batch in (1, 6, 1):  # switches profile and back
            x = _inputs(batch)
            (out,) = runner.infer(x).values()
            assert _relative_error(out, _reference(model, x)) <= FP32_TOLERANCE
        with pytest.raises(InputError, match="outside the engine's optimisation profiles"):
            runner.infer(_inputs(9))


def test_timing_cache_is_created_then_reused(tmp_path):
    from odexport.pipeline import engine_from_onnx

    onnx_path = _export(_model("dy_resnet_tiny"), tmp_path / "m.onnx", "decomposed")
    cache = tmp_path / "trt.cache"
    first = engine_from_onnx(onnx_path, tmp_path / "a.engine", profiles=["1:2:4"], timing_cache=cache, opt_level=1)
    assert first.timing_cache_state == "created" and cache.stat().st_size > 0
    second = engine_from_onnx(onnx_path, tmp_path / "b.engine", profiles=["1:2:4"], timing_cache=cache, opt_level=1)
    assert second.timing_cache_state in ("reused", "updated")


def test_an_engine_from_another_tensorrt_version_is_refused_before_deserialising(tmp_path):
    from odexport.engine.sidecar import EngineCompatibilityError, sidecar_path
    from odexport.pipeline import engine_from_onnx
    from odexport.runtime.tensorrt_runner import TrtRunner

    onnx_path = _export(_model("od_resnet_tiny"), tmp_path / "m.onnx", "decomposed")
    result = engine_from_onnx(onnx_path, tmp_path / "m.engine", profiles=["1:1:2"], opt_level=1)
    side = sidecar_path(result.engine_path)
    data = json.loads(side.read_text())
    data["tensorrt"]["version"] = "9.9.9.9"
    side.write_text(json.dumps(data))
    with pytest.raises(EngineCompatibilityError) as info:
        TrtRunner(result.engine_path)
    assert "TensorRT 9.9.9.9" in str(info.value) and "odexport trt" in info.value.hint


def test_parser_errors_name_the_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from odexport.engine.build import BuildOptions, build_engine
    from odexport.errors import ExportError

    # a custom op without a function body and without a plugin: the failure MMDeploy users know
    graph = helper.make_graph(
        [helper.make_node("ODConv2d", ["input"], ["output"], domain="com.odexport", name="layer1.0.conv1")],
        "opaque",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.odexport", 1)], ir_version=HAND_BUILT_IR_VERSION)
    path = tmp_path / "opaque.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ExportError) as info:
        build_engine(path, tmp_path / "opaque.engine", BuildOptions(opt_level=0))
    assert "layer1.0.conv1" in str(info.value) and "ODConv2d" in str(info.value)
    assert not (tmp_path / "opaque.engine").exists()


def test_cli_builds_from_a_checkpoint(tmp_path):
    import torch
    from typer.testing import CliRunner

    from odexport.cli.app import app
    from odexport.runtime import open_runner

    model = _model("od_resnet_tiny")
    checkpoint = tmp_path / "od.pth"
    torch.save(model.state_dict(), checkpoint)
    engine = tmp_path / "od.engine"
    result = CliRunner().invoke(app, ["trt", str(checkpoint), "--arch", "od_resnet_tiny", "-o", str(engine), "--profile", "1:2:4",
                                      "--opt-level", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["engine"] == str(engine) and report["metadata"]["source"]["checkpoint"]["path"] == str(checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["od.engine", "od.engine.json", "od.pth"]  # the ONNX was temporary
    runner = open_runner(engine)
    x = _inputs(4)
    (out,) = runner.infer(x).values()
    assert _relative_error(out, _reference(model, x)) <= FP32_TOLERANCE
    runner.close()
