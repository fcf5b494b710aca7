"""Output files written whole or not at all.

Every file odexport writes (models, sidecars, engines, reports, arrays, plots) is first written
under a temporary name in the target's own folder and then renamed onto the target, so a failure
or an interrupt never leaves a partial file where a CI step would pick it up.  The temporary name
comes from :func:`tempfile.mkstemp`, which creates the file readable by its owner only (0600);
the rename would carry that mode to the output, and a report or engine that another user (a CI
runner's upload step, a serving container) cannot read is a broken artifact.  So each temporary
file is given the mode a plain ``open(path, "w")`` would: that of the file it replaces, else
``0666`` less the process umask.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from odexport.errors import InputError


def current_umask() -> int:
    """The process umask.  Linux reports it in ``/proc/self/status``; elsewhere the only way to read
    it is to set it and put it back, which changes it for every thread for that instant (to 077, so
    a file another thread creates then is too private rather than too open): the fallback only."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def give_default_permissions(path: str | Path, replacing: str | Path | None = None) -> None:
    """Set ``path``'s mode to what ``open(replacing, "w")`` would leave: the mode of the file it
    replaces when that file is the process's own (a private 0600 file stays private), else a new
    file's ``0666 & ~umask``."""
    import stat

    kept = None
    try:
        if replacing is not None and os.path.isfile(replacing):
            old = os.stat(replacing)
            # only a file of our own: its mode on a file we will own could lock its owner out
            if not hasattr(os, "geteuid") or old.st_uid == os.geteuid():
                kept = stat.S_IMODE(old.st_mode)
    except OSError:
        pass
    os.chmod(path, 0o666 & ~current_umask() if kept is None else kept)


def output_folder(path: str | Path, *, create: bool = False, example: str = "output") -> Path:
    """The folder ``path`` will be written in, checked -- and made, with ``create`` -- so that a bad
    output path is a one-line :class:`InputError` before any work, not an ``OSError`` from a writer
    after minutes of it. Writability is probed by creating (and removing) an empty file there:
    permission bits do not say it (root ignores them; a read-only mount or an immutable folder
    refuses root too).  ``example`` is the file name the hint suggests when ``path`` is a folder."""
    path = Path(path)
    if path.is_dir():  # found now, not by the writer after all the work
        raise InputError(f"output path {path} is a directory", "give a file name in it, e.g. " + str(path / example))
    parent = path.parent if str(path.parent) else Path(".")
    if parent.is_dir():
        os.unlink(_temp_in(parent, path, ".probe"))
        return parent
    if parent.exists():
        raise InputError(f"cannot write {path}: {parent} is a file, not a folder", "choose another output path")
    if not create:
        raise InputError(f"cannot write {path}: folder {parent} does not exist", "create the folder or choose another output path")
    missing = [folder for folder in (parent, *parent.parents) if not folder.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # an ancestor is a file, or no permission
        raise InputError(f"cannot create the folder {parent} for {path.name} ({exc.strerror or exc})", "choose another output path") from exc
    created = _CREATED_FOLDERS.get()
    if created is not None:
        created.extend(missing)  # deepest first
    return parent


# per thread and task: set inside removing_created_folders_on_failure only
_CREATED_FOLDERS: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("odexport_created_folders", default=None)


@contextlib.contextmanager
def removing_created_folders_on_failure() -> Iterator[None]:
    """A block (a CLI command) that fails removes the folders :func:`output_folder` made for its
    outputs in it and left empty, deepest first; a folder something was written to stays."""
    created: list[Path] = []
    token = _CREATED_FOLDERS.set(created)
    try:
        yield
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                pass
        raise
    finally:
        _CREATED_FOLDERS.reset(token)


def _temp_in(parent: Path, path: Path, suffix: str) -> str:
    """An empty file named after ``path`` in ``parent``, made by :func:`tempfile.mkstemp`; a
    folder that refuses it is an :class:`InputError`."""
    try:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=parent)
    except OSError as exc:
        raise InputError(f"cannot write in {parent} ({exc.strerror or exc})", "choose a writable output folder") from exc
    os.close(handle)
    return name


def refuse_overwriting_input(output: str | Path, *inputs, fix: str = "pass another -o path") -> None:
    """An output path that names one of the command's own input files would replace it -- a
    checkpoint saved as ``model.onnx`` exports over itself by default, ``-o`` may repeat the
    input's name -- so it is an :class:`InputError` before any work; so is an input's sidecar
    (``INPUT.json``). Links count: the same file under another name is the same file."""
    out = Path(output)
    for source in inputs:
        if source is None or not out.exists():
            continue
        try:
            same = os.path.samefile(out, source)
        except OSError:  # the input is missing or unreadable: its own check names that
            continue
        if same:
            raise InputError(f"the output {out} is the input {source} itself: writing it would replace that file", fix)
        sidecar = Path(f"{source}.json")  # an export's or engine's metadata, which check and trt read back
        try:
            same = sidecar.is_file() and os.path.samefile(out, sidecar)
        except OSError:
            continue
        if same:
            raise InputError(f"the output {out} is the sidecar of the input {source}: writing it would replace that file's metadata", fix)


def temp_beside(path: str | Path, suffix: str = ".tmp") -> Path:
    """An empty temporary file in ``path``'s (existing) folder, so the final rename is atomic, with
    the permissions of a normally created file."""
    path = Path(path)
    name = _temp_in(output_folder(path), path, suffix)
    try:
        give_default_permissions(name, replacing=path)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception, rename it
    onto ``path``.  On any exception the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    temp = temp_beside(path, suffix)
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all."""
    path = Path(path)
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return path
