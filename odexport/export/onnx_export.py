"""Export a model with odexport dynamic convs to ONNX: plan, trace, finish, check, write, verify.

One call, :func:`export_onnx`, does every step:

1. validate the request (form, opset, batch, input shape, target, output path);
2. describe every dynamic conv at the input shape and plan its form (:mod:`.plan`);
3. trace with the dynamo exporter (``torch.export`` + ``dynamic_shapes``; the batch is the only
   symbolic dimension) while each layer runs its planned form (:mod:`.forms`; the custom form emits
   ``com.odexport`` nodes and gets its function bodies, :mod:`.custom`);
4. optionally convert to mixed precision (:mod:`.precision`);
5. stamp metadata, run ``onnx.checker`` (full) and shape inference, confirm the batch is symbolic;
6. write it into a hidden folder beside the output (external data above 2 GB);
7. optionally compare onnxruntime on that file with PyTorch at batch 1, 2 and 7 (:mod:`.verify`);
   a failure writes the model as ``<stem>.parity-failed.onnx`` instead and raises
   :class:`ParityError`, leaving the output path as it was;
8. rename it onto the output path (``os.replace``) and write its JSON sidecar ``<model>.onnx.json``.

Why dynamo: the TorchScript exporter (``dynamo=False``) loses the static channel count of ``x*ca``
once a reshape uses ``-1`` for the batch and then refuses the patch conv ("kernel of unknown
shape"); the dynamo exporter keeps every non-batch dimension static and the batch symbolic.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from odexport._files import atomic_path, give_default_permissions, output_folder, write_text_atomically
from odexport.errors import ExportError, InputError, ParityError
from odexport.export import custom as custom_form
from odexport.export import metadata_keys as keys
from odexport.export.forms import FORMS, exporting_forms, probe_model
from odexport.export.plan import FP16_EXCLUDED, TARGETS, LayerPlan, plan_layers
from odexport.export.verify import DEFAULT_BATCHES, ParityResult, compare_with_torch

SUPPORTED_OPSETS = tuple(range(18, 24))
DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "output", "batch"
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom
DEFAULT_EXAMPLE_BATCH = 2


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote: the model path, its metadata, the per-layer plan (form and
    variant of every dynamic conv) and the parity result (``None`` without ``check``)."""

    path: Path
    metadata: dict
    forms: list[LayerPlan]
    parity: ParityResult | None = None
    sidecar: Path | None = None
    counts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "sidecar": str(self.sidecar) if self.sidecar else None,
            "metadata": self.metadata,
            "forms": [p.to_dict() for p in self.forms],
            "parity": None if self.parity is None else self.parity.to_dict(),
        }


def _validate(form, opset, batch, input_shape, target, path) -> tuple[Path, tuple[int, int, int]]:
    if form not in FORMS:
        raise ExportError(f"unknown export form {form!r}", f"use one of {', '.join(FORMS)}")
    if not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"opset {opset} is not supported",
            f"use an opset from {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]} (default {DEFAULT_OPSET})",
        )
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise InputError(f"batch must be a positive integer, got {batch!r}", "pass --batch N with N >= 1, or --dynamic-batch")
    if form == "grouped" and batch is None:
        raise ExportError(
            "the grouped form folds the batch into the conv groups, so it needs a fixed batch",
            "pass --batch N, or use --form decomposed / custom / auto for a dynamic batch",
        )
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}", f"use one of {', '.join(TARGETS)}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise InputError(f"input shape must be three positive integers (C, H, W), got {input_shape!r}", "e.g. --input-shape 3x224x224")
    out = Path(path)
    if out.is_dir():
        raise InputError(f"output path {out} is a directory", "give a file name such as model.onnx")
    output_folder(out, example="model.onnx")  # a missing folder, a file where the folder should be, or a folder that refuses writes
    if sidecar_path(out).is_dir():
        raise InputError(f"the sidecar path {sidecar_path(out)} is a directory", "remove it or choose another -o path")
    return out, shape  # type: ignore[return-value]


_REGISTRIES: dict = {}


