"""Choosing an export form per layer: the cost model behind ``--form auto`` and ``--plan``.

For each dynamic conv, every exact variant (see :mod:`odexport.export.forms`) gets an estimated
latency from a roofline-style model: arithmetic at an effective rate for the kind of kernel the
runtime will use, plus bytes moved at an effective memory bandwidth, plus a fixed per-node
overhead.  With ``B`` the batch, ``L`` the output pixels, ``T = kh*kw`` the taps, ``Cg = C/g``::

    F      = 2 * B * O * Cg * T * L                      conv FLOPs of one output
    static : F / conv_rate
    kbranch: K * F / conv_rate  +  B*K*O*L*4 bytes (branches written and read)  +  mix GEMM
    bmm    : 2*B*K*O*Cg*T / agg_rate  +  K*O*Cg*T*4 bytes (the K kernels, read once)
             + B*O*Cg*T*4 bytes (per-sample kernel)  +  2*B*C*T*L*4 bytes (patches)
             + F / bmm_rate
    grouped: as bmm for the kernel, then F / grouped_rate(B)   (fixed batch only)

The rates per target are in :data:`TARGETS` (calibrated on the measurements recorded in
docs/forms.md; they rank variants, they do not promise milliseconds).  ``auto`` takes the
cheapest variant; ``grouped`` only competes when the batch is fixed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from odexport.errors import ExportError
from odexport.export.forms import FORMS, LayerSpec, applicable_variants


@dataclass(frozen=True)
class TargetCosts:
    """Effective rates of one target (FLOP/s and bytes/s) and a per-node overhead (s)."""

    conv_rate: float
    bmm_rate: float  # batched MatMul of per-sample kernels with patches
    agg_rate: float  # the small GEMM ka @ W
    grouped_rate_b1: float  # grouped conv with the batch folded, batch 1 (a plain conv with a runtime weight)
    grouped_rate_per_sample_decay: float  # grouped conv efficiency falls as 1 / (1 + decay*(B-1))
    bandwidth: float
    node_overhead: float


TARGETS = {
    # 2-core x86 CPU, onnxruntime CPU (MLAS).
    "cpu": TargetCosts(conv_rate=60e9, bmm_rate=30e9, agg_rate=8e9, grouped_rate_b1=45e9,
                       grouped_rate_per_sample_decay=0.05, bandwidth=8e9, node_overhead=5e-6),
    # One datacenter GPU (TensorRT / onnxruntime CUDA, fp16 tensor cores).
    "gpu": TargetCosts(conv_rate=150e12, bmm_rate=40e12, agg_rate=2e12, grouped_rate_b1=60e12,
                       grouped_rate_per_sample_decay=0.5, bandwidth=2e12, node_overhead=4e-6),
}


@dataclass(frozen=True)
class LayerPlan:
    """The form of one layer: ``form`` (custom | decomposed | grouped), the exact ``variant`` its
    convolution uses (bmm | kbranch | static | grouped), why, and the estimated cost in seconds."""

    name: str
    form: str
    reason: str
    est_cost: float
    variant: str
    spec: LayerSpec | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("spec")
        return data


def estimate_cost(spec: LayerSpec, variant: str, batch: int, target: str = "cpu") -> float:
    """Estimated seconds of one layer's convolution in ``variant`` at ``batch`` on ``target``."""
    t = TARGETS[target]
    b = max(1, batch)
    k_all = spec.num_kernels
    o, cg, taps, pixels, c = spec.out_channels, spec.in_per_group, spec.taps, spec.out_pixels, spec.in_channels
    flops = 2.0 * b * o * cg * taps * pixels
    weight_bytes = 4.0 * k_all * o * cg * taps
    kernel_bytes = 4.0 * b * o * cg * taps
    if variant == "static":
        return flops / t.conv_rate + weight_bytes / t.bandwidth + t.node_overhead
    if variant == "kbranch":
        branch_bytes = 4.0 * b * k_all * o * pixels
        mix_flops = 2.0 * b * k_all * o * pixels
        return k_all * flops / t.conv_rate + 2 * branch_bytes / t.bandwidth + mix_flops / t.agg_rate + weight_bytes / t.bandwidth + 3 * t.node_overhead
    aggregation = 2.0 * b * k_all * o * cg * taps / t.agg_rate + (weight_bytes + kernel_bytes) / t.bandwidth
    if variant == "bmm":
        patch_bytes = 0.0 if spec.kernel_size == (1, 1) and spec.stride == (1, 1) else 2 * 4.0 * b * c * taps * pixels
        return aggregation + patch_bytes / t.bandwidth + flops / t.bmm_rate + 5 * t.node_overhead
    if variant == "grouped":
        rate = t.grouped_rate_b1 / (1.0 + t.grouped_rate_per_sample_decay * (b - 1))
        return aggregation + flops / rate + 4 * t.node_overhead
    raise ExportError(f"unknown variant {variant!r}", "use bmm, kbranch, static or grouped")


