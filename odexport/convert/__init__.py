"""Convert a user's own model built with the public reference layers into odexport layers.

* :func:`convert_reference_layers` swaps recognised OSVAI/ODConv ``ODConv2d``, kaijieshi7
  ``Dynamic_conv2d`` and TArdelean ``DynamicConvolution`` modules for odexport's, with identical
  outputs and identical state-dict keys.
* :func:`build_from_factory` builds the user's model from ``module:function`` (``--factory``).
"""

from odexport.convert.factory import TemperatureArgModel, build_from_factory, needs_temperature_argument, resolve_factory
from odexport.convert.reference import ConversionReport, ConvertedLayer, TemperatureArgDyConv2d, convert_reference_layers

__all__ = [
    "ConversionReport",
    "ConvertedLayer",
    "TemperatureArgDyConv2d",
    "TemperatureArgModel",
    "build_from_factory",
    "convert_reference_layers",
    "needs_temperature_argument",
    "resolve_factory",
]
