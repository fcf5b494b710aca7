"""Reference layers inside a user's model are swapped for odexport layers with identical outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from odexport.convert import ConversionReport, TemperatureArgDyConv2d, convert_reference_layers
from odexport.layers import DyConv2d, ODConv2d, dynamic_convs, set_temperature
from tests.conftest import load_refdata
from tests.convert import standins

TOL = dict(atol=1e-5, rtol=1e-5)


# The stand-ins must behave like the public code, or the conversion tests below prove nothing.
@pytest.mark.parametrize("index", [0, 1, 4, 6, 8, 12])  # case 1 trains at T=30: the temperature is carried over
def test_odconv_standin_reproduces_reference_bank(index):
    case = load_refdata("odconv", "odconv2d_layer_bank.pt")["cases"][index]
    layer = standins.ODConv2d(**case["ctor_kwargs"]).eval()
    layer.load_state_dict(case["state_dict"])
    layer.attention.temperature = case["temperature"]
    with torch.no_grad():
        torch.testing.assert_close(layer(case["input"]), case["output"], **TOL)
        report = convert_reference_layers(wrapper := nn.Sequential(layer))
        assert isinstance(wrapper[0], ODConv2d) and len(report.converted) == 1
        assert wrapper[0].temperature == case["temperature"]
        torch.testing.assert_close(wrapper(case["input"]), case["output"], **TOL)


@pytest.mark.parametrize("index", [0, 2, 4, 6])
def test_kaijieshi7_standin_reproduces_reference_bank(index):
    case = load_refdata("dyconv", "kaijieshi7_dynamic_conv2d_layer_bank.pt")["cases"][index]
    kwargs = {k: v for k, v in case["ctor_kwargs"].items() if k != "init_weight"}
    layer = standins.Dynamic_conv2d(**kwargs).eval()
    layer.load_state_dict(case["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(layer(case["input"]), case["output_T_initial"], **TOL)
        wrapper = nn.Sequential(layer)
        report = convert_reference_layers(wrapper)
        assert isinstance(wrapper[0], DyConv2d)
        assert report.converted[0].temperature == case["temperature_initial"]  # carried over, not reset
        torch.testing.assert_close(wrapper(case["input"]), case["output_T_initial"], **TOL)
        set_temperature(wrapper, case["temperature_final"])
        torch.testing.assert_close(wrapper(case["input"]), case["output_T1"], **TOL)


@pytest.mark.parametrize("index", [0, 2, 3])
def test_tardelean_standin_reproduces_reference_bank(index):
    case = load_refdata("dyconv", "tardelean_dynamicconvolution_layer_bank.pt")["cases"][index]
    layer = standins.DynamicConvolution(**case["ctor_kwargs"]).eval()
    layer.load_state_dict(case["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(layer(case["input"], 30), case["output_T30"], **TOL)
        wrapper = nn.Sequential(layer)
        convert_reference_layers(wrapper, tardelean_temperature=30)
        assert isinstance(wrapper[0], TemperatureArgDyConv2d)
        torch.testing.assert_close(wrapper(case["input"]), case["output_T30"], **TOL)
        assert set(wrapper[0].state_dict()) == {f"{k}" for k in case["state_dict"]}


def test_mixed_user_model_keeps_outputs_and_keys():
    torch.manual_seed(0)
    model = standins.MixedNet(kaijieshi7_temperature=4).eval()
    x = torch.randn(3, 3, 20, 18)
    with torch.no_grad():
        expected = model(x)
        expected_bs1 = model(x[:1])
    keys_before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = convert_reference_layers(model)
    assert isinstance(report, ConversionReport) and report.model is model
    assert [c.name for c in report.converted] == ["od", "od_dw", "od_pw", "dy", "dy_old", "ta"]
    assert [c.layout for c in report.converted] == ["odconv"] * 3 + ["kaijieshi7"] * 2 + ["tardelean"]
    assert {c.temperature for c in report.converted} == {1.0, 4.0}
    assert not report.skipped
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys_before
    assert len(dynamic_convs(model)) == 6
    assert model.dy_old.attention.fc2.bias is None  # an old kaijieshi7 checkpoint layout is kept
    assert model.od_dw.attention.filter_fc is None and model.od_pw.attention.spatial_fc is None
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, **TOL)
        torch.testing.assert_close(model(x[:1]), expected_bs1, **TOL)


def test_a_float64_model_converts_into_float64_layers():
    """The new layers take the replaced layers' dtype (and device): a float32 layer inside a float64
    model fails its forward ("expected scalar type Double")."""
    torch.manual_seed(0)
    model = standins.MixedNet(kaijieshi7_temperature=4).double().eval()
    x = torch.randn(2, 3, 20, 18, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    convert_reference_layers(model)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-12, rtol=1e-12)


def test_kaijieshi7_training_start_temperature_is_carried_with_a_warning():
    model = standins.MixedNet(kaijieshi7_temperature=34)
    report = convert_reference_layers(model)
    assert model.dy.temperature == 34
    assert any("training start value" in w and "dy" in w for w in report.warnings)


def test_tardelean_style_model_with_temperature_argument():
    torch.manual_seed(1)
    model = standins.TardeleanStyleNet().eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        expected = model(x, 1.0)
        convert_reference_layers(model)
        assert isinstance(model.conv1, TemperatureArgDyConv2d) and model.conv1.temperature == 1.0
        torch.testing.assert_close(model(x, 1.0), expected, **TOL)


def test_same_class_name_with_another_layout_is_left_alone():
    class Dynamic_conv2d(nn.Module):  # noqa: N801 - a user's unrelated layer with the same name
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 4, 3, 3))

        def forward(self, x):
            return torch.nn.functional.conv2d(x, self.weight, padding=1)

    model = nn.Sequential(Dynamic_conv2d())
    report = convert_reference_layers(model)
    assert not report.converted
    assert report.skipped and report.skipped[0][0] == "0" and "5-D" in report.skipped[0][2]
    assert type(model[0]).__name__ == "Dynamic_conv2d"


def test_odconv_without_attention_bn_is_recognised():
    torch.manual_seed(2)
    layer = standins.ODConv2d(8, 16, 3, padding=1, kernel_num=2).eval()
    layer.attention.bn = nn.Identity()  # what some users did to dodge the batch-1 BN error
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        expected = layer(x)
        model = nn.Sequential(layer)
        convert_reference_layers(model)
        assert isinstance(model[0], ODConv2d) and model[0].attention.bn is None
        torch.testing.assert_close(model(x), expected, **TOL)


def test_root_reference_layer_is_replaced():
    layer = standins.Dynamic_conv2d(8, 8, 3, padding=1, temperature=1).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        expected = layer(x)
        report = convert_reference_layers(layer)
        assert isinstance(report.model, DyConv2d)
        torch.testing.assert_close(report.model(x), expected, **TOL)
