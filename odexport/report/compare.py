"""Numerical comparison of a candidate's outputs with a reference's, and the tolerances that gate it.

For reference ``r`` and candidate ``c`` (both upcast to float64), ``d = |c - r|``:

* ``max_abs = max d``, ``mean_abs = mean d``, ``p99_abs = 99th percentile of d``;
* ``max_rel = max d / |r|`` over elements with ``r != 0`` (elements where ``r == 0`` are covered by
  ``max_abs``; a relative error there is undefined);
* ``cosine``: the smallest, over samples (axis 0), cosine similarity of the flattened sample
  vectors -- one bad sample is not averaged away; NaN when a sample has NaN/inf where the
  reference is finite (such a sample also never counts as agreeing in ``top1``/``top5``);
* class scores (``(N, classes)`` or ``(N, classes, 1, 1)``, at least 2 classes): ``top1`` =
  fraction of samples whose arg-max agrees;
  ``top5`` = fraction whose top-5 *sets* agree (reported only with more than 5 classes);
* an element passes when ``d <= atol + rtol * |r|`` (numpy's ``allclose`` rule).  Default
  tolerances give ``atol`` as a fraction of the output's scale ``max |r|`` (``scaled_atol``): a
  fixed absolute atol is meaningless across networks whose logits range from 1e-2 (a fresh
  network) to 1e+1 (a trained one).  The default is also never below ``noise_atol``: a margin
  times the reference's own rounding noise (``max |r32 - r64|``, PyTorch in float32 vs float64),
  because some networks amplify fp32 rounding far beyond 1e-5 of their scale and a gate must not
  fail an export for differing from the reference by what the reference itself cannot resolve.
  A user's ``--atol`` is absolute and used as given;
* ``required_atol = max(d - rtol*|r|)`` is the smallest atol that would have passed with the
  configured rtol, ``required_rtol = max((d - atol) / |r|)`` the smallest rtol with the configured
  atol (``inf`` when an element with ``r == 0`` exceeds atol).

A NaN or inf in the candidate where the reference is finite fails the output outright.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from odexport._outputs import holds_class_scores
from odexport.errors import InputError


@dataclass(frozen=True)
class Tolerance:
    """Element-wise ``atol``/``rtol`` plus optional whole-output floors.

    ``min_top1``: top-1 agreement floor for classifier outputs; ``min_cosine``: per-sample cosine
    similarity floor.  Floors matter for reduced precision, where individual logits may move by
    more than a tight atol while every decision stays the same.
    """

    atol: float
    rtol: float
    min_top1: float | None = None
    min_cosine: float | None = None
    #: when True, ``atol`` is a fraction of ``max |reference|`` of each output (the defaults)
    scaled_atol: bool = False
    #: the atol never goes below this (margin x the reference's own fp32 rounding noise)
    noise_atol: float = 0.0

    def absolute_atol(self, reference: np.ndarray) -> float:
        """The atol in the output's units (``atol * max|r|`` for a scaled tolerance)."""
        if not self.scaled_atol:
            return max(self.atol, self.noise_atol)
        finite = np.abs(reference[np.isfinite(reference)])
        scale = float(finite.max()) if finite.size else 0.0
        return max(self.atol * scale, self.noise_atol)

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


#: Defaults by the candidate's precision (atol as a fraction of max|reference|); the reasoning,
#: with measurements, is in docs/check.md.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    # fp64 candidate vs an fp64 reference: only summation order differs (unit roundoff 1.1e-16)
    "fp64": Tolerance(atol=1e-10, rtol=1e-9, scaled_atol=True),
    # fp32 (unit roundoff 6e-8): exact export forms of whole networks land at 1e-7..1e-6 of the
    # output scale; 1e-5 of the scale (1e-4 on logits of magnitude 10) keeps ~10x headroom while a
    # changed weight, a dropped bias or a wrong temperature shows up far above it
    "fp32": Tolerance(atol=1e-5, rtol=1e-4, scaled_atol=True),
    # fp16 (unit roundoff 4.9e-4 per op): logits move by ~1e-3..1e-2 of their scale; what must
    # not move are the decisions (top-1 floor) and the direction of the output (cosine floor)
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_top1=0.99, min_cosine=0.999, scaled_atol=True),
    "mixed": Tolerance(atol=1e-2, rtol=1e-2, min_top1=0.99, min_cosine=0.999, scaled_atol=True),
}


#: the default atol is at least this many times the reference's own rounding noise
#: (|r32 - r64|): the candidate rounds independently (x2) and the noise varies between samples
NOISE_MARGIN = 5.0


def default_tolerance(precision: str) -> Tolerance:
    """The default :class:`Tolerance` for a candidate running at ``precision``."""
    return DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"])


