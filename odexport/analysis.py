"""Parameters, multiply-accumulates (MACs) and a per-layer table of a model, for ``odexport inspect``.

This module holds odexport's one MAC convention (:func:`dynamic_conv_macs`, :func:`static_conv_macs`);
the reparameterisation report counts what a frozen layer saves with the same functions.  MACs are
counted for one sample of ``input_shape`` by running the model once at batch 1 with forward hooks
that record every layer's input and output sizes:

* **static**: every convolution and linear layer as if static, ``O*H'*W' * C/g*kh*kw`` for a conv
  (a dynamic conv counts the convolution with its per-sample kernel here) and ``in*out`` for a
  linear layer;
* **dynamic extra**, what a dynamic conv costs beyond that convolution:

  - ``attention``: the attention branch's own 1x1 convs (on the pooled input, so ``in*out``
    each), plus applying ODConv's channel attention to the input (``C*H*W``) and its filter
    attention to the output (``O*H'*W'``);
  - ``aggregation``: mixing the candidate kernels into the per-sample kernel,
    ``K * O * C/g * kh * kw`` (and ``K*O`` for a dynamic bias); zero where the layer runs a
    static conv (ODConv's 1x1, K=1 path).  Counted once even with a spatial attention: the
    reference multiplies the small ``sa * ka`` first and the ``K`` kernels by that product once,
    and the sum over ``K`` is the accumulate of those multiplies.

Pooling, normalisation, activations and the softmax/sigmoid are not counted: they are not MACs (the
static count would otherwise have to include every pooling layer too, and it equals the published
baselines as it is).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from odexport.layers import DYNAMIC_CONV_TYPES, DyConv2d, ODConv2d


@dataclass
class LayerRow:
    """One convolution or linear layer of the model."""

    name: str
    type: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] | None
    stride: tuple[int, int] | None
    groups: int
    kernel_num: int | None  # K, for a dynamic conv
    heads: list[str]  # attention heads present (channel, filter, spatial, kernel); [] for a static layer
    temperature: float | None
    params: int
    macs: int  # static MACs
    attention_macs: int = 0
    aggregation_macs: int = 0
    output_hw: tuple[int, int] | None = None

    @property
    def dynamic(self) -> bool:
        return self.kernel_num is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("kernel", "stride", "output_hw"):
            data[key] = None if data[key] is None else list(data[key])
        data["dynamic"] = self.dynamic
        return data


@dataclass
class ModelAnalysis:
    """Totals and rows for one model and input shape."""

    input_shape: tuple[int, int, int]
    params: int
    dynamic_params: int  # parameters inside dynamic convs (kernels and attention)
    attention_params: int
    macs_static: int
    macs_attention: int
    macs_aggregation: int
    layers: list[LayerRow] = field(default_factory=list)
    output_shape: tuple[int, ...] | None = None
    #: every tensor the model returns, in order (a tuple, list or dict of them too)
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def macs_dynamic_extra(self) -> int:
        return self.macs_attention + self.macs_aggregation

    @property
    def macs_total(self) -> int:
        return self.macs_static + self.macs_dynamic_extra

    @property
    def num_dynamic_layers(self) -> int:
        return sum(1 for row in self.layers if row.dynamic)

    def macs_dict(self) -> dict[str, int]:
        return {
            "static": self.macs_static,
            "dynamic_extra": self.macs_dynamic_extra,
            "attention": self.macs_attention,
            "aggregation": self.macs_aggregation,
            "total": self.macs_total,
        }


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BatchNorm running stats are not parameters)."""
    return sum(p.numel() for p in model.parameters())


def analyse_model(model: nn.Module, input_shape: tuple[int, int, int] = (3, 224, 224)) -> ModelAnalysis:
    """Count parameters and MACs of ``model`` for one sample of ``input_shape`` (see the module docstring)."""
    from odexport.errors import InputError

    dynamic = {name: module for name, module in model.named_modules() if isinstance(module, DYNAMIC_CONV_TYPES)}
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) or name in dynamic:
            hooks.append(module.register_forward_hook(_recorder(name, shapes)))
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        if isinstance(exc, torch.OutOfMemoryError) or "allocate" in text:  # the shape fits the model; memory does not
            raise InputError(
                f"counting at input shape {tuple(input_shape)} needs more memory than this machine has",
                "pass a smaller --input-shape CxHxW: parameters do not depend on it, and MACs scale with H x W",
            ) from exc
        raise InputError(
            f"the model cannot run on an input of shape {tuple(input_shape)} ({text[:160]})",
            "pass the sample shape the model was built for with --input-shape CxHxW (without it, the checkpoint's default is used)",
        ) from exc
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)

    rows: list[LayerRow] = []
    for name, module in model.named_modules():
        if name not in shapes or _inside_dynamic(name, dynamic):  # a dynamic conv counts its attention itself
            continue
        rows.append(_dynamic_row(name, module, *shapes[name]) if name in dynamic else _static_row(name, module, *shapes[name]))
    dynamic_params = sum(count_parameters(m) for m in dynamic.values())
    attention_params = sum(count_parameters(m.attention) for m in dynamic.values() if getattr(m, "attention", None) is not None)
    return ModelAnalysis(
        input_shape=tuple(input_shape),
        params=count_parameters(model),
        dynamic_params=dynamic_params,
        attention_params=attention_params,
        macs_static=sum(r.macs for r in rows),
        macs_attention=sum(r.attention_macs for r in rows),
        macs_aggregation=sum(r.aggregation_macs for r in rows),
        layers=rows,
        output_shape=tuple(output.shape) if isinstance(output, torch.Tensor) else None,
        output_shapes=[tuple(t.shape) for t in tensors_in(output)],
    )


