"""Export forms of a dynamic convolution: torch functions swapped into the layers during export.

Every form computes, per sample b, exactly what the layer computes (see
:mod:`odexport.layers.functional`)::

    W_b = sum_k ka[b,k] * sa[b] * W_k
    y_b = (conv(x_b * ca[b], W_b) + sum_k ka[b,k] * bias_k) * fa[b] + static_bias

but with the batch kept symbolic (no ``groups = g*B``).  The attentions always come from the
layer's own ``layer.attentions(x)``; a form only replaces the convolution that consumes them.

Variants (the exact decomposition one layer uses; ``LayerPlan.variant``):

``bmm``      per-sample kernel + fixed one-hot patch conv + batched MatMul.  Patches
             ``P = onehot_conv(x*ca)`` have shape ``(B, C*kh*kw, L)`` (channel ``c*kh*kw + p``), the
             kernel ``W_b = sa[b] * (ka[b] @ W)`` is ``(B, O, C/g*kh*kw)``; per group
             ``y = W_b[g] @ P[g]``.  Conv FLOPs x1, patches ``kh*kw`` x the input.
``kbranch``  conv is linear in the kernel: ``y_b = sum_k ka[b,k] * conv(x_b*ca[b], W_k)``.  One static
             conv to ``K*O`` channels (the dynamic bias rides along as its bias, since
             ``sum_k ka_k (c_k + b_k) = sum_k ka_k c_k + sum_k ka_k b_k``), then a batched MatMul
             ``ka[b] (1,K) @ Y_b (K, O*L)``.  Needs no spatial attention.  Conv FLOPs x K.
``patch``    (:mod:`odexport.export.fast_forms`) the same one-hot patches, scaled by ``ca x sa``,
             then a 1x1 conv whose weight is the layer's *constant* kernel (K-fold for K > 1):
             no per-sample kernel, so the runtime's blocked conv layouts apply.
``static``   one kernel and no spatial attention (ODConv 1x1 K=1, DY-Conv K=1): a static conv of
             ``x*ca`` times ``fa``; the softmax over one kernel is exactly 1.
``sample|V`` a batch switch: ``If(batch == 1)`` the per-sample kernel computed once and fed to a
             plain conv whose weight is a tensor (:class:`SingleSampleConv`), else variant ``V``.
``grouped``  the reference batch-folded conv (``groups = g*B``): the layer's own forward, only with
             a fixed batch.

The swapped forward is installed per layer by :func:`exporting_forms`; the core runs inside a
temporary child module ``odexport_core`` of the layer (its kernel aggregation inside
``odexport_core.aggregate``) so the exported nodes carry scopes that say what they are: the
mixed-precision pass (:mod:`odexport.export.precision`) keeps attention and aggregation in fp32 by
those scopes.
"""

from __future__ import annotations

import contextlib
import re
import types
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from odexport.errors import ExportError
from odexport.layers import DYNAMIC_CONV_TYPES, DyConv2d, ODConv2d, dynamic_convs
from odexport.layers.functional import Attentions

FORMS = ("auto", "custom", "decomposed", "grouped")
VARIANTS = ("bmm", "kbranch", "patch", "static", "grouped")
DYNAMIC_VARIANTS = ("bmm", "kbranch", "patch", "static")  # keep the batch symbolic

CORE_NAME = "odexport_core"  # temporary child of each layer during export
AGGREGATE_NAME = "aggregate"  # child of the core: kernel / output aggregation (fp32 in fp16 exports)


@dataclass(frozen=True)
class LayerSpec:
    """Static description of one dynamic conv at the export input shape (no tensors)."""

    name: str
    op: str  # "ODConv2d" | "DyConv2d"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    num_kernels: int
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    has_channel: bool
    has_filter: bool
    has_spatial: bool
    has_kernel: bool
    has_dyn_bias: bool
    has_static_bias: bool

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def out_pixels(self) -> int:
        return self.output_hw[0] * self.output_hw[1]

    @property
    def depthwise(self) -> bool:
        return self.groups == self.in_channels and self.in_per_group == 1

    def to_dict(self) -> dict:
        return asdict(self)


