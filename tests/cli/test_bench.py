"""``odexport bench`` on tiny models: the JSON carries every field; no timing is asserted."""

from __future__ import annotations

import json
import os
import re
import stat
import warnings

import pytest
import torch
from typer.testing import CliRunner

from odexport._optional import available
from odexport.cli.app import app

SHAPE = (3, 32, 32)
FIELDS = ("artifact", "role", "backend", "batch_size", "iterations", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from odexport.models import create_model

    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    model = create_model("od_resnet_tiny").eval()
    ckpt = root / "od_tiny.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    fixed = root / "fixed_b2.onnx"  # reference folded form: exports only with the batch baked in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, *SHAPE),), str(fixed), input_names=["input"], output_names=["output"],
                          dynamo=False)
    return {"ckpt": str(ckpt), "fixed": str(fixed)}


def _bench(*args):
    return CliRunner().invoke(app, ["bench", *map(str, args), "--quiet", "--warmup", "1", "--iters", "3"])


def test_checkpoint_against_its_static_twin(artifacts):
    result = _bench(artifacts["ckpt"], "--batch-sizes", "1,2", "--json", "--threads", "1")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["timer"] == "perf_counter_ns" and data["settings"]["interleaved"] is True
    assert data["settings"]["spinning"] is False and data["settings"]["timing"] == "call by call"
    assert not any("--spinning" in note for note in data["notes"])
    assert data["settings"]["input_shape"] == list(SHAPE)
    assert data["machine"]["cpu_count"] >= 1 and "torch" in data["machine"]
    if hasattr(os, "sched_getaffinity"):  # taskset/cpuset: the cores this process can use, not the machine's
        assert data["machine"]["cpus_usable"] == len(os.sched_getaffinity(0))
    assert data["settings"]["dtype"] is None  # float32, the default: a float16 run says so
    rows = data["results"]
    assert sorted((r["role"], r["batch_size"]) for r in rows) == [("baseline", 1), ("baseline", 2), ("candidate", 1), ("candidate", 2)]
    for row in rows:
        for field in FIELDS:
            assert field in row, field
        assert row["iterations"] == 3 and row["p50_ms"] > 0 and row["p50_ms"] <= row["p99_ms"]
        assert row["backend"] == "torch-cpu"
    for row in rows:
        if row["role"] == "candidate":
            assert row["ratio_to_baseline"] > 0
        else:
            assert row["baseline_of"] == artifacts["ckpt"] and row["ratio_to_baseline"] is None
    assert all(row.keys() == rows[0].keys() for row in rows)  # one set of keys (docs/ci.md)


