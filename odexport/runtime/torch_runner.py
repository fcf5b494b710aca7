"""Run a PyTorch ``nn.Module`` behind the :class:`~odexport.runtime.base.Runner` interface.

The parity gate's reference runs here (fp32, or fp64 to take the reference's own rounding out of
the comparison), and so do checkpoint candidates and the eager latency baseline.  On CUDA the
runner keeps its input buffer on the device, times with CUDA events, and can capture the forward
in a CUDA graph so that kernel-launch overhead (which dominates small-batch dynamic convs) is
measured the way a graph-capturing server would see it.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from odexport.errors import InputError, MissingDependencyError
from odexport.runtime.base import Capability, InferenceError, Runner, TensorSpec, require_thread_count

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}
_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.float64: "fp64"}
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}


def probe() -> Capability:
    """torch is a hard dependency; report which devices it can use here."""
    devices = ["cpu"]
    detail = f"torch {torch.__version__}"
    if torch.cuda.is_available():
        devices.append("cuda")
        detail += f", CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}"
    else:
        detail += ", no CUDA device visible"
    return Capability("torch", True, tuple(devices), detail)


def torch_dtype(dtype) -> torch.dtype:
    """Accept ``torch.float32``, ``np.float32`` or a name (``"float32"``, ``"fp16"``, ...)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _PRECISION:
            raise InputError(f"unsupported dtype {dtype}", "use float32, float16 or float64")
        return dtype
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype.lower()
    if name not in _DTYPES:
        raise InputError(f"unsupported dtype {dtype!r}", "use float32, float16 or float64")
    return _DTYPES[name]


