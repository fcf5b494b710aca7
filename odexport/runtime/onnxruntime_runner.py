"""Run an ONNX model in onnxruntime behind the :class:`~odexport.runtime.base.Runner` interface.

CPU always; the CUDA execution provider when the installed onnxruntime has it.  For benchmarks
the session is made with ``session.intra_op.allow_spinning = "0"``: with spinning on, the thread
pool of an idle session keeps burning cores while another session runs, which distorts every
ratio measured between sessions interleaved in one process.
"""

from __future__ import annotations

import importlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from odexport.errors import InputError, MissingDependencyError
from odexport.export import metadata_keys as keys
from odexport.export.verify import refuse_ignored_overloads, refuse_rewritten_custom_form
from odexport.runtime.base import Capability, InferenceError, Runner, TensorSpec, require_thread_count

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def probe() -> Capability:
    """Is onnxruntime importable, and which execution providers does this build have?"""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return Capability("onnxruntime", False, (), f"not importable: {exc}")
    providers = tuple(ort.get_available_providers())
    devices = ("cpu",) + (("cuda",) if CUDA in providers else ())
    return Capability("onnxruntime", True, devices, f"onnxruntime {ort.__version__}; providers: {', '.join(providers)}",
                      {"providers": providers})


def cuda_session_probe() -> dict:
    """Start an onnxruntime session on the CUDA provider and run one 1x1 Conv on it.

    A listed ``CUDAExecutionProvider`` is not a working one: the provider library loads CUDA,
    cuBLAS and cuDNN only when a session starts, and where one is missing (or of another major
    version) onnxruntime falls back to the CPU with a log line.  This starts the session the way
    ``odexport check/run --device cuda`` do (:class:`OrtRunner`) and compares the result with the input (the Conv's weight is the identity).
    Returns ``{"started": bool, "why": str}``; never raises."""
    from onnx import TensorProto, helper, numpy_helper

    from odexport.errors import OdexportError
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


def _providers_for(device: str, providers) -> list:
    import onnxruntime as ort

    if providers:
        return list(providers)
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in ort.get_available_providers():
            raise MissingDependencyError(
                "onnxruntime's CUDA execution provider is not available in this installation",
                "pip install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --device cpu",
            )
        _load_cuda_libraries(ort)
        # fp32 means IEEE fp32 here as in PyTorch: the provider's TF32 default (10-bit mantissa
        # products in Conv/MatMul) would fail fp32 tolerances; an fp16 export is the fast GPU path
        return [(CUDA, {"use_tf32": "0"}), CPU]
    raise InputError(f"unsupported device {device!r} for onnxruntime", "use cpu or cuda")


def _load_cuda_libraries(ort) -> None:
    """Make the CUDA and cuDNN libraries visible to onnxruntime's CUDA provider before it loads.

    The provider library is opened when the session starts and needs libcudart, cuBLAS and cuDNN
    by name; glibc's search path is fixed at process start, so they must already be loaded.
    torch (a dependency) loads its own copies on import, and ``preload_dlls`` (onnxruntime-gpu
    >= 1.21) reuses those, else the ``nvidia-*`` wheels'.  When the provider still cannot load,
    onnxruntime falls back to the CPU provider with no more than a log line; :class:`OrtRunner`
    checks the session's providers and refuses that."""
    importlib.import_module("torch")  # its CUDA libraries first: preload_dlls prefers them

    # cuDNN's frontend logs each execution plan it cannot build as an error on onnxruntime's
    # process-wide logger, then the provider uses another plan: noise in every report.  A real
    # failure still raises from the session, and a fallback to the CPU is caught after it starts.
    ort.set_default_logger_severity(4)
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # a best effort: the session start below reports what is really missing
            pass


