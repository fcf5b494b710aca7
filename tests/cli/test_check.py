"""``odexport check`` end to end: a real checkpoint, real exports, real onnxruntime sessions.

Candidates: the correct export (odexport's own exporter, dynamic batch), the same file with one
weight changed (edited with onnx), and the model exported by ``torch.onnx.export`` without
dynamic axes (batch baked in).  The reference is the checkpoint run in PyTorch.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from odexport._optional import available
from odexport.cli.app import app

SHAPE = (3, 32, 32)
PERTURBED_WEIGHT = "layer2.0.conv2.weight"  # an ODConv's candidate kernels (K, O, C, 3, 3)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from odexport.models import create_model
    from odexport.pipeline import onnx_from_model

    root = tmp_path_factory.mktemp("check")
    torch.manual_seed(0)
    model = create_model("od_resnet_tiny").eval()
    ckpt = root / "od_tiny.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)

    good = root / "good.onnx"
    onnx_from_model(model, good, input_shape=SHAPE, check=False)

    proto = onnx.load(str(good))
    target = next((i for i in proto.graph.initializer if i.name == PERTURBED_WEIGHT), None)
    if target is None:  # the exporter renamed it: any 5-D kernel bank of a dynamic conv will do
        target = next(i for i in proto.graph.initializer if len(i.dims) == 5)
    weight = numpy_helper.to_array(target).copy()
    weight.flat[weight.size // 2] += 1.0
    target.CopyFrom(numpy_helper.from_array(weight, target.name))
    perturbed = root / "perturbed.onnx"
    onnx.save(proto, perturbed)

    baked = root / "baked.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, *SHAPE),), str(baked), input_names=["input"], output_names=["output"],
                          dynamo=False)
    return {"ckpt": str(ckpt), "good": str(good), "perturbed": str(perturbed), "baked": str(baked),
            "weight": target.name, "root": root}


def _check(*args):
    return CliRunner().invoke(app, ["check", *map(str, args), "--quiet"])


def test_correct_export_passes(artifacts):
    result = _check(artifacts["ckpt"], artifacts["good"], artifacts["ckpt"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    # where each candidate ran, at a glance: --device decides it, and the table alone does not say
    assert "ran: good.onnx on onnxruntime-cpu, fp32; od_tiny.pth on torch-cpu, fp32" in result.output


def test_correct_export_json_has_every_metric(artifacts):
    result = _check(artifacts["ckpt"], artifacts["good"], "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True and data["batch_sizes"] == [1, 2, 8]
    cand = data["candidates"][0]
    assert [b["batch_size"] for b in cand["batches"]] == [1, 2, 8]
    out = cand["batches"][0]["outputs"][0]
    for key in ("max_abs", "max_rel", "mean_abs", "p99_abs", "cosine", "top1", "top5", "required_atol", "required_rtol"):
        assert key in out
    assert out["max_abs"] <= out["tolerance"]["atol"] and out["top1"] == 1.0
    assert data["reference"]["arch"] == "od_resnet_tiny"


def test_perturbed_weight_fails_with_exit_2_and_reports(artifacts, tmp_path):
    junit, markdown = tmp_path / "parity.xml", tmp_path / "parity.md"
    result = _check(artifacts["ckpt"], artifacts["perturbed"], "--junit", junit, "--markdown", markdown)
    assert result.exit_code == 2, result.output
    assert "failed the parity check" in result.output and "FAIL" in result.output
    root = ET.parse(junit).getroot()
    assert int(root.get("failures")) == 3 and int(root.get("tests")) == 3
    assert "parity FAIL" in markdown.read_text()
    assert "see the failures above" in result.stderr
    # with --json nothing is printed above the error: it points into the JSON instead
    quiet = _check(artifacts["ckpt"], artifacts["perturbed"], "--batch-sizes", "1", "--json")
    assert quiet.exit_code == 2 and "above" not in quiet.stderr and "\"failures\" in the JSON" in quiet.stderr
    assert json.loads(quiet.stdout)["candidates"][0]["failures"]


def test_an_infinite_noise_margin_is_refused(artifacts):
    """--noise-margin inf made every default atol infinite: a perturbed export passed (exit 0)."""
    result = _check(artifacts["ckpt"], artifacts["perturbed"], "--noise-margin", "inf")
    assert result.exit_code == 1 and "--noise-margin inf is not a finite number" in " ".join(result.output.split())


def test_baked_in_batch_fails_with_exit_2(artifacts):
    result = _check(artifacts["ckpt"], artifacts["baked"])
    assert result.exit_code == 2, result.output
    assert "baked in" in result.output
    text = " ".join(result.output.split())
    assert "--batch-sizes 2" in text  # how to check it at its own batch, if that was meant
    # no numbers failed, so the closing hint is about the batch, not about loosening tolerances
    assert "the candidates refused batch sizes" in text and "loosen" not in text
    # at its own batch the numbers agree: only the batch sizes fail
    data = json.loads(_check(artifacts["ckpt"], artifacts["baked"], "--json").stdout)
    passed = {b["batch_size"]: b["passed"] for b in data["candidates"][0]["batches"]}
    assert passed == {1: False, 2: True, 8: False}


def test_a_failed_run_is_reported_once_not_also_by_onnxruntimes_own_log(artifacts, tmp_path, capfd):
    """The baked export behind a symbolic batch: onnxruntime fails inside the graph. The error is
    raised (and worded by odexport); onnxruntime no longer prints its own log line on stderr too."""
    from odexport.runtime import open_runner
    from odexport.runtime.base import InferenceError

    proto = onnx.load(artifacts["baked"])
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    symbolic = tmp_path / "baked_symbolic.onnx"
    onnx.save(proto, symbolic)
    runner = open_runner(symbolic)
    capfd.readouterr()
    with pytest.raises(InferenceError, match="onnxruntime failed to run"):
        runner.infer(np.zeros((1, *SHAPE), np.float32))
    assert "onnxruntime" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def tied_fp16(tmp_path_factory):
    """Two classes whose logits differ by 1e-4 at ~100: fp32 decides by that 1e-4, fp16 (spacing
    0.06 there) cannot, so every decision flips while every element is within the fp16 atol."""
    from odexport.models import create_model

    root = tmp_path_factory.mktemp("tied")
    torch.manual_seed(0)
    state = create_model("od_resnet_tiny").eval().state_dict()
    state["fc.weight"][1] = state["fc.weight"][0]
    state["fc.bias"][0], state["fc.bias"][1] = 100.0, 100.0 + 1e-4
    ckpt, half = root / "tied.pth", root / "tied16.onnx"
    torch.save({"state_dict": state}, ckpt)
    assert CliRunner().invoke(app, ["onnx", str(ckpt), "-o", str(half), "--fp16", "--no-check", "--quiet"]).exit_code == 0
    return ckpt, half


def test_a_failure_of_the_fp16_top1_floor_alone_does_not_advise_loosening_atol(tied_fp16):
    """The hint names the floor; loosening --atol/--rtol (the generic advice) cannot change it."""
    result = _check(*tied_fp16, "--batch-sizes", "1")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "top-1 agreement 0.0000 below the floor 0.99" in text
    assert "only a top-1/cosine floor failed, which --atol/--rtol do not change" in text and "loosen" not in text
    assert "--min-top1" in text


def test_the_floors_are_overridable_per_output(tied_fp16):
    """--min-top1 0 turns the floor off (the elements are within the fp16 atol: a pass); a floor
    the agreement (0%) still misses fails; a floor outside [0, 1] or of an unknown output is an
    input error; --min-top1/--min-cosine apply at fp32 too, where there is no default floor."""
    off = _check(*tied_fp16, "--batch-sizes", "1", "--min-top1", "output=0", "--json")
    assert off.exit_code == 0, off.output
    tolerance = json.loads(off.stdout)["candidates"][0]["batches"][0]["outputs"][0]["tolerance"]
    assert tolerance["min_top1"] is None and tolerance["min_cosine"] == 0.999
    assert _check(*tied_fp16, "--batch-sizes", "1", "--min-top1", "0.5").exit_code == 2
    for bad, message in ((["--min-top1", "1.5"], "--min-top1 '1.5' is not a fraction between 0 and 1"),
                         (["--min-cosine", "logits=0.9"], "--min-cosine names output 'logits'")):
        result = _check(*tied_fp16, "--batch-sizes", "1", *bad)
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
    ckpt, _ = tied_fp16
    # the fp32 reference against itself run as a candidate: top-1 agreement 100%, cosine 1
    strict = _check(ckpt, ckpt, "--batch-sizes", "1", "--min-top1", "1", "--min-cosine", "0.9999999", "--json")
    assert strict.exit_code == 0, strict.output
    tolerance = json.loads(strict.stdout)["candidates"][0]["batches"][0]["outputs"][0]["tolerance"]
    assert (tolerance["min_top1"], tolerance["min_cosine"]) == (1.0, 0.9999999)


def test_an_export_at_another_temperature_is_named_in_a_note(artifacts, tmp_path):
    """`odexport onnx -T 2` computes the attention at temperature 2; checked against the checkpoint
    at its default 1.0 it fails by design, and the note says why and how to check it."""
    hot = tmp_path / "t2.onnx"
    assert CliRunner().invoke(app, ["onnx", artifacts["ckpt"], "-o", str(hot), "-T", "2", "--quiet", "--no-check"]).exit_code == 0
    plain = _check(artifacts["ckpt"], hot, "--batch-sizes", "1")
    text = " ".join(plain.output.split())
    assert "exported at attention temperature 2, the reference runs at 1" in text and "pass --temperature 2" in text
    matched = _check(artifacts["ckpt"], hot, "--batch-sizes", "1", "--temperature", "2")
    assert matched.exit_code == 0, matched.output
    assert "attention temperature" not in matched.output
    assert "attention temperature" not in _check(artifacts["ckpt"], artifacts["good"], "--batch-sizes", "1").output


def test_a_deploy_file_at_another_temperature_is_named_and_checkable(artifacts, tmp_path):
    """`odexport reparam -T 2` folds temperature 2 into the weights. Against the checkpoint at 1.0
    it fails by design, with the note; with --temperature 2 (the value it holds, not a change) the
    deploy file loads and passes, where it had been refused as "cannot be changed"."""
    deploy = tmp_path / "t2.deploy.pt"
    made = CliRunner().invoke(app, ["reparam", str(artifacts["ckpt"]), "-o", str(deploy), "-T", "2", "--quiet"])
    assert made.exit_code == 0, made.output
    plain = _check(artifacts["ckpt"], deploy, "--batch-sizes", "1")
    assert plain.exit_code == 2, plain.output
    text = " ".join(plain.output.split())
    assert "reparameterised at attention temperature 2, the reference runs at 1" in text and "pass --temperature 2" in text
    matched = _check(artifacts["ckpt"], deploy, "--batch-sizes", "1", "--temperature", "2")
    assert matched.exit_code == 0, matched.output
    other = _check(artifacts["ckpt"], deploy, "--batch-sizes", "1", "--temperature", "3")  # a real change is still refused
    assert other.exit_code == 1 and "cannot be changed here" in " ".join(other.output.split())


def test_ema_weights_are_exported_and_checked_with_ema(tmp_path):
    """A timm-style file with plain and EMA weights: `onnx --ema` exports the EMA (onnxruntime
    against the EMA network itself); `check` against the plain weights fails by design with a note
    naming --ema, and passes with it; --ema on a file without EMA weights is an input error."""
    import onnxruntime as ort

    from odexport.models import create_model

    torch.manual_seed(4)
    plain, ema = create_model("od_resnet_tiny").eval(), create_model("od_resnet_tiny").eval()
    both, only = tmp_path / "both.pth", tmp_path / "plain.pth"
    torch.save({"model": plain.state_dict(), "model_ema": ema.state_dict(), "epoch": 3}, both)
    torch.save({"model": plain.state_dict()}, only)
    export = tmp_path / "ema.onnx"
    made = CliRunner().invoke(app, ["onnx", str(both), "-o", str(export), "--ema", "--quiet"])
    assert made.exit_code == 0, made.output
    x = torch.randn(2, *SHAPE)
    session = ort.InferenceSession(str(export), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], ema(x).numpy(), rtol=1e-4, atol=1e-5)
    plain_run = _check(both, export, "--batch-sizes", "1")
    assert plain_run.exit_code == 2, plain_run.output
    assert "made from the file's EMA weights ('model_ema'), the reference runs its plain weights: pass --ema" in " ".join(plain_run.output.split())
    assert _check(both, export, "--batch-sizes", "1", "--ema").exit_code == 0
    # a deploy file made with --ema records it: the same note, and an export of it carries it on
    deploy, deploy_export = tmp_path / "ema.deploy.pt", tmp_path / "ema_deploy.onnx"
    assert CliRunner().invoke(app, ["reparam", str(both), "-o", str(deploy), "--ema", "--quiet"]).exit_code == 0
    assert CliRunner().invoke(app, ["onnx", str(deploy), "-o", str(deploy_export), "--quiet", "--no-check"]).exit_code == 0
    against_plain = _check(both, deploy, deploy_export, "--batch-sizes", "1")
    assert against_plain.exit_code == 2
    assert " ".join(against_plain.output.split()).count("made from the file's EMA weights ('model_ema')") == 2, against_plain.output
    assert _check(both, deploy, deploy_export, "--batch-sizes", "1", "--ema").exit_code == 0
    missing = _check(only, export, "--ema")
    assert missing.exit_code == 1 and "plain.pth holds no EMA weights" in " ".join(missing.output.split())


def test_export_of_another_sample_shape_is_an_input_error(artifacts, tmp_path):
    """Not a parity failure blamed on the batch: the candidate cannot take these samples at all."""
    from odexport.models import create_model
    from odexport.pipeline import onnx_from_model

    other = tmp_path / "48px.onnx"
    onnx_from_model(create_model("od_resnet_tiny").eval(), other, input_shape=(3, 48, 48), check=False)
    result = _check(artifacts["ckpt"], other)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "takes samples of shape (3, 48, 48)" in text and "(3, 32, 32)" in text and "baked" not in text
    # the export of this very checkpoint with a wrong --input-shape: the option is named, not the file
    given = _check(artifacts["ckpt"], artifacts["good"], "--input-shape", "3x64x64")
    assert given.exit_code == 1, given.output
    assert "error: --input-shape 3x64x64 does not fit" in given.output and "pass --input-shape 3x32x32" in " ".join(given.output.split())


def test_an_export_of_this_checkpoint_at_another_size_is_checked_at_that_size(cli_export, tmp_path):
    """`odexport onnx --input-shape 3x40x48` of the checkpoint itself: the gate runs at the size the
    file fixes (the checkpoint ran there when it was exported), with a note, instead of refusing;
    a perturbed weight still fails at that size, and next to an export at the default size it is refused
    (an input error) while that one is compared."""
    sample, default_size = cli_export
    wide = tmp_path / "wide.onnx"
    exported = CliRunner().invoke(app, ["onnx", str(sample), "--input-shape", "3x40x48", "-o", str(wide), "--no-check", "--quiet"])
    assert exported.exit_code == 0, exported.output
    result = _check(sample, wide, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["inputs"]["shape"] == [3, 40, 48]
    assert any(note.startswith("checked on samples of shape 3x40x48") for note in data["candidates"][0]["notes"])

    proto = onnx.load(str(wide))
    bank = next(i for i in proto.graph.initializer if len(i.dims) == 5)
    weight = numpy_helper.to_array(bank).copy()
    weight.reshape(weight.shape[0], -1)[:, weight[0].size // 3] += 1.0  # in every candidate kernel: a trained attention may skip one
    bank.CopyFrom(numpy_helper.from_array(weight, bank.name))
    onnx.save(proto, tmp_path / "wide_perturbed.onnx")
    assert _check(sample, tmp_path / "wide_perturbed.onnx").exit_code == 2

    mixed = _check(sample, wide, default_size)
    # the default-size export is compared at the reference's size; the other is refused, naming its size
    # and that it is an export of this checkpoint ("pass the export of this checkpoint" said it was not)
    told = " ".join(mixed.stderr.split())
    assert mixed.exit_code == 1 and f"wide.onnx is an export of {sample} at 3x40x48" in told and "the other candidate passed" in told
    assert "in a run of its own" in told and "pass the export of this checkpoint" not in told


def test_one_failing_candidate_fails_the_run(artifacts):
    result = _check(artifacts["ckpt"], artifacts["good"], artifacts["baked"], "--json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert [c["passed"] for c in data["candidates"]] == [True, False]


def test_loosened_tolerance_is_honoured(artifacts):
    data = json.loads(_check(artifacts["ckpt"], artifacts["perturbed"], "--json", "--batch-sizes", "2").stdout)
    needed = data["candidates"][0]["batches"][0]["outputs"][0]["required_atol"]
    assert needed > 0
    assert _check(artifacts["ckpt"], artifacts["perturbed"], "--batch-sizes", "2", "--atol", f"output={needed * 1.01}").exit_code == 0
    assert _check(artifacts["ckpt"], artifacts["perturbed"], "--batch-sizes", "2", "--atol", f"{needed * 0.5}").exit_code == 2


def test_per_layer_names_the_perturbed_layer(artifacts):
    result = _check(artifacts["ckpt"], artifacts["perturbed"], "--per-layer", "--json", "--batch-sizes", "2")
    assert result.exit_code == 2
    first = json.loads(result.stdout)["candidates"][0]["per_layer"]["first_divergence"]
    layer = artifacts["weight"].rsplit(".weight", 1)[0]
    assert first == {"layer": layer, "component": "output", "kind": "convolution"}


def test_per_layer_on_the_correct_export_finds_no_divergence(artifacts):
    result = _check(artifacts["ckpt"], artifacts["good"], "--per-layer", "--json", "--batch-sizes", "2")
    assert result.exit_code == 0, result.output
    per_layer = json.loads(result.stdout)["candidates"][0]["per_layer"]
    assert per_layer["first_divergence"] is None and len(per_layer["layers"]) >= 12
    assert per_layer["compared"] == len(per_layer["layers"])


def test_per_layer_on_a_specialised_file_says_nothing_was_compared(artifacts):
    """An `odexport ort` file loses the module scopes: the verdict must not read as a pass of every layer."""
    from odexport.pipeline import ort_cpu_from_onnx
    from odexport.runtime.ort_optimize import nchwc_block_size

    if nchwc_block_size() is None:
        pytest.skip("this onnxruntime build/CPU has no NCHWc convolutions to specialise for")
    specialised = ort_cpu_from_onnx(artifacts["good"], artifacts["root"] / "good.ort-cpu.onnx", measure=False).path
    result = _check(artifacts["ckpt"], specialised, "--per-layer", "--batch-sizes", "1")
    assert result.exit_code == 0, result.output  # the outputs still match
    text = " ".join(result.output.split())
    assert "nothing compared" in text and "no dynamic conv diverges" not in text
    assert "run --per-layer on the portable export it was made from (good.onnx)" in text
    per_layer = json.loads(_check(artifacts["ckpt"], specialised, "--per-layer", "--json", "--batch-sizes", "1").stdout)["candidates"][0]["per_layer"]
    assert per_layer["compared"] == 0 and per_layer["layers"] == [] and per_layer["first_divergence"] is None


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """The shipped trained sample through `odexport onnx` (reparameterised: BNs folded, heads fused)."""
    root = tmp_path_factory.mktemp("cli_export")
    sample = Path(__file__).resolve().parents[2] / "samples" / "od_resnet_digits.pth.tar"
    path = root / "digits.onnx"
    result = CliRunner().invoke(app, ["onnx", str(sample), "-o", str(path), "--no-check", "--quiet"])
    assert result.exit_code == 0, result.output
    return sample, path


def test_per_layer_follows_the_reparameterised_export(cli_export):
    """The export's layers compute the reparameterised layers (a following BN folded in): per-layer compares those,
    attentions included, and finds nothing on a correct export of a trained checkpoint."""
    sample, path = cli_export
    result = _check(sample, path, "--per-layer", "--json", "--batch-sizes", "2")
    assert result.exit_code == 0, result.output
    per_layer = json.loads(result.stdout)["candidates"][0]["per_layer"]
    assert per_layer["first_divergence"] is None, per_layer["layers"][:2]
    components = {entry["component"] for entry in per_layer["layers"]}
    assert "output" in components and {"attention.channel", "attention.kernel"} <= components
    assert len({entry["layer"] for entry in per_layer["layers"]}) == 12
    assert any("reparameterised" in note for note in per_layer["notes"])


def test_per_layer_follows_a_library_export_of_a_reparameterised_model(cli_export, tmp_path):
    """The passes travel in the export's metadata, whoever exported: `onnx_from_model` on `reparameterise(...)`."""
    from odexport.pipeline import check_parity, model_from_checkpoint, onnx_from_model
    from odexport.reparam import reparameterise

    sample, _ = cli_export
    deployed = reparameterise(model_from_checkpoint(str(sample)).model).model.eval()
    path = tmp_path / "library.onnx"
    onnx_from_model(deployed, path, input_shape=SHAPE, check=False)
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props}["odexport.reparam_passes"] == "fold-attention-bn,fold-bn,fuse-heads"
    per_layer = check_parity(str(sample), [str(path)], batch_sizes=(2,), per_layer=True).candidates[0].per_layer
    assert per_layer.first_divergence is None and len({entry.layer for entry in per_layer.layers}) == 12


