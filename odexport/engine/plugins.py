"""``--plugin PATH``: load TensorRT plugins before parsing, and find plugin libraries on this machine.

Two kinds of plugin:

* a **shared library** (``libodexport_plugins.so``, a ``.dll`` on Windows): loading it with
  ``ctypes.CDLL`` runs its static ``REGISTER_TENSORRT_PLUGIN`` initialisers, which add its plugin
  creators to TensorRT's global registry;
* a **Python plugin module** (a ``.py`` file or an importable module name) that registers plugins
  with ``tensorrt.plugin`` (``@trtp.register("com.odexport::ODConv2d")`` ...) when imported.

After loading, ``trt.init_libnvinfer_plugins`` registers TensorRT's own plugins too.  How a node
meets a plugin is the parser's business: an ONNX node whose op type has no built-in importer and no
function body is looked up in the registry by op type; odexport's custom-op nodes *do* carry a
function body, which the parser inlines, unless TensorRT >= 10.15's parser flag
``ENABLE_PLUGIN_OVERRIDE`` is set, which lets a registered plugin take over.  The parser's registry
lookup key is the node's op type, version ``"1"`` and namespace ``""`` (or the node's
``plugin_version``/``plugin_namespace`` attributes); the ONNX domain is not part of it.
:mod:`odexport.engine.build` sets that flag whenever ``--plugin`` is given and the flag exists.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from odexport.errors import InputError

LIBRARY_SUFFIXES = (".so", ".dll", ".dylib")
PLUGIN_PATH_ENV = "ODEXPORT_PLUGIN_PATH"
_LIBRARY_NAME = re.compile(r"^(lib)?.*plugin.*\.(so(\.\d+)*|dll|dylib)$", re.IGNORECASE)

# handles of loaded libraries and modules: a library must stay loaded while TensorRT uses its plugins
_LOADED: dict[str, object] = {}


@dataclass(frozen=True)
class PluginSpec:
    """One ``--plugin`` argument, classified: ``kind`` is ``"library"``, ``"python-file"`` or ``"python-module"``."""

    kind: str
    target: str  # absolute path of a library or .py file, or a dotted module name

    def describe(self) -> str:
        return {"library": "plugin library", "python-file": "Python plugin file", "python-module": "Python plugin module"}[self.kind] + f" {self.target}"


def _is_library_name(name: str) -> bool:
    """A shared library's file name: ``.so``/``.dll``/``.dylib``, or a versioned ``.so.N[.M]``."""
    return name.lower().endswith(LIBRARY_SUFFIXES) or re.search(r"\.so(\.\d+)+$", name, re.IGNORECASE) is not None


def classify_plugin(text: str) -> PluginSpec:
    """Decide what a ``--plugin`` argument is; a missing file is an :class:`InputError`."""
    raw = str(text).strip()
    path = Path(raw).expanduser()
    name = path.name.lower()
    is_library = _is_library_name(name)
    if is_library or name.endswith(".py"):
        if not path.is_file():
            raise InputError(f"plugin {raw} does not exist", "pass the path of a plugin library (.so/.dll) or a Python plugin file (.py)")
        return PluginSpec("library" if is_library else "python-file", str(path.resolve()))
    if path.exists():
        raise InputError(f"plugin {raw} is neither a shared library (.so/.dll) nor a Python file (.py)",
                         "pass a plugin library, a .py file, or an importable module name such as my_pkg.trt_plugins")
    if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", raw):
        return PluginSpec("python-module", raw)
    raise InputError(f"plugin {raw} is not a file, and not a Python module name",
                     "pass a plugin library (.so/.dll), a Python plugin file (.py) or a module name such as my_pkg.trt_plugins")


