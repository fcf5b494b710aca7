"""``odexport onnx``: a checkpoint to a verified ONNX file, --plan, --json, and bad input (one line,
non-zero exit, nothing written)."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from typer.testing import CliRunner

from odexport.cli.app import app
from odexport.models import create_model
from tests.export._cases import assert_runs_at_batches
from tests.export.test_zoo import _perturbed

SHAPE = "3x16x16"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """od_resnet_tiny saved the way OSVAI/ODConv's main.py saves (module. prefix, state_dict key)."""
    torch.manual_seed(0)
    model = _perturbed(create_model("od_resnet_tiny"))
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / "od_resnet_tiny.pth.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path, model


def _invoke(*args):
    result = CliRunner().invoke(app, ["onnx", *map(str, args)], env={"CI": "1", "ODEXPORT_DEBUG": "0"})
    return result.exit_code, result.stdout, result.stderr


def test_export_next_to_the_checkpoint_with_reparam_and_check(checkpoint, tmp_path):
    source, model = checkpoint
    local = tmp_path / source.name
    local.write_bytes(source.read_bytes())
    code, out, err = _invoke(local, "--form", "custom", "--input-shape", SHAPE)
    assert code == 0, err
    written = tmp_path / "od_resnet_tiny.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["od_resnet_tiny.onnx", "od_resnet_tiny.onnx.json", "od_resnet_tiny.pth.tar"]
    assert "wrote" in out and "ok" in out
    proto = onnx.load(str(written))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["odexport.arch"] == "od_resnet_tiny" and len(meta["odexport.source_sha256"]) == 64
    assert meta["odexport.reparam"].startswith("reparameterised")
    assert_runs_at_batches(model, str(written), (3, 16, 16), batches=(1, 3), tol=dict(atol=1e-4, rtol=1e-4))
    # the exporter's own phases (tens of seconds on a large model) are stages too, in order; its raw lines are not shown
    stages = [line[3:] for line in err.splitlines() if line.startswith("-- ")]
    assert stages == ["load od_resnet_tiny.pth.tar", "reparam", "trace", "trace: torch.export", "trace: decompositions",
                      "trace: translate to ONNX", "trace: optimise", "check", "verify"], stages
    assert "[torch.onnx]" not in err + out


def test_the_next_step_it_prints_passes_on_what_it_wrote(checkpoint, tmp_path):
    """The printed `odexport check` loads the checkpoint as the export did (here its temperature)
    and asks for the batch a fixed-batch file accepts: run as printed, it passes."""
    import shlex

    source, _ = checkpoint
    out_path = tmp_path / "with space.onnx"
    code, out, err = _invoke(source, "-o", out_path, "--batch", "3", "-T", "2", "--input-shape", SHAPE, "--no-check")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("next: "))
    words = shlex.split(line[len("next: "):].split("   (")[0])
    assert words[:4] == ["odexport", "check", str(source), str(out_path)]
    assert "--batch-sizes" in words and "--temperature" in words
    quick = ["--quiet", "--samples", "3", "--noise-margin", "0"]  # options of the run, not of the command under test
    result = CliRunner().invoke(app, [*words[1:], *quick], env={"CI": "1"})
    assert result.exit_code == 0, result.output
    without = CliRunner().invoke(app, ["check", str(source), str(out_path), "--input-shape", SHAPE, "--batch-sizes", "3", *quick])
    assert without.exit_code == 2  # the temperature it names is needed: the check would fail without it