def test_per_layer_names_the_perturbed_layer_of_a_reparameterised_export(cli_export, tmp_path):
    sample, path = cli_export
    proto = onnx.load(str(path))
    banks = [i for i in proto.graph.initializer if len(i.dims) == 5]  # the dynamic convs' kernel banks, in graph order
    target = banks[len(banks) // 2]
    weight = numpy_helper.to_array(target) * np.float32(1.5)  # every kernel: a trained net has dead input channels
    target.CopyFrom(numpy_helper.from_array(weight, target.name))
    perturbed = tmp_path / "perturbed.onnx"
    onnx.save(proto, perturbed)
    result = _check(sample, perturbed, "--per-layer", "--json", "--batch-sizes", "2")
    first = json.loads(result.stdout)["candidates"][0]["per_layer"]["first_divergence"]
    consumer = next(n for n in proto.graph.node if target.name in n.input)
    assert first is not None and first["component"] == "output" and first["kind"] == "convolution"
    assert any(first["layer"] in prop.value for prop in consumer.metadata_props)  # the layer whose kernel changed


def test_labelled_inputs_report_accuracy(artifacts, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x=rng.standard_normal((6, *SHAPE)).astype(np.float32), y=rng.integers(0, 10, 6))
    result = _check(artifacts["ckpt"], artifacts["good"], "--inputs", path, "--json", "--reference-dtype", "float64")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    acc = data["candidates"][0]["accuracy"]
    assert acc["samples"] == 6 and acc["top1_agreement"] == 1.0 and acc["reference"] == acc["candidate"]
    assert data["inputs"]["source"] == str(path) and data["reference"]["dtype"] == "float64"


def test_inputs_saved_with_torch_are_read_as_run_reads_them(artifacts, tmp_path):
    """`run -i x.pt` worked while `check --inputs x.pt` was refused: one reader serves both now."""
    rng = np.random.default_rng(0)
    path = tmp_path / "data.pt"
    torch.save({"images": torch.from_numpy(rng.standard_normal((4, *SHAPE)).astype(np.float32)),
                "labels": torch.from_numpy(rng.integers(0, 10, 4))}, path)
    result = _check(artifacts["ckpt"], artifacts["good"], "-i", path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["inputs"]["source"] == str(path) and data["candidates"][0]["accuracy"]["samples"] == 4


def test_labels_outside_the_classes_are_an_input_error(artifacts, tmp_path):
    """Labels counted from 1 (or from another dataset) would make every accuracy wrong: refused."""
    rng = np.random.default_rng(0)
    path = tmp_path / "one_based.npz"
    np.savez(path, x=rng.standard_normal((4, *SHAPE)).astype(np.float32), y=np.array([1, 4, 7, 10]))
    result = _check(artifacts["ckpt"], artifacts["good"], "--inputs", path)
    assert result.exit_code == 1, result.output
    assert "run from 1 to 10, but the model has 10 classes" in " ".join(result.output.split())


@pytest.mark.parametrize("samples,noted", [(1, True), (2, False)])
def test_a_single_sample_is_noted(artifacts, samples, noted):
    """Batches repeat the samples to fill up: with one sample a candidate that mixes up the samples
    of a batch cannot be caught, which the report says (the verdict still stands)."""
    result = _check(artifacts["ckpt"], artifacts["good"], "--samples", samples, "--json")
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["candidates"][0]["notes"]
    assert any(note.startswith("one input sample: every batch repeats it") for note in notes) == noted, notes


def test_inputs_that_do_not_move_the_outputs_are_noted(artifacts, tmp_path):
    """Four copies of one image: a candidate that ignored its input would pass, which the report
    says; random samples (the default, and test_a_single_sample_is_noted's two) move the logits."""
    same = tmp_path / "same.npy"
    np.save(same, np.repeat(np.random.default_rng(1).normal(size=(1, *SHAPE)).astype(np.float32), 4, axis=0))
    result = _check(artifacts["ckpt"], artifacts["good"], "--inputs", same, "--json")
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["candidates"][0]["notes"]
    assert any("barely varies across the 4 samples" in note for note in notes), notes
    result = _check(artifacts["ckpt"], artifacts["good"], "--json")
    assert not any("barely varies" in note for note in json.loads(result.stdout)["candidates"][0]["notes"])


def test_nan_inputs_are_an_input_error(artifacts, tmp_path):
    """A NaN input makes the reference's output NaN, and the comparison skips non-finite reference
    values: before this was refused, NaN inputs passed the gate with max abs 0."""
    x = np.random.default_rng(0).standard_normal((3, *SHAPE)).astype(np.float32)
    x[1, 0, 4, 4] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, x)
    result = _check(artifacts["ckpt"], artifacts["good"], "--inputs", path)
    assert result.exit_code == 1, result.output
    assert "1 NaN/inf values (the first in sample 1)" in " ".join(result.output.split())
    assert "PASS" not in result.output


def test_a_reference_that_computes_nan_is_an_input_error(artifacts, tmp_path):
    """A NaN weight in the checkpoint: the export (made from the clean weights) is not compared
    with a reference that has nothing finite to compare against; before, this passed with max abs 0."""
    state = torch.load(artifacts["ckpt"], weights_only=True)["state_dict"]
    key = next(k for k, v in state.items() if k.endswith("running_mean"))
    state[key].view(-1)[0] = float("nan")
    broken = tmp_path / "nan_weight.pth"
    torch.save({"state_dict": state}, broken)
    result = _check(broken, artifacts["good"])
    assert result.exit_code == 1, result.output
    assert "NaN/inf values in output" in " ".join(result.output.split())
    assert "PASS" not in result.output


def test_checkpoint_candidate(artifacts):
    assert _check(artifacts["ckpt"], artifacts["ckpt"], "--batch-sizes", "1,3").exit_code == 0
    # a checkpoint fixes no sample shape: at another resolution than its architecture's default the
    # candidate runs on the reference's samples (it used to be rejected as a "baked-in batch")
    other = _check(artifacts["ckpt"], artifacts["ckpt"], "--batch-sizes", "1,2", "--input-shape", "3x24x24", "--samples", "2")
    assert other.exit_code == 0, other.output
    asked = _check(artifacts["ckpt"], artifacts["ckpt"], "--batch-sizes", "1", "--per-layer")
    assert asked.exit_code == 0 and "per-layer: not compared for" in " ".join(asked.output.split())  # said, not silently skipped


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-sizes", "0,2"], "batch-sizes"),
        (["--batch-sizes", "1,,8"], "--batch-sizes '1,,8' is not a list"),  # a typo shown, not read as 1,8
        (["--batch-sizes", "1 8"], "--batch-sizes '1 8' is not a list"),  # not read as batch 18
        (["--batch-sizes", "1_8"], "--batch-sizes '1_8' is not a list"),  # nor this
        (["--input-shape", ""], "input shape '' is not CxHxW"),
        (["--atol", "abc"], "not a non-negative number"),
        (["--reference-dtype", "float16"], "reference-dtype"),
        (["--input-shape", "3x16"], "CxHxW"),
        (["--device", "gpu"], "--device 'gpu' is not supported"),
    ],
)
def test_bad_options_exit_1(artifacts, extra, message):
    result = _check(artifacts["ckpt"], artifacts["good"], *extra)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_missing_candidate_and_bad_inputs_exit_1(artifacts, tmp_path):
    result = _check(artifacts["ckpt"], tmp_path / "missing.onnx")
    assert result.exit_code == 1 and "does not exist" in result.output
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 8, 8), np.float32))
    result = _check(artifacts["ckpt"], artifacts["good"], "--inputs", tmp_path / "wrong.npy")
    assert result.exit_code == 1 and "sample shape" in result.output


