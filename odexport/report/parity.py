"""The parity verdict: what was compared, at which batch sizes, and whether it passed.

A report is plain data (built from arrays by :func:`candidate_parity`) so that rendering -- a
table, JSON, JUnit XML, Markdown -- never needs a runtime.  The verdict is strict: a candidate
passes only when every output passes at every batch size and nothing failed to run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from odexport._outputs import holds_class_scores
from odexport.report.compare import OutputComparison, _jsonable, compare_outputs


@dataclass
class BatchParity:
    """One batch size of one candidate: the per-output comparisons, or why it could not run."""

    batch_size: int
    outputs: list[OutputComparison] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.outputs) and all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "passed": self.passed, "error": self.error,
                "outputs": [o.to_dict() for o in self.outputs]}


@dataclass
class Accuracy:
    """Accuracy against user labels, and how often the candidate's decision equals the reference's."""

    samples: int
    reference: float
    candidate: float
    top1_agreement: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def accuracy(labels: np.ndarray, reference_logits: np.ndarray, candidate_logits: np.ndarray) -> Accuracy:
    """Top-1 accuracy of both against the labels, and their agreement. A sample with a non-finite
    logit is wrong and disagrees (argmax would read an all-NaN row as class 0)."""
    ref_pred = _predictions(reference_logits, len(labels), missing=-1)
    cand_pred = _predictions(candidate_logits, len(labels), missing=-2)
    return Accuracy(int(len(labels)), float(np.mean(ref_pred == labels)), float(np.mean(cand_pred == labels)),
                    float(np.mean(ref_pred == cand_pred)))


def classifier_output(outputs: dict) -> str | None:
    """The output labels are scored against: the first that holds class scores
    (:func:`~odexport._outputs.holds_class_scores`; a dense map, a scalar regression: None)."""
    return next((name for name, value in outputs.items() if holds_class_scores(np.shape(value))), None)


def _predictions(logits: np.ndarray, count: int, *, missing: int) -> np.ndarray:
    """Top-1 class per sample; ``missing`` (no class, and unequal for the two sides) where a logit is not finite."""
    rows = logits.reshape(count, -1)
    return np.where(np.isfinite(rows).all(axis=1), rows.argmax(axis=1), missing)


@dataclass
class LayerParity:
    """One component (an attention head, or the conv output) of one dynamic conv."""

    layer: str
    component: str  # "attention.channel" | "attention.filter" | "attention.spatial" | "attention.kernel" | "output"
    comparison: OutputComparison

    @property
    def kind(self) -> str:
        return "attention" if self.component.startswith("attention") else "convolution"

    def to_dict(self) -> dict:
        c = self.comparison
        return {"layer": self.layer, "component": self.component, "kind": self.kind, "passed": c.passed,
                "max_abs": _jsonable(c.max_abs), "max_rel": _jsonable(c.max_rel), "required_atol": _jsonable(c.required_atol),
                "cosine": _jsonable(c.cosine), "failures": list(c.failures)}


@dataclass
class PerLayerParity:
    """Every dynamic conv's attentions and output vs PyTorch, in network order."""

    layers: list[LayerParity] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    batch_size: int = 0

    @property
    def first_divergence(self) -> LayerParity | None:
        return next((entry for entry in self.layers if not entry.comparison.passed), None)

    @property
    def verdict(self) -> str:
        """One line: the first divergence, that none diverges (and how much was compared), or that nothing was."""
        first = self.first_divergence
        if first is not None:
            return f"first divergence at {first.layer} ({first.kind}: {first.component})"
        if not self.layers:
            return "nothing compared: no per-layer value of this export could be located (the outputs were compared; see the notes)"
        layers = len({entry.layer for entry in self.layers})
        return f"no dynamic conv diverges ({len(self.layers)} values of {layers} layers compared)"

    def to_dict(self) -> dict:
        first = self.first_divergence
        return {
            "batch_size": self.batch_size,
            "compared": len(self.layers),
            "first_divergence": None if first is None else {"layer": first.layer, "component": first.component, "kind": first.kind},
            "layers": [entry.to_dict() for entry in self.layers],
            "notes": list(self.notes),
        }