@contextlib.contextmanager
def _reused_registry():
    """Reuse the exporter's torchlib op registry between exports of one process.

    ``torch.onnx.export(dynamo=True)`` rebuilds it from scratch every call (about 1.5 s of CPU,
    a third of a small model's export); it is read-only once built.  Private torch API, so this
    is best effort: anything unexpected leaves the exporter exactly as it is.
    """
    try:
        from torch.onnx._internal.exporter import _registration

        original = _registration.ONNXRegistry.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def cached(cls, opset_version=None):
        key = (cls, opset_version)
        if key not in _REGISTRIES:
            _REGISTRIES[key] = build(cls) if opset_version is None else build(cls, opset_version)
        return _REGISTRIES[key]

    _registration.ONNXRegistry.from_torchlib = classmethod(cached)
    try:
        yield
    finally:
        _registration.ONNXRegistry.from_torchlib = original


#: The dynamo exporter's own progress lines (``[torch.onnx] Run decompositions...``) -> the stage
#: shown for them: a large model spends tens of seconds in these, and one "trace" says nothing.
#: Lines it prints that are not listed (or a changed wording) are dropped, never shown raw.
EXPORTER_PHASES = (("Obtain model graph", "trace: torch.export"), ("Run decompositions", "trace: decompositions"),
                   ("Translate the graph into ONNX", "trace: translate to ONNX"), ("Optimize the ONNX graph", "trace: optimise"))


class _ExporterPhases(io.TextIOBase):
    """Standard output while the exporter runs: each phase it starts becomes a progress stage."""

    def __init__(self, progress: Callable[[str], None]):
        self._progress = progress

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        line = text.strip().removeprefix("[torch.onnx]").strip()
        if line.endswith("..."):  # a phase starting; its end repeats the line with a mark after "..."
            for phrase, stage in EXPORTER_PHASES:
                if line.startswith(phrase):
                    self._progress(stage)
        return len(text)


@contextlib.contextmanager
def _quiet_exporter(progress: Callable[[str], None] | None = None):
    """The dynamo exporter logs optional-registry warnings and prints progress; keep both out of
    the user's output, and pass the phases it starts to ``progress``."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sink = _ExporterPhases(progress) if progress is not None else io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)


#: the metadata fields export_onnx writes itself (later stages read them: forms, batch, opset, ...)
CORE_METADATA = (keys.VERSION, keys.SOURCE_SHA256, keys.SOURCE_KIND, keys.ARCH, keys.MODEL_CLASS, keys.MODEL_KWARGS, keys.FORM,
                 keys.FORMS, keys.OPSET, keys.BATCH, keys.INPUT_SHAPE, keys.PRECISION, keys.TARGET, keys.REPARAM_PASSES)


def _refuse_core_metadata(extra_metadata) -> None:
    """Extra metadata adds fields; one that replaced a core field would mislead every later stage
    (a non-JSON ``forms`` breaks the sidecar), so it is refused before any work."""
    clashes = sorted(keys.prefixed(key) for key in (extra_metadata or {}) if keys.prefixed(key) in CORE_METADATA)
    if clashes:
        raise InputError(f"extra_metadata would replace odexport's own {', '.join(clashes)}",
                         "give those fields another name (the export writes them itself)")


def torch_to_onnx(module: nn.Module, args: tuple, input_names: Sequence[str], output_names: Sequence[str], dynamic_shapes, opset: int,
                  progress: Callable[[str], None] | None = None) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=True)`` to an in-memory ModelProto, errors made one line;
    ``progress`` is told each phase the exporter starts (:data:`EXPORTER_PHASES`)."""
    try:
        with _quiet_exporter(progress), _reused_registry():
            program = torch.onnx.export(
                module,
                args,
                None,
                dynamo=True,
                verbose=None if progress is not None else False,  # None: it prints its phases (to _ExporterPhases)
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=True,
                report=False,
            )
            return program.model_proto
    except Exception as exc:  # the exporter's errors are many pages long
        if _interrupted(exc):  # Ctrl-C inside torch.export comes back wrapped in an export error: it was the user
            raise KeyboardInterrupt from exc
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # the exporter colours its messages for a terminal
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ExportError(
            f"torch.onnx.export failed: {type(exc).__name__}: {first[:300]}",
            "rerun with ODEXPORT_DEBUG=1 for the full traceback; if a layer of your own is not exportable, report it",
        ) from exc


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from or during is a KeyboardInterrupt."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def state_dict_sha256(model: nn.Module) -> str:
    """A checksum of the model's parameters and buffers (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()


def build_onnx(
    model: nn.Module,
    plans: list[LayerPlan],
    *,
    input_shape: tuple[int, int, int],
    batch: int | None,
    opset: int,
    custom: bool,
    num_outputs: int = 1,
    example_batch: int = DEFAULT_EXAMPLE_BATCH,
    progress: Callable[[str], None] | None = None,
) -> onnx.ModelProto:
    """Trace ``model`` with each layer in its planned variant; the custom form gets its functions.
    ``progress`` is told the exporter's phases."""
    variants = {p.name: (p.spec, p.variant) for p in plans}
    trace_batch = batch if batch is not None else example_batch
    example = torch.zeros(trace_batch, *input_shape)
    dynamic = None if batch is not None else ({0: torch.export.Dim(BATCH_DIM)},)
    output_names = [OUTPUT_NAME] + [f"{OUTPUT_NAME}_{i}" for i in range(1, num_outputs)]
    if not custom or not plans:
        with exporting_forms(model, variants):
            proto = torch_to_onnx(model, (example,), [INPUT_NAME], output_names, dynamic, opset, progress)
        _strip_bulky_metadata(proto)
        return proto
    # The custom form: one com.odexport node per layer, and each distinct layer configuration's
    # core traced in the same export (weight as an input) to become that node's function body.
    entries = {}
    for p in plans:
        entries.setdefault(custom_form.overload_name(p.spec, p.variant), (p.spec, p.variant))
    bodies = custom_form.body_module(entries)
    body_args, body_names, body_shapes, body_outputs = custom_form.body_inputs(bodies, trace_batch, dynamic=batch is None)
    shapes = None if batch is not None else (dynamic[0], tuple(body_shapes))
    with exporting_forms(model, variants, emitter=custom_form.emit_custom_node):
        rider = custom_form.RidingAlong(model, bodies)
        proto = torch_to_onnx(rider, (example, *body_args), [INPUT_NAME, *body_names], output_names + body_outputs, shapes, opset,
                              progress)
    functions = custom_form.split_bodies(proto, bodies, entries, body_names, body_outputs)
    custom_form.finish_custom_model(proto, functions)
    _strip_bulky_metadata(proto)
    return proto


