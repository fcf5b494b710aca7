"""Model inputs and outputs as arrays: read ``.npy``/``.npz``/``.pt`` inputs (and labels), write outputs atomically.

Inputs are read without unpickling (``np.load(allow_pickle=False)``, ``torch.load(weights_only=True)``).
Outputs are written to a temporary file in the destination folder and renamed into place, so a
failure never leaves a half-written file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from odexport._files import atomic_path, output_folder
from odexport.errors import InputError

INPUT_KEYS = ("x", "input", "inputs", "images", "data")
LABEL_KEYS = ("y", "labels", "label", "targets", "target")
INPUT_SUFFIXES = (".npy", ".npz", ".pt", ".pth")
_HINT = "save the input batch (N, C, H, W) with np.save('x.npy', x), np.savez('x.npz', x=x, y=labels) or torch.save(x, 'x.pt')"


def read_input_file(path: str | os.PathLike, option: str = "--inputs") -> tuple[np.ndarray, np.ndarray | None]:
    """``(inputs, labels or None)`` stored in ``path``, read without unpickling; the one reader of
    input files (``run --input``, ``check --inputs``, ``reparam --calibration``).

    ``.npy``: one array.  ``.npz``, or ``.pt``/``.pth`` holding a dict of tensors: the inputs are the
    first of :data:`INPUT_KEYS` present, else the only array that is not labels; the labels the
    first of :data:`LABEL_KEYS`.  ``.pt``/``.pth`` may also hold one tensor.  ``option`` is the
    command-line option that named the file, for the messages."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"input file {path} is a directory", f"pass the .npy, .npz or .pt file inside it to {option}")
    if not path.is_file():
        raise InputError(f"input file {path} does not exist", f"check the path given to {option}")
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise InputError(f"input file {path} is not .npy, .npz or .pt", _HINT)
    if path.stat().st_size == 0:
        raise InputError(f"input file {path} is empty", _HINT)
    from odexport._memory import require_file_fits

    require_file_fits(path, advice=f"pass at most {{most}} samples in {option}")
    try:
        kind = _stored_kind(path)
        if kind == ".npy":
            return np.load(path, allow_pickle=False), None
        if kind == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return _inputs_and_labels(dict(data.items()), path)
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, Mapping):
            x, labels = _inputs_and_labels(dict(obj), path)
            what = f"the entry of {path} read as the input ({next(k for k, v in obj.items() if v is x)!r}) is"
        else:
            x, labels, what = obj, None, f"{path} holds"
        if not isinstance(x, torch.Tensor):
            kind = type(x).__name__
            raise InputError(f"{what} {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a tensor", _HINT)
        integer = not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
        x = x.detach().numpy() if integer else x.detach().float().numpy()  # integers kept: uint8 images get their note
        return x, None if labels is None else np.asarray(labels.detach().numpy() if isinstance(labels, torch.Tensor) else labels)
    except InputError:
        raise
    except Exception as exc:  # a damaged or cut file, pickled objects, a torch file of another kind
        raise InputError(f"cannot read input file {path} ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})",
                         "the file may be damaged or incomplete, or hold pickled objects: " + _HINT) from exc


def _stored_kind(path: Path) -> str:
    """What ``path`` holds by its first bytes, whatever its suffix says (a ``torch.save`` named
    ``.npy`` read as an array of file names): ``.npy``, ``.npz`` or ``.pt``."""
    import zipfile

    with open(path, "rb") as handle:
        head = handle.read(6)
    if head == b"\x93NUMPY":
        return ".npy"
    if head[:2] == b"PK" and zipfile.is_zipfile(path):  # np.savez and torch.save both write zip archives
        with zipfile.ZipFile(path) as archive:
            return ".pt" if any(name.endswith("data.pkl") for name in archive.namelist()) else ".npz"
    return {".npy": ".npy", ".npz": ".npz"}.get(path.suffix.lower(), ".pt")  # torch's legacy format, or a damaged file


