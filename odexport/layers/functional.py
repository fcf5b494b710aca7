"""The math of dynamic convolutions, in one place.

Notation (shared by every module, reparameterisation pass and export form):

* ``x``: input ``(B, C, H, W)``; ``W``: candidate kernels ``(K, O, C/g, kh, kw)``.
* Attentions, each ``None`` when the layer does not have that head:

  - ``channel`` ``ca`` ``(B, C)``: multiplies the *input features* (ODConv);
  - ``filter`` ``fa`` ``(B, O)``: multiplies the *output* (ODConv);
  - ``spatial`` ``sa`` ``(B, kh*kw)``: multiplies every kernel position (ODConv);
  - ``kernel`` ``ka`` ``(B, K)``: mixes the K candidate kernels (ODConv and DY-Conv).

* ``dyn_bias`` ``(K, O)``: a bias mixed by ``ka`` like the kernels (DY-Conv);
  ``static_bias`` ``(O,)``: added after the filter attention (what a folded BatchNorm leaves).

The layer computes, per sample b::

    W_b = sum_k ka[b,k] * sa[b] * W_k                     (per-sample kernel)
    y_b = (conv(x_b * ca[b], W_b) + sum_k ka[b,k] * dyn_bias_k) * fa[b] + static_bias

which is the reference code of OSVAI/ODConv (``(sa*ka)*W`` summed over K) and of both DY-Conv
implementations (``ka @ W.view(K, -1)``).  The eager reference form runs all samples as one
grouped convolution with the batch folded into the groups (``groups = g*B``), exactly like the
reference code; export forms that keep the batch dynamic live in :mod:`odexport.export`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Attentions(NamedTuple):
    """The four attentions of a dynamic conv, flat 2-D, ``None`` where a head is absent."""

    channel: torch.Tensor | None = None
    filter: torch.Tensor | None = None
    spatial: torch.Tensor | None = None
    kernel: torch.Tensor | None = None


class AttentionTemperature:
    """The one temperature of a dynamic conv, held by its attention (``layer.attention.temperature``).

    Mixed into every dynamic conv module so ``layer.temperature`` reads and sets it;
    ``update_temperature`` is the reference implementations' name, kept so user training code that
    calls it keeps working.
    """

    @property
    def temperature(self) -> float:
        return self.attention.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.attention.temperature = positive_temperature(value)

    def update_temperature(self, temperature: float) -> None:
        self.temperature = temperature


def positive_temperature(value) -> float:
    """``value`` as a float, refused unless finite and > 0: the attention divides its logits by it
    (T = 0 makes every output NaN, a negative T inverts the softmax)."""
    import math

    from odexport.errors import InputError

    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise InputError(f"temperature {value} must be a positive finite number",
                         "use 1 for a trained network (the reference codes' test-time value)")
    return number


def odconv_hidden_channels(in_planes: int, reduction: float, min_channel: int = 16) -> int:
    """ODConv's attention width ``max(int(in*reduction), min_channel)`` (``int`` truncates)."""
    return max(int(in_planes * reduction), min_channel)


def kaijieshi7_hidden_channels(in_planes: int, ratio: float, num_kernels: int) -> int:
    """kaijieshi7 ``attention2d`` width: ``K`` for 3-channel input, else ``int(in*ratio) + 1``."""
    return num_kernels if in_planes == 3 else int(in_planes * ratio) + 1


