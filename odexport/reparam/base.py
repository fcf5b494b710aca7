"""Pass infrastructure: a precondition, the rewrite, a postcondition, and a note for every layer.

Every reparameterisation pass is a small class in the style of onnx-ir's passes:

* :meth:`ReparamPass.requires` checks the model-level precondition and raises
  :class:`PreconditionError` with the reason; the model is then left untouched and the pass
  result says why (``precondition_failed``).
* :meth:`ReparamPass.run` does the rewrite, in place, and returns one :class:`LayerNote` per
  candidate layer: applied (and what was done) or skipped (and why).  Nothing is skipped silently.
* :meth:`ReparamPass.ensures` checks the postcondition on the layers the pass says it changed and
  raises :class:`PostconditionError` (a bug in odexport, not a user error) when it does not hold.

:meth:`ReparamPass.apply` runs the three in order and returns a :class:`PassResult`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from odexport.errors import InternalError
from odexport.layers import DYNAMIC_CONV_TYPES

META_ATTR = "odexport_meta"


class PreconditionError(Exception):
    """A pass cannot run on this model; the message says why. The model is left untouched."""


class PostconditionError(InternalError):
    """A pass ran but its postcondition does not hold: a bug in odexport."""


@dataclass(frozen=True)
class LayerNote:
    """What a pass did to one layer (``applied``) or why it left it alone."""

    layer: str
    applied: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "applied": self.applied, "detail": self.detail}


@dataclass
class PassResult:
    """Outcome of one pass: whether the model changed, and a note per candidate layer."""

    name: str
    changed: bool
    notes: list[LayerNote] = field(default_factory=list)
    precondition_failed: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def applied(self) -> list[LayerNote]:
        return [note for note in self.notes if note.applied]

    @property
    def skipped(self) -> list[LayerNote]:
        return [note for note in self.notes if not note.applied]

    def applied_layers(self) -> list[str]:
        return [note.layer for note in self.applied]

    def summary(self) -> str:
        if self.precondition_failed:
            return f"not run: {self.precondition_failed}"
        return f"{len(self.applied)} applied, {len(self.skipped)} skipped"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "changed": self.changed,
            "precondition_failed": self.precondition_failed,
            "notes": [note.to_dict() for note in self.notes],
            **({"extras": self.extras} if self.extras else {}),
        }


class ReparamPass(abc.ABC):
    """Base class: subclasses set :attr:`name`, write :meth:`run`, and usually :meth:`requires`/:meth:`ensures`."""

    #: CLI name, e.g. ``fold-attention-bn``.
    name: ClassVar[str]
    #: One line for ``--explain`` and the docs.
    summary: ClassVar[str]
    #: Anything beyond the per-layer notes that :meth:`run` wants in the result (plain types).
    extras: dict[str, Any]

    def requires(self, model: nn.Module) -> None:
        """Model-level precondition; raise :class:`PreconditionError` with the reason."""
        require_dynamic_convs(model)

    @abc.abstractmethod
    def run(self, model: nn.Module) -> list[LayerNote]:
        """Rewrite ``model`` in place; return one note per candidate layer."""

    def ensures(self, model: nn.Module, result: PassResult) -> None:
        """Postcondition on the layers in ``result.applied``; raise :class:`PostconditionError`."""

    def apply(self, model: nn.Module) -> PassResult:
        """``requires`` -> ``run`` -> ``ensures``. A failed precondition leaves ``model`` untouched."""
        try:
            self.requires(model)
        except PreconditionError as exc:
            return PassResult(self.name, changed=False, precondition_failed=str(exc))
        result = PassResult(self.name, changed=False)
        self.extras = {}
        with torch.no_grad():
            result.notes = self.run(model)
        result.extras.update(self.extras)
        result.changed = any(note.applied for note in result.notes)
        if result.changed:
            record_pass(model, self.name)
        self.ensures(model, result)
        return result

    __call__ = apply

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------- shared helpers


def require_dynamic_convs(model: nn.Module) -> None:
    if not any(isinstance(m, DYNAMIC_CONV_TYPES) for m in model.modules()):
        raise PreconditionError("the model has no ODConv2d/DyConv2d layer, so there is nothing to reparameterise")


def require_eval_batchnorm(model: nn.Module) -> None:
    """Folding a BatchNorm uses its running statistics, which only eval mode uses."""
    training = [name or "<root>" for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if training:
        raise PreconditionError(
            f"{len(training)} BatchNorm module(s) are in training mode (first: {training[0]}); a BatchNorm folds "
            "exactly only with its running statistics -- call model.eval() first"
        )


def batchnorm_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y = s * z + t`` (float64): ``s = gamma / sqrt(var + eps)``, ``t = beta - s * mean``."""
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - scale * mean