def test_a_report_path_given_as_a_candidate_says_json_is_a_flag(artifacts, tmp_path):
    """``check A B --json out.json``: out.json becomes a second candidate; say why, not just "missing"."""
    result = _check(artifacts["ckpt"], artifacts["good"], "--json", tmp_path / "out.json")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "its name is a report's, not a model's" in lines[0]
    assert "--json is a flag that prints the JSON on stdout" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out.json").exists()


def test_engine_without_tensorrt_exits_3_and_still_writes_the_reports(artifacts, tmp_path):
    """The only candidate cannot run here: exit 3, and the JUnit/Markdown reports a CI job uploads
    still say so (before: nothing written, and the publish steps found no file)."""
    if available("tensorrt") and torch.cuda.is_available():
        pytest.skip("TensorRT is available here")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 32)
    junit, markdown = tmp_path / "reports" / "parity.xml", tmp_path / "reports" / "parity.md"
    result = _check(artifacts["ckpt"], engine, "--junit", junit, "--markdown", markdown)
    assert result.exit_code == 3, result.output
    assert "TensorRT" in result.output and "model.engine not compared: this machine lacks the backend --" in result.output
    root = ET.parse(junit).getroot()
    assert root.get("tests") == "1" and root.get("skipped") == "1" and root.get("failures") == "0"
    text = markdown.read_text()
    assert "parity INCOMPLETE" in text and "no samples drawn" in text and "| model.engine |" in text


