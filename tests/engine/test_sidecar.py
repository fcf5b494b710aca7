"""The engine sidecar: contents, atomic writing, and the compatibility check before loading (no TensorRT).

The engine bytes here are an opaque stand-in: the sidecar logic never interprets them, it only
checksums them; deserialisation is the TensorRT runner's job (see test_tensorrt_build.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat

import pytest

from odexport import __version__
from odexport.engine.profiles import BatchProfile, onnx_signature, resolve_profiles
from odexport.engine.sidecar import (
    BuildTarget,
    EngineCompatibilityError,
    EngineMetadata,
    check_compatible,
    read_sidecar,
    rebuild_command,
    sidecar_path,
    verify_engine_bytes,
    write_engine,
)
from odexport.errors import InputError
from tests.engine._onnx import conv_model

H100 = BuildTarget("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")
ENGINE = b"\x7fTRT-stand-in" + bytes(range(256)) * 4


def _metadata(tmp_path, target=H100, **changes) -> EngineMetadata:
    onnx_path = conv_model(tmp_path / "model.onnx")
    sig = onnx_signature(onnx_path)
    profiles = resolve_profiles(sig, [BatchProfile(1, 8, 32), BatchProfile(64, 64, 64)])
    base = EngineMetadata(
        target=target,
        precision="fp16",
        profiles=[p.to_dict() for p in profiles],
        inputs=[s.to_dict() for s in sig.inputs],
        outputs=[s.to_dict() for s in sig.outputs],
        source_onnx={"path": str(onnx_path), "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()},
        strongly_typed=True,
        build={"workspace_gib": 4.0, "opt_level": 3, "timing_cache": None, "seconds": 1.5},
        rebuild_command=rebuild_command(onnx_path, tmp_path / "model.engine", profiles=[p.batch for p in profiles], fp16=True,
                                        workspace_gib=4.0, opt_level=3),
        notes=["strongly typed"],
    )
    return dataclasses.replace(base, **changes)


def test_sidecar_path_is_beside_the_engine(tmp_path):
    assert sidecar_path(tmp_path / "model.engine") == tmp_path / "model.engine.json"


def test_sidecar_contents(tmp_path):
    engine, side = write_engine(tmp_path / "model.engine", ENGINE, _metadata(tmp_path))
    assert engine.read_bytes() == ENGINE
    umask = os.umask(0)
    os.umask(umask)
    # the mode of a normally created file, not mkstemp's owner-only 0600 (odexport._files)
    assert {stat.S_IMODE(p.stat().st_mode) for p in (engine, side)} == {0o666 & ~umask}
    data = json.loads(side.read_text())
    assert data["format"] == "odexport-engine/1"
    assert data["odexport_version"] == __version__
    assert data["engine"] == {"file": "model.engine", "sha256": hashlib.sha256(ENGINE).hexdigest(), "bytes": len(ENGINE)}
    assert data["tensorrt"]["version"] == "10.13.0.35" and data["tensorrt"]["strongly_typed"] is True
    assert data["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert data["precision"] == "fp16"
    assert [(p["min"], p["opt"], p["max"]) for p in data["profiles"]] == [(1, 8, 32), (64, 64, 64)]
    assert data["profiles"][0]["shapes"]["input"] == {"min": [1, 3, 8, 8], "opt": [8, 3, 8, 8], "max": [32, 3, 8, 8]}
    assert data["inputs"] == [{"name": "input", "shape": ["batch", 3, 8, 8], "dtype": "float32"}]
    source = tmp_path / "model.onnx"
    assert data["source"]["onnx"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert data["source"]["checkpoint"] is None
    assert data["rebuild"].startswith("odexport trt ") and "--profile 1:8:32 --profile 64:64:64 --fp16" in data["rebuild"]
    assert data["created"].endswith("+00:00")


def test_round_trip(tmp_path):
    written = _metadata(tmp_path)
    write_engine(tmp_path / "model.engine", ENGINE, written)
    read = read_sidecar(tmp_path / "model.engine")
    assert read.target == written.target and read.profiles == written.profiles
    assert read.batch_profiles == [BatchProfile(1, 8, 32), BatchProfile(64, 64, 64)]
    assert read.engine_sha256 == hashlib.sha256(ENGINE).hexdigest()
    verify_engine_bytes(read, ENGINE, tmp_path / "model.engine")


def test_same_machine_is_compatible(tmp_path):
    assert check_compatible(_metadata(tmp_path), H100, "model.engine") == []


def test_another_tensorrt_version_is_refused_with_the_rebuild_command(tmp_path):
    meta = _metadata(tmp_path)
    machine = dataclasses.replace(H100, tensorrt_version="10.8.0.43")
    with pytest.raises(EngineCompatibilityError) as info:
        check_compatible(meta, machine, "model.engine")
    text = str(info.value)
    assert "built with TensorRT 10.13.0.35, this machine has TensorRT 10.8.0.43" in text
    assert "rebuild it on this machine: odexport trt " in text and "--profile 1:8:32" in text
    assert info.value.exit_code == 1


def test_another_compute_capability_is_refused(tmp_path):
    machine = BuildTarget("10.13.0.35", "NVIDIA A10", "8.6")
    with pytest.raises(EngineCompatibilityError) as info:
        check_compatible(_metadata(tmp_path), machine, "model.engine")
    text = str(info.value)
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0)" in text and "NVIDIA A10 (compute capability 8.6)" in text
    assert "TensorRT 10.13.0.35, this machine" not in text  # only what differs is reported


def test_both_mismatches_are_reported_together(tmp_path):
    with pytest.raises(EngineCompatibilityError) as info:
        check_compatible(_metadata(tmp_path), BuildTarget("11.0.0.1", "NVIDIA A10", "8.6"), "model.engine")
    assert "TensorRT 11.0.0.1" in str(info.value) and "compute capability 8.6" in str(info.value)


def test_another_card_of_the_same_compute_capability_only_warns(tmp_path):
    meta = _metadata(tmp_path, target=BuildTarget("10.13.0.35", "NVIDIA A100-SXM4-80GB", "8.0"))
    warnings = check_compatible(meta, BuildTarget("10.13.0.35", "NVIDIA A30", "8.0"), "model.engine")
    assert len(warnings) == 1 and "NVIDIA A30" in warnings[0] and "rebuild for best speed" in warnings[0]


def test_a_replaced_engine_no_longer_matches_its_sidecar(tmp_path):
    write_engine(tmp_path / "model.engine", ENGINE, _metadata(tmp_path))
    (tmp_path / "model.engine").write_bytes(ENGINE + b"tampered")
    meta = read_sidecar(tmp_path / "model.engine")
    with pytest.raises(EngineCompatibilityError, match="does not match its sidecar"):
        verify_engine_bytes(meta, (tmp_path / "model.engine").read_bytes(), tmp_path / "model.engine")


def test_missing_or_broken_sidecar(tmp_path):
    (tmp_path / "model.engine").write_bytes(ENGINE)
    with pytest.raises(EngineCompatibilityError, match="has no sidecar model.engine.json") as info:
        read_sidecar(tmp_path / "model.engine")
    assert "odexport trt MODEL.onnx -o" in str(info.value)
    (tmp_path / "model.engine.json").write_text("{not json")
    with pytest.raises(EngineCompatibilityError, match="not a valid odexport engine sidecar"):
        read_sidecar(tmp_path / "model.engine")
    (tmp_path / "model.engine.json").write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(EngineCompatibilityError, match="not a valid"):
        read_sidecar(tmp_path / "model.engine")
    # complete but for one thing: another format, a part missing, valid JSON of another shape
    whole = _metadata(tmp_path).to_dict()
    broken = {"format": {**whole, "format": "odexport-engine/2"}, "missing": {k: v for k, v in whole.items() if k != "tensorrt"},
              "list": [], "text": "engine", "part": {**whole, "gpu": "H100"}}
    for what, data in broken.items():
        (tmp_path / "model.engine.json").write_text(json.dumps(data))
        with pytest.raises(EngineCompatibilityError, match="not a valid odexport engine sidecar"):
            read_sidecar(tmp_path / "model.engine")
            pytest.fail(f"the {what} case was read as a sidecar")


def test_tf32_and_the_workspace_survive_the_sidecar(tmp_path):
    """An engine built with TF32 convolutions computes at reduced precision (the runner reads the
    flag for check's default tolerance); the rebuild command repeats it and the workspace as given."""
    onnx_path = conv_model(tmp_path / "model.onnx")
    command = rebuild_command(onnx_path, tmp_path / "model.engine", tf32=True, workspace_gib=0.5)
    assert command.endswith(" --tf32 --workspace 0.5")
    write_engine(tmp_path / "model.engine", ENGINE, _metadata(tmp_path, tf32=True, precision="fp32", rebuild_command=command))
    read = read_sidecar(tmp_path / "model.engine")
    assert read.tf32 is True and read.rebuild_command == command
    assert json.loads((tmp_path / "model.engine.json").read_text())["tensorrt"]["tf32"] is True


def test_a_failed_write_leaves_no_file(tmp_path):
    bad = _metadata(tmp_path, build={"seconds": float("nan")})  # JSON without NaN cannot hold it
    with pytest.raises(ValueError):
        write_engine(tmp_path / "model.engine", ENGINE, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_failed_write_keeps_the_previous_engine(tmp_path):
    write_engine(tmp_path / "model.engine", ENGINE, _metadata(tmp_path))
    before = (tmp_path / "model.engine.json").read_text()
    with pytest.raises(ValueError):
        write_engine(tmp_path / "model.engine", b"new engine", _metadata(tmp_path, build={"seconds": float("inf")}))
    assert (tmp_path / "model.engine").read_bytes() == ENGINE
    assert (tmp_path / "model.engine.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.engine.json", "model.onnx"]


def test_output_folder_must_exist(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_engine(tmp_path / "absent" / "model.engine", ENGINE, _metadata(tmp_path))


def test_rebuild_command_quotes_paths(tmp_path):
    command = rebuild_command("my models/ckpt.pth", "out dir/m.engine", profiles=[BatchProfile(1, 2, 4)],
                              timing_cache="trt.cache", plugins=["libodexport_plugin.so"], input_shape=(3, 32, 32),
                              extra_args=("--arch", "od_resnet_tiny"))
    assert command == ("odexport trt 'my models/ckpt.pth' -o 'out dir/m.engine' --arch od_resnet_tiny --profile 1:2:4 "
                       "--timing-cache trt.cache --plugin libodexport_plugin.so --input-shape 3x32x32")
