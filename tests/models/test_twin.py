"""static_twin: same network with every dynamic conv replaced by a plain nn.Conv2d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from odexport.layers import DyConv2d, ODConv2d, dynamic_convs
from odexport.models import create_model, list_models, model_info, static_twin
from tests.models._util import calibrate_batchnorm_


@pytest.mark.parametrize("name", list_models(tiny=True))
def test_twin_replaces_every_dynamic_conv_with_matching_geometry(name):
    model = create_model(name).eval()
    twin = static_twin(model).eval()
    assert dynamic_convs(twin) == []
    assert len(dynamic_convs(model)) > 0  # the original is untouched
    twin_modules = dict(twin.named_modules())
    for path, layer in dynamic_convs(model):
        conv = twin_modules[path]
        assert type(conv) is nn.Conv2d
        assert conv.weight.shape == layer.weight.shape[1:]
        assert (conv.stride, conv.padding, conv.dilation, conv.groups) == (
            layer.stride, layer.padding, layer.dilation, layer.groups)
        torch.testing.assert_close(conv.weight, layer.weight.mean(0))
        has_bias = isinstance(layer, DyConv2d) and layer.bias is not None
        assert (conv.bias is not None) == has_bias
    x = torch.randn(2, *model_info(name).input_shape)
    with torch.no_grad():
        assert twin(x).shape == model(x).shape


@pytest.mark.parametrize("name", ["dy_resnet_tiny", "ta_resnet_tiny", "dy_mobilenetv2_tiny"])
def test_twin_equals_the_dynamic_model_when_all_kernels_are_equal(name):
    # DY-Conv mixes kernels with softmax weights that sum to 1: with K identical kernels (and
    # identical dynamic biases) the dynamic conv IS a static conv with that kernel, whatever the
    # attention says.  An independent check that the twin keeps geometry and bias right.
    model = create_model(name).eval()
    with torch.no_grad():
        for _, layer in dynamic_convs(model):
            layer.weight.copy_(layer.weight[:1].expand_as(layer.weight))
            if layer.bias is not None:
                layer.bias.copy_(torch.randn(1, layer.bias.shape[1]).expand_as(layer.bias))
    calibrate_batchnorm_(model, model_info(name).input_shape)
    twin = static_twin(model).eval()
    x = torch.randn(2, *model_info(name).input_shape)
    with torch.no_grad():
        expected = model(x)
        assert expected.abs().max() > 1e-2
        torch.testing.assert_close(twin(x), expected, atol=1e-5, rtol=1e-5)


def test_twin_keeps_a_folded_static_bias():
    layer = ODConv2d(8, 16, 3, padding=1, kernel_num=2)
    layer.static_bias = nn.Parameter(torch.randn(16))
    conv = static_twin(layer)
    assert type(conv) is nn.Conv2d
    torch.testing.assert_close(conv.bias, layer.static_bias.detach())


def test_twin_of_dynamic_bias_and_static_bias_adds_them():
    layer = DyConv2d(8, 16, 3, padding=1, bias=True, num_kernels=3)
    with torch.no_grad():
        layer.bias.normal_()
    layer.static_bias = nn.Parameter(torch.randn(16))
    conv = static_twin(layer)
    torch.testing.assert_close(conv.bias, layer.bias.detach().mean(0) + layer.static_bias.detach())


def test_twin_keeps_train_eval_mode_and_leaves_the_original_alone():
    model = create_model("od_resnet_tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = static_twin(model)
    assert twin.training and all(m.training for m in twin.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