@dataclass
class CandidateParity:
    """Everything about one candidate artifact."""

    artifact: str
    backend: str = ""
    precision: str = ""
    batches: list[BatchParity] = field(default_factory=list)
    accuracy: Accuracy | None = None
    per_layer: PerLayerParity | None = None
    error: str | None = None  # could not be opened at all
    notes: list[str] = field(default_factory=list)
    missing_backend: bool = False  # ``error`` says which backend this machine lacks: not compared, not diverged
    refused: bool = False  # ``error`` is an input error about this file (corrupt, another size): not run, exit 1
    fix: str | None = None  # what to do about a refused candidate

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.batches) and all(b.passed for b in self.batches)

    @property
    def per_layer_verdict(self) -> str | None:
        """The per-layer line; a layer above its own (tighter) tolerance in a candidate whose outputs
        pass is said to be within the outputs' tolerance, not left to read as a failure."""
        if self.per_layer is None:
            return None
        verdict = self.per_layer.verdict
        if self.passed and self.per_layer.first_divergence is not None:
            verdict += ", within the tolerance of the network outputs, which pass"
        elif (self.batches and not self.passed and all(b.error is None for b in self.batches)  # ran, and diverged
              and any("below the floor" not in reason for reason in self.failures)  # not only a decision on near ties
              and self.per_layer.layers and self.per_layer.first_divergence is None):
            verdict += "; the outputs diverge in a layer that is not a dynamic conv (a static conv, the classifier)"
        return verdict

    @property
    def failures(self) -> list[str]:
        """Human-readable reasons, one per failing batch/output."""
        reasons = [f"{self.error} -- {self.fix}" if self.fix else self.error] if self.error else []
        for batch in self.batches:
            if batch.error:
                reasons.append(f"batch {batch.batch_size}: {batch.error}")
            for out in batch.outputs:
                reasons.extend(f"batch {batch.batch_size}, {out.name}: {f}" for f in out.failures)
        return reasons

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "backend": self.backend,
            "precision": self.precision,
            "passed": self.passed,
            "error": self.error,
            "missing_backend": self.missing_backend,
            "refused": self.refused,
            "fix": self.fix,
            "notes": list(self.notes),
            "failures": self.failures,
            "batches": [b.to_dict() for b in self.batches],
            "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
            "per_layer": None if self.per_layer is None else self.per_layer.to_dict(),
        }