def applicable_variants(spec: LayerSpec) -> tuple[str, ...]:
    """Dynamic-batch variants that are exact for this layer (``grouped`` needs a fixed batch)."""
    found = []
    if spec.num_kernels == 1 and not spec.has_spatial:
        found.append("static")
    if not spec.has_spatial and spec.num_kernels > 1:
        found.append("kbranch")
    if spec.has_spatial or spec.num_kernels > 1:
        found.append("bmm")
        found.append("patch")  # odexport.export.fast_forms.PatchCore: exact for every layer
    return tuple(found)


# ---------------------------------------------------------------------------------------------
# Recognising layers


_DYNAMIC_NAME = re.compile(r"(od|omni|dy|dynamic|cond)_?conv", re.IGNORECASE)


def _looks_dynamic(module: nn.Module) -> bool:
    """A module that is probably a foreign dynamic conv: it owns a 5-D ``(K, O, C, kh, kw)``
    parameter, or it owns parameters and is named like one (ODConv, Dynamic_conv2d,
    DynamicConvolution, CondConv2d) or has ``update_temperature``.  Wrappers that merely contain
    odexport layers (e.g. an ``ODConvBNReLU`` block) are not flagged."""
    own = list(module._parameters.values()) if hasattr(module, "_parameters") else []
    if any(p is not None and p.dim() == 5 for p in own):
        return True
    if not any(p is not None for p in own):
        return False
    if any(isinstance(m, DYNAMIC_CONV_TYPES) for m in module.modules()):
        return False
    return bool(_DYNAMIC_NAME.search(type(module).__name__)) or callable(getattr(module, "update_temperature", None))


def check_layer_types(model: nn.Module) -> None:
    """Raise :class:`ExportError` for a module that looks like a dynamic conv but is not one of ours.

    Such a module (e.g. the reference ``Dynamic_conv2d`` left in a user model) would be traced
    with its batch-folded grouped conv and silently bake the batch into the graph.
    """
    inside_ours: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, DYNAMIC_CONV_TYPES):
            inside_ours.update(f"{name}.{sub}" if name else sub for sub, _ in module.named_modules() if sub)
    for name, module in model.named_modules():
        if isinstance(module, DYNAMIC_CONV_TYPES) or name in inside_ours or not _looks_dynamic(module):
            continue
        other_dims = re.search(r"conv([13])d", type(module).__name__, re.IGNORECASE)
        if other_dims:
            raise ExportError(
                f"layer '{name or '<root>'}' ({type(module).__module__}.{type(module).__name__}) is a "
                f"{other_dims.group(1)}-D dynamic convolution; odexport exports 2-D dynamic convolutions only",
                "export that model with torch.onnx.export at the batch size you serve (the reference form bakes the batch in)",
            )
        raise ExportError(
            f"layer '{name or '<root>'}' ({type(module).__module__}.{type(module).__name__}) looks like a dynamic "
            "convolution but is not an odexport ODConv2d/DyConv2d, so it cannot be exported with a dynamic batch",
            "replace it with odexport.layers.ODConv2d/DyConv2d (load the checkpoint with odexport, or swap the "
            "reference layers with odexport.convert) and export again",
        )


def describe_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerSpec]:
    """Describe every dynamic conv of ``model`` at ``input_shape`` (see :func:`probe_model`)."""
    return probe_model(model, input_shape)[0]


def probe_model(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[list[LayerSpec], int]:
    """Run one sample through ``model``: every dynamic conv's :class:`LayerSpec` and the number of
    model outputs.

    Which attention heads exist is read from ``layer.attentions(x)`` itself (a reparameterised
    layer may compute them differently), not from the layer's submodules.
    """
    check_layer_types(model)
    layers = dynamic_convs(model)
    seen: dict[str, LayerSpec] = {}
    handles = []

    def hook_for(name: str, layer: nn.Module):
        def hook(module, args):
            x = args[0]
            att = layer.attentions(x)
            seen[name] = _spec_from(name, layer, x, att)

        return hook

    for name, layer in layers:
        handles.append(layer.register_forward_pre_hook(hook_for(name, layer)))
    try:
        example = torch.zeros(1, *input_shape, dtype=_param_dtype(model))
        with torch.no_grad():
            out = model(example)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"the model does not run on an input of shape (1, {', '.join(map(str, input_shape))}): {type(exc).__name__}: {exc}",
            "pass the input shape the model was trained for (--input-shape CxHxW)",
        ) from exc
    finally:
        for h in handles:
            h.remove()
    missing = [name for name, _ in layers if name not in seen]
    if missing:
        raise ExportError(
            f"dynamic conv layer(s) {', '.join(missing[:3])} are never called by the model's forward",
            "remove unused layers or export the submodule that uses them",
        )
    if isinstance(out, torch.Tensor):
        num_outputs = 1
    elif isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
        num_outputs = len(out)
    elif isinstance(out, (tuple, list)):
        inner = next(index for index, o in enumerate(out) if not isinstance(o, torch.Tensor))
        raise ExportError(
            f"the model returns a {type(out).__name__} whose element {inner} is a {type(out[inner]).__name__}, not a tensor; "
            "odexport exports models that return a tensor or a flat tuple of tensors",
            "wrap the model so that forward returns one flat tuple of tensors",
        )
    else:
        raise ExportError(
            f"the model returns {type(out).__name__}; odexport exports models that return a tensor or a tuple of tensors",
            "wrap the model so that forward returns tensors",
        )
    return [seen[name] for name, _ in layers], num_outputs


