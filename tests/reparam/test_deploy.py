"""Deploy checkpoints: plain manifest, weights-only loading, strict rebuild, atomic writes, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from odexport.errors import CheckpointError, InputError, InternalError
from odexport.layers import ODConv2d, dynamic_convs, set_temperature
from odexport.models import create_model
from odexport.reparam import reparameterise
from odexport.reparam.deploy import load_deploy, model_from_deploy, save_deploy
from tests.reparam._helpers import randomize_batchnorms, randomize_biases, rel_dev

ARCH = "od_mobilenetv2_tiny"
INFO = {"path": "/data/od_mbv2_tiny.pth", "sha256": "ab" * 32, "arch": ARCH, "model_kwargs": {"kernel_num": 4},
        "layout": "odconv", "input_shape": (3, 32, 32), "num_classes": 10}


def _source(temperature=1.0):
    model = randomize_batchnorms(randomize_biases(create_model(ARCH, kernel_num=4), seed=4), seed=5).eval()
    set_temperature(model, temperature)
    return model


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return False


def test_manifest_is_plain_and_complete(tmp_path):
    report = reparameterise(_source(temperature=3.0))
    path = save_deploy(report.model, report, tmp_path / "deploy.pt", INFO)
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"odexport_deploy", "state_dict"}
    manifest = obj["odexport_deploy"]
    assert _plain(manifest)
    assert manifest["format_version"] == 1 and manifest["odexport_version"]
    assert manifest["source"] == {"path": INFO["path"], "sha256": INFO["sha256"]}
    assert (manifest["arch"], manifest["model_kwargs"], manifest["layout"]) == (ARCH, {"kernel_num": 4}, "odconv")
    assert manifest["input_shape"] == [3, 32, 32]
    assert manifest["passes"] == ["fold-attention-bn", "fold-temperature", "fold-bn", "fuse-heads"]
    assert manifest["temperature_folded"] is True and manifest["temperature"] == 3.0
    assert set(manifest["original_temperatures"].values()) == {3.0}
    layers = manifest["layers"]
    assert set(layers) == {name for name, _ in dynamic_convs(report.model)}
    spec = next(iter(layers.values()))
    assert spec["type"] == "ODConv2d" and spec["static_bias"] and not spec["attention"]["bn"] and spec["attention"]["fused"]
    assert all(v == {"type": "Identity"} for v in manifest["replaced"].values()) and manifest["replaced"]
    assert manifest["params"]["deploy"] < manifest["params"]["source"]
    assert all(isinstance(v, torch.Tensor) for v in obj["state_dict"].values())


def test_unfolded_temperature_is_restored(tmp_path):
    source = _source(temperature=7.0)
    report = reparameterise(source, passes="fold-attention-bn,fuse-heads")
    rebuilt = load_deploy(save_deploy(report.model, report, tmp_path / "d.pt", INFO))
    assert {layer.temperature for _, layer in dynamic_convs(rebuilt)} == {7.0}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_dev(rebuilt(x), source(x)) <= 1e-6


def test_a_folded_temperature_is_loaded_at_its_own_value_and_no_other(tmp_path):
    """``load_checkpoint(deploy, temperature=T)`` with the T folded in is no change (it loads and
    computes the source at T); any other T cannot be unfolded from the weights and is refused."""
    from odexport.checkpoint import load_checkpoint

    source = _source(temperature=3.0)
    path = save_deploy((report := reparameterise(source)).model, report, tmp_path / "deploy.pt", INFO)
    loaded = load_checkpoint(path, temperature=3.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_dev(loaded.model(x), source(x)) <= 1e-6
    with pytest.raises(InputError, match="cannot be changed here"):
        load_checkpoint(path, temperature=2.0)


def test_reparameterising_a_deploy_model_again(tmp_path):
    source = _source(temperature=2.0)
    first = reparameterise(source)
    rebuilt = load_deploy(save_deploy(first.model, first, tmp_path / "a.pt", INFO))
    second = reparameterise(rebuilt)
    assert second.passes_applied == []  # everything is folded already; each layer says so
    assert all(not r.changed for r in second.results)
    again = load_deploy(save_deploy(second.model, second, tmp_path / "b.pt", INFO))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_dev(again(x), source(x)) <= 1e-6
    assert again.odexport_meta["passes"] == first.passes_applied


def test_rebuild_follows_a_checkpoints_own_attention_width(tmp_path):
    """A layer the loader conformed to the file's shapes (non-default width) rebuilds from the manifest."""
    source = _source()
    name, layer = dynamic_convs(source)[3]
    wide = ODConv2d(layer.in_planes, layer.out_planes, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                    layer.groups, kernel_num=2, attention_channels=24)
    source.set_submodule(name, randomize_batchnorms(randomize_biases(wide)).eval())
    report = reparameterise(source)
    rebuilt = load_deploy(save_deploy(report.model, report, tmp_path / "d.pt", INFO))
    assert rebuilt.get_submodule(name).weight.shape[0] == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_dev(rebuilt(x), source(x)) <= 1e-6


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    report = reparameterise(_source())
    target = save_deploy(report.model, report, tmp_path / "deploy.pt", INFO)
    before = target.read_bytes()
    broken = copy.deepcopy(report.model)
    broken.odexport_meta["replaced"].append("classifier")  # a swapped-in module the format cannot describe
    with pytest.raises(InternalError):
        save_deploy(broken, report, target, INFO)
    assert target.read_bytes() == before
    directory = tmp_path / "is_a_directory"
    directory.mkdir()
    (directory / "inside").write_text("x")
    with pytest.raises(InputError, match="is a directory"):  # refused before a temporary file is made
        save_deploy(report.model, report, directory, INFO)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.pt", "is_a_directory"]  # no temp file left


