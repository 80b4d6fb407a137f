"""load_dataset: which dataset `--dataset NAME` means on this machine, and where it comes from.

    python -c "from parsgd.data import load_dataset; d = load_dataset(log=print); print(d.x_train.shape, d.fingerprint())"

`--dataset auto` takes MNIST from DATA_DIR/mnist or DATA_DIR, else Fashion-MNIST from DATA_DIR/fashion-mnist
or the Debian package folder, else downloads MNIST into DATA_DIR/mnist, else makes synthetic data.
DATA_DIR is --data-dir, else $PARSGD_DATA_DIR, else $XDG_CACHE_HOME/parsgd, else ~/.cache/parsgd.
PARSGD_NO_DOWNLOAD=1 turns downloading off. A local file that is present but broken is an error, not a
reason to fall back: the message names the file and the fix. What is decoded is kept once per machine
in the decoded-data cache (parsgd.data.cache) and mapped read-only by every process that loads it.
"""
from __future__ import annotations

import os
from pathlib import Path

from parsgd.data import mnist
from parsgd.data.cache import cached, files_digest
from parsgd.data.dataset import DataError, Dataset, TooManySamples, default_data_dir, float_dtype
from parsgd.data.idx import SET_FILES, find_set, idx_file, idx_rows, load_folder
from parsgd.data.synthetic import SYNTHETIC_TEST, SYNTHETIC_TRAIN, make_synthetic

FASHION_SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian package dataset-fashion-mnist
MNIST_TRAIN = 60_000  # rows of the downloaded MNIST training set (its files are pinned by SHA256)


def load_dataset(name="auto", data_dir=None, num_samples=None, seed=42, dtype="float32", log=None) -> Dataset:
    """The dataset `name` (auto|mnist|fashion-mnist|synthetic) chosen as the module docstring describes.

    x: (n, 784) of `dtype` (float32 or float64) in [0, 1]; y: (n,) int64 in 0..9 (see Dataset).
    `data_dir` (a path, ~ expanded) defaults to default_data_dir(). `num_samples` keeps that many
    training rows (a seeded subsample for files, the first rows for synthetic data); the test split is
    always whole. `seed` (integer >= 0) picks that subsample and the synthetic data. `log(line)` is
    called once to say which dataset came from where, and why if `auto` fell back; a download logs
    one more line per file.

    Raises DataError for an unknown name or dtype, num_samples < 1 or above the training rows, a
    present but broken file, and when the named dataset is missing and cannot be downloaded; `auto`
    falls back to synthetic data only when no dataset is present at all.
    """
    log, dtype = log or (lambda line: None), float_dtype(dtype)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    check_num_samples(name, data_dir, num_samples)

    def done(data: Dataset, how: str, why: str = "") -> Dataset:
        log(f"dataset: {data.name} {how} ({len(data.y_train)} train / {len(data.y_test)} test rows){why}")
        return data

    def synthetic() -> Dataset:
        n = SYNTHETIC_TRAIN if num_samples is None else num_samples
        key = {"name": "synthetic", "num_samples": n, "test": SYNTHETIC_TEST, "seed": seed, "dtype": dtype.name}
        return cached(key, lambda: make_synthetic(n, SYNTHETIC_TEST, seed, dtype), log)

    def from_folder(kind: str, folder: Path) -> Dataset:
        decode = lambda: load_folder(kind, folder, num_samples, seed, dtype)  # noqa: E731
        digest = files_digest(idx_file(folder, stem) for stem in SET_FILES)
        if digest is None:  # a file vanished or cannot be read: decoding says which, as without a cache
            return decode()
        key = {"name": kind, "files": digest, "num_samples": num_samples, "dtype": dtype.name,
               "seed": None if num_samples is None else seed}  # the seed only picks the subsample
        return cached(key, decode, log, source=str(folder))

    if name == "synthetic":
        return done(synthetic(), "generated")
    if name not in ("auto", "mnist", "fashion-mnist"):
        raise DataError(f"unknown dataset {name!r}: use auto, mnist, fashion-mnist or synthetic")
    mnist_dir = find_set([root / "mnist", root])
    if name != "fashion-mnist" and mnist_dir:
        return done(from_folder("mnist", mnist_dir), f"from {mnist_dir}")
    no_mnist = f"there is no MNIST in {root / 'mnist'} or {root}"
    fashion_places = [root / "fashion-mnist", *map(Path, FASHION_SYSTEM_DIRS)]
    fashion_dir = find_set(fashion_places)
    if name != "mnist" and fashion_dir:
        why = f", because {no_mnist}" if name == "auto" else ""
        return done(from_folder("fashion-mnist", fashion_dir), f"from {fashion_dir}", why)
    if name == "fashion-mnist":
        raise DataError(f"Fashion-MNIST not found in {', '.join(map(str, fashion_places))}: apt-get install "
                        f"dataset-fashion-mnist, or copy its 4 .gz files into {root / 'fashion-mnist'}")
    try:
        if os.environ.get("PARSGD_NO_DOWNLOAD", "") not in ("", "0"):
            raise DataError(f"{no_mnist} and downloading is off (PARSGD_NO_DOWNLOAD): "
                            f"{mnist.offline_fix(root / 'mnist')}")
        timeout = mnist.DOWNLOAD_TIMEOUT_AUTO if name == "auto" else mnist.DOWNLOAD_TIMEOUT
        folder = mnist.download_mnist(root / "mnist", mnist.MNIST_MIRRORS, timeout, log, mnist.MNIST_FILES)
    except DataError as exc:
        if name == "mnist":
            raise
        return done(synthetic(), "generated", f", because no MNIST or Fashion-MNIST is available here: {exc}")
    return done(from_folder("mnist", folder), f"downloaded into {folder}")


def train_rows(name="auto", data_dir=None) -> tuple[str, int] | None:
    """(what, rows): the training rows of the set load_dataset(name, data_dir) would load, read from
    file headers only (nothing is loaded or generated), and a few words naming that set; None when
    that cannot be told (an unknown name, no Fashion-MNIST, a broken file: load_dataset says why)."""
    if name == "synthetic":
        return "built-in synthetic set", SYNTHETIC_TRAIN
    if name not in ("auto", "mnist", "fashion-mnist"):
        return None
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    for kind, places in (("mnist", [root / "mnist", root]),
                         ("fashion-mnist", [root / "fashion-mnist", *map(Path, FASHION_SYSTEM_DIRS)])):
        folder = find_set(places) if name in ("auto", kind) else None
        if folder:
            rows = idx_rows(idx_file(folder, SET_FILES[1]))
            return (f"{kind} set in {folder}", rows) if rows is not None else None
    if name == "fashion-mnist":
        return None
    if name == "mnist":  # to be downloaded
        return "MNIST set", MNIST_TRAIN
    return "MNIST or synthetic set", min(MNIST_TRAIN, SYNTHETIC_TRAIN)  # auto: a download, else synthetic


def check_num_samples(name="auto", data_dir=None, num_samples=None) -> None:
    """Refuses a `num_samples` the dataset cannot give, before anything is loaded or generated.

    Raises DataError for num_samples < 1, TooManySamples (exit 2) naming the set and its size when
    num_samples is more than train_rows(name, data_dir) says it has.
    """
    if num_samples is None:
        return
    if num_samples < 1:
        raise DataError(f"--num-samples must be at least 1, got {num_samples}")
    known = train_rows(name, data_dir)
    if known is not None and num_samples > known[1]:
        what, rows = known
        raise TooManySamples(f"--num-samples {num_samples} is more than the {rows} training rows of the {what}: "
                             f"use at most {rows}")
