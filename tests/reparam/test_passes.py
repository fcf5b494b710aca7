"""Each pass on its own: the identity it relies on (float64, a layer before and after), its notes,
and that a failed precondition leaves the model untouched and says why."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from odexport.errors import InputError
from odexport.layers import DyConv2d, ODConv2d
from odexport.reparam import (
    CollapseDegenerate,
    FoldAttentionBN,
    FoldFollowingBN,
    FoldTemperature,
    FuseAttentionHeads,
    PASS_ORDER,
    reparameterise,
    resolve_passes,
)
from odexport.reparam.collapse import fold_attentions_into_kernels
from odexport.layers.functional import Attentions
from tests.reparam._helpers import randomize_batchnorms, randomize_biases

F64 = dict(atol=1e-12, rtol=1e-10)

# (in, out, k, groups, K): full, pw K=1 (pw1x path), depthwise (no filter head), grouped,
# depthwise with channel multiplier, K=1 3x3 (no kernel head)
OD_CONFIGS = [(8, 12, 3, 1, 4), (8, 12, 1, 1, 1), (8, 8, 3, 8, 3), (8, 12, 3, 4, 2), (4, 8, 3, 4, 4), (8, 8, 3, 1, 1)]
OD_IDS = ["full", "pw1x", "depthwise", "grouped", "dw_mult2", "k1_3x3"]


def _od(cin, cout, k, groups, kernels, temperature=1.0) -> ODConv2d:
    layer = ODConv2d(cin, cout, k, padding=k // 2, groups=groups, kernel_num=kernels, temperature=temperature)
    randomize_biases(layer)
    randomize_batchnorms(layer)
    return layer.double().eval()


def _dy(bias=True, kernels=4, temperature=1.0, layout="kaijieshi7") -> DyConv2d:
    layer = DyConv2d(8, 12, 3, padding=1, bias=bias, num_kernels=kernels, temperature=temperature, key_layout=layout)
    return randomize_biases(layer).double().eval()


def _x(batch=3, channels=8):
    return torch.randn(batch, channels, 7, 6, dtype=torch.float64)


def _snapshot(model: nn.Module):
    return {k: v.clone() for k, v in model.state_dict().items()}, repr(model), [getattr(m, "temperature", None) for m in model.modules()]


def _assert_untouched(model, snapshot):
    state, text, temps = snapshot
    assert repr(model) == text
    assert model.state_dict().keys() == state.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [getattr(m, "temperature", None) for m in model.modules()] == temps


# ----------------------------------------------------------------------------- fold-attention-bn


@pytest.mark.parametrize("config", OD_CONFIGS, ids=OD_IDS)
def test_fold_attention_bn_identity(config):
    layer = _od(*config)
    model = nn.Sequential(layer)
    x = _x(channels=config[0])
    with torch.no_grad():
        before_logits, before = layer.attention.head_logits(x), model(x)
    result = FoldAttentionBN().apply(model)
    assert result.changed and result.applied_layers() == ["0"]
    assert layer.attention.bn is None and layer.attention.fc.bias is not None
    with torch.no_grad():
        after_logits = layer.attention.head_logits(x)
        for head, value in before_logits.items():
            if value is None:
                assert after_logits[head] is None
            else:
                torch.testing.assert_close(after_logits[head], value, **F64)
        torch.testing.assert_close(model(x), before, **F64)
    assert set(layer.state_dict()) >= {"attention.fc.bias"} and not any(k.startswith("attention.bn.") for k in layer.state_dict())


def test_fold_attention_bn_skips_dy_and_already_folded():
    model = nn.Sequential(_od(8, 8, 3, 1, 2), _dy(kernels=2))
    FoldAttentionBN().apply(model)
    again = FoldAttentionBN().apply(model)
    assert not again.changed
    details = {n.layer: n.detail for n in again.notes}
    assert "already folded" in details["0"] and "no BatchNorm" in details["1"]


def test_fold_attention_bn_keeps_batch_statistics_bn():
    layer = _od(8, 8, 3, 1, 2)
    layer.attention.bn = nn.BatchNorm2d(16, track_running_stats=False).double().eval()
    result = FoldAttentionBN().apply(nn.Sequential(layer))
    assert not result.changed and "running statistics" in result.notes[0].detail


# ----------------------------------------------------------------------------- fold-temperature


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("config", OD_CONFIGS, ids=OD_IDS)
def test_fold_temperature_identity_odconv(config, fused):
    layer = _od(*config, temperature=5.5)
    model = nn.Sequential(layer)
    if fused:
        FuseAttentionHeads().apply(model)
    x = _x(channels=config[0])
    with torch.no_grad():
        before_att, before = layer.attentions(x), model(x)
    result = FoldTemperature().apply(model)
    assert result.changed and layer.temperature == 1.0
    assert model.odexport_meta["original_temperatures"] == {"0": 5.5}
    with torch.no_grad():
        for got, want in zip(layer.attentions(x), before_att):
            assert (got is None) == (want is None)
            if want is not None:
                torch.testing.assert_close(got, want, **F64)
        torch.testing.assert_close(model(x), before, **F64)


@pytest.mark.parametrize("layout", ["kaijieshi7", "tardelean"])
def test_fold_temperature_identity_dyconv(layout):
    layer = _dy(temperature=31.0, layout=layout)
    model = nn.Sequential(layer)
    x = _x()
    with torch.no_grad():
        before_att, before = layer.attention(x), model(x)
    FoldTemperature().apply(model)
    with torch.no_grad():
        torch.testing.assert_close(layer.attention(x), before_att, **F64)
        torch.testing.assert_close(model(x), before, **F64)
    assert layer.temperature == 1.0


def test_fold_temperature_without_fc2_bias():
    layer = DyConv2d(8, 12, 3, padding=1, fc2_bias=False, temperature=4.0).double().eval()
    x = _x()
    with torch.no_grad():
        before = layer(x)
        FoldTemperature().apply(nn.Sequential(layer))
        torch.testing.assert_close(layer(x), before, **F64)


def test_fold_temperature_t1_is_skipped_but_recorded():
    model = nn.Sequential(_od(8, 8, 3, 1, 2))
    result = FoldTemperature().apply(model)
    assert not result.changed and "already 1" in result.notes[0].detail
    assert model.odexport_meta["original_temperatures"] == {"0": 1.0}


# ----------------------------------------------------------------------------- fuse-heads


@pytest.mark.parametrize("config", OD_CONFIGS, ids=OD_IDS)
def test_fuse_heads_identity(config):
    layer = _od(*config, temperature=2.0)
    model = nn.Sequential(layer)
    present = layer.attention.present_heads()
    x = _x(channels=config[0])
    with torch.no_grad():
        before_logits, before = layer.attention.head_logits(x), model(x)
    result = FuseAttentionHeads().apply(model)
    att = layer.attention
    assert att.present_heads() == present
    if len(present) < 2:
        assert not result.changed and "nothing to fuse" in result.notes[0].detail
        return
    assert result.changed and att.heads is not None
    assert [name for name, _ in att.head_sizes] == present
    assert all(att.head(name) is None for name in present)
    assert att.heads.out_channels == sum(size for _, size in att.head_sizes)
    with torch.no_grad():
        after_logits = att.head_logits(x)
        assert after_logits.keys() == before_logits.keys()
        for head, value in before_logits.items():
            assert (after_logits[head] is None) == (value is None)
            if value is not None:
                torch.testing.assert_close(after_logits[head], value, **F64)
        torch.testing.assert_close(model(x), before, **F64)


def test_fuse_heads_skips_dyconv_and_fused():
    model = nn.Sequential(_od(8, 12, 3, 1, 4), _dy())
    FuseAttentionHeads().apply(model)
    again = FuseAttentionHeads().apply(model)
    details = [n.detail for n in again.notes]
    assert not again.changed and "already fused" in details[0] and "single head" in details[1]


# ----------------------------------------------------------------------------- fold-bn


def _bn(channels):
    return randomize_batchnorms(nn.BatchNorm2d(channels), seed=3).double().eval()


@pytest.mark.parametrize("static_bias", [False, True], ids=["no_static_bias", "static_bias"])
@pytest.mark.parametrize("config", OD_CONFIGS, ids=OD_IDS)
def test_fold_bn_identity_odconv(config, static_bias):
    layer = _od(*config)
    if static_bias:
        layer.static_bias = nn.Parameter(torch.randn(config[1], dtype=torch.float64))
    model = nn.Sequential(layer, _bn(config[1]), nn.ReLU())
    x = _x(channels=config[0])
    with torch.no_grad():
        before = model(x)
    result = FoldFollowingBN().apply(model)
    assert result.applied_layers() == ["0"] and isinstance(model[1], nn.Identity)
    assert layer.static_bias is not None
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, **F64)


@pytest.mark.parametrize("dy_shift", ["auto", "dynamic"])
@pytest.mark.parametrize("bias,static_bias", [(True, False), (False, False), (True, True), (False, True)])
def test_fold_bn_identity_dyconv(bias, static_bias, dy_shift):
    layer = _dy(bias=bias)
    if static_bias:
        layer.static_bias = nn.Parameter(torch.randn(12, dtype=torch.float64))
    bn = _bn(12)
    model = nn.Sequential(layer, bn)
    x = _x()
    with torch.no_grad():
        before = model(x)
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        t = bn.bias - s * bn.running_mean
        old_bias = None if layer.bias is None else layer.bias.clone()
    FoldFollowingBN(dy_shift=dy_shift).apply(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, **F64)
    if bias or dy_shift == "dynamic":
        # softmax DY-Conv: the shift goes into every dynamic bias, b_k' = s * b_k + t
        expected = t.expand(4, 12) if old_bias is None else s * old_bias + t
        torch.testing.assert_close(layer.bias, expected, **F64)
    else:
        assert layer.bias is None and layer.static_bias is not None


def test_fold_bn_needs_the_bn_to_follow_alone():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = DyConv2d(8, 8, 3, padding=1).double()
            self.bn1 = _bn(8)
            self.conv2 = ODConv2d(8, 8, 3, padding=1, kernel_num=2).double()
            self.act = nn.ReLU()
            self.bn2 = _bn(8)

        def forward(self, x):
            y = self.conv1(x)
            z = self.bn1(y) + y  # conv1 has two consumers: its BN cannot be folded
            return self.bn2(self.act(self.conv2(z)))  # conv2 is followed by a ReLU, not its BN

    model = Residual().eval()
    result = FoldFollowingBN().apply(model)
    assert not result.changed
    details = {n.layer: n.detail for n in result.notes}
    assert "2 consumers" in details["conv1"] and "ReLU" in details["conv2"]


def test_fold_bn_folds_nothing_it_cannot_prove_when_fx_fails():
    """Without the fx graph, names and order are no proof of wiring: in this pre-activation block
    bn1 runs *before* conv1 (a convN -> bnN guess folded it and changed the outputs), and the
    Sequential's conv is also called on its own. Nothing is folded; each layer says why."""
    class PreActivation(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn1 = _bn(8)
            self.conv1 = ODConv2d(8, 8, 3, padding=1, kernel_num=2).double()
            self.tail = nn.Sequential(DyConv2d(8, 8, 1).double(), _bn(8))

        def forward(self, x):
            if x.sum() > 1e9:  # data-dependent control flow: torch.fx cannot trace this
                return x
            y = self.conv1(torch.relu(self.bn1(x)))
            return self.tail(y) + self.tail[0](y)

    model = PreActivation().eval()
    x = _x()
    with torch.no_grad():
        before = model(x)
    result = FoldFollowingBN().apply(model)
    assert not result.changed
    details = {n.layer: n.detail for n in result.notes}
    assert all("does not trace with torch.fx" in details[name] for name in ("conv1", "tail.0"))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, **F64)


