"""Render parity and benchmark reports: rich tables, JSON-ready dicts, JUnit XML, Markdown, plots.

Rendering never runs anything: it reads a :class:`~odexport.report.parity.ParityReport` or a
:class:`~odexport.report.latency.BenchReport`.  Files are written to a temporary name in the same
folder and renamed when complete, so a failure never leaves a half-written report.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from odexport._files import atomic_path, output_folder
from odexport.report.latency import BenchReport
from odexport.report.parity import CandidateParity, ParityReport


def table_style() -> dict:
    """What every odexport table looks like: a rule under the header and no frame, so a log or a
    pasted console block reads as plain columns; titles start at the left edge."""
    from rich import box

    return {"box": box.SIMPLE_HEAD, "show_edge": False, "title_justify": "left"}


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def display_names(paths) -> dict[str, str]:
    """Each path's file name, lengthened by its folders only where two paths would read the same
    (``a/model.onnx`` and ``b/model.onnx``): a report must say which file failed, and a JUnit
    suite named twice is merged by CI reporters."""
    paths = list(dict.fromkeys(str(p) for p in paths))
    parts = {p: Path(p).parts or (p,) for p in paths}
    depth = dict.fromkeys(paths, 1)
    while True:
        shown = {p: Path(*parts[p][-depth[p]:]).as_posix() for p in paths}  # a root part stays one "/"
        clashing = [p for p in paths if depth[p] < len(parts[p]) and sum(shown[q] == shown[p] for q in paths) > 1]
        if not clashing:
            return shown
        for p in clashing:
            depth[p] += 1


def candidate_names(report: ParityReport) -> dict[str, str]:
    """How each candidate (and the reference) of a check report is named in its tables and reports."""
    return display_names([str(report.reference.get("artifact", "reference")), *(c.artifact for c in report.candidates)])


# -- parity -------------------------------------------------------------------------------------

PARITY_COLUMNS = ("candidate", "batch", "output", "max abs", "max rel", "mean abs", "p99 abs", "cosine", "top-1", "top-5",
                  "atol needed", "atol", "verdict")


def parity_rows(report: ParityReport) -> list[list[str]]:
    """One row per candidate x batch size x output (errors get one row per batch)."""
    rows, names = [], candidate_names(report)
    for cand in report.candidates:
        name = names[cand.artifact]
        if cand.error:
            rows.append([name, "-", "-", *["-"] * 9, "NOT RUN" if cand.missing_backend else "ERROR"])
            continue
        for batch in cand.batches:
            if batch.error:
                rows.append([name, str(batch.batch_size), "-", *["-"] * 9, "FAIL"])
                continue
            for out in batch.outputs:
                rows.append([
                    name, str(batch.batch_size), out.name, _num(out.max_abs), _num(out.max_rel), _num(out.mean_abs),
                    _num(out.p99_abs), _num(out.cosine, 6), _pct(out.top1), _pct(out.top5), _num(out.required_atol),
                    _num(out.atol), "pass" if out.passed else "FAIL",
                ])
    return rows


TABLE_COLUMNS = ("candidate", "batch", "output", "max abs", "max rel", "cosine", "top-1", "atol needed", "atol", "verdict")
# what a terminal too narrow for TABLE_COLUMNS shows: the error, the bar it is held to, the verdict
COMPACT_TABLE_COLUMNS = ("candidate", "batch", "output", "max abs", "top-1", "atol", "verdict")


def _verdict(report: ParityReport, passed: str, failed: str, refused: str, incomplete: str) -> str:
    """The report's verdict (:attr:`ParityReport.verdict`) as one of the given labels."""
    return {"PASS": passed, "FAIL": failed, "ERROR": refused, "INCOMPLETE": incomplete}[report.verdict]


def parity_table(report: ParityReport, columns: tuple[str, ...] = TABLE_COLUMNS):
    """A rich Table of every comparison in ``columns`` (of :data:`PARITY_COLUMNS`; the full set of
    numbers is in JSON/JUnit/Markdown).  A number is never broken across lines."""
    from rich.table import Table

    verdict = _verdict(report, "[bold green]PASS[/]", "[bold red]FAIL[/]", "[bold red]ERROR[/]", "[bold yellow]INCOMPLETE[/]")
    ref = report.reference
    table = Table(title=f"parity vs {candidate_names(report)[str(ref.get('artifact', 'reference'))]} ({ref.get('backend', '')}, "
                        f"{ref.get('dtype', '')}): {verdict}", **table_style())
    keep = [PARITY_COLUMNS.index(c) for c in columns]
    for column in columns:
        left = column in ("candidate", "output", "verdict")
        # names fold; a number cut (a terminal too narrow even for the compact table) shows its …
        table.add_column(column, justify="left" if left else "right", overflow="fold" if left else "ellipsis", no_wrap=not left)
    for row in parity_rows(report):
        style = {"pass": "green", "FAIL": "red", "ERROR": "red", "NOT RUN": "yellow"}[row[-1]]
        cells = [row[i] for i in keep]
        table.add_row(*cells[:-1], f"[{style}]{cells[-1]}[/]")
    return table


