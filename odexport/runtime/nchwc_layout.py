"""Keep activations in onnxruntime's blocked (NCHWc) layout across layout-free nodes.

Why.  onnxruntime's NCHWc transformer keeps a tensor blocked only between its own NCHWc nodes.
In a specialised dynamic-conv graph the per-sample convolutions are separated by plain nodes that
do not care about the memory order of their data -- a per-sample ``Split``/``Concat`` on the
batch axis, the output scale ``* fa`` and bias ``+ b``, the residual ``Add``, ``Relu`` -- so every
such node sits between a ``ReorderOutput`` (blocked -> NCHW) and a ``ReorderInput`` (NCHW ->
blocked): at batch 8, OD-ResNet18 K=1 spends ~16 ms of ~140 in these copies.

How.  A blocked tensor of ``C`` channels (``C`` a multiple of the block ``b``) holds the same
numbers as its NCHW twin in the order ``(n, c // b, h, w, c % b)``, under the same 4-D shape
``(N, C, H, W)``.  So, on the blocked tensor:

* an elementwise unary node (``Relu``, ``Sigmoid``, ``Clip``, ...) computes the blocked result;
* an elementwise binary node whose other operands are blocked tensors of the same shape, or
  scalars, computes the blocked result;
* with a per-channel operand ``v`` of shape ``(1, C, 1, 1)`` the data is viewed 5-D,
  ``x.reshape(N, C/b, H, W, b) op v.reshape(1, C/b, 1, 1, b)``, then viewed 4-D again
  (``Reshape`` is a view);
* ``Split`` / ``Concat`` on axis 0 (whole samples) are layout-free.

The pass finds, per connected region of such nodes, the ``ReorderOutput`` nodes feeding it and
the ``ReorderInput`` nodes it feeds, and computes the region on the blocked tensors instead,
adding a ``ReorderOutput`` only where an NCHW consumer remains.  A region is rewritten only
when that leaves fewer reorders than it had.  The results are bit-identical: the same
elementwise operations on the same numbers, in another order in memory.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

NCHWC_DOMAIN = "com.microsoft.nchwc"
LAYOUT_FREE_UNARY = frozenset({"Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Identity", "Neg"})
LAYOUT_FREE_BINARY = frozenset({"Add", "Mul", "Sub", "Div"})
# Name prefix of Reshape nodes whose emitter guarantees a view in both layouts: only the batch and
# channel axes are merged or split (channel counts multiples of the block), H and W are kept.
BLOCKED_VIEW = "odexport_blocked_view/"


def _int_attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _reorder_output_channels(node, block: int) -> int | None:
    """Channels of a ``ReorderOutput`` whose blocked input has no padding, else ``None``."""
    if node.domain != NCHWC_DOMAIN or node.op_type != "ReorderOutput" or _int_attr(node, "channels_last", 0):
        return None
    channels = _int_attr(node, "channels", 0)
    return channels if channels > 0 and channels % block == 0 else None


def _is_reorder_input(node) -> bool:
    return node.domain == NCHWC_DOMAIN and node.op_type == "ReorderInput" and not _int_attr(node, "channels_last", 0)


def _static_shapes(graph) -> dict[str, list[int]]:
    """Shapes known without inference: initializers, and outputs of ``Reshape`` to a constant
    shape without 0 / -1 entries (the way attention vectors are shaped for broadcasting)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    shapes = {name: [int(d) for d in t.dims] for name, t in inits.items()}
    for node in graph.node:
        if node.op_type == "Reshape" and node.domain in ("", "ai.onnx") and len(node.input) > 1 and node.input[1] in inits:
            target = numpy_helper.to_array(inits[node.input[1]]).astype(np.int64).tolist()
            if all(d > 0 for d in target):
                shapes[node.output[0]] = target
    return shapes


