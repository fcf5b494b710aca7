"""Model inputs and outputs as arrays: read ``.npy``/``.npz``/``.pt`` inputs, write outputs atomically.

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

INPUT_KEYS = ("input", "x", "inputs", "images", "data")
INPUT_SUFFIXES = (".npy", ".npz", ".pt", ".pth")
_HINT = "save the input batch (N, C, H, W) with np.save('x.npy', x), np.savez('x.npz', input=x) or torch.save(x, 'x.pt')"


def read_input_array(path: str | os.PathLike) -> np.ndarray:
    """The input batch stored in ``path`` as a float32 array (see :data:`INPUT_KEYS` for containers)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"input file {path} is a directory", "pass the input file inside it to --input")
    if not path.is_file():
        raise InputError(f"input file {path} does not exist", "check the path given to --input")
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise InputError(f"input file {path} is not .npy, .npz or .pt", _HINT)
    from odexport._memory import require_file_fits

    require_file_fits(path, advice="split the input into files of at most {most} samples and run each")
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                array = _pick(dict(data.items()), path)
        else:
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            what = f"{path} holds"
            if isinstance(obj, Mapping):
                picked = _pick(dict(obj), path)
                what = f"the entry of {path} read as the input ({next(k for k, v in obj.items() if v is picked)!r}) is"
                obj = picked
            if not isinstance(obj, torch.Tensor):
                kind = type(obj).__name__
                raise InputError(f"{what} {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a tensor", _HINT)
            array = obj.detach().float().numpy()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read input file {path} ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})", _HINT) from exc
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"input in {path} has dtype {array.dtype}, not numbers", _HINT)
    return np.ascontiguousarray(array, dtype=np.float32)


def _pick(mapping: dict, path: Path):
    for key in INPUT_KEYS:
        if key in mapping:
            return mapping[key]
    if len(mapping) == 1:
        return next(iter(mapping.values()))
    if not mapping:
        raise InputError(f"{path} holds no arrays", _HINT)
    raise InputError(f"{path} holds several arrays ({', '.join(map(str, list(mapping)[:6]))}) and none is named 'input'",
                     "name the input batch 'input' (np.savez(path, input=x))")


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