# SyncBatchNorm (convert_sync_batchnorm in distributed training) computes, in eval mode, exactly
# what BatchNorm2d does with its running statistics: it synchronises batch statistics only in training
FOLDABLE_BATCHNORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def batchnorm_unfoldable_reason(bn: nn.Module) -> str | None:
    """Why ``bn`` cannot be folded, or ``None``."""
    if not isinstance(bn, FOLDABLE_BATCHNORMS):
        return f"{type(bn).__name__} is not a BatchNorm2d"
    if type(bn).forward not in (base.forward for base in FOLDABLE_BATCHNORMS):  # a subclass computing something else
        return f"{type(bn).__name__} overrides {next(b for b in FOLDABLE_BATCHNORMS if isinstance(bn, b)).__name__}.forward"
    if bn.training:
        return "the BatchNorm is in training mode (it uses batch statistics)"
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return "the BatchNorm has no running statistics (track_running_stats=False uses batch statistics)"
    return None


def recorded_passes(model: nn.Module) -> list[str]:
    """The passes recorded as having changed ``model`` (see :func:`metadata`), without creating the record."""
    meta = getattr(model, META_ATTR, None)
    return [str(p) for p in meta.get("passes", [])] if isinstance(meta, dict) else []


def metadata(model: nn.Module) -> dict[str, Any]:
    """The model's reparameterisation metadata (a plain dict attribute, created on first use).

    Keys: ``passes`` (names that changed the model, in order), ``original_temperatures``
    (layer -> T before folding), ``replaced`` (names of modules swapped for another type).
    """
    meta = getattr(model, META_ATTR, None)
    if not isinstance(meta, dict):
        meta = {}
        object.__setattr__(model, META_ATTR, meta)
    meta.setdefault("passes", [])
    meta.setdefault("original_temperatures", {})
    meta.setdefault("replaced", [])
    return meta


def record_pass(model: nn.Module, name: str) -> None:
    passes = metadata(model)["passes"]
    if name not in passes:
        passes.append(name)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at ``name`` for ``new`` and record the swap for the deploy manifest."""
    if not name:
        raise ValueError("cannot replace the root module in place")
    model.set_submodule(name, new)
    replaced = metadata(model)["replaced"]
    if name not in replaced:
        replaced.append(name)


def same_dtype_param(value: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    """A new parameter holding ``value`` (computed in float64) in ``like``'s dtype and device."""
    return nn.Parameter(value.to(dtype=like.dtype, device=like.device).contiguous())


def unreplaceable_reason(name: str, layer: nn.Module) -> str | None:
    """Why the dynamic layer at ``name`` cannot be swapped for a plain ``nn.Conv2d``, or ``None``."""
    if not name:
        return "the layer is the model's root module; wrap it in a module to replace it"
    if type(layer) not in DYNAMIC_CONV_TYPES:
        return f"{type(layer).__name__} subclasses a dynamic conv (its call signature may differ from nn.Conv2d's); kept dynamic"
    if layer._forward_hooks or layer._forward_pre_hooks:
        return "the layer carries forward hooks, which a replacement module would drop; kept dynamic"
    return None


def fmt(value: float) -> str:
    return f"{value:.4g}"