# ----------------------------------------------------------------------------- collapse-degenerate


@pytest.mark.parametrize("bias", [True, False])
def test_collapse_dyconv_k1_becomes_conv2d(bias):
    layer = _dy(bias=bias, kernels=1, temperature=3.0)
    model = nn.Sequential(layer)
    x = _x()
    with torch.no_grad():
        before = model(x)
    result = CollapseDegenerate().apply(model)
    assert result.changed and type(model[0]) is nn.Conv2d and "K = 1" in result.notes[0].detail
    assert (model[0].bias is not None) == bias
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, **F64)
    assert model.odexport_meta["replaced"] == ["0"]


@pytest.mark.parametrize("which", ["fc1", "fc2"])
def test_collapse_dyconv_constant_attention(which):
    layer = _dy(bias=True, kernels=4)
    layer.static_bias = nn.Parameter(torch.randn(12, dtype=torch.float64))
    with torch.no_grad():
        getattr(layer.attention, which).weight.zero_()
    if which == "fc1":
        layer.attention.fc1.bias = nn.Parameter(torch.randn(layer.attention.fc1.out_channels, dtype=torch.float64))
    model = nn.Sequential(layer)
    x = _x()
    with torch.no_grad():
        before = model(x)
    CollapseDegenerate().apply(model)
    assert type(model[0]) is nn.Conv2d
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, **F64)


