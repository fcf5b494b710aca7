"""Collapse degenerate dynamic layers: constant attentions go into the kernels, static layers become Conv2d."""

from __future__ import annotations

import copy

import torch
from torch import nn

from odexport.layers import DyConv2d, ODConv2d, dynamic_convs
from odexport.layers.functional import Attentions
from odexport.layers.odconv import HEAD_NAMES, ODConvAttention
from odexport.reparam.base import (
    LayerNote,
    PassResult,
    PostconditionError,
    ReparamPass,
    replace_module,
    require_dynamic_convs,
    unreplaceable_reason,
    require_eval_batchnorm,
    same_dtype_param,
)


def fold_attentions_into_kernels(weight: torch.Tensor, groups: int, attentions: Attentions) -> torch.Tensor:
    """Fold per-layer *constant* attentions (flat 1-D, ``None`` = absent or not constant) into the kernels.

    ``weight`` ``(K, O, C/g, kh, kw)``.  Each identity holds for every input ``x``:

    * channel ``ca`` ``(C,)``: ``conv(x * ca, W) = conv(x, W * ca_in)`` where ``ca_in[o, c]`` is the
      attention of the input channel that kernel column ``c`` of output ``o`` reads, i.e.
      ``ca[group(o) * C/g + c]`` (zero padding is unaffected: ``0 * ca = 0``);
    * filter ``fa`` ``(O,)``: ``conv(x, W) * fa = conv(x, fa[o] * W[o])`` (a static bias is added
      after ``fa`` and so is not scaled);
    * spatial ``sa`` ``(kh*kw,)``: ``sum_k ka_k * (sa * W_k) = sum_k ka_k * W_k'`` with ``W_k' = sa * W_k``;
    * kernel ``ka`` ``(K,)``: ``sum_k ka_k * sa * W_k = sa * W'`` with ``W' = sum_k ka_k W_k``: K becomes 1.

    Returns the new ``(K', O, C/g, kh, kw)`` kernels (``K' = 1`` when ``ka`` was folded).
    """
    ca, fa, sa, ka = attentions
    num_kernels, out_ch, in_per_group, kh, kw = weight.shape
    if ca is not None:
        per_group_out = out_ch // groups
        ca_in = ca.reshape(groups, 1, in_per_group).expand(groups, per_group_out, in_per_group).reshape(out_ch, in_per_group)
        weight = weight * ca_in.reshape(1, out_ch, in_per_group, 1, 1)
    if fa is not None:
        weight = weight * fa.reshape(1, out_ch, 1, 1, 1)
    if sa is not None:
        weight = weight * sa.reshape(1, 1, 1, kh, kw)
    if ka is not None:
        weight = (ka.reshape(num_kernels, 1, 1, 1, 1) * weight).sum(dim=0, keepdim=True)
    return weight


