"""Every `odexport ...` command shown in README.md and docs/*.md runs, with the exit code it should have.

The commands run in the order each doc shows them, in one temporary folder per doc,
through the real CLI (`typer.testing.CliRunner`, in-process: no mocks, real exports and sessions).
The docs use a few generic file names; the workspace provides them as real files:

==================================  ===========================================================
name in the docs                    real file in the workspace
==================================  ===========================================================
``samples/...``                     the shipped samples (a link to the repository's folder)
``model.pth``, ``model.pth.tar``,   copies of ``samples/od_resnet_digits.pth.tar`` (the trained
``ckpt.pth``, ``my_ckpt.pth``,      OD-ResNet, an ``od_resnet_tiny``)
``$CKPT``, ``od_resnet_tiny.pth``
``val.npz``, ``calib.npz``          the first 64 digits of ``samples/digits_val.npz`` (``x``, ``y``)
``model.onnx``, ``a.onnx``,         exported from ``model.pth`` when a command needs them first
``b.onnx``
``my_pkg.models:build_model``       a small package whose ``build_model()`` builds ``od_resnet_tiny``
``model.engine``                    a placeholder file, where TensorRT is missing (see below)
``/tmp/...``                        the doc's workspace (``/tmp/x.onnx`` is ``x.onnx`` there)
==================================  ===========================================================

Expected exit codes: 0; 3 where the command needs what this machine lacks (TensorRT, CUDA,
matplotlib) -- asserting the documented "missing dependency" exit instead of skipping; or the
code a ``# exit N`` comment in the docs gives.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.docs.doc_commands import REPO, RUNNABLE_PYTHON_DOCS, DocCommand, all_commands, python_blocks

COMMANDS = all_commands()
_ALREADY_RAN: dict[tuple, int] = {}  # (doc, argv) -> exit code
CHECKPOINT_ALIASES = ("model.pth", "model.pth.tar", "ckpt.pth", "my_ckpt.pth", "od_resnet_tiny.pth")
# Engines cannot be built without TensorRT; a placeholder lets a command that reads one get as far
# as its TensorRT check (exit 3) instead of stopping at "file does not exist".
ENGINE_PLACEHOLDERS = ("model.engine", "dist/model.engine")
INPUT_ALIASES = ("val.npz", "calib.npz")
ONNX_ALIASES = ("model.onnx", "a.onnx", "b.onnx")
SLOWER_EVERYWHERE = "the specialisation is slower than the portable export on this machine"
VAL_SUBSET = 64  # val.npz / calib.npz: the first 64 validation digits, standing in for a user's file

FACTORY_MODULE = '''"""A user's own model code, as --factory imports it (docs/formats.md)."""
from odexport.models import create_model


def build_model():
    return create_model("od_resnet_tiny")
