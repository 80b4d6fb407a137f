"""A ReLU MLP with softmax cross-entropy, on ONE flat parameter vector.

    python -m pytest tests/test_mlp.py -q

All parameters live in one contiguous vector (what travels between server and workers);
`layer_views` gives (W, b) views into it, in the order W1, b1, W2, b2, ...
Gradients are written into a caller-provided flat buffer, so hot loops allocate nothing
beyond the per-batch-size activation buffers kept in a `Workspace`.

`sizes` is always the layer widths (n_in, hidden..., n_out), e.g. (784, 256, 128, 10); B is the number
of rows in a batch. params, x and the Workspace share one float dtype, float32 or float64. Losses are
in nats (natural log). Sources: He initialisation (He, Zhang, Ren and Sun 2015, "Delving Deep into
Rectifiers", ICCV); back-propagation (Rumelhart, Hinton and Williams 1986, Nature 323); the softmax
cross-entropy gradient softmax(z) - onehot(y) (Bishop 2006, "Pattern Recognition and Machine
Learning", eq. 4.109); the max-shifted log-sum-exp (Goodfellow, Bengio and Courville 2016, "Deep
Learning", section 4.1).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def layer_shapes(sizes) -> list[tuple[int, ...]]:
    """[(784, 256), (256,), (256, 128), (128,), ...] for sizes (784, 256, 128, ...): W (fan_in, fan_out)
    then b (fan_out,) per layer, in the order they sit in the flat vector. Raises nothing."""
    shapes = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        shapes += [(fan_in, fan_out), (fan_out,)]
    return shapes


def n_params(sizes) -> int:
    """Length of the flat parameter vector: sum of fan_in * fan_out + fan_out over the layers."""
    return _layout(tuple(sizes))[1]


@lru_cache(maxsize=32)
def _layout(sizes: tuple) -> tuple[tuple[tuple[int, int, tuple[int, ...]], ...], int]:
    """((start, end, shape) per array, total): computed once per model, since layer_views runs
    three times per gradient and np.prod alone cost ~40 us a call (7% of a 128-row shard)."""
    spans, offset = [], 0
    for shape in layer_shapes(sizes):
        size = int(np.prod(shape))
        spans.append((offset, offset + size, shape))
        offset += size
    return tuple(spans), offset


def layer_bounds(sizes) -> list[tuple[int, int]]:
    """Per layer i, the (lo, hi) element range of W_i then b_i in the flat vector (they are adjacent):
    [(0, 200960), (200960, 201216)] merged into (0, 201216) for the first layer of 784-256-..."""
    spans, _ = _layout(tuple(sizes))
    return [(spans[2 * i][0], spans[2 * i + 1][1]) for i in range(len(spans) // 2)]


def layer_views(flat: np.ndarray, sizes) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, W (fan_in, fan_out) and b (fan_out,) as views into `flat` ((n_params(sizes),), any
    dtype, contiguous); writing a view writes the flat vector. Raises AssertionError if flat.size is
    not n_params(sizes)."""
    spans, total = _layout(tuple(sizes))
    assert total == flat.size, "flat vector does not match the layer sizes"
    views = [flat[lo:hi].reshape(shape) for lo, hi, shape in spans]
    return list(zip(views[0::2], views[1::2]))


def named_arrays(flat: np.ndarray, sizes) -> dict[str, np.ndarray]:
    """{'W1': (784, 256) view, 'b1': (256,) view, ...}, 1-based: the layout of model.npz. Raises
    AssertionError as layer_views does."""
    out = {}
    for i, (w, b) in enumerate(layer_views(flat, sizes), start=1):
        out[f"W{i}"], out[f"b{i}"] = w, b
    return out


def init_params(sizes, seed: int, dtype="float32") -> np.ndarray:
    """A new (n_params(sizes),) vector of `dtype`: weights ~ N(0, 2 / fan_in) (He et al. 2015, for
    ReLU layers), biases 0. Drawn in float64 and cast once, so float32 is float64 rounded.
    Raises ValueError for a negative seed (NumPy's SeedSequence) and TypeError for an unknown dtype."""
    rng = np.random.default_rng([seed, 0x4D4C50])  # "MLP": independent of the data-order stream
    flat = np.zeros(n_params(sizes), dtype=np.float64)
    for w, _ in layer_views(flat, sizes):
        w[...] = rng.standard_normal(w.shape) * np.sqrt(2.0 / w.shape[0])
    return flat.astype(dtype)


class Workspace:
    """Activation buffers of `dtype` reused across calls, one set per batch size seen (a few at most:
    the batch or shard size, the last short batch, evaluate's chunk). Not thread-safe: the arrays a
    call returns are overwritten by the next call with the same row count."""

    def __init__(self, sizes, dtype):
        self.sizes, self.dtype = tuple(sizes), np.dtype(dtype)
        self._by_rows: dict[int, list[np.ndarray]] = {}

    def activations(self, rows: int) -> list[np.ndarray]:
        """Per layer a (rows, fan_out) output, then per hidden layer a (rows, width) back-prop delta,
        all of the workspace dtype; allocated on the first call for `rows`, then the same arrays."""
        bufs = self._by_rows.get(rows)
        if bufs is None:
            widths = list(self.sizes[1:]) + list(self.sizes[1:-1])
            bufs = [np.empty((rows, width), self.dtype) for width in widths]
            self._by_rows[rows] = bufs
        return bufs