def static_conv_from(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` with ``layer``'s geometry holding ``weight`` ``(O, C/g, kh, kw)`` and ``bias``."""
    out_ch, in_per_group, kh, kw = weight.shape
    like = layer.weight
    conv = nn.Conv2d(
        in_per_group * layer.groups, out_ch, (kh, kw), stride=layer.stride, padding=layer.padding,
        dilation=layer.dilation, groups=layer.groups, bias=bias is not None,
    ).to(dtype=like.dtype, device=like.device)
    conv.weight = same_dtype_param(weight, like)
    if bias is not None:
        conv.bias = same_dtype_param(bias, like)
    return conv.train(layer.training)


def evaluate_attentions(layer: nn.Module, x: torch.Tensor | None = None) -> Attentions:
    """The layer's attentions in float64 for input ``x`` (default: one all-zero sample), flat ``(B, N)``.

    For a head that does not depend on the input this is its constant value.
    """
    in_channels = layer.weight.shape[2] * layer.groups
    if x is None:
        x = torch.zeros(1, in_channels, 1, 1, dtype=torch.float64, device=layer.weight.device)
    attention = copy.deepcopy(layer.attention).double()
    with torch.no_grad():
        out = attention(x.double())
    return Attentions(kernel=out) if isinstance(out, torch.Tensor) else out


def _constant_heads(layer: ODConv2d) -> dict[str, str]:
    """ODConv heads whose attention does not depend on the input, with the reason."""
    att: ODConvAttention = layer.attention
    hidden_constant = not bool(att.fc.weight.any())
    offsets = _fused_offsets(att)
    constant: dict[str, str] = {}
    for name in att.present_heads():
        conv = att.head(name)
        head_weight = conv.weight if conv is not None else att.heads.weight[slice(*offsets[name])]
        if name == "kernel" and layer.weight.shape[0] == 1:
            constant[name] = "softmax over one kernel is 1"
        elif hidden_constant:
            constant[name] = "attention.fc weight is all zero, so the hidden vector is constant"
        elif not bool(head_weight.any()):
            constant[name] = "head weight is all zero, so the logits are its bias"
    return constant


def _fused_offsets(att: ODConvAttention) -> dict[str, tuple[int, int]]:
    offsets, start = {}, 0
    if att.heads is not None:
        for name, size in att.head_sizes:
            offsets[name] = (start, start + size)
            start += size
    return offsets


def _remove_head(att: ODConvAttention, name: str) -> None:
    if att.head(name) is not None:
        setattr(att, f"{name}_fc", None)
        return
    offsets = _fused_offsets(att)
    keep = [(n, s) for n, s in att.head_sizes if n != name]
    if not keep:
        att.heads, att.head_sizes = None, ()
        return
    rows = torch.cat([torch.arange(*offsets[n]) for n, _ in keep])
    fused = nn.Conv2d(att.heads.in_channels, len(rows), 1, bias=True).to(att.heads.weight)
    fused.weight = nn.Parameter(att.heads.weight[rows].detach().clone())
    fused.bias = nn.Parameter(att.heads.bias[rows].detach().clone())
    att.heads, att.head_sizes = fused, tuple(keep)


class CollapseDegenerate(ReparamPass):
    """Remove attention that does not depend on the input; a layer left without any becomes ``nn.Conv2d``.

    Identities (each exact for every input):

    * softmax over one kernel is 1: a K = 1 kernel attention is removed;
    * a DY-Conv with K = 1 computes ``conv(x, W_0) + b_0``: it becomes a static ``nn.Conv2d``;
    * a head whose 1x1 weight is all zero outputs ``act(bias / T)`` for every input (and every head
      does when ``attention.fc`` / ``fc1`` is all zero): such a constant attention is folded into
      the kernels (:func:`fold_attentions_into_kernels`) and the head removed; a DY-Conv with a
      constant attention ``a`` becomes ``conv(x, sum_k a_k W_k) + sum_k a_k b_k``.
    * an ODConv left with no head is ``conv(x, W_0) + static_bias``: a static ``nn.Conv2d``.

    Folding a constant into the kernels is better than keeping it as a buffer: no multiply at run
    time, and a constant spatial plus kernel attention removes the per-sample kernel aggregation.
    """

    name = "collapse-degenerate"
    summary = "remove constant attentions (K = 1, all-zero head weights); static layers become nn.Conv2d"

    def requires(self, model: nn.Module) -> None:
        require_dynamic_convs(model)
        require_eval_batchnorm(model)  # a constant attention is evaluated with the attention BN's running stats

    def run(self, model: nn.Module) -> list[LayerNote]:
        notes = []
        for name, layer in dynamic_convs(model):
            notes.append(self._collapse_od(model, name, layer) if isinstance(layer, ODConv2d) else self._collapse_dy(model, name, layer))
        return notes

    def _collapse_od(self, model: nn.Module, name: str, layer: ODConv2d) -> LayerNote:
        constant = _constant_heads(layer)
        if not constant:
            return LayerNote(name, False, f"every head ({', '.join(layer.attention.present_heads())}) depends on the input")
        values = evaluate_attentions(layer)
        folded = Attentions(*(getattr(values, h)[0] if h in constant else None for h in HEAD_NAMES))
        old_k = layer.weight.shape[0]
        weight = fold_attentions_into_kernels(layer.weight.double(), layer.groups, folded)
        layer.set_kernels(weight.to(layer.weight.dtype))
        for head in constant:
            _remove_head(layer.attention, head)
        detail = "; ".join(f"{head}: {why}" for head, why in constant.items())
        k_change = f", K {old_k} -> 1" if weight.shape[0] != old_k else ""
        if layer.attention.present_heads():
            return LayerNote(name, True, f"constant {', '.join(constant)} attention folded into the kernels{k_change} ({detail})")
        blocked = unreplaceable_reason(name, layer)
        if blocked:
            return LayerNote(name, True, f"every attention is constant and folded into the kernels{k_change} ({detail}); kept as ODConv2d: {blocked}")
        bias = None if layer.static_bias is None else layer.static_bias.double()
        replace_module(model, name, static_conv_from(layer, weight[0], bias))
        return LayerNote(name, True, f"every attention is constant ({detail}): replaced by a static Conv2d")

    def _collapse_dy(self, model: nn.Module, name: str, layer: DyConv2d) -> LayerNote:
        att = layer.attention
        if layer.weight.shape[0] == 1:
            why = "K = 1: softmax over one kernel is 1"
        elif not bool(att.fc2.weight.any()):
            why = "attention.fc2 weight is all zero, so the kernel attention is constant"
        elif not bool(att.fc1.weight.any()):
            why = "attention.fc1 weight is all zero, so the kernel attention is constant"
        else:
            return LayerNote(name, False, f"the kernel attention over K = {layer.weight.shape[0]} depends on the input")
        blocked = unreplaceable_reason(name, layer)
        if blocked:
            return LayerNote(name, False, f"{why}, but {blocked}")
        ka = evaluate_attentions(layer).kernel[0]
        weight = fold_attentions_into_kernels(layer.weight.double(), layer.groups, Attentions(kernel=ka))[0]
        bias = None
        if layer.bias is not None:
            bias = ka @ layer.bias.double()
        if layer.static_bias is not None:
            bias = layer.static_bias.double() if bias is None else bias + layer.static_bias.double()
        replace_module(model, name, static_conv_from(layer, weight, bias))
        return LayerNote(name, True, f"{why}: replaced by a static Conv2d")

    def ensures(self, model: nn.Module, result: PassResult) -> None:
        for name in result.applied_layers():
            module = model.get_submodule(name)
            if isinstance(module, DyConv2d):
                raise PostconditionError(f"{name}: DY-Conv collapse left a dynamic layer")
            if isinstance(module, ODConv2d) and _constant_heads(module):
                raise PostconditionError(f"{name}: constant heads left after collapsing: {_constant_heads(module)}")