def load_plugin(spec: PluginSpec, trt=None, logger=None) -> None:
    """Load one plugin into this process (once).

    A library registers its creators in one of two ways: static ``REGISTER_TENSORRT_PLUGIN``
    initialisers, which run when it is loaded, or exported entry points (``getCreators`` for
    IPluginV3 creators, ``getPluginCreators`` for older ones) that only
    ``IPluginRegistry.load_library`` reads.  So a library is loaded, and when it exports an entry
    point it is also handed to the registry (otherwise nothing would register, silently).
    """
    if spec.target in _LOADED:
        return
    if spec.kind == "library":
        try:
            # RTLD_GLOBAL: a plugin library may export symbols that TensorRT's registry resolves later
            library = ctypes.CDLL(spec.target, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
        except OSError as exc:
            raise InputError(f"cannot load plugin library {spec.target}: {exc}",
                             "check that it was built for this TensorRT and CUDA version and that its dependencies are on LD_LIBRARY_PATH") from exc
        entry_points = [name for name in ("getCreators", "getPluginCreators") if hasattr(library, name)]
        if entry_points and trt is not None:
            registry = trt.get_plugin_registry()
            if not hasattr(registry, "load_library"):
                raise InputError(f"plugin library {spec.target} exports {entry_points[0]}, which TensorRT {trt.__version__} "
                                 "cannot load (IPluginRegistry.load_library is missing)",
                                 "use TensorRT 10 or later, or a plugin library that registers itself with REGISTER_TENSORRT_PLUGIN")
            if registry.load_library(spec.target) is None:
                from odexport.engine import _trt

                errors = _trt.last_errors(logger) if logger is not None else ""
                raise InputError(f"TensorRT could not register the plugins of {spec.target}: {errors or 'no error was logged'}",
                                 "check that it was built for this TensorRT and CUDA version")
        _LOADED[spec.target] = library
        return
    try:
        if spec.kind == "python-file":
            module_name = "odexport_user_plugin_" + re.sub(r"\W", "_", Path(spec.target).stem)
            module_spec = importlib.util.spec_from_file_location(module_name, spec.target)
            if module_spec is None or module_spec.loader is None:
                raise ImportError(f"cannot import {spec.target}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec.target)
    except Exception as exc:  # the user's module can fail in any way; report it in one line
        raise InputError(f"importing {spec.describe()} failed: {type(exc).__name__}: {exc}",
                         "fix the plugin module (run it with python to see the traceback), or drop --plugin") from exc
    _LOADED[spec.target] = module


def load_plugins(arguments, trt=None, logger=None) -> list[PluginSpec]:
    """Classify and load every ``--plugin`` argument, then register TensorRT's built-in plugins."""
    specs = [classify_plugin(a) for a in arguments or []]
    for spec in specs:
        load_plugin(spec, trt, logger)
    if trt is not None and hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(logger, "")  # TensorRT's own plugins (the parser needs some for standard ops)
    return specs


def registered_plugins(trt, names) -> list[str]:
    """``"name (namespace 'ns', version v)"`` for each registered plugin creator whose name is in ``names``."""
    registry = trt.get_plugin_registry()
    creators = getattr(registry, "all_creators", None)  # IPluginV3 creators too; plugin_creator_list has only IPluginV2 ones
    if creators is None:
        creators = getattr(registry, "plugin_creator_list", [])
    found = []
    for creator in creators:
        name = str(getattr(creator, "name", ""))
        if name in names:
            namespace = str(getattr(creator, "plugin_namespace", ""))
            version = str(getattr(creator, "plugin_version", ""))
            found.append(f"{name} (namespace '{namespace}', version {version})")
    return found


def find_plugin_libraries(environ=None) -> list[dict]:
    """Plugin libraries and Python plugin files on this machine, for ``odexport doctor``.

    Searches ``$ODEXPORT_PLUGIN_PATH`` (folders or files, ``os.pathsep``-separated; libraries and
    ``.py`` files) and ``$LD_LIBRARY_PATH`` (libraries named like ``lib*plugin*.so``).
    """
    environ = os.environ if environ is None else environ
    found: dict[str, dict] = {}

    def visit(entry: Path, origin: str, python_too: bool) -> None:
        candidates = [entry] if entry.is_file() else (sorted(entry.iterdir()) if entry.is_dir() else [])
        for candidate in candidates:
            if not candidate.is_file():
                continue
            is_lib = _LIBRARY_NAME.match(candidate.name) is not None
            is_py = python_too and candidate.suffix == ".py" and (entry.is_file() or "plugin" in candidate.name.lower())
            explicit_lib = entry.is_file() and _is_library_name(candidate.name)  # as --plugin accepts it
            if is_lib or is_py or explicit_lib:
                key = str(candidate.resolve())
                found.setdefault(key, {"path": key, "kind": "python" if candidate.suffix == ".py" else "library", "found_via": origin})

    for variable, python_too in ((PLUGIN_PATH_ENV, True), ("LD_LIBRARY_PATH", False)):
        for raw in str(environ.get(variable, "")).split(os.pathsep):
            if raw.strip():
                try:
                    visit(Path(raw.strip()).expanduser(), variable, python_too)
                except OSError:
                    continue  # an unreadable folder on the path is not our problem to report
    return list(found.values())
