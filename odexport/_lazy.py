"""Package attributes imported on first use, so ``import odexport`` (and ``--help``) loads no torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(package: str, public: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that imports ``public[name]`` (a module path) when ``name`` is asked for."""

    def __getattr__(name: str):
        if name in public:
            return getattr(importlib.import_module(public[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
