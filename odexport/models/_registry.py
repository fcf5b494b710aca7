"""Name-addressed model registry (timm style): ``register_model`` / ``create_model`` / ``list_models``.

Every architecture file registers its builders with :func:`register_model`.  A builder is a plain
function whose keyword arguments (with defaults) are the model's options; the registry records
those defaults in :class:`ModelInfo` so callers (checkpoint detection, ``odexport inspect``) can
see them without building anything.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from odexport.errors import ArchitectureError

LAYOUTS = ("odconv", "kaijieshi7", "tardelean", "odexport")
OUTPUTS = ("logits", "log_softmax")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one architecture, without building it.

    ``layout`` names the state-dict layout of the dynamic layers (``odconv``: OSVAI/ODConv,
    ``kaijieshi7``: Dynamic-convolution-Pytorch, ``tardelean``: TArdelean/DynamicConvolution,
    ``odexport``: odexport's own).  ``input_shape`` is the default ``(C, H, W)`` the architecture
    was designed for; ``output`` says whether ``forward`` returns raw logits or ``log_softmax``.
    """

    name: str
    family: str
    layout: str
    default_kwargs: Mapping[str, Any]
    tiny: bool = False
    description: str = ""
    input_shape: tuple[int, int, int] = (3, 224, 224)
    output: str = "logits"
    builder: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    # num_classes -> (input shape, dataset) where the reference trains one architecture on
    # datasets of different image sizes and the class count tells them apart
    training_sizes: Mapping[int, tuple[tuple[int, int, int], str]] = field(default_factory=dict)

    def input_shape_for(self, num_classes: int | None) -> tuple[tuple[int, int, int], str | None]:
        """The input shape the reference trained this architecture at for ``num_classes``, and the
        dataset that implies (``None``: the architecture's one default)."""
        if num_classes in self.training_sizes:
            shape, dataset = self.training_sizes[num_classes]
            return tuple(shape), dataset
        return tuple(self.input_shape), None

    @property
    def num_classes(self) -> int | None:
        return self.default_kwargs.get("num_classes")


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    *,
    family: str,
    layout: str,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    tiny: bool = False,
    output: str = "logits",
    name: str | None = None,
    training_sizes: Mapping[int, tuple[tuple[int, int, int], str]] | None = None,
):
    """Decorator registering a builder under its function name (or ``name``).

    The builder's keyword defaults become ``ModelInfo.default_kwargs``; its docstring's first line
    becomes the description.  Registering a name twice is a bug and raises ``ValueError``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        model_name = name or fn.__name__
        if model_name in _REGISTRY:
            raise ValueError(f"model {model_name!r} is registered twice")
        params = inspect.signature(fn).parameters.values()
        defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[model_name] = ModelInfo(
            name=model_name,
            family=family,
            layout=layout,
            default_kwargs=MappingProxyType(defaults),
            tiny=tiny,
            description=doc.splitlines()[0] if doc else "",
            input_shape=tuple(input_shape),
            output=output,
            builder=fn,
            training_sizes=MappingProxyType(dict(training_sizes or {})),
        )
        return fn

    return decorate


def close_matches(name: str, limit: int = 5) -> list[str]:
    """Registered names that contain ``name`` (``dy_resnet10`` -> ``dy_resnet10_paper``), then
    the most similar ones by ``difflib``; at most ``limit``."""
    lowered = name.lower()
    containing = sorted(n for n in _REGISTRY if lowered and lowered in n)
    similar = difflib.get_close_matches(lowered, list(_REGISTRY), n=limit, cutoff=0.5)
    return list(dict.fromkeys(containing + similar))[:limit]


def _unknown(name: str) -> ArchitectureError:
    close = close_matches(name)
    if close:
        hint = "did you mean " + ", ".join(close) + "? (`odexport.models.list_models()` lists all)"
    else:
        hint = "known architectures: " + ", ".join(sorted(_REGISTRY))
    return ArchitectureError(f"unknown architecture {name!r}", hint)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered architecture; ``ArchitectureError`` if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise _unknown(name) from None


def list_models(pattern: str | None = None, *, tiny: bool | None = None, layout: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style ``pattern`` (``"od_*"``),
    by ``tiny`` and by ``layout``."""
    names = sorted(_REGISTRY)
    if pattern is not None:
        names = fnmatch.filter(names, pattern)
    if tiny is not None:
        names = [n for n in names if _REGISTRY[n].tiny == tiny]
    if layout is not None:
        names = [n for n in names if _REGISTRY[n].layout == layout]
    return names


def create_model(name: str, *, temperature: float | None = None, **kwargs):
    """Build the architecture ``name`` with its options overridden by ``kwargs``.

    ``temperature`` (any model) sets every dynamic layer's temperature after construction; the
    default leaves each layer at 1.0, the value a trained network is evaluated at.  An option the
    builder does not take raises ``ArchitectureError`` naming the valid ones.
    """
    info = model_info(name)
    unknown = sorted(set(kwargs) - set(info.default_kwargs))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in info.default_kwargs.items()) or "none"
        close = [m for k in unknown for m in difflib.get_close_matches(k, list(info.default_kwargs), n=1)]
        suggestion = f"did you mean {', '.join(close)}? " if close else ""
        raise ArchitectureError(
            f"{name} has no option {', '.join(map(repr, unknown))}",
            f"{suggestion}valid options: {valid}",
        )
    model = info.builder(**kwargs)
    if temperature is not None:
        from odexport.layers import set_temperature

        set_temperature(model, temperature)
    return model
