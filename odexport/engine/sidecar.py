"""The JSON sidecar written next to every engine, and the compatibility check made before loading one.

A serialized TensorRT engine runs only with the TensorRT version that built it and on the GPU type
it was built for (the builder picks kernels for that compute capability and times them on that
card).  Deserialising it elsewhere fails deep inside TensorRT with a message that names neither the
cause nor the fix, or, between GPUs of one compute capability, runs with kernels tuned for another
card.  So ``odexport trt`` writes ``model.engine.json`` beside ``model.engine``::

    format, odexport_version, created
    engine        file name, sha256 and size of the engine bytes the sidecar describes
    tensorrt      version, strongly_typed, fp16_builder_flag, tf32, plugin_override
    gpu           name, compute_capability ("9.0")
    precision     "fp32" or "fp16"
    profiles      [{min, opt, max, shapes: {input: {min, opt, max}}}]
    inputs/outputs  [{name, shape (symbolic axes by name), dtype}] from the ONNX
    source        {onnx: {path, sha256}, checkpoint: {path, sha256} | null}
    build         workspace_gib, opt_level, timing_cache (+ state), plugins, seconds
    rebuild       the `odexport trt ...` command that rebuilds it
    notes         precision and plugin decisions, in words

:func:`check_compatible` compares a sidecar with the machine *before* the engine is deserialised
and fails with the mismatch and the rebuild command.  Both files are written with
:func:`write_engine` atomically (temporary names in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from odexport._files import temp_beside
from odexport.errors import InputError

SIDECAR_FORMAT = "odexport-engine/1"
SIDECAR_SUFFIX = ".json"


class EngineCompatibilityError(InputError):
    """The engine was built for another TensorRT version or GPU, or its file no longer matches its sidecar."""


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------

def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _write_temp(path: Path, data: bytes) -> Path:
    temp = temp_beside(path)
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    temp = _write_temp(path, bytes(data))
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildTarget:
    """The TensorRT version and GPU an engine is built for, or that a machine offers."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (compute capability {self.compute_capability})"


