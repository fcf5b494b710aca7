"""``--factory``: a user's own architecture is built, loaded, converted, and computes what it did."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from odexport.convert import TemperatureArgModel
from odexport.errors import CheckpointError, InputError
from odexport.layers import DyConv2d, ODConv2d, dynamic_convs
from odexport.pipeline import model_from_checkpoint
from tests.convert import standins

TOL = dict(atol=1e-5, rtol=1e-5)
MIXED = "tests.convert.standins:build_mixed"


def _saved_mixed(tmp_path, seed=0):
    torch.manual_seed(seed)
    model = standins.MixedNet().eval()  # kaijieshi7 layers at their constructor temperature 34
    path = tmp_path / "user_model.pth.tar"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # trained under DataParallel
    torch.save({"epoch": 9, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return model, path


def test_factory_model_is_loaded_converted_and_reproduces(tmp_path):
    original, path = _saved_mixed(tmp_path)
    loaded = model_from_checkpoint(path, factory=MIXED)
    info = loaded.info
    assert info.source == "factory" and info.layout == "factory" and info.arch == MIXED
    assert [c["layout"] for c in info.extras["converted_layers"]] == ["odconv"] * 3 + ["kaijieshi7"] * 2 + ["tardelean"]
    assert info.extras["stripped_prefixes"] == ["module."]
    assert all(isinstance(m, (ODConv2d, DyConv2d)) for _, m in dynamic_convs(loaded.model)) and len(dynamic_convs(loaded.model)) == 6
    # the kaijieshi7 modules' temperature (34, a training start value) was carried over, with a warning
    assert info.temperature is None and info.extras["temperatures"]["dy"] == 34.0
    assert any("training start value" in w for w in info.warnings)
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), original(x), **TOL)
        torch.testing.assert_close(loaded.model(x[:1]), original(x[:1]), **TOL)


def test_factory_with_explicit_temperature(tmp_path):
    original, path = _saved_mixed(tmp_path, seed=1)
    loaded = model_from_checkpoint(path, factory=MIXED, temperature=1.0)
    assert loaded.info.temperature == 1.0 and not loaded.info.warnings
    for module in (original.dy.attention, original.dy_old.attention, original.od.attention):
        module.temperature = 1
    x = torch.randn(2, 3, 16, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), original(x), **TOL)


def test_factory_tardelean_style_forward_with_temperature(tmp_path):
    torch.manual_seed(2)
    original = standins.TardeleanStyleNet().eval()
    path = tmp_path / "ta.pth"
    torch.save({"model": original.state_dict(), "epoch": 4}, path)
    loaded = model_from_checkpoint(path, factory="tests.convert.standins:build_tardelean_style", temperature=5.0)
    assert isinstance(loaded.model, TemperatureArgModel) and loaded.info.temperature == 5.0
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), original(x, 5.0), **TOL)


def test_a_deploy_file_of_a_temperature_argument_model_runs_at_its_temperature(tmp_path):
    """The wrapper calling forward(x, temperature) was rebuilt at T=1: a model dividing its logits
    by T computed another function from its deploy file, and nothing said so."""
    from odexport.errors import ParityError
    from odexport.pipeline import deploy_from_checkpoint
    from odexport.reparam import DEFAULT_PASSES

    torch.manual_seed(3)
    scaled = standins.TemperatureScaledLogitsNet().eval()
    torch.save(scaled.state_dict(), tmp_path / "scaled.pth")
    factory = "tests.convert.standins:build_temperature_scaled_logits"
    deploy, _ = deploy_from_checkpoint(tmp_path / "scaled.pth", tmp_path / "scaled.deploy.pt", factory=factory,
                                       temperature=5.0, input_shape=(3, 10, 10))
    x = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(model_from_checkpoint(deploy, factory=factory).model(x), scaled(x, 5.0), **TOL)

    # a forward that sets its layers' temperature undoes fold-temperature: the refusal says so
    sets = standins.SetsLayerTemperatureNet().eval()
    torch.save(sets.state_dict(), tmp_path / "sets.pth")
    factory = "tests.convert.standins:build_sets_layer_temperature"
    with pytest.raises(ParityError) as refused:
        deploy_from_checkpoint(tmp_path / "sets.pth", tmp_path / "sets.deploy.pt", factory=factory, temperature=5.0,
                               input_shape=(3, 10, 10))
    others = [name for name in DEFAULT_PASSES if name != "fold-temperature"]
    assert "bug in odexport" not in refused.value.hint and f"--passes {','.join(others)}" in refused.value.hint
    deploy, _ = deploy_from_checkpoint(tmp_path / "sets.pth", tmp_path / "sets.deploy.pt", factory=factory, temperature=5.0,
                                       input_shape=(3, 10, 10), passes=others)
    with torch.no_grad():
        torch.testing.assert_close(model_from_checkpoint(deploy, factory=factory).model(x), sets(x, 5.0), **TOL)


@pytest.mark.parametrize("form", ["custom", "decomposed"])
def test_factory_tardelean_style_model_exports(tmp_path, form):
    """Its forward calls every layer as ``conv(x, temperature)``; the export's layer forwards took
    one input, so no form could be exported.  The ONNX file computes what the original model does
    at the loaded temperature (onnxruntime against the user's own module)."""
    import numpy as np
    import onnxruntime as ort

    from odexport.pipeline import onnx_from_model

    torch.manual_seed(6)
    original = standins.TardeleanStyleNet().eval()
    path = tmp_path / "ta.pth"
    torch.save({"model": original.state_dict()}, path)
    out = tmp_path / f"ta_{form}.onnx"
    loaded = model_from_checkpoint(path, factory="tests.convert.standins:build_tardelean_style", temperature=5.0)
    onnx_from_model(loaded.model, out, input_shape=(3, 10, 10), form=form)  # its own parity check runs too
    x = torch.randn(3, 3, 10, 10)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, original(x, 5.0).numpy(), atol=1e-5, rtol=1e-5)


