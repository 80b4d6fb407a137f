"""Momentum SGD as a plain in-place function; the sequential trainer, the Pool baseline and the
parameter server all call this one function, so they apply bit-identical updates."""
from __future__ import annotations

import numpy as np


def sgd_momentum_(params: np.ndarray, velocity: np.ndarray, grad: np.ndarray,
                  lr: float, momentum: float, scratch: np.ndarray | None = None) -> None:
    """In place:  v = momentum * v + grad;  params -= lr * v.

    `scratch` (same shape and dtype) avoids allocating a temporary for lr * v.
    """
    velocity *= momentum
    velocity += grad
    if scratch is None:
        params -= lr * velocity
    else:
        np.multiply(velocity, lr, out=scratch)
        params -= scratch