def test_candidates_with_one_file_name_are_told_apart(artifacts, tmp_path):
    """`check ckpt good.onnx other/good.onnx`: every report names the failing one by its folder,
    and JUnit gets two suites (CI reporters merge suites of one name)."""
    other = tmp_path / "other" / "good.onnx"
    other.parent.mkdir()
    other.write_bytes(Path(artifacts["perturbed"]).read_bytes())
    junit, markdown = tmp_path / "parity.xml", tmp_path / "parity.md"
    result = _check(artifacts["ckpt"], artifacts["good"], other, "--batch-sizes", "1", "--junit", junit, "--markdown", markdown)
    assert result.exit_code == 2, result.output
    assert "FAIL other/good.onnx: batch 1" in result.output
    first = f"{Path(artifacts['good']).parent.name}/good.onnx"  # both are lengthened by their folder
    suites = [suite.get("name") for suite in ET.parse(junit).getroot()]
    assert suites == [f"odexport.check.{first}", "odexport.check.other/good.onnx"]
    assert f"| {first} | 1 |" in markdown.read_text() and "| other/good.onnx | 1 |" in markdown.read_text()


def test_engine_without_tensorrt_next_to_an_onnx(artifacts, tmp_path):
    """The ONNX is still gated: a missing backend for one candidate is reported as not compared
    (exit 3, JUnit skipped), and a divergence of another still exits 2."""
    if available("tensorrt") and torch.cuda.is_available():
        pytest.skip("TensorRT is available here")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 32)
    junit = tmp_path / "parity.xml"
    result = _check(artifacts["ckpt"], artifacts["good"], engine, "--batch-sizes", "1", "--json", "--junit", junit)
    assert result.exit_code == 3, result.output
    data = json.loads(result.stdout)
    onnx_entry, engine_entry = data["candidates"]
    assert onnx_entry["passed"] and onnx_entry["batches"][0]["outputs"][0]["max_abs"] is not None
    assert engine_entry["missing_backend"] and engine_entry["backend"] == "tensorrt" and not engine_entry["batches"]
    root = ET.parse(junit).getroot()
    assert root.get("skipped") == "1" and root.get("failures") == "0" and root.get("errors") == "0"

    diverged = _check(artifacts["ckpt"], artifacts["perturbed"], engine, "--batch-sizes", "1")
    assert diverged.exit_code == 2, diverged.output
    assert "1 not compared" in " ".join(diverged.output.split())


