"""Small pieces shared by several architecture files."""

from __future__ import annotations

from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """TensorFlow's channel rounding used by every MobileNet: nearest multiple of ``divisor``,
    never below ``min_value`` (default ``divisor``) and never more than 10 % below ``value``."""
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class LayersSequential(nn.Module):
    """A sequential container that holds its children in ``.layers``.

    TArdelean/DynamicConvolution's ``CustomSequential`` does this (to thread the temperature
    through), which inserts ``.layers.`` into every state-dict key below it; reproducing the
    nesting keeps those checkpoints loadable with ``strict=True``.  An empty one is the identity.
    """

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.layers = nn.Sequential(*modules)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    def forward(self, x):
        return self.layers(x)
