"""Layout, architecture and options are detected from key names and shapes; misfits are named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from odexport.checkpoint import load_checkpoint
from odexport.errors import ArchitectureError, CheckpointError
from odexport.layers import DyConv2d, dynamic_convs
from odexport.models import create_model, list_models, model_info

TOL = dict(atol=1e-5, rtol=1e-5)
TINY = ["od_resnet_tiny", "od_mobilenetv2_tiny", "dy_resnet_tiny", "ta_resnet_tiny", "dy_mobilenetv2_tiny", "dy_vgg_tiny"]


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every BatchNorm and bias away from its init value, so a loader that drops one fails."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=g))
            elif name.endswith(("bias", "running_mean")) or ".bn" in name or name.endswith(".weight") and tensor.dim() == 1:
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=g))
    return model.eval()


def _save(model: nn.Module, path, *, prefix: str = "", wrap: str | None = None):
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    torch.save(state if wrap is None else {wrap: state, "epoch": 1}, path)
    return path


def _same_outputs(expected_model, loaded_model, shape):
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded_model(x), expected_model(x), **TOL)
        torch.testing.assert_close(loaded_model(x[:1]), expected_model(x[:1]), **TOL)


def test_every_tiny_variant_is_registered():
    assert set(TINY) <= set(list_models(tiny=True))


@pytest.mark.parametrize("name,num_classes", [
    ("od_resnet152", 1000), ("dy_resnet101", 1000), ("dy_resnet152", 1000), ("dy_resnext50_32x4d", 1000),
    ("dy_resnext101_32x8d", 100), ("dy_wide_resnet50_2", 1000), ("dy_wide_resnet101_2", 1000),
    ("dy_vgg11", 10), ("dy_vgg13_bn", 1000), ("dy_vgg16", 100), ("dy_vgg16_bn", 10), ("dy_vgg19_bn", 1000),
])
def test_deep_and_wide_reference_architectures_are_told_apart(name, num_classes):
    # shapes only (meta device): ResNeXt / Wide-ResNet / ResNet-50 share their keys, VGG-16 and
    # VGG-16-BN differ by BN keys; the reference main.py trains on CIFAR (10 or 100 classes)
    from odexport.checkpoint.detect import detect_architecture

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in create_model(name, num_classes=num_classes).state_dict().items()}
    detection = detect_architecture(shapes)
    assert detection.arch == name and detection.model_kwargs.get("num_classes", 1000) == num_classes


@pytest.mark.parametrize("name", TINY)
def test_tiny_zoo_checkpoint_is_detected_and_reproduces(tmp_path, name):
    model = _trained_like(create_model(name))
    path = _save(model, tmp_path / f"{name}.pth.tar", prefix="module.", wrap="state_dict")
    loaded = load_checkpoint(path)
    info = loaded.info
    assert info.arch == name and info.layout == model_info(name).layout
    assert info.extras["detected"] and info.extras["conformed_layers"] == []
    assert info.temperature == 1.0 and info.input_shape == model_info(name).input_shape
    assert not loaded.model.training
    _same_outputs(model, loaded.model, info.input_shape)


def test_options_read_from_the_file(tmp_path):
    model = _trained_like(create_model("od_resnet_tiny", kernel_num=2, num_classes=7))
    loaded = load_checkpoint(_save(model, tmp_path / "k2.pt"))
    assert loaded.info.arch == "od_resnet_tiny"
    assert loaded.info.model_kwargs == {"kernel_num": 2, "num_classes": 7}
    assert loaded.info.num_classes == 7
    _same_outputs(model, loaded.model, (3, 32, 32))


def test_attention_reduction_is_searched(tmp_path):
    model = _trained_like(create_model("od_mobilenetv2_tiny", reduction=0.5))
    loaded = load_checkpoint(_save(model, tmp_path / "r05.pt"))
    assert loaded.info.arch == "od_mobilenetv2_tiny"
    assert loaded.info.model_kwargs.get("reduction") == 0.5 and loaded.info.extras["conformed_layers"] == []
    _same_outputs(model, loaded.model, (3, 32, 32))


def test_width_multiplier_prefers_the_variant_with_fewest_changes(tmp_path):
    model = _trained_like(create_model("ta_resnet_tiny", width_multiplier=0.25))
    loaded = load_checkpoint(_save(model, tmp_path / "w025.pth", wrap="model"))
    assert loaded.info.arch == "ta_resnet_tiny"
    assert loaded.info.model_kwargs["width_multiplier"] == 0.25
    _same_outputs(model, loaded.model, (3, 32, 32))


def test_dynamic_bias_option_is_detected(tmp_path):
    model = _trained_like(create_model("dy_mobilenetv2_tiny", dynamic_bias=False))
    loaded = load_checkpoint(_save(model, tmp_path / "nobias.pt"))
    assert loaded.info.arch == "dy_mobilenetv2_tiny" and loaded.info.model_kwargs.get("dynamic_bias") is False
    _same_outputs(model, loaded.model, (3, 32, 32))


def _as_old_kaijieshi7(model: nn.Module) -> nn.Module:
    """Checkpoints from before 2020-10 (kaijieshi7 1d4014f/9ac7913): no fc2 bias, hidden int(in*ratio)."""
    for name, layer in list(dynamic_convs(model)):
        hidden = max(1, int(layer.in_channels * 0.25)) if layer.in_channels != 3 else layer.num_kernels
        old = DyConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                       layer.groups, bias=layer.bias is not None, num_kernels=layer.num_kernels, hidden_channels=hidden,
                       fc1_bias=False, fc2_bias=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, old)
    return model


# the VGG's first attention sees 3 channels; the MobileNetV2's layers have a dynamic bias
@pytest.mark.parametrize("name", ["dy_resnet_tiny", "dy_vgg_tiny", "dy_mobilenetv2_tiny"])
def test_old_kaijieshi7_checkpoint_is_conformed_to_its_shapes(tmp_path, name):
    model = _trained_like(_as_old_kaijieshi7(create_model(name)), seed=3)
    assert not any(k.endswith("fc2.bias") for k in model.state_dict())
    loaded = load_checkpoint(_save(model, tmp_path / "old.pth"))
    assert loaded.info.arch == name
    conformed = loaded.info.extras["conformed_layers"]
    assert len(conformed) == len(dynamic_convs(model))
    assert all(layer.attention.fc2.bias is None for _, layer in dynamic_convs(loaded.model))
    assert [layer.bias is None for _, layer in dynamic_convs(loaded.model)] == [layer.bias is None for _, layer in dynamic_convs(model)]
    _same_outputs(model, loaded.model, (3, 32, 32))


def test_per_layer_kernel_count_is_read_from_the_file(tmp_path):
    """TArdelean accepts an iterable nof_kernels: one K per layer."""
    model = create_model("ta_resnet_tiny")
    name, layer = dynamic_convs(model)[3]
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, DyConv2d.from_tardelean_args(2, 4, layer.in_channels, layer.out_channels,
                                                                                 layer.kernel_size, layer.stride, layer.padding, bias=False))
    model = _trained_like(model)
    loaded = load_checkpoint(_save(model, tmp_path / "perlayer.pth", wrap="model"))
    assert loaded.info.arch == "ta_resnet_tiny" and loaded.info.extras["conformed_layers"] == [name]
    assert loaded.model.get_submodule(name).num_kernels == 2
    # the options line gives one K; the note says that a layer differs from it
    total = len(dynamic_convs(model))
    assert any(w.startswith(f"1 of {total} dynamic layers ({name}) take their attention shapes from the file") for w in loaded.info.warnings)
    _same_outputs(model, loaded.model, (3, 32, 32))


def test_safetensors_checkpoint_is_detected(tmp_path):
    from safetensors.torch import save_file

    model = _trained_like(create_model("dy_resnet_tiny"))
    path = tmp_path / "dy.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_checkpoint(path)
    assert loaded.info.arch == "dy_resnet_tiny" and loaded.info.extras["file_format"] == "safetensors"
    _same_outputs(model, loaded.model, (3, 32, 32))


def test_temperature_is_explicit(tmp_path):
    model = _trained_like(create_model("dy_resnet_tiny"))
    path = _save(model, tmp_path / "t.pt")
    loaded = load_checkpoint(path, temperature=3.0)
    assert loaded.info.temperature == 3.0
    assert {layer.temperature for _, layer in dynamic_convs(loaded.model)} == {3.0}
    for _, layer in dynamic_convs(model):
        layer.temperature = 3.0
    _same_outputs(model, loaded.model, (3, 32, 32))
    with pytest.raises(Exception, match="positive"):
        load_checkpoint(path, temperature=0)


def test_explicit_arch(tmp_path):
    model = _trained_like(create_model("od_resnet_tiny"))
    path = _save(model, tmp_path / "a.pt")
    loaded = load_checkpoint(path, arch="od_resnet_tiny")
    assert loaded.info.arch == "od_resnet_tiny" and loaded.info.extras["detected"] is False


def test_wrong_arch_names_the_first_mismatching_key_and_both_shapes(tmp_path):
    path = _save(_trained_like(create_model("od_mobilenetv2_tiny", num_classes=10)), tmp_path / "m.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, arch="od_mobilenetv2_050")
    message = str(info.value)
    assert "\n" not in message and "od_mobilenetv2_050" in message
    assert "'features.0.0.weight' has shape (32, 3, 3, 3) in the file but (16, 3, 3, 3)" in message


def test_wrong_kernel_num_is_reported(tmp_path):
    path = _save(create_model("od_resnet_tiny", kernel_num=4), tmp_path / "k4.pt")
    with pytest.raises(CheckpointError, match="K=4"):
        load_checkpoint(path, kernel_num=2)


def test_undetectable_checkpoint_lists_the_closest_architectures(tmp_path):
    state = create_model("od_resnet_tiny").state_dict()
    state = {k.replace("layer4.", "layer5."): v for k, v in state.items()}  # a deeper, unknown network
    path = tmp_path / "unknown.pt"
    torch.save(state, path)
    with pytest.raises(ArchitectureError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "closest" in message and "od_resnet_tiny" in message
    assert "--arch" in message and "--factory" in message


def test_checkpoint_without_dynamic_layers(tmp_path):
    path = tmp_path / "static.pt"
    torch.save(nn.Conv2d(3, 8, 3).state_dict(), path)
    with pytest.raises(ArchitectureError, match="no dynamic-convolution layers"):
        load_checkpoint(path)


class _FlatExperts(nn.Module):
    """timm's CondConv2d parameter layout: E expert kernels flattened to (E, O*C/g*kh*kw)."""

    def __init__(self, experts, out_channels, in_per_group, k):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, out_channels * in_per_group * k * k))


