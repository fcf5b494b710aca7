"""freeze-low-spread: measured on calibration inputs, never silent, deviation reported truthfully."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from odexport.analysis import analyse_model
from odexport.errors import InputError
from odexport.layers import DyConv2d, ODConv2d
from odexport.reparam import FreezeLowSpread, reparameterise
from tests.reparam._helpers import randomize_batchnorms, randomize_biases, rel_dev

HEADS = ("channel", "filter", "spatial", "kernel")


def _model() -> nn.Sequential:
    torch.manual_seed(3)
    quiet = ODConv2d(8, 16, 3, padding=1, kernel_num=4)
    varied = DyConv2d(16, 16, 3, padding=1, num_kernels=4, bias=True)
    last = DyConv2d(16, 8, 1, num_kernels=3)
    model = nn.Sequential(quiet, nn.BatchNorm2d(16), nn.ReLU(), varied, nn.BatchNorm2d(16), nn.ReLU(), last)
    randomize_biases(randomize_batchnorms(model))
    with torch.no_grad():
        for head in HEADS:  # nearly input-independent attention: tiny head weights
            quiet.attention.head(head).weight.mul_(1e-4)
        varied.attention.fc2.weight.mul_(20)  # strongly input-dependent attentions
        last.attention.fc2.weight.mul_(50)
    return model.eval()


def _independent_spreads(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Largest population std over samples of any attention entry, from each layer's own input."""
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: inputs.__setitem__(n, args[0]))
             for n, m in model.named_children() if isinstance(m, (ODConv2d, DyConv2d))]
    with torch.no_grad():
        model(x)
        spreads = {}
        for name, layer_in in inputs.items():
            attentions = model.get_submodule(name).attentions(layer_in)
            spreads[name] = max(a.double().std(dim=0, unbiased=False).max().item() for a in attentions if a is not None)
    for h in hooks:
        h.remove()
    return spreads


def test_freezes_low_spread_layers_and_reports_truthfully():
    source = _model()
    model = copy.deepcopy(source)
    x = torch.randn(12, 8, 10, 10)
    spreads = _independent_spreads(source, x)
    eps = 1e-3
    assert spreads["0"] < eps < min(spreads["3"], spreads["6"]), spreads  # the fixture does what it says

    result = FreezeLowSpread(x, eps, batch_size=5).apply(model)
    extras = result.extras
    records = {r["layer"]: r for r in extras["layers"]}
    assert set(records) == {"0", "3", "6"} and len(result.notes) == 3  # every layer reported
    for name, spread in spreads.items():
        assert records[name]["spread"] == pytest.approx(spread, rel=1e-4)  # fp32 attentions, other batching
    frozen = [r["layer"] for r in extras["layers"] if r["frozen"]]
    assert frozen == ["0"]
    assert type(model[0]) is nn.Conv2d and isinstance(model[3], DyConv2d)
    assert {n.layer for n in result.applied} == set(frozen)
    assert "spread" in next(n for n in result.skipped if n.layer == "3").detail

    rec = records["0"]
    assert rec["params_saved"] == sum(p.numel() for p in source[0].parameters()) - sum(p.numel() for p in model[0].parameters())
    assert rec["params_saved"] > 0 and rec["macs_saved"] > 0
    hidden = source[0].attention.fc.out_channels
    attention = 8 * hidden + hidden * (8 + 16 + 9 + 4) + 8 * 10 * 10 + 16 * 10 * 10  # branch, then ca and fa applied
    assert rec["macs_saved"] == attention + 4 * 16 * 8 * 9  # + K * O * C * k * k, the aggregation
    inspected = next(r for r in analyse_model(source, (8, 10, 10)).layers if r.name == "0")
    assert rec["macs_saved"] == inspected.attention_macs + inspected.aggregation_macs  # one convention with inspect
    with torch.no_grad():
        layer_in = source[:0](x)
        layer_dev = rel_dev(model[0](x), source[0](x))
        model_dev = rel_dev(model(x), source(x))
    assert rec["layer_deviation"] == pytest.approx(layer_dev, rel=1e-3, abs=1e-9)
    assert extras["output_deviation"] == pytest.approx(model_dev, rel=1e-3, abs=1e-9)
    assert 0 < extras["output_deviation"] < 1e-3  # approximate, but close for a quiet layer
    assert layer_in.shape == x.shape