@dataclass
class ToleranceOverrides:
    """User overrides: a global value and/or per-output values for atol, rtol and the two floors.

    Built from CLI strings such as ``"1e-3"`` (every output) or ``"output=1e-3"`` (one output, by
    name).  A floor (``--min-top1``, ``--min-cosine``) is a fraction in [0, 1]; 0 turns it off.
    """

    atol: float | None = None
    rtol: float | None = None
    min_top1: float | None = None
    min_cosine: float | None = None
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)  # option -> output -> value

    #: option name -> (its command-line flag, the largest value allowed)
    OPTIONS = {"atol": ("--atol", math.inf), "rtol": ("--rtol", math.inf),
               "min_top1": ("--min-top1", 1.0), "min_cosine": ("--min-cosine", 1.0)}

    @classmethod
    def parse(cls, atol: list[str] | None = None, rtol: list[str] | None = None,
              min_top1: list[str] | None = None, min_cosine: list[str] | None = None) -> "ToleranceOverrides":
        out = cls()
        for option, values in (("atol", atol), ("rtol", rtol), ("min_top1", min_top1), ("min_cosine", min_cosine)):
            flag, upper = cls.OPTIONS[option]
            for text in values or []:
                name, _, number = text.rpartition("=")
                value = _parse_bounded(number, flag, upper)
                if name:
                    out.per_output.setdefault(option, {})[name.strip()] = value
                else:
                    setattr(out, option, value)
        return out

    def require_known(self, outputs) -> None:
        """A per-output value for an output the model does not have (a typo) would silently not
        apply: an input error naming the outputs there are."""
        known = list(outputs)
        for option, per in self.per_output.items():
            unknown = sorted(set(per) - set(known))
            if unknown:
                flag = self.OPTIONS[option][0]
                raise InputError(f"{flag} names output {unknown[0]!r}, which the model does not have (outputs: {', '.join(known)})",
                                 f"use {flag} {known[0] if known else 'OUTPUT'}=VALUE, or {flag} VALUE for every output")

    def _value(self, option: str, output: str):
        return self.per_output.get(option, {}).get(output, getattr(self, option))

    def resolve(self, output: str, precision: str, noise_atol: float = 0.0) -> Tolerance:
        """The tolerance of ``output`` for a candidate at ``precision``; ``noise_atol`` floors the
        default (scaled) atol, never one the user gave.  A floor the user set applies at any
        precision (0 removes the default one)."""
        base = default_tolerance(precision)
        atol = self._value("atol", output)
        rtol = self._value("rtol", output)
        rtol = base.rtol if rtol is None else rtol
        floors = {}
        for option in ("min_top1", "min_cosine"):
            value = self._value(option, output)
            value = getattr(base, option) if value is None else value
            floors[option] = value if value else None  # 0: no floor
        if atol is None:  # the default: a fraction of the output's scale
            return Tolerance(base.atol, rtol, **floors, scaled_atol=base.scaled_atol, noise_atol=noise_atol)
        return Tolerance(atol, rtol, **floors)