@pytest.mark.parametrize("heads", [["channel"], ["filter"], ["spatial"], ["kernel"], ["spatial", "kernel"], ["channel", "filter", "kernel"]])
@pytest.mark.parametrize("config", [OD_CONFIGS[0], OD_CONFIGS[3], OD_CONFIGS[4]], ids=["full", "grouped", "dw_mult2"])
def test_collapse_constant_odconv_heads(config, heads):
    layer = _od(*config, temperature=1.7)
    layer.static_bias = nn.Parameter(torch.randn(config[1], dtype=torch.float64))
    with torch.no_grad():
        for head in heads:
            layer.attention.head(head).weight.zero_()
    model = nn.Sequential(layer)
    x = _x(channels=config[0])
    with torch.no_grad():
        before = model(x)
    result = CollapseDegenerate().apply(model)
    assert result.changed
    remaining = layer.attention.present_heads()
    assert not set(heads) & set(remaining)
    if "kernel" in heads:
        assert layer.weight.shape[0] == 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, **F64)


def test_collapse_odconv_all_constant_becomes_conv2d():
    layer = _od(8, 12, 3, 4, 3)
    layer.static_bias = nn.Parameter(torch.randn(12, dtype=torch.float64))
    with torch.no_grad():
        layer.attention.fc.weight.zero_()  # the hidden vector, hence every head, is constant
    model = nn.Sequential(layer, nn.ReLU())
    x = _x()
    with torch.no_grad():
        before = model(x)
    result = CollapseDegenerate().apply(model)
    assert type(model[0]) is nn.Conv2d and "replaced by a static Conv2d" in result.notes[0].detail
    assert model[0].groups == 4 and model[0].bias is not None
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, **F64)


