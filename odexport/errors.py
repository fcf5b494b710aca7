"""Error types shared by every stage.

Every error a user can fix derives from :class:`OdexportError` and carries a one-line message
(what is wrong) and a hint (what to do).  The CLI maps them to exit codes:

====  =========================================================
code  meaning
====  =========================================================
0     success
1     usage or input error (bad file, unknown architecture, ...)
2     parity failure (a check ran and numbers are out of tolerance)
3     missing optional dependency or hardware (TensorRT, CUDA)
====  =========================================================

Anything else that escapes is a bug and is reported as :class:`InternalError`.
"""

from __future__ import annotations

#: What to do when a model computes NaN/inf on finite inputs: its weights are broken.
NON_FINITE_WEIGHTS_FIX = ("look for NaN/inf in the checkpoint's weights (`odexport inspect` names them; a diverged training run "
                          "or a damaged file); retrain, or take an earlier checkpoint")


class OdexportError(Exception):
    """A problem the user can fix. ``str(err)`` is one line: the problem, then the fix."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} -- {self.hint}"
        return self.message


class InputError(OdexportError):
    """Bad file, unknown architecture, shape mismatch, bad option value."""

    exit_code = 1


class CheckpointError(InputError):
    """A checkpoint that cannot be read, is unsafe to read, or does not fit an architecture."""


class ArchitectureError(InputError):
    """Unknown or undetectable architecture."""


class ExportError(InputError):
    """An export that cannot be done as asked (unsupported opset, form, layer type)."""


class ParityError(OdexportError):
    """A comparison ran and the numbers are outside tolerance."""

    exit_code = 2


class MissingDependencyError(OdexportError):
    """An optional package or a piece of hardware (TensorRT, CUDA) is not available."""

    exit_code = 3


class StoppedError(OdexportError):
    """The run was stopped by a signal before it finished: Ctrl-C (130) or SIGTERM (143)."""

    exit_code = 130


class InternalError(Exception):
    """A bug in odexport. Not user-fixable; reported with a request to file an issue."""
