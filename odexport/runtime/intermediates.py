"""Per-layer values of dynamic convs, from PyTorch (forward hooks) and from an ONNX graph.

Used by ``odexport check --per-layer`` to name the first dynamic conv, and the component of it
(an attention head or the convolution), whose values diverge between PyTorch and the export.

Components of a layer, in the order they are computed (and compared)::

    attention.channel (B, C)   attention.filter (B, O)   attention.spatial (B, k*k)
    attention.kernel  (B, K)   output (B, O, H', W')

Finding the same values in an ONNX graph, in order of preference:

1. **Declared by the exporter**: the model's ``metadata_props`` key ``odexport.layer_values``
   holds JSON ``{layer: {component: value_name}}`` (``layer`` is the PyTorch module path).
2. **PyTorch name scopes**: the torch.export-based exporter records each node's module path in
   its ``pkg.torch.onnx.name_scopes`` metadata.  A layer's output is the last value its scope
   hands to the rest of the graph; its attention heads are the values the ``<layer>.attention``
   scope hands out, in the order the heads are computed (with fused heads, the values of the
   heads' sizes in that order: the joint logits also leave the scope).  A layer whose heads cannot
   be told apart or whose scope was optimised away is compared on its output only, with a note.

The legacy TorchScript exporter records no usable scopes; such graphs get a note and no per-layer
comparison unless the exporter declared the values (1).
"""

from __future__ import annotations

import ast
import json
from collections import OrderedDict

import numpy as np

from odexport.export import metadata_keys as keys

COMPONENTS = ("attention.channel", "attention.filter", "attention.spatial", "attention.kernel", "output")
_HEADS = ("channel", "filter", "spatial", "kernel")
METADATA_KEY = keys.LAYER_VALUES


