"""``odexport trt``: build a TensorRT engine (dynamic-batch profiles, fp16) from an ONNX file or a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from odexport.cli._options import (
    ArchOption,
    EmaOption,
    FactoryOption,
    InputShapeOption,
    KernelNumOption,
    QuietOption,
    SubmodelOption,
    TemperatureOption,
    TrustPickleOption,
)
from odexport.cli.app import app

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


_EXAMPLES = """\
Examples:
# batch 1 to 32, optimised for 8
odexport trt model.onnx --fp16 -o model.engine
# batches up to 16; the timing cache speeds up rebuilds
odexport trt model.onnx --max-batch 16 --timing-cache trt.cache"""


@app.command(epilog=_EXAMPLES)
def trt(
    source: Annotated[str, typer.Argument(help="ONNX file (from `odexport onnx`), or a checkpoint: it is exported first with the form chosen for --target gpu.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Engine file to write (default: SOURCE with suffix .engine). The sidecar ENGINE.json is written beside it.", show_default=False)] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="fp16 engine from the mixed-precision ONNX (attention, softmax and kernel aggregation stay fp32). Strongly typed on TensorRT >= 10.12 and 11; the FP16 builder flag on older 10.x.")] = False,
    min_batch: Annotated[Optional[int], typer.Option("--min-batch", help="Smallest batch the engine accepts (default 1).", show_default=False)] = None,
    opt_batch: Annotated[Optional[int], typer.Option("--opt-batch", help="Batch TensorRT tunes kernels for (default 8, within min..max).", show_default=False)] = None,
    max_batch: Annotated[Optional[int], typer.Option("--max-batch", help="Largest batch the engine accepts (default 32).", show_default=False)] = None,
    profile: Annotated[Optional[list[str]], typer.Option("--profile", help="One optimisation profile MIN:OPT:MAX (or N for a fixed batch); repeat for several. Not with --*-batch.", show_default=False)] = None,
    workspace: Annotated[Optional[float], typer.Option("--workspace", help="Builder workspace limit in GiB (default: TensorRT's, the device memory).", show_default=False)] = None,
    opt_level: Annotated[Optional[int], typer.Option("--opt-level", help="Builder optimisation level 0-5 (TensorRT's default 3; higher builds slower, may run faster).", show_default=False)] = None,
    timing_cache: Annotated[Optional[Path], typer.Option("--timing-cache", help="Timing cache file: created if missing, reused and updated otherwise (faster rebuilds).", show_default=False)] = None,
    plugin: Annotated[Optional[list[str]], typer.Option("--plugin", help="Plugin library (.so/.dll) or Python plugin module (.py or module name) to load first; on TensorRT >= 10.15 a registered plugin named like a custom op replaces its function body. Repeatable.", show_default=False)] = None,
    input_shape: InputShapeOption = None,
    tf32: Annotated[bool, typer.Option("--tf32", help="Allow TF32 for fp32 convolutions/matmuls (faster on Ampere+, ~1e-3 relative error). Off by default.")] = False,
    form: Annotated[str, typer.Option("--form", help="Export form when SOURCE is a checkpoint: auto (cost model for --target gpu), custom, decomposed, grouped (fixed batch: give --profile N).")] = "auto",
    save_onnx: Annotated[Optional[Path], typer.Option("--save-onnx", help="When SOURCE is a checkpoint, keep the exported ONNX here (default: a temporary file).", show_default=False)] = None,
    arch: ArchOption = None,
    kernel_num: KernelNumOption = None,
    temperature: TemperatureOption = None,
    trust_pickle: TrustPickleOption = False,
    ema: EmaOption = False,
    factory: FactoryOption = None,
    submodel: SubmodelOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show TensorRT's own log.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object (the build report and sidecar) on stdout.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Build a TensorRT engine with dynamic-batch optimisation profiles and write its JSON sidecar.

    Needs TensorRT (pip install 'odexport\\[trt]') and a CUDA GPU: without them it exits 3 before anything is exported or written. Exit 1 on a bad option or a model TensorRT cannot parse.
    """
    from odexport.cli._common import run_command

    run_command(lambda: _build(
        source, output, fp16, min_batch, opt_batch, max_batch, profile, workspace, opt_level, timing_cache, plugin,
        input_shape, tf32, form, save_onnx, dict(arch=arch, kernel_num=kernel_num, temperature=temperature,
                                                 trust_pickle=trust_pickle, prefer_ema=ema, factory=factory, submodel=submodel),
        verbose, json_output, quiet,
    ))


