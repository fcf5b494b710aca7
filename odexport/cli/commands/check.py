"""``odexport check``: the parity gate between a checkpoint and its deployed artifacts."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from odexport.cli._options import (
    ArchOption,
    EmaOption,
    FactoryOption,
    InputShapeOption,
    JsonOption,
    QuietOption,
    SubmodelOption,
    TemperatureOption,
    TrustPickleOption,
)
from odexport.cli.app import app


_EXAMPLES = """\
Examples:
# seeded random inputs at batch 1, 2 and 8
odexport check model.pth model.onnx
# your own data and labels; a CI report
odexport check model.pth model.onnx -i val.npz --junit parity.xml
# name the first dynamic conv that diverges
odexport check model.pth model.onnx --per-layer"""


@app.command(epilog=_EXAMPLES)
def check(
    reference: Annotated[str, typer.Argument(metavar="REFERENCE", help="Checkpoint (or deploy checkpoint from `odexport reparam`) run in PyTorch as the reference.", show_default=False)],
    candidates: Annotated[list[str], typer.Argument(metavar="CANDIDATE", help="Artifacts to check: .onnx (onnxruntime), .engine/.plan (TensorRT) or another checkpoint.", show_default=False)],
    samples: Annotated[int, typer.Option(help="Number of seeded random samples (ignored with --inputs).", min=1)] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random samples.", min=0)] = 0,
    inputs: Annotated[Optional[str], typer.Option("--inputs", "--input", "-i", help="Your own inputs (N,C,H,W): .npy, .npz or .pt; in an .npz or a .pt dict the array 'x' or 'input' (or the only one), with 'y'/'labels' for accuracy.", show_default=False)] = None,
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes every candidate must accept; a rejected one fails the check (a baked-in batch).")] = "1,2,8",
    reference_dtype: Annotated[str, typer.Option(help="Reference precision: float32, or float64 to take its own rounding out of the comparison.")] = "float32",
    atol: Annotated[Optional[list[str]], typer.Option(help="Absolute tolerance: VALUE for every output or OUTPUT=VALUE for one (repeatable). Default by candidate precision, see docs/check.md.", show_default=False)] = None,
    rtol: Annotated[Optional[list[str]], typer.Option(help="Relative tolerance: VALUE or OUTPUT=VALUE (repeatable).", show_default=False)] = None,
    min_top1: Annotated[Optional[list[str]], typer.Option("--min-top1", help="Top-1 agreement floor of classifier outputs: FRACTION or OUTPUT=FRACTION (repeatable); 0 turns it off. Default 0.99 for fp16/mixed candidates, none for fp32.", show_default=False)] = None,
    min_cosine: Annotated[Optional[list[str]], typer.Option("--min-cosine", help="Per-sample cosine similarity floor: FRACTION or OUTPUT=FRACTION (repeatable); 0 turns it off. Default 0.999 for fp16/mixed candidates, none for fp32.", show_default=False)] = None,
    noise_margin: Annotated[Optional[float], typer.Option(help="The default atol is at least this many times the reference's own rounding noise (PyTorch float32 vs float64 on the same samples); 0 skips that extra run. Default 5.", min=0, show_default=False)] = None,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="For ONNX candidates, also compare every dynamic conv's attentions and output and name the first that diverges.")] = False,
    json_output: JsonOption = False,
    junit: Annotated[Optional[str], typer.Option(help="Write JUnit XML to this file (for CI test reporters).", show_default=False)] = None,
    markdown: Annotated[Optional[str], typer.Option(help="Write a Markdown summary to this file (for a pull-request comment).", show_default=False)] = None,
    input_shape: InputShapeOption = None,
    arch: ArchOption = None,
    temperature: TemperatureOption = None,
    trust_pickle: TrustPickleOption = False,
    ema: EmaOption = False,
    factory: FactoryOption = None,
    submodel: SubmodelOption = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for PyTorch and onnxruntime.", min=1, show_default=False)] = None,
    device: Annotated[str, typer.Option(help="Where .onnx and checkpoint candidates run: cpu, or cuda (onnxruntime's CUDA provider, PyTorch CUDA). The reference runs on the CPU; engines on the GPU.")] = "cpu",
    quiet: QuietOption = False,
) -> None:
    """Prove each CANDIDATE computes what REFERENCE computes, at several batch sizes.

    Exit 0 when every candidate passes, 2 on any parity failure (numbers out of tolerance, or a batch size a candidate rejects), 1 on an input error, 3 when a backend is missing.
    """
    from odexport.cli._common import console, print_load_notes, print_table, print_wide, run_command, stages

    def action() -> None:
        from pathlib import Path

        from odexport._files import output_folder, refuse_overwriting_input, write_text_atomically
        from odexport.cli._options import parse_batch_sizes, parse_input_shape
        from odexport.errors import InputError, OdexportError
        from odexport.pipeline import check_parity
        from odexport.report.compare import ToleranceOverrides
        from odexport.report.render import (
            COMPACT_TABLE_COLUMNS,
            TABLE_COLUMNS,
            candidate_names,
            parity_failure_lines,
            parity_junit,
            parity_markdown,
            parity_table,
            per_layer_table,
        )

        overrides = ToleranceOverrides.parse(atol, rtol, min_top1, min_cosine)
        shape = parse_input_shape(input_shape) if input_shape is not None else None
        if junit and markdown and Path(junit).resolve() == Path(markdown).resolve():
            raise InputError(f"--junit and --markdown both name {junit}: one report would replace the other",
                             "give each report its own file, e.g. --junit parity.xml --markdown parity.md")
        for report_path, example in ((junit, "parity.xml"), (markdown, "parity.md")):
            if report_path:
                output_folder(report_path, create=True, example=example)  # a bad report path fails before the comparison, not after
                refuse_overwriting_input(report_path, reference, *candidates, inputs, fix="choose another report path")
        sizes = parse_batch_sizes(batch_sizes)
        try:
            with stages(quiet or json_output) as stage:
                report = check_parity(
                    reference, candidates, samples=samples, seed=seed, inputs=inputs, batch_sizes=sizes,
                    reference_dtype=reference_dtype, tolerances=overrides, per_layer=per_layer, input_shape=shape, arch=arch,
                    temperature=temperature, trust_pickle=trust_pickle, prefer_ema=ema, factory=factory, submodel=submodel,
                    threads=threads, noise_margin=noise_margin, progress=stage, device=device,
                )
        except OdexportError as exc:  # nothing was compared: the reports a CI job uploads still say why
            _write_error_reports(junit, markdown, reference, candidates, exc)
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: an earlier run's passing report must not stay behind as this run's
            from odexport.cli._common import Terminated
            from odexport.errors import StoppedError

            terminated = isinstance(exc, Terminated)
            stopped = StoppedError(f"the check was stopped ({'SIGTERM' if terminated else 'SIGINT'}) before it finished",
                                   "run it again to completion (a CI job: give it more time)")
            stopped.exit_code = 143 if terminated else 130
            _write_error_reports(junit, markdown, reference, candidates, stopped)
            raise
        names = candidate_names(report)
        if junit:
            write_text_atomically(junit, parity_junit(report))
        if markdown:
            write_text_atomically(markdown, parity_markdown(report))
        if json_output:
            from odexport.cli._common import print_json

            print_json(report.to_dict())
        else:
            print_load_notes(console, report.reference.get("load_notes") or [])  # what loading the reference chose
            print_table(lambda columns: parity_table(report, columns), TABLE_COLUMNS, COMPACT_TABLE_COLUMNS)
            ran = [f"{names[c.artifact]} on {c.backend}, {c.precision}" for c in report.candidates if not c.error]
            if ran:  # --device picks the runtime: the gate must show where it actually ran
                console.print("ran: " + "; ".join(ran), markup=False)
            noise = report.reference.get("rounding_noise") or {}
            if noise:
                console.print("reference rounding noise (float32 vs float64, max abs): "
                              + ", ".join(f"{k} {v:.3g}" for k, v in noise.items()), markup=False)
            for cand in report.candidates:
                for note in cand.notes:
                    console.print(f"note: {names[cand.artifact]}: {note}", markup=False)
                if cand.accuracy is not None:
                    acc = cand.accuracy
                    console.print(f"accuracy on {acc.samples} labelled samples: reference {acc.reference:.2%}, "
                                  f"{names[cand.artifact]} {acc.candidate:.2%}, top-1 agreement {acc.top1_agreement:.2%}")
                if cand.per_layer is not None:
                    if cand.per_layer.layers:
                        print_wide(per_layer_table(cand, names[cand.artifact]))
                    console.print(f"per-layer ({names[cand.artifact]}): {cand.per_layer_verdict}", markup=False)
                    for note in cand.per_layer.notes:
                        console.print(f"note: {note}", markup=False)
                elif per_layer and not cand.missing_backend and not cand.refused:
                    console.print(f"per-layer: not compared for {cand.artifact} ({cand.backend}): only ONNX candidates expose "
                                  "their layers (for an engine, run --per-layer on the ONNX it was built from)", markup=False)
            for line in parity_failure_lines(report):
                console.print(f"FAIL {line}", markup=False, style="red")
            for cand in report.refused:
                console.print(f"ERROR {names[cand.artifact]}: {cand.failures[0]}", markup=False, style="red")
            for cand in report.not_compared:
                console.print(f"NOT COMPARED {names[cand.artifact]}: {cand.error}", markup=False, style="yellow")
        error = report.error(where="each candidate's \"failures\" in the JSON" if json_output else "the failures above")
        if error is not None:  # after the reports: they hold the whole verdict
            raise error

    run_command(action)


def _write_error_reports(junit, markdown, reference, candidates, error) -> None:
    from odexport._files import write_text_atomically
    from odexport.report.render import check_error_junit, check_error_markdown

    if junit:
        write_text_atomically(junit, check_error_junit(reference, candidates, error.message, error.hint, error.exit_code))
    if markdown:
        write_text_atomically(markdown, check_error_markdown(reference, candidates, error.message, error.hint))
