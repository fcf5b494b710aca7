"""The record behind docs/performance.md: each zoo model as a user exports it, vs its static twin.

For every model: build it (seeded), give its BatchNorms realistic statistics, reparameterise it as
``odexport onnx`` does, export it with :func:`odexport.pipeline.onnx_from_model` (``--form``,
default ``auto``), and export its static twin (every dynamic conv replaced by a static conv of the
same shape) the same way.  Then, in this one process:

* **parity** of the export against the PyTorch model (max |d| over the output scale max |r|, at
  batch 1 and 8: what ``odexport check`` gates on);
* **onnxruntime CPU** latency of export and twin, sessions interleaved call by call, 2 intra-op
  threads, ``session.intra_op.allow_spinning = 0`` (an idle session's spinning pool would steal
  the cores of the one being timed); with ``--spinning``, onnxruntime's default spinning threads
  and the sessions timed in alternating blocks of calls instead;
* **PyTorch eager** latency of the model as loaded (the reference folded form, ``groups = g*B``)
  and of its twin, interleaved the same way.

Printed: one Markdown table of p50 latencies and ratios (candidate p50 / twin p50 measured in the
same run), with the issue's targets.  Absolute times on a shared machine are noise; the ratios of
interleaved measurements are the result.  No timing is asserted anywhere.

    python benchmarks/bench_forms.py                                        # the four models, batch 1 and 8
    python benchmarks/bench_forms.py --models od_resnet18:4 --batch-sizes 1 --iters 10
    python benchmarks/bench_forms.py --json out/forms.json --markdown out/forms.md --cache out/onnx
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# name[:K] -> (zoo name, kwargs); the set
MODELS = {
    "od_resnet18:1": ("od_resnet18", {"kernel_num": 1}),
    "od_resnet18:4": ("od_resnet18", {"kernel_num": 4}),
    "od_mobilenetv2_050:4": ("od_mobilenetv2_050", {"kernel_num": 4}),
    "dy_resnet18": ("dy_resnet18", {}),
    "od_resnet_tiny": ("od_resnet_tiny", {}),  # smoke runs only
}
DEFAULT_MODELS = ("od_resnet18:1", "od_resnet18:4", "od_mobilenetv2_050:4", "dy_resnet18")
# (model, batch) -> the target ratio to the static twin, onnxruntime CPU
TARGETS = {
    ("od_resnet18:1", 1): 1.2, ("od_resnet18:1", 8): 1.3,
    ("od_resnet18:4", 1): 2.0, ("od_resnet18:4", 8): 2.0,
    ("od_mobilenetv2_050:4", 1): 2.0, ("dy_resnet18", 1): 2.0,
}


def realistic_batchnorm(model: torch.nn.Module, seed: int = 1) -> None:
    """A fresh network's BatchNorms hold mean 0 / var 1 / weight 1 / bias 0, which makes folding
    them trivial and the attentions unusually uniform; give them values like a trained network's."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def build(key: str):
    from odexport.models import create_model

    name, kwargs = MODELS[key]
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    realistic_batchnorm(model)
    return name, model


def deploy_form(model):
    """What ``odexport onnx`` exports: the model after the default exact reparam passes."""
    try:
        from odexport.reparam import reparameterise
    except ImportError:
        return model, "reparam unavailable"
    return reparameterise(model).model.eval(), "reparameterised"


def export(model, path: Path, form: str, shape) -> tuple[Path, float, list]:
    from odexport.pipeline import onnx_from_model

    if path.exists():
        return path, 0.0, []
    start = time.perf_counter()
    result = onnx_from_model(model, path, form=form, input_shape=shape, check=False)
    forms = sorted({f"{p.form}/{p.variant}" for p in result.forms})
    return path, time.perf_counter() - start, forms


def parity(model, onnx_path: Path, shape, threads: int) -> dict:
    """max |d| / max |r| of the export vs the PyTorch model at batch 1 and 8 (one draw each)."""
    from odexport.runtime.onnxruntime_runner import OrtRunner

    runner = OrtRunner(onnx_path, threads=threads, allow_spinning=False)
    result = {}
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy().astype(np.float64)
        got = runner.infer(x)["output"].astype(np.float64)
        result[batch] = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
    runner.close()
    return result


def timed(runners: dict, batch: int, shape, warmup: int, iters: int, blocks: bool = False) -> dict:
    x = timing_input(batch, shape)
    return timed_timers({name: runner.timer(x) for name, runner in runners.items()}, batch, warmup, iters, blocks)


def timing_input(batch: int, shape) -> np.ndarray:
    """The seeded batch every runner is timed on (one draw per batch size)."""
    return np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)


