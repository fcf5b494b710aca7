"""README.md: exactly two set-up commands, in the form .ci/run and new users rely on."""

from __future__ import annotations

import re
import subprocess

from tests.docs.doc_commands import REPO, setup_commands_in_readme

TEST_COMMAND = "pip install -e '.[dev]' && python -m pytest -q -m \"not slow\" -n 2"


def test_two_setup_commands_under_their_markers():
    sample, test = setup_commands_in_readme()
    assert test == TEST_COMMAND
    assert sample.startswith("pip install torch==2.13.0 && pip install -e . && odexport ")
    # the first command exports a shipped, trained sample and verifies it on its validation set
    assert "odexport onnx samples/" in sample and "odexport check samples/" in sample and "--inputs samples/" in sample


def test_ci_script_extracts_the_test_command():
    """.ci/run takes the line two lines after the marker; reproduce its awk program on README.md."""
    out = subprocess.run(["awk", '/<!-- test-command -->/{getline; getline; print; exit}', str(REPO / "README.md")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == TEST_COMMAND
    assert "<!-- test-command -->" in (REPO / ".ci" / "run").read_text()


def test_set_up_section_has_exactly_two_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    setup = re.search(r"^## Set up\n(.*?)(?=^## )", text, flags=re.S | re.M).group(1)
    fenced = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(fenced) == 2
    assert all(len(block.strip().splitlines()) == 1 for block in fenced)


def test_sample_files_named_in_the_readme_exist():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    samples = re.findall(r"samples/[\w.]+\.(?:pth\.tar|pth|npz)", text)
    assert samples
    for sample in samples:
        assert (REPO / sample).exists(), sample


def test_relative_links_in_the_docs_resolve():
    from tests.docs.doc_commands import DOC_FILES

    broken = []
    for doc in DOC_FILES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_stated_python_floor_is_the_packages():
    """README and quickstart name the Python the package installs on (pyproject's requires-python,
    which onnxruntime's own wheels bound: no release >= 1.27 is published for 3.10)."""
    import tomllib

    floor = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    version = re.fullmatch(r">=(3\.\d+)", floor).group(1)
    for doc in ("README.md", "docs/quickstart.md"):
        stated = re.findall(r"Python (3\.\d+) or newer", (REPO / doc).read_text(encoding="utf-8"))
        assert stated == [version], (doc, stated, floor)
