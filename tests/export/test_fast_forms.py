"""The fast export variants (patch, sample) and the onnxruntime-CPU NCHWc rewrite are exact.

References: the outputs the public reference implementations computed (refdata layer banks), and
PyTorch's own layer forward at batch 1, 2 and 7.  Real dynamo exports, real onnxruntime sessions,
tiny layers; no timing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from odexport.export.fast_forms import PatchCore, SampleCore, plan_cpu
from odexport.export.forms import describe_layers
from odexport.export.onnx_export import build_onnx
from odexport.export.plan import LayerPlan
from odexport.layers import DyConv2d, ODConv2d
from tests.export._cases import TOL, assert_runs_at_batches, refdata_layer_model, run_ort, torch_out

ort = pytest.importorskip("onnxruntime")


def export_with(model, variant_of, shape, batch=None, **core_options):
    """Export ``model`` with every dynamic conv in ``variant_of(spec)`` (via forms.exporting_forms)."""
    specs = describe_layers(model, shape)
    plans = [LayerPlan(s.name, "decomposed", "test", 0.0, variant_of(s), s) for s in specs]
    return build_onnx(model, plans, input_shape=shape, batch=batch, opset=18, custom=False)


def with_static_bias(layer):
    layer.static_bias = nn.Parameter(torch.randn(layer.weight.shape[1]) * 0.5)
    if isinstance(layer, DyConv2d) and layer.bias is not None:
        nn.init.normal_(layer.bias)
    return layer.eval()


LAYERS = {
    "od-k3-K1": lambda: ODConv2d(8, 16, 3, 1, 1, kernel_num=1),
    "od-k3-s2-K4": lambda: ODConv2d(8, 16, 3, 2, 1, kernel_num=4),
    "od-dw-K4": lambda: ODConv2d(8, 8, 3, 1, 1, groups=8, kernel_num=4),
    "od-g2-K3": lambda: ODConv2d(8, 16, 3, 1, 1, groups=2, kernel_num=3),
    "od-1x1-K4": lambda: ODConv2d(8, 12, 1, 1, 0, kernel_num=4),
    "od-1x1-s2-K1": lambda: ODConv2d(8, 12, 1, 2, 0, kernel_num=1),
    "dy-k3-K4": lambda: DyConv2d(8, 16, 3, 1, 1, num_kernels=4),
    "dy-k3-s2-g2-K4": lambda: DyConv2d(8, 16, 3, 2, 1, groups=2, num_kernels=4),
}
SHAPE = (8, 9, 9)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("mix", ["in", "out"])
def test_patch_matches_pytorch_at_several_batches(name, mix):
    layer = with_static_bias(LAYERS[name]())
    model = nn.Sequential(layer).eval()
    spec = describe_layers(model, SHAPE)[0]
    # Eager first (the torch core itself), then the export.
    x = torch.randn(3, *SHAPE)
    att = layer.attentions(x)
    dyn_bias = layer.bias if isinstance(layer, DyConv2d) else None
    with torch.no_grad():
        eager = PatchCore(spec, mix=mix)(x, layer.weight, *att[:2], att.spatial, att.kernel, dyn_bias, layer.static_bias)
        np.testing.assert_allclose(eager.numpy(), layer(x).numpy(), **TOL)
    proto = export_with(model, lambda s: "patch", SHAPE)
    assert_runs_at_batches(model, proto, SHAPE, batches=(1, 2, 7))


@pytest.mark.parametrize("name", ["od-k3-K1", "od-k3-s2-K4", "od-dw-K4", "dy-k3-s2-g2-K4", "od-1x1-K4"])
@pytest.mark.parametrize("placement", [("weight", "weight"), ("input", "output")])
def test_sample_matches_pytorch_at_its_fixed_batch(name, placement):
    layer = with_static_bias(LAYERS[name]())
    model = nn.Sequential(layer).eval()
    spec = describe_layers(model, SHAPE)[0]
    for batch in (1, 2):
        x = torch.randn(batch, *SHAPE)
        att = layer.attentions(x)
        dyn_bias = layer.bias if isinstance(layer, DyConv2d) else None
        core = SampleCore(spec, channel_on=placement[0], filter_on=placement[1])
        with torch.no_grad():
            eager = core(x, layer.weight, att.channel, att.filter, att.spatial, att.kernel, dyn_bias, layer.static_bias)
        np.testing.assert_allclose(eager.numpy(), torch_out(model, x), **TOL)
    proto = export_with(model, lambda s: "sample", SHAPE, batch=1)
    assert_runs_at_batches(model, proto, SHAPE, batches=(1,))
    with pytest.raises(Exception):  # the batch-1 form refuses another batch instead of answering wrongly
        run_ort(proto, torch.randn(2, *SHAPE))


def test_sample_never_yields_a_dynamic_batch_model():
    """Asked for a dynamic batch, the sample variant either fails to export or the exporter
    falls back to the example batch -- which the export's symbolic-batch check refuses."""
    from odexport.errors import ExportError
    from odexport.export.onnx_export import _check_symbolic_batch

    layer = with_static_bias(LAYERS["od-k3-s2-K4"]())
    model = nn.Sequential(layer).eval()
    with pytest.raises(ExportError):
        _check_symbolic_batch(export_with(model, lambda s: "sample", SHAPE, batch=None))


