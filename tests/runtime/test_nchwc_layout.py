"""``propagate_blocked_layout``: layout-free nodes run on onnxruntime's blocked tensors.

The reference is the same graph as onnxruntime optimises it without the pass (reorders in
place), and a float64 numpy evaluation of the graph's math; the pass must give bit-identical
outputs with fewer reorders, and leave alone what it cannot prove layout-free.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from odexport.runtime.nchwc_layout import NCHWC_DOMAIN, propagate_blocked_layout
from odexport.runtime.ort_optimize import _shapes, nchwc_block_size, ort_optimized
from odexport.runtime.ort_optimize import HAND_BUILT_IR_VERSION

BLOCK = nchwc_block_size()
pytestmark = pytest.mark.skipif(BLOCK is None, reason="this onnxruntime build/CPU has no NCHWc convolutions")

CHANNELS, SIZE, BATCH = 32, 10, 2


def _weights(seed):
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((CHANNELS, CHANNELS, 3, 3)).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((CHANNELS, CHANNELS, 3, 3)).astype(np.float32) * 0.1,
        "scale": rng.random((1, CHANNELS, 1, 1)).astype(np.float32) + 0.5,
        "shift": rng.standard_normal((1, CHANNELS, 1, 1)).astype(np.float32),
    }


def _graph(channel_operand: str = "scale"):
    """conv -> relu -> per-sample split -> (* per-channel scale, + shift) -> concat -> + residual
    -> relu -> conv: every node between the convs is layout-free but not one onnxruntime's own
    NCHWc transform keeps blocked (Split/Concat on the batch, per-channel broadcasts)."""
    w = _weights(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Split", ["r1", "halves"], ["s0", "s1"], axis=0),
        helper.make_node("Mul", ["s0", channel_operand], ["m0"]),
        helper.make_node("Add", ["m0", "shift"], ["a0"]),
        helper.make_node("Mul", ["s1", channel_operand], ["m1"]),
        helper.make_node("Concat", ["a0", "m1"], ["cat"], axis=0),
        helper.make_node("Add", ["cat", "r1"], ["res"]),
        helper.make_node("Relu", ["res"], ["r2"]),
        helper.make_node("Conv", ["r2", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()] + [numpy_helper.from_array(np.array([1, 1], np.int64), "halves")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, CHANNELS, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=HAND_BUILT_IR_VERSION), w


def _float64_reference(x, w):
    import torch

    t = {k: torch.from_numpy(v).double() for k, v in w.items()}
    r1 = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x).double(), t["w1"], padding=1))
    s0, s1 = r1[:1], r1[1:]
    cat = torch.cat([s0 * t["scale"] + t["shift"], s1 * t["scale"]])
    return torch.nn.functional.conv2d(torch.relu(cat + r1), t["w2"], padding=1).numpy()


def _run(model, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the graph as given
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _reorders(model):
    return sum(1 for n in model.graph.node if n.domain == NCHWC_DOMAIN and n.op_type.startswith("Reorder"))


def test_region_runs_blocked_with_identical_results_and_fewer_reorders():
    model, w = _graph()
    optimized = ort_optimized(model, threads=1)
    x = np.random.default_rng(1).standard_normal((BATCH, CHANNELS, SIZE, SIZE)).astype(np.float32)
    before = _run(optimized, x)
    reorders_before = _reorders(optimized)
    assert reorders_before >= 2, "onnxruntime kept this graph blocked by itself: the test no longer exercises the pass"

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(optimized)
    removed = propagate_blocked_layout(rewritten, BLOCK, shapes=_shapes(model))
    onnx.checker.check_model(rewritten)
    after = _run(rewritten, x)

    assert removed == reorders_before - _reorders(rewritten) > 0
    assert _reorders(rewritten) < reorders_before
    np.testing.assert_array_equal(after, before)  # the same arithmetic, only the memory order differs
    reference = _float64_reference(x, w)
    assert np.abs(after - reference).max() <= 1e-4 * np.abs(reference).max()


def test_operand_of_unknown_shape_keeps_the_region_as_it_was():
    """A runtime operand whose shape the pass cannot see may broadcast over H or W: not provably
    layout-free, so nothing that depends on it changes and the results stay exact."""
    model, w = _graph(channel_operand="runtime_scale")
    model.graph.input.append(helper.make_tensor_value_info("runtime_scale", TensorProto.FLOAT, None))
    optimized = ort_optimized(model, threads=1)
    feeds = {"x": np.random.default_rng(2).standard_normal((BATCH, CHANNELS, SIZE, SIZE)).astype(np.float32), "runtime_scale": w["scale"]}

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(optimized)
    propagate_blocked_layout(rewritten, BLOCK, shapes=_shapes(model))
    kinds = {n.op_type for n in rewritten.graph.node if n.input and "runtime_scale" in n.input}
    assert kinds == {"Mul"}

    import onnxruntime as ort

    def run(m):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    np.testing.assert_array_equal(run(rewritten), run(optimized))
    # the Muls by the unknown-shape operand still read NCHW tensors (produced by a ReorderOutput or a Split of one)
    producers = {o: n for n in rewritten.graph.node for o in n.output}
    for node in rewritten.graph.node:
        if node.op_type == "Mul" and "runtime_scale" in node.input:
            source = producers[node.input[0]]
            assert source.op_type in ("ReorderOutput", "Split")
            if source.op_type == "Split":
                assert producers[source.input[0]].op_type == "ReorderOutput"


def test_blocked_operands_of_different_shapes_are_not_combined():
    """Squeeze-and-excitation style ``x * sigmoid(conv(mean(x)))``: both operands come out of NCHWc
    nodes, but the (N, C, 1, 1) one broadcasts over H, W, which the blocked order cannot express."""
    rng = np.random.default_rng(3)
    w = {"w1": rng.standard_normal((CHANNELS, CHANNELS, 3, 3)).astype(np.float32) * 0.1,
         "se": rng.standard_normal((CHANNELS, CHANNELS, 1, 1)).astype(np.float32) * 0.1,
         "w2": rng.standard_normal((CHANNELS, CHANNELS, 3, 3)).astype(np.float32) * 0.1}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c1"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "se"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["gate"]),
        helper.make_node("Mul", ["c1", "gate"], ["gated"]),
        helper.make_node("Split", ["gated", "halves"], ["s0", "s1"], axis=0),
        helper.make_node("Concat", ["s1", "s0"], ["swapped"], axis=0),
        helper.make_node("Conv", ["swapped", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()] + [numpy_helper.from_array(np.array([1, 1], np.int64), "halves")]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, CHANNELS, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=HAND_BUILT_IR_VERSION)
    optimized = ort_optimized(model, threads=1)
    x = rng.standard_normal((BATCH, CHANNELS, SIZE, SIZE)).astype(np.float32)
    for shapes in (None, _shapes(model)):
        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(optimized)
        propagate_blocked_layout(rewritten, BLOCK, shapes=shapes)
        producers = {o: n for n in rewritten.graph.node for o in n.output}
        gate_mul = [n for n in rewritten.graph.node if n.op_type == "Mul" and any("gate" in i for i in n.input)]
        assert gate_mul and all(producers[i].op_type != "Reshape" for n in gate_mul for i in n.input if i in producers)
        np.testing.assert_array_equal(_run(rewritten, x), _run(optimized, x))


def test_reorder_after_global_pooling_is_dropped_with_identical_results():
    """(N, C, 1, 1) has the same memory order blocked and NCHW: the pooled vector feeds the
    classifier without a reorder."""
    from odexport.runtime.nchwc_layout import bypass_pooled_reorders

    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((CHANNELS, CHANNELS, 3, 3)).astype(np.float32) * 0.1, "w"),
             numpy_helper.from_array(rng.standard_normal((5, CHANNELS)).astype(np.float32), "fc")]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, CHANNELS, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    optimized = ort_optimized(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=HAND_BUILT_IR_VERSION), threads=1)
    assert _reorders(optimized) >= 2  # ReorderInput before the conv, ReorderOutput after the pooling
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(optimized)
    assert bypass_pooled_reorders(rewritten, BLOCK) == 1
    assert _reorders(rewritten) == _reorders(optimized) - 1
    x = rng.standard_normal((BATCH, CHANNELS, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x), _run(optimized, x))
