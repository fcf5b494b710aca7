"""The export's own parity check: onnxruntime (CPU) against PyTorch on seeded random inputs.

Deliberately small and reusable (``odexport check`` builds the full gate): run both at a few
batch sizes, report max abs / max rel error per output, and say whether they pass.

``max_rel`` is the largest absolute error divided by the largest magnitude of the reference
output (a scale-aware relative error; an elementwise ratio explodes on values near zero).
A comparison passes when ``max_abs <= atol + rtol * max|reference|``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from odexport._outputs import holds_class_scores
from odexport._versions import version_at_least
from odexport.errors import NON_FINITE_WEIGHTS_FIX, InputError, MissingDependencyError
from odexport.report.compare import NOISE_MARGIN

# Defaults (atol, rtol) by candidate precision: fp32 within 1e-4 of the output scale, fp16 within
# 1%.  The absolute part is only there for an all-zero output: an absolute 1e-3 or 1e-4 was wider
# than the whole output of a model whose outputs are small (a regression near zero), which then
# passed whatever the export computed.
TOLERANCES = {"fp32": (1e-8, 1e-4), "fp16": (1e-6, 1e-2)}
DEFAULT_BATCHES = (1, 2, 7)


@dataclass
class OutputComparison:
    name: str
    batch: int
    max_abs: float
    max_rel: float
    top1_agreement: float | None
    passed: bool
    noise_floor: float | None = None  # 5 x max|r32 - r64|, measured when the fixed tolerance alone failed


@dataclass
class ParityResult:
    """Result of :func:`compare_with_torch`; ``passed`` only when every comparison passed."""

    passed: bool
    atol: float
    rtol: float
    precision: str
    seed: int
    comparisons: list[OutputComparison] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def worst(self) -> OutputComparison | None:
        return max(self.comparisons, key=lambda c: _nan_first(c.max_rel), default=None)

    def summary(self) -> str:
        worst = self.worst()
        if worst is None:
            return "no comparison ran"
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"parity {verdict}: max abs {max((c.max_abs for c in self.comparisons), key=_nan_first):.3g}, "
            f"max rel {worst.max_rel:.3g} (batches {sorted({c.batch for c in self.comparisons})}, "
            f"atol {self.atol:g}, rtol {self.rtol:g})"
        )


def _nan_first(error: float) -> float:
    """Sort key of an error: NaN (a candidate computing NaN) ranks above every number, where
    ``max`` would keep it only when it came first."""
    return math.inf if math.isnan(error) else error


#: the first onnxruntime that tells model-local functions of one name apart by their ``overload``
#: (ONNX IR 10); earlier releases run one body for every node of that name
OVERLOADS_HONOURED_FROM = (1, 27)


def functions_sharing_a_name(proto: onnx.ModelProto) -> list[str]:
    """``domain::name`` of the model-local functions defined more than once, told apart only by
    their ``overload`` (the custom form: one body per layer configuration)."""
    count = Counter((function.domain, function.name) for function in proto.functions)
    return sorted(f"{domain}::{name}" for (domain, name), n in count.items() if n > 1)


def model_structure(model) -> onnx.ModelProto | None:
    """``model`` (a path, serialized bytes or an ``onnx.ModelProto``) as a proto, external weights
    not read; None when it is not a readable ONNX model (onnxruntime's own error then says more)."""
    try:
        if isinstance(model, onnx.ModelProto):
            return model
        if isinstance(model, (bytes, bytearray)):
            return onnx.load_from_string(bytes(model))
        return onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - any reason it cannot be read is onnxruntime's to report
        return None


#: what a tool that rewrote a custom-form file did to it, and what to do instead (docs/ops.md)
REWRITTEN_CUSTOM_FORM_FIX = ("re-export with `odexport onnx`; run such tools on a copy with the functions inlined "
                             "(`onnx.inliner.inline_local_functions`) or on a `--form decomposed` export (docs/ops.md)")


def _nodes_everywhere(proto: onnx.ModelProto):
    """Every node of the graph, of its subgraphs (``If`` branches, loop bodies) and of its functions."""
    def walk(nodes):
        for node in nodes:
            yield node
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attribute.g.node)
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    for graph in attribute.graphs:
                        yield from walk(graph.node)

    yield from walk(proto.graph.node)
    for function in proto.functions:
        yield from walk(function.node)


