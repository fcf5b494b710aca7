"""From a checkpoint file (or an architecture name) to a model in eval mode with its provenance.

Three ways a checkpoint becomes a model:

* **zoo** (default): the architecture is detected from key names and shapes
  (:mod:`odexport.checkpoint.detect`) or named with ``arch``; it is built with the options read
  from the file, dynamic layers whose attention shapes differ are rebuilt from the file's shapes
  (:mod:`odexport.checkpoint.conform`), and the weights are loaded strictly;
* **factory**: the user's own architecture from ``module:function``; the weights are loaded into
  it, then its reference layers are swapped for odexport's (:mod:`odexport.convert`);
* **deploy**: a file written by ``odexport reparam`` (``{"odexport_deploy": manifest,
  "state_dict": ...}``) is rebuilt by :func:`odexport.reparam.deploy.model_from_deploy`.

A composite checkpoint (an mmdet detector: ``backbone.``, ``neck.``, ``rpn_head.``, ...) gives up its
backbone first (:mod:`odexport.checkpoint.submodel`); the other parts are ignored and reported.

Temperature: every dynamic layer runs at ``temperature`` when given, else at 1.0 -- the value a
trained network is evaluated at in all three reference codes (none saves it in the checkpoint;
kaijieshi7's constructor default 34 is the *training start* value).  The one exception is the
factory path without ``temperature``: the temperatures set by the user's own code are carried
over, with a warning for any that is not 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from odexport.checkpoint.compat import load_weights_strict, shapes_of_state_dict
from odexport.checkpoint.conform import conform_dynamic_layers
from odexport.checkpoint.detect import detect_architecture, dynamic_layer_keys, no_weight_init, raise_if_tardelean_deeplab
from odexport.checkpoint.info import CheckpointInfo, LoadedModel
from odexport.checkpoint.reader import CHECKPOINT_SUFFIXES, RawCheckpoint, describe_metadata, read_checkpoint_file
from odexport.checkpoint.state_dict import EMA_ENTRIES, extract_state_dict
from odexport.checkpoint.submodel import (
    SubModel,
    classifier_warning,
    find_submodel,
    headless_error,
    missing_classifier,
    sole_prefix,
    submodel_candidates,
)
from odexport.errors import ArchitectureError, CheckpointError, InputError

DEPLOY_KEY = "odexport_deploy"
DEFAULT_TEMPERATURE = 1.0


def check_temperature(temperature: float | None) -> float | None:
    from odexport.layers.functional import positive_temperature

    return None if temperature is None else positive_temperature(temperature)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    kernel_num: int | None = None,
    temperature: float | None = None,
    trust_pickle: bool = False,
    factory: str | None = None,
    prefer_ema: bool = False,
    submodel: str | None = None,
    shared_options: bool = False,
) -> LoadedModel:
    """Load ``path`` into a model in eval mode; see the module docstring.

    ``prefer_ema`` loads the file's EMA weights (an error when it has none); a deploy checkpoint
    holds the one set chosen when it was made (``prefer_ema`` on one made from plain weights is an
    error, as are an ``arch``, ``kernel_num`` or ``submodel`` that contradict its manifest).
    ``submodel`` picks the part of a composite checkpoint to load (``"backbone"`` of an mmdet
    detector); by default a single ``backbone.`` holding dynamic layers is found, and ``""`` keeps
    the whole file (:mod:`odexport.checkpoint.submodel`).  ``shared_options``: the options were
    given for another file of the same run (check's reference): a deploy file that settles them
    ignores them.

    Raises :class:`~odexport.errors.CheckpointError` / :class:`~odexport.errors.ArchitectureError`
    (one line with a fix) for every file or fit problem.

    The modules are built with random weights before the file's replace them: that draws from
    torch's global generator, whose state is restored, so loading leaves a caller's seeded stream
    where it was.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        return _load_checkpoint(path, arch=arch, kernel_num=kernel_num, temperature=temperature, trust_pickle=trust_pickle,
                                factory=factory, prefer_ema=prefer_ema, submodel=submodel, shared_options=shared_options)


def _load_checkpoint(path, *, arch, kernel_num, temperature, trust_pickle, factory, prefer_ema, submodel,
                     shared_options=False) -> LoadedModel:
    temperature = check_temperature(temperature)
    if factory and arch:
        raise InputError("--arch and --factory both name an architecture", "pass only one of them")
    raw = read_checkpoint_file(path, trust_pickle=trust_pickle)
    if isinstance(raw.obj, Mapping) and DEPLOY_KEY in raw.obj:
        if shared_options:  # the reference's options: the deploy file settles them itself (check notes an EMA mismatch)
            arch = kernel_num = submodel = None
            prefer_ema = False
        return _from_deploy(raw, temperature, factory, arch=arch, kernel_num=kernel_num, prefer_ema=prefer_ema, submodel=submodel)
    weights = extract_state_dict(raw.obj, prefer_ema=prefer_ema)
    if prefer_ema and not weights.used_ema:  # asked for, and not there: never the plain weights in their place
        raise CheckpointError(f"{raw.path} holds no EMA weights (entries looked for: {', '.join(EMA_ENTRIES)})",
                              "drop --ema (prefer_ema) to load its plain weights")
    extras: dict[str, Any] = {
        "file_format": raw.file_format,
        "file_size": raw.size,
        "weights_entry": weights.entry,
        "ignored_entries": weights.ignored_entries,
        "stripped_prefixes": weights.stripped_prefixes,
        "ema_entry": weights.ema_entry,
        "used_ema": weights.used_ema,
        "num_tensors": len(weights.state_dict),
        "warnings": [],
    }
    if raw.unpickled_module:
        extras["unpickled_module"] = raw.unpickled_module
    if raw.metadata:
        extras["metadata"] = describe_metadata(raw.metadata)
    if weights.dropped_non_tensors:
        extras["dropped_non_tensors"] = weights.dropped_non_tensors
    if weights.dropped_counters:
        extras["dropped_counters"] = weights.dropped_counters
        extras["warnings"].append("dropped bookkeeping tensors saved with the weights: "
                                  + ", ".join(f"{count} {what}" for what, count in weights.dropped_counters.items()))
    if weights.ema_entry and not weights.used_ema:
        extras["warnings"].append(f"the file also holds EMA weights ('{weights.ema_entry}'); the plain weights were used "
                                  "(--ema, or prefer_ema=True, loads the EMA)")
    _note_non_finite(weights.state_dict, extras)
    _note_storage_dtypes(weights.state_dict, extras)
    meta = raw.obj.get("meta") if isinstance(raw.obj, Mapping) else None
    if factory:
        return _from_factory(raw, weights.state_dict, factory, temperature, extras, submodel, meta)
    if submodel is None and arch is None:
        raise_if_tardelean_deeplab(shapes_of_state_dict(weights.state_dict))
    part = find_submodel(weights.state_dict, submodel=submodel, meta=meta)
    if part is not None:
        _note_submodel(extras, part)
        return _from_zoo(raw, part.state_dict, arch, kernel_num, temperature, extras, part)
    try:
        return _from_zoo(raw, weights.state_dict, arch, kernel_num, temperature, extras)
    except (ArchitectureError, CheckpointError) as misfit:
        wrapper = sole_prefix(weights.state_dict) if submodel is None else None
        if wrapper is None:
            hint = None if submodel is not None else _fitting_part_hint(raw, weights.state_dict, arch, kernel_num, temperature)
            if hint is None:
                raise
            raise type(misfit)(misfit.message, hint) from misfit
        return _from_zoo_under(raw, weights.state_dict, wrapper, arch, kernel_num, temperature, extras, misfit)


def _fitting_part_hint(raw, state_dict, arch, kernel_num, temperature) -> str | None:
    """After the whole file misfit: the hint ``--submodel NAME`` when the keys under one top-level
    name (the one holding most of the dynamic layers' keys) fit a registered architecture on their
    own, as a training wrapper leaves them (``model.*`` next to a Lightning module's
    ``criterion.weight``).  Not loaded without being asked: the keys left out may be the model's."""
    tops: dict[str, int] = {}
    for layer in dynamic_layer_keys(shapes_of_state_dict(state_dict)):
        if "." in layer.prefix:
            top = layer.prefix.split(".", 1)[0]
            tops[top] = tops.get(top, 0) + 1
    if not tops:
        return None
    name = max(tops, key=tops.get)
    inner, _ = _under_wrapper({k: v for k, v in state_dict.items() if k.startswith(name + ".")}, name + ".")
    try:
        fitted = _from_zoo(raw, inner, arch, kernel_num, temperature, {"warnings": []})
    except (ArchitectureError, CheckpointError):
        return None
    outside = sorted(k for k in state_dict if not k.startswith(name + "."))
    shown = ", ".join(outside[:3]) + (" ..." if len(outside) > 3 else "")
    return (f"the weights under '{name}.' fit {fitted.info.arch} on their own (keys outside it: {shown}): "
            f"pass --submodel {name} if that is the network")


def _from_zoo_under(raw, state_dict, wrapper: str, arch, kernel_num, temperature, extras, misfit) -> LoadedModel:
    """Every key under one attribute that does not fit as it is (``model.conv1.weight``: a
    Lightning module's ``self.model``): the weights under it, if they fit, with a note. Only after
    the file failed as it is, so a network whose own modules all sit under one name still loads
    whole; if the weights under it do not fit either, the first misfit is the error."""
    inner, removed = _under_wrapper(state_dict, wrapper)
    try:
        loaded = _from_zoo(raw, inner, arch, kernel_num, temperature, extras)
    except (ArchitectureError, CheckpointError):
        raise misfit from None
    _note_wrapper(extras, removed)
    return loaded


def _under_wrapper(state_dict, wrapper: str) -> tuple[dict[str, Any], list[str]]:
    """The weights under ``wrapper``, and the prefixes removed: ``wrapper`` and any DataParallel or
    ``torch.compile`` prefix inside it (``model.module.conv1.weight``)."""
    from odexport.checkpoint.state_dict import strip_wrapper_prefixes

    inner, wrappers = strip_wrapper_prefixes({k[len(wrapper):]: v for k, v in state_dict.items()})
    return inner, [wrapper, *wrappers]


def _note_wrapper(extras: dict[str, Any], removed: list[str]) -> None:
    extras["stripped_prefixes"] = [*extras.get("stripped_prefixes", []), *removed]
    extras["warnings"].insert(0, f"every key is under '{removed[0]}' (a training wrapper's attribute, such as a PyTorch "
                                 f"Lightning module's self.{removed[0].rstrip('.')}): loaded the network under it")


def _note_non_finite(state_dict, extras: dict[str, Any]) -> None:
    """A NaN or inf in the weights (a diverged run, a damaged file) makes every output NaN; loading
    still succeeds, so that ``inspect`` can show the file, but every command says so up front."""
    import torch

    bad = {key: int((~torch.isfinite(value)).sum()) for key, value in state_dict.items()
           if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())}
    if bad:
        first, total = next(iter(bad)), sum(bad.values())
        extras["non_finite_weights"] = bad
        extras["warnings"].append(f"{total} NaN/inf value{'s' if total > 1 else ''} in {len(bad)} weight tensor{'s' if len(bad) > 1 else ''}, "
                                  f"the first in '{first}': the model will compute NaN (a diverged training run or a damaged file)")


