"""Reusable Typer option types shared by the commands that load a model.

Each name is an ``Annotated`` type, so a command declares an option in one line::

    def inspect(source: str, arch: ArchOption = None, temperature: TemperatureOption = None): ...

This module imports neither torch nor the library (``odexport --help`` must stay fast).
"""

from __future__ import annotations

import re
from typing import Annotated, Optional

import typer

ArchOption = Annotated[
    Optional[str],
    typer.Option(
        "--arch",
        help="Architecture name from the model zoo (docs/architectures.md; an unknown name lists them all); "
        "overrides detection from the checkpoint's key names and shapes.",
        show_default=False,
    ),
]

KernelNumOption = Annotated[
    Optional[int],
    typer.Option(
        "--kernel-num",
        "-K",
        min=1,
        help="Number of candidate kernels K of an architecture built by name (`odexport inspect od_resnet18 -K 4`); "
        "a checkpoint's K is read from its weight shapes, and a different value is an error.",
        show_default=False,
    ),
]

TemperatureOption = Annotated[
    Optional[float],
    typer.Option(
        "--temperature",
        "-T",
        help="Attention temperature (> 0) for every dynamic layer. Default 1.0, the value of a trained "
        "network (kaijieshi7's constructor default 34 is only a training start value).",
        show_default=False,
    ),
]

TrustPickleOption = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow full unpickling of a checkpoint that holds a whole pickled module. Unpickling "
        "runs arbitrary code from the file: use only for files you trust.",
    ),
]

EmaOption = Annotated[
    bool,
    typer.Option(
        "--ema",
        help="Load the checkpoint's EMA weights (model_ema, ema, state_dict_ema, ...) instead of its plain ones, "
        "which are the default (what the reference scripts evaluate). A file without EMA weights is an error.",
    ),
]

SubmodelOption = Annotated[
    Optional[str],
    typer.Option(
        "--submodel",
        help="The part of a composite checkpoint to load (a detector's 'backbone', 'student.backbone', ...). "
        "Found by itself for a detector's single 'backbone' part that holds the dynamic convolutions, and when every "
        "key sits under one name (a Lightning module's 'model'); otherwise a misfit names the part that fits. '' loads the whole file.",
        show_default=False,
    ),
]

FactoryOption = Annotated[
    Optional[str],
    typer.Option(
        "--factory",
        help="Build your own architecture with `my_pkg.my_module:build_fn` (imports your code), load "
        "the checkpoint into it and swap its reference dynamic-conv layers for odexport's.",
        show_default=False,
    ),
]

InputShapeOption = Annotated[
    Optional[str],
    typer.Option(
        "--input-shape",
        help="Input shape of one sample as CxHxW, e.g. 3x224x224 (default: the architecture's own).",
        show_default=False,
    ),
]

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object (and nothing else) on stdout.")]

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")]


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"3x224x224"`` -> ``(3, 224, 224)``; a wrong form raises :class:`odexport.errors.InputError`.

    Accepts ``x``, ``X``, ``,`` or ``*`` between the three positive integers.
    """
    from odexport.errors import InputError

    cleaned = text.strip().lower()
    for sep in (",", "*", " "):
        cleaned = cleaned.replace(sep, "x")
    parts = [p for p in cleaned.split("x") if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or any(d <= 0 for d in dims):
        raise InputError(
            f"input shape {text!r} is not CxHxW",
            "give three positive integers for one sample (no batch), e.g. --input-shape 3x224x224",
        )
    return dims  # type: ignore[return-value]


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,2,8"`` -> ``[1, 2, 8]``; anything else is an input error."""
    from odexport.errors import InputError

    parts = [part.strip() for part in text.split(",")]
    # an empty item ("1,,2") is a typo to show, not a separator to skip; "1 8" and "1_8" are not 18
    values = [int(part) for part in parts] if all(re.fullmatch(r"[0-9]+", part) for part in parts) else []
    if not values or any(v < 1 for v in values):
        raise InputError(f"--batch-sizes {text!r} is not a list of positive integers", "use e.g. --batch-sizes 1,2,8")
    return sorted(set(values))


__all__ = [
    "ArchOption",
    "EmaOption",
    "FactoryOption",
    "InputShapeOption",
    "KernelNumOption",
    "TemperatureOption",
    "TrustPickleOption",
    "parse_batch_sizes",
    "parse_input_shape",
]
