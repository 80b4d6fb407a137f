"""The training loop and the sequential trainer.

    parsgd train --dataset synthetic --num-samples 4096 --epochs 2            # sequential

`Trainer.run` owns the epoch loop (data order, updates, evaluation, metrics, console lines);
subclasses only say how one batch's mean gradient is computed. The parameter server subclasses
it too, so all three modes share one loop and one update function, and one way of timing: the
first WARMUP_STEPS steps a trainer runs are warm-up, and every later step is in the timed window
(metrics.jsonl `timed_steps` / `timed_s`) that `parsgd experiment` compares.
"""
from __future__ import annotations

import math
import sys
import time

import click
import numpy as np

from parsgd.config import RunConfig
from parsgd.data import Dataset, epoch_order
from parsgd.model.mlp import Workspace, evaluate, init_params, loss_and_grad
from parsgd.model.optim import all_finite, sgd_momentum_
from parsgd.errors import UserError
from parsgd.files import write_file
from parsgd.training.divergence import chance_accuracy, judge
from parsgd.training.progress import Progress, fmt  # noqa: F401 (fmt: re-exported)
from parsgd.training.rundir import RunDir, npz_bytes

# Steps at the start of every run left out of its timed window (`timed_s`): measured on 2 cores, the
# first step of every mode takes 3-12x a later one, the Pool's next two ~3x, and the parameter
# server over tcp settles within ~5 (BLAS threads, processes starting to work, first page faults,
# shared-memory segments); 10 leaves a margin.
WARMUP_STEPS = 10
# check.npz holds the update (parameters minus the initial ones, float64) after this many steps:
# `parsgd experiment` compares it with the sequential run's (the same-model check). After 3 steps a
# wrong gradient scale, a lost shard, a double update, stale parameters or lost momentum all show,
# and float32 rounding is still ~1e-6 of the update (it grows chaotically only after ~100 steps).
CHECK_STEPS = 3
CHECK_FILE = "check.npz"


