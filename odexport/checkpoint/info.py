"""What a loaded model is and where it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn


@dataclass
class CheckpointInfo:
    """Provenance and configuration of a loaded model.

    * ``path``/``sha256``: the file (``None`` for a model built by architecture name);
    * ``layout``: ``odconv``, ``kaijieshi7``, ``tardelean``, ``odexport`` (zoo), ``factory``
      (the user's own architecture) or ``deploy`` (a deploy checkpoint written by ``odexport reparam``);
    * ``arch``/``model_kwargs``: ``create_model(arch, **model_kwargs)`` rebuilds the architecture
      (plus ``extras["conformed_layers"]``, layers rebuilt to the file's own attention shapes);
    * ``input_shape``: default ``(C, H, W)`` of one sample for the architecture;
    * ``temperature``: the attention temperature every dynamic layer uses (``None`` if they
      differ -- see ``extras["temperatures"]`` -- or if the model has no dynamic layer);
    * ``extras``: how the file was read (entry used, ignored entries, prefixes stripped, EMA, ...)
      and ``warnings`` worth showing the user.
    """

    path: Path | None
    sha256: str | None
    layout: str
    arch: str | None
    model_kwargs: dict[str, Any]
    input_shape: tuple[int, int, int] | None
    num_classes: int | None
    temperature: float | None
    source: str = "checkpoint"  # "checkpoint", "arch", "factory", "deploy"
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return list(self.extras.get("warnings", []))

    @property
    def origin_sha256(self) -> str | None:
        """For a deploy checkpoint: the sha256 of the checkpoint it was made from (its manifest's record)."""
        if self.source != "deploy":
            return None
        return ((self.extras.get("manifest") or {}).get("source") or {}).get("sha256")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = None if self.path is None else str(self.path)
        data["input_shape"] = None if self.input_shape is None else list(self.input_shape)
        return data


@dataclass
class LoadedModel:
    """A model in eval mode and its :class:`CheckpointInfo`."""

    model: nn.Module
    info: CheckpointInfo


def non_finite_weights_sentence(info) -> str | None:
    """``"its weights hold 3 NaN/inf values, the first in 'layer2.0.conv2.weight'"`` when loading
    found them (``extras["non_finite_weights"]``: tensor -> count), else None."""
    bad = (getattr(info, "extras", None) or {}).get("non_finite_weights") or {}
    if not bad:
        return None
    total = sum(bad.values())
    return f"its weights hold {total} NaN/inf value{'s' if total > 1 else ''}, the first in '{next(iter(bad))}'"


def explain_non_finite(error, info):
    """``error`` (a model computing NaN/inf) with the broken tensor named, when loading found one:
    a new error of its type, to raise ``from error``; None when there is nothing to add."""
    weights = non_finite_weights_sentence(info)
    if not weights or "NaN/inf values" not in error.message:
        return None
    return type(error)(f"{error.message}: {weights}", error.hint)