def _param_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        return p.dtype
    return torch.float32


def _spec_from(name: str, layer: nn.Module, x: torch.Tensor, att: Attentions) -> LayerSpec:
    weight = layer.weight
    num_kernels, out_ch, in_per_group, kh, kw = weight.shape
    h, w = x.shape[-2:]
    sh, sw = layer.stride
    ph, pw = layer.padding
    dh, dw = layer.dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    dyn_bias = layer.bias if isinstance(layer, DyConv2d) else None
    return LayerSpec(
        name=name,
        op="ODConv2d" if isinstance(layer, ODConv2d) else "DyConv2d",
        in_channels=int(x.shape[1]),
        out_channels=int(out_ch),
        kernel_size=(int(kh), int(kw)),
        stride=(int(sh), int(sw)),
        padding=(int(ph), int(pw)),
        dilation=(int(dh), int(dw)),
        groups=int(layer.groups),
        num_kernels=int(num_kernels),
        input_hw=(int(h), int(w)),
        output_hw=(int(oh), int(ow)),
        has_channel=att.channel is not None,
        has_filter=att.filter is not None,
        has_spatial=att.spatial is not None,
        has_kernel=att.kernel is not None,
        has_dyn_bias=dyn_bias is not None,
        has_static_bias=getattr(layer, "static_bias", None) is not None,
    )


# ---------------------------------------------------------------------------------------------
# The cores


def spatial_on_patches(spec: LayerSpec) -> bool:
    """``bmm`` applies the spatial attention to the patches (``B*C*T*L`` values) rather than to
    the per-sample kernel (``B*O*C/g*T``) when they are the smaller tensor."""
    return spec.in_channels * spec.out_pixels < spec.out_channels * spec.in_per_group


