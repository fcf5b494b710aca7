"""Composes the stages: checkpoint -> torch model -> deploy model -> export -> runtime -> report.

The only module that knows every stage. Each function here is a thin composition of library
calls; the work happens in the stage packages.  Data flows one way: no stage calls back up.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odexport.export import metadata_keys as keys  # names only: imports neither torch nor onnx

if TYPE_CHECKING:  # annotations only: importing them here would load torch with the pipeline
    from torch import nn

    from odexport.checkpoint import LoadedModel
    from odexport.engine.build import BuildResult
    from odexport.export import ExportResult
    from odexport.report import BenchReport, ParityReport
    from odexport.runtime.ort_specialise import SpecialisedModel

__all__ = ["model_from_checkpoint", "run_artifact", "onnx_from_model", "deploy_model", "onnx_from_loaded", "onnx_from_checkpoint",
           "validate_deploy_options", "deploy_from_loaded", "deploy_from_checkpoint", "check_parity", "benchmark", "ort_cpu_from_onnx", "engine_from_onnx"]


def _keeps_torch_threads(function):
    """``threads=`` sets torch's one process-wide thread pool (:class:`odexport.runtime.TorchRunner`);
    a library call gives the pool back at the size it found it."""
    @functools.wraps(function)
    def call(*args, **kwargs):
        if kwargs.get("threads") is None:
            return function(*args, **kwargs)
        import torch

        before = torch.get_num_threads()
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return call

# -- checkpoints (checkpoint engineer) ----------------------------------------------------------

def model_from_checkpoint(path, *, arch=None, kernel_num=None, temperature=None, trust_pickle: bool = False,
                          factory=None, prefer_ema: bool = False, submodel=None) -> LoadedModel:
    """Checkpoint file -> :class:`odexport.checkpoint.LoadedModel` (``.model`` in eval mode, ``.info``).

    Reads safely (weights only unless ``trust_pickle``), detects the architecture from key names
    and shapes unless ``arch`` names it, or builds the user's own with ``factory``
    (``"module:function"``); also accepts deploy checkpoints written by ``odexport reparam``.
    Every dynamic layer runs at ``temperature`` (default 1.0, the trained network's value).
    ``submodel`` picks the part of a composite (e.g. mmdet detector) checkpoint to load.
    """
    from odexport.checkpoint import load_checkpoint

    return load_checkpoint(path, arch=arch, kernel_num=kernel_num, temperature=temperature, trust_pickle=trust_pickle,
                           factory=factory, prefer_ema=prefer_ema, submodel=submodel)


def inspect_checkpoint(source, *, arch=None, kernel_num=None, temperature=None, trust_pickle: bool = False, factory=None,
                       prefer_ema: bool = False, submodel=None, input_shape=None, progress=None):
    """Checkpoint file (or a registered architecture name, built with random weights) ->
    ``(summary, analysis)``: ``summary`` is the JSON object of ``odexport inspect --json``
    (provenance, configuration, parameter and MAC totals, one row per layer, notes), ``analysis``
    the :class:`odexport.analysis.ModelAnalysis` it was made from.  Counted at ``input_shape``
    (CxHxW), else the checkpoint's own, else 3x224x224; nothing is written.
    """
    from odexport.analysis import analyse_model
    from odexport.checkpoint import load_model
    from odexport.checkpoint.loader import INPUT_SHAPE_ASSUMED

    say = progress or (lambda message: None)
    say(f"load {source}")
    loaded = load_model(source, arch=arch, kernel_num=kernel_num, temperature=temperature, trust_pickle=trust_pickle,
                        prefer_ema=prefer_ema, factory=factory, submodel=submodel, materialize=False)
    from odexport.checkpoint.loader import drop_default_input_note

    drop_default_input_note(loaded.info, input_shape)  # counted at the size given
    shape = tuple(input_shape or loaded.info.input_shape or (3, 224, 224))
    say(f"count parameters and MACs at {'x'.join(map(str, shape))}")
    analysis = analyse_model(loaded.model, shape)
    summary = inspect_summary(loaded.info, analysis)
    if not input_shape and loaded.info.extras.get(INPUT_SHAPE_ASSUMED):
        summary["notes"].append(f"MACs counted at an assumed {'x'.join(map(str, shape))}: a --factory model records no input size "
                                "(pass --input-shape CxHxW, the size it was trained at)")
    return summary, analysis


KAIJIESHI7_NOTE = ("kaijieshi7's Dynamic_conv2d starts training at temperature 34 (its constructor default) and anneals to 1; "
                   "a trained network is evaluated at 1")


def model_input_shape(info, input_shape=None, *, purpose: str) -> tuple[int, ...] | None:
    """The sample shape (C, H, W) to use: ``input_shape`` when given, else the checkpoint's own.

    A ``--factory`` model records none; loading assumes its first convolution's channels at
    224x224, which is fine for looking at it but not for writing a file from it: an export at the
    wrong size is a graph onnxruntime refuses at the real one.  There an InputError asks for
    ``--input-shape``.  A given ``input_shape`` withdraws the load note that suggests one."""
    from odexport.checkpoint.loader import INPUT_SHAPE_ASSUMED, drop_default_input_note

    if input_shape:
        drop_default_input_note(info, input_shape)  # its advice is taken
        return tuple(input_shape)
    if info.extras.get(INPUT_SHAPE_ASSUMED):
        raise _unrecorded_size_error(info, purpose)
    return tuple(info.input_shape) if info.input_shape else None


def _unrecorded_size_error(info, purpose: str):
    from odexport.errors import InputError

    made_up = "x".join(map(str, info.input_shape))
    return InputError(f"{purpose} needs the model's input size, which {info.arch or 'this model'} does not record "
                      f"(a --factory model; {made_up} would be a guess)",
                      "pass --input-shape CxHxW, the size the model was trained at")


def inspect_summary(info, analysis) -> dict:
    """The ``--json`` object: provenance, configuration, totals and one row per layer."""
    notes = list(info.warnings)
    layouts = {info.layout} | set(info.extras.get("reference_layouts", []))
    no_dynamic_layer = info.temperature is None and not info.extras.get("temperatures")  # every layer collapsed to a static conv
    if "kaijieshi7" in layouts and not no_dynamic_layer and not any("training start value" in note for note in notes):
        in_use = f"temperature {info.temperature:g} is in use" if info.temperature is not None else "temperatures differ per layer"
        notes.append(f"{in_use}; {KAIJIESHI7_NOTE}")
    frozen = _recorded_freeze(info)
    if frozen:
        notes.append(f"{frozen}: this file differs from its source by design")
    if info.extras.get("temperature_folded"):
        which = f"temperature {info.temperature}" if info.temperature is not None else "the layers' temperatures"
        notes.append(f"{which} {'is' if info.temperature is not None else 'are'} folded into the attention weights (by `odexport reparam`); "
                     "the layers run at T=1 and the temperature cannot be changed")
    from odexport.checkpoint.loader import DEFAULT_INPUT_NOTE

    extras = {k: v for k, v in info.extras.items() if k not in ("warnings", "manifest", DEFAULT_INPUT_NOTE)}  # notes are in "notes"
    return {
        "source": {"kind": info.source, "path": None if info.path is None else str(info.path), "sha256": info.sha256},
        "sha256": info.sha256,
        "arch": info.arch,
        "layout": info.layout,
        "model_kwargs": info.model_kwargs,
        "num_classes": info.num_classes,
        "input_shape": list(analysis.input_shape),
        "output_shape": None if analysis.output_shape is None else list(analysis.output_shape),
        "output_shapes": [list(shape) for shape in analysis.output_shapes],
        "temperature": info.temperature,
        "temperatures": info.extras.get("temperatures"),
        "params": analysis.params,
        "params_dynamic_layers": analysis.dynamic_params,
        "params_attention": analysis.attention_params,
        "macs": analysis.macs_dict(),
        "num_layers": len(analysis.layers),
        "num_dynamic_layers": analysis.num_dynamic_layers,
        "layers": [row.to_dict() for row in analysis.layers],
        "notes": notes,
        "extras": extras,
    }


@_keeps_torch_threads
def run_artifact(artifact, inputs, *, backend=None, device: str = "cpu", threads=None, arch=None, temperature=None,
                 trust_pickle: bool = False, factory=None, submodel=None, prefer_ema: bool = False) -> dict[str, Any]:
    """Run a checkpoint (or module, ONNX file, engine) on an input batch -> ``(outputs, runner facts)``.

    ``inputs``: an (N, C, H, W) array or a path to ``.npy``/``.npz``/``.pt``.  Checked before
    running: rank 4 and the model's channel count (one-line :class:`odexport.errors.InputError`).
    Returns ``{"outputs": {name: float32 array}, "backend": str, "info": CheckpointInfo | None,
    "input_shape": tuple, "input_notes": [str]}`` (integer images run unscaled: said there).
    Opening goes through :func:`odexport.runtime.open_runner`, so ``backend`` picks or checks the
    backend for each kind of artifact.
    """
    import os

    import numpy as np

    from odexport.checkpoint.arrays import check_input_batch, read_input_array
    from odexport.errors import InputError
    from odexport.runtime import artifact_kind, open_runner
    from odexport._memory import file_load_bytes, require_batch_fits

    # a file is sized from its headers and read only once the batch is known to fit: loading it
    # first could itself meet the OOM killer before the check could speak
    described = file_load_bytes(inputs) if isinstance(inputs, (str, os.PathLike)) else None
    if described is not None and not (np.issubdtype(described[3], np.floating) or np.issubdtype(described[3], np.integer)):
        described = None  # pickled objects, strings: the load names what it holds
    input_notes: list[str] = []
    if isinstance(inputs, (str, os.PathLike)) and described is None:
        x = read_input_array(inputs, notes=input_notes)  # a file the headers do not describe: its load says what is wrong
    elif described is None:
        from odexport.checkpoint.arrays import integer_input_note

        input_notes = [note] if (note := integer_input_note(inputs, "the array")) else []
        x = np.ascontiguousarray(inputs, dtype=np.float32)
    else:
        x = np.broadcast_to(np.float32(0), described[2])  # the shape alone (no memory) until the batch fits
    single = x.ndim == 3  # one (C, H, W) sample without its batch axis, if C is the model's channel count (as `check` takes it)
    if not single:
        check_input_batch(x, None)
    kind = artifact_kind(artifact)
    given = [option for option, value in (("--temperature", temperature), ("--arch", arch), ("--factory", factory),
                                          ("--submodel", submodel), ("--ema", prefer_ema or None)) if value is not None]
    if kind in ("onnx", "engine") and given:  # an export computes what it was exported with: running it "at T=2" would not
        raise InputError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to checkpoints, not to {artifact}, "
                         "which computes what it was exported with",
                         "drop the option, or export the checkpoint with it (`odexport onnx CKPT ... -o new.onnx`) and run that")
    load = dict(arch=arch, temperature=temperature, trust_pickle=trust_pickle, factory=factory, submodel=submodel,
                prefer_ema=prefer_ema) if kind == "checkpoint" else {}
    if kind == "module" and temperature is not None:
        load["temperature"] = temperature
    # torch runs any H x W a CNN accepts: fix the runner's sample shape to this input's, after checking channels
    shape = tuple(int(d) for d in x.shape[int(not single):]) if kind in ("checkpoint", "module") else None
    runner = open_runner(artifact, backend, device=device, threads=threads, input_shape=shape, **load)
    try:
        info = getattr(runner, "checkpoint_info", None)
        expected = info.input_shape[0] if info is not None and info.input_shape else None
        if expected is None and runner.inputs and isinstance(runner.inputs[0].shape[1], int):
            expected = runner.inputs[0].shape[1]
        if single and expected is not None and x.shape[0] == expected:
            x = x[None]
        check_input_batch(x, expected)
        # the file's arrays (held while it runs, with their float32 copy) and what running the batch
        # takes on top: one bound, so its hint is the one file size that fits both
        carried = -(-described[0] // max(len(x), 1)) if described else 0  # the file's bytes per sample, with the float32 copy
        require_batch_fits(len(x), x.shape[1:], [runner.step_bytes], drawn=False, carried=carried,
                           advice="split the input into files of at most {most} samples and run each")
        if described is not None:
            x = read_input_array(inputs, notes=input_notes)
            x = x[None] if single and x.ndim == 3 else x
        outputs = runner.infer(x)
    finally:
        runner.close()
    return {"outputs": {k: np.asarray(v, dtype=np.float32) for k, v in outputs.items()}, "backend": runner.backend,
            "info": info, "input_shape": tuple(x.shape), "input_notes": input_notes}


# -- ONNX export (export engineer) ----------------------------------------------------------------

def onnx_from_model(model, path, *, form: str = "auto", opset: int = 18, batch=None, input_shape=(3, 224, 224),
                    fp16: bool = False, target: str = "cpu", check: bool = True, **options) -> ExportResult:
    """Torch model with odexport dynamic convs -> ONNX file -> :class:`odexport.export.ExportResult`
    (``path``, ``metadata``, ``forms`` = per-layer :class:`odexport.export.LayerPlan`, ``parity``).

    ``form``: auto | custom | decomposed | grouped; ``batch`` None keeps the batch symbolic
    (axis ``batch``; input ``input``, output ``output``); ``check`` compares onnxruntime CPU with
    PyTorch at batch 1, 2 and 7 (:class:`odexport.errors.ParityError`, exit 2, on failure).
    ``options`` go to :func:`odexport.export.onnx_export.export_onnx` (``architecture``,
    ``model_kwargs``, ``source_sha256``, ``progress``, ...).
    """
    from odexport.export.onnx_export import export_onnx

    return export_onnx(model, path, form=form, opset=opset, batch=batch, input_shape=input_shape, fp16=fp16,
                       target=target, check=check, **options)


def deploy_model(loaded, *, reparam: bool = True, progress=None) -> tuple[nn.Module, str | None]:
    """A loaded checkpoint's model as ``odexport onnx`` exports it -> ``(model, reparam note)``.

    Reparameterised with the exact default passes unless ``reparam`` is False or the checkpoint is
    a deploy checkpoint (already reparameterised by ``odexport reparam``); the note is what the
    export records as ``odexport.reparam`` (None when nothing was done).  The loaded model itself
    is never modified.  ``progress`` is called with ``"reparam"`` when it reparameterises.
    """
    if not reparam or getattr(loaded.info, "source", None) == "deploy":
        return loaded.model, None
    from odexport.reparam import DEFAULT_PASSES_NOTE, reparameterise

    if progress is not None:
        progress("reparam")
    return reparameterise(loaded.model).model.eval(), DEFAULT_PASSES_NOTE


def onnx_from_loaded(loaded, path, *, form: str = "auto", opset: int = 18, batch=None, input_shape=None,
                     reparam: bool = True, fp16: bool = False, target: str = "cpu", check: bool = True, progress=None) -> ExportResult:
    """What ``odexport onnx`` writes for a loaded checkpoint -> :class:`odexport.export.ExportResult`.

    :func:`deploy_model`, then :func:`onnx_from_model` with the checkpoint's provenance in the
    metadata (architecture, options, sha256, temperature, reparameterisation, EMA entry, a deploy
    checkpoint's source), which ``check`` and ``bench`` read to find the reference and the twin.
    ``input_shape`` defaults to the checkpoint's.  ``progress`` is called with each stage's name.
    """
    from odexport.checkpoint.info import explain_non_finite
    from odexport.errors import InputError

    info = loaded.info
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in loaded.model.parameters() if p.is_floating_point()} - {"float32"})
    if dtypes:  # only a --factory model can be built so: the library's "call model.float()" is no step on the command line
        raise InputError(f"the model built by {info.arch or 'the factory'} has {', '.join(dtypes)} parameters; an export starts from float32",
                         "return model.float() from the --factory function (--fp16 then makes a half-precision export from it)"
                         if "factory" in (getattr(info, "source", None), getattr(info, "layout", None)) else "call model.float() first (--fp16 makes a half-precision export)")
    shape = model_input_shape(info, input_shape, purpose="the export")
    if shape is None:
        raise InputError("the input shape of this model is unknown", "pass --input-shape CxHxW, e.g. 3x224x224")
    model, reparam_note = deploy_model(loaded, reparam=reparam, progress=progress)
    try:
        return onnx_from_model(model, path, form=form, opset=opset, batch=batch, input_shape=shape, fp16=fp16, target=target,
                               check=check, architecture=info.arch, model_kwargs=info.model_kwargs,
                               source_sha256=info.sha256, extra_metadata=_provenance(info, reparam_note), progress=progress)
    except InputError as exc:  # a model computing NaN: name the broken weights, which loading found
        better = explain_non_finite(exc, info)
        if better is None:
            raise
        raise better from exc


def onnx_from_checkpoint(path, output, *, form: str = "auto", opset: int = 18, batch=None, input_shape=None,
                         reparam: bool = True, fp16: bool = False, target: str = "cpu", check: bool = True, progress=None,
                         **load) -> ExportResult:
    """``odexport onnx CKPT -o OUTPUT`` as a call: :func:`model_from_checkpoint` (``load``: ``arch``,
    ``temperature``, ``prefer_ema``, ...) then :func:`onnx_from_loaded` -> :class:`odexport.export.ExportResult`."""
    return onnx_from_loaded(model_from_checkpoint(path, **load), output, form=form, opset=opset, batch=batch,
                            input_shape=input_shape, reparam=reparam, fp16=fp16, target=target, check=check, progress=progress)


# relative: the exact passes reorder float32 arithmetic (folded BatchNorms, fused heads), which
# moves the outputs by ~1e-7 to 1e-6 of their scale; a pass that is wrong moves them by far more
DEPLOY_TOLERANCE = 1e-4


def _fold_temperature_undone(model, report) -> str | None:
    """The likely cause of a deviation, when it is the user's forward: a model whose
    forward(x, temperature) takes the temperature may hand it to its layers itself, after
    fold-temperature set them to 1, so the fold counts twice.  None otherwise."""
    from odexport.convert import TemperatureArgModel
    from odexport.reparam import DEFAULT_PASSES

    if isinstance(model, TemperatureArgModel) and "fold-temperature" in report.passes_applied:
        others = ",".join(name for name in DEFAULT_PASSES if name != "fold-temperature")
        return ("the model's forward takes the temperature and may set its layers' temperature itself, which undoes "
                f"fold-temperature: leave that pass out with --passes {others}")
    return None


def validate_deploy_options(passes="default", *, calibration=None, freeze_below=None, tolerance: float = DEPLOY_TOLERANCE,
                            dy_bn_shift: str = "auto") -> list[str]:
    """Refuse :func:`deploy_from_loaded`'s options before anything is loaded -> the pass names."""
    from odexport.errors import InputError
    from odexport.reparam import resolve_passes

    if dy_bn_shift not in ("auto", "dynamic"):
        raise InputError(f"--dy-bn-shift {dy_bn_shift!r} is not 'auto' or 'dynamic'", "use --dy-bn-shift auto or --dy-bn-shift dynamic")
    if freeze_below is not None and calibration is None:
        raise InputError("--freeze-below needs --calibration", "give the calibration inputs with --calibration FILE")
    if not 0 <= tolerance < float("inf"):  # NaN fails every deviation, inf none: neither is a gate
        raise InputError(f"--tolerance {tolerance} is not a finite number >= 0",
                         f"use e.g. --tolerance {DEPLOY_TOLERANCE:g} (the default), or --no-check to skip the check")
    return resolve_passes(passes)


def deploy_from_loaded(loaded, output, *, passes="default", calibration=None, freeze_below=None, check: bool = True,
                       tolerance: float = DEPLOY_TOLERANCE, dy_bn_shift: str = "auto", input_shape=None,
                       progress=None) -> tuple[Path, Any]:
    """What ``odexport reparam`` writes for a loaded checkpoint -> ``(deploy path, ReparamReport)``.

    ``passes`` is a pass list or its text (``"default"``, ``"none"``, ``"fold-bn,fuse-heads"``);
    ``calibration`` (an ``.npy``/``.npz`` path) measures each layer's attention spread and, with
    ``freeze_below``, freezes the layers below it (approximate; reported).  With ``check``, two
    seeded random inputs run through the source and the deploy model, and a relative deviation
    ``max|deploy - source| / max|source|`` above ``tolerance`` raises
    :class:`~odexport.errors.ParityError` with nothing written.  The loaded model is not modified.
    ``progress`` is called with each stage's name.
    """
    from dataclasses import replace

    from odexport.checkpoint.info import explain_non_finite
    from odexport.checkpoint.loader import INPUT_SHAPE_ASSUMED
    from odexport.errors import InputError, ParityError
    from odexport.reparam import reparameterise
    from odexport.reparam.deploy import save_deploy
    from odexport.runtime.batching import load_samples, random_samples

    progress = progress or (lambda _name: None)
    pass_names = validate_deploy_options(passes, calibration=calibration, freeze_below=freeze_below, tolerance=tolerance,
                                         dy_bn_shift=dy_bn_shift)
    frozen = _recorded_freeze(loaded.info)
    if frozen and calibration is not None:  # its spreads and agreement would be measured against the frozen model
        raise InputError(f"{loaded.info.path} already has {frozen}; measuring or freezing again would measure against that file "
                         "and replace its record",
                         "run `odexport reparam` on the source checkpoint with the --calibration (and --freeze-below) you want")
    calib = None
    if calibration is not None:
        progress(f"read calibration inputs {calibration}")
        if not input_shape and loaded.info.extras.get(INPUT_SHAPE_ASSUMED):
            read = load_samples(calibration, None, option="--calibration")
            if read.x.ndim == 4:  # the model records no input size (--factory): the user's own images have it, as --input-shape
                input_shape, calib = _size_of_images(read.x, loaded.info, calibration), read
    shape = (model_input_shape(loaded.info, input_shape, purpose="the output check" if check else "reading --calibration")
             if check or calibration is not None or input_shape else None)
    if calibration is not None and calib is None:
        calib = load_samples(calibration, shape, option="--calibration")
    if calib is not None:
        if calib.note:  # the spreads, and so what is frozen, are measured at the scale the inputs have
            loaded.info.extras.setdefault("warnings", []).append(calib.note)
        calib = calib.x
    check_x = None
    if check:
        if shape is None:
            raise InputError("the input shape of this model is unknown, so the output check cannot run",
                             "give --input-shape CxHxW, or skip the check with --no-check")
        check_x = random_samples(2, shape, seed=0).x
    progress("reparameterise")
    try:
        report = reparameterise(loaded.model, pass_names, calibration=calib, freeze_below=freeze_below,
                                check_input=check_x, dy_shift=dy_bn_shift)
    except InputError as exc:  # a model computing NaN: name the broken weights, which the load note would have said
        better = explain_non_finite(exc, loaded.info)
        if better is None:
            raise
        raise better from exc
    deviation = None if report.check is None else report.check["max_relative_deviation"]
    if deviation is not None and not deviation <= tolerance:
        rounding = deviation <= DEPLOY_TOLERANCE  # what reordered float32 arithmetic does: no pass is at fault
        raise ParityError(
            f"the reparameterised model deviates from the source by {deviation:.3g} (relative) on random inputs, "
            f"above the tolerance {tolerance:g}; nothing was written",
            f"a deviation this small is float32 rounding (folding reorders the arithmetic): use --tolerance {DEPLOY_TOLERANCE:g} "
            "(the default) or above" if rounding else _fold_temperature_undone(loaded.model, report) or
            "this is a bug in odexport: report it with `--explain` output, or drop the pass at fault with --passes",
        )
    progress(f"write {output}")
    source_info = loaded.info
    # a --factory model's size given here is recorded: a later `odexport onnx DEPLOY` exports at it
    # (a zoo model keeps its architecture's own size)
    if input_shape and source_info.extras.get(INPUT_SHAPE_ASSUMED):
        source_info = replace(source_info, input_shape=tuple(input_shape),
                              extras={k: v for k, v in source_info.extras.items() if k != INPUT_SHAPE_ASSUMED})
    return save_deploy(report.model, report, output, source_info), report


def deploy_from_checkpoint(path, output, *, passes="default", calibration=None, freeze_below=None, check: bool = True,
                           tolerance: float = DEPLOY_TOLERANCE, dy_bn_shift: str = "auto", input_shape=None, progress=None,
                           **load) -> tuple[Path, Any]:
    """``odexport reparam CKPT -o OUTPUT`` as a call: :func:`model_from_checkpoint` (``load``: ``arch``,
    ``temperature``, ``prefer_ema``, ...) then :func:`deploy_from_loaded` -> ``(deploy path, ReparamReport)``."""
    validate_deploy_options(passes, calibration=calibration, freeze_below=freeze_below, tolerance=tolerance, dy_bn_shift=dy_bn_shift)
    return deploy_from_loaded(model_from_checkpoint(path, **load), output, passes=passes, calibration=calibration,
                              freeze_below=freeze_below, check=check, tolerance=tolerance, dy_bn_shift=dy_bn_shift,
                              input_shape=input_shape, progress=progress)


def _provenance(info, reparam_note) -> dict:
    """Metadata beyond the checksum: how the model was reparameterised and, for a deploy
    checkpoint, the checkpoint it was made from (so `odexport check ORIGINAL` knows the export)."""
    from odexport.reparam.deploy import used_ema_entry

    deployed = getattr(info, "source", None) == "deploy"  # reparameterised already, by `odexport reparam`
    extra = {keys.REPARAM: reparam_note or ("no: a deploy checkpoint, reparameterised by `odexport reparam`" if deployed else "no")}
    if getattr(info, "temperature", None) is not None:  # `check` names a reference run at another one
        extra[keys.TEMPERATURE] = repr(float(info.temperature))
    if info.origin_sha256:
        extra[keys.DEPLOY_SOURCE_SHA256] = info.origin_sha256
    frozen = _recorded_freeze(info)
    if frozen:  # `check` says the export is approximate, with what the freeze measured
        extra[keys.FREEZE] = frozen
    ema = used_ema_entry(info)
    if ema:  # `check` names a reference run on the plain weights
        extra[keys.WEIGHTS_ENTRY] = ema
    return extra


# -- parity gate and benchmark (check engineer) -------------------------------------------------

@_keeps_torch_threads
def check_parity(reference, candidates, *, samples: int = 8, seed: int = 0, inputs=None, batch_sizes=(1, 2, 8),
                 reference_dtype: str = "float32", tolerances=None, per_layer: bool = False, input_shape=None,
                 arch=None, temperature=None, trust_pickle: bool = False, factory=None, threads=None,
                 noise_margin=None, progress=None, submodel=None, device: str = "cpu", prefer_ema: bool = False) -> ParityReport:
    """Compare each candidate with ``reference`` run in PyTorch -> :class:`odexport.report.ParityReport`.

    Candidates (.onnx, engines, checkpoints) run every sample at each batch size; a batch size a
    candidate rejects is a failure of that candidate (a baked-in batch), not an exception.
    ``tolerances`` is a :class:`odexport.report.ToleranceOverrides` (defaults by precision).
    The reference also runs in the other float precision (float64 for a float32 reference) to
    measure its own rounding noise, which floors the default atol at ``noise_margin`` (default
    :data:`odexport.report.compare.NOISE_MARGIN`) times it; ``noise_margin=0`` skips that run.
    ``device`` (cpu | cuda) is where .onnx and checkpoint candidates run (onnxruntime's CUDA
    provider, PyTorch CUDA; engines always run on the GPU); the reference stays on the CPU.
    ``progress`` is called with each stage's name.
    """
    import math
    import os

    import numpy as np

    from odexport.errors import InputError, MissingDependencyError
    from odexport.report.parity import parity_report
    from odexport.runtime import artifact_kind, open_runner, require_artifact_exists
    from odexport.runtime.batching import Samples, load_samples, random_samples, run_batched, samples_from_array
    from odexport._memory import require_batch_fits, require_outputs_fit, require_samples_fit
    from odexport.runtime.parity import onnx_layer_values, run_candidate

    stage = progress or (lambda _name: None)
    candidates, batch_sizes = _one_or_many(candidates), sorted(set(_batch_sizes(batch_sizes)))
    if not candidates:  # a report of nothing would neither pass nor raise
        raise InputError("no candidates to check", "pass at least one artifact to compare with the reference (an ONNX file, an engine, a checkpoint)")
    if noise_margin is not None and not math.isfinite(noise_margin):  # inf would switch the gate off
        raise InputError(f"--noise-margin {noise_margin} is not a finite number", "use e.g. --noise-margin 5, or 0 to skip it")
    if noise_margin is not None and noise_margin < 0:  # no floor at all, yet the extra run is paid: say so
        raise InputError(f"--noise-margin {noise_margin} is negative", "use e.g. --noise-margin 5, or 0 to skip it")
    if reference_dtype not in ("float32", "float64"):
        raise InputError(f"--reference-dtype {reference_dtype!r} is not supported", "use float32 or float64")
    if device not in ("cpu", "cuda"):  # else every candidate would be refused one by one for the same reason
        raise InputError(f"--device {device!r} is not supported", "use cpu or cuda")
    in_file = isinstance(inputs, (str, os.PathLike))
    load = dict(arch=arch, temperature=temperature, trust_pickle=trust_pickle, factory=factory, submodel=submodel, prefer_ema=prefer_ema)
    if artifact_kind(reference) not in ("checkpoint", "module"):
        raise InputError(f"the reference {reference} is not a checkpoint: the reference runs in PyTorch",
                         "pass the checkpoint the artifacts were made from first, then the artifacts to check")
    for candidate in candidates:  # a mistyped path stops the run at once; a file that is there but wrong is reported
        require_artifact_exists(candidate)
    stage(f"load reference {reference}")
    ref = open_runner(reference, "torch", dtype=reference_dtype, input_shape=input_shape, threads=threads, **load)
    stage("open candidates")
    opened, missing, refused = [], {}, {}
    for candidate in candidates:
        try:
            opened.append((candidate, open_runner(candidate, dtype="float32", threads=threads, device=device,
                                                  **({**load, "shared_options": True} if artifact_kind(candidate) == "checkpoint" else {}))))
        except MissingDependencyError as exc:  # e.g. an engine on a machine without TensorRT: compare the others
            missing[str(candidate)] = exc
        except InputError as exc:  # a corrupt file, an ort file for another onnxruntime: reported, the others still run
            refused[str(candidate)] = exc
    order = [str(candidate) for candidate in candidates]  # reports list candidates as the command line did
    if not opened:  # nothing to compare: a report that says so (CI uploads it), with no samples drawn
        ref.close()
        none_drawn = Samples(np.empty((0, *(input_shape or ref.input_shape or ())), np.float32), None, "none")
        return parity_report(_described_reference(ref, reference, reference_dtype, {}), none_drawn.describe(),
                             batch_sizes, {}, [], missing=_not_run(missing), refused=_not_run(refused), order=order)
    shape = tuple(input_shape) if input_shape else ref.input_shape
    shape_note, data = None, None
    if not input_shape:
        shape, shape_note = _export_sample_shape(opened, getattr(ref, "checkpoint_info", None), shape)
    if not input_shape and shape_note is None and _size_unrecorded(getattr(ref, "checkpoint_info", None)):
        if inputs is not None:  # the user's own images have the size (a single sample without its batch axis: read again below)
            data = load_samples(inputs, None) if in_file else samples_from_array(inputs, None)
            data = data if data.x.ndim == 4 else None
        shape, shape_note = _size_for_unsized_reference(reference, ref.checkpoint_info, opened, data)
    for _, runner in opened:
        shape = shape or getattr(runner, "input_shape", None)
    if shape is None:
        raise InputError("cannot tell the input shape of one sample", "pass --input-shape CxHxW, e.g. 3x224x224")
    ref.input_shape = shape
    from odexport.checkpoint.loader import drop_default_input_note

    drop_default_input_note(getattr(ref, "checkpoint_info", None), shape)  # checked at a size given or an export's own
    for candidate, runner in list(opened):
        try:
            _require_sample_shape(candidate, runner, shape, reference, given=bool(input_shape),
                                  same_source=_exported_from(runner, getattr(ref, "checkpoint_info", None)))
        except InputError as exc:  # an export of another model or size: this candidate cannot run on these samples
            runner.close()
            opened.remove((candidate, runner))
            refused[str(candidate)] = exc
            continue
        if getattr(runner, "backend", "").startswith("torch"):
            runner.input_shape = shape  # a checkpoint fixes no sample shape: it runs on the reference's samples
    if not opened:
        ref.close()
        none_drawn = Samples(np.empty((0, *shape), np.float32), None, "none")
        return parity_report(_described_reference(ref, reference, reference_dtype, {}), none_drawn.describe(),
                             batch_sizes, {}, [], missing=_not_run(missing), refused=_not_run(refused), order=order)
    if inputs is None:
        require_samples_fit(samples, shape)
        data = random_samples(samples, shape, seed)
    elif data is None:
        data = load_samples(inputs, shape) if in_file else samples_from_array(inputs, shape)
    # every batch is a copy of samples: with them held, the largest must fit (else the OOM killer ends the run)
    require_batch_fits(max(batch_sizes), shape, [ref.step_bytes, *(runner.step_bytes for _, runner in opened)],
                       held=data.x.nbytes, drawn=False)
    stage(f"reference on {data.x.shape[0]} samples")
    reference_outputs = run_batched(ref, data.x, max(batch_sizes))
    _require_finite_reference(reference, reference_outputs, getattr(ref, "checkpoint_info", None))
    labels_note = _check_labels(data, reference_outputs, data.source)
    if tolerances is not None:
        tolerances.require_known(reference_outputs)
    require_outputs_fit(len(data.x), sum(v.nbytes for v in reference_outputs.values()) // len(data.x),
                        1 + len(batch_sizes) * len(opened), held=data.x.nbytes,
                        advice="pass at most {most} samples in --inputs" if inputs is not None else "use --samples of at most {most}")
    noise, other_precision = {}, None
    if noise_margin is None or noise_margin > 0:
        from odexport.runtime.torch_runner import TorchRunner

        other = "float64" if reference_dtype == "float32" else "float32"
        stage(f"reference in {other} (its own rounding noise)")
        other_precision = TorchRunner(ref.model, dtype=other, input_shape=shape, threads=threads)
        alt = run_batched(other_precision, data.x, max(batch_sizes))
        noise = {k: float(np.abs(alt[k].astype(np.float64) - v.astype(np.float64)).max()) for k, v in reference_outputs.items() if k in alt}
        del alt  # its maximum difference is all that is kept
    runs = []
    for artifact, runner in opened:
        stage(f"candidate {artifact}")
        run = run_candidate(runner, artifact, data.x, batch_sizes)
        for note in (_architecture_note(runner, getattr(ref, "checkpoint_info", None)),
                     _provenance_note(runner, getattr(ref, "checkpoint_info", None), reference),
                     _temperature_note(runner, getattr(ref, "checkpoint_info", None)),
                     _ema_note(runner, getattr(ref, "checkpoint_info", None)),
                     _freeze_note(runner, getattr(ref, "checkpoint_info", None)),
                     _single_sample_note(len(data.x), batch_sizes), shape_note, labels_note, data.note):
            if note:
                run.notes.append(note)
        if per_layer and artifact_kind(artifact) == "onnx":
            stage(f"per-layer values of {artifact}")
            batch = runner.inputs[0].shape[0]  # a fixed batch is the only one the graph runs
            batch = batch if isinstance(batch, int) and batch > 0 else min(len(data.x), max(batch_sizes))
            layer_model, layer_noise_model, layer_note = _per_layer_reference(
                ref.model, None if other_precision is None else other_precision.model, artifact)
            run.layer_values = onnx_layer_values(layer_model, artifact, data.x[np.arange(batch) % len(data.x)], threads=threads,
                                                 noise_model=layer_noise_model, device=device)
            if layer_note and run.layer_values.get("candidate"):  # about the values compared: moot when none were located
                run.layer_values.setdefault("notes", []).insert(0, layer_note)
        runner.close()
        runs.append(run)
    ref.close()
    if other_precision is not None:
        other_precision.close()
    return parity_report(_described_reference(ref, reference, reference_dtype, noise), data.describe(), batch_sizes, reference_outputs,
                         runs, tolerances, data.labels, reference_noise=noise, noise_margin=noise_margin,
                         missing=_not_run(missing), refused=_not_run(refused), order=order)


def _batch_sizes(values) -> list[int]:
    """``values`` (one int or several) as a list of positive ints, in the order given."""
    from odexport.errors import InputError
    from odexport.runtime.base import whole_number

    sizes = _one_or_many(values)
    ints = [n for n in map(whole_number, sizes) if n is not None]
    if not sizes or len(ints) != len(sizes) or min(ints) < 1:
        raise InputError(f"batch sizes {sizes} must be positive integers", "use e.g. --batch-sizes 1,2,8")
    return ints


def _one_or_many(values) -> list:
    """A library caller's one path or number as the list it stands for (a str is not a list of characters)."""
    import os
    from collections.abc import Iterable

    # a number; an nn.Module, which nn.Sequential makes iterable over its layers
    if isinstance(values, (str, bytes, os.PathLike)) or not isinstance(values, Iterable) or hasattr(values, "forward"):
        return [values]
    return list(values)


def _not_run(errors: dict) -> dict:
    """artifact -> (its natural backend, the error that kept it from running), for the report."""
    from odexport.runtime import NATURAL_BACKEND, artifact_kind

    return {artifact: (NATURAL_BACKEND.get(artifact_kind(artifact), ""), exc) for artifact, exc in errors.items()}


def _described_reference(ref, reference, reference_dtype: str, noise: dict) -> dict:
    """The reference as a check report names it."""
    import os

    info = getattr(ref, "checkpoint_info", None)
    named = isinstance(reference, (str, os.PathLike))
    return {"artifact": os.fspath(reference) if named else type(reference).__name__, "backend": ref.backend, "dtype": reference_dtype,
            "arch": getattr(info, "arch", None), "sha256": getattr(info, "sha256", None),
            "temperature": getattr(info, "temperature", None), "rounding_noise": noise,
            "load_notes": list(getattr(info, "warnings", None) or [])}


def _single_sample_note(count: int, batch_sizes) -> str | None:
    """Batches are filled by repeating the samples; with one sample every batch is that sample N
    times, and a candidate that mixes up the samples of a batch computes the same numbers."""
    if count == 1 and max(batch_sizes) > 1:
        return ("one input sample: every batch repeats it, so a candidate that mixes up the samples of a batch "
                "(one sample's kernel used for all) cannot be caught; pass --samples 2 or more (or more samples in --inputs)")
    return None


def _require_finite_reference(reference, reference_outputs, info=None) -> None:
    """A NaN or inf in the reference's own output leaves nothing to compare there (the comparison
    skips non-finite reference values), so a gate that went on would pass on no evidence.  When
    loading found NaN/inf weights (``info``), the message names the first such tensor: that is the
    cause, and the load note would otherwise be lost with the error."""
    import os

    from odexport.checkpoint.info import non_finite_weights_sentence
    from odexport.errors import NON_FINITE_WEIGHTS_FIX, InputError
    from odexport.runtime.batching import non_finite

    label = os.fspath(reference) if isinstance(reference, (str, os.PathLike)) else type(reference).__name__
    for name, values in reference_outputs.items():
        found = non_finite(values)
        if found:
            count, first = found
            weights = non_finite_weights_sentence(info)
            raise InputError(f"the reference {label} computes {count} NaN/inf values "
                             f"in output '{name}' (the first in sample {first})" + (f": {weights}" if weights else ""),
                             NON_FINITE_WEIGHTS_FIX + "; if only some samples are affected, look at those inputs' values")


def _check_labels(data, reference_outputs, inputs) -> str | None:
    """Labels are class indices into the model's first class-scores output: one past its width
    or negative means the labels file belongs to another dataset or counts from 1, and every
    accuracy would be wrong (an input error).  A model with no such output (a dense map, a
    regression) has no accuracy: ``data.labels`` is dropped, and the note returned says so."""
    from odexport.errors import InputError
    from odexport.report.parity import classifier_output

    if data.labels is None or not len(data.labels) or not reference_outputs:
        return None
    scored = classifier_output(reference_outputs)
    if scored is None:
        data.labels = None
        shapes = ", ".join(f"{name} {tuple(value.shape[1:])}" for name, value in reference_outputs.items())
        return f"the labels in {inputs} are not scored: no output is class scores (N, classes) ({shapes})"
    classes = int(reference_outputs[scored].shape[1])
    low, high = int(data.labels.min()), int(data.labels.max())
    if low < 0 or high >= classes:
        raise InputError(f"labels in {inputs} run from {low} to {high}, but the model has {classes} classes",
                         f"store class indices 0..{classes - 1} (labels counted from 1? subtract 1), or omit the labels")


def _architecture_note(runner, reference_info) -> str | None:
    """Say so when the candidate is another architecture than the reference (a checkpoint's
    detected one, or the one an export records): a different model, not a deployment of this one."""
    own = getattr(reference_info, "arch", None)
    info = getattr(runner, "checkpoint_info", None)
    theirs = getattr(info, "arch", None) if info is not None else (getattr(runner, "metadata", None) or {}).get(keys.ARCH)
    if not own or not theirs or own == theirs:
        return None
    return (f"the candidate's architecture is {theirs}, the reference's {own}: another model, not a deployment of "
            "this one -- compare a checkpoint with its own export")


def _temperature_note(runner, reference_info) -> str | None:
    """Say so when an export computes another attention temperature than the reference runs at
    (``odexport onnx -T 30`` checked against the checkpoint at its default 1.0): the outputs differ
    by design, and the failure would otherwise read like a broken export."""
    recorded = (getattr(runner, "metadata", None) or {}).get(keys.TEMPERATURE)
    made = "exported"
    candidate_info = getattr(runner, "checkpoint_info", None)
    if recorded is None and getattr(candidate_info, "extras", {}).get("temperature_folded"):
        recorded, made = candidate_info.temperature, "reparameterised"  # a deploy file made with `reparam -T`
    own = getattr(reference_info, "temperature", None)
    try:
        exported = float(recorded) if recorded else None
    except ValueError:
        return None
    if exported is None or own is None or abs(exported - own) <= 1e-6 * max(abs(exported), abs(own)):
        return None
    return (f"{made} at attention temperature {exported:g}, the reference runs at {own:g}: their outputs differ by design "
            f"-- pass --temperature {exported:g} to check it at its own temperature")


def _ema_note(runner, reference_info) -> str | None:
    """Say so when a candidate made from a checkpoint's EMA weights (``--ema``: an export, or a
    deploy file) is checked against the same checkpoint's plain weights, or the other way round:
    the outputs differ by design.  Only for a candidate made from this very file."""
    from odexport.reparam.deploy import used_ema_entry

    extras = getattr(reference_info, "extras", None) or {}
    candidate_info = getattr(runner, "checkpoint_info", None)
    if candidate_info is not None:  # a deploy file: its manifest names its source and the weights used
        made_from = getattr(candidate_info, "origin_sha256", None)
        same_file = made_from is not None and made_from == getattr(reference_info, "sha256", None)
        made_with = used_ema_entry(candidate_info)
    else:
        same_file = _exported_from(runner, reference_info)
        made_with = (getattr(runner, "metadata", None) or {}).get(keys.WEIGHTS_ENTRY)
    if not extras.get("ema_entry") or not same_file:
        return None
    if made_with and not extras.get("used_ema"):
        return f"made from the file's EMA weights ('{made_with}'), the reference runs its plain weights: pass --ema to check it"
    if not made_with and extras.get("used_ema"):
        return "made from the file's plain weights, the reference runs its EMA weights (--ema): drop --ema to check it"
    return None


def _recorded_freeze(info) -> str | None:
    """What a deploy file's manifest records of ``freeze-low-spread``, in words, or None when no
    layer was frozen."""
    freeze = ((getattr(info, "extras", None) or {}).get("manifest") or {}).get("freeze") or {}
    frozen = [layer for layer in freeze.get("layers") or [] if layer.get("frozen")]
    if not frozen:
        return None
    deviation = freeze.get("output_deviation")
    measured = f", output deviation {deviation:.3g} on its {freeze.get('samples')} calibration samples" if deviation is not None else ""
    return f"{len(frozen)} layer(s) replaced by static convs by freeze-low-spread (approximate){measured}"


def _freeze_note(runner, reference_info=None) -> str | None:
    """A candidate made with ``freeze-low-spread`` (a deploy file, or an export of one) differs from
    its source by design: say so, with what the freeze measured, so a failure reads as expected.
    Not against a reference that is frozen itself (the deploy file the export was made from):
    there any difference is the export's."""
    if reference_info is not None and _recorded_freeze(reference_info):
        return None
    candidate_info = getattr(runner, "checkpoint_info", None)
    if candidate_info is not None:
        recorded = _recorded_freeze(candidate_info)
        return None if recorded is None else f"made with {recorded}; differences of that size are by design"
    metadata = getattr(runner, "metadata", None) or {}
    if metadata.get(keys.FREEZE):
        return f"made with {metadata[keys.FREEZE]}; differences of that size are by design"
    if "freeze-low-spread" in (metadata.get(keys.REPARAM_PASSES) or "").split(","):
        return "made with layers replaced by static convs by freeze-low-spread (approximate); they differ from the source by design"
    return None


def _provenance_note(runner, reference_info, reference) -> str | None:
    """Say so when an export records another source file than the reference (a stale export, or
    the export of another training run): the usual cause of a parity failure that is no bug.

    Lineage on either side: a file's own sha256 and, for a deploy checkpoint (or an export of
    one, ``odexport.deploy_source_sha256``), the sha256 of the checkpoint it was made from; any
    shared checksum is a match. Not an error: a re-saved or converted checkpoint has another
    checksum and the same weights, which the comparison itself settles.
    """
    metadata = getattr(runner, "metadata", None) or {}
    made_from = metadata.get(keys.SOURCE_SHA256)
    own = getattr(reference_info, "sha256", None)
    if not made_from or not own or getattr(runner, "backend", "").startswith("torch"):
        return None
    if metadata.get(keys.SOURCE_KIND) != "checkpoint":
        return None  # a checksum of an in-memory state dict, not of a file: nothing to compare with
    if _exported_from(runner, reference_info):
        return None
    import os

    name = os.path.basename(os.fspath(reference)) if isinstance(reference, (str, os.PathLike)) else "the reference"
    return (f"exported from a file with sha256 {made_from[:12]}..., not from {name} ({own[:12]}...): "
            "if the outputs differ, re-export from this checkpoint (a deploy checkpoint or re-saved copy of it is fine)")


def _exported_from(runner, reference_info) -> bool:
    """Whether an export records the reference's checkpoint file (or, for a deploy checkpoint on
    either side, the checkpoint it was made from) as its source."""
    metadata = getattr(runner, "metadata", None) or {}
    if metadata.get(keys.SOURCE_KIND) != "checkpoint" or not metadata.get(keys.SOURCE_SHA256):
        return False
    lineage = {getattr(reference_info, "sha256", None), getattr(reference_info, "origin_sha256", None)} - {None}
    return bool({metadata.get(keys.SOURCE_SHA256), metadata.get(keys.DEPLOY_SOURCE_SHA256)} & lineage)


def _export_sample_shape(opened, reference_info, shape):
    """The sample shape to check at, and a note when it is not the reference's own.

    An export made from this very checkpoint at another size (``odexport onnx --input-shape
    3x320x320``) fixes that size in its graph; the checkpoint ran at it when it was exported, so
    the comparison runs there too rather than asking for ``--input-shape`` again. Only when every
    candidate with a fixed sample shape declares the same one and at least one of them records
    this checkpoint as its source (:func:`_exported_from`); otherwise the
    shape stays and :func:`_require_sample_shape` names the mismatch. Candidates fixed at several
    sizes are checked at the reference's when one of them is it, and are an input error otherwise.
    """
    from odexport.errors import InputError

    declared, ours = {}, False
    for candidate, runner in opened:
        sample = _fixed_sample_shape(runner)
        if sample is None:
            continue
        declared.setdefault(sample, candidate)
        ours = ours or _exported_from(runner, reference_info)
    if len(declared) > 1 and shape is not None and tuple(shape) in declared:
        return shape, None  # the reference's own size: those fixed at another are refused one by one
    if len(declared) > 1:
        (first, one), (second, other) = list(declared.items())[:2]
        raise InputError(f"the candidates take samples of different shapes: {one} {first}, {other} {second}",
                         "check each size in its own run (--input-shape CxHxW when it is not the reference's default)")
    if not declared or not ours or shape is None or next(iter(declared)) == tuple(shape):
        return shape, None
    adopted = next(iter(declared))
    own = "the reference records none" if _size_unrecorded(reference_info) else f"the reference's default is {'x'.join(map(str, shape))}"
    return adopted, (f"checked on samples of shape {'x'.join(map(str, adopted))}, the size this file was exported at from "
                     f"this checkpoint ({own}); pass --input-shape to check at another size")


def _fixed_sample_shape(runner) -> tuple | None:
    """The sample shape an export's graph fixes (all dims known), else None (a checkpoint fixes none)."""
    if getattr(runner, "backend", "").startswith("torch") or not runner.inputs:
        return None
    sample = tuple(runner.inputs[0].shape[1:])
    return sample if sample and all(isinstance(d, int) and d > 0 for d in sample) else None


def _size_of_images(x, info, source) -> tuple[int, ...]:
    """The sample shape of the user's images ``(N, C, H, W)``, taken as the size of a model that records
    none; images stored channels last (the model's first convolution's channels at the end) are
    named as such rather than tried and failed on."""
    from odexport.errors import InputError

    shape = tuple(int(d) for d in x.shape[1:])
    channels = info.input_shape[0] if info.input_shape else None
    if channels and shape[0] != channels and shape[-1] == channels:
        raise InputError(f"inputs in {source} have sample shape {shape}: channels last, the model takes {channels} channels first",
                         "store them channels first: np.save(path, x.transpose(0, 3, 1, 2))")
    return shape


def _size_unrecorded(info) -> bool:
    """A reference that records no input size (a --factory model: its 224x224 is the loader's guess)."""
    from odexport.checkpoint.loader import INPUT_SHAPE_ASSUMED

    return info is not None and bool(info.extras.get(INPUT_SHAPE_ASSUMED))


def _size_for_unsized_reference(reference, info, opened, data):
    """The sample shape to check a reference that records no input size at, and a note.

    A guessed 224x224 checks another computation than the trained one (the attentions see other
    statistics) and fails outright on a head that fixes the size.  So: the size of the user's
    ``--inputs``, else the one size the candidates fix or record (an export's graph, a deploy file
    or a zoo checkpoint), else an InputError asking for ``--input-shape``.
    """
    if data is not None:
        return _size_of_images(data.x, info, data.source), None
    sizes: dict[tuple, str] = {}
    for candidate, runner in opened:
        candidate_info = getattr(runner, "checkpoint_info", None)
        if getattr(runner, "backend", "").startswith("torch"):
            if candidate_info is not None and candidate_info.input_shape and not _size_unrecorded(candidate_info):
                sizes.setdefault(tuple(candidate_info.input_shape), str(candidate))
        elif (fixed := _fixed_sample_shape(runner)) is not None:
            sizes.setdefault(fixed, str(candidate))
    if len(sizes) == 1:
        (size, candidate), = sizes.items()
        return size, (f"checked on samples of shape {'x'.join(map(str, size))}, the size {candidate} records "
                      f"({reference} records none); pass --input-shape to check at another size")
    found = f" (the candidates fix {', '.join('x'.join(map(str, size)) for size in sizes)})" if sizes else ""
    raise _unrecorded_size_error(info, f"checking {reference}{found}")


def _require_sample_shape(candidate, runner, shape, reference, *, given: bool = False, same_source: bool = False) -> None:
    """An export whose graph fixes another sample shape cannot be compared on these samples: an
    input error naming both shapes (and both architectures when the export records its own), not a
    parity failure blamed on the batch. ``given``: the shape is the user's ``--input-shape``;
    ``same_source``: the export records the reference as its source (made at another size)."""
    from odexport.errors import InputError

    if getattr(runner, "backend", "").startswith("torch"):
        return  # a PyTorch candidate takes what its reference takes
    declared = tuple(runner.inputs[0].shape[1:]) if runner.inputs else ()
    if not declared or not all(isinstance(d, int) and d > 0 for d in declared) or declared == tuple(shape):
        return
    arch = (getattr(runner, "metadata", None) or {}).get(keys.ARCH)
    made_from = f" (exported from {arch})" if arch else ""
    fixed = "x".join(map(str, declared))
    if given:
        raise InputError(f"--input-shape {'x'.join(map(str, shape))} does not fit {candidate}{made_from}, whose graph takes samples of shape {declared}",
                         f"drop --input-shape (the export's own size is used), or pass --input-shape {fixed}")
    if same_source:  # beside candidates at another size: one run compares one sample shape
        raise InputError(f"{candidate} is an export of {reference} at {fixed}, the other candidates run at {'x'.join(map(str, shape))}",
                         f"check it in a run of its own (odexport check {reference} {candidate}): one run compares one sample shape")
    raise InputError(
        f"{candidate}{made_from} takes samples of shape {declared}, the reference {reference} {tuple(shape)}",
        "pass the export of this checkpoint, or --input-shape "
        + "x".join(map(str, declared)) + " if the reference accepts that size too",
    )


def _per_layer_reference(model, noise_model, onnx_path):
    """The PyTorch models whose dynamic convs compute what the export's layers compute.

    ``odexport onnx`` exports a checkpoint reparameterised (by default with the exact passes, which
    fold a following BatchNorm into each dynamic conv and fuse its attention heads): the export's
    layer outputs are then the reparameterised layers' outputs, not the checkpoint's.  The export
    records the passes that changed its model (``odexport.reparam_passes``; older files only say
    ``odexport.reparam``); the reference and its other-precision twin are reparameterised with the
    same exact passes.  An approximate pass (``freeze-low-spread``) cannot be redone without its
    calibration set: a note says the layers it changed will differ.  The network outputs are
    always compared with the checkpoint as loaded.  Returns ``(model, noise_model, note)``.
    """
    import copy

    import onnx

    from odexport.reparam import DEFAULT_PASSES, DEFAULT_PASSES_NOTE, EXACT_PASSES, reparameterise
    from odexport.reparam.base import recorded_passes

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    if keys.REPARAM_PASSES in props:
        passes = [p for p in props[keys.REPARAM_PASSES].split(",") if p]
    else:
        passes = list(DEFAULT_PASSES) if props.get(keys.REPARAM) == DEFAULT_PASSES_NOTE else []
    done = set(recorded_passes(model))
    todo = [p for p in passes if p not in done]
    if not todo:
        return model, noise_model, None
    exact = [p for p in passes if p in EXACT_PASSES]
    approximate = [p for p in todo if p not in EXACT_PASSES]
    note = (f"per-layer reference: the checkpoint reparameterised as the export was ({', '.join(exact)}); "
            "the outputs above are compared with the checkpoint as loaded")
    if approximate:
        note += (f"; {', '.join(approximate)} (approximate) is not redone without its calibration set, so the layers it "
                 "changed will differ")
    if not any(p in EXACT_PASSES for p in todo):
        return model, noise_model, note
    dtype = next(model.parameters()).dtype
    deploy = reparameterise(copy.deepcopy(model).float(), passes=exact).model.to(dtype).eval()
    noise_deploy = None
    if noise_model is not None:
        noise_deploy = copy.deepcopy(deploy).to(next(noise_model.parameters()).dtype).eval()
    return deploy, noise_deploy, note


@_keeps_torch_threads
def benchmark(artifacts, *, backend=None, device: str = "cpu", batch_sizes=(1,), warmup: int = 10, iterations: int = 50,
              threads=None, baseline: str = "static-twin", input_shape=None, arch=None, reference=None, temperature=None,
              trust_pickle: bool = False, factory=None, dtype=None, cuda_graphs: bool = False, max_seconds=None,
              cpu_rewrite: bool = False, progress=None, submodel=None, spinning: bool = False, prefer_ema: bool = False) -> BenchReport:
    """Latency of each artifact and of its static twin (the baseline), interleaved in one run.

    Returns a :class:`odexport.report.BenchReport`.  By default runners are made with onnxruntime
    spinning off, so idle sessions do not steal the cores of the one being timed, and are called in
    turn, one call each.  ``spinning=True`` keeps onnxruntime's default (idle threads spin, as on a
    server running one model: no thread wake-up per operator) and times in alternating blocks of
    calls instead (:func:`odexport.runtime.timing.block_latencies`).  ``progress`` is called with
    each stage's name.
    """
    import tempfile

    import numpy as np

    from odexport.errors import InputError, MissingDependencyError
    from odexport.report.latency import BenchEntry, BenchReport, LatencyStats, machine_facts
    from odexport.runtime import NATURAL_BACKEND, artifact_kind, open_runner
    from odexport._memory import require_batch_fits
    from odexport.runtime.base import whole_number
    from odexport.runtime.timing import block_latencies, interleaved_latencies

    if baseline not in ("static-twin", "none"):
        raise InputError(f"unknown baseline {baseline!r}", "use --baseline static-twin or --baseline none")
    if whole_number(warmup) is None or warmup < 0:
        raise InputError(f"--warmup {warmup!r} is not a whole number >= 0", "use e.g. --warmup 10")
    if whole_number(iterations) is None or iterations < 1:
        raise InputError(f"--iters {iterations!r} is not a positive integer", "use e.g. --iters 50")
    warmup, iterations = int(warmup), int(iterations)
    stage = progress or (lambda _name: None)
    artifacts, batch_sizes = _one_or_many(artifacts), _batch_sizes(batch_sizes)
    if not artifacts:
        raise InputError("no artifacts to time", "pass at least one checkpoint, ONNX file or engine")
    if dtype not in (None, "float32") and not any(artifact_kind(a) in ("checkpoint", "module") for a in artifacts):
        one = len(artifacts) == 1
        raise InputError(f"--dtype {dtype} applies to checkpoints; {', '.join(map(str, artifacts))} "
                         f"{'computes in the precision it was' if one else 'compute in the precision they were'} exported or built in",
                         "drop --dtype (an export's precision is chosen when it is made: `odexport onnx --fp16`, `odexport trt --fp16`)")
    load = dict(arch=arch, temperature=temperature, trust_pickle=trust_pickle, factory=factory, submodel=submodel, prefer_ema=prefer_ema)
    # a rewrite specialises the batch sizes being timed (the others would take its general branch)
    options = dict(device=device, threads=threads, allow_spinning=spinning, dtype=dtype, cuda_graphs=cuda_graphs, cpu_rewrite=cpu_rewrite,
                   cpu_batches=tuple(batch_sizes) if cpu_rewrite else None)
    report = BenchReport(machine=machine_facts(), settings={
        "backend": backend, "device": device, "batch_sizes": list(batch_sizes), "warmup": warmup, "iterations": iterations,
        "threads": threads, "dtype": dtype, "baseline": baseline, "cpu_rewrite": cpu_rewrite, "timer": "cuda-events" if device == "cuda" else "perf_counter_ns",
        "interleaved": not spinning, "spinning": spinning, "timing": "blocks" if spinning else "call by call"})
    with tempfile.TemporaryDirectory(prefix="odexport-bench-") as scratch:
        pairs = []  # (label, role, baseline_of, runner); a twin shared by candidates appears once per candidate
        twins = {}  # what a twin is built from -> its runner: one session for candidates of one architecture
        missing = {}  # artifact -> why it cannot run here (e.g. an engine without TensorRT): the others are timed
        fixed_shapes = {}  # sample shape an ONNX file or engine fixes -> the first artifact fixing it
        for artifact in artifacts:
            stage(f"open {artifact}")
            kind = artifact_kind(artifact)
            try:
                runner = open_runner(artifact, backend, input_shape=input_shape, **options,
                                     **({**load, "shared_options": True} if kind == "checkpoint" else {}))
            except MissingDependencyError as exc:
                missing[str(artifact)] = exc
                continue
            _require_one_fixed_shape(fixed_shapes, artifact, runner, input_shape)
            info = getattr(runner, "checkpoint_info", None)
            if info is not None:  # a --factory model's 224x224 is a guess: not a size to time
                model_input_shape(info, input_shape, purpose=f"timing {Path(str(artifact)).name}")
            known_shape = tuple(input_shape) if input_shape else getattr(runner, "input_shape", None)
            if known_shape:  # refuse a batch that cannot fit before a twin is exported for it
                require_batch_fits(max(batch_sizes), known_shape, [runner.step_bytes])
            pairs.append((str(artifact), "candidate", None, runner))
            # what loading a checkpoint chose or ignored (e.g. the backbone of a detection checkpoint)
            report.notes.extend(f"{artifact}: {note}" for note in getattr(getattr(runner, "checkpoint_info", None), "warnings", None) or [])
            _record_specialisation(report, str(artifact), runner)
            _note_gpu_fp32(report, str(artifact), runner)
            if baseline == "static-twin":
                key = _twin_key(artifact, kind, runner, input_shape, reference, load)
                if key is not None and key in twins:
                    twin = twins[key]
                    shared_with = next(label for label, role, _, r in pairs if r is twin)
                    note = f"{artifact} shares {shared_with.replace('static twin of ', 'the static twin of ')} (same architecture, shape, opset and precision): one baseline session, its timings in both rows"
                else:
                    stage(f"static twin of {artifact}")
                    twin, note = _static_twin_runner(artifact, kind, runner, scratch, options, input_shape, reference, load)
                    if key is not None:
                        twins[key] = twin
                if twin is not None:
                    pairs.append((f"static twin of {artifact}", "baseline", str(artifact), twin))
                if note:
                    report.notes.append(note)
        if not pairs and missing:  # nothing to time: a report that says so (CI archives it), the exit is 3
            report.entries.extend(BenchEntry(artifact, "candidate", NATURAL_BACKEND[artifact_kind(artifact)], batch_size,
                                             error=str(exc), missing_backend=True)
                                  for batch_size in batch_sizes for artifact, exc in missing.items())
            report.settings["input_shape"] = list(input_shape) if input_shape else None
            return report
        sessions_spin = {r.spinning for *_, r in pairs if isinstance(getattr(r, "spinning", None), bool)}
        if sessions_spin:  # what the onnxruntime sessions were made with, read back from them
            report.settings["spinning"] = sessions_spin == {True}
        elif spinning:
            report.settings["spinning"] = None  # no onnxruntime session: nothing was made to spin
            report.notes.append("--spinning sets onnxruntime's thread spinning; no onnxruntime session was timed here, "
                                "so it only changed the timing to alternating blocks of calls")
        shape = _sample_shape(pairs, input_shape)
        for label, role, _, runner in pairs:
            if getattr(runner, "backend", "").startswith("torch") and tuple(runner.input_shape or ()) != shape:
                if role == "candidate":
                    report.notes.append(f"{label} timed on samples of shape {'x'.join(map(str, shape))} (the size the other "
                                        f"artifacts fix; its default is {'x'.join(map(str, runner.input_shape or ()))})")
                runner.input_shape = shape  # a PyTorch model takes any size
        # the largest batch first, before anything is timed: one that cannot fit would end in the OOM killer
        require_batch_fits(max(batch_sizes), shape, [runner.step_bytes for *_, runner in pairs])
        rng = np.random.default_rng(0)
        for batch_size in batch_sizes:
            stage(f"batch {batch_size}")
            x = rng.standard_normal((batch_size, *shape)).astype(np.float32)
            timers, failed = {}, {}
            for label, role, of, runner in pairs:
                if id(runner) in timers or id(runner) in failed:
                    continue  # a shared twin is timed once
                try:
                    timers[id(runner)] = runner.timer(x)
                except InputError as exc:  # e.g. a batch the artifact rejects: record it, time the rest
                    failed[id(runner)] = exc.message
            measure = block_latencies if spinning else interleaved_latencies
            samples = measure(timers, warmup, iterations, max_seconds=max_seconds)
            for label, role, of, runner in pairs:
                if id(runner) in failed:
                    report.entries.append(BenchEntry(label, role, runner.backend, batch_size, None, of, failed[id(runner)]))
                elif id(runner) in samples:
                    stats = LatencyStats.from_samples(samples[id(runner)], batch_size)
                    report.entries.append(BenchEntry(label, role, runner.backend, batch_size, stats, of))
            for artifact, exc in missing.items():
                report.entries.append(BenchEntry(artifact, "candidate", NATURAL_BACKEND[artifact_kind(artifact)], batch_size,
                                                 error=str(exc), missing_backend=True))
        for runner in {id(r): r for *_, r in pairs}.values():
            runner.close()
    report.settings["input_shape"] = list(shape)
    return report


def _note_gpu_fp32(report, label: str, runner) -> None:
    """fp32 on a GPU is timed as IEEE fp32 (the runners switch TF32 off so that check's fp32
    tolerances hold), which is slower than a TF32 session: say so next to the numbers."""
    if getattr(runner, "backend", "") in ("onnxruntime-cuda", "torch-cuda") and getattr(runner, "precision", "") == "fp32":
        report.notes.append(f"{label} runs in IEEE fp32 on the GPU (TF32 off, as `odexport check` gates fp32); "
                            "the fast GPU form is fp16: an `odexport onnx --fp16` export, or --dtype float16 for a checkpoint")


def _record_specialisation(report, label: str, runner) -> None:
    """Put what made an onnxruntime-CPU candidate fast in the report: the session-time rewrite
    (``--cpu-rewrite``) or the machine record of a file written by ``odexport ort``."""
    from odexport.runtime.ort_specialise import recorded

    rewrite = getattr(runner, "rewrite_report", None)
    metadata = getattr(runner, "metadata", None) or {}
    record = recorded(metadata)
    if rewrite is None and record is None:
        if getattr(runner, "backend", "") == "onnxruntime-cpu" and _has_custom_layers(metadata):
            # the portable file runs its dynamic convs at onnxruntime's generic speed: say what makes it fast
            report.notes.append(f"{label} is the portable export: on onnxruntime CPU, `odexport ort {label}` writes a copy "
                                "specialised for this machine and the batch sizes you serve (docs/performance.md; --cpu-rewrite times one in memory)")
        return
    entry = report.settings.setdefault("specialisation", {})[label] = {}
    if rewrite is not None:
        entry["rewrite"] = rewrite.to_dict()
        if not rewrite.changed:
            report.notes.append(f"{label}: --cpu-rewrite changed nothing ({'; '.join(rewrite.notes) or 'no dynamic conv to rewrite'})")
    if record is not None:
        entry["ort_cpu"] = record


def _has_custom_layers(metadata: dict) -> bool:
    """Does the export's form record name a ``custom`` layer (what `odexport ort` specialises)?"""
    import json

    try:
        forms = json.loads(metadata.get(keys.FORMS, "[]"))
    except ValueError:
        return False
    return any(isinstance(entry, dict) and entry.get("form") == "custom" for entry in forms)


def _sample_shape(pairs, input_shape):
    """One sample's shape for every artifact of a bench: ``--input-shape``, else the one an ONNX
    file or engine fixes (a PyTorch model takes any size, and runs at that one), else a
    checkpoint's default; :func:`_require_one_fixed_shape` has refused artifacts that fix two."""
    from odexport.errors import InputError

    if input_shape:
        return tuple(input_shape)
    runners = [runner for *_, runner in pairs]
    for runner in sorted(runners, key=lambda r: getattr(r, "backend", "").startswith("torch")):
        known = getattr(runner, "input_shape", None)
        if known:
            return tuple(known)
    raise InputError("cannot tell the input shape of one sample", "pass --input-shape CxHxW, e.g. 3x224x224")


def _require_one_fixed_shape(fixed: dict, artifact, runner, input_shape=None) -> None:
    """Artifacts of one bench share their inputs: two that fix different sample shapes, or one that
    fixes another shape than ``--input-shape``, are an input error before anything is built or
    timed. ``fixed``: shape -> the first artifact fixing it."""
    from odexport.errors import InputError

    known = getattr(runner, "input_shape", None)
    if getattr(runner, "backend", "").startswith("torch") or not known:
        return
    graph = tuple(getattr(runner, "inputs", None) and runner.inputs[0].shape[1:] or ())
    if input_shape and graph and all(isinstance(d, int) for d in graph) and graph != tuple(input_shape):
        given = "x".join(map(str, input_shape))
        raise InputError(f"--input-shape {given} is not the sample shape {artifact} fixes ({'x'.join(map(str, graph))})",
                         f"drop --input-shape, or export the model at {given} (`odexport onnx CKPT --input-shape {given}`)")
    fixed.setdefault(tuple(known), str(artifact))
    if len(fixed) > 1:
        (one_shape, one), (other_shape, other) = list(fixed.items())[:2]
        raise InputError(f"the artifacts take samples of different shapes: {one} {one_shape}, {other} {other_shape}",
                         "bench each size in its own run (a checkpoint takes --input-shape CxHxW)")


def _twin_key(artifact, kind, runner, input_shape, reference, load):
    """What the static twin of an ONNX candidate is built from (architecture, options, sample shape,
    opset, precision): equal keys, one twin.  None: not shared (a checkpoint's twin is cheap to make from its
    own model; an engine's twin also depends on the engine's precision)."""
    import json

    from odexport.checkpoint.loader import is_factory_spec

    if kind != "onnx":
        return None
    meta = getattr(runner, "metadata", {}) or {}
    source = str(reference) if reference is not None else (load.get("arch") or meta.get(keys.ARCH) or load.get("factory") or None)
    if source is None:
        return None
    recorded = meta.get(keys.ARCH)
    named_other = load.get("arch") and load.get("arch") != recorded  # a model the export does not record: its defaults
    kwargs = "" if reference is not None or named_other or is_factory_spec(source) else meta.get(keys.MODEL_KWARGS) or "{}"
    shape = tuple(input_shape) if input_shape else getattr(runner, "input_shape", None)
    return (source, json.dumps(json.loads(kwargs), sort_keys=True) if kwargs else "", tuple(shape or ()),
            meta.get(keys.OPSET) or "18", _half_precision(runner))


def _half_precision(runner) -> bool:
    """Does the candidate compute in fp16 (an ``--fp16`` export, or an engine built so)? Its twin must too."""
    recorded = (getattr(runner, "metadata", None) or {}).get(keys.PRECISION)
    return recorded == "fp16" or getattr(runner, "precision", "fp32") in ("fp16", "mixed")


def _static_twin_runner(artifact, kind, runner, scratch, options, input_shape, reference, load):
    """The baseline runner for ``artifact``: its static twin, on the same backend and settings.

    Returns ``(runner or None, note or None)``.  For ONNX and engines the PyTorch model comes from
    ``reference`` (a checkpoint), the export's recorded architecture, or ``--arch``.
    """
    import json
    from pathlib import Path

    from odexport.errors import InputError
    from odexport.models.twin import static_twin
    from odexport.runtime import open_runner

    if kind in ("module", "checkpoint"):
        return open_runner(static_twin(runner.model), "torch", input_shape=runner.input_shape, **options), None
    meta = getattr(runner, "metadata", {}) or {}
    recorded, named, note = meta.get(keys.ARCH), load.get("arch"), None
    if reference is None and named and recorded and named != recorded:  # as for --reference: a ratio to another network
        raise InputError(f"--arch {named} is not the architecture {artifact} records ({recorded}): its static twin would be another network",
                         "drop --arch (the export records its architecture), or pass the artifact exported from that architecture")
    if reference is not None:
        loaded = model_from_checkpoint(reference, **load)
        own, recorded = getattr(loaded.info, "arch", None), meta.get(keys.ARCH)
        if own and recorded and own != recorded:  # a twin of another network: its ratio would mean nothing
            raise InputError(f"--reference {reference} has architecture {own}, but {artifact} records {recorded}: "
                             "its static twin would be another network",
                             f"pass the checkpoint {Path(str(artifact)).name} was exported from, or drop --reference (the export records its architecture)")
        model = loaded.model
    else:
        # what the export records wins over --factory (which may be another artifact's in this run)
        name = load.get("arch") or meta.get(keys.ARCH) or load.get("factory") or None
        if not name:
            raise InputError(f"cannot build the static twin of {artifact}: its architecture is unknown",
                             "pass --reference CHECKPOINT or --arch NAME, or --baseline none")
        from odexport.checkpoint.loader import factory_architecture, is_factory_spec
        from odexport.models import create_model

        if is_factory_spec(name):  # exported with --factory: the export records the spec as its architecture
            # importing it runs code a file names: only when the user names the same factory (as for checkpoints)
            if load.get("factory") != name:
                raise InputError(f"the static twin of {artifact} would be built by running the factory its export records ({name})",
                                 f"pass --factory {name} to run that code, or --reference CHECKPOINT, or --baseline none")
            model = factory_architecture(name)
        else:
            kwargs = json.loads(meta.get(keys.MODEL_KWARGS) or "{}") if name == recorded else {}
            model = create_model(name, **kwargs)
            if name != recorded:  # an export without odexport's metadata: widths and classes are a guess
                note = (f"the static twin of {artifact} is {name} at its defaults: the export records no architecture, "
                        "so widths and classes may differ (pass --reference CHECKPOINT for the exact twin)")
    shape = tuple(input_shape) if input_shape else getattr(runner, "input_shape", None)
    if not shape:
        raise InputError(f"{artifact} has a dynamic sample shape {tuple(runner.inputs[0].shape[1:])}", "pass --input-shape CxHxW")
    onnx_path = Path(scratch) / f"twin-{abs(hash(str(artifact)))}.onnx"
    # exported like the candidate (same exporter, opset, precision and optimiser); parity of a baseline is moot
    opset = int(meta.get(keys.OPSET) or 18)
    half = _half_precision(runner)
    onnx_from_model(static_twin(model).eval(), onnx_path, input_shape=shape, opset=opset, check=False, fp16=half and kind == "onnx")
    if kind == "onnx":
        runner = open_runner(onnx_path, "onnxruntime", **{k: v for k, v in options.items()
                                                           if k in ("device", "threads", "allow_spinning", "cpu_rewrite", "cpu_batches")})
        notes = [n for n in (note, f"the static twin of {artifact} is exported in fp16 like it" if half else None) if n]
        return runner, "; ".join(notes) or None
    engine_path = Path(scratch) / (onnx_path.stem + ".engine")
    engine_from_onnx(onnx_path, engine_path, fp16=half, input_shape=shape)
    built = f"the static twin of {artifact} was built with TensorRT defaults{' and fp16' if half else ''} (profile 1:8:32)"
    return open_runner(engine_path, "tensorrt"), "; ".join(n for n in (note, built) if n)


def ort_cpu_from_onnx(onnx_path, output=None, *, batch_sizes=None, threads=None, check: bool = True, measure: bool = True,
                      tolerance: float = 1e-3, progress=None) -> SpecialisedModel:
    """A portable custom-form export specialised for onnxruntime CPU on this machine, written to
    ``output`` (default ``MODEL.ort-cpu.onnx``) -> :class:`odexport.runtime.ort_specialise.SpecialisedModel`.
    See :func:`odexport.runtime.ort_specialise.specialise_onnx`."""
    from odexport._optional import require
    from odexport.runtime.ort_specialise import specialise_onnx

    require("onnxruntime", "specialising a model for onnxruntime")
    return specialise_onnx(onnx_path, output, batch_sizes=batch_sizes, threads=threads, check=check, measure=measure, tolerance=tolerance,
                           stage=progress)


# -- TensorRT engines (trt engineer) ------------------------------------------------------------

def engine_from_onnx(onnx_path, engine_path=None, *, profiles=None, fp16: bool = False, tf32: bool = False,
                     workspace_gib=None, opt_level=None, timing_cache=None, plugins=(), input_shape=None,
                     verbose: bool = False, source_checkpoint=None, rebuild_source=None, rebuild_extra_args=(), progress=None) -> BuildResult:
    """Build a TensorRT engine (+ its JSON sidecar) from an ONNX file -> :class:`odexport.engine.build.BuildResult`.

    ``profiles``: batch profiles as :class:`odexport.engine.profiles.BatchProfile` or ``"min:opt:max"``
    strings; ``None`` uses the ONNX's fixed batch or 1:8:32.  Needs TensorRT and a CUDA GPU
    (:class:`odexport.errors.MissingDependencyError` otherwise).
    """
    from odexport.engine.build import BuildOptions, build_engine
    from odexport.engine.profiles import BatchProfile, parse_profile

    if profiles is not None:
        profiles = [p if isinstance(p, BatchProfile) else parse_profile(p) for p in profiles]
    options = BuildOptions(
        profiles=profiles, fp16=fp16, tf32=tf32, workspace_gib=workspace_gib, opt_level=opt_level, timing_cache=timing_cache,
        plugins=tuple(plugins or ()), input_shape=tuple(input_shape) if input_shape else None, verbose=verbose,
        source_checkpoint=source_checkpoint, rebuild_source=rebuild_source, rebuild_extra_args=tuple(rebuild_extra_args),
    )
    return build_engine(onnx_path, engine_path, options, stage=progress)