def _parse_bounded(text: str, flag: str, upper: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if upper == math.inf:
        if not (value >= 0 and math.isfinite(value)):
            raise InputError(f"{flag} {text!r} is not a non-negative number",
                             f"use e.g. {flag} 1e-4, or {flag} OUTPUT=1e-4 for one output")
    elif not 0 <= value <= upper:
        raise InputError(f"{flag} {text!r} is not a fraction between 0 and {upper:g}",
                         f"use e.g. {flag} 0.98 (0 turns the floor off), or {flag} OUTPUT=0.98 for one output")
    return value


@dataclass
class OutputComparison:
    """Every number about one output; ``passed`` and ``failures`` give the verdict and why."""

    name: str
    shape: tuple
    tolerance: Tolerance
    max_abs: float = math.nan
    max_rel: float = math.nan
    mean_abs: float = math.nan
    p99_abs: float = math.nan
    cosine: float = math.nan
    top1: float | None = None
    top5: float | None = None
    atol: float = math.nan  # the absolute atol applied (scaled defaults resolved)
    required_atol: float = math.nan
    required_rtol: float = math.nan
    mismatched: int = 0
    elements: int = 0
    worst: dict | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        data = {k: _jsonable(v) for k, v in asdict(self).items() if k != "tolerance"}
        data["shape"] = list(self.shape)
        data["tolerance"] = self.tolerance.to_dict()
        data["passed"] = self.passed
        return data


def compare_arrays(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance, name: str = "output") -> OutputComparison:
    """Compare one output (see the module docstring for every definition)."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    result = OutputComparison(name=name, shape=tuple(cand.shape), tolerance=tolerance, elements=int(ref.size))
    if ref.shape != cand.shape:
        result.failures.append(f"shape {tuple(cand.shape)} differs from the reference's {tuple(ref.shape)}")
        return result
    if ref.size == 0:
        return result
    finite_ref = np.isfinite(ref)
    bad = finite_ref & ~np.isfinite(cand)
    if bad.any():
        result.failures.append(f"{int(bad.sum())} non-finite values (NaN/inf) where the reference is finite")
    diff = np.abs(cand - ref)
    diff = np.where(finite_ref, diff, 0.0)  # a non-finite reference is not the candidate's fault
    diff = np.where(bad, np.inf, diff)
    magnitude = np.abs(np.where(finite_ref, ref, 0.0))

    result.max_abs = float(diff.max())
    result.mean_abs = float(diff.mean())
    result.p99_abs = float(np.percentile(diff, 99)) if np.isfinite(diff).all() else math.inf
    nonzero = magnitude > 0
    result.max_rel = float((diff[nonzero] / magnitude[nonzero]).max()) if nonzero.any() else 0.0
    atol = result.atol = tolerance.absolute_atol(ref)
    result.required_atol = float(max((diff - tolerance.rtol * magnitude).max(), 0.0))
    excess = diff - atol
    over_zero = (~nonzero) & (excess > 0)
    if over_zero.any():
        result.required_rtol = math.inf
    else:
        result.required_rtol = float(max((np.maximum(excess, 0.0)[nonzero] / magnitude[nonzero]).max(initial=0.0), 0.0))
    outside = diff > atol + tolerance.rtol * magnitude
    result.mismatched = int(outside.sum())
    flat = int(np.argmax(diff))
    index = np.unravel_index(flat, diff.shape)
    result.worst = {"index": [int(i) for i in index], "reference": float(ref[index]), "candidate": float(cand[index])}
    # a sample with NaN/inf where the reference is finite has no direction and no decision: its
    # cosine is NaN (so the minimum is) and it never agrees, rather than scoring its finite rest
    broken = bad.reshape(bad.shape[0], -1).any(axis=1) if ref.ndim > 1 else np.full(1, bad.any())
    result.cosine = _min_cosine(np.where(finite_ref, ref, 0.0), np.where(np.isfinite(cand), cand, 0.0), broken)
    if holds_class_scores(ref.shape) and ref.shape[0]:
        scores, cand_scores = ref.reshape(ref.shape[0], -1), cand.reshape(ref.shape[0], -1)
        result.top1 = float(np.mean((np.argmax(scores, axis=1) == np.argmax(cand_scores, axis=1)) & ~broken))
        if scores.shape[1] > 5:
            result.top5 = _topk_set_agreement(scores, cand_scores, 5, broken)

    if result.mismatched:
        result.failures.append(
            f"{result.mismatched} of {result.elements} elements outside atol={atol:.3g} rtol={tolerance.rtol:g} "
            f"(max abs {result.max_abs:.3g}; would pass with atol={result.required_atol:.3g})"
        )
    if tolerance.min_cosine is not None and not result.cosine >= tolerance.min_cosine:
        result.failures.append(f"cosine similarity {result.cosine:.6f} below the floor {tolerance.min_cosine}")
    if tolerance.min_top1 is not None and result.top1 is not None and not result.top1 >= tolerance.min_top1:
        result.failures.append(f"top-1 agreement {result.top1:.4f} below the floor {tolerance.min_top1}")
    return result


def compare_outputs(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    tolerances,
) -> list[OutputComparison]:
    """Compare every reference output with the candidate's output of the same name.

    ``tolerances`` is a :class:`Tolerance` for all outputs or a callable ``name -> Tolerance``.
    With one output on each side the names need not match (a checkpoint's ``"output"`` vs an
    export's ``"logits"``); otherwise a missing name is a failure.
    """
    resolve = tolerances if callable(tolerances) else (lambda _name: tolerances)
    pairs: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    if len(reference) == 1 and len(candidate) == 1:
        (rname, rval), (_, cval) = next(iter(reference.items())), next(iter(candidate.items()))
        pairs.append((rname, rval, cval))
    else:
        for rname, rval in reference.items():
            pairs.append((rname, rval, candidate.get(rname)))
    results = []
    for name, rval, cval in pairs:
        if cval is None:
            missing = OutputComparison(name=name, shape=(), tolerance=resolve(name))
            missing.failures.append(f"the candidate has no output '{name}' (it has: {', '.join(candidate) or 'none'})")
            results.append(missing)
            continue
        results.append(compare_arrays(rval, cval, resolve(name), name))
    return results


def _min_cosine(ref: np.ndarray, cand: np.ndarray, broken: np.ndarray | None = None) -> float:
    r = ref.reshape(ref.shape[0], -1) if ref.ndim > 1 else ref.reshape(1, -1)
    c = cand.reshape(r.shape)
    num = np.sum(r * c, axis=1)
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    # two all-zero vectors agree perfectly; one zero and one non-zero do not
    both_zero = (np.linalg.norm(r, axis=1) == 0) & (np.linalg.norm(c, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, np.where(norms > 0, num / np.where(norms > 0, norms, 1.0), 0.0))
    if broken is not None:
        cos = np.where(broken, np.nan, cos)
    return float(np.min(cos))


def _topk_set_agreement(ref: np.ndarray, cand: np.ndarray, k: int, broken: np.ndarray | None = None) -> float:
    top_r = np.sort(np.argpartition(-ref, k - 1, axis=1)[:, :k], axis=1)
    top_c = np.sort(np.argpartition(-cand, k - 1, axis=1)[:, :k], axis=1)
    agree = np.all(top_r == top_c, axis=1)
    return float(np.mean(agree if broken is None else agree & ~broken))


def _jsonable(value):
    """JSON has no inf/NaN: encode them as strings so ``json.loads`` in any language works."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
