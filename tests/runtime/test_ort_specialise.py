"""``specialise_onnx`` / ``odexport ort``: the machine-specialised onnxruntime-CPU file.

References are independent of the code under test: the trained sample checkpoint (and a tiny
DY-Conv network) evaluated by PyTorch in float64, and a plain ``onnxruntime.InferenceSession``
loading the written file the way a user's server would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from odexport.cli.app import app
from odexport.errors import ExportError, InputError, ParityError
from odexport.runtime.ort_optimize import nchwc_block_size
from odexport.runtime.ort_specialise import SPECIALISATION_KEY, machine_record, recorded, specialise_onnx

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "od_resnet_digits.pth.tar"
SHAPE = (3, 32, 32)

needs_nchwc = pytest.mark.skipif(nchwc_block_size() is None, reason="this onnxruntime build/CPU has no NCHWc convolutions to specialise for")


def _float64_outputs(model, x: np.ndarray) -> np.ndarray:
    import copy

    with torch.no_grad():
        return copy.deepcopy(model).double().eval()(torch.from_numpy(x).double()).numpy()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The trained OD sample and a tiny DY-Conv network, exported with the CPU default (auto)."""
    from odexport.models import create_model
    from odexport.pipeline import model_from_checkpoint, onnx_from_model
    from tests.models._util import calibrate_batchnorm_

    root = tmp_path_factory.mktemp("ort")
    od = model_from_checkpoint(str(SAMPLE)).model.eval()
    torch.manual_seed(0)
    dy = calibrate_batchnorm_(create_model("dy_resnet_tiny"), SHAPE).eval()
    made = {}
    for name, model in (("od", od), ("dy", dy)):
        path = root / f"{name}.onnx"
        onnx_from_model(model, path, input_shape=SHAPE, check=False)
        made[name] = (model, path)
    return made


@needs_nchwc
@pytest.mark.parametrize("name", ["od", "dy"])
def test_written_file_runs_in_plain_onnxruntime_and_matches_float64(exports, name, tmp_path):
    import onnxruntime as ort

    model, source = exports[name]
    result = specialise_onnx(source, tmp_path / "m.ort-cpu.onnx", batch_sizes=(1, 3), measure=False)
    assert result.path.is_file() and result.record["batches"] == [1, 3] and result.record["rewritten"] > 0
    assert set(result.deviation) == {1, 2, 3}  # the specialised sizes and one general-branch size
    written = onnx.load(str(result.path))
    meta = {p.key: p.value for p in written.metadata_props}
    assert recorded(meta)["nchwc_block"] == nchwc_block_size() == machine_record()["nchwc_block"]
    assert meta["odexport.input_shape"] == "3x32x32"  # the export's own metadata is kept
    assert any(n.domain == "com.microsoft.nchwc" for g in _graphs(written.graph) for n in g.node)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch in (1, 2, 3):
        x = rng.standard_normal((batch, *SHAPE)).astype(np.float32)
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        expected = _float64_outputs(model, x)
        scale = float(np.abs(expected).max())
        assert scale > 1e-2
        assert float(np.abs(got - expected).max()) <= 1e-5 * scale, f"batch {batch}"


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _graphs(attr.g)


@needs_nchwc
def test_runner_refuses_a_file_made_for_another_machine(exports, tmp_path):
    from odexport.runtime.onnxruntime_runner import OrtRunner

    _, source = exports["od"]
    made = specialise_onnx(source, tmp_path / "here.onnx", batch_sizes=(1,), check=False, measure=False)
    proto = onnx.load(str(made.path))
    for key, value in (("nchwc_block", 8 if nchwc_block_size() != 8 else 16), ("onnxruntime", "0.0.1")):
        record = {**made.record, key: value}
        props = {p.key: p.value for p in proto.metadata_props}
        onnx.helper.set_model_props(proto, {**props, SPECIALISATION_KEY: json.dumps(record)})
        path = tmp_path / f"elsewhere_{key}.onnx"
        onnx.save(proto, str(path))
        with pytest.raises(InputError) as err:
            OrtRunner(str(path))
        assert "was specialised for" in err.value.message and "odexport ort" in err.value.hint
    with pytest.raises(InputError, match="cannot run on cuda"):
        from odexport.runtime.ort_specialise import verify_machine

        verify_machine({SPECIALISATION_KEY: json.dumps(made.record)}, "m.onnx", device="cuda")
    for damaged in ("[1, 2]", "{not json"):  # an internal error, or "specialised for onnxruntime None"
        with pytest.raises(InputError, match="its record of the machine it was made for .* is damaged") as err:
            verify_machine({SPECIALISATION_KEY: damaged}, "m.onnx")
        assert "odexport ort" in err.value.hint
    runner = OrtRunner(str(made.path))  # made here: runs
    assert runner.input_shape == SHAPE


