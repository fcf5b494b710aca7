"""An onnxruntime-CPU model specialised for this machine, written to disk (``odexport ort``).

The portable export (one ``com.odexport`` node per dynamic conv, each with an exact function
body) runs in any onnxruntime, but onnxruntime's fast CPU convolution (NCHWc) needs constant
weights and a dynamic conv's weight is computed per sample.
:func:`odexport.runtime.ort_optimize.optimize_for_cpu` rewrites the model for the onnxruntime
on this machine: per-sample kernels made directly in its blocked layout, fed to its NCHWc
convolutions, one specialisation per batch size behind an ``If`` on the batch (other sizes take
the general graph).  The result is exact but, like a TensorRT engine, tied to what it was made
for: the NCHWc block size (16 with AVX-512, 8 with AVX2) and the onnxruntime build whose
kernels it names.  This module writes that model with a record of both, and refuses to run it
(:func:`verify_machine`) where either differs, so a mismatched file fails with a message rather
than computing garbage.

Any onnxruntime session can load the written file (``ort.InferenceSession(path)``); only
odexport checks the record, so build it on the kind of machine that serves it (as one would an
engine) and gate it with ``odexport check CHECKPOINT model.ort-cpu.onnx``.
"""

from __future__ import annotations

import json
import math
import platform
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from odexport._files import output_folder, refuse_overwriting_input
from odexport.errors import ExportError, InputError, MissingDependencyError, ParityError
from odexport.export import metadata_keys as keys

SPECIALISATION_KEY = keys.ORT_CPU
DEFAULT_SUFFIX = ".ort-cpu.onnx"
DEFAULT_TOLERANCE = 1e-3  # of max|portable output|: a wrong layout errs by O(1); rounding 2e-7 (ResNets) to 2e-4 (random DY-ResNet18)


@dataclass
class SpecialisedModel:
    """What :func:`specialise_onnx` wrote: the file, the machine record, what the rewrite did and
    how far the specialised session is from the portable one (``max|d| / max|portable|`` per batch).
    A refusal carries one as ``error.outcome``, with ``path`` None: what was measured, nothing written."""

    path: Path | None
    source: Path
    record: dict
    rewrite: dict
    deviation: dict = field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE

    def to_dict(self) -> dict:
        return {"path": None if self.path is None else str(self.path), "source": str(self.source), "record": self.record, "rewrite": self.rewrite,
                "deviation": {str(k): v if math.isfinite(v) else str(v) for k, v in self.deviation.items()},  # JSON has no NaN
                "tolerance": self.tolerance}


def cpu_name() -> str:
    """The CPU's model name (informative: the layout depends on the block size, not the model)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record() -> dict:
    """What a specialised model depends on here: onnxruntime's version and NCHWc block size
    (``None`` when onnxruntime has no NCHWc kernels on this machine), plus the CPU for reference."""
    import onnxruntime as ort

    from odexport.runtime.ort_optimize import nchwc_block_size

    return {"onnxruntime": ort.__version__, "nchwc_block": nchwc_block_size(), "cpu": cpu_name(), "machine": platform.machine()}


def recorded(metadata: dict) -> dict | None:
    """The machine record of a specialised model from its metadata, or ``None`` for other models."""
    text = (metadata or {}).get(SPECIALISATION_KEY)
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    # a damaged record still marks the file as specialised: it cannot say for which machine
    return record if isinstance(record, dict) else {"unreadable": text}


def verify_machine(metadata: dict, where, device: str = "cpu") -> None:
    """Raise :class:`InputError` when the model's record (if any) does not fit this machine."""
    record = recorded(metadata)
    if record is None:
        return
    rebuild = "run it from the portable export on this machine: `odexport ort PORTABLE.onnx`"
    if device != "cpu":
        raise InputError(f"{where} is specialised for onnxruntime's CPU provider and cannot run on {device}",
                         "use the portable export for other providers")
    if "unreadable" in record:
        raise InputError(f"{where} is specialised for onnxruntime CPU, but its record of the machine it was made for "
                         f"({keys.ORT_CPU}) is damaged", rebuild)
    here = machine_record()
    for key, what in (("onnxruntime", "onnxruntime"), ("nchwc_block", "NCHWc block size")):
        if record.get(key) != here[key]:
            raise InputError(f"{where} was specialised for {what} {record.get(key)} but this machine has {here[key]}", rebuild)


