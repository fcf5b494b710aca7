"""What an export writes (metadata, sidecar, atomic files, external data), the grouped form, and
every bad request: one-line errors, no partial file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from odexport.errors import ExportError, InputError, OdexportError, ParityError
from odexport.export import onnx_export
from odexport.export.onnx_export import export_onnx
from odexport.export.verify import batch_constants
from odexport.layers import DyConv2d, ODConv2d
from tests.export._cases import assert_runs_at_batches, run_ort

SHAPE = (8, 10, 10)


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        ODConv2d(8, 16, 3, padding=1, kernel_num=2), nn.ReLU(),
        DyConv2d(16, 8, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_metadata_sidecar_and_checker(tmp_path):
    model = small_model()
    result = export_onnx(model, tmp_path / "m.onnx", form="decomposed", input_shape=SHAPE, architecture="tiny-test",
                         model_kwargs={"width": 8}, source_sha256="ab" * 32)
    assert _files(tmp_path) == ["m.onnx", "m.onnx.json"]
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    from odexport import __version__

    assert meta["odexport.version"] == __version__
    assert meta["odexport.source_sha256"] == "ab" * 32
    assert meta["odexport.arch"] == "tiny-test" and json.loads(meta["odexport.model_kwargs"]) == {"width": 8}
    assert meta["odexport.opset"] == "18" and meta["odexport.batch"] == "dynamic"
    assert meta["odexport.source_kind"] == "checkpoint" and meta["odexport.input_shape"] == "8x10x10"
    assert set(meta) == set(onnx_export.CORE_METADATA)  # the fields extra_metadata may not replace are all it writes
    assert [f["name"] for f in json.loads(meta["odexport.forms"])] == ["0", "2"]
    assert {o.domain or "": o.version for o in proto.opset_import}[""] == 18
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    assert sidecar["metadata"]["odexport.source_sha256"] == "ab" * 32
    assert sidecar["metadata"]["odexport.forms"] == json.loads(meta["odexport.forms"])
    assert sidecar["parity"]["passed"] is True
    assert sorted({c["batch"] for c in sidecar["parity"]["comparisons"]}) == [1, 2, 7]
    # shape inference ran: intermediate values are typed
    assert len(proto.graph.value_info) > 0


def test_state_dict_checksum_changes_with_weights(tmp_path):
    model = small_model()
    first = export_onnx(model, tmp_path / "a.onnx", form="decomposed", input_shape=SHAPE, check=False)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0, 0] += 1.0
    second = export_onnx(model, tmp_path / "b.onnx", form="decomposed", input_shape=SHAPE, check=False)
    assert first.metadata["odexport.source_sha256"] != second.metadata["odexport.source_sha256"]
    assert first.metadata["odexport.source_kind"] == "state_dict"  # no checkpoint file's checksum given


@pytest.mark.parametrize("opset", [18, 21, 23])
def test_supported_opsets(tmp_path, opset):
    model = small_model()
    result = export_onnx(model, tmp_path / "m.onnx", form="custom", opset=opset, input_shape=SHAPE, check=False)
    proto = onnx.load(str(result.path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == opset
    assert all({o.domain: o.version for o in f.opset_import}[""] == opset for f in proto.functions)
    assert_runs_at_batches(model, str(result.path), SHAPE, batches=(1, 3))


def test_grouped_form_matches_at_its_fixed_batch_and_bakes_it(tmp_path):
    model = small_model()
    result = export_onnx(model, tmp_path / "g.onnx", form="grouped", batch=3, input_shape=SHAPE)
    assert result.parity.passed and {c.batch for c in result.parity.comparisons} == {3}
    assert [p.variant for p in result.forms] == ["grouped", "grouped"]
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert batch_constants(proto, 3), "the folded conv's group holds the batch: the detector must see it"
    assert_runs_at_batches(model, str(result.path), SHAPE, batches=(3,))
    with pytest.raises(Exception, match="Got invalid dimensions for input"):  # onnxruntime's own refusal
        run_ort(str(result.path), np.zeros((2, *SHAPE), np.float32))


def test_fixed_batch_decomposed_and_auto_with_batch_hint(tmp_path):
    model = small_model()
    result = export_onnx(model, tmp_path / "a.onnx", form="auto", batch=4, input_shape=SHAPE)
    assert result.parity.passed and result.metadata["odexport.batch"] == "4"
    # on CPU auto keeps each variant in a com.odexport node (what `odexport ort` specialises) ...
    assert {p.form for p in result.forms} == {"custom"}
    assert any(n.domain == "com.odexport" for n in onnx.load(str(result.path)).graph.node)
    # ... for a GPU, standard ops only (every TensorRT parses them without a plugin)
    gpu = export_onnx(model, tmp_path / "g.onnx", form="auto", batch=4, input_shape=SHAPE, target="gpu")
    assert gpu.parity.passed and {p.form for p in gpu.forms} <= {"decomposed", "grouped"}
    assert not onnx.load(str(gpu.path)).functions
    custom = export_onnx(model, tmp_path / "c.onnx", form="custom", batch=4, input_shape=SHAPE)
    assert custom.parity.passed and len(onnx.load(str(custom.path)).functions) == 2


def test_external_data_above_the_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)
    model = small_model()
    result = export_onnx(model, tmp_path / "big.onnx", form="decomposed", input_shape=SHAPE)
    assert _files(tmp_path) == ["big.onnx", "big.onnx.data", "big.onnx.json"]
    assert result.parity.passed
    bare = onnx.load(str(tmp_path / "big.onnx"), load_external_data=False)
    external = [t for t in bare.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(e.value == "big.onnx.data" for t in external for e in t.external_data if e.key == "location")
    assert_runs_at_batches(model, str(result.path), SHAPE, batches=(2,))


# --- bad requests ---------------------------------------------------------------------------


def _one_line(exc: OdexportError) -> str:
    text = str(exc)
    assert "\n" not in text and " -- " in text
    return text


@pytest.mark.parametrize("opset", [12, 17, 24])
def test_unsupported_opset(tmp_path, opset):
    with pytest.raises(ExportError) as info:
        export_onnx(small_model(), tmp_path / "m.onnx", opset=opset, input_shape=SHAPE)
    assert "opset" in _one_line(info.value) and "18" in str(info.value)
    assert _files(tmp_path) == []


class _Returns(nn.Module):
    def __init__(self, wrap):
        super().__init__()
        self.body, self.wrap = small_model(), wrap

    def forward(self, x):
        return self.wrap(self.body(x))


@pytest.mark.parametrize("wrap, match", [
    (lambda y: (y, (y, y)), "returns a tuple whose element 1 is a tuple, not a tensor"),
    (lambda y: {"logits": y}, "returns dict; odexport exports models that return a tensor or a tuple"),
])
def test_outputs_it_cannot_name_are_refused_in_one_line(tmp_path, wrap, match):
    with pytest.raises(ExportError) as info:
        export_onnx(_Returns(wrap).eval(), tmp_path / "m.onnx", input_shape=SHAPE)
    assert match in _one_line(info.value)
    assert _files(tmp_path) == []


def test_grouped_with_dynamic_batch_names_the_other_forms(tmp_path):
    with pytest.raises(ExportError) as info:
        export_onnx(small_model(), tmp_path / "m.onnx", form="grouped", input_shape=SHAPE)
    text = _one_line(info.value)
    assert "--batch" in text and "decomposed" in text and "custom" in text
    assert _files(tmp_path) == []


class ForeignDynamicConv(nn.Module):
    """Shaped like the reference kaijieshi7 layer: K candidate kernels, batch folded into groups."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 8, 8, 3, 3))

    def forward(self, x):
        b = x.shape[0]
        w = self.weight.mean(0).repeat(b, 1, 1, 1)
        return nn.functional.conv2d(x.reshape(1, -1, *x.shape[-2:]), w, padding=1, groups=b).reshape(b, 8, *x.shape[-2:])


