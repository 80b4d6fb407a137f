"""The stale-synchronous (SSP) and asynchronous (ASP) parameter server: whole mini-batches of the
global epoch order go to idle workers, and each gradient is applied the moment it arrives.

    parsgd launch --workers 3 --consistency async --dataset synthetic --num-samples 8192 --epochs 2
    parsgd launch --workers 3 --consistency ssp --staleness 1 --faults slow=worker1:3
    parsgd replay RUN_DIR          # recompute the run from updates.jsonl, compare with model.npz

Which batch goes to whom, clocks and staleness are `batches.BatchScheduler`'s; the event loop,
membership and faults are `loop.ServerLoop`'s, as for BSP. Every applied update is a line of
updates.jsonl: (update, epoch, batch, rank, version pulled, staleness[, clock, min_live_clock], t),
which makes the run replayable in one process to the bit (jobs/replay.py).
"""
from __future__ import annotations

import math
import time

import numpy as np

from parsgd.data import epoch_order
from parsgd.model.optim import all_finite, sgd_momentum_
from parsgd.ps import protocol as proto
from parsgd.ps.batches import BatchScheduler
from parsgd.ps.handlers import on_non_finite
from parsgd.ps.loop import POLL_MAX_S, ServerLoop
from parsgd.ps.membership import Member
from parsgd.ps.scheduler import NonFiniteGradient


def staleness_lr(lr: float, staleness: int, rule: str) -> float:
    """The learning rate of an update of this staleness: lr, or lr / (staleness + 1) for `inverse`
    (Zhang, Gupta, Lian and Liu, "Staleness-aware async-SGD for distributed deep learning", IJCAI 2016)."""
    return lr / (staleness + 1) if rule == "inverse" else lr


class AsyncServer(ServerLoop):
    """SSP (`cfg.consistency == "ssp"`, bound `cfg.staleness`) or ASP (`"async"`). Checkpoints are
    taken at epoch ends only (an epoch is a barrier, so a checkpoint holds no batch in flight)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.scheduler = BatchScheduler(self.cfg.staleness if self.cfg.consistency == "ssp" else None)

    def train_epochs(self, rundir) -> None:
        cfg, n, B, spe = self.cfg, self.n_train, self.cfg.batch_size, self.steps_per_epoch
        self.scheduler.version = self.step
        for epoch in range(self.step // spe, cfg.epochs):
            self.order = epoch_order(n, cfg.seed, epoch)
            self.scheduler.begin(epoch, epoch * spe, [(b * B, min(n, (b + 1) * B)) for b in range(spe)])
            self._last_update = time.perf_counter()  # an update's step time: since the one before
            self.dispatch()
            while not self.scheduler.finished():
                self._poll_once(POLL_MAX_S)
            self.scheduler.end()
            self._end_epoch(epoch, rundir)
            self.after_epoch()

    def checkpoint(self) -> None:
        """Only at an epoch's end: mid-epoch (a signal, an error) batches are in flight and the epoch
        cannot be resumed part-way, so the last epoch-end checkpoint stays the one to resume from."""
        if self.step % self.steps_per_epoch == 0:
            super().checkpoint()

    def dispatch(self) -> None:
        """Give the next batch to every idle live worker that SSP lets start."""
        live = self.members.live()
        sessions = [m.session for m in live]
        for member in live:
            b = self.scheduler.give(member.session, sessions)
            if b is not None:
                self._send_batch(member, b)

    def assign(self, b: int, avoid: int | None = None) -> None:
        """Batch b is owed again (its worker died, timed out, or it has none yet): hand it out."""
        if self.scheduler.cur.owner[b] is not None:
            self.scheduler.reopen(b)
        self.dispatch()

    def _send_batch(self, member: Member, b: int) -> None:
        st = self.scheduler.cur
        lo, hi = st.rows[b]
        if member.buf is not None:
            self._load_params(member, self.step)  # keyed by version: a copy whenever it changed
            payload = None
        elif self.rangeset is not None:
            payload = None  # with S servers the worker pulls every part, this server's too (handlers.on_pull)
        else:  # a buffer of its own: ZeroMQ sends it later (and inproc hands it over as it is), while
            t = self.log.now()  # the next update would already rewrite a shared one
            payload = self.own_params().copy()
            self.log.add("serialize", self.step, t, payload.nbytes)
        task = proto.Task(self.incarnation, member.session, st.step + b, st.epoch, 0, lo, hi, hi - lo,
                          self.log.now(), payload)
        if self.send(member, task, st.step + b):
            self.members.sent_task(member, st.step + b, 0)

    def gradient_in(self, b: int, src: np.ndarray, msg: proto.Grad) -> None:
        """Batch b's mean gradient is in: apply it now with the momentum update, log it, hand out more."""
        st, session = self.scheduler.cur, self.scheduler.cur.owner[b]
        if not (msg.finite and all_finite(src) and math.isfinite(msg.loss_sum)):
            on_non_finite(self, b, session)
            if not self.scheduler.reject(b):
                raise NonFiniteGradient(f"batch {b} of epoch {st.epoch + 1} gave a non-finite gradient (NaN or "
                                        "Inf) twice: the model diverged or a worker is broken; try a lower --lr")
            self.dispatch()
            return
        live = [m.session for m in self.members.live()]
        record = self.scheduler.applied(b, live)
        if self.rangeset is not None:  # each range was pulled at its own version: the stalest sets the lr
            # of servers 0..S-1 when it was computed (server 0's from its PULL when the worker pulled it so)
            versions = list(msg.versions) if len(msg.versions) == self.cfg.servers else [record["version"], *msg.versions]
            record.update(versions=versions, staleness=record["update"] - min(versions),
                          staleness_by_server=[record["update"] - v for v in versions])
        t = self.log.now()
        lr = staleness_lr(self.cfg.lr, record["staleness"], self.cfg.lr_staleness)
        if self.rangeset is None:
            sgd_momentum_(self.params, self.velocity, src, lr, self.cfg.momentum, self.scratch)  # no copy
        else:  # this server's ranges here, the others' on their servers, all in this order
            self.apply_own(src, lr)
            self.rangeset.apply(st.step + b, [session], lr)
        self.log.add("update", self.step, t)
        lo, hi = st.rows[b]
        self.count_batch(msg.loss_sum, msg.correct, hi - lo)
        now = time.perf_counter()
        self.count_step_time(now - self._last_update)  # the epoch's time and the timed window
        self._last_update = now
        self._step_compute += msg.compute_s / max(1, len(live))  # the workers compute side by side
        member = self.members.get(session)
        ef = {"ef": [session, msg.ef_seq]} if msg.ef_seq >= 0 else {}  # whose residual (parsgd replay)
        self.updates.write({**record, "rank": member.rank if member else None, **ef, "t": round(t, 6)})
        self.segments.close_retired()  # a dead worker's segment: src, if it was one, is no longer read
        self.dispatch()