def default_output(source: Path) -> Path:
    """``model.onnx`` -> ``model.ort-cpu.onnx``."""
    return source.with_name(source.stem + DEFAULT_SUFFIX)


def _file_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(8)
    except OSError:
        return b""


def specialise_onnx(source, output=None, *, batch_sizes=None, threads: int | None = None, check: bool = True,
                    tolerance: float = DEFAULT_TOLERANCE, measure: bool = True, seed: int = 0, stage=None) -> SpecialisedModel:
    """Write ``source`` (a portable odexport export, custom form) specialised for onnxruntime CPU
    on this machine at ``batch_sizes`` to ``output`` (default ``<source stem>.ort-cpu.onnx``).
    ``batch_sizes`` defaults to 1, and for a fixed-batch export to its batch, the only size it runs
    (other sizes are an :class:`InputError`).

    ``measure`` times the portable and the specialised model at each size, interleaved (about two
    seconds each, :func:`_speedups`), and drops the sizes where the specialisation is measurably
    slower (small networks can lose: per-sample convs of tiny maps cost more than they save); those
    are noted and run the general graph, and a size within the noise is kept with a note.  ``check`` runs both models on the same seeded inputs at every specialised
    size and one other (the general branch); a deviation above ``tolerance`` x max|portable|
    raises :class:`ParityError` and writes nothing.  Raises :class:`InputError` for a file that is
    not a custom-form export, :class:`ExportError` when no size is specialised (nothing to
    rewrite, or measurably slower everywhere), and :class:`MissingDependencyError` where onnxruntime has no
    NCHWc kernels.
    """
    import onnx

    from odexport.export.onnx_export import sidecar_path, write_model_atomically
    from odexport._memory import onnx_step_bytes, require_batch_fits
    from odexport.runtime.ort_optimize import CUSTOM_DOMAIN, optimize_for_cpu

    say = stage or (lambda _name: None)
    source = Path(source)
    if source.is_dir():
        raise InputError(f"{source} is a directory", "pass the ONNX file written by `odexport onnx` inside it")
    if not source.is_file():
        raise InputError(f"{source} does not exist", "pass an ONNX file written by `odexport onnx`")
    if source.stat().st_size == 0:
        raise InputError(f"{source} is empty", "export it again with `odexport onnx` (an interrupted copy or export leaves such a file)")
    sizes = None if batch_sizes is None else sorted({int(b) for b in batch_sizes})
    if sizes is not None and (not sizes or sizes[0] < 1):
        raise InputError(f"batch sizes {sizes} must be positive integers", "use e.g. --batch-sizes 1,8")
    out = Path(output) if output is not None else default_output(source)
    refuse_overwriting_input(out, source)
    if out.is_dir():
        raise InputError(f"output path {out} is a directory", "give a file name such as model.ort-cpu.onnx")
    output_folder(out, example="model.ort-cpu.onnx")  # a missing folder, or a file where the folder should be: before minutes of work
    from odexport.checkpoint.reader import looks_like_ort_format, looks_like_torch_file, ort_format_error

    head = _file_head(source)
    if looks_like_ort_format(head):  # converted for a minimal build (protobuf may even half-parse it): nothing to rewrite
        raise ort_format_error(source, "pass the .onnx it was converted from: `odexport ort model.onnx`")
    say(f"load {source}")
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        if looks_like_torch_file(head):  # a checkpoint given where an export belongs
            raise InputError(f"{source} is a PyTorch checkpoint, not an ONNX export",
                             f"export it first: `odexport onnx {source.name} -o MODEL.onnx`, then `odexport ort MODEL.onnx`") from exc
        raise InputError(f"{source} is not a readable ONNX file ({type(exc).__name__})", "pass an ONNX file written by `odexport onnx`") from exc
    metadata = {p.key: p.value for p in model.metadata_props}
    if SPECIALISATION_KEY in metadata:
        raise InputError(f"{source} is already specialised for onnxruntime CPU", "pass the portable export it was made from")
    if not any(node.domain == CUSTOM_DOMAIN for node in model.graph.node):
        raise InputError(f"{source} has no com.odexport dynamic-conv nodes to specialise",
                         "export it with `odexport onnx CKPT --form custom` (or --form auto --target cpu)")
    import onnxruntime as ort

    from odexport.export.verify import refuse_ignored_overloads, refuse_rewritten_custom_form

    refuse_rewritten_custom_form(model, source)  # else "abandoned, runs as exported" for a file that does not run
    refuse_ignored_overloads(ort.__version__, model, source)  # it would inline one layer's body into every layer
    record = machine_record()
    if record["nchwc_block"] is None:
        raise MissingDependencyError("this onnxruntime build does not use NCHWc convolutions on this CPU: nothing to specialise",
                                     "deploy the portable export as it is")

    fixed = _fixed_batch(model)
    if fixed is not None and sizes not in (None, [fixed]):
        raise InputError(f"{source} has a fixed batch of {fixed}: it runs no other size ({', '.join(map(str, sizes))} asked)",
                         f"pass --batch-sizes {fixed} (or leave it out), or export with a dynamic batch (`odexport onnx` without --batch)")
    sizes = sizes or [fixed or 1]
    shape = _recorded_sample_shape(model, metadata)
    if shape and (measure or check):  # both models run the largest size: one too large ends in the OOM killer
        require_batch_fits(max(_check_batches(sizes, fixed is not None)) if check else max(sizes), shape,
                           [lambda _shape: onnx_step_bytes(model)])

    def rewrite(batches):
        say(f"specialise for batch {', '.join(map(str, batches))} (NCHWc block {record['nchwc_block']})")
        report = optimize_for_cpu(model, threads=threads, batches=batches, name=source)
        if not report.changed:  # each layer's own reason first (a layout onnxruntime does not block), once per reason
            per_layer = Counter(report.skipped.values())
            why = "; ".join(dict.fromkeys([*(f"{reason} ({count} layer{'s' if count > 1 else ''})" for reason, count in per_layer.items()),
                                           *report.notes])) or "no layer is faster with a runtime weight"
            raise ExportError(f"no dynamic conv of {source} could be specialised ({why})", "deploy the portable export as it is")
        return report

    report = rewrite(sizes)
    speedup, verdict, notes = {}, {}, []
    if measure:
        say("time the portable and the specialised model")
        speedup, verdict = _speedups(model, report.model, sizes, threads)
        slower = [b for b in sizes if verdict[b] == "slower"]
        notes = [f"batch {b}: the specialisation took {1 / speedup[b]:.2f}x the portable latency here; "
                 "that size runs the general graph" for b in slower]
        notes += [f"batch {b}: {speedup[b]:.2f}x the portable speed, no measurable difference; specialised" for b in sizes
                  if verdict[b] == "even"]
        measured = {"speedup_vs_portable": {str(b): round(v, 3) for b, v in speedup.items()},
                    "speed_verdict": {str(b): v for b, v in verdict.items()}}
        if len(slower) == len(sizes):
            ratios = ", ".join(f"batch {b}: {1 / speedup[b]:.2f}x" for b in sizes)
            error = ExportError(f"the specialisation is slower than the portable export on this machine ({ratios} its latency)",
                                "deploy the portable export as it is (`odexport bench` compares them), or pass --no-measure to write it anyway")
            # what was measured, for a --json report of the refusal: nothing written, every size timed
            error.outcome = SpecialisedModel(None, source, {**record, "batches": [], "source": source.name, **measured},
                                             {"notes": []}, tolerance=tolerance)
            raise error
        if slower:
            sizes = [b for b in sizes if b not in slower]
            report = rewrite(sizes)
    else:
        measured = {"speedup_vs_portable": {}}
    specialised = report.model
    record = {**record, "batches": sizes, "fixed_batch": fixed is not None, "source": source.name, "rewritten": len(report.kernel_convs), "patches": len(report.patches), "gemm": len(report.gemm),
              "kept": len(report.skipped), **measured}
    onnx.helper.set_model_props(specialised, {**{p.key: p.value for p in specialised.metadata_props}, **metadata,
                                              SPECIALISATION_KEY: json.dumps(record, sort_keys=True)})
    details = report.to_dict()
    details["notes"] = notes + details["notes"]
    result = SpecialisedModel(out, source, record, details, tolerance=tolerance)
    if check:
        say("compare with the portable export")
        result.deviation = _deviation(model, specialised, _check_batches(sizes, fixed is not None), threads, seed)
        worst = float(np.max(list(result.deviation.values())))
        if not worst <= tolerance:
            differs = (f"differs from {source.name} by {worst:.2e} of its output scale (> {tolerance:g})" if math.isfinite(worst)
                       else f"computes NaN/inf where {source.name} does not")
            error = ParityError(f"the specialised model {differs}", "report this with the model; deploy the portable export meanwhile")
            error.outcome = SpecialisedModel(None, source, record, details, result.deviation, tolerance)
            raise error
    say(f"write {out}")
    write_model_atomically(specialised, out)
    # an export's sidecar left from what -o held before would describe another model
    sidecar_path(out).unlink(missing_ok=True)
    return result


