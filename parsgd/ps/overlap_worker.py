"""A worker's side of --overlap layer | bucket (the scheme: ps/overlap.py): it computes a shard while its
gradient leaves in PARTs, and, with one server, while the step's parameters arrive in PARTs.

    parsgd launch --workers 2 --overlap layer --dataset synthetic --num-samples 4096

Pushes: each range of overlap.push_plan, cut at the servers' key ranges (overlap.pieces), goes to its
owner the moment backprop has finished it: server 0's pieces on the worker's main socket (ahead of the
GRAD, so in order), a range server's on its link (ahead of the PUSH that ends the shard there).
Pulls (one server, no shared memory): the TASK comes without parameters and PARTs follow, first layer
first; the forward pass waits before layer i only for the parts up to layer i (mlp.forward's
before_layer). With S servers the parameters are pulled whole, as without --overlap.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from parsgd.model.mlp import layer_bounds
from parsgd.ps import protocol as proto
from parsgd.ps.channel import recv_frames_within, send_within
from parsgd.ps.overlap import backward_pushing, pieces, pull_plan, push_plan

KILLPART_WAIT_S = 0.2         # killpart fault: time for the first PART to arrive before the SIGKILL


class PartsLost(Exception):
    """The PARTs of a TASK's parameters did not come (a dropped TASK's, or a server gone): the shard is
    abandoned; the server reassigns it after --step-timeout, or the worker registers again."""


class WorkerOverlap:
    """The overlap state of one worker session `w` (ps/worker.Worker, after its _setup)."""

    def __init__(self, w):
        self.w = w
        cfg, item = w.cfg, np.dtype(w.cfg.dtype).itemsize
        self.plan = push_plan(cfg.sizes, cfg.overlap, cfg.bucket_bytes, item)
        self.pulls = pull_plan(cfg.sizes, cfg.overlap, cfg.bucket_bytes, item)
        self.bounds = layer_bounds(cfg.sizes)
        self.params = np.zeros(w.kr.n, cfg.dtype) if w.links is None else None
        self.killpart = "killpart" in {kind for kind, _ in w.faults.at.values()}

    def compute(self, task: proto.Task, params, rows, y, grad, scale: float):
        """Backprop of the shard into `grad` ((n,), the whole gradient), its parts sent as they are done;
        `params` None: they arrive in PARTs. Returns (loss_sum, correct); raises PartsLost."""
        before = None
        if params is None:
            params, before = self.params, self._receiver(task)
        send = self._sender(task, grad)
        return backward_pushing(self.plan, params, self.w.sizes, rows, y, grad, self.w.ws, scale, send, before)

    # -- pulls -----------------------------------------------------------------------------------------
    def _receiver(self, task: proto.Task):
        """before_layer(i): take PARTs (in pull order) until layer i's parameters are all in."""
        w, todo = self.w, list(self.pulls)

        def before_layer(i: int) -> None:
            need = self.bounds[i][1]
            while todo and todo[0][0] < need:
                lo, hi = todo.pop(0)
                t = w.log.now()
                msg, nbytes = self._next_part(task, lo, hi)
                self.params[lo:hi] = msg.values
                w.log.add("recv", task.step, t, nbytes, server=0)
        return before_layer

    def _next_part(self, task: proto.Task, lo: int, hi: int):
        w = self.w
        deadline = time.monotonic() + w.hb_s * w.liveness
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not w.stops.poll(w.sock, left):
                raise PartsLost(f"no PART [{lo}, {hi}) of step {task.step} within {w.hb_s * w.liveness:g} s")
            frames = recv_frames_within(w.sock, w.max_msg_bytes, w.echo)
            try:
                msg = None if frames is None else proto.decode(frames)
            except proto.ProtocolError:
                msg = None
            if isinstance(msg, proto.Heartbeat):
                continue
            if (isinstance(msg, proto.Part) and msg.session == task.session and msg.step == task.step
                    and msg.shard == task.shard and (msg.lo, msg.hi) == (lo, hi)):
                return msg, proto.frames_nbytes(frames)
            raise PartsLost(f"expected PART [{lo}, {hi}) of step {task.step}, got {getattr(msg, 'TYPE', 'junk')}")

    # -- pushes ----------------------------------------------------------------------------------------
    def _sender(self, task: proto.Task, grad: np.ndarray):
        w, sent = self.w, [0]
        copy = w.links is not None  # grad is the worker's one full_grad, rewritten by its next shard

        def send_part(lo: int, hi: int) -> None:
            if lo == 0:
                w.faults.corrupt(task.step, w.rank, grad)  # nan@ / inf@ write element 0: the last part
            for s, own_lo, own_hi, flat_lo in pieces(w.kr, lo, hi):
                values = grad[flat_lo:flat_lo + own_hi - own_lo]
                part = proto.Part(w.incarnation, w.session, task.step, task.shard, own_lo, own_hi,
                                  values.copy() if copy else values)
                frames = part.to_frames()
                t = w.log.now()
                sock = w.sock if s == 0 else w.links.socks[s]
                send_within(sock, frames, w.hb_s * w.liveness)  # unsent if that server is gone: the GRAD notices
                w.log.add("send", task.step, t, proto.frames_nbytes(frames), server=s)
            sent[0] += 1
            if self.killpart and sent[0] == 1 and w.faults._due(task.step, ("killpart",)):
                time.sleep(KILLPART_WAIT_S)  # some parts sent, the others never: the step must not use them
                os.kill(os.getpid(), signal.SIGKILL)
        return send_part
