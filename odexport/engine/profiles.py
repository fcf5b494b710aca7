"""Optimisation profiles for the batch axis, computed from options and the ONNX input (no TensorRT).

A TensorRT engine built from a network with a dynamic batch needs at least one *optimisation
profile*: for every input a ``min``, ``opt`` and ``max`` shape.  The engine accepts any shape between
``min`` and ``max`` (element-wise) and is tuned for ``opt``.  odexport's ONNX has one image input
``"input"`` of shape ``(batch, C, H, W)`` with a symbolic batch, so a profile is three batch sizes
``min <= opt <= max``; the other axes come from the ONNX (or ``--input-shape`` where the ONNX leaves
them symbolic).

Options, in the order they are resolved:

* ``--profile MIN:OPT:MAX`` (repeatable; ``--profile N`` means ``N:N:N``) gives one profile each;
  it cannot be mixed with ``--min-batch/--opt-batch/--max-batch``.
* otherwise ``--min-batch/--opt-batch/--max-batch`` give one profile; a missing bound is filled:
  ``min`` = 1, ``max`` = the largest of 32 and the given bounds, ``opt`` = 8 clamped into
  ``[min, max]``.  With no option at all the profile is ``1:8:32``.
* an ONNX with a *fixed* batch ``N`` gets ``N:N:N`` when no option was given; a profile that asks
  for any other batch is an error that says how to re-export with a dynamic batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from odexport.errors import InputError

DEFAULT_MIN_BATCH = 1
DEFAULT_OPT_BATCH = 8
DEFAULT_MAX_BATCH = 32


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of one optimisation profile: the engine runs ``min..max`` and is tuned for ``opt``."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        for label, value in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(
                    f"profile {self.text()}: {label} batch must be an integer >= 1, got {value!r}",
                    "give batch sizes like --profile 1:8:32 or --min-batch 1 --opt-batch 8 --max-batch 32",
                )
        if not self.min <= self.opt <= self.max:
            raise InputError(
                f"profile {self.text()} is not ordered: TensorRT needs min <= opt <= max",
                "reorder the batch sizes, e.g. --profile 1:8:32",
            )

    def text(self) -> str:
        """``"1:8:32"``, the form ``--profile`` takes."""
        return f"{self.min}:{self.opt}:{self.max}"

    def contains(self, batch: int) -> bool:
        return self.min <= batch <= self.max

    def to_dict(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def from_dict(cls, data: dict) -> "BatchProfile":
        return cls(int(data["min"]), int(data["opt"]), int(data["max"]))


def parse_profile(text: str) -> BatchProfile:
    """``"1:8:32"`` -> ``BatchProfile(1, 8, 32)``; ``"4"`` -> ``BatchProfile(4, 4, 4)`` (a fixed batch)."""
    parts = [p.strip() for p in str(text).strip().split(":")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise InputError(
            f"profile {text!r} is not MIN:OPT:MAX",
            "give three batch sizes separated by colons, e.g. --profile 1:8:32 (or one number for a fixed batch)",
        )
    return BatchProfile(*values)


def batch_profiles_from_options(
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    profiles: Sequence[str] | None = None,
) -> list[BatchProfile] | None:
    """Profiles the user asked for, or ``None`` when no batch option was given (then the ONNX decides).

    See the module docstring for how missing bounds are filled.
    """
    profiles = list(profiles or [])
    bounds_given = any(v is not None for v in (min_batch, opt_batch, max_batch))
    if profiles and bounds_given:
        raise InputError(
            "--profile cannot be combined with --min-batch/--opt-batch/--max-batch",
            "use either one --profile MIN:OPT:MAX per profile, or the three --*-batch options for a single profile",
        )
    if profiles:
        parsed = [parse_profile(p) for p in profiles]
        seen: set[BatchProfile] = set()
        for p in parsed:
            if p in seen:
                raise InputError(f"profile {p.text()} is given twice", "drop the duplicate --profile")
            seen.add(p)
        return parsed
    if not bounds_given:
        return None
    for label, value in (("--min-batch", min_batch), ("--opt-batch", opt_batch), ("--max-batch", max_batch)):
        if value is not None and value < 1:
            raise InputError(f"{label} must be >= 1, got {value}", "batch sizes start at 1")
    low = min_batch if min_batch is not None else DEFAULT_MIN_BATCH
    high = max_batch if max_batch is not None else max(DEFAULT_MAX_BATCH, low, opt_batch or 1)
    opt = opt_batch if opt_batch is not None else min(max(DEFAULT_OPT_BATCH, low), high)
    return [BatchProfile(low, opt, high)]


def default_batch_profile() -> BatchProfile:
    return BatchProfile(DEFAULT_MIN_BATCH, DEFAULT_OPT_BATCH, DEFAULT_MAX_BATCH)


# --------------------------------------------------------------------------------------------
# ONNX inputs
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OnnxTensorSpec:
    """One graph input or output of an ONNX file: name, dims (int, or a str/None when symbolic), dtype."""

    name: str
    dims: tuple
    dtype: str

    @property
    def batch_is_dynamic(self) -> bool:
        return bool(self.dims) and not isinstance(self.dims[0], int)

    @property
    def fixed_batch(self) -> int | None:
        return self.dims[0] if self.dims and isinstance(self.dims[0], int) else None

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.dims), "dtype": self.dtype}


@dataclass(frozen=True)
class OnnxSignature:
    """Graph inputs (initializers excluded) and outputs of an ONNX file."""

    path: Path
    inputs: tuple[OnnxTensorSpec, ...]
    outputs: tuple[OnnxTensorSpec, ...]
    metadata: dict = field(default_factory=dict)  # metadata_props (odexport writes arch, forms, opset, ...)


def onnx_signature(path: str | Path) -> OnnxSignature:
    """Read names, dims and dtypes of an ONNX file's inputs and outputs (external weights not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist", "check the path, or export one with `odexport onnx CKPT -o model.onnx`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a file that is not ONNX
        raise InputError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})",
                         "pass a .onnx file written by `odexport onnx` or another exporter") from exc
    graph = model.graph
    initializers = {t.name for t in graph.initializer}

    def spec(value) -> OnnxTensorSpec:
        tensor_type = value.type.tensor_type
        dims = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "unknown"
        return OnnxTensorSpec(value.name, tuple(dims), dtype)

    inputs = tuple(spec(v) for v in graph.input if v.name not in initializers)
    outputs = tuple(spec(v) for v in graph.output)
    if not inputs:
        raise InputError(f"{path} has no graph inputs", "export the model with an input tensor")
    metadata = {p.key: p.value for p in model.metadata_props}
    return OnnxSignature(path, inputs, outputs, metadata)