def _strip_bulky_metadata(proto: onnx.ModelProto) -> None:
    """Drop stack traces and FX dumps (local paths, megabytes); keep scopes for roles."""
    bulky = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.class_hierarchy")

    def strip(nodes):
        for node in nodes:
            keep = [(p.key, p.value) for p in node.metadata_props if p.key not in bulky]
            node.ClearField("metadata_props")
            for key, value in keep:
                entry = node.metadata_props.add()
                entry.key, entry.value = key, value

    strip(proto.graph.node)
    for function in proto.functions:
        strip(function.node)


def _check_symbolic_batch(proto: onnx.ModelProto) -> None:
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].dim_param != BATCH_DIM:
            raise ExportError(
                f"the exported '{value.name}' does not keep a symbolic batch dimension",
                "a module outside odexport's dynamic convs fixes the batch; export with --batch N or report it",
            )


def _tensor_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in proto.graph.initializer)


def check_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker`` full check, then shape inference (strict); returns the inferred model."""
    try:
        onnx.checker.check_model(proto, full_check=True)
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportError(f"the exported model fails the ONNX checker: {first[:300]}", "this is a bug in odexport; please report it") from exc


def write_model_atomically(proto: onnx.ModelProto, path: Path) -> None:
    """Write ``proto`` to ``path`` through a temporary folder in the same directory.

    Above ~2 GB the tensors go to ``<name>.data`` next to the model (ONNX external data); both
    files are renamed into place only when complete, so a failure leaves nothing behind.
    """
    staged = stage_model(proto, path)
    try:
        commit_staged_model(staged, path)
    finally:
        discard_staged_model(staged)


def stage_model(proto: onnx.ModelProto, path: Path) -> Path:
    """Write ``proto`` as ``path``'s name into a new hidden folder beside ``path`` -> the staged model.

    The staged model can be opened and verified while ``path`` still holds the previous output;
    :func:`commit_staged_model` puts it in place, :func:`discard_staged_model` removes it.
    """
    parent = path.parent if str(path.parent) else Path(".")
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}", "choose a writable -o path with free space") from exc
    staged = tmp_dir / path.name  # the same name: external data is found by a location relative to it
    try:
        if _tensor_bytes(proto) > EXTERNAL_DATA_THRESHOLD:
            _save_with_external_data(proto, staged, path.name + ".data")
            onnx.checker.check_model(str(staged), full_check=False)
        else:
            onnx.save_model(proto, staged)
    except OSError as exc:
        discard_staged_model(staged)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}", "choose a writable -o path with free space") from exc
    except BaseException:
        discard_staged_model(staged)
        raise
    return staged


def _save_with_external_data(proto: onnx.ModelProto, staged: Path, location: str) -> None:
    """Save ``proto`` as ``staged`` with its tensors in ``staged``'s folder under ``location``.

    onnx refuses a ``location`` that exists relative to the *working directory* (not to the
    model), so re-exporting ``m.onnx`` from the folder holding ``m.onnx.data`` failed: the
    tensors are saved under a name that exists nowhere, then renamed, and the model's references
    rewritten.  ``proto``'s tensors are moved out to the file (onnx does that in place).
    """
    import uuid

    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    unique = f".{uuid.uuid4().hex}.data"
    onnx.save_model(proto, staged, save_as_external_data=True, all_tensors_to_one_file=True, location=unique,
                    size_threshold=1024)
    os.replace(staged.with_name(unique), staged.with_name(location))
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
    onnx.save_model(proto, staged)


def commit_staged_model(staged: Path, path: Path) -> None:
    """Rename a staged model (and its external data) onto ``path``; an older ``<name>.data`` that
    the new model does not use is removed, so no stale tensors sit beside it."""
    parent = path.parent if str(path.parent) else Path(".")
    data = staged.with_name(path.name + ".data")
    try:
        give_default_permissions(staged, replacing=path)
        if data.exists():  # as private as the data file replaced, else as the model they belong to
            give_default_permissions(data, replacing=parent / data.name if (parent / data.name).is_file() else path)
            os.replace(data, parent / data.name)
        else:
            (parent / data.name).unlink(missing_ok=True)
        os.replace(staged, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}", "choose a writable -o path with free space") from exc


def discard_staged_model(staged: Path) -> None:
    """Remove a staged model's folder and whatever is left in it."""
    if staged.parent.is_dir():
        for leftover in staged.parent.glob("*"):
            leftover.unlink(missing_ok=True)
        staged.parent.rmdir()


