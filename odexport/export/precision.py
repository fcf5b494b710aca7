"""Mixed precision for ``--fp16``: the policy as data, and the ONNX pass that applies it.

Policy (:data:`FP16_POLICY`): convolutions and matrix products of the feature path run in fp16;
everything of an attention branch (pooling, the small FCs, BN, ReLU, the logits, sigmoid/softmax)
and the kernel aggregation (``ka @ W``, ``* sa``, the K-branch mix, the dynamic bias) run in fp32;
model inputs and outputs stay fp32.  Cheap layout and elementwise ops (Reshape, Relu, Add, ...)
*follow* their inputs: fp16 when every data input already is fp16, fp32 otherwise, so a
Conv -> Relu -> Conv chain needs no Cast while an attention-scaled tensor is never rounded.

Each node's *role* comes from the module scopes the exporter records
(``pkg.torch.onnx.name_scopes``): a node inside a dynamic layer but outside its
``odexport_core`` is ``attention``; a node under ``odexport_core.aggregate`` (or an
``.aggregate`` scope of a custom-op body) is ``aggregation``; everything else is ``feature``.
After the pass every node carries ``odexport.role`` and ``odexport.precision`` metadata, so a
runtime test (TensorRT strongly typed builds) can check the policy node by node with
:func:`precision_violations`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from odexport.export import metadata_keys as keys
from odexport.export.forms import AGGREGATE_NAME, CORE_NAME

ROLE_KEY = "odexport.role"
PRECISION_KEY = "odexport.precision"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class PrecisionPolicy:
    """Which nodes compute in fp16 and which in fp32 (data, so tests can read it)."""

    fp16_op_types: frozenset[str] = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
    # op type -> indices of its data inputs; follows its data inputs' precision
    follow_op_types: dict[str, tuple[int, ...] | None] = field(
        default_factory=lambda: {
            "Relu": (0,),
            "Reshape": (0,),
            "Flatten": (0,),
            "Transpose": (0,),
            "Squeeze": (0,),
            "Unsqueeze": (0,),
            "Identity": (0,),
            "MaxPool": (0,),
            "Add": (0, 1),
            "Concat": None,  # every input
        }
    )
    always_fp32_op_types: frozenset[str] = frozenset({"Softmax", "Sigmoid", "ReduceMean", "ReduceSum", "GlobalAveragePool", "BatchNormalization"})
    fp32_roles: frozenset[str] = frozenset({"attention", "aggregation"})

    def decide(self, op_type: str, role: str) -> str:
        """``"fp16"``, ``"fp32"`` or ``"follow"`` for a node of ``op_type`` and ``role``."""
        if role in self.fp32_roles or op_type in self.always_fp32_op_types:
            return "fp32"
        if op_type in self.fp16_op_types:
            return "fp16"
        if op_type in self.follow_op_types:
            return "follow"
        return "fp32"


FP16_POLICY = PrecisionPolicy()


def node_scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                value = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [str(v) for v in value] if isinstance(value, (list, tuple)) else []
    return []


def node_role(node: onnx.NodeProto, layer_names: set[str]) -> str:
    """``attention`` | ``aggregation`` | ``feature`` from the node's recorded module scopes."""
    for prop in node.metadata_props:
        if prop.key == ROLE_KEY:
            return prop.value
    scopes = node_scopes(node)
    if any(s == AGGREGATE_NAME or s.endswith("." + AGGREGATE_NAME) for s in scopes):
        return "aggregation"
    in_layer = [s for s in scopes if s in layer_names]
    if in_layer:
        cores = {f"{layer}.{CORE_NAME}" if layer else CORE_NAME for layer in in_layer}
        if not any(s in cores or any(s.startswith(c + ".") for c in cores) for s in scopes):
            return "attention"
    return "feature"


def _set_prop(node: onnx.NodeProto, key: str, value: str) -> None:
    for prop in node.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = node.metadata_props.add()
    entry.key, entry.value = key, value


