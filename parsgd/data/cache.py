"""The decoded-data cache: one checksummed copy of a decoded dataset per machine, mapped read-only by
every process that trains, so the page cache holds it once however many workers run.

    PARSGD_CACHE_DIR=/tmp/c python -c "from parsgd.data import load_dataset; print(load_dataset('synthetic').x_train.flags.writeable)"

An entry is a folder CACHE_DIR/NAME-HASH/ holding each array raw (x_train.bin, y_train.bin, x_test.bin,
y_test.bin) and meta.json, written last, with the key, each array's dtype, shape and CRC-32. HASH is
over the key: everything the decoded bytes depend on (the format version, the dataset, its source
files' SHA-256 or the synthetic seed, num_samples, dtype, NumPy's version and the code of parsgd/data).
Opening an entry checks meta.json, each file's size and each file's CRC-32 over its mapping (about
0.03 s for 60,000 float32 rows), so a truncated, flipped or mismatching entry is rebuilt with one
logged line. One process builds an entry while the others wait on a flock (LOCK_WAIT_S), then map
it; each file is written atomically (parsgd.files.write_file). When the folder cannot be written
(read-only, full, not allowed) the data is decoded in memory as without a cache, with one logged line.

CACHE_DIR is $PARSGD_CACHE_DIR, else $XDG_CACHE_HOME/parsgd/decoded, else ~/.cache/parsgd/decoded;
PARSGD_CACHE_DIR=off turns the cache off. Deleting the folder clears it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import mmap
import os
import time
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from parsgd.data.dataset import Dataset
from parsgd.files import WriteError, ensure_dir, json_text, write_file

FORMAT_VERSION = 1
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
OFF = ("off", "0", "no", "none")  # PARSGD_CACHE_DIR values that turn the cache off
LOCK_WAIT_S = 30.0   # longest wait for another process building the same entry; then decode in memory
LOCK_POLL_S = 0.05


def cache_dir() -> Path | None:
    """The cache folder as the module docstring says, or None when PARSGD_CACHE_DIR turns it off.
    Only reads the environment; creates nothing. Raises RuntimeError when there is no home folder to
    put it in (HOME unset and no passwd entry) or PARSGD_CACHE_DIR names an unknown ~user."""
    explicit = os.environ.get("PARSGD_CACHE_DIR", "")
    if explicit.strip().lower() in OFF:
        return None
    if explicit.strip():
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "parsgd" / "decoded"


@lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of the source of parsgd/data: a change to any decoder makes new entries, never stale ones."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        with contextlib.suppress(OSError):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def files_digest(paths) -> str | None:
    """SHA-256 over the bytes of `paths` (in order), or None if one cannot be read (the decoder says why)."""
    digest = hashlib.sha256()
    try:
        for path in paths:
            one = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    one.update(chunk)
            digest.update(one.digest())
    except (OSError, TypeError):
        return None
    return digest.hexdigest()


def full_key(key: dict) -> dict:
    """`key` (a JSON-able dict with "name") as meta.json holds it, with this code's identity added:
    np.int64(3) becomes "3" and tuples lists, so a key read back compares equal."""
    full = {**key, "format": FORMAT_VERSION, "numpy": np.__version__, "code": code_digest()}
    return json.loads(json_text(full, sort_keys=True, default=repr))


def entry_path(folder: Path, key: dict) -> Path:
    """folder/NAME-HASH for a full_key: HASH is 20 hex digits of SHA-256 over its JSON."""
    return folder / f"{key['name']}-{hashlib.sha256(json_text(key, sort_keys=True).encode()).hexdigest()[:20]}"


def cached(key: dict, build, log=None, source: str | None = None) -> Dataset:
    """The Dataset `build()` returns, from the cache entry of `key` when it holds a good copy.

    `key`: a JSON-able dict with "name" and whatever else decides the decoded bytes (see the module
    docstring). On a miss (or a bad entry) this process builds it under the entry's lock, writes the
    entry and returns its mapped, read-only arrays. `source` replaces the Dataset's source (a folder
    the entry was not built from). `log(line)` hears one line when the cache is skipped or rebuilt.
    Raises only what build() raises; no cache problem is an error.
    """
    log = log or (lambda line: None)
    try:
        folder = cache_dir()
    except RuntimeError as exc:
        log(f"data cache skipped (no folder for it: {exc}); decoding in memory (PARSGD_CACHE_DIR=DIR picks one)")
        return build()
    if folder is None:
        return build()
    key = full_key(key)
    entry = entry_path(folder, key)
    data, _ = open_entry(entry, key, source)
    if data is not None:  # the common case: no lock, no write, so a read-only folder serves too
        return data
    with contextlib.ExitStack() as stack:
        try:
            ensure_dir(folder)
            stack.enter_context(_locked(entry.with_name(entry.name + ".lock"), LOCK_WAIT_S))
        except (WriteError, OSError) as exc:
            log(_skipped(exc))
            return build()
        data, problem = open_entry(entry, key, source)  # built by another process while we waited?
        if data is not None:
            return data
        if problem:
            log(f"data cache: {entry} {problem}; rebuilding it")
        built = build()
        try:
            write_entry(entry, key, built)
        except (WriteError, OSError) as exc:
            _discard(entry)  # no 219 MB of arrays without the meta.json that would make them an entry
            log(_skipped(exc))
            return built
        data, problem = open_entry(entry, key, source)
        if data is None:  # only if the files changed under us: the decoded copy is still right
            log(f"data cache: {entry} {problem} right after it was written; keeping the decoded data in memory")
            return built
        return data


def _skipped(exc: Exception) -> str:
    """The one line saying why the cache was not used."""
    if isinstance(exc, TimeoutError):
        why = f"another process held {exc} for more than {LOCK_WAIT_S:g} s"
    elif isinstance(exc, WriteError):
        why = str(exc).split(";")[0]
    else:
        why = f"cannot write {exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
    return f"data cache skipped ({why}); decoding in memory (PARSGD_CACHE_DIR=DIR picks another folder, =off none)"


@contextlib.contextmanager
def _locked(path: Path, wait_s: float):
    """An exclusive flock on `path` (created, mode 0666 minus the umask), taken within wait_s or
    TimeoutError; released on exit or when the process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(str(path)) from None
                time.sleep(LOCK_POLL_S)
        yield
    finally:
        os.close(fd)