def test_unknown_dynamic_layer_type(tmp_path):
    model = nn.Sequential(ODConv2d(8, 8, 3, padding=1), ForeignDynamicConv()).eval()
    with pytest.raises(ExportError) as info:
        export_onnx(model, tmp_path / "m.onnx", input_shape=SHAPE)
    text = _one_line(info.value)
    assert "'1'" in text and "ForeignDynamicConv" in text and "ODConv2d" in text
    assert _files(tmp_path) == []


@pytest.mark.parametrize("where", ["missing-dir", "file-as-dir", "is-dir"])
def test_output_path_not_writable(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    path = {"missing-dir": tmp_path / "nope" / "m.onnx", "file-as-dir": tmp_path / "afile" / "m.onnx", "is-dir": tmp_path}[where]
    with pytest.raises(InputError) as info:
        export_onnx(small_model(), path, input_shape=SHAPE)
    _one_line(info.value)
    assert _files(tmp_path) == ["afile"]


def test_bad_input_shape_and_batch(tmp_path):
    with pytest.raises(InputError):
        export_onnx(small_model(), tmp_path / "m.onnx", input_shape=(8, 10))
    with pytest.raises(InputError, match="batch must be a positive integer"):  # refused, not traced at batch 0
        export_onnx(small_model(), tmp_path / "m.onnx", input_shape=SHAPE, batch=0)
    with pytest.raises(ExportError, match="export starts from float32"):
        export_onnx(small_model().double(), tmp_path / "m.onnx", input_shape=SHAPE)
    with pytest.raises(InputError, match="extra_metadata would replace odexport's own odexport.batch, odexport.forms"):
        export_onnx(small_model(), tmp_path / "m.onnx", input_shape=SHAPE, extra_metadata={"forms": "x", "odexport.batch": 3, "note": 1})
    with pytest.raises(ExportError) as info:  # the model does not run on this shape
        export_onnx(small_model(), tmp_path / "m.onnx", input_shape=(3, 10, 10))
    _one_line(info.value)
    assert _files(tmp_path) == []


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if float(x.sum()) > 0 else x


def test_failed_trace_leaves_nothing(tmp_path):
    model = nn.Sequential(ODConv2d(8, 8, 3, padding=1), DataDependent()).eval()
    with pytest.raises(ExportError) as info:
        export_onnx(model, tmp_path / "m.onnx", input_shape=SHAPE)
    _one_line(info.value)
    assert _files(tmp_path) == []


class ExportsDifferently(nn.Module):
    """Computes x in PyTorch but x + 0.5 in the exported graph: a real parity failure."""

    def forward(self, x):
        return x + 0.5 if torch.onnx.is_in_onnx_export() else x


def test_parity_failure_keeps_a_renamed_file_and_raises(tmp_path):
    model = nn.Sequential(ODConv2d(8, 8, 3, padding=1), ExportsDifferently()).eval()
    with pytest.raises(ParityError) as info:
        export_onnx(model, tmp_path / "m.onnx", form="decomposed", input_shape=SHAPE)
    assert info.value.exit_code == 2 and "m.parity-failed.onnx" in _one_line(info.value)
    assert _files(tmp_path) == ["m.parity-failed.onnx", "m.parity-failed.onnx.json"]
    result = info.value.result
    assert not result.parity.passed and result.path.name == "m.parity-failed.onnx"
    assert all(c.max_abs == pytest.approx(0.5, abs=1e-6) for c in result.parity.comparisons)
    sidecar = json.loads((tmp_path / "m.parity-failed.onnx.json").read_text())
    assert sidecar["parity"]["passed"] is False and sidecar["path"].endswith("m.parity-failed.onnx")


def test_a_failed_or_interrupted_export_leaves_the_previous_output_whole(tmp_path, monkeypatch):
    """The new model is verified beside -o and renamed onto it only when it passed: a parity
    failure, or Ctrl-C during the verification, used to delete the last good export (and left
    its sidecar orphaned)."""
    from odexport.export import onnx_export

    good = export_onnx(small_model(), tmp_path / "m.onnx", form="decomposed", input_shape=SHAPE)
    before = {name: (tmp_path / name).read_bytes() for name in ("m.onnx", "m.onnx.json")}
    assert good.parity.passed

    broken = nn.Sequential(ODConv2d(8, 8, 3, padding=1), ExportsDifferently()).eval()
    with pytest.raises(ParityError):
        export_onnx(broken, tmp_path / "m.onnx", form="decomposed", input_shape=SHAPE)
    assert _files(tmp_path) == ["m.onnx", "m.onnx.json", "m.parity-failed.onnx", "m.parity-failed.onnx.json"]
    assert {name: (tmp_path / name).read_bytes() for name in before} == before

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "compare_with_torch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(small_model(), tmp_path / "m.onnx", form="custom", input_shape=SHAPE)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert "m.onnx" in _files(tmp_path) and not [n for n in _files(tmp_path) if n.startswith(".")]


def test_models_with_external_data_re_export_and_fail_parity_cleanly(tmp_path, monkeypatch):
    """Above the external-data threshold (lowered here): re-exporting from the folder that holds
    ``m.onnx.data`` (onnx checked the location against the working directory and refused), and a
    parity failure (the tensors had moved out of the in-memory model: an internal error, no
    ``.parity-failed.onnx``) both work, and every written model runs from its own data file."""
    from pathlib import Path

    import onnxruntime as ort

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)

    def outputs(name):
        return ort.InferenceSession(name, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]

    model = small_model()
    export_onnx(model, Path("m.onnx"), form="decomposed", input_shape=SHAPE)
    first = outputs("m.onnx")
    export_onnx(model, Path("m.onnx"), form="custom", input_shape=SHAPE)  # over m.onnx.data, from its folder
    assert _files(tmp_path) == ["m.onnx", "m.onnx.data", "m.onnx.json"]
    np.testing.assert_allclose(outputs("m.onnx"), first, rtol=1e-5, atol=1e-5)

    broken = nn.Sequential(ODConv2d(8, 8, 3, padding=1), ExportsDifferently()).eval()
    with pytest.raises(ParityError) as info:
        export_onnx(broken, Path("m.onnx"), form="decomposed", input_shape=SHAPE)
    assert info.value.exit_code == 2
    assert _files(tmp_path) == ["m.onnx", "m.onnx.data", "m.onnx.json", "m.parity-failed.onnx", "m.parity-failed.onnx.data",
                                "m.parity-failed.onnx.json"]
    np.testing.assert_allclose(outputs("m.onnx"), first, rtol=1e-5, atol=1e-5)  # -o kept the good export
    with torch.no_grad():
        expected = broken(torch.from_numpy(x)).numpy() + 0.5  # what the failed graph computes
    np.testing.assert_allclose(outputs("m.parity-failed.onnx"), expected, rtol=1e-4, atol=1e-4)
    export_onnx(model, Path("m.onnx"), form="decomposed", input_shape=SHAPE, check=False)  # unverified: proves nothing
    assert "m.parity-failed.onnx" in _files(tmp_path)
    export_onnx(model, Path("m.onnx"), form="decomposed", input_shape=SHAPE)  # a passing export supersedes the failure
    assert _files(tmp_path) == ["m.onnx", "m.onnx.data", "m.onnx.json"]


