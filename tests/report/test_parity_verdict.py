"""How a candidate's rejected batch is worded (a baked-in batch, or another sample shape), and the note on
inputs that barely move an output."""

from __future__ import annotations

import numpy as np

from odexport.report.parity import parity_report
from odexport.runtime.parity import CandidateRun


def _report(detail: str):
    reference = {"output": np.ones((2, 10), np.float32)}
    run = CandidateRun("model.onnx", "onnxruntime-cpu", "fp32", ("batch", 3, 64, 64), errors={2: detail})
    return parity_report({"artifact": "ckpt.pth"}, {}, [2], reference, [run])


def test_a_shape_complaint_on_a_dynamic_input_reads_as_a_baked_batch():
    detail = "[ONNXRuntimeError] Reshape: the input tensor cannot be reshaped to the requested shape {1,512}"
    candidate = _report(detail).candidates[0]
    assert not candidate.passed and "batch seems baked in" in candidate.batches[0].error


def test_a_split_traced_at_another_batch_reads_as_a_baked_batch():
    """onnxruntime 1.32's words for a Split whose sizes were traced at batch 2, run at batch 1
    behind a symbolic batch dimension (INVALID_ARGUMENT, where other sizes get FAIL)."""
    detail = ("onnxruntime failed to run input (1, 3, 32, 32): [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status "
              "code returned while running Split node. Name:'node_Split_809' Status Message: Invalid value in 'split'. "
              "Split size 8 exceeds the remaining size of the selected axis, 2.")
    candidate = _report(detail).candidates[0]
    assert not candidate.passed and "batch seems baked in" in candidate.batches[0].error


def test_a_rejected_sample_axis_is_not_called_a_baked_batch():
    detail = "input 'input' axis 2 has size 32, the model expects 64 (shape ('batch', 3, 64, 64))"
    candidate = _report(detail).candidates[0]
    assert not candidate.passed and candidate.batches[0].error == detail


def _blind_notes(outputs):
    from odexport.report.compare import ToleranceOverrides
    from odexport.report.parity import input_blind_notes

    overrides = ToleranceOverrides()
    return input_blind_notes(outputs, lambda name: overrides.resolve(name, "fp32"))


def test_an_output_the_samples_barely_move_is_noted():
    """fp32 default: atol 1e-5 of max|r| (here 2e-5), rtol 1e-4. Samples within +-1e-5 of one
    output: their midrange is within 1e-5 of each, so a fixed answer would pass; one element that
    moves by 1e-2 between samples is far outside any tolerance and clears the note."""
    rng = np.random.default_rng(0)
    base = np.linspace(1.0, 2.0, 10)
    still = base + rng.uniform(-1e-5, 1e-5, size=(6, 10))
    assert len(_blind_notes({"logits": still})) == 1
    assert "output 'logits' barely varies across the 6 samples" in _blind_notes({"logits": still})[0]
    moving = still.copy()
    moving[3, 7] += 1e-2
    assert _blind_notes({"logits": moving}) == []
    assert _blind_notes({"logits": rng.normal(size=(8, 10))}) == []
    assert _blind_notes({"logits": still[:1]}) == []  # one sample has its own note


def test_the_blind_note_reaches_the_candidate_of_a_report():
    still = np.tile(np.linspace(1.0, 2.0, 10), (4, 1))
    run = CandidateRun(artifact="m.onnx", backend="onnxruntime-cpu", precision="fp32", input_shape=("N", 3, 8, 8),
                       outputs={1: {"out": still.astype(np.float32)}})
    report = parity_report({}, {}, [1], {"out": still.astype(np.float32)}, [run])
    assert report.passed and any("barely varies" in note for note in report.candidates[0].notes)


def test_a_sample_with_non_finite_logits_is_wrong_and_disagrees():
    """argmax reads an all-NaN row as class 0: such a sample must count as neither correct nor agreeing
    (labels of class 0 make that visible)."""
    from odexport.report.parity import accuracy

    labels = np.array([0, 0, 1])
    reference = np.array([[2.0, 1.0], [2.0, 1.0], [1.0, 2.0]], np.float32)
    candidate = reference.copy()
    candidate[0] = np.nan
    candidate[1, 1] = np.inf
    result = accuracy(labels, reference, candidate)
    assert result.reference == 1.0
    assert result.candidate == result.top1_agreement == 1 / 3
    both = accuracy(labels, candidate, candidate)  # NaN on both sides is not agreement either
    assert both.top1_agreement == 1 / 3


