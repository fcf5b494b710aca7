"""Output files: every one gets the permissions of a normally created file (``0666 & ~umask``, or those of the file it replaces), and
a bad output path is a one-line input error before any work.

The writers go through a temporary file made by ``tempfile.mkstemp`` (0600) and rename it into
place; before ``odexport._files`` the JUnit/Markdown reports, ``run``'s arrays, ``bench``'s plot
and the TensorRT engine files kept that 0600, unreadable to a CI upload step running as another
user.  The expected modes here come from the umask the test sets, not from the code under test.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from odexport._files import atomic_path, write_text_atomically
from odexport.cli.app import app

UMASK = 0o022
EXPECTED = 0o666 & ~UMASK  # 0o644


@pytest.fixture
def umask():
    previous = os.umask(UMASK)
    try:
        yield UMASK
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_mode_follows_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        target = write_text_atomically(tmp_path / "report.xml", "<a/>")
    finally:
        os.umask(previous)
    assert target.read_text() == "<a/>"
    assert _mode(target) == 0o666 & ~mask


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    """As ``open(path, "w")`` does: a report or deploy file made private (0600) stays private
    when a later run replaces it; the rename used to give it the umask's 0644."""
    import onnx

    from odexport.export.onnx_export import write_model_atomically

    report = tmp_path / "report.xml"
    report.write_text("old")
    os.chmod(report, 0o600)
    write_text_atomically(report, "<a/>")
    assert report.read_text() == "<a/>" and _mode(report) == 0o600

    model = tmp_path / "m.onnx"
    model.write_bytes(b"old")
    os.chmod(model, 0o640)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    write_model_atomically(onnx.helper.make_model(graph), model)
    assert onnx.load(str(model)).graph.node[0].op_type == "Identity" and _mode(model) == 0o640
    fresh = tmp_path / "new.onnx"
    write_model_atomically(onnx.helper.make_model(graph), fresh)
    assert _mode(fresh) == EXPECTED


def test_atomic_path_failure_leaves_nothing(tmp_path, umask):
    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as temp:
            temp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_failure_keeps_the_previous_file(tmp_path, umask):
    target = tmp_path / "out.md"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(target) as temp:
            temp.write_text("new, half written")
            raise ValueError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.md"]


def test_cli_outputs_are_readable_by_others(tmp_path, umask):
    from odexport.models import create_model

    torch.manual_seed(0)
    model = create_model("od_resnet_tiny").eval()
    ckpt = tmp_path / "tiny.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    onnx_path = tmp_path / "tiny.onnx"
    invoke("onnx", ckpt, "-o", onnx_path, "--input-shape", "3x32x32", "--no-check")  # the files, not the gate
    invoke("check", ckpt, onnx_path, "--batch-sizes", "1", "--samples", "2",
           "--junit", tmp_path / "parity.xml", "--markdown", tmp_path / "parity.md")
    invoke("run", onnx_path, "-i", x, "-o", tmp_path / "out.npz")
    invoke("reparam", ckpt, "-o", tmp_path / "tiny.deploy.pt")

    written = ["tiny.onnx", "tiny.onnx.json", "parity.xml", "parity.md", "out.npz", "tiny.deploy.pt"]
    modes = {name: oct(_mode(tmp_path / name)) for name in written}
    assert modes == {name: oct(EXPECTED) for name in written}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def _checkpoint_export_and_input(folder: Path) -> tuple[Path, Path, Path]:
    """A tiny checkpoint, its ONNX export and an input batch in ``folder``: one of each input a
    writing command takes."""
    from odexport.models import create_model

    torch.manual_seed(0)
    ckpt = folder / "tiny.pth"
    torch.save({"state_dict": create_model("od_resnet_tiny").eval().state_dict()}, ckpt)
    onnx_path = folder / "tiny.onnx"
    made = CliRunner().invoke(app, ["onnx", str(ckpt), "-o", str(onnx_path), "--input-shape", "3x32x32", "--no-check"])
    assert made.exit_code == 0, made.output
    x = folder / "x.npy"
    np.save(x, np.zeros((1, 3, 32, 32), np.float32))
    return ckpt, onnx_path, x


