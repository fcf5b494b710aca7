"""Choosing an export form per layer: the cost model behind ``--form auto`` and ``--plan``.

For each dynamic conv every exact variant (see :mod:`odexport.export.forms`) gets an estimated
latency from a roofline-style model: arithmetic at an effective rate for the kind of kernel the
runtime uses, plus the bytes each variant moves through memory at an effective bandwidth, plus a
fixed per-node overhead.  On a CPU the bytes dominate: a dynamic conv's extra cost is the tensors
it materialises (patches, per-sample kernels, K branches), not its FLOPs.  With ``B`` the batch,
``L`` the output pixels, ``T = kh*kw`` taps, ``Cg = C/g``, ``F = 2*B*O*Cg*T*L`` the conv FLOPs,
``P = 4*B*C*T*L`` the patch bytes, ``Wb = 4*O*Cg*T`` one kernel's bytes::

    static : F / conv_rate
    patch  : P (gather) + 2P (scale by ca x sa) + P (read) + K*F / conv_rate     (K = 1, or mix "out")
             + K*P + ... (mix "in": K scaled copies)  -- a constant 1x1 GEMM, blocked layouts apply
    bmm    : K*Wb (read the K kernels) + 2*B*Wb (the per-sample kernel, when K > 1 or sa is on it)
             + 2*min(B*Wb, P) (scale by sa, on the smaller tensor) + 2P + F / bmm_rate
    kbranch: 2*4*B*K*O*L (branches written and read) + K*F / conv_rate
    grouped: K*Wb + 2*B*Wb + 2P (the runtime's own im2col) + F / grouped_rate(B)  (fixed batch only)

(``2P`` means written and read once; a patch tensor of a 1x1 stride-1 conv is the input itself.)
The rates per target are in :data:`TARGETS`, calibrated on whole-model and per-layer onnxruntime
measurements of OD-ResNet18 (see docs/forms.md); they rank variants, they do not promise
milliseconds.  ``auto`` takes the cheapest variant; ``grouped`` only competes when the batch is
fixed.  The model predicts what was measured on two CPU cores: at K=1 the per-sample kernel
(``bmm``) wins where the input is large next to the weight (early stages) and the constant-weight
patch GEMM (``patch``) where the weight is large (late stages); at K=4 the patch GEMM's K-fold
FLOPs lose to ``bmm``; at a large batch on a GPU ``kbranch`` wins for late layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from odexport.errors import ExportError
from odexport.export.forms import FORMS, LayerSpec, applicable_variants, spatial_on_patches


@dataclass(frozen=True)
class TargetCosts:
    """Effective rates of one target (FLOP/s and bytes/s) and a per-node overhead (s)."""

    conv_rate: float  # static conv with a constant weight (blocked / tensor-core kernels)
    bmm_rate: float  # batched MatMul of per-sample kernels with patches, or a runtime-weight conv
    grouped_rate_b1: float  # grouped conv with the batch folded, batch 1 (a plain conv with a runtime weight)
    grouped_rate_per_sample_decay: float  # grouped conv efficiency falls as 1 / (1 + decay*(B-1))
    bandwidth: float
    node_overhead: float


# The container ``auto`` puts each layer's chosen variant in, per target.  CPU: the custom node
# (com.odexport, its function body is the same decomposed variant, so stock onnxruntime runs it
# as fast as the decomposed form) because it keeps what odexport's onnxruntime-CPU specialisation
# (odexport.runtime.ort_optimize, `odexport ort`) needs: the kernels as initializers and the
# attentions as node inputs.  GPU: standard ops, which every TensorRT parses without a plugin.
AUTO_FORM = {"cpu": "custom", "gpu": "decomposed"}

TARGETS = {
    # 2-core x86 CPU, onnxruntime CPU (MLAS; NCHWc for constant-weight convs).
    "cpu": TargetCosts(conv_rate=150e9, bmm_rate=100e9, grouped_rate_b1=100e9,
                       grouped_rate_per_sample_decay=0.05, bandwidth=10e9, node_overhead=5e-6),
    # One datacenter GPU (TensorRT / onnxruntime CUDA, fp16 tensor cores).
    "gpu": TargetCosts(conv_rate=150e12, bmm_rate=40e12, grouped_rate_b1=60e12,
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
    if variant.startswith("sample|"):  # batch switch: costed as its general branch
        variant = variant.split("|", 1)[1]
    b = max(1, batch)
    k_all = spec.num_kernels
    o, cg, taps, pixels, c = spec.out_channels, spec.in_per_group, spec.taps, spec.out_pixels, spec.in_channels
    mixed = spec.has_kernel and k_all > 1
    flops = 2.0 * b * o * cg * taps * pixels
    one_kernel = 4.0 * o * cg * taps
    identity_patches = spec.kernel_size == (1, 1) and spec.stride == (1, 1) and spec.padding == (0, 0)
    patches = 0.0 if identity_patches else 4.0 * b * c * taps * pixels
    patch_read = 4.0 * b * c * taps * pixels
    scaled = spec.has_channel or spec.has_spatial
    if variant == "static":
        return flops / t.conv_rate + one_kernel / t.bandwidth + t.node_overhead
    if variant == "kbranch":
        branches = 4.0 * b * k_all * o * pixels
        return k_all * flops / t.conv_rate + (2 * branches + k_all * one_kernel) / t.bandwidth + 3 * t.node_overhead
    if variant == "patch":
        moved = patches + (2 * patch_read if scaled else 0.0) + patch_read
        if mixed:
            mix_in = c * taps <= o  # the rule of fast_forms.PatchCore
            moved += k_all * patch_read * 2 if mix_in else 2 * 4.0 * b * k_all * o * pixels
        work = (k_all if mixed else 1) * flops
        return work / t.conv_rate + (moved + k_all * one_kernel) / t.bandwidth + 4 * t.node_overhead
    if variant == "bmm":
        # sa goes on the smaller of the per-sample kernel and the patches (forms.spatial_on_patches)
        on_patches = spec.has_spatial and spatial_on_patches(spec)
        per_sample = mixed or (spec.has_spatial and not on_patches)
        moved = k_all * one_kernel + (2 * b * one_kernel if per_sample else 0.0) + 2 * patches
        if spec.has_spatial:
            moved += 2 * patch_read if on_patches else 2 * b * one_kernel
        return moved / t.bandwidth + flops / t.bmm_rate + 5 * t.node_overhead
    kernels = k_all * one_kernel + 2 * b * one_kernel * (2 if spec.has_spatial else 1)
    if variant == "grouped":
        rate = t.grouped_rate_b1 / (1.0 + t.grouped_rate_per_sample_decay * (b - 1))
        return (kernels + 2 * patch_read) / t.bandwidth + flops / rate + 4 * t.node_overhead
    raise ExportError(f"unknown variant {variant!r}", "use bmm, kbranch, patch, static or grouped")


def choose_variant(spec: LayerSpec, batch: int, target: str, allow_grouped: bool, exclude: tuple[str, ...] = ()) -> tuple[str, float, str]:
    """``(variant, cost, reason)``: the cheapest exact variant by :func:`estimate_cost`."""
    candidates = [v for v in applicable_variants(spec) if v not in exclude] or list(applicable_variants(spec))
    left_out = [v for v in applicable_variants(spec) if v not in candidates]
    if allow_grouped and "static" not in candidates:
        candidates.append("grouped")
    costs = {v: estimate_cost(spec, v, batch, target) for v in candidates}
    best = min(costs, key=costs.get)
    if len(costs) == 1 and not left_out:
        reason = f"{_describe(best)}; the only exact dynamic-batch variant ({_why_only(spec)})"
    elif len(costs) == 1:
        reason = f"{_describe(best)}; the only exact variant left"
    else:
        ranked = " < ".join(f"{v} {costs[v] * 1e3:.3g}" for v in sorted(costs, key=costs.get))
        reason = f"{_describe(best)}; est. ms {ranked} at batch {batch} on {target}"
    if left_out:  # e.g. fp16 keeps to variants whose aggregation it places in fp32
        reason += f" ({', '.join(left_out)} left out for fp16)"
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
        "patch": "attention-scaled patches + constant 1x1 GEMM",
        "grouped": "batch-folded grouped conv",
    }[variant]


# fp16 keeps to the variants whose kernel aggregation the precision pass places in fp32
FP16_EXCLUDED = ("patch",)


def plan_layers(specs: list[LayerSpec], form: str = "auto", *, target: str = "cpu", batch: int | None = None,
                exclude: tuple[str, ...] = ()) -> list[LayerPlan]:
    """Plan every layer for ``form``; ``batch`` None means a dynamic batch (cost at batch 1).

    ``exclude`` removes variants from the choice (the fp16 export keeps to variants whose kernel
    aggregation it can place in fp32)."""
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
        variant, cost, reason = choose_variant(spec, hint, target, allow_grouped=form == "auto" and batch is not None, exclude=exclude)
        if target == "cpu" and not exclude:
            # Measured onnxruntime-CPU choices (odexport.export.fast_forms.cpu_variant) override the model;
            # they were measured in fp32, so an fp16 plan (exclude) keeps to the cost model.
            from odexport.export.fast_forms import cpu_variant

            fast, why = cpu_variant(spec, batch, variant)
            if fast is not None:
                variant, reason = fast, why
        if form == "auto":
            chosen = "grouped" if variant == "grouped" else AUTO_FORM[target]
        else:
            chosen = form
        plans.append(LayerPlan(spec.name, chosen, reason, cost, variant, spec))
    if form == "auto" and any(p.form == "grouped" for p in plans):
        # one export is either custom or not: a batch-folded layer keeps the others decomposed
        plans = [replace(p, form="decomposed") if p.form == "custom" else p for p in plans]
    return plans


def plan_forms(model, target: str = "cpu", batch: int | None = None, input_shape=(3, 224, 224), form: str = "auto",
               fp16: bool = False) -> list[LayerPlan]:
    """The form each dynamic conv of ``model`` gets for ``form`` (default ``auto``), and why,
    without exporting: the plan :func:`odexport.export.onnx_export.export_onnx` makes with the same
    options.  ``batch`` None plans for a dynamic batch (costed at batch 1)."""
    from odexport.export.forms import describe_layers

    was_training = model.training
    model.eval()
    try:
        specs = describe_layers(model, tuple(input_shape))
    finally:
        model.train(was_training)
    return plan_layers(specs, form, target=target, batch=batch, exclude=FP16_EXCLUDED if fp16 else ())
