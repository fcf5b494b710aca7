"""How an engine gets its precision on each TensorRT version (no TensorRT needed to decide).

TensorRT has two typing modes:

* **weak typing** (TensorRT <= 10.x): the network's tensor types are hints; ``BuilderFlag.FP16``
  lets the builder pick fp16 kernels for any layer it likes.  Deprecated in 10.12, removed in 11.
* **strong typing** (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; the only mode of 11.x, where
  the flag is accepted and ignored): every tensor has the type the network gives it and the builder
  never changes it.  Precision therefore lives *in the ONNX*: ``odexport onnx --fp16`` writes a
  mixed-precision model whose attention logits, sigmoid/softmax and kernel aggregation are fp32 and
  whose convolutions and matmuls are fp16.

The decision, made by :func:`plan_precision` from the version string alone:

==================  =====================  =============================================================
TensorRT            network                ``--fp16``
==================  =====================  =============================================================
< 10                unsupported (exit 3)
10.0 - 10.11        weakly typed           ``BuilderFlag.FP16``; the mixed ONNX (from a checkpoint, always)
                                           or an fp32 ONNX. The builder may run the ONNX's fp32 islands in
                                           fp16 too (weak typing obeys no types).
>= 10.12, 11.x      strongly typed         the mixed-precision ONNX is required; no builder flag (11.x has
                                           none); an fp32 ONNX with ``--fp16`` is an error saying how to
                                           make the mixed one.
==================  =====================  =============================================================

An ONNX that already is mixed precision builds an fp16 engine even without ``--fp16`` (its types
are the precision under strong typing).  TF32 is switched off unless asked for, so an "fp32" engine
computes in fp32 like the PyTorch reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from odexport._versions import release_numbers, version_at_least
from odexport.errors import InputError, MissingDependencyError

#: first TensorRT release where odexport builds strongly typed networks (weak typing deprecated here)
STRONGLY_TYPED_FROM = (10, 12)
#: first TensorRT release without any weak-typing API (no BuilderFlag.FP16)
NO_WEAK_TYPING_FROM = (11, 0)
MINIMUM_TENSORRT = (10, 0)


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; trailing tags (``"11.0.0rc1"``) are ignored.  A
    precision plan needs a readable release: unreadable text is an error, not "too old"."""
    numbers = release_numbers(text)
    if not numbers:
        raise InputError(f"cannot read the TensorRT version {text!r}", "report this with `odexport doctor --json`")
    return numbers


@dataclass(frozen=True)
class PrecisionPlan:
    """What :mod:`odexport.engine.build` does for the precision asked for on one TensorRT version."""

    precision: str  # "fp32" or "fp16": what the sidecar records
    strongly_typed: bool  # create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED
    fp16_builder_flag: bool  # set BuilderFlag.FP16 (weak typing only)
    tf32: bool  # leave BuilderFlag.TF32 on
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "precision": self.precision,
            "strongly_typed": self.strongly_typed,
            "fp16_builder_flag": self.fp16_builder_flag,
            "tf32": self.tf32,
            "notes": list(self.notes),
        }


def plan_precision(
    tensorrt_version: str,
    fp16: bool,
    onnx_precision: str,
    *,
    tf32: bool = False,
    has_fp16_flag: bool | None = None,
    onnx_name: str = "the ONNX",
) -> PrecisionPlan:
    """Decide typing mode and flags (see the module table).

    ``onnx_precision`` is :func:`onnx_precision`'s answer (``"fp32"`` or ``"mixed"``).
    ``has_fp16_flag`` is whether this TensorRT's ``BuilderFlag`` has ``FP16`` (default: inferred
    from the version); a build passes what the installed module really has.
    """
    version = parse_version(tensorrt_version)
    if not version_at_least(version, MINIMUM_TENSORRT):
        raise MissingDependencyError(
            f"TensorRT {tensorrt_version} is too old: odexport builds engines with TensorRT >= 10",
            "pip install -U 'odexport[trt]' (TensorRT 10 or 11; needs an NVIDIA GPU with a CUDA driver)",
        )
    if has_fp16_flag is None:
        has_fp16_flag = not version_at_least(version, NO_WEAK_TYPING_FROM)
    strongly_typed = version_at_least(version, STRONGLY_TYPED_FROM) or not has_fp16_flag
    notes: list[str] = []
    mixed = onnx_precision == "mixed"

    if mixed and not fp16:
        notes.append(f"{onnx_name} is mixed precision (fp16 convolutions): the engine is fp16 like the ONNX")
    want_fp16 = fp16 or mixed

    if not want_fp16:
        return PrecisionPlan("fp32", strongly_typed, False, tf32, tuple(notes))

    if strongly_typed:
        if not mixed:
            raise InputError(
                f"--fp16 on TensorRT {tensorrt_version} needs a mixed-precision ONNX, but {onnx_name} is fp32 "
                "(a strongly typed network computes in the ONNX's own types)",
                "export one with `odexport onnx CKPT --fp16 -o model_fp16.onnx`, or build from the checkpoint: "
                "`odexport trt CKPT --fp16`",
            )
        notes.append("strongly typed: fp16/fp32 per layer exactly as in the ONNX (attention and kernel aggregation fp32)")
        return PrecisionPlan("fp16", True, False, tf32, tuple(notes))

    # TensorRT 10.0 - 10.11: weak typing, the FP16 flag is the way to fp16 kernels.
    if mixed:
        notes.append(
            f"TensorRT {tensorrt_version} is weakly typed: BuilderFlag.FP16 is set and the builder may also run the "
            "ONNX's fp32 attention layers in fp16; TensorRT >= 10.12 keeps them fp32 exactly"
        )
    else:
        notes.append(
            f"{onnx_name} is fp32: BuilderFlag.FP16 lets TensorRT {tensorrt_version} pick fp16 for any layer, attention "
            "included; build from `odexport onnx --fp16` output to keep the attention fp32 on TensorRT >= 10.12"
        )
    return PrecisionPlan("fp16", False, True, tf32, tuple(notes))


def onnx_precision(path: str | Path) -> str:
    """``"mixed"`` when the ONNX computes anything in fp16 (a float16 initializer, value or Cast), else ``"fp32"``.

    Function bodies (odexport's custom-op form) are searched too.  External weights are not loaded:
    the types are in the graph proto.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    fp16 = onnx.TensorProto.FLOAT16

    def casts_to_fp16(nodes) -> bool:
        for node in nodes:
            if node.op_type in ("Cast", "CastLike"):
                for attr in node.attribute:
                    if attr.name == "to" and attr.i == fp16:
                        return True
            for attr in node.attribute:  # subgraphs (If/Loop) and fp16 Constant values
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == fp16:
                    return True
                if attr.type == onnx.AttributeProto.GRAPH and _graph_has_fp16(attr.g, fp16, casts_to_fp16):
                    return True
        return False

    if _graph_has_fp16(model.graph, fp16, casts_to_fp16):
        return "mixed"
    if any(casts_to_fp16(f.node) for f in model.functions):
        return "mixed"
    return "fp32"


def _graph_has_fp16(graph, fp16: int, casts_to_fp16) -> bool:
    if any(t.data_type == fp16 for t in graph.initializer):
        return True
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == fp16:
            return True
    return casts_to_fp16(graph.node)
