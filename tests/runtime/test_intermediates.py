"""Per-layer values: PyTorch hooks vs values located in a torch.export-based ONNX graph.

The ONNX graph comes from ``torch.onnx.export(dynamo=True)`` at a fixed batch (the reference
folded form exports only that way), so the test is independent of odexport's exporter.
A weight changed in the ONNX file must be blamed on the right layer and component.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from odexport.layers import DyConv2d, ODConv2d
from odexport.report.compare import ToleranceOverrides
from odexport.report.parity import per_layer_parity
from odexport.runtime.intermediates import METADATA_KEY, onnx_layer_value_names, torch_layer_values, with_extra_outputs
from odexport.runtime.parity import onnx_layer_values

BATCH = 2


class TwoDynamic(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.od = ODConv2d(16, 16, 3, padding=1, kernel_num=4)
        self.dy = DyConv2d(16, 24, 3, padding=1, num_kernels=3)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.od(x))
        return self.head(self.dy(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = TwoDynamic().eval()
    with torch.no_grad():  # make the BN statistics non-trivial so folding them is exercised
        model.od.attention.bn.running_mean.uniform_(-0.2, 0.2)
        model.od.attention.bn.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("perlayer") / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(BATCH, 3, 12, 12),), str(path), input_names=["input"], output_names=["output"],
                          dynamo=True, verbose=False)
    return model, path


def _x():
    return np.random.default_rng(3).standard_normal((BATCH, 3, 12, 12)).astype(np.float32)


def _perturbed(path, tmp_path, initializer: str, delta: float = 0.5):
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        if init.name == initializer:
            array = numpy_helper.to_array(init).copy()
            array.flat[0] += delta
            init.CopyFrom(numpy_helper.from_array(array, init.name))
            break
    else:
        raise AssertionError(f"no initializer {initializer}: {[i.name for i in proto.graph.initializer]}")
    out = tmp_path / f"perturbed-{initializer}.onnx"
    onnx.save(proto, out)
    return out


def test_torch_values_follow_the_layer_math(exported):
    model, _ = exported
    values = torch_layer_values(model, _x())
    assert list(values) == ["od", "dy"]
    assert set(values["od"]) == {"attention.channel", "attention.filter", "attention.spatial", "attention.kernel", "output"}
    assert set(values["dy"]) == {"attention.kernel", "output"}
    assert values["od"]["attention.kernel"].shape == (BATCH, 4)
    np.testing.assert_allclose(values["dy"]["attention.kernel"].sum(axis=1), 1.0, rtol=1e-6)
    with torch.no_grad():
        x = torch.relu(model.stem(torch.from_numpy(_x())))
        np.testing.assert_allclose(values["od"]["output"], model.od(x).numpy(), atol=1e-6)


def test_values_are_located_by_module_scope(exported):
    model, path = exported
    torch_values = torch_layer_values(model, _x())
    shapes = {layer: {c: v.shape[1:] for c, v in comps.items()} for layer, comps in torch_values.items()}
    mapping, notes = onnx_layer_value_names(onnx.load(str(path)), shapes)
    assert set(mapping) == {"od", "dy"}, notes
    assert set(mapping["od"]) == set(torch_values["od"])


def test_correct_export_has_no_divergence(exported):
    model, path = exported
    values = onnx_layer_values(model, path, _x())
    result = per_layer_parity(values, ToleranceOverrides(), "fp32")
    assert len(result.layers) == 7
    assert result.first_divergence is None, [e.to_dict() for e in result.layers if not e.comparison.passed]


@pytest.mark.parametrize(
    ("initializer", "layer", "component", "kind"),
    [
        ("od.attention.channel_fc.weight", "od", "attention.channel", "attention"),
        ("od.weight", "od", "output", "convolution"),
        ("dy.weight", "dy", "output", "convolution"),
    ],
)
def test_first_divergence_names_layer_and_component(exported, tmp_path, initializer, layer, component, kind):
    model, path = exported
    values = onnx_layer_values(model, _perturbed(path, tmp_path, initializer), _x())
    first = per_layer_parity(values, ToleranceOverrides(), "fp32").first_divergence
    assert first is not None
    assert (first.layer, first.component, first.kind) == (layer, component, kind)


def test_declared_values_take_precedence(exported):
    model, path = exported
    proto = onnx.load(str(path))
    torch_values = torch_layer_values(model, _x())
    shapes = {layer: {c: v.shape[1:] for c, v in comps.items()} for layer, comps in torch_values.items()}
    found, _ = onnx_layer_value_names(proto, shapes)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = __import__("json").dumps({"dy": {"output": found["dy"]["output"]}})
    mapping, notes = onnx_layer_value_names(proto, shapes)
    assert mapping == {"dy": {"output": found["dy"]["output"]}}
    assert any("declares no values" in n for n in notes)


def test_legacy_graph_without_scopes_gets_a_note(tmp_path):
    from tests.runtime._models import TinyNet, export_plain

    proto = onnx.load(export_plain(TinyNet().eval(), tmp_path / "legacy.onnx"))
    mapping, notes = onnx_layer_value_names(proto, {"conv": {"output": (8, 16, 16)}})
    assert mapping == {} and "module scopes" in notes[0]


def test_with_extra_outputs_keeps_the_original(exported):
    _, path = exported
    proto = onnx.load(str(path))
    name = proto.graph.node[0].output[0]
    extended = with_extra_outputs(proto, [name])
    assert [o.name for o in extended.graph.output][-1] == name
    assert name not in [o.name for o in proto.graph.output]


def test_float64_values_are_taken_before_an_inplace_activation():
    """The float64 reference (the rounding-noise run, --reference-dtype float64) records each layer's own output:
    a view of it would become the output of the in-place ReLU that follows."""
    torch.manual_seed(0)
    conv = ODConv2d(4, 8, 3, padding=1, kernel_num=2)
    model = nn.Sequential(conv, nn.ReLU(inplace=True)).double().eval()
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6))
    recorded = torch_layer_values(model, x)["0"]["output"]
    with torch.no_grad():
        expected = conv(torch.from_numpy(x)).numpy()
    assert (expected < 0).any()  # the ReLU would have changed it
    np.testing.assert_array_equal(recorded, expected)


def test_a_dynamic_conv_whose_output_is_the_graph_output_is_located(tmp_path):
    """The model's last layer is the dynamic conv: its output is a graph output, not an
    intermediate, and is still compared; the rounding noise per component is the largest
    |fp32 - fp64| difference (the floor the per-layer verdict widens by), not a mean."""
    import copy

    class EndsInDynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.od = ODConv2d(8, 8, 3, padding=1, kernel_num=2)

        def forward(self, x):
            return self.od(torch.relu(self.stem(x)))

    torch.manual_seed(0)
    model = EndsInDynamic().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    path = str(tmp_path / "last.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x),), path, input_names=["input"], output_names=["output"],
                          dynamo=True, verbose=False)
    shapes = {layer: {c: v.shape[1:] for c, v in comps.items()} for layer, comps in torch_layer_values(model, x).items()}
    mapping, notes = onnx_layer_value_names(onnx.load(path), shapes)
    assert mapping["od"]["output"] == "output", notes
    double = copy.deepcopy(model).double()
    values = onnx_layer_values(model, path, x, noise_model=double)
    assert "output" in values["candidate"]["od"]
    ours, exact = torch_layer_values(model, x)["od"], torch_layer_values(double, x)["od"]
    for component, noise in values["noise"]["od"].items():
        assert noise == float(np.abs(ours[component].astype(np.float64) - exact[component]).max()), component


def test_a_model_without_dynamic_convs_has_nothing_to_compare_and_says_so(tmp_path):
    """Same keys as any other result (the renderer and JSON read ``noise`` like the rest)."""
    from tests.runtime._models import TinyNet, export_plain

    model = TinyNet().eval()
    path = export_plain(model, tmp_path / "static.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    values = onnx_layer_values(model, path, x, noise_model=TinyNet().double().eval())
    assert values == {"batch_size": 2, "torch": {}, "candidate": {}, "notes": ["the reference has no dynamic convs"], "noise": {}}
