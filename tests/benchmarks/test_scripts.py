"""The benchmark scripts behind docs/performance.md, run small: they must run, report what they
measured in the fields their docstrings name, check every export against PyTorch (the independent
reference) before timing it, and refuse bad arguments in one line.  No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
TINY = ["--models", "od_resnet_tiny", "--size", "32"]


def script(name: str):
    """Import ``benchmarks/<name>.py`` as a module (the folder is scripts, not a package)."""
    if str(BENCHMARKS) not in sys.path:  # bench_gpu imports bench_forms by name, as when run
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"odexport_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def forms_record(tmp_path_factory):
    """One small ``bench_forms.py --ort-cpu`` run: JSON, Markdown and the export cache."""
    out = tmp_path_factory.mktemp("bench_forms")
    argv = [*TINY, "--batch-sizes", "1,2", "--warmup", "1", "--iters", "2", "--ort-cpu",
            "--cache", str(out / "cache"), "--json", str(out / "forms.json"), "--markdown", str(out / "forms.md")]
    assert script("bench_forms").main(argv) == 0
    return out, json.loads((out / "forms.json").read_text()), (out / "forms.md").read_text()


def test_bench_forms_records_latency_parity_and_settings(forms_record):
    _, record, _ = forms_record
    assert record["machine"]["cpu_count"] >= 1 and record["machine"]["onnxruntime"]
    assert record["settings"]["ort_cpu"] is True and record["settings"]["spinning"] is False
    entry = record["models"]["od_resnet_tiny"]
    assert entry["deploy"] == "reparameterised"
    # the export against the PyTorch model it came from, at batch 1 and 8
    assert set(entry["parity_rel_max_abs"]) == {"1", "8"}
    assert max(entry["parity_rel_max_abs"].values()) < 1e-5
    for batch in ("1", "2"):
        timed = entry["onnxruntime"][batch]
        assert set(timed) == {"twin", "dynamic", "dynamic+ort"}
        for stats in timed.values():
            assert stats["batch_size"] == int(batch) and stats["iterations"] == 2
            assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
            assert stats["throughput"] > 0
    assert set(entry["eager"]) == {"1"}  # eager at batch 1 only by default


def test_bench_forms_markdown_shows_the_json_ratios(forms_record):
    _, record, markdown = forms_record
    assert markdown.startswith("onnxruntime CPU, 2 intra-op threads, spinning off")
    timed = record["models"]["od_resnet_tiny"]["onnxruntime"]
    for batch in ("1", "2"):
        row = next(line for line in markdown.splitlines() if line.startswith(f"| od_resnet_tiny | {batch} |"))
        ratio = timed[batch]["dynamic"]["p50_ms"] / timed[batch]["twin"]["p50_ms"]
        specialised = timed[batch]["dynamic+ort"]["p50_ms"] / timed[batch]["twin"]["p50_ms"]
        assert f"| {ratio:.2f}x ({specialised:.2f}x `odexport ort`) |" in row


def test_bench_forms_reuses_its_cache_and_records_spinning(forms_record):
    out, _, _ = forms_record
    argv = [*TINY, "--batch-sizes", "1", "--warmup", "1", "--iters", "2", "--no-eager", "--spinning",
            "--cache", str(out / "cache"), "--json", str(out / "spin.json")]
    assert script("bench_forms").main(argv) == 0
    record = json.loads((out / "spin.json").read_text())
    assert record["settings"]["spinning"] is True
    entry = record["models"]["od_resnet_tiny"]
    assert entry["export_s"] == {"candidate": 0.0, "twin": 0.0}  # both exports came from the cache
    assert "eager" not in entry or not entry["eager"]


def test_bench_layers_checks_each_variant_against_the_layer(capsys):
    rows = script("bench_layers").main(["--only", "l4", "--kernels", "1", "--batches", "2",
                                        "--variants", "patch,bmm,static", "--iters", "2"])
    assert [(r["case"], r["kernels"], r["batch"]) for r in rows] == [("r18:l4", 1, 2)]
    assert set(rows[0]["ratios"]) == {"patch", "bmm"} and all(v > 0 for v in rows[0]["ratios"].values())
    assert max(rows[0]["errors"].values()) < 1e-5
    assert re.search(r"r18:l4 +K=1 B=2: static [\d.]+ ms \| patch [\d.]+x  bmm [\d.]+x", capsys.readouterr().out)


def test_bench_cpu_forms_checks_portable_and_specialised_against_float64(tmp_path):
    rows = script("bench_cpu_forms").main([*TINY, "--plans", "auto,auto/custom+ort", "--batches", "1,2",
                                           "--iters", "2", "--rounds", "1", "--cache", str(tmp_path)])
    assert [(r["batch"], r["plan"]) for r in rows] == [(1, "auto"), (1, "auto/custom+ort"), (2, "auto"), (2, "auto/custom+ort")]
    for row in rows:
        assert row["ratio"] > 0
        assert row["error_vs_fp64"] < 1e-5 and row["error_vs_fp32"] < 1e-5
    assert any("_32x32_" in path.name for path in tmp_path.iterdir())  # the size is part of the cache key


def test_bench_gpu_exports_match_pytorch_on_the_cpu(tmp_path):
    """The GPU record's export jobs, run here on onnxruntime CPU: every layer in ``bmm``, and the
    batch-folded ``grouped`` form at its fixed batch, against the deployed PyTorch model."""
    from odexport.runtime.onnxruntime_runner import OrtRunner

    bench_gpu = script("bench_gpu")
    _, model = bench_gpu.build("od_resnet_tiny")
    deployed, _ = bench_gpu.deploy_form(model)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        reference = deployed(torch.from_numpy(x)).numpy()
    for variant, batch in (("bmm", None), ("grouped", 2)):
        info = bench_gpu.export_one("od_resnet_tiny", "model", variant, False, batch, 32, str(tmp_path / f"{variant}.onnx"))
        assert info["forms"] == [variant]
        runner = OrtRunner(info["path"], threads=1)
        got = runner.infer(x)["output"]
        runner.close()
        assert np.abs(got - reference).max() <= 1e-5 * np.abs(reference).max()


@pytest.mark.parametrize("name, argv, message", [
    ("bench_forms", ["--models", "nope"], "unknown models ['nope']; choose from od_resnet18:1"),
    ("bench_cpu_forms", ["--models", "nope"], "unknown models ['nope']; choose from od_resnet18:1"),
    ("bench_cpu_forms", ["--plans", "auto,zz+ort"], "unknown plans ['zz+ort']; a plan is one of auto"),
    ("bench_layers", ["--cases", "r19"], "unknown case sets ['r19']; choose from r18, dy18, mbv2"),
    ("bench_layers", ["--cases", "dy18", "--only", "l2.0"], "no case named ['l2.0'] in dy18"),
    ("bench_gpu", ["--models", "nope"], "unknown models ['nope']; choose from od_resnet18:1"),
])
def test_bad_arguments_get_one_line_and_exit_2(name, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script(name).main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_bench_gpu_without_cuda_exits_3_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the script would run")
    with pytest.raises(SystemExit) as exit_info:
        script("bench_gpu").main(["--models", "od_resnet_tiny"])
    assert exit_info.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0] and "CUDA build of torch" in err[0]