def test_factory_from_a_python_file(tmp_path):
    original, path = _saved_mixed(tmp_path, seed=3)
    source = tmp_path / "my_models.py"
    source.write_text(textwrap.dedent("""
        from tests.convert.standins import MixedNet

        def build():
            return MixedNet()
    """))
    loaded = model_from_checkpoint(path, factory=f"{source}:build")  # temperatures carried over
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), original.eval()(x), **TOL)


def test_a_factory_module_in_the_working_directory_is_found(tmp_path, monkeypatch):
    """``--factory mymodels:build`` run where mymodels.py is, as a user runs their own code: the
    working directory is importable even when the console script left it off sys.path."""
    import sys

    from odexport.convert.factory import build_from_factory

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "odexport_test_cwd_models.py").write_text("from torch import nn\n\ndef build():\n    return nn.Conv2d(3, 4, 3)\n")
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    monkeypatch.delitem(sys.modules, "odexport_test_cwd_models", raising=False)
    try:
        model = build_from_factory("odexport_test_cwd_models:build")
    finally:
        sys.modules.pop("odexport_test_cwd_models", None)  # imported from a folder that goes away
    assert isinstance(model, nn.Conv2d) and model.out_channels == 4


def test_only_a_second_argument_named_like_a_temperature_makes_a_temperature_model():
    from odexport.convert.factory import needs_temperature_argument

    class WithMask(nn.Module):
        def forward(self, x, mask):
            return x * mask

    class WithTau(nn.Module):
        def forward(self, x, tau):
            return x

    class WithOptional(nn.Module):
        def forward(self, x, temperature=1.0):
            return x

    assert not needs_temperature_argument(WithMask()) and needs_temperature_argument(WithTau())
    assert not needs_temperature_argument(WithOptional())


