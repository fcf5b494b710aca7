"""Exact-size batching, sample files, and interleaved timing."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from odexport.errors import InputError
from odexport.runtime import InferenceError
from odexport.runtime.batching import load_samples, random_samples, run_batched
from odexport.runtime.onnxruntime_runner import OrtRunner
from odexport.runtime.timing import block_latencies, interleaved_latencies
from odexport.runtime.torch_runner import TorchRunner


class BatchRecorder(nn.Module):
    """Identity-like network that remembers every batch size it saw."""

    def __init__(self):
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        return x.flatten(1) * 2


def test_run_batched_uses_exact_batches_and_keeps_sample_order():
    recorder = BatchRecorder()
    runner = TorchRunner(recorder, input_shape=(1, 2, 2))
    runner.model = recorder  # observe the calls on the module that actually runs
    x = np.arange(5 * 4, dtype=np.float32).reshape(5, 1, 2, 2)
    out = run_batched(runner, x, 2)["output"]
    assert recorder.seen == [2, 2, 2], "the last chunk must be filled up to the batch size"
    np.testing.assert_array_equal(out, x.reshape(5, 4) * 2)
    recorder.seen.clear()
    out = run_batched(runner, x, 8)["output"]
    assert recorder.seen == [8], "fewer samples than the batch: samples are repeated to fill it"
    np.testing.assert_array_equal(out, x.reshape(5, 4) * 2)


def test_run_batched_reports_the_rejected_batch(tiny_onnx_fixed):
    runner = OrtRunner(tiny_onnx_fixed)
    x = random_samples(4, (3, 16, 16)).x
    assert run_batched(runner, x, 2)["output"].shape == (4, 10)
    with pytest.raises(InferenceError, match="expects 2"):
        run_batched(runner, x, 1)


def test_random_samples_are_seeded():
    a, b, c = random_samples(3, (3, 4, 4), 7), random_samples(3, (3, 4, 4), 7), random_samples(3, (3, 4, 4), 8)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert a.x.dtype == np.float32 and a.labels is None and a.describe()["seed"] == 7


def test_load_samples_npz_with_labels_and_npy(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=np.array([0, 1, 2, 1]))
    data = load_samples(tmp_path / "data.npz", (3, 8, 8))
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.labels, [0, 1, 2, 1])
    np.savez(tmp_path / "onehot.npz", x=x, labels=np.eye(3)[[0, 1, 2, 1]].astype(np.int64))
    np.testing.assert_array_equal(load_samples(tmp_path / "onehot.npz").labels, [0, 1, 2, 1])
    np.save(tmp_path / "one.npy", x[0])
    assert load_samples(tmp_path / "one.npy", (3, 8, 8)).x.shape == (1, 3, 8, 8)


def test_every_input_format_reads_the_same_samples(tmp_path):
    """check --inputs, reparam --calibration and run --input read one set of formats: .npy, .npz and
    .pt (a tensor, or a dict of tensors with the labels beside), an unnamed single array included."""
    import torch

    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    y = np.array([2, 0, 1])
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x)  # saved as arr_0: the only array is the input
    np.savez(tmp_path / "c.npz", images=x, labels=y)
    torch.save(torch.from_numpy(x), tmp_path / "d.pt")
    torch.save({"input": torch.from_numpy(x), "targets": torch.from_numpy(y)}, tmp_path / "e.pth")
    for name, labelled in (("a.npy", False), ("b.npz", False), ("c.npz", True), ("d.pt", False), ("e.pth", True)):
        data = load_samples(tmp_path / name, (3, 8, 8))
        np.testing.assert_array_equal(data.x, x, err_msg=name)
        if labelled:
            np.testing.assert_array_equal(data.labels, y, err_msg=name)
        else:
            assert data.labels is None, name
    np.savez(tmp_path / "both.npz", x=x, input=x[:1])  # x first, as docs/check.md says
    assert len(load_samples(tmp_path / "both.npz", (3, 8, 8)).x) == 3
    np.savez(tmp_path / "y_images.npz", y=x)  # an image batch named y is no set of labels
    np.testing.assert_array_equal(load_samples(tmp_path / "y_images.npz", (3, 8, 8)).x, x)
    torch.save({"x": torch.from_numpy(x), "target": torch.tensor([2.0, 0.0, 1.0], requires_grad=True).long()}, tmp_path / "t.pt")
    np.testing.assert_array_equal(load_samples(tmp_path / "t.pt", (3, 8, 8)).labels, y)
    torch.save({"x": torch.from_numpy(x), "y": torch.tensor([2.0, 0.0, 1.0], requires_grad=True)}, tmp_path / "grad.pt")
    with pytest.raises(InputError, match="not integers"):  # read (labels saved from a training loop), then judged
        load_samples(tmp_path / "grad.pt", (3, 8, 8))
    # read by what the file holds, not its suffix: a torch.save named .npy read as an array of file
    # names ("dtype <U24"), an np.savez named .npy as "dtype <U1", an np.save named .pt as a pickle
    for source, misnamed in (("d.pt", "d_torch.npy"), ("c.npz", "c_npz.npy"), ("a.npy", "a_npy.pt"), ("e.pth", "e_torch.npz")):
        (tmp_path / misnamed).write_bytes((tmp_path / source).read_bytes())
        np.testing.assert_array_equal(load_samples(tmp_path / misnamed, (3, 8, 8)).x, x, err_msg=misnamed)
    torch.save({"input": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(InputError, match=r"the entry of .*list.pt read as the input \('input'\) is a list, not a tensor"):
        load_samples(tmp_path / "list.pt")


def test_labels_of_the_wrong_type_or_count_are_named_as_such(tmp_path):
    x = np.zeros((4, 3, 8, 8), np.float32)
    np.savez(tmp_path / "float.npz", x=x, y=np.array([0.0, 1.0, 2.0, 1.0], np.float32))
    with pytest.raises(InputError) as caught:
        load_samples(tmp_path / "float.npz", (3, 8, 8))
    assert caught.value.message.endswith("have dtype float32, not integers") and "astype(np.int64)" in caught.value.hint
    np.savez(tmp_path / "short.npz", x=x, y=np.array([0, 1, 2]))
    with pytest.raises(InputError, match=r"have shape \(3,\) for 4 samples"):
        load_samples(tmp_path / "short.npz", (3, 8, 8))


def test_a_negative_seed_is_an_input_error():
    """numpy's generator takes no negative seed: one line naming the option, not a ValueError."""
    with pytest.raises(InputError, match="--seed -1 is negative"):
        random_samples(2, (3, 8, 8), seed=-1)


