"""DY-Conv (Chen et al., CVPR 2020): K kernels mixed by ``softmax(logits / T)``.

One module serves both public implementations; ``key_layout`` picks the state-dict names:

=============  ======================================  ==============================================
               ``kaijieshi7`` (Dynamic-convolution-    ``tardelean`` (TArdelean/DynamicConvolution)
               Pytorch ``Dynamic_conv2d``)
=============  ======================================  ==============================================
kernels        ``weight`` (K, O, C/g, kh, kw)          ``kernels_weights``
dynamic bias   ``bias`` (K, O)                         ``kernels_bias``
first FC       ``attention.fc1.weight`` (A, C, 1, 1)   ``attention.to_scores.0.weight|bias`` (A, C)
second FC      ``attention.fc2.weight|bias``           ``attention.to_scores.2.weight|bias`` (K, A)
=============  ======================================  ==============================================

Inside, both are ``softmax(fc2(relu(fc1(avgpool(x)))) / T)`` with 1x1 convs; the layout only
renames (and reshapes 2-D Linear weights to 1x1 conv weights) on load and save.

Deploy state (written by :mod:`odexport.reparam`): a dynamic bias may appear where the source had
none, the kernels and biases may be rescaled (a following BatchNorm folded in), ``static_bias``
``(O,)`` may appear, and the temperature may be folded into ``attention.fc2`` (T = 1).
:meth:`DyConv2d.deploy_spec` / :meth:`DyConv2d.apply_deploy_spec` record and rebuild that structure.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from odexport.layers import functional as Fdyn
from odexport.layers.functional import Attentions, AttentionTemperature

KEY_LAYOUTS = ("kaijieshi7", "tardelean")

# canonical name -> tardelean name
_TARDELEAN_NAMES = {
    "weight": "kernels_weights",
    "bias": "kernels_bias",
    "attention.fc1.weight": "attention.to_scores.0.weight",
    "attention.fc1.bias": "attention.to_scores.0.bias",
    "attention.fc2.weight": "attention.to_scores.2.weight",
    "attention.fc2.bias": "attention.to_scores.2.bias",
}
_LINEAR_WEIGHTS = ("attention.fc1.weight", "attention.fc2.weight")


class DyAttention(nn.Module):
    """SE-style kernel attention: pool, 1x1 conv, ReLU, 1x1 conv, ``softmax(. / T)`` over K."""

    def __init__(self, in_channels: int, hidden_channels: int, num_kernels: int, fc1_bias: bool, fc2_bias: bool, temperature: float):
        super().__init__()
        self.num_kernels = num_kernels
        self.temperature = Fdyn.positive_temperature(temperature)
        self.fc1 = nn.Conv2d(in_channels, hidden_channels, 1, bias=fc1_bias)
        self.fc2 = nn.Conv2d(hidden_channels, num_kernels, 1, bias=fc2_bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-temperature kernel logits ``(B, K)``."""
        h = torch.relu(self.fc1(Fdyn.global_pool(x)))
        return self.fc2(h).reshape(x.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Fdyn.softmax_attention(self.logits(x), self.temperature)


class DyConv2d(AttentionTemperature, nn.Module):
    """Dynamic convolution with an optional dynamic bias ``(K, O)`` and explicit temperature.

    ``temperature`` defaults to 1, the value a trained network is evaluated at. (kaijieshi7's
    constructor default is 34, the *training start* value; use :meth:`from_kaijieshi7_args` with
    an explicit temperature to reproduce a fresh reference module.)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        num_kernels: int = 4,
        hidden_channels: int | None = None,
        ratio: float = 0.25,
        fc1_bias: bool = False,
        fc2_bias: bool = True,
        temperature: float = 1.0,
        key_layout: str = "kaijieshi7",
    ):
        super().__init__()
        if key_layout not in KEY_LAYOUTS:
            raise ValueError(f"key_layout must be one of {KEY_LAYOUTS}, got {key_layout!r}")
        if hidden_channels is None:
            hidden_channels = Fdyn.kaijieshi7_hidden_channels(in_channels, ratio, num_kernels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.num_kernels = groups, num_kernels
        self.key_layout = key_layout
        self.attention = DyAttention(in_channels, hidden_channels, num_kernels, fc1_bias, fc2_bias, temperature)
        self.weight = nn.Parameter(torch.empty(num_kernels, out_channels, in_channels // groups, *self.kernel_size))
        Fdyn.init_each_kernel(self.weight, nn.init.kaiming_uniform_)
        self.bias = nn.Parameter(torch.zeros(num_kernels, out_channels)) if bias else None
        self.static_bias: nn.Parameter | None = None
        if key_layout != "kaijieshi7":
            self.register_state_dict_post_hook(_save_in_layout)
            self.register_load_state_dict_pre_hook(_load_from_layout)

    @classmethod
    def from_kaijieshi7_args(cls, in_planes, out_planes, kernel_size, ratio=0.25, stride=1, padding=0, dilation=1,
                             groups=1, bias=True, K=4, temperature=34, init_weight=True, fc2_bias=True) -> "DyConv2d":
        """Build from ``Dynamic_conv2d``'s constructor arguments (same defaults, T=34 included)."""
        return cls(in_planes, out_planes, kernel_size, stride, padding, dilation, groups, bias, K,
                   Fdyn.kaijieshi7_hidden_channels(in_planes, ratio, K), ratio, False, fc2_bias, temperature, "kaijieshi7")

    @classmethod
    def from_tardelean_args(cls, nof_kernels, reduce, in_channels, out_channels, kernel_size, stride=1, padding=0,
                            dilation=1, groups=1, bias=True, temperature=1.0) -> "DyConv2d":
        """Build from ``DynamicConvolution``'s constructor arguments (T is a forward argument there)."""
        return cls(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, nof_kernels,
                   Fdyn.tardelean_hidden_channels(in_channels, reduce), 0.25, True, True, temperature, "tardelean")

    def attentions(self, x: torch.Tensor) -> Attentions:
        return Attentions(kernel=self.attention(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Fdyn.dynamic_conv2d(
            x,
            self.weight,
            self.attentions(x),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            dyn_bias=self.bias,
            static_bias=self.static_bias,
        )

    def set_kernels(self, weight: torch.Tensor, dyn_bias: torch.Tensor | None) -> None:
        """Replace the candidate kernels ``(K, O, C/g, kh, kw)`` and the dynamic bias ``(K, O)`` (or none)."""
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if dyn_bias is None else nn.Parameter(dyn_bias.detach().clone())
        self.num_kernels = self.attention.num_kernels = int(weight.shape[0])

    def deploy_spec(self) -> dict:
        """This layer's structure as plain Python types, for a deploy checkpoint's manifest."""
        return {
            "type": "DyConv2d",
            "kernel_num": int(self.weight.shape[0]),
            "bias": self.bias is not None,
            "static_bias": self.static_bias is not None,
            "attention": {
                "hidden": int(self.attention.fc1.out_channels),
                "fc1_bias": self.attention.fc1.bias is not None,
                "fc2_bias": self.attention.fc2.bias is not None,
                "temperature": float(self.temperature),
            },
        }

    def apply_deploy_spec(self, spec: dict) -> None:
        """Rebuild the structure of :meth:`deploy_spec` on a freshly constructed layer (values uninitialised)."""
        if spec.get("type") != "DyConv2d":
            raise ValueError(f"deploy spec of type {spec.get('type')!r} does not describe a DyConv2d")
        att = spec["attention"]
        kernel_num, hidden = int(spec["kernel_num"]), int(att["hidden"])
        if kernel_num != self.num_kernels or hidden != self.attention.fc1.out_channels:
            # a checkpoint with its own K or attention width (the loader conforms to it)
            self.attention = DyAttention(self.in_channels, hidden, kernel_num, bool(att["fc1_bias"]), bool(att["fc2_bias"]), self.temperature)
            self.weight = nn.Parameter(torch.empty(kernel_num, *self.weight.shape[1:]))
            self.num_kernels = kernel_num
        out_channels = self.out_channels
        self.bias = nn.Parameter(torch.empty(kernel_num, out_channels)) if spec["bias"] else None
        self.static_bias = nn.Parameter(torch.empty(out_channels)) if spec["static_bias"] else None
        hidden = self.attention.fc1.out_channels
        self.attention.fc1.bias = nn.Parameter(torch.empty(hidden)) if att["fc1_bias"] else None
        self.attention.fc2.bias = nn.Parameter(torch.empty(kernel_num)) if att["fc2_bias"] else None
        self.temperature = float(att["temperature"])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, K={self.num_kernels}, "
            f"bias={self.bias is not None}, layout={self.key_layout}"
        )


def _save_in_layout(module: DyConv2d, state_dict, prefix: str, local_metadata) -> None:
    for canonical, foreign in _TARDELEAN_NAMES.items():
        key = prefix + canonical
        if key in state_dict:
            value = state_dict.pop(key)
            if canonical in _LINEAR_WEIGHTS:
                value = value.reshape(value.shape[0], value.shape[1])
            state_dict[prefix + foreign] = value


def _load_from_layout(module: DyConv2d, state_dict, prefix: str, *args) -> None:
    for canonical, foreign in _TARDELEAN_NAMES.items():
        key = prefix + foreign
        if key in state_dict:
            value = state_dict.pop(key)
            if canonical in _LINEAR_WEIGHTS and value.dim() == 2:
                value = value.reshape(value.shape[0], value.shape[1], 1, 1)
            state_dict[prefix + canonical] = value