def refuse_rewritten_custom_form(model, where) -> None:
    """Refuse (exit 1) a custom-form model that a rewriting tool left without its layers' function bodies.

    A custom-form layer is a ``com.odexport`` node whose computation is the model-local function of
    the same (domain, op type, overload).  Some tools drop or merge those functions and still write
    a file that passes ``onnx.checker``: ``onnx.version_converter`` drops every local function,
    ``onnx.utils.extract_model`` keeps one body per name, onnx-graphsurgeon (``polygraphy surgeon``)
    drops the overloads, leaving several functions with one identity.  onnxruntime then fails with
    "not a registered function/op" or "Duplicate model-local function identifier"; this names the
    cause instead.  ``model`` is a path, serialized bytes or an ``onnx.ModelProto``."""
    from odexport.export.custom import DOMAIN

    proto = model_structure(model)
    if proto is None:
        return

    identities = Counter((f.domain, f.name, f.overload) for f in proto.functions)
    merged = sorted({f"{d}::{n}" for (d, n, _), count in identities.items() if count > 1 and d == DOMAIN})
    if merged:
        raise InputError(
            f"{where} defines {', '.join(merged)} several times under one identity: a tool that rewrote the file "
            "dropped the overloads that tell the layers' bodies apart (onnx-graphsurgeon, `polygraphy surgeon` do)",
            REWRITTEN_CUSTOM_FORM_FIX)
    orphans = Counter(f"{node.domain}::{node.op_type}" for node in _nodes_everywhere(proto)
                      if node.domain == DOMAIN and (node.domain, node.op_type, node.overload) not in identities)
    if orphans:
        calls = ", ".join(f"{count} {name}" for name, count in sorted(orphans.items()))
        raise InputError(
            f"{where} has custom-form layers without their function bodies ({calls} node(s)): a tool that rewrote the "
            "file dropped them (onnx.version_converter drops every local function, onnx.utils.extract_model keeps "
            "one body per name)", REWRITTEN_CUSTOM_FORM_FIX)


def refuse_ignored_overloads(ort_version: str, model, where) -> None:
    """Refuse (exit 3) a model whose functions share a name and differ by ``overload`` -- the
    custom form: one ``com.odexport::ODConv2d`` body per layer configuration -- on an onnxruntime
    older than :data:`OVERLOADS_HONOURED_FROM`.  Such a release either fails to load it (a shape
    error inside the wrong body) or, where the shapes happen to fit, silently runs another layer's
    convolution.  ``model`` is a path, serialized bytes or an ``onnx.ModelProto``."""
    if version_at_least(ort_version, OVERLOADS_HONOURED_FROM):
        return
    proto = model_structure(model)
    if proto is None:
        return
    shared = functions_sharing_a_name(proto)
    if shared:
        least = ".".join(map(str, OVERLOADS_HONOURED_FROM))
        raise MissingDependencyError(
            f"onnxruntime {ort_version} ignores ONNX function overloads, and {where} tells the bodies of "
            f"{', '.join(shared)} apart by overload: it would run one layer's body for every layer",
            f"pip install -U 'onnxruntime>={least}' (or onnxruntime-gpu), or export with `odexport onnx --form decomposed`")


