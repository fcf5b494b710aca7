"""What this machine can do, for ``odexport doctor``: torch and CUDA, onnxruntime and its providers,
TensorRT, plugin libraries, memory.

It sits beside :mod:`odexport.pipeline` because it asks every stage (the TensorRT gate in
:mod:`odexport.engine.environment`, the onnxruntime runner's CUDA session probe), and no stage should
import another stage's runtime to describe the machine.  Each probe is fenced: the report never fails.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys


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

    from odexport.engine.environment import cuda_state

    report = {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": False,
        "cudnn": None,
        "gpus": [],
    }
    cuda_ok, why = cuda_state()
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


def _memory_report() -> dict:
    """The memory bench, check, run and ort size their batches against (odexport._memory)."""
    from odexport._memory import available_memory, memory_facts

    return {"available": available_memory(), **memory_facts()}


def machine_report() -> dict:
    """Everything ``odexport doctor`` shows, as one JSON-able dict. Never raises."""
    from odexport import __version__
    from odexport.engine.environment import tensorrt_report
    from odexport.engine.plugins import PLUGIN_PATH_ENV, find_plugin_libraries
    from odexport.runtime.onnxruntime_runner import cuda_session_probe

    torch_info = _fenced(_torch_report)
    ort_info = _fenced(_onnxruntime_report)
    trt_info = _fenced(tensorrt_report)
    providers = ort_info.get("providers", []) if isinstance(ort_info, dict) else []
    if "CUDAExecutionProvider" in providers and torch_info.get("cuda_available"):
        ort_info["cuda_session"] = _fenced(cuda_session_probe)
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
