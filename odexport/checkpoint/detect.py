"""Which architecture, layout and options does a state_dict belong to?  Read from key names and shapes.

**Key family** (which dynamic layer wrote the keys), from the keys of each dynamic layer ``P``:

=============  ======================================================================  ==================
family         keys                                                                    zoo layouts
=============  ======================================================================  ==================
``odconv``     ``P.weight`` 5-D, ``P.attention.fc.weight``, ``P.attention.channel_fc``  odconv
``dyconv``     ``P.weight`` 5-D, ``P.attention.fc1.weight``, ``P.attention.fc2.weight``  kaijieshi7, odexport
``tardelean``  ``P.kernels_weights`` 5-D, ``P.attention.to_scores.{0,2}.weight``        tardelean
=============  ======================================================================  ==================

**Architecture.** The registered architectures of those layouts are built on the ``meta`` device
(no memory, no weights) and compared key by key:

1. *Structure*: the set of module paths outside the attention branches must be equal (this
   separates depths, block types and the ``.layers.`` infix).
2. *Options* read from the file: ``kernel_num`` K = ``weight.shape[0]`` of the first dynamic layer,
   ``num_classes`` = rows of the last ``nn.Linear``; then the options that change shapes
   (width multiplier, attention reduction/ratio/reduce, dynamic bias) are searched until every
   shape fits -- the width multiplier starting from the ratio of stem widths (or, where the stem
   keeps its width, of the dynamic layers' widths).
3. *Per-layer shapes*: what is left that only concerns a dynamic layer's own attention (hidden
   width, kaijieshi7 ``fc2`` bias absent in checkpoints before 2020-10-17, its old ``int(in*ratio)``
   width, a per-layer K, a dynamic bias) is **read from the file**: that layer is rebuilt with the
   file's shapes (``conformed_layers``), never recomputed from a formula.

Among several fitting architectures the one needing the fewest changed options wins (so
``ta_resnet_tiny`` beats ``ta_resnet10`` with a width multiplier for a tiny file).  When nothing
fits, the error names what did not fit and lists the closest architectures.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from odexport.checkpoint.compat import Fit, compare_shapes, fmt_shape, raise_if_misfit
from odexport.errors import ArchitectureError, CheckpointError

FAMILY_LAYOUTS = {"odconv": ("odconv",), "dyconv": ("kaijieshi7", "odexport"), "tardelean": ("tardelean",)}

# Options that change tensor shapes, with the values tried (most common first).
_WIDTH_OPTIONS = ("width_multiplier", "width_mult", "width")
_WIDTH_VALUES = (1.0, 0.5, 0.75, 0.35, 0.25, 0.125, 1.25, 1.4, 1.5, 2.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9)
_SEARCH_VALUES: dict[str, tuple] = {
    "reduction": (0.0625, 0.125, 0.25, 0.5, 0.03125, 4, 8, 16, 2, 1, 32),
    "ratio": (0.25, 0.125, 0.0625, 0.5, 1.0),
    "reduce": (4, 8, 16, 2, 1, 32),
    "dynamic_bias": (True, False),
}


@dataclass
class DynamicLayerKeys:
    """The keys of one dynamic layer as found in a file."""

    prefix: str
    family: str
    num_kernels: int
    weight_shape: tuple[int, ...]
    hidden: int | None


@dataclass
class Detection:
    """The architecture a state_dict fits, how it was found and how it was built."""

    arch: str
    layout: str
    model_kwargs: dict[str, Any]
    family: str
    conformed_layers: list[str] = field(default_factory=list)
    overrides: int = 0
    detected: bool = True  # False when the user named the architecture (--arch)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape) if hasattr(value, "shape") else tuple(value)


def dynamic_layer_keys(shapes: Mapping[str, tuple[int, ...]]) -> list[DynamicLayerKeys]:
    """Every dynamic layer in a state_dict, in key order, recognised by its key family."""
    layers = []
    for key, shape in shapes.items():
        prefix, _, leaf = key.rpartition(".")
        head = f"{prefix}." if prefix else ""
        if len(shape) != 5:
            continue
        if leaf == "weight" and f"{head}attention.channel_fc.weight" in shapes:
            hidden = shapes.get(f"{head}attention.fc.weight", (None,))[0]
            layers.append(DynamicLayerKeys(prefix, "odconv", shape[0], shape, hidden))
        elif leaf == "weight" and f"{head}attention.fc2.weight" in shapes:
            hidden = shapes.get(f"{head}attention.fc1.weight", (None,))[0]
            layers.append(DynamicLayerKeys(prefix, "dyconv", shape[0], shape, hidden))
        elif leaf == "kernels_weights" and f"{head}attention.to_scores.2.weight" in shapes:
            hidden = shapes.get(f"{head}attention.to_scores.0.weight", (None,))[0]
            layers.append(DynamicLayerKeys(prefix, "tardelean", shape[0], shape, hidden))
    return layers


def condconv_blocks(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, str]]:
    """timm CondConv blocks (``CondConvResidual``): ``<block>.routing_fn.weight`` of shape
    ``(E, C)`` next to expert kernels stored flattened, ``<block>.conv_*.weight`` of shape
    ``(E, O*C/g*kh*kw)``.  Returns ``(routing key, first expert key)`` per block."""
    blocks = []
    for key, shape in shapes.items():
        if not key.endswith("routing_fn.weight") or len(shape) != 2:
            continue
        head = key[: -len("routing_fn.weight")]
        experts = [k for k, s in shapes.items() if k.startswith(f"{head}conv_") and k.endswith(".weight")
                   and k.count(".") == head.count(".") + 1 and len(s) == 2 and s[0] == shape[0]]
        if experts:
            blocks.append((key, experts[0]))
    return blocks


def kaijieshi7_non2d_layers(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    """``(weight key, shape)`` of kaijieshi7 ``Dynamic_conv1d`` / ``Dynamic_conv3d`` layers: a
    ``(K, O, C, k)`` or ``(K, O, C, k, k, k)`` kernel next to an ``attention.fc2.weight`` of rank 3 or 5
    (``attention1d/3d``'s Conv1d/Conv3d)."""
    found = []
    for key, shape in shapes.items():
        prefix, _, leaf = key.rpartition(".")
        fc2 = shapes.get(f"{prefix + '.' if prefix else ''}attention.fc2.weight")
        if leaf == "weight" and fc2 is not None and len(shape) in (4, 6) and len(fc2) == len(shape) - 1 and fc2[0] == shape[0]:
            found.append((key, shape))
    return found


def key_family(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The family of most dynamic layers in the file (``None`` without any)."""
    layers = dynamic_layer_keys(shapes)
    if not layers:
        return None
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.family] = counts.get(layer.family, 0) + 1
    return max(counts, key=counts.get)


def structure(shapes: Mapping[str, Any]) -> frozenset[str]:
    """Module paths that own a tensor, outside attention branches: depth, blocks and naming."""
    return frozenset(k.rpartition(".")[0] for k in shapes if ".attention." not in f".{k}")


# ---------------------------------------------------------------------------------------------
# Building candidates on the meta device (cached: detection compares many of them)
# ---------------------------------------------------------------------------------------------
_BUILD_CACHE: dict[tuple, dict[str, tuple[int, ...]]] = {}


def _freeze(kwargs: Mapping[str, Any]) -> tuple:
    return tuple(sorted(kwargs.items()))


@contextlib.contextmanager
def no_weight_init():
    """Make ``torch.nn.init``'s in-place initialisers no-ops for the duration.

    On the meta device they do nothing useful and cost ~2 ms each (decomposed in Python); an
    OD-MobileNetV2 build drops from ~1 s to ~0.05 s.  Shapes are unaffected.
    """
    import torch.nn.init as init

    saved = {}
    for name in dir(init):
        fn = getattr(init, name)
        if name.endswith("_") and not name.startswith("_") and callable(fn):
            saved[name] = fn
            setattr(init, name, _return_tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def _return_tensor(tensor, *args, **kwargs):
    return tensor


def build_meta(name: str, kwargs: Mapping[str, Any]):
    """``create_model(name, **kwargs)`` on the meta device (shapes only, no memory, no init)."""
    import torch

    from odexport.models import create_model

    with no_weight_init(), torch.device("meta"):
        return create_model(name, **kwargs)


def model_shapes(name: str, kwargs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    key = (name, _freeze(kwargs))
    if key not in _BUILD_CACHE:
        model = build_meta(name, kwargs)
        _BUILD_CACHE[key] = {k: _shape(v) for k, v in model.state_dict().items()}
    return _BUILD_CACHE[key]


_CLASSIFIER_CACHE: dict[str, str | None] = {}


def classifier_key(name: str) -> str | None:
    """State-dict key of the last ``nn.Linear`` weight (the classifier) of an architecture."""
    if name not in _CLASSIFIER_CACHE:
        from torch import nn

        model = build_meta(name, {})
        _BUILD_CACHE.setdefault((name, ()), {k: _shape(v) for k, v in model.state_dict().items()})
        last = None
        for module_name, module in model.named_modules():
            if isinstance(module, nn.Linear) and ".attention." not in f".{module_name}.":
                last = f"{module_name}.weight"
        _CLASSIFIER_CACHE[name] = last
    return _CLASSIFIER_CACHE[name]


# ---------------------------------------------------------------------------------------------
# Fitting one architecture
# ---------------------------------------------------------------------------------------------
@dataclass
class _Attempt:
    arch: str
    kwargs: dict[str, Any]
    fit: Fit
    conformable: bool
    overrides: int

    @property
    def score(self) -> tuple:
        # exact fit first, then conformable fits, then fewest misfit keys, then fewest overrides
        return (not self.fit.ok, not (self.fit.ok or self.conformable), self.fit.distance, self.overrides)


def owner_of(key: str) -> str:
    """The module that owns a key, counting attention keys as their dynamic layer's."""
    dotted = f".{key}"
    if ".attention." in dotted:
        return dotted.split(".attention.")[0][1:]
    return key.rpartition(".")[0]


def _conformable(fit: Fit, file_shapes, dynamic_prefixes: set[str]) -> bool:
    """Do the remaining misfits only concern dynamic layers' own attention/bias/K shapes?"""
    if fit.ok:
        return True
    keys = [k for k, _, _ in fit.mismatched] + fit.missing + fit.unexpected
    if not all(owner_of(k) in dynamic_prefixes for k in keys):
        return False
    for key, got, want in fit.mismatched:  # a kernel may differ in K only (per-layer K), never in O/C/k
        if key.rpartition(".")[2] in ("weight", "kernels_weights") and len(got) == 5 and got[1:] != want[1:]:
            return False
    return True


def _count_overrides(name: str, kwargs: Mapping[str, Any]) -> int:
    from odexport.models import model_info

    defaults = model_info(name).default_kwargs
    return sum(1 for k, v in kwargs.items() if defaults.get(k) != v)


def _attempt(name: str, kwargs: dict[str, Any], file_shapes, dynamic_prefixes) -> _Attempt:
    fit = compare_shapes(file_shapes, model_shapes(name, kwargs))
    return _Attempt(name, dict(kwargs), fit, _conformable(fit, file_shapes, dynamic_prefixes), _count_overrides(name, kwargs))


def _stem_width(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    for shape in shapes.values():
        if len(shape) == 4 and shape[1] == 3:  # the first conv on an RGB image
            return shape[0]
        if len(shape) == 5 and shape[2] == 3:
            return shape[1]
    return None


def fit_architecture(name: str, file_shapes: Mapping[str, tuple[int, ...]], *, kernel_num: int | None = None,
                     search: bool = True) -> _Attempt:
    """The best options of architecture ``name`` for this file (see the module docstring).

    ``search=False`` only sets K and the classes (enough to rank architectures that do not fit).
    """
    from odexport.models import model_info

    info = model_info(name)
    defaults = dict(info.default_kwargs)
    dynamic = dynamic_layer_keys(file_shapes)
    dynamic_prefixes = {d.prefix for d in dynamic}
    kwargs: dict[str, Any] = {}
    if "kernel_num" in defaults:
        k_file = dynamic[0].num_kernels if dynamic else None
        if kernel_num is not None:
            kwargs["kernel_num"] = kernel_num
        elif k_file is not None:
            kwargs["kernel_num"] = k_file
    clf = classifier_key(name)  # also builds (and caches) the default model
    if clf and clf in file_shapes and "num_classes" in defaults:
        kwargs["num_classes"] = file_shapes[clf][0]
    base = best = _attempt(name, kwargs, file_shapes, dynamic_prefixes)
    if best.fit.ok or not search:
        return best
    # Width first (it changes nearly every shape), guessed from the stem, then the others.
    for option in [o for o in _WIDTH_OPTIONS if o in defaults] + [o for o in _SEARCH_VALUES if o in defaults]:
        values = list(_SEARCH_VALUES.get(option, _WIDTH_VALUES))
        if option in _WIDTH_OPTIONS:
            values = _width_candidates(name, kwargs, defaults[option], file_shapes)
        values = [v for v in values if type(v) is type(defaults[option]) and v != best.kwargs.get(option, defaults[option])]
        for value in values:
            trial = _attempt(name, {**best.kwargs, option: value}, file_shapes, dynamic_prefixes)
            if trial.score < best.score:
                best = trial
            if best.fit.ok:
                return best
    # A search that found no fit would only blur the report: show the misfit with the file's K and classes.
    return best if best.conformable else base


def _width_candidates(name, kwargs, default, file_shapes) -> list[float]:
    """The ten width multipliers nearest an estimate: the ratio of stem widths, or, where the stem
    does not scale with the width (TArdelean's MobileNetV3 keeps 16 channels), the median ratio
    of the output widths of the dynamic layers both hold under the same key."""
    base_shapes = model_shapes(name, kwargs)
    file_stem, base_stem = _stem_width(file_shapes), _stem_width(base_shapes)
    ratio = file_stem / base_stem if file_stem and base_stem and file_stem != base_stem else None
    if ratio is None:
        base_layers = {layer.prefix: layer.weight_shape for layer in dynamic_layer_keys(base_shapes)}
        ratios = sorted(layer.weight_shape[1] / base_layers[layer.prefix][1] for layer in dynamic_layer_keys(file_shapes)
                        if layer.prefix in base_layers)
        ratio = ratios[len(ratios) // 2] if ratios else None
    values = list(_WIDTH_VALUES)
    if ratio:
        estimate = float(default) * ratio
        values.sort(key=lambda v: abs(math.log(v / estimate)) if v > 0 else 1e9)
    return values[:10]


# ---------------------------------------------------------------------------------------------
# Detection over the registry
# ---------------------------------------------------------------------------------------------
def detect_architecture(file_shapes: Mapping[str, tuple[int, ...]], *, arch: str | None = None, kernel_num: int | None = None) -> Detection:
    """Find the architecture, layout and options of a state_dict (``arch`` names it instead of detecting)."""
    from odexport.models import list_models, model_info

    file_shapes = {k: _shape(v) for k, v in file_shapes.items()}
    family = key_family(file_shapes)
    dynamic = dynamic_layer_keys(file_shapes)
    if kernel_num is not None and dynamic and dynamic[0].num_kernels != kernel_num:
        raise CheckpointError(
            f"--kernel-num {kernel_num} was given but the checkpoint's dynamic layers have K={dynamic[0].num_kernels} "
            f"('{dynamic[0].prefix + ('.kernels_weights' if dynamic[0].family == 'tardelean' else '.weight')}' is "
            f"{fmt_shape(dynamic[0].weight_shape)})",
            "omit --kernel-num: K is read from the checkpoint",
        )
    if arch is not None:
        info = model_info(arch)  # ArchitectureError with close matches if unknown
        attempt = fit_architecture(arch, file_shapes, kernel_num=kernel_num)
        if not (attempt.fit.ok or attempt.conformable):
            raise_if_misfit(attempt.fit, what=f"architecture {arch}" + _kwargs_note(attempt.kwargs))
        return Detection(arch, info.layout, attempt.kwargs, family or "", _misfit_layers(attempt), attempt.overrides, detected=False)

    blocks = condconv_blocks(file_shapes) if family is None else []
    if blocks:
        routing, expert = blocks[0]
        raise ArchitectureError(
            f"this is a timm CondConv checkpoint: {len(blocks)} block{'s' if len(blocks) != 1 else ''} route {file_shapes[routing][0]} experts through a "
            f"sigmoid ('{routing}' {fmt_shape(file_shapes[routing])}, '{expert}' {fmt_shape(file_shapes[expert])}); "
            "odexport loads ODConv and DY-Conv layers, not CondConv",
            "CondConv is not supported yet (docs/formats.md); meanwhile export the timm model at a fixed batch with "
            "torch.onnx.export, which runs at that batch size only",
        )
    other_dims = kaijieshi7_non2d_layers(file_shapes) if family is None else []
    if other_dims:
        key, shape = other_dims[0]
        dims = sorted({len(s) - 3 for _, s in other_dims})
        classes = " and ".join(f"Dynamic_conv{d}d" for d in dims)
        raise ArchitectureError(
            f"the checkpoint's dynamic convolutions are {' and '.join(f'{d}-D' for d in dims)} (kaijieshi7 {classes}: "
            f"'{key}' {fmt_shape(shape)}, {len(other_dims)} layer{'s' if len(other_dims) != 1 else ''}); "
            "odexport exports 2-D dynamic convolutions only",
            "export that model with torch.onnx.export at the batch size you serve (the reference form bakes the batch in)",
        )
    if family is None:
        raise ArchitectureError(
            "no dynamic-convolution layers found in the checkpoint (looked for ODConv '<layer>.attention.channel_fc.weight', "
            "DY-Conv '<layer>.attention.fc2.weight' and TArdelean '<layer>.kernels_weights' next to a 5-D kernel tensor; "
            f"first keys: {_first_keys(file_shapes)})",
            "pass --arch NAME for a registered architecture, or --factory module:function for your own",
        )
    layouts = FAMILY_LAYOUTS[family]
    names = [n for n in list_models() if model_info(n).layout in layouts]
    file_structure = structure(file_shapes)
    same_structure = [n for n in names if structure(model_shapes(n, {})) == file_structure]
    attempts = [fit_architecture(n, file_shapes, kernel_num=kernel_num) for n in same_structure]
    fitting = [a for a in attempts if a.fit.ok or a.conformable]
    if fitting:
        best = min(fitting, key=lambda a: (not a.fit.ok, len(_misfit_layers(a)), a.overrides, a.arch))
        return Detection(best.arch, model_info(best.arch).layout, best.kwargs, family, _misfit_layers(best), best.overrides)
    raise _no_fit(file_shapes, family, names, attempts)


def raise_if_tardelean_deeplab(file_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """TArdelean's DY-DeepLabV3+ (``backbone.`` / ``aspp.`` / ``decoder.``, formats.md B.2) is not
    registered; without this its backbone would be taken for a sub-model and reported as a misfit."""
    heads = [k for k in file_shapes if k.startswith(("aspp.", "decoder."))]
    if {k.partition(".")[0] for k in heads} != {"aspp", "decoder"}:
        return
    dynamic = [layer for layer in dynamic_layer_keys(file_shapes) if layer.family == "tardelean"]
    if dynamic:
        raise ArchitectureError(
            f"this is a TArdelean DY-DeepLabV3+ segmentation checkpoint ({len(dynamic)} dynamic layers, an 'aspp.' head "
            f"and a 'decoder.', e.g. '{heads[0]}'); odexport registers TArdelean's classifiers, not its DeepLabV3+",
            "build the model with your copy of the reference code and pass --factory module:function (docs/formats.md, "
            "'Your own architecture')",
        )


def _misfit_layers(attempt: _Attempt) -> list[str]:
    """Dynamic layers whose own keys differ from the architecture's: rebuilt from the file's shapes."""
    if attempt.fit.ok:
        return []
    keys = [k for k, _, _ in attempt.fit.mismatched] + attempt.fit.missing + attempt.fit.unexpected
    prefixes = []
    for key in keys:
        prefix = owner_of(key)
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


def _kwargs_note(kwargs: Mapping[str, Any]) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else ""


def _first_keys(shapes: Mapping[str, tuple[int, ...]], n: int = 3) -> str:
    return ", ".join(f"'{k}' {fmt_shape(s)}" for k, s in list(shapes.items())[:n]) or "none"


def _no_fit(file_shapes, family: str, names: list[str], attempts: list[_Attempt]) -> ArchitectureError:
    """Rank every architecture of the family by how many keys misfit, and name the closest."""
    from odexport.models import model_info

    ranked = list(attempts)
    tried = {a.arch for a in attempts}
    for name in names:
        if name not in tried:
            ranked.append(fit_architecture(name, file_shapes, search=False))
    ranked.sort(key=lambda a: (a.fit.distance, a.arch))
    closest = "; ".join(f"{a.arch}: {a.fit.summary(limit=1)}" for a in ranked[:3])
    layouts = "/".join(sorted({model_info(n).layout for n in names}))
    return ArchitectureError(
        f"no registered {layouts} architecture fits this {family} checkpoint ({len(file_shapes)} keys); closest -- {closest}",
        "pass --arch NAME to load it into one of them anyway (the first misfit is reported), or --factory module:function "
        "for your own architecture",
    )
