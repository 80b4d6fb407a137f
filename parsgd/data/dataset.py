"""The Dataset every trainer consumes, its fingerprint, the per-epoch row order, and the data folder.

    python -c "from parsgd.data.dataset import *; print(epoch_order(10, 42, 0), default_data_dir())"

This is the bottom of parsgd.data: it imports nothing from its siblings.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parsgd.errors import UsageError, UserError
from parsgd.signals import deferred


# numpy imports numpy.random at its first use, and an exception a signal handler raises during that import
# is lost (its Cython module init swallows it): 4 of 60 SIGINTs right before a first np.random call went
# unseen and `train` trained to the end. So it is imported here, once, with the signals deferred.
with deferred():
    import numpy.random  # noqa: F401

# Streams of stream_rng(seed, k). They differ from epoch_order's [seed, epoch] in length and in the
# 0xDA7A word, so no data stream ever repeats an epoch's permutation.
_STREAM = 0xDA7A
STREAM_SUBSAMPLE, STREAM_SYNTHETIC_TRAIN, STREAM_SYNTHETIC_TEST = 1, 2, 3


class DataError(UserError):
    """A dataset cannot be found, read or downloaded; the one-line message names the file and the fix."""


class TooManySamples(DataError, UsageError):
    """--num-samples asks for more training rows than the dataset has; the message names its size (exit 2)."""


@dataclass
class Dataset:
    """Train and test split of 28x28 images flattened to 784 values.

    x_train: (n_train, 784) float32 or float64, pixel intensity / 255, so in [0, 1].
    y_train: (n_train,) int64 class labels in 0..9.
    x_test, y_test: the same for the n_test test rows.
    name: "mnist", "fashion-mnist" or "synthetic"; source: the folder (or "synthetic (seed S)").
    Raises AssertionError if an x and its y differ in length.
    """
    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self):
        assert len(self.x_train) == len(self.y_train) and len(self.x_test) == len(self.y_test)

    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 (FIPS 180-4, via hashlib) over the name and each array's shape,
        dtype and bytes. Server and workers compare it: equal iff they loaded the same data."""
        digest = hashlib.sha256(self.name.encode())
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(f"|{array.shape}|{array.dtype.str}|".encode())
            digest.update(np.ascontiguousarray(array))
        return digest.hexdigest()[:16]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Row order of 0-based `epoch`: an (n,) int64 permutation of 0..n-1.

    NumPy's default_rng (PCG64) seeded with the SeedSequence [seed, epoch], so the server, the workers
    and the sequential trainer all compute the same order without sending it. Raises ValueError
    (from NumPy's SeedSequence) for a negative seed or epoch.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    """The generator of one data stream (STREAM_SUBSAMPLE, STREAM_SYNTHETIC_TRAIN, ...) for `seed`:
    default_rng([seed, 0xDA7A, stream]). Raises DataError unless seed is an integer >= 0."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng([seed, _STREAM, stream])


def float_dtype(dtype) -> np.dtype:
    """np.dtype(float32) or np.dtype(float64) for anything NumPy reads as one ("float32", np.float64,
    ...); raises DataError for any other dtype."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in (np.float32, np.float64):
        raise DataError(f"unsupported dtype {dtype!r}: use float32 or float64")
    return resolved


def default_data_dir() -> Path:
    """$PARSGD_DATA_DIR, else $XDG_CACHE_HOME/parsgd, else ~/.cache/parsgd (the cache folder of the
    XDG Base Directory Specification). Only reads the environment; raises nothing and creates nothing."""
    if os.environ.get("PARSGD_DATA_DIR"):
        return Path(os.environ["PARSGD_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "parsgd"
