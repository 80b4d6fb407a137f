"""The training loop, the sequential trainer and the multiprocessing.Pool data-parallel baseline.

    parsgd train --dataset synthetic --num-samples 4096 --epochs 2            # sequential
    parsgd train --dataset synthetic --num-samples 4096 --epochs 2 --workers 2  # Pool baseline

`Trainer.run` owns the epoch loop (data order, updates, evaluation, metrics, console lines);
subclasses only say how one batch's mean gradient is computed. The parameter server subclasses
it too, so all three modes share one loop and one update function.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import sys
import time

import click
import numpy as np
from threadpoolctl import threadpool_limits

from parsgd.config import RunConfig
from parsgd.data import Dataset, epoch_order
from parsgd.model.mlp import Workspace, evaluate, init_params, loss_and_grad
from parsgd.model.optim import sgd_momentum_
from parsgd.training.rundir import RunDir


def shard_bounds(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """Split [lo, hi) into `parts` contiguous ranges whose sizes differ by at most one."""
    base, extra = divmod(hi - lo, parts)
    bounds, start = [], lo
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def epoch_line(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch']:>3}/{epochs}  loss {m['train_loss']:.4f}  train acc {m['train_acc']:.4f}"
            f"  test acc {m['test_acc']:.4f}  {m['epoch_time_s']:.2f} s")


class Trainer:
    """Sequential mini-batch momentum SGD; subclasses override `batch_gradient`."""

    mode = "sequential"

    def __init__(self, cfg: RunConfig, data: Dataset, echo=click.echo, progress: bool | None = None):
        cfg.check_data_size(len(data.y_train))
        self.cfg, self.data, self.echo = cfg, data, echo
        self.sizes = cfg.sizes
        self.progress = sys.stdout.isatty() if progress is None else progress
        self.params = init_params(self.sizes, cfg.seed, cfg.dtype)
        self.velocity = np.zeros_like(self.params)
        self.grad = np.zeros_like(self.params)
        self.scratch = np.empty_like(self.params)
        self.ws = Workspace(self.sizes, cfg.dtype)
        self.n_train = len(data.y_train)
        self.steps_per_epoch = math.ceil(self.n_train / cfg.batch_size)
        self.step = 0
        self.metrics: list[dict] = []
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time_s": 0.0}
        self._rows = None

    # -- what subclasses change ------------------------------------------------------------
    def batch_gradient(self, epoch: int, step: int, order: np.ndarray, lo: int, hi: int):
        """Write the mean gradient over rows order[lo:hi] into self.grad; return (loss_sum, correct)."""
        idx = order[lo:hi]
        rows = self._gather(idx)
        return loss_and_grad(self.params, self.sizes, rows, self.data.y_train[idx], self.grad, self.ws)

    def update(self) -> None:
        sgd_momentum_(self.params, self.velocity, self.grad, self.cfg.lr, self.cfg.momentum, self.scratch)

    def after_step(self) -> None:
        """Called after every update (the parameter server checkpoints here)."""

    def after_epoch(self) -> None:
        """Called after each epoch's metrics are written (the parameter server checkpoints here)."""

    def epoch_extras(self) -> dict:
        """Per-epoch communication figures; zero for a trainer that communicates nothing."""
        return {"compute_s": self.partial["time_s"], "comm_s": 0.0, "bytes_sent": 0, "bytes_recv": 0}

    def close(self) -> None:
        """Release workers and other resources."""

    # -- the loop ----------------------------------------------------------------------------
    def _gather(self, idx: np.ndarray) -> np.ndarray:
        if self._rows is None or self._rows.shape[0] < idx.size:
            self._rows = np.empty((max(idx.size, self.cfg.batch_size), self.data.x_train.shape[1]),
                                  self.data.x_train.dtype)
        rows = self._rows[:idx.size]
        np.take(self.data.x_train, idx, axis=0, out=rows)
        return rows

    def run(self, rundir: RunDir | None = None) -> dict:
        cfg, n, B = self.cfg, self.n_train, self.cfg.batch_size
        wall0 = time.perf_counter()
        for epoch in range(self.step // self.steps_per_epoch, cfg.epochs):
            order = epoch_order(n, cfg.seed, epoch)
            first = self.step - epoch * self.steps_per_epoch
            batches = range(first, self.steps_per_epoch)
            with click.progressbar(batches, label=f"epoch {epoch + 1}/{cfg.epochs}",
                                   file=None if self.progress else _NullFile()) as bar:
                for b in bar:
                    t0 = time.perf_counter()
                    lo, hi = b * B, min(n, (b + 1) * B)
                    loss_sum, correct = self.batch_gradient(epoch, self.step, order, lo, hi)
                    self.update()
                    self.step += 1
                    p = self.partial
                    p["loss_sum"] += loss_sum
                    p["correct"] += correct
                    p["seen"] += hi - lo
                    p["time_s"] += time.perf_counter() - t0
                    self.after_step()
            self._end_epoch(epoch, rundir)
            self.after_epoch()
        return self.finish(rundir, time.perf_counter() - wall0)

    def finish(self, rundir: RunDir | None, wall_s: float) -> dict:
        """Write the model and summary.json; returns the summary."""
        summary = self.summary(wall_s)
        if rundir is not None:
            rundir.write_model(self.params, self.sizes)
            rundir.write_json("summary.json", summary)
        return summary

    def _end_epoch(self, epoch: int, rundir: RunDir | None) -> None:
        test_loss, test_acc = evaluate(self.params, self.sizes, self.data.x_test, self.data.y_test, self.ws)
        p = self.partial
        m = {"epoch": epoch + 1, "train_loss": p["loss_sum"] / max(1, p["seen"]),
             "train_acc": p["correct"] / max(1, p["seen"]), "test_loss": test_loss, "test_acc": test_acc,
             "epoch_time_s": p["time_s"], **self.epoch_extras()}
        self.metrics.append(m)
        self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time_s": 0.0}
        if rundir is not None:
            rundir.log_epoch(m)
        self.echo(epoch_line(m, self.cfg.epochs))

    def summary(self, wall_s: float) -> dict:
        last = self.metrics[-1] if self.metrics else {}
        train_s = sum(m["epoch_time_s"] for m in self.metrics)
        comm_s = sum(m["comm_s"] for m in self.metrics)
        return {"mode": self.mode, "workers": self.cfg.workers, "transport": getattr(self, "transport", None),
                "dataset": self.data.name, "epochs": len(self.metrics), "batch_size": self.cfg.batch_size,
                "steps": self.step, "total_time_s": train_s, "wall_time_s": wall_s,
                "final_train_loss": last.get("train_loss"), "final_train_acc": last.get("train_acc"),
                "final_test_loss": last.get("test_loss"), "final_test_acc": last.get("test_acc"),
                "comm_share": comm_s / train_s if train_s > 0 else 0.0}


class _NullFile:
    """A progress bar sink for non-terminals (click would still print the label otherwise)."""

    def write(self, _):
        pass

    def flush(self):
        pass

    def isatty(self):
        return False


# -- the Pool baseline --------------------------------------------------------------------------
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
