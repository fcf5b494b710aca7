"""``--plugin`` arguments and plugin discovery for ``odexport doctor`` (no TensorRT).

Loading a real plugin library needs TensorRT; here the Python-module route is exercised for real
(importing a module is exactly what loading a ``tensorrt.plugin`` module does), and discovery runs
on real files in a temporary folder.
"""

from __future__ import annotations

import os
import sys

import pytest

from odexport.engine.plugins import PluginSpec, classify_plugin, find_plugin_libraries, load_plugin, load_plugins
from odexport.errors import InputError


def test_classify(tmp_path):
    lib = tmp_path / "libodexport_plugins.so"
    lib.write_bytes(b"\x7fELF")
    versioned = tmp_path / "libmy_plugin.so.10"
    versioned.write_bytes(b"\x7fELF")
    py = tmp_path / "trt_plugins.py"
    py.write_text("")
    assert classify_plugin(str(lib)) == PluginSpec("library", str(lib.resolve()))
    assert classify_plugin(str(versioned)).kind == "library"
    assert classify_plugin(str(py)) == PluginSpec("python-file", str(py.resolve()))
    assert classify_plugin("my_pkg.trt_plugins") == PluginSpec("python-module", "my_pkg.trt_plugins")


def test_classify_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        classify_plugin(str(tmp_path / "libabsent_plugin.so"))
    with pytest.raises(InputError, match="does not exist"):
        classify_plugin(str(tmp_path / "absent.py"))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"")
    with pytest.raises(InputError, match="neither a shared library"):
        classify_plugin(str(other))
    with pytest.raises(InputError, match="not a file"):
        classify_plugin("not a module/name")


def test_a_python_plugin_file_is_imported_once(tmp_path):
    marker = tmp_path / "count.txt"
    module = tmp_path / "count_plugin.py"
    module.write_text(f"import pathlib\np = pathlib.Path({str(marker)!r})\np.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else '1')\n")
    specs = load_plugins([str(module)])
    load_plugin(specs[0])
    assert marker.read_text() == "1"
    assert any(name.startswith("odexport_user_plugin_count_plugin") for name in sys.modules)


def test_a_failing_plugin_module_is_one_input_error(tmp_path):
    module = tmp_path / "broken_plugin.py"
    module.write_text("raise RuntimeError('registration failed: no GPU')\n")
    with pytest.raises(InputError, match="RuntimeError: registration failed: no GPU"):
        load_plugins([str(module)])


def test_a_library_that_is_not_a_library_is_an_input_error(tmp_path):
    fake = tmp_path / "libfake_plugin.so"
    fake.write_bytes(b"not an ELF file")
    with pytest.raises(InputError, match="cannot load plugin library"):
        load_plugins([str(fake)])


def test_find_plugin_libraries(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "libodexport_plugin.so").write_bytes(b"")
    (plugins / "odconv_plugin.py").write_text("")
    (plugins / "helpers.py").write_text("")  # not a plugin by name
    libs = tmp_path / "lib"
    libs.mkdir()
    (libs / "libnvinfer_plugin.so.10").write_bytes(b"")
    (libs / "libcudart.so.12").write_bytes(b"")  # not a plugin
    (libs / "odconv_plugin.py").write_text("")  # Python files only count on ODEXPORT_PLUGIN_PATH
    explicit = tmp_path / "custom.so"
    explicit.write_bytes(b"")
    versioned = tmp_path / "libfoo.so.1"  # named on the path: a library, as --plugin takes it
    versioned.write_bytes(b"")
    shouting = tmp_path / "LIBBAR.SO.2"
    shouting.write_bytes(b"")
    environ = {
        "ODEXPORT_PLUGIN_PATH": os.pathsep.join([str(plugins), str(explicit), str(versioned), str(shouting), str(tmp_path / "absent")]),
        "LD_LIBRARY_PATH": str(libs),
    }
    found = {os.path.basename(e["path"]): (e["kind"], e["found_via"]) for e in find_plugin_libraries(environ)}
    assert found == {
        "libodexport_plugin.so": ("library", "ODEXPORT_PLUGIN_PATH"),
        "odconv_plugin.py": ("python", "ODEXPORT_PLUGIN_PATH"),
        "custom.so": ("library", "ODEXPORT_PLUGIN_PATH"),
        "libfoo.so.1": ("library", "ODEXPORT_PLUGIN_PATH"),
        "LIBBAR.SO.2": ("library", "ODEXPORT_PLUGIN_PATH"),
        "libnvinfer_plugin.so.10": ("library", "LD_LIBRARY_PATH"),
    }


def test_find_plugin_libraries_with_nothing_set():
    assert find_plugin_libraries({}) == []