class _CondConvResidual(nn.Module):
    """The key layout of timm's CondConvResidual (docs: ../shared/design/formats.md B.3)."""

    def __init__(self, c_in=8, c_mid=24, c_out=8, experts=4):
        super().__init__()
        self.conv_pw, self.bn1 = _FlatExperts(experts, c_mid, c_in, 1), nn.BatchNorm2d(c_mid)
        self.conv_dw, self.bn2 = _FlatExperts(experts, c_mid, 1, 3), nn.BatchNorm2d(c_mid)
        self.conv_pwl, self.bn3 = _FlatExperts(experts, c_out, c_mid, 1), nn.BatchNorm2d(c_out)
        self.routing_fn = nn.Linear(c_in, experts)


def test_timm_condconv_checkpoint_is_named_not_called_static(tmp_path):
    from typer.testing import CliRunner

    from odexport.cli.app import app

    model = nn.Module()
    model.conv_stem, model.bn1 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
    model.blocks = nn.Sequential(nn.Sequential(_CondConvResidual()), nn.Sequential(_CondConvResidual()))
    path = tmp_path / "tf_efficientnet_cc.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ArchitectureError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "timm CondConv" in message and "2 blocks route 4 experts" in message
    assert "'blocks.0.0.routing_fn.weight' (4, 8)" in message and "'blocks.0.0.conv_pw.weight' (4, 192)" in message
    assert "no dynamic-convolution layers" not in message and "\n" not in message
    result = CliRunner().invoke(app, ["onnx", str(path), "-o", str(tmp_path / "cc.onnx"), "--quiet"])
    assert result.exit_code == 1 and "CondConv is not supported yet" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "cc.onnx").exists()


