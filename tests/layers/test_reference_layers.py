"""Every case of the three reference layer banks reproduces the reference implementation's outputs."""

from __future__ import annotations

import pytest
import torch

from odexport.layers import DyConv2d, ODConv2d
from tests.conftest import load_refdata

TOL = dict(atol=1e-5, rtol=1e-5)
HEADS = ("channel", "filter", "spatial", "kernel")


def _cases(bank: str, n: int):
    return [pytest.param(bank, i, id=f"{bank.split('/')[-1].split('_')[0]}-{i}") for i in range(n)]


@pytest.mark.parametrize("index", range(14))
def test_odconv_bank(index):
    case = load_refdata("odconv", "odconv2d_layer_bank.pt")["cases"][index]
    layer = ODConv2d(**case["ctor_kwargs"]).eval()
    layer.load_state_dict(case["state_dict"])
    layer.temperature = case["temperature"]
    assert layer.attention.attention_channels == case["attention_channels"]
    x = case["input"]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), case["output"], **TOL)
        torch.testing.assert_close(layer(x[:1]), case["output_bs1_sample0"], **TOL)
        torch.testing.assert_close(layer(x[:2]), case["output"][:2], **TOL)
        torch.testing.assert_close(layer(x.to(memory_format=torch.channels_last)), case["output"], **TOL)
        attentions = layer.attentions(x)
    for head in HEADS:
        expected = case["attention"][head]
        got = getattr(attentions, head)
        if expected is None:
            assert got is None, f"{head} head should be skipped"
        else:
            torch.testing.assert_close(got, expected.reshape(x.shape[0], -1), **TOL)


@pytest.mark.parametrize("index", range(7))
def test_kaijieshi7_bank(index):
    case = load_refdata("dyconv", "kaijieshi7_dynamic_conv2d_layer_bank.pt")["cases"][index]
    layer = DyConv2d.from_kaijieshi7_args(**case["ctor_kwargs"]).eval()
    assert layer.attention.fc1.out_channels == case["hidden_planes"]
    layer.load_state_dict(case["state_dict"])
    assert layer.temperature == case["temperature_initial"]
    x = case["input"]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), case["output_T_initial"], **TOL)
        torch.testing.assert_close(layer(x[:1]), case["output_bs1_sample0_T_initial"], **TOL)
        torch.testing.assert_close(layer.attention(x), case["attention_T_initial"], **TOL)
        layer.temperature = case["temperature_final"]
        torch.testing.assert_close(layer(x), case["output_T1"], **TOL)
        torch.testing.assert_close(layer(x[:2]), case["output_T1"][:2], **TOL)
        torch.testing.assert_close(layer.attention(x), case["attention_T1"], **TOL)
        torch.testing.assert_close(layer(x.to(memory_format=torch.channels_last)), case["output_T1"], **TOL)


@pytest.mark.parametrize("index", range(5))
def test_tardelean_bank(index):
    case = load_refdata("dyconv", "tardelean_dynamicconvolution_layer_bank.pt")["cases"][index]
    layer = DyConv2d.from_tardelean_args(**case["ctor_kwargs"]).eval()
    layer.load_state_dict(case["state_dict"])
    assert set(layer.state_dict()) == set(case["state_dict"]), "saving must keep the TArdelean key layout"
    x = case["input"]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), case["output_T1"], **TOL)
        torch.testing.assert_close(layer(x[:1]), case["output_bs1_sample0_T1"], **TOL)
        torch.testing.assert_close(layer.attention(x), case["attention_T1"], **TOL)
        layer.temperature = 30
        torch.testing.assert_close(layer(x), case["output_T30"], **TOL)
        torch.testing.assert_close(layer(x[:2]), case["output_T30"][:2], **TOL)


@pytest.mark.parametrize("k,kernels,groups", [(3, 3, 2), (1, 2, 1), (3, 2, 1)], ids=["3x3-K3-g2", "1x1-K2", "3x3-K2"])
def test_float64_identity_of_folded_form(k, kernels, groups):
    """The folded grouped conv equals a per-sample loop of plain convs, in float64 (K = 2 too:
    a shortcut for K = 1 must not take it)."""
    torch.manual_seed(1)
    layer = ODConv2d(8, 12, k, padding=k // 2, groups=groups, kernel_num=kernels).double().eval()
    x = torch.randn(4, 8, 9, 7, dtype=torch.float64)
    with torch.no_grad():
        att = layer.attentions(x)
        expected = []
        for b in range(4):
            spatial = torch.ones(k * k, dtype=x.dtype) if att.spatial is None else att.spatial[b]
            kernel = (att.kernel[b].reshape(kernels, 1, 1, 1, 1) * spatial.reshape(1, 1, 1, k, k) * layer.weight).sum(0)
            y = torch.nn.functional.conv2d(x[b : b + 1] * att.channel[b].reshape(1, -1, 1, 1), kernel, padding=k // 2, groups=groups)
            expected.append(y * att.filter[b].reshape(1, -1, 1, 1))
        torch.testing.assert_close(layer(x), torch.cat(expected), atol=1e-12, rtol=1e-12)


def test_float64_identity_of_a_two_kernel_dyconv():
    """DY-Conv with K = 2: y_b = conv(x_b, sum_k a_bk W_k) + sum_k a_bk b_k, per sample, in float64."""
    torch.manual_seed(2)
    layer = DyConv2d(8, 12, 3, padding=1, bias=True, num_kernels=2).double().eval()
    x = torch.randn(4, 8, 9, 7, dtype=torch.float64)
    with torch.no_grad():
        a = layer.attention(x).reshape(4, 2)
        weight = layer.weight.reshape(2, 12, 8, 3, 3)
        expected = torch.cat([torch.nn.functional.conv2d(x[b : b + 1], (a[b].reshape(2, 1, 1, 1, 1) * weight).sum(0),
                                                         bias=a[b] @ layer.bias.reshape(2, 12), padding=1) for b in range(4)])
        torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=1e-12)
