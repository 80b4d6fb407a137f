"""A range server: server s >= 1 of `--servers S`, holding the parameters of its key ranges.

    parsgd server --servers 2 --bind tcp://127.0.0.1:5555 --workers 2 ...             # server 0, the coordinator
    parsgd server --servers 2 --rank 1 --connect tcp://127.0.0.1:5555 --bind tcp://127.0.0.1:5556

It registers with the coordinator (SHELLO; SWELCOME gives the config and the state of its ranges at
the coordinator's step), then serves workers on its own ROUTER socket: PULL (its parameters for a step:
under BSP once it has applied that step's predecessor; under ssp / async at once, with the version),
PUSH (a worker's part of one shard's gradient: kept, answered by ACK). It applies nothing by itself: the
coordinator's APPLY names whose parts count (its owner check), and the range adds them in shard order
(BSP) or applies that one batch (ssp / async), with the same momentum update as every trainer. So every
range applies in the coordinator's order, and a range's update is, element for element, the update of
one server holding the whole vector. FETCH returns its parameters (and velocity) at a step, for the
coordinator's evaluation, model and checkpoints. Spans go to the coordinator in LOGS.

Its state lives only here between checkpoints: when the coordinator is lost, it registers again (a
coordinator restarted with --resume gives it the checkpoint's state) and gives up after
--connect-timeout; the coordinator stops the run when it loses a range server.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, replace

import click
import numpy as np
import zmq

from parsgd import __version__
from parsgd.config import RunConfig, ServerOptions
from parsgd.model.keyranges import key_ranges
from parsgd.model.mlp import n_params
from parsgd.model.optim import all_finite, sgd_momentum_
from parsgd.ps import protocol as proto
from parsgd.ps.channel import SEND_TIMEOUT_S, recv_message, send_within
from parsgd.ps.commlog import WorkerSpans
from parsgd.ps.compression import WireCodec
from parsgd.ps.router import Router
from parsgd.ps.overlap import PartAssembler
from parsgd.ps.shm import Segments, host_identity
from parsgd.ps.sockets import configure_dealer, dealer_context
from parsgd.ps.stops import StopSignals, WorkerExit

HELLO_RETRY_S = 1.0
POLL_S = 0.05
LOGS_EVERY_S = 1.0


class RangeServerExit(WorkerExit):
    """The coordinator is gone for --connect-timeout, or refused this server (exit 1)."""


@dataclass(frozen=True)
class RangeOptions:
    """`parsgd server --servers S --rank s --connect COORD --bind ADDR`: how range server s reaches its
    coordinator and where workers reach it (times in seconds)."""
    rank: int
    connect: str
    bind: str = "tcp://127.0.0.1:*"
    keys_dir: str | None = None
    connect_timeout_s: float = 60.0
    shm: bool = True


class RangeServer:
    """Serves the key ranges of server `opts.rank`; `run()` returns 0 after STOP, raises RangeServerExit."""

    def __init__(self, opts: RangeOptions, echo=click.echo):
        self.opts, self.echo = opts, echo
        self.stops = StopSignals()
        self.log = WorkerSpans(LOGS_EVERY_S)
        # Workers' frames: at most a part of the vector (64-bit) plus a header; known once SWELCOME comes.
        self.router = Router(ServerOptions(bind=opts.bind, keys_dir=opts.keys_dir), max_frames=3,
                             max_bytes=proto.MAX_ELEMENTS * 8 + proto.HEADER_MAX)
        self.address = self.router.address
        self.ctx = dealer_context(opts.connect)
        self.coord = None
        self.attached: dict[int, tuple[bytes, object]] = {}     # session -> (identity, segment or None)
        self.parts: dict[tuple[int, int, int], np.ndarray] = {}  # (step, shard, session) -> its part
        self.pulls: list[tuple[bytes, proto.Pull]] = []          # BSP pulls for a step not reached yet
        self.fetches: list[proto.Fetch] = []
        self.params = self.velocity = None

    # -- registration with the coordinator ---------------------------------------------------------
    def _register(self) -> None:
        deadline = time.monotonic() + self.opts.connect_timeout_s
        self.session = random.SystemRandom().getrandbits(62) + 1
        self.log.settle()
        while True:
            self._new_coordinator_socket()
            hello = proto.ServerHello(__version__, proto.PROTOCOL_VERSION, host_identity(), os.getpid(),
                                      self.session, self.opts.rank, self.address)
            t_sent = self.log.now()
            if send_within(self.coord, hello.to_frames(), HELLO_RETRY_S) and self.stops.poll(self.coord, HELLO_RETRY_S):
                msg = recv_message(self.coord, proto.MAX_ELEMENTS * 16 + proto.HEADER_MAX, self.echo)
                if isinstance(msg, proto.ServerWelcome) and msg.session == self.session:
                    self.log.registered(t_sent, self.log.now(), msg.t_server, (msg.incarnation, self.opts.rank))
                    self._setup(msg)
                    return
                if isinstance(msg, proto.Error):
                    raise RangeServerExit(f"server 0 (the coordinator) refused server {self.opts.rank}: {msg.message}")
            if time.monotonic() >= deadline:
                raise RangeServerExit(f"server 0 (the coordinator) was lost: no answer at {self.opts.connect} within "
                                      f"{self.opts.connect_timeout_s:g} s; start it, or check --connect")

    def _new_coordinator_socket(self) -> None:
        if self.coord is not None:
            self.coord.close(linger=0)
        self.coord = self.ctx.socket(zmq.DEALER)
        configure_dealer(self.coord, proto.MAX_ELEMENTS * 16 + proto.HEADER_MAX, self.opts.keys_dir)
        self.coord.connect(self.opts.connect)

    def _setup(self, w: proto.ServerWelcome) -> None:
        cfg = RunConfig.from_dict(w.config)
        self.cfg, self.incarnation, self.hb_s, self.liveness = cfg, w.incarnation, w.heartbeat_s, w.liveness
        self.ranges = key_ranges(cfg.sizes, cfg.dtype, cfg.servers, cfg.shard_by)
        self.codec = WireCodec.for_run(cfg, self.ranges)  # --compress: PUSH payloads are encoded
        size = self.ranges.size(self.opts.rank)
        if w.state.size != 2 * size or n_params(cfg.sizes) != self.ranges.n:
            raise RangeServerExit(f"server 0 sent a state of {w.state.size} values for a range of {size}")
        self.params, self.velocity = w.state[:size].copy(), w.state[size:].copy()
        self.scratch, self.sum = np.empty_like(self.params), np.empty_like(self.params)
        self.version = w.step           # updates applied to this range
        self.segments = Segments(size, cfg.workers, self.params.dtype)
        for session in list(self.attached):
            self._forget(session)
        self.parts.clear()
        self.assembler = PartAssembler(size, self.params.dtype, cfg.workers)  # --overlap: PARTs ahead of a PUSH
        self.pulls.clear()
        self.last_heard = self.next_ping = time.monotonic()
        self.echo(f"server {self.opts.rank}: ranges {self.ranges.describe(self.opts.rank)} ({size} parameters) at step "
                  f"{self.version}, serving workers on {self.address}")

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        with self.stops.catching():
            try:
                self._register()
                while True:
                    outcome = self._serve()
                    if outcome == "stop":
                        return 0
                    self.echo(f"server {self.opts.rank}: {outcome}; registering again")
                    self._register()
            finally:
                self.close()

    def _serve(self) -> str:
        poller = zmq.Poller()
        poller.register(self.coord, zmq.POLLIN)
        poller.register(self.router.sock, zmq.POLLIN)
        while True:
            self.stops.check()
            ready = dict(poller.poll(int(POLL_S * 1000)))
            now = time.monotonic()
            if self.coord in ready:
                self.last_heard = now
                while self.coord.poll(0):
                    msg = recv_message(self.coord, proto.MAX_ELEMENTS * 16 + proto.HEADER_MAX, self.echo)
                    if msg is not None and self._from_coordinator(msg) == "stop":
                        return "stop"
            if self.router.sock in ready:
                while self.router.has_message():
                    self._from_worker()
            if now - self.last_heard > self.hb_s * self.liveness:
                return f"server 0 (the coordinator) silent for {now - self.last_heard:.1f} s"
            if now >= self.next_ping:
                self._to_coordinator(proto.Heartbeat(self.incarnation, self.session))
                self.next_ping = now + self.hb_s
            if self.log.due():
                self._ship_logs()

    def _to_coordinator(self, msg) -> None:
        send_within(self.coord, msg.to_frames(), SEND_TIMEOUT_S)

    def _reply(self, identity: bytes, msg, step: int = -1) -> None:
        t = self.log.now()
        try:
            nbytes = self.router.send(identity, msg)
        except zmq.ZMQError:
            return  # a worker gone: the coordinator finds out and says FORGET
        if step >= 0:
            self.log.add("send", step, t, nbytes)

    # -- the coordinator's messages ---------------------------------------------------------------
    def _from_coordinator(self, msg) -> str | None:
        if isinstance(msg, proto.Stop):
            self._ship_logs(final=True)
            self.echo(f"server {self.opts.rank}: stopped by server 0 ({msg.reason})")
            return "stop"
        if getattr(msg, "incarnation", self.incarnation) != self.incarnation:
            return None
        if isinstance(msg, proto.Apply):
            self._apply(msg)
        elif isinstance(msg, proto.Fetch):
            self.fetches.append(msg)
        elif isinstance(msg, proto.Forget):
            self._forget(msg.session)
        self._answer_waiting()
        return None

    def _apply(self, msg: proto.Apply) -> None:
        t = self.log.now()
        if self.cfg.consistency == "bsp":
            sources = [self.parts.get((msg.step, s, session)) for s, session in enumerate(msg.sessions) if session]
        else:
            sources = [self.parts.get((msg.step, 0, msg.sessions[0]))]
        if any(src is None for src in sources) or not sources:
            raise RangeServerExit(f"server {self.opts.rank}: APPLY of step {msg.step} names a part it never got")
        with np.errstate(over="ignore", invalid="ignore"):
            grad = sources[0]
            if len(sources) > 1:  # shard order, as the coordinator adds its own range (ps/scheduler.py reduce)
                np.add(sources[0], sources[1], out=self.sum)
                for src in sources[2:]:
                    self.sum += src
                grad = self.sum
        self.log.add("aggregate", msg.step, t)
        t = self.log.now()
        sgd_momentum_(self.params, self.velocity, grad, msg.lr, self.cfg.momentum, self.scratch)
        self.log.add("update", msg.step, t)
        self.version += 1
        done = msg.step if self.cfg.consistency == "bsp" else None
        self.parts = {k: v for k, v in self.parts.items()
                      if (k[0] > done if done is not None else k[0] != msg.step)}
        self.segments.close_retired()

    def _answer_waiting(self) -> None:
        """The pulls (BSP) and fetches that waited for the step this range has now reached."""
        waiting, self.pulls = self.pulls, []
        for identity, pull in waiting:
            self._pull(identity, pull)
        for fetch in [f for f in self.fetches if f.step <= self.version]:
            self.fetches.remove(fetch)
            if fetch.step == self.version:
                state = np.concatenate([self.params, self.velocity]) if fetch.velocity else self.params
                self._to_coordinator(proto.State(self.incarnation, self.session, self.version, fetch.velocity, state))

    # -- the workers' messages --------------------------------------------------------------------
    def _from_worker(self) -> None:
        t = self.log.now()
        try:
            frames = self.router.recv()
            identity, msg = frames[0].bytes, proto.decode(frames[1:])
        except proto.ProtocolError:
            return  # a stranger's junk: refused without a reply (the coordinator's port has the events)
        if getattr(msg, "incarnation", None) != self.incarnation:
            self.router.reply_error(identity, "STALE", "another incarnation of the servers: register again",
                                    msg.TYPE)
            return
        if isinstance(msg, proto.Attach):
            self._attach(identity, msg)
        elif msg.session not in self.attached:
            self.router.reply_error(identity, "STALE", "unknown session: attach first", msg.TYPE)
        elif isinstance(msg, proto.Pull):
            self.log.add("recv", msg.step, t, proto.frames_nbytes(frames[1:]))
            self._pull(identity, msg)
        elif isinstance(msg, proto.Push):
            self._push(identity, msg, frames, t)
        elif isinstance(msg, proto.Part) and self.cfg.overlap != "none":  # kept until the shard's PUSH
            self.log.add("recv", msg.step, t, proto.frames_nbytes(frames[1:]))
            why = self.assembler.add((msg.session, msg.step, msg.shard), msg.lo, msg.hi, msg.values)
            if why is not None:
                self.router.reply_error(identity, "BAD_MESSAGE", why, "PART")
        else:
            self.router.reply_error(identity, "BAD_MESSAGE", f"{msg.TYPE} is not for a range server", msg.TYPE)

    def _attach(self, identity: bytes, msg: proto.Attach) -> None:
        old = self.attached.get(msg.session)
        buf = old[1] if old else None
        if buf is None and self.opts.shm and msg.host == host_identity():
            try:
                buf = self.segments.create(msg.session)
            except OSError:
                buf = None
        self.attached[msg.session] = (identity, buf)
        self._reply(identity, proto.Attached(msg.session, self.opts.rank, buf.name if buf else ""))

    def _pull(self, identity: bytes, msg: proto.Pull) -> None:
        if self.cfg.consistency == "bsp" and msg.step > self.version:
            self.pulls.append((identity, msg))  # the coordinator's APPLY of the step before is on its way
            return
        if self.cfg.consistency == "bsp" and msg.step < self.version:
            self.router.reply_error(identity, "STALE", f"step {msg.step} is over (this range is at {self.version})",
                                    "PULL")
            return
        buf = self.attached[msg.session][1]
        t = self.log.now()
        if buf is not None:
            buf.unlink()  # the worker mapped it before its first PULL: the name is no longer needed
            self.segments.load(buf, self.version, self.params)
            self.log.add("serialize", msg.step, t, self.params.nbytes)
        self._reply(identity, proto.Params(msg.session, msg.step, self.version, self.log.now(),
                                           None if buf is not None else self.params.copy()), msg.step)

    def _push(self, identity: bytes, msg: proto.Push, frames, t: float) -> None:
        self.log.add("recv", msg.step, t, proto.frames_nbytes(frames[1:]))
        buf = self.attached[msg.session][1]
        if self.codec is not None and msg.grad is not None:
            try:
                msg = replace(msg, grad=self.codec.decoded("PUSH", msg.grad, msg.step, msg.shard, self.opts.rank))
            except proto.ProtocolError as exc:
                self.router.reply_error(identity, "BAD_MESSAGE", str(exc), "PUSH")
                return
        src = msg.grad if msg.grad is not None else (buf.slots[msg.shard] if buf is not None and
                                                     msg.shard < self.cfg.workers else None)
        if msg.grad is None and self.cfg.overlap != "none":  # its PARTs came first (ps/overlap.py)
            src = self.assembler.take((msg.session, msg.step, msg.shard))
        if src is None or src.size != self.params.size or src.dtype != self.params.dtype:
            self.router.reply_error(identity, "BAD_MESSAGE", f"PUSH of {getattr(src, 'size', 0)} values for a range "
                                    f"of {self.params.size}", "PUSH")
            return
        finite = all_finite(src)
        if finite:
            self.parts[(msg.step, msg.shard, msg.session)] = src.copy()  # the worker may reuse its buffer
        self.log.add("deserialize", msg.step, t)
        self._reply(identity, proto.Ack(msg.session, msg.step, msg.shard, finite), msg.step)

    def _forget(self, session: int) -> None:
        _, buf = self.attached.pop(session, (None, None))
        if buf is not None:
            self.segments.release(buf)
        self.parts = {k: v for k, v in self.parts.items() if k[2] != session}
        if getattr(self, "assembler", None) is not None:
            self.assembler.discard(session)  # --overlap: a gone worker's parts never enter an APPLY

    # -- logs and closing -------------------------------------------------------------------------
    def _ship_logs(self, final: bool = False) -> None:
        rows = max(1, (proto.MAX_ELEMENTS // 8) // proto.SPAN_COLUMNS)
        for chunk in self.log.unshipped(rows):
            self._to_coordinator(proto.Logs(self.incarnation, self.session, self.opts.rank, chunk))
            self.log.shipped_one(chunk)
        if final:
            self._to_coordinator(proto.Logs(self.incarnation, self.session, self.opts.rank,
                                            np.zeros((0, proto.SPAN_COLUMNS))))

    def close(self) -> None:
        for session in list(self.attached):
            self._forget(session)
        if self.params is not None:
            self.segments.close_retired()
        if self.coord is not None:
            self.coord.close(linger=1000)
        self.router.close()
        self.ctx.term()
