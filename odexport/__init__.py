"""odexport: dynamic-convolution CNNs (ODConv, DY-Conv) to ONNX Runtime and TensorRT.

The public API is imported lazily so that ``odexport --help`` stays fast (no torch import).
"""

from __future__ import annotations

from odexport import _lazy

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "ODConv2d": "odexport.layers",
    "DyConv2d": "odexport.layers",
    "set_temperature": "odexport.layers",
    "create_model": "odexport.models",
    "list_models": "odexport.models",
    "OdexportError": "odexport.errors",
}

__all__ = ["__version__", *_PUBLIC]

__getattr__ = _lazy.lazy_getattr(__name__, _PUBLIC)
__dir__ = _lazy.lazy_dir(globals(), _PUBLIC)
