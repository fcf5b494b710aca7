"""Reading checkpoint files safely: torch zip/legacy files, safetensors, and the pickle question.

Every torch file is read with ``torch.load(..., weights_only=True, map_location="cpu")``:

* ``weights_only=True`` restricts unpickling to tensors and plain containers, so a file cannot run
  code while it is read.  A file that stores Python objects beyond that (a whole pickled
  ``nn.Module``, a custom class) is refused with an error that names the objects, explains the risk
  and names ``--trust-pickle``; with ``trust_pickle=True`` it is fully unpickled (the user's
  explicit choice) and a pickled module contributes its ``state_dict()``.
* ``map_location="cpu"`` makes tensors saved from CUDA (e.g. the OSVAI/ODConv training script's
  0-dim CUDA ``acc``) load on a machine without a GPU.
* A few harmless metadata types that training scripts commonly save next to the weights
  (``argparse.Namespace``, numpy scalars and arrays) are allowed, so such files need no full unpickling.

The file kind is sniffed from its first bytes, not its name, so ``.pth.tar`` files that are really
zip archives (every torch >= 1.6 file) and renamed files both work, and a file that is not a
checkpoint at all fails with a clear one-liner instead of an unpickler message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odexport.errors import CheckpointError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pth.tar", ".pt.tar", ".tar", ".safetensors", ".bin", ".ckpt")

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_ORT_FORMAT_IDENTIFIER = b"ORTM"  # the flatbuffer file identifier of onnxruntime's .ort format, at bytes 4-8
_PICKLE_PROTO = 0x80  # pickle protocol >= 2 starts with the PROTO opcode
# torch.save(..., pickle_protocol=0 or 1, _use_new_zipfile_serialization=False) starts with its
# magic number pickled as a text long (both protocols write longs as text)
_LEGACY_TEXT_MAGIC = b"L119547037146038801333356L\n."
_RESAVE_HINT = "or re-save it as weights only: torch.save(model.state_dict(), 'weights.pt')"


@dataclass
class RawCheckpoint:
    """What a checkpoint file holds, read safely.

    ``obj`` is the unpickled top-level object (a dict for nearly every checkpoint; a tensor dict for
    safetensors).  ``file_format`` is one of ``torch-zip``, ``torch-legacy``, ``safetensors``.
    ``unpickled_module`` is the class name when a whole ``nn.Module`` was loaded with trust_pickle.
    """

    path: Path
    sha256: str
    size: int
    file_format: str
    obj: Any
    metadata: dict[str, str]
    unpickled_module: str | None = None


def sha256_of_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def looks_like_torch_file(head: bytes) -> bool:
    """``torch.save`` output, by its first bytes: a zip archive or a pickle (protocol >= 2)."""
    return head.startswith(_ZIP_MAGIC) or head.startswith(_EMPTY_ZIP_MAGIC) or (bool(head) and head[0] == _PICKLE_PROTO)


def looks_like_ort_format(head: bytes) -> bool:
    """onnxruntime's own .ort format (a flatbuffer), by its file identifier at bytes 4-8."""
    return head[4:8] == _ORT_FORMAT_IDENTIFIER


