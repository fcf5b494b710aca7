"""Every case of the three reference layer banks: the deploy model equals the source.

Each layer is followed by a BatchNorm (random statistics) and a ReLU so that every exact pass has
work to do; the source layer is first pinned to the reference implementation's stored output.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from odexport.reparam import reparameterise
from odexport.reparam.deploy import model_from_deploy, save_deploy
from tests.conftest import load_refdata
from tests.reparam._helpers import BANKS, assert_deploy_matches, bank_layer, randomize_batchnorms, rel_dev

CASES = [pytest.param(bank, i, id=f"{bank}-{i}") for bank, (_, n) in BANKS.items() for i in range(n)]


def _reference_output(bank: str, case):
    return case["output"] if bank == "odconv" else case["output_T1"]


def _model(layer: nn.Module) -> nn.Sequential:
    out_channels = layer.weight.shape[1]
    return randomize_batchnorms(nn.Sequential(layer, nn.BatchNorm2d(out_channels), nn.ReLU())).eval()


def _temperatures(bank: str, case) -> list[float]:
    default = case["temperature"] if bank == "odconv" else 1.0
    other = case["temperature_initial"] if bank == "kaijieshi7" else 7.0
    return [default, other] if other != default else [default, 3.0]


@pytest.mark.parametrize("bank,index", CASES)
def test_deploy_equals_source(bank, index, tmp_path):
    layer, case = bank_layer(bank, index)
    with torch.no_grad():  # the source is the reference implementation (also pinned in tests/layers)
        torch.testing.assert_close(layer(case["input"]), _reference_output(bank, case), atol=1e-5, rtol=1e-5)
        # the deploy layer alone reproduces the reference implementation's stored output too
        alone = reparameterise(nn.Sequential(layer)).model
        torch.testing.assert_close(alone(case["input"]), _reference_output(bank, case), atol=1e-5, rtol=1e-5)

    sample_shape = tuple(case["input"].shape[1:])
    for temperature in _temperatures(bank, case):
        layer.temperature = temperature
        source = _model(layer)
        report = reparameterise(source)
        deploy = report.model
        assert "fold-bn" in report.passes_applied
        if temperature != 1.0:
            assert "fold-temperature" in report.passes_applied
            assert report.original_temperatures["0"] == temperature
        assert layer.temperature == temperature, "the input model must stay untouched"
        with torch.no_grad():
            for batch in (1, 4):
                x = torch.randn(batch, *sample_shape)
                assert_deploy_matches(deploy, source, x, f"T={temperature} batch {batch}")

        path = save_deploy(deploy, report, tmp_path / f"deploy_T{temperature}.pt", {"path": "bank", "sha256": None})
        obj = torch.load(path, weights_only=True)
        fresh_layer, _ = bank_layer(bank, index, fresh=True)
        rebuilt = model_from_deploy(obj, model=nn.Sequential(fresh_layer, nn.BatchNorm2d(fresh_layer.weight.shape[1]), nn.ReLU()))
        assert rebuilt.state_dict().keys() == deploy.state_dict().keys()
        with torch.no_grad():
            x = torch.randn(4, *sample_shape)
            assert rel_dev(rebuilt(x), deploy(x)) <= 1e-7


CHECKPOINTS = [
    pytest.param(("odconv", "od_mobilenetv2_050_k4.pth.tar"), ("odconv", "od_mobilenetv2_050_k4.io.pt"),
                 {1.0: "logits", 4.0: "logits_temperature4"}, id="od_mobilenetv2_050_k4"),
    pytest.param(("dyconv", "tardelean_Resnet_DY_05_1.pth"), ("dyconv", "tardelean_Resnet_DY_05.io.pt"),
                 {1.0: "output_T1", 30.0: "output_T30"}, id="tardelean_resnet10"),
]


@pytest.mark.parametrize("checkpoint,io,outputs", CHECKPOINTS)
def test_reference_checkpoints_through_the_command(checkpoint, io, outputs, tmp_path):
    """Checkpoints saved by the reference training scripts -> `odexport reparam` -> deploy file ->
    loader: the outputs the reference code computed, at T = 1 and at the non-default T."""
    from typer.testing import CliRunner

    from odexport.cli.app import app
    from odexport.pipeline import model_from_checkpoint
    from tests.conftest import refdata_path

    source_path = refdata_path(*checkpoint)
    data = load_refdata(*io)
    for temperature, key in outputs.items():
        out = tmp_path / f"deploy_T{temperature:g}.pt"
        result = CliRunner().invoke(app, ["reparam", str(source_path), "-o", str(out), "--temperature", str(temperature)], env={"CI": "1"})
        assert result.exit_code == 0, result.output
        loaded = model_from_checkpoint(out)
        assert loaded.info.source == "deploy"
        manifest = torch.load(out, weights_only=True)["odexport_deploy"]
        assert manifest["params"]["deploy"] < manifest["params"]["source"]
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(data["input"]), data[key], atol=1e-5, rtol=1e-5)
