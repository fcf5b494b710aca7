"""Does a state_dict fit a model? Compare key sets and shapes and say precisely what does not fit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from odexport.errors import CheckpointError

# Buffers that a model may or may not have depending on the torch version; never a real mismatch.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def shape_of(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def _keys(n: int) -> str:
    return f"{n} key" if n == 1 else f"{n} keys"


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


@dataclass
class Fit:
    """How a checkpoint's keys and shapes compare with a model's (``expected``)."""

    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, file, model
    matched: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def distance(self) -> int:
        """How far from fitting: the number of keys that are missing, unexpected or mis-shaped."""
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def summary(self, limit: int = 2) -> str:
        """One clause naming the first problems, e.g. for a list of close architectures."""
        parts = []
        if self.mismatched:
            key, got, want = self.mismatched[0]
            parts.append(f"'{key}' is {fmt_shape(got)} in the file, {fmt_shape(want)} in the architecture"
                         + (f" (+{len(self.mismatched) - 1} more shapes)" if len(self.mismatched) > 1 else ""))
        if self.missing:
            parts.append(f"{_keys(len(self.missing))} missing from the file (e.g. {', '.join(repr(k) for k in self.missing[:limit])})")
        if self.unexpected:
            parts.append(f"{_keys(len(self.unexpected))} unexpected in the file (e.g. {', '.join(repr(k) for k in self.unexpected[:limit])})")
        return "; ".join(parts) if parts else "fits"


def compare_shapes(file_shapes: Mapping[str, tuple[int, ...]], model_shapes: Mapping[str, tuple[int, ...]]) -> Fit:
    """Compare ``{key: shape}`` of a file with those of a model (both in state_dict order)."""
    fit = Fit()
    for key, want in model_shapes.items():
        if key not in file_shapes:
            if not key.endswith(_OPTIONAL_SUFFIXES):
                fit.missing.append(key)
            continue
        got = file_shapes[key]
        if tuple(got) != tuple(want):
            fit.mismatched.append((key, tuple(got), tuple(want)))
        else:
            fit.matched += 1
    for key in file_shapes:
        if key not in model_shapes and not key.endswith(_OPTIONAL_SUFFIXES):
            fit.unexpected.append(key)
    return fit


def shapes_of_state_dict(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: shape_of(v) for k, v in state_dict.items()}


def load_weights_strict(model, state_dict: Mapping[str, Any], *, what: str, hint: str | None = None) -> None:
    """``model.load_state_dict(state_dict)`` with a one-line error naming the first misfit.

    ``what`` names the architecture in the message (e.g. ``"architecture od_resnet18"``);
    ``hint`` replaces the default fix (which speaks of ``--arch``).
    """
    fit = compare_shapes(shapes_of_state_dict(state_dict), shapes_of_state_dict(model.state_dict()))
    raise_if_misfit(fit, what=what, hint=hint)
    # strict=False only tolerates the optional buffers: the comparison above already proved the rest.
    model.load_state_dict(dict(state_dict), strict=False)


def raise_if_misfit(fit: Fit, *, what: str, hint: str | None = None) -> None:
    if fit.ok:
        return
    hint = hint or "pass the architecture the checkpoint was trained with (--arch), or omit --arch to detect it"
    if fit.mismatched:
        key, got, want = fit.mismatched[0]
        more = f" ({len(fit.mismatched)} keys differ)" if len(fit.mismatched) > 1 else ""
        raise CheckpointError(
            f"checkpoint does not fit {what}: '{key}' has shape {fmt_shape(got)} in the file but {fmt_shape(want)} "
            f"in the architecture{more}",
            hint,
        )
    if fit.missing:
        # the file's own names beside the model's show a prefix or a renaming at a glance
        beside = f"; the file has {_keys(len(fit.unexpected))} the architecture lacks, first '{fit.unexpected[0]}'" if fit.unexpected else ""
        raise CheckpointError(
            f"checkpoint does not fit {what}: {_keys(len(fit.missing))} missing from the file, first '{fit.missing[0]}'{beside}",
            hint,
        )
    raise CheckpointError(
        f"checkpoint does not fit {what}: the file has {_keys(len(fit.unexpected))} the architecture lacks, "
        f"first '{fit.unexpected[0]}'",
        hint,
    )
