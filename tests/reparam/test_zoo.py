"""Zoo models at K = 1 and K = 4: the deploy model equals the source, and its checkpoint round-trips."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from odexport.layers import ODConv2d, dynamic_convs, set_temperature
from odexport.models import create_model, list_models, model_info
from odexport.reparam import reparameterise
from odexport.reparam.deploy import model_from_deploy, save_deploy
from tests.reparam._helpers import assert_deploy_matches, randomize_batchnorms, randomize_biases, rel_dev

TINY = [name for name in list_models() if model_info(name).tiny]
FULL = ["od_resnet18", "od_mobilenetv2_050", "dy_resnet18", "ta_resnet10", "dy_mobilenetv2_035", "dy_resnet10_paper"]


def _source(name: str, kernel_num: int) -> nn.Module:
    model = create_model(name, kernel_num=kernel_num)
    return randomize_batchnorms(randomize_biases(model, seed=1), seed=2).eval()


def _source_info(name: str, kernel_num: int) -> dict:
    info = model_info(name)
    return {"path": f"{name}.pth", "sha256": None, "arch": name, "model_kwargs": {"kernel_num": kernel_num},
            "layout": info.layout, "input_shape": info.input_shape}


def _count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def _check_deploy(name, kernel_num, sample_shape, tmp_path, temperatures=(1.0, 7.0)):
    source = _source(name, kernel_num)
    for temperature in temperatures:
        set_temperature(source, temperature)
        report = reparameterise(source)
        deploy = report.model
        for batch in (1, 4):
            x = torch.randn(batch, *sample_shape)
            assert_deploy_matches(deploy, source, x, f"{name} K={kernel_num} T={temperature} batch {batch}")
    # in float64 the passes are an identity to rounding: nothing but fp32 storage separates the models
    source64 = copy.deepcopy(source).double()
    deploy64 = reparameterise(source64).model
    with torch.no_grad():
        x64 = torch.randn(4, *sample_shape, dtype=torch.float64)
        assert rel_dev(deploy64(x64), source64(x64)) <= 1e-10
    # the structure really changed: fewer parameters and BatchNorms, fused ODConv heads
    assert report.params_after < report.params_before
    assert _count(deploy, nn.BatchNorm2d) < _count(source, nn.BatchNorm2d)
    for _, layer in dynamic_convs(deploy):
        assert layer.temperature == 1.0
        if isinstance(layer, ODConv2d):
            assert layer.attention.bn is None
            assert layer.attention.heads is not None or len(layer.attention.present_heads()) < 2
    if kernel_num == 1 and model_info(name).layout != "odconv":
        assert not dynamic_convs(deploy), "every K=1 DY-Conv layer becomes a static conv"

    path = save_deploy(deploy, report, tmp_path / f"{name}_k{kernel_num}.deploy.pt", _source_info(name, kernel_num))
    obj = torch.load(path, weights_only=True)
    manifest = obj["odexport_deploy"]
    assert manifest["arch"] == name and manifest["passes"] == report.passes_applied
    assert manifest["original_temperatures"] == report.original_temperatures
    rebuilt = model_from_deploy(obj)  # create_model(arch, **model_kwargs) + recorded structure
    assert isinstance(rebuilt, nn.Module) and not rebuilt.training
    assert sum(p.numel() for p in rebuilt.parameters()) == report.params_after
    with torch.no_grad():
        x = torch.randn(4, *sample_shape)
        assert rel_dev(rebuilt(x), deploy(x)) <= 1e-7
    assert_deploy_matches(rebuilt, source, x, f"{name} K={kernel_num} rebuilt from the deploy file")


@pytest.mark.parametrize("kernel_num", [1, 4])
@pytest.mark.parametrize("name", TINY)
def test_tiny_zoo_deploy_equals_source(name, kernel_num, tmp_path):
    _check_deploy(name, kernel_num, model_info(name).input_shape, tmp_path)


def test_deploy_loads_through_the_checkpoint_loader(tmp_path):
    from odexport.pipeline import model_from_checkpoint

    source = _source("od_mobilenetv2_tiny", 4)
    report = reparameterise(source)
    path = save_deploy(report.model, report, tmp_path / "deploy.pt", _source_info("od_mobilenetv2_tiny", 4))
    loaded = model_from_checkpoint(path)
    assert loaded.info.arch == "od_mobilenetv2_tiny"
    assert_deploy_matches(loaded.model, source, torch.randn(2, 3, 32, 32), "deploy loaded by model_from_checkpoint")


@pytest.mark.slow
@pytest.mark.parametrize("kernel_num", [1, 4])
@pytest.mark.parametrize("name", FULL)
def test_full_zoo_deploy_equals_source(name, kernel_num, tmp_path):
    # fully convolutional with global pooling: 64x64 inputs exercise every layer at a fraction of the cost
    _check_deploy(name, kernel_num, (3, 64, 64), tmp_path, temperatures=(1.0, 5.0))
