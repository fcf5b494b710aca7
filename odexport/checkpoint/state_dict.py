"""From what a checkpoint file holds to a clean ``state_dict``.

Training scripts wrap the weights in different containers:

* a bare ``state_dict`` (kaijieshi7's users; safetensors files);
* ``{'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer'}`` (OSVAI/ODConv ``main.py``);
* ``{'model', 'optimizer', 'scheduler', 'epoch'}`` (TArdelean ``utils.save_checkpoint``);
* ``{'model', 'model_ema'|'ema'|'state_dict_ema', ...}`` (timm-style training with EMA).

The weights are the first of ``state_dict``, ``model``, ``model_state_dict``, ``net``, ``network``,
``module`` that holds tensors; everything else (optimizer, scheduler, epoch, metrics, args) is
ignored and reported.  **EMA choice:** the plain weights are used by default -- they are what the
reference scripts evaluate (``--evaluate --resume``) -- and the EMA weights only when asked
(``prefer_ema=True``) or when they are the only weights in the file.  Which entry was used is
recorded, as is whether an EMA was available.

Wrapper prefixes are stripped when every key carries them: ``module.`` (DataParallel/DDP; every
OSVAI/ODConv key has it) and ``_orig_mod.`` (``torch.compile``), in any order and repeated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from odexport.errors import CheckpointError

WEIGHT_ENTRIES = ("state_dict", "model", "model_state_dict", "net", "network", "module", "weights", "params")
EMA_ENTRIES = ("model_ema", "ema", "state_dict_ema", "ema_state_dict", "ema_model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class ExtractedWeights:
    """A clean state_dict and how it was found."""

    state_dict: dict[str, Any]
    entry: str  # "<root>", "state_dict", "model", "model_ema", "state_dict.model", ...
    ignored_entries: list[str] = field(default_factory=list)
    stripped_prefixes: list[str] = field(default_factory=list)
    ema_entry: str | None = None  # an EMA entry present in the file (used or not)
    used_ema: bool = False
    dropped_non_tensors: list[str] = field(default_factory=list)
    #: tensors that are bookkeeping, not weights, dropped: what they are -> how many
    dropped_counters: dict[str, int] = field(default_factory=dict)


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _tensor_share(mapping: Mapping) -> float:
    if not mapping:
        return 0.0
    return sum(_is_tensor(v) for v in mapping.values()) / len(mapping)


def _is_state_dict(obj: Any) -> bool:
    """A mapping of string keys that is (almost) all tensors."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and _tensor_share(obj) >= 0.5
        and any(_is_tensor(v) and v.dim() >= 1 for v in obj.values())
    )


def _find_weights(obj: Any, names: tuple[str, ...], path: str, depth: int) -> tuple[str, Mapping] | None:
    if not isinstance(obj, Mapping) or depth > 3:
        return None
    for name in names:
        if name in obj:
            value = obj[name]
            if _is_state_dict(value):
                return f"{path}{name}", value
            found = _find_weights(value, WEIGHT_ENTRIES, f"{path}{name}.", depth + 1)
            if found:
                return found
    return None


def extract_state_dict(obj: Any, *, prefer_ema: bool = False) -> ExtractedWeights:
    """The weights inside a checkpoint object, unwrapped and with wrapper prefixes stripped."""
    wrapped = isinstance(obj, Mapping) and any(isinstance(obj.get(n), Mapping) for n in WEIGHT_ENTRIES + EMA_ENTRIES)
    if not wrapped and _is_state_dict(obj):
        chosen, entry, ignored, ema_entry, used_ema = obj, "<root>", [], None, False
    elif isinstance(obj, Mapping):
        plain = _find_weights(obj, WEIGHT_ENTRIES, "", 0)
        ema = _find_weights(obj, EMA_ENTRIES, "", 0)
        ema_entry = ema[0] if ema else None
        if plain is None and ema is None:
            raise CheckpointError(
                f"no weights found in the checkpoint (top-level entries: {_describe_entries(obj)})",
                "save model.state_dict(), or a dict with it under 'state_dict' or 'model'",
            )
        use_ema = ema is not None and (prefer_ema or plain is None)
        entry, chosen = ema if use_ema else plain  # type: ignore[misc]
        used_ema = use_ema
        top = entry.split(".")[0]
        ignored = [str(k) for k in obj if k != top]
    else:
        raise CheckpointError(
            f"the checkpoint holds a {type(obj).__name__}, not weights",
            "save model.state_dict() (or a dict with it under 'state_dict' or 'model')",
        )
    tensors = {k: v for k, v in chosen.items() if _is_tensor(v)}
    dropped = [str(k) for k, v in chosen.items() if not _is_tensor(v)]
    tensors, counters = drop_counters(tensors)
    state_dict, stripped = strip_wrapper_prefixes(tensors)
    return ExtractedWeights(state_dict, entry, ignored, stripped, ema_entry, used_ema, dropped, counters)


#: per-module counters the thop profiler (``thop.profile``) registers as buffers, saved with the
#: weights when a model is profiled before ``torch.save``
PROFILER_COUNTERS = ("total_ops", "total_params")


def drop_counters(tensors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """The tensors without the bookkeeping that training tools save next to the weights, and what
    was dropped: ``n_averaged`` of ``torch.optim.swa_utils.AveragedModel`` (the EMA of
    torchvision's reference training script; its weights are then all under ``module.``) and the
    thop profiler's one-number ``total_ops`` / ``total_params`` buffers.  Neither is part of any
    layer; left in, they make every architecture misfit."""
    dropped: dict[str, int] = {}
    gone: set[str] = set()
    keys = list(tensors)
    if "n_averaged" in tensors and len(keys) > 1 and all(k.startswith("module.") for k in keys if k != "n_averaged"):
        dropped["n_averaged (torch.optim.swa_utils.AveragedModel's counter)"] = 1
        gone.add("n_averaged")
    profiler = [k for k in keys if k.rsplit(".", 1)[-1] in PROFILER_COUNTERS and tensors[k].numel() == 1]
    if profiler and len(profiler) < len(keys):
        dropped["total_ops/total_params (thop profiler counters)"] = len(profiler)
        gone.update(profiler)
    if not gone:
        return tensors, {}
    return {k: v for k, v in tensors.items() if k not in gone}, dropped


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove ``module.``/``_orig_mod.`` while every key starts with one; returns the prefixes removed."""
    keys = list(state_dict)
    stripped: list[str] = []
    changed = True
    while changed and keys:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in keys):
                keys = [k[len(prefix):] for k in keys]
                stripped.append(prefix)
                changed = True
    if not stripped:
        return dict(state_dict), []
    return dict(zip(keys, state_dict.values())), stripped


def _describe_entries(obj: Mapping) -> str:
    parts = []
    for key, value in list(obj.items())[:8]:
        parts.append(f"{key!s}: {type(value).__name__}")
    more = "" if len(obj) <= 8 else f", ... ({len(obj)} in all)"
    return ", ".join(parts) + more