def read_input_array(path: str | os.PathLike, option: str = "--input", notes: list[str] | None = None) -> np.ndarray:
    """The inputs stored in ``path`` (:func:`read_input_file`) as a float32 array; ``notes`` gets
    :func:`integer_input_note`'s note, if any."""
    array = np.asarray(read_input_file(path, option)[0])
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"input in {path} has dtype {array.dtype}, not numbers", _HINT)
    note = integer_input_note(array, path) if notes is not None else None
    if note:
        notes.append(note)
    return np.ascontiguousarray(array, dtype=np.float32)


def integer_input_note(array, source) -> str | None:
    """A note for integer inputs beyond 0/1 (uint8 images, 0..255), which run unscaled: a model
    trained on images scaled to [0, 1] or normalised then sees values up to 255x too large, and
    parity against the same inputs still passes, so nothing else would say so."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer) or array.size == 0:
        return None
    low, high = int(array.min()), int(array.max())
    if high <= 1 and low >= -1:
        return None
    return (f"inputs in {source} are {array.dtype} ({low}..{high}) and run at that scale: if the model was trained on images "
            "scaled to [0, 1] or normalised, apply the same transform first and save float32")


def _inputs_and_labels(mapping: dict, path: Path):
    # labels are class indices (N,) or one-hot (N, classes): an image batch named y is the input
    labels_key = next((key for key in LABEL_KEYS if key in mapping and _rank(mapping[key]) <= 2), None)
    key = next((key for key in INPUT_KEYS if key in mapping), None)
    if key is None:
        rest = [name for name in mapping if name != labels_key]
        if not rest:
            raise InputError(f"{path} holds no input array (only labels {labels_key!r})" if labels_key else f"{path} holds no arrays", _HINT)
        if len(rest) > 1:
            raise InputError(f"{path} holds several arrays ({', '.join(map(str, rest[:6]))}) and none is named x or input",
                             "name the input batch x (np.savez(path, x=inputs, y=labels))")
        key = rest[0]
    return mapping[key], None if labels_key is None else mapping[labels_key]


def _rank(value) -> int:
    return value.ndim if hasattr(value, "ndim") else np.ndim(value)


def check_input_batch(array: np.ndarray, channels: int | None, *, source: str = "input") -> None:
    """An image batch must be (N, C, H, W) with the model's channel count (a single (C, H, W) sample
    is given its batch axis by the caller, which knows the model's channels)."""
    if array.ndim == 3 and channels is not None and array.shape[0] != channels:
        raise InputError(f"{source} has shape {tuple(array.shape)} (rank 3): not one sample of the model's {channels} channels",
                         f"pass a batch of shape (N, {channels}, H, W), or one sample ({channels}, H, W)")
    if array.ndim != 4:
        fix = "add the batch axis (x[None])" if array.ndim == 3 else "pass a batch of shape (N, C, H, W)"
        raise InputError(f"{source} has shape {tuple(array.shape)} (rank {array.ndim}); the model needs rank 4 (N, C, H, W)", fix)
    if array.shape[0] == 0:
        raise InputError(f"{source} has an empty batch {tuple(array.shape)}", "pass at least one sample")
    if channels is not None and array.shape[1] != channels:
        raise InputError(
            f"{source} has {array.shape[1]} channels (shape {tuple(array.shape)}); the model expects {channels}",
            f"pass inputs of shape (N, {channels}, H, W) (channels first)",
        )


def save_array_atomic(path: str | os.PathLike, outputs: np.ndarray | Mapping[str, np.ndarray]) -> Path:
    """Write one array (``.npy``) or named arrays (``.npz``) to ``path`` via a temporary file + ``os.replace``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise InputError(f"output file {path} must end in .npy (one output) or .npz (all outputs by name)", "e.g. -o out.npy")
    if isinstance(outputs, Mapping):
        if suffix == ".npy":
            if len(outputs) != 1:
                raise InputError(f"the model has {len(outputs)} outputs ({', '.join(outputs)}); .npy holds one",
                                 "write them all with -o out.npz")
            outputs = next(iter(outputs.values()))
    elif suffix == ".npz":
        outputs = {"output": outputs}
    output_folder(path, example="out.npz")
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        if isinstance(outputs, Mapping):
            np.savez(handle, **{k: np.asarray(v) for k, v in outputs.items()})
        else:
            np.save(handle, np.asarray(outputs), allow_pickle=False)
    return path
