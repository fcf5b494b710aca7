"""The fast export variants (patch, sample) and the onnxruntime-CPU NCHWc rewrite are exact.

References: the outputs the public reference implementations computed (refdata layer banks), and
PyTorch's own layer forward at batch 1, 2 and 7.  Real dynamo exports, real onnxruntime sessions,
tiny layers; no timing.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from odexport.export.fast_forms import PatchCore, SampleCore, plan_cpu
from odexport.export.forms import describe_layers
from odexport.export.onnx_export import build_onnx
from odexport.export.plan import LayerPlan
from odexport.layers import DyConv2d, ODConv2d
from tests.export._cases import refdata_layer_model, run_ort, torch_out
from odexport.runtime.ort_optimize import HAND_BUILT_IR_VERSION

ort = pytest.importorskip("onnxruntime")


def assert_runs_at_batches(model, proto, shape, batches=(1, 2, 7)):
    """onnxruntime equals PyTorch to 1e-5 of the output's scale at each batch size."""
    gen = torch.Generator().manual_seed(0)
    for batch in batches:
        x = torch.randn(batch, *shape, generator=gen)
        assert_close(run_ort(proto, x), torch_out(model, x), what=f"batch {batch}")


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
def test_patch_matches_pytorch_at_several_batches(name):
    layer = with_static_bias(LAYERS[name]())
    model = nn.Sequential(layer).eval()
    spec = describe_layers(model, SHAPE)[0]
    # Eager first (the torch core itself, both ways of mixing K kernels), then the export.
    x = torch.randn(3, *SHAPE)
    att = layer.attentions(x)
    dyn_bias = layer.bias if isinstance(layer, DyConv2d) else None
    with torch.no_grad():
        for mix in ("in", "out"):
            eager = PatchCore(spec, mix=mix)(x, layer.weight, *att[:2], att.spatial, att.kernel, dyn_bias, layer.static_bias)
            assert_close(eager.numpy(), layer(x).numpy(), what=f"mix {mix}")
    proto = export_with(model, lambda s: "patch", SHAPE)
    assert_runs_at_batches(model, proto, SHAPE, batches=(1, 2, 7))


@pytest.mark.parametrize("name", ["od-k3-K1", "od-k3-s2-K4", "od-dw-K4", "dy-k3-s2-g2-K4", "od-1x1-K4"])
def test_sample_matches_pytorch_at_its_fixed_batch(name):
    layer = with_static_bias(LAYERS[name]())
    model = nn.Sequential(layer).eval()
    spec = describe_layers(model, SHAPE)[0]
    for placement in (("weight", "weight"), ("input", "output")):
        for batch in (1, 2):
            x = torch.randn(batch, *SHAPE)
            att = layer.attentions(x)
            dyn_bias = layer.bias if isinstance(layer, DyConv2d) else None
            core = SampleCore(spec, channel_on=placement[0], filter_on=placement[1])
            with torch.no_grad():
                eager = core(x, layer.weight, att.channel, att.filter, att.spatial, att.kernel, dyn_bias, layer.static_bias)
            assert_close(eager.numpy(), torch_out(model, x), what=f"{placement} batch {batch}")
    proto = export_with(model, lambda s: "sample", SHAPE, batch=1)
    assert_runs_at_batches(model, proto, SHAPE, batches=(1,))
    with pytest.raises(Exception, match="Got invalid dimensions for input"):  # the batch-1 form refuses another batch instead of answering wrongly
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
    assert_close(run_ort(patch, x), expected, what="patch")
    sample = export_with(model, lambda s: "sample", shape, batch=x.shape[0])
    assert_close(run_ort(sample, x), expected, what="sample")


@pytest.mark.parametrize("arch", ["od_resnet_tiny", "dy_resnet_tiny", "od_mobilenetv2_tiny"])
def test_cpu_plans_of_tiny_models(arch):
    from odexport.models import create_model

    model = lively(create_model(arch).eval())
    shape = (3, 32, 32)
    specs = describe_layers(model, shape)
    dynamic = plan_cpu(specs, batch=None)
    assert all(p.variant != "sample" for p in dynamic)
    proto = build_onnx(model, dynamic, input_shape=shape, batch=None, opset=18, custom=False)
    assert_runs_at_batches(model, proto, shape, batches=(1, 2, 7))
    fixed = plan_cpu(specs, batch=1)
    proto = build_onnx(model, fixed, input_shape=shape, batch=1, opset=18, custom=False)
    assert_runs_at_batches(model, proto, shape, batches=(1,))