class KernelAggregation(nn.Module):
    """Per-sample kernels ``W_b = sa[b] * sum_k ka[b,k] W_k`` as ``(B, g, O/g, C/g*kh*kw)``.

    ``ka @ W.view(K, -1)`` first (one small GEMM that reads the K kernels once), then the spatial
    attention per tap: ``sum_k (sa*ka_k) W_k = sa * sum_k ka_k W_k`` (equal up to rounding).
    """

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec

    def forward(self, weight: torch.Tensor, kernel: torch.Tensor | None, spatial: torch.Tensor | None) -> torch.Tensor:
        s = self.spec
        k_all, out_ch = weight.shape[:2]
        per_tap = s.in_per_group
        size = out_ch * per_tap * s.taps
        if kernel is not None:
            mixed = torch.matmul(kernel, weight.reshape(k_all, size))  # (B, O*Cg*kk)
            rows = -1
        else:
            mixed = weight[0].reshape(1, size)  # one kernel: broadcast over the batch
            rows = 1  # explicit: inside an If branch every unnamed size may become symbolic
        if spatial is not None:
            mixed = mixed.reshape(rows, out_ch * per_tap, s.taps) * spatial.reshape(-1, 1, s.taps)
            rows = -1
        return mixed.reshape(rows, s.groups, out_ch // s.groups, per_tap * s.taps)

    def bias(self, dyn_bias: torch.Tensor | None, kernel: torch.Tensor | None) -> torch.Tensor | None:
        if dyn_bias is None:
            return None
        if kernel is None:
            return dyn_bias.sum(dim=0, keepdim=True)
        return torch.matmul(kernel, dyn_bias)


class OutputMix(nn.Module):
    """K-branch mix ``y_b = sum_k ka[b,k] * Y_b[k]`` as a batched MatMul ``(B,g,1,K) @ (B,g,K,O/g*L)``."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec

    def forward(self, branches: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        s = self.spec
        k_all = s.num_kernels
        per_group = (s.out_channels // s.groups) * s.out_pixels
        mixed = torch.matmul(kernel.reshape(-1, 1, 1, k_all), branches.reshape(-1, s.groups, k_all, per_group))
        return mixed.reshape(-1, s.out_channels, *s.output_hw)


class SingleSampleConv(nn.Module):
    """Batch 1: the per-sample kernel computed once and fed to a Conv whose weight is a tensor.

    ``W_1 = sa[0] * (ka[0] @ W)`` (and ``fa[0]``, ``ca[0]`` folded into it where the kernel is the
    smaller tensor), then one ordinary grouped conv: conv FLOPs x1, no patches, no batched
    MatMul.  It reads sample 0's attentions only, so it is exact **only at batch 1**; it runs as
    the batch-1 branch of a ``switch`` variant (an ONNX ``If`` on the batch size).
    """

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        self.aggregate = _SampleKernel(spec)
        weight_size = spec.out_channels * spec.in_per_group * spec.taps
        self.channel_on_weight = weight_size <= spec.in_channels * spec.input_hw[0] * spec.input_hw[1]
        self.filter_on_weight = weight_size <= spec.out_channels * spec.out_pixels

    def forward(self, x, weight, channel, filter, spatial, kernel, dyn_bias, static_bias):
        s = self.spec
        channel_w = channel if self.channel_on_weight else None
        filter_w = filter if self.filter_on_weight else None
        w, bias = self.aggregate(weight, kernel, spatial, channel_w, filter_w, dyn_bias)
        if channel is not None and channel_w is None:
            x = x * channel[:1].reshape(1, s.in_channels, 1, 1)
        y = F.conv2d(x, w, bias, s.stride, s.padding, s.dilation, s.groups)
        if filter is not None and filter_w is None:
            y = y * filter[:1].reshape(1, s.out_channels, 1, 1)
        if static_bias is not None:
            y = y + static_bias.reshape(1, -1, 1, 1)
        return y


class _SampleKernel(nn.Module):
    """Sample 0's kernel ``(O, C/g, kh, kw)`` and bias, attentions folded in (fp32 aggregation).

    ``fa`` scales output rows and ``ca`` input columns of the kernel:
    ``conv(x*ca, W)*fa = conv(x, W * fa[o] * ca[c])``; with a dynamic bias ``(conv + b)*fa =
    conv(x, W*fa) + b*fa``.  The small scales are multiplied together first so the kernel is
    touched by one Mul after the mix.
    """

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec

    def forward(self, weight, kernel, spatial, channel, filter, dyn_bias):
        s = self.spec
        k_all, out_ch = weight.shape[:2]
        g, og, cg, taps = s.groups, out_ch // s.groups, s.in_per_group, s.taps
        if kernel is not None:
            w = torch.matmul(kernel[:1], weight.reshape(k_all, out_ch * cg * taps))
        else:
            w = weight[0]
        w = w.reshape(g, og, cg, taps)
        scale = None
        if channel is not None:
            scale = channel[:1].reshape(g, 1, cg, 1)
        if filter is not None:
            f = filter[:1].reshape(g, og, 1, 1)
            scale = f if scale is None else scale * f
        if spatial is not None:
            sa = spatial[:1].reshape(1, 1, 1, taps)
            scale = sa if scale is None else scale * sa
        if scale is not None:
            w = w * scale
        bias = None
        if dyn_bias is not None:
            bias = torch.matmul(kernel[:1], dyn_bias).reshape(out_ch) if kernel is not None else dyn_bias[0]
            if filter is not None:
                bias = bias * filter[:1].reshape(out_ch)
        return w.reshape(out_ch, cg, *s.kernel_size), bias


SWITCH = "sample|"  # variant prefix: "sample|bmm" = If(batch == 1) per-sample kernel conv, else bmm


class DynamicConvCore(nn.Module):
    """The convolution of one dynamic layer in one variant: ``(x, W, attentions, biases) -> y``.

    ``x`` is the layer input (channel attention not yet applied).  Constants (the one-hot patch
    kernel) are non-persistent buffers, so they become named initializers and never enter a
    state dict.
    """

    def __init__(self, spec: LayerSpec, variant: str):
        super().__init__()
        from odexport.export.fast_forms import FAST_VARIANTS, make_core

        if variant.startswith(SWITCH):
            # If(batch == 1): the per-sample kernel once and a plain conv; else the general variant.
            self.spec, self.variant, self.onehot, self.fast = spec, variant, None, None
            self.single = SingleSampleConv(spec)
            self.general = DynamicConvCore(spec, variant[len(SWITCH):])
            return
        self.single = None
        # Variants of odexport.export.fast_forms (patch, sample) are whole cores of their own.
        self.fast = make_core(spec, variant) if variant in FAST_VARIANTS else None
        if self.fast is not None:
            self.spec, self.variant, self.onehot = spec, variant, None
            return
        if variant not in DYNAMIC_VARIANTS + ("grouped",):
            raise ExportError(f"unknown variant {variant!r}", f"use one of {', '.join(VARIANTS)}")
        if variant != "grouped" and variant not in applicable_variants(spec):
            raise ExportError(
                f"variant {variant!r} is not exact for layer '{spec.name}'",
                f"use one of {', '.join(applicable_variants(spec))}",
            )
        self.spec = spec
        self.variant = variant
        if variant == "kbranch":
            self.aggregate = OutputMix(spec)
        else:
            self.aggregate = KernelAggregation(spec)
        if variant == "bmm" and not self._patches_are_input():
            kh, kw = spec.kernel_size
            onehot = torch.eye(kh * kw).reshape(kh * kw, 1, kh, kw).repeat(spec.in_channels, 1, 1, 1)
            self.register_buffer("onehot", onehot, persistent=False)
        else:
            self.onehot = None

    def _patches_are_input(self) -> bool:
        s = self.spec
        return s.kernel_size == (1, 1) and s.stride == (1, 1) and s.padding == (0, 0)

    def forward(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        channel: torch.Tensor | None,
        filter: torch.Tensor | None,
        spatial: torch.Tensor | None,
        kernel: torch.Tensor | None,
        dyn_bias: torch.Tensor | None,
        static_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.single is not None:
            return self._switch(x, weight, channel, filter, spatial, kernel, dyn_bias, static_bias)
        if self.fast is not None:
            return self.fast(x, weight, channel, filter, spatial, kernel, dyn_bias, static_bias)
        s = self.spec
        if channel is not None:
            x = x * channel.reshape(-1, s.in_channels, 1, 1)
        if self.variant == "static" or (self.variant == "grouped" and "static" in applicable_variants(s)):
            bias = None if dyn_bias is None else dyn_bias[0]
            y = F.conv2d(x, weight[0], bias, s.stride, s.padding, s.dilation, s.groups)
        elif self.variant == "kbranch":
            y = self._kbranch(x, weight, kernel, dyn_bias)
        elif self.variant == "bmm":
            y = self._bmm(x, weight, spatial, kernel, dyn_bias)
        else:
            from odexport.layers.functional import aggregate_bias, aggregate_kernels, folded_grouped_conv2d

            kernels = aggregate_kernels(weight, kernel, spatial)
            y = folded_grouped_conv2d(x, kernels, aggregate_bias(dyn_bias, kernel), s.stride, s.padding, s.dilation, s.groups)
        if filter is not None:
            y = y * filter.reshape(-1, s.out_channels, 1, 1)
        if static_bias is not None:
            y = y + static_bias.reshape(1, -1, 1, 1)
        return y

    def _switch(self, x, weight, channel, filter, spatial, kernel, dyn_bias, static_bias):
        names = ("channel", "filter", "spatial", "kernel", "dyn_bias", "static_bias")
        given = dict(zip(names, (channel, filter, spatial, kernel, dyn_bias, static_bias)))
        present = [n for n in names if given[n] is not None]

        def branch(core):
            def run(x, weight, *values):
                args = dict(zip(present, values))
                return core(x, weight, *(args.get(n) for n in names))

            return run

        operands = (x, weight, *(given[n] for n in present))
        return torch.cond(x.shape[0] == 1, branch(self.single), branch(self.general), operands)

    def _kbranch(self, x, weight, kernel, dyn_bias):
        s = self.spec
        k_all, out_ch = s.num_kernels, s.out_channels
        g = s.groups
        # Static conv to K*O channels, ordered (group, kernel, out-channel-in-group) so that a
        # grouped conv keeps every group's K branches inside its own group.
        stacked = weight.reshape(k_all, g, out_ch // g, *weight.shape[2:]).transpose(0, 1).reshape(g * k_all * (out_ch // g), *weight.shape[2:])
        bias = None
        if dyn_bias is not None:
            bias = dyn_bias.reshape(k_all, g, out_ch // g).transpose(0, 1).reshape(-1)
        branches = F.conv2d(x, stacked, bias, s.stride, s.padding, s.dilation, g)
        return self.aggregate(branches, kernel)

    def _bmm(self, x, weight, spatial, kernel, dyn_bias):
        s = self.spec
        # sa scales a kernel tap for every (o, c) and a patch row for every pixel: apply it to
        # whichever tensor is smaller (the patches in late stages, the kernel in early ones)
        on_patches = spatial is not None and spatial_on_patches(s)
        kernels = self.aggregate(weight, kernel, None if on_patches else spatial)  # (B, g, O/g, Cg*kk)
        if self.onehot is None:
            patches = x
        else:
            patches = F.conv2d(x, self.onehot.to(x.dtype), None, s.stride, s.padding, s.dilation, s.in_channels)
        if on_patches:
            patches = patches.reshape(-1, s.in_channels, s.taps, s.out_pixels) * spatial.reshape(-1, 1, s.taps, 1)
        patches = patches.reshape(-1, s.groups, s.in_per_group * s.taps, s.out_pixels)
        y = torch.matmul(kernels, patches).reshape(-1, s.out_channels, *s.output_hw)
        bias = self.aggregate.bias(dyn_bias, kernel)
        if bias is not None:
            y = y + bias.reshape(-1, s.out_channels, 1, 1)
        return y


def layer_tensors(layer: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(dynamic bias (K, O) or None, static bias (O,) or None)`` of a layer."""
    dyn_bias = layer.bias if isinstance(layer, DyConv2d) else None
    return dyn_bias, getattr(layer, "static_bias", None)


def _decomposed_forward(layer: nn.Module, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
    # ``temperature``: TArdelean-style models call every layer as ``conv(x, temperature)``; as in
    # TemperatureArgDyConv2d the layer's own (reported) temperature is the one used
    att = layer.attentions(x)
    dyn_bias, static_bias = layer_tensors(layer)
    core = getattr(layer, CORE_NAME)
    return core(x, layer.weight, att.channel, att.filter, att.spatial, att.kernel, dyn_bias, static_bias)


@contextlib.contextmanager
def exporting_forms(model: nn.Module, variants: dict[str, tuple[LayerSpec, str]], emitter=None) -> Iterator[None]:
    """Temporarily run each dynamic conv of ``model`` in its variant.

    ``variants`` maps layer name -> ``(spec, variant)``.  ``emitter(layer, core, x, attentions, dyn_bias,
    static_bias)``, when given, replaces the core call during ONNX export (the custom form emits
    one ``com.odexport`` node there); outside an export the core runs eagerly either way.
    The original forwards and module trees are restored on exit, even after an error.
    """
    installed = []
    try:
        for name, layer in dynamic_convs(model):
            if name not in variants:
                raise ExportError(f"no export form planned for layer '{name}'", "plan every dynamic conv layer")
            spec, variant = variants[name]
            core = DynamicConvCore(spec, variant).to(layer.weight.dtype)  # constants in the layer's dtype
            layer.add_module(CORE_NAME, core)
            had_forward = "forward" in layer.__dict__
            old_forward = layer.__dict__.get("forward")
            if emitter is None:
                layer.forward = types.MethodType(_decomposed_forward, layer)
            else:
                layer.forward = types.MethodType(_emitting_forward(emitter), layer)
            installed.append((layer, had_forward, old_forward))
        yield
    finally:
        for layer, had_forward, old_forward in installed:
            if had_forward:
                layer.forward = old_forward
            else:
                del layer.forward
            del layer._modules[CORE_NAME]


def _emitting_forward(emitter):
    def forward(layer: nn.Module, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return _decomposed_forward(layer, x)
        att = layer.attentions(x)
        dyn_bias, static_bias = layer_tensors(layer)
        return emitter(layer, getattr(layer, CORE_NAME), x, att, dyn_bias, static_bias)

    return forward