@needs_nchwc
def test_bad_requests_write_nothing(exports, tmp_path):
    from odexport.pipeline import onnx_from_model

    model, source = exports["od"]
    decomposed = tmp_path / "dec.onnx"
    onnx_from_model(model, decomposed, form="decomposed", input_shape=SHAPE, check=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError, match="no com.odexport"):
        specialise_onnx(decomposed, tmp_path / "x.onnx")
    with pytest.raises(InputError, match="is the input .* itself"):
        specialise_onnx(source, source)
    with pytest.raises(ParityError, match="differs"):  # a tolerance no fp32 reordering meets
        specialise_onnx(source, tmp_path / "y.onnx", tolerance=1e-12, measure=False)
    made = specialise_onnx(source, tmp_path / "z.onnx", check=False, measure=False)
    with pytest.raises(InputError, match="already specialised"):
        specialise_onnx(made.path, tmp_path / "w.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(InputError, match="empty.onnx is empty"):  # not "has no com.odexport nodes"
        specialise_onnx(tmp_path / "empty.onnx", tmp_path / "v.onnx")
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(InputError, match="folder.onnx is a directory"):  # not "does not exist"
        specialise_onnx(tmp_path / "folder.onnx", tmp_path / "u.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["z.onnx", "empty.onnx", "folder.onnx"])


@needs_nchwc
def test_models_past_protobufs_limit_go_through_external_data(exports, tmp_path, monkeypatch):
    # a 276 M-parameter DY-Wide-ResNet-50-2's rewrite holds its kernels in both layouts and once
    # failed to serialize (protobuf stops at 2 GiB); with the limit lowered, every session of the
    # rewrite and of the parity check here loads its model from a file with external data
    import onnxruntime as ort

    from odexport.runtime import ort_optimize

    model, source = exports["od"]
    monkeypatch.setattr(ort_optimize, "PROTOBUF_LIMIT", 1)
    result = specialise_onnx(source, tmp_path / "big.onnx", batch_sizes=(1,), measure=False)
    assert result.record["rewritten"] > 0
    monkeypatch.undo()
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((2, *SHAPE)).astype(np.float32)
    expected = _float64_outputs(model, x)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert float(np.abs(got - expected).max()) <= 1e-5 * float(np.abs(expected).max())


@needs_nchwc
def test_cli_writes_reports_and_exits_by_outcome(exports, tmp_path):
    _, source = exports["od"]
    out = tmp_path / "cli.onnx"
    runner = CliRunner()
    result = runner.invoke(app, ["ort", str(source), "-o", str(out), "--batch-sizes", "1,2", "--no-measure", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["path"] == str(out) and data["record"]["batches"] == [1, 2] and max(data["deviation"].values()) < 1e-3
    assert out.is_file()
    (tmp_path / "q.onnx.json").write_text('{"path": "an earlier export at q.onnx"}')  # its sidecar: now stale
    plain = runner.invoke(app, ["ort", str(source), "-o", str(tmp_path / "q.onnx"), "--no-measure", "--quiet"])
    assert plain.exit_code == 0 and plain.stdout.strip() == str(tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx.json").exists()
    failed = runner.invoke(app, ["ort", str(source), "-o", str(tmp_path / "t.onnx"), "--no-measure", "--tolerance", "1e-12", "--json"])
    assert failed.exit_code == 2 and not (tmp_path / "t.onnx").exists()
    # a CI step that keeps `--json > report.json` gets the refusal's measurements, not an empty file
    report = json.loads(failed.stdout)
    assert report["path"] is None and report["exit_code"] == 2 and "differs from" in report["error"]
    assert max(report["deviation"].values()) > 1e-12 and report["tolerance"] == 1e-12
    again = runner.invoke(app, ["ort", str(out)])
    assert again.exit_code == 1 and "already specialised" in again.output and "Traceback" not in again.output
    # refused before anything was measured: the JSON still says why, so `--json > report.json` is never empty
    again = runner.invoke(app, ["ort", str(out), "--json"])
    report = json.loads(again.stdout)
    assert again.exit_code == 1 and report["exit_code"] == 1 and report["path"] is None and "already specialised" in report["error"]
    bad = runner.invoke(app, ["ort", str(source), "--batch-sizes", "0"])
    assert bad.exit_code == 1
    # an infinite tolerance would accept any deviation: the check switched off, and a bare
    # Infinity in the JSON; refused, nothing written
    unbounded = runner.invoke(app, ["ort", str(source), "-o", str(tmp_path / "inf.onnx"), "--tolerance", "inf", "--no-measure"])
    assert unbounded.exit_code == 1 and "--tolerance inf is not a finite number" in unbounded.output
    assert not (tmp_path / "inf.onnx").exists()
    checkpoint = runner.invoke(app, ["ort", str(SAMPLE), "-o", str(tmp_path / "c.onnx")])  # the checkpoint, not its export
    assert checkpoint.exit_code == 1 and "is a PyTorch checkpoint" in checkpoint.output and "odexport onnx" in checkpoint.output
    assert not (tmp_path / "c.onnx").exists()


@needs_nchwc
def test_bench_records_what_made_the_candidate_fast(exports, tmp_path):
    _, source = exports["od"]
    made = specialise_onnx(source, tmp_path / "b.ort-cpu.onnx", batch_sizes=(1,), check=False, measure=False)
    runner = CliRunner()
    common = ["--quiet", "--warmup", "1", "--iters", "2", "--json", "--baseline", "none"]
    result = runner.invoke(app, ["bench", str(made.path), *common])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["specialisation"][str(made.path)]["ort_cpu"]["batches"] == [1]
    result = runner.invoke(app, ["bench", str(source), "--cpu-rewrite", "--batch-sizes", "1,2", *common])
    assert result.exit_code == 0, result.output
    rewrite = json.loads(result.stdout)["settings"]["specialisation"][str(source)]["rewrite"]
    assert rewrite["block"] == nchwc_block_size() and rewrite["rewritten"]
    # both timed sizes are specialised: per-sample convs of sample 0 and 1 exist for batch 2
    assert any(name.endswith("#sample1") for name in rewrite["rewritten"])


@needs_nchwc
def test_measured_sizes_keep_only_what_is_faster(exports, tmp_path):
    """Which sizes win depends on the machine; what must hold: every requested size is timed, the
    written sizes are exactly the faster ones, and each dropped size is named in a note."""
    _, source = exports["od"]
    try:
        made = specialise_onnx(source, tmp_path / "m.onnx", batch_sizes=(1, 4))
    except ExportError as exc:  # slower at every size on this machine: nothing written, says so
        assert "slower" in exc.message and not (tmp_path / "m.onnx").exists()
        refused = exc.outcome.to_dict()  # what `--json` prints with the refusal
        assert refused["path"] is None and refused["record"]["batches"] == []
        assert set(refused["record"]["speedup_vs_portable"]) == {"1", "4"}
        return
    speed, verdict = made.record["speedup_vs_portable"], made.record["speed_verdict"]
    assert set(speed) == set(verdict) == {"1", "4"} and all(v > 0 for v in speed.values())
    # a verdict follows its ratio's side of 1 (the sign test can only call it even in between)
    assert all(verdict[b] != ("slower" if v > 1 else "faster") for b, v in speed.items())
    assert made.record["batches"] == [b for b in (1, 4) if verdict[str(b)] != "slower"]
    dropped = [b for b in (1, 4) if verdict[str(b)] == "slower"]
    assert len([n for n in made.rewrite["notes"] if "runs the general graph" in n]) == len(dropped)
    even = [b for b in (1, 4) if verdict[str(b)] == "even"]
    assert len([n for n in made.rewrite["notes"] if "no measurable difference" in n]) == len(even)


def test_the_speed_verdict_is_an_exact_sign_test():
    """Binomial(n, 1/2) tails counted by hand: with 12 rounds, 10 wins has P(K >= 10) =
    (C(12,10) + C(12,11) + C(12,12)) / 4096 = 79/4096 = 1.9% (not below 1%: even), 11 wins
    13/4096 = 0.32% (faster); 100 rounds split 60/40 has P = 2.8% (even), 65/35 0.18% (faster)."""
    from odexport.runtime.ort_specialise import sign_test

    assert [sign_test(w, 12 - w) for w in (0, 1, 2, 6, 10, 11, 12)] == ["slower", "slower", "even", "even", "even", "faster", "faster"]
    assert (sign_test(60, 40), sign_test(65, 35), sign_test(35, 65)) == ("even", "faster", "slower")
    assert sign_test(0, 0) == "even"


@needs_nchwc
def test_a_batch_no_machine_can_hold_is_refused_before_specialising(exports, tmp_path):
    _, source = exports["od"]
    out = tmp_path / "big.onnx"
    with pytest.raises(InputError, match="a batch of 1000000000 samples of shape 3x32x32 needs at least"):
        specialise_onnx(source, out, batch_sizes=(1, 10**9))
    assert not out.exists()


def _plain_outputs(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@needs_nchwc
def test_a_one_channel_input_conv_is_not_taken_for_depthwise(tmp_path):
    """A 1 -> 16 conv has the depthwise kernel order (one input channel per filter) but is dense:
    taken for depthwise, its specialised graph failed at run time (K > 1) or was abandoned (K = 1)."""
    from odexport.layers.odconv import ODConv2d
    from odexport.pipeline import onnx_from_model

    torch.manual_seed(0)
    shape = (1, 15, 17)
    for kernel_num in (4, 1):
        model = torch.nn.Sequential(ODConv2d(1, 16, 3, padding=1, kernel_num=kernel_num), torch.nn.ReLU(),
                                    ODConv2d(16, 16, 3, padding=1, kernel_num=kernel_num)).eval()
        source, out = tmp_path / f"k{kernel_num}.onnx", tmp_path / f"k{kernel_num}.ort-cpu.onnx"
        onnx_from_model(model, source, form="custom", input_shape=shape, check=False)
        result = specialise_onnx(source, out, batch_sizes=(1,), measure=False)
        assert result.record["rewritten"] >= 2, result.record  # both layers, the 1-channel one included
        for batch in (1, 3):
            x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
            expected = _float64_outputs(model, x)
            assert np.abs(_plain_outputs(out, x) - expected).max() <= 1e-5 * np.abs(expected).max()


@needs_nchwc
def test_a_fixed_batch_export_is_specialised_for_its_batch(tmp_path):
    """`odexport onnx --batch 4` runs batch 4 only: specialised, checked and recorded at 4 (the
    check used to run it at 1 as well and fail); other sizes asked for are an input error."""
    from odexport.layers.odconv import ODConv2d
    from odexport.pipeline import onnx_from_model

    torch.manual_seed(0)
    shape = (16, 8, 8)
    model = torch.nn.Sequential(ODConv2d(16, 32, 3, padding=1, kernel_num=4), torch.nn.ReLU(), ODConv2d(32, 16, 1, kernel_num=2)).eval()
    source, out = tmp_path / "fixed4.onnx", tmp_path / "fixed4.ort-cpu.onnx"
    onnx_from_model(model, source, form="custom", batch=4, input_shape=shape, check=False)
    result = specialise_onnx(source, out, measure=False)
    assert result.record["batches"] == [4] and result.record["fixed_batch"] is True
    assert list(result.deviation) == [4]
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    expected = _float64_outputs(model, x)
    assert np.abs(_plain_outputs(out, x) - expected).max() <= 1e-5 * np.abs(expected).max()
    with pytest.raises(InputError, match="has a fixed batch of 4: it runs no other size") as refused:
        specialise_onnx(source, tmp_path / "other.onnx", batch_sizes=(1, 8), measure=False)
    assert "--batch-sizes 4" in refused.value.hint and not (tmp_path / "other.onnx").exists()


@needs_nchwc
def test_a_model_with_nothing_to_specialise_is_told_why(tmp_path):
    """17 channels: onnxruntime makes no blocked conv of it. The refusal names that, once, not only
    "no dynamic conv is cheaper with a runtime weight"."""
    from odexport.layers.odconv import ODConv2d
    from odexport.pipeline import onnx_from_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(ODConv2d(17, 17, 3, padding=1, kernel_num=4)).eval()
    source = tmp_path / "c17.onnx"
    onnx_from_model(model, source, form="custom", input_shape=(17, 8, 8), check=False)
    with pytest.raises(ExportError, match=r"could be specialised \(onnxruntime makes no NCHWc Conv of a 17->17 3x3 conv in 1 groups here \(1 layer\)") as refused:
        specialise_onnx(source, tmp_path / "c17.ort-cpu.onnx", batch_sizes=(1, 8), measure=False)
    assert str(refused.value).count("onnxruntime makes no NCHWc Conv") == 1


def _elementwise_model(op: str, constant: np.ndarray) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node(op, ["input", "c"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 2, 2])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 2, 2])],
                              [numpy_helper.from_array(constant.astype(np.float32), "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_the_self_check_sees_one_wrong_element_and_nan():
    """The check of a specialised file against its portable export is the largest error over the
    output's scale: one element off must fail it, and a NaN the portable export does not compute
    scored 0 (``max(0.0, nan)`` is 0.0) and passed."""
    import math

    from odexport.runtime.ort_specialise import _deviation

    portable = _elementwise_model("Add", np.zeros((3, 2, 2)))
    one_off, nan = np.zeros((3, 2, 2)), np.ones((3, 2, 2))
    one_off[1, 0, 1] = 10.0
    nan[2, 1, 1] = np.nan
    assert _deviation(portable, portable, (1, 4), 1, 0) == {1: 0.0, 4: 0.0}
    off = _deviation(portable, _elementwise_model("Add", one_off), (4,), 1, 0)[4]
    assert off > 1.0  # 10 against samples of scale ~3: the mean over elements would be ~0.1
    assert all(math.isnan(v) for v in _deviation(portable, _elementwise_model("Mul", nan), (1, 4), 1, 0).values())
    huge = np.ones((3, 2, 2))
    huge[0, 0, 0] = np.inf  # the portable export overflows there too: the same inf is no difference
    assert _deviation(_elementwise_model("Mul", huge), _elementwise_model("Mul", huge), (4,), 1, 0) == {4: 0.0}