def test_a_refused_candidate_still_lets_the_others_run_and_the_reports_be_written(artifacts, tmp_path):
    """A corrupt .onnx and an export of another sample size next to the good export: exit 1 (the
    command must change), but the good one is compared and JUnit, Markdown and JSON say so, in the
    command line's order (before: exit 1 at the first refusal, no report, no result)."""
    from odexport.models import create_model
    from odexport.pipeline import onnx_from_model

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(Path(artifacts["good"]).read_bytes()[:200])
    other = tmp_path / "48px.onnx"
    onnx_from_model(create_model("od_resnet_tiny").eval(), other, input_shape=(3, 48, 48), check=False)
    junit, markdown = tmp_path / "parity.xml", tmp_path / "parity.md"
    result = _check(artifacts["ckpt"], corrupt, artifacts["good"], other, "--batch-sizes", "1,2", "--json",
                    "--junit", junit, "--markdown", markdown)
    assert result.exit_code == 1, result.output
    message = " ".join(result.stderr.split())
    assert "2 candidates could not be run as given: corrupt.onnx, 48px.onnx; the other candidate passed" in message
    data = json.loads(result.stdout)
    assert data["verdict"] == "ERROR" and not data["passed"]
    assert [Path(c["artifact"]).name for c in data["candidates"]] == ["corrupt.onnx", "good.onnx", "48px.onnx"]
    bad, good, wrong_size = data["candidates"]
    assert bad["refused"] and "onnxruntime cannot load" in bad["error"] and "odexport onnx" in bad["fix"] and not bad["batches"]
    assert wrong_size["refused"] and "takes samples of shape (3, 48, 48)" in wrong_size["error"]
    assert good["passed"] and not good["refused"] and [b["batch_size"] for b in good["batches"]] == [1, 2]
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("errors"), root.get("failures")) == ("4", "2", "0")  # 2 refused + 2 batches passed
    text = markdown.read_text()
    assert "parity ERROR" in text and "**Not run**" in text and "| good.onnx | 2 | output |" in text
    assert "`corrupt.onnx`: onnxruntime cannot load" in text

    alone = _check(artifacts["ckpt"], corrupt, "--batch-sizes", "1", "--markdown", markdown)
    assert alone.exit_code == 1 and "the other" not in alone.stderr and "onnxruntime cannot load" in alone.stderr
    assert "no samples drawn" in markdown.read_text() and "| corrupt.onnx | - |" in markdown.read_text()


