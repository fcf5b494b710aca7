"""TArdelean DY-MobileNetV3 checkpoints: detected, loaded strictly, and computing what the reference
computes.  The reference here is the test-side stand-in of its ``models/mobilenetv3.py``
(``tests.convert.standins``, whose ``DynamicConvolution`` is checked against reference data made
with the public code), saved the way its ``utils.save_checkpoint`` saves."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from odexport.cli import app
from odexport.layers import dynamic_convs
from odexport.pipeline import model_from_checkpoint
from tests.convert import standins


def save_like_tardelean(model, path, epoch=200):
    """``{'model', 'optimizer', 'scheduler', 'epoch'}``, single GPU (no ``module.`` prefix)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 200)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch}, path)


@pytest.mark.parametrize("mode, width, classes", [("small", 0.5, 200), ("small", 0.25, 10), ("large", 1.0, 10)])
def test_detected_and_equal_to_the_reference(mode, width, classes, tmp_path):
    torch.manual_seed(1)
    reference = standins.MobileNetV3(n_class=classes, mode=mode, width_mult=width).eval()
    path = tmp_path / f"MobileNetV3_DY_{mode}_{width}_200.pth"
    save_like_tardelean(reference, path)

    loaded = model_from_checkpoint(path)
    assert loaded.info.layout == "tardelean"
    assert loaded.info.arch == f"ta_mobilenetv3_{mode}"
    assert loaded.info.model_kwargs.get("width_multiplier", 1.0) == width
    assert loaded.info.num_classes == classes
    assert list(loaded.model.state_dict()) == list(reference.state_dict())  # same keys, same order

    # the reference's configs: Tiny-ImageNet (200 classes) at 64x64, Imagenette (10 classes) at 224x224
    assert loaded.info.input_shape == ((3, 64, 64) if classes == 200 else (3, 224, 224))
    assert any("Imagenette" in w for w in loaded.info.warnings) == (classes == 10)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x, 1.0)
        torch.testing.assert_close(loaded.model(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.model(x[:1]), expected[:1], atol=1e-5, rtol=1e-5)


def test_exports_and_passes_the_parity_gate(tmp_path):
    torch.manual_seed(2)
    path = tmp_path / "MobileNetV3_DY_025_Tiny_200.pth"
    save_like_tardelean(standins.MobileNetV3(n_class=10, mode="small", width_mult=0.25).eval(), path)
    onnx_path = tmp_path / "mbv3.onnx"
    runner = CliRunner()
    result = runner.invoke(app, ["onnx", str(path), "-o", str(onnx_path), "--input-shape", "3x32x32"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["check", str(path), str(onnx_path), "--input-shape", "3x32x32", "--samples", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is True


def test_a_temperature_reaches_the_layers_the_reference_hands_it_to(tmp_path):
    """Mid-training (T on the 30 -> 1 schedule): the reference's ``conv_1x1_bn`` is a plain
    ``nn.Sequential``, so its dynamic conv runs at T=1 while every other one gets T; so here."""
    torch.manual_seed(3)
    reference = standins.MobileNetV3(n_class=200, mode="small", width_mult=0.5).eval()
    with torch.no_grad():  # spread the attention logits so that the temperature matters
        for name, tensor in reference.state_dict().items():
            if "to_scores" in name and name.endswith("weight"):
                tensor.mul_(20)
    path = tmp_path / "MobileNetV3_DY_05_Tiny_200.pth"
    save_like_tardelean(reference, path, epoch=4)

    loaded = model_from_checkpoint(path, temperature=7.0)
    temperatures = {name: layer.temperature for name, layer in dynamic_convs(loaded.model)}
    assert {name for name, t in temperatures.items() if t != 7.0} == {"features.layers.12.0"}
    assert loaded.info.temperature is None  # not one temperature any more
    assert any("features.layers.12.0" in w for w in loaded.info.warnings)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x, 7.0)
        torch.testing.assert_close(loaded.model(x), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(expected, reference(x, 1.0), atol=1e-3)  # T mattered

    result = CliRunner().invoke(app, ["inspect", str(path), "--temperature", "7", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["temperature"] is None and summary["temperatures"]["features.layers.12.0"] == 1.0

    # the deploy checkpoint (temperature not folded at T=1) is rebuilt by the builder: the pin holds there too
    deploy = tmp_path / "deploy.pt"
    result = CliRunner().invoke(app, ["reparam", str(path), "-o", str(deploy)])
    assert result.exit_code == 0, result.output
    redeployed = model_from_checkpoint(deploy, temperature=7.0)
    assert redeployed.info.temperature is None and redeployed.info.extras["temperatures"]["features.layers.12.0"] == 1.0
    with torch.no_grad():
        torch.testing.assert_close(redeployed.model(x), expected, atol=1e-5, rtol=1e-5)
