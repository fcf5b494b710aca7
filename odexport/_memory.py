"""Refuse work that cannot fit in this machine's memory -- a batch, a set of random samples, the
outputs ``check`` keeps, an input file -- before anything is allocated for it.

On Linux a process that outgrows the memory it may use is killed by the kernel (exit 137, no
message, no report), so a batch size that cannot fit has to be caught before the arrays exist.
The estimate here is a **lower bound**: what one inference must hold at once, never more, so a
refusal is certain and a batch that passes may still be too large (the runtimes' arenas,
workspaces and intermediate tensors a graph keeps alive are not counted).

For a batch of ``b`` samples the bound is ``b * max(step, generation)`` plus what the caller already
holds (``check``'s sample set), where ``step`` is the largest, over the model's steps (a module's
forward, an ONNX node), of the bytes of that step's inputs and outputs for one sample -- both must
exist while the step runs -- and ``generation`` is the bytes of the random float64 draw and its
float32 copy for one sample (``numpy``'s ``standard_normal`` draws float64), or of one float32
copy where the batch is cut from samples already held. ``check`` also keeps every output it
compares until the report: :func:`require_outputs_fit` counts those once the reference has shown
their size.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from odexport.errors import InputError

#: A step of a CNN holds a few times its input per sample (a ResNet stem ~6x, a MobileNetV2
#: expansion ~9x, a full-resolution segmentation head of 150 classes ~50x). A batch whose float32
#: input times this still fits is not analysed (a forward with hooks, ONNX shape inference).
STEP_TO_INPUT_CEILING = 256


def available_memory() -> int | None:
    """Bytes this process can still take: ``MemAvailable`` plus ``SwapFree`` from
    ``/proc/meminfo`` (a batch that swaps is slow, not killed), lowered to the room left under the
    process's memory cgroup limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) where one is
    set. None where neither can be read (not Linux)."""
    facts = memory_facts()
    system = None if facts["meminfo_available"] is None else facts["meminfo_available"] + (facts["swap_free"] or 0)
    candidates = [v for v in (system, facts["cgroup_room"]) if v is not None]
    return min(candidates) if candidates else None


def memory_facts(meminfo: str = "/proc/meminfo") -> dict:
    """What :func:`available_memory` reads, in bytes (None where unknown): ``meminfo_available``,
    ``swap_free``, ``cgroup_limit`` and ``cgroup_room`` (limit minus usage) -- for ``odexport doctor``."""
    facts = {"meminfo_available": None, "swap_free": None, "cgroup_limit": None, "cgroup_room": None}
    fields = {"MemAvailable:": "meminfo_available", "SwapFree:": "swap_free"}
    try:
        with open(meminfo) as handle:
            for line in handle:
                name = line.split(maxsplit=1)[0] if line.strip() else ""
                if name in fields:
                    facts[fields[name]] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_limit()
    if limit is not None:
        facts["cgroup_limit"], used = limit
        facts["cgroup_room"] = max(facts["cgroup_limit"] - used, 0)
    return facts


def _cgroup_limit() -> tuple[int, int] | None:
    """``(limit, usage)`` of this process's memory cgroup, or None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # cgroup v2: one unified hierarchy
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            limit, usage = base / "memory.max", base / "memory.current"
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limit, usage = base / "memory.limit_in_bytes", base / "memory.usage_in_bytes"
        else:
            continue
        try:
            cap, used = limit.read_text().strip(), int(usage.read_text().strip())
        except (OSError, ValueError):
            continue
        if cap == "max" or not cap.isdigit() or int(cap) >= 1 << 60:  # "max" (v2) or the v1 page-rounded 2^63
            continue
        return int(cap), used
    return None


def onnx_step_bytes(model) -> int:
    """Bytes one sample needs at the largest node of ``model`` (a path, bytes or ``ModelProto``):
    the sum of the node's inputs and outputs whose shape ONNX shape inference knows and whose first
    axis is the graph's dynamic batch (per sample: the product of the other axes times the item
    size). Nodes inside subgraphs (``If`` branches) count too. 0 where nothing is known (a
    fixed-batch graph, shapes that inference cannot follow)."""
    import onnx
    from onnx import shape_inference

    try:
        if isinstance(model, (str, os.PathLike)):
            proto = onnx.load(os.fspath(model), load_external_data=False)
        elif isinstance(model, (bytes, bytearray)):
            proto = onnx.load_from_string(bytes(model))
        else:
            proto = model
        inferred = shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # an unreadable model fails where it is run, with its own message
        return 0
    batch_names = {dims[0].dim_param for dims in (v.type.tensor_type.shape.dim for v in inferred.graph.input)
                   if len(dims) and dims[0].HasField("dim_param")}
    if not batch_names:
        return 0
    largest = 0
    for graph, known in _graphs_with_shapes(inferred.graph, {}):
        for node in graph.node:
            names = {name for name in (*node.input, *node.output) if name}
            largest = max(largest, sum(_per_sample_bytes(known.get(name), batch_names) for name in names))
    return largest