def test_a_layer_above_its_own_tolerance_in_a_passing_candidate_reads_as_within_the_outputs():
    """Per-layer tolerances are tighter than the outputs' (no noise margin): a candidate whose outputs
    pass may still have a layer above its own. The line says the outputs pass rather than reading as
    a failure; a failing candidate's line is the plain first divergence."""
    from odexport.report.compare import Tolerance, compare_outputs
    from odexport.report.parity import BatchParity, CandidateParity, LayerParity, PerLayerParity

    loose, tight = Tolerance(atol=1e-3, rtol=0.0), Tolerance(atol=1e-9, rtol=0.0)
    reference = {"output": np.ones((2, 10), np.float32)}
    nudged = {"output": reference["output"] + np.float32(1e-5)}
    layer = compare_outputs(reference, nudged, tight)[0]
    assert not layer.passed
    per_layer = PerLayerParity(layers=[LayerParity("layer1.conv", "output", layer)], batch_size=2)
    passing = CandidateParity("m.onnx", batches=[BatchParity(2, compare_outputs(reference, nudged, loose))], per_layer=per_layer)
    failing = CandidateParity("m.onnx", batches=[BatchParity(2, [layer])], per_layer=per_layer)
    assert passing.passed and not failing.passed
    assert passing.per_layer_verdict == "first divergence at layer1.conv (convolution: output), within the tolerance of the network outputs, which pass"
    assert failing.per_layer_verdict == "first divergence at layer1.conv (convolution: output)"


def test_outputs_that_diverge_with_every_dynamic_conv_agreeing_point_elsewhere():
    """A dropped classifier bias: every dynamic conv agrees, the outputs do not. The per-layer line
    says where to look instead of only "no dynamic conv diverges"."""
    from odexport.report.compare import Tolerance, compare_outputs
    from odexport.report.parity import BatchParity, CandidateParity, LayerParity, PerLayerParity

    tolerance = Tolerance(atol=1e-3, rtol=0.0)
    reference = {"output": np.ones((2, 10), np.float32)}
    agreeing = compare_outputs(reference, reference, tolerance)[0]
    per_layer = PerLayerParity(layers=[LayerParity("layer1.conv", "output", agreeing)], batch_size=2)
    shifted = compare_outputs(reference, {"output": reference["output"] + np.float32(0.5)}, tolerance)
    failing = CandidateParity("m.onnx", batches=[BatchParity(2, shifted)], per_layer=per_layer)
    assert not failing.passed
    assert failing.per_layer_verdict.startswith("no dynamic conv diverges (1 values of 1 layers compared); the outputs diverge in a layer that is not")
    passing = CandidateParity("m.onnx", batches=[BatchParity(2, [agreeing])], per_layer=per_layer)
    assert passing.per_layer_verdict == "no dynamic conv diverges (1 values of 1 layers compared)"


def test_labels_are_scored_on_the_class_scores_output_or_not_at_all(tmp_path):
    """A dense map first and class scores second: the labels are scored on the scores (not on the
    flattened map, whose "classes" are its C*H*W elements). A model with no (N, classes) output
    has no accuracy: the labels are dropped with a note, never scored against a map."""
    import torch

    from odexport.pipeline import check_parity

    class MapAndScores(torch.nn.Module):
        def __init__(self, scores=True):
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.fc, self.scores = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(3, 5), scores

        def forward(self, x):
            dense = self.conv(x)
            return (dense, self.fc(x.mean((2, 3)))) if self.scores else dense

    x = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    model = MapAndScores().eval()
    with torch.no_grad():
        labels = model(torch.from_numpy(x))[1].argmax(1).numpy()
    labels[0] = (labels[0] + 1) % 5  # one wrong: the accuracy is 5/6, on the scores
    np.savez(tmp_path / "labelled.npz", x=x, y=labels)
    report = check_parity(model, [model], inputs=tmp_path / "labelled.npz", batch_sizes=(2,), input_shape=(3, 8, 8))
    assert report.candidates[0].accuracy.reference == 5 / 6

    dense_only = MapAndScores(scores=False).eval()
    np.savez(tmp_path / "far.npz", x=x, y=np.full(6, 200))  # no class 200 anywhere: refused if it were scored
    report = check_parity(dense_only, [dense_only], inputs=tmp_path / "far.npz", batch_sizes=(2,), input_shape=(3, 8, 8))
    candidate = report.candidates[0]
    assert report.passed and candidate.accuracy is None
    assert any("are not scored: no output is class scores (N, classes)" in note for note in candidate.notes)


