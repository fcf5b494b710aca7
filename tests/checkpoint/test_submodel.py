"""Detection checkpoints (mmdet, as OSVAI/ODConv's object_detection code saves them): the backbone is loaded;
and Lightning checkpoints, whose keys all sit under the module's attribute (``model.``).

Each test saves a real file with ``torch.save`` in the mmdet layout -- ``{'meta', 'state_dict'}``
with ``backbone.``/``neck.``/``rpn_head.``/``roi_head.`` keys -- and compares the loaded model with
the same network built here with the same weights.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from odexport.checkpoint import load_checkpoint
from odexport.cli.app import app
from odexport.errors import ArchitectureError, CheckpointError
from odexport.models import create_model

ARCH = "od_resnet_tiny"
SHAPE = (3, 32, 32)
DETECTOR_PARTS = {  # a few keys of each part of a Faster R-CNN with FPN (shapes do not matter to the loader)
    "neck": {"neck.lateral_convs.0.conv.weight": (16, 8, 1, 1), "neck.fpn_convs.0.conv.weight": (16, 16, 3, 3)},
    "rpn_head": {"rpn_head.rpn_conv.weight": (16, 16, 3, 3), "rpn_head.rpn_cls.weight": (3, 16, 1, 1)},
    "roi_head": {"roi_head.bbox_head.fc_cls.weight": (81, 64), "roi_head.bbox_head.fc_cls.bias": (81,),
                 "roi_head.bbox_head.fc_reg.weight": (320, 64)},
}


def _random_weights(model: nn.Module, seed: int) -> nn.Module:
    """Every weight and BatchNorm statistic drawn at random (test_detect's `_trained_like` only
    perturbs BatchNorms and biases): two backbones of one file differ everywhere, so a part loaded
    wrongly shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=g))
            else:
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=g))
    return model.eval()


def _backbone(seed: int = 0, **kwargs) -> nn.Module:
    return _random_weights(create_model(ARCH, **kwargs), seed)


def _detector_state(backbone: nn.Module, prefix: str = "backbone.", drop: tuple[str, ...] = ()) -> dict:
    state = {f"{prefix}{k}": v for k, v in backbone.state_dict().items() if not k.startswith(drop)}
    for part in DETECTOR_PARTS.values():
        state.update({k: torch.zeros(shape) for k, shape in part.items()})
    return state


def _save_mmdet(path, state: dict, wrap: str = ""):
    torch.save({"meta": {"epoch": 12, "mmdet_version": "2.11.0", "CLASSES": ["person", "car"]},
                "state_dict": {f"{wrap}{k}": v for k, v in state.items()}}, path)
    return path


def _assert_same_outputs(reference: nn.Module, loaded: nn.Module):
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wrap", ["", "module."])
def test_mmdet_checkpoint_loads_its_backbone_and_names_what_was_ignored(tmp_path, wrap):
    backbone = _backbone()
    path = _save_mmdet(tmp_path / "det.pth", _detector_state(backbone), wrap=wrap)
    loaded = load_checkpoint(path)
    info = loaded.info
    assert info.arch == ARCH and info.layout == "odconv" and info.num_classes == 10
    assert not loaded.model.training
    _assert_same_outputs(backbone, loaded.model)

    num_keys = len(backbone.state_dict())
    assert info.extras["submodel"] == {
        "prefix": "backbone.", "kind": "detection checkpoint (mmdet 2.11.0)", "num_keys": num_keys,
        "ignored": {"neck": 2, "rpn_head": 2, "roi_head": 3}, "explicit": False,
    }
    assert info.extras["stripped_prefixes"] == (["module."] if wrap else [])
    report, classifier = info.warnings[:2]
    assert report == (f"detection checkpoint (mmdet 2.11.0): loaded the backbone ({num_keys} keys under 'backbone.'); "
                      "ignored 7 keys of neck, rpn_head, roi_head (not part of the exported backbone)")
    assert "classifier 'fc'" in classifier and "not meaningful" in classifier


