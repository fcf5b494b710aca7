"""The one interface every backend runner implements (torch, onnxruntime, TensorRT).

Runners take and return numpy arrays keyed by tensor name, so a report never needs to know the
backend.  ``infer`` validates inputs (names, rank, dtype) and calls the backend's small
``infer_impl``.  Sibling runner modules never import each other.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from odexport.errors import InputError

#: precision labels a runner reports; the parity gate picks default tolerances from them
PRECISIONS = ("fp64", "fp32", "fp16", "mixed")


def whole_number(value) -> int | None:
    """``value`` as an int when it is one (Python or numpy, not a bool, 2.5 or "2"), else None."""
    import operator

    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def require_thread_count(threads) -> int | None:
    """``threads`` as a positive int, or None for the runtime's default.

    0 means "default" to onnxruntime but is an error to PyTorch: one meaning for every runner.
    """
    if threads is None:
        return None
    count = whole_number(threads)
    if count is None or count < 1:
        raise InputError(f"--threads {threads!r} is not a positive integer", "use e.g. --threads 2, or leave it out for the runtime's default")
    return count


class InferenceError(InputError):
    """The backend refused or failed to run an input (wrong batch for a baked-in shape, a node error).

    Outside a parity check this is an input error (exit 1); ``odexport check`` turns it into a parity
    failure for the batch size that triggered it.
    """


@dataclass(frozen=True)
class Capability:
    """What a capability probe found: is the backend usable here, on which devices, and why not."""

    backend: str
    available: bool
    devices: tuple[str, ...] = ()
    detail: str = ""
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` or a string for a dynamic axis) and numpy dtype of one model input/output."""

    name: str
    shape: tuple
    dtype: np.dtype


class Runner(ABC):
    """Run one artifact on one backend. Use as a context manager or call :meth:`close`."""

    #: short backend name shown in reports, e.g. ``"torch-cpu"``, ``"onnxruntime-cpu"``, ``"tensorrt"``
    backend: str = "abstract"
    #: arithmetic precision of the artifact as run: one of :data:`PRECISIONS`
    precision: str = "fp32"

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    def infer(self, feed: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Validate ``feed`` (a dict, or one array for a single-input model) and run it."""
        if isinstance(feed, np.ndarray):
            if len(self.inputs) != 1:
                raise InputError(f"this model has {len(self.inputs)} inputs; pass a dict name -> array",
                                 f"input names: {', '.join(s.name for s in self.inputs)}")
            feed = {self.inputs[0].name: feed}
        for spec in self.inputs:
            if spec.name not in feed:
                raise InputError(f"missing input '{spec.name}'", f"the model's inputs are: {', '.join(s.name for s in self.inputs)}")
            array = feed[spec.name]
            if array.dtype.kind not in "biuf":
                raise InputError(f"input '{spec.name}' has dtype {array.dtype}, the model expects {spec.dtype}",
                                 "pass a numeric array, e.g. float32 images (N, C, H, W)")
            if array.dtype.kind == "f" and spec.dtype.kind in "biu":  # every backend casts to the model's dtype
                raise InputError(f"input '{spec.name}' is {array.dtype}, the model expects {spec.dtype}: the cast would drop "
                                 "the fractions", f"pass an array of {spec.dtype}")
            if array.ndim != len(spec.shape):
                raise InputError(
                    f"input '{spec.name}' has rank {array.ndim}, the model expects rank {len(spec.shape)} {tuple(spec.shape)}",
                    "reshape the input (e.g. add the batch axis)",
                )
            for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
                if isinstance(want, int) and want > 0 and got != want:
                    raise InputError(
                        f"input '{spec.name}' axis {axis} has size {got}, the model expects {want} (shape {tuple(spec.shape)})",
                        "pass an input of the model's shape, or re-export with the shape you need",
                    )
        return self.infer_impl({k: np.ascontiguousarray(v) for k, v in feed.items()})

    @abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def timer(self, feed: dict[str, np.ndarray] | np.ndarray) -> Callable[[], float]:
        """Bind ``feed`` once and return ``run_once() -> milliseconds`` for benchmarks.

        The default times ``infer_impl`` with :func:`time.perf_counter_ns`, which on CPU backends
        includes exactly the work a caller waits for.  GPU runners override this: they bind device
        buffers once (no host copies inside the timed region) and time with CUDA events.
        The feed is validated once, here, so validation is not timed.
        """
        if isinstance(feed, np.ndarray):
            feed = {self.inputs[0].name: feed}
        self.infer(feed)  # validates, and fails early rather than inside a timing loop
        bound = {k: np.ascontiguousarray(v) for k, v in feed.items()}

        def run_once() -> float:
            start = time.perf_counter_ns()
            self.infer_impl(bound)
            return (time.perf_counter_ns() - start) / 1e6

        return run_once

    def step_bytes(self, sample_shape: tuple[int, ...]) -> int:
        """A lower bound of the host memory one sample of ``sample_shape`` takes while this runner
        runs it (:mod:`odexport._memory`): here its input; runners that can see their
        model's steps report the largest step."""
        dtype = self.inputs[0].dtype if self.inputs else np.dtype(np.float32)
        return math.prod(int(d) for d in sample_shape) * dtype.itemsize

    def describe(self) -> dict:
        """Facts a report shows about this runner (backend, precision, input/output shapes)."""
        return {
            "backend": self.backend,
            "precision": self.precision,
            "inputs": {s.name: list(s.shape) for s in self.inputs},
            "outputs": {s.name: list(s.shape) for s in self.outputs},
        }

    def close(self) -> None:
        """Release backend resources (sessions, engines, CUDA memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
