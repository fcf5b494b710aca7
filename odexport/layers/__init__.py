"""Dynamic convolution layers. Layers know nothing of models; the math is in :mod:`.functional`."""

from odexport.layers.dyconv import DyAttention, DyConv2d
from odexport.layers.functional import Attentions
from odexport.layers.odconv import ODConv2d, ODConvAttention

DYNAMIC_CONV_TYPES = (ODConv2d, DyConv2d)


def dynamic_convs(model):
    """``(name, module)`` for every dynamic conv inside ``model``, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DYNAMIC_CONV_TYPES)]


def set_temperature(model, temperature: float) -> int:
    """Set the temperature of every dynamic conv in ``model``; returns how many were set.

    A layer with a ``pinned_temperature`` attribute keeps that value instead: its reference model
    never hands it the temperature (TArdelean's MobileNetV3 ``conv_1x1_bn``, a plain
    ``nn.Sequential``, runs its dynamic conv at the forward's default of 1 whatever T the model is
    given), so a faithful model must not either.
    """
    from odexport.layers.functional import positive_temperature

    temperature = positive_temperature(temperature)
    layers = dynamic_convs(model)
    for _, layer in layers:
        pinned = getattr(layer, "pinned_temperature", None)
        layer.temperature = temperature if pinned is None else pinned
    return len(layers)


def pinned_temperature_layers(model) -> list[tuple[str, float]]:
    """``(name, temperature)`` of the dynamic convs that keep their own temperature (see :func:`set_temperature`)."""
    return [(name, float(layer.pinned_temperature)) for name, layer in dynamic_convs(model)
            if getattr(layer, "pinned_temperature", None) is not None]


__all__ = ["Attentions", "DyAttention", "DyConv2d", "ODConv2d", "ODConvAttention", "DYNAMIC_CONV_TYPES", "dynamic_convs", "pinned_temperature_layers", "set_temperature"]