'''


def _have_tensorrt() -> bool:
    from odexport._optional import available, cuda_available

    return cuda_available() and available("tensorrt")


def _needs_missing_capability(argv: list[str]) -> bool:
    """True when the command needs TensorRT, CUDA or matplotlib and this machine lacks it."""
    from odexport._optional import available, cuda_available

    if not _have_tensorrt():
        if argv[0] == "trt" or any(a.endswith((".engine", ".plan")) for a in argv):
            return True
    if not cuda_available() and ("--cuda-graphs" in argv or "cuda" in argv or "--target=gpu" in argv):
        if argv[0] != "onnx":  # onnx --target gpu only steers the form choice
            return True
    if "cuda" in argv and any(a.endswith(".onnx") for a in argv) and not _ort_has_cuda():
        return True  # --device cuda runs .onnx candidates on onnxruntime's CUDA provider (onnxruntime-gpu)
    if "--plot" in argv and not available("matplotlib"):
        return True
    return False


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def expected_exit(cmd: DocCommand, argv: list[str]) -> int:
    if cmd.expected_exit is not None:
        return cmd.expected_exit
    return 3 if _needs_missing_capability(argv) else 0


class Workspaces:
    """One temporary folder per doc file (commands of one doc share it, in order; docs do not
    interfere), each with the generic files of the table above."""

    def __init__(self, base: Path):
        self.base = base
        self.roots: dict[str, Path] = {}
        self.generic_onnx: Path | None = None  # model.pth exported once, copied where a doc needs it

    def __call__(self, doc: str) -> Path:
        if doc not in self.roots:
            self.roots[doc] = self._make(self.base / doc.replace("/", "_"))
        return self.roots[doc]

    @staticmethod
    def _make(root: Path) -> Path:
        root.mkdir(parents=True)
        (root / "samples").symlink_to(REPO / "samples", target_is_directory=True)
        for name in CHECKPOINT_ALIASES:
            shutil.copyfile(REPO / "samples" / "od_resnet_digits.pth.tar", root / name)
        with np.load(REPO / "samples" / "digits_val.npz") as val:  # a user's own small file
            for name in INPUT_ALIASES:
                np.savez(root / name, x=val["x"][:VAL_SUBSET], y=val["y"][:VAL_SUBSET])
        for folder in ("dist", "reports"):
            (root / folder).mkdir()
        if not _have_tensorrt():
            for name in ENGINE_PLACEHOLDERS:
                (root / name).write_bytes(b"placeholder: TensorRT is not installed on this machine\n")
        (root / "my_pkg").mkdir()
        (root / "my_pkg" / "__init__.py").write_text("")
        (root / "my_pkg" / "models.py").write_text(FACTORY_MODULE)
        return root

    def ensure_onnx(self, argv: list[str], root: Path, invoke) -> None:
        """Provide the generic ONNX names a command reads before its doc made them."""
        needed = [a for a in argv if a in ONNX_ALIASES and not (root / a).exists()]
        if not needed or argv[0] == "onnx":
            return
        if self.generic_onnx is None:
            result = invoke(["onnx", "model.pth", "-o", "generic-model.onnx", "--quiet"])
            assert result.exit_code == 0, result.output
            self.generic_onnx = root / "generic-model.onnx"
        for name in needed:
            shutil.copyfile(self.generic_onnx, root / name)


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory) -> Workspaces:
    return Workspaces(tmp_path_factory.mktemp("docs"))


def _substitute(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        arg = arg.replace("$CKPT", "model.pth")
        if arg.startswith("/tmp/"):
            arg = arg[len("/tmp/"):]  # relative to the doc's workspace, the current directory
        out.append(arg)
    return out


def _outputs(argv: list[str]) -> list[str]:
    """Files the command writes: after -o/--output/>, else the command's own default name."""
    named = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("-o", "--output", ">")]
    if named or len(argv) < 2:
        return named
    source = Path(argv[1])
    if argv[0] == "onnx":
        from odexport.cli.commands.onnx import default_output

        return [str(default_output(source))]
    if argv[0] == "ort":
        from odexport.runtime.ort_specialise import default_output

        return [str(default_output(source))]
    if argv[0] == "trt":
        return [str(source.with_suffix(".engine"))]
    return []


def _split_redirect(argv: list[str]) -> tuple[list[str], str | None]:
    """``[..., ">", FILE]`` -> (the command, FILE); the test writes stdout there, as the shell would."""
    if ">" not in argv:
        return argv, None
    index = argv.index(">")
    return argv[:index], argv[index + 1]


def _write_redirect(redirect: str, stdout: str) -> None:
    Path(redirect).parent.mkdir(parents=True, exist_ok=True)
    Path(redirect).write_text(stdout)


def _run_documented(invoke, argv: list[str]):
    """Invoke a doc's command.  `odexport ort` times what it makes and, as documented, writes
    nothing (exit 1) where the specialisation is slower at every size, which a loaded machine can
    measure; the doc's later commands still need the file, so it is then written without timing."""
    result = invoke(argv)
    if argv[0] == "ort" and result.exit_code == 1 and SLOWER_EVERYWHERE in result.output:
        result = invoke([*argv, "--no-measure"])
    return result


def _run_earlier_producers(cmd: DocCommand, argv: list[str], root: Path, invoke) -> None:
    """Run the earlier command of the same doc that writes a file this one reads, where that file is
    missing: under pytest-xdist the producer may have run in another worker's workspace."""
    for arg in argv[1:]:
        if (root / arg).exists():
            continue
        for earlier in COMMANDS:
            if earlier.doc != cmd.doc or (earlier.line, earlier.part) >= (cmd.line, cmd.part):
                continue
            producer = _substitute(earlier.argv())
            if arg not in _outputs(producer):
                continue
            producer, redirect = _split_redirect(producer)
            _run_earlier_producers(earlier, producer, root, invoke)
            result = _run_documented(invoke, producer)
            assert result.exit_code == 0, f"{earlier.id} (which makes {arg}) exited {result.exit_code}\n{result.output[-2000:]}"
            if redirect:
                _write_redirect(redirect, result.stdout)
            break


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.id for c in COMMANDS])
def test_documented_command_runs(cmd: DocCommand, workspaces: Workspaces, monkeypatch):
    from typer.testing import CliRunner

    from odexport.cli.app import app

    root = workspaces(cmd.doc)
    monkeypatch.chdir(root)
    monkeypatch.setenv("CI", "1")  # plain progress lines, as in a pipeline
    monkeypatch.syspath_prepend(str(root))
    runner = CliRunner()

    def invoke(args):
        return runner.invoke(app, args, catch_exceptions=False)

    argv = _substitute(cmd.argv())
    argv, redirect = _split_redirect(argv)
    if not argv:
        pytest.fail(f"{cmd.id}: empty command")
    if "--help" in argv:
        assert invoke(argv).exit_code == 0
        return
    want = expected_exit(cmd, argv)
    key = (cmd.doc, tuple(argv), redirect)
    if key in _ALREADY_RAN:  # shown twice in the same doc
        assert _ALREADY_RAN[key] == want
        return
    _run_earlier_producers(cmd, argv, root, invoke)
    workspaces.ensure_onnx(argv, root, invoke)
    result = _run_documented(invoke, argv) if want == 0 else invoke(argv)
    _ALREADY_RAN[key] = result.exit_code
    output = result.output
    assert result.exit_code == want, (
        f"{cmd.id}: `{cmd.text}` exited {result.exit_code}, the docs imply {want}\n{output[-3000:]}"
    )
    if want == 3:
        assert "error:" in output and "Traceback" not in output
    if redirect and want == 0:
        _write_redirect(redirect, result.stdout)
        if "--json" in argv:
            import json

            json.loads(result.stdout)  # --json means exactly one JSON object on stdout


def test_docs_show_commands():
    """The parser finds the README tour and each doc's examples (guards against a silent parser break)."""
    docs = {c.doc for c in COMMANDS}
    assert "README.md" in docs
    assert any(c.text.startswith("odexport onnx") for c in COMMANDS)
    assert any(c.text.startswith("odexport check") for c in COMMANDS)


PYTHON_BLOCKS = [(doc, line, code) for doc in RUNNABLE_PYTHON_DOCS for line, code in python_blocks(REPO / doc)]


@pytest.mark.parametrize("doc,line,code", PYTHON_BLOCKS, ids=[f"{d}:{n}" for d, n, _ in PYTHON_BLOCKS])
def test_documented_python_runs(doc, line, code, workspaces: Workspaces, monkeypatch):
    """The Python examples of the README and the quickstart run as shown (paths under /tmp/ go to the workspace)."""
    root = workspaces(doc)
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    source = code.replace('"/tmp/', '"').replace("'/tmp/", "'")
    exec(compile(source, f"{doc}:{line}", "exec"), {"__name__": "__doc_example__"})
