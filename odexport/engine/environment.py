"""What this machine offers for TensorRT work, and the one gate every TensorRT code path passes.

:func:`require_tensorrt` is the only place that imports ``tensorrt`` for building or running: it
returns the module, or raises :class:`~odexport.errors.MissingDependencyError` (exit 3) naming
everything that is missing (the package, a CUDA GPU, or both) with the install command.  It is
called before anything is exported or written.  :func:`tensorrt_report` is TensorRT's part of
``odexport doctor`` (:func:`odexport.environment.machine_report`).
"""

from __future__ import annotations

import importlib

from odexport._versions import version_at_least
from odexport.engine.precision import MINIMUM_TENSORRT, NO_WEAK_TYPING_FROM, STRONGLY_TYPED_FROM
from odexport.engine.sidecar import BuildTarget
from odexport.errors import MissingDependencyError

INSTALL_HINT = (
    "pip install 'odexport[trt]' on a machine with an NVIDIA GPU, its driver and a CUDA build of torch "
    "(TensorRT builds and runs engines only on a CUDA GPU)"
)


def _import_tensorrt():
    """``(module, None)`` or ``(None, why)``; the import of ``tensorrt`` goes through :func:`odexport._optional.require`."""
    from odexport._optional import require

    try:
        return require("tensorrt", "TensorRT"), None
    except MissingDependencyError as exc:
        cause = exc.__cause__
        return None, f"the Python package 'tensorrt' is not importable: {cause}" if cause else exc.message
    except Exception as exc:  # a broken install raises OSError (missing libnvinfer) and friends
        return None, f"importing 'tensorrt' failed: {type(exc).__name__}: {exc}"


def cuda_state() -> tuple[bool, str]:
    try:
        import torch
    except Exception as exc:  # torch is a hard dependency, but doctor must not die on a broken one
        return False, f"torch is not importable ({exc})"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    try:
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return True, f"{torch.cuda.device_count()} CUDA device(s)"
    except Exception as exc:
        return False, f"CUDA initialisation failed ({exc})"
    return False, f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"


def require_tensorrt(purpose: str = "building a TensorRT engine"):
    """The ``tensorrt`` module, once TensorRT >= 10 and a CUDA GPU are both confirmed; else exit 3."""
    trt, why_trt = _import_tensorrt()
    cuda_ok, why_cuda = cuda_state()
    problems = []
    if trt is None:
        problems.append(f"TensorRT is not installed ({why_trt})")
    if not cuda_ok:
        problems.append(f"no CUDA GPU is available ({why_cuda})")
    if problems:
        raise MissingDependencyError(f"{purpose} needs TensorRT and a CUDA GPU: " + "; ".join(problems), INSTALL_HINT)
    version = str(getattr(trt, "__version__", "0"))
    if not version_at_least(version, MINIMUM_TENSORRT):
        raise MissingDependencyError(f"{purpose} needs TensorRT >= 10, found TensorRT {version}", "pip install -U 'odexport[trt]'")
    return trt


def current_target(trt) -> BuildTarget:
    """TensorRT version and the current CUDA device (the one TensorRT builds for and runs on)."""
    import torch

    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return BuildTarget(str(trt.__version__), str(props.name), f"{props.major}.{props.minor}")


def tensorrt_report() -> dict:
    """What ``odexport doctor`` shows for TensorRT: installed, supported, which build features, usable here."""
    trt, why = _import_tensorrt()
    if trt is None:
        return {"available": False, "version": None, "why_missing": why, "install": "pip install 'odexport[trt]'"}
    version = str(getattr(trt, "__version__", "unknown"))
    report = {
        "available": True,
        "version": version,
        "supported": version_at_least(version, MINIMUM_TENSORRT),
        "strongly_typed_builds": version_at_least(version, STRONGLY_TYPED_FROM) or not hasattr(trt.BuilderFlag, "FP16"),
        "fp16_builder_flag": hasattr(trt.BuilderFlag, "FP16"),
        "weak_typing_removed": version_at_least(version, NO_WEAK_TYPING_FROM),
        # the flag itself, as the build looks for it: a version number alone would promise what the build then lacks
        "parser_plugin_override": hasattr(getattr(trt, "OnnxParserFlag", object), "ENABLE_PLUGIN_OVERRIDE"),
        "python_plugins": _package_importable("tensorrt.plugin"),
    }
    cuda_ok, why_cuda = cuda_state()
    if not cuda_ok:
        report["usable"] = False
        report["why_unusable"] = f"no CUDA GPU is available ({why_cuda})"
    else:
        report["usable"] = report["supported"]
    return report


def _package_importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True
