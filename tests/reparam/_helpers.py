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
