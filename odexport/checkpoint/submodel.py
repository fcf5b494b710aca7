"""Composite checkpoints: the dynamic-convolution network is one part of a bigger model.

The detection code of OSVAI/ODConv (``object_detection/``, built on mmdet/mmcv) saves the whole
detector::

    {'meta': {'epoch': 12, 'mmdet_version': '2.11.0', ...},
     'state_dict': {'backbone.conv1.weight': ..., 'backbone.layer1.0.conv1.weight': ...,
                    'neck.lateral_convs.0.conv.weight': ..., 'rpn_head.rpn_conv.weight': ...,
                    'roi_head.bbox_head.fc_cls.weight': ..., ...}}

Under ``backbone.`` the keys are those of the classification network (the OD-ResNet of
``models/od_resnet.py``, classifier ``fc`` included: mmcv loads the ImageNet weights into the
backbone with ``strict=True``, so the backbone keeps its head).  mmseg and mmcls follow the same
convention (``backbone.`` next to ``decode_head.`` or ``neck.``/``head.``).

**Which part is loaded.** A *sub-model prefix* is a dotted prefix whose last component is
``backbone`` or ends with ``_backbone`` (``backbone.``, ``img_backbone.``, ``student.backbone.``)
and under which dynamic-convolution layers live.  Exactly one such prefix: its keys, with the
prefix removed, are the weights (architecture detection then runs as for any checkpoint) and every
other key is ignored and reported by part (``neck``, ``rpn_head``, ...).  More than one: nothing
is guessed; the error lists them and names the ``submodel`` argument (``--submodel`` on the command line).  ``submodel="backbone"``
picks a prefix explicitly and ``submodel=""`` keeps the whole file.

**The backbone's classifier.** A detector neither runs nor trains its backbone's ``fc``: in an
mmdet file it still holds whatever the backbone was initialised with (the ImageNet head), while
the convolutions were fine-tuned for detection.  The loaded model is complete and its conv
features are the detector's, but its class scores are not meaningful; the load report says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from odexport.checkpoint.detect import dynamic_layer_keys
from odexport.errors import CheckpointError

# Parts of a detector / segmentor next to its backbone (mmdet, mmseg): they name the file's kind.
DETECTION_PARTS = ("rpn_head", "roi_head", "bbox_head", "mask_head", "keypoint_head", "semantic_head", "panoptic_head")
SEGMENTATION_PARTS = ("decode_head", "auxiliary_head")
# mmcv's EMAHook keeps its averages as top-level buffers 'ema_<dotted name with _>' in the state_dict.
_EMA_BUFFER = "ema_"


@dataclass
class SubModel:
    """The part of a composite checkpoint that is loaded, and what was left out."""

    prefix: str  # "backbone." ("" never: a whole file is not a sub-model)
    kind: str  # "detection checkpoint (mmdet 2.11.0)", "segmentation checkpoint", "composite checkpoint"
    state_dict: dict[str, Any]  # the part's weights, prefix removed
    ignored: dict[str, int] = field(default_factory=dict)  # other part -> number of keys
    explicit: bool = False  # named with submodel=... rather than found

    @property
    def name(self) -> str:
        last = self.prefix.rstrip(".").rpartition(".")[2]
        return "the backbone" if last == "backbone" or last.endswith("_backbone") else "the sub-model"

    @property
    def where(self) -> str:
        """e.g. "the backbone under 'backbone.' of this detection checkpoint (mmdet 2.11.0)"."""
        return f"{self.name} under '{self.prefix}' of this {self.kind}"

    def sentence(self) -> str:
        """The load report's line, e.g. for ``odexport inspect``'s notes."""
        text = f"{self.kind}: loaded {self.name} ({_keys(len(self.state_dict))} under '{self.prefix}')"
        if self.ignored:
            parts = list(self.ignored)
            shown = ", ".join(parts[:6]) + (f" and {len(parts) - 6} more parts" if len(parts) > 6 else "")
            text += (f"; ignored {_keys(sum(self.ignored.values()))} of {shown} "
                     f"(not part of the exported {self.name.removeprefix('the ')})")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "kind": self.kind, "num_keys": len(self.state_dict), "ignored": dict(self.ignored),
                "explicit": self.explicit}


def _keys(n: int) -> str:
    return f"{n} key" if n == 1 else f"{n} keys"


def _shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}


def _is_submodel_name(component: str) -> bool:
    return component == "backbone" or component.endswith("_backbone")


def submodel_candidates(state_dict: Mapping[str, Any]) -> list[str]:
    """Sub-model prefixes (see the module docstring) under which dynamic layers live, in key order."""
    prefixes: dict[str, None] = {}
    for key in state_dict:
        parts = key.split(".")[:-1]  # module path; the last component is the tensor's own name
        for depth, component in enumerate(parts):
            if _is_submodel_name(component):
                prefixes[".".join(parts[: depth + 1]) + "."] = None
                break
    found = []
    for prefix in prefixes:
        if dynamic_layer_keys(_shapes(_under(state_dict, prefix))):
            found.append(prefix)
    return found


def sole_prefix(state_dict: Mapping[str, Any]) -> str | None:
    """``"model."`` when every key lives under one top-level module that holds dynamic layers
    (a PyTorch Lightning module keeps its network as an attribute, ``self.model`` / ``self.net``,
    so its checkpoint's keys all start with that name); ``None`` otherwise."""
    tops = {key.split(".", 1)[0] if "." in key else None for key in state_dict}
    if len(tops) != 1 or None in tops:
        return None
    prefix = next(iter(tops)) + "."
    return prefix if dynamic_layer_keys(_shapes(_under(state_dict, prefix))) else None


def _under(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _part_of(key: str, prefix: str) -> str:
    """The part a left-out key belongs to: its module path up to where it leaves ``prefix``
    (``neck`` next to ``backbone.``; ``teacher.neck`` and ``student`` next to ``teacher.backbone.``)."""
    if "." not in key and key.startswith(_EMA_BUFFER):
        return f"{_EMA_BUFFER}* (EMA buffers)"
    parts, own = key.split("."), prefix.rstrip(".").split(".")
    common = 0
    while common < min(len(parts) - 1, len(own)) and parts[common] == own[common]:
        common += 1
    return ".".join(parts[: common + 1])


def _kind(parts: list[str], meta: Any) -> str:
    """What the whole file is, from mmcv's ``meta`` (``mmdet_version``, ...) or the names of its parts."""
    tool = None
    if isinstance(meta, Mapping):
        for key, value in meta.items():
            name = str(key)
            if name.startswith("mm") and name.endswith("_version") and name not in ("mmcv_version", "mmengine_version"):
                tool = f"{name[: -len('_version')]} {value}".strip()
                break
    leaves = {p.rpartition(".")[2] for p in parts}
    if tool and tool.startswith("mmdet") or leaves & set(DETECTION_PARTS):
        kind = "detection checkpoint"
    elif tool and tool.startswith("mmseg") or leaves & set(SEGMENTATION_PARTS):
        kind = "segmentation checkpoint"
    else:
        kind = "composite checkpoint"
    return f"{kind} ({tool})" if tool else kind


def find_submodel(state_dict: Mapping[str, Any], *, submodel: str | None = None, meta: Any = None) -> SubModel | None:
    """The part of ``state_dict`` to load (``None``: the whole of it); see the module docstring.

    ``submodel`` ``None`` finds the prefix, a name (``"backbone"`` or ``"backbone."``) picks it,
    ``""`` keeps the whole file.  Raises :class:`CheckpointError` when a named prefix holds no key
    and when several sub-models hold dynamic layers.
    """
    if submodel is not None:
        prefix = submodel.strip()
        if not prefix.strip("."):
            return None
        prefix = prefix.rstrip(".") + "."
        if not any(k.startswith(prefix) for k in state_dict):
            tops = sorted({k.split(".")[0] for k in state_dict if "." in k})
            largest = max(tops, key=lambda top: sum(k.startswith(top + ".") for k in state_dict)) if tops else ""
            raise CheckpointError(
                f"no key of the checkpoint starts with '{prefix}' (its top-level parts: {', '.join(tops[:8]) or 'none'})",
                (f"pass one of those parts with --submodel (e.g. --submodel {largest}; submodel='{largest}' in the library), "
                 if tops else "") + "or --submodel '' for the whole file",
            )
        explicit = True
    else:
        found = submodel_candidates(state_dict)
        if not found:
            return None
        if len(found) > 1:
            shown = ", ".join(f"'{p}'" for p in found[:4])
            raise CheckpointError(
                f"the checkpoint holds {len(found)} sub-models with dynamic-convolution layers ({shown}); "
                "odexport exports one network and does not guess which",
                f"pick one with --submodel {found[0].rstrip('.')} (submodel='{found[0].rstrip('.')}' in odexport.checkpoint.load_checkpoint), "
                "or save that part's state_dict on its own",
            )
        prefix, explicit = found[0], False
    ignored: dict[str, int] = {}
    for key in state_dict:
        if not key.startswith(prefix):
            part = _part_of(key, prefix)
            ignored[part] = ignored.get(part, 0) + 1
    return SubModel(prefix, _kind(list(ignored), meta), _under(state_dict, prefix), ignored, explicit)


def classifier_warning(part: SubModel, classifier_key: str | None) -> str | None:
    """The note for a detector's or segmentor's backbone that kept its classifier (which the whole
    network never trained)."""
    owner = {"detection": "detector", "segmentation": "segmentor"}.get(part.kind.split()[0])
    if owner is None or classifier_key is None or classifier_key not in part.state_dict:
        return None
    head = classifier_key.rpartition(".")[0]
    return (f"a {owner} neither runs nor trains its backbone's classifier '{head}': the exported "
            f"model's conv features are the {owner}'s, but its class scores come from the head the backbone was "
            "initialised with (e.g. its ImageNet weights) and are not meaningful")


def missing_classifier(file_shapes: Mapping[str, tuple[int, ...]], *, arch: str | None = None) -> tuple[str, str] | None:
    """``(architecture, classifier module)`` when the weights would fit ``arch`` (or a registered
    architecture of their layout) but for the classifier, which the file lacks; else ``None``."""
    from odexport.checkpoint.detect import FAMILY_LAYOUTS, classifier_key, key_family, model_shapes, structure
    from odexport.models import list_models, model_info

    if arch is not None:
        names = [arch]
    else:
        family = key_family(file_shapes)
        if family is None:
            return None
        names = [n for n in list_models() if model_info(n).layout in FAMILY_LAYOUTS[family]]
    file_structure = structure(file_shapes)
    for name in names:
        clf = classifier_key(name)
        if clf is None or clf in file_shapes:
            continue
        head = clf.rpartition(".")[0]
        if structure(model_shapes(name, {})) - {head} == file_structure:
            return name, head
    return None


def headless_error(subject: str, arch: str, head: str) -> CheckpointError:
    """The one-line error for a backbone saved without its classifier (odexport exports whole networks)."""
    return CheckpointError(
        f"{subject} has no classifier (no '{head}.*' keys; otherwise the weights fit {arch}), "
        "and odexport exports whole classification networks, not headless feature extractors",
        f"add the classifier's '{head}.*' tensors (e.g. from the ImageNet checkpoint the backbone started from) to the "
        "state_dict, or build a headless model with --factory module:function",
    )
