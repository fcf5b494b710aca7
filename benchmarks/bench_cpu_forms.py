"""Whole-model onnxruntime-CPU latency of export plans vs the static twin, interleaved in one process.

For each zoo model (reparameterised when :mod:`odexport.reparam` is available) every plan is
exported with the export engineer's ``build_onnx`` (dynamo exporter, each layer in its planned
variant), checked against PyTorch, and timed in onnxruntime (2 threads, spinning off) interleaved
with the static twin exported the same way.  Printed: median latency ratio vs the twin per round
and over rounds (absolute times on a shared 2-core box are noise; same-run ratios are not).

    python benchmarks/bench_cpu_forms.py                                   # the issue's targets
    python benchmarks/bench_cpu_forms.py --models od_resnet18:1 --plans auto,patch --batches 1,8
    python benchmarks/bench_cpu_forms.py --plans auto,auto/custom+ort     # portable vs specialised

Plans: ``auto`` (``plan_layers(form="auto")``), ``cpu-fast`` (:func:`odexport.export.fast_forms.plan_cpu`,
the measured cost model; a fixed batch when the timed batch is fixed), ``patch`` (patch everywhere),
``bmm`` / ``decomposed`` (the export engineer's dynamic variants).  ``/custom`` exports the plan in
the custom form (one ``com.odexport`` node per layer, the plan's variant as its function body),
which is what ``--ort-cpu`` specialises.  ``@1`` after a plan exports with a fixed batch of 1
(timed at batch 1 only).  ``+ort`` after a plan: that plan's session gets the onnxruntime-CPU
rewrite (:func:`odexport.runtime.ort_optimize.optimize_for_cpu`, specialised for the timed batch);
``--ort-cpu`` applies it to every plan.  Exports are cached under ``--cache`` by model, plan,
batch and the source files' modification times.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

MODELS = {
    "od_resnet18:1": ("od_resnet18", {"kernel_num": 1}),
    "od_resnet18:4": ("od_resnet18", {"kernel_num": 4}),
    "od_mobilenetv2_050:4": ("od_mobilenetv2_050", {"kernel_num": 4}),
    "dy_resnet18": ("dy_resnet18", {}),
    "od_resnet_tiny": ("od_resnet_tiny", {}),
}
# The targets: (model, batch) -> max ratio vs the static twin.
TARGETS = {
    ("od_resnet18:1", 1): 1.2, ("od_resnet18:1", 8): 1.3,
    ("od_resnet18:4", 1): 2.0, ("od_resnet18:4", 8): 2.0,
    ("od_mobilenetv2_050:4", 1): 2.0, ("dy_resnet18", 1): 2.0,
}


def load_model(key, reparam=True):
    from odexport.models import create_model

    name, kwargs = MODELS[key]
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    _realistic_statistics(model)
    if reparam:
        try:
            from odexport.reparam import reparameterise
        except ImportError:
            return model, False
        return reparameterise(model).model.eval(), True
    return model, False


def _realistic_statistics(model):
    """Give BatchNorms non-trivial running statistics (a fresh model's are 0/1), so folding and
    the attentions are exercised with values like a trained network's."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def plans_for(model, plan, batch, input_shape):
    from odexport.export.forms import describe_layers
    from odexport.export.plan import LayerPlan, plan_layers

    specs = describe_layers(model, input_shape)
    if plan in ("auto", "decomposed"):
        return plan_layers(specs, plan, target="cpu", batch=batch)
    if plan == "cpu-fast":
        from odexport.export.fast_forms import plan_cpu

        return plan_cpu(specs, batch=batch)
    chosen = []
    for spec in specs:
        variant = plan
        chosen.append(LayerPlan(spec.name, "decomposed", f"benchmark plan {plan}", 0.0, variant, spec))
    return chosen


def _source_stamp() -> str:
    root = Path(__file__).resolve().parents[1] / "odexport"
    digest = hashlib.sha1()
    for path in sorted(list((root / "export").glob("*.py")) + list((root / "layers").glob("*.py")) + list((root / "reparam").glob("*.py"))):
        digest.update(f"{path.name}:{path.stat().st_mtime_ns}".encode())
    return digest.hexdigest()[:10]


def export_cached(model, key, plan, batch, input_shape, cache: Path):
    import onnx

    from odexport.export.onnx_export import build_onnx

    cache.mkdir(parents=True, exist_ok=True)
    size = "x".join(map(str, input_shape[1:]))
    path = cache / f"{key.replace(':', '-')}_{size}_{plan.replace('/', '-')}_{batch or 'dyn'}_{_source_stamp()}.onnx"
    if path.exists():
        return onnx.load(str(path)), None
    name, _, style = plan.partition("/")
    plans = [] if plan == "twin" else plans_for(model, name, batch, input_shape)
    start = time.perf_counter()
    proto = build_onnx(model, plans, input_shape=input_shape, batch=batch, opset=18, custom=style == "custom")
    onnx.save(proto, str(path))
    return proto, time.perf_counter() - start


def session(proto, threads, ort_cpu=False, ratio=None, batches=None):
    import onnxruntime as ort

    if ort_cpu:
        from odexport.runtime.ort_optimize import optimize_for_cpu

        def below_ratio(layer, batch):  # bench-time override of prefer_runtime_weight's threshold
            return layer["K"] * layer["O"] * layer["Cg"] * layer["T"] <= ratio * layer["C"] * layer["H"] * layer["W"]

        policy = below_ratio if ratio is not None else None
        proto = optimize_for_cpu(proto, policy=policy, batches=batches).model
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def interleaved(fns: dict, iters: int, warmup: int = 2, cpu: dict | None = None) -> dict:
    """Median wall ms per function, called in turn as ``odexport bench`` does
    (:func:`odexport.runtime.timing.interleaved_latencies`: the first of each turn rotates).
    ``cpu``, when given, receives the median process CPU ms too (all threads): on a box shared with
    other jobs it measures the work done, which preemption does not inflate -- a diagnostic, not
    the metric."""
    from odexport.runtime.timing import interleaved_latencies

    cpu_times = {k: [] for k in fns}

    def timed(key):
        def run_once() -> float:
            c, t = time.process_time_ns(), time.perf_counter_ns()
            fns[key]()
            wall = time.perf_counter_ns() - t
            cpu_times[key].append(time.process_time_ns() - c)
            return wall / 1e6
        return run_once

    times = interleaved_latencies({k: timed(k) for k in fns}, warmup, iters)
    if cpu is not None:  # warm-up calls are in cpu_times too: keep the timed ones
        cpu.update({k: float(np.median(v[-len(times[k]):])) / 1e6 for k, v in cpu_times.items()})
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="od_resnet18:1,od_resnet18:4,od_mobilenetv2_050:4,dy_resnet18")
    parser.add_argument("--plans", default="auto,auto/custom+ort")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ort-cpu", action="store_true", help="apply odexport.runtime.ort_optimize to the plans' sessions")
    parser.add_argument("--ort-ratio", type=float, default=None, help="--ort-cpu: per-sample form where K*kernel <= RATIO * input")
    parser.add_argument("--no-reparam", action="store_true")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--cache", default=os.environ.get("ODEXPORT_BENCH_CACHE", "/tmp/odexport-bench-cache"))
    args = parser.parse_args(argv)
    unknown = [k for k in args.models.split(",") if k not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    from odexport.export.fast_forms import FAST_VARIANTS
    from odexport.export.forms import VARIANTS

    known = ("auto", "decomposed", "cpu-fast", *VARIANTS, *FAST_VARIANTS)
    bad = [p for p in args.plans.split(",") if p.removesuffix("+ort").partition("@")[0].partition("/")[0] not in known]
    if bad:
        parser.error(f"unknown plans {bad}; a plan is one of {', '.join(dict.fromkeys(known))}, optionally /custom, @BATCH, +ort")
    torch.set_num_threads(1)
    import onnxruntime as ort

    print(f"# onnxruntime {ort.__version__}, {args.threads} threads, spinning off, {os.cpu_count()} cpus "
          f"({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} usable here)", flush=True)
    input_shape = (3, args.size, args.size)
    rows = []
    for key in args.models.split(","):
        model, reparamed = load_model(key, reparam=not args.no_reparam)
        twin_model = __import__("odexport.models.twin", fromlist=["static_twin"]).static_twin(model).eval()
        twin, _ = export_cached(twin_model, key, "twin", None, input_shape, Path(args.cache))
        for batch in map(int, args.batches.split(",")):
            x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                ref = model(x).numpy()
                ref64 = copy.deepcopy(model).double()(x.double()).numpy()  # the float64 truth
            sessions = {"twin": session(twin, args.threads)}
            errors, errors64 = {}, {}
            for plan in args.plans.split(","):
                rewrite = args.ort_cpu or plan.endswith("+ort")
                plan = plan.removesuffix("+ort")
                name, _, fixed = plan.partition("@")
                if fixed and int(fixed) != batch:
                    continue
                proto, seconds = export_cached(model, key, name, int(fixed) if fixed else None, input_shape, Path(args.cache))
                label = plan + ("+ort" if rewrite else "")
                sessions[label] = session(proto, args.threads, rewrite, args.ort_ratio, (batch,))
                out = sessions[label].run(None, {"input": x.numpy()})[0]
                errors[label] = float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-12))
                errors64[label] = float(np.abs(out - ref64).max() / (np.abs(ref64).max() + 1e-12))
            xn = x.numpy()
            per_round = {k: [] for k in sessions if k != "twin"}
            cpu_round = {k: [] for k in per_round}
            for _ in range(args.rounds):
                cpu = {}
                med = interleaved({k: (lambda s=s: s.run(None, {"input": xn})) for k, s in sessions.items()}, args.iters, cpu=cpu)
                for k in per_round:
                    per_round[k].append(med[k] / med["twin"])
                    cpu_round[k].append(cpu[k] / cpu["twin"])
            for k, ratios in per_round.items():
                target = TARGETS.get((key, batch))
                verdict = "" if target is None else (" meets" if np.median(ratios) <= target else " MISSES") + f" target {target}x"
                print(f"{key:<22} B={batch} {k:<22} ratio {np.median(ratios):.2f}x (rounds {', '.join(f'{r:.2f}' for r in ratios)}; "
                      f"cpu-time ratio {np.median(cpu_round[k]):.2f}x; twin {med['twin']:.1f} ms; err vs torch fp32 {errors[k]:.1e}, vs fp64 {errors64[k]:.1e} "
                      f"(torch fp32 vs fp64 {float(np.abs(ref - ref64).max() / np.abs(ref64).max()):.1e}); reparam {reparamed}){verdict}", flush=True)
                rows.append({"model": key, "batch": batch, "plan": k, "ratio": float(np.median(ratios)),
                             "error_vs_fp32": errors[k], "error_vs_fp64": errors64[k]})
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
