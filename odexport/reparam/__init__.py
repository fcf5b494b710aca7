"""Reparameterise a loaded dynamic-conv model for inference: typed, output-preserving passes.

``reparameterise(model)`` deep-copies ``model``, puts the copy in eval mode and runs, in this order:

=====================  ====================================================================
``fold-attention-bn``  :class:`FoldAttentionBN`: ODConv attention BN into ``attention.fc``
``fold-temperature``   :class:`FoldTemperature`: head weights / T, then T = 1
``fold-bn``            :class:`FoldFollowingBN`: a BN after a dynamic conv into its kernels/bias
``collapse-degenerate`` :class:`CollapseDegenerate`: constant attentions into the kernels; static
                       layers become ``nn.Conv2d``
``fuse-heads``         :class:`FuseAttentionHeads`: ODConv head convs into one 1x1 conv
``freeze-low-spread``  :class:`FreezeLowSpread` (only with calibration inputs; approximate)
=====================  ====================================================================

The first five are exact identities (up to float rounding) and on by default; the order is fixed
(a subset may be chosen) because later passes rely on earlier ones: collapsing before fusing
keeps constant heads out of the fused conv; folding the BN before collapsing puts it into the
static conv a degenerate layer becomes.  Every pass reports, per layer, what it did or why it
skipped it; a pass whose precondition fails leaves the model untouched and says why.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from odexport.errors import NON_FINITE_WEIGHTS_FIX, InputError
from odexport.reparam.attention import FoldAttentionBN, FoldTemperature, FuseAttentionHeads
from odexport.reparam.base import LayerNote, PassResult, PostconditionError, PreconditionError, ReparamPass, metadata
from odexport.reparam.collapse import CollapseDegenerate
from odexport.reparam.cost import attention_cost, count_params
from odexport.reparam.following_bn import FoldFollowingBN
from odexport.reparam.freeze import FreezeLowSpread, relative_deviation

EXACT_PASSES: dict[str, type[ReparamPass]] = {
    cls.name: cls for cls in (FoldAttentionBN, FoldTemperature, FoldFollowingBN, CollapseDegenerate, FuseAttentionHeads)
}
#: Every pass name, in the order they run.
PASS_ORDER: tuple[str, ...] = (*EXACT_PASSES, FreezeLowSpread.name)
#: What runs when ``passes`` is not given.
DEFAULT_PASSES: tuple[str, ...] = tuple(EXACT_PASSES)
#: The ``odexport.reparam`` metadata of an export made from ``reparameterise(model)`` with the defaults.
DEFAULT_PASSES_NOTE = "reparameterised with the default passes"


def resolve_passes(passes: str | Iterable[str] | None) -> list[str]:
    """Pass names in run order. ``None`` or ``"default"``: the five exact passes; ``"none"``: none.

    Accepts a comma-separated string or an iterable of names; an unknown name raises
    :class:`~odexport.errors.InputError` naming the closest known one.
    """
    if passes is None:
        return list(DEFAULT_PASSES)
    names = [p.strip() for p in passes.split(",")] if isinstance(passes, str) else [str(p).strip() for p in passes]
    names = [n for n in names if n]
    if not names and isinstance(passes, str):  # "" reads as no passes: make that a choice ("none"), not an accident
        raise InputError(f"--passes {passes!r} names no pass", "use --passes default, --passes none, or a list such as fold-bn,fuse-heads")
    chosen: set[str] = set()
    for name in names:
        if name in ("default", "all"):
            chosen.update(DEFAULT_PASSES)
        elif name == "none":
            continue
        elif name in PASS_ORDER:
            chosen.add(name)
        else:
            close = difflib.get_close_matches(name, PASS_ORDER, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(f"unknown reparameterisation pass {name!r}", f"{hint}choose from {', '.join(PASS_ORDER)}")
    return [name for name in PASS_ORDER if name in chosen]


@dataclass
class ReparamReport:
    """What :func:`reparameterise` did. ``model`` is the deploy model (a new module; the input is untouched).

    ``check`` (when check inputs were given) holds the relative deviation ``max|deploy - source| /
    max|source|`` of the exact passes on those inputs; ``freeze`` holds the calibration report of
    ``freeze-low-spread`` (spread, savings and deviation per layer, and the model output deviation).
    """

    model: nn.Module
    results: list[PassResult]
    original_temperatures: dict[str, float]
    params_before: int
    params_after: int
    check: dict[str, Any] | None = None
    freeze: dict[str, Any] | None = None
    attention: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passes_applied(self) -> list[str]:
        """Names of the passes that changed the model, in run order."""
        return [r.name for r in self.results if r.changed]

    @property
    def passes_run(self) -> list[str]:
        """Names of the passes whose precondition held (they ran, changed or not)."""
        return [r.name for r in self.results if r.precondition_failed is None]

    def result(self, name: str) -> PassResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"pass {name!r} did not run")

    def to_dict(self, notes: bool = True) -> dict[str, Any]:
        passes = []
        for r in self.results:
            d = r.to_dict()
            d.pop("extras", None)
            if not notes:
                d.pop("notes")
                d.update(applied=len(r.applied), skipped=len(r.skipped))
            passes.append(d)
        return {
            "passes": passes,
            "passes_applied": self.passes_applied,
            "original_temperatures": dict(self.original_temperatures),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "attention_matmuls": sum(row["attention_matmuls"] for row in self.attention),
            "dynamic_layers": len(self.attention),
            "check": self.check,
            "freeze": self.freeze,
        }


def _as_input(name: str, value: Any, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as an ``(N, C, H, W)`` tensor in ``dtype``, the model's: finite there, or refused."""
    tensor = torch.as_tensor(value)
    if tensor.dim() != 4 or tensor.shape[0] < 1:
        raise InputError(f"the {name} have shape {tuple(tensor.shape)}, not (N, C, H, W)", f"give the {name} as a 4-D array of N >= 1 samples")
    if not tensor.is_floating_point():
        tensor = tensor.float()
    # a NaN spread compares false against any threshold: every layer would freeze
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"the {name} hold {int((~torch.isfinite(tensor)).sum())} NaN/inf values",
                         f"clean or drop those samples from the {name}")
    as_run = tensor.to(dtype)  # what the model computes on: a float64 1e39 is inf in float32
    if not bool(torch.isfinite(as_run).all()):
        raise InputError(f"the {name} hold {int((~torch.isfinite(as_run)).sum())} values beyond the range of the model's "
                         f"{str(dtype).removeprefix('torch.')}",
                         f"give the {name} at the scale the model was trained on")
    return tensor


