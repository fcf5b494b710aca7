"""Reference layer cases and small helpers shared by the export tests."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from odexport.export.verify import ort_session
from odexport.layers import DyConv2d, ODConv2d
from tests.conftest import load_refdata

BANKS = {
    "odconv": (("odconv", "odconv2d_layer_bank.pt"), 14),
    "kaijieshi7": (("dyconv", "kaijieshi7_dynamic_conv2d_layer_bank.pt"), 7),
    "tardelean": (("dyconv", "tardelean_dynamicconvolution_layer_bank.pt"), 5),
}
TOL = dict(atol=1e-5, rtol=1e-5)
TINY_SHAPE = (3, 32, 32)


def bank_params():
    import pytest

    return [pytest.param(bank, i, id=f"{bank}-{i}") for bank, (_, n) in BANKS.items() for i in range(n)]


def refdata_layer_model(bank: str, index: int):
    """``(model, reference_input, reference_output, name)``: one reference layer wrapped in a
    model (``nn.Sequential``), at temperature 1 except where the case fixes another, with the
    output the *reference implementation* computed for ``reference_input``."""
    parts, _ = BANKS[bank]
    case = load_refdata(*parts)["cases"][index]
    if bank == "odconv":
        layer = ODConv2d(**case["ctor_kwargs"])
        layer.load_state_dict(case["state_dict"])
        layer.temperature = case["temperature"]
        expected = case["output"]
    elif bank == "kaijieshi7":
        layer = DyConv2d.from_kaijieshi7_args(**case["ctor_kwargs"])
        layer.load_state_dict(case["state_dict"])
        layer.temperature = case["temperature_final"]
        expected = case["output_T1"]
    else:
        layer = DyConv2d.from_tardelean_args(**case["ctor_kwargs"])
        layer.load_state_dict(case["state_dict"])
        expected = case["output_T1"]
    model = nn.Sequential(layer).eval()
    return model, case["input"], expected, case["name"]


def run_ort(model: str | onnx.ModelProto, x) -> np.ndarray:
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    return ort_session(model).run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]


def torch_out(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def assert_runs_at_batches(model, onnx_model, shape, batches=(1, 2, 7), tol=TOL, seed=0, scale_relative: float | None = None):
    """onnxruntime equals PyTorch at each batch size (seeded inputs): elementwise within ``tol``,
    or, with ``scale_relative``, ``max|d| <= scale_relative * max|reference|`` (deep random
    full-size networks amplify float rounding; the relative-to-scale error is what is meaningful)."""
    g = torch.Generator().manual_seed(seed)
    for batch in batches:
        x = torch.randn(batch, *shape, generator=g)
        got = run_ort(onnx_model, x)
        expected = torch_out(model, x)
        if scale_relative is None:
            np.testing.assert_allclose(got, expected, **tol, err_msg=f"batch {batch}")
        else:
            assert got.shape == expected.shape
            error = float(np.abs(got - expected).max() / np.abs(expected).max())
            assert error <= scale_relative, f"batch {batch}: max|d|/max|ref| = {error:.3g}"
