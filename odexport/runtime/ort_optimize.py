"""onnxruntime-CPU, machine-local rewrite: runtime-weight convolutions in onnxruntime's NCHWc kernels.

Why.  onnxruntime's CPU provider runs a *static* Conv fast because its NCHWc transformer re-lays
the constant weight once into a blocked layout and runs ``com.microsoft.nchwc::Conv``, keeping
the activations blocked between consecutive NCHWc nodes.  A Conv whose weight is computed at run
time (the per-sample kernel of a dynamic conv at batch 1) is left to the generic im2col + GEMM
kernel: 1.2-1.8x slower per layer, with layout changes around it.  ``nchwc::Conv`` itself accepts
a runtime weight, provided it is already blocked.

How (no assumption about the layout, everything probed on this machine):

1. every Conv whose weight is not a constant gets a *placeholder* constant weight whose values
   encode their own flat index (``base + 1 + i``, exact in float32 below 2**24); the computed
   weight stays alive as an extra graph output;
2. onnxruntime optimises that model (level ALL: its own NCHWc transform, activation / Sum fusion,
   and the minimal reorders between blocked nodes) and saves it (``optimized_model_filepath``);
3. each NCHWc Conv whose weight is a re-laid placeholder reveals the permutation from the
   plain layout to the blocked one (``blocked.flat[j] = W.flat[perm[j]]``, 0 = padding); its weight
   input is replaced by the computed weight, permuted the same way at run time (one Reshape +
   Transpose + Reshape when ``perm`` is the known blocked transposition, a Gather otherwise);
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

NCHWC_DOMAIN = "com.microsoft.nchwc"
_INDEX_LIMIT = 2**24  # float32 represents every integer up to here exactly


@dataclass
class RewriteReport:
    """What :func:`optimize_for_cpu` did: the rewritten model and, per conv, what happened."""

    model: object  # onnx.ModelProto
    block: int | None
    rewritten: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.rewritten)

    def to_dict(self) -> dict:
        return {"block": self.block, "rewritten": list(self.rewritten), "skipped": dict(self.skipped), "notes": list(self.notes)}


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


def ort_optimized(model, threads: int | None = 1):
    """onnxruntime's own CPU optimisation (level ALL) of ``model``, as an ``onnx.ModelProto``."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="odexport-ort-") as scratch:
        path = os.path.join(scratch, "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), _session_options(threads, path), providers=["CPUExecutionProvider"])
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
        optimized = ort_optimized(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
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


def optimize_for_cpu(model, *, threads: int | None = None) -> RewriteReport:
    """Rewrite every runtime-weight Conv of ``model`` (an ``onnx.ModelProto``) into onnxruntime's
    NCHWc Conv on this machine; see the module docstring.  The returned model is meant for an
    onnxruntime CPU session on this machine only (load it with graph optimisation level ``basic``
    or higher: it is already optimised)."""
    import onnx
    from onnx import helper, numpy_helper

    block = nchwc_block_size()
    report = RewriteReport(model=model, block=block)
    if block is None:
        report.notes.append("onnxruntime does not use NCHWc Conv on this machine/build: nothing rewritten")
        return report
    graph = model.graph
    constants = _constant_names(graph)
    shapes = _shapes(model)
    candidates = []  # (node index, weight name, weight shape)
    used = 0
    for index, node in enumerate(graph.node):
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
        size = int(np.prod(shape))
        if used + size >= _INDEX_LIMIT:
            report.skipped[label] = "too many runtime-weight elements to encode in one pass"
            continue
        candidates.append((index, weight, tuple(int(d) for d in shape), used, label))
        used += size
    if not candidates:
        report.notes.append("no Conv with a runtime weight")
        return report

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    kept_outputs = []
    for index, weight, shape, base, _ in candidates:
        name = f"odexport_placeholder_{index}"
        probe.graph.initializer.append(numpy_helper.from_array(_index_tensor(shape, base), name))
        probe.graph.node[index].input[1] = name
        if weight not in kept_outputs:
            kept_outputs.append(weight)
            probe.graph.output.append(helper.make_tensor_value_info(weight, onnx.TensorProto.FLOAT, list(shape)))
    optimized = ort_optimized(probe, threads=1)
    out_graph = optimized.graph
    inits = {t.name: t for t in out_graph.initializer}
    by_base = {base: (index, weight, shape, label) for index, weight, shape, base, label in candidates}
    bases = sorted(by_base)
    done = set()
    new_nodes = []
    for node in out_graph.node:
        if not (node.domain == NCHWC_DOMAIN and node.op_type == "Conv" and node.input[1] in inits):
            continue
        values = numpy_helper.to_array(inits[node.input[1]]).ravel()
        nonzero = values[values > 0]
        if nonzero.size == 0:
            continue
        first = int(nonzero.min()) - 1
        base = max((b for b in bases if b <= first), default=None)
        if base is None:
            continue
        index, weight, shape, label = by_base[base]
        size = int(np.prod(shape))
        if int(nonzero.max()) - 1 >= base + size:
            continue  # not one of ours (or two placeholders mixed: never seen)
        perm = np.where(values > 0, values.astype(np.int64) - 1 - base, -1)
        reordered_shape = list(inits[node.input[1]].dims)
        source, nodes = _permute_runtime_weight(weight, shape, perm, reordered_shape, block, f"odexport_nchwc_w{index}")
        new_nodes.append((node, nodes, source))
        done.add(base)
    if not done:
        report.notes.append("onnxruntime did not turn any placeholder Conv into an NCHWc Conv")
        return report
    # Wire the permuted runtime weights in (the extra nodes go right before their Conv).
    extra_inits = []
    for conv, nodes, source in new_nodes:
        conv.input[1] = source
        for n in nodes:
            if isinstance(n, onnx.TensorProto):
                extra_inits.append(n)
    added = [n for _, nodes, _ in new_nodes for n in nodes if isinstance(n, onnx.NodeProto)]
    ordered = _topological(list(out_graph.node) + added, {t.name for t in out_graph.initializer} | {t.name for t in extra_inits}
                           | {i.name for i in out_graph.input})
    del out_graph.node[:]
    out_graph.node.extend(ordered)
    out_graph.initializer.extend(extra_inits)
    # Placeholders that onnxruntime did not take: give those Convs their computed weight back.
    names = {f"odexport_placeholder_{index}": (weight, base, label) for index, weight, shape, base, label in candidates}
    for node in out_graph.node:
        for i, name in enumerate(node.input):
            if name in names:
                weight, base, label = names[name]
                node.input[i] = weight
                report.skipped[label] = "onnxruntime kept it as a plain Conv"
    for base in done:
        report.rewritten.append(by_base[base][3])
    # Drop the kept-alive weights from the outputs and the now unused initializers.
    keep = [o for o in out_graph.output if o.name not in set(kept_outputs)]
    del out_graph.output[:]
    out_graph.output.extend(keep)
    used_names = {name for n in out_graph.node for name in n.input} | {o.name for o in out_graph.output}
    remaining = [t for t in out_graph.initializer if t.name in used_names]
    del out_graph.initializer[:]
    out_graph.initializer.extend(remaining)
    report.model = optimized
    return report


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
        tensor = numpy_helper.from_array(np.asarray(array), f"{prefix}_{name}")
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