def test_model_from_deploy_errors(tmp_path):
    report = reparameterise(_source())
    obj = torch.load(save_deploy(report.model, report, tmp_path / "d.pt", INFO), weights_only=True)
    with pytest.raises(CheckpointError, match="not an odexport deploy checkpoint"):
        model_from_deploy({"state_dict": {}})
    newer = {**obj, "odexport_deploy": {**obj["odexport_deploy"], "format_version": 99}}
    with pytest.raises(CheckpointError, match="newer"):
        model_from_deploy(newer)
    nameless = {**obj, "odexport_deploy": {**obj["odexport_deploy"], "arch": None}}
    with pytest.raises(CheckpointError, match="names no zoo architecture") as err:
        model_from_deploy(nameless)
    assert "model=" in str(err.value)
    factory = {**obj, "odexport_deploy": {**obj["odexport_deploy"], "arch": None, "factory": "mypkg.models:build"}}
    with pytest.raises(CheckpointError, match="--factory mypkg.models:build"):
        model_from_deploy(factory)
    missing = {**obj, "state_dict": {k: v for k, v in obj["state_dict"].items() if "heads" not in k}}
    with pytest.raises(CheckpointError, match="does not fit the rebuilt model") as err:
        model_from_deploy(missing)
    assert "\n" not in str(err.value)
    wrong_arch = {**obj, "odexport_deploy": {**obj["odexport_deploy"], "arch": "dy_resnet_tiny"}}
    with pytest.raises(CheckpointError):
        model_from_deploy(wrong_arch)


def test_load_deploy_rejects_a_missing_or_unsafe_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_deploy(tmp_path / "nope.pt")
    unsafe = tmp_path / "pickled.pt"
    torch.save({"odexport_deploy": {"format_version": 1}, "state_dict": {}, "model": nn.Linear(1, 1)}, unsafe)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_deploy(unsafe)


def test_a_float64_deploy_file_rebuilds_into_a_float64_model(tmp_path):
    """The parameters a deploy spec creates (static biases, fused heads) and the modules it swaps in
    take the given model's dtype: in torch's default float32 they failed the float64 forward."""
    source = _source(temperature=3.0).double()
    report = reparameterise(source)
    path = save_deploy(report.model, report, tmp_path / "deploy64.pt", INFO)
    rebuilt = load_deploy(path, model=create_model(ARCH, kernel_num=4).double())
    assert {t.dtype for t in rebuilt.state_dict().values() if t.is_floating_point()} == {torch.float64}
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert rel_dev(rebuilt(x), source(x)) < 1e-12


def _edited(obj, **fields):
    return {**obj, "odexport_deploy": {**obj["odexport_deploy"], **fields}}