def test_model_mode_and_forward_are_restored(tmp_path):
    from odexport.export.plan import plan_forms

    model = small_model().train()
    result = export_onnx(model, tmp_path / "m.onnx", form="custom", input_shape=SHAPE, check=False)
    assert model.training
    plan_forms(model, input_shape=SHAPE)
    assert model.training
    # each custom node carries its PyTorch layer's name (the per-layer report and TensorRT's logs name it)
    assert [n.name for n in onnx.load(str(result.path)).graph.node if n.domain == "com.odexport"] == ["0", "2"]
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert "odexport_core" not in " ".join(n for n, _ in model.named_modules())


def test_static_model_without_dynamic_layers(tmp_path):
    model = nn.Sequential(nn.Conv2d(8, 4, 3), nn.ReLU()).eval()
    result = export_onnx(model, tmp_path / "s.onnx", input_shape=SHAPE)
    assert result.forms == [] and result.parity.passed


@pytest.mark.parametrize("form", ["decomposed", "custom"])
def test_batch_switch_and_patch_variants_export(tmp_path, form):
    """``sample|bmm`` (an If on the batch size: per-sample kernel conv at batch 1) and ``patch``
    export with a dynamic batch in both forms and match PyTorch on both sides of the switch."""
    from odexport.export.forms import describe_layers
    from odexport.export.onnx_export import build_onnx
    from odexport.export.plan import LayerPlan

    model = small_model()
    specs = describe_layers(model, SHAPE)
    plans = [LayerPlan(specs[0].name, form, "test", 0.0, "sample|bmm", specs[0]), LayerPlan(specs[1].name, form, "test", 0.0, "patch", specs[1])]
    proto = build_onnx(model, plans, input_shape=SHAPE, batch=None, opset=18, custom=form == "custom", example_batch=13)
    ops = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    assert "If" in ops
    assert batch_constants(proto, 13) == []
    assert_runs_at_batches(model, proto, SHAPE, batches=(1, 2, 7))