class OrtRunner(Runner):
    """One onnxruntime ``InferenceSession``.

    ``model`` is a path to an ``.onnx`` file, or serialized bytes / an ``onnx.ModelProto`` (used for
    the per-layer parity copy with extra graph outputs).  ``cpu_rewrite`` applies
    :func:`odexport.runtime.ort_optimize.optimize_for_cpu` in memory (CPU only; exact, tied to this
    machine) for the batch sizes ``cpu_batches`` (default: its own default); ``rewrite_report`` says
    what it changed.  A model written by ``odexport ort`` runs as it is, after a check that it was
    made for this machine's onnxruntime (:func:`odexport.runtime.ort_specialise.verify_machine`).
    ``cuda_graphs`` (CUDA only) makes :meth:`timer` run a second session that onnxruntime captures
    in a CUDA graph and replays (``enable_cuda_graph``).  ``threads`` sets the intra-op pool size
    (inter-op is 1: these graphs are sequential).  ``allow_spinning=False`` stops idle pool threads
    from spinning (always wanted when several sessions share cores).  Inputs are cast to the dtype
    the graph declares, so an fp16 model accepts float32 arrays.
    """

    def __init__(
        self,
        model,
        providers: list | None = None,
        threads: int | None = None,
        *,
        device: str = "cpu",
        allow_spinning: bool = True,
        optimization: str = "all",
        cpu_rewrite: bool = False,
        cpu_batches: tuple[int, ...] | None = None,
        cuda_graphs: bool = False,
    ):
        import onnxruntime as ort

        if cuda_graphs and device != "cuda":
            raise InputError("CUDA graphs need device cuda", "drop --cuda-graphs or use --device cuda")
        threads = require_thread_count(threads)

        self.path: Path | None = None
        self._scratch = None  # a folder for a model past protobuf's 2 GiB, kept until close()
        self._graph_sessions: list = []  # cuda_graphs: one per timed batch size (a graph has fixed shapes)
        if isinstance(model, (str, os.PathLike)):
            self.path = Path(model)
            if self.path.is_dir():
                raise InputError(f"ONNX file {self.path} is a directory", "pass the .onnx file inside it")
            if not self.path.is_file():
                raise InputError(f"ONNX file {self.path} does not exist", "check the path, or export it with `odexport onnx`")
            source = str(self.path)
        elif isinstance(model, (bytes, bytearray)):
            source = bytes(model)
        else:
            source = model  # onnx.ModelProto: serialised (or written out) once, below, after any rewrite
        self._shape_source, self._step_bytes = source, None  # the graph as written: its tensors are the run's
        refuse_ignored_overloads(ort.__version__, source, self.path or "the model")
        self.rewrite_report = None
        if cpu_rewrite and device == "cpu":
            # machine-local: runtime-weight Convs into onnxruntime's blocked NCHWc kernels (exact)
            import onnx

            from odexport.runtime.ort_optimize import RewriteReport, optimize_for_cpu
            from odexport.runtime.ort_specialise import SPECIALISATION_KEY

            if isinstance(source, str):
                proto = onnx.load(source)
            else:
                proto = onnx.load_from_string(source) if isinstance(source, bytes) else source
            if any(p.key == SPECIALISATION_KEY for p in proto.metadata_props):
                self.rewrite_report = RewriteReport(proto, None, notes=["already specialised (`odexport ort`): run as it is"])
            else:
                self.rewrite_report = optimize_for_cpu(proto, threads=threads, batches=cpu_batches, name=self.path or "the model")
                source = self.rewrite_report.model
        options = ort.SessionOptions()
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization not in levels:
            raise InputError(f"unknown optimization level {optimization!r}", f"use one of {', '.join(levels)}")
        options.graph_optimization_level = levels[optimization]
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
        if not allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.device = device
        self.threads = threads
        chosen = _providers_for(device, providers)
        from odexport.runtime.ort_specialise import verify_machine

        where = self.path or "the model"
        if not isinstance(source, (str, bytes)):
            source = self._session_source(source)
        try:
            self.session = _new_session(ort, source, options, chosen)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            verify_machine(_metadata_of(source), where, device)  # a model specialised elsewhere: say so
            _refuse_torch_file(self.path)
            # checked only now: reading a large model a second time would cost memory on every load
            refuse_rewritten_custom_form(source, where)
            raise InputError(f"onnxruntime cannot load {where}: {_one_line(exc)}",
                             "re-export it with `odexport onnx`; `onnx.checker.check_model(path, full_check=True)` names what is malformed") from exc
        active = self.session.get_providers()
        if device == "cuda" and not providers and CUDA not in active:
            raise MissingDependencyError(
                f"onnxruntime could not start its CUDA execution provider for {where} (CUDA or cuDNN libraries missing or of another major version)",
                "install the onnxruntime-gpu build for this machine's CUDA (see onnxruntime.ai's CUDA requirements), or use --device cpu",
            )
        self.backend = "onnxruntime-cuda" if CUDA in active else "onnxruntime-cpu"
        self.cuda_graphs = cuda_graphs
        self._graph_source = (source, options, chosen) if cuda_graphs else None
        self._inputs = [_spec(a) for a in self.session.get_inputs()]
        self._outputs = [_spec(a) for a in self.session.get_outputs()]
        self.precision = _precision_of(model, self._inputs)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map or {})
        verify_machine(self.metadata, where, device)
        self.input_shape = onnx_sample_shape(self._inputs[0].shape[1:] if self._inputs else (), self.metadata)

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    @property
    def spinning(self) -> bool:
        """Whether the session's idle intra-op threads spin, read back from the session itself
        (onnxruntime's default when the entry was never set)."""
        try:
            return self.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") != "0"
        except RuntimeError:  # "does not have configuration with key": never set
            return True

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {spec.name: np.ascontiguousarray(feed[spec.name], dtype=spec.dtype) for spec in self._inputs}
        try:
            values = self.session.run(None, cast, _quiet_run_options())
        except Exception as exc:  # its text is in the error below: onnxruntime's own log line would say it twice
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in cast.items())
            raise InferenceError(f"onnxruntime failed to run {shapes}: {_one_line(exc)}",
                                 "the graph may have a shape (often the batch) baked in; re-export with a dynamic batch") from exc
        return {spec.name: value for spec, value in zip(self._outputs, values)}

    def timer(self, feed) -> Callable[[], float]:
        """``perf_counter_ns`` around ``run`` (a synchronous call on every provider).

        With the CUDA provider the input is bound on the device once with IO binding, so the timed
        region holds the graph execution and the output copy back, not the input upload.
        """
        if isinstance(feed, np.ndarray):
            feed = {self._inputs[0].name: feed}
        self.infer(feed)
        cast = {spec.name: np.ascontiguousarray(feed[spec.name], dtype=spec.dtype) for spec in self._inputs}
        if self.backend != "onnxruntime-cuda":
            run = self.session.run

            def run_cpu() -> float:
                start = time.perf_counter_ns()
                run(None, cast)
                return (time.perf_counter_ns() - start) / 1e6

            return run_cpu
        import onnxruntime as ort

        if self.cuda_graphs:
            return self._graph_timer(cast)
        session = self.session
        binding = _bound_on_cuda(ort, session, cast)
        for spec in self._outputs:
            binding.bind_output(spec.name, "cuda")

        def run_bound() -> float:
            start = time.perf_counter_ns()
            session.run_with_iobinding(binding)
            return (time.perf_counter_ns() - start) / 1e6

        return run_bound

    def _graph_timer(self, cast: dict[str, np.ndarray]) -> Callable[[], float]:
        """A timer over a CUDA graph of the model at ``cast``'s shapes.

        onnxruntime captures a graph on a session made with ``enable_cuda_graph`` at its second
        run and replays it afterwards.  A graph reads and writes fixed device addresses, so inputs
        and outputs are bound once, and it has fixed shapes, so each batch size gets its own
        session.  The replayed outputs are compared with the plain session's before timing: a
        graph that captured something else must not be timed as this model."""
        import onnxruntime as ort

        where = self.path or "the model"
        source, options, chosen = self._graph_source
        providers = [(name, {**opts, "enable_cuda_graph": "1"}) if name == CUDA else name
                     for name, opts in (p if isinstance(p, tuple) else (p, {}) for p in chosen)]
        expected = self.session.run(None, cast)
        try:
            session = _new_session(ort, source, options, providers)
            binding = _bound_on_cuda(ort, session, cast)
            outputs = [ort.OrtValue.ortvalue_from_shape_and_type(value.shape, value.dtype.type, "cuda", 0) for value in expected]
            for spec, value in zip(self._outputs, outputs):
                binding.bind_ortvalue_output(spec.name, value)
            for _ in range(3):  # a plain run (allocations), the capture, a replay
                session.run_with_iobinding(binding)
        except Exception as exc:
            raise InputError(f"onnxruntime could not capture a CUDA graph of {where}: {_one_line(exc)}",
                             "time it without --cuda-graphs (a graph needs every node on the CUDA provider and no control flow)") from exc
        for spec, want, got in zip(self._outputs, expected, binding.copy_outputs_to_cpu()):
            replayed = np.asarray(got, dtype=np.float64)
            scale = max(float(np.abs(want).max()), 1e-30)
            if replayed.shape != want.shape or float(np.abs(replayed - want).max()) > 1e-3 * scale:
                raise InferenceError(f"the CUDA graph of {where} replays other values than the session for output {spec.name}",
                                     "time it without --cuda-graphs, and report this with `odexport doctor --json`")
        self._graph_sessions.append(session)

        def run_graph() -> float:
            start = time.perf_counter_ns()
            session.run_with_iobinding(binding)
            return (time.perf_counter_ns() - start) / 1e6

        return run_graph

    def step_bytes(self, sample_shape: tuple[int, ...]) -> int:
        """On the CPU: the largest node's per-sample inputs and outputs, as ONNX shape inference
        sees the graph (:func:`odexport._memory.onnx_step_bytes`); the input alone where it
        sees nothing, and on a GPU (the host holds only the input)."""
        floor = super().step_bytes(sample_shape)
        if self.device != "cpu":
            return floor
        if self._step_bytes is None:
            from odexport._memory import onnx_step_bytes

            self._step_bytes = onnx_step_bytes(self._shape_source)
        return max(floor, self._step_bytes)

    def describe(self) -> dict:
        facts = super().describe()
        facts["providers"] = self.session.get_providers()
        if self.path is not None:
            facts["path"] = str(self.path)
        return facts

    def _session_source(self, proto):
        """``proto``'s bytes, or past protobuf's 2 GiB a copy with external data in a folder kept until close()."""
        from odexport.runtime.ort_optimize import session_source, too_large_to_serialize

        if not too_large_to_serialize(proto):
            return proto.SerializeToString()
        import tempfile

        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="odexport-session-")
        return session_source(proto, self._scratch.name)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
        self._shape_source = None
        self._graph_sessions.clear()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def _new_session(ort, source, options, providers):
    """An ``InferenceSession`` with onnxruntime's Python warnings silenced: a CUDA provider that
    cannot start is such a warning and a CPU session, which the callers check and turn into one
    clear error instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ort.InferenceSession(source, options, providers=providers)


def _bound_on_cuda(ort, session, cast: dict[str, np.ndarray]):
    """An IO binding of ``session`` with the inputs copied to the GPU once (outputs left to the caller)."""
    binding = session.io_binding()
    for name, array in cast.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    return binding


def _refuse_torch_file(path) -> None:
    """A checkpoint given an ``.onnx`` name is routed here by its suffix; onnxruntime would only
    say 'Protobuf parsing failed'. Name what the file is instead."""
    from odexport.checkpoint.reader import looks_like_torch_file

    if not path or not os.path.isfile(path):
        return
    with open(path, "rb") as handle:
        head = handle.read(8)
    if looks_like_torch_file(head):
        name = os.path.basename(os.fspath(path))
        stem = name[:-5] if name.lower().endswith(".onnx") else name
        raise InputError(f"{path} is a PyTorch checkpoint (written by torch.save), not an ONNX model",
                         f"give it a checkpoint's name (`mv {name} {stem}.pt`), then export it (`odexport onnx {stem}.pt`) "
                         "or pass the .pt where a checkpoint is meant")


def _metadata_of(source) -> dict:
    """The metadata of a model given as a path or bytes, without its weights; {} if unreadable."""
    import onnx

    try:
        proto = onnx.load(source, load_external_data=False) if isinstance(source, str) else onnx.load_from_string(source)
    except Exception:  # the load error itself is reported by the caller
        return {}
    return {p.key: p.value for p in proto.metadata_props}


def onnx_sample_shape(dims, metadata: dict) -> tuple[int, ...] | None:
    """One sample's shape: the graph's static dims, else what odexport's exporter recorded."""
    if dims and all(isinstance(d, int) and d > 0 for d in dims):
        return tuple(dims)
    recorded = metadata.get(keys.INPUT_SHAPE, "")
    try:
        parsed = tuple(int(v) for v in recorded.lower().split("x")) if recorded else ()
    except ValueError:
        parsed = ()
    return parsed if len(parsed) == len(dims) and parsed else None


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(_ORT_TYPES.get(arg.type, np.float32)))