def ort_format_error(path, hint: str | None = None) -> CheckpointError:
    """What to say of a .ort file given where odexport reads a checkpoint or an ONNX file."""
    return CheckpointError(
        f"{path} is an ONNX Runtime format model (.ort, for minimal and mobile builds), which odexport does not read",
        hint or "gate the .onnx it was converted from (`odexport check CHECKPOINT model.onnx`): the conversion keeps "
                "the computation (docs/ops.md)",
    )


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto serialises ``ir_version`` (field 1, varint: tag 0x08; versions 3-20 so far
    fit one byte) first, then a length-delimited field such as ``producer_name`` (tag 0x12) or
    ``opset_import`` (tag 0x42)."""
    return len(head) >= 3 and head[0] == 0x08 and 3 <= head[1] <= 20 and head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42)


def _parses_as_onnx(path: Path) -> bool:
    """Whether onnx reads ``path`` as a model (asked only of a file named .onnx that is no checkpoint)."""
    try:
        import onnx

        onnx.load(str(path), load_external_data=False)
    except Exception:  # any failure means: not a model onnx can read
        return False
    return True


def read_checkpoint_file(path: str | os.PathLike, *, trust_pickle: bool = False) -> RawCheckpoint:
    """Read ``path`` without running code from it (unless ``trust_pickle``); see the module docstring.

    Raises :class:`CheckpointError` (one line with a fix) for a missing, empty, truncated,
    corrupted or foreign file, and for a file that needs full unpickling without ``trust_pickle``.
    """
    path = Path(path)
    _check_readable(path)
    head = _read_head(path)
    size = path.stat().st_size
    sha256 = sha256_of_file(path)
    if _looks_like_safetensors(head, size):
        obj, metadata = _read_safetensors(path)
        return RawCheckpoint(path, sha256, size, "safetensors", obj, metadata)
    if head.startswith(_ZIP_MAGIC) or head.startswith(_EMPTY_ZIP_MAGIC):
        file_format = "torch-zip"
    elif head and head[0] == _PICKLE_PROTO or _legacy_text_protocol(head) == 1:
        file_format = "torch-legacy"  # protocol 1 after its text magic number: torch.load reads it (fully unpickled)
    elif _is_torch_tar(path):  # torch < 0.4 wrote a tar of 'sys_info', 'pickle', 'storages', 'tensors'
        file_format = "torch-legacy"
    elif _looks_like_onnx(head) and path.suffix.lower() != ".onnx":  # an export under a checkpoint's name
        raise CheckpointError(
            f"{path} is an ONNX model named like a checkpoint ({path.suffix or 'no suffix'})",
            f"rename it to {path.stem}.onnx: `run`, `check` and `bench` take an export by that suffix "
            "(the commands that read trained weights need the checkpoint it was exported from)",
        )
    elif _looks_like_onnx(head) or (path.suffix.lower() == ".onnx" and _parses_as_onnx(path)):
        raise CheckpointError(
            f"{path} is an ONNX model, not a checkpoint (this command reads the trained weights)",
            "pass the checkpoint it was exported from; an export's metadata is in its sidecar "
            f"{path.name}.json, and `odexport check CHECKPOINT {path.name}` compares the two",
        )
    elif looks_like_ort_format(head):
        raise ort_format_error(path)
    elif path.suffix.lower() == ".onnx":  # named like an export, but neither an ONNX protobuf nor a checkpoint
        raise CheckpointError(
            f"{path} is neither a checkpoint nor a readable ONNX model (it starts with {head[:8]!r})",
            "pass the checkpoint your training script saved (this command reads the trained weights)",
        )
    elif _legacy_text_protocol(head) == 0:
        raise CheckpointError(
            f"{path} was written by torch.save with pickle protocol 0 in the legacy format, which torch.load "
            "itself cannot read back (its tensor references are text there)",
            "save the weights again from the training code with torch.save's defaults",
        )
    else:
        raise CheckpointError(
            f"{path} is not a checkpoint (neither a torch file nor safetensors; it starts with {head[:8]!r})",
            "pass the .pt/.pth/.pth.tar/.safetensors file your training script saved",
        )
    zip_kind = _torch_zip_kind(path) if file_format == "torch-zip" else None
    if zip_kind == "other":
        names = _zip_names(path)
        shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        raise CheckpointError(
            f"{path} is a zip archive but not a torch checkpoint (it holds {shown or 'nothing'})",
            "pass the .pt/.pth/.pth.tar/.safetensors file your training script saved",
        )
    if zip_kind in ("checkpoint", "torchscript"):
        _require_intact_zip(path)
    if zip_kind == "torchscript":
        return RawCheckpoint(path, sha256, size, "torchscript", _torchscript_weights(path, trust_pickle), {},
                             "TorchScript module (torch.jit.save)")
    obj = _torch_load(path, file_format, trust_pickle)
    modules: list[str] = []
    obj = _modules_to_weights(obj, modules)
    return RawCheckpoint(path, sha256, size, file_format, obj, {}, modules[0] if modules else None)


def _modules_to_weights(obj: Any, found: list[str], depth: int = 0) -> Any:
    """``obj`` with every pickled ``nn.Module`` -- the whole file, or an entry such as
    ``{'model': model, 'epoch': 3}`` (nested up to three dicts deep) -- replaced by its
    ``state_dict()``; their class names are appended to ``found``."""
    import torch

    if isinstance(obj, torch.nn.Module):
        found.append(f"{type(obj).__module__}.{type(obj).__qualname__}")
        return obj.state_dict()
    if isinstance(obj, dict) and depth < 3:
        converted = {key: _modules_to_weights(value, found, depth + 1) for key, value in obj.items()}
        if any(converted[key] is not value for key, value in obj.items()):
            return converted
    return obj  # untouched, so a state dict keeps its type and ``_metadata`` (version numbers for load_state_dict)


def _is_torch_tar(path: Path) -> bool:
    """A tar archive: torch's oldest format is accepted; any other tar is explained, not unpickled."""
    import tarfile

    try:
        if not tarfile.is_tarfile(path):
            return False
        with tarfile.open(path) as archive:
            names = archive.getnames()
    except (tarfile.TarError, OSError):
        return False
    if {"pickle", "storages", "tensors"} <= set(names):
        return True
    shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    raise CheckpointError(
        f"{path} is a tar archive (holding {shown or 'nothing'}), not a checkpoint",
        "extract it (tar -xf) and pass the checkpoint file inside",
    )