def _prefixed(prefix: str, **parts) -> dict:
    """The tiny backbone's keys under ``prefix`` plus one key per named extra part."""
    state = {f"{prefix}{k}": v for k, v in create_model(ARCH).state_dict().items()}
    state.update({f"{part}.w.weight": torch.zeros(2) for part in parts})
    return state


def test_what_a_composite_file_is_comes_from_its_parts_and_its_meta():
    """mmcv writes ``mmcv_version`` beside the tool's own version: the tool names the file. Without
    meta a detector's heads and a segmentor's decode head say what it is, and the classifier note
    names whose features these are. A ``*_backbone`` (mmdet3d's ``img_backbone``) is a backbone;
    a part inside another (``teacher.neck``) is named by its full path."""
    from odexport.checkpoint.submodel import classifier_warning, find_submodel

    state = _prefixed("backbone.", neck=1)
    part = find_submodel(state, meta={"mmcv_version": "1.3.8", "mmdet_version": "2.11.0", "epoch": 12})
    assert part.kind == "detection checkpoint (mmdet 2.11.0)"
    detector = find_submodel(_prefixed("backbone.", rpn_head=1))
    assert detector.kind == "detection checkpoint"
    assert "features are the detector's" in classifier_warning(detector, "fc.weight")
    segmentor = find_submodel(_prefixed("backbone.", decode_head=1))
    assert segmentor.kind == "segmentation checkpoint"
    note = classifier_warning(segmentor, "fc.weight")
    assert note.startswith("a segmentor neither runs") and "features are the segmentor's" in note and "detector" not in note
    assert classifier_warning(find_submodel(_prefixed("backbone.", other_part=1)), "fc.weight") is None  # no head: no note
    image = find_submodel(_prefixed("img_backbone.", pts_neck=1))
    assert (image.prefix, image.ignored) == ("img_backbone.", {"pts_neck": 1})
    nested = find_submodel({**_prefixed("teacher.backbone."), "teacher.neck.l.weight": torch.zeros(2),
                            "student.x.weight": torch.zeros(2)})
    assert (nested.prefix, nested.ignored) == ("teacher.backbone.", {"teacher.neck": 1, "student": 1})


def test_many_ignored_parts_are_summed_up_and_a_dot_keeps_the_whole_file():
    from odexport.checkpoint.submodel import find_submodel

    many = find_submodel(_prefixed("backbone.", **{f"p{i}": 1 for i in range(8)}))
    assert "ignored 8 keys of p0, p1, p2, p3, p4, p5 and 2 more parts (" in many.sentence()
    assert find_submodel(_prefixed("backbone."), submodel=".") is None  # "." as "": the whole file


def test_keys_without_a_prefix_have_no_sole_prefix_and_a_wrong_submodel_names_the_largest_part():
    from odexport.checkpoint.submodel import find_submodel, sole_prefix

    assert sole_prefix({"weight": torch.zeros(2, 3, 3, 3), "bias": torch.zeros(2)}) is None
    with pytest.raises(CheckpointError) as info:
        find_submodel({"aux.w": torch.zeros(1), **_prefixed("model.")}, submodel="backbone")
    assert "--submodel model" in info.value.hint


def test_arch_names_the_backbone_architecture(tmp_path):
    backbone = _backbone(kernel_num=2, num_classes=5)
    path = _save_mmdet(tmp_path / "det.pth", _detector_state(backbone))
    loaded = load_checkpoint(path, arch=ARCH)
    assert loaded.info.arch == ARCH and loaded.info.model_kwargs == {"kernel_num": 2, "num_classes": 5}
    _assert_same_outputs(backbone, loaded.model)


def test_mmcv_ema_buffers_are_reported_as_one_part(tmp_path):
    backbone = _backbone()
    state = _detector_state(backbone)
    # mmcv's EMAHook keeps its averages as top-level buffers with the dots replaced by '_'
    state.update({f"ema_backbone_{k.replace('.', '_')}": v + 1 for k, v in backbone.state_dict().items()})
    loaded = load_checkpoint(_save_mmdet(tmp_path / "ema.pth", state))
    assert loaded.info.extras["submodel"]["ignored"]["ema_* (EMA buffers)"] == len(backbone.state_dict())
    _assert_same_outputs(backbone, loaded.model)


