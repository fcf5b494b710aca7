"""DY-MobileNetV2 in the layout of TArdelean/DynamicConvolution (``models/mobilenetv2.py``).

After d-li14/mobilenetv2.pytorch, trained on Tiny-ImageNet (64x64, 200 classes):

* ``features`` (a ``CustomSequential``: keys ``features.layers.N``): ``layers.0`` is the static
  stem ``conv_3x3_bn`` (``nn.Conv2d`` 3x3/2, BN, ReLU6; keys ``features.layers.0.layers.{0,1}``),
  then inverted residuals whose ``conv`` is a ``CustomSequential`` of dynamic pw (if t != 1),
  dynamic depthwise 3x3 and dynamic pw-linear convs, each followed by BN (and ReLU6 except the
  last): ``features.layers.1.conv.layers.0.kernels_weights (4, 16, 1, 3, 3)`` at width 0.5;
* ``conv``: dynamic 1x1 to 1280 (wider only for a width multiplier above 1), BN, ReLU6
  (``conv.layers.0.kernels_weights``);
* adaptive average pool and ``classifier``, a plain ``Linear`` (no dropout); raw logits.

Channels use ``_make_divisible(c * w, 8)`` (divisor 4 when w == 0.1) and hidden widths
``round(inp * t)``.  Every dynamic conv: ``DyConv2d(key_layout="tardelean")``, bias-free, K=4,
hidden ``max(1, in // 4)``.  The reference's default width multiplier is 0.35 (its README's
trained model); the temperature is held by each layer (default 1, see :mod:`.ta_resnet`).
"""

from __future__ import annotations

from torch import nn

from odexport.models._common import LayersSequential, make_divisible
from odexport.models._registry import register_model
from odexport.models.ta_resnet import tardelean_dyconv

# t (expansion), c (output channels), n (repeats), s (first stride)
TA_MOBILENETV2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class TAInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, *, kernel_num=4, reduce=4):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        dy = dict(kernel_num=kernel_num, reduce=reduce)
        hidden_dim = round(inp * expand_ratio)
        self.identity = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [tardelean_dyconv(inp, hidden_dim, 1, 1, 0, **dy), nn.BatchNorm2d(hidden_dim), nn.ReLU6(inplace=True)]
        layers += [
            tardelean_dyconv(hidden_dim, hidden_dim, 3, stride, 1, groups=hidden_dim, **dy),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU6(inplace=True),
            tardelean_dyconv(hidden_dim, oup, 1, 1, 0, **dy),
            nn.BatchNorm2d(oup),
        ]
        self.conv = LayersSequential(*layers)

    def forward(self, x):
        if self.identity:
            return x + self.conv(x)
        return self.conv(x)


class TAMobileNetV2(nn.Module):
    def __init__(self, num_classes=200, width_multiplier=0.35, kernel_num=4, reduce=4, setting=None, last_channel=None):
        super().__init__()
        divisor = 4 if width_multiplier == 0.1 else 8
        dy = dict(kernel_num=kernel_num, reduce=reduce)
        input_channel = make_divisible(32 * width_multiplier, divisor)
        blocks: list[nn.Module] = [LayersSequential(
            nn.Conv2d(3, input_channel, 3, 2, 1, bias=False), nn.BatchNorm2d(input_channel), nn.ReLU6(inplace=True))]
        for t, c, n, s in setting or TA_MOBILENETV2_SETTING:
            output_channel = make_divisible(c * width_multiplier, divisor)
            for i in range(n):
                blocks.append(TAInvertedResidual(input_channel, output_channel, s if i == 0 else 1, t, **dy))
                input_channel = output_channel
        self.features = LayersSequential(*blocks)
        if last_channel is None:
            last_channel = make_divisible(1280 * width_multiplier, divisor) if width_multiplier > 1.0 else 1280
        self.conv = LayersSequential(
            tardelean_dyconv(input_channel, last_channel, 1, 1, 0, **dy), nn.BatchNorm2d(last_channel), nn.ReLU6(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(last_channel, num_classes)

    def forward(self, x):
        x = self.conv(self.features(x))
        x = self.avgpool(x).reshape(x.shape[0], -1)
        return self.classifier(x)


@register_model(family="ta_mobilenetv2", layout="tardelean", input_shape=(3, 64, 64))
def ta_mobilenetv2(num_classes: int = 200, width_multiplier: float = 0.35, kernel_num: int = 4, reduce: int = 4):
    """TArdelean DY-MobileNetV2 (Tiny-ImageNet 64x64; dynamic everywhere but the stem; raw logits)."""
    return TAMobileNetV2(num_classes, width_multiplier, kernel_num, reduce)