@dataclass
class ParityReport:
    """The result of one ``odexport check`` run."""

    reference: dict
    inputs: dict
    batch_sizes: list[int]
    candidates: list[CandidateParity] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.candidates) and all(c.passed for c in self.candidates)

    @property
    def diverged(self) -> list[CandidateParity]:
        """Candidates that ran and failed (exit 2), as opposed to those refused or not compared for want of a backend."""
        return [c for c in self.candidates if not c.passed and not c.missing_backend and not c.refused]

    @property
    def not_compared(self) -> list[CandidateParity]:
        """Candidates whose backend this machine lacks (exit 3 when nothing else failed)."""
        return [c for c in self.candidates if c.missing_backend]

    @property
    def refused(self) -> list[CandidateParity]:
        """Candidates not run because the file itself is wrong for this check (exit 1)."""
        return [c for c in self.candidates if c.refused]

    @property
    def verdict(self) -> str:
        """PASS; FAIL when a candidate diverged; ERROR when none did but one was refused as bad input;
        INCOMPLETE when the only shortfall is a backend this machine lacks."""
        if self.passed:
            return "PASS"
        if self.diverged:
            return "FAIL"
        return "ERROR" if self.refused else "INCOMPLETE"

    def error(self, where: str = "the failures above"):
        """The error a gate raises for this report, or None when it passed: a refused candidate
        (:class:`InputError`, exit 1: the command must change before the verdict is whole), else a
        diverged one (:class:`ParityError`, exit 2), else a backend missing here
        (:class:`MissingDependencyError`, exit 3).  ``where`` says where the per-candidate failures
        are shown, for the hint."""
        from odexport.errors import MissingDependencyError, ParityError
        from odexport.report.render import candidate_names

        names = candidate_names(self)
        skipped = self.not_compared
        if self.refused:
            return _refusal(self, names)
        if self.diverged:
            also = f"; {len(skipped)} not compared (backend missing here)" if skipped else ""
            reasons = [reason for cand in self.diverged for reason in cand.failures]
            floors_only = bool(reasons) and all("below the floor" in reason for reason in reasons)
            # every failing batch was refused by the candidate: no numbers were compared there to loosen
            rejected_only = (all(batch.error for cand in self.diverged for batch in cand.batches if not batch.passed)
                             and not any(cand.error for cand in self.diverged))
            if floors_only:
                hint = ("only a top-1/cosine floor failed, which --atol/--rtol do not change: the candidate decides otherwise "
                        "where the reference's logits are nearly tied (reduced-precision rounding); judge it on real images "
                        "(--inputs, hundreds of samples), where near ties are rare, and lower the floor (--min-top1, "
                        "--min-cosine) only to a rate measured there; an output that is not class scores (an embedding) "
                        "takes --min-top1 NAME=0")
            elif rejected_only:
                hint = (f"the candidates refused batch sizes (see {where}): re-export with a dynamic batch, "
                        "or check a fixed-batch file at its own batch size with --batch-sizes")
            else:
                hint = f"see {where}; loosen --atol/--rtol only if the numbers are expected"
            return ParityError(f"{len(self.diverged)} of {len(self.candidates)} candidates failed the parity check{also}", hint)
        if skipped:
            shown = ", ".join(names[c.artifact] for c in skipped)
            others = " (the other candidates passed)" if len(skipped) < len(self.candidates) else ""
            return MissingDependencyError(f"{shown} not compared: this machine lacks the backend{others}",
                                          "run the check where the backend is installed (see `odexport doctor`)")
        return None

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "reference": _jsonable(self.reference),
            "inputs": _jsonable(self.inputs),
            "batch_sizes": list(self.batch_sizes),
            "candidates": [c.to_dict() for c in self.candidates],
        }


def _refusal(report, names):
    """The input error for candidates refused as given: the one refusal itself, or how many there
    were, followed by what became of the other candidates (their results are in the reports)."""
    from odexport.errors import InputError

    refused = report.refused
    others = [cand for cand in report.candidates if not cand.refused]
    fates = [(sum(cand.passed for cand in others), "passed"), (len(report.diverged), "failed the parity check"),
             (len(report.not_compared), "not compared (backend missing here)")]
    if len(others) == 1:  # its one fate, without a count
        also = "; the other candidate " + next(fate for count, fate in fates if count)
    elif others:
        also = f"; of the other {len(others)} candidates, " + ", ".join(f"{count} {fate}" for count, fate in fates if count)
    else:
        also = ""
    if len(refused) == 1:
        refusal, fix = refused[0].error, refused[0].fix
        return InputError(f"{refusal}{also}", fix)
    shown = ", ".join(names[cand.artifact] for cand in refused)
    return InputError(f"{len(refused)} candidates could not be run as given: {shown}{also}",
                      "each one's reason and fix is in its ERROR line (or the report's `fix`)")


def batch_parity(batch_size: int, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray] | None,
                 tolerances, error: str | None = None) -> BatchParity:
    """Compare one batch size's outputs (or record why the candidate produced none)."""
    if candidate is None:
        return BatchParity(batch_size, [], error or "the candidate produced no outputs")
    return BatchParity(batch_size, compare_outputs(reference, candidate, tolerances), None)


