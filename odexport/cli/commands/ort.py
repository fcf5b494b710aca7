"""``odexport ort``: specialise a portable export for onnxruntime CPU on this machine (like an engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from odexport.cli.app import app


_EXAMPLES = """\
Examples:
# specialised for this CPU and these batch sizes
odexport ort model.onnx -o model.ort-cpu.onnx --batch-sizes 1,8"""


@app.command(epilog=_EXAMPLES)
def ort(
    source: Annotated[str, typer.Argument(metavar="MODEL.onnx", help="Portable export from `odexport onnx` (custom form: --form auto on --target cpu, or --form custom).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (default: MODEL.ort-cpu.onnx).", show_default=False)] = None,
    batch_sizes: Annotated[Optional[str], typer.Option(help="Comma-separated batch sizes to specialise; other sizes run the general graph (exact, slower). Default 1; a fixed-batch export: its batch.", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option(help="Intra-op threads used while optimising and checking (default: onnxruntime's).", min=1, show_default=False)] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare with the portable export on seeded inputs at each size and one general-branch size; a deviation above --tolerance exits 2 and writes nothing.")] = True,
    measure: Annotated[bool, typer.Option("--measure/--no-measure", help="Time the portable and the specialised model at each size (about 2 s each) and drop the sizes where the specialisation is measurably slower (a sign test over paired calls).")] = True,
    tolerance: Annotated[float, typer.Option(help="Largest accepted max|difference| as a fraction of max|portable output|.", min=0.0)] = 1e-3,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object (and nothing else) on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines; print only the written path.")] = False,
) -> None:
    """Specialise a portable ONNX export for onnxruntime's CPU provider on this machine.

    Each dynamic conv's per-sample kernel is made directly in onnxruntime's blocked (NCHWc) layout and fed to its fast convolution, one specialisation per batch size. Exact, but tied to this onnxruntime version and CPU block size, which the file records: odexport refuses to run it elsewhere; build it where it is served, as you would a TensorRT engine. Exit 0 written, 1 bad input or nothing to specialise (or slower at every size), 2 deviation above --tolerance, 3 no NCHWc kernels here.
    """
    from odexport.cli._common import run_command

    run_command(lambda: _specialise(source, output, batch_sizes, threads, check, measure, tolerance, json_output, quiet))


def _specialise(source, output, batch_sizes, threads, check, measure, tolerance, json_output, quiet) -> None:
    from odexport.cli._common import console, print_json, stages
    from odexport.cli._options import parse_batch_sizes
    import math

    from odexport.errors import InputError, OdexportError
    from odexport.pipeline import ort_cpu_from_onnx

    if not math.isfinite(tolerance):  # inf would accept any deviation: the check switched off
        raise InputError(f"--tolerance {tolerance} is not a finite number", "use e.g. --tolerance 1e-3, or --no-check to skip the check")
    sizes = None if batch_sizes is None else parse_batch_sizes(batch_sizes)
    with stages(quiet or json_output) as stage:
        try:
            result = ort_cpu_from_onnx(source, output, batch_sizes=sizes, threads=threads, check=check, measure=measure, tolerance=tolerance, progress=stage)
        except OdexportError as exc:
            if json_output:  # refused: the report says why, with what was measured when it got that far
                outcome = getattr(exc, "outcome", None)
                measured = outcome.to_dict() if outcome is not None else {
                    "path": None, "source": str(source), "record": None, "rewrite": None, "deviation": {}, "tolerance": tolerance}
                print_json({**measured, "error": str(exc), "exit_code": exc.exit_code})
            raise
    if json_output:
        print_json({**result.to_dict(), "error": None, "exit_code": 0})
        return
    if quiet:
        console.print(str(result.path), markup=False, highlight=False)
        return
    record = result.record
    lines = [
        f"written  {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB) from {result.source}",
        f"machine  onnxruntime {record['onnxruntime']}, NCHWc block {record['nchwc_block']}, {record['cpu']}",
        f"batches  {', '.join(map(str, record['batches']))} specialised"
        + ("; the file's fixed batch" if record.get("fixed_batch") else "; other sizes run the general graph"),
        f"layers   {record['rewritten']} per-sample NCHWc convs, {record.get('patches', 0)} blocked-patch convs, {record['gemm']} per-sample GEMMs, "
        f"{record['kept']} kept as exported (constant weights cheaper there)",
    ]
    if record.get("speedup_vs_portable"):
        verdicts = record.get("speed_verdict", {})

        def speed(batch: str, ratio: float) -> str:
            if verdicts.get(batch) == "slower":
                return f"batch {batch}: {1 / ratio:.2f}x slower (not specialised)"
            if verdicts.get(batch) == "even":
                return f"batch {batch}: {ratio:.2f}x, within the noise"
            return f"batch {batch}: {ratio:.2f}x faster"

        lines.append("speed    " + "; ".join(speed(b, v) for b, v in record["speedup_vs_portable"].items())
                     + " than the portable export (median of paired calls, sign test)")
    if result.deviation:
        worst = max(result.deviation.values())
        lines.append(f"check    max deviation from the portable export {worst:.1e} of the output scale "
                     f"(batches {', '.join(map(str, result.deviation))}; tolerance {result.tolerance:g})")
    for note in result.rewrite.get("notes", []):
        lines.append(f"note     {note}")
    lines.append(f"next     odexport check CHECKPOINT {result.path}   (gate it against the trained model)")
    for line in lines:
        console.print(line, markup=False, highlight=False)