def _forward(model: nn.Module, x: torch.Tensor, what: str) -> list[torch.Tensor]:
    param = next(model.parameters())
    try:
        with torch.no_grad():
            out = model(x.to(device=param.device, dtype=param.dtype))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{what} of shape {tuple(x.shape)} do not fit the model: {first}",
                         "give --input-shape the model's sample shape CxHxW (without it, the checkpoint's default is used)"
                         if what == "check inputs" else "give inputs shaped (N, C, H, W) as the model expects") from None
    from odexport.reparam.freeze import output_tensors

    tensors = [t.detach() for t in output_tensors(out)]
    if not tensors:
        raise InputError(f"the model returns a {type(out).__name__} holding no floating-point tensor with a batch axis",
                         "return the model's outputs as tensors (or tuples of them)")
    return tensors


def reparameterise(
    model: nn.Module,
    passes: str | Iterable[str] | None = None,
    calibration: Any = None,
    freeze_below: float | None = None,
    check_input: Any = None,
    dy_shift: str = "auto",
) -> ReparamReport:
    """Return a deploy copy of ``model`` with the chosen passes applied, and what each pass did.

    ``passes``: see :func:`resolve_passes` (default: the five exact passes).  ``calibration``
    (``(N, C, H, W)`` array) with ``freeze_below`` adds ``freeze-low-spread``; calibration alone
    measures and reports each layer's attention spread without freezing.  ``check_input`` (or,
    if absent, ``calibration``) is run through the model before and after the exact passes and
    the relative deviation is reported in ``report.check``.  ``dy_shift`` says where ``fold-bn``
    puts a BatchNorm shift for a DY-Conv without a dynamic bias (see :class:`FoldFollowingBN`).
    ``model`` itself is never modified, nor torch's global random stream (passes build modules,
    whose random initial weights they overwrite).
    """
    with torch.random.fork_rng(devices=[]):
        return _reparameterise(model, passes, calibration, freeze_below, check_input, dy_shift)


