"""Synthetic MNIST-like data labelled by a fixed random teacher network, for machines without MNIST.

    python -c "from parsgd.data.synthetic import *; print(make_synthetic(1000, 100, 42).fingerprint())"

A latent z ~ N(0, I) (10 dims decide the label, 6 are nuisance) is rendered into sparse, MNIST-like
pixels by a FIXED random linear map and a clipped ramp, quantized to k/255. Labels are the argmax of a
FIXED random tanh teacher on the label dims, whose biases are calibrated once to balance the classes.
Latents with the teacher's top two logits closer than a margin are redrawn: the classes are separable
but curved. Everything runs in float64 on one BLAS thread and ends quantized, so the bytes (and the
fingerprint) do not depend on the host's BLAS kernel or thread count.

The scheme is this project's own; labelling random inputs with a fixed random network is the
teacher-student setting of statistical learning theory (e.g. Seung, Sompolinsky and Tishby 1992).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from threadpoolctl import threadpool_limits

from parsgd.data.dataset import (STREAM_SYNTHETIC_TEST, STREAM_SYNTHETIC_TRAIN, Dataset, float_dtype,
                                 stream_rng)

SYNTHETIC_TRAIN, SYNTHETIC_TEST = 60_000, 10_000  # rows, as in MNIST

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
    """A learnable, roughly balanced 10-class Dataset named "synthetic", deterministic from `seed`.

    x_train: (n_train, 784), x_test: (n_test, 784), of `dtype` (float32 or float64), values k/255 for
    integer k in 0..255 (~19% of pixels non-zero, mean ~0.12; MNIST's is 0.13). y_train, y_test: int64 in
    0..9. The first k rows of a split do not depend on its size, and the test split does not depend
    on n_train. The bytes are the same on every host (see the module docstring).

    Raises DataError if seed is not an integer >= 0 or dtype is not float32 or float64.
    """
    dtype = float_dtype(dtype)
    with threadpool_limits(1, "blas"):  # small products: threads only cost time, and change rounding
        x_train, y_train = _synthetic_split(n_train, stream_rng(seed, STREAM_SYNTHETIC_TRAIN), dtype)
        x_test, y_test = _synthetic_split(n_test, stream_rng(seed, STREAM_SYNTHETIC_TEST), dtype)
    return Dataset("synthetic", f"synthetic (seed {seed})", x_train, y_train, x_test, y_test)