def parity_failure_lines(report: ParityReport) -> list[str]:
    lines, names = [], candidate_names(report)
    for cand in report.diverged:
        for reason in cand.failures:
            lines.append(f"{names[cand.artifact]}: {reason}")
    return lines


def per_layer_table(cand: CandidateParity, name: str | None = None):
    """One row per dynamic conv: worst attention error, output error, and where it first fails."""
    from rich.table import Table

    assert cand.per_layer is not None
    table = Table(title=f"per-layer parity of {name or Path(cand.artifact).name} (batch {cand.per_layer.batch_size})",
                  **table_style())
    for column in ("layer", "attention max abs", "output max abs", "output max rel", "verdict"):
        text = column in ("layer", "verdict")
        table.add_column(column, justify="left" if text else "right", no_wrap=not text)
    rows: dict[str, dict] = {}
    for entry in cand.per_layer.layers:
        row = rows.setdefault(entry.layer, {"att": None, "out": None, "rel": None, "failed": []})
        c = entry.comparison
        if entry.kind == "attention":
            row["att"] = c.max_abs if row["att"] is None else max(row["att"], c.max_abs)
        else:
            row["out"], row["rel"] = c.max_abs, c.max_rel
        if not c.passed:
            row["failed"].append(entry.component)
    for layer, row in rows.items():
        verdict = "[green]pass[/]" if not row["failed"] else f"[red]FAIL ({', '.join(row['failed'])})[/]"
        table.add_row(layer, _num(row["att"]), _num(row["out"]), _num(row["rel"]), verdict)
    return table