def _note_storage_dtypes(state_dict, extras: dict[str, Any]) -> None:
    """Weights saved in half precision (``model.half()`` before ``torch.save``) are computed in
    float32 like any others -- the upcast is exact -- but the file then holds only what float16 or
    bfloat16 kept of the trained values: ``inspect`` names the stored types so that nobody takes
    an fp32 parity pass for proof against the training run's own float32 weights."""
    import torch

    counts: dict[str, int] = {}
    for value in state_dict.values():
        if torch.is_tensor(value) and value.is_floating_point():
            name = str(value.dtype).removeprefix("torch.")
            counts[name] = counts.get(name, 0) + 1
    if set(counts) - {"float32"}:
        extras["stored_dtypes"] = dict(sorted(counts.items(), key=lambda item: -item[1]))


def _note_submodel(extras: dict[str, Any], part: SubModel) -> None:
    extras["submodel"] = part.to_dict()
    extras["warnings"].insert(0, part.sentence())


def _from_zoo(raw: RawCheckpoint, state_dict, arch, kernel_num, temperature, extras, part: SubModel | None = None) -> LoadedModel:
    from odexport.checkpoint.detect import classifier_key
    from odexport.layers import dynamic_convs, pinned_temperature_layers, set_temperature
    from odexport.models import create_model, list_models, model_info

    file_shapes = shapes_of_state_dict(state_dict)
    try:
        detection = detect_architecture(file_shapes, arch=arch, kernel_num=kernel_num)
    except (ArchitectureError, CheckpointError) as exc:
        # a backbone saved without its head fits but for the classifier: say that, not "N keys missing"
        headless = missing_classifier(file_shapes, arch=arch) if arch is None or arch in list_models() else None
        if headless:
            raise headless_error(part.where if part else "the checkpoint", *headless) from exc
        if part is not None:
            raise type(exc)(f"{part.where}: {exc.message}", exc.hint) from exc
        raise
    info = model_info(detection.arch)
    if part is not None:
        warning = classifier_warning(part, classifier_key(detection.arch))
        if warning:
            extras["warnings"].append(warning)
    with no_weight_init():  # every parameter is overwritten by the strict load below: skip the random init
        model = create_model(detection.arch, **detection.model_kwargs)
    conformed = conform_dynamic_layers(model, file_shapes, detection.conformed_layers) if detection.conformed_layers else []
    # detected from the file's own layers: an architecture option cannot mend what the file lacks or adds
    detected_hint = None if arch else ("the file's layers were recognised as this architecture, but it lacks or adds these keys: "
                                       "save the trained model's full state_dict() again, or load it with --factory if its code "
                                       "differs from the reference")
    load_weights_strict(model, state_dict, what=f"architecture {detection.arch}", hint=detected_hint)
    model.eval()
    value = DEFAULT_TEMPERATURE if temperature is None else temperature
    set_temperature(model, value)
    single, per_layer = _temperatures(dynamic_convs(model))
    if per_layer:
        extras["temperatures"] = per_layer
    pinned = [(name, t) for name, t in pinned_temperature_layers(model) if t != value]
    if pinned:
        extras["warnings"].append(
            f"temperature {value:g} reaches every dynamic layer but {', '.join(f'{name} (T={t:g})' for name, t in pinned)}: "
            f"{detection.arch}'s reference never hands the temperature to {'that layer' if len(pinned) == 1 else 'those layers'}")
    if conformed:
        total = len(dynamic_convs(model))
        shown = ", ".join(conformed[:3]) + (" ..." if len(conformed) > 3 else "")
        extras["warnings"].append(
            f"{len(conformed)} of {total} dynamic layers ({shown}) take their attention shapes from the file (hidden width, "
            f"kernel count, bias), not from the options shown: files of older reference code (kaijieshi7's int(in*ratio) before "
            f"2020-10-31) or per-layer settings; the per-layer table shows each one")
    extras.update(detected=detection.detected, key_family=detection.family, conformed_layers=conformed, output=info.output)
    num_classes = _num_classes(model, detection.model_kwargs, info)
    input_shape, dataset = info.input_shape_for(num_classes)
    if dataset is not None and input_shape != tuple(info.input_shape):
        extras[DEFAULT_INPUT_NOTE] = (f"default input {'x'.join(map(str, input_shape))}: {num_classes} classes is {detection.arch}'s "
                                      f"{dataset} setting in the reference code; pass --input-shape if it was trained at another size")
        extras["warnings"].append(extras[DEFAULT_INPUT_NOTE])
    return LoadedModel(model, CheckpointInfo(
        path=raw.path, sha256=raw.sha256, layout=detection.layout, arch=detection.arch,
        model_kwargs=dict(detection.model_kwargs), input_shape=input_shape,
        num_classes=num_classes, temperature=single,
        source="checkpoint", extras=extras,
    ))


