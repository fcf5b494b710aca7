"""Small plain models and ONNX exports made by torch.onnx.export directly (independent of
odexport's own exporter); shared by the runtime, report and CLI tests."""

from __future__ import annotations

import warnings

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv -> ReLU -> global pool -> Linear: 10 logits from a (3, 16, 16) image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def export_plain(model: nn.Module, path, *, batch: int = 2, dynamic: bool = True, shape=(3, 16, 16)) -> str:
    """Legacy TorchScript exporter: fast, and with ``dynamic=False`` the batch is baked in."""
    x = torch.randn(batch, *shape)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"], dynamic_axes=axes,
                          dynamo=False, opset_version=17)
    return str(path)