def _zip_names(path: Path) -> list[str] | None:
    """The member names of a zip archive; None when it cannot be read (truncated or damaged)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _require_intact_zip(path: Path) -> None:
    """Every member's CRC-32 against the one the archive recorded.  ``torch.load`` does not check
    them: a file with flipped bytes inside a tensor's data (a bad disk, an interrupted copy
    patched over) loads as a model with wrong weights and no error.  Reading the members costs one
    pass over the file, as the SHA-256 does."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        return  # unreadable as a whole: torch.load names that
    if bad is not None:
        raise CheckpointError(f"{path} is corrupted: its member {bad} fails the zip archive's CRC check (its bytes changed after saving)",
                              "copy the file again from where it was saved, or save it again from the training run")


def _torch_zip_kind(path: Path) -> str:
    """What a zip archive holds: ``checkpoint`` (``torch.save``: ``<name>/data.pkl``),
    ``torchscript`` (``torch.jit.save``: also ``constants.pkl`` and ``code/``), ``other`` (not a
    torch file), or ``damaged`` (unreadable as a zip: left to ``torch.load``'s own message)."""
    names = _zip_names(path)
    if names is None:
        return "damaged"
    if any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names):
        return "torchscript"
    return "checkpoint" if any(name.endswith("data.pkl") for name in names) else "other"


def _torchscript_weights(path: Path, trust_pickle: bool) -> dict:
    """The state dict of a ``torch.jit.save`` archive. Reading it means loading the archive's
    TorchScript program (``torch.jit.load``), whose methods run on load, so only with
    ``trust_pickle``; the module's parameters and buffers carry the names of the module it was
    scripted or traced from, which detection then reads like any checkpoint."""
    if not trust_pickle:
        raise CheckpointError(
            f"{path} is a TorchScript archive (torch.jit.save), not a weights file; reading its weights means loading "
            "its TorchScript program",
            f"if you trust the file's source pass --trust-pickle (trust_pickle=True), or save its weights once: "
            f"torch.save(torch.jit.load('{path.name}').state_dict(), 'weights.pt')",
        )
    import torch

    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as exc:
        raise CheckpointError(f"{path} is a TorchScript archive that torch.jit.load cannot load ({_first_line(exc)})",
                              "save the weights from the training code: torch.save(model.state_dict(), 'weights.pt')") from exc


def _check_readable(path: Path) -> None:
    if not path.exists():
        hint = "check the path"
        siblings = _similar_files(path)
        if siblings:
            hint += f"; files nearby: {', '.join(siblings)}"
        raise CheckpointError(f"checkpoint {path} does not exist", hint)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file", "pass the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)", "the save was interrupted or the copy failed; copy the file again")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path} is not readable", "check the file permissions")


