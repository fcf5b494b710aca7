"""Helpers for model tests."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def calibrate_batchnorm_(model: nn.Module, input_shape, batch: int = 8, seed: int = 0) -> nn.Module:
    """Set every BatchNorm's running statistics to those of one random batch, then ``eval()``.

    A freshly initialised network in eval mode uses mean 0 / var 1 statistics; with ODConv's
    attentions (each sigmoid(0) = 0.5 at init) the signal then shrinks ~8x per layer and the logits
    come out ~1e-13, which would make any tolerance comparison vacuous.  Calibrated statistics keep
    activations O(1), as in a trained network -- on the calibration distribution; in a deep random
    network (ResNet-101) small input differences still grow block after block, so use this for
    the small models only.

    ODConv's attention BatchNorms are left alone: they normalise a pooled (B, A, 1, 1) tensor, so one
    batch gives them only B samples per channel, near-zero variances and a badly conditioned network.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for name, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and ".attention." not in f".{name}."]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.train()
    for name, m in model.named_modules():
        if ".attention." in f".{name}.":
            m.eval()  # attention BNs keep their statistics (and are not updated)
    model(torch.randn(batch, *input_shape, generator=generator))
    for m in norms:
        m.momentum = 0.1
    return model.eval()