def shard_bounds(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """Split [lo, hi) into `parts` contiguous ranges whose sizes differ by at most one."""
    base, extra = divmod(hi - lo, parts)
    bounds, start = [], lo
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class Diverged(UserError):
    """The loss or gradient became NaN or Inf: training stops (exit 1); the last finite model is kept."""


def epoch_line(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch']:>3}/{epochs}  loss {fmt(m['train_loss'])}  train acc {fmt(m['train_acc'])}"
            f"  test acc {fmt(m['test_acc'])}  {m['epoch_time_s']:.2f} s")


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
        self.partial = _new_partial()
        self.steps_run = 0  # steps this process has run (a resumed run warms up again)
        self.check: dict | None = None  # check.npz's arrays, once CHECK_STEPS steps are done
        self.initial_loss: float | None = None  # mean loss of the run's first step (kept in checkpoints)
        labels = data.y_test if len(data.y_test) else data.y_train
        self.chance_acc = chance_accuracy(labels, self.sizes[-1])
        self.meter = Progress(cfg.epochs * self.steps_per_epoch, echo, enabled=not self.progress)
        self._rows = None

    # -- what subclasses change ------------------------------------------------------------
    def batch_gradient(self, epoch: int, step: int, order: np.ndarray, lo: int, hi: int):
        """Write the mean gradient over rows order[lo:hi] into self.grad; return (loss_sum, correct)."""
        idx = order[lo:hi]
        rows = self._gather(idx)
        return loss_and_grad(self.params, self.sizes, rows, self.data.y_train[idx], self.grad, self.ws)

    def check_finite(self, loss_sum: float) -> None:
        """Raise Diverged if this step's loss or gradient has a NaN or Inf (before it is applied).

        One read-only pass over the gradient (optim.all_finite).
        """
        if not (math.isfinite(loss_sum) and all_finite(self.grad)):
            raise Diverged(f"the loss or gradient of step {self.step} (epoch {self.step // self.steps_per_epoch + 1}) "
                           "is not finite (NaN or Inf): the model diverged; try a lower --lr")

    def update(self) -> None:
        sgd_momentum_(self.params, self.velocity, self.grad, self.cfg.lr, self.cfg.momentum, self.scratch)

    def sync_params(self, velocity: bool = False) -> None:
        """Make self.params (and self.velocity) whole before they are read: a no-op here; a coordinator
        of several parameter servers fetches the others' ranges (ps/rangeset.py)."""

    def after_step(self) -> None:
        """Called after every update (the parameter server checkpoints here)."""

    def after_epoch(self) -> None:
        """Called after each epoch's metrics are written (the parameter server checkpoints here)."""

    def epoch_extras(self) -> dict:
        """Per-epoch communication figures; zero for a trainer that communicates nothing."""
        return {"compute_s": self.partial["time_s"], "comm_s": 0.0, "bytes_sent": 0, "bytes_recv": 0}

    def close(self) -> None:
        """Release workers and other resources."""

    def count_step_time(self, step_s: float) -> None:
        """Add one step's seconds to the epoch's time and, past the first WARMUP_STEPS steps this
        process ran, to its timed window (metrics `timed_s`, `timed_steps`); a progress line now and
        then (training/progress.py)."""
        p = self.partial
        p["time_s"] += step_s
        self.steps_run += 1
        self.meter.step(self.step, self.step // self.steps_per_epoch + (self.step % self.steps_per_epoch > 0),
                        self.cfg.epochs)
        if self.steps_run > WARMUP_STEPS:
            p["timed_s"] = p.get("timed_s", 0.0) + step_s  # a checkpoint of an older version lacks it
            p["timed_steps"] = p.get("timed_steps", 0) + 1

    def count_batch(self, loss_sum: float, correct: int, rows: int) -> None:
        """An update was applied: the step advances; its batch's loss and correct answers go into the
        epoch's running sums, and the first step's mean loss is kept (the divergence judgement)."""
        if self.step == 0:
            self.initial_loss = loss_sum / max(1, rows)
        self.step += 1
        p = self.partial
        p["loss_sum"] += loss_sum
        p["correct"] += correct
        p["seen"] += rows

    # -- the loop ----------------------------------------------------------------------------
    def _gather(self, idx: np.ndarray) -> np.ndarray:
        if self._rows is None or self._rows.shape[0] < idx.size:
            self._rows = np.empty((max(idx.size, self.cfg.batch_size), self.data.x_train.shape[1]),
                                  self.data.x_train.dtype)
        rows = self._rows[:idx.size]
        np.take(self.data.x_train, idx, axis=0, out=rows)
        return rows

    def run(self, rundir: RunDir | None = None) -> dict:
        wall0 = time.perf_counter()
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by check_finite
                self.train_epochs(rundir)
        except Diverged as exc:
            if rundir is None:
                raise
            rundir.write_model(self.params, self.sizes)  # the update that diverged was not applied
            raise Diverged(f"{exc} (the last finite model is in {rundir.path / 'model.npz'})") from None
        summary = self.finish(rundir, time.perf_counter() - wall0)
        if rundir is not None and self.check is not None:
            write_file(rundir.path / CHECK_FILE, npz_bytes(self.check))
        return summary

    def train_epochs(self, rundir: RunDir | None) -> None:
        """The epochs from the current step on: batches in epoch order, one update each, then the
        epoch's metrics. Servers that apply batches as they arrive (ps/async_server.py) override it."""
        cfg, n, B = self.cfg, self.n_train, self.cfg.batch_size
        start = self.params.astype(np.float64) if self.step == 0 and rundir is not None else None
        check_at = min(CHECK_STEPS, cfg.epochs * self.steps_per_epoch)
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
                    self.check_finite(loss_sum)
                    self.update()
                    self.count_batch(loss_sum, correct, hi - lo)
                    self.count_step_time(time.perf_counter() - t0)
                    if start is not None and self.step == check_at:  # written at the end, after the model
                        self.sync_params()
                        self.check = {"update": self.params - start, "steps": np.array([self.step])}
                        start = None
                    self.after_step()
            self._end_epoch(epoch, rundir)
            self.after_epoch()

    def finish(self, rundir: RunDir | None, wall_s: float) -> dict:
        """Write the model and summary.json; returns the summary."""
        summary = self.summary(wall_s)
        if rundir is not None:
            summary["setup"] = rundir.setup  # what shaped the run, beside its figures
            rundir.write_model(self.params, self.sizes)
            rundir.write_json("summary.json", summary)
        return summary

    def _end_epoch(self, epoch: int, rundir: RunDir | None) -> None:
        test_loss = test_acc = None  # an empty test split is not measured: null in metrics.jsonl, n/a on screen
        self.sync_params()
        if len(self.data.y_test):
            test_loss, test_acc = evaluate(self.params, self.sizes, self.data.x_test, self.data.y_test, self.ws)
        p = self.partial
        m = {"epoch": epoch + 1, "train_loss": p["loss_sum"] / max(1, p["seen"]),
             "train_acc": p["correct"] / max(1, p["seen"]), "test_loss": test_loss, "test_acc": test_acc,
             "epoch_time_s": p["time_s"], "timed_steps": p.get("timed_steps", 0),
             "timed_s": p.get("timed_s", 0.0), **self.epoch_extras()}
        self.metrics.append(m)
        self.partial = _new_partial()
        if rundir is not None:
            rundir.log_epoch(m)
        self.echo(epoch_line(m, self.cfg.epochs))

    def summary(self, wall_s: float) -> dict:
        last = self.metrics[-1] if self.metrics else {}
        train_s = sum(m["epoch_time_s"] for m in self.metrics)
        comm_s = sum(m["comm_s"] for m in self.metrics)
        timed_steps = sum(m.get("timed_steps", 0) for m in self.metrics)
        return {"mode": self.mode, "workers": self.cfg.workers, "transport": getattr(self, "transport", None),
                "dataset": self.data.name, "epochs": len(self.metrics), "batch_size": self.cfg.batch_size,
                "steps": self.step, "total_time_s": train_s, "wall_time_s": wall_s,
                "warmup_steps": self.step - timed_steps, "timed_steps": timed_steps,
                "timed_s": sum(m.get("timed_s", 0.0) for m in self.metrics),
                "final_train_loss": last.get("train_loss"), "final_train_acc": last.get("train_acc"),
                "final_test_loss": last.get("test_loss"), "final_test_acc": last.get("test_acc"),
                "comm_share": comm_s / train_s if train_s > 0 else 0.0, **self.divergence()}

    def divergence(self) -> dict:
        """summary.json's `diverged` (bool, None when not judged), `diverged_why`, `initial_loss` and
        `chance_acc` (training/divergence.py)."""
        diverged, why = judge(self.metrics, self.initial_loss, self.chance_acc, self.step)
        return {"diverged": diverged, "diverged_why": why, "initial_loss": self.initial_loss,
                "chance_acc": self.chance_acc}


def _new_partial() -> dict:
    """The running sums of an epoch: loss, correct, rows, step time and its part in the timed window."""
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "time_s": 0.0, "timed_s": 0.0, "timed_steps": 0}


class _NullFile:
    """A progress bar sink for non-terminals (click would still print the label otherwise)."""

    def write(self, _):
        pass

    def flush(self):
        pass

    def isatty(self):
        return False
