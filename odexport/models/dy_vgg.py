"""DY-VGG in the layout of kaijieshi7/Dynamic-convolution-Pytorch (``dynamic_models/dy_vgg.py``).

torchvision's VGG feature stacks (configurations A, B, D, E: VGG-11/13/16/19, with or without
BatchNorm) in which every 3x3 conv is a ``Dynamic_conv2d(in, out, 3, padding=1, bias=False)`` with
the reference defaults ``K=4, ratio=0.25`` -- the first one's attention, on 3 input channels, has
``K`` hidden units (formats.md B.1).  The head is the reference's: ``AdaptiveAvgPool2d((7, 7))``
then a **single** ``classifier.0 = Linear(512*7*7, num_classes)``, not torchvision's three.

Temperature: as for :mod:`odexport.models.dy_resnet`, the builders start at T=1 (the reference
constructor's 34 is its training start value and is never saved).
"""

from __future__ import annotations

import torch
from torch import nn

from odexport.layers import DyConv2d
from odexport.models._registry import register_model
from odexport.models.dy_resnet import CIFAR_TRAINING_SIZES

VGG_CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class KaijieshiDyVGG(nn.Module):
    """kaijieshi7's DY-VGG: ``features`` (dynamic 3x3 convs [+ BN] + ReLU, 2x2 max-pools),
    ``avgpool`` to 7x7, ``classifier.0``."""

    def __init__(self, config, batch_norm=False, num_classes=1000, kernel_num=4, ratio=0.25, temperature=1.0):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            conv = DyConv2d.from_kaijieshi7_args(channels, item, 3, ratio=ratio, padding=1, bias=False, K=kernel_num,
                                                 temperature=temperature)
            layers += [conv, nn.BatchNorm2d(item), nn.ReLU(inplace=True)] if batch_norm else [conv, nn.ReLU(inplace=True)]
            channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Linear(channels * 7 * 7, num_classes))
        for m in self.modules():
            # the reference's model-level init (it also reaches the attention 1x1 convs)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


_FAMILY = dict(family="dy_vgg", layout="kaijieshi7", input_shape=(3, 224, 224), training_sizes=CIFAR_TRAINING_SIZES)


def _register(name: str, config: str, batch_norm: bool, depth: int) -> None:
    def builder(num_classes: int = 1000, kernel_num: int = 4, ratio: float = 0.25):
        return KaijieshiDyVGG(VGG_CONFIGS[config], batch_norm, num_classes, kernel_num=kernel_num, ratio=ratio)

    builder.__doc__ = f"DY-VGG-{depth} (configuration {config}{', BatchNorm' if batch_norm else ''}), kaijieshi7 layout."
    register_model(**_FAMILY, name=name)(builder)


for _depth, _config in ((11, "A"), (13, "B"), (16, "D"), (19, "E")):
    _register(f"dy_vgg{_depth}", _config, False, _depth)
    _register(f"dy_vgg{_depth}_bn", _config, True, _depth)


@register_model(family="dy_vgg", layout="kaijieshi7", input_shape=(3, 32, 32), tiny=True)
def dy_vgg_tiny(num_classes: int = 10, kernel_num: int = 4, ratio: float = 0.25):
    """Tiny kaijieshi7 DY-VGG for tests, shaped like the reference's CIFAR runs: BatchNorm, five
    max-pools (32x32 -> 1x1, which the 7x7 adaptive pool replicates), a 3-channel first attention."""
    return KaijieshiDyVGG((8, "M", 8, "M", 16, "M", 16, "M", 16, "M"), True, num_classes, kernel_num=kernel_num, ratio=ratio)
