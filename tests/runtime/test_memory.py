"""The memory floor behind refusing batches that cannot fit (odexport._memory).

Expected byte counts are worked out by hand from the tensors' shapes, not read from the code.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
import torch
from torch import nn

from odexport.errors import InputError
from odexport import _memory as memory
from odexport._memory import available_memory, onnx_step_bytes, require_batch_fits, require_outputs_fit, require_samples_fit
from odexport.runtime.onnxruntime_runner import OrtRunner
from odexport.runtime.torch_runner import TorchRunner

FLOAT = 4


def _conv_relu_onnx(batch="batch") -> onnx.ModelProto:
    """input (N, 3, 8, 8) -> Conv 3->16, 3x3, pad 1 -> Relu -> output (N, 16, 8, 8)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, (16, 3, 3, 3), np.zeros(16 * 27, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["conv"], ["output"])],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, (batch, 3, 8, 8))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, (batch, 16, 8, 8))], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_step_is_the_largest_node_per_sample(tmp_path):
    # Conv: in 3*8*8 + out 16*8*8 floats; Relu: 16*8*8 in + 16*8*8 out (the weight has no batch axis)
    conv, relu = (3 * 64 + 16 * 64) * FLOAT, (16 * 64 * 2) * FLOAT
    model = _conv_relu_onnx()
    assert onnx_step_bytes(model) == max(conv, relu) == 8192
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert onnx_step_bytes(path) == 8192
    with OrtRunner(path) as runner:
        assert runner.step_bytes((3, 8, 8)) == 8192


def test_onnx_step_counts_nodes_inside_if_branches():
    inner = _conv_relu_onnx().graph
    branch = helper.make_graph(list(inner.node), "b", [], [helper.make_tensor_value_info("output", TensorProto.FLOAT, ("batch", 16, 8, 8))],
                               list(inner.initializer))
    other = helper.make_graph([helper.make_node("Identity", ["input"], ["same"])], "o", [],
                              [helper.make_tensor_value_info("same", TensorProto.FLOAT, ("batch", 3, 8, 8))])
    graph = helper.make_graph(
        [helper.make_node("Shape", ["input"], ["shape"]), helper.make_node("ReduceSum", ["shape"], ["total"], keepdims=0),
         helper.make_node("Cast", ["total"], ["flag"], to=TensorProto.BOOL),
         helper.make_node("If", ["flag"], ["output"], then_branch=branch, else_branch=other)],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ("batch", 3, 8, 8))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert onnx_step_bytes(model) == 8192


def test_a_fixed_batch_graph_or_an_unreadable_one_gives_no_step():
    assert onnx_step_bytes(_conv_relu_onnx(batch=2)) == 0
    assert onnx_step_bytes(b"not a model") == 0


@pytest.mark.parametrize("inplace, expected", [(False, (16 * 64 * 2) * FLOAT), (True, (3 * 64 + 16 * 64) * FLOAT)])
def test_torch_step_is_the_largest_module_per_sample(inplace, expected):
    # the Sequential and the Conv each hold 3*8*8 in + 16*8*8 out; a ReLU 16*8*8 in + out, or once in place
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=inplace))
    runner = TorchRunner(model, input_shape=(3, 8, 8))
    assert runner.step_bytes((3, 8, 8)) == expected
    assert runner.step_bytes((3, 8, 8)) == expected  # cached, unchanged


def test_torch_step_in_float64_counts_eight_bytes():
    runner = TorchRunner(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1)), dtype="float64")
    assert runner.step_bytes((3, 8, 8)) == (3 * 64 + 16 * 64) * 8


def test_a_batch_that_cannot_fit_is_refused_with_the_largest_that_can():
    step = 8192  # per sample
    with pytest.raises(InputError) as caught:
        require_batch_fits(1000, (3, 8, 8), [lambda shape: step], available=100 * step)
    assert "a batch of 1000 samples of shape 3x8x8 needs at least" in caught.value.message
    assert caught.value.hint == "use --batch-sizes of at most 100"
    require_batch_fits(100, (3, 8, 8), [lambda shape: step], available=100 * step)  # exactly fits


