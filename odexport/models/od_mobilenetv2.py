"""OD-MobileNetV2 (ODConv paper) with the official OSVAI/ODConv structure and key names.

Structure (``models/od_mobilenetv2.py`` of the official code):

* ``features.0``: plain ``ConvBNReLU`` 3x3/2 (``nn.Conv2d``, BN, ReLU6);
* ``features.1..17``: inverted residuals whose ``conv`` is a ``Sequential`` of
  ``ODConvBNReLU`` 1x1 expand (absent when t=1), ``ODConvBNReLU`` depthwise 3x3 (groups = hidden,
  so no filter head), ``ODConv2d`` 1x1 linear projection and a BatchNorm;
* ``features.18``: ``ODConvBNReLU`` 1x1 to ``last_channel`` (1280 for every width <= 1);
* head: global average pool, ``classifier = Sequential(Dropout, Linear)``.

Channel widths use TensorFlow's ``_make_divisible`` (``round_nearest=8``), hidden widths
``int(round(inp * t))`` (Python's banker's rounding, as in the official code).
"""

from __future__ import annotations

from torch import nn

from odexport.layers import ODConv2d
from odexport.models._common import make_divisible
from odexport.models._registry import register_model

# t (expansion), c (output channels), n (repeats), s (first stride)
MOBILENETV2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU(nn.Sequential):
    """Static conv, BN, ReLU6 (the stem)."""

    def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, groups=1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class ODConvBNReLU(nn.Sequential):
    """ODConv, BN, ReLU6."""

    def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, groups=1, reduction=0.0625, kernel_num=1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            ODConv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, reduction=reduction,
                     kernel_num=kernel_num),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class ODInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, reduction=0.0625, kernel_num=1):
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ODConvBNReLU(inp, hidden_dim, kernel_size=1, reduction=reduction, kernel_num=kernel_num))
        layers += [
            ODConvBNReLU(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim, reduction=reduction,
                         kernel_num=kernel_num),
            ODConv2d(hidden_dim, oup, 1, 1, 0, reduction=reduction, kernel_num=kernel_num),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class ODMobileNetV2(nn.Module):
    """The official ``OD_MobileNetV2``; ``inverted_residual_setting`` and ``last_channel`` exist
    for the tiny test variant (the official code derives ``last_channel`` from 1280)."""

    def __init__(self, num_classes=1000, width_mult=1.0, inverted_residual_setting=None, round_nearest=8,
                 dropout=0.2, reduction=0.0625, kernel_num=1, last_channel=None):
        super().__init__()
        setting = inverted_residual_setting or MOBILENETV2_SETTING
        if len(setting) == 0 or any(len(row) != 4 for row in setting):
            raise ValueError(f"inverted_residual_setting must be non-empty rows of (t, c, n, s), got {setting}")
        input_channel = make_divisible(32 * width_mult, round_nearest)
        if last_channel is None:
            last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        self.last_channel = last_channel
        features: list[nn.Module] = [ConvBNReLU(3, input_channel, stride=2)]
        for t, c, n, s in setting:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(ODInvertedResidual(input_channel, output_channel, s if i == 0 else 1, t, reduction, kernel_num))
                input_channel = output_channel
        features.append(ODConvBNReLU(input_channel, last_channel, kernel_size=1, reduction=reduction, kernel_num=kernel_num))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channel, num_classes))
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def net_update_temperature(self, temperature: float) -> None:
        """Official API name: set the temperature of every ODConv layer."""
        for m in self.modules():
            if isinstance(m, ODConv2d):
                m.temperature = temperature

    def forward(self, x):
        x = self.features(x)
        # reshape, not squeeze: the batch may be 1
        x = nn.functional.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        return self.classifier(x)


_FAMILY = dict(family="od_mobilenetv2", layout="odconv", input_shape=(3, 224, 224))


@register_model(**_FAMILY)
def od_mobilenetv2_050(num_classes: int = 1000, dropout: float = 0.2, reduction: float = 0.0625, kernel_num: int = 1):
    """OD-MobileNetV2 x0.5 (official structure; 2.43 M params at K=1, 4.44 M at K=4)."""
    return ODMobileNetV2(num_classes, 0.5, dropout=dropout, reduction=reduction, kernel_num=kernel_num)


@register_model(**_FAMILY)
def od_mobilenetv2_075(num_classes: int = 1000, dropout: float = 0.2, reduction: float = 0.0625, kernel_num: int = 1):
    """OD-MobileNetV2 x0.75 (official structure; 3.51 M params at K=1, 7.50 M at K=4)."""
    return ODMobileNetV2(num_classes, 0.75, dropout=dropout, reduction=reduction, kernel_num=kernel_num)


@register_model(**_FAMILY)
def od_mobilenetv2_100(num_classes: int = 1000, dropout: float = 0.2, reduction: float = 0.0625, kernel_num: int = 1):
    """OD-MobileNetV2 x1.0 (official structure; 4.94 M params at K=1, 11.51 M at K=4)."""
    return ODMobileNetV2(num_classes, 1.0, dropout=dropout, reduction=reduction, kernel_num=kernel_num)


@register_model(family="od_mobilenetv2", layout="odconv", input_shape=(3, 32, 32), tiny=True)
def od_mobilenetv2_tiny(num_classes: int = 10, dropout: float = 0.2, reduction: float = 0.0625, kernel_num: int = 4):
    """Tiny OD-MobileNetV2 for tests: t=1 and t=4 blocks, depthwise, stride 2, residuals, 1x1 head conv."""
    setting = ((1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 2))
    return ODMobileNetV2(num_classes, 1.0, setting, dropout=dropout, reduction=reduction, kernel_num=kernel_num,
                         last_channel=128)
