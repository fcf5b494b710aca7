"""Full-size architectures run a forward pass at their default input shape (slow: CPU, 224x224)."""

from __future__ import annotations

import pytest
import torch

from odexport.models import create_model, list_models, model_info
from tests.models._util import calibrate_batchnorm_

FULL_SIZE = list_models(tiny=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_forward(name):
    info = model_info(name)
    # float64 and a tolerance relative to the output's scale: a freshly initialised deep network
    # in eval mode has no normalised activations (they shrink or grow layer after layer) and
    # amplifies rounding; in float64 a difference beyond ~1e-9 of the scale is a per-sample leak.
    model = create_model(name).eval().double()
    x = torch.randn(2, *info.input_shape, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        first = model(x[:1])
    assert out.shape == (2, info.num_classes) and torch.isfinite(out).all()
    scale = out.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(first, out[:1], atol=1e-9 * scale, rtol=1e-9)


def test_tardelean_mobilenetv2_runs_per_sample():
    # no tiny variant of this layout's MobileNetV2; the real one is small enough at 64x64
    model = calibrate_batchnorm_(create_model("ta_mobilenetv2", num_classes=10), (3, 64, 64), batch=4)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        first = model(x[:1])
    assert out.shape == (2, 10) and out.abs().max() > 1e-2
    torch.testing.assert_close(first, out[:1], atol=1e-5, rtol=1e-5)