def _similar_files(path: Path) -> list[str]:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return []
    found = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(CHECKPOINT_SUFFIXES))
    return found[:5]


def _legacy_text_protocol(head: bytes) -> int | None:
    """0 or 1 for a legacy torch file of a text-era pickle protocol (it starts with the magic number
    as a text long; then protocol 0 pickles the format version as text, ``I1001``, protocol 1 as a
    binary int), else None."""
    if not head.startswith(_LEGACY_TEXT_MAGIC):
        return None
    return 0 if head[len(_LEGACY_TEXT_MAGIC):len(_LEGACY_TEXT_MAGIC) + 1] == b"I" else 1


_SAFETENSORS_MAX_HEADER = 100_000_000  # the limit safetensors itself enforces on the JSON header


def _read_head(path: Path, n: int = 64) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(n)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors: 8-byte little-endian header length, then a JSON object.  A header longer than the
    file is still safetensors when the JSON starts as its writers start it (``{"``): a file cut inside
    its header is then named truncated by the reader, not "not a checkpoint"."""
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    if 0 < header_len <= size - 8:
        return head[8:9] == b"{"
    return 0 < header_len < _SAFETENSORS_MAX_HEADER and head[8:10] == b'{"'


def _read_safetensors(path: Path) -> tuple[dict, dict[str, str]]:
    try:
        from safetensors import safe_open
    except ImportError as exc:  # a declared dependency; only a broken install gets here
        from odexport._optional import require

        require("safetensors", f"reading {path.name}")
        raise exc
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is a corrupted or truncated safetensors file ({_first_line(exc)})",
            "copy the file again or re-save it with safetensors.torch.save_file",
        ) from exc
    return tensors, metadata


def _metadata_safe_globals() -> list:
    """Types training scripts save next to weights that are safe to rebuild (no code runs)."""
    import argparse

    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed = [argparse.Namespace, multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype]
    # every numeric dtype: np.random.get_state() (saved for reproducible resumes) holds uint32
    for name in ("float16", "float32", "float64", "longdouble", "complex64", "complex128", "int8", "int16", "int32", "int64",
                 "uint8", "uint16", "uint32", "uint64", "bool_", "str_", "bytes_"):
        allowed.append(type(np.dtype(name)))
    return allowed


def _torch_load(path: Path, file_format: str, trust_pickle: bool) -> Any:
    import pickle

    import torch

    if trust_pickle:
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except (pickle.UnpicklingError, RuntimeError) as exc:
                if "magic number" not in str(exc) or file_format != "torch-legacy":
                    raise
                with open(path, "rb") as handle:  # pickle.dump(state_dict, f): not torch.save's format, a plain pickle
                    return pickle.load(handle)  # noqa: S301 -- the user trusts this file (--trust-pickle)
        except (AttributeError, ModuleNotFoundError, ImportError) as exc:
            raise CheckpointError(
                f"{path} stores a pickled object whose class cannot be imported ({_first_line(exc)})",
                "make the module that defines it importable (PYTHONPATH), or load its state_dict with --factory",
            ) from exc
        except Exception as exc:
            raise _corrupted(path, file_format, exc) from exc
    try:
        allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        with (allow(_metadata_safe_globals()) if allow else contextlib.nullcontext()), warnings.catch_warnings():
            # torch warns about pickle protocols it may not support; the error below says what to do
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        unsafe = _unsafe_globals(path, file_format, message)
        if unsafe:
            what = ", ".join(unsafe[:3]) + (" ..." if len(unsafe) > 3 else "")
            raise CheckpointError(
                f"{path} stores Python objects ({what}), not only weights; loading them means full unpickling, "
                "which can run arbitrary code from the file",
                f"if you trust the file's source pass --trust-pickle (trust_pickle=True), {_RESAVE_HINT}",
            ) from exc
        if "Unsupported operand" in message and file_format == "torch-legacy":
            raise CheckpointError(
                f"{path} is a Python pickle that is not a torch checkpoint readable without full unpickling",
                f"if you trust the file's source pass --trust-pickle (trust_pickle=True), {_RESAVE_HINT}",
            ) from exc
        if "Unsupported operand" in message:  # torch.save(..., pickle_protocol=4 or 5): opcodes the safe reader lacks
            raise CheckpointError(
                f"{path} was saved with pickle protocol {_pickle_protocol(path)}, which PyTorch's weights-only reader cannot parse",
                "if you trust the file's source pass --trust-pickle (trust_pickle=True), or re-save it with torch.save's default "
                "protocol (no pickle_protocol argument)",
            ) from exc
        if "WeightsUnpickler error" in message:  # refused for an object odexport allows by name but torch names otherwise
            raise CheckpointError(
                f"{path} stores objects PyTorch's weights-only reader refuses ({_first_line_of(message, 'WeightsUnpickler error:')})",
                f"if you trust the file's source pass --trust-pickle (trust_pickle=True), {_RESAVE_HINT}",
            ) from exc
        raise _corrupted(path, file_format, exc) from exc
    except Exception as exc:
        raise _corrupted(path, file_format, exc) from exc


def _pickle_protocol(path: Path) -> str:
    """The protocol of a torch zip's ``data.pkl`` (its second byte), or ``4 or higher``."""
    import zipfile

    with contextlib.suppress(Exception), zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        with archive.open(name) as member:
            head = member.read(2)
        if head[:1] == bytes([_PICKLE_PROTO]):
            return str(head[1])
    return "4 or higher"


def _first_line_of(message: str, marker: str) -> str:
    """The sentence after ``marker`` in a long message (torch wraps its reason in paragraphs)."""
    rest = message.split(marker, 1)[-1].strip()
    return (rest.splitlines()[0] if rest else message).split(". ")[0].strip()[:200]


def _unsafe_globals(path: Path, file_format: str, message: str) -> list[str]:
    """Names of the Python objects that the weights-only unpickler refused."""
    import torch

    names: list[str] = []
    if file_format == "torch-zip":
        with contextlib.suppress(Exception):
            names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in _metadata_safe_globals()}
    # numpy moved its modules between releases (numpy.core -> numpy._core): an allowed type saved
    # under another module path is matched by its name; other numpy objects (a random Generator)
    # are named, after the file's own classes, which are the likelier cause
    allowed_names = {name.rsplit(".", 1)[-1] for name in allowed if name.startswith("numpy.")}
    names = [n for n in names if n not in allowed and not (n.startswith("numpy.") and n.rsplit(".", 1)[-1] in allowed_names)]
    names.sort(key=lambda n: n.startswith("numpy."))
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+)", message)
    return list(dict.fromkeys(names))


