"""IDX files (the MNIST file format), and folders holding an MNIST-format set of four of them.

    python -c "import numpy as np; from parsgd.data.idx import *; write_idx('/tmp/a.gz', np.eye(3, dtype='u1')); print(read_idx('/tmp/a.gz'))"

The format is the one on LeCun's MNIST page (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS FOR THE
MNIST DATABASE"): two zero bytes, a type code, the number of dimensions, each dimension as a big-endian
uint32, then the values in C order, big-endian. Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747) uses
the same files under the same names.
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from parsgd.data.dataset import STREAM_SUBSAMPLE, DataError, Dataset, TooManySamples, stream_rng

SET_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",  # each as .gz, or un-gzipped
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(t).newbyteorder("="): code for code, t in _IDX_TYPES.items()}
_IDX_MAX_NDIM = 8  # the format allows 255; a bound keeps a corrupt header from asking for absurd shapes
_REFETCH = "delete it and download or copy it again"


def read_idx(path) -> np.ndarray:
    """The IDX file at `path` (raw, or gzip as detected from its first two bytes) as a new, writable,
    native-endian array: uint8, int8, int16, int32, float32 or float64 as the type code says, of the
    shape its header gives.

    Raises DataError, with a one-line message naming `path` and the fix, if the file is missing or
    unreadable, is a corrupt gzip, or its header or length does not match the format.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; download or copy it there") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc}); check its permissions") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise DataError(f"{path}: corrupt or truncated gzip file ({exc}); {_REFETCH}") from None
    if len(data) < 4 or data[:2] != b"\0\0":
        raise DataError(f"{path}: not an IDX file (magic {data[:4].hex() or 'missing'}); {_REFETCH}")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x}; {_REFETCH}")
    if not 1 <= ndim <= _IDX_MAX_NDIM:
        raise DataError(f"{path}: IDX header says {ndim} dimensions (1..{_IDX_MAX_NDIM} allowed); {_REFETCH}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes); {_REFETCH}")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[code])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        what = "truncated IDX file" if len(data) < expected else "IDX file with trailing bytes"
        raise DataError(f"{path}: {what} (expected {expected} bytes, got {len(data)}); {_REFETCH}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array) -> None:
    """Writes `array` (1 to 8 dimensions; uint8, int8, int16, int32, float32 or float64, either byte
    order) to `path` as IDX, gzipped if `path` ends in .gz. The gzip header's mtime is 0, so the same
    array always gives the same bytes.

    Raises ValueError for any other dtype or number of dimensions, and OSError if `path` cannot be
    written (test and tool code calls this, so it is not turned into a DataError).
    """
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None or not 1 <= array.ndim <= _IDX_MAX_NDIM:
        raise ValueError(f"IDX cannot hold a {array.ndim}-d {array.dtype} array")
    data = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data += array.astype(_IDX_TYPES[code]).tobytes()
    Path(path).write_bytes(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


def idx_rows(path) -> int | None:
    """The first dimension in the header of the IDX file at `path` (raw or gzip), i.e. its number of
    rows, from its first 8 bytes only; None if it cannot be read or is not IDX (load_folder says why)."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            head = (gzip.GzipFile(fileobj=f) if gz else f).read(8)
    except (OSError, EOFError, zlib.error):
        return None
    if len(head) < 8 or head[:2] != b"\0\0" or head[2] not in _IDX_TYPES or not head[3]:
        return None
    return int.from_bytes(head[4:8], "big")


def idx_file(folder: Path, stem: str) -> Path | None:
    """folder/stem.gz, else folder/stem, else None."""
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)


def find_set(folders) -> Path | None:
    """The first of `folders` (paths or strings) holding all four SET_FILES, each as .gz or raw; else
    None. Only looks at file names: a broken file is found here and reported by load_folder."""
    return next((f for f in map(Path, folders) if all(idx_file(f, stem) for stem in SET_FILES)), None)


def _read_split(folder: Path, images_stem: str, labels_stem: str):
    """(n, 784) uint8 images and (n,) int64 labels, checked to be an MNIST-format split."""
    images_path, labels_path = idx_file(folder, images_stem), idx_file(folder, labels_stem)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected (n, 28, 28) ubyte images, got {images.shape} "
                        f"{images.dtype}; {_REFETCH}")
    if labels.dtype != np.uint8 or labels.ndim != 1 or (labels.size and labels.max() > 9):
        raise DataError(f"{labels_path}: expected (n,) ubyte labels in 0..9; {_REFETCH}")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {images_path.name} has {len(images)} images but {labels_path.name} has "
                        f"{len(labels)} labels; replace both with files of the same set")
    return images.reshape(len(images), 784), labels.astype(np.int64)


def load_folder(name: str, folder: Path, num_samples, seed: int, dtype) -> Dataset:
    """The MNIST-format set in `folder` (as find_set found it) as a Dataset called `name`.

    x: (n, 784) of `dtype` (np.float32 or np.float64), uint8 pixel / 255, rounded once, so exactly the
    nearest float to k/255. y: (n,) int64 in 0..9. With `num_samples`, the training split is that many
    distinct rows drawn without replacement by stream_rng(seed, STREAM_SUBSAMPLE), kept in file order;
    the test split is always whole.

    Raises DataError if a file is missing or broken, the files are not (n, 28, 28) ubyte images with
    (n,) ubyte labels in 0..9, or num_samples is more than the training rows.
    """
    x_train, y_train = _read_split(folder, *SET_FILES[:2])
    x_test, y_test = _read_split(folder, *SET_FILES[2:])
    if num_samples is not None:
        if num_samples > len(y_train):
            raise TooManySamples(f"--num-samples {num_samples} is more than the {len(y_train)} rows of the "
                                 f"{name} training set: use at most {len(y_train)}")
        rows = np.sort(stream_rng(seed, STREAM_SUBSAMPLE).choice(len(y_train), num_samples, replace=False))
        x_train, y_train = x_train[rows], y_train[rows]
    x_train, x_test = np.divide(x_train, 255, dtype=dtype), np.divide(x_test, 255, dtype=dtype)
    return Dataset(name, str(folder), x_train, y_train, x_test, y_test)