def test_output_path_under_a_file_is_a_one_line_input_error(tmp_path):
    """A file where the output's folder should be: exit 1 with one line naming it, for every
    command that writes, and nothing written (before: an OSError reported as an internal error)."""
    ckpt, onnx_path, x = _checkpoint_export_and_input(tmp_path)
    runner = CliRunner()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())

    for args in (
        ["onnx", ckpt, "-o", blocker / "m.onnx", "--input-shape", "3x32x32"],
        ["ort", onnx_path, "-o", blocker / "m.ort-cpu.onnx"],
        ["run", onnx_path, "-i", x, "-o", blocker / "out.npy"],
        ["reparam", ckpt, "-o", blocker / "sub" / "deploy.pt"],
        ["check", ckpt, onnx_path, "--batch-sizes", "1", "--samples", "1", "--junit", blocker / "parity.xml"],
    ):
        result = runner.invoke(app, [str(a) for a in args])
        lines = [line for line in result.output.splitlines() if line.startswith(("error:", "internal error:"))]
        assert result.exit_code == 1, (args[0], result.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "blocker" in lines[0], (args[0], result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert blocker.read_text() == "a file, not a folder"


def test_an_output_path_that_is_a_directory_is_refused_before_any_work(tmp_path):
    """`check --junit DIR` ran the whole check, then died with "internal error: IsADirectoryError"
    (hiding the verdict); every writer now refuses a directory up front, in one line."""
    ckpt, onnx_path, _ = _checkpoint_export_and_input(tmp_path)
    folder = tmp_path / "reports"
    folder.mkdir()
    runner = CliRunner()
    for args in (
        ["check", ckpt, onnx_path, "--batch-sizes", "1", "--samples", "1", "--junit", folder],
        ["check", ckpt, onnx_path, "--batch-sizes", "1", "--samples", "1", "--markdown", folder],
        ["reparam", ckpt, "-o", folder],
    ):
        result = runner.invoke(app, [str(a) for a in args])
        lines = [line for line in result.output.splitlines() if line.startswith(("error:", "internal error:"))]
        assert result.exit_code == 1, (args[0], result.output)
        assert len(lines) == 1 and f"output path {folder} is a directory" in lines[0], (args[0], result.output)
        assert "-- candidate" not in result.output and "-- load" not in result.output, "refused before any work"
    assert list(folder.iterdir()) == []


@pytest.fixture
def refusing_folder(tmp_path):
    """A real folder that refuses new files: one without write permission, or, where permission
    bits do not bind (root), sysfs, which refuses file creation to root too."""
    import tempfile

    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    try:
        tempfile.TemporaryFile(dir="/sys").close()
    except OSError:
        yield Path("/sys")
        return
    pytest.skip("no folder here refuses root's writes")


def test_an_output_folder_that_refuses_writes_is_a_one_line_error_before_any_work(tmp_path, refusing_folder):
    """Before, `odexport ort -o <such folder>/m.onnx` specialised, checked and timed the model and
    then died with 'internal error: PermissionError'; `onnx` trusted os.access, which says yes to root."""
    ckpt, onnx_path, x = _checkpoint_export_and_input(tmp_path)
    runner = CliRunner()
    before = sorted(p.name for p in tmp_path.iterdir())

    for args in (
        ["onnx", ckpt, "-o", refusing_folder / "m.onnx", "--input-shape", "3x32x32"],
        ["ort", onnx_path, "-o", refusing_folder / "m.ort-cpu.onnx"],
        ["run", onnx_path, "-i", x, "-o", refusing_folder / "out.npy"],
        ["reparam", ckpt, "-o", refusing_folder / "deploy.pt"],
        ["check", ckpt, onnx_path, "--batch-sizes", "1", "--samples", "1", "--junit", refusing_folder / "parity.xml"],
        ["bench", onnx_path, "--batch-sizes", "1", "--iters", "2", "--plot", refusing_folder / "latency.png"],
    ):
        result = runner.invoke(app, [str(a) for a in args])
        lines = [line for line in result.output.splitlines() if line.startswith(("error:", "internal error:"))]
        assert result.exit_code == 1, (args[0], result.output)
        assert len(lines) == 1 and lines[0].startswith(f"error: cannot write in {refusing_folder}"), (args[0], result.output)
        assert not any(line.startswith("-- ") and "load" not in line for line in result.output.splitlines()[1:]), (args[0], result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_folder_where_the_export_sidecar_goes_is_refused_before_the_export(tmp_path):
    from odexport.models import create_model

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"state_dict": create_model("od_resnet_tiny").eval().state_dict()}, ckpt)
    (tmp_path / "m.onnx.json").mkdir()
    result = CliRunner().invoke(app, ["onnx", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--input-shape", "3x32x32"])
    assert result.exit_code == 1, result.output
    assert "error: the sidecar path" in result.output and "is a directory" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.json", "tiny.pth"]


def test_an_output_naming_an_input_is_refused_and_the_input_kept(tmp_path):
    """`-o` naming the command's own input (or a link to it), and a checkpoint saved with an
    .onnx name, whose default export path is the checkpoint itself: exit 1 before any work, every
    input byte for byte as it was (before: `odexport onnx ckpt.onnx` replaced the trained weights)."""
    import hashlib

    from odexport.models import create_model

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"state_dict": create_model("od_resnet_tiny").eval().state_dict()}, ckpt)
    named_onnx = tmp_path / "weights.onnx"
    named_onnx.write_bytes(ckpt.read_bytes())
    onnx_path = tmp_path / "tiny.onnx"
    runner = CliRunner()
    assert runner.invoke(app, ["onnx", str(ckpt), "-o", str(onnx_path), "--no-check"]).exit_code == 0
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 32, 32), np.float32))
    link = tmp_path / "link.pth"
    link.symlink_to(ckpt)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}

    for args, fix in (
        (["onnx", named_onnx], "pass -o weights.export.onnx, or rename the checkpoint to weights.pt"),
        (["onnx", ckpt, "-o", link], "pass another -o path"),
        (["reparam", ckpt, "-o", ckpt], "pass another -o path"),
        (["ort", onnx_path, "-o", onnx_path], "pass another -o path"),
        (["run", onnx_path, "-i", x, "-o", x], "pass another -o path"),
        (["check", ckpt, onnx_path, "--batch-sizes", "1", "--junit", onnx_path], "choose another report path"),
    ):
        result = runner.invoke(app, [str(a) for a in args])
        text = " ".join(result.output.split())
        assert result.exit_code == 1, (args, result.output)
        assert "itself: writing it would replace that file" in text and text.endswith(fix), (args, result.output)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()} == digests


