"""Comparison metrics against hand-computed values, tolerance rules and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from odexport.errors import InputError
from odexport.report.compare import (
    DEFAULT_TOLERANCES,
    Tolerance,
    ToleranceOverrides,
    compare_arrays,
    compare_outputs,
    default_tolerance,
)

TIGHT = Tolerance(atol=1e-4, rtol=1e-4)


def test_metrics_on_a_hand_computed_case():
    ref = np.array([[1.0, -2.0, 4.0, 0.0]])
    cand = np.array([[1.1, -2.0, 3.0, 0.05]])
    result = compare_arrays(ref, cand, Tolerance(atol=0.01, rtol=0.1))
    # |d| = [0.1, 0, 1.0, 0.05]
    assert result.max_abs == pytest.approx(1.0)
    assert result.mean_abs == pytest.approx(1.15 / 4)
    assert result.max_rel == pytest.approx(0.25)  # 1.0 / 4 (the zero reference is skipped)
    assert result.p99_abs == pytest.approx(np.percentile([0.1, 0, 1.0, 0.05], 99))
    # required atol with rtol=0.1: max(|d| - 0.1|r|) = max(0, 0, 0.6, 0.05) = 0.6
    assert result.required_atol == pytest.approx(0.6)
    # required rtol with atol=0.01: max((|d| - 0.01)/|r|) = max(0.09, -, 0.2475) and 0.04 > 0 at r = 0 -> inf
    assert result.required_rtol == math.inf
    cos = float(ref[0] @ cand[0] / np.linalg.norm(ref[0]) / np.linalg.norm(cand[0]))
    assert result.cosine == pytest.approx(cos)
    assert result.worst == {"index": [0, 2], "reference": 4.0, "candidate": 3.0}
    assert result.mismatched == 2 and not result.passed  # elements 2 (1.0 > 0.41) and 3 (0.05 > 0.01)


def test_required_atol_is_the_boundary():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 100))
    cand = ref + rng.standard_normal((4, 100)) * 1e-3
    first = compare_arrays(ref, cand, TIGHT)
    assert not first.passed
    at = compare_arrays(ref, cand, Tolerance(first.required_atol * (1 + 1e-9), TIGHT.rtol))
    below = compare_arrays(ref, cand, Tolerance(first.required_atol * 0.999, TIGHT.rtol))
    assert at.passed and not below.passed
    rt = compare_arrays(ref, cand, Tolerance(TIGHT.atol, first.required_rtol * (1 + 1e-9)))
    assert rt.passed


def test_identical_outputs_pass_with_zero_errors():
    x = np.random.default_rng(1).standard_normal((3, 10)).astype(np.float32)
    result = compare_arrays(x, x.copy(), TIGHT)
    assert result.passed and result.max_abs == 0 and result.required_atol == 0 and result.cosine == pytest.approx(1.0)
    assert result.top1 == 1.0 and result.top5 == 1.0


def test_classifier_agreement():
    ref = np.array([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0],
                    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    cand = ref.copy()
    cand[0, 1] = 3.5  # top-1 flips, top-5 set unchanged
    cand[1, 0] = 5.5  # top-1 unchanged, index 0 enters the top 5 (index 2 leaves)
    result = compare_arrays(ref, cand, TIGHT)
    assert result.top1 == 0.5
    assert result.top5 == 0.5
    assert compare_arrays(ref[:, :5], cand[:, :5], TIGHT).top5 is None, "top-5 only with more than 5 classes"
    assert compare_arrays(np.ones((2, 3, 4)), np.ones((2, 3, 4)), TIGHT).top1 is None, "not a classifier output"
    # a 1x1-conv head's (N, classes, 1, 1) scores are the same decisions, and face the same floor
    head = compare_arrays(ref[:, :, None, None], cand[:, :, None, None], Tolerance(atol=100.0, rtol=0.0, min_top1=0.9))
    assert (head.top1, head.top5) == (0.5, 0.5) and not head.passed


def test_floors_for_reduced_precision():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((100, 10))
    cand = ref + rng.standard_normal((100, 10)) * 1e-3
    fp16 = default_tolerance("fp16")
    assert fp16.min_top1 is not None and fp16.min_cosine is not None
    assert compare_arrays(ref, cand, fp16).passed
    flipped = ref.copy()
    order = np.argsort(ref, axis=1)
    rows = np.arange(5)
    flipped[rows, order[rows, -1]], flipped[rows, order[rows, -2]] = ref[rows, order[rows, -2]], ref[rows, order[rows, -1]]
    loose = Tolerance(atol=100.0, rtol=0.0, min_top1=0.99)
    result = compare_arrays(ref, flipped, loose)
    assert result.top1 == pytest.approx(0.95)
    assert not result.passed and "top-1 agreement" in result.failures[0]


def test_non_finite_candidate_fails_and_shape_mismatch_fails():
    ref = np.ones((2, 3))
    cand = ref.copy()
    cand[1, 2] = np.nan
    result = compare_arrays(ref, cand, Tolerance(atol=1e3, rtol=1e3))
    assert not result.passed and "non-finite" in result.failures[0]
    assert result.max_abs == math.inf
    # the broken sample has no direction and no decision: cosine NaN (not its finite rest's 1.0),
    # and it never agrees; the intact sample still does (ref argmax 0 of a tie, as numpy picks)
    assert math.isnan(result.cosine) and result.top1 == 0.5
    classes = np.arange(8.0)[None].repeat(2, axis=0)
    broken = classes.copy()
    broken[0, 0] = np.inf  # where the reference is finite: a broken sample, whatever its arg-max
    broken[1, 3] = np.nan
    top = compare_arrays(classes, broken, Tolerance(atol=1e3, rtol=1e3))
    assert top.top1 == 0.0 and top.top5 == 0.0 and math.isnan(top.cosine)
    shape = compare_arrays(ref, np.ones((2, 4)), TIGHT)
    assert not shape.passed and "shape" in shape.failures[0]


def test_compare_outputs_pairs_single_outputs_and_reports_missing_names():
    ref = {"output": np.ones((2, 3))}
    assert compare_outputs(ref, {"logits": np.ones((2, 3))}, TIGHT)[0].passed
    two = {"a": np.ones(2), "b": np.ones(2)}
    results = compare_outputs(two, {"a": np.ones(2), "c": np.ones(2)}, TIGHT)
    assert results[0].passed and not results[1].passed and "no output 'b'" in results[1].failures[0]


def test_boundaries_and_degenerate_outputs():
    """An element exactly on atol + rtol*|r| passes (bit-identical outputs pass at atol=rtol=0);
    inf at the reference's own arg-max is no agreement; two all-zero outputs agree perfectly (the
    fp16 cosine floor passes); one reference output against two named otherwise is a missing name."""
    x = np.random.default_rng(0).standard_normal((2, 10)).astype(np.float32)
    assert compare_arrays(x, x.copy(), Tolerance(0.0, 0.0)).passed
    edge = compare_arrays(np.array([[2.0, 4.0]]), np.array([[2.5, 4.75]]), Tolerance(atol=0.25, rtol=0.125))
    assert edge.mismatched == 0 and edge.passed  # 0.5 == 0.25 + 0.125*2 and 0.75 == 0.25 + 0.125*4 (exact in binary)
    ref = np.array([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0]])
    cand = ref.copy()
    cand[0, 1] = np.inf
    assert compare_arrays(ref, cand, Tolerance(1e-5, 1e-4)).top1 == 0.5
    zeros = compare_arrays(np.zeros((2, 10)), np.zeros((2, 10)), default_tolerance("fp16"))
    assert zeros.cosine == 1.0 and zeros.passed
    results = compare_outputs({"a": x}, {"b": x, "c": x}, Tolerance(1.0, 1.0))
    assert len(results) == 1 and not results[0].passed and "no output 'a' (it has: b, c)" in results[0].failures[0]


def test_default_tolerances_and_overrides():
    assert DEFAULT_TOLERANCES["fp32"].atol <= 1e-4 and DEFAULT_TOLERANCES["fp32"].rtol <= 1e-4
    assert default_tolerance("unknown") == DEFAULT_TOLERANCES["fp32"]
    overrides = ToleranceOverrides.parse(["1e-3", "logits=0.5"], ["aux=2e-2"])
    assert overrides.resolve("output", "fp32") == Tolerance(1e-3, 1e-4)
    assert overrides.resolve("logits", "fp32") == Tolerance(0.5, 1e-4)
    fp16 = overrides.resolve("aux", "fp16")
    assert (fp16.atol, fp16.rtol, fp16.min_top1) == (1e-3, 2e-2, DEFAULT_TOLERANCES["fp16"].min_top1)
    for bad in (["-1"], ["x=abc"], ["nan"]):
        with pytest.raises(InputError, match="not a non-negative number"):
            ToleranceOverrides.parse(bad)


def test_floor_overrides():
    """A floor given applies at any precision, per output before global; 0 removes the default."""
    overrides = ToleranceOverrides.parse(min_top1=["0.9", "aux=0"], min_cosine=["output=0.95"])
    fp32, fp16, aux = (overrides.resolve("output", "fp32"), overrides.resolve("output", "fp16"),
                       overrides.resolve("aux", "fp16"))
    assert (fp32.min_top1, fp32.min_cosine, fp32.scaled_atol) == (0.9, 0.95, True)
    assert (fp16.min_top1, fp16.min_cosine) == (0.9, 0.95)
    assert (aux.min_top1, aux.min_cosine) == (None, DEFAULT_TOLERANCES["fp16"].min_cosine)
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    swapped = ref[:, ::-1].copy()  # every decision flips, cosine 0
    assert not compare_arrays(ref, swapped, Tolerance(10.0, 0.0, min_top1=0.9)).passed
    assert compare_arrays(ref, swapped, Tolerance(10.0, 0.0, min_top1=None)).passed
    for bad in (["1.01"], ["x=-0.1"], ["nan"]):
        with pytest.raises(InputError, match="--min-top1 .* is not a fraction between 0 and 1"):
            ToleranceOverrides.parse(min_top1=bad)
    with pytest.raises(InputError, match="--min-cosine names output 'logits'"):
        ToleranceOverrides.parse(min_cosine=["logits=0.9"]).require_known(["output"])


def test_to_dict_is_json_safe():
    import json

    # a tolerance's own numbers too (a noise floor of inf had been written as a bare Infinity)
    assert json.loads(json.dumps(Tolerance(1.0, 0.0, noise_atol=math.inf).to_dict(), allow_nan=False))["noise_atol"] == "inf"

    result = compare_arrays(np.zeros((1, 2)), np.array([[np.inf, 0.0]]), TIGHT)
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert json.loads(text)["max_abs"] == "inf"


def test_default_atol_scales_with_the_output():
    """A fresh network's logits are ~1e-2, a trained one's ~10: the default atol follows the scale."""
    rng = np.random.default_rng(4)
    small = rng.standard_normal((4, 10)) * 1e-2
    default = ToleranceOverrides().resolve("output", "fp32")
    assert default.scaled_atol
    result = compare_arrays(small, small + 1e-6, default)
    assert result.atol == pytest.approx(default.atol * np.abs(small).max())
    assert not result.passed, "a 1e-6 shift is 1e-4 of this output's scale: far above fp32 rounding"
    big = small * 1e3
    assert compare_arrays(big, big + 1e-6, default).passed
    explicit = ToleranceOverrides.parse(["1e-5"]).resolve("output", "fp32")
    assert not explicit.scaled_atol and compare_arrays(small, small + 1e-6, explicit).atol == 1e-5
