"""Every tiny zoo architecture exports in the custom and the decomposed form with a dynamic batch
and matches PyTorch at batch 1, 2 and 7 (a full-size one in a slow test)."""

from __future__ import annotations

import onnx
import pytest
import torch

from odexport.export.custom import DOMAIN
from odexport.export.onnx_export import export_onnx
from odexport.models import create_model, list_models, model_info
from odexport.layers import dynamic_convs
from tests.export._cases import TINY_SHAPE, assert_runs_at_batches

TINY = ["od_resnet_tiny", "od_mobilenetv2_tiny", "dy_resnet_tiny", "ta_resnet_tiny", "dy_mobilenetv2_tiny", "dy_vgg_tiny"]


def _perturbed(model):
    """Move BN statistics and biases off their init values so a dropped parameter shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and (name.endswith(("bias", "running_mean")) or tensor.dim() == 1):
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=g))
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=g))
    return model.eval()


def test_tiny_list_is_the_registry():
    assert set(TINY) == {n for n in list_models() if model_info(n).tiny}


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("form", ["decomposed", "custom"])
def test_tiny_model_exports(tmp_path, name, form):
    torch.manual_seed(0)
    model = _perturbed(create_model(name))
    result = export_onnx(model, tmp_path / f"{name}.onnx", form=form, input_shape=TINY_SHAPE, architecture=name, check=False)
    proto = onnx.load(str(result.path))
    layers = dynamic_convs(model)
    assert [p.name for p in result.forms] == [n for n, _ in layers]
    if form == "custom":
        assert sum(n.domain == DOMAIN for n in proto.graph.node) == len(layers)
    else:
        assert not proto.functions and all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    assert_runs_at_batches(model, str(result.path), TINY_SHAPE)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["od_resnet18", "dy_resnet18", "od_mobilenetv2_050", "dy_mobilenetv2_050", "ta_resnet18"])
def test_full_size_model_exports(tmp_path, name):
    torch.manual_seed(0)
    model = _perturbed(create_model(name))
    shape = (3, 224, 224) if not name.startswith("ta_") else (3, 64, 64)
    for form in ("decomposed", "custom"):
        result = export_onnx(model, tmp_path / f"{name}-{form}.onnx", form=form, input_shape=shape, check=False)
        assert_runs_at_batches(model, str(result.path), shape, batches=(1, 2), scale_relative=1e-4)
