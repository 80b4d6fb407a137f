"""The textbook data-parallel scheme "what users would write": multiprocessing.Pool, and every step
pickles the parameters AND the shard's rows into each task and the gradients back.

    python benchmarks/textbook_pool.py --workers 2 --batch-size 256 --epochs 3 --num-samples 60000

--workers 0 runs the same MLP code sequentially in this process (no Pool): it shows that this
MLP's arithmetic costs about what parsgd's does, so the Pool row measures the scheme, not the MLP.
Prints one JSON object: {"epoch_times": [...], ...}. Epoch time covers the training steps only
(the Pool is started before, and nothing is evaluated). Pool workers get 1 BLAS thread each
(threadpoolctl), which is kinder to this scheme than the default oversubscription on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import numpy as np
from threadpoolctl import threadpool_limits


def init_params(sizes, seed, dtype):
    """He-initialised [(W, b), ...] for layer widths `sizes`."""
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(dtype), np.zeros(b, dtype))
            for a, b in zip(sizes[:-1], sizes[1:])]


def shard_grads(task):
    """One task: (params, x, y, batch) -> (gradients of the summed shard loss / batch, loss sum)."""
    params, x, y, batch = task
    acts = [x]
    for i, (w, b) in enumerate(params):
        z = acts[-1] @ w + b                                   # (rows, in) @ (in, out) -> (rows, out)
        acts.append(np.maximum(z, 0) if i < len(params) - 1 else z)
    logits = acts[-1]
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y] + 1e-12).sum()
    delta = p
    delta[np.arange(len(y)), y] -= 1
    delta /= batch
    grads = []
    for i in range(len(params) - 1, -1, -1):
        w, _ = params[i]
        grads.append((acts[i].T @ delta, delta.sum(axis=0)))
        if i:
            delta = (delta @ w.T) * (acts[i] > 0)
    return grads[::-1], float(loss)


def _init_worker():
    global _limits
    _limits = threadpool_limits(1)


def load_data(num_samples, seed, dtype):
    """parsgd's synthetic training set (same rows as the other modes), or random rows if that fails."""
    try:
        from parsgd.data import load_dataset
        d = load_dataset("synthetic", num_samples=num_samples, seed=seed, dtype=dtype, log=lambda *a, **k: None)
        return np.ascontiguousarray(d.x_train, dtype=dtype), np.asarray(d.y_train, dtype=np.int64)
    except Exception:  # noqa: BLE001 - the benchmark must not depend on the package's internals
        rng = np.random.default_rng(seed)
        return rng.standard_normal((num_samples, 784)).astype(dtype), rng.integers(0, 10, num_samples)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--num-samples", type=int, default=60_000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    x, y = load_data(a.num_samples, a.seed, a.dtype)
    params = init_params([x.shape[1], 256, 128, 10], a.seed, a.dtype)
    velocity = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]
    P, B, n = a.workers, a.batch_size, len(y)
    pool = mp.Pool(P, initializer=_init_worker) if P > 0 else None
    epoch_times, losses = [], []
    with threadpool_limits(1):
        for epoch in range(a.epochs):
            order = np.random.default_rng([a.seed, epoch]).permutation(n)
            t0, loss_sum = time.perf_counter(), 0.0
            for lo in range(0, n, B):
                idx = order[lo:lo + B]
                rows = len(idx)
                if pool is None:
                    results = [shard_grads((params, x[idx], y[idx], rows))]
                else:
                    parts = np.array_split(idx, P)
                    results = pool.map(shard_grads, [(params, x[p], y[p], rows) for p in parts])
                for layer, ((w, b), (vw, vb)) in enumerate(zip(params, velocity)):
                    gw = sum(r[0][layer][0] for r in results)
                    gb = sum(r[0][layer][1] for r in results)
                    vw *= a.momentum
                    vw -= a.lr * gw
                    vb *= a.momentum
                    vb -= a.lr * gb
                    w += vw
                    b += vb
                loss_sum += sum(r[1] for r in results)
            epoch_times.append(time.perf_counter() - t0)
            losses.append(loss_sum / n)
    if pool is not None:
        pool.close()
        pool.join()
    print(json.dumps({"epoch_times": epoch_times, "train_loss": losses, "steps_per_epoch": -(-n // B),
                      "workers": P}))


if __name__ == "__main__":
    main()