@pytest.mark.parametrize("bank,index", [("odconv", 0), ("odconv", 3), ("odconv", 7), ("kaijieshi7", 1), ("tardelean", 2)])
def test_fast_variants_reproduce_the_reference_implementations(bank, index):
    model, x, expected, _ = refdata_layer_model(bank, index)
    shape = tuple(x.shape[1:])
    expected = expected.numpy()
    patch = export_with(model, lambda s: "patch", shape)
    np.testing.assert_allclose(run_ort(patch, x), expected, **TOL)
    sample = export_with(model, lambda s: "sample", shape, batch=x.shape[0])
    np.testing.assert_allclose(run_ort(sample, x), expected, **TOL)


@pytest.mark.parametrize("arch", ["od_resnet_tiny", "dy_resnet_tiny", "od_mobilenetv2_tiny"])
def test_cpu_plans_of_tiny_models(arch):
    from odexport.models import create_model

    model = create_model(arch).eval()
    shape = (3, 32, 32)
    specs = describe_layers(model, shape)
    dynamic = plan_cpu(specs, batch=None)
    assert all(p.variant != "sample" for p in dynamic)
    proto = build_onnx(model, dynamic, input_shape=shape, batch=None, opset=18, custom=False)
    assert_runs_at_batches(model, proto, shape, batches=(1, 2, 7))
    fixed = plan_cpu(specs, batch=1)
    proto = build_onnx(model, fixed, input_shape=shape, batch=1, opset=18, custom=False)
    assert_runs_at_batches(model, proto, shape, batches=(1,))


# -- onnxruntime-CPU runtime-weight NCHWc rewrite ------------------------------------------------


def _nchwc_convs(model):
    return [n for n in model.graph.node if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"]


@pytest.mark.parametrize("channels,groups", [(32, 1), (32, 32), (24, 1)])
def test_ort_cpu_rewrite_is_exact(channels, groups):
    from odexport.runtime.ort_optimize import nchwc_block_size, optimize_for_cpu

    layer = with_static_bias(ODConv2d(channels, channels, 3, 1, 1, groups=groups, kernel_num=4))
    model = nn.Sequential(layer, nn.ReLU(), nn.Conv2d(channels, 16, 1)).eval()
    shape = (channels, 10, 10)
    proto = export_with(model, lambda s: "sample", shape, batch=1)
    report = optimize_for_cpu(proto)
    x = torch.randn(1, *shape)
    np.testing.assert_allclose(run_ort(report.model, x), torch_out(model, x), **TOL)
    block = nchwc_block_size()
    if block is None:
        assert not report.changed and report.notes
    elif channels % block == 0:
        assert report.rewritten, report.to_dict()
        weights = {n.input[1] for n in _nchwc_convs(report.model)}
        assert weights - {t.name for t in report.model.graph.initializer}, "an NCHWc Conv takes the runtime weight"


def test_ort_cpu_rewrite_leaves_static_models_alone():
    from odexport.runtime.ort_optimize import optimize_for_cpu

    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()).eval()
    proto = build_onnx(model, [], input_shape=(16, 8, 8), batch=None, opset=18, custom=False)
    report = optimize_for_cpu(proto)
    assert not report.changed and report.model is proto
