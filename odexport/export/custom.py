"""The ``custom`` form: one ``com.odexport`` node per dynamic conv, carrying an exact ONNX function.

During export each layer's convolution is emitted as a single node (``torch.onnx.ops.symbolic``)::

    Y = com.odexport.ODConv2d(X, W, channel, filter, spatial, kernel, static_bias)
    Y = com.odexport.DyConv2d(X, W, kernel, bias, static_bias)

with attributes ``strides``, ``pads``, ``dilations``, ``group`` (see docs/ops.md).  The attention
branch stays standard ONNX, so the node receives the attentions as inputs.

Each node names a model-local FunctionProto (domain ``com.odexport``, same op name, an
``overload`` per layer configuration) whose body is the decomposed variant chosen for that layer.
Stock onnxruntime and ``onnx.inliner`` inline the body; a runtime with a registered kernel or
plugin for ``com.odexport::ODConv2d`` can take the node over instead.

The bodies are made by exporting the same torch cores that the decomposed form uses
(:class:`odexport.export.forms.DynamicConvCore`) with the weight as an *input*, all
configurations in one export, and cutting each output's cone out of the graph.
"""

from __future__ import annotations

import hashlib
import re

import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from odexport.errors import InternalError
from odexport.export.forms import DynamicConvCore, LayerSpec

DOMAIN = "com.odexport"
DOMAIN_VERSION = 1

# Formal inputs of each op, in order (optional ones are "" on the node when absent).
FORMAL_INPUTS = {
    "ODConv2d": ("X", "W", "channel", "filter", "spatial", "kernel", "static_bias"),
    "DyConv2d": ("X", "W", "kernel", "bias", "static_bias"),
}
ATTRIBUTES = ("strides", "pads", "dilations", "group")
OVERLOAD_KEY = "odexport.overload"
VARIANT_KEY = "odexport.variant"
LAYER_KEY = "odexport.layer"


def overload_name(spec: LayerSpec, variant: str) -> str:
    """A readable, unique name for one (configuration, variant): the function ``overload``."""
    heads = "".join(c for c, on in zip("cfsk", (spec.has_channel, spec.has_filter, spec.has_spatial, spec.has_kernel)) if on)
    extras = ("b" if spec.has_dyn_bias else "") + ("s" if spec.has_static_bias else "")
    text = (
        f"{variant.replace('|', '-')}_c{spec.in_channels}_o{spec.out_channels}_k{spec.kernel_size[0]}x{spec.kernel_size[1]}"
        f"_s{spec.stride[0]}x{spec.stride[1]}_p{spec.padding[0]}x{spec.padding[1]}_d{spec.dilation[0]}x{spec.dilation[1]}"
        f"_g{spec.groups}_K{spec.num_kernels}_hw{spec.input_hw[0]}x{spec.input_hw[1]}_{heads or 'none'}{'_' + extras if extras else ''}"
    )
    return text


def node_inputs(spec: LayerSpec, x, weight, att, dyn_bias, static_bias) -> tuple:
    """Actual inputs of the custom node, in the op's formal order (``None`` = absent)."""
    if spec.op == "ODConv2d":
        return (x, weight, att.channel, att.filter, att.spatial, att.kernel, static_bias)
    return (x, weight, att.kernel, dyn_bias, static_bias)


def node_attributes(spec: LayerSpec) -> dict:
    ph, pw = spec.padding
    return {
        "strides": list(spec.stride),
        "pads": [ph, pw, ph, pw],
        "dilations": list(spec.dilation),
        "group": spec.groups,
    }


def emit_custom_node(layer: nn.Module, core: DynamicConvCore, x, att, dyn_bias, static_bias):
    """Emitter for :func:`odexport.export.forms.exporting_forms`: one ``com.odexport`` node."""
    spec = core.spec
    inputs = node_inputs(spec, x, layer.weight, att, dyn_bias, static_bias)
    shape = (x.shape[0], spec.out_channels, *spec.output_hw)
    return torch.onnx.ops.symbolic(
        f"{DOMAIN}::{spec.op}",
        inputs,
        node_attributes(spec),
        dtype=x.dtype,
        shape=shape,
        version=DOMAIN_VERSION,
        metadata_props={OVERLOAD_KEY: overload_name(spec, core.variant), VARIANT_KEY: core.variant, LAYER_KEY: spec.name},
    )


class _AllBodies(nn.Module):
    """Every distinct core as a child named by its overload; inputs flattened in formal order."""

    def __init__(self, entries: dict[str, tuple[LayerSpec, str]]):
        super().__init__()
        self.layout: list[tuple[str, LayerSpec, tuple[str, ...]]] = []
        for key, (spec, variant) in entries.items():
            self.add_module(_module_name(key), DynamicConvCore(spec, variant))
            self.layout.append((key, spec, present_formals(spec)))

    def forward(self, *flat):
        outputs = []
        i = 0
        for key, spec, formals in self.layout:
            values = dict(zip(formals, flat[i : i + len(formals)]))
            i += len(formals)
            core = getattr(self, _module_name(key))
            outputs.append(
                core(
                    values["X"],
                    values["W"],
                    values.get("channel"),
                    values.get("filter"),
                    values.get("spatial"),
                    values.get("kernel"),
                    values.get("bias"),
                    values.get("static_bias"),
                )
            )
        return tuple(outputs)