def is_factory_spec(name: str | None) -> bool:
    """``module:function`` (or ``path.py:function``) names a ``--factory``; registered names have no colon."""
    return bool(name) and ":" in str(name)


def factory_architecture(factory: str) -> nn.Module:
    """The network ``--factory`` builds, reference layers converted, weights as built: the shapes
    an export of it has (``bench`` makes an ONNX file's static twin from it)."""
    from odexport.convert import TemperatureArgModel, build_from_factory, convert_reference_layers, needs_temperature_argument

    model = convert_reference_layers(build_from_factory(factory)).model
    if needs_temperature_argument(model):
        model = TemperatureArgModel(model, DEFAULT_TEMPERATURE)
    return model.eval()


def _from_factory(raw: RawCheckpoint, state_dict, factory: str, temperature, extras, submodel=None, meta=None) -> LoadedModel:
    from odexport.convert import TemperatureArgModel, build_from_factory, convert_reference_layers, needs_temperature_argument
    from odexport.layers import dynamic_convs, set_temperature

    model = build_from_factory(factory)
    own = list(model.state_dict())
    stripped = "".join(extras.get("stripped_prefixes") or [])
    if stripped and own and all(k.startswith(stripped) for k in own):
        # the factory's model has the wrapper's names itself (a submodule called `module`, a
        # DataParallel or torch.compile'd model): the file's keys were right as they were
        state_dict = {stripped + k: v for k, v in state_dict.items()}
        extras["stripped_prefixes"] = []
    # the user's model may itself be the composite (its own keys start with 'backbone.'): then load all of it
    composite = submodel is None and any(k.startswith(p) for p in submodel_candidates(state_dict) for k in own)
    part = None if composite else find_submodel(state_dict, submodel=submodel, meta=meta)
    if part is not None:
        _note_submodel(extras, part)
        state_dict = part.state_dict
    wrapper = sole_prefix(state_dict) if part is None and submodel is None else None
    if wrapper is not None and not any(k.startswith(wrapper) for k in own):  # a Lightning file: as in _from_zoo_under
        state_dict, removed = _under_wrapper(state_dict, wrapper)
        _note_wrapper(extras, removed)
    load_weights_strict(model, state_dict, what=f"the model built by --factory {factory}",
                        hint="build the network the checkpoint was trained with (the same module names and shapes); "
                             "--submodel PART loads one part of a bigger file")
    report = convert_reference_layers(model, tardelean_temperature=temperature)
    model = report.model
    if temperature is not None:
        set_temperature(model, temperature)
    else:
        extras["warnings"].extend(report.warnings)
    if needs_temperature_argument(model):
        model = TemperatureArgModel(model, temperature if temperature is not None else DEFAULT_TEMPERATURE)
    model.eval()
    _note_batch_statistics(model, extras)
    layers = dynamic_convs(model)
    if not layers:
        extras["warnings"].append(
            f"no dynamic layer was recognised in the model built by --factory {factory}"
            + (f" (left unchanged: {', '.join(f'{n} ({c})' for n, c, _ in report.skipped[:3])})" if report.skipped else "")
        )
    single, per_layer = _temperatures(layers)
    extras.update(
        factory=factory,
        converted_layers=[{"name": c.name, "reference": c.reference, "layout": c.layout, "temperature": c.temperature,
                           "temperature_source": c.temperature_source} for c in report.converted],
        skipped_modules=[{"name": n, "class": c, "reason": r} for n, c, r in report.skipped],
        reference_layouts=report.layouts,
    )
    if per_layer:
        extras["temperatures"] = per_layer
    extras[INPUT_SHAPE_ASSUMED] = True
    return LoadedModel(model, CheckpointInfo(
        path=raw.path, sha256=raw.sha256, layout="factory", arch=factory, model_kwargs={},
        input_shape=_guess_input_shape(model), num_classes=_num_classes(model, {}, None),
        temperature=single, source="factory", extras=extras,
    ))


