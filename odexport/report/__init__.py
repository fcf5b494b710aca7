"""Parity comparisons, latency statistics and their rendering (tables, JSON, JUnit XML, Markdown, plots).

Reports are plain data built from arrays and latencies; nothing here opens a session or runs a model.
"""

from odexport.report.compare import (
    DEFAULT_TOLERANCES,
    OutputComparison,
    Tolerance,
    ToleranceOverrides,
    compare_arrays,
    compare_outputs,
    default_tolerance,
)
from odexport.report.latency import BenchEntry, BenchReport, LatencyStats
from odexport.report.parity import BatchParity, CandidateParity, LayerParity, ParityReport, PerLayerParity

__all__ = [
    "DEFAULT_TOLERANCES",
    "BatchParity",
    "BenchEntry",
    "BenchReport",
    "CandidateParity",
    "LatencyStats",
    "LayerParity",
    "OutputComparison",
    "ParityReport",
    "PerLayerParity",
    "Tolerance",
    "ToleranceOverrides",
    "compare_arrays",
    "compare_outputs",
    "default_tolerance",
]
