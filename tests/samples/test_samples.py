"""The shipped sample checkpoints: their layouts, and their stated accuracy through PyTorch and ONNX.

The labels are scikit-learn's (independent of odexport); the stated accuracy is what
``samples/make_samples.py`` measured with the zoo model it trained, before saving.  Here the files
go through odexport's own loader (layout and architecture detected from the keys and shapes) and
through an ONNX export run in onnxruntime, and must reproduce it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT

SAMPLES = REPO_ROOT / "samples"
STATED = json.loads((SAMPLES / "accuracy.json").read_text())
MAX_BYTES = 3_000_000
ONE_SAMPLE = 1.0 / STATED["val_samples"]

# name in accuracy.json -> (file, validation set, layout, architecture)
CASES = {
    "od_resnet": ("od_resnet_digits.pth.tar", "digits_val.npz", "odconv", "od_resnet_tiny"),
    "dy_mobilenetv2": ("dy_mobilenetv2_digits.pth", "digits_val_64.npz", "tardelean", "ta_mobilenetv2"),
}


def _val(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(SAMPLES / name) as data:
        return data["x"], data["y"]


def _torch_predictions(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(x[i:i + 120])) for i in range(0, len(x), 120)]).argmax(1).numpy()


def test_validation_sets_are_the_held_out_digits():
    """Rebuilt from scikit-learn here: same images, same labels, the same 360 digits at both sizes."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    _, val_images, _, val_labels = train_test_split(images, digits.target, test_size=STATED["val_samples"],
                                                    stratify=digits.target, random_state=0)
    for name, scale in (("digits_val.npz", 4), ("digits_val_64.npz", 8)):
        x, y = _val(name)
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(val_labels), 3, 8 * scale, 8 * scale)
        np.testing.assert_array_equal(y, val_labels)
        expected = np.repeat(val_images.repeat(scale, 1).repeat(scale, 2)[:, None], 3, axis=1)
        np.testing.assert_array_equal(x, expected)
    assert np.bincount(val_labels).min() >= 30  # stratified: every digit is there


def test_od_resnet_sample_is_in_the_official_training_script_layout():
    path = SAMPLES / "od_resnet_digits.pth.tar"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"epoch", "state_dict", "acc", "best_acc", "optimizer"}
    assert all(k.startswith("module.") for k in ckpt["state_dict"])
    assert any(k.endswith(".attention.kernel_fc.weight") for k in ckpt["state_dict"])  # K > 1: kernel attention
    assert float(ckpt["acc"]) == pytest.approx(100 * STATED["models"]["od_resnet"]["val_accuracy"])
    assert path.stat().st_size < MAX_BYTES


def test_dy_mobilenetv2_sample_is_in_the_tardelean_layout():
    path = SAMPLES / "dy_mobilenetv2_digits.pth"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "scheduler", "epoch"}
    keys = list(ckpt["model"])
    assert not any(k.startswith("module.") for k in keys)
    assert any(".layers." in k and k.endswith(".kernels_weights") for k in keys)
    assert any(k.endswith(".attention.to_scores.2.weight") for k in keys)
    assert path.stat().st_size < MAX_BYTES


@pytest.mark.parametrize("name", CASES)
def test_sample_reproduces_stated_accuracy_in_pytorch_and_onnxruntime(name, tmp_path):
    import onnxruntime as ort

    from odexport.pipeline import model_from_checkpoint, onnx_from_model

    filename, val_name, layout, arch = CASES[name]
    stated = STATED["models"][name]["val_accuracy"]
    assert stated > 0.95
    x, y = _val(val_name)

    loaded = model_from_checkpoint(SAMPLES / filename)
    assert loaded.info.layout == layout and loaded.info.arch == arch
    assert loaded.info.temperature == 1.0
    assert tuple(loaded.info.input_shape) == x.shape[1:]
    torch_pred = _torch_predictions(loaded.model, x)
    torch_acc = float((torch_pred == y).mean())
    assert abs(torch_acc - stated) <= ONE_SAMPLE + 1e-9, f"PyTorch accuracy {torch_acc:.4f}, stated {stated:.4f}"

    onnx_path = tmp_path / f"{name}.onnx"
    onnx_from_model(loaded.model, onnx_path, input_shape=loaded.info.input_shape, check=False)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(["output"], {"input": x[i:i + 97]})[0] for i in range(0, len(x), 97)])
    onnx_pred = logits.argmax(1)
    onnx_acc = float((onnx_pred == y).mean())
    assert abs(onnx_acc - stated) <= ONE_SAMPLE + 1e-9, f"onnxruntime accuracy {onnx_acc:.4f}, stated {stated:.4f}"
    assert (onnx_pred == torch_pred).mean() >= 1 - ONE_SAMPLE  # top-1 agreement with PyTorch
