"""``odexport onnx``: export a checkpoint to ONNX with a dynamic batch, verified on the way out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from odexport.cli._options import (
    ArchOption,
    EmaOption,
    FactoryOption,
    InputShapeOption,
    JsonOption,
    KernelNumOption,
    QuietOption,
    SubmodelOption,
    TemperatureOption,
    TrustPickleOption,
)
from odexport.cli.app import app

_FORM_HELP = (
    "Export form per dynamic conv: auto (the cost model's choice for --target and --batch), custom (one "
    "com.odexport node per layer with an exact function body; stock onnxruntime >= 1.27 inlines it), decomposed "
    "(standard ONNX ops only), grouped (the reference batch-folded conv; needs --batch N)."
)


_EXAMPLES = """\
Examples:
# dynamic batch, a form per layer, verified against PyTorch
odexport onnx model.pth -o model.onnx
# for TensorRT or onnxruntime CUDA
odexport onnx model.pth -o model.onnx --target gpu --fp16
# each layer's form and why; writes nothing
odexport onnx model.pth --plan"""


@app.command(name="onnx", epilog=_EXAMPLES)
def onnx_command(
    checkpoint: Annotated[str, typer.Argument(metavar="CKPT_OR_DEPLOY", help="Checkpoint or deploy checkpoint (from `odexport reparam`).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="ONNX file to write (default: the checkpoint's path with suffix .onnx). A JSON sidecar MODEL.onnx.json is written beside it.", show_default=False)] = None,
    form: Annotated[str, typer.Option("--form", help=_FORM_HELP)] = "auto",
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset of the standard domain (18 to 23).")] = 18,
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, help="Fix the batch to N (required by --form grouped; a hint for --form auto). Default: dynamic.", show_default=False)] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Keep the batch symbolic (the default); not with --batch.")] = False,
    input_shape: InputShapeOption = None,
    reparam: Annotated[bool, typer.Option("--reparam/--no-reparam", help="Reparameterise first with the exact default passes (skipped for a deploy checkpoint).")] = True,
    fp16: Annotated[bool, typer.Option("--fp16", help="Mixed precision: convolutions and matmuls in fp16; attention, softmax/sigmoid and kernel aggregation in fp32; fp32 inputs and outputs.")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare onnxruntime (CPU) with PyTorch at batch 1, 2 and 7 on seeded inputs; a failure exits 2 and keeps the file as NAME.parity-failed.onnx.")] = True,
    target: Annotated[str, typer.Option("--target", help="Where the model will run (cpu or gpu): steers --form auto.")] = "cpu",
    plan: Annotated[bool, typer.Option("--plan", help="Print the form each layer would get and why, and exit without exporting.")] = False,
    arch: ArchOption = None,
    kernel_num: KernelNumOption = None,
    temperature: TemperatureOption = None,
    trust_pickle: TrustPickleOption = False,
    ema: EmaOption = False,
    factory: FactoryOption = None,
    submodel: SubmodelOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Export to ONNX with a dynamic batch (or a fixed one), per-layer forms, metadata and a parity check.

    Exit 0 on success, 1 on a bad option or input, 2 when the parity check fails.
    """
    from odexport.cli._common import run_command

    run_command(lambda: _export(checkpoint, output, form, opset, batch, dynamic_batch, input_shape, reparam, fp16, check,
                                target, plan, dict(arch=arch, kernel_num=kernel_num, temperature=temperature,
                                                   trust_pickle=trust_pickle, prefer_ema=ema, factory=factory, submodel=submodel), json_output, quiet))