def _graphs_with_shapes(graph, outer: dict):
    """``(graph, name -> value info)`` for ``graph`` and every subgraph below it (names of an
    outer graph stay visible inside, as in ONNX scoping)."""
    known = dict(outer)
    for value in (*graph.input, *graph.value_info, *graph.output):
        known[value.name] = value
    yield graph, known
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _graphs_with_shapes(sub, known)


def _per_sample_bytes(value, batch_names: set) -> int:
    import onnx

    if value is None or not value.type.HasField("tensor_type"):
        return 0
    dims = value.type.tensor_type.shape.dim
    if len(dims) < 1 or dims[0].dim_param not in batch_names or not all(d.HasField("dim_value") for d in dims[1:]):
        return 0
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        return 0
    return math.prod(d.dim_value for d in dims[1:]) * itemsize


def require_batch_fits(batch_size: int, sample_shape, steps, *, held: int = 0, drawn: bool = True, carried: int = 0,
                       advice: str = "use --batch-sizes of at most {most}", available: int | None = None) -> None:
    """Raise an :class:`InputError` when a batch of ``batch_size`` samples of ``sample_shape``
    cannot fit: ``held`` bytes already taken by the caller plus ``batch_size`` times the larger of
    the batch's own bytes (``drawn``: the random float64 draw and its float32 copy; else one float32
    copy) and what each of ``steps`` (callables ``sample_shape -> bytes``, e.g. a runner's
    :meth:`~odexport.runtime.base.Runner.step_bytes`, called only near the limit) says its largest
    step holds per sample (the bound in this module's docstring), plus ``carried`` bytes per sample
    held throughout (an input file's arrays, not loaded yet when this is asked). ``advice`` is the hint,
    formatted with ``most``, the largest batch the bound admits. ``available`` defaults to
    :func:`available_memory`; where that is unknown nothing is refused."""
    available = available_memory() if available is None else available
    if available is None or batch_size <= 0:
        return
    sample = math.prod(int(d) for d in sample_shape)
    generation = sample * (8 + 4 if drawn else 4)  # the float64 draw and its float32 copy, or the copy alone
    if held + batch_size * (carried + max(generation, sample * 4 * STEP_TO_INPUT_CEILING)) <= available:
        return  # far from the limit: no model's step comes near it
    per_sample = carried + max([generation, *(step(tuple(sample_shape)) for step in steps)])
    need = held + batch_size * per_sample
    if need <= available:
        return
    most = max((available - held) // per_sample, 0)
    hint = _hint(advice, most)
    held_part = f", {format_bytes(held)} of it the samples themselves" if held * 10 >= need else ""
    shape = "x".join(map(str, sample_shape))
    raise InputError(f"a batch of {batch_size} samples of shape {shape} needs at least "
                     f"{format_bytes(need)} of memory{held_part}; {format_bytes(available)} is available here", hint)


def require_samples_fit(count: int, sample_shape, *, advice: str = "use --samples of at most {most}", available: int | None = None) -> None:
    """Raise an :class:`InputError` when ``count`` random samples cannot be drawn: the float64 draw
    and its float32 copy exist together. ``advice`` is the hint, formatted with ``most``."""
    available = available_memory() if available is None else available
    if available is None or count <= 0:
        return
    per_sample = math.prod(int(d) for d in sample_shape) * (8 + 4)
    if count * per_sample <= available:
        return
    shape, need, most = "x".join(map(str, sample_shape)), count * per_sample, max(available // per_sample, 1)
    raise InputError(f"{count} random samples of shape {shape} need at least {format_bytes(need)} of memory to draw; "
                     f"{format_bytes(available)} is available here", advice.format(most=most))


def require_outputs_fit(count: int, per_sample: int, copies: int, *, held: int = 0, advice: str = "use --samples of at most {most}",
                        available: int | None = None) -> None:
    """Raise an :class:`InputError` when ``copies`` sets of outputs for ``count`` samples
    (``per_sample`` bytes each) cannot be kept on top of ``held`` bytes: ``check`` keeps the
    reference's outputs and each candidate's at each batch size until the report, which for a
    dense-prediction model (an output map per sample) can outgrow the samples themselves."""
    available = available_memory() if available is None else available
    if available is None or count <= 0 or per_sample <= 0:
        return
    need = held + count * per_sample * copies
    if need <= available:
        return
    most = max((available - held) // (per_sample * copies), 0)
    hint = _hint(advice, most)
    each = format_bytes(count * per_sample)
    raise InputError(f"comparing {count} samples keeps {copies} copies of their outputs ({each} each: the reference's, "
                     f"and each candidate's at each batch size), at least {format_bytes(need)} with the samples; "
                     f"{format_bytes(available)} is available here", hint)


def stored_arrays(path) -> list[tuple[tuple[int, ...], np.dtype]] | None:
    """``(shape, dtype)`` of every array in a ``.npy`` or ``.npz`` file, read from the headers
    alone (nothing is loaded), or of every tensor in a ``.pt``/``.pth`` file (a tensor or a mapping
    of tensors), whose storages are memory-mapped, not read; None for other files, headers that
    cannot be read, a header promising more bytes than the file (or the zip member) holds, a
    ``.pt`` file in the legacy (non-zip) format, other objects, or a tensor type numpy has no name
    for (bfloat16) -- the load reports what it can, with its own message."""
    def header(handle, stored: int):
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(handle)
        shape, dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        if math.prod(shape) * dtype.itemsize > stored - handle.tell():
            raise ValueError("truncated")  # a header promising more than the file holds: the load names that
        return shape, dtype

    suffix = os.fspath(path).lower().rsplit(".", 1)[-1]
    try:
        if suffix == "npy":
            with open(path, "rb") as handle:
                return [header(handle, os.path.getsize(path))]
        if suffix == "npz":
            with zipfile.ZipFile(path) as archive:
                found = []
                for info in archive.infolist():
                    if info.filename.endswith(".npy"):
                        with archive.open(info) as handle:
                            found.append(header(handle, info.file_size))
                return found
        if suffix in ("pt", "pth"):
            return _stored_tensors(path)
    except Exception:  # a damaged or foreign file: its load says what is wrong
        return None
    return None


def _stored_tensors(path) -> list[tuple[tuple[int, ...], np.dtype]] | None:
    """``(shape, dtype)`` of the tensors a ``.pt`` input holds, one per storage (the same tensor
    saved under two keys is loaded once). ``mmap=True`` maps the storages instead of reading them
    (only the small pickled structure is read); a legacy-format file, which cannot be mapped,
    raises and is left to the load."""
    import torch

    stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    tensors = list(stored.values()) if isinstance(stored, Mapping) else [stored]
    if not tensors or not all(isinstance(tensor, torch.Tensor) for tensor in tensors):
        return None
    largest_view = {}  # tensors sharing a storage are loaded once: count the largest view of each
    for tensor in tensors:
        storage = tensor.untyped_storage().data_ptr()
        if storage not in largest_view or tensor.nbytes > largest_view[storage].nbytes:
            largest_view[storage] = tensor
    return [(tuple(tensor.shape), torch.empty(0, dtype=tensor.dtype).numpy().dtype) for tensor in largest_view.values()]


def file_load_bytes(path) -> tuple[int, int, tuple[int, ...], np.dtype] | None:
    """What loading an input file takes, from its headers (:func:`stored_arrays`): ``(bytes with
    the float32 copy of its largest array where that is stored in another type, bytes of all
    arrays, shape and dtype of the largest)``, or None when the file cannot be described."""
    arrays = stored_arrays(path)
    if not arrays:
        return None
    sizes = [(math.prod(shape) * dtype.itemsize, shape, dtype) for shape, dtype in arrays]
    loaded = sum(size for size, _, _ in sizes)
    _, shape, dtype = max(sizes, key=lambda entry: entry[0])
    copy = math.prod(shape) * 4 if dtype != "float32" else 0
    return loaded + copy, loaded, shape, dtype


def require_file_fits(path, *, advice: str, available: int | None = None) -> None:
    """Raise an :class:`InputError` when the arrays of the ``.npy``/``.npz``/``.pt`` file ``path`` cannot
    be loaded: all of its arrays, plus a float32 copy of the largest where it is stored in another
    type (inputs run as float32). Loading a file larger than the memory left ends in the OOM
    killer, not in an exception. ``advice`` is the hint, formatted with ``most``, the number of
    samples (the largest array's first axis) that would fit."""
    described = file_load_bytes(path)
    available = available_memory() if available is None else available
    if described is None or available is None:
        return
    need, loaded, shape, dtype = described
    copy = need - loaded
    if need <= available:
        return
    count = shape[0] if shape else 1
    most = int(available // (need / count)) if count else 0
    hint = _hint(advice, most)
    converted = f" and a float32 copy of its {dtype} input" if copy else ""
    raise InputError(f"{path} holds {format_bytes(loaded)} of arrays{converted} ({count} samples): at least {format_bytes(need)} to load; "
                     f"{format_bytes(available)} is available here", hint)


def _hint(advice: str, most: int) -> str:
    """The caller's advice for the largest size that fits, or what is left when not even one does."""
    return advice.format(most=most) if most >= 1 else "free memory, or run on a machine with more"


def format_bytes(count: int) -> str:
    """``count`` bytes in GiB (one decimal) from a tenth of one up, else MiB or KiB."""
    if count >= 2**30 / 10:
        return f"{count / 2**30:.1f} GiB"
    return f"{count / 2**20:.0f} MiB" if count >= 2**20 else f"{count / 2**10:.0f} KiB"