def test_json_and_fixed_batch(checkpoint, tmp_path):
    source, _ = checkpoint
    code, out, err = _invoke(source, "-o", tmp_path / "m.onnx", "--form", "grouped", "--batch", "2", "--no-reparam",
                             "--input-shape", SHAPE, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["metadata"]["odexport.batch"] == "2" and data["parity"]["passed"]
    assert {f["variant"] for f in data["forms"]} == {"grouped"}
    assert data["metadata"]["odexport.reparam"] == "no"


def test_plan_prints_and_writes_nothing(checkpoint, tmp_path):
    source, _ = checkpoint
    code, out, err = _invoke(source, "-o", tmp_path / "m.onnx", "--plan", "--json", "--input-shape", SHAPE, "--target", "gpu", "--batch", "8")
    assert code == 0, err
    data = json.loads(out)
    assert data["target"] == "gpu" and data["batch"] == 8 and len(data["plan"]) == 12
    assert all(p["reason"] for p in data["plan"])
    assert list(tmp_path.iterdir()) == []
    code, out, _ = _invoke(source, "--plan", "--no-reparam", "--input-shape", SHAPE, "--quiet")
    assert code == 0 and "layer1.0.conv2" in out
    variants = {}
    for extra in ((), ("--fp16",)):  # --fp16 plans without the patch variant, as its export does
        code, out, err = _invoke(source, "--plan", "--json", "--input-shape", SHAPE, *extra)
        assert code == 0, err
        variants[extra] = [p["variant"] for p in json.loads(out)["plan"]]
        assert json.loads(out)["precision"] == ("fp16" if extra else "fp32")
    assert "patch" in variants[()] and "patch" not in variants[("--fp16",)]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--opset", "12"], "opset 12 is not supported"),
        (["--form", "grouped"], "needs a fixed batch"),
        (["--form", "fastest"], "unknown --form"),
        (["--batch", "2", "--dynamic-batch"], "contradict"),
        (["--target", "tpu"], "unknown --target"),
        (["-o", "/nonexistent-folder/m.onnx"], "does not exist"),
        (["--input-shape", "3x16"], "is not CxHxW"),
    ],
)
def test_bad_options_exit_1_with_one_line(checkpoint, tmp_path, args, needle):
    source, _ = checkpoint
    code, out, err = _invoke(source, "--input-shape", SHAPE, *args)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_missing_checkpoint(tmp_path):
    code, _, err = _invoke(tmp_path / "nope.pth")
    assert code == 1 and "does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_the_library_call_writes_what_the_command_writes(checkpoint, tmp_path):
    """``onnx_from_checkpoint`` is ``odexport onnx`` as a call: same graph, same provenance (which
    ``check`` and ``bench`` read), at a non-default temperature so that it is recorded."""
    from odexport.pipeline import onnx_from_checkpoint

    source, _ = checkpoint
    by_command, by_call = tmp_path / "command.onnx", tmp_path / "call.onnx"
    code, _, err = _invoke(source, "-o", by_command, "--input-shape", SHAPE, "-T", "2.5", "--quiet")
    assert code == 0, err
    result = onnx_from_checkpoint(source, by_call, input_shape=(3, 16, 16), temperature=2.5)
    assert result.path == by_call and result.parity is not None and result.parity.passed
    command, call = onnx.load(by_command), onnx.load(by_call)
    volatile = {"odexport.created"}  # the export's own timestamp
    command_meta = {p.key: p.value for p in command.metadata_props if p.key not in volatile}
    call_meta = {p.key: p.value for p in call.metadata_props if p.key not in volatile}
    assert call_meta == command_meta
    assert call_meta["odexport.temperature"] == repr(2.5) and call_meta["odexport.arch"] == "od_resnet_tiny"
    assert "default passes" in call_meta["odexport.reparam"]
    assert [n.op_type for n in call.graph.node] == [n.op_type for n in command.graph.node]


@pytest.mark.parametrize("name, expected", [
    ("model.pth.tar", "model.onnx"), ("model.pt.tar", "model.onnx"), ("MODEL.PTH", "MODEL.onnx"),
    ("ckpt.safetensors", "ckpt.onnx"), ("weights.v2", "weights.onnx"),
])
def test_the_default_output_drops_every_checkpoint_suffix(tmp_path, name, expected):
    from odexport.cli.commands.onnx import default_output

    assert default_output(tmp_path / name) == tmp_path / expected


def test_sigterm_ends_an_export_as_ctrl_c_does(tmp_path):
    """A CI timeout or `docker stop` sends SIGTERM: exit 143 with one line, the clean-ups run (no
    hidden staging folder left), and the previous export and its sidecar stay as they were."""
    from pathlib import Path

    from tests._signals import terminate_at_stage

    checkpoint = Path(__file__).resolve().parents[2] / "samples" / "od_resnet_digits.pth.tar"
    (tmp_path / "m.onnx").write_bytes(b"previous export")
    (tmp_path / "m.onnx.json").write_text('{"previous": true}')
    status, err = terminate_at_stage(["onnx", checkpoint, "-o", tmp_path / "m.onnx"], "trace")  # the trace takes seconds
    assert status == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]
    assert (tmp_path / "m.onnx").read_bytes() == b"previous export"
    assert (tmp_path / "m.onnx.json").read_text() == '{"previous": true}'