def test_spinning_without_onnxruntime_says_what_it_changed(artifacts):
    result = _bench(artifacts["ckpt"], "--batch-sizes", "1", "--threads", "1", "--spinning", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["timing"] == "blocks"
    assert data["settings"]["spinning"] is None  # nothing was made to spin: neither true nor false
    assert any("no onnxruntime session was timed" in note for note in data["notes"])


def test_onnx_against_its_exported_static_twin(artifacts, tmp_path):
    plot = tmp_path / "latency.png"
    args = [artifacts["fixed"], "--batch-sizes", "2", "--arch", "od_resnet_tiny", "--threads", "1"]
    if available("matplotlib"):
        args += ["--plot", plot]
    result = _bench(*args)
    assert result.exit_code == 0, result.output
    assert "static twin of" in result.output and "onnxruntime-cpu" in result.output
    assert re.search(r"\b\d+\.\d+x\b", result.output)  # the ratio to the twin
    if available("matplotlib"):
        assert plot.read_bytes()[:4] == b"\x89PNG"
        assert f"wrote {plot}" in " ".join(result.output.split())  # the user is told where it went
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(plot.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_candidates_of_one_architecture_share_one_twin(artifacts, tmp_path):
    """Two exports of one model (e.g. portable and `odexport ort`): one twin session, its timings in both baseline rows."""
    import shutil

    second = tmp_path / "copy.onnx"
    shutil.copy(artifacts["fixed"], second)
    result = _bench(artifacts["fixed"], second, "--batch-sizes", "2", "--arch", "od_resnet_tiny", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    baselines = {row["baseline_of"]: row for row in data["results"] if row["role"] == "baseline"}
    assert set(baselines) == {artifacts["fixed"], str(second)}
    first, other = baselines.values()
    assert first["p50_ms"] == other["p50_ms"] and first["p99_ms"] == other["p99_ms"]  # the same samples
    assert any("shares the static twin" in note for note in data["notes"])
    candidates = [row for row in data["results"] if row["role"] == "candidate"]
    assert len(candidates) == 2 and all(row["ratio_to_baseline"] > 0 for row in candidates)


def test_a_checkpoint_runs_at_the_size_an_export_fixes(artifacts, tmp_path):
    """A checkpoint next to an export of another sample size: both are timed at the export's size
    (a PyTorch model takes any), with a note; two exports fixing different sizes are an input error."""
    from odexport.models import create_model
    from odexport.pipeline import onnx_from_model

    wide = tmp_path / "wide.onnx"
    onnx_from_model(create_model("od_resnet_tiny").eval(), wide, input_shape=(3, 40, 48), check=False)
    result = _bench(artifacts["ckpt"], wide, "--baseline", "none", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["input_shape"] == [3, 40, 48]
    assert all(row["error"] is None and row["p50_ms"] > 0 for row in data["results"]) and len(data["results"]) == 2
    assert any(note.endswith("timed on samples of shape 3x40x48 (the size the other artifacts fix; its default is 3x32x32)")
               for note in data["notes"])

    refused = _bench(wide, artifacts["fixed"], "--baseline", "none")
    assert refused.exit_code == 1 and "the artifacts take samples of different shapes" in " ".join(refused.output.split())


def test_spinning_times_in_blocks(artifacts):
    """--spinning: onnxruntime's default threads, candidate and twin timed in alternating blocks."""
    result = _bench(artifacts["fixed"], "--batch-sizes", "2", "--arch", "od_resnet_tiny", "--threads", "2", "--spinning", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["spinning"] is True and data["settings"]["interleaved"] is False
    assert data["settings"]["timing"] == "blocks"
    assert sorted(row["role"] for row in data["results"]) == ["baseline", "candidate"]
    assert all(row["iterations"] == 3 and row["p50_ms"] > 0 for row in data["results"])
    table = _bench(artifacts["fixed"], "--batch-sizes", "2", "--arch", "od_resnet_tiny", "--threads", "1", "--spinning")
    assert table.exit_code == 0 and "in alternating blocks, onnxruntime spinning on" in " ".join(table.output.split())


def test_rejected_batch_is_recorded_and_exits_1(artifacts):
    result = _bench(artifacts["fixed"], "--batch-sizes", "1,2", "--baseline", "none", "--json")
    assert result.exit_code == 1
    rows = json.loads(result.stdout.split("\n}\n")[0] + "\n}")["results"]
    by_batch = {r["batch_size"]: r for r in rows}
    assert by_batch[1]["error"] and by_batch[1]["p50_ms"] is None and set(by_batch[1]) == set(by_batch[2])  # one schema
    assert by_batch[2]["error"] is None and by_batch[2]["p50_ms"] > 0 and by_batch[2]["ratio_to_baseline"] is None
    assert "could not run" in result.output


def test_unknown_architecture_and_bad_options_exit_1(artifacts, tmp_path):
    result = _bench(artifacts["fixed"], "--batch-sizes", "2")
    assert result.exit_code == 1 and "--arch" in result.output
    assert _bench(artifacts["ckpt"], "--baseline", "fastest").exit_code == 1
    assert _bench(artifacts["ckpt"], "--backend", "tvm").exit_code == 1
    assert _bench(tmp_path / "none.onnx").exit_code == 1


def test_plot_without_matplotlib_exits_3_before_timing(artifacts, tmp_path):
    if available("matplotlib"):
        pytest.skip("matplotlib is installed")
    result = _bench(artifacts["ckpt"], "--plot", tmp_path / "x.png")
    assert result.exit_code == 3 and "matplotlib" in result.output


@pytest.fixture(scope="module")
def exports(artifacts, tmp_path_factory):
    """The tiny checkpoint exported by the CLI twice: portable fp32 (custom form) and --fp16."""
    root = tmp_path_factory.mktemp("bench-exports")
    made = {"full": root / "full.onnx", "half": root / "half.onnx"}
    for key, extra in (("full", ["--form", "custom"]), ("half", ["--fp16"])):
        result = CliRunner().invoke(app, ["onnx", artifacts["ckpt"], "-o", str(made[key]), "--quiet", "--no-check", *extra])
        assert result.exit_code == 0, result.output
    return made


def test_portable_export_on_cpu_points_to_odexport_ort(exports):
    """Timing the portable file on onnxruntime CPU says how to get the fast one, and only then."""
    portable = exports["full"]
    plain = _bench(portable, "--batch-sizes", "1", "--baseline", "none", "--threads", "1", "--json")
    assert plain.exit_code == 0, plain.output
    assert any(f"`odexport ort {portable}`" in note for note in json.loads(plain.stdout)["notes"])
    rewritten = _bench(portable, "--batch-sizes", "1", "--baseline", "none", "--threads", "1", "--json", "--cpu-rewrite")
    assert rewritten.exit_code == 0, rewritten.output
    assert not any("odexport ort" in note for note in json.loads(rewritten.stdout)["notes"])


def test_a_reference_of_another_architecture_is_refused_not_timed(exports, tmp_path):
    """Before, `bench export.onnx --reference <another network>` timed that network's twin as the
    baseline and printed its ratio (0.77x for a DY-ResNet against an OD export), exit 0."""
    from odexport.models import create_model

    torch.manual_seed(0)
    other = tmp_path / "dy_tiny.pth"
    torch.save({"state_dict": create_model("dy_resnet_tiny").eval().state_dict()}, other)
    result = _bench(exports["full"], "--reference", other, "--batch-sizes", "1", "--threads", "1")
    assert result.exit_code == 1, result.output
    assert f"--reference {other} has architecture dy_resnet_tiny, but {exports['full']} records od_resnet_tiny" in result.output
    own = _bench(exports["full"], "--reference", tmp_path.parent / "x", "--batch-sizes", "1")  # not a file: the load's own error
    assert own.exit_code == 1


def test_fp16_export_gets_an_fp16_twin(exports):
    """The baseline is exported as the candidate was: an --fp16 export against an fp32 twin would
    flatter (on a GPU) or punish (on a CPU) the dynamic convs with a precision difference."""
    half, full = exports["half"], exports["full"]
    result = _bench(half, full, "--batch-sizes", "1", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["notes"]
    assert any(f"the static twin of {half} is exported in fp16" in note for note in notes)
    assert not any("shares the static twin" in note for note in notes)  # precision is part of the twin's key


def test_engine_without_tensorrt_next_to_another_artifact(artifacts, tmp_path):
    """The artifact that can run is timed; the engine is reported as not run, and the exit is 3."""
    if available("tensorrt") and torch.cuda.is_available():
        pytest.skip("TensorRT is available here")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 32)
    result = _bench(artifacts["ckpt"], engine, "--batch-sizes", "1,2", "--baseline", "none", "--threads", "1", "--json")
    assert result.exit_code == 3, result.output
    rows = json.loads(result.stdout)["results"]
    timed = [r for r in rows if r["artifact"] == artifacts["ckpt"]]
    not_run = [r for r in rows if r["artifact"] == str(engine)]
    assert len(timed) == 2 and all(r["p50_ms"] > 0 and not r["missing_backend"] for r in timed)
    assert len(not_run) == 2 and all(r["missing_backend"] and r["backend"] == "tensorrt" and r["p50_ms"] is None for r in not_run)
    alone = _bench(engine)
    assert alone.exit_code == 3 and "TensorRT" in alone.output and "the others were measured" not in alone.output
    # nothing could be timed: --json still prints the report that says so (CI archives it), and exits 3
    alone = _bench(engine, "--batch-sizes", "1,2", "--json")
    assert alone.exit_code == 3, alone.output
    rows = json.loads(alone.stdout)["results"]
    assert [(r["batch_size"], r["missing_backend"], r["p50_ms"]) for r in rows] == [(1, True, None), (2, True, None)]
    if available("matplotlib"):  # an empty plot would read as a result: none is written, and the note says so
        plotted = _bench(engine, "--plot", tmp_path / "latency.png")
        assert plotted.exit_code == 3 and not (tmp_path / "latency.png").exists()
        assert "no plot written to" in plotted.output and "nothing was timed" in plotted.output
    # one error line (the command's own); the engine's reason is a NOT RUN line, as in `check`
    text = _bench(artifacts["ckpt"], engine, "--batch-sizes", "1", "--baseline", "none", "--threads", "1", "--iters", "2").output
    assert text.count("error:") == 1 and "error: model.engine not timed" in text, text
    assert "NOT RUN model.engine: " in text


@pytest.mark.gpu
def test_cuda_fp32_is_said_to_be_ieee_fp32(artifacts):
    """fp32 on the GPU is timed with TF32 off; the report says so, and points to fp16."""
    fp32 = _bench(artifacts["ckpt"], "--device", "cuda", "--json")
    assert fp32.exit_code == 0, fp32.output
    assert any("IEEE fp32 on the GPU" in note for note in json.loads(fp32.stdout)["notes"])
    half = _bench(artifacts["ckpt"], "--device", "cuda", "--dtype", "float16", "--cuda-graphs", "--json")
    assert half.exit_code == 0, half.output
    assert not any("IEEE fp32" in note for note in json.loads(half.stdout)["notes"])


def test_cuda_graphs_on_the_cpu_is_refused_for_onnx_too(artifacts):
    """--cuda-graphs is never dropped silently: an .onnx on the CPU is refused as a checkpoint is."""
    for artifact in (artifacts["fixed"], artifacts["ckpt"]):
        result = _bench(artifact, "--cuda-graphs", "--batch-sizes", "2", "--arch", "od_resnet_tiny")
        assert result.exit_code == 1, result.output
        assert "error: CUDA graphs need device cuda -- drop --cuda-graphs or use --device cuda" in result.output
        assert "Traceback" not in result.output


@pytest.mark.gpu
def test_onnx_on_cuda_graphs_against_its_twin(artifacts, tmp_path):
    """onnxruntime's CUDA graph of an odexport export (dynamic batch: one graph per batch size) and
    of its twin, both timed; the runner compares each replay with the plain session first."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    exported = tmp_path / "od_tiny.onnx"
    made = CliRunner().invoke(app, ["onnx", artifacts["ckpt"], "-o", str(exported), "--target", "gpu", "--fp16", "--no-check", "--quiet"])
    assert made.exit_code == 0, made.output
    result = _bench(exported, "--device", "cuda", "--cuda-graphs", "--batch-sizes", "1,3", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert sorted((r["role"], r["batch_size"]) for r in rows) == [("baseline", 1), ("baseline", 3), ("candidate", 1), ("candidate", 3)]
    assert all(r["backend"] == "onnxruntime-cuda" and r["p50_ms"] > 0 for r in rows)


def test_cpu_timings_carry_no_gpu_precision_note(artifacts):
    result = _bench(artifacts["ckpt"], "--json", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert not any("IEEE fp32" in note for note in json.loads(result.stdout)["notes"])


def test_a_batch_no_machine_can_hold_is_refused_before_anything_is_timed(artifacts):
    # 10^9 samples of 3x32x32 are 12 TB as float32 alone: without the check the OOM killer ends the run (exit 137)
    result = _bench(artifacts["ckpt"], "--batch-sizes", "1,1000000000", "--json")
    assert result.exit_code == 1, result.output
    assert "a batch of 1000000000 samples of shape 3x32x32 needs at least" in result.output
    assert "use --batch-sizes of at most" in result.output and "Traceback" not in result.output
    assert "{" not in result.stdout  # no report: nothing was timed


def test_the_twin_keeps_the_recorded_settings_and_refuses_another_arch(exports, tmp_path):
    """--arch dropped the widths and classes the export records (the twin of a 0.1-width export was
    built at width 1.0, ratio 2.57x instead of 8.02x), and another architecture than the recorded
    one was timed as the baseline (ratio 0.13x, exit 0)."""
    import onnx

    from odexport.export import metadata_keys as keys
    from odexport.pipeline import _static_twin_runner
    from odexport.runtime import open_runner

    model = onnx.load(str(exports["full"]))
    for prop in model.metadata_props:
        if prop.key == keys.MODEL_KWARGS:
            prop.value = json.dumps({**json.loads(prop.value), "num_classes": 7})  # as if trained with 7 classes
    seven = tmp_path / "seven.onnx"
    onnx.save(model, str(seven))
    runner = open_runner(seven, "onnxruntime")
    # --arch naming the recorded architecture (without it, the same twin: the recorded settings were always used)
    twin, _ = _static_twin_runner(seven, "onnx", runner, tmp_path, {}, None, None, {"arch": "od_resnet_tiny"})
    assert twin.outputs[0].shape[-1] == 7
    twin.close()
    runner.close()

    other = _bench(exports["full"], "--arch", "od_resnet18", "--batch-sizes", "1")
    assert other.exit_code == 1 and "--arch od_resnet18 is not the architecture" in other.output and "od_resnet_tiny" in other.output


def test_options_a_bench_of_exports_cannot_honour_are_refused_before_timing(artifacts, exports):
    """--dtype (checkpoints only) ran an export in its own precision, exit 0; an --input-shape
    that the export's graph contradicts was found after the twin was exported and timed."""
    half = _bench(exports["full"], "--dtype", "float16", "--baseline", "none")
    assert half.exit_code == 1 and "--dtype float16 applies to checkpoints" in half.output, half.output
    shape = _bench(artifacts["fixed"], "--arch", "od_resnet_tiny", "--input-shape", "3x64x64", "--batch-sizes", "2")
    assert shape.exit_code == 1 and "--input-shape 3x64x64 is not the sample shape" in shape.output, shape.output
    assert "static twin" not in shape.output  # refused before the twin was built
