"""Datasets: IDX files, MNIST (download, SHA256 check, cache), Fashion-MNIST, synthetic; epoch order.

    python -c "from parsgd.data import *; d = load_dataset(log=print); print(d.x_train.shape, d.fingerprint())"

`--dataset auto` takes MNIST from DATA_DIR/mnist or DATA_DIR, else Fashion-MNIST from DATA_DIR/fashion-mnist
or the Debian package folder, else downloads MNIST into DATA_DIR/mnist, else makes synthetic data.
DATA_DIR is --data-dir, else $PARSGD_DATA_DIR, else $XDG_CACHE_HOME/parsgd, else ~/.cache/parsgd.
PARSGD_NO_DOWNLOAD=1 turns downloading off. A local file that is present but broken is an error, not a
reason to fall back: the message names the file and the fix.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from parsgd.errors import UserError

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# SHA256 of the gzipped files, as pinned in tensorflow/datasets (url_checksums/mnist.txt).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian package dataset-fashion-mnist
SET_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",  # each as .gz, or un-gzipped
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DOWNLOAD_TIMEOUT = 30.0           # s per request
DOWNLOAD_TIMEOUT_AUTO = 10.0      # s per request when `auto` merely tries a download
MAX_DOWNLOAD_BYTES = 64 << 20     # the largest MNIST file is 9.9 MB
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 60_000, 10_000

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(t).newbyteorder("="): code for code, t in _IDX_TYPES.items()}
_IDX_MAX_NDIM = 8
_REFETCH = "delete it and download or copy it again"
_STREAM = 0xDA7A  # [seed, _STREAM, k] (k: 1 subsample, 2/3 synthetic train/test) != epoch_order's [seed, epoch]


class DataError(UserError):
    """A dataset cannot be found, read or downloaded; the one-line message names the file and the fix."""


@dataclass
class Dataset:
    """Train and test split; x rows are 28x28 images flattened to 784 values in [0, 1]."""
    name: str
    source: str
    x_train: np.ndarray  # (n, 784) float32|float64
    y_train: np.ndarray  # (n,) int64 in 0..9
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self):
        assert len(self.x_train) == len(self.y_train) and len(self.x_test) == len(self.y_test)

    def fingerprint(self) -> str:
        """Short sha256 over name, shapes, dtypes and bytes: equal iff every process loaded the same data."""
        digest = hashlib.sha256(self.name.encode())
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(f"|{array.shape}|{array.dtype.str}|".encode())
            digest.update(np.ascontiguousarray(array))
        return digest.hexdigest()[:16]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Row order of 0-based `epoch`; the server, workers and sequential trainer all call this."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def default_data_dir() -> Path:
    if os.environ.get("PARSGD_DATA_DIR"):
        return Path(os.environ["PARSGD_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "parsgd"


# ---- IDX files ----------------------------------------------------------------------------------

def read_idx(path) -> np.ndarray:
    """An IDX file (raw, or gzip as detected from its first bytes) as a native-endian array."""
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
    """Writes `array` as IDX, gzipped if `path` ends in .gz (with a fixed mtime: same bytes every time)."""
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None or not 1 <= array.ndim <= _IDX_MAX_NDIM:
        raise ValueError(f"IDX cannot hold a {array.ndim}-d {array.dtype} array")
    data = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data += array.astype(_IDX_TYPES[code]).tobytes()
    Path(path).write_bytes(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


def _idx_file(folder: Path, stem: str) -> Path | None:
    """folder/stem.gz, else folder/stem, else None."""
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)


def _find_set(folders) -> Path | None:
    """The first folder holding all 4 files of an MNIST-format set, or None."""
    return next((f for f in map(Path, folders) if all(_idx_file(f, stem) for stem in SET_FILES)), None)


def _read_split(folder: Path, images_stem: str, labels_stem: str):
    """(n, 784) uint8 images and (n,) int64 labels, checked to be an MNIST-format split."""
    images_path, labels_path = _idx_file(folder, images_stem), _idx_file(folder, labels_stem)
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


def _rng(seed: int, stream: int) -> np.random.Generator:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng([seed, _STREAM, stream])


def _load_folder(name: str, folder: Path, num_samples, seed: int, dtype) -> Dataset:
    x_train, y_train = _read_split(folder, *SET_FILES[:2])
    x_test, y_test = _read_split(folder, *SET_FILES[2:])
    if num_samples is not None:
        if num_samples > len(y_train):
            raise DataError(f"--num-samples {num_samples} is more than the {len(y_train)} rows of the {name} "
                            f"training set: use at most {len(y_train)}")
        rows = np.sort(_rng(seed, 1).choice(len(y_train), num_samples, replace=False))
        x_train, y_train = x_train[rows], y_train[rows]
    x_train, x_test = np.divide(x_train, 255, dtype=dtype), np.divide(x_test, 255, dtype=dtype)  # exact k/255
    return Dataset(name, str(folder), x_train, y_train, x_test, y_test)


# ---- MNIST download -----------------------------------------------------------------------------

def _offline_fix(folder: Path) -> str:
    return (f"copy the 4 MNIST .gz files into {folder}, or use --dataset fashion-mnist "
            "(apt-get install dataset-fashion-mnist), or --dataset synthetic")


def _write_atomic(target: Path, data: bytes) -> None:
    """Write to a temp file beside `target`, then rename: readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"{target}: cannot write it ({exc.strerror or exc}); free disk space or "
                        "pass a writable --data-dir") from None


