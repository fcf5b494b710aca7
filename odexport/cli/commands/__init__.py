"""Each module defines one command on :data:`odexport.cli.app.app`. Import order = help order."""

import importlib

for _name in ("inspect", "run", "reparam", "onnx", "ort", "trt", "check", "bench", "doctor"):
    try:
        importlib.import_module(f"odexport.cli.commands.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"odexport.cli.commands.{_name}":
            raise