@pytest.mark.parametrize("hw, variant", [((20, 20), "sample"), ((16, 18), "sample"), ((16, 17), "patch")])
def test_cpu_variant_takes_the_per_sample_kernel_up_to_twice_the_input(hw, variant):
    """At a fixed batch the per-sample kernel is taken while the K kernels are at most 2x the
    layer input (docs/performance.md, attempt 2); a 64->64 3x3 K=1 kernel is 36864 numbers, a
    64x16x18 input 18432 (exactly 2x), 64x16x17 17408 (past it: the one-kernel patch form)."""
    from odexport.export.fast_forms import cpu_variant

    layer = nn.Sequential(ODConv2d(64, 64, 3, 1, 1, kernel_num=1)).eval()
    spec = describe_layers(layer, (64, *hw))[0]
    assert cpu_variant(spec, batch=1)[0] == variant


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
    assert_close(run_ort(report.model, x), torch_out(model, x))
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


# -- specialising the custom form (com.odexport nodes) for onnxruntime CPU ----------------------


@functools.lru_cache(maxsize=None)
def _custom_export(arch, shape=(3, 32, 32), batch=None):
    """(model, custom-form export), made once per module run (callers copy before changing)."""
    from odexport.export.plan import plan_layers
    from odexport.models import create_model

    model = lively(create_model(arch).eval())
    specs = describe_layers(model, shape)
    plans = plan_layers(specs, "custom", target="cpu", batch=batch)
    return model, build_onnx(model, plans, input_shape=shape, batch=batch, opset=18, custom=True)


