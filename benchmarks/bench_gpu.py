"""The GPU record behind docs/performance.md: the zoo models on one CUDA GPU against their static twins.

Two parts, each interleaving every candidate with the model's static twin in one process:

* **PyTorch on CUDA** (the issue's measurement): fp16, the forward captured once in a CUDA graph
  and replayed, CUDA-event timing, batch 1 and 32.  Three PyTorch forms: the static twin, the
  model as loaded (the reference code's batch-folded grouped convolution) and the deployed model
  (after ``odexport reparam``'s default exact passes).  Eager fp16 (no graph) at batch 1 too, to
  show what launch overhead does to a dynamic conv's many small kernels.
* **onnxruntime's CUDA provider** (only where the installed onnxruntime has it): the export in
  each exact variant of :mod:`odexport.export.forms` (every layer forced to ``bmm``, ``kbranch``
  where exact, the batch-folded ``grouped`` at a fixed batch, and what ``--form auto --target
  gpu`` chooses), fp16 (``--fp16``'s mixed precision) and fp32 for ``auto``.  Host timer around
  ``run_with_iobinding`` (a synchronous call), input bound on the device.  This ranks the
  variants on a GPU runtime; ``odexport.export.plan.TARGETS["gpu"]`` should rank them the same.

Every export is checked against the PyTorch model in float32 on the GPU (TF32 off) before it is
timed: ``rel`` is max |d| / max |ref| at batch 2.  Absolute times are the machine's; the ratios
of interleaved medians are the result.  No timing is asserted anywhere.

    python benchmarks/bench_gpu.py --json gpu.json --markdown gpu.md
    python benchmarks/bench_gpu.py --models od_resnet_tiny --size 64 --batch-sizes 1,4   # smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_forms  # noqa: E402
from bench_forms import MODELS, build, deploy_form, emit  # noqa: E402  (one model set for both records)

DEFAULT_MODELS = ("od_resnet18:1", "od_resnet18:4", "od_mobilenetv2_050:4", "dy_resnet18")
VARIANTS = ("bmm", "kbranch", "patch", "static")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- exports (in worker processes: torch.export is single-threaded and slow) ---------------------

def export_one(key: str, kind: str, variant: str, fp16: bool, batch: int | None, size: int, path: str) -> dict:
    """Export ``key``'s deployed model (or its twin, ``kind == "twin"``) with every layer in
    ``variant`` (``auto``: the gpu cost model's choice) -> {path, forms, seconds}."""
    import onnx

    from odexport.export.forms import probe_model
    from odexport.export.onnx_export import build_onnx
    from odexport.export.plan import plan_layers
    from odexport.export.precision import convert_to_mixed_precision
    from odexport.models.twin import static_twin

    torch.set_num_threads(1)
    shape = (3, size, size)
    start = time.perf_counter()
    _, model = build(key)
    model = static_twin(model).eval() if kind == "twin" else deploy_form(model)[0]
    specs, outputs = probe_model(model, shape)
    if variant == "grouped":
        plans = plan_layers(specs, "grouped", target="gpu", batch=batch)
    elif variant == "auto":
        plans = plan_layers(specs, "auto", target="gpu", batch=batch, exclude=("patch",) if fp16 else ())
    else:
        plans = plan_layers(specs, "decomposed", target="gpu", batch=batch, exclude=tuple(v for v in VARIANTS if v != variant))
    proto = build_onnx(model, plans, input_shape=shape, batch=batch, opset=18, custom=False, num_outputs=outputs)
    if fp16:
        convert_to_mixed_precision(proto, {p.name for p in plans})
    onnx.save(proto, path)
    return {"path": path, "forms": sorted({p.variant for p in plans}), "seconds": round(time.perf_counter() - start, 1)}


def export_jobs(keys, batches) -> list[tuple]:
    """(key, label, kind, variant, fp16, batch) for every export the ONNX part times."""
    jobs = []
    for key in keys:
        jobs += [(key, "twin fp16", "twin", "auto", True, None), (key, "twin fp32", "twin", "auto", False, None),
                 (key, "auto fp16", "model", "auto", True, None), (key, "auto fp32", "model", "auto", False, None),
                 (key, "bmm fp16", "model", "bmm", True, None)]
        if key.startswith("dy_"):
            jobs.append((key, "kbranch fp16", "model", "kbranch", True, None))
        jobs += [(key, f"grouped b{b} fp16", "model", "grouped", True, b) for b in batches]
    return jobs


# -- timing ---------------------------------------------------------------------------------------

def timed(runners: dict, batch: int, shape, warmup: int, iters: int) -> dict:
    """p50 ms per runner, interleaved (bench_forms.timed)."""
    return {name: stats.p50_ms for name, stats in bench_forms.timed(runners, batch, shape, warmup, iters).items()}


def torch_part(key: str, batches, shape, warmup: int, iters: int) -> dict:
    """p50 ms of twin / reference folded / deployed, fp16 CUDA graphs per batch; eager fp16 at batch 1."""
    from odexport.models.twin import static_twin
    from odexport.runtime.torch_runner import TorchRunner

    _, model = build(key)
    deployed, _ = deploy_form(model)
    forms = {"twin": static_twin(model).eval(), "reference folded": model, "deployed": deployed}
    result = {"graphs": {}, "eager": {}}
    for batch in batches:
        runners = {name: TorchRunner(m, device="cuda", dtype="float16", input_shape=shape, cuda_graphs=True) for name, m in forms.items()}
        result["graphs"][batch] = timed(runners, batch, shape, warmup, iters)
        for runner in runners.values():
            runner.close()
        torch.cuda.empty_cache()
    runners = {name: TorchRunner(m, device="cuda", dtype="float16", input_shape=shape) for name, m in forms.items()}
    result["eager"][1] = timed(runners, 1, shape, warmup, iters)
    return result


def reference_outputs(key: str, shape) -> tuple[np.ndarray, np.ndarray]:
    """Input and the deployed model's float32 output at batch 2, on the GPU (TorchRunner: TF32 off)."""
    from odexport.runtime.torch_runner import TorchRunner

    _, model = build(key)
    deployed, _ = deploy_form(model)
    x = np.random.default_rng(7).standard_normal((2, *shape)).astype(np.float32)
    return x, TorchRunner(deployed, device="cuda", input_shape=shape).infer(x)["output"]


def onnx_part(key: str, exports: dict, batches, shape, warmup: int, iters: int, graphs: bool = False) -> dict:
    """Per export: rel error vs PyTorch fp32 and p50 ms per batch on onnxruntime CUDA, twin in the same rounds.

    ``graphs``: each session is timed as onnxruntime's CUDA graph (``OrtRunner(cuda_graphs=True)``);
    an export whose graph cannot be captured is recorded under ``graph_failed`` and left out."""
    from odexport.errors import OdexportError
    from odexport.runtime.onnxruntime_runner import OrtRunner

    x, ref = reference_outputs(key, shape)
    scale = max(float(np.abs(ref).max()), 1e-30)
    result = {"rel": {}, "forms": {}, "p50_ms": {}, "graph_failed": {}}
    runners = {}
    for label, info in exports.items():
        runner = OrtRunner(info["path"], device="cuda", cuda_graphs=graphs)
        result["forms"][label] = info["forms"]
        if "grouped" not in label and "twin" not in label:
            got = runner.infer(x)["output"].astype(np.float32)
            result["rel"][label] = float(np.abs(got - ref).max() / scale)
        runners[label] = runner
    for batch in batches:
        here = {label: r for label, r in runners.items() if "grouped" not in label or label.startswith(f"grouped b{batch} ")}
        for label, runner in here.items():
            if label.startswith("grouped"):
                got = runner.infer(np.resize(x, (batch, *shape)))["output"].astype(np.float32)[: min(batch, 2)]
                result["rel"][label] = float(np.abs(got - ref[: got.shape[0]]).max() / scale)
        # each timer is made once: with graphs, making one captures a graph in a session of its own
        feed = bench_forms.timing_input(batch, shape)
        timers = {}
        for label, runner in here.items():
            try:
                timers[label] = runner.timer(feed)
            except OdexportError as exc:
                if not graphs:
                    raise
                result["graph_failed"][label] = exc.message
                say(f"   {key} {label} batch {batch}: {exc.message}")
        result["p50_ms"][batch] = {label: stats.p50_ms for label, stats in bench_forms.timed_timers(timers, batch, warmup, iters).items()}
    for runner in runners.values():
        runner.close()
    return result


# -- report ---------------------------------------------------------------------------------------

def markdown(record: dict) -> str:
    lines = []
    if any("torch" in e for e in record["models"].values()):
        lines += ["PyTorch on CUDA, fp16, CUDA graphs (p50 ms; ratio to the twin):", "",
                  "| model | batch | twin | reference folded | ratio | deployed | ratio |", "|---|---|---|---|---|---|---|"]
    for key, entry in record["models"].items():
        t = entry.get("torch")
        if not t:
            continue
        for batch, p in list(t["graphs"].items()) + [(f"{b} eager", p) for b, p in t["eager"].items()]:
            tw = p["twin"]
            lines.append(f"| {key} | {batch} | {tw:.3f} | {p['reference folded']:.3f} | {p['reference folded'] / tw:.2f}x "
                         f"| {p['deployed']:.3f} | {p['deployed'] / tw:.2f}x |")
    if any("onnxruntime_cuda" in e for e in record["models"].values()):
        graphs = " with onnxruntime's CUDA graphs" if record["settings"].get("ort_cuda_graphs") else ""
        lines += [f"onnxruntime CUDA provider{graphs} (p50 ms; ratio to the twin of the same precision; rel = max|d|/max|ref| vs PyTorch fp32):", "",
                  "| model | export | variants | rel | " + " | ".join(f"batch {b}" for b in record["settings"]["batches"]) + " |",
                  "|---|---|---|---|" + "---|" * len(record["settings"]["batches"])]
        for key, entry in record["models"].items():
            o = entry.get("onnxruntime_cuda")
            if not o:
                continue
            for label, forms in o["forms"].items():
                cells = []
                for batch in record["settings"]["batches"]:
                    p = o["p50_ms"].get(batch, {})
                    if label not in p:
                        cells.append("")
                        continue
                    twin = p.get("twin fp32" if label.endswith("fp32") else "twin fp16")
                    cells.append(f"{p[label]:.3f}" if label.startswith("twin") or not twin else f"{p[label]:.3f} ({p[label] / twin:.2f}x)")
                rel = o["rel"].get(label)
                lines.append(f"| {key} | {label} | {'+'.join(forms)} | {'' if rel is None else f'{rel:.1e}'} | " + " | ".join(cells) + " |")
        for key, entry in record["models"].items():
            for label, why in entry.get("onnxruntime_cuda", {}).get("graph_failed", {}).items():
                lines.append(f"\n{key} {label}: no CUDA graph ({why})")
    return "\n".join(lines).replace("|\nonnxruntime CUDA", "|\n\nonnxruntime CUDA")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8, help="export processes")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--ort-cuda-graphs", action="store_true",
                        help="time the onnxruntime sessions as CUDA graphs (`odexport bench --cuda-graphs` on an .onnx)")
    parser.add_argument("--variants", default="",
                        help="comma-separated export labels to time (e.g. 'twin fp16,auto fp16'); default: all")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)

    from odexport.report.latency import machine_facts

    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    if not torch.cuda.is_available():  # exit 3, as `odexport check` does for a missing backend
        parser.exit(3, f"{parser.prog}: error: no CUDA GPU: torch {torch.__version__} sees none -- run it on a machine "
                       "with an NVIDIA GPU and a CUDA build of torch\n")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    shape = (3, args.size, args.size)
    ort_cuda = False
    if not args.skip_onnx:
        import onnxruntime as ort

        ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if not ort_cuda:
            say(f"onnxruntime {ort.__version__} has no CUDA provider: the ONNX part is skipped")
    record = {"date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
              "machine": {**machine_facts(), "gpu": torch.cuda.get_device_name(0), "torch_cuda": torch.version.cuda},
              "settings": {**vars(args), "batches": batches}, "models": {k: {} for k in keys}}
    say(f"# {record['date']} {record['machine']['gpu']}, torch {torch.__version__} (CUDA {torch.version.cuda})")

    scratch = tempfile.TemporaryDirectory(prefix="odexport-gpu-")
    pending = {}
    pool = None
    if ort_cuda:
        import multiprocessing

        pool = concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
        wanted = {v.strip() for v in args.variants.split(",") if v.strip()}
        for key, label, kind, variant, fp16, batch in export_jobs(keys, batches):
            if wanted and label not in wanted and not (label.startswith("grouped") and "grouped" in wanted):
                continue
            path = str(Path(scratch.name) / f"{key.replace(':', '-k')}-{label.replace(' ', '-')}.onnx")
            pending[(key, label)] = pool.submit(export_one, key, kind, variant, fp16, batch, args.size, path)
    if not args.skip_torch:  # while the exports run on the CPU
        for key in keys:
            say(f"## {key}: PyTorch CUDA")
            record["models"][key]["torch"] = part = torch_part(key, batches, shape, args.warmup, args.iters)
            say(json.dumps({b: round(p["reference folded"] / p["twin"], 2) for b, p in part["graphs"].items()}))
    if ort_cuda:
        for key in keys:
            exports = {}
            for (k, label), future in pending.items():
                if k == key:
                    try:
                        exports[label] = future.result()
                    except Exception as exc:  # one failed export must not lose the others' numbers
                        say(f"   {key} {label}: export failed: {type(exc).__name__}: {exc}")
            took = ", ".join(f"{label} {info['seconds']}s" for label, info in exports.items())
            say(f"## {key}: onnxruntime CUDA (exports: {took})")
            record["models"][key]["onnxruntime_cuda"] = onnx_part(key, exports, batches, shape, args.warmup, args.iters,
                                                                  graphs=args.ort_cuda_graphs)
        pool.shutdown()
    emit(markdown(record), record, args.markdown, args.json)
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
