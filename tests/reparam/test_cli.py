"""``odexport reparam``: a real checkpoint in, a deploy checkpoint out that every loader accepts."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from odexport.cli.app import app
from odexport.layers import dynamic_convs
from odexport.models import create_model
from odexport.pipeline import model_from_checkpoint
from tests.reparam._helpers import assert_deploy_matches, randomize_batchnorms, randomize_biases

ARCH = "od_resnet_tiny"


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory):
    torch.manual_seed(7)
    model = randomize_batchnorms(randomize_biases(create_model(ARCH, kernel_num=4), seed=2), seed=3)
    path = tmp_path_factory.mktemp("src") / "od_tiny.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    return path


def _invoke(*args):
    return CliRunner().invoke(app, ["reparam", *map(str, args)], env={"CI": "1"})


def test_writes_a_deploy_checkpoint_and_explains(source_checkpoint, tmp_path):
    out = tmp_path / "deploy.pt"
    result = _invoke(source_checkpoint, "-o", out, "--explain", "--temperature", "5")
    assert result.exit_code == 0, result.output
    for text in ("wrote", "fold-attention-bn", "fuse-heads", "applied", "skipped", "max relative deviation"):
        assert text in result.output
    obj = torch.load(out, weights_only=True)
    manifest = obj["odexport_deploy"]
    assert manifest["source"]["sha256"] == hashlib.sha256(source_checkpoint.read_bytes()).hexdigest()
    assert manifest["arch"] == ARCH and manifest["model_kwargs"]["kernel_num"] == 4
    assert set(manifest["original_temperatures"].values()) == {5.0}
    assert manifest["passes"] == ["fold-attention-bn", "fold-temperature", "fold-bn", "fuse-heads"]

    source = model_from_checkpoint(source_checkpoint, temperature=5.0).model
    deploy = model_from_checkpoint(out)
    assert deploy.info.source == "deploy"
    assert sum(p.numel() for p in deploy.model.parameters()) < sum(p.numel() for p in source.parameters())
    assert all(layer.attention.heads is not None for _, layer in dynamic_convs(deploy.model))
    assert_deploy_matches(deploy.model, source, torch.randn(4, 3, 32, 32), "CLI deploy")


def test_json_output(source_checkpoint, tmp_path):
    out = tmp_path / "deploy.pt"
    result = _invoke(source_checkpoint, "-o", out, "--json", "--passes", "fuse-heads")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["output"] == str(out)
    assert [p["name"] for p in report["passes"]] == ["fuse-heads"]
    assert report["passes_applied"] == ["fuse-heads"]
    assert report["params_after"] == report["params_before"]  # fusing moves parameters, it removes none
    assert report["attention_matmuls"] == 2 * report["dynamic_layers"]  # fc + fused heads per layer
    assert report["check"]["max_relative_deviation"] < 1e-6


def test_calibration_freezes_and_reports(source_checkpoint, tmp_path):
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, x=np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32)).astype(np.uint8))
    out = tmp_path / "frozen.pt"
    result = _invoke(source_checkpoint, "-o", out, "--calibration", calibration, "--freeze-below", "1e9")
    assert result.exit_code == 0, result.output
    # uint8 images run unscaled: the spreads are measured at that scale, so the user is told
    assert "are uint8 (0..255) and run at that scale" in " ".join(result.output.split())
    assert "frozen (approximate)" in result.output and "attention spread on 6 calibration samples" in result.output
    assert "caution: 6 calibration samples: a spread measured on so few" in " ".join(result.output.split())
    deploy = model_from_checkpoint(out).model
    assert dynamic_convs(deploy) == []  # every layer was below the (absurd) threshold
    manifest = torch.load(out, weights_only=True)["odexport_deploy"]
    assert all(rec["frozen"] for rec in manifest["freeze"]["layers"])
    assert "freeze-low-spread" in manifest["passes"]
    assert manifest["freeze"]["caution"].startswith("6 calibration samples")


@pytest.mark.parametrize("args,message", [
    (["--passes", "fold-bm"], "did you mean 'fold-bn'"),
    (["--passes", ""], "--passes '' names no pass"),  # not silently none
    (["--freeze-below", "0.1"], "--freeze-below needs --calibration"),
    (["--dy-bn-shift", "sideways"], "--dy-bn-shift"),
    (["--calibration", "/nonexistent/calib.npy"], "check the path given to --calibration"),  # was: to --inputs
])
def test_bad_options_fail_in_one_line_without_writing(source_checkpoint, tmp_path, args, message):
    out = tmp_path / "deploy.pt"
    result = _invoke(source_checkpoint, "-o", out, *args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_checkpoint(tmp_path):
    result = _invoke(tmp_path / "nope.pth", "-o", tmp_path / "d.pt")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not (tmp_path / "d.pt").exists()


def test_a_tolerance_below_float32_rounding_is_named_not_called_a_bug(source_checkpoint, tmp_path):
    """The exact passes reorder float32 arithmetic (~1e-7 of the output scale); `--tolerance 0`
    fails on that, and the hint says so instead of "this is a bug in odexport"."""
    out = tmp_path / "deploy.pt"
    result = _invoke(source_checkpoint, "-o", out, "--tolerance", "0")
    assert result.exit_code == 2, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("error:"))
    assert "above the tolerance 0" in line and "float32 rounding" in line and "--tolerance 0.0001 (the default)" in line
    assert "bug" not in line and not out.exists()


def test_an_output_folder_is_refused_with_a_deploy_file_name_in_it(source_checkpoint, tmp_path):
    result = _invoke(source_checkpoint, "-o", tmp_path)
    assert result.exit_code == 1 and f"give a file name in it, e.g. {tmp_path / 'deploy.pt'}" in result.output
    assert list(tmp_path.iterdir()) == []