def lively(model):
    """Non-trivial BatchNorm statistics and affine terms (a fresh tiny model's outputs can be ~1e-12,
    which would make any absolute tolerance pass), as a trained network has."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def assert_close(got, expected, rel=1e-5, what=""):
    """max |got - expected| <= rel * max |expected| (and the outputs are not vanishingly small)."""
    scale = float(np.abs(expected).max())
    assert scale > 1e-3, f"reference output too small to compare ({scale:g}) {what}"
    err = float(np.abs(got - expected).max())
    assert err <= rel * scale, f"max |d| {err:.3g} > {rel:g} * {scale:.3g} {what}"


@pytest.mark.parametrize("arch", ["od_resnet_tiny", "dy_resnet_tiny", "dy_mobilenetv2_tiny"])
@pytest.mark.parametrize("form", ["nchwc", "gemm", "default"])
def test_specialised_custom_form_is_exact_at_every_batch(arch, form):
    """dy_mobilenetv2_tiny: 1x1 convs of 8 and 24 output channels with a dynamic bias, which
    onnxruntime pads to whole blocks (it ran with placeholder numbers once: 40x off)."""
    import onnx

    from odexport.runtime.ort_optimize import nchwc_block_size, optimize_for_cpu

    model, proto = _custom_export(arch)
    policy = None if form == "default" else (lambda layer, batch: form)
    report = optimize_for_cpu(proto, policy=policy, batches=(1, 2))
    onnx.checker.check_model(report.model)
    for batch in (1, 2, 3):  # 1 and 2 take their specialisations, 3 the general branch
        x = torch.randn(batch, 3, 32, 32)
        assert_close(run_ort(report.model, x), torch_out(model, x), what=f"batch {batch}")
    if nchwc_block_size() is not None and form != "default":
        assert report.rewritten or report.gemm, report.to_dict()
        if form == "gemm":
            assert report.gemm


class _DyBiasNet(nn.Module):
    """DY-Conv layers with a dynamic bias (and a static one, as reparameterisation leaves after
    folding a BatchNorm), 32 channels: whole blocks, so a batch runs as one grouped Conv."""

    def __init__(self, kernel_num):
        super().__init__()
        self.c1 = with_static_bias(DyConv2d(32, 32, 3, 1, 1, bias=True, num_kernels=kernel_num, hidden_channels=8))
        self.c2 = with_static_bias(DyConv2d(32, 32, 3, 2, 1, bias=True, num_kernels=kernel_num, hidden_channels=8))

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def _grouped_batch_3_report(model, shape):
    """The rewrite of ``model``'s custom export specialised at batches 1 and 3, after checking it
    against float64 at those sizes and at 2 (the general branch)."""
    from odexport.export.plan import plan_layers
    from odexport.runtime.ort_optimize import nchwc_block_size, optimize_for_cpu

    if nchwc_block_size() is None:
        pytest.skip("onnxruntime forms no NCHWc Conv on this machine")
    proto = build_onnx(model, plan_layers(describe_layers(model, shape), "custom", target="cpu", batch=None),
                       input_shape=shape, batch=None, opset=18, custom=True)
    report = optimize_for_cpu(proto, policy=lambda layer, batch: "nchwc", batches=(1, 3))
    for batch in (1, 3, 2):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            expected = model.double()(x.double()).numpy()
        model.float()
        assert_close(run_ort(report.model, x), expected, rel=2e-6, what=f"batch {batch}")
    return report


@pytest.mark.parametrize("kernel_num", [4, 1])
def test_grouped_batch_carries_the_dynamic_bias(kernel_num):
    torch.manual_seed(kernel_num)
    report = _grouped_batch_3_report(_DyBiasNet(kernel_num).eval(), (32, 12, 12))
    # batch 3: one grouped Conv per layer ("#batch"), not three per-sample ones ("#sample0", ...)
    assert report.rewritten == ["c1", "c2", "c1#batch", "c2#batch"], report.to_dict()


class _DepthwiseNet(nn.Module):
    """Depthwise dynamic convs on 32 channels: ODConv (channel, spatial and kernel attentions; no
    filter head on a depthwise conv), one-kernel ODConv, DY-Conv with a dynamic bias."""

    def __init__(self):
        super().__init__()
        self.od4 = with_static_bias(ODConv2d(32, 32, 3, 1, 1, groups=32, kernel_num=4))
        self.od1 = with_static_bias(ODConv2d(32, 32, 3, 2, 1, groups=32, kernel_num=1))
        self.dy = with_static_bias(DyConv2d(32, 32, 3, 1, 1, groups=32, bias=True, num_kernels=4, hidden_channels=8))

    def forward(self, x):
        return self.dy(torch.relu(self.od1(torch.relu(self.od4(x)))))


def test_grouped_batch_runs_depthwise_layers_as_one_conv():
    torch.manual_seed(5)
    report = _grouped_batch_3_report(_DepthwiseNet().eval(), (32, 12, 12))
    assert {label for label in report.rewritten if "#" in label} == {"od4#batch", "od1#batch", "dy#batch"}, report.to_dict()


class _ODScaledKernelNet(nn.Module):
    """Dense ODConvs whose kernels (32x32x3x3) are smaller than their activations (32x24x24), so
    ca and fa scale the kernels, K=4 and K=1."""

    def __init__(self):
        super().__init__()
        self.k4 = with_static_bias(ODConv2d(32, 32, 3, 1, 1, kernel_num=4))
        self.k1 = with_static_bias(ODConv2d(32, 32, 3, 1, 1, kernel_num=1))

    def forward(self, x):
        return self.k1(torch.relu(self.k4(x)))


def test_grouped_batch_scales_small_kernels_by_ca_and_fa():
    torch.manual_seed(6)
    report = _grouped_batch_3_report(_ODScaledKernelNet().eval(), (32, 24, 24))
    # no per-sample scale convs: ca and fa went onto the stacked kernels
    assert report.rewritten == ["k4", "k1", "k4#batch", "k1#batch"], report.to_dict()


class _PatchNet(nn.Module):
    """One-kernel ODConvs on small maps (the patch form's domain): stride 1 and 2, a dilated 3x3,
    a 1x1, residual adds and ReLUs after them (which onnxruntime fuses into the scale convs)."""

    def __init__(self):
        super().__init__()
        self.c1 = with_static_bias(ODConv2d(32, 32, 3, 1, 1, kernel_num=1))
        self.c2 = with_static_bias(ODConv2d(32, 64, 3, 2, 1, kernel_num=1))
        self.c3 = with_static_bias(ODConv2d(64, 64, 3, 1, 2, dilation=2, kernel_num=1))
        self.c4 = with_static_bias(ODConv2d(64, 32, 1, kernel_num=1))  # 1x1: the patches are the input

    def forward(self, x):
        y = torch.relu(torch.relu(self.c1(x)) + x)
        z = self.c2(y)
        return self.c4(torch.relu(self.c3(z) + z))


def test_patch_form_is_exact_at_every_batch():
    """Blocked patches + static 1x1 NCHWc Conv, ca/fa as per-sample depthwise NCHWc Convs with the
    batch folded into the channels: equal to PyTorch at the specialised sizes (1, 2) and the
    general branch (3)."""
    from odexport.runtime.ort_optimize import nchwc_block_size, optimize_for_cpu

    torch.manual_seed(0)
    model = lively(_PatchNet().eval())
    shape = (32, 6, 6)
    specs = describe_layers(model, shape)
    plans = [LayerPlan(s.name, "custom", "test", 0.0, "patch", s) for s in specs]
    proto = build_onnx(model, plans, input_shape=shape, batch=None, opset=18, custom=True)
    report = optimize_for_cpu(proto, policy=lambda layer, batch: "patches", batches=(1, 2))
    for batch in (1, 2, 3):
        x = torch.randn(batch, *shape)
        assert_close(run_ort(report.model, x), torch_out(model, x), what=f"batch {batch}")
    if nchwc_block_size() is not None:
        assert len(report.patches) == 8, report.to_dict()  # 4 layers x 2 batch sizes
        assert any("#filter" in label for label in report.rewritten), report.to_dict()
        assert any("#channel#batch2" in label for label in report.rewritten), report.to_dict()


def test_specialised_fixed_batch_model_has_no_switch():
    from odexport.runtime.ort_optimize import nchwc_block_size, optimize_for_cpu

    model, proto = _custom_export("od_resnet_tiny", batch=2)
    report = optimize_for_cpu(proto, policy=lambda layer, batch: "nchwc")
    assert all(n.op_type != "If" for n in report.model.graph.node)
    x = torch.randn(2, 3, 32, 32)
    assert_close(run_ort(report.model, x), torch_out(model, x))
    if nchwc_block_size() is not None:
        assert any(label.endswith("#sample1") for label in report.rewritten), report.to_dict()


def test_attentions_on_activations_where_the_kernel_is_large(monkeypatch):
    """ca on x and fa on y (not on the kernel) when the kernel dwarfs the activations; in a batch
    specialisation once for the whole batch, around one grouped Conv of the per-sample kernels --
    or, where the stacked kernels are too large to probe, per-sample Convs between Split and Concat."""
    from odexport.runtime import ort_optimize

    monkeypatch.setattr(ort_optimize, "ACTIVATION_SIDE_MIN_KERNEL", 0)
    layer = with_static_bias(ODConv2d(32, 32, 3, 1, 1, kernel_num=4))
    model = nn.Sequential(layer, nn.ReLU()).eval()
    shape = (32, 2, 2)
    spec = describe_layers(model, shape)[0]
    proto = build_onnx(model, [LayerPlan(spec.name, "custom", "test", 0.0, "patch", spec)], input_shape=shape, batch=None, opset=18, custom=True)
    for probe_limit, batch_kernels in ((ort_optimize.PROBE_EXACT_WEIGHT, {"0#batch"}), (1, {"0#sample0", "0#sample1"})):
        monkeypatch.setattr(ort_optimize, "PROBE_EXACT_WEIGHT", probe_limit)
        report = ort_optimize.optimize_for_cpu(proto, policy=lambda layer, batch: "nchwc", batches=(1, 2))
        for batch in (1, 2, 3):
            x = torch.randn(batch, *shape)
            assert_close(run_ort(report.model, x), torch_out(model, x), what=f"batch {batch}, probe limit {probe_limit}")
        if ort_optimize.nchwc_block_size() is not None:
            wired = set(report.rewritten)
            assert {"0#channel.sample0", "0#filter.sample0"} <= wired, report.to_dict()
            assert {"0#channel", "0#filter"} | batch_kernels <= wired, report.to_dict()  # batch 2: the scales once


def test_pooled_attention_simplification_is_exact():
    from odexport.runtime.ort_optimize import simplify_pooled_attention

    model, proto = _custom_export("od_mobilenetv2_tiny")
    simplified = simplify_pooled_attention(proto)
    ops = {n.op_type for n in simplified.graph.node}
    assert "ReduceMean" not in ops and {"GlobalAveragePool", "Gemm"} <= ops
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        assert_close(run_ort(simplified, x), torch_out(model, x), what=f"batch {batch}")


def test_without_nchwc_the_model_is_left_alone(monkeypatch):
    """An onnxruntime build (or machine) without NCHWc kernels: nothing machine-specific is made."""
    from odexport.runtime import ort_optimize

    monkeypatch.setattr(ort_optimize, "nchwc_block_size", lambda: None)
    _, proto = _custom_export("od_resnet_tiny")
    report = ort_optimize.optimize_for_cpu(proto)
    assert report.model is proto and not report.changed and report.notes


def test_batch_switch_shares_identical_constants():
    from odexport.runtime.ort_optimize import optimize_for_cpu

    _, proto = _custom_export("dy_resnet_tiny")
    one = optimize_for_cpu(proto, policy=lambda layer, batch: "nchwc", batches=(1,)).model
    two = optimize_for_cpu(proto, policy=lambda layer, batch: "nchwc", batches=(1, 2)).model
    size = lambda m: sum(len(t.raw_data) for t in m.graph.initializer)  # noqa: E731
    assert size(two) < 1.5 * size(one)  # the batch-2 branch reuses the banks and static weights


def test_large_kernels_are_made_in_chunks(monkeypatch):
    """Output-channel chunks of the blocked kernel, each consumed by its own NCHWc Conv, concatenated."""
    from odexport.runtime import ort_optimize

    monkeypatch.setattr(ort_optimize, "CHUNK_BYTES", 4 * 16 * 16 * 9 * 2)
    monkeypatch.setattr(ort_optimize, "ACTIVATION_SIDE_MIN_KERNEL", 0)
    for arch in ("od_resnet_tiny", "dy_resnet_tiny"):
        model, proto = _custom_export(arch)
        report = ort_optimize.optimize_for_cpu(proto, policy=lambda layer, batch: "nchwc", batches=(1, 2))
        for batch in (1, 2, 3):
            x = torch.randn(batch, 3, 32, 32)
            assert_close(run_ort(report.model, x), torch_out(model, x), what=f"{arch} batch {batch}")
        if ort_optimize.nchwc_block_size() is not None:
            assert any(".chunk1" in label for label in report.rewritten), report.to_dict()


def test_pooled_attention_mean_keeps_fp32_accuracy_on_large_maps():
    """onnxruntime's blocked GlobalAveragePool sums a whole map sequentially (1-3e-6 relative on
    56x56, 10x ReduceMean's error, amplified by deep networks); the simplification pools tiles
    first.  Reference: the float64 mean of the same activations."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from odexport.runtime.ort_optimize import simplify_pooled_attention

    rng = np.random.default_rng(0)
    channels, size = 32, 56
    weight = (rng.standard_normal((channels, channels, 3, 3)) * 0.05).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("ReduceMean", ["r", "axes"], ["m"])],
        "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, None), helper.make_tensor_value_info("r", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    model = simplify_pooled_attention(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=HAND_BUILT_IR_VERSION))
    assert "ReduceMean" not in {n.op_type for n in model.graph.node}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for _ in range(4):
        mean, act = session.run(None, {"x": rng.standard_normal((1, channels, size, size)).astype(np.float32)})
        exact = act.astype(np.float64).mean(axis=(2, 3), keepdims=True)
        worst = max(worst, float(np.abs((mean - exact) / exact).max()))
    assert worst < 6e-7, worst  # ReduceMean itself: ~2e-7