def test_ctrl_c_inside_the_exporter_is_an_interrupt_not_an_export_failure():
    """torch.export wraps what interrupts it in its own error; an interrupt found anywhere in that
    chain is re-raised as KeyboardInterrupt (the CLI says "interrupted", exit 130), not reported as
    "torch.onnx.export failed" (exit 1, blaming the model)."""

    class Interrupted(nn.Module):
        def forward(self, x):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as exc:  # how the signal reaches Python code inside torch's tracing
                raise RuntimeError("tracing stopped") from exc

    with pytest.raises(KeyboardInterrupt):
        onnx_export.torch_to_onnx(Interrupted(), (torch.randn(1, 3),), ["x"], ["y"], None, 18)

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("a layer of your own")

    with pytest.raises(ExportError, match="torch.onnx.export failed"):
        onnx_export.torch_to_onnx(Broken(), (torch.randn(1, 3),), ["x"], ["y"], None, 18)


def test_a_re_export_keeps_the_privacy_of_the_files_it_replaces(tmp_path):
    import os
    import stat

    export_onnx(small_model(), tmp_path / "m.onnx", form="decomposed", input_shape=SHAPE, check=False)
    for name in ("m.onnx", "m.onnx.json"):
        os.chmod(tmp_path / name, 0o600)
    export_onnx(small_model(), tmp_path / "m.onnx", form="custom", input_shape=SHAPE, check=False)
    assert {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("m.onnx", "m.onnx.json")} == \
        {"m.onnx": 0o600, "m.onnx.json": 0o600}
    assert json.loads((tmp_path / "m.onnx.json").read_text())["metadata"]["odexport.form"] == "custom"