def test_a_factory_model_with_the_wrappers_names_itself_loads_its_file(tmp_path):
    """A model whose one submodule is called `module` (or a DataParallel model) has keys that start
    like a DataParallel file's: the loader stripped them from the file and then found nothing."""
    torch.manual_seed(4)
    original = torch.nn.DataParallel(standins.MixedNet()).eval()
    path = tmp_path / "wrapped.pth"
    torch.save(original.state_dict(), path)
    source = tmp_path / "wrapped_models.py"
    source.write_text(textwrap.dedent("""
        import torch
        from tests.convert.standins import MixedNet

        class Holder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.module = MixedNet()

            def forward(self, x):
                return self.module(x)

        def holder():
            return Holder()

        def data_parallel():
            return torch.nn.DataParallel(MixedNet())
    """))
    x = torch.randn(1, 3, 12, 12)
    for factory in ("holder", "data_parallel"):
        loaded = model_from_checkpoint(path, factory=f"{source}:{factory}")
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), original(x), **TOL)


def test_a_float64_factory_model_is_refused_with_a_command_line_step(tmp_path):
    """The export's refusal said "call model.float()", a step the command line does not have."""
    from odexport.pipeline import onnx_from_checkpoint

    source = tmp_path / "double_models.py"
    source.write_text(textwrap.dedent("""
        from tests.convert.standins import MixedNet

        def float64():
            return MixedNet().double()
    """))
    torch.save(standins.MixedNet().state_dict(), tmp_path / "plain.pth")
    with pytest.raises(InputError, match="has float64 parameters; an export starts from float32") as refused:
        onnx_from_checkpoint(tmp_path / "plain.pth", tmp_path / "f64.onnx", factory=f"{source}:float64", input_shape=(3, 12, 12))
    assert "return model.float() from the --factory function" in refused.value.hint and not (tmp_path / "f64.onnx").exists()


def test_batchnorms_without_running_statistics_get_a_note(tmp_path):
    """In eval such a BatchNorm normalises each batch by itself: a sample's output depends on its
    batch, so the parity gate failed at some sizes with a hint to loosen the tolerance."""
    source = tmp_path / "free_bn.py"
    source.write_text(textwrap.dedent("""
        import torch
        from odexport.layers import DyConv2d

        def build():
            return torch.nn.Sequential(DyConv2d(3, 8, 3, padding=1, num_kernels=2),
                                       torch.nn.BatchNorm2d(8, track_running_stats=False), torch.nn.ReLU())
    """))
    import importlib.util

    spec = importlib.util.spec_from_file_location("free_bn", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.build().state_dict(), tmp_path / "free_bn.pth")
    loaded = model_from_checkpoint(tmp_path / "free_bn.pth", factory=f"{source}:build")
    note = next(w for w in loaded.info.warnings if "without running statistics" in w)
    assert "the first '1'" in note and "depends on the other samples in its batch" in note
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():  # the premise: the same sample, another batch, another output
        assert not torch.allclose(loaded.model(x)[:1], loaded.model(x[:1]), atol=1e-3)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("tests.convert.standins", "not 'module:function'"),
        ("no_such_package_xyz.models:build", "could not import"),
        ("tests.convert.standins:no_such_builder", "has no attribute"),
        ("tests.convert.standins:MixedNet.forward", "needs arguments"),
        ("tests.convert.standins:_randomise_bn", "needs arguments"),
        ("torch:cuda_is_not_a_function", "has no attribute"),
        ("no_such_folder/mymodels:build", "--factory file no_such_folder/mymodels does not exist"),  # a path, by its slash
        ("tests.convert.standins:build_needing_a_width", "needs arguments (width)"),  # keyword-only, required
    ],
)
def test_factory_errors_are_one_line(tmp_path, spec, match):
    _, path = _saved_mixed(tmp_path)
    with pytest.raises(InputError) as info:
        model_from_checkpoint(path, factory=spec)
    assert match in str(info.value) and "\n" not in str(info.value)


