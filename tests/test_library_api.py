"""odexport as a library: the pipeline calls take what a Python caller has (arrays, one path, one
batch size), refuse a temperature the layers cannot run at, and leave the caller's process as they
found it (torch's thread pool, torch's global random stream)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import odexport
from odexport.errors import InputError
from odexport.pipeline import check_parity, onnx_from_checkpoint, run_artifact

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
CHECKPOINT = SAMPLES / "od_resnet_digits.pth.tar"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    path = tmp_path_factory.mktemp("library") / "od.onnx"
    onnx_from_checkpoint(CHECKPOINT, path, check=False)
    return path


def _errors(report) -> list:
    return [(batch["batch_size"], output["name"], output["max_abs"])
            for candidate in report.to_dict()["candidates"] for batch in candidate["batches"] for output in batch["outputs"]]


def test_inputs_as_an_array_compare_as_the_same_inputs_in_a_file(export, tmp_path):
    x = np.load(SAMPLES / "digits_val.npz")["x"][:6]
    np.save(tmp_path / "x.npy", x)
    from_file = check_parity(CHECKPOINT, [export], inputs=tmp_path / "x.npy", batch_sizes=(1, 3))
    from_array = check_parity(CHECKPOINT, [export], inputs=x, batch_sizes=(1, 3))
    from_tensor = check_parity(CHECKPOINT, [export], inputs=torch.from_numpy(x), batch_sizes=(1, 3))
    assert from_file.passed and from_array.passed and from_tensor.passed
    assert _errors(from_array) == _errors(from_file) == _errors(from_tensor)
    assert from_array.to_dict()["inputs"]["count"] == 6


def test_an_array_of_the_wrong_shape_is_an_input_error(export):
    x = np.load(SAMPLES / "digits_val.npz")["x"][:4, :2]
    with pytest.raises(InputError, match="sample shape"):
        check_parity(CHECKPOINT, [export], inputs=x, batch_sizes=(1,))


@pytest.mark.parametrize("option, message", [
    (dict(noise_margin=float("inf")), "is not a finite number"),
    (dict(noise_margin=-1.0), "is negative"),
    (dict(reference_dtype="float16"), "'float16' is not supported"),
    (dict(device="gpu"), "'gpu' is not supported"),
])
def test_options_the_cli_would_refuse_are_refused_for_library_callers(export, option, message):
    """The CLI's refusals live in check_parity: a library caller passing inf got a gate that
    could not fail, and a mistyped device refused every candidate one by one."""
    with pytest.raises(InputError, match=message):
        check_parity(CHECKPOINT, [export], samples=2, batch_sizes=(1,), **option)


def test_one_candidate_and_one_batch_size_need_no_list(export):
    single = check_parity(CHECKPOINT, str(export), samples=3, batch_sizes=2)
    listed = check_parity(CHECKPOINT, [str(export)], samples=3, batch_sizes=[2])
    assert single.passed and [c["artifact"] for c in single.to_dict()["candidates"]] == [str(export)]
    assert _errors(single) == _errors(listed)
    assert check_parity(CHECKPOINT, export, samples=3, batch_sizes=(1,)).passed  # a Path, too


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_a_temperature_the_attention_cannot_divide_by_is_refused(bad):
    model = odexport.create_model("od_resnet_tiny")
    with pytest.raises(InputError, match="positive finite"):
        odexport.set_temperature(model, bad)
    with pytest.raises(InputError, match="positive finite"):
        odexport.create_model("dy_resnet_tiny", temperature=bad)
    layer = next(m for m in model.modules() if isinstance(m, odexport.ODConv2d))
    with pytest.raises(InputError, match="positive finite"):
        layer.update_temperature(bad)  # the reference codes' annealing call
    assert all(m.temperature == 1.0 for m in model.modules() if isinstance(m, odexport.ODConv2d))


def test_threads_are_given_back(export):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    x = np.zeros((1, 3, 32, 32), np.float32)
    run_artifact(CHECKPOINT, x, threads=wanted)
    assert torch.get_num_threads() == before
    check_parity(CHECKPOINT, [export], samples=2, batch_sizes=(1,), threads=wanted)
    assert torch.get_num_threads() == before


def test_the_global_random_stream_is_left_where_it_was(tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    onnx_from_checkpoint(CHECKPOINT, tmp_path / "custom.onnx", form="custom")  # load, reparam, export, parity check
    check_parity(CHECKPOINT, [tmp_path / "custom.onnx"], samples=2, batch_sizes=(1,))
    assert torch.equal(torch.rand(4), expected)


def test_dir_lists_the_lazy_public_names():
    names = dir(odexport)
    assert set(odexport.__all__) <= set(names) and "annotations" not in names


def test_deploy_from_checkpoint_writes_what_odexport_reparam_writes(tmp_path):
    """The library call and the CLI give the same deploy checkpoint, which computes the source's
    outputs (checked here against the source model run by PyTorch, not by odexport's own check)."""
    from typer.testing import CliRunner

    from odexport.cli import app
    from odexport.pipeline import deploy_from_checkpoint, model_from_checkpoint

    path, report = deploy_from_checkpoint(CHECKPOINT, tmp_path / "lib.deploy.pt")
    assert path == tmp_path / "lib.deploy.pt" and report.passes_applied
    result = CliRunner().invoke(app, ["reparam", str(CHECKPOINT), "-o", str(tmp_path / "cli.deploy.pt"), "--quiet"])
    assert result.exit_code == 0, result.output
    library = torch.load(path, weights_only=True)["state_dict"]
    cli = torch.load(tmp_path / "cli.deploy.pt", weights_only=True)["state_dict"]
    assert library.keys() == cli.keys() and all(torch.equal(library[k], cli[k]) for k in library)

    x = torch.from_numpy(np.load(SAMPLES / "digits_val.npz")["x"][:16])
    with torch.no_grad():
        source = model_from_checkpoint(CHECKPOINT).model.eval()(x)
        deployed = model_from_checkpoint(path).model.eval()(x)
    torch.testing.assert_close(deployed, source, rtol=1e-4, atol=1e-4 * float(source.abs().max()))


def test_deploy_gate_fails_with_nothing_written(tmp_path):
    """A zero tolerance fails on float32 rounding alone: ParityError, and no file is left."""
    from odexport.errors import ParityError
    from odexport.pipeline import deploy_from_checkpoint

    with pytest.raises(ParityError, match="nothing was written"):
        deploy_from_checkpoint(CHECKPOINT, tmp_path / "x.deploy.pt", tolerance=0.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option, message", [
    (dict(tolerance=float("nan")), "is not a finite number"),
    (dict(tolerance=float("inf")), "is not a finite number"),
    (dict(dy_bn_shift="static"), "is not 'auto' or 'dynamic'"),
    (dict(freeze_below=0.1), "needs --calibration"),
    (dict(passes="fold-bm"), "fold-bn"),
])
def test_deploy_options_are_refused_before_the_load(tmp_path, option, message):
    from odexport.pipeline import deploy_from_checkpoint

    missing = tmp_path / "not-there.pth"  # the option is refused first: the load would fail otherwise
    with pytest.raises(InputError, match=message):
        deploy_from_checkpoint(missing, tmp_path / "x.deploy.pt", **option)