class TorchRunner(Runner):
    """Run ``model`` in eval mode under ``torch.inference_mode`` on ``device`` in ``dtype``.

    The model is copied before any dtype/device change, so the caller's module is never modified.
    Outputs are named ``"output"`` for a single tensor, ``"output"``, ``"output_1"``, ... for a
    tuple/list, and by key for a dict.  ``input_shape`` (C, H, W) fixes the per-sample shape the
    runner validates against (the batch axis is always dynamic); without it only the rank (4) is
    checked.  ``threads`` sets ``torch.set_num_threads`` (process-wide: torch has one pool).
    ``cuda_graphs`` makes :meth:`timer` capture and replay a CUDA graph (CUDA only).  float32 on
    CUDA is IEEE float32: cuDNN's TF32 convolutions (torch's default) are switched off around
    every forward, so an fp32 candidate meets fp32 tolerances and an fp32 latency is fp32's.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str = "cpu",
        dtype=torch.float32,
        *,
        input_shape: tuple[int, ...] | None = None,
        input_name: str = "input",
        threads: int | None = None,
        cuda_graphs: bool = False,
        channels_last: bool = False,
    ):
        if not isinstance(model, nn.Module):
            raise InputError(f"TorchRunner needs a torch.nn.Module, got {type(model).__name__}", "load the checkpoint first")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError, ValueError):  # torch's own words list a dozen device types odexport does not run on
            raise InputError(f"unsupported device {device!r}", "use cpu or cuda") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise MissingDependencyError(
                "device 'cuda' was asked for but torch sees no CUDA device",
                "run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu",
            )
        if self.device.type not in ("cpu", "cuda"):
            raise InputError(f"unsupported device {device!r}", "use cpu or cuda")
        self.dtype = torch_dtype(dtype)
        if cuda_graphs and self.device.type != "cuda":
            raise InputError("CUDA graphs need device cuda", "drop --cuda-graphs or use --device cuda")
        threads = require_thread_count(threads)
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = copy.deepcopy(model).eval().to(device=self.device, dtype=self.dtype)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self.precision = _PRECISION[self.dtype]
        self.backend = f"torch-{self.device.type}"
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self._input_name = input_name
        self._outputs: list[TensorSpec] | None = None
        self._step_bytes: dict[tuple, int] = {}

    # -- interface ---------------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        shape = ("batch", *self.input_shape) if self.input_shape else ("batch", None, None, None)
        return [TensorSpec(self._input_name, shape, np.dtype(_NUMPY[self.dtype]))]

    @property
    def outputs(self) -> list[TensorSpec]:
        if self._outputs is None:
            if self.input_shape is None:
                # unknown until the first inference: one generic output
                return [TensorSpec("output", ("batch",), np.dtype(_NUMPY[self.dtype]))]
            self.infer(np.zeros((1, *self.input_shape), dtype=_NUMPY[self.dtype]))
        return list(self._outputs or [])

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self._to_tensor(feed[self._input_name])
        try:
            with self._forward_mode():
                result = self.model(x)
        except RuntimeError as exc:
            raise InferenceError(f"PyTorch failed on an input of shape {tuple(x.shape)}: {_one_line(exc)}",
                                 "check the input shape against the model (--input-shape)") from exc
        named = _name_outputs(result)
        if self._outputs is None:
            self._outputs = [TensorSpec(k, ("batch", *v.shape[1:]), np.dtype(_NUMPY[self.dtype])) for k, v in named.items()]
        return {k: v.detach().to("cpu").numpy() for k, v in named.items()}

    # -- timing ------------------------------------------------------------------------------
    def timer(self, feed) -> Callable[[], float]:
        """CPU: ``perf_counter_ns`` around the forward.  CUDA: CUDA events on the current stream,
        input already on the device, synchronised per call (latency, not pipelined throughput);
        with ``cuda_graphs`` the forward is captured once and replayed."""
        if isinstance(feed, dict):
            array = feed[self._input_name]
        else:
            array = feed
        self.infer(array)  # validate outside the timed region
        x = self._to_tensor(np.ascontiguousarray(array))
        if self.device.type == "cpu":
            def run_cpu() -> float:
                start = time.perf_counter_ns()
                with self._forward_mode():
                    self.model(x)
                return (time.perf_counter_ns() - start) / 1e6
            return run_cpu
        return self._cuda_timer(x)

    def _cuda_timer(self, x: torch.Tensor) -> Callable[[], float]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if not self.cuda_graphs:
            def run_cuda() -> float:
                start.record()
                with self._forward_mode():
                    self.model(x)
                end.record()
                end.synchronize()
                return start.elapsed_time(end)
            return run_cuda
        static_x = x.clone()
        # warm up on a side stream before capture (lazy init, cuDNN autotuning must not be captured)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self._forward_mode():
            for _ in range(3):
                self.model(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), self._forward_mode():
            self.model(static_x)
        torch.cuda.synchronize()

        def run_graph() -> float:
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        run_graph.graph = graph  # keep the graph (and its memory pool) alive with the closure
        return run_graph

    def step_bytes(self, sample_shape: tuple[int, ...]) -> int:
        """On the CPU: the largest, over every module's forward at batch 1, of the bytes held by
        its input and output tensors (counted once per storage, so an in-place ReLU counts once);
        the caller holds the input while the module makes its output. Only tensors with the batch
        axis first count, and never the model's parameters or buffers (a weight passed to a
        submodule is not per sample). On a GPU the host holds only the input."""
        if self.device.type != "cpu" or self.model is None:
            return super().step_bytes(sample_shape)
        cached = self._step_bytes.get(tuple(sample_shape))
        if cached is not None:
            return cached
        largest = 0
        shared = {t.untyped_storage().data_ptr() for t in (*self.model.parameters(), *self.model.buffers())}

        def measure(_module, inputs, output) -> None:
            nonlocal largest
            storages = {}
            for tensor in _tensors_in((inputs, output)):
                storage = tensor.untyped_storage()
                if tensor.dim() and tensor.shape[0] == 1 and storage.data_ptr() not in shared:
                    storages[storage.data_ptr()] = storage.nbytes()
            largest = max(largest, sum(storages.values()))

        handles = [module.register_forward_hook(measure) for module in self.model.modules()]
        try:
            with self._forward_mode():
                self.model(torch.zeros((1, *sample_shape), dtype=self.dtype))
        except RuntimeError:
            largest = 0  # the shape is wrong: the run itself reports that, with its own message
        finally:
            for handle in handles:
                handle.remove()
        self._step_bytes[tuple(sample_shape)] = result = max(largest, super().step_bytes(sample_shape))
        return result

    # -- helpers -----------------------------------------------------------------------------
    def _forward_mode(self) -> contextlib.AbstractContextManager:
        """``inference_mode``, and on CUDA the TF32 switches off (they are process-wide flags,
        set only for the duration of the forward)."""
        if self.device.type != "cuda":
            return torch.inference_mode()  # nothing else to set: keep the CPU's timed region bare
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                                       benchmark=torch.backends.cudnn.benchmark,
                                                       deterministic=torch.backends.cudnn.deterministic,
                                                       allow_tf32=False))
        stack.enter_context(_matmul_tf32(False))
        return stack

    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(array)).to(device=self.device, dtype=self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _name_outputs(result) -> dict[str, torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return {"output": result}
    if isinstance(result, dict):
        return {str(k): v for k, v in result.items() if isinstance(v, torch.Tensor)}
    if isinstance(result, (tuple, list)):
        tensors = [v for v in result if isinstance(v, torch.Tensor)]
        return {("output" if i == 0 else f"output_{i}"): v for i, v in enumerate(tensors)}
    raise InputError(f"the model returned a {type(result).__name__}, not tensors", "make forward return a tensor, tuple or dict of tensors")


def _tensors_in(value):
    """Every tensor in a nest of tuples, lists and dicts (a module's inputs and outputs)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def _matmul_tf32(allowed: bool):
    previous = torch.backends.cuda.matmul.allow_tf32
    if previous == allowed:  # the default (off): leave the flag, and its deprecation notices, alone
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
