"""``odexport doctor``: what this machine can do (torch/CUDA, GPUs, onnxruntime, TensorRT, plugins)."""

from __future__ import annotations

import typer

from odexport.cli._options import JsonOption
from odexport.cli.app import app


_EXAMPLES = """\
Examples:
# what this machine can run, for a bug report
odexport doctor --json"""


@app.command(epilog=_EXAMPLES)
def doctor(
    json_output: JsonOption = False,
) -> None:
    """Report torch and CUDA, GPUs, onnxruntime and its providers, TensorRT (or why it is missing) and the plugin libraries found.

    Always exits 0: it reports problems, it does not fail on them.
    """
    from odexport.cli._common import print_json

    try:
        from odexport.environment import machine_report

        report = machine_report()
    except Exception as exc:  # doctor must answer even when odexport itself is broken
        report = {"error": f"{type(exc).__name__}: {exc}"}
    if json_output:
        print_json(report)
        return
    for line in render_report(report):
        typer.echo(line)


def _yes(value) -> str:
    return "yes" if value else "no"


def render_report(report: dict) -> list[str]:
    """Plain text lines of a :func:`odexport.environment.machine_report` (no markup)."""
    from odexport._memory import format_bytes

    if "error" in report and len(report) == 1:
        return [f"odexport doctor could not inspect this machine: {report['error']}"]
    lines = [f"odexport {report.get('odexport')} | Python {report.get('python')} | {report.get('platform')} | {report.get('cpu_count')} CPUs"]

    torch_info = report.get("torch", {})
    if "error" in torch_info:
        lines.append(f"torch        not usable: {torch_info['error']}")
    else:
        cuda = f"CUDA {torch_info.get('cuda_build')} build" if torch_info.get("cuda_build") else "CPU-only build"
        lines.append(f"torch        {torch_info.get('version')} ({cuda})")
        if torch_info.get("cuda_available"):
            lines.append(f"CUDA         available, cuDNN {torch_info.get('cudnn')}")
            for gpu in torch_info.get("gpus", []):
                lines.append(f"GPU {gpu['index']}        {gpu['name']}, compute capability {gpu['compute_capability']}, {gpu['memory_gib']} GiB")
        else:
            lines.append(f"CUDA         not available: {torch_info.get('why_no_cuda')}")
            lines.append("GPUs         none")

    lines.append(f"onnx         {report.get('onnx') or 'not installed'}")
    lines.append(f"onnxscript   {report.get('onnxscript') or 'not installed'}")
    ort = report.get("onnxruntime", {})
    if "error" in ort:
        lines.append(f"onnxruntime  not usable: {ort['error']}")
    else:
        lines.append(f"onnxruntime  {ort.get('version')}, providers: {', '.join(ort.get('providers', [])) or 'none'}")
        session = ort.get("cuda_session")
        if session is not None:
            state = "started" if session.get("started") else "could not start"
            lines.append(f"             CUDA provider {state}: {session.get('why') or session.get('error')}")

    trt = report.get("tensorrt", {})
    if "error" in trt:
        lines.append(f"TensorRT     probe failed: {trt['error']}")
    elif trt.get("available"):
        features = [
            "strongly typed builds" if trt.get("strongly_typed_builds") else "weakly typed builds",
            "BuilderFlag.FP16" if trt.get("fp16_builder_flag") else "no BuilderFlag.FP16",
            "parser plugin override" if trt.get("parser_plugin_override") else "no parser plugin override (needs >= 10.15)",
            "tensorrt.plugin" if trt.get("python_plugins") else "no Python plugins",
        ]
        lines.append(f"TensorRT     {trt.get('version')} ({', '.join(features)})")
        if not trt.get("usable"):
            lines.append(f"             not usable here: {trt.get('why_unusable') or 'TensorRT < 10 is not supported'}")
    else:
        install = trt.get("install") or "pip install 'odexport[trt]'"
        lines.append(f"TensorRT     not available: {trt.get('why_missing')} -- {install}")

    plugins = report.get("plugin_libraries", [])
    if isinstance(plugins, dict):  # the probe failed
        lines.append(f"plugins      search failed: {plugins.get('error')}")
    elif plugins:
        for entry in plugins:
            lines.append(f"plugin       {entry['path']} ({entry['kind']}, via {entry['found_via']})")
    else:
        lines.append("plugins      none found (searched $ODEXPORT_PLUGIN_PATH and $LD_LIBRARY_PATH)")

    memory = report.get("memory", {})
    if "error" in memory:
        lines.append(f"memory       probe failed: {memory['error']}")
    elif memory.get("available") is None:
        lines.append("memory       unknown here (no /proc/meminfo): batch sizes are not checked against it")
    else:
        swap = f" ({format_bytes(memory['swap_free'])} of it swap)" if memory.get("swap_free") and not memory.get("cgroup_limit") else ""
        limit = f", under a cgroup limit of {format_bytes(memory['cgroup_limit'])}" if memory.get("cgroup_limit") else ""
        lines.append(f"memory       {format_bytes(memory['available'])} available{swap}{limit} (bench, check, run and ort refuse batches past it)")
    can = report.get("can", {})
    lines.append(
        "can          "
        + ", ".join(f"{label} {_yes(can.get(key))}" for key, label in (
            ("export_onnx", "export ONNX"),
            ("onnxruntime_cpu", "onnxruntime CPU"),
            ("onnxruntime_cuda", "onnxruntime CUDA"),
            ("torch_cuda", "torch CUDA"),
            ("tensorrt_engines", "TensorRT engines"),
        ))
    )
    return lines
