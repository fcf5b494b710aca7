"""``odexport inspect``: JSON and table output for checkpoints and architecture names; errors are one line."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

from odexport.cli.app import app
from odexport.models import create_model

runner = CliRunner()


def _invoke(*args):
    result = runner.invoke(app, ["inspect", *args])
    assert "Traceback" not in result.output, result.output
    return result


def _json(*args):
    result = _invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "name, kernel_num, millions",
    [  # the ODConv paper's Table (and the OSVAI/ODConv README)
        ("od_resnet18", 1, 11.94),
        ("od_resnet18", 4, 44.90),
        ("od_mobilenetv2_100", 1, 4.94),
        ("od_mobilenetv2_050", 4, 4.44),
    ],
)
def test_parameter_counts_equal_the_paper(name, kernel_num, millions):
    data = _json(name, "--kernel-num", str(kernel_num))
    assert round(data["params"] / 1e6, 2) == millions
    assert data["arch"] == name and data["layout"] == "odconv" and data["model_kwargs"]["kernel_num"] == kernel_num
    assert data["temperature"] == 1.0 and data["sha256"] is None and data["source"]["kind"] == "arch"
    macs = data["macs"]
    assert macs["total"] == macs["static"] + macs["dynamic_extra"] == macs["static"] + macs["attention"] + macs["aggregation"]
    assert data["input_shape"] == [3, 224, 224] and data["output_shape"] == [1, 1000]
    dynamic = [row for row in data["layers"] if row["dynamic"]]
    assert dynamic and all(row["kernel_num"] == kernel_num and row["temperature"] == 1.0 for row in dynamic)


def test_macs_of_od_resnet18_first_dynamic_layer():
    """layer1.0.conv1: 64->64 3x3 at 56x56, K=4, hidden 16, all four heads."""
    data = _json("od_resnet18", "--kernel-num", "4")
    row = next(r for r in data["layers"] if r["name"] == "layer1.0.conv1")
    assert row["heads"] == ["channel", "filter", "spatial", "kernel"] and row["kernel"] == [3, 3] and row["groups"] == 1
    assert row["macs"] == 64 * 56 * 56 * 64 * 9  # the convolution itself
    assert row["aggregation_macs"] == 4 * 64 * 64 * 9  # K * O * C/g * k * k
    attention_branch = 64 * 16 + 16 * (64 + 64 + 9 + 4)  # fc, then the four heads on the pooled input
    apply = 64 * 56 * 56 * 2  # channel attention on the input, filter attention on the output
    assert row["attention_macs"] == attention_branch + apply
    stem = next(r for r in data["layers"] if r["name"] == "conv1")
    assert stem["macs"] == 64 * 112 * 112 * 3 * 49 and not stem["dynamic"]


def _tiny_checkpoint(tmp_path, name="od_resnet_tiny"):
    torch.manual_seed(0)
    path = tmp_path / f"{name}.pth.tar"
    torch.save({"epoch": 2, "state_dict": {f"module.{k}": v for k, v in create_model(name).state_dict().items()}}, path)
    return path


def test_checkpoint_json(tmp_path):
    path = _tiny_checkpoint(tmp_path)
    data = _json(str(path))
    assert data["arch"] == "od_resnet_tiny" and data["layout"] == "odconv"
    assert data["sha256"] == data["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data["source"] == {"kind": "checkpoint", "path": str(path), "sha256": data["sha256"]}
    assert data["params"] == sum(p.numel() for p in create_model("od_resnet_tiny").parameters())
    assert data["input_shape"] == [3, 32, 32] and data["num_classes"] == 10 and data["temperature"] == 1.0
    assert data["extras"]["stripped_prefixes"] == ["module."]
    assert {"name", "type", "in_channels", "out_channels", "kernel", "stride", "groups", "kernel_num", "heads",
            "temperature"} <= set(data["layers"][0])


def test_checkpoint_table_and_temperature_option(tmp_path):
    path = _tiny_checkpoint(tmp_path, "dy_resnet_tiny")
    result = _invoke(str(path), "--temperature", "2", "--input-shape", "3x48x48")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "dy_resnet_tiny" in out and "kaijieshi7" in out and "temperature   2" in out
    assert "layer1.0.conv1" in out and "DyConv2d" in out
    # kaijieshi7's constructor temperature is a training start value
    assert "starts training at temperature 34 (its constructor default)" in " ".join(out.split())
    assert "3x48x48" in out


def test_a_deploy_file_without_dynamic_layers_gets_no_temperature_note(tmp_path):
    """A K=1 DY-Conv network reparameterised to static convs has no temperature at all: the
    kaijieshi7 note ("temperatures differ per layer ...") did not apply."""
    torch.manual_seed(0)
    path = tmp_path / "k1.pth"
    torch.save(create_model("dy_resnet_tiny", kernel_num=1).state_dict(), path)
    deploy = tmp_path / "k1.deploy.pt"
    assert runner.invoke(app, ["reparam", str(path), "-o", str(deploy), "--quiet"]).exit_code == 0
    data = _json(str(deploy))
    assert data["temperature"] is None and not any("temperature" in note for note in data["notes"]), data["notes"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_named_and_computed_in_float32(tmp_path, dtype):
    """``model.half()`` before saving: the table says what the file stores, and the model built from
    it holds exactly the stored values, upcast."""
    from odexport.checkpoint import load_checkpoint

    torch.manual_seed(0)
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in create_model("od_resnet_tiny").state_dict().items()}
    path = tmp_path / "half.pth"
    torch.save({"state_dict": weights}, path)
    data = _json(str(path))
    name = str(dtype).removeprefix("torch.")
    assert data["extras"]["stored_dtypes"] == {name: sum(v.is_floating_point() for v in weights.values())}
    table = _invoke(str(path)).stdout.splitlines()
    assert f"stored as     {name} ({data['extras']['stored_dtypes'][name]} tensors); computed in float32" in table
    loaded = load_checkpoint(path).model.state_dict()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v.float()) for k, v in weights.items() if v.is_floating_point())
    assert "stored_dtypes" not in _json(str(_tiny_checkpoint(tmp_path)))["extras"]


def test_key_value_lines_carry_no_padding(tmp_path):
    """The lines above the layer table end at their value (a grid padded each to the longest)."""
    lines = _invoke(str(_tiny_checkpoint(tmp_path))).stdout.splitlines()
    header = lines[:lines.index(next(line for line in lines if line.startswith("layers"))) + 1]
    assert len(header) >= 8 and all(line == line.rstrip() for line in header)


def test_pickled_module_needs_trust_pickle(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(create_model("ta_resnet_tiny"), path)
    refused = _invoke(str(path))
    assert refused.exit_code == 1 and "--trust-pickle" in refused.output and "arbitrary code" in refused.output
    accepted = _invoke(str(path), "--trust-pickle", "--json")
    assert accepted.exit_code == 0, accepted.output
    data = json.loads(accepted.stdout)
    assert data["arch"] == "ta_resnet_tiny"
    assert data["extras"]["unpickled_module"] == f"{type(create_model('ta_resnet_tiny')).__module__}.{type(create_model('ta_resnet_tiny')).__qualname__}"


@pytest.mark.parametrize(
    "args, message",
    [
        (["no/such/checkpoint.pth"], "does not exist"),
        (["od_resnt18"], "did you mean od_resnet18"),
        (["od_resnet18", "--input-shape", "224x224"], "not CxHxW"),
        (["od_resnet18", "--input-shape", ""], "input shape '' is not CxHxW"),  # not the default shape in its place
        (["ta_resnet_tiny", "--factory", "tests.convert.standins:build_mixed"], "needs a checkpoint file"),
        # a 32x32 model: the hint names the option, not another model's 3x224x224
        (["od_resnet_tiny", "--input-shape", "1x2x2"], "pass the sample shape the model was built for with --input-shape CxHxW"),
    ],
)
def test_bad_input_is_one_line_exit_1(args, message):
    result = _invoke(*args)
    assert result.exit_code == 1 and message in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and " -- " in errors[0]


def test_kernel_num_must_be_positive():
    result = _invoke("dy_resnet_tiny", "--kernel-num", "0")
    assert result.exit_code == 1 and "kernel-num" in result.output  # a usage error, reported by the CLI parser: an input error


@pytest.mark.parametrize("name", ["od_resnet_tiny", "dy_resnet_tiny", "dy_mobilenetv2_tiny"])
def test_huge_kernel_num_is_counted_without_building_it(name):
    """A shapes-only build must not loop over K: K = 10^9 once took hours at full CPU.  The count is
    a polynomial in K of degree <= 2 (DY-Conv's stem attention has K hidden units; ODConv drops its
    kernel head at K = 1), so three real builds at K = 2, 3, 4 give it exactly at any K (Lagrange)."""
    huge = 10**9
    p2, p3, p4 = (sum(t.numel() for t in create_model(name, kernel_num=k).parameters()) for k in (2, 3, 4))
    expected = (p2 * (huge - 3) * (huge - 4) - 2 * p3 * (huge - 2) * (huge - 4) + p4 * (huge - 2) * (huge - 3)) // 2
    data = _json(name, "--kernel-num", str(huge))
    assert data["params"] == expected and data["model_kwargs"]["kernel_num"] == huge


def test_corrupted_checkpoint(tmp_path):
    path = _tiny_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    result = _invoke(str(path))
    assert result.exit_code == 1 and "truncated or corrupted" in result.output


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGPIPE"), reason="no SIGPIPE on this platform")
def test_a_reader_that_stops_early_ends_it_by_sigpipe_not_exit_1(tmp_path):
    """`odexport inspect m.pt | head -1`: exit 1 (an input error's code) with nothing said had
    been the result; now the process ends by SIGPIPE, as `cat` does."""
    import signal
    import subprocess
    import sys

    path = _tiny_checkpoint(tmp_path)
    process = subprocess.Popen([sys.executable, "-c", "import sys; from odexport.cli import main; sys.argv[0] = 'odexport'; main()",
                                "inspect", str(path), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader goes away before the table (whose loading takes seconds) is written
    _, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGPIPE, (process.returncode, err)
    assert b"error" not in err


def test_every_output_of_a_two_head_model_is_shown(tmp_path, monkeypatch):
    """A model returning (logits, embedding): both shapes, in the JSON and the header (the header
    showed none, the JSON null, for anything but a single tensor)."""
    module = tmp_path / "two_heads.py"
    module.write_text(
        "import torch\n"
        "from odexport.layers.odconv import ODConv2d\n"
        "class TwoHeads(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = ODConv2d(3, 8, 3, padding=1, kernel_num=2)\n"
        "        self.fc, self.embed = torch.nn.Linear(8, 5), torch.nn.Linear(8, 4)\n"
        "    def forward(self, x):\n"
        "        pooled = self.conv(x).mean((2, 3))\n"
        "        return self.fc(pooled), self.embed(pooled)\n"
        "def build():\n"
        "    return TwoHeads()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import two_heads

    torch.save(two_heads.build().state_dict(), tmp_path / "two.pt")
    spec = f"{module}:build"
    summary = _json(str(tmp_path / "two.pt"), "--factory", spec)
    assert summary["output_shapes"] == [[1, 5], [1, 4]] and summary["output_shape"] is None
    text = _invoke(str(tmp_path / "two.pt"), "--factory", spec)
    assert text.exit_code == 0 and "-> outputs (1, 5), (1, 4)" in text.output