def tardelean_hidden_channels(in_channels: int, reduce: int) -> int:
    """TArdelean ``AttentionLayer`` width: ``max(1, in // reduce)``."""
    return max(1, in_channels // reduce)


def init_each_kernel(weight: torch.Tensor, initialiser, **kwargs) -> None:
    """Initialise each of the K candidate kernels ``weight[k]`` as a conv weight of its own.

    The reference code does this so that each kernel's fan is ``O*kh*kw`` (or ``C/g*kh*kw``), not
    ``K``-fold.  On the meta device nothing is drawn, and the K calls are skipped: a shapes-only
    build (``inspect``) of a large ``--kernel-num`` would otherwise loop for hours.
    """
    if weight.is_meta:
        return
    for k in range(weight.shape[0]):
        initialiser(weight[k], **kwargs)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pool to ``(B, C, 1, 1)``: the input of every attention branch."""
    return x.mean(dim=(2, 3), keepdim=True)


def sigmoid_attention(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``sigmoid(logits / T)``; ``logits`` ``(B, N)``."""
    return torch.sigmoid(logits / temperature)


def softmax_attention(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / T)`` over the K kernels; ``logits`` ``(B, K)``."""
    return torch.softmax(logits / temperature, dim=1)


def aggregate_kernels(weight: torch.Tensor, kernel: torch.Tensor | None, spatial: torch.Tensor | None) -> torch.Tensor:
    """Per-sample kernels ``W_b = sum_k ka[b,k] * sa[b] * W_k``, shape ``(B, O, C/g, kh, kw)``.

    DY-Conv (no spatial attention) uses a matmul ``ka @ W.view(K, -1)`` as kaijieshi7 does; with
    spatial attention the product is ``(sa * ka) * W`` summed over K, in ODConv's order.  A layer
    with neither (K=1, 1x1 ODConv) needs no per-sample kernel: callers use the static conv.
    """
    num_kernels, out_ch, in_per_group, kh, kw = weight.shape
    if spatial is None:
        if kernel is None:
            raise ValueError("aggregate_kernels needs a kernel or a spatial attention")
        batch = kernel.shape[0]
        return (kernel @ weight.reshape(num_kernels, -1)).reshape(batch, out_ch, in_per_group, kh, kw)
    batch = spatial.shape[0]
    sa = spatial.reshape(batch, 1, 1, 1, kh, kw)
    if kernel is None:
        return (sa * weight.unsqueeze(0)).sum(dim=1)
    ka = kernel.reshape(batch, num_kernels, 1, 1, 1, 1)
    return torch.sum((sa * ka) * weight.unsqueeze(0), dim=1)


def aggregate_bias(dyn_bias: torch.Tensor | None, kernel: torch.Tensor | None) -> torch.Tensor | None:
    """Per-sample bias ``sum_k ka[b,k] * b_k`` ``(B, O)``; ``None`` without a dynamic bias."""
    if dyn_bias is None:
        return None
    if kernel is None:
        return dyn_bias.sum(dim=0, keepdim=True)
    return kernel @ dyn_bias


def folded_grouped_conv2d(
    x: torch.Tensor,
    kernels: torch.Tensor,
    bias: torch.Tensor | None,
    stride,
    padding,
    dilation,
    groups: int,
) -> torch.Tensor:
    """Run per-sample kernels ``(B, O, C/g, kh, kw)`` as one conv with ``groups = g*B``.

    This is the reference implementations' form: exact, but the batch is baked into the conv's
    group count, which is why it cannot be exported with a dynamic batch.
    """
    batch, out_ch = kernels.shape[:2]
    height, width = x.shape[-2:]
    folded = x.reshape(1, -1, height, width)
    flat_kernels = kernels.reshape(batch * out_ch, *kernels.shape[2:])
    flat_bias = None if bias is None else bias.reshape(-1)
    y = F.conv2d(folded, flat_kernels, flat_bias, stride, padding, dilation, groups * batch)
    return y.reshape(batch, out_ch, y.shape[-2], y.shape[-1])


def dynamic_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    attentions: Attentions,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    dyn_bias: torch.Tensor | None = None,
    static_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference forward of one dynamic conv (see the module docstring for the math)."""
    ca, fa, sa, ka = attentions
    batch = x.shape[0]
    if ca is not None:
        x = x * ca.reshape(batch, -1, 1, 1)
    if sa is None and (ka is None or weight.shape[0] == 1):
        # ODConv's pw1x path: one kernel and no spatial attention leave a static conv.
        static_weight = weight[0]
        bias = None if dyn_bias is None else dyn_bias[0]
        y = F.conv2d(x, static_weight, bias, stride, padding, dilation, groups)
    else:
        kernels = aggregate_kernels(weight, ka, sa)
        y = folded_grouped_conv2d(x, kernels, aggregate_bias(dyn_bias, ka), stride, padding, dilation, groups)
    if fa is not None:
        y = y * fa.reshape(batch, -1, 1, 1)
    if static_bias is not None:
        y = y + static_bias.reshape(1, -1, 1, 1)
    return y
