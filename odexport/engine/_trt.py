"""Small helpers around the ``tensorrt`` module; every function takes the module as an argument.

Nothing here imports ``tensorrt``: callers get the module from
:func:`odexport.engine.environment.require_tensorrt`.
"""

from __future__ import annotations

import sys
from collections import deque

# TensorRT DataType name -> numpy dtype name; torch dtypes are looked up by the same key
_NUMPY_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "float32",  # numpy has no bfloat16: outputs are returned as float32
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def dtype_name(trt_dtype) -> str:
    """``trt.DataType.HALF`` -> ``"HALF"`` (pybind enums print as ``DataType.HALF``)."""
    return getattr(trt_dtype, "name", str(trt_dtype).split(".")[-1])


def _unsupported_io_dtype(name: str):
    from odexport.errors import InputError

    # FP8, INT4, FP4 (TensorRT 10+): numpy has none of them, and odexport feeds and reads arrays
    return InputError(f"the engine has an input or output of TensorRT type {name}, which odexport cannot feed or read",
                      "build the engine from an ONNX whose inputs and outputs are float32, float16 or integers "
                      "(quantise inside the network, not at its edges)")


def numpy_dtype_name(trt_dtype) -> str:
    name = dtype_name(trt_dtype)
    if name not in _NUMPY_DTYPES:
        raise _unsupported_io_dtype(name)
    return _NUMPY_DTYPES[name]


def torch_dtype(trt_dtype):
    import torch

    table = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT8": torch.int8,
        "UINT8": torch.uint8,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "BOOL": torch.bool,
    }
    name = dtype_name(trt_dtype)
    if name not in table:
        raise _unsupported_io_dtype(name)
    return table[name]


_LOGGER = None


def logger(trt):
    """The process's one TensorRT logger (TensorRT expects a single logger across builder and runtime).

    It keeps the last error and warning lines so a failed build or deserialisation can say why,
    and prints warnings and errors to stderr only when ``verbose`` is set on it.
    """
    global _LOGGER
    if _LOGGER is None:

        class _OdexportLogger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.recent = deque(maxlen=50)
                self.verbose = False

            def log(self, severity, msg):  # called by TensorRT from C++; must not raise
                try:
                    level = int(severity)
                    if level <= int(trt.ILogger.Severity.WARNING):
                        self.recent.append((level, str(msg)))
                    if self.verbose and level <= int(trt.ILogger.Severity.INFO):
                        sys.stderr.write(f"[TensorRT] {msg}\n")
                except Exception:
                    pass

            def errors(self) -> list[str]:
                limit = int(trt.ILogger.Severity.ERROR)
                return [m for level, m in self.recent if level <= limit]

            def clear(self) -> None:
                self.recent.clear()

        _LOGGER = _OdexportLogger()
    return _LOGGER


def last_errors(log, count: int = 3) -> str:
    """The last ``count`` TensorRT error lines, joined, for an error message."""
    lines = [" ".join(m.split()) for m in log.errors()[-count:]]
    return " | ".join(lines)


def optional_flag(enum, name: str):
    """``enum.NAME`` or ``None`` when this TensorRT has no such member."""
    return getattr(enum, name, None)
