"""What this machine offers for TensorRT work, and the one gate every TensorRT code path passes.

:func:`require_tensorrt` is the only place that imports ``tensorrt`` for building or running: it
returns the module, or raises :class:`~odexport.errors.MissingDependencyError` (exit 3) naming
everything that is missing (the package, a CUDA GPU, or both) with the install command.  It is
called before anything is exported or written.  :func:`machine_report` gathers what
``odexport doctor`` prints; each probe is fenced so the report never fails.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys

from odexport.engine.precision import MINIMUM_TENSORRT, NO_WEAK_TYPING_FROM, STRONGLY_TYPED_FROM, version_at_least
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


def _cuda_state() -> tuple[bool, str]:
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
    cuda_ok, why_cuda = _cuda_state()
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


# --------------------------------------------------------------------------------------------
# odexport doctor
# --------------------------------------------------------------------------------------------

def _fenced(probe):
    try:
        return probe()
    except Exception as exc:  # a probe that fails reports why instead of failing the report
        return {"error": f"{type(exc).__name__}: {exc}"}


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_report() -> dict:
    import torch

    report = {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": False,
        "cudnn": None,
        "gpus": [],
    }
    cuda_ok, why = _cuda_state()
    report["cuda_available"] = cuda_ok
    if not cuda_ok:
        report["why_no_cuda"] = why
        return report
    report["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        report["gpus"].append({
            "index": index,
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
        })
    return report


def _onnxruntime_report() -> dict:
    import onnxruntime

    return {"version": onnxruntime.__version__, "providers": list(onnxruntime.get_available_providers())}


def onnxruntime_cuda_session() -> dict:
    """Start an onnxruntime session on the CUDA provider and run one 1x1 Conv on it.

    A listed ``CUDAExecutionProvider`` is not a working one: the provider library loads CUDA,
    cuBLAS and cuDNN only when a session starts, and where one is missing (or of another major
    version) onnxruntime falls back to the CPU with a log line.  This starts the session the way
    ``odexport check/run --device cuda`` do (:class:`~odexport.runtime.onnxruntime_runner.OrtRunner`)
    and compares the result with the input (the Conv's weight is the identity).
    Returns ``{"started": bool, "why": str}``; never raises."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from odexport.errors import OdexportError
    from odexport.runtime.onnxruntime_runner import OrtRunner
    from odexport.runtime.ort_optimize import HAND_BUILT_IR_VERSION

    channels = 4
    identity = np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "odexport_doctor_cuda_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 4, 4])],
        [numpy_helper.from_array(identity, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=HAND_BUILT_IR_VERSION)
    x = np.arange(channels * 16, dtype=np.float32).reshape(1, channels, 4, 4)
    try:
        with OrtRunner(model.SerializeToString(), device="cuda") as runner:
            y = runner.infer({"x": x})["y"]
    except OdexportError as exc:
        return {"started": False, "why": exc.message}
    except Exception as exc:  # a broken provider library raises onnxruntime's own classes
        return {"started": False, "why": f"{type(exc).__name__}: {exc}"}
    if not np.array_equal(y, x):
        return {"started": False, "why": "the session started but a 1x1 identity Conv returned wrong values"}
    return {"started": True, "why": "a session started on the CUDA provider and ran a Conv"}


def _tensorrt_report() -> dict:
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
    cuda_ok, why_cuda = _cuda_state()
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


def _memory_report() -> dict:
    """The memory bench, check, run and ort size their batches against (odexport._memory)."""
    from odexport._memory import available_memory, memory_facts

    return {"available": available_memory(), **memory_facts()}


def machine_report() -> dict:
    """Everything ``odexport doctor`` shows, as one JSON-able dict. Never raises."""
    from odexport import __version__
    from odexport.engine.plugins import PLUGIN_PATH_ENV, find_plugin_libraries

    torch_info = _fenced(_torch_report)
    ort_info = _fenced(_onnxruntime_report)
    trt_info = _fenced(_tensorrt_report)
    providers = ort_info.get("providers", []) if isinstance(ort_info, dict) else []
    if "CUDAExecutionProvider" in providers and torch_info.get("cuda_available"):
        ort_info["cuda_session"] = _fenced(onnxruntime_cuda_session)
    report = {
        "odexport": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch_info,
        "onnxruntime": ort_info,
        "onnx": _package_version("onnx"),
        "onnxscript": _package_version("onnxscript"),
        "tensorrt": trt_info,
        "plugin_libraries": _fenced(find_plugin_libraries),
        "plugin_search_path": {var: os.environ.get(var, "") for var in (PLUGIN_PATH_ENV, "LD_LIBRARY_PATH")},
        "memory": _fenced(_memory_report),
    }
    report["can"] = {
        "export_onnx": True,
        "onnxruntime_cpu": "CPUExecutionProvider" in providers,
        "onnxruntime_cuda": bool(ort_info.get("cuda_session", {}).get("started")),
        # onnxruntime's TensorRT provider loads TensorRT's libraries: listed is not enough
        "onnxruntime_tensorrt": "TensorrtExecutionProvider" in providers and bool(trt_info.get("usable")),
        "torch_cuda": bool(torch_info.get("cuda_available")),
        "tensorrt_engines": bool(trt_info.get("usable")),
    }
    return report
