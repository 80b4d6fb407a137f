"""Writing files: the one way parsgd puts bytes on disk (run directories, checkpoints, logs, plots,
traces, keys, the download cache), and strict JSON.

    python -m parsgd trace RUN_DIR -o /dev/full     # error: cannot write /dev/full: No space left on device; ...

Every failure to write becomes a WriteError, one line `cannot write PATH: REASON; FIX` (exit 1).
A regular file is replaced atomically: a temp file beside it is written, fsynced and renamed over
it, so a reader sees the old file or the whole new one. A device or other special file (`-o
/dev/full`, `-o /dev/stdout`, a FIFO) is written in place and never renamed over. Files get the
mode an ordinary open() gives (0666 minus the umask; a replaced file keeps its mode), secrets 0600.
JSON written by parsgd is strict (RFC 8259): a NaN or infinite float becomes null (`json_text`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import tempfile
from pathlib import Path

from parsgd.errors import UserError


class WriteError(UserError):
    """A file or folder cannot be written; the message names the path, the reason and the fix."""


def _read_umask() -> int:
    """The process umask, read once: from /proc (no window where it is 0), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


UMASK = _read_umask()
SECRET_MODE = 0o600

_FIXES = {
    errno.EROFS: "the file system is read-only: pass a path on a writable one",
    errno.EACCES: "pass a path you may write to, or change the folder's permissions",
    errno.EPERM: "pass a path you may write to, or change the folder's permissions",
    errno.ENOSPC: "free disk space or pass a path on another disk",
    errno.EDQUOT: "free space within your quota or pass a path on another disk",
    errno.ENOENT: "create the folder first or pass another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: pass another path",
    errno.EEXIST: "a part of the path is a file, not a folder: pass another path",
    errno.EISDIR: "it is a folder: pass a file name",
    errno.ENAMETOOLONG: "pass a shorter path",
}


def new_file_mode(secret: bool = False) -> int:
    """The mode parsgd gives a file it creates: 0600 for a secret, else 0666 minus the umask."""
    return SECRET_MODE if secret else 0o666 & ~UMASK


def write_error(path, exc: OSError, fix: str | None = None) -> WriteError:
    """`cannot write PATH: REASON; FIX` for an OSError; `fix` replaces the fix chosen by errno."""
    reason = exc.strerror or str(exc)
    return WriteError(f"cannot write {path}: {reason}; {fix or _FIXES.get(exc.errno, 'pass another path')}")


def ensure_dir(path, fix: str | None = None, probe: bool = False) -> Path:
    """Create the folder `path` and its parents if missing (mode 0777 minus the umask); returns it.

    With `probe`, also check that a file can be created in it (a temp file, removed at once), so a
    caller can fail before touching anything already there. Raises WriteError.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(f"cannot write {path}: it is a file, not a folder; pass a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if probe:
            fd, tmp = tempfile.mkstemp(dir=path, prefix=".parsgd-probe-")
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise write_error(path, exc, fix) from None
    return path


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def write_file(path, data: bytes, *, secret: bool = False, fix: str | None = None) -> Path:
    """Write `data` to `path` (str or Path) as the module docstring says; returns Path(path).

    `secret`: the file is 0600 whatever the umask. `fix` replaces the fix part of the message.
    The folder must exist. Raises WriteError; a temp file is removed if anything fails.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise write_error(path, exc, fix) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise WriteError(f"cannot write {path}: it is a folder; pass a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        _write_in_place(path, data, fix)
        return path
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    mode = new_file_mode(secret) if st is None or secret else stat.S_IMODE(st.st_mode)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise write_error(path, exc, fix) from None
    try:
        try:
            os.fchmod(fd, mode)  # mkstemp creates 0600
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc, fix) from None
        raise
    return path


def _write_in_place(path: Path, data: bytes, fix: str | None) -> None:
    """A device, FIFO or socket path: open it for writing and write, as `> path` in a shell would."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(path, exc, fix) from None


class AppendFile:
    """A file kept open for appending (created with mode 0666 minus the umask if missing).

    Each `write(data)` appends whole lines: if it fails part-way, the file is cut back to where it
    was, so a JSONL file never ends in half a line. Raises WriteError (also from the constructor).
    """

    def __init__(self, path, fix: str | None = None):
        self.path, self.fix = Path(path), fix
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise write_error(self.path, exc, fix) from None

    def write(self, data: bytes) -> None:
        size = None
        try:
            size = os.fstat(self.fd).st_size
            _write_all(self.fd, data)
        except OSError as exc:
            if size is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, size)
            raise write_error(self.path, exc, self.fix) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "AppendFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def append_bytes(path, data: bytes, fix: str | None = None) -> None:
    """Append `data` (whole lines) to `path`, creating it if missing; raises WriteError."""
    with AppendFile(path, fix) as f:
        f.write(data)


def _finite(obj):
    """`obj` with every NaN or infinite float (also inside dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj, **dumps_kwargs) -> str:
    """json.dumps(obj, **dumps_kwargs), strict: NaN and +-Infinity are written as null, never as bare tokens."""
    try:
        return json.dumps(obj, allow_nan=False, **dumps_kwargs)
    except ValueError:  # a non-finite float somewhere: the slow path cleans the whole object
        return json.dumps(_finite(obj), allow_nan=False, **dumps_kwargs)
