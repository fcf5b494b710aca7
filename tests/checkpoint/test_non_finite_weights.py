"""A checkpoint with a NaN weight (a diverged run, a damaged file): loading names it, and the
commands that verify an output say the model itself computes NaN -- exit 1, nothing written --
instead of "parity failed: max abs nan" (exit 2) or "this is a bug in odexport"."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from odexport.cli.app import app
from odexport.pipeline import model_from_checkpoint

BROKEN_KEY = "bn1.running_var"


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    from odexport.models import create_model

    torch.manual_seed(0)
    state = create_model("od_resnet_tiny").eval().state_dict()
    assert BROKEN_KEY in state
    state[BROKEN_KEY].view(-1)[3] = float("inf")
    state[BROKEN_KEY].view(-1)[5] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "diverged.pth"
    torch.save({"state_dict": state}, path)
    return path


def test_loading_names_the_first_tensor(broken):
    info = model_from_checkpoint(broken).info
    assert info.extras["non_finite_weights"] == {BROKEN_KEY: 2}
    assert any(f"2 NaN/inf values in 1 weight tensor, the first in '{BROKEN_KEY}'" in w for w in info.extras["warnings"])


@pytest.mark.parametrize("command", [["onnx", "--input-shape", "3x32x32"], ["reparam"]])
def test_verifying_commands_exit_1_and_write_nothing(broken, tmp_path, command):
    output = tmp_path / ("m.onnx" if command[0] == "onnx" else "m.deploy.pt")
    result = CliRunner().invoke(app, [command[0], str(broken), "-o", str(output), *command[1:]])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "NaN/inf values" in text and "checkpoint's weights" in text and "bug in odexport" not in text
    assert f"its weights hold 2 NaN/inf values, the first in '{BROKEN_KEY}'" in text  # the cause, named in the error
    assert list(tmp_path.iterdir()) == []


def test_check_names_the_broken_tensor(broken, tmp_path):
    """check stops on the reference's NaN output (exit 1) before its load notes are printed: the
    error itself names the tensor."""
    from odexport.models import create_model

    torch.manual_seed(0)
    good = tmp_path / "good.pth"
    torch.save(create_model("od_resnet_tiny").eval().state_dict(), good)
    export = tmp_path / "good.onnx"
    assert CliRunner().invoke(app, ["onnx", str(good), "-o", str(export), "--quiet", "--no-check"]).exit_code == 0
    result = CliRunner().invoke(app, ["check", str(broken), str(export), "--quiet", "--samples", "2"])
    assert result.exit_code == 1, result.output
    assert f"its weights hold 2 NaN/inf values, the first in '{BROKEN_KEY}'" in " ".join(result.output.split())


def test_only_a_nan_error_is_explained_by_the_broken_weights(broken):
    """The weights' NaN is named in an error about NaN/inf outputs, never added to an unrelated one;
    one broken value reads in the singular."""
    from odexport.checkpoint.info import CheckpointInfo, explain_non_finite, non_finite_weights_sentence
    from odexport.errors import InputError

    info = model_from_checkpoint(broken).info
    assert explain_non_finite(InputError("the inputs have the wrong shape", "pass 3x32x32"), info) is None
    explained = explain_non_finite(InputError("the model computes NaN/inf values", "fix it"), info)
    assert explained.message.startswith("the model computes NaN/inf values: ") and BROKEN_KEY in explained.message
    assert explained.hint == "fix it"
    one = CheckpointInfo(None, None, "odconv", "x", {}, None, None, 1.0, extras={"non_finite_weights": {"fc.weight": 1}})
    assert non_finite_weights_sentence(one) == "its weights hold 1 NaN/inf value, the first in 'fc.weight'"