def _speedups(portable, specialised, sizes, threads, seconds: float = 2.0, min_rounds: int = 12,
              max_rounds: int = 2000) -> tuple[dict[int, float], dict[int, str]]:
    """Per batch size: the median over rounds of the portable latency over the specialised one
    (> 1: faster) and a verdict, ``faster``, ``slower`` or ``even``.

    The two sessions are called in turn, the first of each round rotating (spinning off), for
    about ``seconds`` per size and at least ``min_rounds`` rounds, so a busy machine slows both
    alike and a millisecond model is timed over hundreds of calls, not a dozen (a dozen left the
    shipped sample's batch-1 ratio anywhere in 0.97-1.25x between runs).  The verdict is a sign
    test on the rounds: with ``n`` rounds of which the specialisation won ``k``, it is ``faster``
    when ``P(K >= k) < SIGNIFICANCE`` for ``K ~ Binomial(n, 1/2)`` (as many wins by chance between
    equally fast models), ``slower`` when ``P(K <= k) < SIGNIFICANCE``, and ``even`` otherwise:
    a difference this measurement cannot tell from noise, which must not decide between writing
    the file and refusing it from one run to the next.  The ratio is taken per round (two adjacent
    calls) so that it lies on the verdict's side of 1: a median of the two latency series could
    say 0.93x while the specialisation won most rounds (a loaded machine's long tails).
    """
    from odexport.runtime.onnxruntime_runner import OrtRunner
    from odexport.runtime.timing import interleaved_latencies

    runners = {"portable": OrtRunner(portable, threads=threads, allow_spinning=False),
               "specialised": OrtRunner(specialised, threads=threads, allow_spinning=False)}
    shape = runners["portable"].input_shape
    if not shape:
        raise InputError("the model's sample shape is not recorded", "re-export it with `odexport onnx`")
    rng = np.random.default_rng(0)
    speedup, verdict = {}, {}
    try:
        for batch in sizes:
            x = rng.standard_normal((batch, *shape)).astype(np.float32)
            timers = {name: runner.timer(x) for name, runner in runners.items()}
            times = interleaved_latencies(timers, warmup=3, iterations=max_rounds, max_seconds=seconds, min_iterations=min_rounds)
            portable_ms, specialised_ms = np.asarray(times["portable"]), np.asarray(times["specialised"])
            speedup[batch] = float(np.median(portable_ms / specialised_ms))
            verdict[batch] = sign_test(int((specialised_ms < portable_ms).sum()), int((specialised_ms > portable_ms).sum()))
    finally:
        for runner in runners.values():
            runner.close()
    return speedup, verdict


