"""Fold a BatchNorm that directly follows a dynamic conv into the conv (formats.md D.12)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import fx, nn

from odexport.errors import InputError
from odexport.layers import DYNAMIC_CONV_TYPES, DyConv2d, ODConv2d, dynamic_convs
from odexport.reparam.base import (
    FOLDABLE_BATCHNORMS,
    LayerNote,
    PassResult,
    PostconditionError,
    ReparamPass,
    batchnorm_scale_shift,
    batchnorm_unfoldable_reason,
    replace_module,
    require_dynamic_convs,
    require_eval_batchnorm,
    same_dtype_param,
)


@dataclass(frozen=True)
class FollowingBatchNorm:
    """``bn`` consumes the output of dynamic conv ``conv`` and nothing else does; ``how`` it was found."""

    conv: str
    bn: str
    how: str


class _LeafTracer(fx.Tracer):
    """Traces the model with dynamic convs and BatchNorms as opaque calls (their insides need not trace)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (*DYNAMIC_CONV_TYPES, nn.modules.batchnorm._BatchNorm)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def find_following_batchnorms(model: nn.Module) -> tuple[dict[str, FollowingBatchNorm], dict[str, str]]:
    """Map each dynamic conv to the BatchNorm that directly and exclusively follows it.

    Detection, most reliable first:

    1. ``torch.fx`` graph of the model (dynamic convs and BNs kept as leaf calls): the conv's
       output has exactly one user, a ``BatchNorm2d`` call whose only input it is, and neither
       module is called twice (a shared module cannot be folded for one call site only).
    2. If the model does not trace (data-dependent control flow in ``forward``): no pair, each
       conv's reason says why (:func:`_untraced`).

    Returns ``(pairs, reasons)``: ``reasons`` says, per dynamic conv without a pair, why.
    """
    pairs: dict[str, FollowingBatchNorm] = {}
    reasons: dict[str, str] = {}
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: no proven pair
        trace_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
        return _untraced(model, trace_error)

    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), DYNAMIC_CONV_TYPES):
            continue
        conv_name = str(node.target)
        users = list(node.users)
        if calls[conv_name] > 1:
            reasons[conv_name] = f"the layer is called {calls[conv_name]} times in forward (shared module)"
            continue
        if len(users) != 1:
            reasons[conv_name] = f"its output has {len(users)} consumers, not a single BatchNorm"
            continue
        user = users[0]
        target = modules.get(user.target) if user.op == "call_module" else None
        if user.op == "output":
            reasons[conv_name] = "its output is the model's output (no BatchNorm follows)"
            continue
        if not isinstance(target, FOLDABLE_BATCHNORMS):
            what = type(target).__name__ if target is not None else f"{getattr(user.target, '__name__', user.target)}"
            reasons[conv_name] = f"followed by {what}, not a BatchNorm2d"
            continue
        if user.args != (node,) or user.kwargs:
            reasons[conv_name] = "the following BatchNorm takes other inputs too"
            continue
        if calls[user.target] > 1:
            reasons[conv_name] = f"the following BatchNorm {user.target} is called {calls[user.target]} times (shared module)"
            continue
        pairs[conv_name] = FollowingBatchNorm(conv_name, str(user.target), "fx graph")
    for name, _ in dynamic_convs(model):
        if name not in pairs and name not in reasons:
            reasons[name] = "the layer is not called in forward"
    return pairs, reasons


def _untraced(model: nn.Module, trace_error: str) -> tuple[dict[str, FollowingBatchNorm], dict[str, str]]:
    """No pairs: without the traced graph nothing proves a BatchNorm consumes a conv's output alone.

    Names and module order are not wiring: a pre-activation block's ``bn1`` runs *before*
    ``conv1``, a ``conv -> ReLU -> bn`` chain has the same children, and a Sequential's conv may be
    called elsewhere too.  Folding on such a guess changes the outputs silently; leaving the
    BatchNorm is exact (and costs one per-channel scale and shift)."""
    reasons = {name: f"left unfolded: the model does not trace with torch.fx ({trace_error}), so nothing proves which "
                     "BatchNorm takes its output alone" for name, _ in dynamic_convs(model)}
    return {}, reasons


