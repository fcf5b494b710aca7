"""Latency statistics and the benchmark report.

Samples are per-call latencies in milliseconds with the warm-up already dropped.  Percentiles use
numpy's linear interpolation; throughput is ``batch_size / p50`` (samples per second at the median
latency, the rate one synchronous caller sees).  Ratios compare p50s of a candidate and its
baseline measured *in the same run, interleaved*, which cancels most drift of a shared machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one (artifact, batch size) measurement."""

    batch_size: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    throughput: float  # samples per second at p50

    @classmethod
    def from_samples(cls, samples_ms, batch_size: int) -> "LatencyStats":
        values = np.asarray(list(samples_ms), dtype=np.float64)
        if values.size == 0:
            raise ValueError("no latency samples")
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(
            batch_size=int(batch_size),
            iterations=int(values.size),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            mean_ms=float(values.mean()),
            min_ms=float(values.min()),
            max_ms=float(values.max()),
            std_ms=float(values.std()),
            throughput=float(batch_size / (p50 / 1e3)) if p50 > 0 else float("inf"),
        )

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class BenchEntry:
    """One artifact (or its baseline) at one batch size."""

    artifact: str
    role: str  # "candidate" | "baseline"
    backend: str
    batch_size: int
    stats: LatencyStats | None = None
    baseline_of: str | None = None  # for a baseline: the candidate it belongs to
    error: str | None = None
    missing_backend: bool = False  # not run: this machine lacks the backend (``error`` says which)

    def to_dict(self) -> dict:
        # a row that did not run keeps every timing key, as null: one schema for every row of the JSON
        stats = (self.stats.to_dict() if self.stats is not None
                 else {name: None for name in LatencyStats.__dataclass_fields__ if name != "batch_size"})
        return {"artifact": self.artifact, "role": self.role, "backend": self.backend, "batch_size": self.batch_size,
                "baseline_of": self.baseline_of, "error": self.error, "missing_backend": self.missing_backend, **stats}


@dataclass
class BenchReport:
    """All measurements of one ``odexport bench`` run, with the candidate/baseline ratios."""

    entries: list[BenchEntry] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def baseline_for(self, entry: BenchEntry) -> BenchEntry | None:
        return next((b for b in self.entries if b.role == "baseline" and b.baseline_of == entry.artifact
                     and b.batch_size == entry.batch_size), None)

    def ratio(self, entry: BenchEntry) -> float | None:
        """p50 of ``entry`` over the p50 of its baseline at the same batch size (None without one)."""
        base = self.baseline_for(entry)
        if base is None or base.stats is None or entry.stats is None or base.stats.p50_ms <= 0:
            return None
        return entry.stats.p50_ms / base.stats.p50_ms

    def to_dict(self) -> dict:
        rows = []
        for entry in self.entries:
            row = entry.to_dict()
            # null on a baseline row as ``baseline_of`` is on a candidate's: one set of keys for every row
            row["ratio_to_baseline"] = self.ratio(entry) if entry.role == "candidate" else None
            rows.append(row)
        return {"settings": self.settings, "machine": self.machine, "results": rows, "notes": list(self.notes)}


def machine_facts() -> dict:
    """Where a measurement was taken (CPU model, cores, library versions), for the record."""
    import os
    import platform

    facts = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):  # taskset, a container's cpuset: the cores this process could run on
        facts["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    facts["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        facts["cpu"] = platform.processor()
    for name in ("torch", "onnxruntime", "onnx"):
        try:
            module = __import__(name)
            facts[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return facts