def parity_junit(report: ParityReport) -> str:
    """JUnit XML: one testsuite per candidate, one testcase per batch size x output.

    CI systems (GitHub Actions test reporters, GitLab, Jenkins) show each failing case with its
    message; the numbers travel as properties so a dashboard can chart them.
    """
    root = ET.Element("testsuites", name="odexport check")
    total = failures = errors = skipped = 0
    names = candidate_names(report)
    for cand in report.candidates:
        suite = ET.SubElement(root, "testsuite", name=f"odexport.check.{names[cand.artifact]}")
        props = ET.SubElement(suite, "properties")
        for key, value in (("artifact", cand.artifact), ("backend", cand.backend), ("precision", cand.precision),
                           ("reference", str(report.reference.get("artifact", "")))):
            ET.SubElement(props, "property", name=key, value=str(value))
        cases = fails = errs = skips = 0
        # folders become packages and the whole file name the class (its dots as "_"): dist/model.onnx
        # and dist/model.engine must not share a classname, which reporters key their results on
        shown = Path(names[cand.artifact])
        classname = ".".join(["odexport.check", *shown.parent.parts[int(shown.is_absolute()):], shown.name.replace(".", "_")])
        if cand.error and cand.missing_backend:  # not run here: skipped, and the exit code (3) says why
            case = ET.SubElement(suite, "testcase", classname=classname, name="open")
            ET.SubElement(case, "skipped", message=cand.error).text = cand.error
            cases, skips = 1, 1
        elif cand.error:  # refused as given (exit 1): an error, not a parity failure
            case = ET.SubElement(suite, "testcase", classname=classname, name="open")
            reason = cand.failures[0]
            ET.SubElement(case, "error", message=reason, type="CandidateError").text = reason
            cases, errs = 1, 1
        for batch in cand.batches:
            if batch.error:
                case = ET.SubElement(suite, "testcase", classname=classname, name=f"batch={batch.batch_size}")
                ET.SubElement(case, "failure", message=batch.error, type="ParityFailure").text = batch.error
                cases += 1
                fails += 1
                continue
            for out in batch.outputs:
                case = ET.SubElement(suite, "testcase", classname=classname, name=f"batch={batch.batch_size} output={out.name}")
                cprops = ET.SubElement(case, "properties")
                for key in ("max_abs", "max_rel", "mean_abs", "p99_abs", "cosine", "top1", "top5", "required_atol", "required_rtol"):
                    ET.SubElement(cprops, "property", name=key, value=_num(getattr(out, key), 6))
                ET.SubElement(cprops, "property", name="atol", value=_num(out.atol, 6))
                ET.SubElement(cprops, "property", name="rtol", value=_num(out.tolerance.rtol, 6))
                cases += 1
                if not out.passed:
                    fails += 1
                    message = "; ".join(out.failures)
                    ET.SubElement(case, "failure", message=message, type="ParityFailure").text = message
        if cand.per_layer is not None and cand.per_layer.first_divergence is not None:
            first = cand.per_layer.first_divergence
            ET.SubElement(props, "property", name="first_divergence", value=f"{first.layer} ({first.component})")
        suite.set("tests", str(cases))
        suite.set("failures", str(fails))
        suite.set("errors", str(errs))
        suite.set("skipped", str(skips))
        total, failures, errors, skipped = total + cases, failures + fails, errors + errs, skipped + skips
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", str(errors))
    root.set("skipped", str(skipped))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def parity_markdown(report: ParityReport) -> str:
    """A Markdown summary for a pull-request comment."""
    ref = report.reference
    head = _verdict(report, "✅ **parity PASS**", "❌ **parity FAIL**", "❌ **parity ERROR** (a candidate could not be run as given)",
                    "⚠️ **parity INCOMPLETE** (a backend is missing)")
    inputs, names = report.inputs, candidate_names(report)
    lines = [
        f"### odexport check: {head}",
        "",
        f"Reference `{names[str(ref.get('artifact', 'reference'))]}` ({ref.get('backend', '')}, {ref.get('dtype', '')}); "
        + (f"{inputs.get('count', '?')} {inputs.get('source', '')} samples of shape {inputs.get('shape', '?')}; " if inputs.get("count")
           else "no samples drawn (no candidate could run here); ")
        + f"batch sizes {', '.join(map(str, report.batch_sizes))}."
        + (f" Reference rounding noise (float32 vs float64): "
           f"{', '.join(f'{k} {_num(v)}' for k, v in ref['rounding_noise'].items())}." if ref.get("rounding_noise") else ""),
        "",
        "| " + " | ".join(PARITY_COLUMNS) + " |",
        "|" + "---|" * len(PARITY_COLUMNS),
    ]
    for row in parity_rows(report):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    failures = parity_failure_lines(report)
    if failures:
        lines += ["", "**Failures**", ""] + [f"- {line}" for line in failures]
    if report.refused:
        lines += ["", "**Not run** (the file cannot be checked as given)", ""]
        lines += [f"- `{names[c.artifact]}`: {c.failures[0]}" for c in report.refused]
    if report.not_compared:
        lines += ["", "**Not compared** (backend missing on this machine)", ""]
        lines += [f"- `{names[c.artifact]}`: {c.error}" for c in report.not_compared]
    for cand in report.candidates:
        for note in cand.notes:
            lines += ["", f"Note (`{names[cand.artifact]}`): {note}."]
        if cand.accuracy is not None:
            acc = cand.accuracy
            lines += ["", f"Accuracy on {acc.samples} labelled samples: reference {_pct(acc.reference)}, "
                          f"`{names[cand.artifact]}` {_pct(acc.candidate)}, top-1 agreement {_pct(acc.top1_agreement)}."]
        if cand.per_layer is not None:
            lines += ["", f"Per-layer (`{names[cand.artifact]}`): {cand.per_layer_verdict}."]
    return "\n".join(lines) + "\n"


def check_error_junit(reference: str, candidates, message: str, fix: str, exit_code: int) -> str:
    """JUnit XML for a check that stopped before any comparison (the reference cannot load, a
    missing dependency, bad inputs): one errored testcase, so the CI job shows the reason where
    it shows parity results instead of "no test report found"."""
    root = ET.Element("testsuites", name="odexport check", tests="1", failures="0", errors="1", skipped="0")
    suite = ET.SubElement(root, "testsuite", name="odexport.check", tests="1", failures="0", errors="1", skipped="0")
    props = ET.SubElement(suite, "properties")
    for key, value in (("reference", reference), ("candidates", ", ".join(map(str, candidates))), ("exit_code", exit_code)):
        ET.SubElement(props, "property", name=key, value=str(value))
    case = ET.SubElement(suite, "testcase", classname="odexport.check", name="run")
    text = f"{message} -- {fix}" if fix else message
    ET.SubElement(case, "error", message=message, type="CheckError").text = text
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def check_error_markdown(reference: str, candidates, message: str, fix: str) -> str:
    """The Markdown comment for a check that stopped before any comparison."""
    shown = ", ".join(f"`{c}`" for c in candidates)
    lines = ["### odexport check: ❌ **parity ERROR** (the check could not run)", "",
             f"Reference `{reference}`; candidates {shown}.", "", f"**Error**: {message}"]
    if fix:
        lines += ["", f"**Fix**: {fix}"]
    return "\n".join(lines) + "\n"


# -- benchmark ----------------------------------------------------------------------------------

BENCH_COLUMNS = ("artifact", "role", "backend", "batch", "p50", "p90", "p99", "samples/s", "ratio")
# what a terminal too narrow for BENCH_COLUMNS shows (a twin's label names it: "static twin of X")
COMPACT_BENCH_COLUMNS = ("artifact", "batch", "p50", "p99", "ratio")


