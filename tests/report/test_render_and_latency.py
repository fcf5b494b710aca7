"""Report rendering (JSON, JUnit XML, Markdown, rich table, plot) and latency statistics."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from odexport._files import output_folder, write_text_atomically
from odexport._optional import available
from odexport.report.compare import ToleranceOverrides
from odexport.report.latency import BenchEntry, BenchReport, LatencyStats
from odexport.report.parity import parity_report
from odexport.report.render import bench_plot, bench_plot_lines, bench_table, parity_junit, parity_markdown, parity_table
from odexport.runtime.parity import CandidateRun


def _report():
    rng = np.random.default_rng(0)
    ref = {"output": rng.standard_normal((4, 10))}
    good = CandidateRun("good.onnx", "onnxruntime-cpu", "fp32", ("batch", 3, 8, 8),
                        outputs={1: {"output": ref["output"] + 1e-7}, 2: {"output": ref["output"] + 1e-7}})
    bad = CandidateRun("bad.onnx", "onnxruntime-cpu", "fp32", (2, 3, 8, 8),
                       outputs={2: {"output": ref["output"] + 0.1}},
                       errors={1: "input 'input' axis 0 has size 1, the model expects 2"})
    labels = np.argmax(ref["output"], axis=1)
    return parity_report({"artifact": "ref.pt", "backend": "torch-cpu", "dtype": "float32"},
                         {"source": "random", "count": 4, "shape": [3, 8, 8]}, [1, 2], ref, [good, bad],
                         ToleranceOverrides(), labels)


def test_parity_report_verdicts():
    report = _report()
    good, bad = report.candidates
    assert good.passed and not bad.passed and not report.passed
    assert "baked in" in bad.batches[0].error and "batch 2 is fixed" in bad.batches[0].error
    assert not bad.batches[1].passed
    assert good.accuracy.reference == 1.0 and good.accuracy.top1_agreement == 1.0


def test_json_round_trip():
    data = json.loads(json.dumps(_report().to_dict(), allow_nan=False))
    assert data["passed"] is False
    assert [c["passed"] for c in data["candidates"]] == [True, False]
    out = data["candidates"][0]["batches"][0]["outputs"][0]
    for key in ("max_abs", "max_rel", "mean_abs", "p99_abs", "cosine", "top1", "top5", "required_atol", "required_rtol", "tolerance"):
        assert key in out


def test_junit_parses_and_counts_failures():
    root = ET.fromstring(parity_junit(_report()))
    assert root.tag == "testsuites"
    assert int(root.get("tests")) == 4 and int(root.get("failures")) == 2
    suites = root.findall("testsuite")
    assert [int(s.get("failures")) for s in suites] == [0, 2]
    failures = suites[1].findall("testcase/failure")
    assert any("baked in" in f.get("message") for f in failures)


def test_junit_test_ids_differ_between_candidates_sharing_a_stem():
    """dist/model.onnx and dist/model.engine (ci.md's TensorRT gate) had the same classname, so
    reporters keyed on classname + name merged their results."""
    rng = np.random.default_rng(1)
    ref = {"output": rng.standard_normal((2, 10))}
    runs = [CandidateRun(path, "onnxruntime-cpu", "fp32", ("batch", 3, 8, 8), outputs={1: {"output": ref["output"]}})
            for path in ("dist/model.onnx", "dist/model.pth")]
    report = parity_report({"artifact": "ref.pt", "backend": "torch-cpu", "dtype": "float32"},
                           {"source": "random", "count": 2, "shape": [3, 8, 8]}, [1], ref, runs, ToleranceOverrides())
    cases = ET.fromstring(parity_junit(report)).findall("testsuite/testcase")
    ids = [(case.get("classname"), case.get("name")) for case in cases]
    assert len(ids) == 2 and len(set(ids)) == 2, ids
    assert {case.get("classname") for case in cases} == {"odexport.check.model_onnx", "odexport.check.model_pth"}


def test_markdown_and_table_show_every_row():
    text = parity_markdown(_report())
    assert "parity FAIL" in text and text.count("| good.onnx |") == 2 and "**Failures**" in text
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(parity_table(_report()))
    rendered = console.export_text()
    assert "good.onnx" in rendered and "FAIL" in rendered


def test_rendered_cells_verdicts_and_escapes():
    """The table's cells as a reader sees them: top-1 as a percentage with one decimal, a batch
    that could not run is a FAIL row, a candidate whose backend is missing is NOT RUN (a JUnit
    skip); JUnit carries the tolerance used; an output name with '|' does not break a Markdown row."""
    from odexport.report.render import parity_rows

    report = _report()
    rows = parity_rows(report)
    assert rows[0][8] == "100.0%"
    assert [row[-1] for row in rows if row[0] == "bad.onnx" and row[1] == "1"] == ["FAIL"]
    case = ET.fromstring(parity_junit(report)).find("testsuite/testcase")
    assert {prop.get("name"): prop.get("value") for prop in case.find("properties")}["rtol"] == "0.0001"
    ref = {"a|b": np.ones((2, 10))}
    piped = parity_report({"artifact": "ref.pt", "backend": "torch-cpu", "dtype": "float32"}, {"source": "random", "count": 2, "shape": [3, 8, 8]},
                          [1], ref, [CandidateRun("c.onnx", "onnxruntime-cpu", "fp32", ("batch", 3, 8, 8), outputs={1: dict(ref)})],
                          ToleranceOverrides())
    assert [line for line in parity_markdown(piped).splitlines() if line.startswith("| c.onnx")][0].startswith("| c.onnx | 1 | a\\|b | ")
    missing = parity_report({"artifact": "ref.pt", "backend": "torch-cpu", "dtype": "float32"}, {"source": "random", "count": 2, "shape": [3, 8, 8]},
                            [1], ref, [], ToleranceOverrides(), missing={"m.engine": ("tensorrt", "TensorRT not installed")})
    assert parity_rows(missing)[0][-1] == "NOT RUN" and ET.fromstring(parity_junit(missing)).get("skipped") == "1"


def test_write_text_atomically_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "report.xml"
    output_folder(target, create=True)
    write_text_atomically(target, "<a/>")
    assert target.read_text() == "<a/>"
    assert os.listdir(target.parent) == ["report.xml"]


def test_latency_stats_match_numpy():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    stats = LatencyStats.from_samples(values, batch_size=8)
    assert stats.p50_ms == 3.0 and stats.p90_ms == pytest.approx(np.percentile(values, 90))
    assert stats.p99_ms == pytest.approx(np.percentile(values, 99)) and stats.min_ms == 1.0
    assert stats.throughput == pytest.approx(8 / 0.003)
    with pytest.raises(ValueError):
        LatencyStats.from_samples([], 1)


def _bench():
    report = BenchReport(settings={"iterations": 3})
    report.entries.append(BenchEntry("od.onnx", "candidate", "onnxruntime-cpu", 1, LatencyStats.from_samples([4, 4, 4], 1)))
    report.entries.append(BenchEntry("twin", "baseline", "onnxruntime-cpu", 1, LatencyStats.from_samples([2, 2, 2], 1), "od.onnx"))
    report.entries.append(BenchEntry("od.onnx", "candidate", "onnxruntime-cpu", 8, LatencyStats.from_samples([9, 9], 8)))
    return report


def test_bench_ratio_and_json():
    report = _bench()
    data = json.loads(json.dumps(report.to_dict()))
    rows = data["results"]
    assert rows[0]["ratio_to_baseline"] == 2.0 and rows[2]["ratio_to_baseline"] is None
    assert rows[1]["ratio_to_baseline"] is None  # a baseline: every row has every key (docs/ci.md)
    assert all(row.keys() == rows[0].keys() for row in rows)
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(bench_table(report))
    assert "2.00x" in console.export_text()


@pytest.mark.skipif(not available("matplotlib"), reason="matplotlib is not installed (pip install 'odexport[plot]')")
def test_bench_plot_writes_a_png(tmp_path):
    path = bench_plot(_bench(), tmp_path / "latency.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["latency.png"]


def test_a_twin_shared_by_two_candidates_is_one_line_of_the_plot():
    """The benchmark times a shared twin once and records it under each candidate: one line."""
    report = BenchReport()
    twin_1, twin_8 = LatencyStats.from_samples([2, 2], 1), LatencyStats.from_samples([5, 5], 8)
    for name, own in (("a.onnx", 4), ("b.onnx", 3)):
        for batch, twin in ((1, twin_1), (8, twin_8)):
            report.entries.append(BenchEntry(name, "candidate", "onnxruntime-cpu", batch, LatencyStats.from_samples([own * batch] * 2, batch)))
            report.entries.append(BenchEntry(f"static twin of {name}", "baseline", "onnxruntime-cpu", batch,
                                             LatencyStats.from_samples([twin.p50_ms] * 2, batch), name))
    lines = bench_plot_lines(report)
    assert [role for _, role, _ in lines] == ["candidate", "baseline", "candidate"]
    shared = lines[1]
    assert "a.onnx" in shared[0] and "b.onnx" in shared[0] and [s.p50_ms for s in shared[2]] == [2.0, 5.0]


def test_bench_plot_without_matplotlib_is_exit_3(tmp_path):
    if available("matplotlib"):
        pytest.skip("matplotlib is installed")
    from odexport.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError) as info:
        bench_plot(_bench(), tmp_path / "latency.png")
    assert info.value.exit_code == 3 and not (tmp_path / "latency.png").exists()


def test_display_names_lengthen_only_the_paths_that_would_read_the_same():
    from odexport.report.render import display_names

    names = display_names(["a/x/model.onnx", "b/x/model.onnx", "c/model.onnx", "other.onnx", "model.engine"])
    assert names == {"a/x/model.onnx": "a/x/model.onnx", "b/x/model.onnx": "b/x/model.onnx",
                     "c/model.onnx": "c/model.onnx", "other.onnx": "other.onnx", "model.engine": "model.engine"}
    assert display_names(["dist/model.onnx", "dist/model.ort-cpu.onnx"]) == {"dist/model.onnx": "model.onnx",
                                                                            "dist/model.ort-cpu.onnx": "model.ort-cpu.onnx"}
    # the same name with no folder left to tell them apart stays as it is
    assert display_names(["model.onnx", "./model.onnx"]) == {"model.onnx": "model.onnx", "./model.onnx": "model.onnx"}
    # an absolute path lengthened to its root reads as one, with a single "/" (it had read "//work/...")
    assert display_names(["/m.onnx", "/a/m.onnx"]) == {"/m.onnx": "/m.onnx", "/a/m.onnx": "a/m.onnx"}


def test_a_static_twin_does_not_lengthen_its_artifacts_name():
    """bench labels a twin "static twin of <artifact's name>": the twin's own entry (named after
    the same file) had clashed with the artifact, so both were shown by their full path."""
    from odexport.report.latency import BenchEntry, BenchReport
    from odexport.report.render import _bench_names

    path = "/work/project/samples/model.pth.tar"
    report = BenchReport(entries=[BenchEntry(artifact=path, role="candidate", backend="torch-cpu", batch_size=1),
                                  BenchEntry(artifact=f"static twin of {path}", role="baseline", backend="torch-cpu",
                                             batch_size=1, baseline_of=path)])
    assert _bench_names(report)[path] == "model.pth.tar"