def write_json_atomically(obj: dict, path: Path) -> None:
    write_text_atomically(path, _json_text(obj))


def _json_text(obj: dict) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def failed_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.parity-failed.onnx``."""
    return path.with_name(f"{path.stem}.parity-failed{path.suffix or '.onnx'}")


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    form: str = "auto",
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    input_shape: Sequence[int] = (3, 224, 224),
    fp16: bool = False,
    target: str = "cpu",
    check: bool = True,
    check_batches: Sequence[int] = DEFAULT_BATCHES,
    seed: int = 0,
    architecture: str | None = None,
    model_kwargs: dict | None = None,
    source_sha256: str | None = None,
    extra_metadata: dict | None = None,
    progress: Callable[[str], None] | None = None,
    example_batch: int = DEFAULT_EXAMPLE_BATCH,
) -> ExportResult:
    """Export ``model`` (its dynamic convs ODConv2d / DyConv2d) to ONNX at ``path``.

    ``form``: auto | custom | decomposed | grouped (per layer, see docs/forms.md); ``batch``
    None keeps the batch symbolic (named ``batch``), an integer fixes it (required by grouped);
    ``input_shape`` is one sample (C, H, W); ``fp16`` writes the mixed-precision model;
    ``target`` (cpu | gpu) and the batch steer ``auto``; ``check`` compares onnxruntime with
    PyTorch at ``check_batches`` (only ``batch`` when fixed).  ``architecture`` (a zoo name) and
    ``model_kwargs`` go to the metadata (``odexport.arch``, ``odexport.model_kwargs``) so a later
    stage can rebuild the model or its static twin; ``source_sha256`` is the checkpoint's checksum
    (default: a checksum of the state dict).  Raises :class:`ExportError` /
    :class:`InputError` for a request that cannot be done and :class:`ParityError` (with
    ``.result``) when the check fails.
    """
    say = progress or (lambda stage: None)
    out, shape = _validate(form, opset, batch, input_shape, target, path)
    _refuse_core_metadata(extra_metadata)
    was_training = model.training
    model.eval()
    try:
        dtypes = {p.dtype for p in model.parameters()}
        if dtypes - {torch.float32}:
            raise ExportError(
                f"the model's parameters are {', '.join(sorted(str(d) for d in dtypes))}; export starts from float32",
                "call model.float() first (use --fp16 for a mixed-precision model)",
            )
        specs, num_outputs = probe_model(model, shape)
        plans = plan_layers(specs, form, target=target, batch=batch, exclude=FP16_EXCLUDED if fp16 else ())
        say("trace")
        proto = build_onnx(model, plans, input_shape=shape, batch=batch, opset=opset, custom=any(p.form == "custom" for p in plans),
                           num_outputs=num_outputs, example_batch=example_batch, progress=progress)
        counts = {}
        if fp16:
            from odexport.export.precision import convert_to_mixed_precision

            counts = convert_to_mixed_precision(proto, {p.name for p in plans})
        from odexport.reparam.base import recorded_passes  # lazy: the exporter does not need the passes themselves

        metadata = {
            keys.VERSION: _version(),
            keys.SOURCE_SHA256: source_sha256 or state_dict_sha256(model),
            keys.SOURCE_KIND: "checkpoint" if source_sha256 else "state_dict",
            keys.ARCH: architecture or "",
            keys.MODEL_CLASS: f"{type(model).__module__}.{type(model).__qualname__}",
            keys.MODEL_KWARGS: json.dumps(model_kwargs or {}, sort_keys=True, default=str),
            keys.FORM: form,
            keys.FORMS: json.dumps([{"name": p.name, "form": p.form, "variant": p.variant} for p in plans]),
            keys.OPSET: str(opset),
            keys.BATCH: "dynamic" if batch is None else str(batch),
            keys.INPUT_SHAPE: "x".join(map(str, shape)),
            keys.PRECISION: "fp16" if fp16 else "fp32",
            keys.TARGET: target,
            # which reparameterisation passes changed the exported model: `check --per-layer` redoes them on the checkpoint
            keys.REPARAM_PASSES: ",".join(recorded_passes(model)),
            **{keys.prefixed(k): str(v) for k, v in (extra_metadata or {}).items()},
        }
        onnx.helper.set_model_props(proto, metadata)
        proto.producer_name, proto.producer_version = "odexport", _version()
        say("check")
        proto = check_model(proto)
        if batch is None:
            _check_symbolic_batch(proto)
        # verified where it was written, beside -o: the previous output stays whole until this one passes
        staged = stage_model(proto, out)
        try:
            result = ExportResult(out, metadata, plans, None, sidecar_path(out), counts)
            if check:
                say("verify")
                batches = tuple(check_batches) if batch is None else (batch,)
                result.parity = compare_with_torch(model, str(staged), shape, batches=batches, seed=seed,
                                                   precision="fp16" if fp16 else "fp32")
            if result.parity is not None and not result.parity.passed:
                return _fail_parity(result, staged)
            # the sidecar is written first and renamed just after the model: the pair changes together
            with atomic_path(result.sidecar) as sidecar:
                sidecar.write_text(_json_text(_sidecar(result)), encoding="utf-8")
                commit_staged_model(staged, out)
            if result.parity is not None:  # verified, and passed: an unverified export proves nothing about the failure
                _remove_superseded_failure(out)
            return result
        finally:
            discard_staged_model(staged)
    finally:
        model.train(was_training)


def _sidecar(result: ExportResult) -> dict:
    data = result.to_dict()
    data["metadata"] = dict(result.metadata, **{keys.FORMS: json.loads(result.metadata[keys.FORMS])})
    return data


def _remove_superseded_failure(path: Path) -> None:
    """A new export at ``path`` supersedes the ``.parity-failed.onnx`` an earlier, failing export
    kept beside it: left there, it would read as this export's failure."""
    failed = failed_path(path)
    for stale in (failed, sidecar_path(failed), failed.with_name(failed.name + ".data")):
        stale.unlink(missing_ok=True)


def _fail_parity(result: ExportResult, staged: Path) -> ExportResult:
    """Keep the failed model as ``<stem>.parity-failed.onnx`` (saved again under that name, so a
    large model refers to its own external data) and raise; ``-o`` keeps what it held."""
    failed = failed_path(result.path)
    failed_sidecar = sidecar_path(failed)
    failed_sidecar.unlink(missing_ok=True)
    write_model_atomically(onnx.load(str(staged)), failed)  # loading takes the tensors back from the staged data
    result.path, result.sidecar = failed, failed_sidecar
    write_json_atomically(_sidecar(result), failed_sidecar)
    error = ParityError(
        f"the exported model does not match PyTorch ({result.parity.summary()}); kept as {failed}",
        "inspect the per-output errors above; try another --form, or report it with the sidecar JSON",
    )
    error.result = result
    raise error


def _version() -> str:
    from odexport import __version__

    return __version__