#: one-sided level of :func:`sign_test`: a verdict the sign test gets wrong one run in a hundred
SIGNIFICANCE = 0.01


def sign_test(wins: int, losses: int, significance: float = SIGNIFICANCE) -> str:
    """``faster`` / ``slower`` / ``even`` from paired rounds won and lost (ties dropped): exact
    binomial tails, ``P(K >= wins)`` and ``P(K <= wins)`` for ``K ~ Binomial(wins + losses, 1/2)``."""
    n = wins + losses
    if n == 0:
        return "even"
    total = Fraction(significance) * 2 ** n  # exact: 2 ** n rounds far beyond a float
    at_least = sum(math.comb(n, i) for i in range(wins, n + 1))
    at_most = sum(math.comb(n, i) for i in range(0, wins + 1))
    if at_least < total:
        return "faster"
    if at_most < total:
        return "slower"
    return "even"


def _input_dims(model) -> list[int | None] | None:
    """The first graph input's dims (None where symbolic), or None without an input."""
    if not model.graph.input:
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in model.graph.input[0].type.tensor_type.shape.dim]


def _recorded_sample_shape(model, metadata: dict) -> tuple[int, ...] | None:
    """One sample's shape as an ``OrtRunner`` of ``model`` would report it (graph dims, else the export's record)."""
    from odexport.runtime.onnxruntime_runner import onnx_sample_shape

    dims = _input_dims(model)
    return None if dims is None else onnx_sample_shape(dims[1:], metadata)