def test_collapse_leaves_input_dependent_layers():
    model = nn.Sequential(_od(8, 12, 3, 1, 4), _dy())
    snap = _snapshot(model)
    result = CollapseDegenerate().apply(model)
    assert not result.changed and all("depends on the input" in n.detail for n in result.notes)
    _assert_untouched(model, snap)


def test_fold_attentions_into_kernels_matches_a_direct_loop():
    """The channel fold for a grouped conv, checked against an explicit per-channel loop."""
    torch.manual_seed(2)
    groups, weight = 4, torch.randn(2, 12, 2, 3, 3, dtype=torch.float64)  # C = 8, O = 12
    ca = torch.rand(8, dtype=torch.float64)
    got = fold_attentions_into_kernels(weight, groups, Attentions(channel=ca))
    expected = weight.clone()
    for o in range(12):
        group = o // (12 // groups)
        for c in range(2):
            expected[:, o, c] *= ca[group * 2 + c]
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


# ----------------------------------------------------------------------------- preconditions


def _train_mode_model():
    model = nn.Sequential(_od(8, 12, 3, 1, 4), _bn(12), _dy(kernels=1), _bn(12))
    return model.train()


@pytest.mark.parametrize("pass_cls", [FoldAttentionBN, FoldFollowingBN, CollapseDegenerate])
def test_failed_precondition_leaves_model_untouched(pass_cls):
    model = _train_mode_model()
    snap = _snapshot(model)
    result = pass_cls().apply(model)
    assert not result.changed and result.notes == []
    assert "training mode" in result.precondition_failed and "model.eval()" in result.precondition_failed
    _assert_untouched(model, snap)
    assert not hasattr(model, "odexport_meta") or model.odexport_meta["passes"] == []