def test_factory_that_exits_is_an_input_error(tmp_path):
    """A module that parses its command line at import (argparse exits) or a build function that calls
    sys.exit: SystemExit is the user's code failing, reported as one line, not a silent exit."""
    _, path = _saved_mixed(tmp_path)
    at_import = tmp_path / "train_script.py"
    at_import.write_text("import sys\nsys.exit(2)\ndef build():\n    pass\n")
    in_build = tmp_path / "builder.py"
    in_build.write_text("import sys\ndef build():\n    sys.exit('no GPU found')\n")
    bare = tmp_path / "bare_exit.py"
    bare.write_text("import sys\ndef build():\n    sys.exit()\n")
    for spec, match in ((f"{at_import}:build", "could not import .*SystemExit: 2"), (f"{in_build}:build", "raised SystemExit: no GPU found"),
                        (f"{bare}:build", r"raised SystemExit: sys.exit\(\) called")):
        with pytest.raises(InputError, match=match):
            model_from_checkpoint(path, factory=spec)


def test_factory_that_returns_no_module(tmp_path):
    _, path = _saved_mixed(tmp_path)
    with pytest.raises(InputError, match="not a torch nn.Module"):
        model_from_checkpoint(path, factory="builtins:dict")


def test_factory_checkpoint_mismatch_names_the_key(tmp_path):
    torch.manual_seed(4)
    other = standins.TardeleanStyleNet()
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit the model built by --factory"):
        model_from_checkpoint(path, factory=MIXED)


def test_factory_loads_a_lightning_checkpoint_and_misfits_name_both_sides(tmp_path):
    """A LightningModule holding the network as `self.net`: every key under 'net.', which the
    factory's model does not use, so the network under it is loaded (with a note). A misfit names
    the first key the model lacks beside the first it misses, which shows a prefix at a glance."""
    original, _ = _saved_mixed(tmp_path)
    path = tmp_path / "last.ckpt"
    torch.save({"pytorch-lightning_version": "2.4.0", "state_dict": {f"net.{k}": v for k, v in original.state_dict().items()}}, path)
    loaded = model_from_checkpoint(path, factory=MIXED)
    assert loaded.info.extras["stripped_prefixes"] == ["net."] and loaded.info.warnings[0].startswith("every key is under 'net.'")
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), original(x), **TOL)

    prefixed = tmp_path / "prefixed.pt"
    state = original.state_dict()
    torch.save({**{f"head.{k}": v for k, v in state.items() if k.startswith("od")}, **{k: v for k, v in state.items() if not k.startswith("od")}}, prefixed)
    with pytest.raises(CheckpointError, match=r"missing from the file, first 'od.*'; the file has \d+ keys the architecture lacks, first 'head\.od") as info:
        model_from_checkpoint(prefixed, factory=MIXED)
    assert "--arch" not in info.value.hint and "--submodel" in info.value.hint


