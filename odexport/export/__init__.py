"""ONNX export of models with dynamic convolutions, with a dynamic batch, in several forms.

* :func:`export_onnx` (also ``odexport.pipeline.onnx_from_model``): the whole export.
* :func:`plan_forms`: the per-layer form ``--form auto`` would choose, and why.
* :mod:`.forms` (torch cores), :mod:`.custom` (``com.odexport`` ops), :mod:`.precision`
  (``--fp16`` policy), :mod:`.verify` (onnxruntime vs PyTorch).

Submodules import torch and onnx; import them only when exporting.
"""

from __future__ import annotations

from odexport import _lazy

_PUBLIC = {
    "export_onnx": "odexport.export.onnx_export",
    "ExportResult": "odexport.export.onnx_export",
    "SUPPORTED_OPSETS": "odexport.export.onnx_export",
    "DEFAULT_OPSET": "odexport.export.onnx_export",
    "plan_forms": "odexport.export.plan",
    "LayerPlan": "odexport.export.plan",
    "FORMS": "odexport.export.forms",
    "FP16_POLICY": "odexport.export.precision",
    "PrecisionPolicy": "odexport.export.precision",
    "precision_violations": "odexport.export.precision",
    "compare_with_torch": "odexport.export.verify",
    "ParityResult": "odexport.export.verify",
}

__all__ = list(_PUBLIC)

__getattr__ = _lazy.lazy_getattr(__name__, _PUBLIC)
__dir__ = _lazy.lazy_dir(globals(), _PUBLIC)
