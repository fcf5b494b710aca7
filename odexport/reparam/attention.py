"""Passes inside the attention branch: fold its BatchNorm, fold the temperature, fuse the heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from odexport.layers import DyConv2d, dynamic_convs
from odexport.layers.odconv import HEAD_NAMES
from odexport.reparam.base import (
    LayerNote,
    PassResult,
    PostconditionError,
    PreconditionError,
    ReparamPass,
    batchnorm_scale_shift,
    batchnorm_unfoldable_reason,
    fmt,
    metadata,
    require_dynamic_convs,
    require_eval_batchnorm,
    same_dtype_param,
)


class FoldAttentionBN(ReparamPass):
    """Fold ODConv's attention BatchNorm into the preceding 1x1 ``fc`` (eval statistics).

    Identity.  ``fc`` is ``z = W p`` (``W`` ``(A, C, 1, 1)``, no bias; ``p`` the pooled input) and
    the eval-mode BatchNorm is ``BN(z) = gamma * (z - mu) / sqrt(var + eps) + beta``.  With
    ``s = gamma / sqrt(var + eps)`` per hidden channel::

        BN(W p + b) = (s * W) p + (s * b + beta - s * mu)

    so ``fc`` becomes ``W' = s[:, None, None, None] * W`` with bias ``b' = s * b + beta - s * mu``
    (``b = 0`` for the official layer) and ``bn`` becomes ``None``.  Exact in eval mode only: in
    training mode BN normalises with batch statistics, which no fixed affine map reproduces.
    The fold is computed in float64 and stored in the parameter dtype.
    """

    name = "fold-attention-bn"
    summary = "fold ODConv's attention BatchNorm into the attention fc (fc gains a bias)"

    def requires(self, model: nn.Module) -> None:
        require_dynamic_convs(model)
        require_eval_batchnorm(model)

    def run(self, model: nn.Module) -> list[LayerNote]:
        notes = []
        for name, layer in dynamic_convs(model):
            if isinstance(layer, DyConv2d):
                notes.append(LayerNote(name, False, "DY-Conv attention has no BatchNorm"))
                continue
            att = layer.attention
            if att.bn is None:
                notes.append(LayerNote(name, False, "no attention BatchNorm (already folded)"))
                continue
            reason = batchnorm_unfoldable_reason(att.bn)
            if reason:
                notes.append(LayerNote(name, False, reason))
                continue
            scale, shift = batchnorm_scale_shift(att.bn)
            weight = att.fc.weight.double() * scale.reshape(-1, 1, 1, 1)
            old_bias = att.fc.bias.double() if att.fc.bias is not None else torch.zeros_like(scale)
            att.fc.weight = same_dtype_param(weight, att.fc.weight)
            att.fc.bias = same_dtype_param(scale * old_bias + shift, att.fc.weight)
            att.bn = None
            notes.append(LayerNote(name, True, f"BatchNorm({scale.numel()}) folded into attention.fc (scale range {fmt(scale.min().item())}..{fmt(scale.max().item())})"))
        return notes

    def ensures(self, model: nn.Module, result: PassResult) -> None:
        for name in result.applied_layers():
            att = model.get_submodule(name).attention
            if att.bn is not None or att.fc.bias is None:
                raise PostconditionError(f"{name}: attention BN still present or fc has no bias after folding")


class FoldTemperature(ReparamPass):
    """Divide every attention head's weights and biases by the temperature ``T``, then set ``T = 1``.

    Identity.  Each head computes logits ``z = W h + b`` and the attention is ``sigmoid(z / T)``
    (ODConv's channel, filter, spatial heads) or ``softmax(z / T)`` over K (ODConv's kernel head,
    DY-Conv's ``fc2``).  Division distributes over the affine map::

        z / T = (W / T) h + b / T

    so heads ``W' = W / T``, ``b' = b / T`` with temperature 1 give the same attentions.  One
    temperature divides all heads of a layer, so every head (or the fused ``heads`` conv) is
    scaled.  The original T of every layer is recorded in the model's metadata
    (``model.odexport_meta["original_temperatures"]``) and in the deploy manifest, because the
    temperature is not part of any state dict.
    """

    name = "fold-temperature"
    summary = "divide the attention head weights and biases by T and set T = 1"

    def requires(self, model: nn.Module) -> None:
        require_dynamic_convs(model)
        bad = [(n, layer.temperature) for n, layer in dynamic_convs(model) if not (math.isfinite(layer.temperature) and layer.temperature > 0)]
        if bad:
            raise PreconditionError(f"layer {bad[0][0]} has temperature {bad[0][1]!r}; a temperature must be a finite number > 0")

    def run(self, model: nn.Module) -> list[LayerNote]:
        notes = []
        originals = metadata(model)["original_temperatures"]
        for name, layer in dynamic_convs(model):
            t = float(layer.temperature)
            originals.setdefault(name, t)
            if t == 1.0:
                notes.append(LayerNote(name, False, "temperature is already 1"))
                continue
            heads = _head_convs(layer)
            for conv in heads:
                conv.weight = same_dtype_param(conv.weight.double() / t, conv.weight)
                if conv.bias is not None:
                    conv.bias = same_dtype_param(conv.bias.double() / t, conv.bias)
            layer.temperature = 1.0
            notes.append(LayerNote(name, True, f"T={fmt(t)} folded into {len(heads)} head conv(s); T is now 1"))
        return notes

    def ensures(self, model: nn.Module, result: PassResult) -> None:
        originals = metadata(model)["original_temperatures"]
        for name in result.applied_layers():
            if model.get_submodule(name).temperature != 1.0 or name not in originals:
                raise PostconditionError(f"{name}: temperature not 1 or original T not recorded after folding")


def _head_convs(layer: nn.Module) -> list[nn.Conv2d]:
    """The convs producing attention logits (what the temperature divides)."""
    if isinstance(layer, DyConv2d):
        return [layer.attention.fc2]
    att = layer.attention
    convs = [att.head(name) for name in HEAD_NAMES if att.head(name) is not None]
    if att.heads is not None:
        convs.append(att.heads)
    return convs


class FuseAttentionHeads(ReparamPass):
    """Fuse ODConv's channel, filter, spatial and kernel head convs into one 1x1 conv.

    Identity.  Every head reads the same hidden vector ``h`` ``(B, A, 1, 1)``::

        [W_c; W_f; W_s; W_k] h + [b_c; b_f; b_s; b_k]  =  concat(W_c h + b_c, ..., W_k h + b_k)

    so stacking the head weights along the output axis gives one conv (one Gemm: ``A x (C + O +
    k*k + K)``) whose output, split at the recorded sizes in channel, filter, spatial, kernel order,
    is the four head logits.  Absent heads are left out of the stack.  The attention cost becomes
    two matmuls (``fc`` and ``heads``) instead of up to five.  ``head_logits()`` and ``forward()``
    keep their results; only the parameters move (``attention.heads.weight|bias`` and
    ``attention.head_sizes``).  DY-Conv has a single head and is left as is.
    """

    name = "fuse-heads"
    summary = "stack ODConv's head convs into one 1x1 conv whose output is split"

    def run(self, model: nn.Module) -> list[LayerNote]:
        notes = []
        for name, layer in dynamic_convs(model):
            if isinstance(layer, DyConv2d):
                notes.append(LayerNote(name, False, "DY-Conv attention has a single head (nothing to fuse)"))
                continue
            att = layer.attention
            if att.heads is not None:
                notes.append(LayerNote(name, False, "heads are already fused"))
                continue
            present = [(head, att.head(head)) for head in HEAD_NAMES if att.head(head) is not None]
            if len(present) < 2:
                notes.append(LayerNote(name, False, f"only {len(present)} head ({', '.join(h for h, _ in present) or 'none'}): nothing to fuse"))
                continue
            weight = torch.cat([conv.weight for _, conv in present], dim=0)
            bias = torch.cat([conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels) for _, conv in present])
            fused = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=True).to(dtype=weight.dtype, device=weight.device)
            fused.weight = nn.Parameter(weight.detach().clone())
            fused.bias = nn.Parameter(bias.detach().clone())
            att.heads = fused
            att.head_sizes = tuple((head, conv.out_channels) for head, conv in present)
            for head, _ in present:
                setattr(att, f"{head}_fc", None)
            sizes = " + ".join(f"{head} {conv.out_channels}" for head, conv in present)
            notes.append(LayerNote(name, True, f"{len(present)} heads fused into one {weight.shape[1]}->{weight.shape[0]} 1x1 conv ({sizes})"))
        return notes

    def ensures(self, model: nn.Module, result: PassResult) -> None:
        for name in result.applied_layers():
            att = model.get_submodule(name).attention
            separate = [h for h in HEAD_NAMES if att.head(h) is not None]
            if att.heads is None or separate or sum(s for _, s in att.head_sizes) != att.heads.out_channels:
                raise PostconditionError(f"{name}: heads not fully fused (separate heads left: {separate})")


__all__ = ["FoldAttentionBN", "FoldTemperature", "FuseAttentionHeads"]