def test_a_backbone_without_its_classifier_is_one_clear_error(tmp_path):
    path = _save_mmdet(tmp_path / "headless.pth", _detector_state(_backbone(), drop=("fc.",)))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the backbone under 'backbone.' of this detection checkpoint (mmdet 2.11.0) has no classifier")
    assert f"no 'fc.*' keys; otherwise the weights fit {ARCH}" in message and "--factory" in message
    with pytest.raises(CheckpointError, match="has no classifier"):
        load_checkpoint(path, arch=ARCH)

    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "has no classifier" in result.output
    assert isinstance(result.exception, SystemExit)


def build_headless_tiny() -> nn.Module:
    """--factory for the headless backbone: od_resnet_tiny without its classifier (pooled features out)."""
    model = create_model(ARCH)
    model.fc = nn.Identity()
    return model


def test_factory_loads_a_headless_backbone(tmp_path):
    backbone = _backbone()
    path = _save_mmdet(tmp_path / "headless.pth", _detector_state(backbone, drop=("fc.",)))
    loaded = load_checkpoint(path, factory=f"{__name__}:build_headless_tiny")
    assert loaded.info.extras["submodel"]["prefix"] == "backbone."
    backbone.fc = nn.Identity()
    _assert_same_outputs(backbone, loaded.model)


