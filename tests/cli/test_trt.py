"""``odexport trt``: exit codes and messages without TensorRT, and option errors (exit 1) before anything runs.

Where TensorRT and a GPU exist, the build itself is tested in tests/engine/test_tensorrt_build.py;
the "missing TensorRT" tests skip there.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from odexport._optional import available, cuda_available
from odexport.cli.app import app
from tests.engine._onnx import conv_model

HAVE_TENSORRT = available("tensorrt") and cuda_available()
needs_no_tensorrt = pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT and a GPU are present: the missing-TensorRT path cannot be shown here")


def _odexport(*args, cwd=None):
    env = {**os.environ, "ODEXPORT_DEBUG": "0", "CI": "1"}
    return subprocess.run([sys.executable, "-c", "from odexport.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _invoke(*args):
    result = CliRunner().invoke(app, ["trt", *map(str, args)])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@needs_no_tensorrt
def test_missing_tensorrt_exits_3_with_the_install_hint_and_writes_nothing(tmp_path):
    onnx_path = conv_model(tmp_path / "x.onnx")
    result = _odexport("trt", str(onnx_path), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    message = result.stderr
    assert "Traceback" not in message and message.count("\n") == 1  # one line
    assert "TensorRT is not installed" in message
    assert "CUDA GPU" in message
    assert "pip install 'odexport[trt]'" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]


@needs_no_tensorrt
def test_missing_tensorrt_is_found_before_a_checkpoint_is_exported(tmp_path):
    import torch

    from odexport.models import create_model

    checkpoint = tmp_path / "od.pth"
    torch.save(create_model("od_resnet_tiny").state_dict(), checkpoint)
    save_onnx = tmp_path / "kept.onnx"
    code, output = _invoke(checkpoint, "--arch", "od_resnet_tiny", "--save-onnx", save_onnx, "--fp16")
    assert code == 3, output
    assert "CUDA GPU" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["od.pth"]  # no ONNX, no engine, no sidecar


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--profile", "8:2:1"], "not ordered"),
        (["--profile", "1:2"], "MIN:OPT:MAX"),
        (["--profile", "1:2:4", "--max-batch", "8"], "cannot be combined"),
        (["--min-batch", "16", "--max-batch", "4"], "not ordered"),
        (["--opt-level", "9"], "--opt-level must be 0..5"),
        (["--workspace", "0"], "--workspace must be > 0"),
        (["--plugin", "libabsent_plugin.so"], "does not exist"),
        (["--input-shape", "3x8"], "is not CxHxW"),
        (["--input-shape", "3x16x16"], "disagrees"),
    ],
)
def test_bad_options_exit_1_before_tensorrt_is_looked_for(tmp_path, args, fragment):
    onnx_path = conv_model(tmp_path / "x.onnx")
    code, output = _invoke(onnx_path, *args)
    assert code == 1, output
    assert fragment in output and "Traceback" not in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]


def test_checkpoint_options_with_an_onnx_source_exit_1(tmp_path):
    onnx_path = conv_model(tmp_path / "x.onnx")
    code, output = _invoke(onnx_path, "--form", "custom", "--arch", "od_resnet_tiny")
    assert code == 1 and "--form, --arch apply when SOURCE is a checkpoint" in output


def test_grouped_form_from_a_checkpoint_needs_one_fixed_batch(tmp_path):
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"never read: the options are checked first")
    code, output = _invoke(checkpoint, "--form", "grouped", "--max-batch", "8")
    assert code == 1 and "--profile N" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]


def test_a_fixed_batch_onnx_with_another_batch_exits_1(tmp_path):
    onnx_path = conv_model(tmp_path / "fixed.onnx", dims=(4, 3, 8, 8))
    code, output = _invoke(onnx_path, "--max-batch", "8")
    assert code == 1
    assert "fixed batch of 4" in output and "--profile 4" in output


def test_bad_sources_exit_1(tmp_path):
    code, output = _invoke(tmp_path / "absent.onnx")
    assert code == 1 and "does not exist" in output
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    code, output = _invoke(engine)
    assert code == 1 and "already a TensorRT engine" in output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot protobuf" * 8)
    code, output = _invoke(junk)
    assert code == 1 and "not a readable ONNX" in output


def test_help_lists_the_options():
    result = CliRunner().invoke(app, ["trt", "--help"])
    assert result.exit_code == 0
    for option in ("--fp16", "--min-batch", "--opt-batch", "--max-batch", "--profile", "--workspace", "--opt-level",
                   "--timing-cache", "--plugin", "--input-shape", "--output"):
        assert option in result.output


def test_the_checkpoint_export_step_feeds_the_builder(tmp_path):
    """The export half of `odexport trt CKPT` (TensorRT-free), checked against the builder's input checks."""
    import torch

    from odexport.engine.build import BuildOptions, check_build_inputs
    from odexport.engine.profiles import BatchProfile
    from odexport.models import create_model

    from odexport.cli.commands.trt import _export

    checkpoint = tmp_path / "dy.pth"
    torch.save(create_model("dy_resnet_tiny").state_dict(), checkpoint)
    onnx_path = tmp_path / "dy.onnx"
    stages = []
    load = dict(arch="dy_resnet_tiny", kernel_num=None, temperature=None, trust_pickle=False, factory=None)
    _export(checkpoint, onnx_path, "auto", False, [BatchProfile(1, 4, 8)], (3, 32, 32), load, stages.append)
    inputs = check_build_inputs(onnx_path, BuildOptions(profiles=[BatchProfile(1, 4, 8)]))
    assert inputs.signature.inputs[0].dims == ("batch", 3, 32, 32) and inputs.onnx_precision == "fp32"
    assert any("export ONNX (form auto, target gpu)" in s for s in stages)
    assert "dy_resnet_tiny" in " ".join(inputs.signature.metadata.values())
    # as `odexport onnx` writes it: reparameterised, with the temperature `check` compares against
    assert "default passes" in inputs.signature.metadata["odexport.reparam"]
    assert inputs.signature.metadata["odexport.temperature"] == repr(1.0)
