"""Backend runners behind one interface (:class:`odexport.runtime.base.Runner`).

========================  ============================================  =========================
artifact                  runner                                        backend names
========================  ============================================  =========================
``nn.Module``             :class:`.torch_runner.TorchRunner`            ``torch``
checkpoint file           the loaded model in :class:`TorchRunner`      ``torch``
``.onnx``                 :class:`.onnxruntime_runner.OrtRunner`        ``onnxruntime`` (``ort``)
``.engine`` / ``.plan``   ``tensorrt_runner.TrtRunner`` (lazy import)   ``tensorrt`` (``trt``)
========================  ============================================  =========================

Runner modules never import each other; only :func:`open_runner` knows them all, and imports each
one when it is asked for (TensorRT is optional and heavy).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from odexport.errors import InputError, MissingDependencyError
from odexport.runtime.base import Capability, InferenceError, Runner, TensorSpec

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
BACKENDS = ("torch", "onnxruntime", "tensorrt")
_ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "onnxruntime": "onnxruntime", "pytorch": "torch", "torch": "torch",
            "trt": "tensorrt", "tensorrt": "tensorrt"}


#: The backend each kind of artifact runs on (``artifact_kind`` -> backend).
NATURAL_BACKEND = {"module": "torch", "checkpoint": "torch", "onnx": "onnxruntime", "engine": "tensorrt"}


def normalise_backend(backend: str | None) -> str | None:
    """``"ort"`` -> ``"onnxruntime"``, ``"trt"`` -> ``"tensorrt"``; unknown names are an input error."""
    if backend is None:
        return None
    key = backend.strip().lower()
    if key not in _ALIASES:
        raise InputError(f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}")
    return _ALIASES[key]


def artifact_kind(artifact) -> str:
    """``"module"``, ``"onnx"``, ``"engine"`` or ``"checkpoint"`` (by type, then by file suffix)."""
    try:
        from torch import nn

        if isinstance(artifact, nn.Module):
            return "module"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    if not isinstance(artifact, (str, os.PathLike)):
        raise InputError(f"cannot run a {type(artifact).__name__}", "pass an nn.Module or a path to a checkpoint, .onnx or .engine file")
    suffix = Path(artifact).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    return "checkpoint"


def require_artifact_exists(artifact) -> None:
    """A path that is not there is a mistake in the command: an :class:`InputError` saying so
    (and, for a report's name, that ``--json`` takes no file)."""
    if artifact_kind(artifact) == "module" or Path(artifact).is_file():
        return
    if Path(artifact).is_dir():
        raise InputError(f"{artifact} is a directory", "pass the model file inside it")
    if Path(artifact).suffix.lower() in _REPORT_SUFFIXES:  # e.g. `check A B --json out.json`
        raise InputError(f"{artifact} does not exist, and its name is a report's, not a model's",
                         "--json is a flag that prints the JSON on stdout (redirect it: --json > out.json); "
                         "the options that write a file take its path (check: --junit, --markdown; bench: --plot)")
    raise InputError(f"{artifact} does not exist", "check the path")


def _tensorrt_runner_class():
    """``TrtRunner``, or :class:`MissingDependencyError` (exit 3) naming what to install."""
    try:
        module = importlib.import_module("odexport.runtime.tensorrt_runner")
    except ImportError as exc:
        raise MissingDependencyError(
            f"running a TensorRT engine needs TensorRT, which is not available here ({exc})",
            "pip install 'odexport[trt]' on a machine with an NVIDIA GPU and a CUDA driver",
        ) from exc
    return module.TrtRunner


# an artifact argument with one of these suffixes was meant as a report file
_REPORT_SUFFIXES = (".json", ".xml", ".md", ".png", ".html", ".txt", ".csv")


def open_runner(
    artifact,
    backend: str | None = None,
    *,
    device: str = "cpu",
    dtype=None,
    threads: int | None = None,
    providers: list | None = None,
    allow_spinning: bool = True,
    cpu_rewrite: bool = False,
    cpu_batches: tuple[int, ...] | None = None,
    input_shape: tuple[int, ...] | None = None,
    cuda_graphs: bool = False,
    arch: str | None = None,
    temperature: float | None = None,
    trust_pickle: bool = False,
    factory: str | None = None,
    submodel: str | None = None,
    prefer_ema: bool = False,
    shared_options: bool = False,
) -> Runner:
    """Open the right runner for ``artifact`` (see the module table).

    ``backend`` checks the choice (a checkpoint runs in torch only; export it to run elsewhere).
    ``dtype`` applies to torch runners (default float32); ``allow_spinning``, ``cpu_rewrite``
    and ``cpu_batches`` to onnxruntime (see :class:`.onnxruntime_runner.OrtRunner`).  ``arch``/``temperature``/``trust_pickle``/
    ``factory``/``submodel``/``prefer_ema``/``shared_options`` are passed to :func:`odexport.checkpoint.load_checkpoint` for checkpoint files.
    The returned runner carries ``.source`` (the artifact) and, for checkpoints, ``.checkpoint_info``.
    """
    backend = normalise_backend(backend)
    kind = artifact_kind(artifact)
    require_artifact_exists(artifact)
    natural = NATURAL_BACKEND[kind]
    if backend is not None and backend != natural:
        what = {"module": "a PyTorch module", "checkpoint": "a checkpoint", "onnx": "an ONNX file", "engine": "a TensorRT engine"}[kind]
        fix = {
            ("torch", "onnxruntime"): "export it first with `odexport onnx`",
            ("torch", "tensorrt"): "export it with `odexport onnx`, then build an engine with `odexport trt`",
            ("onnxruntime", "tensorrt"): "build an engine from it with `odexport trt`",
        }.get((natural, backend), f"use --backend {natural}")
        raise InputError(f"{what} runs on the {natural} backend, not {backend}", fix)

    if kind in ("module", "checkpoint"):
        from odexport.runtime.torch_runner import TorchRunner

        info = None
        model = artifact
        if kind == "checkpoint":
            from odexport.checkpoint import load_checkpoint

            loaded = load_checkpoint(artifact, arch=arch, temperature=temperature, trust_pickle=trust_pickle, factory=factory,
                                   submodel=submodel, prefer_ema=prefer_ema, shared_options=shared_options)
            model, info = loaded.model, loaded.info
            if input_shape is None:
                input_shape = tuple(info.input_shape) if getattr(info, "input_shape", None) else None
        elif temperature is not None:
            from odexport.layers import set_temperature

            set_temperature(model, temperature)
        runner = TorchRunner(model, device=device, dtype=dtype or "float32", input_shape=input_shape, threads=threads,
                             cuda_graphs=cuda_graphs)
        runner.checkpoint_info = info
    elif kind == "onnx":
        from odexport.runtime.onnxruntime_runner import OrtRunner

        runner = OrtRunner(artifact, providers=providers, threads=threads, device=device, allow_spinning=allow_spinning,
                           cpu_rewrite=cpu_rewrite, cpu_batches=cpu_batches, cuda_graphs=cuda_graphs)
    else:
        if cuda_graphs:
            raise InputError("--cuda-graphs applies to PyTorch and onnxruntime on CUDA, not to TensorRT engines",
                             "drop --cuda-graphs for engines")
        runner = _tensorrt_runner_class()(artifact)
    runner.source = artifact
    return runner


def capabilities() -> list[Capability]:
    """Probe every backend (for ``odexport doctor`` and test skips); never raises."""
    found = []
    for module_name in ("odexport.runtime.torch_runner", "odexport.runtime.onnxruntime_runner", "odexport.runtime.tensorrt_runner"):
        backend = module_name.rsplit(".", 1)[1].replace("_runner", "")
        try:
            module = importlib.import_module(module_name)
            found.append(module.probe())
        except Exception as exc:  # a missing optional backend is a finding, not an error
            found.append(Capability(backend, False, (), f"not available: {' '.join(str(exc).split())[:200]}"))
    return found


__all__ = [
    "BACKENDS",
    "NATURAL_BACKEND",
    "Capability",
    "InferenceError",
    "Runner",
    "TensorSpec",
    "artifact_kind",
    "capabilities",
    "normalise_backend",
    "open_runner",
    "require_artifact_exists",
]