@pytest.mark.parametrize("size,stride,kept", [(4, 2, True), (4, 1, False)])
def test_large_multi_kernel_layers_on_tiny_maps_keep_their_exported_form(size, stride, kept):
    """The default policy (attempt 59): a K=4 kernel of 2^17+ numbers with a 2x2 output map stays in
    its exported (K-branch) form -- per sample it would read the K kernels once per image; the same
    layer on a 4x4 map gets the per-sample NCHWc kernel.  Exact either way, at every batch."""
    from odexport.runtime.ort_optimize import TINY_MAP_MIN_KERNEL, TINY_MAP_PIXELS, nchwc_block_size, optimize_for_cpu

    torch.manual_seed(0)
    layer = with_static_bias(DyConv2d(128, 128, 3, stride, 1, bias=False, num_kernels=4))
    assert 128 * 128 * 9 >= TINY_MAP_MIN_KERNEL
    model = nn.Sequential(layer, nn.ReLU()).eval()
    shape = (128, size, size)
    spec = describe_layers(model, shape)[0]
    assert (spec.out_pixels <= TINY_MAP_PIXELS) == kept
    proto = build_onnx(model, [LayerPlan(spec.name, "custom", "test", 0.0, "kbranch", spec)], input_shape=shape, batch=None, opset=18, custom=True)
    report = optimize_for_cpu(proto, batches=(1, 2))
    for batch in (1, 2, 3):
        x = torch.randn(batch, *shape)
        assert_close(run_ort(report.model, x), torch_out(model, x), what=f"batch {batch}")
    if nchwc_block_size() is not None:
        assert ("kept its exported form" in report.skipped.get("0", "")) == kept, report.to_dict()
        assert bool(report.kernel_convs) != kept, report.to_dict()