class _Converter:
    """Rewrites one node list (a graph or a function body) in place."""

    def __init__(self, policy: PrecisionPolicy, layer_names: set[str], constants: dict[str, np.ndarray], prefix: str):
        self.policy = policy
        self.layer_names = layer_names
        self.constants = constants  # float constants by name (initializers or Constant outputs)
        self.prefix = prefix
        self.fp16: set[str] = set()
        self.casts: dict[tuple[str, int], str] = {}
        self.half_constants: dict[str, str] = {}
        self.new_constants: list[tuple[str, np.ndarray]] = []
        self.counts = {"fp16": 0, "fp32": 0}

    def _cast(self, name: str, to: int, out: list) -> str:
        key = (name, to)
        if key not in self.casts:
            suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
            new = f"{self.prefix}{name}__{suffix}"
            node = helper.make_node("Cast", [name], [new], to=to, name=f"{self.prefix}cast_{len(self.casts)}_{suffix}")
            _set_prop(node, PRECISION_KEY, suffix)
            out.append(node)
            self.casts[key] = new
        return self.casts[key]

    def _half_constant(self, name: str) -> str:
        if name not in self.half_constants:
            new = f"{self.prefix}{name}__fp16"
            self.new_constants.append((new, self.constants[name].astype(np.float16)))
            self.half_constants[name] = new
        return self.half_constants[name]

    def run(self, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
        out: list[onnx.NodeProto] = []
        for node in nodes:
            role = node_role(node, self.layer_names)
            decision = self.policy.decide(node.op_type, role)
            if decision == "follow":
                data = self.policy.follow_op_types[node.op_type]
                indices = range(len(node.input)) if data is None else [i for i in data if i < len(node.input)]
                names = [node.input[i] for i in indices if node.input[i]]
                tensors = [n for n in names if n not in self.constants]
                ok = tensors and all(n in self.fp16 for n in tensors) and all(
                    n in self.fp16 or (n in self.constants and self.constants[n].dtype == np.float32) for n in names
                )
                decision = "fp16" if ok else "fp32"
                data_indices = set(indices)
            else:
                data_indices = set(range(len(node.input)))
            if decision == "fp16":
                for i, name in enumerate(node.input):
                    if not name or i not in data_indices or name in self.fp16:
                        continue
                    if name in self.constants and self.constants[name].dtype == np.float32:
                        node.input[i] = self._half_constant(name)
                    else:
                        node.input[i] = self._cast(name, TensorProto.FLOAT16, out)
                self.fp16.update(n for n in node.output if n)
            else:
                for i, name in enumerate(node.input):
                    if name in self.fp16:
                        node.input[i] = self._cast(name, TensorProto.FLOAT, out)
            _set_prop(node, ROLE_KEY, role)
            _set_prop(node, PRECISION_KEY, decision)
            self.counts[decision] += 1
            out.append(node)
        return out

    def restore_outputs(self, outputs: list[str], nodes: list[onnx.NodeProto]) -> None:
        """Outputs stay fp32: the producer writes ``<name>__fp16`` and a Cast restores ``name``."""
        for name in outputs:
            if name not in self.fp16:
                continue
            renamed = f"{self.prefix}{name}__fp16out"
            for node in nodes:
                for i, n in enumerate(node.output):
                    if n == name:
                        node.output[i] = renamed
                for i, n in enumerate(node.input):
                    if n == name:
                        node.input[i] = renamed
            cast = helper.make_node("Cast", [renamed], [name], to=TensorProto.FLOAT, name=f"{self.prefix}cast_out_{name}")
            _set_prop(cast, PRECISION_KEY, "fp32")
            nodes.append(cast)


def convert_to_mixed_precision(model: onnx.ModelProto, layer_names: set[str], policy: PrecisionPolicy = FP16_POLICY) -> dict:
    """Apply ``policy`` to ``model`` in place (graph and local function bodies); returns counts."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    converter = _Converter(policy, layer_names, constants, prefix="")
    nodes = converter.run(list(graph.node))
    converter.restore_outputs([o.name for o in graph.output], nodes)
    graph.ClearField("node")
    graph.node.extend(nodes)
    for name, array in converter.new_constants:
        graph.initializer.append(numpy_helper.from_array(array, name))
    _drop_unused_initializers(graph)
    graph.ClearField("value_info")
    counts = dict(converter.counts)
    for function in model.functions:
        fconst = {}
        for node in function.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                array = numpy_helper.to_array(node.attribute[0].t)
                if array.dtype == np.float32:
                    fconst[node.output[0]] = array
        fconv = _Converter(policy, layer_names, fconst, prefix="h_")
        fnodes = fconv.run(list(function.node))
        fconv.restore_outputs(list(function.output), fnodes)
        consts = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array), name=f"const_{name}") for name, array in fconv.new_constants]
        for c in consts:
            _set_prop(c, PRECISION_KEY, "fp16")
        function.ClearField("node")
        function.node.extend(consts + fnodes)
        for key in counts:
            counts[key] += fconv.counts[key]
    return counts


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {n for node in graph.node for n in node.input}
    used.update(o.name for o in graph.output)
    keep = [t for t in graph.initializer if t.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(keep)


def precision_violations(model: onnx.ModelProto, policy: PrecisionPolicy = FP16_POLICY) -> list[str]:
    """Nodes whose computed precision breaks ``policy`` (empty list: the model follows it).

    Local functions are inlined first; each node's float inputs are typed by ONNX shape
    inference; its role comes from its ``odexport.role`` metadata (or scopes).  Checks: fp16
    op types of the feature path take fp16 inputs; nodes of an fp32 role, and softmax/sigmoid,
    take fp32 inputs; the model's float inputs and outputs are fp32.
    """
    import onnx.inliner

    flat = onnx.inliner.inline_local_functions(model) if len(model.functions) else model
    inferred = onnx.shape_inference.infer_shapes(flat)
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    layer_names = _layer_names_from_metadata(model)
    problems = []
    for vi in list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.INT64):
            problems.append(f"model input/output {vi.name} is not fp32")
    for node in inferred.graph.node:
        if node.op_type in ("Cast", "Constant") or node.domain not in ("", "ai.onnx"):
            continue
        role = node_role(node, layer_names)
        floats = [types.get(n) for n in node.input if n and types.get(n) in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        if not floats:
            continue
        wanted = policy.decide(node.op_type, role)
        if wanted == "fp16" and any(t != TensorProto.FLOAT16 for t in floats):
            problems.append(f"{node.name} ({node.op_type}, {role}) computes in fp32, policy says fp16")
        if wanted == "fp32" and any(t != TensorProto.FLOAT for t in floats):
            problems.append(f"{node.name} ({node.op_type}, {role}) computes in fp16, policy says fp32")
    return problems


def _layer_names_from_metadata(model: onnx.ModelProto) -> set[str]:
    import json

    for prop in model.metadata_props:
        if prop.key == keys.FORMS:
            try:
                return {entry["name"] for entry in json.loads(prop.value)}
            except (ValueError, KeyError, TypeError):
                return set()
    return set()
