"""``odexport reparam``: reparameterise a checkpoint for inference and write a deploy checkpoint."""

from __future__ import annotations

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

from odexport.pipeline import DEPLOY_TOLERANCE

_PASSES_HELP = (
    "Comma-separated passes to run (always in this order): fold-attention-bn, fold-temperature, fold-bn, "
    "collapse-degenerate, fuse-heads; 'default' = all five, 'none' = just write the deploy file. "
    "freeze-low-spread is added by --calibration."
)


_EXAMPLES = """\
Examples:
# exact passes only, checked against the source
odexport reparam model.pth -o deploy.pt
# also make near-static layers plain convs (approximate, reported)
odexport reparam model.pth -o d.pt --calibration val.npz --freeze-below 1e-3"""


@app.command(epilog=_EXAMPLES)
def reparam(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint to reparameterise (any layout `odexport inspect` reads).", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="Deploy checkpoint to write (loads with torch.load(weights_only=True)).", show_default=False)],
    passes: Annotated[str, typer.Option(help=_PASSES_HELP)] = "default",
    explain: Annotated[bool, typer.Option("--explain", help="Print what each pass did and skipped, layer by layer.")] = False,
    calibration: Annotated[Optional[str], typer.Option(help="Calibration inputs (N,C,H,W): .npy, .npz or .pt, read as check's --inputs; measure each layer's attention spread.", show_default=False)] = None,
    freeze_below: Annotated[Optional[float], typer.Option(help="With --calibration: replace layers whose attention spread is below EPS by a static conv (approximate; every frozen layer is reported).", show_default=False, min=0.0)] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Run seeded random inputs through the source and the deploy model and fail (exit 2, nothing written) if the exact passes changed the outputs by more than --tolerance.")] = True,
    tolerance: Annotated[float, typer.Option(help="Largest relative deviation max|deploy - source| / max|source| the check accepts.", min=0.0)] = DEPLOY_TOLERANCE,
    dy_bn_shift: Annotated[str, typer.Option(help="Where fold-bn puts a BatchNorm shift for a DY-Conv without a dynamic bias: 'auto' (a static bias, O values) or 'dynamic' (a new dynamic bias, K*O values).")] = "auto",
    input_shape: InputShapeOption = None,
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
    """Fold, fuse and collapse a trained model's inference-time structure; write a deploy checkpoint.

    The five default passes preserve the outputs exactly (up to float rounding); --calibration with --freeze-below adds an approximate pass and reports the deviation it causes. Every other command (inspect, run, onnx, trt, check) accepts the deploy checkpoint.
    """
    from odexport.cli._common import console, print_load_notes, print_wide, run_command, stages

    def action() -> None:
        from odexport._files import output_folder, refuse_overwriting_input
        from odexport.cli._options import parse_input_shape
        from odexport.pipeline import deploy_from_loaded, model_from_checkpoint, validate_deploy_options

        refuse_overwriting_input(output, checkpoint, calibration)
        output_folder(output, create=True, example="deploy.pt")  # a folder that cannot be made or written: before the load and the passes
        pass_names = validate_deploy_options(passes, calibration=calibration, freeze_below=freeze_below, tolerance=tolerance,
                                             dy_bn_shift=dy_bn_shift)  # a mistyped option: before the load
        with stages(quiet or json_output) as stage:
            stage(f"load {checkpoint}")
            loaded = model_from_checkpoint(checkpoint, arch=arch, kernel_num=kernel_num, temperature=temperature,
                                           trust_pickle=trust_pickle, prefer_ema=ema, factory=factory, submodel=submodel)
            path, report = deploy_from_loaded(
                loaded, output, passes=pass_names, calibration=calibration, freeze_below=freeze_below, check=check,
                tolerance=tolerance, dy_bn_shift=dy_bn_shift,
                input_shape=parse_input_shape(input_shape) if input_shape is not None else None, progress=stage)
            deviation = None if report.check is None else report.check["max_relative_deviation"]

        if json_output:
            from odexport.cli._common import print_json

            print_json({"output": str(path), "source": str(loaded.info.path) if loaded.info.path else None, **report.to_dict(notes=explain),
                        "load_notes": list(loaded.info.warnings)})
            return
        print_load_notes(console, loaded.info.warnings)
        if explain:
            print_wide(_explain_table(report))
        if report.freeze is not None:
            print_wide(_freeze_table(report.freeze))
            for line in _unfrozen_reasons(report.freeze):
                console.print(line, markup=False, highlight=False)
        for result in report.results:
            if result.precondition_failed:
                console.print(f"[yellow]pass {result.name} did not run:[/] {result.precondition_failed}", markup=True, highlight=False)
        _print_summary(console, report, path, deviation)

    run_command(action)


def _explain_table(report):
    from rich.table import Table

    from odexport.report.render import table_style

    table = Table(title="what each pass did", **table_style())
    table.add_column("pass")
    table.add_column("layer")
    table.add_column("", no_wrap=True)
    table.add_column("detail")
    for result in report.results:
        if result.precondition_failed:
            table.add_row(result.name, "(model)", "[yellow]not run[/]", result.precondition_failed)
            continue
        if not result.notes:
            table.add_row(result.name, "", "", "no candidate layer")
        for note in result.notes:
            table.add_row(result.name, note.layer or "<root>", "[green]applied[/]" if note.applied else "[dim]skipped[/]", note.detail)
        table.add_section()
    return table


def _unfrozen_reasons(freeze) -> list[str]:
    """Layers below the threshold yet kept dynamic (a subclass, a hooked layer), or never run on
    the calibration inputs: the table shows "no" for them as for a layer above it."""
    eps = freeze.get("eps")
    return [f"not frozen: {rec['layer']}: {rec['reason']}" for rec in freeze["layers"]
            if not rec.get("frozen") and rec.get("reason")
            and (rec.get("spread") is None or (eps is not None and rec["spread"] < eps))]


def _freeze_table(freeze):
    from rich.table import Table

    from odexport.report.render import table_style

    eps = freeze.get("eps")
    title = (f"attention spread on {freeze['samples']} calibration samples"
             + (f" (freeze below {eps:g}; model output deviation {freeze['output_deviation']:.3g})" if eps is not None else " (measured only)"))
    table = Table(title=title, **table_style())
    for column in ("layer", "spread", "frozen", "params saved", "MACs saved", "layer deviation"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for rec in freeze["layers"]:
        spread = rec.get("spread")
        frozen = rec.get("frozen")
        table.add_row(
            rec["layer"], "-" if spread is None else f"{spread:.3g}", "[bold]yes[/]" if frozen else "no",
            f"{rec['params_saved']:,}" if frozen else "", f"{rec['macs_saved']:,}" if frozen else "",
            f"{rec['layer_deviation']:.3g}" if frozen else "",
        )
    return table


def _print_summary(console, report, path, deviation) -> None:
    applied = report.passes_applied
    matmuls = sum(row["attention_matmuls"] for row in report.attention)
    console.print(f"wrote {path}", markup=False)
    console.print(f"passes applied: {', '.join(applied) if applied else 'none'}", markup=False)
    console.print(f"parameters: {report.params_before:,} -> {report.params_after:,} "
                  f"({report.params_after - report.params_before:+,}); attention matmuls per sample: {matmuls} "
                  f"in {len(report.attention)} dynamic layers", markup=False)
    if deviation is not None:
        # with a freeze the check runs before it: the number speaks for the exact passes only
        which = " (exact passes, before freezing)" if report.freeze is not None else ""
        console.print(f"max relative deviation from the source on {report.check['inputs'][0]} random inputs{which}: {deviation:.3g}",
                      markup=False)
    if report.freeze is not None:
        frozen = [rec["layer"] for rec in report.freeze["layers"] if rec.get("frozen")]
        if frozen:
            agreement = report.freeze.get("top1_agreement")
            decided = "" if agreement is None else f", top-1 agreement with the unfrozen model {agreement:.2%}"
            console.print(f"[bold yellow]frozen (approximate):[/] {len(frozen)} layer(s): {', '.join(frozen)}; "
                          f"model output deviation on the calibration set {report.freeze['output_deviation']:.3g}{decided}",
                          markup=True, highlight=False)
        else:
            console.print("no layer frozen", markup=False)
        if report.freeze.get("caution"):
            console.print(f"[yellow]caution:[/] {report.freeze['caution']}", markup=True, highlight=False)
