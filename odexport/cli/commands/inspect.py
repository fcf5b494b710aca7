"""``odexport inspect``: what a checkpoint (or a registered architecture) is, and what it costs."""

from __future__ import annotations

from typing import Annotated

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

_EXAMPLES = """\
Examples:
# what the checkpoint is and what it costs
odexport inspect model.pth
# an architecture by name
odexport inspect od_resnet18 -K 4 --json"""


@app.command(epilog=_EXAMPLES)
def inspect(
    source: Annotated[str, typer.Argument(help="A checkpoint file (.pt/.pth/.pth.tar/.tar/.safetensors) or a registered architecture name.", show_default=False)],
    kernel_num: KernelNumOption = None,
    json_output: JsonOption = False,
    arch: ArchOption = None,
    temperature: TemperatureOption = None,
    trust_pickle: TrustPickleOption = False,
    ema: EmaOption = False,
    factory: FactoryOption = None,
    submodel: SubmodelOption = None,
    input_shape: InputShapeOption = None,
    quiet: QuietOption = False,
) -> None:
    """Architecture, layout, parameters, MACs (static + dynamic extra), per-layer table and temperature.

    SOURCE is a checkpoint (architecture detected from its keys and shapes, or --arch / --factory) or an architecture name (built with random weights; --kernel-num sets K).
    """
    from odexport.cli._common import run_command, stages

    def action() -> None:
        from odexport.cli._options import parse_input_shape
        from odexport.pipeline import inspect_checkpoint

        shape = parse_input_shape(input_shape) if input_shape is not None else None
        with stages(quiet or json_output) as stage:
            summary, analysis = inspect_checkpoint(source, arch=arch, kernel_num=kernel_num, temperature=temperature,
                                                   trust_pickle=trust_pickle, prefer_ema=ema, factory=factory,
                                                   submodel=submodel, input_shape=shape, progress=stage)
        if json_output:
            from odexport.cli._common import print_json

            print_json(summary)
        else:
            _print_rich(summary, analysis)

    run_command(action)


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def _giga(n: int) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e8 else f"{n / 1e6:.2f} M"


LAYER_COLUMNS = ("layer", "type", "in", "out", "kernel", "stride", "groups", "K", "heads", "T", "params", "MACs", "+dynamic")
COMPACT_LAYER_COLUMNS = ("layer", "type", "kernel", "K", "params", "MACs", "+dynamic")


def _print_rich(summary: dict, analysis) -> None:
    from rich.table import Table
    from rich.text import Text

    from odexport.cli._common import console, print_table
    from odexport.report.render import table_style

    source = summary["source"]
    # (key, value) lines printed by hand: a rich grid pads every line to the longest one
    header: list[tuple[str, str]] = []
    if source["path"]:
        header.append(("checkpoint", source["path"]))
        header.append(("sha256", source["sha256"] or ""))
    header.append(("architecture", f"{summary['arch']}  ({source['kind']})"))
    header.append(("layout", summary["layout"]))
    stored = summary["extras"].get("stored_dtypes")
    if stored:
        header.append(("stored as", ", ".join(f"{dtype} ({count} tensor{'s' if count > 1 else ''})" for dtype, count in stored.items())
                       + "; computed in float32"))
    if summary["model_kwargs"]:
        header.append(("options", ", ".join(f"{k}={v}" for k, v in summary["model_kwargs"].items())))
    shapes = [tuple(shape) for shape in summary.get("output_shapes") or []]
    outputs = (f" -> output {shapes[0]}" if len(shapes) == 1 else
               f" -> outputs {', '.join(map(str, shapes))}" if shapes else "")
    header.append(("input", "x".join(map(str, summary["input_shape"])) + outputs))
    header.append(("parameters", f"{_millions(summary['params'])} ({summary['params']:,}); dynamic layers "
                   f"{_millions(summary['params_dynamic_layers'])}, of which attention {_millions(summary['params_attention'])}"))
    macs = summary["macs"]
    header.append(("MACs", f"{_giga(macs['total'])} = static {_giga(macs['static'])} + dynamic extra {_giga(macs['dynamic_extra'])} "
                   f"(attention {_giga(macs['attention'])}, kernel aggregation {_giga(macs['aggregation'])})"))
    temperature = summary["temperature"]
    if temperature is None and summary.get("temperatures"):
        by_value: dict[float, list[str]] = {}
        for name, value in summary["temperatures"].items():
            by_value.setdefault(value, []).append(name)
        shown = "; ".join(f"{value:g} ({names[0] if len(names) == 1 else f'{len(names)} layers'})" for value, names in by_value.items())
        header.append(("temperature", f"per layer: {shown}"))
    else:
        header.append(("temperature", "no dynamic layer" if temperature is None else f"{temperature:g} (every dynamic layer)"))
    header.append(("layers", f"{summary['num_layers']} conv/linear, {summary['num_dynamic_layers']} dynamic"))
    key_width = max(len(key) for key, _ in header) + 2
    for key, value in header:
        console.print(Text(key.ljust(key_width), style="bold") + Text(value), soft_wrap=True)
    for note in summary["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)

    def layer_table(columns: tuple[str, ...]):
        table = Table(header_style="bold", pad_edge=False, **table_style())
        for column in columns:
            text = column in ("layer", "type", "heads")  # names fold on a narrow terminal; a number cut shows its …
            table.add_column(column, justify="left" if text else "right", no_wrap=not text,
                             overflow="fold" if text else "ellipsis")
        for row in analysis.layers:
            cells = {
                "layer": row.name, "type": row.type, "in": str(row.in_channels), "out": str(row.out_channels),
                "kernel": "" if row.kernel is None else f"{row.kernel[0]}x{row.kernel[1]}",
                "stride": "" if row.stride is None else (str(row.stride[0]) if row.stride[0] == row.stride[1] else f"{row.stride[0]}x{row.stride[1]}"),
                "groups": str(row.groups), "K": "" if row.kernel_num is None else str(row.kernel_num),
                "heads": "".join(h[0] for h in row.heads) if row.heads else "",
                "T": "" if row.temperature is None else f"{row.temperature:g}", "params": f"{row.params:,}", "MACs": f"{row.macs / 1e6:.2f} M",
                "+dynamic": "" if not row.dynamic else f"{(row.attention_macs + row.aggregation_macs) / 1e6:.2f} M",
            }
            table.add_row(*(cells[column] for column in columns))
        return table

    print_table(layer_table, LAYER_COLUMNS, COMPACT_LAYER_COLUMNS)
    console.print("heads: c channel, f filter, s spatial, k kernel; MACs per sample", style="dim", highlight=False)