@pytest.mark.parametrize("option, message", [
    (dict(iterations=0), "--iters 0 is not a positive integer"),
    (dict(warmup=-1), "--warmup -1 is not a whole number"),
    (dict(batch_sizes=(0, 2)), "must be positive integers"),
    (dict(batch_sizes=2.5), "must be positive integers"),
    (dict(threads=0), "--threads 0 is not a positive integer"),
    (dict(iterations=True), "--iters True is not a positive integer"),
])
def test_benchmark_refuses_what_the_cli_refuses(option, message):
    """iterations=0 timed nothing and warmup=-1 was taken as given; threads=0 was a PyTorch RuntimeError."""
    from odexport.pipeline import benchmark

    with pytest.raises(InputError, match=message):
        benchmark(CHECKPOINT, **{"iterations": 2, "warmup": 0, "batch_sizes": 1, **option})


def test_nothing_to_compare_or_time_is_refused():
    """check_parity(ref, []) returned a report that neither passed nor raised (INCOMPLETE, error()
    None): a CI script testing `report.error()` would go green on nothing."""
    from odexport.pipeline import benchmark

    with pytest.raises(InputError, match="no candidates to check"):
        check_parity(CHECKPOINT, [], samples=2)
    with pytest.raises(InputError, match="no artifacts to time"):
        benchmark([], iterations=2)


def test_thread_counts_mean_the_same_to_every_runner(export):
    """0 threads is onnxruntime's "default" and PyTorch's error: both runners refuse it alike."""
    x = np.zeros((1, 3, 32, 32), np.float32)
    for artifact in (CHECKPOINT, export):
        with pytest.raises(InputError, match="--threads 0 is not a positive integer"):
            run_artifact(artifact, x, threads=0)


def test_a_sequential_model_is_one_candidate_not_its_layers():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    report = check_parity(model, model, input_shape=(3, 8, 8), samples=2, batch_sizes=1)
    assert report.passed and len(report.candidates) == 1


def test_benchmark_takes_numpy_integers_as_integers(export):
    """What a sweep script passes (np.int64 from np.arange) means what the Python int means."""
    from odexport.pipeline import benchmark

    report = benchmark(export, iterations=np.int64(2), warmup=np.int64(0), batch_sizes=np.array([1, 2]), baseline="none")
    assert report.settings["iterations"] == 2 and report.settings["warmup"] == 0 and report.settings["batch_sizes"] == [1, 2]


def test_inspect_checkpoint_is_what_odexport_inspect_prints_as_json(tmp_path):
    """The --json object comes from the library (`pipeline.inspect_checkpoint`), not the CLI; its
    parameter count is torch's own (sum of numel)."""
    import json

    from typer.testing import CliRunner

    from odexport.cli.app import app
    from odexport.models import create_model
    from odexport.pipeline import inspect_checkpoint

    torch.manual_seed(0)
    model = create_model("od_resnet_tiny")
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    seen = []
    summary, analysis = inspect_checkpoint(path, input_shape=(3, 16, 16), progress=seen.append)
    assert summary["params"] == sum(p.numel() for p in model.parameters()) == analysis.params
    assert summary["arch"] == "od_resnet_tiny" and summary["input_shape"] == [3, 16, 16]
    assert seen and seen[0].startswith("load ")
    printed = CliRunner().invoke(app, ["inspect", str(path), "--input-shape", "3x16x16", "--json"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == json.loads(json.dumps(summary, default=str))


def test_every_pipeline_call_reports_progress_under_one_name():
    """A stage-name callback is `progress=` wherever a pipeline call takes one (it was `stage=` in four)."""
    import inspect

    from odexport import pipeline

    public = [getattr(pipeline, name) for name in dir(pipeline) if not name.startswith("_")]
    calls = [f for f in public if inspect.isfunction(f) and f.__module__ == pipeline.__name__]
    takes = {f.__name__: set(inspect.signature(f).parameters) & {"progress", "stage"} for f in calls}
    assert {name for name, names in takes.items() if names} >= {"check_parity", "benchmark", "onnx_from_checkpoint", "inspect_checkpoint"}
    assert all(names <= {"progress"} for names in takes.values()), takes