def timed_timers(timers: dict, batch: int, warmup: int, iters: int, blocks: bool = False) -> dict:
    """LatencyStats per timer (``Runner.timer`` callables), interleaved call by call or in blocks."""
    from odexport.report.latency import LatencyStats
    from odexport.runtime.timing import block_latencies, interleaved_latencies

    samples = (block_latencies if blocks else interleaved_latencies)(timers, warmup, iters)
    return {name: LatencyStats.from_samples(values, batch) for name, values in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--eager-batch-sizes", default="1", help="PyTorch eager is slow on 2 cores: batch 1 by default")
    parser.add_argument("--form", default="auto", help="export form for onnx_from_model (auto, decomposed, custom)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--ort-cpu", action="store_true",
                        help="also time the export specialised for onnxruntime CPU on this machine at --batch-sizes (`odexport ort`)")
    parser.add_argument("--no-eager", action="store_true")
    parser.add_argument("--spinning", action="store_true",
                        help="onnxruntime sessions with idle threads spinning (its default) timed in alternating blocks (`odexport bench --spinning`)")
    parser.add_argument("--torch-cuda", default="", metavar="BATCHES",
                        help="also time PyTorch on CUDA, fp16 with CUDA graphs, at these batch sizes (e.g. 1,32); needs a GPU")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cache", help="keep exports here (default: a temporary folder)")
    parser.add_argument("--json", help="write all numbers as JSON")
    parser.add_argument("--markdown", help="write the table as Markdown")
    args = parser.parse_args(argv)

    from odexport.models.twin import static_twin
    from odexport.report.latency import machine_facts
    from odexport.runtime.onnxruntime_runner import OrtRunner
    from odexport.runtime.torch_runner import TorchRunner

    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    eager_batches = [] if args.no_eager else [int(b) for b in args.eager_batch_sizes.split(",")]
    shape = (3, args.size, args.size)
    torch.set_num_threads(args.threads)
    scratch = tempfile.TemporaryDirectory(prefix="odexport-forms-")
    cache = Path(args.cache) if args.cache else Path(scratch.name)
    cache.mkdir(parents=True, exist_ok=True)

    record = {"date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"), "machine": machine_facts(),
              "settings": vars(args), "models": {}}
    print(f"# {record['date']} -- {record['machine'].get('cpu')} ({record['machine'].get('cpu_count')} cores, "
          f"{record['machine'].get('cpus_usable', record['machine'].get('cpu_count'))} usable here), "
          f"torch {torch.__version__}, onnxruntime {record['machine'].get('onnxruntime')}", file=sys.stderr)
    for key in keys:
        name, model = build(key)
        deployed, how = deploy_form(model)
        twin = static_twin(model).eval()
        stem = f"{key.replace(':', '-k')}-{args.size}"
        print(f"## {key}: exporting ({how}, form {args.form})", file=sys.stderr)
        cand_path, cand_s, forms = export(deployed, cache / f"{stem}-{args.form}.onnx", args.form, shape)
        twin_path, twin_s, _ = export(twin, cache / f"{stem}-twin.onnx", "auto", shape)
        entry = {"zoo": name, "kwargs": MODELS[key][1], "deploy": how, "forms": forms,
                 "export_s": {"candidate": round(cand_s, 1), "twin": round(twin_s, 1)},
                 "parity_rel_max_abs": parity(deployed, cand_path, shape, args.threads), "onnxruntime": {}, "eager": {}}
        runners = {"twin": OrtRunner(twin_path, threads=args.threads, allow_spinning=args.spinning),
                   "dynamic": OrtRunner(cand_path, threads=args.threads, allow_spinning=args.spinning)}
        if args.ort_cpu:
            from odexport.runtime.ort_specialise import specialise_onnx

            specialised = specialise_onnx(cand_path, cache / f"{stem}-{args.form}.ort-cpu.onnx", batch_sizes=batches, threads=args.threads)
            entry["ort_cpu"] = {"record": specialised.record, "deviation_from_portable": specialised.deviation}
            runners["dynamic+ort"] = OrtRunner(specialised.path, threads=args.threads, allow_spinning=args.spinning)
        for batch in batches:
            print(f"   onnxruntime batch {batch}", file=sys.stderr)
            stats = timed(runners, batch, shape, args.warmup, args.iters, blocks=args.spinning)
            entry["onnxruntime"][batch] = {k: s.to_dict() for k, s in stats.items()}
        for runner in runners.values():
            runner.close()
        if eager_batches:
            eager = {"twin": TorchRunner(twin, input_shape=shape), "dynamic": TorchRunner(model, input_shape=shape)}
            for batch in eager_batches:
                print(f"   PyTorch eager batch {batch}", file=sys.stderr)
                stats = timed(eager, batch, shape, max(1, args.warmup // 2), max(5, args.iters // 2))
                entry["eager"][batch] = {k: s.to_dict() for k, s in stats.items()}
        if args.torch_cuda:
            entry["torch_cuda_fp16_graphs"] = torch_cuda(model, twin, shape, [int(b) for b in args.torch_cuda.split(",")],
                                                         args.warmup, args.iters)
        record["models"][key] = entry
        print(json.dumps({key: {b: round(v["dynamic"]["p50_ms"] / v["twin"]["p50_ms"], 2) for b, v in entry["onnxruntime"].items()}}),
              file=sys.stderr)

    emit(markdown_table(record), record, args.markdown, args.json)
    scratch.cleanup()
    return 0


def emit(table: str, record: dict, markdown_path: str | None, json_path: str | None) -> None:
    """Print the table last (what a remote run's output tail keeps) and write the files asked for."""
    print(table)
    if markdown_path:
        Path(markdown_path).write_text(table + "\n")
    if json_path:
        Path(json_path).write_text(json.dumps(record, indent=2, default=str) + "\n")


def torch_cuda(model, twin, shape, batches, warmup: int, iters: int) -> dict:
    """The model as loaded (reference folded form) and its twin in PyTorch on CUDA, fp16, each
    forward captured once in a CUDA graph and replayed; CUDA-event timings, interleaved."""
    from odexport.errors import MissingDependencyError
    from odexport.runtime.torch_runner import TorchRunner

    if not torch.cuda.is_available():
        raise MissingDependencyError("--torch-cuda needs a CUDA GPU", "run on a machine with an NVIDIA GPU")
    result = {}
    for batch in batches:
        # one runner pair per batch: a captured graph is tied to its input shape
        runners = {"twin": TorchRunner(twin, device="cuda", dtype="float16", input_shape=shape, cuda_graphs=True),
                   "dynamic": TorchRunner(model, device="cuda", dtype="float16", input_shape=shape, cuda_graphs=True)}
        stats = timed(runners, batch, shape, warmup, iters)
        result[batch] = {k: s.to_dict() for k, s in stats.items()}
        for runner in runners.values():
            runner.close()
    return result


def markdown_table(record: dict) -> str:
    settings = record["settings"]
    protocol = ("onnxruntime's default spinning threads, sessions timed in alternating blocks" if settings.get("spinning")
                else "spinning off, sessions called in turn, call by call")
    lines = [
        f"onnxruntime CPU, {settings.get('threads')} intra-op threads, {protocol}; p50 of {settings.get('iters')} calls "
        f"({record['date']}).",
        "",
        "| model | batch | twin, onnxruntime | export, onnxruntime | ratio | target | twin, eager | reference folded, eager | eager ratio | max abs err / max abs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in record["models"].items():
        for batch, stats in entry["onnxruntime"].items():
            twin, dyn = stats["twin"]["p50_ms"], stats["dynamic"]["p50_ms"]
            ratio = f"{dyn / twin:.2f}x"
            if "dynamic+ort" in stats:
                ratio += f" ({stats['dynamic+ort']['p50_ms'] / twin:.2f}x `odexport ort`)"
            target = TARGETS.get((key, int(batch)))
            eager = entry["eager"].get(batch)
            eager_cells = ["-", "-", "-"] if not eager else [
                f"{eager['twin']['p50_ms']:.1f} ms", f"{eager['dynamic']['p50_ms']:.1f} ms",
                f"{eager['dynamic']['p50_ms'] / eager['twin']['p50_ms']:.2f}x"]
            err = entry["parity_rel_max_abs"].get(int(batch), entry["parity_rel_max_abs"].get(batch))
            lines.append(f"| {key} | {batch} | {twin:.1f} ms | {dyn:.1f} ms | {ratio} | "
                         f"{'-' if target is None else f'<= {target}x'} | {' | '.join(eager_cells)} | "
                         f"{'-' if err is None else f'{err:.1e}'} |")
    cuda_rows = [(key, batch, stats) for key, entry in record["models"].items()
                 for batch, stats in entry.get("torch_cuda_fp16_graphs", {}).items()]
    if cuda_rows:
        lines += ["", "| model | batch | twin, PyTorch CUDA fp16 graphs | reference folded, same | ratio |", "|---|---|---|---|---|"]
        for key, batch, stats in cuda_rows:
            twin, dyn = stats["twin"]["p50_ms"], stats["dynamic"]["p50_ms"]
            lines.append(f"| {key} | {batch} | {twin:.3f} ms | {dyn:.3f} ms | {dyn / twin:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
