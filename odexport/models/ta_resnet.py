"""DY-ResNet10/18 in the layout of TArdelean/DynamicConvolution (``models/resnet.py``).

A CIFAR-style ResNet (after kuangliu/pytorch-cifar) trained on Tiny-ImageNet (64x64, 200 classes):

* stem ``conv1`` 3x3/1 (a plain ``nn.Conv2d``, no bias), ``bn1``, ReLU, **no max-pool**;
* ``layer1..4`` (widths ``int(64*w)`` x 1, 2, 4, 8; strides 1, 2, 2, 2) of ``BasicBlock``s whose
  ``conv1``/``conv2`` are dynamic and whose ``shortcut`` is either empty or a dynamic 1x1 conv
  plus BatchNorm;
* adaptive average pool, ``linear``, and the model **returns ``log_softmax``**.

Every dynamic conv is a :class:`~odexport.layers.DyConv2d` with ``key_layout="tardelean"``
(``kernels_weights``, ``attention.to_scores.{0,2}``), ``bias=False``, ``K=4``, hidden width
``max(1, in // reduce)`` with ``reduce=4``.  The reference's ``CustomSequential`` (which threads
the temperature argument) adds ``.layers.`` to the keys: ``layer2.layers.0.shortcut.layers.0...``.

The reference passes the temperature to every ``forward``; here each layer holds it (default 1,
the test-time value of the reference schedule) -- set it with
:func:`odexport.layers.set_temperature`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from odexport.layers import DyConv2d
from odexport.models._common import LayersSequential
from odexport.models._registry import register_model


def tardelean_dyconv(in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, *, kernel_num=4, reduce=4):
    """A dynamic conv as ``dynamic_convolution_generator(kernel_num, reduce)`` builds it (bias=False
    is what every TArdelean model passes)."""
    return DyConv2d.from_tardelean_args(kernel_num, reduce, in_channels, out_channels, kernel_size, stride=stride,
                                        padding=padding, groups=groups, bias=False)


class TABasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, *, kernel_num=4, reduce=4):
        super().__init__()
        dy = dict(kernel_num=kernel_num, reduce=reduce)
        self.conv1 = tardelean_dyconv(in_planes, planes, 3, stride, 1, **dy)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = tardelean_dyconv(planes, planes, 3, 1, 1, **dy)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = LayersSequential(
                tardelean_dyconv(in_planes, self.expansion * planes, 1, stride, **dy),
                nn.BatchNorm2d(self.expansion * planes),
            )
        else:
            self.shortcut = LayersSequential()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TAResNet(nn.Module):
    def __init__(self, num_blocks, width_multiplier=1.0, num_classes=200, kernel_num=4, reduce=4):
        super().__init__()
        nf = int(64 * width_multiplier)
        self.in_planes = nf
        self.conv1 = nn.Conv2d(3, nf, kernel_size=3, stride=1, padding=1, bias=False)  # static stem
        self.bn1 = nn.BatchNorm2d(nf)
        dy = dict(kernel_num=kernel_num, reduce=reduce)
        self.layer1 = self._make_layer(nf, num_blocks[0], 1, dy)
        self.layer2 = self._make_layer(2 * nf, num_blocks[1], 2, dy)
        self.layer3 = self._make_layer(4 * nf, num_blocks[2], 2, dy)
        self.layer4 = self._make_layer(8 * nf, num_blocks[3], 2, dy)
        self.linear = nn.Linear(8 * nf * TABasicBlock.expansion, num_classes)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))

    def _make_layer(self, planes, num_blocks, stride, dy):
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(TABasicBlock(self.in_planes, planes, s, **dy))
            self.in_planes = planes * TABasicBlock.expansion
        return LayersSequential(*blocks)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.avg_pool(out).reshape(out.shape[0], -1)
        return F.log_softmax(self.linear(out), dim=1)


_FAMILY = dict(family="ta_resnet", layout="tardelean", input_shape=(3, 64, 64), output="log_softmax")


@register_model(**_FAMILY)
def ta_resnet10(num_classes: int = 200, width_multiplier: float = 1.0, kernel_num: int = 4, reduce: int = 4):
    """TArdelean DY-ResNet10 (CIFAR-style, Tiny-ImageNet 64x64, returns log_softmax)."""
    return TAResNet([1, 1, 1, 1], width_multiplier, num_classes, kernel_num, reduce)


@register_model(**_FAMILY)
def ta_resnet18(num_classes: int = 200, width_multiplier: float = 1.0, kernel_num: int = 4, reduce: int = 4):
    """TArdelean DY-ResNet18 (CIFAR-style, Tiny-ImageNet 64x64, returns log_softmax)."""
    return TAResNet([2, 2, 2, 2], width_multiplier, num_classes, kernel_num, reduce)


@register_model(family="ta_resnet", layout="tardelean", input_shape=(3, 32, 32), output="log_softmax", tiny=True)
def ta_resnet_tiny(num_classes: int = 10, width_multiplier: float = 0.125, kernel_num: int = 4, reduce: int = 4):
    """Tiny TArdelean DY-ResNet10 for tests (widths 8..64, dynamic 1x1 strided shortcuts)."""
    return TAResNet([1, 1, 1, 1], width_multiplier, num_classes, kernel_num, reduce)
