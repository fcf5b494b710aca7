"""Stand-ins for the public reference layers, written for the tests from their documented behaviour.

They mimic the three public implementations' class names, constructor arguments, parameter
layouts and forward math (the batch folded into a grouped convolution), independently of
``odexport.layers``.  ``test_reference_conversion`` first checks them against the reference data
made with the real public code, so a conversion test that passes against them means something.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair


# --- OSVAI/ODConv ---------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, groups=1, reduction=0.0625, kernel_num=4, min_channel=16):
        super().__init__()
        channels = max(int(in_planes * reduction), min_channel)
        self.kernel_size, self.kernel_num, self.temperature = kernel_size, kernel_num, 1.0
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(in_planes, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.channel_fc = nn.Conv2d(channels, in_planes, 1, bias=True)
        self.has_filter = not (in_planes == groups and in_planes == out_planes)
        if self.has_filter:
            self.filter_fc = nn.Conv2d(channels, out_planes, 1, bias=True)
        if kernel_size != 1:
            self.spatial_fc = nn.Conv2d(channels, kernel_size * kernel_size, 1, bias=True)
        if kernel_num != 1:
            self.kernel_fc = nn.Conv2d(channels, kernel_num, 1, bias=True)

    def forward(self, x):
        h = self.relu(self.bn(self.fc(self.avgpool(x))))
        b, t, k = x.size(0), self.temperature, self.kernel_size
        channel = torch.sigmoid(self.channel_fc(h).view(b, -1, 1, 1) / t)
        filt = torch.sigmoid(self.filter_fc(h).view(b, -1, 1, 1) / t) if self.has_filter else 1.0
        spatial = torch.sigmoid(self.spatial_fc(h).view(b, 1, 1, 1, k, k) / t) if k != 1 else 1.0
        kernel = F.softmax(self.kernel_fc(h).view(b, -1, 1, 1, 1, 1) / t, dim=1) if self.kernel_num != 1 else 1.0
        return channel, filt, spatial, kernel


class ODConv2d(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1, reduction=0.0625, kernel_num=4):
        super().__init__()
        self.in_planes, self.out_planes, self.kernel_size = in_planes, out_planes, kernel_size
        self.stride, self.padding, self.dilation, self.groups, self.kernel_num = stride, padding, dilation, groups, kernel_num
        self.attention = Attention(in_planes, out_planes, kernel_size, groups, reduction, kernel_num)
        self.weight = nn.Parameter(torch.randn(kernel_num, out_planes, in_planes // groups, kernel_size, kernel_size) * 0.2)

    def forward(self, x):
        channel, filt, spatial, kernel = self.attention(x)
        if self.kernel_size == 1 and self.kernel_num == 1:
            y = F.conv2d(x * channel, self.weight.squeeze(0), None, self.stride, self.padding, self.dilation, self.groups)
            return y * filt
        b, c, h, w = x.size()
        x = (x * channel).reshape(1, -1, h, w)
        weight = torch.sum(spatial * kernel * self.weight.unsqueeze(0), dim=1)
        weight = weight.view(-1, self.in_planes // self.groups, self.kernel_size, self.kernel_size)
        y = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups * b)
        return y.view(b, self.out_planes, y.size(-2), y.size(-1)) * filt


# --- kaijieshi7/Dynamic-convolution-Pytorch --------------------------------------------------------
class attention2d(nn.Module):  # noqa: N801 (the reference name)
    def __init__(self, in_planes, ratios, K, temperature, fc2_bias=True, plus_one=True):
        super().__init__()
        hidden = K if in_planes == 3 else int(in_planes * ratios) + (1 if plus_one else 0)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, K, 1, bias=fc2_bias)
        self.temperature = temperature

    def forward(self, x):
        x = F.relu(self.fc1(self.avgpool(x)))
        x = self.fc2(x).view(x.size(0), -1)
        return F.softmax(x / self.temperature, 1)


class Dynamic_conv2d(nn.Module):  # noqa: N801
    def __init__(self, in_planes, out_planes, kernel_size, ratio=0.25, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 K=4, temperature=34, fc2_bias=True, plus_one=True):
        super().__init__()
        self.in_planes, self.out_planes, self.kernel_size = in_planes, out_planes, kernel_size
        self.stride, self.padding, self.dilation, self.groups, self.K = stride, padding, dilation, groups, K
        self.attention = attention2d(in_planes, ratio, K, temperature, fc2_bias, plus_one)
        self.weight = nn.Parameter(torch.randn(K, out_planes, in_planes // groups, kernel_size, kernel_size) * 0.2)
        self.bias = nn.Parameter(torch.randn(K, out_planes) * 0.1) if bias else None

    def forward(self, x):
        att = self.attention(x)
        b, _, h, w = x.size()
        x = x.view(1, -1, h, w)
        weight = torch.mm(att, self.weight.view(self.K, -1)).view(-1, self.in_planes // self.groups, self.kernel_size, self.kernel_size)
        bias = None if self.bias is None else torch.mm(att, self.bias).view(-1)
        y = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups * b)
        return y.view(b, self.out_planes, y.size(-2), y.size(-1))


class Dynamic_convNd(nn.Module):  # noqa: N801
    """kaijieshi7's ``Dynamic_conv1d`` / ``Dynamic_conv3d`` parameter layout (``dims`` 1 or 3):
    ``weight`` (K, O, C, k[, k, k]) and ``attention{1,3}d``'s ``fc1`` / ``fc2`` as Conv1d / Conv3d."""

    def __init__(self, dims, in_planes, out_planes, kernel_size, K=4, ratio=0.25):
        super().__init__()
        conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
        hidden = int(in_planes * ratio) + 1
        self.attention = nn.Module()
        self.attention.fc1 = conv(in_planes, hidden, 1, bias=False)
        self.attention.fc2 = conv(hidden, K, 1, bias=dims == 1)  # attention3d's fc2 has no bias
        self.weight = nn.Parameter(torch.randn(K, out_planes, in_planes, *(kernel_size,) * dims))
        self.dims, self.K = dims, K

    def forward(self, x):
        b, c = x.shape[:2]
        pooled = x.mean(tuple(range(2, x.dim())), keepdim=True)
        att = F.softmax(self.attention.fc2(F.relu(self.attention.fc1(pooled))).view(b, -1), dim=1)
        weight = (att @ self.weight.view(self.K, -1)).view(-1, c, *self.weight.shape[3:])
        conv = F.conv1d if self.dims == 1 else F.conv3d
        y = conv(x.reshape(1, b * c, *x.shape[2:]), weight, None, 1, self.weight.shape[-1] // 2, 1, b)
        return y.view(b, -1, *y.shape[2:])


class Dynamic_conv1d(Dynamic_convNd):  # noqa: N801 (the reference name)
    def __init__(self, in_planes, out_planes, kernel_size, K=4):
        super().__init__(1, in_planes, out_planes, kernel_size, K)


class Dynamic_conv3d(Dynamic_convNd):  # noqa: N801
    def __init__(self, in_planes, out_planes, kernel_size, K=4):
        super().__init__(3, in_planes, out_planes, kernel_size, K)


# --- TArdelean/DynamicConvolution ----------------------------------------------------------------
class AttentionLayer(nn.Module):
    def __init__(self, c_dim, hidden_dim, nof_kernels):
        super().__init__()
        self.global_pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.to_scores = nn.Sequential(nn.Linear(c_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, nof_kernels))

    def forward(self, x, temperature=1):
        return F.softmax(self.to_scores(self.global_pooling(x)) / temperature, dim=-1)


class DynamicConvolution(nn.Module):
    def __init__(self, nof_kernels, reduce, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.conv_args = {"stride": stride, "padding": padding, "dilation": dilation}
        self.nof_kernels = nof_kernels
        self.attention = AttentionLayer(in_channels, max(1, in_channels // reduce), nof_kernels)
        self.kernel_size = _pair(kernel_size)
        self.kernels_weights = nn.Parameter(torch.randn(nof_kernels, out_channels, in_channels // groups, *self.kernel_size) * 0.2)
        if bias:
            bound = 1 / math.sqrt(self.kernels_weights[0, 0].numel())
            self.kernels_bias = nn.Parameter(torch.empty(nof_kernels, out_channels).uniform_(-bound, bound))
        else:
            self.register_parameter("kernels_bias", None)

    def forward(self, x, temperature=1):
        b = x.shape[0]
        alphas = self.attention(x, temperature)
        weight = torch.sum(self.kernels_weights.unsqueeze(0) * alphas.view(b, -1, 1, 1, 1, 1), dim=1)
        weight = weight.view(-1, *weight.shape[-3:])
        bias = None
        if self.kernels_bias is not None:
            bias = torch.sum(self.kernels_bias.unsqueeze(0) * alphas.view(b, -1, 1), dim=1).view(-1)
        y = F.conv2d(x.view(1, -1, *x.shape[-2:]), weight, bias, groups=self.groups * b, **self.conv_args)
        return y.view(b, -1, *y.shape[-2:])


# --- small user architectures built from them ---------------------------------------------------
def _randomise_bn(model: nn.Module) -> None:
    """Fresh BatchNorms are identities; move them so that a loader that drops them fails."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + 0.3 * torch.rand(m.running_var.shape, generator=g))


class MixedNet(nn.Module):
    """A user's network with one layer of each reference implementation (a single-input forward)."""

    def __init__(self, kaijieshi7_temperature=34, num_classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.od = ODConv2d(16, 24, 3, stride=2, padding=1, kernel_num=4)
        self.od_bn = nn.BatchNorm2d(24)
        self.od_dw = ODConv2d(24, 24, 3, padding=1, groups=24, kernel_num=2)
        self.od_pw = ODConv2d(24, 32, 1, kernel_num=1)
        self.dy = Dynamic_conv2d(32, 32, 3, padding=1, bias=True, K=4, temperature=kaijieshi7_temperature)
        self.dy_old = Dynamic_conv2d(32, 16, 1, bias=False, K=3, temperature=kaijieshi7_temperature, fc2_bias=False, plus_one=False)
        self.ta = DynamicConvolution(4, 4, 16, 16, 3, stride=1, padding=2, dilation=2, bias=True)
        self.head = nn.Linear(16, num_classes)
        _randomise_bn(self)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.od_bn(self.od(x)))
        x = torch.relu(self.od_pw(self.od_dw(x)))
        x = torch.relu(self.dy_old(torch.relu(self.dy(x))))
        x = self.ta(x)
        return self.head(x.mean((2, 3)))


class TardeleanStyleNet(nn.Module):
    """TArdelean models take the temperature as a forward argument and pass it to every layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = DynamicConvolution(4, 4, 8, 16, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = DynamicConvolution(3, 8, 16, 16, 1, bias=False)
        self.linear = nn.Linear(16, 7)
        _randomise_bn(self)

    def forward(self, x, temperature):
        x = torch.relu(self.bn1(self.conv1(self.stem(x), temperature)))
        x = self.conv2(x, temperature)
        return F.log_softmax(self.linear(x.mean((2, 3))), dim=1)


class TemperatureScaledLogitsNet(TardeleanStyleNet):
    """Uses the forward's temperature beyond its dynamic layers too (logits / T): no fold reaches it."""

    def forward(self, x, temperature):
        x = torch.relu(self.bn1(self.conv1(self.stem(x), temperature)))
        x = self.conv2(x, temperature)
        return F.log_softmax(self.linear(x.mean((2, 3))) / temperature, dim=1)


class SetsLayerTemperatureNet(nn.Module):
    """Built from odexport's own DyConv2d, whose temperature its forward sets from its argument."""

    def __init__(self):
        super().__init__()
        from odexport.layers import DyConv2d

        self.dy = DyConv2d(3, 8, 3, padding=1, num_kernels=4)
        self.linear = nn.Linear(8, 5)

    def forward(self, x, temperature):
        self.dy.temperature = temperature
        return self.linear(torch.relu(self.dy(x)).mean((2, 3)))


def build_temperature_scaled_logits():
    return TemperatureScaledLogitsNet()


def build_sets_layer_temperature():
    return SetsLayerTemperatureNet()


def build_mixed():
    """A ``--factory`` entry point (no arguments)."""
    return MixedNet()


def build_needing_a_width(*, width):  # a factory that cannot be called as --factory calls it
    return nn.Conv2d(3, width, 3)


def build_tardelean_style():
    return TardeleanStyleNet()


# --- TArdelean's DY-MobileNetV3 (models/mobilenetv3.py), its module tree and forward -------------
class TempModule(nn.Module):
    """Marks the modules ``CustomSequential`` hands the temperature to."""


class CustomSequential(TempModule):
    def __init__(self, *modules):
        super().__init__()
        self.layers = nn.ModuleList(modules)

    def forward(self, x, temperature):
        for layer in self.layers:
            x = layer(x, temperature) if isinstance(layer, (TempModule, DynamicConvolution)) else layer(x)
        return x


class Hswish(nn.Module):
    def forward(self, x):
        return x * F.relu6(x + 3.0) / 6.0


class Hsigmoid(nn.Module):
    def forward(self, x):
        return F.relu6(x + 3.0) / 6.0


class SEModule(nn.Module):
    def __init__(self, channel, reduction=4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=False), nn.ReLU(),
                                nn.Linear(channel // reduction, channel, bias=False), Hsigmoid())

    def forward(self, x):
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)


class MobileBottleneck(TempModule):
    def __init__(self, inp, oup, kernel, stride, exp, se, nl, conv_layer):
        super().__init__()
        act = nn.ReLU if nl == "RE" else Hswish
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = CustomSequential(
            conv_layer(inp, exp, 1, 1, 0, bias=False), nn.BatchNorm2d(exp), act(),
            conv_layer(exp, exp, kernel, stride, (kernel - 1) // 2, groups=exp, bias=False), nn.BatchNorm2d(exp),
            SEModule(exp) if se else nn.Identity(), act(),
            conv_layer(exp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x, temperature):
        y = self.conv(x, temperature)
        return x + y if self.use_res_connect else y


class MobileNetV3(TempModule):
    SMALL = [(3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
             (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
             (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
             (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1)]
    LARGE = [(3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
             (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
             (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
             (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
             (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1)]

    def __init__(self, n_class=200, mode="small", width_mult=1.0, nof_kernels=4, reduce=4):
        super().__init__()

        def conv_layer(*args, **kwargs):
            return DynamicConvolution(nof_kernels, reduce, *args, **kwargs)

        def divisible(x):
            return int(math.ceil(x / 8) * 8)

        last_channel = divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        features = [nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), Hswish())]
        channels = 16
        for k, exp, c, se, nl, s in self.SMALL if mode == "small" else self.LARGE:
            features.append(MobileBottleneck(channels, divisible(c * width_mult), k, s, divisible(exp * width_mult), se, nl, conv_layer))
            channels = divisible(c * width_mult)
        last_conv = divisible((576 if mode == "small" else 960) * width_mult)
        # a plain nn.Sequential: CustomSequential does not hand the temperature to the conv inside
        features += [nn.Sequential(conv_layer(channels, last_conv, 1, 1, 0, bias=False), nn.BatchNorm2d(last_conv), Hswish()),
                     nn.AdaptiveAvgPool2d(1), conv_layer(last_conv, last_channel, 1, 1, 0), Hswish()]
        self.features = CustomSequential(*features)
        self.classifier = CustomSequential(nn.Dropout(p=0.8), nn.Linear(last_channel, n_class), nn.LogSoftmax(dim=-1))
        _randomise_bn(self)

    def forward(self, x, temperature):
        x = self.features(x, temperature).mean(3).mean(2)
        return self.classifier(x, temperature)
