"""Momentum SGD as a plain in-place function; the sequential trainer, the Pool baseline and the
parameter server all call this one function, so they apply bit-identical updates.

    python -m pytest tests/test_mlp.py -q -k momentum
"""
from __future__ import annotations

import math

import numpy as np


def sgd_momentum_(params: np.ndarray, velocity: np.ndarray, grad: np.ndarray,
                  lr: float, momentum: float, scratch: np.ndarray | None = None) -> None:
    """In place:  v = momentum * v + grad;  params -= lr * v.

    params, velocity, grad and `scratch`: the flat (n_params,) vector, all of the same shape and
    float dtype (float32 or float64); callers start velocity at zeros. lr: step size, parameter units
    per gradient unit; momentum: dimensionless, usually in [0, 1); neither is checked. `scratch`
    avoids allocating a temporary for lr * v; the result is bit-identical with or without it.
    Returns None; raises ValueError (from NumPy) if the shapes do not broadcast.

    This is PyTorch's torch.optim.SGD with dampening 0 and nesterov False. Sutskever, Martens, Dahl and
    Hinton 2013 ("On the importance of initialization and momentum in deep learning", ICML) write
    v = momentum * v - lr * grad, params += v: the same steps while lr is constant (their v is -lr times
    this one).
    """
    velocity *= momentum
    velocity += grad
    if scratch is None:
        params -= lr * velocity
    else:
        np.multiply(velocity, lr, out=scratch)
        params -= scratch


def all_finite(v: np.ndarray) -> bool:
    """True if no element of the 1-D float vector v is NaN or +-Inf; read-only, no temporary.

    One BLAS pass: v . v is finite exactly when every element is, unless a square overflows
    (|x| above ~1.8e19 in float32, ~1.3e154 in float64); only then is v checked element by element.
    It replaced a pairwise np.add.reduce pass, 2.5x slower (30 vs 12 us for the default model's
    235,146 float32 values on a 2-vCPU EPYC VM).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        square_sum = float(np.dot(v, v))
    return math.isfinite(square_sum) or bool(np.isfinite(v).all())