def _from_deploy(raw: RawCheckpoint, temperature, factory: str | None = None, *, arch: str | None = None,
                 kernel_num: int | None = None, prefer_ema: bool = False, submodel: str | None = None) -> LoadedModel:
    try:
        from odexport.reparam.deploy import model_from_deploy, validate_deploy
    except ImportError as exc:
        raise CheckpointError(
            f"{raw.path} is an odexport deploy checkpoint, but this installation cannot rebuild it ({exc})",
            "install an odexport version with `odexport reparam` support, or load the original checkpoint",
        ) from exc
    from odexport.layers import dynamic_convs, set_temperature

    manifest = dict(validate_deploy(raw.obj))
    _refuse_options_a_deploy_file_settles(raw.path, manifest, arch=arch, kernel_num=kernel_num, prefer_ema=prefer_ema,
                                          submodel=submodel)
    # a deploy file made from a --factory model records the factory but never imports it on its own
    model = model_from_deploy(raw.obj, factory=factory)
    model.eval()
    layers = dynamic_convs(model)
    if kernel_num is not None and any(_kernel_count(layer) != kernel_num for _, layer in layers):
        _refuse_kernel_num(raw.path, kernel_num)  # a manifest without the zoo's default K: the layers say it
    folded = _temperature_folded(manifest)
    originals = {float(t) for t in (manifest.get("original_temperatures") or {}).values()}
    same = len(originals) == 1 and temperature is not None and math.isclose(temperature, next(iter(originals)), rel_tol=1e-6)
    if temperature is not None and not same:  # the folded temperature itself is no change
        if folded:
            shown = ", ".join(f"{t:g}" for t in sorted(originals)) or "recorded in the manifest"
            raise InputError(
                f"{raw.path} has its temperature folded into the weights (T={shown}); it cannot be changed here",
                "run `odexport reparam` again on the original checkpoint with the temperature you want",
            )
        set_temperature(model, temperature)
        if hasattr(model, "temperature") and manifest.get("forward_temperature") is not None:
            model.temperature = float(temperature)  # the forward's own argument, as a checkpoint's -T sets it
    if folded:  # the layers run at T=1 now: what the still dynamic ones were trained at is in the manifest
        dynamic = {name for name, _ in layers}
        recorded = {name: float(t) for name, t in (manifest.get("original_temperatures") or {}).items() if name in dynamic}
        values = set(recorded.values()) if recorded else originals
        value = next(iter(values)) if len(values) == 1 else None
        per_layer = recorded if value is None and recorded else None
    else:
        value, per_layer = _temperatures(layers)
    input_shape = manifest.get("input_shape")
    if manifest.get("factory") and not manifest.get("input_shape_given"):
        input_shape = None  # the loader's guess, recorded by reparam before `input_shape_given` existed
    arch = manifest.get("arch")
    if input_shape is None and arch:
        try:
            from odexport.models import model_info

            input_shape = model_info(arch).input_shape
        except ArchitectureError:
            input_shape = None
    extras = {"file_format": raw.file_format, "file_size": raw.size, "manifest": manifest, "temperature_folded": folded,
              "passes": list(manifest.get("passes") or []), "warnings": []}
    _note_non_finite(raw.obj["state_dict"], extras)
    if per_layer:
        extras["temperatures"] = per_layer
    if not input_shape:
        extras[INPUT_SHAPE_ASSUMED] = True
    return LoadedModel(model, CheckpointInfo(
        path=raw.path, sha256=raw.sha256, layout=manifest.get("layout") or "deploy", arch=arch or manifest.get("factory"),
        model_kwargs=dict(manifest.get("model_kwargs") or {}),
        input_shape=tuple(input_shape) if input_shape else _guess_input_shape(model),
        num_classes=manifest.get("num_classes") or _num_classes(model, manifest.get("model_kwargs") or {}, None),
        temperature=value, source="deploy", extras=extras,
    ))