def _operand_kind(name: str, channels: int, blocked: dict, shapes: dict) -> str | None:
    """``'blocked'``, ``'scalar'``, ``'channel'`` (one value per channel and sample,
    ``(N|1, C, 1, 1)`` or ``(C, 1, 1)``) or ``None``."""
    if name in blocked:
        return "blocked" if blocked[name] == channels else None
    shape = shapes.get(name)
    if shape is None or any(d is None for d in shape):
        return None
    if int(np.prod(shape)) == 1 and len(shape) <= 4:
        return "scalar"
    if len(shape) in (3, 4) and shape[-3] == channels and shape[-2:] == [1, 1]:
        return "channel"
    return None


def _same_full_shape(names, shapes) -> bool:
    """Two blocked operands are combined only when both have the same fully known shape: in the
    blocked order a broadcast over H, W (an ``(N, C, 1, 1)`` blocked tensor) would mix channels."""
    known = [shapes.get(n) for n in names]
    return all(k is not None and len(k) == 4 and None not in k for k in known) and all(k == known[0] for k in known)


def bypass_pooled_reorders(model, block: int) -> int:
    """Drop the ``ReorderOutput`` after a blocked global pooling (``(N, C, 1, 1)``, ``C`` a multiple
    of the block): with one pixel the blocked order ``(n, c // b, c % b)`` is the NCHW order, so the
    reorder is a copy.  Its consumers read the pooled tensor directly.  Returns the number dropped."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    rename, keep = {}, []
    for node in graph.node:
        source = producers.get(node.input[0]) if node.input else None
        if (_reorder_output_channels(node, block) is not None and source is not None and source.domain == NCHWC_DOMAIN
                and source.op_type in ("GlobalAveragePool", "GlobalMaxPool") and node.output[0] not in outputs):
            rename[node.output[0]] = node.input[0]
            continue
        keep.append(node)
    if not rename:
        return 0
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


def propagate_blocked_layout(model, block: int, shapes: dict | None = None) -> int:
    """Rewrite ``model``'s main graph in place (see the module docstring); returns the number of
    reorder nodes removed (0 when nothing was worth rewriting).

    ``shapes``: known shapes of the NCHW values by name (e.g. from onnx shape inference of the
    model before onnxruntime optimised it -- the NCHW values keep their names); needed to combine
    two blocked operands, never guessed."""
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes = list(graph.node)
    shapes = {**(shapes or {}), **_static_shapes(graph)}
    consumers = defaultdict(list)
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers[name].append(index)
    graph_outputs = {o.name for o in graph.output}

    # Pass 1: which NCHW tensors could be carried blocked (tensor -> channels), and the regions.
    blocked: dict[str, int] = {}
    parent: dict[str, str] = {}

    def find(name):
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    def union(a, b):
        parent[find(a)] = find(b)

    sources, converted = {}, {}  # tensor -> ReorderOutput index; node index -> channels
    for index, node in enumerate(nodes):
        channels = _reorder_output_channels(node, block)
        if channels is not None:
            blocked[node.output[0]] = channels
            parent[node.output[0]] = node.output[0]
            sources[node.output[0]] = index
            continue
        if node.domain not in ("", "ai.onnx") or not node.input or not node.output:
            continue
        activations = [n for n in node.input if n in blocked]
        if not activations:
            continue
        channels = blocked[activations[0]]
        op = node.op_type
        if op in LAYOUT_FREE_UNARY:
            ok = node.input[0] in blocked
        elif op in LAYOUT_FREE_BINARY:
            kinds = [_operand_kind(n, channels, blocked, shapes) for n in node.input]
            ok = len(node.input) == 2 and all(kinds) and (kinds.count("blocked") < 2 or _same_full_shape(node.input, shapes))
        elif op == "Reshape" and node.name.startswith(BLOCKED_VIEW):
            target = shapes.get(node.output[0])
            ok = node.input[0] in blocked and target is not None and len(target) == 4 and target[1] % block == 0
            if ok:
                channels = target[1]
        elif op == "Split":
            ok = _int_attr(node, "axis", 0) == 0 and node.input[0] in blocked
        elif op == "Concat":
            ok = _int_attr(node, "axis", 0) == 0 and all(blocked.get(n) == channels for n in node.input)
        else:
            ok = False
        if not ok:
            continue
        converted[index] = channels
        for out in node.output:
            blocked[out] = channels
            parent[out] = out
        for out in node.output:
            for name in activations:
                union(out, name)

    # Pass 2: per region, reorders before (sources + sinks) and after (tensors still needed NCHW).
    sinks = {}  # ReorderInput index -> tensor it reads
    for index, node in enumerate(nodes):
        if _is_reorder_input(node) and node.input[0] in blocked:
            sinks[index] = node.input[0]
    before, after = defaultdict(int), defaultdict(int)
    for tensor in sources:
        before[find(tensor)] += 1
    for tensor in sinks.values():
        before[find(tensor)] += 1
    needs_nchw = set()
    for tensor in blocked:
        users = consumers.get(tensor, [])
        if tensor in graph_outputs or any(u not in converted and u not in sinks for u in users):
            needs_nchw.add(tensor)
            after[find(tensor)] += 1
    chosen = {region for region in before if after[region] < before[region]}
    if not chosen:
        return 0

    # Pass 3: emit blocked twins for the chosen regions.
    twin = {t: nodes[i].input[0] for t, i in sources.items() if find(t) in chosen}
    extra_inits = []
    const_names = {}

    def const(values) -> str:
        key = tuple(values)
        if key not in const_names:
            name = f"odexport_nchwc_shape_{len(const_names)}"
            extra_inits.append(numpy_helper.from_array(np.array(values, np.int64), name))
            const_names[key] = name
        return const_names[key]

    replaced = {}  # original node index -> nodes computing the blocked twins of its outputs
    for index in sorted(converted):
        node = nodes[index]
        if find(node.output[0]) not in chosen:
            continue
        channels = converted[index]
        tag = f"{node.output[0]}_nchwc"
        kinds = [_operand_kind(n, channels, blocked, shapes) for n in node.input] if node.op_type in LAYOUT_FREE_BINARY else None
        emitted = []
        if kinds and "channel" in kinds:
            five = const([0, channels // block, 0, 0, block])
            inputs = []
            for k, (name, kind) in enumerate(zip(node.input, kinds)):
                if kind == "blocked":
                    emitted.append(helper.make_node("Reshape", [twin[name], five], [f"{tag}_in{k}"]))
                elif kind == "channel":
                    samples = shapes[name][0] if len(shapes[name]) == 4 else 1
                    emitted.append(helper.make_node("Reshape", [name, const([samples, channels // block, 1, 1, block])], [f"{tag}_in{k}"]))
                else:
                    inputs.append(name)
                    continue
                inputs.append(f"{tag}_in{k}")
            emitted.append(helper.make_node(node.op_type, inputs, [f"{tag}_5d"], domain=node.domain))
            emitted.append(helper.make_node("Reshape", [f"{tag}_5d", const([0, channels, 0, 0])], [tag]))
            twin[node.output[0]] = tag
        else:
            copy = helper.make_node(node.op_type, [twin.get(n, n) if n in blocked else n for n in node.input],
                                    [f"{out}_nchwc" for out in node.output], domain=node.domain)
            copy.attribute.extend(node.attribute)
            emitted.append(copy)
            for out in node.output:
                twin[out] = f"{out}_nchwc"
        replaced[index] = emitted

    removed = 0
    rename = {}
    for index, tensor in sinks.items():
        if find(tensor) in chosen:
            rename[nodes[index].output[0]] = twin[tensor]
    out_nodes = []
    for index, node in enumerate(nodes):
        if index in sinks and find(sinks[index]) in chosen:
            removed += 1
            continue
        if index in replaced:
            out_nodes.extend(replaced[index])
            for out in node.output:
                if out in needs_nchw:
                    out_nodes.append(helper.make_node("ReorderOutput", [twin[out]], [out], domain=NCHWC_DOMAIN,
                                                      channels=blocked[out], channels_last=0))
                    removed -= 1
            continue
        if index in sources.values() and find(node.output[0]) in chosen and node.output[0] not in needs_nchw:
            removed += 1
            continue
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        out_nodes.append(node)
    del graph.node[:]
    graph.node.extend(out_nodes)
    graph.initializer.extend(extra_inits)
    return removed