def _discard(entry: Path) -> None:
    """Remove what a failed or killed writer left in `entry` (its lock is held): files, temp files."""
    with contextlib.suppress(OSError):
        for path in entry.iterdir():
            if path.name in ("meta.json", *(f"{a}.bin" for a in ARRAYS)) or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)


def write_entry(entry: Path, key: dict, data: Dataset) -> None:
    """Writes `data` as the entry folder `entry`: each array file atomically, then meta.json (which
    makes the entry whole); first removes temp files a killed writer left. Raises WriteError or OSError."""
    ensure_dir(entry)
    _discard(entry)  # under the entry's lock: nobody else is writing; mappings of old files stay valid
    arrays = {}
    for name in ARRAYS:
        array = np.ascontiguousarray(getattr(data, name))
        write_file(entry / f"{name}.bin", memoryview(array).cast("B") if array.size else b"")
        arrays[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "crc32": zlib.crc32(array)}
    meta = {"format": FORMAT_VERSION, "key": key, "name": data.name, "source": data.source,
            "fingerprint": data.fingerprint(), "arrays": arrays}
    write_file(entry / "meta.json", (json_text(meta, indent=1) + "\n").encode())


def open_entry(entry: Path, key: dict, source: str | None = None) -> tuple[Dataset | None, str | None]:
    """(the Dataset mapped read-only from `entry`, None) if the entry is whole and checks out; else
    (None, None) when there is no entry, or (None, what is wrong) for a broken one."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    except ValueError:
        return None, "has a corrupt meta.json"
    try:
        if meta["format"] != FORMAT_VERSION or meta["key"] != key:
            return None, "does not match its key"
        specs = {name: _spec(meta["arrays"][name]) for name in ARRAYS}
        name, stored_source = str(meta["name"]), str(meta["source"])
    except (KeyError, TypeError, ValueError):
        return None, "has a corrupt meta.json"
    arrays = {}
    for array_name, (dtype, shape, crc) in specs.items():
        array, problem = _map(entry / f"{array_name}.bin", dtype, shape, crc)
        if problem:
            return None, problem
        arrays[array_name] = array
    try:
        return Dataset(name, source or stored_source, **arrays), None
    except AssertionError:
        return None, "has arrays of different lengths"


def _spec(spec: dict) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, crc32) of one array in meta.json; ValueError unless a number dtype, a shape of
    integers >= 0 and an integer CRC."""
    dtype, shape, crc = np.dtype(spec["dtype"]), tuple(spec["shape"]), spec["crc32"]
    if dtype.kind not in "fiu" or not all(type(d) is int and d >= 0 for d in shape) or type(crc) is not int:
        raise ValueError(spec)
    return dtype, shape, crc


def _map(path: Path, dtype: np.dtype, shape: tuple, crc: int) -> tuple[np.ndarray | None, str | None]:
    """The file `path` mapped read-only as a (shape) array of dtype, checked for size and CRC-32."""
    nbytes = math.prod(shape) * dtype.itemsize
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != nbytes:
                return None, f"has a {path.name} of {size} bytes, not {nbytes} (truncated or replaced)"
            buffer = mmap.mmap(f.fileno(), nbytes, prot=mmap.PROT_READ) if nbytes else b""
    except (OSError, ValueError) as exc:
        return None, f"cannot map {path.name} ({getattr(exc, 'strerror', None) or exc})"
    if zlib.crc32(buffer) != crc:
        return None, f"has a {path.name} that fails its CRC-32 (corrupt)"
    return np.frombuffer(buffer, dtype).reshape(shape), None
