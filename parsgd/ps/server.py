"""The BSP parameter server: each batch cut into --workers shards, one synchronous update per step.

    parsgd server --bind tcp://127.0.0.1:5555 --workers 2 --dataset synthetic --num-samples 4096
    parsgd worker --connect tcp://127.0.0.1:5555        # twice, in other terminals

Every step's shards go to live workers (several each if some are gone); when all are in, the server
adds them in shard order (`Scheduler.reduce`) and applies one momentum-SGD update, so the model
equals the sequential trainer's whatever happened to the workers. The event loop is `loop.ServerLoop`.
"""
from __future__ import annotations

import numpy as np

from parsgd.ps import protocol as proto
from parsgd.ps.handlers import on_non_finite
from parsgd.ps.loop import POLL_MAX_S, ServerLoop
from parsgd.ps.overlap import PartAssembler, pull_plan
from parsgd.ps.scheduler import Scheduler


class ParameterServer(ServerLoop):
    """BSP: the Trainer loop calls `batch_gradient` once per step; see ServerLoop for the rest."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.scheduler = Scheduler(self.n_shards)
        self.sum_buf = self.grad  # where shard gradients (this server's part) are summed; self.grad: the step's sum
        cfg, own = self.cfg, self.shard_grads.shape[1]
        # --overlap: the gradient parts ahead of each GRAD; with one server, the parameters go out in parts
        self.parts = PartAssembler(own, self.params.dtype, self.n_shards) if cfg.overlap != "none" else None
        if self.parts is not None and self.opts.shm:
            self.echo(f"--overlap {cfg.overlap}: the parts travel through the socket; shared memory is not offered")
        self.pulls = (pull_plan(cfg.sizes, cfg.overlap, cfg.bucket_bytes, self.params.itemsize)
                      if cfg.servers == 1 else [])
        self.ef: dict[int, list[int]] = {}  # --compress with error feedback: shard -> [session, ef_seq] accepted

    def batch_gradient(self, epoch, step, order, lo, hi):
        self.scheduler.begin(step, epoch, lo, hi)
        live = self.members.live()
        for member in live:  # every copy first, so the TASKs then leave back to back
            if member.buf is not None:
                self._load_params(member, step)
        if any(m.buf is None for m in live) or self.rangeset is not None:
            t = self.log.now()
            np.copyto(self.send_buf, self.own_params())
            self.log.add("serialize", step, t, self.send_buf.nbytes)
        for s in self.scheduler.todo():
            self.assign(s)
        while True:
            while not self.scheduler.finished():
                self._poll_once(POLL_MAX_S, wait_step=step)  # a `wait` span per poll
            t = self.log.now()
            self.grad = self.scheduler.reduce(self.sum_buf)  # sum_buf, or the only shard's own slot
            self.log.add("aggregate", step, t)
            if self.grad is not None:
                break
            for s, owner in self.scheduler.reject_non_finite(lambda s, owner: on_non_finite(self, s, owner)):
                self.assign(s, avoid=owner)
        loss_sum, correct, slowest = self.scheduler.totals()
        self._step_compute += slowest
        st = self.scheduler.cur  # whose part of each shard the range servers add (0: an empty shard)
        self.step_sessions = [o if st.src[s] is not None and o is not None else 0 for s, o in enumerate(st.owner)]
        self.scheduler.end()
        return loss_sum, correct

    def update(self):
        super().update()
        self.grad = self.sum_buf
        self.segments.close_retired()  # after the update: self.grad may have been a retired slot
        spe = self.steps_per_epoch  # every shard of the step is in: nothing stale, one update per batch
        ef = {"ef": [self.ef.get(s) for s in range(self.n_shards)]} if self.ef else {}  # replay's residuals
        self.updates.write({"update": self.step, "epoch": self.step // spe, "batch": self.step % spe, "rank": None,
                            "version": self.step, "staleness": 0, **ef, "t": round(self.log.now(), 6)})
        self.ef = {}

    def gradient_in(self, s: int, src: np.ndarray, msg: proto.Grad) -> None:
        """Shard s of the step is in; the step ends when every shard is (see batch_gradient)."""
        self.scheduler.complete(s, src, msg.loss_sum, msg.correct, msg.compute_s, msg.finite)
        if msg.ef_seq >= 0:  # the last accepted copy of the shard counts (a non-finite one is given again)
            self.ef[s] = [msg.session, msg.ef_seq]

    def assign(self, s: int, avoid: int | None = None) -> None:
        """Give shard s of the current step to a live worker (see Scheduler.assign) and send its TASK."""
        st = self.scheduler.cur
        live = self.members.live()
        # A worker still computing an earlier step's shard would hold this one back as well.
        member = self.scheduler.assign(s, [m for m in live if not m.stuck_before(st.step)] or live, avoid)
        if member is None:
            return
        lo, hi = st.shards[s]
        if member.buf is not None:
            self._load_params(member, st.step)  # a no-op unless it joined during this step
            payload = None
        else:  # with S servers every part is pulled, this server's too, so no TASK waits behind another's
            payload = self.send_buf if self.rangeset is None and not self.pulls else None
        task = proto.Task(self.incarnation, member.session, st.step, st.epoch, s, lo, hi, st.batch,
                          self.log.now(), payload)
        if self.send(member, task, st.step):
            self.members.sent_task(member, st.step, s)
            if member.buf is None:  # --overlap, one server: first layer first, the next forward starts with it
                for a, b in self.pulls:
                    self.send(member, proto.Part(self.incarnation, member.session, st.step, s, a, b,
                                                 self.send_buf[a:b]), st.step)

