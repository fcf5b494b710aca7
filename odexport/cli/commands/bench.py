"""``odexport bench``: latency of artifacts against their static twins, measured interleaved."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from odexport.cli._options import (
    ArchOption,
    EmaOption,
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
# latency against the model's static twin
odexport bench model.onnx
# machine-readable
odexport bench model.onnx --batch-sizes 1,8 --threads 2 --json"""


@app.command(epilog=_EXAMPLES)
def bench(
    artifacts: Annotated[list[str], typer.Argument(metavar="ARTIFACT", help="Checkpoints (PyTorch), .onnx (onnxruntime) or .engine/.plan (TensorRT) files.", show_default=False)],
    backend: Annotated[Optional[str], typer.Option(help="torch, onnxruntime or tensorrt (default: by file type).", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1",
    warmup: Annotated[int, typer.Option(help="Untimed calls per artifact before timing.", min=0)] = 10,
    iters: Annotated[int, typer.Option(help="Timed calls per artifact and batch size.", min=1)] = 50,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per session (default: the runtime's).", min=1, show_default=False)] = None,
    baseline: Annotated[str, typer.Option(help="static-twin (each dynamic conv replaced by a static conv of the same shape, run the same way) or none.")] = "static-twin",
    reference: Annotated[Optional[str], typer.Option(help="Checkpoint an ONNX/engine artifact was made from (to build its static twin).", show_default=False)] = None,
    dtype: Annotated[Optional[str], typer.Option(help="PyTorch dtype for checkpoints: float32 (default), float16 or float64; exports keep the precision they were made in.", show_default=False)] = None,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help="On CUDA (PyTorch, or onnxruntime's CUDA provider): capture the model in a CUDA graph once per batch size and time its replays.")] = False,
    cpu_rewrite: Annotated[bool, typer.Option("--cpu-rewrite", help="onnxruntime CPU: specialise .onnx candidates for this machine in memory at --batch-sizes, as `odexport ort` writes them (exact).")] = False,
    spinning: Annotated[bool, typer.Option("--spinning", help="onnxruntime: keep idle threads spinning (its default, as a server running one model does) and time in alternating blocks of calls instead of call by call.")] = False,
    max_seconds: Annotated[Optional[float], typer.Option(help="Stop timing a batch size after this many seconds (each artifact gets at least 5 timed calls).", min=0.0, show_default=False)] = None,
    json_output: JsonOption = False,
    plot: Annotated[Optional[str], typer.Option(help="Draw latency vs batch size to this PNG (needs matplotlib).", show_default=False)] = None,
    input_shape: InputShapeOption = None,
    arch: ArchOption = None,
    temperature: TemperatureOption = None,
    trust_pickle: TrustPickleOption = False,
    ema: EmaOption = False,
    factory: Annotated[Optional[str], typer.Option(
        "--factory", help="Build your own architecture with `my_pkg.my_module:build_fn` (imports your code), load the checkpoint "
        "into it and swap its reference dynamic-conv layers for odexport's; for an export made with it, the factory its static "
        "twin is built with (the export records it, but only a factory you name here is run).", show_default=False)] = None,
    submodel: SubmodelOption = None,
    quiet: QuietOption = False,
) -> None:
    """Latency p50/p90/p99 and throughput of each ARTIFACT, with the ratio to its static twin.

    Warm-up calls are excluded; CPU timings use perf_counter_ns, GPU timings CUDA events. The artifact and its baseline are called in turn in the same run (never one after the other), with onnxruntime thread spinning off, so their ratio holds on a busy machine; --spinning times onnxruntime's default setting in alternating blocks instead.
    """
    from odexport.cli._common import console, print_table, run_command, stages

    def action() -> None:
        from odexport.cli._options import parse_batch_sizes, parse_input_shape
        from odexport.pipeline import benchmark
        from odexport.report.render import BENCH_COLUMNS, COMPACT_BENCH_COLUMNS, bench_error_lines, bench_plot, bench_table

        if plot:
            from odexport._files import output_folder, refuse_overwriting_input
            from odexport._optional import require

            require("matplotlib", "--plot")  # fail before timing, not after
            output_folder(plot, create=True, example="latency.png")
            refuse_overwriting_input(plot, *artifacts, reference, fix="choose another --plot path")
        shape = parse_input_shape(input_shape) if input_shape is not None else None
        with stages(quiet or json_output) as stage:
            report = benchmark(
                artifacts, backend=backend, device=device, batch_sizes=parse_batch_sizes(batch_sizes), warmup=warmup,
                iterations=iters, threads=threads, baseline=baseline, input_shape=shape, arch=arch, reference=reference,
                temperature=temperature, trust_pickle=trust_pickle, prefer_ema=ema, factory=factory, submodel=submodel, dtype=dtype, cuda_graphs=cuda_graphs,
                max_seconds=max_seconds, cpu_rewrite=cpu_rewrite, progress=stage, spinning=spinning,
            )
        plotted = bool(plot) and any(entry.stats is not None for entry in report.entries)
        if plotted:
            bench_plot(report, plot)
        elif plot:
            report.notes.append(f"no plot written to {plot}: nothing was timed")
        if json_output:
            from odexport.cli._common import print_json

            print_json(report.to_dict())
        else:
            print_table(lambda columns: bench_table(report, columns), BENCH_COLUMNS, COMPACT_BENCH_COLUMNS)
            for kind, line in bench_error_lines(report):
                console.print(f"{kind} {line}", markup=False, style="red" if kind == "error:" else "yellow")
            for note in report.notes:
                console.print(f"note: {note}", markup=False)
            if plotted:
                console.print(f"wrote {plot} (latency against batch size)", markup=False)
        failed = [e for e in report.entries if e.error and not e.missing_backend]
        if failed:
            from odexport.errors import InputError

            errors = "the rows' \"error\" in the JSON" if json_output else "the errors above"
            raise InputError(f"{len(failed)} of {len(report.entries)} measurements could not run",
                             f"see {errors} (a batch size the artifact rejects?); the rest were measured")
        not_run = sorted({Path(e.artifact).name for e in report.entries if e.missing_backend})
        if not_run:
            from odexport.errors import MissingDependencyError

            others = " (the others were measured)" if any(e.stats is not None for e in report.entries) else ""
            raise MissingDependencyError(f"{', '.join(not_run)} not timed: this machine lacks the backend{others}",
                                         "run the benchmark where the backend is installed (see `odexport doctor`)")

    run_command(action)