def _note_batch_statistics(model, extras: dict[str, Any]) -> None:
    """A BatchNorm without running statistics (``track_running_stats=False``) normalises with each
    batch's own statistics even in eval: a sample's output depends on the samples beside it, so
    the same input differs between batch sizes and no parity gate can hold (and a pooled attention
    at batch 1 has one value per channel to normalise)."""
    from torch import nn

    free = [name for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None]
    if free:
        extras["warnings"].append(
            f"{len(free)} BatchNorm layer{'s' if len(free) > 1 else ''} without running statistics (track_running_stats=False; "
            f"the first '{free[0]}') normalise each batch by its own statistics in eval: a sample's output depends on the "
            "other samples in its batch, so outputs differ between batch sizes (and at batch 1 a pooled attention cannot be "
            "normalised); train with running statistics, or replace those layers before exporting")


def _refuse_options_a_deploy_file_settles(path, manifest: Mapping[str, Any], *, arch, kernel_num, prefer_ema, submodel) -> None:
    """A deploy file records its architecture, the weights it was made from and the part of the
    checkpoint it holds: an option saying otherwise was ignored before, and the file ran as it is."""
    recorded = manifest.get("arch") or manifest.get("factory")
    if arch and arch != recorded:
        raise InputError(f"{path} is a deploy file of {recorded or 'an unnamed architecture'}; --arch {arch} does not apply to it",
                         "drop --arch: a deploy file names its own architecture")
    kwargs = manifest.get("model_kwargs") or {}
    recorded_k = kwargs.get("kernel_num", kwargs.get("num_kernels"))
    if kernel_num is not None and recorded_k is not None and kernel_num != recorded_k:
        _refuse_kernel_num(path, kernel_num)
    if prefer_ema and not manifest.get("ema_entry"):
        made = ("it was made from its source's plain weights" if "ema_entry" in manifest
                else "it records no EMA entry (made from plain weights, or by an odexport that did not record one)")
        raise CheckpointError(f"{path} holds no EMA weights: {made}",
                              "drop --ema, or run `odexport reparam --ema` on the source checkpoint")
    if submodel:
        raise InputError(f"{path} is a deploy file of one model; --submodel {submodel} does not apply to it",
                         "drop --submodel: `odexport reparam --submodel` picked the part when the file was made")


