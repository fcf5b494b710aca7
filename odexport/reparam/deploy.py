"""Deploy checkpoints: a reparameterised model's state dict plus a manifest that rebuilds its structure.

File format (``torch.save`` of a dict; loads with ``torch.load(path, weights_only=True)``)::

    {
      "odexport_deploy": {
        "format_version": 1,
        "odexport_version": "0.1.0",
        "source": {"path": "...", "sha256": "..."},       # the checkpoint it was made from
        "ema_entry": "model_ema" | None,                  # the source's EMA entry, when its EMA weights were used
        "arch": "od_resnet18", "model_kwargs": {...}, "layout": "odconv", "input_shape": [3, 224, 224],
        "passes": ["fold-attention-bn", ...],              # passes that changed the model, in order
        "pass_results": [{"name", "changed", "applied", "skipped", "precondition_failed"}, ...],
        "original_temperatures": {"layer1.0.conv1": 1.0, ...},
        "layers": {"layer1.0.conv1": {ODConv2d/DyConv2d deploy_spec()}, ...},
        "replaced": {"layer1.0.bn1": {"type": "Identity"},
                     "layer2.0.conv2": {"type": "Conv2d", "in_channels": ..., "bias": true, ...}},
        "params": {"source": 11.9e6, "deploy": 11.8e6},
        "check": {...} | None, "freeze": {...} | None,
      },
      "state_dict": {...},                                 # tensors only
    }

Everything in the manifest is a plain Python value (dict, list, str, int, float, bool, None).
:func:`model_from_deploy` rebuilds the model: ``create_model(arch, **model_kwargs)`` (or a model
you pass), swaps in the ``replaced`` modules, gives every dynamic layer its recorded structure
(``apply_deploy_spec``), then ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from odexport._files import atomic_path, output_folder
from odexport.errors import CheckpointError, InternalError
from odexport.layers import DYNAMIC_CONV_TYPES, dynamic_convs
from odexport.reparam.base import META_ATTR, metadata
from odexport.reparam.cost import count_params

DEPLOY_KEY = "odexport_deploy"
FORMAT_VERSION = 1


def is_deploy_checkpoint(obj: Any) -> bool:
    """True for an object loaded from a deploy checkpoint."""
    return isinstance(obj, Mapping) and DEPLOY_KEY in obj


# --------------------------------------------------------------------------- module specs


def module_spec(module: nn.Module) -> dict[str, Any]:
    """Constructor arguments of a module that replaced another one (``Identity`` or ``Conv2d``)."""
    if isinstance(module, nn.Identity):
        return {"type": "Identity"}
    if type(module) is nn.Conv2d:
        return {
            "type": "Conv2d",
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": list(module.padding) if not isinstance(module.padding, str) else module.padding,
            "dilation": list(module.dilation),
            "groups": module.groups,
            "bias": module.bias is not None,
            "padding_mode": module.padding_mode,
        }
    raise InternalError(f"a reparameterisation pass left a module of type {type(module).__name__} that the deploy format cannot describe")


def module_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    kind = spec.get("type")
    if kind == "Identity":
        return nn.Identity()
    if kind == "Conv2d":
        padding = spec["padding"]
        return nn.Conv2d(
            spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]), stride=tuple(spec["stride"]),
            padding=padding if isinstance(padding, str) else tuple(padding), dilation=tuple(spec["dilation"]),
            groups=spec["groups"], bias=spec["bias"], padding_mode=spec.get("padding_mode", "zeros"),
        )
    raise CheckpointError(f"deploy manifest names a module of unknown type {kind!r}", "upgrade odexport or re-run `odexport reparam`")


# --------------------------------------------------------------------------- manifest


def _info_get(info: Any, key: str, default: Any = None) -> Any:
    if info is None:
        return default
    if isinstance(info, Mapping):
        return info.get(key, default)
    return getattr(info, key, default)


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain Python types (tuples become lists); anything else is a bug."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise InternalError(f"deploy manifest entry {where} is a {type(value).__name__}, not a plain value")


def deploy_manifest(model: nn.Module, report: Any = None, source_info: Any = None) -> dict[str, Any]:
    """The manifest of ``model`` (a reparameterised model); see the module docstring for the fields."""
    from odexport import __version__

    meta = metadata(model)
    source_path = _info_get(source_info, "path")
    # a shape the loader guessed (a --factory model given no --input-shape) is not recorded as the model's
    assumed = (_info_get(source_info, "extras") or {}).get("input_shape_assumed")
    input_shape = None if assumed else _info_get(source_info, "input_shape")
    from_factory = _info_get(source_info, "layout") == "factory" or _info_get(source_info, "source") == "factory"
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "odexport_version": __version__,
        "source": {"path": None if source_path is None else str(source_path), "sha256": _info_get(source_info, "sha256")},
        "ema_entry": used_ema_entry(source_info),
        "arch": None if from_factory else _info_get(source_info, "arch"),
        "factory": _info_get(source_info, "arch") if from_factory else None,
        "model_kwargs": dict(_info_get(source_info, "model_kwargs") or {}),
        "layout": _info_get(source_info, "layout"),
        "input_shape": None if input_shape is None else list(input_shape),
        # a factory model's size is known only when given (`reparam --input-shape`); files from before
        # this key recorded the loader's 224x224 guess there
        "input_shape_given": bool(from_factory and input_shape is not None),
        "num_classes": _info_get(source_info, "num_classes"),
        "passes": list(meta["passes"]),
        "pass_results": [] if report is None else report.to_dict(notes=False)["passes"],
        "original_temperatures": dict(meta["original_temperatures"]),
        "temperature_folded": "fold-temperature" in meta["passes"],
        "temperature": _uniform(meta["original_temperatures"].values()),
        "layers": {name: layer.deploy_spec() for name, layer in dynamic_convs(model)},
        "replaced": {name: module_spec(model.get_submodule(name)) for name in meta["replaced"]},
        "params": {"source": None if report is None else report.params_before, "deploy": count_params(model)},
        "check": None if report is None else report.check,
        "freeze": _freeze_record(report, source_info),
        # a model whose forward(x, temperature) takes it (TArdelean's): what it is called with, which
        # the forward may use beyond the dynamic layers (logits / T) and no fold can reach
        "forward_temperature": _forward_temperature(model),
    }
    manifest = _plain(manifest, "manifest")
    buffer = io.BytesIO()  # prove now that the manifest loads with weights_only=True
    torch.save(manifest, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)
    return manifest


def _forward_temperature(model: nn.Module) -> float | None:
    from odexport.convert import TemperatureArgModel

    return float(model.temperature) if isinstance(model, TemperatureArgModel) else None


def _freeze_record(report: Any, source_info: Any) -> dict | None:
    """This run's freeze, or the one a deploy file given as the source recorded: reparameterising a
    frozen file again keeps its layers frozen, so the record (what `inspect` and `check` say) goes
    with them."""
    own = None if report is None else report.freeze
    earlier = ((_info_get(source_info, "extras") or {}).get("manifest") or {}).get("freeze")
    if earlier and any(layer.get("frozen") for layer in earlier.get("layers") or []):
        if not (own and any(layer.get("frozen") for layer in own.get("layers") or [])):
            return earlier
    return own


def used_ema_entry(info: Any) -> str | None:
    """The checkpoint entry whose EMA weights a model was loaded from (``--ema``), else None; for
    a deploy checkpoint, the one recorded when it was made."""
    extras = _info_get(info, "extras") or {}
    if extras.get("used_ema"):
        return extras.get("weights_entry")
    return (extras.get("manifest") or {}).get("ema_entry")


def _uniform(values) -> float | None:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def save_deploy(model: nn.Module, report: Any, path: str | os.PathLike, source_info: Any = None) -> Path:
    """Write ``{"odexport_deploy": manifest, "state_dict": ...}`` to ``path`` atomically.

    ``model`` is usually ``report.model``; ``source_info`` is the loader's ``CheckpointInfo`` (or a
    dict with ``path``, ``sha256``, ``arch``, ``model_kwargs``, ``layout``, ``input_shape``).  The
    file is written under a temporary name in the same folder and renamed when complete, so a
    failure never leaves a partial file at ``path``.
    """
    path = Path(path)
    obj = {
        DEPLOY_KEY: deploy_manifest(model, report, source_info),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    output_folder(path, create=True, example="deploy.pt")
    with atomic_path(path) as temp:
        torch.save(obj, temp)
    return path


# --------------------------------------------------------------------------- loading


_REBUILD_HINT = "rebuild the deploy file with `odexport reparam` from its source checkpoint"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: what each manifest field the loader reads must be (absent or None is allowed where marked)
_MANIFEST_FIELDS: dict[str, tuple[str, Any, bool]] = {
    "arch": ("a name", lambda v: isinstance(v, str), True),
    "factory": ("a module:function", lambda v: isinstance(v, str), True),
    "layout": ("a name", lambda v: isinstance(v, str), True),
    "ema_entry": ("an entry name", lambda v: isinstance(v, str), True),
    "model_kwargs": ("a mapping", lambda v: isinstance(v, Mapping), True),
    "input_shape": ("a list of 3 positive sizes", lambda v: isinstance(v, (list, tuple)) and len(v) == 3
                    and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v), True),
    "num_classes": ("a positive count", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, True),
    "passes": ("a list of pass names", lambda v: isinstance(v, (list, tuple)) and all(isinstance(p, (str, Mapping)) for p in v), True),
    "original_temperatures": ("a mapping of layer to temperature", lambda v: isinstance(v, Mapping)
                              and all(_is_number(t) for t in v.values()), True),
    "layers": ("a mapping of layer to its spec", lambda v: isinstance(v, Mapping) and all(isinstance(s, Mapping) for s in v.values()), True),
    "replaced": ("a mapping of module to its spec", lambda v: isinstance(v, Mapping) and all(isinstance(s, Mapping) for s in v.values()), True),
    "freeze": ("a mapping with a list of layer records", lambda v: isinstance(v, Mapping) and (
        v.get("layers") is None or isinstance(v["layers"], list) and all(isinstance(r, Mapping) for r in v["layers"])), True),
    "forward_temperature": ("a positive temperature", lambda v: _is_number(v) and v > 0, True),
}


def validate_deploy(obj: Any) -> Mapping[str, Any]:
    """The manifest of a loaded deploy checkpoint, every field the loader reads of the type it must
    have; :class:`~odexport.errors.CheckpointError` (one line, naming the field) for a damaged or
    edited file, and "upgrade odexport" only for a format that is really newer."""
    if not is_deploy_checkpoint(obj) or "state_dict" not in obj:
        raise CheckpointError("not an odexport deploy checkpoint (no 'odexport_deploy' manifest and 'state_dict')", "write one with `odexport reparam`")
    manifest = obj[DEPLOY_KEY]
    if not isinstance(manifest, Mapping):
        raise CheckpointError(f"the deploy manifest is a {type(manifest).__name__}, not a mapping: the file is damaged", _REBUILD_HINT)
    state = obj["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError("the deploy file's 'state_dict' is not a mapping of names to tensors: the file is damaged", _REBUILD_HINT)
    version = manifest.get("format_version")
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"the deploy manifest's format_version is {version!r}, not a format number: the file is damaged", _REBUILD_HINT)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"deploy checkpoint format {version} is newer than this odexport reads ({FORMAT_VERSION})", "upgrade odexport")
    for field, (what, valid, optional) in _MANIFEST_FIELDS.items():
        value = manifest.get(field)
        if (value is None and optional) or valid(value):
            continue
        raise CheckpointError(f"the deploy manifest's '{field}' is {_short(value)}, not {what}: the file is damaged or was edited", _REBUILD_HINT)
    return manifest


def _short(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def model_from_deploy(obj: Mapping[str, Any], *, model: nn.Module | None = None, factory: str | None = None) -> nn.Module:
    """Rebuild the deploy model from a loaded deploy checkpoint (eval mode).

    By default the source architecture is ``odexport.models.create_model(arch, **model_kwargs)``.
    A deploy file made from a ``--factory`` model records the factory but never imports it on its
    own (a file must not decide which code runs): pass ``factory`` (the same ``module:function``)
    to rebuild it, or ``model``, a freshly built source-architecture model to restructure.
    """
    manifest = validate_deploy(obj)
    if model is None and factory:
        model = _model_from_factory(factory)
    if model is None:
        arch = manifest.get("arch")
        if not arch:
            recorded = manifest.get("factory")
            hint = f"pass --factory {recorded} (the factory it was made with)" if recorded else "rebuild it with model_from_deploy(obj, model=<fresh source model>)"
            raise CheckpointError("the deploy checkpoint names no zoo architecture" + (f" (its source was built by --factory {recorded})" if recorded else ""), hint)
        from odexport.models import create_model

        try:
            model = create_model(arch, **(manifest.get("model_kwargs") or {}))
        except (TypeError, ValueError) as exc:  # an unknown arch is an ArchitectureError of its own
            raise CheckpointError(f"the deploy manifest's model_kwargs do not build {arch!r}: {' '.join(str(exc).split())[:200]}",
                                  _REBUILD_HINT) from None
    _restore_forward_temperature(model, manifest)
    given = next((t for t in model.parameters() if t.is_floating_point()), None)
    try:
        for name, spec in manifest.get("replaced", {}).items():
            model.set_submodule(name, module_from_spec(spec))
        for name, spec in manifest.get("layers", {}).items():
            layer = model.get_submodule(name)
            if not isinstance(layer, DYNAMIC_CONV_TYPES):
                raise ValueError(f"{name} is a {type(layer).__name__}, the manifest describes a {spec.get('type')}")
            layer.apply_deploy_spec(spec)
    except KeyError as exc:
        raise CheckpointError(f"deploy manifest entry lacks the field {exc}: the file is damaged or was edited", _REBUILD_HINT) from None
    except (AttributeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"deploy manifest does not fit the architecture {manifest.get('arch')!r}: {exc}", _REBUILD_HINT) from None
    if given is not None:  # the modules and parameters made above are in torch's default dtype: the model's own instead
        model.to(dtype=given.dtype, device=given.device)
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"deploy state dict does not fit the rebuilt model: {first}", _REBUILD_HINT) from None
    model.eval()
    object.__setattr__(model, META_ATTR, {
        "passes": list(manifest.get("passes", [])),
        "original_temperatures": dict(manifest.get("original_temperatures", {})),
        "replaced": list(manifest.get("replaced", {})),
        "deploy_manifest": manifest,
    })
    return model


def _restore_forward_temperature(model: nn.Module, manifest: Mapping[str, Any]) -> None:
    """A temperature-argument wrapper is built at T=1: the temperature its forward was called with
    when the file was made is restored (the file computed something else at 1)."""
    from odexport.convert import TemperatureArgModel

    recorded = manifest.get("forward_temperature")
    if recorded is None:  # no such model (or a file from before the field: the wrapper's default is all there is)
        return
    if not isinstance(model, TemperatureArgModel):
        raise CheckpointError(f"the deploy file was made from a model whose forward takes the temperature (T={recorded:g}); "
                              f"the model given to rebuild it, a {type(model).__name__}, does not",
                              "rebuild it with the same --factory it was made with")
    model.temperature = float(recorded)


def _model_from_factory(factory: str) -> nn.Module:
    """The user's architecture with its reference layers swapped for odexport's, as the loader builds it."""
    from odexport.convert import TemperatureArgModel, build_from_factory, convert_reference_layers, needs_temperature_argument

    model = convert_reference_layers(build_from_factory(factory)).model
    return TemperatureArgModel(model) if needs_temperature_argument(model) else model


def load_deploy(path: str | os.PathLike, *, model: nn.Module | None = None, factory: str | None = None) -> nn.Module:
    """``torch.load(path, weights_only=True)`` then :func:`model_from_deploy`."""
    try:
        obj = torch.load(Path(path), weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"deploy checkpoint {path} does not exist", "check the path") from None
    except Exception as exc:  # noqa: BLE001 - unreadable or unsafe file
        raise CheckpointError(f"cannot read deploy checkpoint {path}: {type(exc).__name__}", "write it again with `odexport reparam`") from None
    return model_from_deploy(obj, model=model, factory=factory)


__all__ = ["DEPLOY_KEY", "FORMAT_VERSION", "deploy_manifest", "is_deploy_checkpoint", "load_deploy", "model_from_deploy", "module_spec",
           "save_deploy", "validate_deploy"]