class FoldFollowingBN(ReparamPass):
    """Fold a BatchNorm2d that directly follows a dynamic conv into the conv; the BN becomes ``nn.Identity``.

    With the eval BatchNorm written per output channel ``o`` as ``BN(y) = s * y + t``,
    ``s = gamma / sqrt(var + eps)``, ``t = beta - s * mean``:

    **Scale (both layers).**  The per-sample kernel is ``W_b = sum_k ka[b,k] * sa[b] * W_k``; ``s``
    acts on the output-channel axis, ``ka`` and ``sa`` do not, and the filter attention ``fa`` is
    itself per output channel, so ``s`` commutes with all of them::

        s * (conv(x * ca, W_b) * fa) = conv(x * ca, sum_k ka_k * sa * (s * W_k)) * fa

    hence ``W_k' = s[o] * W_k[o]`` for every candidate kernel k.

    **Shift, ODConv.**  ``y = conv(x * ca, W_b) * fa + c`` (``c`` the static bias, 0 if absent).
    ``t`` is added after the filter attention, where no attention touches it; it cannot enter the
    kernels (ODConv has no conv bias, and a bias before ``fa`` would be scaled by it)::

        s * y + t = conv(x * ca, W_b') * fa + (s * c + t)      ->  static_bias' = s * c + t

    **Shift, softmax DY-Conv.**  ``y = conv(x, W_b) + sum_k a_k b_k + c`` with ``a = softmax(.)``,
    so ``sum_k a_k = 1`` and ``t = sum_k a_k t``::

        s * y + t = conv(x, W_b') + sum_k a_k (s * b_k + t) + s * c

    hence ``b_k' = s * b_k + t`` for every k and ``static_bias' = s * c`` if present.  A layer
    without a dynamic bias (``b = 0``) gets, with ``dy_shift="dynamic"``, a new dynamic bias
    ``b_k' = t`` for every k (the public reference structure: a dynamic bias is a normal DY-Conv
    parameter), or, with the default ``dy_shift="auto"``, the static bias ``static_bias' = s * c + t``
    -- also exact (``s * y + t = conv(x, W_b') + (s * c + t)`` needs no ``sum_k a_k = 1``) and
    cheaper: O parameters instead of K * O and no per-sample bias mix.  (A sigmoid-routed CondConv,
    whose attentions do not sum to 1, could only take the static form.)

    Folds are computed in float64 and stored in the parameter dtype.
    """

    name = "fold-bn"
    summary = "fold a BatchNorm that directly follows a dynamic conv into its kernels and bias"

    def __init__(self, dy_shift: str = "auto"):
        if dy_shift not in ("auto", "dynamic"):
            raise InputError(f"dy_shift {dy_shift!r} is not 'auto' or 'dynamic'", "use dy_shift='auto' (--dy-bn-shift auto) or 'dynamic'")
        self.dy_shift = dy_shift

    def requires(self, model: nn.Module) -> None:
        require_dynamic_convs(model)
        require_eval_batchnorm(model)

    def run(self, model: nn.Module) -> list[LayerNote]:
        pairs, reasons = find_following_batchnorms(model)
        notes = []
        for name, layer in dynamic_convs(model):
            pair = pairs.get(name)
            if pair is None:
                notes.append(LayerNote(name, False, reasons.get(name, "no BatchNorm follows it")))
                continue
            bn = model.get_submodule(pair.bn)
            reason = batchnorm_unfoldable_reason(bn)
            out_channels = layer.weight.shape[1]
            if reason is None and bn.num_features != out_channels:
                reason = f"{pair.bn} has {bn.num_features} features, the conv {out_channels} outputs"
            hooked = [what for what, module in (("the BatchNorm", bn), ("the layer", layer))
                      if module._forward_hooks or module._forward_pre_hooks]
            if reason is None and hooked:  # a hook on either sees other values after the fold (or none: the BN goes)
                reason = f"{' and '.join(hooked)} carries forward hooks, which would see other values after a fold"
            if reason:
                notes.append(LayerNote(name, False, f"{pair.bn}: {reason}"))
                continue
            scale, shift = batchnorm_scale_shift(bn)
            where = fold_following_batchnorm(layer, scale, shift, self.dy_shift)
            replace_module(model, pair.bn, nn.Identity())
            notes.append(LayerNote(name, True, f"{pair.bn} folded: kernels scaled, shift into {where} ({pair.how}); {pair.bn} is now Identity"))
        self.extras = {"folded": {note.layer: pairs[note.layer].bn for note in notes if note.applied}}
        return notes

    def ensures(self, model: nn.Module, result: PassResult) -> None:
        folded = result.extras.get("folded", {})
        for conv_name in result.applied_layers():
            layer = model.get_submodule(conv_name)
            if not isinstance(model.get_submodule(folded[conv_name]), nn.Identity):
                raise PostconditionError(f"{folded[conv_name]} was folded but is not Identity")
            if isinstance(layer, ODConv2d) and layer.static_bias is None:
                raise PostconditionError(f"{conv_name}: no static bias after folding its BatchNorm")
            if isinstance(layer, DyConv2d) and layer.bias is None and layer.static_bias is None:
                raise PostconditionError(f"{conv_name}: no bias took the BatchNorm shift")


def fold_following_batchnorm(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor, dy_shift: str = "auto") -> str:
    """Apply ``s * layer(x) + t`` to the layer's parameters (see :class:`FoldFollowingBN`); says where ``t`` went."""
    weight = layer.weight.double() * scale.reshape(1, -1, 1, 1, 1)
    static = None if layer.static_bias is None else layer.static_bias.double()
    layer.weight = same_dtype_param(weight, layer.weight)
    if isinstance(layer, ODConv2d) or (layer.bias is None and dy_shift == "auto"):
        new_static = shift if static is None else scale * static + shift
        layer.static_bias = same_dtype_param(new_static, layer.weight)
        return "the static bias after the filter attention" if isinstance(layer, ODConv2d) else "a static bias (the layer has no dynamic bias)"
    created = layer.bias is None
    dyn = torch.zeros(layer.weight.shape[0], scale.numel(), dtype=torch.float64, device=scale.device) if created else layer.bias.double()
    layer.bias = same_dtype_param(dyn * scale.reshape(1, -1) + shift.reshape(1, -1), layer.weight)
    if static is not None:
        layer.static_bias = same_dtype_param(scale * static, layer.weight)
    return "every dynamic bias (created)" if created else "every dynamic bias"