def bench_table(report: BenchReport, columns: tuple[str, ...] = BENCH_COLUMNS):
    """A rich Table of every measurement in ``columns`` (of :data:`BENCH_COLUMNS`)."""
    from rich.table import Table

    how = "interleaved"
    if report.settings.get("timing") == "blocks":
        spun = report.settings.get("spinning") and any(str(e.backend).startswith("onnxruntime") for e in report.entries)
        how = "in alternating blocks" + (", onnxruntime spinning on" if spun else "")
    table = Table(title=f"latency (ms; warm-up excluded; ratio = p50 / baseline p50, measured {how})", **table_style())
    for column in columns:
        text = column in ("artifact", "role", "backend")
        table.add_column(column, justify="left" if text else "right", no_wrap=not text)
    names = _bench_names(report)
    for entry in report.entries:
        cells = {"artifact": _bench_label(entry, names), "role": entry.role, "backend": entry.backend, "batch": str(entry.batch_size)}
        if entry.stats is None:
            cells.update(dict.fromkeys(("p50", "p90", "p99", "samples/s"), "-"))
            cells["ratio"] = "[yellow]not run[/]" if entry.missing_backend else "[red]error[/]"
        else:
            ratio = report.ratio(entry) if entry.role == "candidate" else None
            s = entry.stats
            cells.update({"p50": f"{s.p50_ms:.3f}", "p90": f"{s.p90_ms:.3f}", "p99": f"{s.p99_ms:.3f}",
                          "samples/s": f"{s.throughput:.1f}", "ratio": "-" if ratio is None else f"{ratio:.2f}x"})
        table.add_row(*(cells[column] for column in columns))
    return table


def _bench_label(entry, names: dict[str, str]) -> str:
    if entry.role == "baseline" and entry.baseline_of:
        return f"static twin of {names[str(entry.baseline_of)]}"
    return names[str(entry.artifact)]


def _bench_names(report: BenchReport) -> dict[str, str]:
    # a static twin is labelled by the artifact it is the twin of, so its own name takes no part
    return display_names([str(e.artifact) for e in report.entries if not (e.role == "baseline" and e.baseline_of)]
                         + [str(e.baseline_of) for e in report.entries if e.baseline_of])


def bench_error_lines(report: BenchReport) -> list[tuple[str, str]]:
    """``(kind, line)`` per problem: ``"NOT RUN"`` once per artifact whose backend is missing here
    (the command's own one-line error follows), ``"error:"`` per measurement that failed."""
    seen, lines, names = set(), [], _bench_names(report)
    for e in report.entries:
        if e.missing_backend and e.artifact not in seen:  # once per artifact, not per batch size
            seen.add(e.artifact)
            lines.append(("NOT RUN", f"{_bench_label(e, names)}: {e.error}"))
        elif e.error and not e.missing_backend:
            lines.append(("error:", f"{_bench_label(e, names)} at batch {e.batch_size}: {e.error}"))
    return lines


def bench_plot_lines(report: BenchReport) -> list[tuple[str, str, list]]:
    """(label, role, stats by batch size) for each line of the plot. A twin shared by several
    candidates has one set of timings, so it is one line naming them all, not one per candidate."""
    series: dict[tuple[str, str], list] = {}
    names = _bench_names(report)
    for entry in report.entries:
        if entry.stats is not None:
            series.setdefault((_bench_label(entry, names), entry.role), []).append(entry.stats)
    lines: dict[tuple, tuple[list[str], str, list]] = {}
    for (label, role), stats in series.items():
        stats = sorted(stats, key=lambda s: s.batch_size)
        key = ("baseline", tuple(stats)) if role == "baseline" else (label, role)
        lines.setdefault(key, ([], role, stats))[0].append(label)
    return [(", ".join(labels), role, stats) for labels, role, stats in lines.values()]


def bench_plot(report: BenchReport, path: str | Path) -> Path:
    """Latency (p50, with p90 as the upper whisker) vs batch size, one line per artifact."""
    from odexport._optional import require

    matplotlib = require("matplotlib", "--plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, role, stats in bench_plot_lines(report):
        xs = [s.batch_size for s in stats]
        ys = [s.p50_ms for s in stats]
        upper = [s.p90_ms - s.p50_ms for s in stats]
        ax.errorbar(xs, ys, yerr=[[0] * len(ys), upper], marker="o", capsize=3, label=label,
                    linestyle="--" if role == "baseline" else "-")
    ax.set_xscale("log", base=2)
    batches = sorted({e.batch_size for e in report.entries})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency p50 (ms), whisker to p90")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    output_folder(path, create=True, example="latency.png")
    try:
        with atomic_path(path, suffix=".png") as temp:
            fig.savefig(temp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path
