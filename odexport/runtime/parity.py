"""Collect what a parity check compares: outputs of a candidate at several batch sizes, and
per-layer values of an ONNX candidate.  Only arrays and error messages leave this module; the
verdict is made by :mod:`odexport.report.parity`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from odexport.runtime.base import InferenceError, Runner
from odexport.runtime.batching import run_batched


@dataclass
class CandidateRun:
    """Raw results of one candidate: outputs per batch size, or the error each batch size hit."""

    artifact: str
    backend: str
    precision: str
    input_shape: tuple
    outputs: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    layer_values: dict | None = None  # {"batch_size", "torch": {...}, "candidate": {...}, "notes": [...]}
    notes: list[str] = field(default_factory=list)  # e.g. where the artifact says it came from


def run_candidate(runner: Runner, artifact: str, samples: np.ndarray, batch_sizes: list[int]) -> CandidateRun:
    """Run every sample through ``runner`` at each batch size; a rejected batch is recorded, not raised."""
    run = CandidateRun(str(artifact), runner.backend, runner.precision, tuple(runner.inputs[0].shape) if runner.inputs else ())
    for batch_size in batch_sizes:
        try:
            run.outputs[batch_size] = run_batched(runner, samples, batch_size)
        except InferenceError as exc:
            run.errors[batch_size] = exc.message  # the hint is about re-exporting; the report words its own
    return run


def onnx_layer_values(reference_model, onnx_model, x: np.ndarray, *, threads: int | None = None, noise_model=None,
                      device: str = "cpu") -> dict:
    """Per-layer attentions and outputs of ``reference_model`` (PyTorch) and of the ONNX graph.

    ``onnx_model`` is a path or an ``onnx.ModelProto``.  The ONNX copy gets the located values as
    extra graph outputs and runs in onnxruntime on ``device`` (the candidate's) on the same ``x``.
    ``noise_model`` (the reference in the other float precision) fills ``"noise"`` (empty
    without one): per component, ``max |v32 - v64|``.
    """
    import onnx

    from odexport.runtime.intermediates import onnx_layer_value_names, torch_layer_values, with_extra_outputs
    from odexport.runtime.onnxruntime_runner import OrtRunner

    torch_values = torch_layer_values(reference_model, x)
    noise: dict[str, dict[str, float]] = {}
    if noise_model is not None:
        other = torch_layer_values(noise_model, x)
        for layer, comps in torch_values.items():
            noise[layer] = {c: float(np.abs(v.astype(np.float64) - other[layer][c].astype(np.float64)).max())
                            for c, v in comps.items() if c in other.get(layer, {})}
    notes: list[str] = []
    if not torch_values:
        return {"batch_size": int(x.shape[0]), "torch": {}, "candidate": {}, "notes": ["the reference has no dynamic convs"],
                "noise": noise}
    proto = onnx.load(str(onnx_model)) if not isinstance(onnx_model, onnx.ModelProto) else onnx_model
    shapes = {layer: {c: v.shape[1:] for c, v in comps.items()} for layer, comps in torch_values.items()}
    mapping, found_notes = onnx_layer_value_names(proto, shapes)
    notes.extend(found_notes)
    candidate: dict[str, dict[str, np.ndarray]] = {}
    if mapping:
        names = sorted({v for comps in mapping.values() for v in comps.values()})
        probe = OrtRunner(with_extra_outputs(proto, names), threads=threads, device=device)
        try:
            values = probe.session.run(names, {probe.inputs[0].name: np.ascontiguousarray(x, dtype=probe.inputs[0].dtype)})
        except Exception as exc:
            notes.append(f"onnxruntime could not run the copy with per-layer outputs: {' '.join(str(exc).split())[:200]}")
            values = []
        by_name = dict(zip(names, values)) if values else {}
        for layer, comps in mapping.items():
            for component, value_name in comps.items():
                if value_name in by_name:
                    candidate.setdefault(layer, {})[component] = np.asarray(by_name[value_name])
        probe.close()
    return {"batch_size": int(x.shape[0]), "torch": torch_values, "candidate": candidate, "notes": notes, "noise": noise}
