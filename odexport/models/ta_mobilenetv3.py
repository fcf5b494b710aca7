"""DY-MobileNetV3 in the layout of TArdelean/DynamicConvolution (``models/mobilenetv3.py``).

After kuan-wang/pytorch-mobilenet-v3, trained on Tiny-ImageNet (64x64, 200 classes) or Imagenette:

* ``features`` (a ``CustomSequential``: keys ``features.layers.N``):

  * ``layers.0``: the static stem, a plain ``nn.Sequential`` (keys ``features.layers.0.{0,1}``):
    ``nn.Conv2d`` 3x3/2 to **16 channels at every width**, BN, h-swish;
  * the bottlenecks: ``conv`` is a ``CustomSequential`` of dynamic pw 1x1, BN, act, dynamic
    depthwise k x k (k = 3 or 5), BN, squeeze-excitation or identity (``conv.layers.5``), act,
    dynamic pw-linear 1x1, BN -- every one present, also where the expansion equals the input
    width; a residual where the stride is 1 and the widths match;
  * a ``conv_1x1_bn`` (``nn.Sequential``: keys ``features.layers.N.{0,1}``): dynamic 1x1 to
    ``576 w`` (small) or ``960 w`` (large), BN, h-swish;
  * adaptive average pool, a dynamic 1x1 to 1280 **with a dynamic bias** (the constructor's
    default, the only TArdelean conv that keeps it), h-swish;

* ``classifier`` (a ``CustomSequential``): dropout, ``Linear`` (``classifier.layers.1``), and the
  model **returns ``log_softmax``**.

The default input follows the class count: 64x64 for Tiny-ImageNet's 200 classes (and any other
count), 224x224 for Imagenette's 10, the two datasets of the reference's configs.

Widths: ``ceil(c * w / 8) * 8`` for the block widths, 1280 for the last unless w > 1.  The
squeeze-excitation is static: ``avg_pool``, ``fc`` = Linear(c, c // 4, no bias), ReLU,
Linear(c // 4, c, no bias), h-sigmoid.  Every dynamic conv: ``DyConv2d(key_layout="tardelean")``,
K=4, hidden ``max(1, in // 4)``.

Temperature: the reference passes it through ``CustomSequential``s only, so the dynamic conv
inside the plain ``nn.Sequential`` ``conv_1x1_bn`` always runs at its default of 1.  Here that
layer has ``pinned_temperature = 1``: a ``--temperature`` (a mid-training checkpoint under the
30 -> 1 schedule) reaches every other dynamic conv, as in the reference.  Test time uses T = 1
everywhere, where this makes no difference.
"""

from __future__ import annotations

import math

from torch import nn

from odexport.layers import DyConv2d
from odexport.models._common import LayersSequential
from odexport.models._registry import register_model
from odexport.models.ta_resnet import tardelean_dyconv

# k, expansion, out, squeeze-excitation, activation ("RE": ReLU, "HS": h-swish), stride
TA_MOBILENETV3_SMALL = (
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
)
TA_MOBILENETV3_LARGE = (
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
)
_ACTIVATIONS = {"RE": nn.ReLU, "HS": nn.Hardswish}
# the reference's MobileNetV3 configs: Tiny-ImageNet (200 classes, 64x64) and Imagenette (10 classes,
# 224x224 crops); the class count in a file tells which one trained it
TRAINING_SIZES = {200: ((3, 64, 64), "Tiny-ImageNet"), 10: ((3, 224, 224), "Imagenette")}


def ceil_to_eight(value: float) -> int:
    """The reference's ``make_divisible``: rounds *up* to a multiple of 8 (not TensorFlow's nearest)."""
    return int(math.ceil(value / 8) * 8)


class TASqueezeExcitation(nn.Module):
    """Static SE: x * h-sigmoid(W2 relu(W1 mean(x))), both Linears without bias (keys ``fc.0``, ``fc.2``)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels, bias=False), nn.Hardsigmoid())

    def forward(self, x):
        scale = self.fc(self.avg_pool(x).flatten(1))
        return x * scale[:, :, None, None]


class TAMobileBottleneck(nn.Module):
    def __init__(self, inp, oup, kernel, stride, expanded, use_se, activation, *, kernel_num=4, reduce=4):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        dy = dict(kernel_num=kernel_num, reduce=reduce)
        act = _ACTIVATIONS[activation]
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = LayersSequential(
            tardelean_dyconv(inp, expanded, 1, 1, 0, **dy), nn.BatchNorm2d(expanded), act(inplace=True),
            tardelean_dyconv(expanded, expanded, kernel, stride, (kernel - 1) // 2, groups=expanded, **dy),
            nn.BatchNorm2d(expanded),
            TASqueezeExcitation(expanded) if use_se else nn.Identity(),
            act(inplace=True),
            tardelean_dyconv(expanded, oup, 1, 1, 0, **dy), nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class TAMobileNetV3(nn.Module):
    def __init__(self, setting, last_conv, num_classes=200, width_multiplier=1.0, kernel_num=4, reduce=4, dropout=0.8):
        super().__init__()
        dy = dict(kernel_num=kernel_num, reduce=reduce)
        input_channel = 16
        last_channel = ceil_to_eight(1280 * width_multiplier) if width_multiplier > 1.0 else 1280
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(3, input_channel, 3, 2, 1, bias=False), nn.BatchNorm2d(input_channel), nn.Hardswish(inplace=True))]
        for k, expansion, c, use_se, activation, s in setting:
            output_channel = ceil_to_eight(c * width_multiplier)
            layers.append(TAMobileBottleneck(input_channel, output_channel, k, s, ceil_to_eight(expansion * width_multiplier),
                                             use_se, activation, **dy))
            input_channel = output_channel
        last_conv = ceil_to_eight(last_conv * width_multiplier)
        conv_1x1 = tardelean_dyconv(input_channel, last_conv, 1, 1, 0, **dy)
        conv_1x1.pinned_temperature = 1.0  # inside a plain nn.Sequential in the reference: never given T
        layers += [
            nn.Sequential(conv_1x1, nn.BatchNorm2d(last_conv), nn.Hardswish(inplace=True)),
            nn.AdaptiveAvgPool2d(1),
            DyConv2d.from_tardelean_args(kernel_num, reduce, last_conv, last_channel, 1, bias=True),
            nn.Hardswish(inplace=True),
        ]
        self.features = LayersSequential(*layers)
        self.classifier = LayersSequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes), nn.LogSoftmax(dim=-1))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.mean((2, 3)))


@register_model(family="ta_mobilenetv3", layout="tardelean", input_shape=(3, 64, 64), output="log_softmax",
                training_sizes=TRAINING_SIZES)
def ta_mobilenetv3_small(num_classes: int = 200, width_multiplier: float = 1.0, kernel_num: int = 4, reduce: int = 4):
    """TArdelean DY-MobileNetV3-Small (Tiny-ImageNet 64x64; static stem; returns log_softmax)."""
    return TAMobileNetV3(TA_MOBILENETV3_SMALL, 576, num_classes, width_multiplier, kernel_num, reduce)


@register_model(family="ta_mobilenetv3", layout="tardelean", input_shape=(3, 64, 64), output="log_softmax",
                training_sizes=TRAINING_SIZES)
def ta_mobilenetv3_large(num_classes: int = 200, width_multiplier: float = 1.0, kernel_num: int = 4, reduce: int = 4):
    """TArdelean DY-MobileNetV3-Large (Tiny-ImageNet 64x64; static stem; returns log_softmax)."""
    return TAMobileNetV3(TA_MOBILENETV3_LARGE, 960, num_classes, width_multiplier, kernel_num, reduce)
