"""Fixtures: a tiny plain network and its ONNX exports (dynamic batch and baked-in batch)."""

from __future__ import annotations

import pytest
import torch

from tests.runtime._models import TinyNet, export_plain


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def tiny_onnx(tiny_net, tmp_path):
    return export_plain(tiny_net, tmp_path / "tiny.onnx")


@pytest.fixture
def tiny_onnx_fixed(tiny_net, tmp_path):
    return export_plain(tiny_net, tmp_path / "tiny_fixed.onnx", dynamic=False)
