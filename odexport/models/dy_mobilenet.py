"""The DY-Conv paper's DY-MobileNetV2 and DY-MobileNetV3-Small in odexport's own layout.

Chen et al., "Dynamic Convolution: Attention over Convolution Kernels" (CVPR 2020) replace every
convolution but the first by a dynamic one with K=4 kernels and an SE-style kernel attention
(global average pool, FC with reduction ratio 4, ReLU, FC to K, ``softmax(. / T)``; T=30 at the
start of training, T=1 at inference).  Microsoft released no code, so these follow the paper on
the torchvision MobileNetV2/V3 structure; ``docs/architectures.md`` compares parameter counts with
the paper's table.

Dynamic layer (:func:`paper_dyconv`): :class:`~odexport.layers.DyConv2d` with canonical keys
``weight (K,O,C/g,k,k)``, ``attention.fc1.weight|bias``, ``attention.fc2.weight|bias`` and
attention width ``max(C // reduction, 4)``.  Both FCs have a bias (the paper's FC layers); a conv
followed by BatchNorm gets no dynamic bias by default (BN's shift makes it redundant); pass
``dynamic_bias=True`` to add one.

What is dynamic:

* DY-MobileNetV2: the 1x1 expand, the depthwise 3x3 and the 1x1 projection of every inverted
  residual, and the final 1x1 conv to 1280; the stem and the classifier ``Linear`` are static.
  ``dynamic_last_conv=False`` keeps the final 1x1 conv static: the paper's parameter counts
  (11.1 / 7.0 / 4.0 M) are matched within 0.05 M that way, which suggests the paper did so.
* DY-MobileNetV3-Small: the same inside each block and the final 1x1 conv to 576; the SE modules
  (which are attentions themselves), the stem and the two classifier ``Linear`` layers stay static.
  ``last_channel`` is the classifier's hidden width.  It defaults to 1280: with it the count is the
  paper's 4.8 M and the static twin its 2.9 M MobileNetV3-Small baseline; the MobileNetV3 paper and
  torchvision use 1024 for Small (4.38 M dynamic, 2.54 M static).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from odexport.layers import DyConv2d
from odexport.layers.functional import init_each_kernel
from odexport.models._common import make_divisible
from odexport.models._registry import register_model
from odexport.models.od_mobilenetv2 import MOBILENETV2_SETTING


def paper_dyconv(in_channels, out_channels, kernel_size, stride=1, groups=1, *, kernel_num=4, reduction=4,
                 dynamic_bias=False):
    """The DY-Conv paper's dynamic conv ('same' padding): K kernels, attention width
    ``max(in // reduction, 4)`` with biased FCs, optional dynamic bias."""
    hidden = max(in_channels // reduction, 4)
    return DyConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                    groups=groups, bias=dynamic_bias, num_kernels=kernel_num, hidden_channels=hidden,
                    fc1_bias=True, fc2_bias=True, key_layout="kaijieshi7")


def _conv_bn_act(conv: nn.Module, out_channels: int, activation: type[nn.Module] | None) -> nn.Sequential:
    layers = [conv, nn.BatchNorm2d(out_channels)]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, DyConv2d):
            init_each_kernel(m.weight, nn.init.kaiming_normal_, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# --- DY-MobileNetV2 --------------------------------------------------------------------------------


class DyInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, dyconv):
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_act(dyconv(inp, hidden_dim, 1), hidden_dim, nn.ReLU6))
        layers += [
            _conv_bn_act(dyconv(hidden_dim, hidden_dim, 3, stride, groups=hidden_dim), hidden_dim, nn.ReLU6),
            dyconv(hidden_dim, oup, 1),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class DyMobileNetV2(nn.Module):
    """MobileNetV2 (torchvision key names) with every conv but the stem dynamic.

    ``setting`` and ``last_channel`` exist for the tiny test variant.
    """

    def __init__(self, num_classes=1000, width_mult=1.0, kernel_num=4, reduction=4, dynamic_bias=False, dropout=0.2,
                 dynamic_last_conv=True, setting=None, last_channel=None):
        super().__init__()
        dyconv = partial(paper_dyconv, kernel_num=kernel_num, reduction=reduction, dynamic_bias=dynamic_bias)
        input_channel = make_divisible(32 * width_mult, 8)
        if last_channel is None:
            last_channel = make_divisible(1280 * max(1.0, width_mult), 8)
        features: list[nn.Module] = [
            _conv_bn_act(nn.Conv2d(3, input_channel, 3, 2, 1, bias=False), input_channel, nn.ReLU6)]
        for t, c, n, s in setting or MOBILENETV2_SETTING:
            output_channel = make_divisible(c * width_mult, 8)
            for i in range(n):
                features.append(DyInvertedResidual(input_channel, output_channel, s if i == 0 else 1, t, dyconv))
                input_channel = output_channel
        last_conv = (dyconv(input_channel, last_channel, 1) if dynamic_last_conv
                     else nn.Conv2d(input_channel, last_channel, 1, bias=False))
        features.append(_conv_bn_act(last_conv, last_channel, nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channel, num_classes))
        _init_weights(self)

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        return self.classifier(x)


_V2 = dict(family="dy_mobilenetv2", layout="odexport", input_shape=(3, 224, 224))


@register_model(**_V2)
def dy_mobilenetv2_100(num_classes: int = 1000, kernel_num: int = 4, reduction: int = 4, dynamic_bias: bool = False,
                       dropout: float = 0.2, dynamic_last_conv: bool = True):
    """DY-MobileNetV2 x1.0 (DY-Conv paper: 11.1 M params)."""
    return DyMobileNetV2(num_classes, 1.0, kernel_num, reduction, dynamic_bias, dropout, dynamic_last_conv)


@register_model(**_V2)
def dy_mobilenetv2_075(num_classes: int = 1000, kernel_num: int = 4, reduction: int = 4, dynamic_bias: bool = False,
                       dropout: float = 0.2, dynamic_last_conv: bool = True):
    """DY-MobileNetV2 x0.75 (DY-Conv paper: 7.0 M params)."""
    return DyMobileNetV2(num_classes, 0.75, kernel_num, reduction, dynamic_bias, dropout, dynamic_last_conv)


@register_model(**_V2)
def dy_mobilenetv2_050(num_classes: int = 1000, kernel_num: int = 4, reduction: int = 4, dynamic_bias: bool = False,
                       dropout: float = 0.2, dynamic_last_conv: bool = True):
    """DY-MobileNetV2 x0.5 (DY-Conv paper: 4.0 M params)."""
    return DyMobileNetV2(num_classes, 0.5, kernel_num, reduction, dynamic_bias, dropout, dynamic_last_conv)


@register_model(**_V2)
def dy_mobilenetv2_035(num_classes: int = 1000, kernel_num: int = 4, reduction: int = 4, dynamic_bias: bool = False,
                       dropout: float = 0.2, dynamic_last_conv: bool = True):
    """DY-MobileNetV2 x0.35 (DY-Conv paper: 2.8 M params)."""
    return DyMobileNetV2(num_classes, 0.35, kernel_num, reduction, dynamic_bias, dropout, dynamic_last_conv)


@register_model(family="dy_mobilenetv2", layout="odexport", input_shape=(3, 32, 32), tiny=True)
def dy_mobilenetv2_tiny(num_classes: int = 10, kernel_num: int = 4, reduction: int = 4, dynamic_bias: bool = True,
                        dropout: float = 0.2, dynamic_last_conv: bool = True):
    """Tiny DY-MobileNetV2 for tests: depthwise, strided, residual blocks, dynamic bias on."""
    setting = ((1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 2))
    return DyMobileNetV2(num_classes, 1.0, kernel_num, reduction, dynamic_bias, dropout, dynamic_last_conv, setting,
                         last_channel=128)


# --- DY-MobileNetV3-Small ---------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
    """torchvision's MobileNetV3 SE block (``fc1``, ReLU, ``fc2``, hard-sigmoid); static."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(scale)


class DyMBv3Block(nn.Module):
    def __init__(self, inp, kernel, expanded, out, use_se, activation, stride, dyconv):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expanded != inp:
            layers.append(_conv_bn_act(dyconv(inp, expanded, 1), expanded, activation))
        layers.append(_conv_bn_act(dyconv(expanded, expanded, kernel, stride, groups=expanded), expanded, activation))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8)))
        layers.append(_conv_bn_act(dyconv(expanded, out, 1), out, None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_res_connect else out


# in, kernel, expanded, out, SE, activation, stride (torchvision's mobilenet_v3_small)
MOBILENETV3_SMALL_SETTING = (
    (16, 3, 16, 16, True, nn.ReLU, 2),
    (16, 3, 72, 24, False, nn.ReLU, 2),
    (24, 3, 88, 24, False, nn.ReLU, 1),
    (24, 5, 96, 40, True, nn.Hardswish, 2),
    (40, 5, 240, 40, True, nn.Hardswish, 1),
    (40, 5, 240, 40, True, nn.Hardswish, 1),
    (40, 5, 120, 48, True, nn.Hardswish, 1),
    (48, 5, 144, 48, True, nn.Hardswish, 1),
    (48, 5, 288, 96, True, nn.Hardswish, 2),
    (96, 5, 576, 96, True, nn.Hardswish, 1),
    (96, 5, 576, 96, True, nn.Hardswish, 1),
)


class DyMobileNetV3(nn.Module):
    """MobileNetV3 (torchvision key names) with every conv but the stem and the SE modules dynamic."""

    def __init__(self, setting, last_channel, num_classes=1000, kernel_num=4, reduction=4, dynamic_bias=False,
                 dropout=0.2):
        super().__init__()
        dyconv = partial(paper_dyconv, kernel_num=kernel_num, reduction=reduction, dynamic_bias=dynamic_bias)
        first = setting[0][0]
        layers: list[nn.Module] = [_conv_bn_act(nn.Conv2d(3, first, 3, 2, 1, bias=False), first, nn.Hardswish)]
        layers += [DyMBv3Block(*row, dyconv=dyconv) for row in setting]
        last_in = setting[-1][3]
        last_conv = 6 * last_in
        layers.append(_conv_bn_act(dyconv(last_in, last_conv, 1), last_conv, nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        _init_weights(self)

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


@register_model(family="dy_mobilenetv3", layout="odexport", input_shape=(3, 224, 224))
def dy_mobilenetv3_small(num_classes: int = 1000, kernel_num: int = 4, reduction: int = 4, dynamic_bias: bool = False,
                         dropout: float = 0.2, last_channel: int = 1280):
    """DY-MobileNetV3-Small (DY-Conv paper: 4.8 M params; classifier hidden width 1280 as the paper's count implies)."""
    return DyMobileNetV3(MOBILENETV3_SMALL_SETTING, last_channel, num_classes, kernel_num, reduction, dynamic_bias, dropout)
