"""Parameter counts and state-dict key totals against the papers' tables and the official code.

Full-size models are built on the ``meta`` device (shapes only, no memory, well under a second).
Independent references: the ODConv paper / official README table (also in formats.md A.5), the
DY-Conv paper's table (Chen et al. 2020), torchvision's static ResNet/MobileNet counts.
"""

from __future__ import annotations

import pytest
import torch

from odexport.layers import DyConv2d, ODConv2d, dynamic_convs
from odexport.models import create_model, static_twin


def build_meta(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


def millions(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


# ODConv paper, Table 1/2 and the official README (rounded to 0.01 M).
ODCONV_TABLE = [
    ("od_resnet18", 1, 11.94),
    ("od_resnet18", 4, 44.90),
    ("od_resnet50", 1, 28.64),
    ("od_resnet50", 4, 90.67),
    ("od_resnet101", 2, 90.44),
    ("od_mobilenetv2_050", 1, 2.43),
    ("od_mobilenetv2_050", 4, 4.44),
    ("od_mobilenetv2_075", 1, 3.51),
    ("od_mobilenetv2_075", 4, 7.50),
    ("od_mobilenetv2_100", 1, 4.94),
    ("od_mobilenetv2_100", 4, 11.51),
]


@pytest.mark.parametrize("name,kernel_num,paper", ODCONV_TABLE)
def test_odconv_param_counts_equal_the_paper(name, kernel_num, paper):
    assert round(millions(build_meta(name, kernel_num=kernel_num)), 2) == paper


def _keys(name, kernel_num) -> int:
    return len(build_meta(name, kernel_num=kernel_num).state_dict())


def test_od_resnet18_key_totals_follow_the_official_layer():
    """torchvision's resnet18 state dict has 122 keys; the official OD-ResNet18 replaces the one
    ``weight`` of each of its 16 block convs (all 3x3) by an ODConv's 13 at K=1 (``weight``,
    ``attention.fc.weight``, ``attention.bn`` x5, channel/filter/spatial FC weight and bias) and
    adds the kernel head's weight and bias at K > 1."""
    assert _keys("od_resnet18", 1) == 122 + 16 * 12
    assert _keys("od_resnet18", 4) == 122 + 16 * 14


def test_od_mobilenetv2_key_totals_equal_the_reference_checkpoint():
    """The checkpoint written by the official code (../shared/refdata) has every key the model has
    at K=4; at K=1 each of the 51 ODConvs lacks only its kernel head (weight and bias)."""
    from tests.conftest import load_refdata

    reference = load_refdata("odconv", "od_mobilenetv2_050_k4.pth.tar")["state_dict"]
    assert _keys("od_mobilenetv2_050", 4) == len(reference)
    assert _keys("od_mobilenetv2_050", 4) - _keys("od_mobilenetv2_050", 1) == 2 * 51


def test_od_resnet_static_parts_are_plain_convs():
    model = build_meta("od_resnet50", kernel_num=4)
    assert type(model.conv1) is torch.nn.Conv2d and model.conv1.kernel_size == (7, 7)
    assert type(model.layer2[0].downsample[0]) is torch.nn.Conv2d
    assert isinstance(model.layer2[0].conv2, ODConv2d) and model.layer2[0].conv2.stride == (2, 2)
    assert isinstance(model.dropout, torch.nn.Dropout) and model.dropout.p == 0.1
    # 16 blocks x 3 ODConvs
    assert len(dynamic_convs(model)) == 48


def test_od_mobilenetv2_structure():
    model = build_meta("od_mobilenetv2_100", kernel_num=4)
    assert type(model.features[0][0]) is torch.nn.Conv2d and isinstance(model.features[0][2], torch.nn.ReLU6)
    dw = model.features[2].conv[1][0]
    assert isinstance(dw, ODConv2d) and dw.groups == dw.in_planes == 96 and dw.attention.filter_fc is None
    last = model.features[18][0]
    assert isinstance(last, ODConv2d) and (last.in_planes, last.out_planes, last.kernel_size) == (320, 1280, 1)
    assert isinstance(model.classifier[0], torch.nn.Dropout) and model.classifier[0].p == 0.2
    assert model.classifier[1].in_features == 1280


def test_kaijieshi7_dy_resnet18_layout():
    model = build_meta("dy_resnet18")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # formats.md B.1 example keys
    assert shapes["layer1.0.conv1.weight"] == (4, 64, 64, 3, 3)
    assert shapes["layer1.0.conv1.attention.fc1.weight"] == (17, 64, 1, 1)
    assert shapes["layer1.0.conv1.attention.fc2.weight"] == (4, 17, 1, 1)
    assert shapes["layer1.0.conv1.attention.fc2.bias"] == (4,)
    assert "layer1.0.conv1.attention.fc1.bias" not in shapes and "layer1.0.conv1.bias" not in shapes
    assert isinstance(model.layer2[0].downsample[0], DyConv2d)  # dynamic downsample, unlike ODConv
    assert type(model.conv1) is torch.nn.Conv2d
    assert len(dynamic_convs(model)) == 16 + 3


def test_kaijieshi7_dy_resnet18_count():
    # formats.md B.1 gives 44.97 M: that is the count with the 10-class CIFAR head of the
    # reference's main.py; the ImageNet head adds (512 + 1) * (1000 - 10) = 507,870 parameters.
    assert round(millions(build_meta("dy_resnet18", num_classes=10)), 2) == 44.97
    assert round(millions(build_meta("dy_resnet18")), 2) == 45.48


def test_tardelean_resnet10_key_shapes():
    shapes = {k: tuple(v.shape) for k, v in build_meta("ta_resnet10", width_multiplier=0.5).state_dict().items()}
    assert shapes["layer2.layers.0.shortcut.layers.0.kernels_weights"] == (4, 64, 32, 1, 1)  # formats.md B.2
    assert shapes["layer1.layers.0.conv1.attention.to_scores.0.weight"] == (8, 32)
    assert shapes["linear.weight"] == (200, 256)
    assert not any(k.startswith("layer1.layers.0.shortcut") for k in shapes)  # identity shortcut: no keys
    assert len(shapes) == 118


def test_tardelean_mobilenetv2_key_shapes():
    shapes = {k: tuple(v.shape) for k, v in build_meta("ta_mobilenetv2", width_multiplier=0.5).state_dict().items()}
    # the three examples of formats.md B.2
    assert shapes["features.layers.1.conv.layers.0.kernels_weights"] == (4, 16, 1, 3, 3)
    assert shapes["conv.layers.0.kernels_weights"] == (4, 1280, 160, 1, 1)
    assert shapes["classifier.weight"] == (200, 1280)
    assert shapes["features.layers.0.layers.0.weight"] == (16, 3, 3, 3)  # static stem
    assert not any("kernels_bias" in k for k in shapes)
    model = build_meta("ta_mobilenetv2", width_multiplier=2.0)
    assert model.classifier.in_features == 2560  # wider than 1280 only above width 1


# DY-Conv paper table: (name, kwargs that reproduce it, paper M, tolerance M).
# dynamic_last_conv=False: see docs/architectures.md for why.
DY_PAPER_TABLE = [
    ("dy_mobilenetv2_100", {"dynamic_last_conv": False}, 11.1, 0.1),
    ("dy_mobilenetv2_075", {"dynamic_last_conv": False}, 7.0, 0.1),
    ("dy_mobilenetv2_050", {"dynamic_last_conv": False}, 4.0, 0.1),
    ("dy_mobilenetv2_035", {"dynamic_last_conv": False}, 2.8, 0.15),
    ("dy_mobilenetv3_small", {}, 4.8, 0.1),
]


@pytest.mark.parametrize("name,kwargs,paper,tolerance", DY_PAPER_TABLE)
def test_dy_paper_mobilenets_close_to_the_paper(name, kwargs, paper, tolerance):
    assert abs(millions(build_meta(name, **kwargs)) - paper) <= tolerance


# The paper-style defaults (every conv but the stem dynamic), with the paper's counts for comparison;
# docs/architectures.md lists what these models have, which the test derives from their shapes.
PAPER_STYLE_DEFAULTS = [
    "dy_mobilenetv2_100",  # paper 11.1
    "dy_mobilenetv2_075",  # paper 7.0
    "dy_mobilenetv2_050",  # paper 4.0
    "dy_mobilenetv2_035",  # paper 2.8
    "dy_mobilenetv3_small",  # paper 4.8
    "dy_resnet18_paper",  # paper 42.7
    "dy_resnet10_paper",  # paper 18.6
]


def _documented_millions(name: str) -> float:
    """The parameter count (M) of ``name`` in docs/architectures.md's table."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "architectures.md").read_text()
    found = re.search(rf"^\| `{name}` \|[^|]*\|[^|]*\| ([0-9.]+)", text, re.MULTILINE)
    assert found, f"{name} is not in docs/architectures.md's table"
    return float(found.group(1))


@pytest.mark.parametrize("name", PAPER_STYLE_DEFAULTS)
def test_dy_paper_defaults_are_the_twin_plus_k_kernels_and_an_attention(name):
    """Each dynamic conv adds to its static twin K - 1 more kernels and the paper's attention:
    pool, FC C -> h with bias, ReLU, FC h -> K with bias, h = max(C // 4, 4); no dynamic bias."""
    model = build_meta(name)
    extra = 0
    for _, layer in dynamic_convs(model):
        c, o, g, k = layer.in_channels, layer.out_channels, layer.groups, layer.num_kernels
        kh, kw = layer.kernel_size
        h = max(c // 4, 4)
        extra += (k - 1) * o * (c // g) * kh * kw + (c * h + h) + (h * k + k)
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(p.numel() for p in static_twin(model).parameters()) + extra
    assert round(total / 1e6, 3) == _documented_millions(name)


@pytest.mark.parametrize("name", ["dy_resnet18_paper", "dy_resnet10_paper"])
def test_dy_paper_resnets_are_about_four_static_resnets(name):
    # The paper's DY/static ratios are 42.7/11.1 = 3.85 (R18) and 18.6/5.2 = 3.58 (R10); K=4 with
    # every conv dynamic must land in [3.5, 4.0] of its static twin.
    model = build_meta(name)
    ratio = millions(model) / millions(static_twin(model))
    assert 3.5 <= ratio <= 4.0


def test_dy_paper_layers():
    model = build_meta("dy_resnet18_paper")
    conv = model.layer3[0].conv1
    assert isinstance(conv, DyConv2d) and conv.num_kernels == 4 and conv.bias is None
    assert conv.attention.fc1.out_channels == 128 // 4 and conv.attention.fc1.bias is not None
    assert isinstance(model.layer3[0].downsample[0], DyConv2d)
    assert type(model.conv1) is torch.nn.Conv2d
    mbv3 = build_meta("dy_mobilenetv3_small")
    assert type(mbv3.features[0][0]) is torch.nn.Conv2d
    assert isinstance(mbv3.features[12][0], DyConv2d)  # final 1x1 to 576
    assert all(type(m.fc1) is torch.nn.Conv2d for m in mbv3.modules() if type(m).__name__ == "SqueezeExcitation")


# The static twins are the plain architectures: torchvision's parameter counts.
@pytest.mark.parametrize(
    "name,static_params",
    [
        ("od_resnet18", 11_689_512),  # torchvision resnet18
        ("od_resnet50", 25_557_032),  # torchvision resnet50
        ("dy_resnet18", 11_689_512),
        ("dy_resnet18_paper", 11_689_512),
        ("od_mobilenetv2_100", 3_504_872),  # torchvision mobilenet_v2
        ("dy_mobilenetv2_100", 3_504_872),
        ("od_resnet152", 60_192_808),  # torchvision resnet152
        ("dy_resnet101", 44_549_160),  # torchvision resnet101
        ("dy_resnet152", 60_192_808),
        ("dy_resnext50_32x4d", 25_028_904),  # torchvision resnext50_32x4d
        ("dy_resnext101_32x8d", 88_791_336),  # torchvision resnext101_32x8d
        ("dy_wide_resnet50_2", 68_883_240),  # torchvision wide_resnet50_2
        ("dy_wide_resnet101_2", 126_886_696),  # torchvision wide_resnet101_2
    ],
)
def test_static_twin_counts_equal_torchvision(name, static_params):
    twin = static_twin(build_meta(name))
    assert sum(p.numel() for p in twin.parameters()) == static_params


def test_dy_mobilenetv3_small_twin_is_torchvision_small_with_a_1024_head():
    twin = static_twin(build_meta("dy_mobilenetv3_small", last_channel=1024))
    assert sum(p.numel() for p in twin.parameters()) == 2_542_856  # torchvision mobilenet_v3_small


def test_dy_paper_static_baselines():
    # the static twins against the paper's static baselines (MobileNetV2 x1.0 3.5 M, x0.5 2.0 M,
    # MobileNetV3-Small 2.9 M; ResNet-18 11.1 M, ResNet-10 5.2 M -- the ResNets differ, see docs)
    for name, paper, tolerance in [("dy_mobilenetv2_100", 3.5, 0.05), ("dy_mobilenetv2_050", 2.0, 0.05),
                                   ("dy_mobilenetv3_small", 2.9, 0.05), ("dy_resnet18_paper", 11.1, 0.6),
                                   ("dy_resnet10_paper", 5.2, 0.25)]:
        assert abs(millions(static_twin(build_meta(name))) - paper) <= tolerance, name


# torchvision's VGG feature configurations (A, B, D, E), written out here as the reference.
VGG_CFG = {11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
           13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
           16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
           19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]}


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_dy_vgg_counts(depth, batch_norm):
    # formats.md B.1: bias-free Dynamic_conv2d(K=4, ratio=0.25) 3x3 convs, hidden int(in/4)+1 (K on
    # 3 input channels), fc2 with bias, one Linear(512*7*7, classes) head
    convs = [c for c in VGG_CFG[depth] if c != "M"]
    ins = [3] + convs[:-1]
    static = sum(9 * i * o + (2 * o if batch_norm else 0) for i, o in zip(ins, convs)) + 512 * 49 * 1000 + 1000
    hidden = [4 if i == 3 else int(i * 0.25) + 1 for i in ins]
    attention = sum(h * i + 4 * h + 4 for h, i in zip(hidden, ins))
    dynamic = static + 3 * sum(9 * i * o for i, o in zip(ins, convs)) + attention
    name = f"dy_vgg{depth}" + ("_bn" if batch_norm else "")
    model = build_meta(name)
    assert sum(p.numel() for p in model.parameters()) == dynamic
    assert sum(p.numel() for p in static_twin(model).parameters()) == static
    assert len(dynamic_convs(model)) == len(convs) and model.classifier[0].in_features == 512 * 49


# The ODConv README's "Madds" of the static baselines (224x224). The MAC counter reproduces them
# exactly; the ResNet-50/101 baselines there are the stride-on-the-1x1 ResNets (v1): with the
# stride on the 3x3, as in the official OD-ResNet code and torchvision, they are 4.089G / 7.801G.
@pytest.mark.parametrize("name,paper_mmacs,stride_on_1x1", [
    ("od_mobilenetv2_100", 300.8, False), ("od_mobilenetv2_075", 209.1, False), ("od_mobilenetv2_050", 97.1, False),
    ("od_resnet18", 1814.0, False), ("od_resnet50", 3858.0, True), ("od_resnet101", 7570.0, True),
])
def test_static_macs_equal_the_odconv_readme_baselines(name, paper_mmacs, stride_on_1x1):
    from odexport.analysis import analyse_model

    with torch.device("meta"):
        twin = static_twin(create_model(name))
    if stride_on_1x1:
        for stage in (twin.layer2, twin.layer3, twin.layer4):
            stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    macs = analyse_model(twin, (3, 224, 224)).macs_dict()["total"] / 1e6
    assert round(macs, 1 if paper_mmacs < 1000 else 0) == paper_mmacs