def ort_session(model: str | onnx.ModelProto, threads: int | None = None):
    """A CPU onnxruntime session (spinning off, so idle sessions leave the cores alone)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    refuse_ignored_overloads(ort.__version__, model, model if isinstance(model, str) else "the export")
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def seeded_inputs(input_shape: Sequence[int], batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000 * batch)
    return rng.standard_normal((batch, *input_shape)).astype(np.float32)


def torch_outputs(model, x: np.ndarray, keep_dtype: bool = False) -> list[np.ndarray]:
    """The model's outputs on ``x`` (cast to the model's float dtype), as float32 arrays unless
    ``keep_dtype``."""
    import torch

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(x).to(dtype))
    if isinstance(out, torch.Tensor):
        out = (out,)
    return [o.detach().numpy() if keep_dtype else o.detach().float().numpy() for o in out]


def compare_arrays(name: str, batch: int, reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float) -> OutputComparison:
    if reference.shape != candidate.shape:
        return OutputComparison(name, batch, float("inf"), float("inf"), None, False)
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    top1 = None
    if holds_class_scores(reference.shape) and reference.shape[0]:
        top1 = float(np.mean(reference.reshape(reference.shape[0], -1).argmax(1) == candidate.reshape(reference.shape[0], -1).argmax(1)))
    passed = bool(np.isfinite(max_abs) and max_abs <= atol + rtol * scale)
    return OutputComparison(name, batch, max_abs, max_rel, top1, passed)


def compare_with_torch(
    torch_model,
    onnx_model: str | onnx.ModelProto,
    input_shape: Sequence[int],
    *,
    batches: Sequence[int] = DEFAULT_BATCHES,
    seed: int = 0,
    precision: str = "fp32",
    atol: float | None = None,
    rtol: float | None = None,
    input_name: str = "input",
) -> ParityResult:
    """Run ``onnx_model`` in onnxruntime CPU and ``torch_model`` in PyTorch on the same seeded
    inputs at each batch size; compare every output.

    The noise floor (default tolerances, fp32): some networks amplify rounding so much that
    PyTorch float32 is itself far from the exact result (sharp attentions, large activations);
    an export that rounds differently cannot be held closer than that.  Where the fixed
    tolerance fails, the reference is re-run in float64 on the same inputs and the comparison
    passes when ``max_abs <= 5 * max|r32 - r64|`` -- the floor ``odexport check`` uses.
    """
    default_atol, default_rtol = TOLERANCES[precision]
    use_floor = atol is None and rtol is None and precision == "fp32"
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    session = ort_session(onnx_model)
    names = [o.name for o in session.get_outputs()]
    result = ParityResult(True, atol, rtol, precision, seed)
    exact_model = None
    for batch in batches:
        x = seeded_inputs(input_shape, batch, seed)
        expected = torch_outputs(torch_model, x)
        _require_finite(names, expected, batch)
        got = session.run(None, {input_name: x})
        comparisons = [compare_arrays(name, batch, ref, cand, atol, rtol) for name, ref, cand in zip(names, expected, got)]
        if use_floor and not all(c.passed for c in comparisons):
            exact_model = exact_model or _float64_copy(torch_model)
            exact = torch_outputs(exact_model, x, keep_dtype=True)
            for comparison, ref, exact_ref in zip(comparisons, expected, exact):
                floor = NOISE_FLOOR_FACTOR * float(np.abs(ref.astype(np.float64) - exact_ref).max())
                comparison.noise_floor = floor
                comparison.passed = bool(comparison.passed or comparison.max_abs <= floor)
        for comparison in comparisons:
            result.comparisons.append(comparison)
            result.passed &= comparison.passed
    return result


NOISE_FLOOR_FACTOR = NOISE_MARGIN  # the floor `odexport check` widens its default atol by: one number for both


def _require_finite(names, expected, batch: int) -> None:
    """PyTorch's own NaN/inf on seeded random inputs means broken weights, and an export compared
    with it would "fail parity" with max abs nan -- a misleading verdict and a misleading fix."""
    for name, values in zip(names, expected):
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise InputError(f"the model computes {bad} NaN/inf values in output '{name}' on seeded random inputs (batch {batch}), "
                             "so there is nothing to check the export against",
                             NON_FINITE_WEIGHTS_FIX)


def _float64_copy(model):
    import copy

    return copy.deepcopy(model).double().eval()


def batch_constants(model: onnx.ModelProto, batch: int) -> list[str]:
    """Places where ``batch`` appears baked into a graph (and its local functions): a Reshape or
    Expand shape constant holding it, or a Conv ``group`` equal to it.  Empty for a graph whose
    batch stays symbolic (used with an unusual example batch)."""
    from onnx import numpy_helper

    found = []

    def scan(nodes, constants, where):
        for node in nodes:
            if node.op_type in ("Reshape", "Expand") and len(node.input) > 1 and node.input[1] in constants:
                values = constants[node.input[1]].reshape(-1).tolist()
                if batch in values:
                    found.append(f"{where}:{node.name} ({node.op_type} shape {values})")
            if node.op_type == "Conv":
                for attr in node.attribute:
                    if attr.name == "group" and attr.i == batch:
                        found.append(f"{where}:{node.name} (Conv group {attr.i})")

    def constants_of(nodes, initializers=()):
        table = {t.name: numpy_helper.to_array(t) for t in initializers}
        for node in nodes:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        table[node.output[0]] = numpy_helper.to_array(attr.t)
                    elif attr.name == "value_ints":
                        table[node.output[0]] = np.array(list(attr.ints))
        return table

    scan(model.graph.node, constants_of(model.graph.node, model.graph.initializer), "graph")
    for function in model.functions:
        scan(function.node, constants_of(function.node), f"{function.name}[{function.overload}]")
    return found
