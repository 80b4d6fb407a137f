"""The multiprocessing.Pool data-parallel baseline: each batch's shards computed by P processes.

    parsgd train --dataset synthetic --num-samples 4096 --epochs 2 --workers 2
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

from parsgd.config import RunConfig
from parsgd.data import Dataset
from parsgd.model.mlp import Workspace, loss_and_grad
from parsgd.training.loop import Trainer, shard_bounds

_pool_state: dict = {}
CLOSE_TIMEOUT_S = 2.0  # Pool.terminate() gets this long; then its processes are SIGKILLed


def die_with_parent(parent: int | None = None, sig: int = signal.SIGKILL) -> None:
    """In a child process: get `sig` (default SIGKILL) when the parent dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so no orphan is left to print a traceback into a closed pipe or wait on a queue
    for ever. `parent`: the parent's pid, taken before the fork; if the parent died before this ran,
    the signal will never come, so the child sends it to itself now (seen under load: a Pool child
    forked just before its parent's SIGKILL outlived it). A no-op where prctl is missing."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)


def _pool_init(sizes, dtype, data: Dataset | None, parent: int) -> None:
    """Runs once in each Pool process: ignore SIGINT, pin BLAS to one thread, keep the data (inherited by fork).

    Ctrl-C in a terminal reaches the whole foreground process group. Only the parent may act on it: a Pool
    process killed by KeyboardInterrupt in the middle of writing its result leaves a partial message in the
    result pipe (or a lock held), and Pool.terminate() then waits for it forever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent's pipes close before its PR_SET_PDEATHSIG reaches us (the kernel closes a dying process's
    # files first): a result written in between must end this process quietly, as SIGPIPE ends any Unix
    # process, not print a BrokenPipeError traceback (Python ignores SIGPIPE by default).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    die_with_parent(parent)
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
        # Until each process has run _pool_init, a SIGINT must neither kill it nor be lost by the parent:
        # the processes are forked with a handler that only records it, and the parent raises it after.
        self.pending = None  # the step's map, still running if Ctrl-C interrupted the wait for it
        caught: list[int] = []
        main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
        old = signal.signal(signal.SIGINT, lambda signum, _: caught.append(signum)) if main else None
        try:
            self.pool = ctx.Pool(cfg.workers, initializer=_pool_init, initargs=(self.sizes, cfg.dtype, initdata, os.getpid()))
        finally:
            if main:
                signal.signal(signal.SIGINT, signal.SIG_DFL if old is None else old)
        if caught:
            self.close()
            raise KeyboardInterrupt
        self.bytes_sent = self.bytes_recv = 0
        self.compute_s = self.comm_s = 0.0

    def batch_gradient(self, epoch, step, order, lo, hi):
        # An epoch's last batch may have fewer rows than workers: its empty shards add nothing and are skipped.
        shards = [(a, b) for a, b in shard_bounds(lo, hi, self.cfg.workers) if b > a]
        t = time.perf_counter()
        tasks = [(self.params, order[a:b], hi - lo) for a, b in shards]
        self.pending = self.pool.map_async(_pool_shard_gradient, tasks)
        results = self.pending.get()
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
        """Stop the Pool processes, within CLOSE_TIMEOUT_S plus a SIGKILL, whatever state they are in.

        An interrupted step's shards are first let finish (a process writing a result after the result
        thread stopped blocks Pool.terminate() for good, CPython's pool design); terminate() then runs
        in a daemon thread, and any process still alive after the bound is killed.
        """
        if self.pending is not None:  # a process still writing its result would block terminate() for good
            self.pending.wait(CLOSE_TIMEOUT_S)
        procs = list(getattr(self.pool, "_pool", ()))
        stopper = threading.Thread(target=self._terminate, daemon=True)
        stopper.start()
        stopper.join(CLOSE_TIMEOUT_S)
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(CLOSE_TIMEOUT_S)

    def _terminate(self) -> None:
        self.pool.terminate()
        self.pool.join()


def make_trainer(cfg: RunConfig, data: Dataset, **kw) -> Trainer:
    return (PoolTrainer if cfg.workers > 1 else Trainer)(cfg, data, **kw)