def test_factory_input_size_is_asked_for_recorded_and_timed(tmp_path):
    """A --factory model records no input size: an export from it asks for --input-shape instead of
    writing a 224x224 graph; the size given to reparam is recorded in the deploy file and the export
    from that file uses it; `bench` of the export builds its static twin from the recorded factory, when the user names it."""
    import onnx

    from odexport.pipeline import benchmark, deploy_from_checkpoint, inspect_checkpoint, onnx_from_checkpoint

    _, path = _saved_mixed(tmp_path)
    with pytest.raises(InputError, match="does not record") as asked:
        onnx_from_checkpoint(path, tmp_path / "guessed.onnx", factory=MIXED)
    assert "--input-shape" in asked.value.hint and not (tmp_path / "guessed.onnx").exists()
    with pytest.raises(InputError, match="timing user_model.pth.tar needs the model's input size"):
        benchmark([path], factory=MIXED, batch_sizes=(1,), warmup=1, iterations=2)
    summary, _ = inspect_checkpoint(path, factory=MIXED)
    assert any("assumed 3x224x224" in note for note in summary["notes"])

    deploy, _ = deploy_from_checkpoint(path, tmp_path / "user.deploy.pt", factory=MIXED, input_shape=(3, 24, 20))
    exported = onnx_from_checkpoint(deploy, tmp_path / "user.onnx", factory=MIXED, check=False)
    dims = [d.dim_value or d.dim_param for d in onnx.load(exported.path).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 24, 20]

    # the twin is built by running the recorded factory: a file's metadata alone must not run code
    with pytest.raises(InputError, match="would be built by running the factory its export records") as refused:
        benchmark([exported.path], batch_sizes=(1,), warmup=1, iterations=2)
    assert f"--factory {MIXED}" in refused.value.hint
    report = benchmark([exported.path], factory=MIXED, batch_sizes=(1,), warmup=1, iterations=2)
    roles = sorted(entry.role for entry in report.entries)
    assert roles == ["baseline", "candidate"] and all(entry.stats is not None for entry in report.entries)

    # a deploy file of this model from before `input_shape_given` recorded the loader's guess: not taken as the size
    legacy = torch.load(deploy, weights_only=True)
    legacy["odexport_deploy"]["input_shape"] = [3, 224, 224]
    del legacy["odexport_deploy"]["input_shape_given"]
    torch.save(legacy, tmp_path / "legacy.deploy.pt")
    with pytest.raises(InputError, match="does not record"):
        onnx_from_checkpoint(tmp_path / "legacy.deploy.pt", tmp_path / "legacy.onnx", factory=MIXED, check=False)


def test_factory_does_not_replace_what_another_export_records(tmp_path):
    """`bench --factory` with a zoo export beside the factory checkpoint: the export's static twin is
    its recorded architecture's, and a zoo deploy file keeps its architecture's size whatever
    --input-shape reparam checked at."""
    import onnx

    from odexport.models import create_model, model_info
    from odexport.pipeline import _static_twin_runner, deploy_from_checkpoint, onnx_from_model
    from odexport.runtime import open_runner

    torch.manual_seed(0)
    zoo = tmp_path / "zoo.onnx"
    onnx_from_model(create_model("od_resnet_tiny").eval(), zoo, input_shape=(3, 32, 32), check=False, architecture="od_resnet_tiny")
    with open_runner(zoo, "onnxruntime") as runner:
        twin, _ = _static_twin_runner(zoo, "onnx", runner, tmp_path, {}, None, None, {"factory": MIXED})
        with twin:
            assert twin.input_shape == (3, 32, 32)
            names = {init.name for init in onnx.load(twin.path).graph.initializer}
            assert "layer1.0.conv2.weight" in names and not any(n.startswith(("od_dw.", "dy_old.")) for n in names), names

    checkpoint = tmp_path / "zoo.pth"
    torch.save(create_model("od_resnet_tiny").state_dict(), checkpoint)
    deploy, _ = deploy_from_checkpoint(checkpoint, tmp_path / "zoo.deploy.pt", input_shape=(3, 48, 48))
    manifest = torch.load(deploy, weights_only=True)["odexport_deploy"]
    assert manifest["input_shape"] == list(model_info("od_resnet_tiny").input_shape) and manifest["input_shape_given"] is False


