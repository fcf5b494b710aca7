"""The torch cores of every variant equal an independent float64 per-sample loop (no export)."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from odexport.export.forms import applicable_variants, describe_layers, exporting_forms
from odexport.layers import DyConv2d, ODConv2d


def _loop_reference(layer, x):
    """y_b = (conv(x_b * ca_b, sum_k ka_bk sa_b W_k) + sum_k ka_bk bias_k) * fa_b + static_bias, one sample at a time."""
    att = layer.attentions(x)
    out = []
    for b in range(x.shape[0]):
        weight = layer.weight
        ka = att.kernel[b] if att.kernel is not None else torch.ones(weight.shape[0], dtype=x.dtype)
        kernel = (ka.reshape(-1, 1, 1, 1, 1) * weight).sum(0)
        if att.spatial is not None:
            kernel = kernel * att.spatial[b].reshape(1, 1, *weight.shape[-2:])
        xb = x[b : b + 1]
        if att.channel is not None:
            xb = xb * att.channel[b].reshape(1, -1, 1, 1)
        bias = None
        if isinstance(layer, DyConv2d) and layer.bias is not None:
            bias = (ka.reshape(-1, 1) * layer.bias).sum(0)
        y = F.conv2d(xb, kernel, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        if att.filter is not None:
            y = y * att.filter[b].reshape(1, -1, 1, 1)
        if layer.static_bias is not None:
            y = y + layer.static_bias.reshape(1, -1, 1, 1)
        out.append(y)
    return torch.cat(out)


LAYERS = [
    lambda: ODConv2d(8, 12, 3, padding=1, groups=2, kernel_num=3),
    lambda: ODConv2d(8, 16, 1, kernel_num=4),
    lambda: ODConv2d(8, 16, 1, stride=2, kernel_num=1),
    lambda: ODConv2d(8, 8, 3, stride=2, padding=1, groups=8, kernel_num=2),
    lambda: ODConv2d(6, 12, 5, padding=4, dilation=2, kernel_num=1),
    lambda: DyConv2d(8, 12, 3, padding=1, groups=4, bias=True, num_kernels=3),
    lambda: DyConv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),
    lambda: DyConv2d(8, 6, 1, bias=True, num_kernels=1),
]


@pytest.mark.parametrize("make", LAYERS, ids=[f"layer{i}" for i in range(len(LAYERS))])
def test_every_variant_equals_per_sample_loop_in_float64(make):
    torch.manual_seed(2)
    layer = make().double().eval()
    if isinstance(layer, ODConv2d):
        layer.static_bias = nn.Parameter(torch.randn(layer.out_planes, dtype=torch.float64))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model = nn.Sequential(layer).eval()
    x = torch.randn(3, layer.weight.shape[2] * layer.groups, 9, 7, dtype=torch.float64)
    spec = describe_layers(model.float(), (x.shape[1], 9, 7))[0]
    model.double()
    with torch.no_grad():
        expected = _loop_reference(layer, x)
        switches = tuple(f"sample|{v}" for v in applicable_variants(spec) if v != "static")
        for variant in applicable_variants(spec) + ("grouped",) + switches:
            with exporting_forms(model, {"0": (spec, variant)}):
                got = model(x)
                if variant.startswith("sample|"):  # the batch-1 branch too
                    torch.testing.assert_close(model(x[1:2]), expected[1:2], atol=1e-12, rtol=1e-12, msg=variant)
            torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12, msg=variant)


def test_forms_are_restored_after_an_error():
    layer = ODConv2d(4, 4, 3, padding=1)
    model = nn.Sequential(layer).eval()
    spec = describe_layers(model, (4, 6, 6))[0]
    with pytest.raises(RuntimeError):
        with exporting_forms(model, {"0": (spec, "bmm")}):
            assert "odexport_core" in dict(layer.named_children())
            raise RuntimeError("boom")
    assert "forward" not in layer.__dict__ and "odexport_core" not in dict(layer.named_children())
    assert set(model.state_dict()) == set(nn.Sequential(ODConv2d(4, 4, 3, padding=1)).state_dict())


def test_applicable_variants_follow_the_layer():
    cases = {
        (3, 4, True): ("bmm", "patch"),  # spatial attention: no K-branch
        (1, 4, False): ("kbranch", "bmm", "patch"),
        (1, 1, False): ("static",),
    }
    for (k, num, spatial), expected in cases.items():
        layer = ODConv2d(8, 8, k, padding=k // 2, kernel_num=num)
        spec = describe_layers(nn.Sequential(layer).eval(), (8, 5, 5))[0]
        assert spec.has_spatial == spatial
        assert applicable_variants(spec) == expected