def test_load_samples_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_samples(tmp_path / "none.npz")
    np.savez(tmp_path / "nox.npz", images_wrong=np.zeros((1, 3, 8, 8)), other=np.zeros((1, 3, 8, 8)))
    with pytest.raises(InputError, match=r"several arrays \(images_wrong, other\) and none is named x or input"):
        load_samples(tmp_path / "nox.npz")
    np.savez(tmp_path / "onlyy.npz", y=np.zeros(2, np.int64))
    with pytest.raises(InputError, match=r"holds no input array \(only labels 'y'\)"):
        load_samples(tmp_path / "onlyy.npz")
    np.save(tmp_path / "shape.npy", np.zeros((2, 3, 9, 9), np.float32))
    with pytest.raises(InputError, match="sample shape"):
        load_samples(tmp_path / "shape.npy", (3, 8, 8))
    np.save(tmp_path / "nhwc.npy", np.zeros((2, 8, 10, 3), np.float32))  # images as PIL/OpenCV hold them
    with pytest.raises(InputError, match=r"channels last, the model expects \(3, 8, 10\)") as info:
        load_samples(tmp_path / "nhwc.npy", (3, 8, 10))
    assert "x.transpose(0, 3, 1, 2)" in info.value.hint
    np.savez(tmp_path / "badlabels.npz", x=np.zeros((2, 3, 8, 8), np.float32), y=np.zeros(3, np.int64))
    with pytest.raises(InputError, match="labels"):
        load_samples(tmp_path / "badlabels.npz")
    (tmp_path / "text.txt").write_text("1 2 3")
    with pytest.raises(InputError, match=r"is not .npy, .npz or .pt"):
        load_samples(tmp_path / "text.txt")
    # empty, cut and folder-shaped files: one line each (EOFError and BadZipFile had escaped as bugs)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        load_samples(tmp_path / "empty.npz")
    np.savez(tmp_path / "whole.npz", x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)))
    data = (tmp_path / "whole.npz").read_bytes()
    for cut in (3000, len(data) - 30):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(InputError, match="damaged or incomplete"):
            load_samples(tmp_path / "cut.npz")
    np.save(tmp_path / "whole.npy", np.zeros((4, 3, 8, 8), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "whole.npy").read_bytes()[:60])
    with pytest.raises(InputError, match="damaged or incomplete"):
        load_samples(tmp_path / "cut.npy")
    (tmp_path / "folder.npy").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        load_samples(tmp_path / "folder.npy")


def _counting_timers(*names):
    """Timers that log their calls and return the call's position (1, 2, ...) as its latency."""
    calls: list[str] = []

    def timer(name):
        def run():
            calls.append(name)
            return float(len(calls))
        return run

    return calls, {name: timer(name) for name in names}


def test_float64_inputs_beyond_float32_are_named_as_such(tmp_path):
    """A finite float64 1e39 is inf once cast to the float32 the models compute in: named as out of
    range (it read "NaN/inf values", and numpy warned about the cast)."""
    import warnings

    x = np.zeros((3, 1, 2, 2))
    x[2, 0, 1, 1] = 1e39
    np.save(tmp_path / "big.npy", x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"hold 1 values beyond float32's range .*the first in sample 2"):
            load_samples(tmp_path / "big.npy")