def test_fold_temperature_precondition():
    model = nn.Sequential(_od(8, 12, 3, 1, 4))
    model[0].attention.temperature = 0.0
    snap = _snapshot(model)
    result = FoldTemperature().apply(model)
    assert result.precondition_failed and "temperature" in result.precondition_failed
    _assert_untouched(model, snap)


def test_every_pass_refuses_a_model_without_dynamic_convs():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    report = reparameterise(model)
    assert report.passes_applied == []
    assert all("no ODConv2d/DyConv2d" in r.precondition_failed for r in report.results)


# ----------------------------------------------------------------------------- reparameterise


def test_reparameterise_leaves_the_input_untouched():
    model = nn.Sequential(_od(8, 12, 3, 1, 4, temperature=3.0), _bn(12), _dy(kernels=1, temperature=5.0), _bn(12)).train()
    snap = _snapshot(model)
    report = reparameterise(model)
    _assert_untouched(model, snap)
    assert model.training and not report.model.training
    assert report.model is not model
    assert report.passes_applied == ["fold-attention-bn", "fold-temperature", "fold-bn", "collapse-degenerate", "fuse-heads"]
    assert report.original_temperatures == {"0": 3.0, "2": 5.0}
    assert report.params_after < report.params_before


def test_reparameterise_check_input_reports_deviation():
    model = nn.Sequential(_od(8, 12, 3, 1, 4, temperature=3.0), _bn(12), nn.ReLU()).float().eval()
    report = reparameterise(model, check_input=torch.randn(2, 8, 7, 6))
    assert report.check["inputs"] == [2, 8, 7, 6] and report.check["max_relative_deviation"] < 1e-6
    with pytest.raises(InputError, match="do not fit the model"):
        reparameterise(model, check_input=torch.randn(2, 5, 7, 6))


def test_resolve_passes():
    assert resolve_passes(None) == list(PASS_ORDER[:5])
    assert resolve_passes("fuse-heads,fold-bn") == ["fold-bn", "fuse-heads"]  # always run in the fixed order
    assert resolve_passes("none") == []
    with pytest.raises(InputError, match="did you mean 'fuse-heads'"):
        resolve_passes("fuse-head")


def test_pass_subset_runs_only_those():
    model = nn.Sequential(_od(8, 12, 3, 1, 4, temperature=3.0), _bn(12))
    report = reparameterise(model, passes=["fuse-heads"])
    assert [r.name for r in report.results] == ["fuse-heads"]
    deploy = report.model
    assert deploy[0].attention.bn is not None and deploy[0].temperature == 3.0 and isinstance(deploy[1], nn.BatchNorm2d)


def test_an_attention_shared_by_two_layers_takes_each_layers_folds_once():
    """Two ODConvs whose attentions share one 1x1 conv (and two DY-Convs sharing fc2 at different
    temperatures): each layer's fold (its attention BatchNorm, its temperature) went into the
    shared weights twice. Each layer now gets its own copy first (same values: exact)."""
    from odexport.reparam import reparameterise

    class SharedAttention(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.od1, self.od2 = ODConv2d(8, 8, 3, padding=1, temperature=5.0), ODConv2d(8, 8, 3, padding=1, temperature=5.0)
            self.od2.attention.fc = self.od1.attention.fc
            self.dy1, self.dy2 = DyConv2d(8, 8, 3, padding=1, temperature=34.0), DyConv2d(8, 8, 3, padding=1, temperature=3.0)
            self.dy2.attention.fc2 = self.dy1.attention.fc2
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):  # the attention's own BatchNorms, not at identity
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)

        def forward(self, x):
            return self.dy2(torch.relu(self.dy1(torch.relu(self.od2(torch.relu(self.od1(x)))))))

    model = SharedAttention().double().eval()
    x = _x()
    with torch.no_grad():
        before = model(x)
        after = reparameterise(model).model(x)
    torch.testing.assert_close(after, before, **F64)