def test_reports_may_not_replace_each_other_or_an_inputs_sidecar(artifacts, tmp_path):
    """--junit and --markdown on one path had left only the Markdown; a report on the export's
    sidecar had replaced its metadata with XML. Both refused before any work."""
    same = tmp_path / "report.xml"
    result = _check(artifacts["ckpt"], artifacts["good"], "--junit", same, "--markdown", same)
    assert result.exit_code == 1 and "--junit and --markdown both name" in result.output and not same.exists()
    sidecar = tmp_path / "model.onnx.json"
    candidate = tmp_path / "model.onnx"
    candidate.write_bytes(Path(artifacts["good"]).read_bytes())
    sidecar.write_text('{"kept": true}')
    result = _check(artifacts["ckpt"], candidate, "--junit", sidecar)
    assert result.exit_code == 1 and "is the sidecar of the input" in " ".join(result.output.split())
    assert json.loads(sidecar.read_text()) == {"kept": True}


def test_a_candidate_folder_is_named_as_a_folder(artifacts, tmp_path):
    (tmp_path / "dist.onnx").mkdir()
    result = _check(artifacts["ckpt"], tmp_path / "dist.onnx")
    assert result.exit_code == 1 and "dist.onnx is a directory" in result.output


def test_a_mistyped_candidate_path_stops_the_run_before_any_work(artifacts, tmp_path):
    junit = tmp_path / "parity.xml"
    result = _check(artifacts["ckpt"], artifacts["good"], tmp_path / "typo.onnx", "--junit", junit)
    assert result.exit_code == 1 and "typo.onnx does not exist -- check the path" in " ".join(result.output.split())
    error = ET.parse(junit).getroot().find("testsuite/testcase/error")  # nothing compared: the report says why
    assert "typo.onnx does not exist" in error.get("message")


