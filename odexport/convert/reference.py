"""Replace the public reference implementations' layers inside a user's model by odexport's.

A user who trained their own architecture with one of the public layers keeps their model code;
odexport swaps each recognised layer for its own with identical outputs, so the rest of the
pipeline (reparameterise, export, parity) works on it.  Three reference layers are recognised,
each by its **class name and its parameter layout** (a class of the same name with other
parameters is left alone and reported):

==========================  ==========================================  ============================
reference class             parameters that must be there               becomes
==========================  ==========================================  ============================
OSVAI/ODConv ``ODConv2d``   ``weight`` (K,O,C/g,k,k); ``attention.fc``  :class:`~odexport.layers.ODConv2d`
                            (1x1, no bias), ``attention.channel_fc``
kaijieshi7 ``Dynamic_conv2d``  ``weight`` (K,O,C/g,k,k); ``attention.fc1``  :class:`~odexport.layers.DyConv2d`
                            and ``attention.fc2`` (1x1 convs)           (``kaijieshi7`` keys)
TArdelean                   ``kernels_weights`` (K,O,C/g,kh,kw);        :class:`TemperatureArgDyConv2d`
``DynamicConvolution``      ``attention.to_scores`` = Linear, ReLU,     (``tardelean`` keys)
                            Linear
==========================  ==========================================  ============================

The new layer has the same state-dict keys, so the weights are copied with a strict
``load_state_dict``.  **Temperature** is carried over: ODConv's ``attention.temperature`` and
kaijieshi7's ``attention.temperature`` (a plain attribute, 34 on a fresh module: a *training start*
value, hence a warning); TArdelean passes T to every ``forward`` call, so its layers start at 1.0.
Every converted layer's temperature is explicit and settable afterwards
(:func:`odexport.layers.set_temperature`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from odexport.layers import DyConv2d, ODConv2d

KAIJIESHI7_TRAINING_START_T = 34


class TemperatureArgDyConv2d(DyConv2d):
    """A :class:`DyConv2d` that accepts TArdelean's ``forward(x, temperature)`` call signature.

    TArdelean's models pass the temperature down through every layer (``CustomSequential``), so
    the replacement must accept the argument.  The layer's own :attr:`temperature` is the one
    used (explicit, reported, set with :func:`odexport.layers.set_temperature`); the argument is
    accepted for call compatibility only.
    """

    def forward(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:  # noqa: ARG002
        return super().forward(x)


@dataclass
class ConvertedLayer:
    name: str
    reference: str  # "OSVAI/ODConv ODConv2d", ...
    layout: str  # "odconv" | "kaijieshi7" | "tardelean"
    temperature: float
    temperature_source: str  # where the temperature came from


@dataclass
class ConversionReport:
    """What :func:`convert_reference_layers` did: converted layers, and modules it left alone and why."""

    converted: list[ConvertedLayer] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # name, class, reason
    warnings: list[str] = field(default_factory=list)
    model: nn.Module | None = None  # the converted model (a new object only if the root itself was a reference layer)

    @property
    def layouts(self) -> list[str]:
        return sorted({c.layout for c in self.converted})


class _NotRecognised(Exception):
    """A module with a reference class name whose parameters do not have the reference layout."""


def _conv1x1(module, name: str) -> nn.Conv2d:
    sub = getattr(module, name, None)
    if not isinstance(sub, nn.Conv2d) or tuple(sub.kernel_size) != (1, 1):
        raise _NotRecognised(f"'{name}' is not a 1x1 Conv2d")
    return sub


def _five_d(module, name: str) -> torch.Tensor:
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5:
        raise _NotRecognised(f"'{name}' is not a 5-D (K, O, C/g, kh, kw) parameter")
    return weight


def _conv_geometry(module, default_groups: int = 1):
    stride = getattr(module, "stride", 1)
    padding = getattr(module, "padding", 0)
    dilation = getattr(module, "dilation", 1)
    groups = int(getattr(module, "groups", default_groups))
    return stride, padding, dilation, groups


def _from_official_odconv(module: nn.Module) -> tuple[nn.Module, float, str]:
    weight = _five_d(module, "weight")
    attention = getattr(module, "attention", None)
    if attention is None:
        raise _NotRecognised("no 'attention' submodule")
    fc = _conv1x1(attention, "fc")
    if fc.bias is not None:
        raise _NotRecognised("'attention.fc' has a bias (the official layer has none)")
    _conv1x1(attention, "channel_fc")
    num_kernels, out_ch, in_per_group, kh, kw = weight.shape
    if kh != kw:
        raise _NotRecognised(f"non-square kernel {kh}x{kw}")
    stride, padding, dilation, groups = _conv_geometry(module)
    in_ch = in_per_group * groups
    temperature = float(getattr(attention, "temperature", 1.0))
    new = ODConv2d(in_ch, out_ch, kh, stride=stride, padding=padding, dilation=dilation, groups=groups,
                   kernel_num=num_kernels, attention_channels=fc.out_channels, temperature=temperature)
    if not isinstance(getattr(attention, "bn", None), nn.BatchNorm2d):
        new.attention.bn = None  # a user variant without the attention BN (see OSVAI/ODConv#5)
    return new, temperature, "attention.temperature"


def _from_kaijieshi7(module: nn.Module) -> tuple[nn.Module, float, str]:
    weight = _five_d(module, "weight")
    attention = getattr(module, "attention", None)
    if attention is None:
        raise _NotRecognised("no 'attention' submodule")
    fc1 = _conv1x1(attention, "fc1")
    fc2 = _conv1x1(attention, "fc2")
    num_kernels, out_ch, in_per_group, kh, kw = weight.shape
    if fc2.out_channels != num_kernels:
        raise _NotRecognised(f"'attention.fc2' has {fc2.out_channels} outputs for K={num_kernels} kernels")
    bias = getattr(module, "bias", None)
    has_bias = isinstance(bias, torch.Tensor)
    stride, padding, dilation, groups = _conv_geometry(module)
    if hasattr(attention, "temperature"):
        temperature, source = float(attention.temperature), "attention.temperature"
    else:
        temperature, source = float(getattr(module, "temperature", 1.0)), "temperature"
    new = DyConv2d(in_per_group * groups, out_ch, (kh, kw), stride, padding, dilation, groups, bias=has_bias,
                   num_kernels=num_kernels, hidden_channels=fc1.out_channels, fc1_bias=fc1.bias is not None,
                   fc2_bias=fc2.bias is not None, temperature=temperature, key_layout="kaijieshi7")
    return new, temperature, source


def _from_tardelean(module: nn.Module, temperature: float | None) -> tuple[nn.Module, float, str]:
    weight = _five_d(module, "kernels_weights")
    attention = getattr(module, "attention", None)
    scores = getattr(attention, "to_scores", None)
    if not isinstance(scores, nn.Sequential) or len(scores) != 3 or not all(
        isinstance(scores[i], nn.Linear) for i in (0, 2)
    ):
        raise _NotRecognised("'attention.to_scores' is not Sequential(Linear, ReLU, Linear)")
    num_kernels, out_ch, in_per_group, kh, kw = weight.shape
    conv_args = dict(getattr(module, "conv_args", {}) or {})
    stride = conv_args.get("stride", getattr(module, "stride", 1))
    padding = conv_args.get("padding", getattr(module, "padding", 0))
    dilation = conv_args.get("dilation", getattr(module, "dilation", 1))
    groups = int(getattr(module, "groups", 1))
    bias = getattr(module, "kernels_bias", None)
    value = 1.0 if temperature is None else float(temperature)
    new = TemperatureArgDyConv2d(in_per_group * groups, out_ch, (kh, kw), stride, padding, dilation, groups,
                                 bias=isinstance(bias, torch.Tensor), num_kernels=num_kernels,
                                 hidden_channels=scores[0].out_features, fc1_bias=scores[0].bias is not None,
                                 fc2_bias=scores[2].bias is not None, temperature=value, key_layout="tardelean")
    return new, value, "forward argument (default 1.0)" if temperature is None else "--temperature"


_RECOGNISERS = {
    "ODConv2d": ("OSVAI/ODConv ODConv2d", "odconv"),
    "Dynamic_conv2d": ("kaijieshi7 Dynamic_conv2d", "kaijieshi7"),
    "DynamicConvolution": ("TArdelean DynamicConvolution", "tardelean"),
}
_SUSPICIOUS = ("dynamic", "odconv", "condconv", "dyconv", "dy_conv")


def convert_reference_layers(model: nn.Module, *, tardelean_temperature: float | None = None) -> ConversionReport:
    """Swap every recognised reference layer in ``model`` (in place) for odexport's; see the module docstring.

    The weights are copied with a strict ``load_state_dict``, so the model's ``state_dict()``
    keys are unchanged.  Returns what was converted, and every module whose class name looks like
    a dynamic convolution but that was left alone, with the reason.
    """
    report = ConversionReport()
    replacements: dict[str, nn.Module] = {}
    done_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in done_prefixes):
            continue
        if isinstance(module, (ODConv2d, DyConv2d)):
            done_prefixes.append(name + "." if name else "")
            continue
        cls = type(module).__name__
        if cls not in _RECOGNISERS:
            if any(s in cls.lower() for s in _SUSPICIOUS) and any(True for _ in module.parameters(recurse=False)):
                report.skipped.append((name, cls, "not one of the recognised reference layers; left unchanged"))
            continue
        reference, layout = _RECOGNISERS[cls]
        try:
            if layout == "odconv":
                new, temperature, source = _from_official_odconv(module)
            elif layout == "kaijieshi7":
                new, temperature, source = _from_kaijieshi7(module)
            else:
                new, temperature, source = _from_tardelean(module, tardelean_temperature)
            new.load_state_dict(module.state_dict(), strict=True)
        except _NotRecognised as exc:
            report.skipped.append((name, cls, f"class name of {reference} but {exc}; left unchanged"))
            continue
        except RuntimeError as exc:  # state_dict keys/shapes differ from the reference layout
            first = str(exc).strip().splitlines()[0][:160]
            report.skipped.append((name, cls, f"parameters do not follow the {reference} layout ({first}); left unchanged"))
            continue
        reference_param = next(module.parameters(), None)
        if reference_param is not None:
            new = new.to(device=reference_param.device, dtype=reference_param.dtype)
        new.train(module.training)
        replacements[name] = new
        done_prefixes.append(name + "." if name else "")
        report.converted.append(ConvertedLayer(name, reference, layout, temperature, source))
    carried: dict[float, list[str]] = {}
    for layer in report.converted:
        if layer.layout == "kaijieshi7" and layer.temperature != 1.0:
            carried.setdefault(layer.temperature, []).append(layer.name)
    for temperature, names in carried.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        report.warnings.append(
            f"{shown}: temperature {temperature:g} carried over from the reference module"
            + (" (kaijieshi7's constructor default, a training start value)" if temperature == KAIJIESHI7_TRAINING_START_T else "")
            + "; a fully trained network is evaluated at 1 -- pass --temperature 1 unless you trained otherwise"
        )
    for name, new in replacements.items():
        if name:
            _set_submodule(model, name, new)
        else:
            model = new
    report.model = model
    return report


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
