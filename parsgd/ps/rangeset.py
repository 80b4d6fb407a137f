"""The coordinator's range servers (`--servers S`): who they are, whether they live, what they apply and
what they hold (ps/range_server.py is the other side).

    parsgd launch --workers 4 --servers 2 --dataset synthetic --num-samples 8192 --epochs 2

Server 0 coordinates (config, data order, scheduling, metrics, evaluation, checkpoints) and owns the
key range of server 0; servers 1..S-1 register here before any worker is welcomed (a worker's WELCOME
lists their addresses). Once the coordinator accepts a step (BSP: every shard; ssp / async: one batch)
it sends every range server APPLY with whose parts count, so every range applies in the coordinator's
order. Evaluation, model.npz, check.npz and checkpoints FETCH the ranges first: a checkpoint holds
every range at one step, in one file, so the set is atomic. A range server that goes silent, or
registers again mid-run (its state is gone), stops the run: its range cannot be rebuilt but from the
last checkpoint (`--resume` restarts the whole set there).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from parsgd import __version__
from parsgd.ps import protocol as proto
from parsgd.model.optim import sgd_momentum_
from parsgd.ps.scheduler import ServerExit

FETCH_TIMEOUT_S = 60.0     # how long the ranges may take to send their state (a slow link: M bytes)
STATUS_EVERY_S = 5.0


@dataclass
class RangeMember:
    rank: int
    identity: bytes
    session: int
    address: str
    host: str
    pid: int
    last_heard: float


class RangeSet:
    """Range servers 1..S-1 of the coordinator `srv` (a ps.loop.ServerLoop)."""

    def __init__(self, srv):
        self.srv = srv
        self.kr = srv.key_ranges
        self.members: dict[int, RangeMember] = {}
        self.started = False          # training began: a range server registering again has lost its state
        self.states: dict[int, proto.State] = {}
        self.lost: str | None = None
        self.left: set[int] = set()   # ranks whose last LOGS came after STOP

    def complete(self) -> bool:
        return len(self.members) == self.kr.servers - 1

    def addresses(self) -> list[str]:
        return [self.members[r].address for r in range(1, self.kr.servers)]

    def name(self, rank: int) -> str:
        return f"server {rank} (ranges {self.kr.describe(rank)})"

    def of_identity(self, identity: bytes) -> RangeMember | None:
        return next((m for m in self.members.values() if m.identity == identity), None)

    # -- messages from range servers --------------------------------------------------------------
    def on_hello(self, identity: bytes, msg: proto.ServerHello) -> None:
        srv = self.srv
        if msg.package_version != __version__ or not 1 <= msg.rank < self.kr.servers:
            why = (f"server 0 runs parsgd {__version__}, server {msg.rank} runs {msg.package_version}"
                   if msg.package_version != __version__ else
                   f"--rank {msg.rank} is not one of this run's range servers 1..{self.kr.servers - 1}")
            srv.events.limited("refused", reason="range_server", detail=why)
            srv.router.reply_error(identity, "VERSION" if "runs parsgd" in why else "BAD_MESSAGE", why, "SHELLO")
            return
        old = self.members.get(msg.rank)
        if old is not None and old.session != msg.session and self.started:
            self._lose(msg.rank, "it registered again: its state is gone")
        now = time.monotonic()
        self.members[msg.rank] = RangeMember(msg.rank, identity, msg.session, msg.address, msg.host, msg.pid, now)
        state = np.concatenate([self.kr.gather(srv.params, msg.rank), self.kr.gather(srv.velocity, msg.rank)])
        srv.router.send(identity, proto.ServerWelcome(srv.incarnation, msg.session, srv.cfg.to_dict(), srv.step,
                                                      srv.log.now(), srv.opts.heartbeat_s, srv.opts.liveness, state))
        if old is None or old.session != msg.session:
            srv.events("server_join", rank=msg.rank, session=msg.session, host=msg.host, pid=msg.pid,
                       address=msg.address, ranges=self.kr.to_list()[msg.rank])
            srv.echo(f"{self.name(msg.rank)} joined from {msg.host} pid {msg.pid}, serving workers on {msg.address}")

    def handle(self, identity: bytes, msg, frames, t: float) -> bool:
        """Take a message if it comes from a range server (True); False leaves it to the worker handlers."""
        if isinstance(msg, proto.ServerHello):
            self.on_hello(identity, msg)
            return True
        member = self.of_identity(identity)
        if member is None or getattr(msg, "session", member.session) != member.session:
            return False
        member.last_heard = time.monotonic()
        if isinstance(msg, proto.State):
            self.states[member.rank] = msg
        elif isinstance(msg, proto.Logs) and len(msg.spans):
            self.srv.comm.range_server(member.rank, msg.spans)
        elif isinstance(msg, proto.Logs):  # the empty chunk: its last, after STOP
            self.left.add(member.rank)
        elif isinstance(msg, proto.Error):
            self._lose(member.rank, f"it failed: {msg.message}")
        return True

    # -- what the coordinator asks of them -----------------------------------------------------------
    def broadcast(self, msg) -> None:
        for member in self.members.values():
            try:
                self.srv.router.send(member.identity, msg)
            except Exception:  # zmq.ZMQError: gone; the timer finds it silent
                pass

    def apply(self, step: int, sessions: list[int], lr: float) -> None:
        self.broadcast(proto.Apply(self.srv.incarnation, step, [int(s) for s in sessions], float(lr)))

    def forget(self, session: int) -> None:
        self.broadcast(proto.Forget(self.srv.incarnation, session))

    def fetch(self, velocity: bool) -> None:
        """Every range's parameters (and velocity) at the coordinator's step into srv.params (srv.velocity).

        Raises ServerExit when a range server is lost or does not answer within FETCH_TIMEOUT_S."""
        srv = self.srv
        if self.lost:
            raise ServerExit(self.lost)
        self.states = {}
        self.broadcast(proto.Fetch(srv.incarnation, srv.step, velocity))
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        while not all(r in self.states and self.states[r].step == srv.step for r in self.members):
            if time.monotonic() > deadline:
                missing = [r for r in self.members if r not in self.states]
                self._lose(missing[0], f"no state within {FETCH_TIMEOUT_S:g} s")
            srv._poll_once(0.05)
        for rank, state in self.states.items():
            size = self.kr.size(rank)
            self.kr.scatter(state.state[:size], rank, srv.params)
            if velocity:
                self.kr.scatter(state.state[size:2 * size], rank, srv.velocity)

    def timer(self, now: float) -> None:
        """Ping the range servers; one silent past liveness x heartbeat is lost (ServerExit)."""
        srv = self.srv
        for member in list(self.members.values()):
            if now - member.last_heard > srv.opts.dead_after_s:
                self._lose(member.rank, f"silent for {now - member.last_heard:.1f} s")
        self.broadcast(proto.Heartbeat(srv.incarnation, 0))

    def _lose(self, rank: int, why: str) -> None:
        srv = self.srv
        resume = srv.opts.resume_command or f"parsgd server --resume {srv.rundir.path}"
        hint = (f"; the last checkpoint is at step {srv.last_checkpoint}: continue with `{resume}`"
                if srv.last_checkpoint else "; no checkpoint was written yet: start the run again")
        self.lost = f"{self.name(rank)} was lost ({why}) at step {srv.step}: its parameters are gone{hint}"
        srv.events("server_lost", rank=rank, reason=why, step=srv.step)
        raise ServerExit(self.lost)

    def wait(self, deadline: float) -> None:
        """Before any worker: until servers 1..S-1 have registered (ServerExit at `deadline`, monotonic s)."""
        srv, n = self.srv, self.kr.servers - 1
        srv.echo(f"server 0 of {self.kr.servers} (ranges {self.kr.describe(0)}) on {srv.address}: waiting for "
                 f"servers 1..{n} (start each with: parsgd server --servers {self.kr.servers} --rank R --connect "
                 f"{srv.address} --bind ADDRESS)")
        next_status = time.monotonic() + STATUS_EVERY_S
        while not self.complete():
            now = time.monotonic()
            if now >= deadline:
                missing = [r for r in range(1, n + 1) if r not in self.members]
                raise ServerExit(f"servers {', '.join(map(str, missing))} of {self.kr.servers} did not register within "
                                 f"{srv.opts.wait_timeout_s:g} s: start them with `parsgd server --servers "
                                 f"{self.kr.servers} --rank R --connect {srv.address} --bind ADDRESS`, or raise "
                                 "--wait-timeout")
            if now >= next_status:
                srv.echo(f"{len(self.members)} of {n} range servers registered, {deadline - now:.0f} s left")
                next_status = now + STATUS_EVERY_S
            srv._poll_once(min(0.1, deadline - now))

    def stop_all(self, reason: str, wait_s: float) -> None:
        """STOP every range server and take its last LOGS (its acknowledgement) for up to `wait_s` seconds."""
        self.broadcast(proto.Stop(self.srv.incarnation, reason))
        deadline = time.monotonic() + wait_s
        while not set(self.members) <= self.left and time.monotonic() < deadline:
            self.srv._receive_ready(0.05)


class OwnRanges:
    """What server 0 (a ps.loop.ServerLoop, which mixes this in) does with its own key ranges: it sends
    them in TASKs, updates them itself, and has the other servers apply theirs (`rangeset`, None with one
    server)."""

    def update(self):
        t = self.log.now()
        if self.rangeset is None:
            super().update()
        else:  # its own ranges here, the others' on their servers, in this order
            self.apply_own(self.grad, self.cfg.lr)
            self.rangeset.apply(self.step, self.step_sessions, self.cfg.lr)
        self.log.add("update", self.step, t)

    def own_params(self) -> np.ndarray:
        """This server's part of the parameters (all of them with one server): what a TASK carries."""
        return self.key_ranges.gather(self.params, 0)

    def apply_own(self, grad: np.ndarray, lr: float) -> None:
        """The momentum update of this server's ranges with `grad`, its part (elementwise: the same bits
        as the update of the whole vector)."""
        at = 0
        for lo, hi in self.key_ranges.ranges[0]:
            sgd_momentum_(self.params[lo:hi], self.velocity[lo:hi], grad[at:at + hi - lo], lr, self.cfg.momentum,
                          self.scratch[lo:hi])
            at += hi - lo

    def sync_params(self, velocity: bool = False) -> None:
        """Fetch the other servers' ranges into self.params (and self.velocity) before they are read."""
        if self.rangeset is not None:
            self.rangeset.fetch(velocity)
