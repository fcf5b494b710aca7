"""onnxruntime-CPU, machine-local rewrite: runtime-weight convolutions in onnxruntime's NCHWc kernels.

Why.  onnxruntime's CPU provider runs a *static* Conv fast because its NCHWc transformer re-lays
the constant weight once into a blocked layout and runs ``com.microsoft.nchwc::Conv``, keeping
the activations blocked between consecutive NCHWc nodes.  A Conv whose weight is computed at run
time (the per-sample kernel of a dynamic conv at batch 1) is left to the generic im2col + GEMM
kernel: 1.2-1.8x slower per layer, with layout changes around it.  ``nchwc::Conv`` itself accepts
a runtime weight, provided it is already blocked.

How (no assumption about the layout, everything probed on this machine):

1. every Conv whose weight is not a constant gets a *placeholder* constant weight filled with
   its own number; the computed weight stays alive as an extra graph output;
2. onnxruntime optimises that model (level ALL minus the fusions that would fold a following
   BatchNorm/Mul/Add into the placeholder: its own NCHWc transform, activation / Sum fusion, and
   the minimal reorders between blocked nodes) and saves it (``optimized_model_filepath``);
3. each NCHWc Conv whose weight is a re-laid placeholder is found by that number; the
   permutation from the plain layout to the blocked one (``blocked.flat[j] = W.flat[perm[j]]``,
   -1 = zero padding) is probed once per weight configuration with a one-Conv model whose weight
   values are their own flat index (:func:`weight_layout`); the Conv's weight input is replaced by
   the computed weight, permuted the same way at run time (Reshape + Transpose + Reshape when
   ``perm`` is the known blocked transposition, a Gather otherwise) -- or, for the custom form,
   computed directly in the blocked layout from kernels re-laid here once;
4. the extra outputs and the placeholders are dropped.

The result is exact (a permutation of the same numbers) for every batch size, but it is tied to
this machine and this onnxruntime build (block size, kernels): it is made in memory when a
session is created, never written as the portable artifact.  When the NCHWc domain is missing
(another execution provider, a build without it, a CPU without a blocked kernel) nothing is
rewritten and the report says why.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .nchwc_layout import BLOCKED_VIEW, NCHWC_DOMAIN, bypass_pooled_reorders, propagate_blocked_layout

KEEP_BLOCKED_LAYOUT = True  # run :func:`propagate_blocked_layout` on each specialisation



@dataclass
class RewriteReport:
    """What :func:`optimize_for_cpu` did: the rewritten model and, per conv, what happened."""

    model: object  # onnx.ModelProto
    block: int | None
    rewritten: list[str] = field(default_factory=list)
    gemm: list[str] = field(default_factory=list)  # layers emitted as per-sample kernel @ scaled patches
    patches: list[str] = field(default_factory=list)  # layers emitted as blocked patches + static 1x1 NCHWc Conv
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def kernel_convs(self) -> list[str]:
        """Rewritten convs that take a per-sample kernel (not the per-sample scale convs of the patch form)."""
        return [label for label in self.rewritten if "#channel" not in label and "#filter" not in label]

    @property
    def changed(self) -> bool:
        return bool(self.rewritten or self.gemm or self.patches)

    def to_dict(self) -> dict:
        return {"block": self.block, "rewritten": list(self.rewritten), "gemm": list(self.gemm), "patches": list(self.patches), "skipped": dict(self.skipped),
                "notes": list(self.notes)}


def _session_options(threads: int | None, optimized_path: str | None = None, level: str = "all"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    return options


# Fusions that fold a following BatchNorm / Mul / Add into a Conv's *constant* weight: applied to
# a placeholder they would bake that arithmetic into a weight that is replaced afterwards.
WEIGHT_FOLDING_FUSIONS = ("ConvBNFusion", "ConvMulFusion", "ConvAddFusion")


PROTOBUF_LIMIT = 2**31 - 2**26  # bytes one serialised ModelProto may take: protobuf's 2 GiB, with headroom


def too_large_to_serialize(model) -> bool:
    try:
        return model.ByteSize() >= PROTOBUF_LIMIT
    except Exception:  # some protobuf builds refuse to size a message past the limit
        return True


def session_source(model, scratch: str):
    """What ``onnxruntime.InferenceSession`` takes for ``model``: its bytes, or -- past protobuf's
    2 GiB, which one serialised ModelProto cannot exceed (a DY-Wide-ResNet's rewrite holds its
    kernels in both layouts) -- the path of a copy written into ``scratch`` with its tensors as
    external data.  ``scratch`` must outlive the session's creation."""
    import onnx

    if not too_large_to_serialize(model):
        return model.SerializeToString()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving as external data empties the tensors of the proto it is given
    path = os.path.join(scratch, "model.onnx")
    onnx.save_model(copy, path, save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data",
                    size_threshold=1024)
    return path


def ort_optimized(model, threads: int | None = 1, disabled: tuple[str, ...] = ()):
    """onnxruntime's own CPU optimisation (level ALL) of ``model``, as an ``onnx.ModelProto``."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="odexport-ort-") as scratch:
        path = os.path.join(scratch, "optimized.onnx")
        options = _session_options(threads, path)
        if too_large_to_serialize(model):  # onnxruntime writes a large optimised model with external data too
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(session_source(model, scratch), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(disabled))
        return onnx.load(path)


def nchwc_block_size() -> int | None:
    """The NCHWc block size onnxruntime uses on this machine (16 with AVX-512, 8 with AVX2), or
    ``None`` when a static 64-channel Conv is not turned into ``com.microsoft.nchwc::Conv``."""
    global _BLOCK_PROBED
    if _BLOCK_PROBED is not _UNSET:
        return _BLOCK_PROBED
    from onnx import TensorProto, helper, numpy_helper

    channels = 64
    weight = _index_tensor((channels, channels, 3, 3), 0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    block = None
    try:
        optimized = ort_optimized(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=HAND_BUILT_IR_VERSION))
        inits = {t.name: t for t in optimized.graph.initializer}
        for node in optimized.graph.node:
            if node.domain == NCHWC_DOMAIN and node.op_type == "Conv" and node.input[1] in inits:
                perm = numpy_helper.to_array(inits[node.input[1]]).astype(np.int64).ravel() - 1
                for b in (32, 16, 8, 4):
                    if np.array_equal(perm, blocked_permutation(channels, channels, 3, 3, b)):
                        block = b
                        break
    except Exception:  # no CPU provider, no NCHWc: the caller falls back
        block = None
    _BLOCK_PROBED = block
    return block


# The IR version of the small models built here by hand (probes).  onnx's helper stamps its own
# newest (14 with onnx 1.23), which an older onnxruntime refuses to load (1.31 reads up to 13):
# the probe then failed and NCHWc looked absent.  IR 8 carries opset 18 and model-local functions.
HAND_BUILT_IR_VERSION = 8

_UNSET = object()
_BLOCK_PROBED: object = _UNSET


def _index_tensor(shape, base: int) -> np.ndarray:
    size = int(np.prod(shape))
    return (np.arange(size, dtype=np.float64) + base + 1).astype(np.float32).reshape(shape)


def blocked_permutation(out_ch: int, in_ch: int, kh: int, kw: int, block: int) -> np.ndarray:
    """``perm`` with ``blocked.flat = W.flat[perm]`` for onnxruntime's NCHWc layout of a dense
    conv weight ``(O, C, kh, kw)`` -> ``(O/b, C/b, kh, kw, b_in, b_out)`` (both divisible by b)."""
    index = np.arange(out_ch * in_ch * kh * kw).reshape(out_ch // block, block, in_ch // block, block, kh, kw)
    return index.transpose(0, 2, 4, 5, 3, 1).ravel()


def depthwise_permutation(channels: int, kh: int, kw: int, block: int) -> np.ndarray:
    """``perm`` for a depthwise weight ``(C, 1, kh, kw)`` -> ``(C/b, kh, kw, b)``."""
    index = np.arange(channels * kh * kw).reshape(channels // block, block, kh, kw)
    return index.transpose(0, 2, 3, 1).ravel()


def _shapes(model) -> dict[str, list]:
    """Static shapes of the value names of ``model`` (onnx shape inference; dims may be symbolic)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def _constant_names(graph) -> set[str]:
    """Values that do not depend on a graph input: initializers, Constants and everything computed
    from them only (onnxruntime folds those at load, so a Conv fed by one has a static weight)."""
    names = {t.name for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input} - names
    for node in graph.node:  # topological order
        inputs = [n for n in node.input if n]
        if node.op_type == "Constant" or (inputs and all(n in names for n in inputs) and not (set(inputs) & graph_inputs)):
            if not any(a.type == a.GRAPH for a in node.attribute):
                names.update(o for o in node.output if o)
    return names


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass
class _Swap:
    """One Conv whose placeholder weight is to be replaced after onnxruntime's optimisation.

    ``layout`` "plain": ``weight`` is the runtime weight in the ONNX layout (O, C/g, kh, kw) and is
    permuted at run time; "dense" / "depthwise": ``weight`` is already computed in onnxruntime's
    blocked layout (:func:`blocked_permutation` / :func:`depthwise_permutation`), which the probe
    must confirm."""

    node: str  # the Conv's first output name (in the model handed to _placeholder_pass)
    weight: str
    shape: tuple
    layout: str
    label: str
    bias: str | None = None  # a runtime bias (O,), swapped in like the weight (NCHWc needs a constant one to form)


# weight_layout's probe values (flat index + 1, float32) are exact below 2**24: larger weights
# cannot be probed, so no form may hand onnxruntime one.
PROBE_EXACT_WEIGHT = 2 ** 24


def weight_layout(out_ch: int, in_per_group: int, kh: int, kw: int, group: int = 1, attrs: dict | None = None):
    """How onnxruntime re-lays a constant Conv weight ``(O, C/g, kh, kw)`` on this machine:
    ``(perm, blocked shape)`` with ``blocked.flat[j] = W.flat[perm[j]]`` (-1: zero padding), or
    ``None`` when it does not make an NCHWc Conv of it.  Probed with a one-Conv model whose weight
    values are their own flat index (cached per configuration)."""
    key = (out_ch, in_per_group, kh, kw, group, tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in (attrs or {}).items())))
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    from onnx import TensorProto, helper, numpy_helper

    attributes = {k: v for k, v in (attrs or {}).items() if k in ("strides", "pads", "dilations")}
    attributes["group"] = group
    channels = in_per_group * group
    size = max(16, kh * 2, kw * 2)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attributes)],
        "layout_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(_index_tensor((out_ch, in_per_group, kh, kw), 0), "w")],
    )
    result = None
    try:
        optimized = ort_optimized(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=HAND_BUILT_IR_VERSION), disabled=WEIGHT_FOLDING_FUSIONS)
        inits = {t.name: t for t in optimized.graph.initializer}
        for node in optimized.graph.node:
            if node.domain == NCHWC_DOMAIN and node.op_type == "Conv" and node.input[1] in inits:
                values = numpy_helper.to_array(inits[node.input[1]]).ravel()
                result = (np.where(values > 0, values.astype(np.int64) - 1, -1), [int(d) for d in inits[node.input[1]].dims])
    except Exception:
        result = None
    _LAYOUTS[key] = result
    return result