def test_spread_only_without_threshold():
    model = _model()
    snapshot = repr(model)
    result = FreezeLowSpread(torch.randn(6, 8, 10, 10), None).apply(model)
    assert not result.changed and repr(model) == snapshot
    assert all("no freeze threshold" in n.detail for n in result.notes) and len(result.notes) == 3
    assert all(r["spread"] is not None and not r["frozen"] for r in result.extras["layers"])


def test_needs_two_samples():
    model = _model()
    result = FreezeLowSpread(torch.randn(1, 8, 10, 10), 1.0).apply(model)
    assert result.precondition_failed and "at least 2" in result.precondition_failed
    assert isinstance(model[0], ODConv2d)


def test_reparameterise_with_calibration():
    source = _model()
    x = torch.randn(8, 8, 10, 10)
    report = reparameterise(source, calibration=x, freeze_below=1e-3)
    assert report.results[-1].name == "freeze-low-spread" and "freeze-low-spread" in report.passes_applied
    assert report.check["max_relative_deviation"] < 1e-6  # the exact passes, measured before freezing
    assert report.freeze["eps"] == 1e-3 and report.freeze["samples"] == 8
    frozen = [r["layer"] for r in report.freeze["layers"] if r["frozen"]]
    assert frozen == ["0"]
    with torch.no_grad():
        # the report measures against the exact deploy model, which itself sits within check of the source
        slack = 2 * report.check["max_relative_deviation"] + 1e-9
        assert rel_dev(report.model(x), source(x)) == pytest.approx(report.freeze["output_deviation"], abs=slack)
    with pytest.raises(InputError, match="needs calibration"):
        reparameterise(source, freeze_below=0.1)
    with pytest.raises(InputError, match="not \\(N, C, H, W\\)"):
        reparameterise(source, calibration=torch.randn(8, 10, 10), freeze_below=0.1)


def test_top1_agreement_of_a_trained_classifier():
    """On the shipped trained sample the freeze reports how often the decision survives: the same
    share as argmax of the source checkpoint against argmax of the frozen deploy model."""
    import numpy as np

    from odexport.checkpoint import load_checkpoint
    from tests.conftest import REPO_ROOT

    source = load_checkpoint(REPO_ROOT / "samples" / "od_resnet_digits.pth.tar").model.eval()
    with np.load(REPO_ROOT / "samples" / "digits_val.npz") as data:
        x = torch.from_numpy(data["x"][:120])
    report = reparameterise(copy.deepcopy(source), calibration=x, freeze_below=0.05)
    assert any(r["frozen"] for r in report.freeze["layers"])
    with torch.no_grad():
        independent = float((report.model(x).argmax(1) == source(x).argmax(1)).float().mean())
    assert report.freeze["top1_agreement"] == pytest.approx(independent, abs=1 / 120)  # a tie may flip one sample
    assert report.freeze["top1_agreement"] < 1.0  # at this threshold the freeze does change decisions


def test_top1_agreement_is_read_from_class_scores_only():
    """A 1x1-conv head's (N, classes, 1, 1) scores get a top-1 agreement like (N, classes) logits
    (the same rule as check's labels); a dense map gets none, also when nothing was frozen."""
    source = nn.Sequential(_model(), nn.AdaptiveAvgPool2d(1)).eval()
    x = torch.randn(12, 8, 10, 10)
    report = reparameterise(copy.deepcopy(source), calibration=x, freeze_below=1e-3)
    assert [r["layer"] for r in report.freeze["layers"] if r["frozen"]] == ["0.0"]
    with torch.no_grad():
        independent = float((report.model(x).flatten(1).argmax(1) == source(x).flatten(1).argmax(1)).float().mean())
    assert report.freeze["top1_agreement"] == pytest.approx(independent)

    dense = _model()
    assert reparameterise(copy.deepcopy(dense), calibration=x, freeze_below=1e-3).freeze["top1_agreement"] is None
    nothing_frozen = reparameterise(copy.deepcopy(dense), calibration=x, freeze_below=1e-12)
    assert not any(r["frozen"] for r in nothing_frozen.freeze["layers"])
    assert nothing_frozen.freeze["top1_agreement"] is None
    classifier = reparameterise(copy.deepcopy(source), calibration=x, freeze_below=1e-12)
    assert classifier.freeze["top1_agreement"] == 1.0


def test_a_few_calibration_samples_get_a_caution():
    """Two or three images agree on attentions the served inputs move: the freeze says so."""
    few = reparameterise(_model(), calibration=torch.randn(3, 8, 10, 10), freeze_below=1e-3).freeze
    assert few["caution"].startswith("3 calibration samples") and "at least 32" in few["caution"]
    assert reparameterise(_model(), calibration=torch.randn(32, 8, 10, 10), freeze_below=1e-3).freeze["caution"] is None


