"""The DY-Conv paper's DY-ResNet-10/18 (ImageNet-style) in odexport's own layout.

torchvision's ResNet structure and key names (``conv1``, ``bn1``, ``layer1..4`` of ``BasicBlock``
with ``conv1``/``conv2``/``downsample.{0,1}``, ``fc``); every conv but the 7x7 stem -- block convs
and the 1x1 ``downsample.0`` shortcuts -- is the paper's dynamic conv
(:func:`odexport.models.dy_mobilenet.paper_dyconv`: K=4, attention width ``max(C // 4, 4)``, biased
FCs, no dynamic bias by default since BatchNorm follows).  ResNet-10 is ResNet-18 with one block
per stage.  They are registered as ``dy_resnet10_paper`` / ``dy_resnet18_paper`` because
``dy_resnet18`` is kaijieshi7's layout (:mod:`.dy_resnet`).  ``docs/architectures.md`` compares the parameter counts with the paper's table.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from odexport.layers import DyConv2d
from odexport.layers.functional import init_each_kernel
from odexport.models._registry import register_model
from odexport.models.dy_mobilenet import paper_dyconv


class PaperDyBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample, dyconv):
        super().__init__()
        self.conv1 = dyconv(inplanes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = dyconv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class PaperDyResNet(nn.Module):
    def __init__(self, layers, num_classes=1000, kernel_num=4, reduction=4, dynamic_bias=False,
                 dynamic_downsample=True):
        super().__init__()
        dyconv = partial(paper_dyconv, kernel_num=kernel_num, reduction=reduction, dynamic_bias=dynamic_bias)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (planes, blocks, stride) in enumerate(zip((64, 128, 256, 512), layers, (1, 2, 2, 2)), start=1):
            setattr(self, f"layer{i}", self._make_layer(planes, blocks, stride, dyconv, dynamic_downsample))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, DyConv2d):
                init_each_kernel(m.weight, nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes, blocks, stride, dyconv, dynamic_downsample):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            shortcut = (dyconv(self.inplanes, planes, 1, stride) if dynamic_downsample
                        else nn.Conv2d(self.inplanes, planes, 1, stride, bias=False))
            downsample = nn.Sequential(shortcut, nn.BatchNorm2d(planes))
        layers = [PaperDyBasicBlock(self.inplanes, planes, stride, downsample, dyconv)]
        self.inplanes = planes
        layers += [PaperDyBasicBlock(planes, planes, 1, None, dyconv) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_FAMILY = dict(family="dy_resnet_paper", layout="odexport", input_shape=(3, 224, 224))


@register_model(**_FAMILY)
def dy_resnet10_paper(num_classes: int = 1000, kernel_num: int = 4, reduction: int = 4, dynamic_bias: bool = False,
                dynamic_downsample: bool = True):
    """DY-ResNet-10 of the DY-Conv paper (paper: 18.6 M params); suffixed like ``dy_resnet18_paper``."""
    return PaperDyResNet([1, 1, 1, 1], num_classes, kernel_num, reduction, dynamic_bias, dynamic_downsample)


@register_model(**_FAMILY)
def dy_resnet18_paper(num_classes: int = 1000, kernel_num: int = 4, reduction: int = 4, dynamic_bias: bool = False,
                      dynamic_downsample: bool = True):
    """DY-ResNet-18 of the DY-Conv paper (paper: 42.7 M params); ``dy_resnet18`` is kaijieshi7's."""
    return PaperDyResNet([2, 2, 2, 2], num_classes, kernel_num, reduction, dynamic_bias, dynamic_downsample)