def test_a_checkpoint_named_onnx_is_named_when_run(tmp_path):
    from odexport.models import create_model

    torch.manual_seed(0)
    ckpt = tmp_path / "weights.onnx"
    torch.save({"state_dict": create_model("od_resnet_tiny").eval().state_dict()}, ckpt)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 32, 32), np.float32))
    result = CliRunner().invoke(app, ["run", str(ckpt), "-i", str(x), "-o", str(tmp_path / "out.npy")])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "weights.onnx is a PyTorch checkpoint (written by torch.save), not an ONNX model" in text
    # the advice works as written: `odexport onnx weights.onnx` would be refused (its output is its input)
    assert "`mv weights.onnx weights.pt`" in text and "`odexport onnx weights.pt`" in text


def test_a_failed_command_leaves_no_folder_it_made(tmp_path):
    """-o new/sub/x makes new/sub before the work (a bad path fails first); a command that then
    fails removes the folders it made and left empty, and keeps any that hold a report."""
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(app, ["reparam", str(bad), "-o", str(tmp_path / "new" / "sub" / "d.pth.tar")])
    assert result.exit_code == 1 and "is not a checkpoint" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth.tar"]

    junit = tmp_path / "reports" / "ci" / "parity.xml"  # the whole-run error is reported there: kept
    result = CliRunner().invoke(app, ["check", str(bad), str(bad), "--junit", str(junit)])
    assert result.exit_code == 1 and junit.is_file()