def download_mnist(dest_dir, mirrors=MNIST_MIRRORS, timeout=DOWNLOAD_TIMEOUT, log=None,
                   files=MNIST_FILES) -> Path:
    """Fetches each of `files` (name -> sha256, default MNIST_FILES) into `dest_dir`, trying the mirrors in
    order; a file is only written once its sha256 matches. A mirror whose host is unreachable is skipped
    for the remaining files, so an offline machine fails after one attempt per mirror."""
    dest = Path(dest_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{dest}: cannot create it ({exc.strerror or exc}); pass a writable --data-dir") from None
    unreachable: dict[str, str] = {}  # mirror -> why
    for name, sha256 in files.items():
        target = dest / name
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
            continue
        problems = []
        for mirror in (m for m in mirrors if m not in unreachable):
            url = mirror + name
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    data = response.read(MAX_DOWNLOAD_BYTES + 1)
            except urllib.error.HTTPError as exc:
                exc.close()
                problems.append(f"{url}: HTTP {exc.code}")
                continue
            except (OSError, http.client.HTTPException) as exc:  # DNS, refused, timeout, TLS, reset
                unreachable[mirror] = f"{url}: {getattr(exc, 'reason', None) or exc}"
                continue
            if len(data) > MAX_DOWNLOAD_BYTES or hashlib.sha256(data).hexdigest() != sha256:
                problems.append(f"{url}: wrong SHA256")
                continue
            _write_atomic(target, data)
            if log:
                log(f"downloaded {url} ({len(data)} bytes, SHA256 ok)")
            break
        else:
            if not problems:
                first = next(iter(unreachable.values()), "no mirrors given")
                raise DataError(f"cannot reach any MNIST mirror ({first}); this machine seems offline: "
                                f"{_offline_fix(dest)}")
            raise DataError(f"no good copy of {name} ({'; '.join(problems + list(unreachable.values()))}): "
                            f"{_offline_fix(dest)}")
    return dest


# ---- synthetic data -----------------------------------------------------------------------------
# A latent z ~ N(0, I) (10 dims decide the label, 6 are nuisance) is rendered into sparse, MNIST-like
# pixels by a FIXED random linear map and a clipped ramp, quantized to k/255. Labels are the argmax of a
# FIXED random tanh teacher on the label dims, whose biases are calibrated once to balance the classes.
# Latents with the teacher's top two logits closer than a margin are redrawn: the classes are separable
# but curved. Everything runs in float64 on one BLAS thread and ends quantized, so the bytes (and the
# fingerprint) do not depend on the host's BLAS kernel or thread count.
_TEACHER_SEED = 20240601
_LABEL_DIMS, _NUISANCE_DIMS, _TEACHER_HIDDEN = 10, 6, 64
_MARGIN = 0.5                       # in units of the teacher's logit std
_INK_OFFSET, _INK_GAIN = 0.85, 1.5  # pixel = clip(1.5 (v - 0.85), 0, 1), v ~ N(0, 1): ~19% lit, like MNIST
_DRAW_ROWS, _RENDER_ROWS = 4096, 512  # 512 x 784 float64 blocks stay in cache


def _teacher_logits(z, w1, w2, bias):
    return np.tanh(z @ w1) @ w2 + bias  # (n, 16) @ (16, 64) -> (n, 64) @ (64, 10) -> (n, 10)


def _clear_margin(logits) -> np.ndarray:
    top2 = np.partition(logits, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] > _MARGIN


@lru_cache(maxsize=1)
def _teacher():
    """(render (17, 784), w1 (16, 64), w2 (64, 10), bias (10,)): fixed, shared by every seed."""
    rng = np.random.default_rng(_TEACHER_SEED)
    dims = _LABEL_DIMS + _NUISANCE_DIMS
    # 255 * gain * (z @ render - offset) as one product: z gets a constant 1 column, render a last row
    render = np.vstack([rng.standard_normal((dims, 784)) / np.sqrt(dims), np.full((1, 784), -_INK_OFFSET)])
    render *= 255 * _INK_GAIN
    w1 = np.zeros((dims, _TEACHER_HIDDEN))  # nuisance rows stay 0: the label ignores them
    w1[:_LABEL_DIMS] = rng.standard_normal((_LABEL_DIMS, _TEACHER_HIDDEN)) / np.sqrt(_LABEL_DIMS)
    w2 = rng.standard_normal((_TEACHER_HIDDEN, 10))
    logits = _teacher_logits(rng.standard_normal((10_000, dims)), w1, w2, 0.0)
    w2 /= logits.std()
    logits /= logits.std()
    bias = np.zeros(10)
    for _ in range(60):  # nudge the biases until each class has ~10% of the kept calibration latents
        kept = (logits + bias)[_clear_margin(logits + bias)]
        bias -= 0.15 * (10 * np.bincount(kept.argmax(1), minlength=10) / len(kept) - 1)
    return render, w1, w2, bias


def _synthetic_split(n: int, rng: np.random.Generator, dtype):
    render, *teacher = _teacher()
    dims = render.shape[0] - 1
    zs, labels, kept = [np.empty((0, dims))], [np.empty(0, np.int64)], 0
    while kept < n:  # fixed-size draws: the first k rows do not depend on n
        z = rng.standard_normal((_DRAW_ROWS, dims))
        logits = _teacher_logits(z, *teacher)
        clear = _clear_margin(logits)
        zs.append(z[clear])
        labels.append(logits[clear].argmax(1))
        kept += int(clear.sum())
    z = np.hstack([np.concatenate(zs)[:n], np.ones((n, 1))])
    x, v = np.empty((n, 784), dtype), np.empty((_RENDER_ROWS, 784))
    for lo in range(0, n, _RENDER_ROWS):
        block = v[:min(_RENDER_ROWS, n - lo)]
        np.matmul(z[lo:lo + _RENDER_ROWS], render, out=block)  # (B, 17) @ (17, 784) -> (B, 784)
        np.rint(np.clip(block, 0, 255, out=block), out=block)
        np.divide(block, 255, out=x[lo:lo + _RENDER_ROWS], casting="same_kind")
    return x, np.concatenate(labels)[:n].astype(np.int64)


def make_synthetic(n_train, n_test, seed, dtype="float32") -> Dataset:
    """A learnable, balanced 10-class set; deterministic from `seed`; the test set ignores n_train."""
    dtype = _float_dtype(dtype)
    with threadpool_limits(1, "blas"):  # small products: threads only cost time, and change rounding
        x_train, y_train = _synthetic_split(n_train, _rng(seed, 2), dtype)
        x_test, y_test = _synthetic_split(n_test, _rng(seed, 3), dtype)
    return Dataset("synthetic", f"synthetic (seed {seed})", x_train, y_train, x_test, y_test)


# ---- choosing a dataset -------------------------------------------------------------------------

def _float_dtype(dtype) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in (np.float32, np.float64):
        raise DataError(f"unsupported dtype {dtype!r}: use float32 or float64")
    return resolved


def load_dataset(name="auto", data_dir=None, num_samples=None, seed=42, dtype="float32", log=None) -> Dataset:
    """Loads `name` (auto|mnist|fashion-mnist|synthetic) as the module docstring describes; calls
    log(line) once to say which dataset came from where, and why if `auto` fell back."""
    log, dtype = log or (lambda line: None), _float_dtype(dtype)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if num_samples is not None and num_samples < 1:
        raise DataError(f"--num-samples must be at least 1, got {num_samples}")

    def done(data: Dataset, how: str, why: str = "") -> Dataset:
        log(f"dataset: {data.name} {how} ({len(data.y_train)} train / {len(data.y_test)} test rows){why}")
        return data

    def synthetic() -> Dataset:
        return make_synthetic(SYNTHETIC_TRAIN if num_samples is None else num_samples, SYNTHETIC_TEST, seed, dtype)

    def from_folder(kind: str, folder: Path) -> Dataset:
        return _load_folder(kind, folder, num_samples, seed, dtype)

    if name == "synthetic":
        return done(synthetic(), "generated")
    if name not in ("auto", "mnist", "fashion-mnist"):
        raise DataError(f"unknown dataset {name!r}: use auto, mnist, fashion-mnist or synthetic")
    mnist_dir = _find_set([root / "mnist", root])
    if name != "fashion-mnist" and mnist_dir:
        return done(from_folder("mnist", mnist_dir), f"from {mnist_dir}")
    no_mnist = f"there is no MNIST in {root / 'mnist'} or {root}"
    fashion_places = [root / "fashion-mnist", *map(Path, FASHION_SYSTEM_DIRS)]
    fashion_dir = _find_set(fashion_places)
    if name != "mnist" and fashion_dir:
        why = f", because {no_mnist}" if name == "auto" else ""
        return done(from_folder("fashion-mnist", fashion_dir), f"from {fashion_dir}", why)
    if name == "fashion-mnist":
        raise DataError(f"Fashion-MNIST not found in {', '.join(map(str, fashion_places))}: apt-get install "
                        f"dataset-fashion-mnist, or copy its 4 .gz files into {root / 'fashion-mnist'}")
    try:
        if os.environ.get("PARSGD_NO_DOWNLOAD", "") not in ("", "0"):
            raise DataError(f"{no_mnist} and downloading is off (PARSGD_NO_DOWNLOAD): "
                            f"{_offline_fix(root / 'mnist')}")
        timeout = DOWNLOAD_TIMEOUT_AUTO if name == "auto" else DOWNLOAD_TIMEOUT
        folder = download_mnist(root / "mnist", MNIST_MIRRORS, timeout, log, MNIST_FILES)
    except DataError as exc:
        if name == "mnist":
            raise
        return done(synthetic(), "generated", f", because no MNIST or Fashion-MNIST is available here: {exc}")
    return done(from_folder("mnist", folder), f"downloaded into {folder}")