def test_interleaved_latencies_rotate_and_drop_warmup():
    calls, timers = _counting_timers("a", "b")
    samples = interleaved_latencies(timers, warmup=2, iterations=3)
    assert calls[:4] == ["a", "b", "a", "b"], "warm-up calls every timer"
    assert calls[4:] == ["a", "b", "b", "a", "a", "b"], "the first in a round rotates"
    assert len(samples["a"]) == 3 and len(samples["b"]) == 3
    assert min(samples["a"] + samples["b"]) > 4, "warm-up values are discarded"


def test_block_latencies_alternate_blocks_and_drop_settling_calls():
    calls, timers = _counting_timers("a", "b")
    samples = block_latencies(timers, warmup=1, iterations=5, rounds=2, settle=1, pause=0)
    assert calls[:2] == ["a", "b"], "warm-up calls every timer"
    # blocks of ceil(5 / 2) = 3 kept calls after 1 settling call; b goes first in round 2; the last block holds what is left
    assert calls[2:] == ["a"] * 4 + ["b"] * 4 + ["b"] * 3 + ["a"] * 3
    assert len(samples["a"]) == 5 and len(samples["b"]) == 5
    assert samples["a"] == [4.0, 5.0, 6.0, 15.0, 16.0], "warm-up and settling calls are discarded"
    assert samples["b"] == [8.0, 9.0, 10.0, 12.0, 13.0]


def test_block_latencies_stop_after_max_seconds():
    samples = block_latencies({"x": lambda: 0.1, "y": lambda: 0.2}, warmup=0, iterations=10_000, rounds=1000, settle=0,
                              pause=0, max_seconds=0.0, min_iterations=5)
    assert len(samples["x"]) == 10 and len(samples["y"]) == 10, "one round of 10-call blocks gives both their 5"


def test_interleaved_latencies_stop_after_max_seconds():
    samples = interleaved_latencies({"x": lambda: 0.1}, warmup=0, iterations=10_000, max_seconds=0.0, min_iterations=5)
    assert len(samples["x"]) == 5


def test_real_timers_give_positive_latencies(tiny_net, tiny_onnx):
    x = random_samples(2, (3, 16, 16)).x
    timers = {"torch": TorchRunner(tiny_net, input_shape=(3, 16, 16)).timer(x),
              "ort": OrtRunner(tiny_onnx, threads=1, allow_spinning=False).timer(x)}
    samples = interleaved_latencies(timers, warmup=1, iterations=3)
    assert all(v > 0 for values in samples.values() for v in values)


def test_integer_images_run_unscaled_with_a_note(tmp_path, tiny_net, tiny_onnx):
    """uint8 images (0..255) were cast to float32 silently: a model trained on [0, 1] or normalised
    images saw them 255x too large, and parity against the same inputs still passed."""
    import torch

    from odexport.pipeline import check_parity, run_artifact

    x = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    torch.save(torch.from_numpy(x), tmp_path / "x.pt")
    for name in ("x.npy", "x.npz", "x.pt"):
        samples = load_samples(tmp_path / name, (3, 16, 16))
        np.testing.assert_array_equal(samples.x, x.astype(np.float32))  # the values themselves, unscaled
        assert samples.note and "uint8 (" in samples.note and "scaled to [0, 1]" in samples.note, name
    for quiet in (x.astype(np.float32), (x > 127).astype(np.uint8)):  # floats, and 0/1 masks, need no note
        np.save(tmp_path / "quiet.npy", quiet)
        assert load_samples(tmp_path / "quiet.npy").note is None

    ran = run_artifact(tiny_onnx, tmp_path / "x.pt")
    assert len(ran["input_notes"]) == 1 and "uint8" in ran["input_notes"][0]
    assert run_artifact(tiny_onnx, x.astype(np.float32))["input_notes"] == []
    report = check_parity(tiny_net, [tiny_onnx], inputs=tmp_path / "x.npy", batch_sizes=(2,))
    assert report.passed and any("uint8" in note for note in report.candidates[0].notes)

    import json

    from typer.testing import CliRunner

    from odexport.cli.app import app

    shown = CliRunner().invoke(app, ["run", tiny_onnx, "--input", str(tmp_path / "x.pt"), "-o", str(tmp_path / "out.npy")])
    assert shown.exit_code == 0 and "note  inputs in " in shown.output and "are uint8 (" in shown.output, shown.output
    data = CliRunner().invoke(app, ["run", tiny_onnx, "--input", str(tmp_path / "x.pt"), "-o", str(tmp_path / "out.npy"), "--json"])
    assert data.exit_code == 0 and "uint8" in json.loads(data.stdout)["input_notes"][0], data.output
