"""The one interface every backend runner implements (torch, onnxruntime, TensorRT).

Runners take and return numpy arrays keyed by tensor name, so a report never needs to know the
backend.  ``infer`` validates inputs (names, rank, dtype) and calls the backend's small
``infer_impl``.  Sibling runner modules never import each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from odexport.errors import InputError


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

    def close(self) -> None:
        """Release backend resources (sessions, engines, CUDA memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
