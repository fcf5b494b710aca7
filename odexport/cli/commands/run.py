"""``odexport run``: run a model on an input batch and save its output."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from odexport.cli._options import (
    ArchOption,
    EmaOption,
    FactoryOption,
    QuietOption,
    SubmodelOption,
    TemperatureOption,
    TrustPickleOption,
)
from odexport.cli.app import app


_EXAMPLES = """\
Examples:
# or a checkpoint, or an engine
odexport run model.onnx -i batch.npy -o out.npy"""


@app.command(epilog=_EXAMPLES)
def run(
    artifact: Annotated[str, typer.Argument(help="Checkpoint to run (also .onnx and TensorRT engines where their backends are installed).", show_default=False)],
    input: Annotated[str, typer.Option("--input", "--inputs", "-i", help="Input batch (N, C, H, W), or one sample (C, H, W): .npy, .npz or .pt; in an .npz or a .pt dict the array 'x' or 'input' (or the only one).", show_default=False)],  # noqa: A002
    output: Annotated[str, typer.Option("--output", "-o", help="Where to save the output: .npy (one output) or .npz (all outputs by name). Written atomically.", show_default=False)],
    temperature: TemperatureOption = None,
    arch: ArchOption = None,
    trust_pickle: TrustPickleOption = False,
    ema: EmaOption = False,
    factory: FactoryOption = None,
    submodel: SubmodelOption = None,
    backend: Annotated[Optional[str], typer.Option(help="Backend: torch (checkpoints), onnxruntime (.onnx), tensorrt (engines). Default: the artifact's own.", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (PyTorch CUDA for checkpoints, onnxruntime's CUDA provider for .onnx; engines always run on the GPU).")] = "cpu",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object describing the run on stdout.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Run ARTIFACT in eval mode (float32) on the batch in --input and save the output to -o.

    A checkpoint's architecture is detected from its keys (or --arch / --factory); every dynamic layer runs at --temperature (default 1.0, the value of a trained network).
    """
    from odexport.cli._common import console, print_json, print_load_notes, run_command, stages

    def action() -> None:
        from pathlib import Path

        from odexport._files import output_folder, refuse_overwriting_input
        from odexport.checkpoint.arrays import save_array_atomic
        from odexport.errors import InputError
        from odexport.pipeline import run_artifact

        target = Path(output)
        if target.suffix.lower() not in (".npy", ".npz"):
            raise InputError(f"output file {target} must end in .npy or .npz", "e.g. -o out.npy")
        if target.is_dir():
            raise InputError(f"output {target} is a directory", "give a file name, e.g. -o out.npy")
        refuse_overwriting_input(target, artifact, input)
        output_folder(target, example="out.npy")  # a missing or refusing folder: before the model is loaded and run
        with stages(quiet or json_output) as stage:
            stage(f"load {artifact} and run {input}")
            result = run_artifact(artifact, input, backend=backend, device=device, arch=arch, temperature=temperature,
                                  trust_pickle=trust_pickle, prefer_ema=ema, factory=factory, submodel=submodel)
            stage(f"save {target}")
            save_array_atomic(target, result["outputs"])
        info = result["info"]
        shapes = {name: list(array.shape) for name, array in result["outputs"].items()}
        if json_output:
            print_json({
                "artifact": artifact, "output_file": str(target), "backend": result["backend"], "input_shape": list(result["input_shape"]),
                "outputs": shapes, "arch": getattr(info, "arch", None), "layout": getattr(info, "layout", None),
                "temperature": getattr(info, "temperature", None), "sha256": getattr(info, "sha256", None),
                "load_notes": list(info.warnings) if info is not None else [], "input_notes": result["input_notes"],
            })
            return
        print_load_notes(console, [*(info.warnings if info is not None else []), *result["input_notes"]])
        described = ", ".join(f"{name} {tuple(shape)}" for name, shape in shapes.items())
        if info is None:
            what = Path(artifact).name
        else:
            what = f"{info.arch} ({info.layout}), " + ("no single temperature" if info.temperature is None else f"temperature {info.temperature}")
        console.print(f"wrote {target}: {described} float32 -- {what}, backend {result['backend']}", markup=False, highlight=False)

    run_command(action)