def test_a_floor_failure_alone_is_not_blamed_on_a_static_layer():
    """Only the top-1 floor failed (a near tie flipped): the outputs agree within atol, so the per-layer
    line must not send the user to look for a diverging static layer."""
    from odexport.report.compare import Tolerance, compare_outputs
    from odexport.report.parity import BatchParity, CandidateParity, LayerParity, PerLayerParity

    reference = {"output": np.array([[1.0, 1.0 + 1e-7], [2.0, 0.0]], np.float32)}
    flipped = {"output": np.array([[1.0 + 2e-7, 1.0], [2.0, 0.0]], np.float32)}
    outputs = compare_outputs(reference, flipped, Tolerance(atol=1e-3, rtol=0.0, min_top1=1.0))
    assert [f for o in outputs for f in o.failures] and all("below the floor" in f for o in outputs for f in o.failures)
    agreeing = compare_outputs(reference, reference, Tolerance(atol=1e-3, rtol=0.0))[0]
    candidate = CandidateParity("m.onnx", batches=[BatchParity(2, outputs)],
                                per_layer=PerLayerParity(layers=[LayerParity("layer1.conv", "output", agreeing)], batch_size=2))
    assert not candidate.passed and candidate.per_layer_verdict == "no dynamic conv diverges (1 values of 1 layers compared)"


def test_class_scores_shaped_n_c_1_1_are_class_scores():
    from odexport.report.parity import classifier_output

    outputs = {"map": np.zeros((2, 4, 8, 8)), "scores": np.zeros((2, 5, 1, 1)), "later": np.zeros((2, 5))}
    assert classifier_output(outputs) == "scores"
    assert classifier_output({"value": np.zeros((2, 1)), "map": np.zeros((2, 4, 8, 8))}) is None


def test_labels_are_scored_on_one_output_named_otherwise_by_the_candidate():
    """A checkpoint's single output is "output", an export's may be "logits": one output on each
    side is the same scores, so the accuracy is reported (it was dropped when the names differed)."""
    scores = np.eye(4, 10, dtype=np.float32) * 5  # samples 0..3 predict class 0..3
    run = CandidateRun("model.onnx", "onnxruntime-cpu", "fp32", ("batch", 3, 8, 8), outputs={2: {"logits": scores}})
    report = parity_report({"artifact": "ckpt.pth"}, {}, [2], {"output": scores}, [run], labels=np.array([0, 1, 2, 9]))
    accuracy = report.candidates[0].accuracy
    assert accuracy is not None and accuracy.reference == accuracy.candidate == 0.75


def test_the_hint_matches_every_failure_not_just_one():
    """One batch refused and one really diverged: the hint is to look at the numbers, not "the
    candidates refused batch sizes"; an atol failure beside a floor failure is not "only a floor"."""
    scores = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    wrong = scores + 1.0
    mixed = CandidateRun("m.onnx", "onnxruntime-cpu", "fp32", ("batch", 3, 8, 8), outputs={2: {"output": wrong}},
                         errors={4: "input 'input' axis 0 has size 4, the model expects 2"})
    hint = parity_report({"artifact": "c.pth"}, {}, [2, 4], {"output": scores}, [mixed]).error().hint
    assert "loosen --atol/--rtol" in hint and "refused batch sizes" not in hint
    flipped = scores.copy()
    flipped[:, [0, 1]] = flipped[:, [1, 0]]  # top-1 moves and the values are off: atol and floor both fail
    both = CandidateRun("m.onnx", "onnxruntime-cpu", "fp32", ("batch", 3, 8, 8), outputs={2: {"output": flipped}})
    from odexport.report.compare import ToleranceOverrides

    report = parity_report({"artifact": "c.pth"}, {}, [2], {"output": scores}, [both], ToleranceOverrides(min_top1=1.0))
    reasons = report.candidates[0].failures
    assert any("below the floor" in r for r in reasons) and not all("below the floor" in r for r in reasons), reasons
    assert "only a top-1/cosine floor failed" not in report.error().hint