def test_tardelean_deeplab_checkpoint_is_named(tmp_path):
    """TArdelean's DY-DeepLabV3+ (``backbone`` / ``aspp`` / ``decoder``, formats.md B.2) is not a
    registered architecture: the error says what the file is and how to load it anyway."""
    from tests.convert.standins import DynamicConvolution

    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.features = nn.Sequential(nn.Conv2d(3, 8, 3), DynamicConvolution(4, 4, 8, 8, 3, bias=False))
    model.aspp = nn.Module()
    model.aspp.aspp1 = DynamicConvolution(4, 4, 8, 16, 1, bias=False)
    model.decoder = nn.Module()
    model.decoder.last_conv = nn.Sequential(DynamicConvolution(4, 4, 16, 16, 3, bias=False), nn.Conv2d(16, 21, 1))
    path = tmp_path / "dy_deeplabv3plus_50.pth"
    torch.save({"model": model.state_dict(), "epoch": 50}, path)
    with pytest.raises(ArchitectureError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "TArdelean DY-DeepLabV3+ segmentation checkpoint (3 dynamic layers" in message
    assert "--factory module:function" in message and "\n" not in message


def _tardelean_backbone():
    """A TArdelean ResNet and its weights under ``backbone.``, as a segmentation file holds them."""
    torch.manual_seed(0)
    model = create_model("ta_resnet_tiny").eval()
    return model, {f"backbone.{k}": v for k, v in model.state_dict().items()}


def test_a_decoder_without_an_aspp_head_is_not_called_deeplab(tmp_path):
    """Only ``aspp.`` beside ``decoder.`` is TArdelean's DeepLabV3+; a backbone with some other
    decoder entry is a composite checkpoint whose backbone loads, the decoder's keys named."""
    expected, state = _tardelean_backbone()
    state["decoder.conv.weight"] = torch.zeros(4, 8, 1, 1)
    torch.save(state, path := tmp_path / "with_decoder.pth")
    loaded = load_checkpoint(path)
    assert loaded.info.arch == "ta_resnet_tiny"
    assert [w for w in loaded.info.warnings if "loaded the backbone" in w and "ignored 1 key of decoder" in w]
    _same_outputs(expected, loaded.model, loaded.info.input_shape)


def test_arch_loads_the_backbone_of_a_deeplab_checkpoint(tmp_path):
    """The DeepLab refusal is for the search; ``--arch`` names what to load from the backbone."""
    expected, state = _tardelean_backbone()
    state["aspp.aspp1.kernels_weights"] = torch.zeros(4, 16, 8, 1, 1)
    state["decoder.last_conv.weight"] = torch.zeros(21, 16, 1, 1)
    torch.save(state, path := tmp_path / "deeplab.pth")
    with pytest.raises(ArchitectureError, match="DeepLabV3"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, arch="ta_resnet_tiny")
    assert loaded.info.arch == "ta_resnet_tiny"
    _same_outputs(expected, loaded.model, loaded.info.input_shape)


def test_odconv_with_one_kernel_is_detected(tmp_path):
    """K=1 ODConv layers have no kernel-attention head (no ``attention.kernel_fc``): the file is still
    the architecture, at kernel_num 1."""
    torch.manual_seed(0)
    expected = _trained_like(create_model("od_resnet_tiny", kernel_num=1))
    assert not [k for k in expected.state_dict() if "kernel_fc" in k]
    loaded = load_checkpoint(_save(expected, tmp_path / "k1.pth"))
    assert loaded.info.arch == "od_resnet_tiny" and loaded.info.model_kwargs.get("kernel_num") == 1
    _same_outputs(expected, loaded.model, loaded.info.input_shape)


def test_a_file_with_plain_and_ema_weights_says_which_were_used(tmp_path):
    torch.manual_seed(0)
    plain, ema = _trained_like(create_model("od_resnet_tiny"), seed=1), _trained_like(create_model("od_resnet_tiny"), seed=2)
    torch.save({"state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict()}, path := tmp_path / "both.pth")
    loaded = load_checkpoint(path)
    assert [w for w in loaded.info.warnings if "also holds EMA weights ('state_dict_ema')" in w and "--ema" in w]
    _same_outputs(plain, loaded.model, loaded.info.input_shape)
    chosen = load_checkpoint(path, prefer_ema=True)
    assert not [w for w in chosen.info.warnings if "EMA" in w]
    _same_outputs(ema, chosen.model, chosen.info.input_shape)


def test_a_missing_file_named_by_its_suffix_alone_is_called_missing(tmp_path, monkeypatch):
    """``odexport onnx best.pth`` in a directory without it: the missing file, not an unknown
    architecture named "best.pth"."""
    from odexport.checkpoint.loader import load_model

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("best.pth")


@pytest.mark.parametrize("arch, classes, shape, dataset", [
    ("dy_resnet18", 10, (3, 32, 32), "CIFAR-10"),
    ("dy_vgg11", 100, (3, 32, 32), "CIFAR-100"),
    ("dy_resnet18", 1000, (3, 224, 224), None),
])
def test_kaijieshi7_default_input_follows_the_reference_training_script(arch, classes, shape, dataset, tmp_path):
    """The reference's main.py trains dy_resnet18 / dy_vgg11 on CIFAR-10/100 only (32x32 crops): a
    file with 10 or 100 classes defaults to 32x32 and a load note says why; other counts keep 224x224.
    K=1 keeps the files small; the layout is the same."""
    torch.manual_seed(0)
    expected = create_model(arch, num_classes=classes, kernel_num=1).eval()
    loaded = load_checkpoint(path := _save(expected, tmp_path / "model.pth"))
    assert loaded.info.arch == arch and loaded.info.num_classes == classes
    assert loaded.info.input_shape == shape
    notes = [w for w in loaded.info.warnings if "--input-shape" in w]
    assert (len(notes) == 1 and dataset in notes[0]) if dataset else not notes
    _same_outputs(expected, loaded.model, shape)
    if dataset:  # the commands that take --input-shape withdraw the note once it is given (it read as unheeded)
        from odexport.pipeline import inspect_checkpoint, model_input_shape

        assert model_input_shape(loaded.info, shape, purpose="the export") == shape  # the default passed on: kept
        assert [w for w in loaded.info.warnings if "--input-shape" in w]
        assert model_input_shape(loaded.info, (3, 64, 64), purpose="the export") == (3, 64, 64)
        assert not [w for w in loaded.info.warnings if "--input-shape" in w]
        summary, _ = inspect_checkpoint(path, input_shape=(3, 64, 64))
        assert not [n for n in summary["notes"] if "--input-shape" in n] and "default_input_note" not in summary["extras"]


@pytest.mark.parametrize("with_bn", [True, False], ids=["attention_bn", "no_attention_bn"])
def test_an_odconv_layer_is_rebuilt_to_the_files_shapes(with_bn):
    """K and the hidden width come from the file (other reductions, per-layer K), and the attention
    BatchNorm exists exactly when the file has its keys (OSVAI/ODConv#5 variants drop it)."""
    from odexport.checkpoint.conform import conform_dynamic_layers
    from odexport.layers import ODConv2d

    torch.manual_seed(0)
    trained = nn.Sequential(ODConv2d(8, 16, 3, padding=1, kernel_num=2, attention_channels=24, temperature=3.0)).eval()
    if not with_bn:
        trained[0].attention.bn = None
    state = trained.state_dict()
    model = nn.Sequential(ODConv2d(8, 16, 3, padding=1, kernel_num=4, temperature=3.0)).eval()
    assert conform_dynamic_layers(model, {k: tuple(v.shape) for k, v in state.items()}, ["0"]) == ["0"]
    model.load_state_dict(state)  # strict: every key and shape of the file, no more
    assert model[0].kernel_num == 2 and model[0].temperature == 3.0 and (model[0].attention.bn is None) == (not with_bn)
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), atol=0, rtol=0)
