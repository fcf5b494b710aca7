"""OD-ResNet (ODConv paper, ICLR 2022) with the official OSVAI/ODConv structure and key names.

Structure (``models/od_resnet.py`` of the official code):

* stem ``conv1`` 7x7/2 (a plain ``nn.Conv2d``), ``bn1``, ``relu``, ``maxpool`` 3x3/2;
* ``layer1..4`` of ``BasicBlock`` (``conv1``, ``conv2``) or ``Bottleneck`` (``conv1``, ``conv2``,
  ``conv3``); every block conv is an :class:`~odexport.layers.ODConv2d`, the stride sits on the
  3x3, and the ``downsample`` shortcut is a plain ``Sequential(nn.Conv2d 1x1, BatchNorm2d)``;
* head: global average pool, ``dropout`` then ``fc``.

Builders default to ``kernel_num=1`` ("ODConv 1x") like the official ones; the released 4x models
pass ``kernel_num=4``.  The official keys of od_resnet18 number 314 at K=1 and 346 at K=4 (32
``kernel_fc`` weight+bias pairs appear when K > 1).
"""

from __future__ import annotations

import torch
from torch import nn

from odexport.layers import ODConv2d
from odexport.models._registry import register_model


def _odconv(in_planes, out_planes, kernel_size, stride, reduction, kernel_num, groups=1):
    return ODConv2d(in_planes, out_planes, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                    reduction=reduction, kernel_num=kernel_num)


class ODBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, reduction=0.0625, kernel_num=1):
        super().__init__()
        self.conv1 = _odconv(inplanes, planes, 3, stride, reduction, kernel_num)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _odconv(planes, planes, 3, 1, reduction, kernel_num)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ODBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, reduction=0.0625, kernel_num=1):
        super().__init__()
        self.conv1 = _odconv(inplanes, planes, 1, 1, reduction, kernel_num)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _odconv(planes, planes, 3, stride, reduction, kernel_num)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _odconv(planes, planes * self.expansion, 1, 1, reduction, kernel_num)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ODResNet(nn.Module):
    """The official ``OD_ResNet``; ``widths`` and ``stem`` exist only for the tiny test variant.

    ``stem="cifar"`` replaces the 7x7/2 conv and max-pool by a 3x3/1 conv (same key ``conv1``),
    for 32x32 inputs.
    """

    def __init__(self, block, layers, num_classes=1000, dropout=0.1, reduction=0.0625, kernel_num=1,
                 widths=(64, 128, 256, 512), stem="imagenet"):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.inplanes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        strides = (1, 2, 2, 2)
        for i, (planes, blocks, stride) in enumerate(zip(widths, layers, strides), start=1):
            setattr(self, f"layer{i}", self._make_layer(block, planes, blocks, stride, reduction, kernel_num))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        self._init_weights()

    def _init_weights(self):
        # The official model-level init; it also re-initialises the ODConv attention 1x1 convs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes, blocks, stride, reduction, kernel_num):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, padding=0, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, reduction=reduction, kernel_num=kernel_num)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, reduction=reduction, kernel_num=kernel_num) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def net_update_temperature(self, temperature: float) -> None:
        """Official API name: set the temperature of every ODConv layer."""
        for m in self.modules():
            if isinstance(m, ODConv2d):
                m.temperature = temperature

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


_FAMILY = dict(family="od_resnet", layout="odconv", input_shape=(3, 224, 224))


@register_model(**_FAMILY)
def od_resnet18(num_classes: int = 1000, dropout: float = 0.1, reduction: float = 0.0625, kernel_num: int = 1):
    """OD-ResNet-18 (official structure; 11.94 M params at K=1, 44.90 M at K=4)."""
    return ODResNet(ODBasicBlock, [2, 2, 2, 2], num_classes, dropout, reduction, kernel_num)


@register_model(**_FAMILY)
def od_resnet34(num_classes: int = 1000, dropout: float = 0.1, reduction: float = 0.0625, kernel_num: int = 1):
    """OD-ResNet-34 (official structure)."""
    return ODResNet(ODBasicBlock, [3, 4, 6, 3], num_classes, dropout, reduction, kernel_num)


@register_model(**_FAMILY)
def od_resnet50(num_classes: int = 1000, dropout: float = 0.1, reduction: float = 0.0625, kernel_num: int = 1):
    """OD-ResNet-50 (official structure; 28.64 M params at K=1, 90.67 M at K=4)."""
    return ODResNet(ODBottleneck, [3, 4, 6, 3], num_classes, dropout, reduction, kernel_num)


@register_model(**_FAMILY)
def od_resnet101(num_classes: int = 1000, dropout: float = 0.1, reduction: float = 0.0625, kernel_num: int = 1):
    """OD-ResNet-101 (official structure; 90.44 M params at K=2)."""
    return ODResNet(ODBottleneck, [3, 4, 23, 3], num_classes, dropout, reduction, kernel_num)


@register_model(**_FAMILY)
def od_resnet152(num_classes: int = 1000, dropout: float = 0.1, reduction: float = 0.0625, kernel_num: int = 1):
    """OD-ResNet-152: the official code's blocks at the depth its mmdet backbone also lists."""
    return ODResNet(ODBottleneck, [3, 8, 36, 3], num_classes, dropout, reduction, kernel_num)


@register_model(family="od_resnet", layout="odconv", input_shape=(3, 32, 32), tiny=True)
def od_resnet_tiny(num_classes: int = 10, dropout: float = 0.1, reduction: float = 0.0625, kernel_num: int = 4):
    """Tiny OD-ResNet for tests: bottleneck blocks (1x1, strided 3x3), static downsample, 3x3/1 stem."""
    return ODResNet(ODBottleneck, [1, 1, 1, 1], num_classes, dropout, reduction, kernel_num,
                    widths=(8, 16, 24, 32), stem="cifar")