@dataclass(frozen=True)
class EngineMetadata:
    """Everything the sidecar records; ``to_dict``/``from_dict`` are its JSON form (see module docstring)."""

    target: BuildTarget
    precision: str
    profiles: list  # ProfileShapes.to_dict() per profile
    inputs: list
    outputs: list
    source_onnx: dict  # {"path", "sha256"}
    source_checkpoint: dict | None = None
    strongly_typed: bool = False
    fp16_builder_flag: bool = False
    tf32: bool = False
    plugins: list = field(default_factory=list)
    plugin_override: bool = False
    build: dict = field(default_factory=dict)
    rebuild_command: str = ""
    notes: list = field(default_factory=list)
    engine_file: str = ""
    engine_sha256: str = ""
    engine_bytes: int = 0
    odexport_version: str = ""
    created: str = ""

    @property
    def batch_profiles(self):
        from odexport.engine.profiles import BatchProfile

        return [BatchProfile.from_dict(p) for p in self.profiles]

    def to_dict(self) -> dict:
        return {
            "format": SIDECAR_FORMAT,
            "odexport_version": self.odexport_version,
            "created": self.created,
            "engine": {"file": self.engine_file, "sha256": self.engine_sha256, "bytes": self.engine_bytes},
            "tensorrt": {
                "version": self.target.tensorrt_version,
                "strongly_typed": self.strongly_typed,
                "fp16_builder_flag": self.fp16_builder_flag,
                "tf32": self.tf32,
                "plugin_override": self.plugin_override,
            },
            "gpu": {"name": self.target.gpu_name, "compute_capability": self.target.compute_capability},
            "precision": self.precision,
            "profiles": list(self.profiles),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "source": {"onnx": dict(self.source_onnx), "checkpoint": dict(self.source_checkpoint) if self.source_checkpoint else None},
            "build": {**self.build, "plugins": list(self.plugins)},
            "rebuild": self.rebuild_command,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "EngineMetadata":
        if not isinstance(data, dict):  # valid JSON of another shape (a list, a string)
            raise TypeError(f"the sidecar holds a JSON {type(data).__name__}, not an object")
        if data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {SIDECAR_FORMAT!r}")
        trt, gpu, engine, source = data["tensorrt"], data["gpu"], data["engine"], data["source"]
        for part, value in (("tensorrt", trt), ("gpu", gpu), ("engine", engine), ("source", source)):
            if not isinstance(value, dict):
                raise TypeError(f"its '{part}' is a JSON {type(value).__name__}, not an object")
        build = dict(data.get("build") or {})
        plugins = list(build.pop("plugins", []))
        return cls(
            target=BuildTarget(str(trt["version"]), str(gpu["name"]), str(gpu["compute_capability"])),
            precision=str(data["precision"]),
            profiles=list(data["profiles"]),
            inputs=list(data.get("inputs", [])),
            outputs=list(data.get("outputs", [])),
            source_onnx=dict(source["onnx"]),
            source_checkpoint=dict(source["checkpoint"]) if source.get("checkpoint") else None,
            strongly_typed=bool(trt.get("strongly_typed", False)),
            fp16_builder_flag=bool(trt.get("fp16_builder_flag", False)),
            tf32=bool(trt.get("tf32", False)),
            plugins=plugins,
            plugin_override=bool(trt.get("plugin_override", False)),
            build=build,
            rebuild_command=str(data.get("rebuild", "")),
            notes=list(data.get("notes", [])),
            engine_file=str(engine.get("file", "")),
            engine_sha256=str(engine["sha256"]),
            engine_bytes=int(engine.get("bytes", 0)),
            odexport_version=str(data.get("odexport_version", "")),
            created=str(data.get("created", "")),
        )


def write_engine(engine_path: str | Path, engine_bytes: bytes, metadata: EngineMetadata) -> tuple[Path, Path]:
    """Write the engine and its sidecar atomically; returns ``(engine_path, sidecar_path)``.

    The engine's name, checksum and size are filled into the sidecar here.  Both contents are
    serialised and written to temporary files first; only then are the two renamed into place, so
    an error (disk full, a bad metadata value) leaves neither a partial engine nor a partial sidecar.
    """
    from odexport import __version__

    engine_path = Path(engine_path)
    engine_bytes = bytes(engine_bytes)
    metadata = dataclasses.replace(
        metadata,
        engine_file=engine_path.name,
        engine_sha256=sha256_bytes(engine_bytes),
        engine_bytes=len(engine_bytes),
        odexport_version=metadata.odexport_version or __version__,
        created=metadata.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    side = sidecar_path(engine_path)
    text = json.dumps(metadata.to_dict(), indent=2, allow_nan=False) + "\n"
    engine_temp = _write_temp(engine_path, engine_bytes)
    try:
        side_temp = _write_temp(side, text.encode("utf-8"))
    except BaseException:
        engine_temp.unlink(missing_ok=True)
        raise
    try:
        os.replace(engine_temp, engine_path)
        os.replace(side_temp, side)
    except BaseException:
        engine_temp.unlink(missing_ok=True)
        side_temp.unlink(missing_ok=True)
        raise
    return engine_path, side


def read_sidecar(engine_path: str | Path) -> EngineMetadata:
    """The sidecar of ``engine_path``; a missing or unreadable one is an :class:`InputError` with the fix."""
    engine_path = Path(engine_path)
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise EngineCompatibilityError(
            f"{engine_path.name} has no sidecar {side.name}, so odexport cannot tell which TensorRT version and GPU it was built for",
            "rebuild it with `odexport trt MODEL.onnx -o " + shlex.quote(str(engine_path)) + "`, which writes both files",
        )
    try:
        return EngineMetadata.from_dict(json.loads(side.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineCompatibilityError(
            f"sidecar {side} is not a valid odexport engine sidecar ({type(exc).__name__}: {exc})",
            "rebuild the engine with `odexport trt MODEL.onnx -o " + shlex.quote(str(engine_path)) + "`",
        ) from exc


def verify_engine_bytes(metadata: EngineMetadata, engine_bytes: bytes, engine_path: str | Path) -> None:
    """The engine file must be the one its sidecar describes (an engine copied over another keeps a stale sidecar)."""
    digest = sha256_bytes(engine_bytes)
    if digest != metadata.engine_sha256:
        raise EngineCompatibilityError(
            f"{Path(engine_path).name} does not match its sidecar (sha256 {digest[:12]}..., sidecar says "
            f"{metadata.engine_sha256[:12]}...): the engine was replaced or modified after it was built",
            f"rebuild both files: {metadata.rebuild_command or 'odexport trt MODEL.onnx -o ENGINE'}",
        )


def check_compatible(metadata: EngineMetadata, machine: BuildTarget, engine_name: str = "the engine") -> list[str]:
    """Raise :class:`EngineCompatibilityError` when ``machine`` cannot run the engine; return warnings.

    Fatal: another TensorRT version (a plan file is tied to the exact version) or another compute
    capability (kernels are compiled for it).  A different GPU model of the same compute capability
    runs, with kernels timed on the other card: a warning.
    """
    built = metadata.target
    problems = []
    if built.tensorrt_version != machine.tensorrt_version:
        problems.append(f"it was built with TensorRT {built.tensorrt_version}, this machine has TensorRT {machine.tensorrt_version}")
    if built.compute_capability != machine.compute_capability:
        problems.append(
            f"it was built for {built.gpu_name} (compute capability {built.compute_capability}), this GPU is "
            f"{machine.gpu_name} (compute capability {machine.compute_capability})"
        )
    if problems:
        raise EngineCompatibilityError(
            f"{engine_name} cannot run here: " + "; ".join(problems)
            + " (a TensorRT engine runs only with the TensorRT version and GPU type it was built for)",
            f"rebuild it on this machine: {metadata.rebuild_command or 'odexport trt MODEL.onnx -o ENGINE'}",
        )
    warnings = []
    if built.gpu_name != machine.gpu_name:
        warnings.append(
            f"{engine_name} was built on {built.gpu_name} and runs on {machine.gpu_name} (same compute capability "
            f"{machine.compute_capability}): it works, but its kernels were timed on the other card; rebuild for best speed"
        )
    return warnings


def rebuild_command(
    source: str | Path,
    engine: str | Path,
    *,
    profiles=None,
    fp16: bool = False,
    workspace_gib: float | None = None,
    opt_level: int | None = None,
    timing_cache: str | Path | None = None,
    plugins=(),
    input_shape: tuple[int, ...] | None = None,
    tf32: bool = False,
    extra_args=(),
) -> str:
    """The ``odexport trt`` command line that rebuilds an engine with the same options."""
    args = ["odexport", "trt", str(source), "-o", str(engine)]
    args += list(extra_args)
    for p in profiles or []:
        args += ["--profile", p.text()]
    if fp16:
        args.append("--fp16")
    if tf32:
        args.append("--tf32")
    if workspace_gib is not None:
        args += ["--workspace", f"{workspace_gib:g}"]
    if opt_level is not None:
        args += ["--opt-level", str(opt_level)]
    if timing_cache is not None:
        args += ["--timing-cache", str(timing_cache)]
    for plugin in plugins:
        args += ["--plugin", str(plugin)]
    if input_shape is not None:
        args += ["--input-shape", "x".join(str(d) for d in input_shape)]
    return " ".join(shlex.quote(a) for a in args)