def _fixed_batch(model) -> int | None:
    """The batch a fixed-batch export's input declares (``odexport onnx --batch N``), else None."""
    dims = _input_dims(model)
    return dims[0] if dims else None


def _check_batches(sizes: list[int], fixed: bool = False) -> list[int]:
    """The sizes the check compares: the specialised sizes and the smallest size that takes the
    general branch (a fixed-batch file has none: its one size)."""
    if fixed:
        return list(sizes)
    other = next(b for b in range(1, max(sizes) + 2) if b not in sizes)
    return sorted(set(sizes) | {other})


def _deviation(portable, specialised, batches, threads, seed) -> dict[int, float]:
    from odexport.runtime.onnxruntime_runner import OrtRunner

    plain = OrtRunner(portable, threads=threads, allow_spinning=False)
    fast = OrtRunner(specialised, threads=threads, allow_spinning=False)
    shape = plain.input_shape
    if not shape:
        raise InputError("the model's sample shape is not recorded", "re-export it with `odexport onnx`")
    rng = np.random.default_rng(seed)
    deviation = {}
    for batch in batches:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        a, b = plain.infer({plain.inputs[0].name: x}), fast.infer({fast.inputs[0].name: x})
        per_output = []
        for name, ref in a.items():
            ref, got = ref.astype(np.float64), b[name].astype(np.float64)
            # the same inf or NaN on both sides is no difference (inf - inf would read as NaN); any other is NaN
            same = (got == ref) | (np.isnan(got) & np.isnan(ref))
            with np.errstate(invalid="ignore"):
                gap = np.where(same, 0.0, np.abs(got - ref))
            finite = np.abs(ref[np.isfinite(ref)])
            scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
            per_output.append(float(gap.max()) / scale)  # a NaN gap (a NaN on one side only) stays NaN
        deviation[batch] = float(np.max(per_output)) if per_output else 0.0  # NaN stays NaN (max(0.0, nan) is 0.0)
    plain.close()
    fast.close()
    return deviation