def test_one_function_body_per_configuration_and_onnx_pads_order():
    """Layers share a custom op's function body when their overload name is equal, so the name must
    change with every field the body depends on (without the dilation in it, two layers differing
    only in dilation would share one body and the export fail); the node's ``pads`` follow ONNX's order
    [top, left, bottom, right] for a (rows, columns) padding."""
    import dataclasses

    from odexport.export.custom import node_attributes, overload_name
    from odexport.export.forms import LayerSpec

    base = LayerSpec(name="a", op="ODConv2d", in_channels=8, out_channels=16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 2),
                     dilation=(1, 1), groups=1, num_kernels=4, input_hw=(10, 10), output_hw=(10, 12), has_channel=True,
                     has_filter=True, has_spatial=True, has_kernel=True, has_dyn_bias=False, has_static_bias=False)
    changes = dict(in_channels=4, out_channels=8, kernel_size=(3, 1), stride=(2, 1), padding=(2, 1), dilation=(2, 1), groups=2,
                   num_kernels=2, input_hw=(10, 8), has_channel=False, has_filter=False, has_spatial=False, has_kernel=False,
                   has_dyn_bias=True, has_static_bias=True)
    for field, value in changes.items():
        assert overload_name(dataclasses.replace(base, **{field: value}), "v") != overload_name(base, "v"), field
    assert overload_name(dataclasses.replace(base, name="b"), "v") == overload_name(base, "v")  # layers alike share it
    assert node_attributes(base)["pads"] == [1, 2, 1, 2]


def test_the_export_check_fails_on_any_output_and_names_the_worst(tmp_path):
    """A two-output graph whose first output is wrong fails even though the last passes; the
    summary ranks a NaN above every number (it is the failure to name), whatever the order; a
    shape mismatch fails; one inf in PyTorch's own output is refused as broken weights."""
    from onnx import TensorProto, helper

    from odexport.export.verify import NOISE_FLOOR_FACTOR, OutputComparison, ParityResult, compare_arrays, compare_with_torch
    from odexport.report.compare import NOISE_MARGIN

    def value(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2, 3, 3])

    graph = helper.make_graph([helper.make_node("Mul", ["input", "three"], ["output"]), helper.make_node("Identity", ["input"], ["copy"])],
                              "two", [value("input")], [value("output"), value("copy")],
                              [helper.make_tensor("three", TensorProto.FLOAT, [], [3.0])])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)

    class Twice(nn.Module):
        def forward(self, x):
            return x * 2, x

    result = compare_with_torch(Twice(), str(path), (2, 3, 3), batches=(1,))
    assert [c.passed for c in result.comparisons] == [False, True] and not result.passed

    class OneInf(nn.Module):
        def forward(self, x):
            y = x * 3
            y[0, 0, 0, 0] = float("inf")
            return y, x

    with pytest.raises(InputError, match="the model computes 1 NaN/inf values in output 'output'"):
        compare_with_torch(OneInf(), str(path), (2, 3, 3), batches=(1,))

    small, broken = OutputComparison("output", 1, 1e-6, 1e-6, None, True), OutputComparison("output", 2, float("nan"), float("nan"), None, False)
    for order in ([small, broken], [broken, small]):
        failed = ParityResult(False, 1e-8, 1e-4, "fp32", 0, order)
        assert failed.worst() is broken and "max abs nan, max rel nan" in failed.summary()
    mismatch = compare_arrays("output", 1, np.ones((2, 4)), np.ones((2, 5)), 1e-8, 1e-4)
    assert not mismatch.passed and mismatch.max_abs == float("inf")
    assert NOISE_FLOOR_FACTOR == NOISE_MARGIN  # the export's floor is odexport check's (docstring)