def test_what_the_caller_holds_counts_and_is_named():
    per_sample = 3 * 64 * FLOAT  # drawn=False: one float32 copy of each batch
    with pytest.raises(InputError) as caught:
        require_batch_fits(10, (3, 8, 8), [], held=10 * per_sample, drawn=False, available=15 * per_sample,
                           advice="split into {most}")
    assert "of it the samples themselves" in caught.value.message and caught.value.hint == "split into 5"
    with pytest.raises(InputError, match="free memory"):
        require_batch_fits(10, (3, 8, 8), [], held=20 * per_sample, drawn=False, available=15 * per_sample)


def test_a_random_draw_counts_float64_and_float32():
    per_sample = 3 * 64 * (8 + 4)
    with pytest.raises(InputError) as caught:
        require_batch_fits(11, (3, 8, 8), [], available=10 * per_sample)
    assert caught.value.hint == "use --batch-sizes of at most 10"
    with pytest.raises(InputError) as caught:
        require_samples_fit(11, (3, 8, 8), available=10 * per_sample)
    assert caught.value.hint == "use --samples of at most 10"
    require_samples_fit(10, (3, 8, 8), available=10 * per_sample)


def test_models_are_not_analysed_far_from_the_limit():
    def must_not_run(_shape):
        raise AssertionError("analysed a batch far below the limit")

    require_batch_fits(8, (3, 224, 224), [must_not_run], available=64 * 2**30)


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="reads /proc/meminfo (Linux)")
def test_available_memory_is_at_most_the_machines():
    with open("/proc/meminfo") as handle:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle if line.split()[-1:] == ["kB"]}
    free = available_memory()
    assert free is not None and 0 < free <= fields["MemTotal"] + fields.get("SwapTotal", 0)


def test_unknown_memory_refuses_nothing(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: None)
    require_batch_fits(10**12, (3, 224, 224), [])
    require_samples_fit(10**12, (3, 224, 224))


def test_outputs_kept_for_the_report_count_every_copy():
    # 100 samples of 1 MiB outputs, the reference's and 2 candidates x 3 batch sizes: 7 copies on top of 10 MiB of samples
    mib = 2**20
    with pytest.raises(InputError) as caught:
        require_outputs_fit(100, mib, 7, held=10 * mib, available=700 * mib)
    assert "comparing 100 samples keeps 7 copies of their outputs (100 MiB each" in caught.value.message
    assert caught.value.hint == "use --samples of at most 98"  # (700 - 10) // 7
    require_outputs_fit(98, mib, 7, held=10 * mib, available=700 * mib)


def test_check_refuses_outputs_it_could_not_keep(monkeypatch):
    from odexport.pipeline import check_parity

    # a dense head: 64x16x16 floats out per 3x16x16 in; 8 samples x (reference + 1 candidate x 3 batch sizes) of 64 kB
    # outputs is 2 MiB, while every batch (at most 8 x (3 kB in + 64 kB out) on top of the samples) fits in 1 MiB
    model = nn.Conv2d(3, 64, 1).eval()
    monkeypatch.setattr(memory, "available_memory", lambda: 2**20)
    with pytest.raises(InputError, match="comparing 8 samples keeps 4 copies of their outputs") as caught:
        check_parity(model, [model], samples=8, batch_sizes=(1, 2, 8), input_shape=(3, 16, 16), noise_margin=0)
    assert caught.value.hint.startswith("use --samples of at most")


class _WeightPassedOn(nn.Module):
    """A layer that hands its (large) weight to a submodule, as functional designs do."""

    class Apply(nn.Module):
        def forward(self, x, weight):
            return torch.nn.functional.conv2d(x, weight, padding=1)

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(256, 3, 3, 3))
        self.apply_weight = self.Apply()

    def forward(self, x):
        return self.apply_weight(x, self.weight)