def _corrupted(path: Path, file_format: str, exc: Exception) -> CheckpointError:
    text = _first_line(exc)
    full = str(exc)
    kind = "zip archive" if file_format == "torch-zip" else "torch file"
    # "unexpected EOF": a legacy file cut inside its tensor data (torch's own RuntimeError)
    if ("central directory" in full or isinstance(exc, (EOFError, IndexError))
            or any(word in full.lower() for word in ("truncated", "unexpected eof"))):
        problem = f"{path} is a truncated or corrupted {kind} ({text})"
    elif "not in a subdirectory" in full or "data.pkl" in full:
        problem = f"{path} is a zip archive but not a torch checkpoint ({text})"
    else:
        problem = f"{path} could not be read as a torch checkpoint ({type(exc).__name__}: {text})"
    return CheckpointError(problem, "the file is damaged or incomplete; copy or save it again")


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch appends paragraphs of advice)."""
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0].strip()
    sentence = line.split(". ")[0].rstrip(".")
    return sentence[:200]


def describe_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """safetensors metadata values are strings; decode the JSON ones for display."""
    decoded: dict[str, Any] = {}
    for key, value in metadata.items():
        try:
            decoded[key] = json.loads(value)
        except (TypeError, ValueError):
            decoded[key] = value
    return decoded
