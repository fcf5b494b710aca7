"""The static twin of a dynamic network: the baseline every benchmark compares against.

``static_twin(model)`` deep-copies ``model`` and replaces every :class:`~odexport.layers.ODConv2d`
and :class:`~odexport.layers.DyConv2d` by a plain ``nn.Conv2d`` with the same in/out channels,
kernel size, stride, padding, dilation and groups.  Its outputs are *not* those of the dynamic
network (there is no per-sample kernel); it answers "what would this network cost if its convs
were static?", and its parameter count is the static architecture's.

Weights: the mean of the K candidate kernels, ``W = (1/K) sum_k W_k`` -- the kernel a dynamic
conv with uniform kernel attention would use (ODConv's channel, filter and spatial attentions are
dropped).  Bias: the mean of the dynamic bias ``(1/K) sum_k b_k`` when there is one, plus the
layer's static bias (a folded BatchNorm shift); no bias when the dynamic layer has neither.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from odexport.layers import DYNAMIC_CONV_TYPES, DyConv2d


def _static_conv(layer: nn.Module) -> nn.Conv2d:
    weight = layer.weight.detach()
    out_channels, in_per_group = weight.shape[1], weight.shape[2]
    bias = None
    if isinstance(layer, DyConv2d) and layer.bias is not None:
        bias = layer.bias.detach().mean(0)
    if layer.static_bias is not None:
        bias = layer.static_bias.detach().clone() if bias is None else bias + layer.static_bias.detach()
    conv = nn.Conv2d(
        in_per_group * layer.groups,
        out_channels,
        tuple(weight.shape[-2:]),
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight.mean(0))
        if bias is not None:
            conv.bias.copy_(bias)
    conv.train(layer.training)
    return conv


def static_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every dynamic conv replaced by a static ``nn.Conv2d``
    (weight = mean of the K kernels; see the module docstring).  ``model`` is not modified."""
    twin = copy.deepcopy(model)
    if isinstance(twin, DYNAMIC_CONV_TYPES):
        return _static_conv(twin)
    # Collect first: replacing while iterating named_modules would skip or revisit children.
    targets = [name for name, m in twin.named_modules() if isinstance(m, DYNAMIC_CONV_TYPES)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = twin.get_submodule(parent_name) if parent_name else twin
        setattr(parent, child, _static_conv(getattr(parent, child)))
    return twin


__all__ = ["static_twin"]