_LAYOUTS: dict = {}


def _placeholder_pass(model, swaps: list[_Swap], block: int, report: RewriteReport, threads=None):
    """Steps 1-4 of the module docstring for ``swaps``; returns the optimised, rewired model, or
    ``None`` when a pre-blocked swap could not be wired (nothing is half-rewritten).

    Each placeholder is filled with its own number ``i + 1``: onnxruntime's re-laid copy (the same
    numbers, permuted, zero-padded) says which Conv is which; the permutation itself comes from
    :func:`weight_layout`."""
    import onnx
    from onnx import helper, numpy_helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    # Nodes are found by their first output (protobuf copies messages; identities do not survive).
    positions = {n.output[0]: i for i, n in enumerate(probe.graph.node) if n.output}
    kept_outputs = []
    attrs_of = {}
    for number, swap in enumerate(swaps, start=1):
        node = probe.graph.node[positions[swap.node]]
        attrs_of[number] = ({a: _attr(node, a) for a in ("strides", "pads", "dilations") if _attr(node, a) is not None}, int(_attr(node, "group", 1)))
        name = f"odexport_placeholder_{number}"
        probe.graph.initializer.append(numpy_helper.from_array(np.full(swap.shape, float(number), np.float32), name))
        node.input[1] = name
        if swap.bias:
            bias_name = f"odexport_placeholder_bias_{number}"
            probe.graph.initializer.append(numpy_helper.from_array(np.zeros(swap.shape[0], np.float32), bias_name))
            node.input[2] = bias_name
        for runtime in (swap.weight, swap.bias):
            if runtime and runtime not in kept_outputs:
                kept_outputs.append(runtime)
                probe.graph.output.append(helper.make_tensor_value_info(runtime, onnx.TensorProto.FLOAT, None))
    optimized = ort_optimized(probe, threads=1, disabled=WEIGHT_FOLDING_FUSIONS)
    graph = optimized.graph
    inits = {t.name: t for t in graph.initializer}
    wired = {}  # number -> (conv node, weight source, bias source, [nodes and initializers], swap)
    refused = []  # NCHWc Convs holding a re-laid placeholder that could not be wired
    for node in graph.node:
        if not (node.domain == NCHWC_DOMAIN and node.op_type == "Conv" and node.input[1] in inits):
            continue
        values = numpy_helper.to_array(inits[node.input[1]]).ravel()
        marks = np.unique(values[values != 0])
        if marks.size != 1 or marks[0] != np.round(marks[0]) or not 1 <= marks[0] <= len(swaps):
            continue  # a real weight
        number = int(marks[0])
        if number in wired:
            continue
        swap = swaps[number - 1]
        attrs, group = attrs_of[number]
        layout = weight_layout(*swap.shape, group=group, attrs=attrs)
        reordered_shape = [int(d) for d in inits[node.input[1]].dims]
        prefix = f"odexport_nchwc_w{number}"
        if layout is None or layout[1] != reordered_shape or int(np.count_nonzero(values)) != int(np.count_nonzero(layout[0] >= 0)):
            refused.append(f"{swap.label}: onnxruntime's re-laid weight does not match the probed layout")
            continue
        bias_source, items = swap.bias, []
        if swap.bias:
            # onnxruntime pads the bias of a blocked Conv to whole blocks (O=24 -> 32 with 16-wide blocks)
            bias_dims = list(inits[node.input[2]].dims) if len(node.input) > 2 and node.input[2] in inits else None
            out_ch = swap.shape[0]
            padded = bias_dims is not None and len(bias_dims) == 1 and out_ch < bias_dims[0] < out_ch + block and bias_dims[0] % block == 0
            if not (bias_dims == [out_ch] or padded):
                refused.append(f"{swap.label}: onnxruntime changed the bias of the placeholder Conv")
                continue
            if bias_dims[0] > swap.shape[0]:
                pads = f"{prefix}_const_bias_pads"
                items += [numpy_helper.from_array(np.array([0, bias_dims[0] - swap.shape[0]], np.int64), pads),
                          helper.make_node("Pad", [swap.bias, pads], [f"{prefix}_bias"])]
                bias_source = f"{prefix}_bias"
        perm = layout[0]
        if swap.layout == "plain":
            source, weight_items = _permute_runtime_weight(swap.weight, swap.shape, perm, reordered_shape, block, prefix)
            items += weight_items
        else:
            expected = _expected_permutation(swap.shape, swap.layout, block)
            if expected is None or not np.array_equal(perm, expected):
                refused.append(f"{swap.label}: onnxruntime's blocked layout here is not the expected {swap.layout} layout")
                continue
            shape_name = f"{prefix}_const_shape"
            items += [numpy_helper.from_array(np.array(reordered_shape, np.int64), shape_name),
                      helper.make_node("Reshape", [swap.weight, shape_name], [f"{prefix}_out"])]
            source = f"{prefix}_out"
        wired[number] = (node, source, bias_source, items, swap)
    if refused:
        # Such a Conv computes with the placeholder's numbers: nothing of this specialisation is kept.
        report.notes.append("specialisation abandoned: " + "; ".join(refused))
        return None
    if not wired:
        report.notes.append("onnxruntime did not turn any placeholder Conv into an NCHWc Conv")
        return None
    extra_inits, added = [], []
    for node, source, bias_source, items, swap in wired.values():
        node.input[1] = source
        if bias_source:
            node.input[2] = bias_source
        extra_inits.extend(i for i in items if isinstance(i, onnx.TensorProto))
        added.extend(i for i in items if isinstance(i, onnx.NodeProto))
        report.rewritten.append(swap.label)
    # Placeholders onnxruntime did not take (or whose layout we refused): the computed weight goes
    # back -- in the plain layout only; a pre-blocked weight has no plain form, so it is an error.
    placeholder_of = {f"odexport_placeholder_{number}": swap for number, swap in enumerate(swaps, start=1)}
    bias_of = {f"odexport_placeholder_bias_{number}": swap for number, swap in enumerate(swaps, start=1)}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in bias_of:
                node.input[i] = bias_of[name].bias
            swap = placeholder_of.get(name)
            if swap is None:
                continue
            if swap.layout != "plain":
                return None
            node.input[i] = swap.weight
            report.skipped.setdefault(swap.label, "onnxruntime kept it as a plain Conv")
    available = {t.name for t in graph.initializer} | {t.name for t in extra_inits} | {i.name for i in graph.input}
    ordered = _topological(list(graph.node) + added, available)
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(extra_inits)
    keep = [o for o in graph.output if o.name not in set(kept_outputs)]
    del graph.output[:]
    graph.output.extend(keep)
    _drop_unused_initializers(graph)
    return optimized


def _drop_unused_initializers(graph) -> None:
    used = {name for n in graph.node for name in _node_inputs(n)} | {o.name for o in graph.output}
    remaining = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(remaining)


def _expected_permutation(shape, layout: str, block: int):
    out_ch, in_per_group, kh, kw = shape
    if layout == "dense" and out_ch % block == 0 and in_per_group % block == 0:
        return blocked_permutation(out_ch, in_per_group, kh, kw, block)
    if layout == "depthwise" and in_per_group == 1 and out_ch % block == 0:
        return depthwise_permutation(out_ch, kh, kw, block)
    return None


def _generic_swaps(model, report: RewriteReport, max_weight: int | None = None) -> list[_Swap]:
    """Runtime-weight Convs of ``model`` (weights in the ONNX layout, permuted at run time).

    ``max_weight``: leave larger runtime weights alone -- the run-time permutation of a big
    weight costs more than the blocked kernel saves (measured: 147k elements is the break-even)."""
    constants = _constant_names(model.graph)
    shapes = _shapes(model)
    swaps = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        label = node.name or node.output[0]
        weight = node.input[1]
        if weight in constants:
            continue
        shape = shapes.get(weight)
        if not shape or len(shape) != 4 or any(d is None for d in shape):
            report.skipped[label] = "the runtime weight's shape is not static"
            continue
        if max_weight is not None and int(np.prod(shape)) > max_weight:
            report.skipped[label] = f"runtime weight of {int(np.prod(shape))} elements: permuting it each run costs more than it saves"
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] and node.input[2] not in constants else None
        swaps.append(_Swap(node.output[0], weight, tuple(int(d) for d in shape), "plain", label, bias))
    return swaps


def optimize_for_cpu(model, *, threads: int | None = None, policy=None, batches=None, name="the model") -> RewriteReport:
    """Rewrite ``model`` (an ``onnx.ModelProto``) for onnxruntime's CPU provider on this machine.

    * Models with ``com.odexport`` dynamic-conv nodes (the custom form): every layer that the
      ``policy`` (default :func:`prefer_runtime_weight`) sends to the per-sample form is emitted as
      per-sample kernels computed directly in onnxruntime's blocked layout (from kernel banks
      re-laid once, here) feeding NCHWc Convs.  A fixed-batch model is specialised for its batch.
      A dynamic-batch model is specialised for each size in ``batches`` (default
      :data:`DEFAULT_BATCHES`, env ``ODEXPORT_ORT_CPU_BATCHES="1,8"``) and becomes
      ``If(batch == b1, <spec b1>, If(batch == b2, ..., <the model as onnxruntime optimises it>))``
      -- every branch optimised here as a main graph, because onnxruntime does not run its NCHWc
      transform inside subgraphs.
    * Other models: Convs with small runtime weights (e.g. a fixed-batch ``sample`` export) are
      rewired into NCHWc Convs with a run-time permutation of the weight.

    Exact (the same products and sums, in blocked order) at every batch size.  The result is
    already optimised and tied to this machine; load it in a session on this machine only.
    ``name`` (the file it came from) is what a refusal calls the model.
    """
    import onnxruntime as ort

    from odexport.export.verify import refuse_ignored_overloads, refuse_rewritten_custom_form

    refuse_rewritten_custom_form(model, name)  # raised, not abandoned below: it cannot run as exported either
    refuse_ignored_overloads(ort.__version__, model, name)  # raised, not abandoned below: no session may run it
    block = nchwc_block_size()
    report = RewriteReport(model=model, block=block)
    if block is None:
        report.notes.append("onnxruntime does not use NCHWc Conv on this machine/build: nothing rewritten")
        return report
    policy = policy or prefer_runtime_weight
    try:
        return _optimize(model, report, policy, batches, threads)
    except Exception as exc:  # an optimisation must never cost the user a working session
        if os.environ.get("ODEXPORT_DEBUG"):
            raise
        report.model, report.rewritten, report.gemm, report.patches = model, [], [], []
        report.notes.append(f"rewrite abandoned, the model runs as exported: {type(exc).__name__}: {exc}")
        return report