def _precision_of(model, inputs: list[TensorSpec]) -> str:
    """fp16 when the input is half or (nearly) all float weights are half; mixed when both kinds
    carry real weight; fp64 for double graphs; fp32 otherwise."""
    import onnx

    if any(s.dtype == np.float16 for s in inputs):
        return "fp16"
    if any(s.dtype == np.float64 for s in inputs):
        return "fp64"
    try:
        if isinstance(model, (str, os.PathLike)):
            proto = onnx.load(str(model), load_external_data=False)
        elif isinstance(model, (bytes, bytearray)):
            proto = onnx.load_from_string(bytes(model))
        else:
            proto = model
    except Exception:
        return "fp32"
    sizes = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0}
    for init in proto.graph.initializer:
        if init.data_type in sizes:
            sizes[init.data_type] += int(np.prod(init.dims)) if len(init.dims) else 1
    half, single = sizes[onnx.TensorProto.FLOAT16], sizes[onnx.TensorProto.FLOAT]
    if half and half >= 0.9 * (half + single):
        return "fp16"
    if half and single:
        return "mixed"
    return "fp32"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _quiet_run_options():
    """Run options that keep onnxruntime from logging a failed run on stderr itself (severity 4:
    fatal only); the failure is raised, and odexport reports it once, as an error it can explain."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = 4
    return options