def forward(params, sizes, x, ws: Workspace, before_layer=None) -> list[np.ndarray]:
    """Per layer the (B, fan_out) output for x (B, sizes[0]): ReLU for hidden layers, and the last
    entry holds the logits (B, sizes[-1]). The arrays are `ws` buffers (see Workspace).
    `before_layer(i)`, if given, is called before layer i reads its W and b (a worker waits there for
    that layer's parameters to arrive: --overlap); it changes no number.
    Raises ValueError (from np.matmul) if x has the wrong width, AssertionError as layer_views does."""
    acts = ws.activations(x.shape[0])[:len(sizes) - 1]
    layers = layer_views(params, sizes)
    h = x
    for i, (w, b) in enumerate(layers):
        if before_layer is not None:
            before_layer(i)
        z = acts[i]
        np.matmul(h, w, out=z)  # (B, fan_in) @ (fan_in, fan_out) -> (B, fan_out)
        z += b
        if i < len(layers) - 1:
            np.maximum(z, 0, out=z)  # in place: the stored output is also what backward needs
        h = z
    return acts


def _log_softmax_inplace(z: np.ndarray) -> np.ndarray:
    """z <- log softmax(z) row-wise; subtracting the row max first keeps exp from overflowing."""
    z -= z.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def loss_and_grad(params, sizes, x, y, grad_out, ws: Workspace, scale=None) -> tuple[float, int]:
    """See backward_layers (the same computation, run to its end)."""
    steps = backward_layers(params, sizes, x, y, grad_out, ws, scale)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def backward_layers(params, sizes, x, y, grad_out, ws: Workspace, scale=None, before_layer=None):
    """A generator: yields layer index i (last layer first) as soon as grad_out's W_i and b_i (the
    range layer_bounds(sizes)[i]) hold their final values, while the earlier layers are still to be
    computed; returns (loss_sum, correct) (StopIteration.value). loss_and_grad runs it to the end:
    the same operations in the same order, so the numbers are the same bit for bit (--overlap layer /
    bucket push each range from the yield). `before_layer` is passed to `forward`.

    Writes scale * d(sum of row losses)/d(params) into grad_out; returns (loss_sum, correct).

    params: (n_params(sizes),) float32 or float64. x: (B, sizes[0]) of the same dtype. y: (B,)
    integer labels in 0..sizes[-1]-1. grad_out: (n_params(sizes),) of the same dtype, entirely
    overwritten, laid out like params. scale defaults to 1 / B, i.e. the gradient of the mean loss
    over x; a parameter-server or Pool worker passes 1 / (whole batch), so shard gradients sum to it.
    loss_sum: float, the sum over rows of -log softmax(logits)[y], in nats. correct: int, the rows
    whose argmax logit (lowest index on ties) is y.

    The row loss is softmax cross-entropy, whose gradient with respect to the logits is
    softmax(z) - onehot(y) (Bishop 2006, eq. 4.109); back-propagation (Rumelhart et al. 1986) carries
    it to every W and b. Raises ValueError (from NumPy) if x has the wrong width, IndexError if a
    label is >= sizes[-1] (negative labels are not checked: they index from the end), and
    AssertionError if params or grad_out is not n_params(sizes) long.
    """
    rows = x.shape[0]
    scale = 1.0 / rows if scale is None else scale
    acts = forward(params, sizes, x, ws, before_layer)
    logits = acts[-1]
    idx = np.arange(rows)
    correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
    logp = _log_softmax_inplace(logits)
    loss_sum = float(-logp[idx, y].sum())
    dz = np.exp(logp, out=logp)  # reuses the logits buffer: softmax - onehot is dLoss/dlogits per row
    dz[idx, y] -= 1.0
    dz *= scale
    layers = layer_views(params, sizes)
    grads = layer_views(grad_out, sizes)
    deltas = ws.activations(rows)[len(sizes) - 1:]
    for i in range(len(layers) - 1, -1, -1):
        h_prev = x if i == 0 else acts[i - 1]
        gw, gb = grads[i]
        np.matmul(h_prev.T, dz, out=gw)  # (fan_in, B) @ (B, fan_out) -> (fan_in, fan_out)
        np.sum(dz, axis=0, out=gb)
        yield i  # W_i, b_i final: nothing below writes them again (the caller may send them now)
        if i > 0:
            dh = deltas[i - 1]
            np.matmul(dz, layers[i][0].T, out=dh)  # (B, fan_out) @ (fan_out, fan_in) -> (B, fan_in)
            dh *= h_prev > 0  # h_prev = relu(z) > 0 exactly where z > 0: the stored output is the ReLU mask
            dz = dh
    return loss_sum, correct


def loss_sum_only(params, sizes, x, y, ws: Workspace) -> float:
    """loss_and_grad's loss_sum (nats) without the gradient: the function tests/test_mlp.py
    differentiates by finite differences. Shapes, dtypes and errors as in loss_and_grad."""
    logp = _log_softmax_inplace(forward(params, sizes, x, ws)[-1])
    return float(-logp[np.arange(x.shape[0]), y].sum())


def evaluate(params, sizes, x, y, ws: Workspace, chunk: int = 2048) -> tuple[float, float]:
    """(mean loss in nats per row, accuracy as a fraction in [0, 1]) over a whole set x (n, sizes[0]),
    y (n,), in chunks of `chunk` rows so memory stays bounded; (0.0, 0.0) for n = 0. Shapes, dtypes
    and errors as in loss_and_grad."""
    loss, correct = 0.0, 0
    for lo in range(0, x.shape[0], chunk):
        xs, ys = x[lo:lo + chunk], y[lo:lo + chunk]
        logp = _log_softmax_inplace(forward(params, sizes, xs, ws)[-1])
        correct += int(np.count_nonzero(logp.argmax(axis=1) == ys))
        loss -= float(logp[np.arange(xs.shape[0]), ys].sum())
    n = max(1, x.shape[0])
    return loss / n, correct / n
