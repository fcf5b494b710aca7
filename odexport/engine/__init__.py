"""TensorRT engines: build from ONNX with batch profiles and fp16, sidecar metadata, compatibility.

Only :mod:`.build` (and the runner in :mod:`odexport.runtime.tensorrt_runner`) touch TensorRT, and
only after :func:`~odexport.engine.environment.require_tensorrt`; everything else here -- profiles,
precision decisions, the sidecar, timing-cache files, parser-error formatting, plugin discovery --
is plain Python and runs (and is tested) without TensorRT or a GPU.
"""

from __future__ import annotations

from odexport import _lazy

_PUBLIC = {
    "BuildOptions": "odexport.engine.build",
    "BuildResult": "odexport.engine.build",
    "build_engine": "odexport.engine.build",
    "check_build_inputs": "odexport.engine.build",
    "BatchProfile": "odexport.engine.profiles",
    "batch_profiles_from_options": "odexport.engine.profiles",
    "parse_profile": "odexport.engine.profiles",
    "EngineMetadata": "odexport.engine.sidecar",
    "EngineCompatibilityError": "odexport.engine.sidecar",
    "read_sidecar": "odexport.engine.sidecar",
    "check_compatible": "odexport.engine.sidecar",
    "plan_precision": "odexport.engine.precision",
    "require_tensorrt": "odexport.engine.environment",
}

__all__ = list(_PUBLIC)

__getattr__ = _lazy.lazy_getattr(__name__, _PUBLIC)
__dir__ = _lazy.lazy_dir(globals(), _PUBLIC)
