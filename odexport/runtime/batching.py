"""Feed a set of samples through a runner at an exact batch size, and make or load those samples.

Every chunk is exactly ``batch_size`` long (the last one is filled up with samples from the start)
because the point of running several batch sizes is to catch an artifact that only accepts one:
a shorter last chunk would test a batch size nobody asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from odexport.errors import InputError
from odexport.runtime.base import InferenceError, Runner


def run_batched(runner: Runner, samples: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Outputs for every sample in ``samples`` (N, ...), computed in chunks of exactly ``batch_size``.

    Raises :class:`InferenceError` (naming the batch size) when the runner rejects or fails a chunk.
    """
    if batch_size < 1:
        raise InputError(f"batch size {batch_size} is not positive", "use batch sizes >= 1")
    count = samples.shape[0]
    if count == 0:
        raise InputError("no input samples", "pass --samples N with N >= 1 or a non-empty --inputs file")
    collected: dict[str, list[np.ndarray]] = {}
    for start in range(0, count, batch_size):
        index = np.arange(start, start + batch_size) % count
        try:
            outputs = runner.infer(samples[index])
        except InferenceError:
            raise
        except InputError as exc:  # shape validation against a fixed dim: the batch is baked in
            raise InferenceError(exc.message, exc.hint) from exc
        for name, value in outputs.items():
            collected.setdefault(name, []).append(np.asarray(value))
    result = {}
    for name, parts in collected.items():
        if parts[0].ndim == 0 or parts[0].shape[0] != batch_size:
            raise InferenceError(
                f"output '{name}' has shape {parts[0].shape} for a batch of {batch_size}: its first axis is not the batch",
                "the graph may have a baked-in batch; re-export with a dynamic batch axis",
            )
        result[name] = np.concatenate(parts, axis=0)[:count]
    return result


def non_finite(values: np.ndarray) -> tuple[int, int] | None:
    """``(how many NaN/inf values, the first sample holding one)`` of a batch-first array, or None."""
    bad = ~np.isfinite(np.asarray(values))
    if not bad.any():
        return None
    return int(bad.sum()), int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])


@dataclass
class Samples:
    """Inputs for a parity run: ``x`` (N, C, H, W) float32, optional integer ``labels`` (N,)."""

    x: np.ndarray
    labels: np.ndarray | None
    source: str
    seed: int | None = None
    note: str | None = None  # what the user should know about these inputs (integer images run unscaled)

    def describe(self) -> dict:
        return {
            "source": self.source,
            "count": int(self.x.shape[0]),
            "shape": list(self.x.shape[1:]),
            "seed": self.seed,
            "labels": self.labels is not None,
        }


def random_samples(count: int, shape: tuple[int, ...], seed: int = 0) -> Samples:
    """``count`` standard-normal samples of ``shape`` (C, H, W), from a seeded generator.

    Standard normal matches what a normalised image looks like to the first layer (zero mean,
    unit variance per channel), so every path through the network is exercised.
    """
    if count < 1:
        raise InputError(f"--samples {count} is not positive", "use --samples N with N >= 1")
    if seed < 0:
        raise InputError(f"--seed {seed} is negative", "use --seed N with N >= 0")
    rng = np.random.default_rng(seed)
    return Samples(rng.standard_normal((count, *shape)).astype(np.float32), None, "random", seed)


def load_samples(path: str | Path, shape: tuple[int, ...] | None = None, option: str = "--inputs") -> Samples:
    """Inputs (and labels, when the file has them) from ``.npy``, ``.npz`` or ``.pt``, as
    :func:`odexport.checkpoint.arrays.read_input_file` reads them.

    A single sample without a batch axis is accepted when ``shape`` says what one sample is.
    ``option`` is the command-line option that named the file, for the messages.
    """
    from odexport.checkpoint.arrays import read_input_file

    x, labels = read_input_file(path, option)
    return samples_from_array(x, shape, labels, source=str(path))


def samples_from_array(x, shape: tuple[int, ...] | None = None, labels=None, *, source: str = "the array") -> Samples:
    """Inputs held in memory (an array or tensor, ``(N, C, H, W)`` or one ``(C, H, W)`` sample when
    ``shape`` says what one sample is), checked as a file's are; ``source`` names them in messages."""
    from odexport.checkpoint.arrays import integer_input_note

    path = source  # the messages name the file, or the array
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"inputs in {path} have dtype {x.dtype}", "store float32 images (N, C, H, W)")
    if shape is not None and x.ndim == len(shape):
        x = x[None]
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        if len(shape) == 3 and tuple(x.shape[1:]) == (shape[1], shape[2], shape[0]):
            raise InputError(f"inputs in {path} have sample shape {tuple(x.shape[1:])}: channels last, the model expects {tuple(shape)}",
                             "store them channels first: np.save(path, x.transpose(0, 3, 1, 2))")
        raise InputError(f"inputs in {path} have sample shape {tuple(x.shape[1:])}, the model expects {tuple(shape)}",
                         "pass inputs of the model's shape (N, C, H, W), or set --input-shape")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 2:  # one-hot
            labels = labels.argmax(axis=1)
        if labels.shape != (x.shape[0],):
            raise InputError(f"labels in {path} have shape {labels.shape} for {x.shape[0]} samples",
                             f"store one integer class per sample: shape ({x.shape[0]},)")
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"labels in {path} have dtype {labels.dtype}, not integers",
                             "store class indices as integers (labels.astype(np.int64))")
    found = non_finite(x)
    if found:
        count, first = found
        raise InputError(f"inputs in {path} hold {count} NaN/inf values (the first in sample {first})",
                         "clean or drop those samples: a NaN input makes the reference's output NaN too, and NaN against NaN proves nothing")
    note = integer_input_note(x, path)
    with np.errstate(over="ignore"):  # said below, by sample, instead of numpy's warning
        x = np.ascontiguousarray(x, dtype=np.float32)
    found = non_finite(x)  # a float64 value beyond float32's range, now inf
    if found:
        count, first = found
        raise InputError(f"inputs in {path} hold {count} values beyond float32's range (|x| > 3.4e38; the first in sample {first})",
                         "give the inputs at the scale the model was trained on: the model computes in float32")
    return Samples(x, labels, source, note=note)