def _build(source, output, fp16, min_batch, opt_batch, max_batch, profile, workspace, opt_level, timing_cache, plugin,
           input_shape, tf32, form, save_onnx, load, verbose, json_output, quiet) -> None:
    import tempfile

    from odexport.cli._common import print_json, stages
    from odexport.cli._options import parse_input_shape
    from odexport.engine.build import BuildOptions, build_engine, check_build_inputs
    from odexport.engine.environment import require_tensorrt
    from odexport.engine.plugins import classify_plugin
    from odexport.engine.profiles import batch_profiles_from_options
    from odexport.errors import InputError

    path = Path(source)
    if not path.exists():
        raise InputError(f"{source} does not exist", "pass an ONNX file or a checkpoint")
    suffix = path.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        raise InputError(f"{source} is already a TensorRT engine", "pass the ONNX file or checkpoint it was built from")
    from_checkpoint = suffix not in ONNX_SUFFIXES

    # every option is checked before TensorRT is looked for, and TensorRT before anything is written
    profiles = batch_profiles_from_options(min_batch, opt_batch, max_batch, profile)
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    plugins = tuple(plugin or ())
    for argument in plugins:
        classify_plugin(argument)
    options = BuildOptions(profiles=profiles, fp16=fp16, tf32=tf32, workspace_gib=workspace, opt_level=opt_level,
                           timing_cache=timing_cache, plugins=plugins, input_shape=shape, verbose=verbose)
    options.validate()
    engine_path = output if output is not None else path.with_suffix(".engine")
    if not from_checkpoint:
        given = [flag for flag, value in (("--form", form != "auto"), ("--save-onnx", save_onnx is not None),
                                          *((f"--{k.replace('_', '-')}", bool(v)) for k, v in load.items())) if value]
        if given:
            raise InputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} when SOURCE is a checkpoint, not an ONNX file",
                             "drop it, or pass the checkpoint to export it with these options")
        check_build_inputs(path, options)
    else:
        if save_onnx is not None and save_onnx.suffix.lower() != ".onnx":
            raise InputError(f"--save-onnx {save_onnx} should end in .onnx", "e.g. --save-onnx model.onnx")
        if form == "grouped" and _fixed_batch(profiles) is None:
            raise InputError("the grouped form bakes the batch into the convolutions, so the engine needs one fixed batch",
                             "give it with --profile N (e.g. --profile 1), or use --form decomposed / custom / auto for a dynamic batch")
    require_tensorrt("`odexport trt`")

    load_notes: list[str] = []
    with stages(quiet or json_output) as stage:
        if not from_checkpoint:
            result = build_engine(path, engine_path, options, stage=stage)
        else:
            with tempfile.TemporaryDirectory(prefix="odexport-trt-") as scratch:
                onnx_path = save_onnx or Path(scratch) / (path.stem + ("_fp16" if fp16 else "") + ".onnx")
                load_notes = _export(path, onnx_path, form, fp16, profiles, shape, load, stage)
                options.source_checkpoint = path
                options.rebuild_source = path
                options.rebuild_extra_args = _load_args(load, form, shape)
                # the export fixed the sample shape; --input-shape was for the export
                options.input_shape = None
                result = build_engine(onnx_path, engine_path, options, stage=stage)
    _report(result, json_output, quiet, print_json, load_notes)


def _export(checkpoint: Path, onnx_path: Path, form: str, fp16: bool, profiles, shape, load: dict, stage) -> list[str]:
    """Export the checkpoint for the engine as `odexport onnx` would (reparameterised, with its
    provenance, which the engine's sidecar carries on); returns what loading it chose or ignored."""
    from odexport.pipeline import model_from_checkpoint, onnx_from_loaded

    stage(f"load {checkpoint.name}")
    loaded = model_from_checkpoint(checkpoint, **load)
    stage(f"export ONNX (form {form}, target gpu{', fp16' if fp16 else ''})")
    # the grouped form bakes in the one fixed batch of its profile; every other form keeps the batch dynamic
    onnx_from_loaded(loaded, onnx_path, form=form, batch=_fixed_batch(profiles) if form == "grouped" else None,
                     input_shape=shape, fp16=fp16, target="gpu", progress=stage)
    return list(getattr(loaded.info, "warnings", None) or [])


def _fixed_batch(profiles) -> int | None:
    """N when the options ask for exactly one profile N:N:N, else None."""
    if profiles and len(profiles) == 1 and profiles[0].min == profiles[0].max:
        return profiles[0].min
    return None


def _load_args(load: dict, form: str, shape=None) -> tuple[str, ...]:
    args = []
    for key, flag in (("arch", "--arch"), ("kernel_num", "--kernel-num"), ("temperature", "--temperature"), ("factory", "--factory"),
                      ("submodel", "--submodel")):
        if load.get(key) is not None:
            args += [flag, str(load[key])]
    if load.get("trust_pickle"):
        args.append("--trust-pickle")
    if load.get("prefer_ema"):
        args.append("--ema")
    if form != "auto":
        args += ["--form", form]
    if shape:
        args += ["--input-shape", "x".join(str(d) for d in shape)]
    return tuple(args)


def _report(result, json_output: bool, quiet: bool, print_json, load_notes=()) -> None:
    from odexport.cli._common import console, err_console, print_load_notes

    if json_output:
        print_json({**result.to_dict(), "load_notes": list(load_notes)})
        return
    if not quiet:
        print_load_notes(console, load_notes)
    meta = result.metadata
    for warning in result.warnings:
        err_console.print(f"warning: {warning}", markup=False, highlight=False)
    if quiet:
        console.print(str(result.engine_path), markup=False, highlight=False)
        return
    plan = result.precision_plan
    typing_mode = "strongly typed" if plan.strongly_typed else "weakly typed" + (" + BuilderFlag.FP16" if plan.fp16_builder_flag else "")
    lines = [
        f"engine   {result.engine_path} ({meta.engine_bytes / 2**20:.1f} MiB, built in {result.seconds:.1f} s)",
        f"sidecar  {result.sidecar_path}",
        f"target   {meta.target.describe()}",
        f"precision {meta.precision} ({typing_mode}{', TF32 on' if plan.tf32 else ''})",
        "profiles " + ", ".join(f"batch {p.min}..{p.max} (opt {p.opt})" for p in meta.batch_profiles),
    ]
    if result.timing_cache_state:
        lines.append(f"timing cache {meta.build.get('timing_cache')} {result.timing_cache_state}")
    if meta.plugins:
        lines.append(f"plugins  {', '.join(meta.plugins)} ({meta.build.get('plugin_layers', 0)} plugin layers)")
    for note in plan.notes:
        lines.append(f"note     {note}")
    for line in lines:
        console.print(line, markup=False, highlight=False)