def baked_batch_message(batch_size: int, input_shape, detail: str) -> str:
    """The message for a batch size the candidate rejects: it names the likely cause."""
    fixed, intended = "", ""
    if input_shape and isinstance(input_shape[0], int) and input_shape[0] > 0:
        fixed = f" (its input shape is {tuple(input_shape)}: batch {input_shape[0]} is fixed)"
        intended = f"; if the fixed batch is intended (`odexport onnx --batch {input_shape[0]}`), check it at that size: --batch-sizes {input_shape[0]}"
    return (f"rejected batch size {batch_size}{fixed}; the batch seems baked in -- re-export with a dynamic batch "
            f"(`odexport onnx`, which never fixes the batch unless asked){intended}. Backend said: {detail}")


def parity_report(
    reference: dict,
    inputs: dict,
    batch_sizes: list[int],
    reference_outputs: dict[str, np.ndarray],
    runs: list,
    overrides=None,
    labels: np.ndarray | None = None,
    reference_noise: dict[str, float] | None = None,
    noise_margin: float | None = None,
    missing: dict[str, tuple[str, object]] | None = None,
    refused: dict[str, tuple[str, object]] | None = None,
    order: list[str] | None = None,
) -> ParityReport:
    """Build the verdict from raw runs (:class:`odexport.runtime.parity.CandidateRun`).

    ``overrides`` is a :class:`~odexport.report.compare.ToleranceOverrides` (defaults by precision
    otherwise).  ``reference_noise`` (output -> max |r32 - r64|) floors each default atol at
    ``noise_margin`` times it.  With ``labels``, each candidate also gets an :class:`Accuracy`
    computed from its outputs at the first batch size that ran.  ``missing`` (artifact -> (backend, why)) lists
    candidates whose backend this machine lacks: reported as not compared; ``refused`` (artifact ->
    (backend, :class:`~odexport.errors.InputError`)) those whose file cannot run in this check.
    ``order`` (artifacts as the command line gave them) orders the candidates; else the runs come
    first, then the missing, then the refused.
    """
    from odexport.report.compare import NOISE_MARGIN, ToleranceOverrides

    overrides = overrides or ToleranceOverrides()
    margin = NOISE_MARGIN if noise_margin is None else noise_margin
    noise = reference_noise or {}
    report = ParityReport(reference=reference, inputs=inputs, batch_sizes=list(batch_sizes))
    blind_notes: dict[str, list[str]] = {}  # by precision: the tolerances, and so the notes, depend on nothing else
    for run in runs:
        cand = CandidateParity(artifact=run.artifact, backend=run.backend, precision=run.precision, notes=list(run.notes))
        resolve = (lambda name, p=run.precision: overrides.resolve(name, p, margin * noise.get(name, 0.0)))
        if run.precision not in blind_notes:
            blind_notes[run.precision] = input_blind_notes(reference_outputs, resolve)
        cand.notes.extend(blind_notes[run.precision])
        for batch_size in batch_sizes:
            if batch_size in run.errors:
                cand.batches.append(BatchParity(batch_size, [], baked_batch_message(batch_size, run.input_shape, run.errors[batch_size])
                                                if _looks_baked(batch_size, run.input_shape, run.errors[batch_size]) else run.errors[batch_size]))
            else:
                cand.batches.append(batch_parity(batch_size, reference_outputs, run.outputs.get(batch_size), resolve))
        scored = classifier_output(reference_outputs)
        if labels is not None and run.outputs and scored is not None:
            first = next(iter(run.outputs.values()))
            # one output on each side may be named differently (a checkpoint's "output", an export's "logits")
            name = scored if scored in first or len(first) != 1 else next(iter(first))
            if name in first:
                cand.accuracy = accuracy(labels, reference_outputs[scored], first[name])
        if run.layer_values is not None:
            cand.per_layer = per_layer_parity(run.layer_values, overrides, run.precision, margin)
        report.candidates.append(cand)
    for artifact, (backend, reason) in (missing or {}).items():
        report.candidates.append(CandidateParity(artifact=artifact, backend=backend, error=str(reason), missing_backend=True))
    for artifact, (backend, exc) in (refused or {}).items():
        report.candidates.append(CandidateParity(artifact=artifact, backend=backend, error=getattr(exc, "message", str(exc)),
                                                 fix=getattr(exc, "hint", None), refused=True))
    if order:
        place = {artifact: index for index, artifact in reversed(list(enumerate(order)))}
        report.candidates.sort(key=lambda cand: place.get(str(cand.artifact), len(order)))
    return report


