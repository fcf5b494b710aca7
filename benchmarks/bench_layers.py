"""Per-layer latency of each export variant of one dynamic conv vs a static conv of the same shape.

Each case exports ONE layer (attention branch included) in each variant with the dynamo exporter,
runs it in onnxruntime CPU (2 threads, spinning off) interleaved with a static ``nn.Conv2d`` of the
same shape, and prints median latency ratios vs that static conv (absolute times are noise on a
shared 2-core box; ratios measured in the same run are not).

    python benchmarks/bench_layers.py                       # ResNet-18 stages, K=1 and 4, batch 1 and 8
    python benchmarks/bench_layers.py --cases r18 --kernels 4 --batches 1 --variants patch,sample
    python benchmarks/bench_layers.py --ort-cpu             # also the onnxruntime runtime-weight NCHWc rewrite
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch import nn

# (name, op, C, O, k, stride, H, groups)
CASES = {
    "r18": [
        ("l1", "od", 64, 64, 3, 1, 56, 1),
        ("l2.0", "od", 64, 128, 3, 2, 56, 1),
        ("l2", "od", 128, 128, 3, 1, 28, 1),
        ("l3.0", "od", 128, 256, 3, 2, 28, 1),
        ("l3", "od", 256, 256, 3, 1, 14, 1),
        ("l4.0", "od", 256, 512, 3, 2, 14, 1),
        ("l4", "od", 512, 512, 3, 1, 7, 1),
    ],
    "dy18": [
        ("l1", "dy", 64, 64, 3, 1, 56, 1),
        ("l2", "dy", 128, 128, 3, 1, 28, 1),
        ("l3", "dy", 256, 256, 3, 1, 14, 1),
        ("l4", "dy", 512, 512, 3, 1, 7, 1),
    ],
    "mbv2": [
        ("pw-expand-56", "od", 16, 96, 1, 1, 56, 1),
        ("dw-56", "od", 96, 96, 3, 1, 56, 96),
        ("pw-proj-28", "od", 96, 16, 1, 1, 28, 1),
        ("dw-14", "od", 192, 192, 3, 1, 14, 192),
        ("pw-7", "od", 160, 640, 1, 1, 7, 1),
    ],
}


def make_layer(op, c, o, k, stride, groups, num_kernels):
    from odexport.layers import DyConv2d, ODConv2d

    torch.manual_seed(0)
    if op == "od":
        layer = ODConv2d(c, o, k, stride, k // 2, groups=groups, kernel_num=num_kernels)
    else:
        layer = DyConv2d(c, o, k, stride, k // 2, groups=groups, num_kernels=num_kernels)
    layer.static_bias = nn.Parameter(torch.randn(o) * 0.1)
    return layer.eval()


class Installed(nn.Module):
    """One layer whose forward runs ``core`` (a fast variant or a forms.DynamicConvCore)."""

    def __init__(self, layer, core):
        super().__init__()
        self.layer, self.core = layer, core

    def forward(self, x):
        from odexport.export.forms import layer_tensors

        att = self.layer.attentions(x)
        dyn_bias, static_bias = layer_tensors(self.layer)
        return self.core(x, self.layer.weight, att.channel, att.filter, att.spatial, att.kernel, dyn_bias, static_bias)


def core_for(spec, variant):
    from odexport.export.fast_forms import FAST_VARIANTS, make_core
    from odexport.export.forms import DynamicConvCore

    name, _, option = variant.partition(":")
    if name in FAST_VARIANTS:
        opts = {}
        if name == "patch" and option:
            opts["mix"] = option
        if name == "sample" and option:
            opts["channel_on"], opts["filter_on"] = {"w": ("weight", "weight"), "a": ("input", "output")}[option]
        return make_core(spec, name, **opts)
    return DynamicConvCore(spec, name)


def nchwc_model(layer, spec, x, batch):
    """The layer in the custom form (one com.odexport node), specialised for ``batch`` with the
    per-sample blocked-kernel NCHWc form forced on."""
    from odexport.export.onnx_export import build_onnx
    from odexport.export.plan import LayerPlan
    from odexport.runtime.ort_optimize import optimize_for_cpu

    model = nn.Sequential(layer).eval()
    plans = [LayerPlan("0", "custom", "bench", 0.0, "patch", spec)]
    proto = build_onnx(model, plans, input_shape=tuple(x.shape[1:]), batch=None, opset=18, custom=True)
    report = optimize_for_cpu(proto, policy=lambda layer, b: True, batches=(batch,))
    if not report.rewritten:
        raise RuntimeError(f"nothing rewritten: {report.to_dict()}")
    return report.model


def export(module, x, dynamic):
    from odexport.export.onnx_export import torch_to_onnx

    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    return torch_to_onnx(module.eval(), (x,), ["input"], ["output"], shapes, 18)


def session(proto, threads=2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    data = proto if isinstance(proto, bytes) else proto.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def interleaved(fns: dict, iters: int, warmup: int = 3, metric: str = "wall") -> dict:
    """Median ms per function, run in turn.  ``metric`` "cpu": process CPU time (all threads),
    robust to other jobs preempting us on a shared box; "wall": perf_counter."""
    clock = time.process_time_ns if metric == "cpu" else time.perf_counter_ns
    times = {k: [] for k in fns}
    for _ in range(warmup):
        for f in fns.values():
            f()
    for _ in range(iters):
        for k, f in fns.items():
            t = clock()
            f()
            times[k].append(clock() - t)
    return {k: float(np.median(v)) / 1e6 for k, v in times.items()}


def run_case(case, num_kernels, batch, variants, iters, ort_cpu, metric="wall"):
    from odexport.export.forms import applicable_variants, describe_layers

    name, op, c, o, k, stride, hw, groups = case
    if op == "dy" and num_kernels == 1:
        return None
    layer = make_layer(op, c, o, k, stride, groups, num_kernels)
    static = nn.Conv2d(c, o, k, stride, k // 2, groups=groups, bias=True).eval()
    x = torch.randn(batch, c, hw, hw)
    spec = describe_layers(layer, (c, hw, hw))[0]
    with torch.no_grad():
        ref = layer(x).numpy()
    sessions = {"static": session(export(static, x, True))}
    errors = {}
    for variant in variants:
        base = variant.split(":")[0]
        if base in ("bmm", "kbranch", "static") and base not in applicable_variants(spec):
            continue
        if base == "grouped" and batch != 1:
            continue
        if base == "nchwc":  # the custom form specialised by odexport.runtime.ort_optimize for this batch
            sessions[variant] = session(nchwc_model(layer, spec, x, batch))
            continue
        module = Installed(layer, core_for(spec, variant))
        try:
            proto = export(module, x, base not in ("sample", "grouped"))
        except Exception as exc:  # a variant that does not export is reported, not fatal
            print(f"  {variant}: export failed: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
            continue
        sessions[variant] = session(proto)
        if ort_cpu and base == "sample":
            from odexport.runtime.ort_optimize import optimize_for_cpu

            sessions[variant + "+nchwc"] = session(optimize_for_cpu(proto, threads=2).model)
    xn = x.numpy()
    for label, s in sessions.items():
        if label == "static":
            continue
        out = s.run(None, {"input": xn})[0]
        errors[label] = float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-12))
    med = interleaved({label: (lambda s=s: s.run(None, {"input": xn})) for label, s in sessions.items()}, iters, metric=metric)
    return med, errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="r18", help="comma list of: " + ", ".join(CASES))
    parser.add_argument("--only", default="", help="comma list of case names within the sets")
    parser.add_argument("--kernels", default="1,4")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--variants", default="patch:in,patch:out,sample:w,sample:a,bmm,kbranch,static")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--ort-cpu", action="store_true", help="also time the onnxruntime NCHWc rewrite of sample")
    parser.add_argument("--metric", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time (diagnostic on a busy box)")
    args = parser.parse_args(argv)
    sets = args.cases.split(",")
    unknown = [name for name in sets if name not in CASES]
    if unknown:
        parser.error(f"unknown case sets {unknown}; choose from {', '.join(CASES)}")
    only = set(filter(None, args.only.split(",")))
    missing = only - {case[0] for name in sets for case in CASES[name]}
    if missing:
        parser.error(f"no case named {sorted(missing)} in {', '.join(sets)}")
    torch.set_num_threads(1)
    rows = []
    for set_name in sets:
        for case in CASES[set_name]:
            if only and case[0] not in only:
                continue
            for num_kernels in map(int, args.kernels.split(",")):
                for batch in map(int, args.batches.split(",")):
                    result = run_case(case, num_kernels, batch, args.variants.split(","), args.iters, args.ort_cpu, args.metric)
                    if result is None:
                        continue
                    med, errors = result
                    base = med["static"]
                    cells = "  ".join(f"{v} {t / base:.2f}x" for v, t in med.items() if v != "static")
                    worst = max(errors.values()) if errors else 0.0
                    print(f"{set_name}:{case[0]:<8} K={num_kernels} B={batch}: static {base:.3f} ms | {cells} | max rel err {worst:.1e}", flush=True)
                    rows.append({"case": f"{set_name}:{case[0]}", "kernels": num_kernels, "batch": batch,
                                 "ratios": {v: t / base for v, t in med.items() if v != "static"}, "errors": errors})
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
