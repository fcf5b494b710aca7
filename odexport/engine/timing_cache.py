"""The ``--timing-cache FILE`` life cycle: created, reused, updated (no TensorRT needed here).

TensorRT times candidate kernels ("tactics") for every layer while it builds; a timing cache keeps
those measurements so the next build of a similar network skips them.  The cache is an opaque blob
tied to the TensorRT version and GPU that made it.  The builder code reads the file's bytes with
:meth:`TimingCacheFile.read`, hands them to ``IBuilderConfig.create_timing_cache`` and, after a
successful build, writes ``ITimingCache.serialize()`` back with :meth:`TimingCacheFile.write`
(atomically, so a crash never leaves half a cache).  :meth:`TimingCacheFile.state` then says what
happened, for the build report.
"""

from __future__ import annotations

import os
from pathlib import Path

from odexport.errors import InputError
from odexport.engine.sidecar import atomic_write_bytes

CREATED = "created"  # there was no file; a new cache was written
REUSED = "reused"  # the file was used and the build added nothing to it
UPDATED = "updated"  # the file was used and the build added measurements
REPLACED = "replaced"  # the file could not be used (another TensorRT version or GPU) and was rewritten


class TimingCacheFile:
    """One timing-cache file on disk. ``read`` before the build, ``write`` after it, then ``state``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._before: bytes | None = None
        self._after: bytes | None = None
        self._rejected = False

    def read(self) -> bytes:
        """The cache's bytes, or ``b""`` when the file does not exist yet (a new cache is created)."""
        if self.path.exists() and not self.path.is_file():
            raise InputError(f"timing cache {self.path} is not a file", "give a file path to --timing-cache, e.g. trt.cache")
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"the folder of timing cache {self.path} does not exist", "create the folder or choose another path")
        if not self.path.exists():
            self._before = b""
            return self._before
        try:
            self._before = self.path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read timing cache {self.path} ({exc.strerror})", "check its permissions, or delete it to start a new one") from exc
        return self._before

    def reject(self) -> None:
        """The builder could not use the bytes (made by another TensorRT version or GPU): start anew."""
        self._rejected = True

    def write(self, data: bytes) -> str:
        """Write the builder's serialized cache back (atomically) and return :meth:`state`."""
        data = bytes(data)
        if data != self._before or not self.path.exists():
            atomic_write_bytes(self.path, data)
        self._after = data
        return self.state()

    def state(self) -> str:
        if self._after is None:
            raise RuntimeError("TimingCacheFile.state() before write()")
        if not self._before:
            return CREATED
        if self._rejected:
            return REPLACED
        return REUSED if self._after == self._before else UPDATED

    def __repr__(self) -> str:
        return f"TimingCacheFile({os.fspath(self.path)!r})"