class _TwoHeads(nn.Module):
    """Class logits from a strongly varying trunk, and an embedding from a nearly constant layer
    that only the second output sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.trunk = DyConv2d(8, 16, 3, padding=1, num_kernels=4)
        self.classify = nn.Linear(16, 5)
        self.embed = ODConv2d(16, 16, 3, padding=1, kernel_num=4)
        with torch.no_grad():
            self.trunk.attention.fc2.weight.mul_(20)
            for head in HEADS:
                self.embed.attention.head(head).weight.mul_(1e-4)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return self.classify(h.mean((2, 3))), self.embed(h).flatten(1)


def test_a_frozen_layer_that_only_the_second_output_sees_is_reported():
    """The freeze's output deviation (and the exact passes' check) cover every output the model
    returns: a layer feeding only the embedding head moved it, not the logits."""
    source = _TwoHeads().eval()
    x = torch.randn(8, 8, 10, 10)
    report = reparameterise(source, calibration=x, freeze_below=1e-3)
    assert [r["layer"] for r in report.freeze["layers"] if r["frozen"]] == ["embed"]
    with torch.no_grad():
        (logits, embedding), (frozen_logits, frozen_embedding) = source(x), report.model(x)
    assert rel_dev(frozen_logits, logits) < 1e-6 < rel_dev(frozen_embedding, embedding)  # the premise
    slack = 2 * report.check["max_relative_deviation"] + 1e-9
    assert report.freeze["output_deviation"] == pytest.approx(rel_dev(frozen_embedding, embedding), abs=slack)
    assert report.freeze["top1_agreement"] == 1.0  # on the logits, the first (N, classes) output


def test_outputs_without_a_deviation_to_measure_are_left_out():
    """A bool mask and a 0-d summary beside the logits: compared, they ended the run in an internal
    error (abs of a bool, concatenating 0-d tensors); the check covers the logits."""

    class WithMaskAndSummary(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _TwoHeads()

        def forward(self, x):
            logits, embedding = self.inner(x)
            return logits, logits.max(1).values > 0, embedding.sum(), embedding

    source = WithMaskAndSummary().eval()
    report = reparameterise(source, calibration=torch.randn(8, 8, 10, 10), freeze_below=1e-3)
    assert report.check["max_relative_deviation"] < 1e-6 and report.freeze["output_deviation"] > 1e-6


def test_calibration_inputs_that_are_not_finite_are_refused_by_name():
    """A NaN spread compares false against any threshold: one NaN pixel froze every layer with NaN
    weights while the report read layer deviations of 0. Refused up front, naming the calibration
    inputs (also when they serve as the check inputs)."""
    x = torch.randn(4, 8, 10, 10)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="the calibration inputs hold 1 NaN/inf values"):
        reparameterise(_model(), calibration=x, freeze_below=1.0, check_input=torch.randn(2, 8, 10, 10))
    with pytest.raises(InputError, match="calibration inputs of shape \\(4, 1, 10, 10\\) do not fit the model"):
        reparameterise(_model(), calibration=torch.randn(4, 1, 10, 10), freeze_below=1.0)
    # finite in float64, inf in the model's float32: named so, not blamed on the model's weights
    big = torch.randn(4, 8, 10, 10, dtype=torch.float64)
    big[0, 0, 0, 0] = 1e39
    with pytest.raises(InputError, match="the calibration inputs hold 1 values beyond the range of the model's float32"):
        reparameterise(_model(), calibration=big, freeze_below=1.0, check_input=torch.randn(2, 8, 10, 10))


def test_check_of_a_frozen_deploy_file_says_it_is_approximate(tmp_path):
    """A deploy file made with freeze-low-spread differs from its source by design: check's note
    (and inspect's) says so, with the deviation the freeze measured, so a failure does not read as a
    broken export; freezing it again is refused."""
    import numpy as np

    from odexport.models import create_model
    from odexport.pipeline import check_parity, deploy_from_checkpoint, inspect_checkpoint, onnx_from_checkpoint

    torch.manual_seed(0)
    source = tmp_path / "tiny.pth"
    torch.save(create_model("od_resnet_tiny").state_dict(), source)
    calibration = tmp_path / "calib.npy"
    np.save(calibration, np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    deploy, report = deploy_from_checkpoint(source, tmp_path / "frozen.pt", calibration=calibration, freeze_below=1e9)
    frozen = sum(layer["frozen"] for layer in report.freeze["layers"])
    parity = check_parity(source, [deploy], samples=2, batch_sizes=(2,))
    recorded = (f"{frozen} layer(s) replaced by static convs by freeze-low-spread (approximate), "
                f"output deviation {report.freeze['output_deviation']:.3g} on its 4 calibration samples")
    note = next(note for note in parity.candidates[0].notes if "freeze-low-spread" in note)
    assert recorded in note and "by design" in note
    summary, _ = inspect_checkpoint(deploy)  # inspect says so too
    assert any(recorded in note for note in summary["notes"])
    # freezing the frozen file again would measure against it and replace its record
    for freeze_below in (1e9, None):  # measuring alone would replace the record too
        with pytest.raises(InputError, match="already has .* freeze-low-spread") as refused:
            deploy_from_checkpoint(deploy, tmp_path / "again.pt", calibration=calibration, freeze_below=freeze_below)
        assert "source checkpoint" in refused.value.hint and not (tmp_path / "again.pt").exists()
    # reparameterised again without calibration, the file keeps its layers frozen and says so
    again, _ = deploy_from_checkpoint(deploy, tmp_path / "again.pt")
    assert any(recorded in note for note in inspect_checkpoint(again)[0]["notes"])
    # an export carries what the freeze measured; against the frozen file itself nothing is by design
    exported = onnx_from_checkpoint(deploy, tmp_path / "frozen.onnx", check=False).path
    parity = check_parity(source, [exported], samples=2, batch_sizes=(2,))
    assert any(recorded in note and "by design" in note for note in parity.candidates[0].notes)
    parity = check_parity(deploy, [exported], samples=2, batch_sizes=(2,))
    assert parity.passed and not any("freeze" in note for note in parity.candidates[0].notes)


def test_a_layer_below_the_threshold_but_kept_dynamic_says_why_without_explain():
    """A subclass of a dynamic conv (TemperatureArgDyConv2d, a user's own) is never swapped for a
    static conv: the table read "frozen: no" beside a spread below the threshold, the reason only
    with --explain."""
    from odexport.cli.commands.reparam import _unfrozen_reasons

    class MyODConv(ODConv2d):
        pass

    model = _model()
    kept = MyODConv(8, 16, 3, padding=1, kernel_num=4)
    kept.load_state_dict(model[0].state_dict())
    model[0] = kept.eval()
    report = reparameterise(model, calibration=torch.randn(32, 8, 10, 10), freeze_below=1e-3)
    assert [r["frozen"] for r in report.freeze["layers"]] == [False, False, False]
    lines = _unfrozen_reasons(report.freeze)
    assert len(lines) == 1 and lines[0].startswith("not frozen: 0: spread") and "subclasses a dynamic conv" in lines[0], lines


def test_the_frozen_kernel_is_built_from_the_mean_attention_over_every_sample():
    """The running mean must weight each calibration chunk by its size (Chan's update): 20 samples
    in chunks of 8, 8 and 4. The expected kernel is the paper's aggregation of the float64 mean
    attentions over all samples, W = sum_k a_k (s * W_k) scaled by filter and channel attention."""
    torch.manual_seed(5)
    layer = ODConv2d(6, 10, 3, padding=1, kernel_num=4)
    randomize_biases(randomize_batchnorms(layer))
    with torch.no_grad():
        for head in HEADS:  # attentions that vary a lot: the mean is what matters
            layer.attention.head(head).weight.mul_(5)
    model = nn.Sequential(layer.eval())
    x = torch.randn(20, 6, 9, 9)
    with torch.no_grad():
        a = layer.double().attentions(x.double())
    ca, fa, sa, ka = (t.reshape(20, -1).mean(0) for t in (a.channel, a.filter, a.spatial, a.kernel))
    weight = layer.weight.double()  # (K, O, C, k, k)
    expected = torch.einsum("k,kocij->ocij", ka, weight * sa.reshape(1, 1, 1, 3, 3)) * fa.reshape(10, 1, 1, 1) * ca.reshape(1, 6, 1, 1)
    FreezeLowSpread(x, 1e9, batch_size=8).apply(model.float())
    assert type(model[0]) is nn.Conv2d
    torch.testing.assert_close(model[0].weight.double(), expected, rtol=1e-5, atol=1e-7)