def _module_name(key: str) -> str:
    return "f_" + hashlib.sha1(key.encode()).hexdigest()[:12]


def present_formals(spec: LayerSpec) -> tuple[str, ...]:
    present = {
        "X": True,
        "W": True,
        "channel": spec.has_channel,
        "filter": spec.has_filter,
        "spatial": spec.has_spatial,
        "kernel": spec.has_kernel,
        "bias": spec.has_dyn_bias,
        "static_bias": spec.has_static_bias,
    }
    return tuple(name for name in FORMAL_INPUTS[spec.op] if present[name])


def _example_inputs(spec: LayerSpec, batch: int) -> dict[str, torch.Tensor]:
    kh, kw = spec.kernel_size
    shapes = {
        "X": (batch, spec.in_channels, *spec.input_hw),
        "W": (spec.num_kernels, spec.out_channels, spec.in_per_group, kh, kw),
        "channel": (batch, spec.in_channels),
        "filter": (batch, spec.out_channels),
        "spatial": (batch, kh * kw),
        "kernel": (batch, spec.num_kernels),
        "bias": (spec.num_kernels, spec.out_channels),
        "static_bias": (spec.out_channels,),
    }
    generator = torch.Generator().manual_seed(0)  # the caller's global random stream stays where it was
    return {name: torch.rand(*shapes[name], generator=generator) for name in present_formals(spec)}


def body_module(entries: dict[str, tuple[LayerSpec, str]]) -> nn.Module:
    """Every distinct core of ``entries`` (overload key -> (spec, variant)) in one module."""
    return _AllBodies(entries).eval()


def body_inputs(bodies: nn.Module, example_batch: int, dynamic: bool) -> tuple[list, list[str], list, list[str]]:
    """``(example args, input names, dynamic shapes, output names)`` of :func:`body_module`'s forward."""
    args, names, shapes = [], [], []
    batched = {"X", "channel", "filter", "spatial", "kernel"}
    for index, (key, spec, formals) in enumerate(bodies.layout):
        # one batch symbol per body: with a shared one the exporter may read the batch size of
        # one body from another body's input, which would tie the functions together
        batch_dim = torch.export.Dim(f"{_module_name(key)}_batch")
        example = _example_inputs(spec, example_batch)
        for formal in formals:
            args.append(example[formal])
            names.append(f"{_module_name(key)}__{formal}")
            shapes.append({0: batch_dim} if dynamic and formal in batched else None)
    outputs = [f"{_module_name(key)}__Y" for key, _, _ in bodies.layout]
    return args, names, shapes, outputs


BODIES_NAME = "odexport_bodies"


class RidingAlong(nn.Module):
    """Trace the bodies in the same export as the model: ``forward(x, *body_inputs)`` returns the
    model's outputs followed by the bodies' (one torch export instead of two).

    A *view* of ``model``, not a wrapper: it shares the model's parameter, buffer and child
    dictionaries, so every initializer and module scope keeps the name it has in the model, and
    the model's own forward is called as is (a container's forward that iterates its children
    never sees the bodies)."""

    def __init__(self, model: nn.Module, bodies: nn.Module):
        super().__init__()
        self._parameters = model._parameters
        self._buffers = model._buffers
        self._modules = dict(model._modules)
        self._modules[BODIES_NAME] = bodies
        object.__setattr__(self, "_model", model)  # not a child: its contents are ours already

    def forward(self, x, *flat):
        out = self._model.forward(x)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return (*outs, *self._modules[BODIES_NAME](*flat))


def split_bodies(proto: onnx.ModelProto, bodies: nn.Module, entries: dict[str, tuple[LayerSpec, str]],
                 body_names: list[str], body_outputs: list[str]) -> list[onnx.FunctionProto]:
    """Cut every body out of a graph traced with :class:`RidingAlong` into its FunctionProto,
    then remove the bodies' inputs, outputs and nodes from the graph (in place)."""
    functions = functions_from_graph(proto, bodies, entries)
    graph = proto.graph
    dropped_inputs, dropped_outputs = set(body_names), set(body_outputs)
    keep_outputs = [o for o in graph.output if o.name not in dropped_outputs]
    producers = {out: node for node in graph.node for out in node.output}
    order = {id(node): i for i, node in enumerate(graph.node)}
    live: dict[int, onnx.NodeProto] = {}
    for output in keep_outputs:
        for node in _cone(producers, output.name, order):
            live[id(node)] = node
    reads = {n for node in live.values() for n in _all_inputs(node)}
    if reads & dropped_inputs:
        raise InternalError(f"the model graph reads body inputs {sorted(reads & dropped_inputs)}")
    nodes = [node for node in graph.node if id(node) in live]
    graph.ClearField("node")
    graph.node.extend(nodes)
    kept_in = [i for i in graph.input if i.name not in dropped_inputs]
    graph.ClearField("input")
    graph.input.extend(kept_in)
    graph.ClearField("output")
    graph.output.extend(keep_outputs)
    produced = {o for node in nodes for o in node.output} | {i.name for i in kept_in}
    kept_vi = [v for v in graph.value_info if v.name in produced]
    graph.ClearField("value_info")
    graph.value_info.extend(kept_vi)
    used = reads | {o.name for o in keep_outputs}
    kept_init = [t for t in graph.initializer if t.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept_init)
    return functions


