"""ODConv (Li et al., ICLR 2022) with the official OSVAI/ODConv parameter layout.

State-dict keys of a layer at prefix ``P`` equal the official ones::

    P.weight                         (K, O, C/g, k, k)
    P.attention.fc.weight            (A, C, 1, 1)         no bias (a bias appears once BN is folded)
    P.attention.bn.*                 (A,)                 absent once folded
    P.attention.channel_fc.*         (C, A, 1, 1), (C,)   always present
    P.attention.filter_fc.*          (O, A, 1, 1), (O,)   absent for depthwise (C == groups == O)
    P.attention.spatial_fc.*         (k*k, A, 1, 1)       absent for k == 1
    P.attention.kernel_fc.*          (K, A, 1, 1)         absent for K == 1

Deploy state (written by :mod:`odexport.reparam`, never by the official code): ``attention.fc``
may carry a bias (the attention BatchNorm folded in, ``attention.bn`` is then ``None``); the head
convs may be fused into one ``attention.heads`` 1x1 conv whose output is split by
``attention.head_sizes``; a head may be removed when its constant value was folded into the
kernels; ``static_bias`` (O,) may appear (a following BatchNorm folded in).  :meth:`ODConv2d.deploy_spec`
describes that structure in plain Python types and :meth:`ODConv2d.apply_deploy_spec` rebuilds it
on a fresh layer so a deploy state dict loads with ``strict=True``.

The attention is ``h = ReLU(BN(fc(avgpool(x))))`` then ``sigmoid(head(h) / T)`` for the channel,
filter and spatial heads and ``softmax(kernel_fc(h) / T)`` over K; one temperature ``T`` for all
heads.  See :mod:`odexport.layers.functional` for how the attentions enter the convolution.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from odexport.layers import functional as Fdyn
from odexport.layers.functional import Attentions, AttentionTemperature

HEAD_NAMES = ("channel", "filter", "spatial", "kernel")


class ODConvAttention(nn.Module):
    """ODConv's four-head attention; returns flat :class:`Attentions` (``None`` for skipped heads)."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int,
        groups: int = 1,
        reduction: float = 0.0625,
        kernel_num: int = 4,
        min_channel: int = 16,
        attention_channels: int | None = None,
        temperature: float = 1.0,
    ):
        super().__init__()
        hidden = attention_channels or Fdyn.odconv_hidden_channels(in_planes, reduction, min_channel)
        self.in_planes, self.out_planes = in_planes, out_planes
        self.kernel_size, self.kernel_num = kernel_size, kernel_num
        self.attention_channels = hidden
        self.temperature = Fdyn.positive_temperature(temperature)
        self.fc = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.channel_fc = nn.Conv2d(hidden, in_planes, 1, bias=True)
        depthwise = in_planes == groups and in_planes == out_planes
        self.filter_fc = None if depthwise else nn.Conv2d(hidden, out_planes, 1, bias=True)
        self.spatial_fc = None if kernel_size == 1 else nn.Conv2d(hidden, kernel_size * kernel_size, 1, bias=True)
        self.kernel_fc = None if kernel_num == 1 else nn.Conv2d(hidden, kernel_num, 1, bias=True)
        # Deploy state: the present head convs fused into one 1x1 conv, split in this order/size.
        self.heads: nn.Conv2d | None = None
        self.head_sizes: tuple[tuple[str, int], ...] = ()
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def head(self, name: str) -> nn.Conv2d | None:
        """The separate 1x1 conv of head ``name`` (one of :data:`HEAD_NAMES`).

        ``None`` if the head is skipped, removed, or part of the fused :attr:`heads` conv.
        """
        return getattr(self, f"{name}_fc")

    def head_size(self, name: str) -> int:
        """Output width of head ``name``: C, O, k*k or K."""
        return {"channel": self.in_planes, "filter": self.out_planes, "spatial": self.kernel_size**2, "kernel": self.kernel_num}[name]

    def present_heads(self) -> list[str]:
        """Names of the heads this attention computes (separate or fused), in :data:`HEAD_NAMES` order."""
        fused = {name for name, _ in self.head_sizes} if self.heads is not None else set()
        return [name for name in HEAD_NAMES if name in fused or self.head(name) is not None]

    @property
    def is_fused(self) -> bool:
        return self.heads is not None

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``ReLU(BN(fc(avgpool(x))))``, shape ``(B, A, 1, 1)``."""
        h = self.fc(Fdyn.global_pool(x))
        if self.bn is not None:
            h = self.bn(h)
        return self.relu(h)

    def head_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Pre-temperature logits per head, flat ``(B, N)``; ``None`` for skipped heads."""
        if self.heads is None and all(self.head(name) is None for name in HEAD_NAMES):
            return dict.fromkeys(HEAD_NAMES)  # every head folded away: nothing to compute
        h = self.hidden(x)
        batch = h.shape[0]
        fused: dict[str, torch.Tensor] = {}
        if self.heads is not None:
            # One matmul for every fused head, then a split along the channel axis.
            parts = torch.split(self.heads(h).reshape(batch, -1), [size for _, size in self.head_sizes], dim=1)
            fused = {name: part for (name, _), part in zip(self.head_sizes, parts)}
        logits: dict[str, torch.Tensor | None] = {}
        for name in HEAD_NAMES:
            conv = self.head(name)
            logits[name] = fused.get(name) if conv is None else conv(h).reshape(batch, -1)
        return logits

    def forward(self, x: torch.Tensor) -> Attentions:
        logits = self.head_logits(x)
        t = self.temperature
        act = {name: (None if v is None else Fdyn.sigmoid_attention(v, t)) for name, v in logits.items() if name != "kernel"}
        kernel = None if logits["kernel"] is None else Fdyn.softmax_attention(logits["kernel"], t)
        return Attentions(act["channel"], act["filter"], act["spatial"], kernel)

    def deploy_spec(self) -> dict:
        """The attention's structure as plain Python types (see :meth:`apply_deploy_spec`)."""
        return {
            "hidden": int(self.fc.out_channels),
            "fc_bias": self.fc.bias is not None,
            "bn": self.bn is not None,
            "heads": [name for name in HEAD_NAMES if self.head(name) is not None],
            "fused": [[name, int(size)] for name, size in self.head_sizes] if self.heads is not None else None,
            "temperature": float(self.temperature),
        }

    def apply_deploy_spec(self, spec: dict) -> None:
        """Give this attention the structure ``spec`` describes; new tensors are uninitialised.

        Used to rebuild a deploy model before ``load_state_dict(strict=True)`` fills the values.
        """
        hidden = int(spec["hidden"])
        if hidden != self.fc.out_channels:  # a checkpoint with its own width (the loader conforms to it)
            self.attention_channels = hidden
            self.fc = nn.Conv2d(self.in_planes, hidden, 1, bias=False)
            self.bn = nn.BatchNorm2d(hidden)
        self.fc.bias = nn.Parameter(torch.empty(hidden)) if spec["fc_bias"] else None
        if not spec["bn"]:
            self.bn = None
        elif self.bn is None:
            self.bn = nn.BatchNorm2d(hidden)
        for name in HEAD_NAMES:
            conv = self.head(name)
            if name not in spec["heads"]:
                setattr(self, f"{name}_fc", None)
            elif conv is None or conv.in_channels != hidden or conv.out_channels != self.head_size(name):
                setattr(self, f"{name}_fc", nn.Conv2d(hidden, self.head_size(name), 1, bias=True))
        if spec["fused"]:
            sizes = tuple((str(name), int(size)) for name, size in spec["fused"])
            self.heads = nn.Conv2d(hidden, sum(size for _, size in sizes), 1, bias=True)
            self.head_sizes = sizes
        else:
            self.heads, self.head_sizes = None, ()
        self.temperature = float(spec["temperature"])