def _kernel_count(layer) -> int:
    """K of a dynamic layer: ODConv2d calls it ``kernel_num``, DyConv2d ``num_kernels``."""
    return int(getattr(layer, "kernel_num", None) or layer.num_kernels)


def _refuse_kernel_num(path, kernel_num) -> None:
    raise InputError(f"{path} is a deploy file; --kernel-num {kernel_num} does not apply to it (its layers' K is fixed)",
                     "drop --kernel-num")


def _temperature_folded(manifest: Mapping[str, Any]) -> bool:
    if manifest.get("temperature_folded"):
        return True
    passes = manifest.get("passes") or []
    names = [p.get("name", "") if isinstance(p, Mapping) else str(p) for p in passes]
    return any("temperature" in n for n in names)


def model_from_arch(name: str, *, kernel_num: int | None = None, temperature: float | None = None, materialize: bool = True,
                    **kwargs) -> LoadedModel:
    """Build a registered architecture (random weights) with the same :class:`CheckpointInfo` as a checkpoint.

    ``materialize=False`` builds it on the ``meta`` device without initialising weights: enough to
    count parameters and MACs (shapes propagate through a meta forward) at a fraction of the cost.
    """
    from odexport.checkpoint.detect import build_meta
    from odexport.layers import dynamic_convs, set_temperature
    from odexport.models import create_model, model_info

    temperature = check_temperature(temperature)
    info = model_info(name)
    if kernel_num is not None:
        if "kernel_num" not in info.default_kwargs:
            raise ArchitectureError(f"{name} has no kernel_num option", "omit --kernel-num for this architecture")
        kwargs["kernel_num"] = kernel_num
    value = DEFAULT_TEMPERATURE if temperature is None else temperature
    if materialize:
        model = create_model(name, temperature=value, **kwargs).eval()
    else:
        model = build_meta(name, kwargs).eval()
        set_temperature(model, value)
    full_kwargs = {**dict(info.default_kwargs), **kwargs}
    num_classes = _num_classes(model, full_kwargs, info)
    return LoadedModel(model, CheckpointInfo(
        path=None, sha256=None, layout=info.layout, arch=name, model_kwargs=full_kwargs,
        input_shape=info.input_shape_for(num_classes)[0], num_classes=num_classes,
        temperature=_temperatures(dynamic_convs(model))[0], source="arch",
        extras={"output": info.output, "tiny": info.tiny, "family": info.family, "materialized": materialize, "warnings": []},
    ))