def choose_variant(spec: LayerSpec, batch: int, target: str, allow_grouped: bool) -> tuple[str, float, str]:
    """``(variant, cost, reason)``: the cheapest exact variant by :func:`estimate_cost`."""
    candidates = list(applicable_variants(spec))
    if allow_grouped and "static" not in candidates:
        candidates.append("grouped")
    costs = {v: estimate_cost(spec, v, batch, target) for v in candidates}
    best = min(costs, key=costs.get)
    if len(costs) == 1:
        reason = f"{_describe(best)}; the only exact dynamic-batch variant ({_why_only(spec)})"
    else:
        ranked = " < ".join(f"{v} {costs[v] * 1e3:.3g}" for v in sorted(costs, key=costs.get))
        reason = f"{_describe(best)}; est. ms {ranked} at batch {batch} on {target}"
    return best, costs[best], reason


def _why_only(spec: LayerSpec) -> str:
    if spec.has_spatial:
        return "spatial attention scales every kernel tap"
    if spec.num_kernels == 1:
        return "one kernel"
    return "no alternative"


def _describe(variant: str) -> str:
    return {
        "static": "static conv",
        "kbranch": "K-branch conv + mix",
        "bmm": "per-sample kernel + patch MatMul",
        "grouped": "batch-folded grouped conv",
    }[variant]


def plan_layers(specs: list[LayerSpec], form: str = "auto", *, target: str = "cpu", batch: int | None = None) -> list[LayerPlan]:
    """Plan every layer for ``form``; ``batch`` None means a dynamic batch (cost at batch 1)."""
    if form not in FORMS:
        raise ExportError(f"unknown export form {form!r}", f"use one of {', '.join(FORMS)}")
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}", f"use one of {', '.join(TARGETS)}")
    if form == "grouped" and batch is None:
        raise ExportError(
            "the grouped form folds the batch into the conv groups, so it needs a fixed batch",
            "pass --batch N, or use --form decomposed / custom / auto for a dynamic batch",
        )
    hint = batch or 1
    plans = []
    for spec in specs:
        if form == "grouped":
            variant = "static" if "static" in applicable_variants(spec) else "grouped"
            cost = estimate_cost(spec, variant, hint, target)
            reason = "batch-folded grouped conv, as asked" if variant == "grouped" else "static conv: one kernel and no spatial attention"
            plans.append(LayerPlan(spec.name, "grouped", reason, cost, variant, spec))
            continue
        variant, cost, reason = choose_variant(spec, hint, target, allow_grouped=form == "auto" and batch is not None)
        if form == "auto":
            chosen = "grouped" if variant == "grouped" else "decomposed"
        else:
            chosen = form
        plans.append(LayerPlan(spec.name, chosen, reason, cost, variant, spec))
    return plans


def plan_forms(model, target: str = "cpu", batch: int | None = None, input_shape=(3, 224, 224), form: str = "auto") -> list[LayerPlan]:
    """The form each dynamic conv of ``model`` gets for ``form`` (default ``auto``), and why,
    without exporting.  ``batch`` None plans for a dynamic batch (costed at batch 1)."""
    from odexport.export.forms import describe_layers

    was_training = model.training
    model.eval()
    try:
        specs = describe_layers(model, tuple(input_shape))
    finally:
        model.train(was_training)
    return plan_layers(specs, form, target=target, batch=batch)