def test_inspect_of_a_deploy_file_names_its_folded_per_layer_temperatures(tmp_path):
    """MixedNet's layers were trained at T=34 and T=1; reparam folds both. inspect of the deploy file
    names what each layer was trained at (from the manifest), not "no dynamic layer"."""
    from typer.testing import CliRunner

    from odexport.cli.app import app
    from odexport.pipeline import deploy_from_checkpoint, inspect_checkpoint

    _, path = _saved_mixed(tmp_path)
    deploy, _ = deploy_from_checkpoint(path, tmp_path / "mixed.deploy.pt", factory=MIXED, input_shape=(3, 24, 24), check=False)
    summary, _ = inspect_checkpoint(deploy, factory=MIXED)
    assert summary["temperature"] is None
    assert summary["temperatures"]["dy"] == 34.0 and set(summary["temperatures"].values()) == {34.0, 1.0}
    assert any("temperatures are folded" in note for note in summary["notes"])
    result = CliRunner().invoke(app, ["inspect", str(deploy), "--factory", MIXED])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("temperature"))
    assert "per layer:" in line and "34 (2 layers)" in line and "no dynamic layer" not in line


def test_factory_reparam_takes_the_input_size_from_the_calibration_images(tmp_path):
    """A --factory model records no input size, but --calibration images have one: reparam uses it
    for its check and records it as given, as --input-shape would."""
    import numpy as np

    from odexport.pipeline import deploy_from_checkpoint, inspect_checkpoint, model_from_checkpoint

    _, path = _saved_mixed(tmp_path)
    calibration = tmp_path / "calib.npy"
    np.save(calibration, np.random.default_rng(0).standard_normal((4, 3, 20, 28)).astype(np.float32))
    deploy, report = deploy_from_checkpoint(path, tmp_path / "calib.deploy.pt", factory=MIXED, calibration=calibration)
    manifest = torch.load(deploy, weights_only=True)["odexport_deploy"]
    assert manifest["input_shape"] == [3, 20, 28] and manifest["input_shape_given"] is True
    assert report.check is not None

    channels_last = tmp_path / "calib_nhwc.npy"  # named as such, not tried at (20, 28, 3) and failed on
    np.save(channels_last, np.load(calibration).transpose(0, 2, 3, 1))
    with pytest.raises(InputError, match=r"have sample shape \(20, 28, 3\): channels last, the model takes 3 channels first"):
        deploy_from_checkpoint(path, tmp_path / "nhwc.deploy.pt", factory=MIXED, calibration=channels_last)

    # frozen layers are static convs now: inspect lists the temperatures of the layers still dynamic
    frozen, _ = deploy_from_checkpoint(path, tmp_path / "frozen.deploy.pt", factory=MIXED, calibration=calibration, freeze_below=0.01)
    summary, _ = inspect_checkpoint(frozen, factory=MIXED)
    still_dynamic = {name for name, _ in dynamic_convs(model_from_checkpoint(frozen, factory=MIXED).model)}
    assert len(still_dynamic) < 6  # the premise: some layers were frozen
    assert set(summary["temperatures"] or {}) <= still_dynamic


def test_check_of_a_factory_reference_runs_at_a_known_size_or_asks(tmp_path):
    """A --factory reference records no input size: check runs at the size a candidate records (a
    deploy file made with --input-shape) or the user's --inputs have, never at the 224x224 guess;
    with neither (two checkpoints) it asks for --input-shape."""
    import numpy as np

    from odexport.pipeline import check_parity, deploy_from_checkpoint

    _, path = _saved_mixed(tmp_path)
    deploy, _ = deploy_from_checkpoint(path, tmp_path / "sized.deploy.pt", factory=MIXED, input_shape=(3, 20, 28), check=False)
    report = check_parity(path, [deploy], factory=MIXED, samples=2, batch_sizes=(1, 2))
    assert report.inputs["shape"] == [3, 20, 28] and report.passed
    assert any("the size" in note and "records none" in note for note in report.candidates[0].notes)

    with pytest.raises(InputError, match="needs the model's input size") as asked:
        check_parity(path, [path], factory=MIXED, samples=2, batch_sizes=(1,))
    assert "--input-shape" in asked.value.hint
    own = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    report = check_parity(path, [path], factory=MIXED, inputs=own, batch_sizes=(1, 2))
    assert report.inputs["shape"] == [3, 16, 16] and report.passed