def _temperatures(layers) -> tuple[float | None, dict[str, float] | None]:
    """The one temperature of the dynamic ``layers`` (``None`` without layers or where they differ)
    and, where they differ (a ``pinned_temperature`` under ``--temperature``), each layer's."""
    per_layer = {name: float(layer.temperature) for name, layer in layers}
    values = set(per_layer.values())
    if len(values) == 1:
        return values.pop(), None
    return None, per_layer or None


def _num_classes(model: nn.Module, kwargs: Mapping[str, Any], info) -> int | None:
    if "num_classes" in kwargs:
        return int(kwargs["num_classes"])
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is not None:
        return int(last.out_features)
    return None if info is None else info.num_classes


#: ``CheckpointInfo.extras`` key: the load note on the sample size a class count implies (moot once a size is given)
DEFAULT_INPUT_NOTE = "default_input_note"


def drop_default_input_note(info, used_shape) -> None:
    """Withdraw the "default input HxW ... pass --input-shape" note when the run uses another size
    (given with ``--input-shape``, or the size an export was made at); at the default it stands."""
    if info is None or not used_shape or tuple(used_shape) == tuple(info.input_shape or ()):
        return
    note = info.extras.pop(DEFAULT_INPUT_NOTE, None)
    if note is not None and note in info.extras.get("warnings", []):
        info.extras["warnings"].remove(note)