def test_fold_bn_leaves_a_hooked_batchnorm_alone():
    """A forward hook on the BatchNorm (or the conv) would see other values after a fold, or none
    (the BatchNorm becomes Identity): skipped, and the note says why."""
    model = nn.Sequential(ODConv2d(8, 8, 3, padding=1, kernel_num=2).double(), _bn(8)).eval()
    seen = []
    model[1].register_forward_hook(lambda module, inputs, output: seen.append(output))
    result = FoldFollowingBN().apply(model)
    assert not result.changed and "forward hooks" in result.notes[0].detail
    with torch.no_grad():
        model(_x())
    assert len(seen) == 1


def test_a_batchnorm_subclass_with_its_own_forward_is_not_folded():
    class ScaledBatchNorm(nn.BatchNorm2d):
        def forward(self, x):
            return 2 * super().forward(x)

    bn = ScaledBatchNorm(8).double().eval()
    model = nn.Sequential(ODConv2d(8, 8, 3, padding=1, kernel_num=2).double(), bn).eval()
    x = _x()
    with torch.no_grad():
        before = model(x)
    result = FoldFollowingBN().apply(model)
    assert not result.changed and "overrides BatchNorm2d.forward" in result.notes[0].detail
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, **F64)


def test_fold_bn_uses_the_batchnorms_own_epsilon():
    """A BatchNorm ported from TensorFlow/Keras has eps=1e-3: with running variances near it, a fold
    that assumed torch's default 1e-5 is off by tens of percent."""
    layer = _od(8, 12, 3, 1, 4)
    bn = nn.BatchNorm2d(12, eps=1e-3).double().eval()
    with torch.no_grad():
        bn.running_var.uniform_(1e-4, 3e-3)
        bn.running_mean.normal_()
        bn.weight.normal_()
        bn.bias.normal_()
    model = nn.Sequential(layer, bn)
    x = _x()
    with torch.no_grad():
        before = model(x)
    assert FoldFollowingBN().apply(model).applied_layers() == ["0"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, **F64)


def test_a_batchnorm_used_at_two_places_is_not_folded_into_one():
    """Folding a BatchNorm that also runs elsewhere would replace it by Identity there too."""
    class TwiceNormed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.other = _od(8, 8, 3, 1, 2), _bn(8), nn.Conv2d(8, 8, 1).double()

        def forward(self, x):
            return self.bn(self.other(self.bn(self.conv(x))))

    model = TwiceNormed().eval()
    x = _x()
    with torch.no_grad():
        before = model(x)
    result = FoldFollowingBN().apply(model)
    assert not result.changed and "called 2 times" in result.notes[0].detail, result.notes
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, **F64)


def test_sync_batchnorms_of_distributed_training_fold_like_batchnorms():
    """convert_sync_batchnorm (DDP training) swaps every BatchNorm2d, the attention's too, for a
    SyncBatchNorm, which in eval mode computes the same running-statistics affine map; they were
    left unfolded ("SyncBatchNorm is not a BatchNorm2d")."""
    layer = _od(8, 12, 3, 1, 4)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(layer, _bn(12), nn.ReLU())).eval()
    assert isinstance(model[1], nn.SyncBatchNorm) and isinstance(layer.attention.bn, nn.SyncBatchNorm)
    x = _x()
    with torch.no_grad():
        before = model(x)
    assert FoldFollowingBN().apply(model).applied_layers() == ["0"] and isinstance(model[1], nn.Identity)
    assert FoldAttentionBN().apply(model).applied_layers() == ["0"] and layer.attention.bn is None
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, **F64)


def test_collapse_keeps_a_hooked_layer_that_a_replacement_would_drop():
    """A K = 1 DY-Conv is a static conv, but a forward hook on it would be lost with the module:
    it stays dynamic, the note says why, and the hook still fires."""
    model = nn.Sequential(_dy(bias=True, kernels=1, temperature=3.0))
    fired = []
    model[0].register_forward_hook(lambda module, inputs, output: fired.append(output.shape))
    result = CollapseDegenerate().apply(model)
    assert type(model[0]) is DyConv2d and "forward hooks" in result.notes[0].detail
    with torch.no_grad():
        model(_x())
    assert len(fired) == 1