def test_weights_handed_to_a_submodule_are_not_per_sample():
    # in 3*8*8 + out 256*8*8 floats per sample; the 256*3*3*3 weight is the model's, whatever the batch
    runner = TorchRunner(_WeightPassedOn().eval(), input_shape=(3, 8, 8))
    assert runner.step_bytes((3, 8, 8)) == (3 * 64 + 256 * 64) * FLOAT


def test_stored_arrays_are_read_from_headers_and_a_truncated_file_is_left_to_the_load(tmp_path):
    from odexport._memory import stored_arrays

    np.save(tmp_path / "x.npy", np.zeros((5, 3, 4, 4), np.float64))
    np.savez_compressed(tmp_path / "d.npz", x=np.zeros((7, 3, 4, 4), np.uint8), y=np.arange(7))
    assert stored_arrays(tmp_path / "x.npy") == [((5, 3, 4, 4), np.dtype(np.float64))]
    assert sorted(stored_arrays(tmp_path / "d.npz"), key=str) == sorted([((7, 3, 4, 4), np.dtype(np.uint8)), ((7,), np.dtype(np.int64))], key=str)
    whole = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(whole[: len(whole) - 8])
    assert stored_arrays(tmp_path / "cut.npy") is None
    assert stored_arrays(tmp_path / "missing.pt") is None


def test_stored_tensors_are_sized_without_reading_them_and_a_shared_storage_counts_once(tmp_path):
    import torch

    from odexport._memory import stored_arrays

    batch = torch.zeros(5, 3, 4, 4, dtype=torch.float64)
    torch.save({"input": batch, "x": batch, "first": batch[:2], "y": torch.arange(5)}, tmp_path / "d.pt")
    assert sorted(stored_arrays(tmp_path / "d.pt"), key=str) == sorted([((5, 3, 4, 4), np.dtype(np.float64)), ((5,), np.dtype(np.int64))], key=str)
    torch.save(batch, tmp_path / "x.pth")
    assert stored_arrays(tmp_path / "x.pth") == [((5, 3, 4, 4), np.dtype(np.float64))]
    # what cannot be sized without loading it is left to the load and its own message
    whole = (tmp_path / "x.pth").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    torch.save(batch, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save([batch], tmp_path / "list.pt")
    torch.save(batch.to(torch.bfloat16), tmp_path / "bf16.pt")
    for name in ("cut.pt", "legacy.pt", "list.pt", "bf16.pt"):
        assert stored_arrays(tmp_path / name) is None, name


def test_a_file_larger_than_the_memory_left_is_refused_before_loading(tmp_path):
    from odexport._memory import require_file_fits

    # 10 samples of 3x4x4 float64 (3840 bytes) and their float32 copy (1920 bytes): 5760 bytes to load
    np.save(tmp_path / "x.npy", np.zeros((10, 3, 4, 4), np.float64))
    with pytest.raises(InputError) as caught:
        require_file_fits(tmp_path / "x.npy", advice="at most {most}", available=5000)
    assert "holds 4 KiB of arrays and a float32 copy of its float64 input (10 samples)" in caught.value.message
    assert caught.value.hint == "at most 8"  # 5000 // 576 bytes per sample
    require_file_fits(tmp_path / "x.npy", advice="at most {most}", available=5760)


def test_meminfo_fields_are_read_in_bytes(tmp_path):
    from odexport._memory import memory_facts

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684084 kB\nMemFree:        19000000 kB\nMemAvailable:   20000000 kB\n"
                       "SwapTotal:       8000000 kB\nSwapFree:        6000000 kB\n")
    facts = memory_facts(str(meminfo))
    assert facts["meminfo_available"] == 20000000 * 1024 and facts["swap_free"] == 6000000 * 1024
