"""DY-ResNet in the layout of kaijieshi7/Dynamic-convolution-Pytorch (``dynamic_models/dy_resnet.py``).

A torchvision ResNet in which every block conv **and** every ``downsample.0`` 1x1 conv is a
``Dynamic_conv2d(bias=False, K=4, ratio=0.25)`` -- here a :class:`~odexport.layers.DyConv2d`
with ``key_layout="kaijieshi7"`` (keys ``weight``, ``attention.fc1.weight``,
``attention.fc2.weight|bias``).  The 7x7 stem and the ``fc`` head are static.

Temperature: the reference constructor starts every layer at T=34 (its *training* start value,
annealed to 1 by ``update_temperature()`` and never saved).  These builders start at T=1, the
value a trained network is evaluated at; pass ``temperature=34`` to ``create_model`` (or call
:func:`odexport.layers.set_temperature`) to reproduce a freshly constructed reference model.
"""

from __future__ import annotations

import torch
from torch import nn

from odexport.layers import DyConv2d
from odexport.models._registry import register_model


def _dyconv(in_planes, out_planes, kernel_size, stride=1, groups=1, dilation=1, *, kernel_num, ratio, temperature):
    padding = dilation if kernel_size == 3 else 0
    return DyConv2d.from_kaijieshi7_args(in_planes, out_planes, kernel_size, ratio=ratio, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups, bias=False, K=kernel_num,
                                         temperature=temperature)


class DyBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, *, dyconv):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and width_per_group=64")
        self.conv1 = dyconv(inplanes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = dyconv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DyBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, *, dyconv):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = dyconv(inplanes, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = dyconv(width, width, 3, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = dyconv(width, planes * self.expansion, 1)
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


class KaijieshiDyResNet(nn.Module):
    """kaijieshi7's DY-ResNet. ``widths`` and ``stem`` exist only for the tiny test variant
    (``stem="cifar"``: 3x3/1 ``conv1`` and no max-pool, for 32x32 inputs)."""

    def __init__(self, block, layers, num_classes=1000, groups=1, width_per_group=64, kernel_num=4, ratio=0.25,
                 temperature=1.0, widths=(64, 128, 256, 512), stem="imagenet"):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")

        def dyconv(in_planes, out_planes, kernel_size, stride=1, groups=1):
            return _dyconv(in_planes, out_planes, kernel_size, stride, groups, kernel_num=kernel_num, ratio=ratio,
                           temperature=temperature)

        self.groups, self.base_width = groups, width_per_group
        self.inplanes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        for i, (planes, blocks, stride) in enumerate(zip(widths, layers, (1, 2, 2, 2)), start=1):
            setattr(self, f"layer{i}", self._make_layer(block, planes, blocks, stride, dyconv))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        for m in self.modules():
            # the reference's model-level init (it also reaches the attention 1x1 convs)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride, dyconv):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                dyconv(self.inplanes, planes * block.expansion, 1, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, dyconv=dyconv)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width, dyconv=dyconv)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# the reference's main.py trains only CIFAR-10/100 at 32x32 (with the torchvision 7x7 stem and max-pool):
# a file with 10 or 100 classes came from there, any other count from the user's own ImageNet-style run
CIFAR_TRAINING_SIZES = {10: ((3, 32, 32), "CIFAR-10"), 100: ((3, 32, 32), "CIFAR-100")}
_FAMILY = dict(family="dy_resnet", layout="kaijieshi7", input_shape=(3, 224, 224), training_sizes=CIFAR_TRAINING_SIZES)


@register_model(**_FAMILY)
def dy_resnet18(num_classes: int = 1000, kernel_num: int = 4, ratio: float = 0.25):
    """DY-ResNet-18, kaijieshi7 layout (dynamic downsample convs; 44.97 M params at K=4)."""
    return KaijieshiDyResNet(DyBasicBlock, [2, 2, 2, 2], num_classes, kernel_num=kernel_num, ratio=ratio)


@register_model(**_FAMILY)
def dy_resnet34(num_classes: int = 1000, kernel_num: int = 4, ratio: float = 0.25):
    """DY-ResNet-34, kaijieshi7 layout."""
    return KaijieshiDyResNet(DyBasicBlock, [3, 4, 6, 3], num_classes, kernel_num=kernel_num, ratio=ratio)


@register_model(**_FAMILY)
def dy_resnet50(num_classes: int = 1000, kernel_num: int = 4, ratio: float = 0.25):
    """DY-ResNet-50, kaijieshi7 layout."""
    return KaijieshiDyResNet(DyBottleneck, [3, 4, 6, 3], num_classes, kernel_num=kernel_num, ratio=ratio)


@register_model(**_FAMILY)
def dy_resnet101(num_classes: int = 1000, kernel_num: int = 4, ratio: float = 0.25):
    """DY-ResNet-101, kaijieshi7 layout."""
    return KaijieshiDyResNet(DyBottleneck, [3, 4, 23, 3], num_classes, kernel_num=kernel_num, ratio=ratio)


@register_model(**_FAMILY)
def dy_resnet152(num_classes: int = 1000, kernel_num: int = 4, ratio: float = 0.25):
    """DY-ResNet-152, kaijieshi7 layout."""
    return KaijieshiDyResNet(DyBottleneck, [3, 8, 36, 3], num_classes, kernel_num=kernel_num, ratio=ratio)


@register_model(**_FAMILY)
def dy_resnext50_32x4d(num_classes: int = 1000, kernel_num: int = 4, ratio: float = 0.25):
    """DY-ResNeXt-50 32x4d, kaijieshi7 layout (grouped dynamic 3x3: 32 groups of 4 channels per 64)."""
    return KaijieshiDyResNet(DyBottleneck, [3, 4, 6, 3], num_classes, groups=32, width_per_group=4,
                             kernel_num=kernel_num, ratio=ratio)


@register_model(**_FAMILY)
def dy_resnext101_32x8d(num_classes: int = 1000, kernel_num: int = 4, ratio: float = 0.25):
    """DY-ResNeXt-101 32x8d, kaijieshi7 layout."""
    return KaijieshiDyResNet(DyBottleneck, [3, 4, 23, 3], num_classes, groups=32, width_per_group=8,
                             kernel_num=kernel_num, ratio=ratio)


@register_model(**_FAMILY)
def dy_wide_resnet50_2(num_classes: int = 1000, kernel_num: int = 4, ratio: float = 0.25):
    """DY-Wide-ResNet-50-2, kaijieshi7 layout (bottleneck width doubled)."""
    return KaijieshiDyResNet(DyBottleneck, [3, 4, 6, 3], num_classes, width_per_group=128, kernel_num=kernel_num, ratio=ratio)


@register_model(**_FAMILY)
def dy_wide_resnet101_2(num_classes: int = 1000, kernel_num: int = 4, ratio: float = 0.25):
    """DY-Wide-ResNet-101-2, kaijieshi7 layout."""
    return KaijieshiDyResNet(DyBottleneck, [3, 4, 23, 3], num_classes, width_per_group=128, kernel_num=kernel_num, ratio=ratio)


@register_model(family="dy_resnet", layout="kaijieshi7", input_shape=(3, 32, 32), tiny=True)
def dy_resnet_tiny(num_classes: int = 10, kernel_num: int = 4, ratio: float = 0.25):
    """Tiny kaijieshi7 DY-ResNet for tests: ResNeXt-style bottlenecks (grouped 3x3, groups=2),
    dynamic 1x1 downsample with stride, 3x3/1 stem."""
    return KaijieshiDyResNet(DyBottleneck, [1, 1, 1, 1], num_classes, groups=2, width_per_group=32,
                             kernel_num=kernel_num, ratio=ratio, widths=(8, 16, 24, 32), stem="cifar")
