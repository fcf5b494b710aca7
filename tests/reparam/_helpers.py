"""Shared builders for the reparam tests."""

from __future__ import annotations

import torch
from torch import nn

from odexport.layers import DyConv2d, ODConv2d
from tests.conftest import load_refdata

BANKS = {
    "odconv": (("odconv", "odconv2d_layer_bank.pt"), 14),
    "kaijieshi7": (("dyconv", "kaijieshi7_dynamic_conv2d_layer_bank.pt"), 7),
    "tardelean": (("dyconv", "tardelean_dynamicconvolution_layer_bank.pt"), 5),
}


def rel_dev(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max|got - expected| / max|expected|, computed here (not with the library's helper)."""
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


NOISE_MULTIPLE = 4


def assert_deploy_matches(deploy: nn.Module, source: nn.Module, x: torch.Tensor, what: str, bar: float = 1e-6) -> float:
    """fp32 deploy vs fp32 source: relative deviation <= ``bar`` (1e-6), or within fp32 noise.

    Storing folded weights in fp32 rounds them (2**-24 relative), and deep random networks amplify
    rounding: their own fp32 output is already ~1e-6 off the float64 truth (dy_resnet_tiny and
    dy_resnet18 at K=4, T=1).  Where the deviation exceeds ``bar`` the test computes that noise
    floor (fp32 vs float64 evaluation of the same source) and accepts at most
    ``NOISE_MULTIPLE`` times it: the deploy model adds its weight rounding to the same compute
    rounding, and measured ratios are 1.5-2.5.  A real error is orders of magnitude larger.  The
    exactness of the passes themselves is asserted separately in float64 (1e-10).
    """
    import copy

    with torch.no_grad():
        expected = source(x)
        dev = rel_dev(deploy(x), expected)
        if dev <= bar:
            return dev
        truth = copy.deepcopy(source).double()(x.double())
    floor = rel_dev(expected, truth)
    assert dev <= NOISE_MULTIPLE * floor, (
        f"{what}: relative deviation {dev:.3g} > {bar:g} and > {NOISE_MULTIPLE}x the source's own fp32 error {floor:.3g}")
    return dev


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a misplaced fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def randomize_biases(model: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Fresh layers zero their biases; give every bias a value so folds that drop one fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("kernels_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def bank_layer(bank: str, index: int, *, fresh: bool = False):
    """``(layer, case)`` for a reference bank case; ``fresh`` skips loading the weights."""
    parts, _ = BANKS[bank]
    case = load_refdata(*parts)["cases"][index]
    if bank == "odconv":
        layer = ODConv2d(**case["ctor_kwargs"])
        temperature = case["temperature"]
    elif bank == "kaijieshi7":
        layer = DyConv2d.from_kaijieshi7_args(**case["ctor_kwargs"])
        temperature = case["temperature_final"]
    else:
        layer = DyConv2d.from_tardelean_args(**case["ctor_kwargs"])
        temperature = 1.0
    if not fresh:
        layer.load_state_dict(case["state_dict"])
    layer.temperature = temperature
    return layer.eval(), case