def test_a_damaged_or_edited_manifest_is_named_by_its_field(tmp_path):
    """A manifest field of the wrong type ended in an internal error (AttributeError, TypeError) or
    in "format None is newer -- upgrade odexport"; each is now one line naming the field."""
    report = reparameterise(_source())
    obj = torch.load(save_deploy(report.model, report, tmp_path / "d.pt", INFO), weights_only=True)
    layer = next(iter(obj["odexport_deploy"]["layers"]))
    without_attention = {k: v for k, v in obj["odexport_deploy"]["layers"][layer].items() if k != "attention"}
    damaged = {
        "a mapping": {**obj, "odexport_deploy": None},
        "names to tensors": {**obj, "state_dict": [1]},
        "format_version is None": {**obj, "odexport_deploy": {k: v for k, v in obj["odexport_deploy"].items() if k != "format_version"}},
        "format_version is 1.0": _edited(obj, format_version=1.0),
        "format_version is 0": _edited(obj, format_version=0),
        "format_version is True": _edited(obj, format_version=True),
        "'original_temperatures' is": _edited(obj, original_temperatures={layer: "hot"}),
        "'input_shape' is '3x32x32'": _edited(obj, input_shape="3x32x32"),
        "'layers' is": _edited(obj, layers={**obj["odexport_deploy"]["layers"], layer: None}),
        "'freeze' is": _edited(obj, freeze={"layers": ["not a record"]}),
        "model_kwargs do not build": _edited(obj, model_kwargs={"kernel_num": "4"}),
        "lacks the field 'attention'": _edited(obj, layers={**obj["odexport_deploy"]["layers"], layer: without_attention}),
    }
    for message, edited in damaged.items():
        with pytest.raises(CheckpointError, match=message) as err:
            model_from_deploy(edited)
        assert "\n" not in str(err.value) and "odexport reparam" in err.value.hint, message
    with pytest.raises(CheckpointError, match="format 2 is newer") as err:  # a real newer format, as text too
        model_from_deploy(_edited(obj, format_version="2"))
    assert err.value.hint == "upgrade odexport"


def test_options_a_deploy_file_settles_are_refused_and_its_weights_checked(tmp_path):
    """--ema on a file made from plain weights, another --arch, --kernel-num or --submodel ran the
    file as it was, silently; NaN weights in a deploy file got no note (a checkpoint's do)."""
    from odexport.checkpoint import load_checkpoint
    from odexport.pipeline import check_parity, deploy_from_checkpoint

    report = reparameterise(_source())
    path = save_deploy(report.model, report, tmp_path / "d.pt", INFO)
    with pytest.raises(CheckpointError, match="holds no EMA weights: it was made from its source's plain weights"):
        load_checkpoint(path, prefer_ema=True)
    with pytest.raises(InputError, match=f"deploy file of {ARCH}; --arch dy_resnet_tiny does not apply"):
        load_checkpoint(path, arch="dy_resnet_tiny")
    with pytest.raises(InputError, match="--kernel-num 2 does not apply"):
        load_checkpoint(path, kernel_num=2)
    with pytest.raises(InputError, match="--submodel backbone does not apply"):
        load_checkpoint(path, submodel="backbone")
    assert load_checkpoint(path, arch=ARCH, kernel_num=4).info.arch == ARCH  # what it records is no contradiction
    # a file made without --kernel-num records no K: the layers say it (the zoo default K=4 was refused)
    obj = torch.load(path, weights_only=True)
    torch.save(_edited(obj, model_kwargs={}), tmp_path / "default_k.pt")
    assert load_checkpoint(tmp_path / "default_k.pt", kernel_num=4).info.arch == ARCH
    with pytest.raises(InputError, match="--kernel-num 2 does not apply"):
        load_checkpoint(tmp_path / "default_k.pt", kernel_num=2)
    dy = reparameterise(create_model("dy_resnet_tiny").eval())  # DY-Conv layers name their K num_kernels
    dy_obj = torch.load(save_deploy(dy.model, dy, tmp_path / "dy.pt", {**INFO, "arch": "dy_resnet_tiny"}), weights_only=True)
    torch.save(_edited(dy_obj, model_kwargs={}), tmp_path / "dy_default_k.pt")
    assert load_checkpoint(tmp_path / "dy_default_k.pt", kernel_num=4).info.arch == "dy_resnet_tiny"
    with pytest.raises(InputError, match="--kernel-num 2 does not apply"):
        load_checkpoint(tmp_path / "dy_default_k.pt", kernel_num=2)

    # check hands the reference's options to every checkpoint candidate: a deploy file settles them
    # (an EMA mismatch is check's note, not a refused candidate)
    source = tmp_path / "ema.pth"
    plain = _source()
    torch.save({"state_dict": plain.state_dict(), "model_ema": plain.state_dict()}, source)
    deploy, _ = deploy_from_checkpoint(source, tmp_path / "plain.deploy.pt", arch=ARCH, kernel_num=4)
    report = check_parity(source, [deploy], samples=2, batch_sizes=(2,), arch=ARCH, prefer_ema=True)
    assert report.passed and any("made from the file's plain weights" in note for note in report.candidates[0].notes)

    obj = torch.load(path, weights_only=True)
    name = next(k for k, v in obj["state_dict"].items() if v.is_floating_point() and v.ndim == 4)
    obj["state_dict"][name].fill_(float("nan"))
    torch.save(obj, tmp_path / "nan.pt")
    warnings = load_checkpoint(tmp_path / "nan.pt").info.warnings
    assert any(f"the first in '{name}': the model will compute NaN" in w for w in warnings), warnings
