"""Parameter counts and the attention's structure of dynamic layers, for the reparameterisation report.

MACs are counted by :mod:`odexport.analysis` (one convention for ``odexport inspect`` and this report).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from odexport.analysis import attention_convs
from odexport.layers import ODConv2d, dynamic_convs


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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


__all__ = ["attention_convs", "attention_cost", "count_params"]
