"""A dynamic convolution odexport cannot export is refused by name before anything is traced:
a reference layer left in a user model (its batch-folded grouped conv would bake the batch in)
and kaijieshi7's 1-D / 3-D layers (odexport exports 2-D ones)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from odexport.checkpoint import load_checkpoint
from odexport.cli.app import app
from odexport.errors import ArchitectureError, ExportError
from odexport.export.forms import probe_model
from tests.convert import standins


def test_a_reference_layer_left_in_the_model_is_named():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), standins.Dynamic_conv2d(8, 8, 3, padding=1))
    with pytest.raises(ExportError) as info:
        probe_model(model, (3, 16, 16))
    assert "layer '1' (tests.convert.standins.Dynamic_conv2d) looks like a dynamic convolution" in info.value.message
    assert "odexport.convert" in info.value.hint


@pytest.mark.parametrize("layer, dims", [(standins.Dynamic_conv1d(8, 8, 3), 1), (standins.Dynamic_conv3d(8, 8, 3), 3)])
def test_one_and_three_dimensional_layers_are_refused_by_name(layer, dims, tmp_path):
    model = nn.Sequential(layer)
    with torch.no_grad():  # the stand-in runs: it is a real layer of that rank, not a name
        assert model(torch.randn(2, 8, *(6,) * dims)).shape == (2, 8, *(6,) * dims)
    with pytest.raises(ExportError) as info:
        probe_model(model, (8, 6, 6))
    assert f"is a {dims}-D dynamic convolution; odexport exports 2-D dynamic convolutions only" in info.value.message

    path = tmp_path / f"net{dims}d.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ArchitectureError) as info:
        load_checkpoint(path)
    assert f"dynamic convolutions are {dims}-D (kaijieshi7 Dynamic_conv{dims}d: '0.weight'" in info.value.message
    assert "no dynamic-convolution layers found" not in info.value.message
    result = CliRunner().invoke(app, ["onnx", str(path), "-o", str(tmp_path / "net.onnx"), "--quiet"])
    assert result.exit_code == 1 and "2-D dynamic convolutions only" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "net.onnx").exists()
