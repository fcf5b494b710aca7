"""Rebuild a model's dynamic layers with the shapes a checkpoint actually has.

Formulas for hidden widths changed between versions of the reference code (kaijieshi7's
``int(in*ratio)`` became ``int(in*ratio)+1``; its ``fc2`` gained a bias), TArdelean allows a
per-layer K, and users train with other reductions.  Rather than recompute, a dynamic layer whose
own keys differ from the file is rebuilt from the file's shapes: K from the kernel tensor, the
hidden width from the first attention conv/linear, and which biases exist from which keys exist.
Geometry (channels, kernel size, stride, padding, dilation, groups) and temperature are kept.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from odexport.layers import DyConv2d, ODConv2d

_TARDELEAN = {"weight": "kernels_weights", "bias": "kernels_bias", "fc1": "attention.to_scores.0", "fc2": "attention.to_scores.2"}
_KAIJIESHI7 = {"weight": "weight", "bias": "bias", "fc1": "attention.fc1", "fc2": "attention.fc2"}


def conform_dynamic_layers(model: nn.Module, file_shapes: Mapping[str, tuple[int, ...]], prefixes: list[str]) -> list[str]:
    """Rebuild the dynamic layers at ``prefixes`` (in place) to the file's shapes; returns those rebuilt."""
    done = []
    for prefix in prefixes:
        try:
            layer = model.get_submodule(prefix) if prefix else model
        except AttributeError:
            continue
        if isinstance(layer, ODConv2d):
            new = _odconv_like(layer, prefix, file_shapes)
        elif isinstance(layer, DyConv2d):
            new = _dyconv_like(layer, prefix, file_shapes)
        else:
            continue
        if new is None:
            continue
        new.train(layer.training)  # a new module starts in training mode: its BatchNorm would use batch statistics
        parent_name, _, child = prefix.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        done.append(prefix)
    return done


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _odconv_like(layer: ODConv2d, prefix: str, shapes) -> ODConv2d | None:
    weight = shapes.get(_key(prefix, "weight"))
    fc = shapes.get(_key(prefix, "attention.fc.weight"))
    if weight is None or fc is None:
        return None
    new = ODConv2d(layer.in_planes, layer.out_planes, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                   layer.groups, kernel_num=weight[0], attention_channels=fc[0], temperature=layer.temperature)
    if _key(prefix, "attention.bn.weight") not in shapes:
        new.attention.bn = None
    return new.to(device=layer.weight.device, dtype=layer.weight.dtype)


def _dyconv_like(layer: DyConv2d, prefix: str, shapes) -> DyConv2d | None:
    names = _TARDELEAN if layer.key_layout == "tardelean" else _KAIJIESHI7
    weight = shapes.get(_key(prefix, names["weight"]))
    fc1 = shapes.get(_key(prefix, names["fc1"] + ".weight"))
    if weight is None or fc1 is None:
        return None
    new = type(layer)(
        layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.groups,
        bias=_key(prefix, names["bias"]) in shapes,
        num_kernels=weight[0],
        hidden_channels=fc1[0],
        fc1_bias=_key(prefix, names["fc1"] + ".bias") in shapes,
        fc2_bias=_key(prefix, names["fc2"] + ".bias") in shapes,
        temperature=layer.temperature,
        key_layout=layer.key_layout,
    )
    return new.to(device=layer.weight.device, dtype=layer.weight.dtype)