#: ``CheckpointInfo.extras`` key: the input shape is :func:`_guess_input_shape`'s, not the model's own
#: (a ``--factory`` model, or a deploy file of one made without ``--input-shape``)
INPUT_SHAPE_ASSUMED = "input_shape_assumed"


def _guess_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """A factory model's sample shape: channels of its first convolution, 224x224 (marked
    :data:`INPUT_SHAPE_ASSUMED`: what writes a file from it asks for ``--input-shape`` instead)."""
    from odexport.layers import DyConv2d, ODConv2d

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return (int(module.in_channels), 224, 224)
        if isinstance(module, ODConv2d):
            return (int(module.in_planes), 224, 224)
        if isinstance(module, DyConv2d):
            return (int(module.in_channels), 224, 224)
    return (3, 224, 224)


def load_model(source: str | os.PathLike, *, materialize: bool = True, **options) -> LoadedModel:
    """A checkpoint path or a registered architecture name (``odexport inspect`` accepts either).

    An existing file is a checkpoint; otherwise a registered name is built (on the meta device when
    ``materialize`` is False); otherwise the error is the missing file's when the argument looks
    like a path, else the unknown name's (with close matches).  ``--arch`` with a name is ignored.
    """
    from odexport.models import list_models

    text = os.fspath(source)
    if os.path.exists(text):
        return load_checkpoint(text, **options)
    if text in list_models():
        for option, flag in (("factory", "--factory"), ("prefer_ema", "--ema")):
            if options.get(option):
                raise InputError(f"{flag} needs a checkpoint file, not an architecture name", "pass the checkpoint path")
        return model_from_arch(text, kernel_num=options.get("kernel_num"), temperature=options.get("temperature"),
                               materialize=materialize)
    looks_like_path = os.sep in text or "/" in text or text.lower().endswith(CHECKPOINT_SUFFIXES)
    if looks_like_path:
        return load_checkpoint(text, **options)  # raises the missing-file error
    from odexport.models import model_info

    model_info(text)  # raises ArchitectureError with close matches
    raise AssertionError("unreachable")
