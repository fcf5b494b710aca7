"""``odexport run``: outputs match the model, inputs in every format, and no output file on failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from odexport.cli.app import app
from odexport.models import create_model
from tests.conftest import load_refdata, refdata_path

runner = CliRunner()


def _invoke(*args):
    result = runner.invoke(app, ["run", *args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A kaijieshi7-layout checkpoint saved the way users save it (a bare state_dict) and a batch."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model("dy_resnet_tiny").eval()
    path = root / "dy_tiny.pth"
    torch.save(model.state_dict(), path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    return {"model": model, "path": path, "x": x, "expected": expected, "root": root}


@pytest.mark.parametrize("fmt", ["npy", "npz", "pt"])
def test_run_writes_the_model_output(tiny, tmp_path, fmt):
    source = tmp_path / f"x.{fmt}"
    if fmt == "npy":
        np.save(source, tiny["x"])
    elif fmt == "npz":
        np.savez(source, input=tiny["x"])
    else:
        torch.save(torch.from_numpy(tiny["x"]), source)
    out = tmp_path / "y.npy"
    result = _invoke(str(tiny["path"]), "--input", str(source), "-o", str(out))
    assert result.exit_code == 0, result.output
    y = np.load(out)
    assert y.dtype == np.float32 and y.shape == (2, 10)
    np.testing.assert_allclose(y, tiny["expected"], atol=1e-5, rtol=1e-5)
    assert "dy_resnet_tiny" in result.stdout and "wrote" in result.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_run_json_and_npz_output(tiny, tmp_path):
    source = tmp_path / "x.npy"
    np.save(source, tiny["x"][:1])
    out = tmp_path / "y.npz"
    result = _invoke(str(tiny["path"]), "-i", str(source), "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["arch"] == "dy_resnet_tiny" and data["outputs"] == {"output": [1, 10]} and data["temperature"] == 1.0
    with np.load(out) as saved:
        np.testing.assert_allclose(saved["output"], tiny["expected"][:1], atol=1e-5, rtol=1e-5)


def test_run_reproduces_the_tardelean_reference_checkpoint(tmp_path):
    path = refdata_path("dyconv", "tardelean_Resnet_DY_05_1.pth")
    io = load_refdata("dyconv", "tardelean_Resnet_DY_05.io.pt")
    source = tmp_path / "x.pt"
    torch.save(io["input"], source)
    for temperature, key in ((None, "output_T1"), ("30", "output_T30")):
        out = tmp_path / f"{key}.npy"
        args = [str(path), "--input", str(source), "-o", str(out)] + (["--temperature", temperature] if temperature else [])
        result = _invoke(*args)
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(np.load(out), io[key].numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((2, 32, 32), np.float32), "(rank 3): not one sample of the model's 3 channels"),
        (np.zeros((2, 1, 32, 32), np.float32), "1 channels"),
        (np.zeros((2, 32, 32, 3), np.float32), "32 channels"),  # channels last
        (np.zeros((1, 2, 3, 32, 32), np.float32), "rank 5"),
    ],
)
def test_bad_input_shape_fails_without_writing(tiny, tmp_path, array, message):
    source = tmp_path / "bad.npy"
    np.save(source, array)
    out = tmp_path / "y.npy"
    result = _invoke(str(tiny["path"]), "--input", str(source), "-o", str(out))
    assert result.exit_code == 1 and message in result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")][0].count(" -- ") == 1
    assert not out.exists()


def test_one_sample_without_its_batch_axis_runs_as_a_batch_of_one(tiny, tmp_path):
    """`check --inputs` takes a (C, H, W) sample as a batch of one; `run` refused it (rank 3)."""
    single, batch = tmp_path / "one.npy", tmp_path / "batch.npy"
    np.save(single, tiny["x"][0])
    np.save(batch, tiny["x"][:1])
    for source in (single, batch):
        result = _invoke(str(tiny["path"]), "--input", str(source), "-o", str(tmp_path / f"y_{source.stem}.npy"))
        assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(tmp_path / "y_one.npy"), np.load(tmp_path / "y_batch.npy"))
    assert np.load(tmp_path / "y_one.npy").shape[0] == 1
    np.testing.assert_allclose(np.load(tmp_path / "y_one.npy"), tiny["expected"][:1], rtol=1e-4, atol=1e-5)


def test_failure_keeps_an_existing_output_untouched(tiny, tmp_path):
    out = tmp_path / "y.npy"
    np.save(out, np.arange(3.0))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(tiny["path"].read_bytes()[:2000])
    source = tmp_path / "x.npy"
    np.save(source, tiny["x"])
    result = _invoke(str(broken), "--input", str(source), "-o", str(out))
    assert result.exit_code == 1 and "truncated or corrupted" in result.output
    np.testing.assert_array_equal(np.load(out), np.arange(3.0))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_checkpoint", "does not exist"),
        ("missing_input", "does not exist"),
        ("bad_output_suffix", "must end in .npy or .npz"),
        ("missing_output_folder", "does not exist"),
        ("pickled_input", "cannot read input file"),
        ("bad_temperature", "positive"),
        ("unknown_device", "unsupported device 'tpu' -- use cpu or cuda"),
        ("empty_npz", "holds no arrays"),
        ("input_folder", "is a directory"),
    ],
)
def test_other_errors_exit_1(tiny, tmp_path, case, message):
    source = tmp_path / "x.npy"
    np.save(source, tiny["x"])
    ckpt, out, extra = str(tiny["path"]), tmp_path / "y.npy", []
    if case == "missing_checkpoint":
        ckpt = str(tmp_path / "nope.pth")
    elif case == "missing_input":
        source = tmp_path / "nope.npy"
    elif case == "bad_output_suffix":
        out = tmp_path / "y.txt"
    elif case == "missing_output_folder":
        out = tmp_path / "no" / "y.npy"
    elif case == "pickled_input":
        np.save(source, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "bad_temperature":
        extra = ["--temperature", "0"]
    elif case == "unknown_device":  # torch's own RuntimeError had escaped as an internal error
        extra = ["--device", "tpu"]
    elif case == "empty_npz":
        source = tmp_path / "none.npz"
        np.savez(source)
    elif case == "input_folder":
        source = tmp_path / "batch.npy"
        source.mkdir()
    result = _invoke(ckpt, "--input", str(source), "-o", str(out), *extra)
    assert result.exit_code == 1 and message in result.output, result.output
    assert not out.exists()


def test_load_options_on_an_export_are_refused_not_ignored(tiny, tmp_path):
    """An export computes what it was exported with: `run model.onnx -T 2` had silently given the
    T=1 answer (exit 0); it is refused, naming the options."""
    from odexport.pipeline import onnx_from_model

    export = tmp_path / "tiny.onnx"
    onnx_from_model(tiny["model"], export, input_shape=(3, 32, 32), check=False)
    source = tmp_path / "x.npy"
    np.save(source, tiny["x"])
    result = _invoke(str(export), "--input", str(source), "-o", str(tmp_path / "y.npy"), "-T", "2", "--arch", "dy_resnet_tiny")
    assert result.exit_code == 1 and "--temperature, --arch apply to checkpoints, not to" in result.output, result.output
    assert not (tmp_path / "y.npy").exists()
    plain = _invoke(str(export), "--input", str(source), "-o", str(tmp_path / "y.npy"))
    assert plain.exit_code == 0 and np.allclose(np.load(tmp_path / "y.npy"), tiny["expected"], atol=1e-4)


def test_device_cuda_runs_there_or_exits_3(tiny, tmp_path):
    """--device cuda runs the checkpoint in PyTorch CUDA (float32, TF32 off: the CPU's numbers to
    rounding), or, with no GPU, exits 3 and writes nothing."""
    source, out = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(source, tiny["x"])
    result = _invoke(str(tiny["path"]), "-i", str(source), "-o", str(out), "--device", "cuda")
    if not torch.cuda.is_available():
        assert result.exit_code == 3 and "CUDA" in result.output and not out.exists(), result.output
        return
    assert result.exit_code == 0 and "torch-cuda" in result.output, result.output
    np.testing.assert_allclose(np.load(out), tiny["expected"], rtol=1e-4, atol=1e-5)


def test_an_input_too_large_to_run_here_is_refused_without_writing(tiny, tmp_path, monkeypatch):
    from odexport import _memory as memory

    # the two-sample input against 64 kB of free memory: the refusal a 100,000-sample file meets on a real machine
    monkeypatch.setattr(memory, "available_memory", lambda: 64 * 1024)
    source, out = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(source, tiny["x"])
    result = _invoke(str(tiny["path"]), "--input", str(source), "-o", str(out))
    assert result.exit_code == 1, result.output
    assert "a batch of 2 samples of shape 3x32x32 needs at least" in result.output
    assert "free memory, or run on a machine with more" in result.output  # 64 kB hold not even one sample with the model
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_an_input_file_larger_than_the_memory_left_is_refused_before_loading(tiny, tmp_path, monkeypatch, suffix):
    import torch

    from odexport import _memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda: 16 * 1024)  # the 24 KiB file cannot be loaded
    source, out = tmp_path / f"x{suffix}", tmp_path / "y.npy"
    if suffix == ".npy":
        np.save(source, tiny["x"])
    else:
        torch.save({"input": torch.from_numpy(tiny["x"])}, source)
    result = _invoke(str(tiny["path"]), "--input", str(source), "-o", str(out))
    assert result.exit_code == 1, result.output
    # sized from the file's headers with what running it takes: one bound, one hint
    assert "a batch of 2 samples of shape 3x32x32 needs at least" in " ".join(result.output.split())
    assert "free memory, or run on a machine with more" in " ".join(result.output.split())
    assert not out.exists()


def test_the_file_hint_names_a_size_that_runs(tiny, tmp_path, monkeypatch):
    """The file check alone had advised files of 65x the samples the batch check then refused;
    the one bound's hint is a size the same check admits."""
    from odexport import _memory as memory

    source, out = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(source, np.repeat(tiny["x"], 50, axis=0))  # 100 samples
    monkeypatch.setattr(memory, "available_memory", lambda: 1024 * 1024)  # the input alone is 1.2 MB
    result = _invoke(str(tiny["path"]), "--input", str(source), "-o", str(out))
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    most = int(text.split("files of at most ")[1].split()[0])
    assert 1 <= most < 100 and not out.exists()
    np.save(source, np.repeat(tiny["x"], 50, axis=0)[:most])
    assert _invoke(str(tiny["path"]), "--input", str(source), "-o", str(out)).exit_code == 0, "the advised size runs"