def _export(checkpoint, output, form, opset, batch, dynamic_batch, input_shape, reparam, fp16, check, target, plan, load,
            json_output, quiet) -> None:
    from odexport._files import output_folder, refuse_overwriting_input
    from odexport.cli._common import console, print_json, print_load_notes, print_wide, stages
    from odexport.cli._options import parse_input_shape
    from odexport.errors import ExportError, InputError, ParityError
    from odexport.export.forms import FORMS
    from odexport.export.onnx_export import SUPPORTED_OPSETS
    from odexport.export.plan import TARGETS

    # every option is checked before anything is loaded
    if batch is not None and dynamic_batch:
        raise InputError("--batch and --dynamic-batch contradict each other", "give one of them")
    if form not in FORMS:
        raise InputError(f"unknown --form {form!r}", f"use one of {', '.join(FORMS)}")
    if target not in TARGETS:
        raise InputError(f"unknown --target {target!r}", f"use one of {', '.join(TARGETS)}")
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} is not supported", f"use --opset {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]}")
    if form == "grouped" and batch is None:
        raise ExportError("the grouped form folds the batch into the conv groups, so it needs a fixed batch",
                          "pass --batch N, or use --form decomposed / custom / auto for a dynamic batch")
    source = Path(checkpoint)
    if not source.exists():
        raise InputError(f"{checkpoint} does not exist", "pass a checkpoint or deploy checkpoint file")
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    out = output if output is not None else default_output(source)
    if out.is_dir():
        raise InputError(f"output path {out} is a directory", "give a file name such as -o model.onnx")
    output_folder(out, example="model.onnx")  # a missing folder, or a file where the folder should be: before the export
    refuse_overwriting_input(out, source, fix=f"the checkpoint has an .onnx name, which the default output takes: pass -o {source.stem}.export.onnx, "
                             f"or rename the checkpoint to {source.stem}.pt" if output is None else "pass another -o path")

    with stages(quiet or json_output) as stage:
        from odexport.pipeline import deploy_model, model_from_checkpoint, model_input_shape, onnx_from_loaded

        stage(f"load {source.name}")
        loaded = model_from_checkpoint(source, **load)
        info = loaded.info
        shape = model_input_shape(info, shape, purpose="the export")
        if shape is None:
            raise InputError("the input shape of this model is unknown", "pass --input-shape CxHxW, e.g. 3x224x224")
        if plan:
            from odexport.export.plan import plan_forms

            model, _ = deploy_model(loaded, reparam=reparam, progress=stage)
            stage("plan")
            plans = plan_forms(model, target=target, batch=batch, input_shape=shape, form=form, fp16=fp16)
        else:
            try:
                result = onnx_from_loaded(loaded, out, form=form, opset=opset, batch=batch, input_shape=shape, reparam=reparam,
                                          fp16=fp16, target=target, check=check, progress=stage)
            except ParityError as exc:
                result = getattr(exc, "result", None)
                if result is not None and not json_output:
                    _print_parity(console, result.parity)
                elif result is not None:
                    print_json(result.to_dict())
                raise

    if plan:
        if json_output:
            print_json({"plan": [p.to_dict() for p in plans], "target": target, "batch": batch, "input_shape": list(shape),
                        "precision": "fp16" if fp16 else "fp32"})
        else:
            print_wide(_plan_table(plans, target, batch, fp16))
        return
    load_notes = list(info.warnings)
    if json_output:
        print_json({**result.to_dict(), "load_notes": load_notes})
        return
    if not quiet:
        console.print(_forms_summary(result.forms))
        if result.parity is not None:
            _print_parity(console, result.parity)
        print_load_notes(console, info.warnings)
    console.print(f"wrote {result.path} (sidecar {result.sidecar.name})", markup=False, highlight=False)
    if not quiet:
        console.print(f"next: {_check_command(checkpoint, result.path, load, input_shape, batch)}   (the parity gate for CI: docs/ci.md)",
                      markup=False, highlight=False)


def _check_command(checkpoint, path, load: dict, input_shape, batch) -> str:
    """The ``odexport check`` command that compares the export with its checkpoint loaded the way
    the export loaded it (same EMA, temperature, architecture, ...; a fixed batch at its size)."""
    import shlex

    words = ["odexport", "check", checkpoint, str(path)]
    for option, key in (("--arch", "arch"), ("--temperature", "temperature"), ("--factory", "factory"), ("--submodel", "submodel")):
        if load.get(key) is not None:
            words += [option, str(load[key])]
    words += ["--trust-pickle"] * bool(load.get("trust_pickle")) + ["--ema"] * bool(load.get("prefer_ema"))
    if input_shape is not None:
        words += ["--input-shape", input_shape]
    if batch is not None:
        words += ["--batch-sizes", str(batch)]
    return shlex.join(words)


def default_output(source: Path) -> Path:
    """``model.pth.tar`` -> ``model.onnx`` next to it (every checkpoint suffix dropped)."""
    from odexport.checkpoint.reader import CHECKPOINT_SUFFIXES

    name = source.name
    for suffix in sorted(CHECKPOINT_SUFFIXES, key=len, reverse=True):  # .pth.tar before .tar
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return source.with_name(name[: -len(suffix)] + ".onnx")
    return source.with_suffix(".onnx")


def _plan_table(plans, target, batch, fp16: bool = False):
    from rich.table import Table

    from odexport.report.render import table_style

    title = f"export plan (target {target}, batch {'dynamic' if batch is None else batch}{', fp16' if fp16 else ''})"
    table = Table(title=title, **table_style())
    for column in ("layer", "form", "variant", "est. ms", "why"):
        table.add_column(column, justify="right" if column == "est. ms" else "left")
    for p in plans:
        table.add_row(p.name or "<root>", p.form, p.variant, f"{p.est_cost * 1e3:.3g}", p.reason)
    return table


def _forms_summary(plans) -> str:
    from collections import Counter

    counts = Counter(f"{p.form}/{p.variant}" for p in plans)
    if not counts:
        return "no dynamic conv layers (a static model)"
    return f"{len(plans)} dynamic conv layers: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def _print_parity(console, parity) -> None:
    from rich.table import Table

    from odexport.report.render import table_style

    table = Table(title=f"onnxruntime vs PyTorch ({parity.precision}, atol {parity.atol:g}, rtol {parity.rtol:g})", **table_style())
    for column in ("output", "batch", "max abs", "max rel", "top-1", ""):
        table.add_column(column, justify="left" if column in ("output", "") else "right")
    for c in parity.comparisons:
        table.add_row(c.name, str(c.batch), f"{c.max_abs:.3g}", f"{c.max_rel:.3g}",
                      "-" if c.top1_agreement is None else f"{c.top1_agreement:.0%}",
                      _verdict(c))
    console.print(table)


def _verdict(comparison) -> str:
    floor = getattr(comparison, "noise_floor", None)
    if not comparison.passed:
        return "[bold red]FAIL[/]" + (f" (above 5x PyTorch's own fp32 noise, {floor:.2g})" if floor is not None else "")
    if floor is not None:  # the fixed tolerance failed; the network's own rounding noise allows it
        return f"[green]ok[/] (within 5x PyTorch's own fp32 noise, {floor:.2g})"
    return "[green]ok[/]"
