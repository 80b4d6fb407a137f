"""The multiprocessing.Pool data-parallel baseline: each batch's shards computed by P processes.

    parsgd train --dataset synthetic --num-samples 4096 --epochs 2 --workers 2
"""
from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
from threadpoolctl import threadpool_limits

from parsgd.config import RunConfig
from parsgd.data import Dataset
from parsgd.model.mlp import Workspace, loss_and_grad
from parsgd.training.loop import Trainer, shard_bounds

_pool_state: dict = {}


def _pool_init(sizes, dtype, data: Dataset | None) -> None:
    """Runs once in each Pool process: pin BLAS to one thread, keep the data (inherited by fork)."""
    _pool_state["limits"] = threadpool_limits(1)
    _pool_state["data"] = data if data is not None else _pool_state_data
    _pool_state["sizes"] = sizes
    _pool_state["ws"] = Workspace(sizes, dtype)
    _pool_state["grad"] = None


def _pool_shard_gradient(args):
    """The shard's share of the batch-mean gradient: d(sum of its row losses)/d(params) / batch."""
    params, idx, batch = args
    st = _pool_state
    data = st["data"]
    if st["grad"] is None:
        st["grad"] = np.empty_like(params)
    t = time.perf_counter()
    x = np.take(data.x_train, idx, axis=0)
    with np.errstate(over="ignore", invalid="ignore"):  # the parent reports divergence (check_finite)
        loss_sum, correct = loss_and_grad(params, st["sizes"], x, data.y_train[idx], st["grad"], st["ws"],
                                          scale=1.0 / batch)
    return st["grad"], loss_sum, correct, time.perf_counter() - t


_pool_state_data = None  # set in the parent before forking, so children inherit it without a copy


class PoolTrainer(Trainer):
    """Each batch split into P contiguous shards; shard gradients from a multiprocessing.Pool.

    Unlike the textbook version, the training data reaches each Pool process once (inherited by
    fork, or pickled once at start-up where fork is unavailable), not with every task; per step
    only the parameters and the row indices go out and one gradient per shard comes back.
    """

    mode = "pool"

    def __init__(self, cfg: RunConfig, data: Dataset, **kw):
        super().__init__(cfg, data, **kw)
        global _pool_state_data
        methods = mp.get_all_start_methods()
        if "fork" in methods:
            _pool_state_data = data
            ctx, initdata = mp.get_context("fork"), None
        else:
            ctx, initdata = mp.get_context(), data
        self.pool = ctx.Pool(cfg.workers, initializer=_pool_init, initargs=(self.sizes, cfg.dtype, initdata))
        self.bytes_sent = self.bytes_recv = 0
        self.compute_s = self.comm_s = 0.0

    def batch_gradient(self, epoch, step, order, lo, hi):
        shards = shard_bounds(lo, hi, self.cfg.workers)
        t = time.perf_counter()
        results = self.pool.map(_pool_shard_gradient, [(self.params, order[a:b], hi - lo) for a, b in shards])
        slowest = max(r[3] for r in results)
        self.compute_s += slowest
        self.comm_s += time.perf_counter() - t - slowest  # pickling, pipes and scheduling around the compute
        loss_sum, correct = 0.0, 0
        for i, (g, ls, c, _) in enumerate(results):  # summed in shard order
            if i == 0:
                self.grad[...] = g
            else:
                self.grad += g
            loss_sum += ls
            correct += c
        self.bytes_sent += self.params.nbytes * len(shards)
        self.bytes_recv += self.params.nbytes * len(shards)
        return loss_sum, correct

    def epoch_extras(self) -> dict:
        """compute_s: the slowest shard's compute per step; comm_s: the rest of pool.map's time."""
        extras = {"compute_s": self.compute_s, "comm_s": self.comm_s,
                  "bytes_sent": self.bytes_sent, "bytes_recv": self.bytes_recv}
        self.bytes_sent = self.bytes_recv = 0
        self.compute_s = self.comm_s = 0.0
        return extras

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def make_trainer(cfg: RunConfig, data: Dataset, **kw) -> Trainer:
    return (PoolTrainer if cfg.workers > 1 else Trainer)(cfg, data, **kw)