def torch_layer_values(model, x: np.ndarray, dtype=None) -> "OrderedDict[str, dict[str, np.ndarray]]":
    """Run ``model`` on ``x`` and record every dynamic conv's attentions and output, in call order."""
    import torch

    from odexport.layers import dynamic_convs

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = dtype or (param.dtype if param is not None else torch.float32)
    captured: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
    handles = []

    def hook_for(name):
        def hook(module, args, output):
            values = {}
            attentions = module.attentions(args[0])
            for head, value in zip(_HEADS, attentions):
                if value is not None:
                    values[f"attention.{head}"] = _snapshot(value)
            values["output"] = _snapshot(output)
            captured[name] = values
        return hook

    for name, layer in dynamic_convs(model):
        handles.append(layer.register_forward_hook(hook_for(name)))
    try:
        with torch.inference_mode():
            model(torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _specialised_from(proto) -> str | None:
    """The portable export an ``odexport ort`` file was made from (its ``odexport.ort_cpu`` record), else None."""
    import json

    from odexport.runtime.ort_specialise import SPECIALISATION_KEY

    for prop in proto.metadata_props:
        if prop.key == SPECIALISATION_KEY:
            try:
                return str(json.loads(prop.value).get("source") or "the portable export")
            except (ValueError, AttributeError):
                return "the portable export"
    return None


def _snapshot(value) -> np.ndarray:
    """A float64 copy of a hooked tensor, taken now.

    ``.double().numpy()`` of a float64 CPU tensor is a view of it, and the network may then modify
    the tensor in place (``ReLU(inplace=True)`` after a conv): the recorded value would become the
    activation's output.
    """
    return np.array(value.detach().double().cpu().numpy(), copy=True)


def onnx_layer_value_names(proto, layers: dict[str, dict[str, tuple]]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Map ``{layer: {component: per-sample shape}}`` (from PyTorch) to ONNX value names.

    Returns ``(mapping, notes)``; layers or components that cannot be found are left out and
    explained in ``notes``.
    """
    notes: list[str] = []
    declared = _declared(proto)
    if declared:
        mapping = {layer: {c: v for c, v in declared.get(layer, {}).items() if c in comps} for layer, comps in layers.items()}
        missing = [layer for layer in layers if not mapping.get(layer)]
        if missing:
            notes.append(f"the export declares no values for {len(missing)} dynamic convs (e.g. {missing[0]})")
        return {k: v for k, v in mapping.items() if v}, notes

    scopes = _node_scopes(proto)
    if not any(scopes):
        source = _specialised_from(proto)
        if source is not None:
            notes.append(f"an `odexport ort` file keeps no PyTorch module scopes (onnxruntime rewrote its graph): run --per-layer "
                         f"on the portable export it was made from ({source}); `odexport ort` compared the two when it wrote this one")
        else:
            notes.append("this ONNX graph records no PyTorch module scopes (legacy TorchScript exporter?) and declares no "
                         f"'{METADATA_KEY}' metadata: per-layer values cannot be located")
        return {}, notes
    nodes = list(proto.graph.node)
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    graph_outputs = {o.name for o in proto.graph.output}

    def handed_out(scope: str) -> list[str]:
        inside = {i for i, s in enumerate(scopes) if scope in s}
        values = []
        for i in sorted(inside):
            for out in nodes[i].output:
                users = consumers.get(out, [])
                if out and (out in graph_outputs or any(u not in inside for u in users)):
                    values.append(out)
        return values

    inferred: dict[str, int | None] | None = None

    def sample_sizes() -> dict[str, int | None]:
        nonlocal inferred
        if inferred is None:
            inferred = _per_sample_sizes(proto)
        return inferred

    mapping: dict[str, dict[str, str]] = {}
    for layer, components in layers.items():
        found: dict[str, str] = {}
        out_values = handed_out(layer)
        if out_values:
            found["output"] = out_values[-1]
        heads = [c for c in COMPONENTS if c.startswith("attention.") and c in components]
        att_values = handed_out(f"{layer}.attention")
        if heads and len(att_values) > len(heads):
            att_values = _by_size_in_order(att_values, [int(np.prod(components[h])) for h in heads], sample_sizes()) or att_values
        if heads and len(att_values) == len(heads):
            found.update(zip(heads, att_values))
        elif heads:
            notes.append(f"{layer}: {len(att_values)} attention values leave the attention scope for {len(heads)} heads "
                         "(heads fused or folded by the export): compared the layer output only")
        if not out_values:
            notes.append(f"{layer}: no ONNX nodes carry this layer's scope (inlined or renamed by the export)")
        if found:
            mapping[layer] = found
    return mapping, notes


def _by_size_in_order(values: list[str], wanted: list[int], sizes: dict[str, int | None]) -> list[str] | None:
    """The values, in graph order, whose per-sample sizes are ``wanted`` in that order, or None.

    A fused-heads attention also hands its joint logits (``C + O + k*k + K`` per sample) to the
    split outside its scope; their size is no head's, so they are passed over, and each head is
    the first value of its size after the one before it.
    """
    picked: list[str] = []
    for name in values:
        if len(picked) < len(wanted) and sizes.get(name) == wanted[len(picked)]:
            picked.append(name)
    return picked if len(picked) == len(wanted) else None


def _per_sample_sizes(proto) -> dict[str, int | None]:
    """Element count per sample (all dims but the first) of every value shape inference can size."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # best effort: without sizes, fused heads are compared on the layer output only
        return {}
    sizes: dict[str, int | None] = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        rest = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
        sizes[info.name] = int(np.prod(rest)) if dims and all(rest) else None
    return sizes


def with_extra_outputs(proto, value_names: list[str]):
    """A copy of ``proto`` whose graph also outputs ``value_names`` (element type from shape inference)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    existing = {o.name for o in model.graph.output}
    types = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for info in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
            types[info.name] = info.type.tensor_type.elem_type
    except Exception:  # shape inference is best effort; float is the right guess for these values
        pass
    for name in value_names:
        if name not in existing:
            elem = types.get(name) or onnx.TensorProto.FLOAT
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
            existing.add(name)
    return model


def _declared(proto) -> dict:
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                value = json.loads(prop.value)
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def _node_scopes(proto) -> list[set[str]]:
    """Module paths each node belongs to (``{"layer1", "layer1.0", "layer1.0.conv1"}``)."""
    result = []
    for node in proto.graph.node:
        paths: set[str] = set()
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = ast.literal_eval(prop.value)
                except (ValueError, SyntaxError):
                    scopes = []
                # the last entry is the op's own name, the first the root module ('')
                paths = {s for s in scopes[:-1] if s}
                break
        result.append(paths)
    return result
