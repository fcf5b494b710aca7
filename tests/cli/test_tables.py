"""Tables on narrow terminals and in logs: a number is never broken across lines."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from odexport.cli import _common
from odexport.report.render import (
    BENCH_COLUMNS,
    COMPACT_BENCH_COLUMNS,
    COMPACT_TABLE_COLUMNS,
    TABLE_COLUMNS,
    bench_table,
    parity_rows,
    parity_table,
)
from tests.report.test_render_and_latency import _bench, _report

def _printed(monkeypatch, terminal: bool, width: int, build, columns, compact) -> str:
    out = io.StringIO()
    monkeypatch.setattr(_common, "console", Console(file=out, width=width, force_terminal=terminal, color_system=None, highlight=False, soft_wrap=True))
    if not terminal:  # the piped console is made inside print_wide; catch what it writes too
        monkeypatch.setattr(_common, "Console", lambda **kw: Console(file=out, color_system=None, **kw))
    _common.print_table(build, columns, compact)
    return out.getvalue()


@pytest.mark.parametrize("width", [80, 100])
def test_parity_table_on_a_narrow_terminal_keeps_its_numbers_whole(monkeypatch, width):
    report = _report()
    text = _printed(monkeypatch, True, width, lambda columns: parity_table(report, columns), TABLE_COLUMNS, COMPACT_TABLE_COLUMNS)
    assert all(len(line) <= width for line in text.splitlines()), text
    assert "(max rel, cosine, atol needed left out to fit" in " ".join(text.split())  # says what it left out
    for row in parity_rows(report):  # every value of the compact columns, whole, on one line
        for column in ("max abs", "top-1", "atol"):
            value = row[_column(column)]
            if value not in ("", "-"):
                assert value in text, (value, text)


def _column(name: str) -> int:
    from odexport.report.render import PARITY_COLUMNS

    return PARITY_COLUMNS.index(name)


def test_wide_terminal_and_logs_get_every_column(monkeypatch):
    report = _report()
    for terminal, width in ((True, 200), (False, 80)):  # piped: 160 columns whatever COLUMNS says
        text = _printed(monkeypatch, terminal, width, lambda columns: parity_table(report, columns), TABLE_COLUMNS, COMPACT_TABLE_COLUMNS)
        assert "left out" not in text and "atol needed" in text and "cosine" in text, text
        for row in parity_rows(report):
            assert row[_column("max rel")] in text


def test_bench_table_on_a_narrow_terminal(monkeypatch):
    report = _bench()
    text = _printed(monkeypatch, True, 60, lambda columns: bench_table(report, columns), BENCH_COLUMNS, COMPACT_BENCH_COLUMNS)
    assert all(len(line) <= 60 for line in text.splitlines()), text
    assert "2.00x" in text and "static twin of od.onnx" in text
    assert "role, backend, p90, samples/s left out to fit 60 columns" in " ".join(text.split())