def _optimize(model, report: RewriteReport, policy, batches, threads) -> RewriteReport:
    block = report.block
    model = simplify_pooled_attention(model, report)
    report.model = model
    if len(model.graph.input) != 1 or model.graph.input[0].type.tensor_type.elem_type != 1:  # one float32 input
        report.notes.append("the per-layer specialisation needs one float32 model input; only generic rewrites applied")
    elif any(n.domain == CUSTOM_DOMAIN for n in model.graph.node):
        batch = _static_batch(model)
        if batch is not None:
            specialised = _specialise(model, batch, block, report, policy, threads)
            if specialised is not None:
                report.model = specialised
            return report
        if batches is None:
            batches = tuple(int(b) for b in os.environ.get("ODEXPORT_ORT_CPU_BATCHES", "").split(",") if b.strip()) or DEFAULT_BATCHES
        branches = {}
        for size in sorted(set(int(b) for b in batches)):
            specialised = _specialise(model, size, block, report, policy, threads)
            if specialised is not None:
                branches[size] = specialised
        if not branches:
            return report
        report.model = batch_switch(branches, ort_optimized(model, threads=1))
        report.notes.append(f"dynamic batch: an If picks the specialisation for batch {', '.join(map(str, branches))}")
        return report
    swaps = _generic_swaps(model, report, max_weight=GENERIC_MAX_WEIGHT)
    if not swaps:
        report.notes.append("no Conv with a runtime weight to rewrite")
        return report
    optimized = _placeholder_pass(model, swaps, block, report, threads)
    if optimized is not None:
        report.model = optimized
    return report


DEFAULT_BATCHES = (1,)
# ca / fa scale the activation instead of the kernel when the per-sample kernel has more than
# this many elements ...
ACTIVATION_SIDE_MIN_KERNEL = 4096
# ... and more than this many times the elements of the activation the scale would multiply.
# Measured (attempt 35, docs/performance.md): 1 -- scale whichever is smaller.  The kernel-side
# Muls broadcast over 16-float runs (the blocked channel order) and ran at a few GB/s, while the
# activation-side scale is one per-sample depthwise NCHWc Conv; OD-MobileNetV2-0.5 2.33x -> 2.08x,
# the ResNet-18 variants unchanged.  (Before: 256 Ki elements and 4x.)
ACTIVATION_SIDE_RATIO = 1
# Per-sample kernels above this many bytes are made and used in output-channel chunks (None: never).
# Off: measured slower once ca/fa moved to depthwise convs (OD-ResNet18 K=4 batch 1 2.21x with 1 MiB
# chunks, 2.04x whole; DY-ResNet18 2.04x -> 1.80x; K=4 batch 8 2.56x -> 2.14x): the convs over few
# output channels lose more than the kernel staying in L2 saves.
CHUNK_BYTES: int | None = None
# A batch specialisation's per-sample kernels as one grouped Conv (_grouped_batch) where it can.
GROUPED_BATCH = True
# K > 1 layers with output maps of at most this many pixels and kernels of at least this many
# numbers keep their exported K-branch form (prefer_runtime_weight; attempt 59: 2x2 beat 1x1 at
# batch 8, 4x4 lost at both batches; MobileNet kernels of 6-41k numbers on 2x2 maps are cheaper
# per sample).
TINY_MAP_PIXELS = 4
TINY_MAP_MIN_KERNEL = 2**17
GENERIC_MAX_WEIGHT = 150_000
CUSTOM_DOMAIN = "com.odexport"


def simplify_pooled_attention(model, report: RewriteReport | None = None, *, gemm: bool = True):
    """Portable, exact rewrites of the attention branches for onnxruntime's CPU provider.

    * ``ReduceMean(x, axes=[2, 3], keepdims=1)`` of a 4-D tensor -> ``GlobalAveragePool(x)``:
      the same mean, but onnxruntime runs it on NCHWc-blocked activations, where a ReduceMean first
      needs the activation re-laid (a full copy per layer).  onnxruntime's (NCHWc) GlobalAveragePool
      sums the H*W values of a channel one after the other in fp32, so on a large map it is ~10x
      less accurate than ReduceMean (56x56: 1-3e-6 relative vs 2e-7), and DY/OD attentions pass
      that error on to every mixed kernel.  Above :data:`POOL_SEQUENTIAL_MAX` values the mean is
      taken in two short sums, both still on blocked activations (see :func:`pool_tile`)::

          mean(x) = GlobalAveragePool(AveragePool(x, kernel=strides=(th, tw)))   th | H, tw | W

      (the mean of equal-sized tile means is the mean).  A map of unknown size keeps its ReduceMean.
    * A 1x1, group-1 Conv with a constant weight on a map whose spatial size is statically 1x1
      (the attention FCs after the pool) -> ``Flatten`` + ``Gemm`` + ``Reshape``: onnxruntime would
      otherwise run it as a blocked Conv with two re-layouts and a thread-pool dispatch, about 30x
      the arithmetic of these tiny products.
    Returns a new model (``model`` untouched); ``report.notes`` says how many nodes changed.
    """
    import onnx
    from onnx import helper, numpy_helper

    work = onnx.ModelProto()
    work.CopyFrom(model)
    graph = work.graph
    shapes = _shapes(work)
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    opset = max((o.version for o in work.opset_import if o.domain in ("", "ai.onnx")), default=18)

    def const_ints(name):
        if name in inits:
            return [int(v) for v in numpy_helper.to_array(inits[name]).ravel()]
        if name in consts:
            return [int(v) for v in numpy_helper.to_array(consts[name].attribute[0].t).ravel()]
        return None

    out, pools, gemms = [], 0, 0
    flat_of = {}  # 4-D (B, N, 1, 1) value -> the same numbers as a 2-D (B, N) value
    for node in graph.node:
        if node.op_type == "Relu" and node.input[0] in flat_of:
            # Relu between two pooled FCs: on the 2-D value (the 4-D one only if someone needs it).
            flat = (node.name or node.output[0]) + "_2d"
            out.append(helper.make_node("Relu", [flat_of[node.input[0]]], [flat]))
            _unsqueeze_like(node.output[0], flat, shapes, graph, out)
            flat_of[node.output[0]] = flat
            continue
        if (node.op_type in ("Reshape", "Flatten") and node.input[0] in flat_of and node.domain in ("", "ai.onnx")
                and len(shapes.get(node.output[0]) or []) == 2):
            out.append(helper.make_node("Identity", [flat_of[node.input[0]]], list(node.output)))
            continue
        if node.op_type == "ReduceMean" and node.domain in ("", "ai.onnx"):
            axes = _attr(node, "axes") if opset < 18 else (const_ints(node.input[1]) if len(node.input) > 1 and node.input[1] else None)
            rank = len(shapes.get(node.input[0]) or [])
            if rank == 4 and axes is not None and sorted(a % 4 for a in axes) == [2, 3] and int(_attr(node, "keepdims", 1)) == 1:
                height, width = shapes[node.input[0]][2:]
                if height and width:  # statically known: a short sum, or two
                    tile = pool_tile(height, width)
                    source = node.input[0]
                    if tile is not None:
                        source = (node.name or node.output[0]) + "_tiles"
                        out.append(helper.make_node("AveragePool", [node.input[0]], [source], name=source, kernel_shape=list(tile), strides=list(tile)))
                    out.append(helper.make_node("GlobalAveragePool", [source], list(node.output), name=(node.name or node.output[0]) + "_gap"))
                    pools += 1
                    continue
        if (gemm and node.op_type == "Conv" and node.domain in ("", "ai.onnx") and len(node.input) > 1 and node.input[1] in inits
                and int(_attr(node, "group", 1)) == 1):
            weight = inits[node.input[1]]
            x_shape = shapes.get(node.input[0]) or []
            if (len(weight.dims) == 4 and list(weight.dims[2:]) == [1, 1] and len(x_shape) == 4 and x_shape[2:] == [1, 1]
                    and all(v in (None, [0, 0, 0, 0]) for v in [_attr(node, "pads")])):
                tag = (node.name or node.output[0]) + "_gemm"
                w2 = numpy_helper.from_array(numpy_helper.to_array(weight).reshape(weight.dims[0], weight.dims[1]), f"{tag}_w")
                shape = numpy_helper.from_array(np.array([-1, weight.dims[0], 1, 1], np.int64), f"{tag}_shape")
                graph.initializer.extend([w2, shape])
                source = flat_of.get(node.input[0])
                if source is None:
                    source = f"{tag}_flat"
                    out.append(helper.make_node("Flatten", [node.input[0]], [source], axis=1))
                inputs = [source, w2.name] + ([node.input[2]] if len(node.input) > 2 and node.input[2] else [])
                out.append(helper.make_node("Gemm", inputs, [f"{tag}_y"], transB=1))
                out.append(helper.make_node("Reshape", [f"{tag}_y", shape.name], list(node.output)))
                flat_of[node.output[0]] = f"{tag}_y"
                gemms += 1
                continue
        out.append(node)
    if not pools and not gemms:
        return model
    del graph.node[:]
    graph.node.extend(_live_nodes(out, {o.name for o in graph.output}))
    _drop_unused_initializers(graph)
    if report is not None:
        report.notes.append(f"attention branches: {pools} ReduceMean -> (AveragePool +) GlobalAveragePool, {gemms} pooled 1x1 Conv -> Gemm")
    return work


POOL_SEQUENTIAL_MAX = 64  # values one fp32 pooling sum may run over (error grows ~ with the count)


