"""The registry: names, infos, errors."""

from __future__ import annotations

import pytest
import torch

from odexport.errors import ArchitectureError, InputError
from odexport.layers import DyConv2d, ODConv2d, dynamic_convs
from odexport.models import ModelInfo, create_model, list_models, model_info, register_model

ISSUE_NAMES = [
    "od_resnet18", "od_resnet34", "od_resnet50", "od_resnet101",
    "od_mobilenetv2_050", "od_mobilenetv2_075", "od_mobilenetv2_100",
    "dy_resnet18", "dy_resnet34", "dy_resnet50",
    "ta_resnet10", "ta_resnet18", "ta_mobilenetv2",
    "dy_mobilenetv2_100", "dy_mobilenetv2_075", "dy_mobilenetv2_050", "dy_mobilenetv2_035",
    "dy_mobilenetv3_small", "dy_resnet10_paper", "dy_resnet18_paper",
]
# the rest of the reference code's builders (formats.md B.1: ResNet 18 to 152, ResNeXt, Wide-ResNet,
# VGG 11 to 19; A.5: the mmdet backbone's depth 152)
REFERENCE_NAMES = [
    "od_resnet152", "dy_resnet101", "dy_resnet152", "dy_resnext50_32x4d", "dy_resnext101_32x8d",
    "dy_wide_resnet50_2", "dy_wide_resnet101_2",
    "dy_vgg11", "dy_vgg11_bn", "dy_vgg13", "dy_vgg13_bn", "dy_vgg16", "dy_vgg16_bn", "dy_vgg19", "dy_vgg19_bn",
    "ta_mobilenetv3_small", "ta_mobilenetv3_large",  # B.2: "Also MobileNetV3"
]
TINY_NAMES = ["od_resnet_tiny", "od_mobilenetv2_tiny", "dy_resnet_tiny", "ta_resnet_tiny", "dy_mobilenetv2_tiny", "dy_vgg_tiny"]


def test_every_required_architecture_is_registered():
    assert set(ISSUE_NAMES + REFERENCE_NAMES + TINY_NAMES) == set(list_models())
    assert list_models(tiny=True) == sorted(TINY_NAMES)


def test_list_models_filters():
    assert list_models("od_*") == sorted(n for n in ISSUE_NAMES + REFERENCE_NAMES + TINY_NAMES if n.startswith("od_"))
    assert list_models("nothing_like_this*") == []
    assert set(list_models(layout="tardelean")) == {"ta_resnet10", "ta_resnet18", "ta_mobilenetv2", "ta_resnet_tiny",
                                                     "ta_mobilenetv3_small", "ta_mobilenetv3_large"}
    assert list_models() == sorted(list_models())


def test_model_info_fields():
    info = model_info("od_resnet18")
    assert isinstance(info, ModelInfo)
    assert (info.name, info.family, info.layout, info.tiny) == ("od_resnet18", "od_resnet", "odconv", False)
    assert dict(info.default_kwargs) == {"num_classes": 1000, "dropout": 0.1, "reduction": 0.0625, "kernel_num": 1}
    assert info.input_shape == (3, 224, 224) and info.num_classes == 1000 and info.output == "logits"
    assert info.description
    with pytest.raises(TypeError):
        info.default_kwargs["kernel_num"] = 4  # read-only: the registry's defaults cannot be edited by accident

    assert model_info("ta_resnet10").output == "log_softmax"
    assert model_info("ta_resnet10").input_shape == (3, 64, 64)  # Tiny-ImageNet, as the refdata input
    assert model_info("dy_resnet18").layout == "kaijieshi7"
    assert model_info("dy_mobilenetv2_100").layout == "odexport"


@pytest.mark.parametrize("name", sorted(set(ISSUE_NAMES + REFERENCE_NAMES + TINY_NAMES)))
def test_infos_are_consistent(name):
    info = model_info(name)
    assert info.layout in ("odconv", "kaijieshi7", "tardelean", "odexport")
    assert info.tiny == name.endswith("_tiny")
    assert "kernel_num" in info.default_kwargs and "num_classes" in info.default_kwargs
    assert len(info.input_shape) == 3 and info.input_shape[0] == 3
    if info.tiny:
        assert info.num_classes == 10 and info.default_kwargs["kernel_num"] == 4 and info.input_shape == (3, 32, 32)


def test_unknown_name_names_close_matches():
    with pytest.raises(ArchitectureError) as err:
        create_model("od_resnet_18")
    message = str(err.value)
    assert "od_resnet_18" in message and "od_resnet18" in message
    assert "\n" not in message and isinstance(err.value, InputError) and err.value.exit_code == 1
    with pytest.raises(ArchitectureError, match="dy_resnet10_paper"):
        model_info("dy_resnet10")


def test_unknown_name_without_close_match_lists_known_ones():
    with pytest.raises(ArchitectureError) as err:
        create_model("zzzz")
    assert "known architectures" in str(err.value) and "od_resnet18" in str(err.value)


def test_unknown_option_is_refused_with_valid_ones():
    with pytest.raises(ArchitectureError) as err:
        create_model("od_resnet_tiny", kernel_nums=2)
    message = str(err.value)
    assert "kernel_nums" in message and "kernel_num" in message and "valid options" in message


def test_options_reach_the_model():
    model = create_model("od_resnet_tiny", num_classes=7, kernel_num=2)
    assert model.fc.out_features == 7
    assert {m.kernel_num for _, m in dynamic_convs(model)} == {2}


def test_temperature_is_one_unless_asked():
    for name in TINY_NAMES:
        assert {m.temperature for _, m in dynamic_convs(create_model(name))} == {1.0}
    hot = create_model("dy_resnet_tiny", temperature=34)
    assert {m.temperature for _, m in dynamic_convs(hot)} == {34.0}


@pytest.mark.parametrize("name", TINY_NAMES)
def test_dynamic_layers_are_odexport_layers(name):
    model = create_model(name)
    expected = ODConv2d if model_info(name).layout == "odconv" else DyConv2d
    layers = dynamic_convs(model)
    assert layers and all(isinstance(m, expected) for _, m in layers)


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as it is, restored after the test (tests may register throw-away models)."""
    from odexport.models import _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    return _registry


def test_register_model_records_builder_defaults(scratch_registry):
    @register_model(family="toy", layout="odexport", input_shape=(3, 8, 8))
    def toy_net(num_classes: int = 3, kernel_num: int = 2):
        """A toy network.

        More text that is not the description."""
        return torch.nn.Linear(kernel_num, num_classes)

    info = model_info("toy_net")
    assert dict(info.default_kwargs) == {"num_classes": 3, "kernel_num": 2}
    assert info.description == "A toy network." and info.input_shape == (3, 8, 8)
    assert create_model("toy_net", num_classes=5).out_features == 5
    assert "toy_net" in list_models("toy*")


def test_registering_a_name_twice_is_a_bug(scratch_registry):
    def twice():
        return None

    register_model(family="x", layout="odconv")(twice)
    with pytest.raises(ValueError, match="twice"):
        register_model(family="x", layout="odconv")(twice)


def test_bad_layout_is_refused_at_registration():
    with pytest.raises(ValueError, match="layout"):
        register_model(family="x", layout="keras")


def test_models_build_on_the_meta_device():
    with torch.device("meta"):
        model = create_model("od_resnet101", kernel_num=2)
    assert next(model.parameters()).device.type == "meta"
