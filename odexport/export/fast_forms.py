"""Fast export variants of a dynamic convolution, chosen per layer by measured cost.

Every variant computes exactly what the layer computes (notation of
:mod:`odexport.layers.functional`; ``T = kh*kw`` taps, ``Cg = C/g``)::

    W_b = sum_k ka[b,k] * sa[b] * W_k
    y_b = (conv(x_b * ca[b], W_b) + sum_k ka[b,k] * bias_k) * fa[b] + static_bias

and is a drop-in core for :class:`odexport.export.forms.DynamicConvCore`: same call signature
``(x, weight, channel, filter, spatial, kernel, dyn_bias, static_bias) -> y``.

``patch``   (dynamic batch, *static* weights).  A fixed one-hot depthwise conv gathers the patches
            ``P[b, c*T + p] = shift_p(x_b[c])`` (``(B, C*T, H', W')``, no copy for an unstrided
            1x1 conv).  The channel and spatial attentions are scales of the patches, ``ca[c]*sa[p]``,
            applied as ONE Mul of ``P`` by a ``(B, C*T, 1, 1)`` tensor.  Then
            ``conv(x*ca, sa*W) = W.view(O, Cg*T) @ (P * (ca x sa))``: a 1x1 conv whose weight is the
            layer's kernel, a constant -- onnxruntime re-lays it for its blocked (NCHWc) kernels
            exactly as it does for the static twin.  With K kernels the mix stays linear:

            ``mix="out"``: one 1x1 conv to ``K*O`` channels, ``y = sum_k ka_k Y_k`` (a batched
            MatMul ``(B,g,1,K) @ (B,g,K,Og*L)``);
            ``mix="in"``: the patches are scaled once per kernel, ``P'[b, k*C*T + j] =
            ka[b,k] * (ca x sa)[b,j] * P[b,j]`` (one broadcasting Mul), then ONE 1x1 conv with the
            constant ``[W_1 .. W_K]`` (``(O, K*Cg*T)``) gives ``y`` directly.
            Conv FLOPs x K (x1 for K = 1); patches T x the input.  Best where ``H'*W'`` is small
            next to the weight (late ResNet stages): the weight is read once, as by the static conv.

``sample``  (fixed batch only).  Per sample, the kernel computed once, ``W_b = ka_b @ W.view(K, -1)``,
            fed to a Conv whose weight is a runtime tensor (a fixed batch B > 1 is unrolled into
            B such convs at export time).  ``sa`` always scales the kernel; ``ca`` scales the kernel
            (``O*Cg*T``) or the input (``C*H*W``), ``fa`` the kernel or the output (``O*H'*W'``),
            whichever is smaller.  On the kernel they are laid out so each Mul runs over long
            contiguous spans -- ``(g, Og, Cg*T) * (g, 1, Cg*T)`` for ``ca x sa`` and
            ``* (g, Og, 1)`` for ``fa`` -- because onnxruntime's broadcast loops once per span
            (a ``(.., T)`` scale would cost one call per 9 numbers).  ``static_bias`` (and the
            mixed dynamic bias) ride in the Conv's bias.  Traced with a symbolic batch it raises:
            a per-sample kernel has no dynamic-batch form.  onnxruntime CPU runs its
            runtime-weight Conv through im2col; :mod:`odexport.runtime.ort_optimize` moves it to
            the blocked NCHWc kernels at session time.

:func:`cpu_variant` is the measured onnxruntime-CPU choice among these and the general variants
(docs/performance.md, "Attempts"); ``plan.plan_layers`` applies it for ``--target cpu``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FAST_VARIANTS = ("patch", "sample")


def onehot_patch_weight(in_channels: int, kernel_size: tuple[int, int], dtype=torch.float32) -> torch.Tensor:
    """Depthwise weight ``(C*T, 1, kh, kw)``: output channel ``c*T + p`` copies tap ``p`` of channel ``c``."""
    kh, kw = kernel_size
    taps = kh * kw
    return torch.eye(taps, dtype=dtype).reshape(taps, 1, kh, kw).repeat(in_channels, 1, 1, 1)


class PatchCore(nn.Module):
    """The ``patch`` variant (see the module docstring): one-hot patches, one Mul, constant 1x1 GEMM."""

    def __init__(self, spec, mix: str = "auto"):
        super().__init__()
        if mix not in ("auto", "in", "out"):
            raise ValueError(f"mix must be auto, in or out, got {mix!r}")
        self.spec = spec
        if mix == "auto":
            # The side with fewer elements to write: K*C*T*L scaled patches vs K*O*L branch outputs.
            mix = "in" if spec.in_channels * spec.taps <= spec.out_channels else "out"
        self.mix = mix
        identity = spec.kernel_size == (1, 1) and spec.stride == (1, 1) and spec.padding == (0, 0)
        if identity:
            self.onehot = None
        else:
            self.register_buffer("onehot", onehot_patch_weight(spec.in_channels, spec.kernel_size), persistent=False)

    def forward(self, x, weight, channel, filter, spatial, kernel, dyn_bias, static_bias):
        s = self.spec
        num_kernels, out_ch = weight.shape[:2]
        taps, groups, cg = s.taps, s.groups, s.in_per_group
        if self.onehot is None:
            patches = x
        else:
            patches = F.conv2d(x, self.onehot, None, s.stride, s.padding, s.dilation, s.in_channels)
        scale = _patch_scale(channel, spatial, s.in_channels, taps)  # (B, C*T) or None
        mixed_kernels = kernel is not None and num_kernels > 1
        if not mixed_kernels:
            if scale is not None:
                patches = patches * scale.reshape(-1, s.in_channels * taps, 1, 1)
            flat = weight[0].reshape(out_ch, cg * taps, 1, 1)
            bias = None if dyn_bias is None else dyn_bias[0]
            y = F.conv2d(patches, flat, bias, 1, 0, 1, groups)
        elif self.mix == "in":
            coef = kernel.reshape(-1, num_kernels, 1)  # (B, K, 1)
            if scale is not None:
                coef = coef * scale.reshape(-1, 1, s.in_channels * taps)  # (B, K, C*T)
            else:
                coef = coef.expand(-1, num_kernels, s.in_channels * taps)
            # (B, g, K, Cg*T) so that each group's K scaled copies stay inside that group.
            coef = coef.reshape(-1, num_kernels, groups, cg * taps).transpose(1, 2).reshape(-1, groups * num_kernels * cg * taps, 1, 1)
            h, w = patches.shape[-2:]
            stacked = patches.reshape(-1, groups, 1, cg * taps, h * w).expand(-1, groups, num_kernels, cg * taps, h * w)
            stacked = stacked.reshape(-1, groups * num_kernels * cg * taps, h, w) * coef
            # [W_1 .. W_K] per group: (O, K*Cg*T), input channel order (group, kernel, c, p).
            cat = weight.reshape(num_kernels, out_ch, cg * taps).permute(1, 0, 2).reshape(out_ch, num_kernels * cg * taps, 1, 1)
            y = F.conv2d(stacked, cat, None, 1, 0, 1, groups)
            if dyn_bias is not None:
                y = y + (kernel @ dyn_bias).reshape(-1, out_ch, 1, 1)
        else:
            if scale is not None:
                patches = patches * scale.reshape(-1, s.in_channels * taps, 1, 1)
            og = out_ch // groups
            # Branch outputs ordered (group, kernel, out-in-group) so each group keeps its K branches.
            stacked = weight.reshape(num_kernels, groups, og, cg * taps).transpose(0, 1).reshape(groups * num_kernels * og, cg * taps, 1, 1)
            bias = None
            if dyn_bias is not None:
                bias = dyn_bias.reshape(num_kernels, groups, og).transpose(0, 1).reshape(-1)
            branches = F.conv2d(patches, stacked, bias, 1, 0, 1, groups)
            h, w = branches.shape[-2:]
            y = torch.matmul(kernel.reshape(-1, 1, 1, num_kernels), branches.reshape(-1, groups, num_kernels, og * h * w))
            y = y.reshape(-1, out_ch, h, w)
        if filter is not None:
            y = y * filter.reshape(-1, out_ch, 1, 1)
        if static_bias is not None:
            y = y + static_bias.reshape(1, -1, 1, 1)
        return y


def _patch_scale(channel, spatial, in_channels: int, taps: int):
    """``(ca x sa)`` flattened to ``(B, C*T)`` (index ``c*T + p``); ``None`` without either."""
    if channel is None and spatial is None:
        return None
    if spatial is None:
        scale = channel.reshape(-1, in_channels, 1).expand(-1, in_channels, taps)
    elif channel is None:
        scale = spatial.reshape(-1, 1, taps).expand(-1, in_channels, taps)
    else:
        scale = channel.reshape(-1, in_channels, 1) * spatial.reshape(-1, 1, taps)
    return scale.reshape(-1, in_channels * taps)


class SampleCore(nn.Module):
    """The ``sample`` variant (batch 1): the per-sample kernel once, a runtime-weight Conv.

    ``channel_on`` / ``filter_on`` say where ``ca`` / ``fa`` are applied: ``"weight"`` or the
    activation (``"input"`` / ``"output"``); ``"auto"`` picks the smaller tensor.
    """

    def __init__(self, spec, channel_on: str = "auto", filter_on: str = "auto"):
        super().__init__()
        self.spec = spec
        weight_size = spec.out_channels * spec.in_per_group * spec.taps
        if channel_on == "auto":
            channel_on = "weight" if weight_size <= spec.in_channels * spec.input_hw[0] * spec.input_hw[1] else "input"
        if filter_on == "auto":
            filter_on = "weight" if weight_size <= spec.out_channels * spec.out_pixels else "output"
        if channel_on not in ("weight", "input") or filter_on not in ("weight", "output"):
            raise ValueError(f"bad placement channel_on={channel_on!r} filter_on={filter_on!r}")
        self.channel_on, self.filter_on = channel_on, filter_on

    def forward(self, x, weight, channel, filter, spatial, kernel, dyn_bias, static_bias):
        batch = x.shape[0]
        if not isinstance(batch, int):
            from odexport.errors import ExportError

            raise ExportError(
                f"the sample variant of layer '{self.spec.name}' needs a fixed batch (it runs one conv per sample)",
                "export with --batch N, or use a dynamic-batch variant (patch, bmm, kbranch)",
            )
        if batch > 1:
            # A fixed batch > 1: one runtime-weight conv per sample (unrolled at export time).
            pick = lambda t, b: None if t is None else t[b : b + 1]  # noqa: E731
            return torch.cat([
                self._one(x[b : b + 1], weight, pick(channel, b), pick(filter, b), pick(spatial, b), pick(kernel, b), dyn_bias, static_bias)
                for b in range(batch)
            ])
        return self._one(x, weight, channel, filter, spatial, kernel, dyn_bias, static_bias)

    def _one(self, x, weight, channel, filter, spatial, kernel, dyn_bias, static_bias):
        s = self.spec
        num_kernels, out_ch = weight.shape[:2]
        taps, groups, cg = s.taps, s.groups, s.in_per_group
        og = out_ch // groups
        if kernel is not None and num_kernels > 1:
            # (K,) reshape: a batch other than 1 is an error in the runtime, not a wrong answer.
            ka = kernel.reshape(1, num_kernels)
            w = torch.matmul(ka, weight.reshape(num_kernels, -1))
        else:
            ka = None
            w = weight[0]
        # Scales laid out so every Mul runs over long contiguous spans (onnxruntime's broadcast
        # loops once per span: a (.., T) scale on an OIHW kernel would cost one call per 9 floats).
        # v[g, c*T + p] = ca[g*Cg + c] * sa[p]  (one row per group, Cg*T long), then fa per row.
        w = w.reshape(groups, og, cg * taps)
        row = None
        if channel is not None and self.channel_on == "weight":
            row = channel.reshape(groups, 1, cg, 1)
        if spatial is not None:
            sa = spatial.reshape(1, 1, 1, taps)
            row = sa.expand(groups, 1, cg, taps) if row is None else row * sa
        if row is not None:
            if row.shape[-1] != taps:
                row = row.expand(groups, 1, cg, taps)
            w = w * row.reshape(groups, 1, cg * taps)
        if filter is not None and self.filter_on == "weight":
            w = w * filter.reshape(groups, og, 1)
        w = w.reshape(out_ch, cg, *s.kernel_size)
        if channel is not None and self.channel_on == "input":
            x = x * channel.reshape(1, s.in_channels, 1, 1)
        bias = None
        if dyn_bias is not None:
            bias = (ka @ dyn_bias).reshape(out_ch) if ka is not None else dyn_bias[0]
            if filter is not None and self.filter_on == "weight":
                bias = bias * filter.reshape(out_ch)  # (conv + b) * fa = conv(x, W*fa) + b*fa
        filter_after = filter is not None and self.filter_on == "output"
        if static_bias is not None and not filter_after:
            bias = static_bias if bias is None else bias + static_bias
        y = F.conv2d(x, w, bias, s.stride, s.padding, s.dilation, groups)
        if filter_after:
            y = y * filter.reshape(1, out_ch, 1, 1)
            if static_bias is not None:
                y = y + static_bias.reshape(1, -1, 1, 1)
        return y


def make_core(spec, variant: str, **options) -> nn.Module:
    """The core module of a fast variant (``patch`` or ``sample``)."""
    if variant == "patch":
        return PatchCore(spec, **options)
    if variant == "sample":
        return SampleCore(spec, **options)
    raise ValueError(f"unknown fast variant {variant!r}; use one of {', '.join(FAST_VARIANTS)}")


def cpu_variant(spec, batch: int | None, general: str | None = None) -> tuple[str | None, str]:
    """The fast variant for one layer on onnxruntime CPU (plain sessions), or ``None`` to keep the
    general cost model's choice; with the reason.  Measured on ResNet-18 / MobileNetV2 layers
    (docs/performance.md, "Attempts"; ratios to a static conv of the same shape, batch 1):

    * ``sample`` (fixed batch only) where the K kernels are at most 2x the layer input: a
      runtime-weight Conv costs 1.6x there against 2.4-3.4x for the patch/bmm forms; past that the
      per-sample kernel dominates (stage 4: 5.0x).
    * ``patch`` for one kernel (K = 1) where the kernel is at least the layer input: the constant
      1x1 GEMM reads the kernel once, like the static conv (stage 4: 1.35x vs 3.7x for bmm).  With
      K > 1 it costs K x the arithmetic (OD-ResNet18 K=4: 7.2x vs 4.5x whole-model), and on large
      maps the T x patches cost more than they save (OD-MobileNetV2: 13x vs 7.4x) -- kept off there.
    * ``sample`` also where the general plan (``general``) chose ``grouped`` at a fixed batch: the
      same per-sample kernel conv, with the attentions applied in one Mul over long spans.
    """
    kernel = spec.out_channels * spec.in_per_group * spec.taps
    kernels = spec.num_kernels * kernel
    activation = spec.in_channels * spec.input_hw[0] * spec.input_hw[1]
    if batch is not None and kernels <= 2 * activation and (spec.has_spatial or spec.num_kernels > 1):
        return "sample", f"fixed batch {batch}: the K kernels ({kernels}) <= 2x the input ({activation}): per-sample kernel, runtime-weight conv"
    if batch is not None and general == "grouped":
        return "sample", f"fixed batch {batch}: per-sample kernel conv (grouped's conv, attentions applied in one pass)"
    one_kernel = spec.num_kernels == 1 or not spec.has_kernel
    if one_kernel and spec.has_spatial and kernel >= activation and not spec.depthwise:
        return "patch", f"one kernel ({kernel}) >= input ({activation}): attention-scaled patches @ the constant kernel"
    return None, ""


def plan_cpu(specs, batch: int | None = None):
    """Per-layer plan for onnxruntime CPU: the general plan (``plan.plan_layers(form="auto")``)
    with :func:`cpu_variant`'s measured choices where they apply.  ``batch`` None: a dynamic
    batch (no ``sample``)."""
    from dataclasses import replace

    from odexport.export.plan import plan_layers

    plans = []
    for plan, spec in zip(plan_layers(specs, "auto", target="cpu", batch=batch), specs):
        variant, reason = cpu_variant(spec, batch, plan.variant)
        if variant is not None and variant != plan.variant:
            plan = replace(plan, form="decomposed" if plan.form == "grouped" else plan.form, variant=variant, reason=reason)
        plans.append(plan)
    return plans
