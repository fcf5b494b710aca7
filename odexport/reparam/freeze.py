"""Data-driven, approximate: freeze layers whose attention barely varies over a calibration set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from odexport.layers import DyConv2d, dynamic_convs
from odexport.layers.functional import Attentions
from odexport.reparam.base import (
    LayerNote,
    PreconditionError,
    ReparamPass,
    fmt,
    replace_module,
    require_dynamic_convs,
    unreplaceable_reason,
    require_eval_batchnorm,
)
from odexport.reparam.collapse import fold_attentions_into_kernels, static_conv_from
from odexport._outputs import holds_class_scores
from odexport.analysis import dynamic_conv_macs, static_conv_macs, tensors_in
from odexport.reparam.cost import count_params

HEADS = ("channel", "filter", "spatial", "kernel")


def relative_deviation(got, expected) -> float:
    """``max|got - expected| / max|expected|`` (0 when both are 0); for a model's outputs (lists of
    tensors, :func:`output_tensors`) the worst of them, each against its own scale."""
    if isinstance(expected, (list, tuple)):
        return max((relative_deviation(g, e) for g, e in zip(got, expected, strict=True)), default=0.0)
    scale = expected.abs().max().item()
    diff = (got.double() - expected.double()).abs().max().item()
    return diff / scale if scale > 0 else diff


@dataclass
class _AttentionStats:
    """Running float64 mean and squared deviations (Chan's parallel update) of each head's attention.

    Attentions near-constant over the samples are exactly the interesting case, so the variance
    must not come from ``E[a^2] - E[a]^2`` (which cancels catastrophically for a spread of 1e-7).
    """

    count: int = 0
    means: dict[str, torch.Tensor] = field(default_factory=dict)
    m2: dict[str, torch.Tensor] = field(default_factory=dict)
    in_hw: tuple[int, int] = (0, 0)
    out_hw: tuple[int, int] = (0, 0)

    def add(self, attentions: Attentions) -> None:
        batch = 0
        for head in HEADS:
            value = getattr(attentions, head)
            if value is None:
                continue
            value = value.detach().double().reshape(value.shape[0], -1).cpu()
            batch = value.shape[0]
            batch_mean = value.mean(0)
            batch_m2 = ((value - batch_mean) ** 2).sum(0)
            if head not in self.means:
                self.means[head], self.m2[head] = batch_mean, batch_m2
                continue
            total = self.count + batch
            delta = batch_mean - self.means[head]
            self.means[head] = self.means[head] + delta * (batch / total)
            self.m2[head] = self.m2[head] + batch_m2 + delta * delta * (self.count * batch / total)
        self.count += batch

    @property
    def heads(self) -> list[str]:
        return [h for h in HEADS if h in self.means]

    def mean(self, head: str) -> torch.Tensor:
        return self.means[head]

    def spread(self, head: str) -> float:
        """Largest (over the head's entries) population standard deviation over the samples."""
        return float((self.m2[head] / self.count).clamp_min(0).sqrt().max())


def _as_attentions(output: Any) -> Attentions:
    return Attentions(kernel=output) if isinstance(output, torch.Tensor) else output


def _top1_agreement(frozen: list[torch.Tensor], reference: list[torch.Tensor]) -> float | None:
    """Share of calibration samples whose argmax class is unchanged, on the first output that holds
    class scores (:func:`~odexport._outputs.holds_class_scores`; None when there is none)."""
    for got, expected in zip(frozen, reference):
        if holds_class_scores(tuple(expected.shape)):
            return float((got.flatten(1).argmax(dim=1) == expected.flatten(1).argmax(dim=1)).float().mean())
    return None


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every per-sample floating-point tensor a model returns, in order (a tensor, or tuples, lists
    and dicts of them): a pass that changed only a second head must show in the check.  A mask
    (bool), indices (integers) or a 0-d summary has no relative deviation to measure."""
    return [t for t in tensors_in(output) if t.is_floating_point() and t.ndim >= 1]


def frozen_conv(layer: nn.Module, mean: Attentions) -> nn.Conv2d:
    """The static conv of ``layer`` with its mean attentions folded in (see :func:`fold_attentions_into_kernels`).

    For DY-Conv the dynamic bias is mixed by the mean kernel attention; a static bias is kept.
    """
    weight = fold_attentions_into_kernels(layer.weight.double(), layer.groups, mean)
    if weight.shape[0] != 1:
        raise ValueError(f"a layer with K = {weight.shape[0]} kernels needs a kernel attention to freeze")
    bias = None
    if isinstance(layer, DyConv2d) and layer.bias is not None:
        bias = mean.kernel @ layer.bias.double() if mean.kernel is not None else layer.bias.double().sum(0)
    if layer.static_bias is not None:
        bias = layer.static_bias.double() if bias is None else bias + layer.static_bias.double()
    return static_conv_from(layer, weight[0], bias)


# Below this many calibration samples a spread is a guess: two or three images agree on attentions
# that the served inputs move (the freeze then changes decisions it was never shown).
FEW_CALIBRATION_SAMPLES = 32


class FreezeLowSpread(ReparamPass):
    """Replace layers whose attention hardly varies over calibration inputs by a static conv (approximate).

    Spread of a layer = the largest, over its heads and their entries, population standard deviation
    of the attention over the calibration samples.  A layer with spread < ``eps`` is replaced by
    ``nn.Conv2d`` holding ``sum_k mean(ka)_k * mean(sa) * W_k`` scaled by ``mean(ca)`` on the input
    channels and ``mean(fa)`` on the output channels (:func:`fold_attentions_into_kernels` applied
    to the mean attentions).  This is *not* an identity: for each layer the report gives the
    spread, the parameters and MACs saved, and the relative deviation of that layer's output on the
    calibration set; the pass's extras give the deviation of the model output with every frozen
    layer.  With ``eps=None`` it measures and reports spreads and freezes nothing.
    """

    name = "freeze-low-spread"
    summary = "replace layers whose attention varies less than EPS over calibration inputs by a static conv"

    def __init__(self, calibration: torch.Tensor, eps: float | None, batch_size: int = 16):
        self.calibration = calibration
        self.eps = eps
        self.batch_size = batch_size

    def requires(self, model: nn.Module) -> None:
        require_dynamic_convs(model)
        require_eval_batchnorm(model)
        if self.calibration.shape[0] < 2:
            raise PreconditionError(f"{self.calibration.shape[0]} calibration sample(s): a spread needs at least 2")
        if self.eps is not None and not self.eps >= 0:
            raise PreconditionError(f"freeze threshold {self.eps!r} must be >= 0")

    def _forward_all(self, model: nn.Module) -> list[torch.Tensor]:
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        chunks = [output_tensors(model(chunk.to(device=device, dtype=dtype))) for chunk in self.calibration.split(self.batch_size)]
        return [torch.cat([outputs[i].detach() for outputs in chunks]) for i in range(len(chunks[0]))]

    def run(self, model: nn.Module) -> list[LayerNote]:
        layers = dynamic_convs(model)
        stats = {name: _AttentionStats() for name, _ in layers}
        handles = []
        for name, layer in layers:
            handles.append(layer.attention.register_forward_hook(lambda m, i, o, s=stats[name]: s.add(_as_attentions(o))))
            handles.append(layer.register_forward_hook(lambda m, i, o, s=stats[name]: _record_shapes(s, i[0], o)))
        try:
            reference = self._forward_all(model)
        finally:
            for handle in handles:
                handle.remove()

        records: dict[str, dict[str, Any]] = {}
        candidates: dict[str, nn.Conv2d] = {}
        for name, layer in layers:
            st = stats[name]
            if st.count == 0:
                records[name] = {"layer": name, "spread": None, "frozen": False, "reason": "not called on the calibration inputs"}
                continue
            head_spreads = {head: st.spread(head) for head in st.heads}
            spread = max(head_spreads.values())
            record = {"layer": name, "spread": spread, "head_spreads": head_spreads, "frozen": False}
            records[name] = record
            if self.eps is None:
                record["reason"] = "no freeze threshold given (spread measured only)"
            elif not spread < self.eps:  # NaN (attentions that are not finite) freezes nothing
                worst = max(head_spreads, key=head_spreads.get)
                record["reason"] = f"spread {fmt(spread)} >= eps {fmt(self.eps)} (most varying head: {worst})"
            elif unreplaceable_reason(name, layer):
                record["reason"] = f"spread {fmt(spread)} < eps {fmt(self.eps)}, but {unreplaceable_reason(name, layer)}"
            else:
                mean = Attentions(*(st.mean(h) if h in st.means else None for h in HEADS))
                candidates[name] = frozen_conv(layer, mean)
                dyn_macs = dynamic_conv_macs(layer, st.in_hw, st.out_hw)["total"]
                static = candidates[name]
                record["params_saved"] = count_params(layer) - count_params(static)
                record["macs_saved"] = dyn_macs - static_conv_macs(static.out_channels, static.in_channels // static.groups, static.kernel_size, st.out_hw)

        if candidates:
            self._measure_layer_deviation(model, candidates, records)
            for name, static in candidates.items():
                replace_module(model, name, static)
                records[name]["frozen"] = True
            frozen_output = self._forward_all(model)
            output_deviation = relative_deviation(frozen_output, reference)
            top1_agreement = _top1_agreement(frozen_output, reference)
        else:
            output_deviation = 0.0
            # nothing changed, so every decision stands -- where the model makes one
            top1_agreement = 1.0 if _top1_agreement(reference, reference) is not None else None

        samples = int(self.calibration.shape[0])
        self.extras = {
            "eps": self.eps,
            "samples": samples,
            "output_deviation": output_deviation,
            # what a relative deviation means for a classifier: how often the decision stays the same
            "top1_agreement": top1_agreement,
            "layers": list(records.values()),
            "caution": (f"{samples} calibration samples: a spread measured on so few says little about the inputs "
                        f"you serve -- calibrate on a few hundred representative ones (at least {FEW_CALIBRATION_SAMPLES})")
                       if samples < FEW_CALIBRATION_SAMPLES else None,
        }
        notes = []
        for name, record in records.items():
            if record["frozen"]:
                notes.append(LayerNote(name, True, (
                    f"frozen: spread {fmt(record['spread'])} < eps {fmt(self.eps)}; saves {record['params_saved']} params and "
                    f"{record['macs_saved']} MACs/sample; layer output deviation {fmt(record['layer_deviation'])} (relative, "
                    f"{samples} calibration samples)")))
            else:
                spread = "" if record["spread"] is None else f" (spread {fmt(record['spread'])})"
                notes.append(LayerNote(name, False, record["reason"] + ("" if "spread" in record["reason"] else spread)))
        return notes

    def _measure_layer_deviation(self, model: nn.Module, candidates: dict[str, nn.Conv2d], records: dict[str, dict]) -> None:
        """Each candidate's own output: static conv vs the dynamic layer, on the same calibration activations."""
        worst = {name: [0.0, 0.0] for name in candidates}

        def compare(name: str, inputs, output) -> None:
            static_out = candidates[name](inputs[0])
            worst[name][0] = max(worst[name][0], (static_out.double() - output.double()).abs().max().item())
            worst[name][1] = max(worst[name][1], output.abs().max().item())

        handles = [model.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: compare(n, i, o)) for name in candidates]
        try:
            self._forward_all(model)
        finally:
            for handle in handles:
                handle.remove()
        for name, (diff, scale) in worst.items():
            records[name]["layer_deviation"] = diff / scale if scale > 0 else diff


def _record_shapes(stats: _AttentionStats, x: torch.Tensor, y: torch.Tensor) -> None:
    stats.in_hw = (int(x.shape[-2]), int(x.shape[-1]))
    stats.out_hw = (int(y.shape[-2]), int(y.shape[-1]))


__all__ = ["FreezeLowSpread", "frozen_conv", "relative_deviation"]