@dataclass(frozen=True)
class ProfileShapes:
    """Full ``min/opt/max`` shapes of every input for one :class:`BatchProfile` (what TensorRT's set_shape takes)."""

    batch: BatchProfile
    shapes: dict  # input name -> (min_shape, opt_shape, max_shape), each a tuple of ints

    def to_dict(self) -> dict:
        return {
            **self.batch.to_dict(),
            "shapes": {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for name, s in self.shapes.items()},
        }


def resolve_profiles(
    signature: OnnxSignature,
    requested: list[BatchProfile] | None,
    input_shape: tuple[int, ...] | None = None,
) -> list[ProfileShapes]:
    """Profiles with full input shapes for ``signature``.

    Axis 0 of every input is the batch; every other axis must be a fixed size in the ONNX, or be
    given by ``input_shape`` (one sample's shape, e.g. ``(3, 224, 224)``; single-input models only).
    A fixed-batch ONNX accepts only profiles ``N:N:N`` of its batch.
    """
    fixed = {s.name: s.fixed_batch for s in signature.inputs if s.fixed_batch is not None}
    if requested is None:
        if fixed:
            batches = set(fixed.values())
            if len(batches) != 1:
                raise InputError(f"{signature.path} has inputs with different fixed batch sizes {fixed}",
                                 "re-export the model with one batch axis")
            n = batches.pop()
            requested = [BatchProfile(n, n, n)]
        else:
            requested = [default_batch_profile()]
    for name, n in fixed.items():
        for p in requested:
            if (p.min, p.opt, p.max) != (n, n, n):
                raise InputError(
                    f"{signature.path.name} has a fixed batch of {n} (input '{name}'), but profile {p.text()} asks for "
                    f"batch {p.min}..{p.max}",
                    f"re-export with a dynamic batch (`odexport onnx CKPT` without --batch, any form but grouped), "
                    f"or build this file with --profile {n}",
                )

    sample_shapes = {}
    for spec in signature.inputs:
        rest = tuple(spec.dims[1:])
        if not spec.dims:
            raise InputError(f"input '{spec.name}' of {signature.path.name} is a scalar; there is no batch axis",
                             "export the model with a (batch, ...) input")
        if input_shape is not None:
            if len(signature.inputs) != 1:
                raise InputError(f"--input-shape applies to single-input models; {signature.path.name} has "
                                 f"{len(signature.inputs)} inputs", "export the model with fixed non-batch axes")
            if len(input_shape) != len(rest):
                raise InputError(
                    f"--input-shape {'x'.join(map(str, input_shape))} has {len(input_shape)} axes, input '{spec.name}' "
                    f"has {len(rest)} besides the batch (shape {_shape_text(spec.dims)})",
                    "give one sample's shape without the batch, e.g. --input-shape 3x224x224",
                )
            for axis, (want, have) in enumerate(zip(input_shape, rest), start=1):
                if isinstance(have, int) and have != want:
                    raise InputError(
                        f"--input-shape {'x'.join(map(str, input_shape))} disagrees with input '{spec.name}' axis {axis} "
                        f"= {have} in the ONNX (shape {_shape_text(spec.dims)})",
                        "drop --input-shape (the ONNX fixes that axis) or re-export with the shape you need",
                    )
            rest = tuple(input_shape)
        symbolic = [axis for axis, d in enumerate(rest, start=1) if not isinstance(d, int)]
        if symbolic:
            raise InputError(
                f"input '{spec.name}' of {signature.path.name} has symbolic axes {symbolic} besides the batch "
                f"(shape {_shape_text(spec.dims)}); a profile needs their sizes",
                "pass one sample's shape with --input-shape, e.g. --input-shape 3x224x224",
            )
        sample_shapes[spec.name] = rest

    return [
        ProfileShapes(p, {name: ((p.min, *rest), (p.opt, *rest), (p.max, *rest)) for name, rest in sample_shapes.items()})
        for p in requested
    ]


def select_profile(batch: int, profiles: Sequence[BatchProfile]) -> int:
    """Index of the profile to run ``batch`` with: the one that contains it with the nearest ``opt``.

    Raises :class:`InputError` naming the ranges when no profile contains ``batch``.
    """
    candidates = [(abs(p.opt - batch), i) for i, p in enumerate(profiles) if p.contains(batch)]
    if not candidates:
        ranges = ", ".join(f"{p.min}..{p.max}" for p in profiles) or "none"
        largest = max((p.max for p in profiles), default=batch)
        raise InputError(
            f"batch {batch} is outside the engine's optimisation profiles (batch {ranges})",
            f"run a batch inside a profile, or rebuild the engine with a profile that covers it, e.g. "
            f"--profile 1:{batch}:{max(batch, largest)}",
        )
    return min(candidates)[1]


def _shape_text(dims: Sequence) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in dims) + ")"
