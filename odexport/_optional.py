"""Capability probes and lazy imports of optional dependencies, each with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from odexport.errors import MissingDependencyError

_INSTALL_HINTS = {
    "tensorrt": "pip install 'odexport[trt]' (TensorRT also needs an NVIDIA GPU with a CUDA driver)",
    "matplotlib": "pip install 'odexport[plot]'",
    "sklearn": "pip install 'odexport[samples]'",
}


def require(module_name: str, purpose: str) -> ModuleType:
    """Import ``module_name`` or raise :class:`MissingDependencyError` naming the install command."""
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(module_name.split(".")[0], f"pip install {module_name}")
        raise MissingDependencyError(f"{purpose} needs the Python package '{module_name}', which is not importable ({exc})", hint) from exc


def available(module_name: str) -> bool:
    """True when ``module_name`` imports; never raises."""
    try:
        importlib.import_module(module_name)
    except Exception:
        return False
    return True


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False