def pool_tile(height: int, width: int) -> tuple[int, int] | None:
    """The tile ``(th, tw)`` (``th | height``, ``tw | width``) whose two-stage mean has the shortest
    sums -- ``th * tw`` values per tile, then ``height * width / (th * tw)`` tile means, minimising
    their total (the worst-case rounding error of a sequential sum grows with its length); ``None``
    when the whole map is at most :data:`POOL_SEQUENTIAL_MAX` values (one sum is short enough).
    56x56 -> 7x8 then 56; 28x28 -> 4x7 then 28; 14x14 -> 2x7 then 14."""
    if height * width <= POOL_SEQUENTIAL_MAX:
        return None
    best = None
    for th in (d for d in range(1, height + 1) if height % d == 0):
        for tw in (d for d in range(1, width + 1) if width % d == 0):
            if (th, tw) in ((1, 1), (height, width)):
                continue
            key = (th * tw + height * width // (th * tw), abs(th - tw), th)
            if best is None or key < best[0]:
                best = (key, (th, tw))
    return None if best is None else best[1]


def _unsqueeze_like(name_4d: str, flat: str, shapes, graph, out) -> str:
    """Emit ``name_4d = Reshape(flat, (-1, N, 1, 1))`` (dead code is dropped later if unused)."""
    from onnx import helper, numpy_helper

    dims = shapes.get(name_4d) or []
    channels = dims[1] if len(dims) == 4 and dims[1] else -1
    shape = numpy_helper.from_array(np.array([-1, channels, 1, 1], np.int64), f"{name_4d}_4d_shape")
    graph.initializer.append(shape)
    out.append(helper.make_node("Reshape", [flat, shape.name], [name_4d]))
    return name_4d


def _live_nodes(nodes, outputs: set[str]):
    """``nodes`` without those whose outputs nothing uses (reverse sweep, order kept)."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o) or not any(node.output):
            keep.append(node)
            needed.update(_node_inputs(node))
    return list(reversed(keep))


def _static_batch(model) -> int | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None


PATCH_MAP_FRACTION = 4  # the patch form where PATCH_MAP_FRACTION * Ho * Wo <= O (prefer_runtime_weight)


def prefer_runtime_weight(layer: dict, batch: int) -> str | None:
    """Cost rule (measured, docs/performance.md "Attempts"): the form of one layer at ``batch``.

    ``"nchwc"``: per-sample kernel computed in the blocked layout + NCHWc Conv;  ``"patches"``:
    attention-scaled patches gathered in the blocked layout + one static 1x1 NCHWc Conv for the
    whole batch (:func:`_emit_blocked_patches`);  ``"gemm"``:
    per-sample kernel @ scaled patches (available to callers, not chosen);  ``None``: keep the
    exported (constant-weight) form.

    * K > 1 kernels: every exact form reads all K kernels per sample and the constant-weight ones
      (K-branch, patch) also do K x the arithmetic, so the per-sample kernel wins everywhere
      (OD-ResNet18 K=4, batch 1: 1.65x with chunked NCHWc on every layer, 1.94x with the gemm form
      on the last stage, 2.9x with the patch form there).
    * One kernel: the patch form reads the kernel once, as the static twin does, and gathers and
      scales C*T*Ho*Wo patch numbers where the per-sample kernel scales O*C*T kernel numbers per
      sample (only by ``sa`` once ``ca``/``fa`` went to the activations, ACTIVATION_SIDE_RATIO):
      patches where 4*Ho*Wo <= O, i.e. the patches are at most a quarter of the kernel (ResNet-18
      stage 4; OD-ResNet18 K=1 batch 1 1.285x -> 1.25x against Ho*Wo <= O, which also took
      stage 3; batch 8 1.38x either way), the per-sample kernel on larger maps while the kernel
      is at most ~16x the layer input, else the exported form.
    * Except K > 1 kernels of at least :data:`TINY_MAP_MIN_KERNEL` numbers on output maps of at
      most :data:`TINY_MAP_PIXELS` pixels (ResNet stages 3-4 at 32x32 input) keep their exported
      form.  There the planner's K-branch conv reads the K constant kernels once per batch, and
      its K-fold arithmetic ``K * N * Ho*Wo * O*Cg*T`` is a few pixels' worth, while the per-sample
      kernel reads the same K kernels *per sample*, writes the mixed kernel and reads it again; on
      a 1x1 map a padded 3x3 NCHWc conv also reads only the centre tap of a constant kernel (1/9)
      but every tap of the mixed one.  Measured (attempt 59), specialised / portable latency:
      DY-ResNet18 at 32x32 1.58 -> 0.87 (batch 1) and 2.80 -> 0.82 (batch 8); OD-ResNet18 K=4
      1.20 -> 0.88 and 1.60 -> 0.88.  The MobileNets at 64x64, whose small kernels on 2x2 maps
      are cheaper per sample, stay per-sample below the kernel floor: DY-MobileNetV2 x0.1 0.61
      either way; MobileNetV3-Small x0.5, whose last 1x1 (on a 1x1 map) the rule takes, 0.75 -> 0.70.
    """
    kernel = layer["O"] * layer["Cg"] * layer["T"]
    if layer["K"] > 1:
        if layer["Ho"] * layer["Wo"] <= TINY_MAP_PIXELS and kernel >= TINY_MAP_MIN_KERNEL:
            return None
        return "nchwc"
    if (layer["layout"] == "dense" and layer["group"] == 1 and layer.get("bias") is None
            and PATCH_MAP_FRACTION * layer["Ho"] * layer["Wo"] <= layer["O"]):
        return "patches"
    return "nchwc" if kernel <= 16 * layer["C"] * layer["H"] * layer["W"] else None



def _specialise(model, batch: int, block: int, report: RewriteReport, policy, threads):
    """The model with its chosen ``com.odexport`` nodes emitted as blocked per-sample kernels and
    NCHWc-bound placeholder Convs, optimised by onnxruntime and rewired (see _placeholder_pass)."""
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    _fix_batch(work, batch)
    shapes = _shapes(work)
    inits = {t.name: t for t in work.graph.initializer}
    new_nodes, swaps = [], []
    emitted_patches = 0
    for index, node in enumerate(work.graph.node):
        if node.domain != CUSTOM_DOMAIN:
            new_nodes.append(node)
            continue
        label = node.name or node.output[0]
        layer = _custom_layer(node, inits, shapes, block)
        if isinstance(layer, str):
            report.skipped[label] = layer
            new_nodes.append(node)
            continue
        form = policy(layer, batch)
        form = {True: "nchwc", False: None}.get(form, form)
        if form == "patches" and layer["K"] == 1 and layer["layout"] == "dense" and layer["bias"] is None:
            emitted, inits_new, layer_swaps = _emit_blocked_patches(node, layer, batch, block, f"odexport_l{index}")
            new_nodes.extend(emitted)
            work.graph.initializer.extend(inits_new)
            for swap in layer_swaps:
                swap.label = f"{label}#{swap.label}" + (f"#batch{batch}" if batch > 1 else "")
            swaps.extend(layer_swaps)
            report.patches.append(label if batch == 1 else f"{label}#batch{batch}")
            emitted_patches += 1
            continue
        if form == "gemm" and layer["group"] == 1:
            emitted, inits_new = _emit_patch_gemm(node, layer, batch, f"odexport_l{index}")
            new_nodes.extend(emitted)
            work.graph.initializer.extend(inits_new)
            report.gemm.append(label)
            continue
        if form != "nchwc":
            report.skipped[label] = "kept its exported form (constant weights are cheaper here)"
            new_nodes.append(node)
            continue
        emitted, inits_new, layer_swaps = _emit_per_sample(node, layer, batch, block, f"odexport_l{index}")
        new_nodes.extend(emitted)
        work.graph.initializer.extend(inits_new)
        for swap in layer_swaps:
            swap.label = f"{label}#{swap.label}" if batch > 1 or swap.label.startswith(("channel", "filter")) else label
        swaps.extend(layer_swaps)
    del work.graph.node[:]
    work.graph.node.extend(new_nodes)
    if not swaps:
        if not (report.gemm or emitted_patches):
            report.notes.append("no dynamic conv is cheaper with a runtime weight at this batch")
            return None
        optimized = ort_optimized(work, threads=1)
    else:
        optimized = _placeholder_pass(work, swaps, block, report, threads)
        if optimized is None:
            report.rewritten.clear()
            return None
    if KEEP_BLOCKED_LAYOUT or emitted_patches:  # the patch form relies on the pass to cancel its reorders
        removed = propagate_blocked_layout(optimized, block, shapes=shapes) + bypass_pooled_reorders(optimized, block)
        if removed:
            report.notes.append(f"batch {batch}: {removed} layout reorders removed (layout-free nodes run on blocked tensors)")
    return optimized


def _fix_batch(model, batch: int) -> None:
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch


def _custom_layer(node, inits, shapes, block: int):
    """What the emitter needs about one ``com.odexport`` node, or a string saying why not."""
    from onnx import numpy_helper

    formals = {"ODConv2d": ("X", "W", "channel", "filter", "spatial", "kernel", "static_bias"),
               "DyConv2d": ("X", "W", "kernel", "bias", "static_bias")}.get(node.op_type)
    if formals is None:
        return f"unknown odexport op {node.op_type}"
    args = {name: (node.input[i] if i < len(node.input) else "") for i, name in enumerate(formals)}
    for name in ("W", "bias", "static_bias"):
        if args.get(name) and args[name] not in inits:
            return f"{name} is not a constant"
    if inits[args["W"]].data_type != 1:
        return "the kernels are not float32 (a mixed-precision export keeps its own form)"
    weight = numpy_helper.to_array(inits[args["W"]])
    x_shape = shapes.get(args["X"])
    if not x_shape or len(x_shape) != 4 or any(d is None for d in x_shape[1:]):
        return "the input's shape is not static"
    k_all, out_ch, in_per_group, kh, kw = weight.shape
    group = int(_attr(node, "group", 1))
    channels = in_per_group * group
    attrs = {a: _attr(node, a) for a in ("strides", "pads", "dilations") if _attr(node, a) is not None}
    strides = list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    dil = list(attrs.get("dilations", [1, 1]))
    probed = weight_layout(out_ch, in_per_group, kh, kw, group=group, attrs=attrs)
    if probed is None:
        return f"onnxruntime makes no NCHWc Conv of a {channels}->{out_ch} {kh}x{kw} conv in {group} groups here"
    layout = None
    for candidate in ("dense", "depthwise"):
        expected = _expected_permutation((out_ch, in_per_group, kh, kw), candidate, block)
        # a 1-channel input's conv (1 -> 16) has the depthwise kernel order but is no depthwise conv:
        # the depthwise emitter blocks the *input* channels (group == C == O)
        fits = group == 1 if candidate == "dense" else group == channels == out_ch
        if expected is not None and fits and np.array_equal(probed[0], expected):
            layout = candidate
    if layout is None:
        # Padded or NCHW-input layouts: the kernel is computed in the ONNX layout and permuted
        # (Gather) at run time -- worth it only for small kernels.
        if out_ch * in_per_group * kh * kw > GENERIC_MAX_WEIGHT:
            return f"a {channels}->{out_ch} kernel in onnxruntime's padded blocked layout is too large to permute per run"
        layout = "plain"
    return {
        "args": args, "weight": weight, "layout": layout, "K": k_all, "spatial": bool(args.get("spatial")), "O": out_ch, "Cg": in_per_group, "C": channels,
        "T": kh * kw, "kh": kh, "kw": kw, "H": x_shape[2], "W": x_shape[3], "group": group,
        "Ho": (x_shape[2] + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1,
        "Wo": (x_shape[3] + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1,
        "bias": numpy_helper.to_array(inits[args["bias"]]).astype(np.float32) if args.get("bias") else None,
        "static_bias": numpy_helper.to_array(inits[args["static_bias"]]).astype(np.float32) if args.get("static_bias") else None,
        "attrs": {a: _attr(node, a) for a in ("strides", "pads", "dilations", "group") if _attr(node, a) is not None},
    }


def blocked_bank(weight: np.ndarray, layout: str, block: int) -> np.ndarray:
    """The K kernels ``(K, O, C/g, kh, kw)`` re-laid in onnxruntime's blocked order, flat ``(K, N)``."""
    k_all, out_ch, in_per_group, kh, kw = weight.shape
    if layout == "dense":
        perm = blocked_permutation(out_ch, in_per_group, kh, kw, block)
    else:
        perm = depthwise_permutation(out_ch, kh, kw, block)
    return np.ascontiguousarray(weight.reshape(k_all, -1)[:, perm])


class _LayerConstants:
    """The initializers one emitted layer adds: ``const(name, array)`` makes ``<prefix>_<name>`` once
    (samples and chunks share it) and returns its name; ``tensors`` is the list to add to the graph."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.tensors: list = []
        self._names: set[str] = set()

    def __call__(self, name: str, array) -> str:
        from onnx import numpy_helper

        full = f"{self.prefix}_{name}"
        if full not in self._names:
            self._names.add(full)
            self.tensors.append(numpy_helper.from_array(np.asarray(array), full))
        return full

    def shape(self, name: str, dims) -> str:
        return self(name, np.array(dims, np.int64))


def _emit_per_sample(node, layer: dict, batch: int, block: int, prefix: str):
    """Nodes computing ``node``'s output with one blocked per-sample kernel + placeholder Conv per sample.

    Per sample (blocked dense layout ``(O/b, C/b, T, b_in, b_out)``; depthwise ``(C/b, T, b)``)::

        W_b = (ka_b @ bank_blocked) * (ca_b x fa_b) * sa_b        (K = 1: the blocked kernel itself)
        y_b = Conv(x_b, W_b, static_bias [+ ka_b @ dyn_bias])

    ``ca`` folds into the kernel because ``conv(x*ca, W) = conv(x, W*ca)``, ``fa`` because the output
    scale commutes with the sum; each scale is shaped to broadcast over 256- (dense) or 16-float
    (depthwise) contiguous runs.  Where the kernel is larger than the activation, ``ca`` / ``fa``
    scale the activations instead (:func:`_channel_scale_conv`).  At a batch > 1 a dense layer
    whose kernels carry only ``ka`` / ``sa`` runs all samples as one grouped Conv
    (:func:`_grouped_batch`); otherwise the samples are split and concatenated.
    """
    from onnx import helper

    a = layer["args"]
    block_of = block
    k_all, out_ch, cg, taps, channels = layer["K"], layer["O"], layer["Cg"], layer["T"], layer["C"]
    dense = layer["layout"] == "dense"
    nodes = []
    const = _LayerConstants(prefix)
    shape_const, inits = const.shape, const.tensors

    groups = layer["group"]
    if dense:
        kernel_shape = [out_ch // block_of, channels // block_of, taps, block_of, block_of]
        ca_shape = [1, channels // block_of, 1, block_of, 1]
        fa_shape = [out_ch // block_of, 1, 1, 1, block_of]
        sa_shape = [1, 1, taps, 1, 1]
    elif layer["layout"] == "depthwise":
        kernel_shape = [channels // block_of, taps, block_of]
        ca_shape = fa_shape = [channels // block_of, 1, block_of]
        sa_shape = [1, taps, 1]
    else:  # "plain": the ONNX layout (g, O/g, C/g, T); permuted to onnxruntime's by _placeholder_pass
        kernel_shape = [groups, out_ch // groups, cg, taps]
        ca_shape = [groups, 1, cg, 1]
        fa_shape = [groups, out_ch // groups, 1, 1]
        sa_shape = [1, 1, 1, taps]
    if layer["layout"] == "plain":
        bank = np.ascontiguousarray(layer["weight"].reshape(k_all, -1))
    else:
        bank = blocked_bank(layer["weight"], layer["layout"], block_of)
    if k_all > 1 and a.get("kernel"):
        bank_name = const("bank", bank)
    else:
        bank_name = const("kernel", bank[0].reshape(kernel_shape))
    kshape = shape_const("kshape", kernel_shape)
    static_bias = a.get("static_bias") or ""
    dyn_bias = const("dynbias", layer["bias"]) if layer["bias"] is not None else None
    obias_shape = shape_const("oshape", [out_ch])

    def split(name):
        if batch == 1 or not name:
            return [name] * batch
        outs = [f"{prefix}_{name}_s{b}" for b in range(batch)]
        nodes.append(helper.make_node("Split", [name, shape_const(f"split_{len(nodes)}", [1] * batch)], outs, axis=0))
        return outs

    # Where ca / fa go: on the kernel (one Mul by their small outer product), unless the kernel is
    # larger than the activation they would otherwise scale (ACTIVATION_SIDE_RATIO) and not tiny --
    # on the activations they cost 2-4 extra nodes, which on the smallest layers costs more than a
    # pass over the kernel.
    per_sample_kernel = out_ch * cg * taps

    def side(scaled_channels: int, activation: int) -> str:
        # the activation-side scale is a depthwise NCHWc Conv: only over whole blocks of channels
        # (onnxruntime pads others, and their blocked weight is not the depthwise layout wired)
        if scaled_channels % block_of or per_sample_kernel <= max(ACTIVATION_SIDE_MIN_KERNEL, ACTIVATION_SIDE_RATIO * activation):
            return "kernel"
        return "activation"

    placement = {"channel": side(channels, channels * layer["H"] * layer["W"]), "filter": side(out_ch, out_ch * layer["Ho"] * layer["Wo"])}
    on_kernel = {h: bool(a.get(h)) and placement[h] == "kernel" for h in ("channel", "filter")}
    # Activation-side scales of a batch run once, before the per-sample Split (ca) and after the
    # Concat (fa), each as one depthwise conv over the batch folded into the channels: one node
    # instead of one per sample, and onnxruntime fuses the residual Add and ReLU after it into
    # that conv, as it does at batch 1 (docs/performance.md, attempt 37).
    swaps, outs = [], []
    x_source = a["X"]
    if batch > 1 and a.get("channel") and not on_kernel["channel"]:
        _channel_scale_conv(nodes, const, swaps, f"{prefix}_ca", a["X"], a["channel"], channels, batch, (layer["H"], layer["W"]),
                            f"{prefix}_xs", tag="channel")
        x_source = f"{prefix}_xs"
    # depthwise layers have no fa (ODConv skips it there); a dynamic bias (DY-Conv) never meets fa
    groupable = ((dense and (layer["bias"] is None or not a.get("filter")))
                 or (layer["layout"] == "depthwise" and not a.get("filter") and channels % block_of == 0))
    if (batch > 1 and GROUPED_BATCH and groupable and (k_all == 1 or a.get("kernel")) and batch * per_sample_kernel < PROBE_EXACT_WEIGHT
            and (CHUNK_BYTES is None or 4 * per_sample_kernel <= CHUNK_BYTES)):
        _grouped_batch(nodes, const, swaps, node, layer, batch, prefix, x_source, bank, kernel_shape, sa_shape,
                       ca_shape if on_kernel["channel"] else None, fa_shape if on_kernel["filter"] else None)
        return nodes, inits, swaps
    xs = split(x_source)
    # per-sample heads (an activation-side ca / fa of a batch is used whole, above and below)
    heads = {h: split(a.get(h, "") if batch == 1 or h in ("spatial", "kernel") or on_kernel[h] else "")
             for h in ("channel", "filter", "spatial", "kernel")}
    # A large dense kernel is made and consumed in output-channel chunks of <= CHUNK_BYTES, so each
    # chunk is still in the core's cache when its Conv reads it (one DRAM pass over the bank
    # instead of bank + kernel written + kernel read); possible when no scale but sa (per tap,
    # the same for every chunk) is on the kernel.
    chunks = [(0, out_ch)]
    if CHUNK_BYTES is not None and dense and not any(on_kernel.values()) and 4 * per_sample_kernel > CHUNK_BYTES:
        step = max(1, CHUNK_BYTES // (4 * channels * taps * block_of)) * block_of
        chunks = [(o, min(o + step, out_ch)) for o in range(0, out_ch, step)]
    per_block = channels * taps * block_of  # blocked bank elements per block of output channels
    for b in range(batch):
        tag = f"{prefix}_b{b}"
        x_in = xs[b]
        if batch == 1 and a.get("channel") and not on_kernel["channel"]:
            _channel_scale_conv(nodes, const, swaps, f"{tag}_ca", x_in, heads["channel"][b], channels, 1, (layer["H"], layer["W"]),
                                f"{tag}_xs", tag=f"channel.sample{b}")
            x_in = f"{tag}_xs"
        filter_after = bool(a.get("filter")) and not on_kernel["filter"]
        out = node.output[0] if batch == 1 else f"{tag}_y"
        conv_out = f"{tag}_conv" if filter_after and batch == 1 else out
        chunk_outs = []
        for c, (o0, o1) in enumerate(chunks):
            ctag = tag if len(chunks) == 1 else f"{tag}_c{c}"
            whole = len(chunks) == 1
            oc = o1 - o0
            if k_all > 1 and a.get("kernel"):
                chunk_bank = bank_name if whole else const(f"bank_c{c}", bank[:, o0 // block_of * per_block:o1 // block_of * per_block])
                chunk_shape = kshape if whole else shape_const(f"kshape_c{c}", [oc // block_of] + kernel_shape[1:])
                nodes.append(helper.make_node("MatMul", [heads["kernel"][b], chunk_bank], [f"{ctag}_mixed"]))
                nodes.append(helper.make_node("Reshape", [f"{ctag}_mixed", chunk_shape], [f"{ctag}_w0"]))
                current = f"{ctag}_w0"
            else:
                current = bank_name if whole else const(f"kernel_c{c}", bank[0, o0 // block_of * per_block:o1 // block_of * per_block].reshape([oc // block_of] + kernel_shape[1:]))
            scale = None
            for head, dims in (("channel", ca_shape), ("filter", fa_shape)):
                if on_kernel[head]:
                    name = f"{ctag}_{head}"
                    nodes.append(helper.make_node("Reshape", [heads[head][b], shape_const(f"{head}_shape", dims)], [name]))
                    if scale is None:
                        scale = name
                    else:
                        nodes.append(helper.make_node("Mul", [scale, name], [f"{ctag}_cf"]))
                        scale = f"{ctag}_cf"
            if scale is not None:
                nodes.append(helper.make_node("Mul", [current, scale], [f"{ctag}_w1"]))
                current = f"{ctag}_w1"
            if a.get("spatial"):
                if f"{tag}_sa" not in {o for n in nodes for o in n.output}:
                    nodes.append(helper.make_node("Reshape", [heads["spatial"][b], shape_const("spatial_shape", sa_shape)], [f"{tag}_sa"]))
                nodes.append(helper.make_node("Mul", [current, f"{tag}_sa"], [f"{ctag}_w2"]))
                current = f"{ctag}_w2"
            if current.startswith(f"{prefix}_kernel"):  # no attention on the kernel: give the Conv its own input
                nodes.append(helper.make_node("Identity", [current], [f"{ctag}_w2"]))
                current = f"{ctag}_w2"
            bias = ""
            if not filter_after and static_bias:
                bias = static_bias if whole else const(f"sbias_c{c}", layer["static_bias"][o0:o1])
            if dyn_bias is not None:
                chunk_db = dyn_bias if whole else const(f"dynbias_c{c}", layer["bias"][:, o0:o1])
                if k_all > 1 and a.get("kernel"):
                    nodes.append(helper.make_node("MatMul", [heads["kernel"][b], chunk_db], [f"{ctag}_db"]))
                else:
                    nodes.append(helper.make_node("ReduceSum", [chunk_db, const("axis0", np.array([0], np.int64))], [f"{ctag}_db"], keepdims=0))
                nodes.append(helper.make_node("Reshape", [f"{ctag}_db", shape_const(f"oshape_{oc}", [oc])], [f"{ctag}_dbo"]))
                dbo = f"{ctag}_dbo"
                if on_kernel["filter"]:  # (conv + b) * fa = conv(x, W*fa) + b*fa  (whole kernel only)
                    nodes.append(helper.make_node("Reshape", [heads["filter"][b], obias_shape], [f"{ctag}_fao"]))
                    nodes.append(helper.make_node("Mul", [dbo, f"{ctag}_fao"], [f"{ctag}_dbf"]))
                    dbo = f"{ctag}_dbf"
                if bias:
                    nodes.append(helper.make_node("Add", [dbo, bias], [f"{ctag}_bias"]))
                    bias = f"{ctag}_bias"
                else:
                    bias = dbo
            y = conv_out if whole else f"{ctag}_y"
            conv = helper.make_node("Conv", [x_in, "", bias] if bias else [x_in, ""], [y], **layer["attrs"])
            conv.input[1] = f"{ctag}_placeholder_slot"
            nodes.append(conv)
            runtime_bias = bias if (bias and bias != static_bias and not bias.startswith(f"{prefix}_sbias")) else None
            label = f"sample{b}" if whole else f"sample{b}.chunk{c}"
            swaps.append(_Swap(y, current, (oc, cg, layer["kh"], layer["kw"]), layer["layout"], label, runtime_bias))
            chunk_outs.append(y)
        if len(chunks) > 1:
            nodes.append(helper.make_node("Concat", chunk_outs, [conv_out], axis=1))
        if filter_after and batch == 1:
            _channel_scale_conv(nodes, const, swaps, f"{tag}_fa", conv_out, heads["filter"][b], out_ch, 1, (layer["Ho"], layer["Wo"]),
                                out, bias=layer["static_bias"], tag=f"filter.sample{b}")
        outs.append(out)
    if batch > 1:
        if filter_after:
            nodes.append(helper.make_node("Concat", outs, [f"{prefix}_conv"], axis=0))
            _channel_scale_conv(nodes, const, swaps, f"{prefix}_fa", f"{prefix}_conv", a["filter"], out_ch, batch, (layer["Ho"], layer["Wo"]),
                                node.output[0], bias=layer["static_bias"], tag="filter")
        else:
            nodes.append(helper.make_node("Concat", outs, [node.output[0]], axis=0))
    return nodes, inits, swaps


def _grouped_batch(nodes, const, swaps, node, layer, batch, prefix, x_source, bank, kernel_shape, sa_shape, ca_shape=None,
                   fa_shape=None):
    """Append a batch's per-sample kernels as ONE grouped NCHWc Conv (the reference code's batch
    folded into the groups, here on onnxruntime's blocked tensors)::

        W_all = (ka @ bank).view(N, O/b, C/b, T, b, b) * sa.view(N, 1, 1, T, 1, 1)   (K = 1: bank * sa)
        y     = Conv(x.view(1, N*C, H, W), W_all.view(N*O/b, C/b, T, b, b), group=N).view(N, O, Ho, Wo)

    Sample n's kernel is group n's: the blocked filter order of a grouped Conv is that of the
    stacked ``(N*O, C, kh, kw)`` weight, output channels outermost, so the stacked blocked kernels
    are it.  Both views are free in the blocked layout (``BLOCKED_VIEW``), so there is no
    per-sample ``Split`` / ``Concat`` copy and one Conv node instead of N.  ``ca`` / ``fa`` on the
    kernel (``ca_shape`` / ``fa_shape`` given: small kernels) scale all samples' kernels in one
    ``Mul`` by their outer product, ``ca.view(N, 1, C/b, 1, b, 1) * fa.view(N, O/b, 1, 1, 1, b)``;
    on the activations they run over the batch before and after.  A DY-Conv dynamic bias becomes
    one runtime bias ``(ka @ bias_bank).view(N*O)`` (ODConv, the only one with ``fa``, has none).

    A depthwise layer is the same with ``group = N*C``: its blocked kernel ``(C/b, T, b)`` stacked
    over the batch is the depthwise kernel of ``N*C`` channels, and ``ca`` scales it per channel,
    ``.view(N, C/b, 1, b)``."""
    from onnx import helper

    a = layer["args"]
    k_all, out_ch, channels = layer["K"], layer["O"], layer["C"]
    if k_all > 1:
        stacked_shape = const.shape("stacked_shape", [batch] + kernel_shape)
        nodes.append(helper.make_node("MatMul", [a["kernel"], const("bank", bank)], [f"{prefix}_mixed"]))
        nodes.append(helper.make_node("Reshape", [f"{prefix}_mixed", stacked_shape], [f"{prefix}_w0"]))
        current = f"{prefix}_w0"
    else:
        current = const("kernel1", bank[0].reshape([1] + kernel_shape))
    scales = []
    for head, dims in (("channel", ca_shape), ("filter", fa_shape)):
        if dims is not None:
            nodes.append(helper.make_node("Reshape", [a[head], const.shape(f"{head}_all_shape", [batch] + dims)], [f"{prefix}_{head}_all"]))
            scales.append(f"{prefix}_{head}_all")
    if len(scales) == 2:
        nodes.append(helper.make_node("Mul", scales, [f"{prefix}_cf_all"]))
        scales = [f"{prefix}_cf_all"]
    if scales:
        nodes.append(helper.make_node("Mul", [current, scales[0]], [f"{prefix}_w1"]))
        current = f"{prefix}_w1"
    if a.get("spatial"):
        sa_all = const.shape("sa_all_shape", [batch] + sa_shape)
        nodes.append(helper.make_node("Reshape", [a["spatial"], sa_all], [f"{prefix}_sa_all"]))
        nodes.append(helper.make_node("Mul", [current, f"{prefix}_sa_all"], [f"{prefix}_w2"]))
        current = f"{prefix}_w2"
    elif k_all == 1 and not scales:
        nodes.append(helper.make_node("Tile", [current, const.shape("tile_batch", [batch] + [1] * len(kernel_shape))], [f"{prefix}_w2"]))
        current = f"{prefix}_w2"
    filter_after = bool(a.get("filter")) and fa_shape is None
    height, width, ho, wo = layer["H"], layer["W"], layer["Ho"], layer["Wo"]
    nodes.append(helper.make_node("Reshape", [x_source, const.shape("fold_x", [1, batch * channels, height, width])], [f"{prefix}_xf"],
                                  name=f"{BLOCKED_VIEW}{prefix}_fold_x"))
    bias, runtime_bias = [], None
    if layer["bias"] is not None:
        # DY-Conv's dynamic bias, every sample's at once: (ka @ bias_bank)[n] [+ static] -> (N*O,),
        # a runtime bias the placeholder pass swaps in like the weight
        if k_all > 1:
            nodes.append(helper.make_node("MatMul", [a["kernel"], const("dynbias", layer["bias"])], [f"{prefix}_db"]))
            if layer["static_bias"] is not None:
                nodes.append(helper.make_node("Add", [f"{prefix}_db", const("sbias", layer["static_bias"])], [f"{prefix}_dbs"]))
            source = f"{prefix}_dbs" if layer["static_bias"] is not None else f"{prefix}_db"
            nodes.append(helper.make_node("Reshape", [source, const.shape("bias_all_shape", [batch * out_ch])], [f"{prefix}_bias_all"]))
            runtime_bias = f"{prefix}_bias_all"
            bias = [runtime_bias]
        else:
            total = layer["bias"].sum(axis=0) + (layer["static_bias"] if layer["static_bias"] is not None else 0)
            bias = [const("sbias_all", np.tile(total, batch).astype(np.float32))]
    elif not filter_after and layer["static_bias"] is not None:
        bias = [const("sbias_all", np.tile(layer["static_bias"], batch).astype(np.float32))]
    depthwise = layer["layout"] == "depthwise"
    attrs = {**layer["attrs"], "group": batch * channels if depthwise else batch}
    conv = helper.make_node("Conv", [f"{prefix}_xf", "", *bias], [f"{prefix}_yf"], **attrs)
    conv.input[1] = f"{prefix}_placeholder_slot"
    nodes.append(conv)
    weight_shape = (batch * out_ch, 1 if depthwise else channels, layer["kh"], layer["kw"])
    swaps.append(_Swap(f"{prefix}_yf", current, weight_shape, layer["layout"], "batch", runtime_bias))
    y = f"{prefix}_y" if filter_after else node.output[0]
    nodes.append(helper.make_node("Reshape", [f"{prefix}_yf", const.shape("unfold_y", [batch, out_ch, ho, wo])], [y],
                                  name=f"{BLOCKED_VIEW}{prefix}_unfold_y"))
    if filter_after:
        _channel_scale_conv(nodes, const, swaps, f"{prefix}_fa", y, a["filter"], out_ch, batch, (ho, wo), node.output[0],
                            bias=layer["static_bias"], tag="filter")


def _emit_patch_gemm(node, layer: dict, batch: int, prefix: str):
    """``node`` as per-sample kernel @ scaled patches (group 1), for large kernels on small maps::

        P_b = onehot_conv(x_b)                  (C*T, Ho*Wo)   constant one-hot depthwise conv
        y_b = (ka_b @ bank).view(O, C*T) @ (P_b * (ca_b x sa_b))  [+ ka_b @ dyn_bias] * fa_b + static_bias

    ``sa`` and ``ca`` scale the patches (C*T*Ho*Wo numbers) instead of the kernel (O*C*T): on
    ResNet-18's last stage the kernel is 2.4M numbers and the patches 226k, so this saves a full
    pass over the kernel that the NCHWc form needs.
    """
    from onnx import helper

    a = layer["args"]
    k_all, out_ch, channels, taps = layer["K"], layer["O"], layer["C"], layer["T"]
    kh, kw, ho, wo = layer["kh"], layer["kw"], layer["Ho"], layer["Wo"]
    nodes = []
    const = _LayerConstants(prefix)
    shape, inits = const.shape, const.tensors

    attrs = layer["attrs"]
    identity = (kh, kw) == (1, 1) and list(attrs.get("strides", [1, 1])) == [1, 1] and not any(attrs.get("pads", [0]))
    onehot = None if identity else const("onehot", np.tile(np.eye(taps, dtype=np.float32).reshape(taps, 1, kh, kw), (channels, 1, 1, 1)))
    mixed = k_all > 1 and bool(a.get("kernel"))
    weight = layer["weight"].reshape(k_all, out_ch * channels * taps)
    bank = const("bank", weight) if mixed else const("kernel", weight[0].reshape(out_ch, channels * taps))
    dyn_bias = const("dynbias", layer["bias"]) if layer["bias"] is not None else None

    def split(name):
        if batch == 1 or not name:
            return [name] * batch
        outs = [f"{prefix}_{name}_s{b}" for b in range(batch)]
        nodes.append(helper.make_node("Split", [name, shape("split", [1] * batch)], outs, axis=0))
        return outs

    xs = split(a["X"])
    heads = {h: split(a.get(h, "")) for h in ("channel", "filter", "spatial", "kernel")}
    outs = []
    for b in range(batch):
        tag = f"{prefix}_b{b}"
        conv_attrs = {k: v for k, v in attrs.items() if k != "group"}
        if onehot is None:
            patches = xs[b]
        else:
            nodes.append(helper.make_node("Conv", [xs[b], onehot], [f"{tag}_p"], group=channels, **conv_attrs))
            patches = f"{tag}_p"
        nodes.append(helper.make_node("Reshape", [patches, shape("pshape", [channels * taps, ho * wo])], [f"{tag}_p2"]))
        patches = f"{tag}_p2"
        scale = None
        if a.get("channel"):
            nodes.append(helper.make_node("Reshape", [heads["channel"][b], shape("cshape", [channels, 1])], [f"{tag}_c"]))
            scale = f"{tag}_c"
        if a.get("spatial"):
            nodes.append(helper.make_node("Reshape", [heads["spatial"][b], shape("sshape", [1, taps])], [f"{tag}_s"]))
            if scale is None:
                nodes.append(helper.make_node("Expand", [f"{tag}_s", shape("eshape", [channels, taps])], [f"{tag}_cs"]))
            else:
                nodes.append(helper.make_node("Mul", [scale, f"{tag}_s"], [f"{tag}_cs"]))
            scale = f"{tag}_cs"
        if scale is not None:
            nodes.append(helper.make_node("Reshape", [scale, shape("colshape", [channels * taps, 1])], [f"{tag}_col"]))
            nodes.append(helper.make_node("Mul", [patches, f"{tag}_col"], [f"{tag}_ps"]))
            patches = f"{tag}_ps"
        if mixed:
            nodes.append(helper.make_node("MatMul", [heads["kernel"][b], bank], [f"{tag}_wflat"]))
            nodes.append(helper.make_node("Reshape", [f"{tag}_wflat", shape("wshape", [out_ch, channels * taps])], [f"{tag}_w"]))
            kernel = f"{tag}_w"
        else:
            kernel = bank
        nodes.append(helper.make_node("MatMul", [kernel, patches], [f"{tag}_y"]))
        current = f"{tag}_y"
        if dyn_bias is not None:
            if mixed:
                nodes.append(helper.make_node("MatMul", [heads["kernel"][b], dyn_bias], [f"{tag}_db"]))
            else:
                nodes.append(helper.make_node("ReduceSum", [dyn_bias, shape("axis0", [0])], [f"{tag}_db"], keepdims=0))
            nodes.append(helper.make_node("Reshape", [f"{tag}_db", shape("ocol", [out_ch, 1])], [f"{tag}_dbc"]))
            nodes.append(helper.make_node("Add", [current, f"{tag}_dbc"], [f"{tag}_yb"]))
            current = f"{tag}_yb"
        if a.get("filter"):
            nodes.append(helper.make_node("Reshape", [heads["filter"][b], shape("ocol", [out_ch, 1])], [f"{tag}_f"]))
            nodes.append(helper.make_node("Mul", [current, f"{tag}_f"], [f"{tag}_yf"]))
            current = f"{tag}_yf"
        if a.get("static_bias"):
            nodes.append(helper.make_node("Reshape", [a["static_bias"], shape("ocol", [out_ch, 1])], [f"{tag}_sb"]))
            nodes.append(helper.make_node("Add", [current, f"{tag}_sb"], [f"{tag}_ys"]))
            current = f"{tag}_ys"
        out = node.output[0] if batch == 1 else f"{tag}_out"
        nodes.append(helper.make_node("Reshape", [current, shape("yshape", [1, out_ch, ho, wo])], [out]))
        outs.append(out)
    if batch > 1:
        nodes.append(helper.make_node("Concat", outs, [node.output[0]], axis=0))
    return nodes, inits


def _channel_scale_conv(nodes, const, swaps, prefix, source, scale, channels, batch, size, out, bias=None, tag=""):
    """Append nodes computing ``out = source * scale.view(N, C, 1, 1) [+ bias]`` as one 1x1 depthwise
    Conv whose weight is the per-sample scale (a :class:`_Swap` of depthwise layout, identical to
    the plain order for 1x1), the batch folded into the channels (a view in NCHW and in the
    blocked layout alike, marked for :func:`propagate_blocked_layout`).

    Why: onnxruntime runs it as an NCHWc Conv -- one pass, bias fused, and a following residual
    Add and ReLU fused too where the batch is 1 -- on the blocked tensors, where a broadcast
    ``Mul``/``Add`` over 16-float runs costs several times more (28x28x128: 100 us vs ~25 us)."""
    from onnx import helper

    folded = batch * channels
    x_in = source
    if batch > 1:
        nodes.append(helper.make_node("Reshape", [source, const.shape(f"{tag}_fold", [1, folded, *size])], [f"{prefix}_in"],
                                      name=f"{BLOCKED_VIEW}{prefix}_fold"))
        x_in = f"{prefix}_in"
    conv_out = out if batch == 1 else f"{prefix}_out"
    inputs = [x_in, ""] + ([const(f"{tag}_bias", np.tile(bias, batch).astype(np.float32))] if bias is not None else [])
    conv = helper.make_node("Conv", inputs, [conv_out], group=folded)
    conv.input[1] = f"{prefix}_placeholder_slot"
    nodes.append(conv)
    swaps.append(_Swap(conv_out, scale, (folded, 1, 1, 1), "depthwise", tag))
    if batch > 1:
        nodes.append(helper.make_node("Reshape", [conv_out, const.shape(f"{tag}_unfold", [batch, channels, *size])], [out],
                                      name=f"{BLOCKED_VIEW}{prefix}_unfold"))


def _emit_blocked_patches(node, layer: dict, batch: int, block: int, prefix: str):
    """``node`` (one kernel, group 1) as attention-scaled patches gathered in the blocked layout,
    then one static 1x1 NCHWc Conv over them, for the whole batch at once::

        x5 = blocked(x * ca).view(N, C/b, H, W, b)        (x * ca: a per-sample depthwise conv, _channel_scale_conv)
        P  = gather(pad(x5), taps x output positions)    (N, C/b, T, Ho*Wo, b)   patch channel (c/b, t, c%b)
        P  = P * sa.view(N, 1, T, 1, 1)
        y  = Conv1x1(P.view(N, T*C, Ho, Wo), W') * fa + static_bias      W'[o, (c/b, t, c%b)] = W[o, c, t]

    The same products as the convolution (``sum_c,t W[o,c,t] ca[c] sa[t] x[c, tap t]``), in another
    order of summation.  Why: ``ca`` and ``sa`` scale the input and the patches (C*T*Ho*Wo numbers)
    instead of a per-sample kernel (O*C*T), the kernel stays a constant that onnxruntime re-lays
    once, and the batch is not split into samples.  The gather moves ``b`` contiguous floats per
    index (one element per index is 16x slower); the patches are made blocked, so the
    ``ReorderOutput`` emitted before the Conv cancels against the ``ReorderInput`` onnxruntime puts
    after it (:func:`propagate_blocked_layout`).
    """
    from onnx import helper

    a = layer["args"]
    out_ch, channels, taps = layer["O"], layer["C"], layer["T"]
    kw, height, width, ho, wo = layer["kw"], layer["H"], layer["W"], layer["Ho"], layer["Wo"]
    attrs = layer["attrs"]
    sh, sw = list(attrs.get("strides", [1, 1]))
    dh, dw = list(attrs.get("dilations", [1, 1]))
    top, left, bottom, right = list(attrs.get("pads", [0, 0, 0, 0]))
    hp, wp = height + top + bottom, width + left + right
    cb = channels // block
    const = _LayerConstants(prefix)
    shape, inits = const.shape, const.tensors
    nodes = []

    tap_rows, tap_cols = np.divmod(np.arange(taps), kw)
    rows = np.arange(ho)[None, :, None] * sh + tap_rows[:, None, None] * dh
    cols = np.arange(wo)[None, None, :] * sw + tap_cols[:, None, None] * dw
    index = (rows * wp + cols).reshape(-1).astype(np.int64)
    weight = layer["weight"][0].reshape(out_ch, cb, block, taps).transpose(0, 1, 3, 2).reshape(out_ch, taps * channels, 1, 1)
    kernel = const("patch_kernel", np.ascontiguousarray(weight, dtype=np.float32))

    swaps = []

    x_in = a["X"]
    if a.get("channel"):
        _channel_scale_conv(nodes, const, swaps, f"{prefix}_ca", x_in, a["channel"], channels, batch, (height, width), f"{prefix}_xc", tag="channel")
        x_in = f"{prefix}_xc"
    nodes.append(helper.make_node("ReorderInput", [x_in], [f"{prefix}_xb"], domain=NCHWC_DOMAIN, channels_last=0))
    nodes.append(helper.make_node("Reshape", [f"{prefix}_xb", shape("x5_shape", [0, cb, 0, 0, block])], [f"{prefix}_x5"]))
    current = f"{prefix}_x5"
    identity = taps == 1 and (sh, sw) == (1, 1) and not (top or left or bottom or right)
    if not identity:  # a 1x1 stride-1 conv's patches are its input: no gather
        if top or left or bottom or right:
            nodes.append(helper.make_node("Pad", [current, shape("pads", [0, 0, top, left, 0, 0, 0, bottom, right, 0])], [f"{prefix}_xp"]))
            current = f"{prefix}_xp"
        nodes.append(helper.make_node("Reshape", [current, shape("flat_shape", [0, cb, hp * wp, block])], [f"{prefix}_xf"]))
        nodes.append(helper.make_node("Gather", [f"{prefix}_xf", const("gather_index", index)], [f"{prefix}_g"], axis=2))
        current = f"{prefix}_g"
    if a.get("spatial"):
        nodes.append(helper.make_node("Reshape", [current, shape("g5_shape", [0, cb, taps, ho * wo, block])], [f"{prefix}_g5"]))
        nodes.append(helper.make_node("Reshape", [a["spatial"], shape("sa5_shape", [batch, 1, taps, 1, 1])], [f"{prefix}_sa5"]))
        nodes.append(helper.make_node("Mul", [f"{prefix}_g5", f"{prefix}_sa5"], [f"{prefix}_gs"]))
        current = f"{prefix}_gs"
    nodes.append(helper.make_node("Reshape", [current, shape("p4_shape", [0, taps * channels, ho, wo])], [f"{prefix}_pb"]))
    nodes.append(helper.make_node("ReorderOutput", [f"{prefix}_pb"], [f"{prefix}_p"], domain=NCHWC_DOMAIN,
                                  channels=taps * channels, channels_last=0))
    has_filter = bool(a.get("filter"))
    bias = [a["static_bias"]] if a.get("static_bias") and not has_filter else []
    conv_out = f"{prefix}_y" if has_filter else node.output[0]
    nodes.append(helper.make_node("Conv", [f"{prefix}_p", kernel, *bias], [conv_out]))
    if has_filter:
        _channel_scale_conv(nodes, const, swaps, f"{prefix}_fa", conv_out, a["filter"], out_ch, batch, (ho, wo), node.output[0],
                            bias=layer["static_bias"], tag="filter")
    return nodes, inits, swaps


def batch_switch(specialised: dict, general):
    """``If(batch == b1, specialised[b1], If(batch == b2, ..., general))`` from optimised models of
    the same graph interface (one input).

    Every value and initializer of each branch gets a prefix (the branches come from the same
    source and share names); initializers move to the outer graph; the outputs keep their names.
    """
    from onnx import helper, numpy_helper

    input_name = general.graph.input[0].name
    out_names = [o.name for o in general.graph.output]
    initializers = []
    extra = []

    def branch(model, prefix):
        graph = _prefixed_graph(model.graph, prefix, input_name)
        initializers.extend(graph.initializer)
        del graph.initializer[:]
        return graph

    sizes = sorted(specialised)
    else_graph = branch(general, "bn/")
    for depth, size in enumerate(reversed(sizes)):
        then_graph = branch(specialised[size], f"b{size}/")
        tag = f"odexport_b{size}"
        nodes = [
            helper.make_node("Shape", [input_name], [f"{tag}_batch"], start=0, end=1),
            helper.make_node("Equal", [f"{tag}_batch", f"{tag}_size"], [f"{tag}_eq"]),
            helper.make_node("Squeeze", [f"{tag}_eq"], [f"{tag}_cond"]),
        ]
        extra.append(numpy_helper.from_array(np.array([size], np.int64), f"{tag}_size"))
        if depth == len(sizes) - 1:  # outermost: produces the model outputs
            nodes.append(helper.make_node("If", [f"{tag}_cond"], out_names, then_branch=then_graph, else_branch=else_graph))
            outer_nodes = nodes
        else:
            outs = [f"{tag}/{name}" for name in out_names]
            nodes.append(helper.make_node("If", [f"{tag}_cond"], outs, then_branch=then_graph, else_branch=else_graph))
            else_graph = helper.make_graph(nodes, f"else_{size}", [], [_typed_like(o, n) for o, n in zip(general.graph.output, outs)])
    initializers, rename = _deduplicated(initializers)
    if rename:
        _rename_nodes(outer_nodes, rename)
    graph = helper.make_graph(outer_nodes, general.graph.name, list(general.graph.input), list(general.graph.output), initializers + extra)
    domains = {}
    for model in [general, *specialised.values()]:
        for op in model.opset_import:
            domains[op.domain] = max(domains.get(op.domain, 0), op.version)
    switched = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains.items()])
    switched.ir_version = max(m.ir_version for m in [general, *specialised.values()])
    switched.metadata_props.extend(general.metadata_props)
    return switched


def _deduplicated(initializers):
    """Initializers with identical type, shape and bytes kept once (the branches of a batch switch
    share their constants: kernel banks, onnxruntime's re-laid static weights); returns
    ``(kept, {dropped name: kept name})``."""
    import hashlib

    from onnx import numpy_helper

    kept, rename, seen = [], {}, {}
    for tensor in initializers:
        data = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
        key = (tensor.data_type, tuple(tensor.dims), hashlib.sha1(data).hexdigest())
        if key in seen:
            rename[tensor.name] = seen[key]
        else:
            seen[key] = tensor.name
            kept.append(tensor)
    return kept, rename


def _typed_like(value, name):
    import onnx

    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    copy.name = name
    return copy


def _prefixed_graph(source, prefix: str, input_name: str):
    """A copy of ``source`` as a subgraph: no inputs (``input_name`` comes from the outer scope),
    every produced value and initializer renamed with ``prefix``."""
    import onnx

    graph = onnx.GraphProto()
    graph.CopyFrom(source)
    inputs = {i.name for i in graph.input}
    if inputs != {input_name}:
        raise ValueError(f"batch_switch needs one-input models named {input_name!r}, got inputs {sorted(inputs)}")
    rename = {t.name: prefix + t.name for t in graph.initializer}
    for n in graph.node:
        rename.update({o: prefix + o for o in n.output if o})
    for t in graph.initializer:
        t.name = rename[t.name]
    _rename_nodes(graph.node, rename)
    for v in list(graph.output) + list(graph.value_info):
        v.name = rename.get(v.name, v.name)
    del graph.input[:]
    graph.name = prefix.strip("/")
    return graph


def _rename_nodes(nodes, rename: dict) -> None:
    for n in nodes:
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]
        for a in n.attribute:
            for g in ([a.g] if a.type == a.GRAPH else list(a.graphs)):
                _rename_nodes(g.node, rename)


def _topological(nodes, available: set[str]):
    """``nodes`` in an order where every input is produced before use (Kahn's algorithm).

    onnxruntime saves its optimised graph in its own execution order, in which a Conv whose
    weight was a placeholder constant may come before the nodes that now compute that weight."""
    available = set(available) | {""}
    produced_by = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            produced_by[out] = i
    waiting = {}
    missing = []
    for i, node in enumerate(nodes):
        needs = {n for n in _node_inputs(node) if n not in available and n in produced_by}
        missing.append(len(needs))
        for n in needs:
            waiting.setdefault(n, []).append(i)
    ready = [i for i, m in enumerate(missing) if m == 0]
    order = []
    while ready:
        i = ready.pop(0)
        order.append(nodes[i])
        for out in nodes[i].output:
            for j in waiting.pop(out, []):
                missing[j] -= 1
                if missing[j] == 0:
                    ready.append(j)
    if len(order) != len(nodes):
        raise ValueError("the rewritten graph has a cycle")
    return order


def _node_inputs(node):
    """Inputs of ``node`` including outer-scope names used inside its subgraphs (If, Loop)."""
    names = list(node.input)
    for a in node.attribute:
        graphs = [a.g] if a.type == a.GRAPH else list(a.graphs)
        for g in graphs:
            inner = {t.name for t in g.initializer} | {i.name for i in g.input}
            for n in g.node:
                inner.update(n.output)
            for n in g.node:
                names.extend(x for x in _node_inputs(n) if x not in inner)
    return names


def _permute_runtime_weight(weight: str, shape, perm: np.ndarray, reordered_shape, block: int, prefix: str):
    """Nodes that turn the runtime weight ``weight`` (plain layout ``shape``) into the blocked layout
    described by ``perm`` (-1 = zero padding).  Returns ``(output name, [nodes and initializers])``."""
    from onnx import helper, numpy_helper

    out_ch, in_per_group, kh, kw = shape
    items = []

    def const(name, array):
        tensor = numpy_helper.from_array(np.asarray(array), f"{prefix}_const_{name}")
        items.append(tensor)
        return tensor.name

    if (out_ch % block == 0 and in_per_group % block == 0 and perm.size == int(np.prod(shape))
            and np.array_equal(perm, blocked_permutation(out_ch, in_per_group, kh, kw, block))):
        six = const("six", np.array([out_ch // block, block, in_per_group // block, block, kh, kw], np.int64))
        four = const("four", np.array(reordered_shape, np.int64))
        items.append(helper.make_node("Reshape", [weight, six], [f"{prefix}_6d"]))
        items.append(helper.make_node("Transpose", [f"{prefix}_6d"], [f"{prefix}_t"], perm=[0, 2, 4, 5, 3, 1]))
        items.append(helper.make_node("Reshape", [f"{prefix}_t", four], [f"{prefix}_out"]))
        return f"{prefix}_out", items
    if (in_per_group == 1 and out_ch % block == 0 and perm.size == int(np.prod(shape))
            and np.array_equal(perm, depthwise_permutation(out_ch, kh, kw, block))):
        split = const("split", np.array([out_ch // block, block, kh, kw], np.int64))
        four = const("four", np.array(reordered_shape, np.int64))
        items.append(helper.make_node("Reshape", [weight, split], [f"{prefix}_4d"]))
        items.append(helper.make_node("Transpose", [f"{prefix}_4d"], [f"{prefix}_t"], perm=[0, 2, 3, 1]))
        items.append(helper.make_node("Reshape", [f"{prefix}_t", four], [f"{prefix}_out"]))
        return f"{prefix}_out", items
    # Any other layout (padding included): gather from the flat weight with a zero appended.
    size = int(np.prod(shape))
    flat = const("flat", np.array([-1], np.int64))
    zero = const("zero", np.zeros(1, np.float32))
    index = const("index", np.where(perm < 0, size, perm).astype(np.int64))
    four = const("four", np.array(reordered_shape, np.int64))
    items.append(helper.make_node("Reshape", [weight, flat], [f"{prefix}_flat"]))
    items.append(helper.make_node("Concat", [f"{prefix}_flat", zero], [f"{prefix}_padded"], axis=0))
    items.append(helper.make_node("Gather", [f"{prefix}_padded", index], [f"{prefix}_g"], axis=0))
    items.append(helper.make_node("Reshape", [f"{prefix}_g", four], [f"{prefix}_out"]))
    return f"{prefix}_out", items