def _reparameterise(model, passes, calibration, freeze_below, check_input, dy_shift) -> ReparamReport:
    names = resolve_passes(passes)
    if freeze_below is not None and calibration is None:
        raise InputError("a freeze threshold needs calibration inputs", "give --calibration FILE (or calibration=) with --freeze-below")
    if calibration is not None and FreezeLowSpread.name not in names:
        names.append(FreezeLowSpread.name)
    if FreezeLowSpread.name in names and calibration is None:
        raise InputError("freeze-low-spread needs calibration inputs", "give --calibration FILE (or calibration=)")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    calibration_t = None if calibration is None else _as_input("calibration inputs", calibration, dtype)
    check_t = None if check_input is None else _as_input("check inputs", check_input, dtype)
    checked_on = "check inputs" if check_t is not None else "calibration inputs"
    if check_t is None:
        check_t = calibration_t

    params_before = count_params(model)
    work = copy.deepcopy(model).eval()
    _own_attention_per_layer(work)
    meta = metadata(work)
    reference = None if check_t is None else _forward(work, check_t, checked_on)
    if reference is not None and not all(bool(torch.isfinite(t).all()) for t in reference):
        # NaN - NaN is NaN: every pass would "deviate by nan", which reads like a bug in the pass
        broken = sum(int((~torch.isfinite(t)).sum()) for t in reference)
        raise InputError(f"the model computes {broken} NaN/inf values on the {checked_on} before "
                         "any pass runs, so no pass can be verified",
                         NON_FINITE_WEIGHTS_FIX)

    results: list[PassResult] = []
    freeze_report = None
    check = None
    for name in names:
        if name == FreezeLowSpread.name:
            if reference is not None:  # exactness of the exact passes, before the approximate one
                check = _check(work, check_t, reference, checked_on)
            result = FreezeLowSpread(calibration_t, freeze_below).apply(work)
            freeze_report = result.extras or None
        elif name == FoldFollowingBN.name:
            result = FoldFollowingBN(dy_shift=dy_shift).apply(work)
        else:
            result = EXACT_PASSES[name]().apply(work)
        results.append(result)
    if reference is not None and check is None:
        check = _check(work, check_t, reference, checked_on)
    return ReparamReport(
        model=work,
        results=results,
        original_temperatures=dict(meta["original_temperatures"]),
        params_before=params_before,
        params_after=count_params(work),
        check=check,
        freeze=freeze_report,
        attention=attention_cost(work),
    )


def _own_attention_per_layer(model: nn.Module) -> None:
    """Give every dynamic conv an attention branch of its own (a copy, same values: exact).

    The passes fold per-layer numbers (a temperature, a BatchNorm) into attention weights; an
    attention module or parameter shared by two layers would take both layers' folds."""
    from odexport.layers import dynamic_convs

    def identities(module: nn.Module) -> set[int]:
        return {id(t) for t in (*module.modules(), *module.parameters(), *module.buffers())}

    seen: set[int] = set()
    for _, layer in dynamic_convs(model):
        attention = getattr(layer, "attention", None)
        if attention is None:
            continue
        if identities(attention) & seen:
            layer.attention = copy.deepcopy(attention)
        seen |= identities(layer.attention)


def _check(model: nn.Module, x: torch.Tensor, reference: list[torch.Tensor], what: str) -> dict[str, Any]:
    out = _forward(model, x, what)
    return {"max_relative_deviation": relative_deviation(out, reference), "inputs": list(x.shape)}


__all__ = [
    "CollapseDegenerate",
    "DEFAULT_PASSES",
    "DEFAULT_PASSES_NOTE",
    "EXACT_PASSES",
    "FoldAttentionBN",
    "FoldFollowingBN",
    "FoldTemperature",
    "FreezeLowSpread",
    "FuseAttentionHeads",
    "LayerNote",
    "PASS_ORDER",
    "PassResult",
    "PostconditionError",
    "PreconditionError",
    "ReparamPass",
    "ReparamReport",
    "attention_cost",
    "reparameterise",
    "resolve_passes",
]
