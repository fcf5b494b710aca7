"""Dynamic convolution layers. Layers know nothing of models; the math is in :mod:`.functional`."""

from odexport.layers.dyconv import DyAttention, DyConv2d
from odexport.layers.functional import Attentions
from odexport.layers.odconv import ODConv2d, ODConvAttention

DYNAMIC_CONV_TYPES = (ODConv2d, DyConv2d)


def dynamic_convs(model):
    """``(name, module)`` for every dynamic conv inside ``model``, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DYNAMIC_CONV_TYPES)]


def set_temperature(model, temperature: float) -> int:
    """Set the temperature of every dynamic conv in ``model``; returns how many were set."""
    layers = dynamic_convs(model)
    for _, layer in layers:
        layer.temperature = temperature
    return len(layers)


__all__ = ["Attentions", "DyAttention", "DyConv2d", "ODConv2d", "ODConvAttention", "DYNAMIC_CONV_TYPES", "dynamic_convs", "set_temperature"]