def functions_from_graph(model: onnx.ModelProto, wrapper: nn.Module, entries: dict[str, tuple[LayerSpec, str]]) -> list[onnx.FunctionProto]:
    """Each body's cone (from its output back to its own inputs and constants) as a function."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    order = {id(node): i for i, node in enumerate(graph.node)}
    initializers = {t.name: t for t in graph.initializer}
    graph_inputs = {value.name for value in graph.input}
    functions = []
    for key, spec, formals in wrapper.layout:
        prefix = _module_name(key) + "__"
        nodes = _cone(producers, prefix + "Y", order)
        rename = {prefix + formal: formal for formal in formals}
        rename[prefix + "Y"] = "Y"
        foreign = {n for node in nodes for n in _all_inputs(node) if n in graph_inputs and n not in rename}
        if foreign:
            raise InternalError(f"the body of {key} reads inputs that are not its own: {sorted(foreign)}")
        body = []
        used_consts = []
        for node in nodes:
            for name in _all_inputs(node):
                if name in initializers and name not in used_consts:
                    used_consts.append(name)
        for name in used_consts:
            body.append(helper.make_node("Constant", [], [_local(name, rename)], value=_copy_tensor(initializers[name]), name=f"const_{len(body)}"))
        for i, node in enumerate(nodes):
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.ClearField("input")
            new.ClearField("output")
            new.input.extend(_local(n, rename) if n else "" for n in node.input)
            new.output.extend(_local(n, rename) if n else "" for n in node.output)
            for attr in new.attribute:  # If/Loop bodies name outer values too
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    _rename_graph(sub, rename)
            new.name = f"n{i}_{node.op_type}"
            body.append(new)
        function = helper.make_function(
            DOMAIN,
            spec.op,
            list(FORMAL_INPUTS[spec.op]),
            ["Y"],
            body,
            [helper.make_opsetid(op.domain, op.version) for op in model.opset_import if op.domain != DOMAIN],
            attributes=list(ATTRIBUTES),
            doc_string=f"odexport {spec.op}, variant {entries[key][1]}: exact decomposed body (see docs/ops.md)",
            overload=key,
        )
        functions.append(function)
    return functions


_SAFE = re.compile(r"[^A-Za-z0-9_]")


def _local(name: str, rename: dict[str, str]) -> str:
    if name in rename:
        return rename[name]
    return "t_" + _SAFE.sub("_", name)


def _all_inputs(node: onnx.NodeProto):
    """Names a node reads, including outer-scope names read inside its subgraphs (If, Loop)."""
    yield from (n for n in node.input if n)
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in sub.node:
                yield from _all_inputs(inner)


def _rename_graph(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Apply :func:`_local` to every value name of a subgraph (consistent with the body)."""
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = _local(value.name, rename)
    for tensor in graph.initializer:
        tensor.name = _local(tensor.name, rename)
    for node in graph.node:
        for i, n in enumerate(node.input):
            if n:
                node.input[i] = _local(n, rename)
        for i, n in enumerate(node.output):
            if n:
                node.output[i] = _local(n, rename)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_graph(sub, rename)


def _copy_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        array = numpy_helper.to_array(tensor)
        return numpy_helper.from_array(array)
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = ""
    return copy


def _cone(producers: dict[str, onnx.NodeProto], output: str, order: dict[int, int]) -> list[onnx.NodeProto]:
    """Nodes that ``output`` depends on, in graph order."""
    seen: dict[int, onnx.NodeProto] = {}
    stack = [output]
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(_all_inputs(node))
    return sorted(seen.values(), key=lambda n: order[id(n)])


def finish_custom_model(model: onnx.ModelProto, functions: list[onnx.FunctionProto]) -> None:
    """Give every ``com.odexport`` node its overload and the name of its PyTorch layer (what
    reports and the onnxruntime-CPU specialisation show), and attach the functions (in place)."""
    taken = {node.name for node in model.graph.node}
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        props = {p.key: p.value for p in node.metadata_props}
        node.overload = props[OVERLOAD_KEY]
        layer = props.get(LAYER_KEY)
        if layer and layer not in taken:
            taken.add(layer)
            node.name = layer
    model.functions.extend(functions)
    if model.ir_version < 10:  # function overloads need IR version 10
        model.ir_version = 10