class _Composite(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = create_model(ARCH)

    def forward(self, x):
        return self.backbone(x)


def build_composite() -> nn.Module:
    return _Composite()


def test_factory_model_that_owns_the_backbone_prefix_loads_the_whole_file(tmp_path):
    backbone = _backbone()
    path = tmp_path / "whole.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, path)
    loaded = load_checkpoint(path, factory=f"{__name__}:build_composite")
    assert "submodel" not in loaded.info.extras
    _assert_same_outputs(backbone, loaded.model)


def test_two_backbones_are_ambiguous_until_one_is_named(tmp_path):
    student, teacher = _backbone(seed=0), _backbone(seed=1)
    state = {**_detector_state(student, prefix="student.backbone."), **_detector_state(teacher, prefix="teacher.backbone.")}
    path = _save_mmdet(tmp_path / "distill.pth", state)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message
    assert "2 sub-models with dynamic-convolution layers ('student.backbone.', 'teacher.backbone.')" in message
    assert "submodel='student.backbone'" in message and "--submodel student.backbone" in message

    loaded = load_checkpoint(path, submodel="teacher.backbone")
    assert loaded.info.extras["submodel"]["explicit"] is True
    assert loaded.info.extras["submodel"]["ignored"] == {"student": len(student.state_dict()), "neck": 2,
                                                         "rpn_head": 2, "roi_head": 3}
    _assert_same_outputs(teacher, loaded.model)

    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output and "sub-models" in result.output


def test_explicit_submodel_choices(tmp_path):
    backbone = _backbone()
    path = _save_mmdet(tmp_path / "det.pth", _detector_state(backbone))
    with pytest.raises(CheckpointError, match=r"no key of the checkpoint starts with 'bakbone\.' .*backbone, neck") as caught:
        load_checkpoint(path, submodel="bakbone")
    assert "e.g. --submodel backbone;" in caught.value.hint  # the part holding most of the keys, not a fixed name
    # submodel='' keeps the whole file: the detector's own keys then fit no architecture (as before this feature)
    with pytest.raises(ArchitectureError, match="unexpected in the file"):
        load_checkpoint(path, submodel="")
    _assert_same_outputs(backbone, load_checkpoint(path, submodel="backbone.").model)


def test_backbone_that_fits_nothing_says_which_part_was_tried(tmp_path):
    backbone = _backbone()
    state = _detector_state(backbone)
    state["backbone.layer9.0.conv1.weight"] = torch.zeros(8, 8, 3, 3)  # a stage no registered architecture has
    with pytest.raises(ArchitectureError) as caught:
        load_checkpoint(_save_mmdet(tmp_path / "odd.pth", state))
    assert str(caught.value).startswith("the backbone under 'backbone.' of this detection checkpoint (mmdet 2.11.0): "
                                        "no registered odconv architecture fits")


def test_plain_classification_checkpoints_are_not_taken_for_detectors(tmp_path):
    """od_mobilenetv2 keeps every dynamic layer under 'features.': that is not a sub-model prefix."""
    model = _random_weights(create_model("od_mobilenetv2_tiny"), seed=0)
    path = tmp_path / "cls.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    loaded = load_checkpoint(path)
    assert loaded.info.arch == "od_mobilenetv2_tiny" and "submodel" not in loaded.info.extras
    _assert_same_outputs(model, loaded.model)


def test_onnx_export_of_a_detection_checkpoint_says_it_exported_the_backbone(tmp_path):
    """`odexport onnx` is not silent about what loading chose: the notes are printed and in --json."""
    import json

    path = _save_mmdet(tmp_path / "det.pth", _detector_state(_backbone()))
    out = tmp_path / "det.onnx"
    shown = CliRunner().invoke(app, ["onnx", str(path), "-o", str(out), "--no-check"])
    assert shown.exit_code == 0, shown.output
    assert "note  detection checkpoint (mmdet 2.11.0): loaded the backbone" in shown.output
    assert "class scores" in shown.output
    data = CliRunner().invoke(app, ["onnx", str(path), "-o", str(out), "--no-check", "--json"])
    assert data.exit_code == 0, data.output
    notes = json.loads(data.stdout)["load_notes"]
    assert notes[0].startswith("detection checkpoint") and len(notes) == 2


def test_reparam_of_a_detection_checkpoint_says_it_took_the_backbone(tmp_path):
    path = _save_mmdet(tmp_path / "det.pth", _detector_state(_backbone()))
    shown = CliRunner().invoke(app, ["reparam", str(path), "-o", str(tmp_path / "deploy.pt")])
    assert shown.exit_code == 0, shown.output
    assert "note  detection checkpoint (mmdet 2.11.0): loaded the backbone" in shown.output


def test_submodel_option_picks_the_part_on_the_command_line(tmp_path):
    """`--submodel` (the fix the ambiguity error names) reaches every command that loads a checkpoint:
    the exported teacher runs like the teacher built here, and `check` gates it against the file."""
    import json

    import numpy as np
    import onnxruntime as ort

    student, teacher = _backbone(seed=0), _backbone(seed=1)
    state = {**_detector_state(student, prefix="student.backbone."), **_detector_state(teacher, prefix="teacher.backbone.")}
    path = _save_mmdet(tmp_path / "distill.pth", state)
    refused = CliRunner().invoke(app, ["onnx", str(path), "-o", str(tmp_path / "x.onnx"), "--no-check"])
    assert refused.exit_code == 1 and "--submodel student.backbone" in refused.output
    assert not (tmp_path / "x.onnx").exists()

    shown = CliRunner().invoke(app, ["inspect", str(path), "--submodel", "teacher.backbone", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["arch"] == ARCH

    out = tmp_path / "teacher.onnx"
    made = CliRunner().invoke(app, ["onnx", str(path), "--submodel", "teacher.backbone", "-o", str(out), "--no-check"])
    assert made.exit_code == 0, made.output
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        expected = teacher(x).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()

    np.save(tmp_path / "x.npy", x.numpy())
    ran = CliRunner().invoke(app, ["run", str(path), "--submodel", "teacher.backbone", "-i", str(tmp_path / "x.npy"),
                                   "-o", str(tmp_path / "y.npy")])
    assert ran.exit_code == 0 and "loaded the backbone (256 keys under 'teacher.backbone.')" in ran.output, ran.output
    assert np.abs(np.load(tmp_path / "y.npy") - expected).max() <= 1e-5 * np.abs(expected).max()

    gate = CliRunner().invoke(app, ["check", str(path), str(out), "--submodel", "teacher.backbone", "--samples", "2"])
    assert gate.exit_code == 0, gate.output
    assert "note  detection checkpoint (mmdet 2.11.0): loaded the backbone (256 keys under 'teacher.backbone.')" in gate.output
    data = CliRunner().invoke(app, ["check", str(path), str(out), "--submodel", "teacher.backbone", "--samples", "2", "--json"])
    assert data.exit_code == 0 and json.loads(data.stdout)["reference"]["load_notes"][0].startswith("detection checkpoint")
    wrong = CliRunner().invoke(app, ["check", str(path), str(out), "--submodel", "student.backbone", "--samples", "2"])
    assert wrong.exit_code == 2, wrong.output
    timed = CliRunner().invoke(app, ["bench", str(path), "--submodel", "teacher.backbone", "--baseline", "none", "--batch-sizes", "1",
                                     "--warmup", "1", "--iters", "2", "--json"])
    assert timed.exit_code == 0, timed.output
    assert any("loaded the backbone (256 keys under 'teacher.backbone.')" in n for n in json.loads(timed.stdout)["notes"])


@pytest.mark.parametrize("attribute", ["model", "net"])
def test_a_lightning_checkpoint_loads_the_network_under_its_attribute(tmp_path, attribute):
    """PyTorch Lightning saves the LightningModule's state dict: a network kept as `self.model`
    has every key under 'model.'. It loads, with a note naming the prefix (before: no architecture fit)."""
    backbone = _backbone(seed=3)
    path = tmp_path / "epoch=9-step=100.ckpt"
    torch.save({"epoch": 9, "global_step": 100, "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 0.1},
                "optimizer_states": [], "lr_schedulers": [],
                "state_dict": {f"{attribute}.{k}": v for k, v in backbone.state_dict().items()}}, path)
    loaded = load_checkpoint(path)
    assert loaded.info.arch == ARCH and loaded.info.extras["stripped_prefixes"] == [f"{attribute}."]
    assert loaded.info.warnings[0].startswith(f"every key is under '{attribute}.'")
    _assert_same_outputs(backbone, loaded.model)
    with pytest.raises(ArchitectureError, match=f"'{attribute}.conv1.weight'"):  # the whole file, as asked: no fallback
        load_checkpoint(path, submodel="")
    torch.save({"state_dict": {f"{attribute}.module.{k}": v for k, v in backbone.state_dict().items()}}, path)  # DataParallel inside
    inner = load_checkpoint(path)
    assert inner.info.extras["stripped_prefixes"] == [f"{attribute}.", "module."]
    _assert_same_outputs(backbone, inner.model)


def test_a_network_beside_other_keys_is_named_in_the_hint_not_loaded(tmp_path):
    """A Lightning module with a loss weight beside `self.model`: the keys are not all under one
    attribute, so nothing is loaded unasked; the error names the part that fits and the option,
    which then loads it."""
    backbone = _backbone(seed=5)
    path = tmp_path / "extra.ckpt"
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in backbone.state_dict().items()}, "criterion.weight": torch.ones(10)}}, path)
    with pytest.raises(ArchitectureError) as info:
        load_checkpoint(path)
    assert info.value.hint == (f"the weights under 'model.' fit {ARCH} on their own (keys outside it: criterion.weight): "
                               "pass --submodel model if that is the network")
    _assert_same_outputs(backbone, load_checkpoint(path, submodel="model").model)


def test_a_detected_architecture_missing_a_key_says_the_file_is_incomplete(tmp_path):
    """Detection recognised the file's layers, so --arch (the generic hint) cannot mend a key the
    file lacks; with --arch given, that hint stays (the option may be wrong)."""
    state = _backbone(seed=6).state_dict()
    missing = next(k for k in state if k.endswith("attention.bn.running_var"))  # detection reads the layers, not these
    del state[missing]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "partial.pth")
    assert f"first '{missing}'" in info.value.message and "lacks or adds these keys" in info.value.hint
    with pytest.raises(CheckpointError, match="omit --arch to detect it"):
        load_checkpoint(tmp_path / "partial.pth", arch=ARCH)


def test_weights_under_one_attribute_that_fit_nothing_report_the_file_as_it_is(tmp_path):
    backbone = _backbone(seed=4)
    state = {f"model.{k}": v for k, v in backbone.state_dict().items() if not k.startswith("layer4.")}
    torch.save({"state_dict": state}, tmp_path / "partial.ckpt")
    with pytest.raises(ArchitectureError, match="unexpected in the file \\(e.g. 'model."):
        load_checkpoint(tmp_path / "partial.ckpt")
