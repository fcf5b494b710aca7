"""``--factory my_pkg.my_module:build_fn``: build the user's own architecture from their code.

Importing the user's module runs their code; passing ``--factory`` is that explicit choice.  The
current directory is put on ``sys.path`` first (console scripts do not have it), and a path to a
``.py`` file works too (``path/to/models.py:build``).  The function is called without arguments
and must return an ``nn.Module``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path

from torch import nn

from odexport.errors import InputError

_HINT = "give --factory as 'package.module:function' (or 'path/to/file.py:function') that returns an nn.Module"


def resolve_factory(spec: str):
    """Import ``module:function`` and return the callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"--factory {spec!r} is not 'module:function'", _HINT)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
            module = _import_file(Path(module_name))
        else:
            module = importlib.import_module(module_name)
    except InputError:
        raise
    except (Exception, SystemExit) as exc:  # the user's module failed to import (argparse at import exits): their code, their message
        raise InputError(
            f"--factory could not import '{module_name}' ({type(exc).__name__}: {_first_line(exc)})",
            "make the module importable from the current directory or PYTHONPATH, and fix any error it raises",
        ) from exc
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))[:8]
            raise InputError(f"--factory: '{module_name}' has no attribute '{attr}'",
                             f"callables there: {', '.join(public) or 'none'}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise InputError(f"--factory: '{spec}' is not callable", _HINT)
    return fn


def build_from_factory(spec: str) -> nn.Module:
    """Call the factory and check it returned a module."""
    fn = resolve_factory(spec)
    required = [
        p for p in _parameters(fn)
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if required:
        raise InputError(
            f"--factory {spec} needs arguments ({', '.join(p.name for p in required)})",
            "wrap it in a function without required arguments that builds the model as it was trained",
        )
    try:
        model = fn()
    except (Exception, SystemExit) as exc:
        raise InputError(f"--factory {spec} raised {type(exc).__name__}: {_first_line(exc)}",
                         "fix the build function; it is called without arguments") from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"--factory {spec} returned a {type(model).__name__}, not a torch nn.Module", _HINT)
    return model


def _parameters(fn) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []


def _import_file(path: Path):
    if not path.is_file():
        raise InputError(f"--factory file {path} does not exist", _HINT)
    name = f"odexport_factory_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"--factory file {path} is not a Python module", _HINT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, SystemExit) and exc.code is None:
        return "sys.exit() called"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


class TemperatureArgModel(nn.Module):
    """Calls a model whose ``forward(x, temperature)`` needs the temperature (TArdelean's models).

    The converted layers use their own explicit temperature; ``temperature`` here only feeds
    layers the conversion did not recognise (and static wrappers, which ignore it).
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x):
        return self.model(x, self.temperature)


def needs_temperature_argument(model: nn.Module) -> bool:
    """True when ``model.forward`` requires a second argument named like a temperature."""
    params = _parameters(model.forward)
    required = [p for p in params if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) == 2 and required[1].name.lower() in ("temperature", "temp", "t", "tau")
