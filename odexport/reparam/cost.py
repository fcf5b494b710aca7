"""Parameter and multiply-accumulate (MAC) counts of dynamic layers, their attention, and static convs.

MACs are per sample and count multiplies (an add of a pooling or a sum is counted as one MAC):

* static conv: ``O * C/g * kh * kw * H' * W'``;
* attention: global pool ``C * H * W``; the attention 1x1 convs ``in * out`` each;
* ODConv feature scaling: channel attention ``C * H * W``, filter attention ``O * H' * W'``;
* per-sample kernel aggregation (when the layer has a spatial attention or K > 1):
  ``K * O * C/g * kh * kw`` (plus the same again when the spatial attention multiplies too);
  a dynamic bias mix ``K * O``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from odexport.layers import DyConv2d, ODConv2d, dynamic_convs


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def static_conv_macs(out_channels: int, in_per_group: int, kernel_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    return out_channels * in_per_group * kernel_hw[0] * kernel_hw[1] * out_hw[0] * out_hw[1]


def attention_convs(layer: nn.Module) -> list[nn.Conv2d]:
    """The 1x1 convs (matmuls) a dynamic layer's attention runs per sample."""
    if isinstance(layer, DyConv2d):
        return [layer.attention.fc1, layer.attention.fc2]
    att = layer.attention
    convs = [att.fc] if att.present_heads() else []
    convs += [att.head(name) for name in ("channel", "filter", "spatial", "kernel") if att.head(name) is not None]
    if att.heads is not None:
        convs.append(att.heads)
    return convs


def dynamic_conv_macs(layer: nn.Module, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> dict[str, int]:
    """MACs per sample of one dynamic layer, split into ``conv``, ``attention``, ``aggregation`` and ``total``."""
    num_kernels, out_ch, in_per_group, kh, kw = layer.weight.shape
    in_ch = in_per_group * layer.groups
    conv = static_conv_macs(out_ch, in_per_group, (kh, kw), out_hw)
    convs = attention_convs(layer)
    attention = (in_ch * in_hw[0] * in_hw[1] if convs else 0) + sum(c.in_channels * c.out_channels for c in convs)
    aggregation = 0
    if isinstance(layer, ODConv2d):
        att = layer.attention
        heads = set(att.present_heads())
        attention += (in_ch * in_hw[0] * in_hw[1] if "channel" in heads else 0) + (out_ch * out_hw[0] * out_hw[1] if "filter" in heads else 0)
        if "spatial" in heads or num_kernels > 1:
            aggregation = num_kernels * out_ch * in_per_group * kh * kw * (2 if "spatial" in heads else 1)
    else:
        if num_kernels > 1:
            aggregation = num_kernels * out_ch * in_per_group * kh * kw
        if layer.bias is not None:
            aggregation += num_kernels * out_ch
    return {"conv": conv, "attention": attention, "aggregation": aggregation, "total": conv + attention + aggregation}


def attention_cost(model: nn.Module) -> list[dict[str, Any]]:
    """Per dynamic layer: how many matmuls its attention runs, their parameters, fused or not.

    For ``odexport inspect``: after ``fuse-heads`` an ODConv attention runs 2 matmuls (``fc`` and the
    fused ``heads``) instead of up to 5.
    """
    rows = []
    for name, layer in dynamic_convs(model):
        convs = attention_convs(layer)
        rows.append({
            "layer": name,
            "type": type(layer).__name__,
            "attention_matmuls": len(convs),
            "attention_params": count_params(layer.attention),
            "fused_heads": bool(isinstance(layer, ODConv2d) and layer.attention.heads is not None),
            "heads": layer.attention.present_heads() if isinstance(layer, ODConv2d) else ["kernel"],
            "kernel_num": int(layer.weight.shape[0]),
        })
    return rows


__all__ = ["attention_convs", "attention_cost", "count_params", "dynamic_conv_macs", "static_conv_macs"]