def test_the_reports_keep_the_command_lines_order_when_a_backend_is_missing(artifacts, tmp_path):
    if available("tensorrt") and torch.cuda.is_available():
        pytest.skip("TensorRT is available here")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 32)
    result = _check(artifacts["ckpt"], engine, artifacts["good"], "--batch-sizes", "1", "--json")
    assert result.exit_code == 3, result.output
    data = json.loads(result.stdout)
    assert [Path(c["artifact"]).name for c in data["candidates"]] == ["model.engine", "good.onnx"]
    assert data["verdict"] == "INCOMPLETE"


def test_reference_must_be_a_checkpoint(artifacts):
    result = _check(artifacts["good"], artifacts["good"])
    assert result.exit_code == 1 and "not a checkpoint" in result.output


@pytest.mark.parametrize("args", [["--atoll", "1e-3"], ["--samples", "many"], ["--seed", "-1"], []])
def test_usage_errors_exit_1_not_the_parity_code(artifacts, args):
    """Click's own exit code for a usage error is 2, which a CI gate would read as a parity failure."""
    argv = ["check", artifacts["ckpt"], artifacts["good"], *args] if args else ["check"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1, result.output
    # one line, like every other error: not Click's usage block and boxed message
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("-- see 'odexport check --help'"), result.output


def test_unknown_command_exits_1():
    result = CliRunner().invoke(app, ["chek"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: No such command 'chek'. Did you mean 'check'? -- see 'odexport --help'", result.output


def test_a_bare_command_group_still_shows_its_help():
    result = CliRunner().invoke(app, [])
    assert "Usage: odexport" in result.output and "check" in result.output


def test_export_of_another_checkpoint_is_named(artifacts, tmp_path):
    """The export records the checksum of the file it came from (for a deploy checkpoint, also of
    the checkpoint that was made from); check says when the reference is another file, and stays
    quiet along that lineage."""
    deploy, export = tmp_path / "deploy.pt", tmp_path / "from_deploy.onnx"
    assert CliRunner().invoke(app, ["reparam", artifacts["ckpt"], "-o", str(deploy), "--quiet"]).exit_code == 0
    made = CliRunner().invoke(app, ["onnx", str(deploy), "-o", str(export), "--quiet", "--no-check"])
    assert made.exit_code == 0, made.output
    meta = {p.key: p.value for p in onnx.load(str(export)).metadata_props}  # not a bare "no" beside the passes it lists
    assert meta["odexport.reparam"].startswith("no: a deploy checkpoint") and "fold-bn" in meta["odexport.reparam_passes"]
    quick = ("--batch-sizes", "1", "--samples", "2", "--noise-margin", "0")
    for reference in (artifacts["ckpt"], deploy):
        data = json.loads(_check(reference, export, "--json", *quick).stdout)
        assert data["passed"] and data["candidates"][0]["notes"] == [], reference

    retrained = tmp_path / "retrained.pth"
    state = torch.load(artifacts["ckpt"], weights_only=True)
    name = next(k for k, v in state["state_dict"].items() if v.dtype == torch.float32 and v.dim() == 4)
    state["state_dict"][name] = state["state_dict"][name] * 1.5
    torch.save(state, retrained)
    text = " ".join(_check(retrained, export, *quick).output.split())
    assert "exported from a file with sha256" in text and "not from retrained.pth" in text


def test_candidate_of_another_architecture_is_named(artifacts):
    """A checkpoint of another network fails (exit 2) and the report says what it is: the usual
    cause is a wrong path in a CI job, not a broken export."""
    samples = Path(__file__).resolve().parents[2] / "samples"
    reference, other = str(samples / "od_resnet_digits.pth.tar"), str(samples / "dy_mobilenetv2_digits.pth")
    result = _check(reference, other, "--batch-sizes", "1", "--samples", "2", "--json")
    assert result.exit_code == 2, result.output
    notes = json.loads(result.stdout)["candidates"][0]["notes"]
    assert notes == ["the candidate's architecture is ta_mobilenetv2, the reference's od_resnet_tiny: another model, "
                     "not a deployment of this one -- compare a checkpoint with its own export"]


def test_tolerance_for_an_output_the_model_lacks_is_an_input_error(artifacts):
    """`--atol logits=1e-3` on a model whose output is named `output` would silently not apply."""
    result = _check(artifacts["ckpt"], artifacts["good"], "--batch-sizes", "1", "--samples", "2", "--atol", "logits=1e-3")
    assert result.exit_code == 1, result.output
    assert "names output 'logits', which the model does not have (outputs: output)" in " ".join(result.output.split())
    named = _check(artifacts["ckpt"], artifacts["good"], "--batch-sizes", "1", "--samples", "2", "--atol", "output=1e-3")
    assert named.exit_code == 0, named.output


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def test_device_cuda_without_the_cuda_provider_exits_3(artifacts):
    """The candidate cannot run where it was asked to: a missing backend, not a pass on the CPU."""
    if _ort_has_cuda():
        pytest.skip("this onnxruntime has the CUDA provider")
    result = _check(artifacts["ckpt"], artifacts["good"], "--device", "cuda")
    assert result.exit_code == 3, result.output
    assert "CUDA" in result.output and "PASS" not in result.output


@pytest.mark.gpu
def test_device_cuda_gates_on_the_gpu(artifacts):
    """fp32 on the GPU (TF32 off in both runtimes) meets the fp32 tolerances; the perturbed
    weight still fails there."""
    if not _ort_has_cuda():
        pytest.skip("this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
    result = _check(artifacts["ckpt"], artifacts["good"], artifacts["ckpt"], "--device", "cuda", "--json")
    assert result.exit_code == 0, result.output
    backends = [c["backend"] for c in json.loads(result.stdout)["candidates"]]
    assert backends == ["onnxruntime-cuda", "torch-cuda"]
    result = _check(artifacts["ckpt"], artifacts["perturbed"], "--device", "cuda")
    assert result.exit_code == 2, result.output



@pytest.mark.parametrize("extra, message", [
    (["--batch-sizes", "1,1000000000"], "a batch of 1000000000 samples of shape 3x32x32 needs at least"),
    (["--samples", "1000000000"], "1000000000 random samples of shape 3x32x32 need at least"),
])
def test_sizes_no_machine_can_hold_are_an_input_error(artifacts, tmp_path, extra, message):
    junit = tmp_path / "report.xml"
    result = _check(artifacts["ckpt"], artifacts["good"], *extra, "--junit", junit)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    root = ET.parse(junit).getroot()  # nothing compared: the report holds the one error
    assert root.get("errors") == "1" and message in root.find("testsuite/testcase/error").get("message")


def test_an_inputs_file_larger_than_the_memory_left_is_refused_before_loading(artifacts, tmp_path, monkeypatch):
    from odexport import _memory as memory

    inputs = tmp_path / "val.npz"
    np.savez(inputs, x=np.zeros((64, *SHAPE), np.float32), y=np.zeros(64, np.int64))  # 768 KiB + 512 bytes
    monkeypatch.setattr(memory, "available_memory", lambda: 512 * 1024)
    result = _check(artifacts["ckpt"], artifacts["good"], "--inputs", inputs)
    assert result.exit_code == 1, result.output
    assert "val.npz holds 768 KiB of arrays (64 samples)" in result.output and "pass at most 42 samples in --inputs" in result.output


def test_a_reference_that_cannot_load_still_writes_the_reports(artifacts, tmp_path):
    """A CI job uploads the JUnit/Markdown whatever happened: when the run stops before any
    comparison (here a cut checkpoint), they carry the error and its fix, and the exit code is 1."""
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(Path(artifacts["ckpt"]).read_bytes()[:3000])
    junit, markdown = tmp_path / "reports" / "parity.xml", tmp_path / "reports" / "parity.md"
    result = _check(cut, artifacts["good"], "--junit", junit, "--markdown", markdown)
    assert result.exit_code == 1 and "truncated or corrupted" in result.output
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("errors"), root.get("failures")) == ("1", "1", "0")
    error = root.find("testsuite/testcase/error")
    assert "truncated or corrupted" in error.get("message") and "save it again" in error.text
    text = markdown.read_text()
    assert "parity ERROR" in text and "truncated or corrupted" in text and "**Fix**" in text


def test_a_stopped_check_replaces_the_last_runs_reports(artifacts, tmp_path):
    """SIGTERM (a CI timeout) mid-run: exit 143, and the JUnit/Markdown reports say the check was
    stopped; an earlier passing run's reports left in place would read as this run's."""
    import xml.etree.ElementTree as ET

    from tests._signals import terminate_at_stage

    junit, markdown = tmp_path / "R.xml", tmp_path / "R.md"
    earlier = _check(artifacts["ckpt"], artifacts["good"], "--junit", junit, "--markdown", markdown)
    assert earlier.exit_code == 0 and 'failures="0"' in junit.read_text()
    status, err = terminate_at_stage(["check", artifacts["ckpt"], artifacts["good"], "--junit", junit, "--markdown", markdown],
                                     "load reference")
    assert status == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    suite = ET.parse(junit).getroot()
    assert suite.get("errors") == "1" and "stopped (SIGTERM)" in junit.read_text()
    assert "stopped (SIGTERM)" in markdown.read_text() and "parity ERROR" in markdown.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R.md", "R.xml"]