def input_blind_notes(reference_outputs: dict[str, np.ndarray], resolve) -> list[str]:
    """A note for each output on which a candidate that ignored its input would pass.

    The candidate tried is the midrange of the reference over the samples, ``c = (max_i r_i +
    min_i r_i) / 2`` element-wise, the same for every sample: it is within ``(max_i r_i - min_i
    r_i) / 2`` of each sample's output, the least any fixed answer can be. When it passes the
    tolerance (``resolve(name)``), every floor included, the samples barely move that output --
    inputs far from the data (blank images, a model saturated on noise), or one sample repeated --
    and a pass shows little about the candidate.
    """
    from odexport.report.compare import compare_arrays

    notes = []
    for name, values in reference_outputs.items():
        values = np.asarray(values, dtype=np.float64)
        if values.ndim < 1 or values.shape[0] < 2 or not np.isfinite(values).all():
            continue  # one sample: its own note; non-finite references are refused before this
        blind = np.broadcast_to((values.max(axis=0) + values.min(axis=0)) / 2, values.shape)
        if compare_arrays(values, blind, resolve(name), name).passed:
            notes.append(f"output '{name}' barely varies across the {values.shape[0]} samples: one fixed output for every "
                         "sample would pass this tolerance too, so this pass shows little; check on inputs that make the "
                         "model's outputs differ (real samples in --inputs)")
    return notes


def _looks_baked(batch_size: int, input_shape, detail: str) -> bool:
    """A rejected batch is called baked in when the input declares a fixed batch, or the backend
    complained about a shape (reshape/broadcast/dimension/split sizes), which is how a batch baked
    into the graph's constants shows up."""
    if input_shape and isinstance(input_shape[0], int) and input_shape[0] > 0 and input_shape[0] != batch_size:
        return True
    if re.search(r"\baxis [1-9]\d* has size", detail):
        return False  # the runner named a sample axis (channels, height, width), not the batch
    lowered = detail.lower()
    # "split": a Split whose sizes were traced at one batch ("Split size 8 exceeds the remaining size")
    return any(word in lowered for word in ("shape", "dimension", "reshape", "broadcast", "batch", "split"))


def per_layer_parity(layer_values: dict, overrides, precision: str, noise_margin: float | None = None) -> PerLayerParity:
    """Compare every dynamic conv's components in network order (attentions before the output).

    Tolerances are the candidate precision's atol/rtol (global overrides apply) without the
    top-1/cosine floors, which are meant for network outputs, not attention vectors; the default
    atol is floored by ``noise_margin`` x the component's own fp32 rounding noise when
    ``layer_values["noise"]`` has it.
    """
    from odexport.report.compare import NOISE_MARGIN, Tolerance, compare_arrays
    from odexport.runtime.intermediates import COMPONENTS

    margin = NOISE_MARGIN if noise_margin is None else noise_margin
    base = overrides.resolve("", precision)
    noise = layer_values.get("noise") or {}
    result = PerLayerParity(batch_size=int(layer_values.get("batch_size", 0)), notes=list(layer_values.get("notes", [])))
    torch_values, candidate = layer_values.get("torch", {}), layer_values.get("candidate", {})
    for layer, components in torch_values.items():
        for component in COMPONENTS:
            if component not in components or component not in candidate.get(layer, {}):
                continue
            ref = components[component]
            got = candidate[layer][component]
            if got.size == ref.size and got.shape != ref.shape:
                got = got.reshape(ref.shape)  # e.g. (B, C, 1, 1) attention vs the flat (B, C)
            floor = margin * noise.get(layer, {}).get(component, 0.0) if base.scaled_atol else 0.0
            tolerance = Tolerance(base.atol, base.rtol, scaled_atol=base.scaled_atol, noise_atol=floor)
            result.layers.append(LayerParity(layer, component, compare_arrays(ref, got, tolerance, f"{layer}:{component}")))
    return result