class ODConv2d(AttentionTemperature, nn.Module):
    """Omni-dimensional dynamic convolution; constructor and keys of the official ``ODConv2d``.

    ``temperature`` is explicit (official default 1.0, the only right value for a trained network
    unless the user trained otherwise).  ``static_bias`` is not part of the official layer: it appears when
    a following BatchNorm is folded in (added after the filter attention).
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        reduction: float = 0.0625,
        kernel_num: int = 4,
        min_channel: int = 16,
        attention_channels: int | None = None,
        temperature: float = 1.0,
    ):
        super().__init__()
        k = _pair(kernel_size)
        if k[0] != k[1]:
            raise ValueError(f"ODConv2d needs a square kernel, got {kernel_size}")
        self.in_planes, self.out_planes = in_planes, out_planes
        self.kernel_size = k[0]
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.kernel_num = groups, kernel_num
        self.attention = ODConvAttention(
            in_planes, out_planes, self.kernel_size, groups, reduction, kernel_num, min_channel, attention_channels, temperature
        )
        self.weight = nn.Parameter(torch.randn(kernel_num, out_planes, in_planes // groups, *k))
        Fdyn.init_each_kernel(self.weight, nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu")
        self.static_bias: nn.Parameter | None = None

    def attentions(self, x: torch.Tensor) -> Attentions:
        return self.attention(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Fdyn.dynamic_conv2d(
            x,
            self.weight,
            self.attentions(x),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            static_bias=self.static_bias,
        )

    def set_kernels(self, weight: torch.Tensor) -> None:
        """Replace the candidate kernels ``(K, O, C/g, k, k)``; K may change (a folded kernel head)."""
        self.weight = nn.Parameter(weight.detach().clone())
        self.kernel_num = self.attention.kernel_num = int(weight.shape[0])

    def deploy_spec(self) -> dict:
        """This layer's structure as plain Python types, for a deploy checkpoint's manifest.

        Records everything a state dict does not: which heads exist, whether they are fused, the
        attention BN, the static bias, the number of kernels and the temperature (not a tensor).
        """
        return {
            "type": "ODConv2d",
            "kernel_num": int(self.weight.shape[0]),
            "static_bias": self.static_bias is not None,
            "attention": self.attention.deploy_spec(),
        }

    def apply_deploy_spec(self, spec: dict) -> None:
        """Rebuild the structure of :meth:`deploy_spec` on a freshly constructed layer."""
        if spec.get("type") != "ODConv2d":
            raise ValueError(f"deploy spec of type {spec.get('type')!r} does not describe an ODConv2d")
        kernel_num = int(spec["kernel_num"])
        self.set_kernels(torch.empty(kernel_num, *self.weight.shape[1:]))
        self.static_bias = nn.Parameter(torch.empty(self.out_planes)) if spec["static_bias"] else None
        self.attention.apply_deploy_spec(spec["attention"])

    def extra_repr(self) -> str:
        return (
            f"{self.in_planes}, {self.out_planes}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, kernel_num={self.kernel_num}"
        )
