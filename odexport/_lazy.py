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


def lazy_dir(namespace: dict, public: dict[str, str]) -> Callable[[], list[str]]:
    """A module ``__dir__`` that lists the lazy public names beside what is already defined."""

    def __dir__() -> list[str]:
        return sorted({*(n for n in namespace if n != "annotations"), *public})  # `annotations`: the __future__ import

    return __dir__