def tensors_in(output) -> list[torch.Tensor]:
    """Every tensor a model returned, in order: a tensor, or (nested) tuples, lists and dicts of them."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in tensors_in(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in tensors_in(item)]
    return []


def _recorder(name, shapes):
    def hook(module, inputs, output):
        x = inputs[0] if inputs else None
        if isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor) and name not in shapes:
            shapes[name] = (tuple(x.shape), tuple(output.shape))
    return hook


def _inside_dynamic(name: str, dynamic: dict[str, nn.Module]) -> bool:
    return any(name.startswith(f"{d}.") or d == "" for d in dynamic if d != name)


def _plain_macs(module: nn.Module, in_shape, out_shape) -> int:
    if isinstance(module, nn.Linear):
        out_numel = _numel(out_shape)
        return out_numel * module.in_features
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return _numel(out_shape) * (module.in_channels // module.groups) * kh * kw
    return 0


def _numel(shape) -> int:
    n = 1
    for d in shape[1:]:  # per sample: drop the batch axis
        n *= int(d)
    return n


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _static_row(name, module, in_shape, out_shape) -> LayerRow:
    params = count_parameters(module)
    if isinstance(module, nn.Linear):
        return LayerRow(name, "Linear", module.in_features, module.out_features, None, None, 1, None, [], None, params,
                        _plain_macs(module, in_shape, out_shape))
    return LayerRow(name, type(module).__name__, module.in_channels, module.out_channels, _pair(module.kernel_size),
                    _pair(module.stride), module.groups, None, [], None, params, _plain_macs(module, in_shape, out_shape),
                    output_hw=tuple(out_shape[-2:]))


def _dynamic_row(name, module, in_shape, out_shape) -> LayerRow:
    weight = module.weight
    num_kernels, out_ch, in_per_group = int(weight.shape[0]), int(weight.shape[1]), int(weight.shape[2])
    kh, kw = int(weight.shape[3]), int(weight.shape[4])
    groups = int(module.groups)
    out_hw = tuple(int(d) for d in out_shape[-2:])
    macs = dynamic_conv_macs(module, tuple(int(d) for d in in_shape[-2:]), out_hw)
    return LayerRow(name, type(module).__name__, in_per_group * groups, out_ch, (kh, kw), _pair(module.stride), groups,
                    num_kernels, _heads(module), float(module.temperature), count_parameters(module), macs["conv"],
                    attention_macs=macs["attention"], aggregation_macs=macs["aggregation"], output_hw=out_hw)


def static_conv_macs(out_channels: int, in_per_group: int, kernel_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """``O * C/g * kh * kw * H' * W'`` per sample."""
    return out_channels * in_per_group * kernel_hw[0] * kernel_hw[1] * out_hw[0] * out_hw[1]


def attention_convs(layer: nn.Module) -> list[nn.Conv2d]:
    """The 1x1 convs (matmuls) a dynamic layer's attention runs per sample, on its pooled input."""
    if isinstance(layer, DyConv2d):
        return [layer.attention.fc1, layer.attention.fc2]
    att = layer.attention
    convs = [att.fc] if att.present_heads() else []
    convs += [att.head(name) for name in ("channel", "filter", "spatial", "kernel") if att.head(name) is not None]
    if att.heads is not None:
        convs.append(att.heads)
    return convs


def dynamic_conv_macs(layer: nn.Module, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> dict[str, int]:
    """MACs per sample of one dynamic conv: ``conv``, ``attention``, ``aggregation`` and ``total``.

    See the module docstring for what each counts.  A layer runs a static conv with its attention
    on the features (no aggregation) when it has one kernel and no spatial attention (ODConv) or
    one kernel (DY-Conv: the softmax over one kernel is 1).
    """
    num_kernels, out_ch, in_per_group, kh, kw = (int(d) for d in layer.weight.shape)
    conv = static_conv_macs(out_ch, in_per_group, (kh, kw), out_hw)
    attention = sum(c.in_channels * c.out_channels // c.groups for c in attention_convs(layer))
    aggregation = 0
    if isinstance(layer, ODConv2d):
        heads = set(layer.attention.present_heads())
        attention += in_per_group * layer.groups * in_hw[0] * in_hw[1] if "channel" in heads else 0
        attention += out_ch * out_hw[0] * out_hw[1] if "filter" in heads else 0
        runs_static_conv = "spatial" not in heads and num_kernels == 1
    else:
        runs_static_conv = num_kernels == 1
    if not runs_static_conv:
        aggregation = num_kernels * out_ch * in_per_group * kh * kw
        if isinstance(getattr(layer, "bias", None), torch.Tensor):
            aggregation += num_kernels * out_ch
    return {"conv": conv, "attention": attention, "aggregation": aggregation, "total": conv + attention + aggregation}


def _heads(module) -> list[str]:
    attention = getattr(module, "attention", None)
    if attention is None:
        return []
    if hasattr(attention, "present_heads"):
        return list(attention.present_heads())
    if hasattr(attention, "head"):
        return [h for h in ("channel", "filter", "spatial", "kernel") if attention.head(h) is not None]
    return ["kernel"]
