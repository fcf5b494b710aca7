"""Run a TensorRT engine behind the :class:`~odexport.runtime.base.Runner` interface (TensorRT 10/11 API).

Buffers are torch CUDA tensors (no pycuda): an input array is copied to the device as a tensor of the
engine's input dtype, outputs are allocated with torch at the shapes TensorRT infers, and the
tensors' ``data_ptr()`` are handed to the execution context.  Execution is
``IExecutionContext.execute_async_v3`` on the runner's own CUDA stream, on which the input copies and
output allocations are also made, so torch and TensorRT work is ordered on one stream; the runner
synchronises before it returns numpy arrays.  Not torch's default stream: TensorRT adds device-wide
synchronisations around work enqueued there (its ``execute_async_v3`` documentation), which would
slow every run and inflate the CUDA-event timings of ``bench``.

Before the engine is deserialised its sidecar (``model.engine.json``) is read and checked: the file
must be the one the sidecar describes, and the TensorRT version and GPU compute capability must be
the ones it was built for (:func:`odexport.engine.sidecar.check_compatible`); plugins the engine was
built with are loaded first.  The tensor list comes from the engine itself (``num_io_tensors``,
``get_tensor_name/mode/dtype/shape``), the batch profiles from ``get_tensor_profile_shape``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from odexport.errors import InputError
from odexport.runtime.base import Capability, InferenceError, Runner, TensorSpec


def probe():
    """Can this machine run TensorRT engines? A :class:`~odexport.runtime.base.Capability` (never raises)."""
    from odexport.engine.environment import require_tensorrt
    from odexport.errors import MissingDependencyError

    try:
        trt = require_tensorrt("running a TensorRT engine")
    except MissingDependencyError as exc:
        available, detail = False, str(exc)
    else:
        available, detail = True, f"TensorRT {trt.__version__}"
    return Capability("tensorrt", available, ("cuda",) if available else (), detail)


class TrtRunner(Runner):
    """Run ``engine_path`` (a ``.engine``/``.plan`` written by ``odexport trt``) on the current CUDA device.

    ``require_sidecar=False`` accepts an engine without a sidecar (built by trtexec, say); the
    version/GPU check is then TensorRT's own, at deserialisation.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, *, require_sidecar: bool = True, verbose: bool = False):
        from odexport.engine import _trt
        from odexport.engine.environment import current_target, require_tensorrt
        from odexport.engine.plugins import load_plugins
        from odexport.engine.sidecar import (EngineCompatibilityError, check_compatible, read_sidecar, sidecar_path,
                                             verify_engine_bytes)

        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise InputError(f"engine {self.engine_path} does not exist", "build one with `odexport trt MODEL.onnx -o model.engine`")
        trt = require_tensorrt("running a TensorRT engine")
        import torch

        self._trt, self._torch = trt, torch
        self.sidecar = read_sidecar(self.engine_path) if require_sidecar or sidecar_path(self.engine_path).is_file() else None
        #: the source ONNX's metadata_props (architecture, forms, ...), as OrtRunner.metadata has them
        self.metadata = dict((self.sidecar.source_onnx.get("metadata") or {}) if self.sidecar else {})
        machine = current_target(trt)
        data = self.engine_path.read_bytes()
        self.warnings: list[str] = []
        if self.sidecar is not None:
            verify_engine_bytes(self.sidecar, data, self.engine_path)
            self.warnings = check_compatible(self.sidecar, machine, self.engine_path.name)
        self._log = _trt.logger(trt)
        self._log.verbose = verbose
        self._log.clear()
        load_plugins(self.sidecar.plugins if self.sidecar else (), trt, self._log)

        self._runtime = trt.Runtime(self._log)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise EngineCompatibilityError(
                f"TensorRT {trt.__version__} could not deserialise {self.engine_path.name}: {_trt.last_errors(self._log) or 'no error was logged'}",
                f"rebuild it on this machine: {self.sidecar.rebuild_command if self.sidecar else 'odexport trt MODEL.onnx -o ENGINE'}",
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise InferenceError(
                f"TensorRT could not create an execution context for {self.engine_path.name}: {_trt.last_errors(self._log) or 'no error was logged'}",
                "free GPU memory (other processes?) or rebuild with a smaller --max-batch / --workspace",
            )
        self.device = torch.device("cuda", torch.cuda.current_device())
        self._stream = torch.cuda.Stream(device=self.device)
        # the parity gate picks its default tolerance from this: fp16 layers, or TF32 (10-bit mantissa products), are "mixed"
        reduced = self.sidecar is not None and (self.sidecar.precision == "fp16" or self.sidecar.tf32)
        self.precision = "mixed" if reduced else "fp32"
        self._read_io()
        self._active_profile = 0
        self._bound_by: object = None

    # -- engine description --------------------------------------------------------------------
    def _read_io(self) -> None:
        from odexport.engine import _trt
        from odexport.engine.profiles import BatchProfile

        trt, engine = self._trt, self._engine
        symbolic = {}  # ONNX axis names from the sidecar, e.g. {"input": ["batch", 3, 32, 32]}
        if self.sidecar is not None:
            for entry in (*self.sidecar.inputs, *self.sidecar.outputs):
                symbolic[entry["name"]] = entry.get("shape", [])
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._dtypes = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            trt_dtype = engine.get_tensor_dtype(name)
            shape = []
            for axis, size in enumerate(engine.get_tensor_shape(name)):
                if size >= 0:
                    shape.append(int(size))
                else:
                    names = symbolic.get(name, [])
                    label = names[axis] if axis < len(names) and isinstance(names[axis], str) else None
                    shape.append(label)
            self._dtypes[name] = trt_dtype
            spec = TensorSpec(name, tuple(shape), np.dtype(_trt.numpy_dtype_name(trt_dtype)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(spec)
            else:
                self._outputs.append(spec)
        self._profiles = []
        # the batch ranges are read from the first input with a dynamic axis: a static input has no profile shapes
        self._batch_input = next((spec.name for spec in self._inputs if any(not isinstance(d, int) for d in spec.shape)), None)
        if self._batch_input is not None:
            for index in range(engine.num_optimization_profiles):
                low, opt, high = engine.get_tensor_profile_shape(self._batch_input, index)
                self._profiles.append(BatchProfile(int(low[0]), int(opt[0]), int(high[0])))

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    @property
    def profiles(self):
        """Batch ranges of the engine's optimisation profiles (empty for a fixed-shape engine)."""
        return list(self._profiles)

    def describe(self) -> dict:
        info = super().describe()
        info["engine"] = str(self.engine_path)
        info["profiles"] = [p.text() for p in self._profiles]
        info["tensorrt"] = str(self._trt.__version__)
        if self.sidecar is not None:
            info["gpu"] = self.sidecar.target.gpu_name
            info["strongly_typed"] = self.sidecar.strongly_typed
        return info

    # -- execution -----------------------------------------------------------------------------
    def _bind(self, feed: dict[str, np.ndarray]):
        """Copy inputs to the device, set shapes and addresses, allocate outputs; returns both tensor dicts."""
        with self._torch.cuda.stream(self._stream):
            return self._bind_on_stream(feed)

    def _bind_on_stream(self, feed: dict[str, np.ndarray]):
        from odexport.engine import _trt
        from odexport.engine.profiles import select_profile

        torch, context = self._torch, self._context
        if self._profiles:
            batch = int(feed[self._batch_input].shape[0])
            try:
                wanted = select_profile(batch, self._profiles)
            except InputError as exc:  # a batch the engine was not built for: the backend refuses this input
                raise InferenceError(exc.message, exc.hint) from exc
            if wanted != self._active_profile:
                try:  # the binding raises RuntimeError on failure (its bool result is always True)
                    switched, reason = context.set_optimization_profile_async(wanted, self._stream.cuda_stream), ""
                except RuntimeError as exc:
                    switched, reason = False, " ".join(str(exc).split())
                if not switched:
                    reason = " | ".join(r for r in (reason, _trt.last_errors(self._log)) if r) or "no error was logged"
                    raise InferenceError(f"TensorRT could not switch to optimisation profile {wanted}: {reason}",
                                         "rebuild the engine with one profile covering every batch you run")
                self._active_profile = wanted
        device_inputs = {}
        for spec in self._inputs:
            tensor = torch.from_numpy(np.ascontiguousarray(feed[spec.name]))
            tensor = tensor.to(device=self.device, dtype=_trt.torch_dtype(self._dtypes[spec.name])).contiguous()
            if not context.set_input_shape(spec.name, tuple(tensor.shape)):
                raise InferenceError(
                    f"TensorRT rejected input '{spec.name}' of shape {tuple(tensor.shape)} (engine shape {spec.shape}, "
                    f"profiles {', '.join(p.text() for p in self._profiles) or 'fixed'}): {_trt.last_errors(self._log)}",
                    "run a shape inside the engine's profiles, or rebuild it with --profile / --input-shape for this shape",
                )
            self._set_address(spec.name, tensor)
            device_inputs[spec.name] = tensor
        device_outputs = {}
        for spec in self._outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise InferenceError(f"TensorRT could not infer the shape of output '{spec.name}' ({shape})",
                                     "check that every input shape was given")
            out = torch.empty(shape, dtype=_trt.torch_dtype(self._dtypes[spec.name]), device=self.device)
            self._set_address(spec.name, out)
            device_outputs[spec.name] = out
        self._bound_by = device_inputs
        return device_inputs, device_outputs

    def _set_address(self, name: str, tensor) -> None:
        from odexport.engine import _trt

        if not self._context.set_tensor_address(name, tensor.data_ptr()):
            raise InferenceError(f"TensorRT refused the device buffer of '{name}': {_trt.last_errors(self._log) or 'no error was logged'}",
                                 "rerun with ODEXPORT_DEBUG=1, or rebuild the engine on this machine")

    def _execute(self, stream) -> None:
        from odexport.engine import _trt

        if not self._context.execute_async_v3(stream.cuda_stream):
            raise InferenceError(f"TensorRT failed to run {self.engine_path.name}: {_trt.last_errors(self._log) or 'no error was logged'}",
                                 "rerun with ODEXPORT_DEBUG=1, or rebuild the engine on this machine")

    def infer_device(self, feed: dict[str, np.ndarray]) -> dict:
        """Run and return the outputs as torch CUDA tensors (no copy to the host)."""
        _inputs, outputs = self._bind(feed)
        self._execute(self._stream)
        self._stream.synchronize()
        return outputs

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.infer_device(feed)
        torch = self._torch
        return {name: (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy() for name, t in outputs.items()}

    def timer(self, feed) -> Callable[[], float]:
        """Bind device buffers once; each call is one ``execute_async_v3`` timed with CUDA events (milliseconds)."""
        torch = self._torch
        if isinstance(feed, np.ndarray):
            feed = {self._inputs[0].name: feed}
        self.infer(feed)  # validates and warms up outside the timed region
        bound = {k: np.ascontiguousarray(v) for k, v in feed.items()}
        buffers = self._bind(bound)
        stream = self._stream
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run_once() -> float:
            nonlocal buffers
            if self._bound_by is not buffers[0]:  # another infer() rebound the context's addresses
                buffers = self._bind(bound)
            start.record(stream)
            self._execute(stream)
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end)

        return run_once

    def close(self) -> None:
        # the context must go before the engine, and the engine before its runtime
        for name in ("_context", "_engine", "_runtime"):
            if hasattr(self, name):
                setattr(self, name, None)
