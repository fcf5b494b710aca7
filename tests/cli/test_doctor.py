"""``odexport doctor``: what this machine can do, as text and as JSON; always exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnxruntime
import torch
from typer.testing import CliRunner

from odexport._optional import available
from odexport.cli.app import app
from odexport.cli.commands.doctor import render_report


def _doctor(*args, env=None):
    return subprocess.run([sys.executable, "-c", "from odexport.cli import main; main()", "doctor", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_json_report_matches_this_machine(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "libodexport_plugin.so").write_bytes(b"")
    result = _doctor("--json", env={"ODEXPORT_PLUGIN_PATH": str(plugins)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cpu_count"] == os.cpu_count()
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda_available"] == torch.cuda.is_available()
    assert len(report["torch"]["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert report["onnxruntime"]["version"] == onnxruntime.__version__
    assert report["onnxruntime"]["providers"] == onnxruntime.get_available_providers()
    assert report["onnx"] and report["onnxscript"]
    trt = report["tensorrt"]
    assert trt["available"] == available("tensorrt")
    if not trt["available"]:
        assert "tensorrt" in trt["why_missing"] and trt["install"] == "pip install 'odexport[trt]'"
    else:
        assert trt["version"]
    assert [os.path.basename(p["path"]) for p in report["plugin_libraries"]] == ["libodexport_plugin.so"]
    assert report["can"]["export_onnx"] is True
    gpu_provider = "CUDAExecutionProvider" in onnxruntime.get_available_providers() and torch.cuda.is_available()
    assert ("cuda_session" in report["onnxruntime"]) == gpu_provider  # started only where it can work
    assert report["can"]["onnxruntime_cuda"] == bool(report["onnxruntime"].get("cuda_session", {}).get("started"))
    assert report["can"]["tensorrt_engines"] == bool(trt.get("usable"))
    memory = report["memory"]
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as handle:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle if line.split()[-1:] == ["kB"]}
        system = memory["meminfo_available"] + (memory["swap_free"] or 0)  # swap counts: a batch that swaps is not killed
        assert 0 < memory["available"] <= min(v for v in (system, memory["cgroup_room"]) if v is not None)
        assert memory["available"] <= fields["MemTotal"] + fields.get("SwapTotal", 0)


def test_text_report_exits_0_and_covers_every_section():
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0
    text = result.output
    for heading in ("torch", "CUDA", "onnxruntime", "onnx ", "onnxscript", "TensorRT", "plugins", "can "):
        assert heading in text, heading
    if not available("tensorrt"):
        assert "TensorRT     not available" in text and "pip install 'odexport[trt]'" in text
    if not torch.cuda.is_available():
        assert "GPUs         none" in text


def test_render_survives_failed_probes():
    lines = render_report({
        "odexport": "0", "python": "3", "platform": "p", "cpu_count": 1,
        "torch": {"error": "ImportError: broken"}, "onnxruntime": {"error": "ImportError: gone"},
        "tensorrt": {"error": "OSError: libnvinfer.so"}, "plugin_libraries": {"error": "PermissionError"}, "can": {},
        "memory": {"error": "OSError: /proc"},
    })
    text = "\n".join(lines)
    assert "memory       probe failed: OSError: /proc" in text
    assert "torch        not usable: ImportError: broken" in text
    assert "onnxruntime  not usable" in text and "TensorRT     probe failed" in text and "search failed" in text
    assert render_report({"error": "boom"}) == ["odexport doctor could not inspect this machine: boom"]


def test_render_of_a_gpu_machine_with_tensorrt():
    lines = render_report({
        "odexport": "0.1.0", "python": "3.11", "platform": "Linux", "cpu_count": 16,
        "torch": {"version": "2.13.0", "cuda_build": "12.8", "cuda_available": True, "cudnn": 91000,
                  "gpus": [{"index": 0, "name": "NVIDIA H100", "compute_capability": "9.0", "memory_gib": 79.1}]},
        "onnx": "1.23", "onnxscript": "0.7", "onnxruntime": {"version": "1.32", "providers": ["CUDAExecutionProvider"]},
        "tensorrt": {"available": True, "version": "10.13.0.35", "usable": True, "strongly_typed_builds": True,
                     "fp16_builder_flag": True, "parser_plugin_override": False, "python_plugins": True},
        "plugin_libraries": [], "can": {"tensorrt_engines": True},
    })
    text = "\n".join(lines)
    assert "GPU 0        NVIDIA H100, compute capability 9.0, 79.1 GiB" in text
    assert "TensorRT     10.13.0.35 (strongly typed builds, BuilderFlag.FP16, no parser plugin override (needs >= 10.15)" in text
    assert "TensorRT engines yes" in text


def test_cuda_provider_is_proven_by_a_session_not_by_its_name():
    """The probe starts a real session on the CUDA provider: on a machine without the provider or
    without a GPU it reports why it could not, where both exist it runs a Conv there."""
    from odexport.runtime.onnxruntime_runner import cuda_session_probe

    result = cuda_session_probe()
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert result == {"started": False, "why": "onnxruntime's CUDA execution provider is not available in this installation"}
    else:
        assert result["started"] == torch.cuda.is_available(), result["why"]


def test_render_says_when_the_cuda_provider_does_not_start():
    lines = render_report({
        "odexport": "0.1.0", "python": "3.12", "platform": "Linux", "cpu_count": 16,
        "torch": {"version": "2.11.0", "cuda_build": "13.0", "cuda_available": True, "cudnn": 91900, "gpus": []},
        "onnx": "1.23", "onnxscript": "0.7",
        "onnxruntime": {"version": "1.31.1", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                        "cuda_session": {"started": False, "why": "onnxruntime could not start its CUDA execution provider"}},
        "tensorrt": {"available": False, "why_missing": "no module", "install": "pip install 'odexport[trt]'"},
        "plugin_libraries": [], "can": {"onnxruntime_cuda": False},
    })
    text = "\n".join(lines)
    assert "CUDA provider could not start: onnxruntime could not start its CUDA execution provider" in text
    assert "onnxruntime CUDA no" in text


def test_memory_line_names_a_cgroup_limit():
    gib = 2**30
    lines = render_report({"memory": {"available": 3 * gib, "meminfo_available": 20 * gib, "cgroup_limit": 4 * gib, "cgroup_room": 3 * gib}})
    assert "memory       3.0 GiB available, under a cgroup limit of 4.0 GiB (bench, check, run and ort refuse batches past it)" in lines
    assert any("memory       unknown here" in line for line in render_report({"memory": {"available": None}}))
    swapping = render_report({"memory": {"available": 5 * gib, "meminfo_available": 3 * gib, "swap_free": 2 * gib}})
    assert "memory       5.0 GiB available (2.0 GiB of it swap) (bench, check, run and ort refuse batches past it)" in swapping
