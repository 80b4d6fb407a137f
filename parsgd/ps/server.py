"""The parameter server: a ROUTER socket, the weights, and one synchronous update per step.

    parsgd server --bind tcp://127.0.0.1:5555 --workers 2 --dataset synthetic --num-samples 4096
    parsgd worker --connect tcp://127.0.0.1:5555        # twice, in other terminals

Every step's batch is cut into `--workers N` contiguous shards, whatever the live membership:
live workers take the shards (several each if some are gone), the server sums the shard
gradients in shard order, so the model never depends on who computed what or when it arrived.
Every message a worker sends carries the server incarnation and its session (a fencing token):
anything stale is refused. One thread, `poll` with a timeout: no wait is unbounded.
"""
from __future__ import annotations

import json
import math
import random
import signal
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import click
import numpy as np
import zmq
from threadpoolctl import threadpool_limits

from parsgd import __version__
from parsgd.ps import protocol as P
from parsgd.ps.commlog import COMM_SPANS, CommLog, format_summary, summarize, write_comm_jsonl
from parsgd.ps.shm import SessionBuffer, sweep_stale
from parsgd.ps.sockets import configure_router
from parsgd.config import ServerOptions
from parsgd.training.loop import Trainer, shard_bounds
from parsgd.errors import UserError

STATUS_EVERY_S = 5.0          # "waiting for k/N workers" lines
LOGS_TIMEOUT_S = 10.0         # how long to wait for workers' LOGS at the end
CLOSE_LINGER_MS = 1000        # a closing socket gets this long to deliver the STOPs just sent (0 would drop them)
STOP_ACK_S = 1.5              # on abort, how long to wait for the workers' final LOGS (their acknowledgement of STOP)
POLL_MAX_S = 0.1              # longest single poll, so signals and timers are seen promptly
QUARANTINE_AFTER = 3          # protocol errors from one unregistered peer before it is ignored
MAX_TRACKED_PEERS = 4096      # bound on the strike and quarantine tables
PENDING_SLACK = 8             # welcomed-but-not-READY peers allowed beyond --workers; the oldest goes first
REGISTER_TIMEOUT_S = 60.0     # a welcomed peer must send READY within this (it loads its data meanwhile)
HOSTILE_EVENTS_PER_S = 50     # events of one kind about refused messages per second; the rest are counted


class ServerExit(UserError):
    """Training cannot go on; the message says why and what to do. Exit 1 after a checkpoint."""


@dataclass
class Peer:
    identity: bytes
    session: int
    rank: int
    host: str
    pid: int
    last_seen: float
    ready: bool = False
    buf: SessionBuffer | None = None
    params_step: int = -1
    welcomed: float = 0.0


@dataclass
class StepState:
    step: int
    epoch: int
    shards: list[tuple[int, int]]
    owner: list = field(default_factory=list)
    done: list = field(default_factory=list)
    sent_at: list = field(default_factory=list)
    src: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    compute: list = field(default_factory=list)
    bad: list = field(default_factory=list)

    def __post_init__(self):
        k = len(self.shards)
        self.owner, self.done, self.sent_at = [None] * k, [False] * k, [0.0] * k
        self.src, self.loss, self.correct = [None] * k, [0.0] * k, [0] * k
        self.compute, self.bad = [0.0] * k, [0] * k


class EventLog:
    """events.jsonl: every membership change and refused message, for users and tests."""

    def __init__(self, path, clock):
        self.f = open(path, "a", encoding="utf-8")
        self.clock = clock

    def __call__(self, event: str, **fields) -> None:
        self.f.write(json.dumps({"t": round(self.clock(), 6), "event": event, **fields}) + "\n")
        self.f.flush()

    def close(self):
        self.f.close()


class ParameterServer(Trainer):
    mode = "ps"

    def __init__(self, cfg, data, opts: ServerOptions, rundir, echo=click.echo):
        super().__init__(cfg, data, echo=echo, progress=False)
        self._limits = threadpool_limits(1)  # the workers need the cores; aggregation is memory-bound
        self.opts, self.rundir, self.transport = opts, rundir, opts.transport
        self.n_shards = cfg.workers
        self.incarnation = random.SystemRandom().getrandbits(62) + 1
        self.fingerprint = data.fingerprint()
        self.log = CommLog()
        self.events = EventLog(rundir.path / "events.jsonl", self.log.now)
        self.peers: dict[int, Peer] = {}
        self.by_identity: dict[bytes, int] = {}
        self.strikes: OrderedDict[bytes, int] = OrderedDict()
        self.quarantined: OrderedDict[bytes, None] = OrderedDict()
        self._event_budget: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}
        self._event_window = 0.0
        self.shard_grads = np.empty((self.n_shards, self.params.size), self.params.dtype)
        self.send_buf = np.empty_like(self.params)
        self.worker_logs: dict[int, np.ndarray] = {}
        self._log_chunks: dict[int, list[np.ndarray]] = {}
        self.cur: StepState | None = None
        self.stopping: str | None = None
        self.no_workers_since: float | None = None
        self.deferred_close: list[SessionBuffer] = []
        self.generation = 0
        self.max_frames = 3  # identity, header, payload
        self.max_bytes = self.params.nbytes + P.HEADER_MAX + 256
        self.host = socket.gethostname()
        self._epoch_mark = 0
        self._step_compute = 0.0
        self._next_heartbeat = 0.0
        self._timers_due = 0.0
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.auth = configure_router(self.ctx, self.sock, opts, self.max_bytes)
        try:
            self.sock.bind(opts.bind)
        except zmq.ZMQError as exc:
            self.close()
            raise ServerExit(f"cannot bind {opts.bind}: {exc}; choose another --bind address or port") from None
        self.address = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        swept = sweep_stale() if opts.shm else 0
        self.events("listening", address=self.address, incarnation=self.incarnation, swept_shm=swept)

    # -- the training hooks --------------------------------------------------------------------
    def batch_gradient(self, epoch, step, order, lo, hi):
        st = self.cur = StepState(step, epoch, shard_bounds(lo, hi, self.n_shards))
        for peer in self.peers.values():  # every copy first, so the TASKs then leave back to back
            if peer.ready and peer.buf is not None:
                self._load_params(peer, step)
        if any(not p.buf for p in self.peers.values() if p.ready):
            t = self.log.now()
            np.copyto(self.send_buf, self.params)
            self.log.add("serialize", step, t, self.params.nbytes)
        for s in range(len(st.shards)):
            self._assign(s)
        while True:
            wait_start, waited = self.log.now(), [0.0]
            self._serve_until(lambda: all(st.done), waited)
            self.log.add("wait", step, wait_start, end=wait_start + waited[0])
            t = self.log.now()
            np.copyto(self.grad, st.src[0])
            for src in st.src[1:]:  # shard order, never arrival order
                self.grad += src
            # NaN or Inf anywhere makes the sum non-finite: one read-only pass, no temporary
            finite = math.isfinite(np.add.reduce(self.grad)) and math.isfinite(sum(st.loss))
            self.log.add("aggregate", step, t)
            if finite:
                break
            self._retry_non_finite(st)
        self._step_compute += max(st.compute)
        self._release_deferred()
        return float(sum(st.loss)), int(sum(st.correct))

    def update(self):
        t = self.log.now()
        super().update()
        self.log.add("update", self.step, t)

    def after_step(self):
        every = self.opts.checkpoint_every
        if every and self.step % every == 0:
            self.checkpoint()

    def epoch_extras(self) -> dict:
        """comm_s: step time not spent in the slowest shard's compute, aggregation or update."""
        totals = self.log.totals(self._epoch_mark)
        step_time = self.partial["time_s"]
        compute = self._step_compute
        comm = max(0.0, step_time - compute - totals["aggregate"] - totals["update"])
        extras = {"compute_s": compute, "comm_s": comm,
                  "bytes_sent": self.log.bytes_since(self._epoch_mark, "send"),
                  "bytes_recv": self.log.bytes_since(self._epoch_mark, "recv")}
        self._epoch_mark, self._step_compute = len(self.log.rows), 0.0
        return extras

    def _end_epoch(self, epoch, rundir):
        super()._end_epoch(epoch, rundir)
        if not self.opts.checkpoint_every or self.step % self.opts.checkpoint_every:
            self.checkpoint()

    # -- the run ---------------------------------------------------------------------------------
    def serve(self) -> dict:
        """Wait for the workers, train, stop the workers, write the run directory."""
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._wait_for_initial_workers()
            summary = self.run(self.rundir)
            return summary
        except ServerExit:
            self._abort()
            raise
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self.close()

    def _on_signal(self, signum, _frame):
        self.stopping = signal.Signals(signum).name

    def _abort(self):
        """Checkpoint and tell every worker to stop; used on signals and unrecoverable states."""
        if self.step > 0:
            self.checkpoint()
        self._stop_workers("server stopped", collect=False)

    def finish(self, rundir, wall_s):
        self._stop_workers("training finished", collect=True)
        n = write_comm_jsonl(rundir.path / "comm.jsonl", self.log, self.worker_logs)
        breakdown = summarize(self.log, self.worker_logs)
        summary = self.summary(wall_s)
        summary["time_breakdown"] = breakdown
        summary["comm_spans"] = n
        summary["generation"] = self.generation
        rundir.write_model(self.params, self.sizes)
        rundir.write_json("summary.json", summary)
        self.echo(format_summary(breakdown, self.n_shards))
        return summary

    def _wait_for_initial_workers(self):
        deadline = time.monotonic() + self.opts.wait_timeout_s
        self.echo(f"server listening on {self.address}: waiting for {self.n_shards} workers "
                  f"(start them with: parsgd worker --connect {self.address})")
        next_status = time.monotonic() + STATUS_EVERY_S
        while self._ready_count() < self.n_shards:
            now = time.monotonic()
            if now >= deadline:
                raise ServerExit(
                    f"only {self._ready_count()}/{self.n_shards} workers registered within "
                    f"{self.opts.wait_timeout_s:g} s: start them with `parsgd worker --connect {self.address}` "
                    "or raise --wait-timeout")
            if now >= next_status:
                self.echo(f"waiting for {self.n_shards - self._ready_count()}/{self.n_shards} workers "
                          f"on {self.address}, {deadline - now:.0f} s left")
                next_status = now + STATUS_EVERY_S
            self._poll_once(min(POLL_MAX_S, deadline - now))
        self.no_workers_since = None

    def _ready_count(self) -> int:
        return sum(p.ready for p in self.peers.values())

    # -- the event loop --------------------------------------------------------------------------
    def _serve_until(self, done, waited: list) -> None:
        while not done():
            t = time.perf_counter()
            self._poll_once(POLL_MAX_S)
            waited[0] += time.perf_counter() - t

    def _poll_once(self, timeout_s: float) -> None:
        if self.stopping:
            raise ServerExit(f"interrupted by {self.stopping} at step {self.step}; "
                             f"continue with `parsgd server --resume {self.rundir.path}`")
        self._receive_ready(timeout_s)
        now = time.monotonic()
        if now >= self._timers_due:
            self._timers(now)
            self._timers_due = now + min(0.05, self.opts.heartbeat_s / 4)

    def _receive_ready(self, timeout_s: float) -> None:
        """Wait up to timeout_s for a message, then handle every one that is queued."""
        if self.poller.poll(max(0, int(timeout_s * 1000))):
            while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self._receive_one()

    def _receive_one(self) -> None:
        t = self.log.now()
        try:
            frames = P.recv_frames(self.sock, self.max_frames, self.max_bytes)
        except P.ProtocolError as exc:  # too many frames or bytes: drained; never a worker's doing
            if exc.first_frame not in self.quarantined:
                self._strike(exc.first_frame, str(exc), severe=True)
            return
        identity = frames[0].bytes
        if identity in self.quarantined:
            return
        try:
            msg = P.decode(frames[1:])
        except P.ProtocolError as exc:
            self._strike(identity, str(exc))
            return
        handler = getattr(self, f"_on_{type(msg).__name__.lower()}", None)
        if handler is None:
            self._strike(identity, f"unexpected {type(msg).__name__} from a worker")
            return
        handler(identity, msg, frames, t)

    def _strike(self, identity: bytes, error: str, severe: bool = False) -> None:
        """A bad message: drop it; after QUARANTINE_AFTER (or one severe one) from a non-worker, ignore that peer."""
        registered = identity in self.by_identity
        self._limited_event("protocol_error", peer=identity.hex(), error=error, registered=registered)
        if registered:
            self._reply_error(identity, "BAD_MESSAGE", error)
            return
        n = self.strikes.pop(identity, 0) + (QUARANTINE_AFTER if severe else 1)
        if n >= QUARANTINE_AFTER:
            self.quarantined[identity] = None
            self._limited_event("quarantine", peer=identity.hex())
            while len(self.quarantined) > MAX_TRACKED_PEERS:
                self.quarantined.popitem(last=False)
        else:
            self.strikes[identity] = n
            while len(self.strikes) > MAX_TRACKED_PEERS:
                self.strikes.popitem(last=False)

    def _limited_event(self, event: str, **fields) -> None:
        """An event about refused input: at most HOSTILE_EVENTS_PER_S of a kind, so a flood cannot fill the disk."""
        now = time.monotonic()
        if now - self._event_window >= 1.0:
            for kind, count in self._suppressed.items():
                self.events("suppressed", kind=kind, count=count)
            self._event_window, self._event_budget, self._suppressed = now, {}, {}
        left = self._event_budget.get(event, HOSTILE_EVENTS_PER_S)
        if left > 0:
            self._event_budget[event] = left - 1
            self.events(event, **fields)
        else:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1

    def _expire_pending(self, now: float) -> None:
        """Forget welcomed peers that went silent, or sent no READY within --register-timeout."""
        for peer in [p for p in self.peers.values() if not p.ready]:
            if now - peer.last_seen > self.opts.heartbeat_s * self.opts.liveness:
                reason = f"silent for {now - peer.last_seen:.1f} s before READY"
            elif now - peer.welcomed > self.opts.register_timeout_s:
                reason = f"no READY within {self.opts.register_timeout_s:g} s"
            else:
                continue
            self._forget_pending(peer, reason)

    def _forget_pending(self, peer: Peer, reason: str) -> None:
        """A welcomed peer that never became a worker owns no shard: its segment closes at once."""
        self._limited_event("expired", session=peer.session, rank=peer.rank, reason=reason)
        self._forget(peer)
        if peer.buf is not None:
            self.deferred_close.remove(peer.buf)
            peer.buf.close()

    def _timers(self, now: float) -> None:
        hb = self.opts.heartbeat_s
        self._expire_pending(now)
        if now >= self._next_heartbeat:
            for peer in list(self.peers.values()):
                self._send(peer, P.Heartbeat(self.incarnation, peer.session))
            self._next_heartbeat = now + hb
        for peer in list(self.peers.values()):
            if now - peer.last_seen > hb * self.opts.liveness:
                self._drop(peer, f"silent for {now - peer.last_seen:.1f} s")
        st = self.cur
        if st is not None:
            for s, owner in enumerate(st.owner):
                if owner is not None and not st.done[s] and now - st.sent_at[s] > self.opts.step_timeout_s:
                    self.events("step_timeout", step=st.step, shard=s, rank=self.peers[owner].rank)
                    self.echo(f"shard {s} of step {st.step} took over {self.opts.step_timeout_s:g} s "
                              f"on worker {self.peers[owner].rank}: reassigning it")
                    self._assign(s, avoid=owner)
        if self._ready_count() == 0 and self.cur is not None:
            if self.no_workers_since is None:
                self.no_workers_since = now
                self.echo(f"no workers left: waiting up to {self.opts.wait_timeout_s:g} s for one to join")
            elif now - self.no_workers_since > self.opts.wait_timeout_s:
                raise ServerExit(f"no workers for {self.opts.wait_timeout_s:g} s at step {self.step}; "
                                 f"checkpoint written; continue with `parsgd server --resume {self.rundir.path}`")
        else:
            self.no_workers_since = None

    # -- messages from workers ---------------------------------------------------------------------
    def _peer_of(self, identity: bytes, msg, any_identity=False) -> Peer | None:
        """The live session a message belongs to, or None after telling the sender it is stale."""
        peer = self.peers.get(msg.session)
        if msg.incarnation != self.incarnation or peer is None or (
                not any_identity and peer.identity != identity):
            if not any_identity:
                self._limited_event("stale", type=type(msg).__name__, session=msg.session,
                                    step=getattr(msg, "step", None))
                self._reply_error(identity, "STALE", "unknown or expired session: register again")
            return None
        peer.last_seen = time.monotonic()
        return peer

    def _on_hello(self, identity, msg: P.Hello, frames, t):
        if msg.protocol != P.PROTOCOL_VERSION or msg.package_version != __version__:
            text = (f"server runs parsgd {__version__} (protocol {P.PROTOCOL_VERSION}), worker runs parsgd "
                    f"{msg.package_version} (protocol {msg.protocol}): install the same version on both")
            self._limited_event("refused", reason="version", peer=identity.hex(), detail=text)
            self._reply_error(identity, "VERSION", text)
            return
        old = self.by_identity.get(identity)
        if old is not None and old != msg.session:
            self._drop(self.peers[old], "registered again")
        peer = self.peers.get(msg.session)
        if peer is None:
            self._expire_pending(time.monotonic())
            pending = [p for p in self.peers.values() if not p.ready]
            if len(pending) >= self.n_shards + PENDING_SLACK:  # a HELLO flood: the oldest newcomer makes room
                self._forget_pending(min(pending, key=lambda p: p.welcomed), "too many peers registering at once")
            if len(self.peers) >= 2 * self.n_shards + PENDING_SLACK:
                self._reply_error(identity, "BUSY", "the server has as many workers as it takes")
                return
            used = {p.rank for p in self.peers.values()}
            rank = next(r for r in range(len(used) + 1) if r not in used)
            peer = Peer(identity, msg.session, rank, msg.host, msg.pid, time.monotonic())
            peer.welcomed = peer.last_seen
            if self.opts.shm and msg.host == self.host:
                try:
                    peer.buf = SessionBuffer.create(msg.session, self.params.size, self.n_shards, self.params.dtype)
                except OSError as exc:  # /dev/shm full or the name taken: the payload goes through the socket
                    self.events("shm_unavailable", session=msg.session, error=str(exc))
            self.peers[msg.session] = peer
            self.by_identity[identity] = msg.session
            self._limited_event("hello", rank=rank, session=msg.session, host=msg.host, pid=msg.pid, name=msg.name)
        self._send(peer, P.Welcome(self.incarnation, peer.session, peer.rank, self.cfg.to_dict(),
                                   self.log.now(), self.opts.heartbeat_s, self.opts.liveness,
                                   peer.buf.name if peer.buf else ""))

    def _on_ready(self, identity, msg: P.Ready, frames, t):
        peer = self._peer_of(identity, msg)
        if peer is None or peer.ready:
            return
        if msg.fingerprint != self.fingerprint or msg.n_train != self.n_train:
            text = (f"worker {peer.rank} on {peer.host} loaded different data (fingerprint "
                    f"{msg.fingerprint}, {msg.n_train} rows) than the server ({self.fingerprint}, "
                    f"{self.n_train} rows): give it the same dataset files and --data-dir")
            self.events("refused", reason="data_mismatch", rank=peer.rank, detail=text)
            self.echo(f"turned away worker {peer.rank}: {text}")
            self._reply_error(identity, "DATA_MISMATCH", text)
            self._forget(peer)
            return
        if peer.buf is not None:
            peer.buf.unlink()
            if not msg.shm:
                peer.buf.close()
                peer.buf = None
        peer.ready = True
        self.generation += 1
        self.events("join", rank=peer.rank, session=peer.session, host=peer.host, pid=peer.pid,
                    shm=peer.buf is not None, generation=self.generation, step=self.step)
        self.echo(f"worker {peer.rank} joined from {peer.host} pid {peer.pid}"
                  f"{' (shared memory)' if peer.buf else ''}: {self._ready_count()} live")
        if self.cur is not None:
            for s, owner in enumerate(self.cur.owner):
                if owner is None and not self.cur.done[s]:
                    self._assign(s)

    def _on_grad(self, identity, msg: P.Grad, frames, t):
        peer = self._peer_of(identity, msg)
        if peer is None:
            return
        st = self.cur
        # Logged under the step in progress: a late or made-up GRAD's own step may be long gone or never come.
        self.log.add("recv", st.step if st is not None else self.step, t, P.frames_nbytes(frames[1:]))
        s = msg.shard
        if (st is None or msg.step != st.step or s >= len(st.shards) or st.owner[s] != peer.session
                or st.done[s] or (msg.lo, msg.hi) != st.shards[s]):
            self._limited_event("ignored_grad", rank=peer.rank, step=msg.step, shard=s,
                                why="late or duplicate" if st is None or msg.step <= st.step else "unknown step")
            return
        t = self.log.now()
        if peer.buf is not None:
            st.src[s] = peer.buf.slots[s]
        elif msg.grad is not None and msg.grad.size == self.params.size and msg.grad.dtype == self.params.dtype:
            np.copyto(self.shard_grads[s], msg.grad)
            st.src[s] = self.shard_grads[s]
        else:
            self._strike(identity, f"GRAD payload does not match the model ({self.params.size} x {self.params.dtype})")
            return
        self.log.add("deserialize", msg.step, t)
        st.loss[s], st.correct[s], st.compute[s] = msg.loss_sum, msg.correct, msg.compute_s
        st.done[s] = True

    def _on_heartbeat(self, identity, msg: P.Heartbeat, frames, t):
        self._peer_of(identity, msg, any_identity=True)  # from the worker's heartbeat socket too

    def _on_logs(self, identity, msg: P.Logs, frames, t):
        peer = self._peer_of(identity, msg)
        if peer is None:
            return
        if len(msg.spans):
            self._log_chunks.setdefault(peer.rank, []).append(np.array(msg.spans, copy=True))
        else:  # the empty chunk ends a worker's logs: it is leaving, which is no death
            chunks = self._log_chunks.pop(peer.rank, [])
            self.worker_logs[peer.rank] = np.concatenate(chunks) if chunks else np.zeros((0, 5))
            self._forget(peer)
            self.events("left", rank=peer.rank, session=peer.session)

    def _on_error(self, identity, msg: P.Error, frames, t):
        session = self.by_identity.get(identity)
        if session is None:
            self._strike(identity, f"ERROR {msg.code} from a peer that is not a worker")
            return
        self.events("worker_error", code=msg.code, message=msg.message)
        if session is not None:
            self.echo(f"worker {self.peers[session].rank} reported: {msg.message}")
            self._drop(self.peers[session], f"worker error {msg.code}")

    # -- sending and membership ------------------------------------------------------------------
    def _send(self, peer: Peer, msg, step: int = -1) -> bool:
        frames = [peer.identity, *msg.to_frames()]
        t = self.log.now()
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # EAGAIN: its queue is full; EHOSTUNREACH: it is gone
            if peer.session in self.peers:
                self._drop(peer, f"cannot send to it ({exc.strerror})")
            return False
        if step >= 0:
            self.log.add("send", step, t, P.frames_nbytes(frames[1:]))
        return True

    def _reply_error(self, identity: bytes, code: str, text: str) -> None:
        try:
            self.sock.send_multipart([identity, *P.Error(code, text[:P.MAX_TEXT]).to_frames()], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _assign(self, s: int, avoid: int | None = None) -> None:
        """Give shard s of the current step to the least-loaded live worker (not `avoid` if possible)."""
        st = self.cur
        ready = [p for p in self.peers.values() if p.ready]
        if avoid is not None and len(ready) > 1:
            ready = [p for p in ready if p.session != avoid]
        if not ready:
            st.owner[s] = None
            return
        load = {p.session: 0 for p in ready}
        for i, o in enumerate(st.owner):
            if o in load and not st.done[i]:
                load[o] += 1
        # ties rotate with the step, so every live worker gets shards, a newcomer from the next step on
        turn = 1 + max(p.rank for p in ready)
        peer = min(ready, key=lambda p: (load[p.session], (p.rank - st.step) % turn))
        st.owner[s], st.sent_at[s] = peer.session, time.monotonic()
        lo, hi = st.shards[s]
        if peer.buf is not None:
            self._load_params(peer, st.step)  # a no-op unless it joined during this step
            payload = None
        else:
            payload = self.send_buf
        task = P.Task(self.incarnation, peer.session, st.step, st.epoch, s, lo, hi, self.log.now(), payload)
        self._send(peer, task, st.step)

    def _load_params(self, peer: Peer, step: int) -> None:
        """The step's parameters into a shared-memory worker's segment, once per step."""
        if peer.params_step != step:
            t = self.log.now()
            np.copyto(peer.buf.params, self.params)
            self.log.add("serialize", step, t, self.params.nbytes)
            peer.params_step = step

    def _retry_non_finite(self, st: StepState) -> None:
        for s, src in enumerate(st.src):
            if not np.isfinite(src).all() or not np.isfinite(st.loss[s]):
                st.bad[s] += 1
                owner = self.peers.get(st.owner[s])
                self.events("non_finite_grad", step=st.step, shard=s, rank=owner.rank if owner else None)
                if st.bad[s] > 1:
                    raise ServerExit(f"shard {s} of step {st.step} gave a non-finite gradient (NaN or Inf) "
                                     "twice: the model diverged or a worker is broken; try a lower --lr")
                st.done[s] = False
                self._assign(s, avoid=st.owner[s])
        if all(st.done):  # the aggregate overflowed although every shard is finite
            raise ServerExit(f"the gradient of step {st.step} overflowed: try a lower --lr")

    def _drop(self, peer: Peer, reason: str) -> None:
        """A worker is gone: forget it and give its unfinished shards to others."""
        if peer.session not in self.peers:
            return
        if not peer.ready:  # never a worker: no shard to reassign, and its segment can go now
            self._forget_pending(peer, reason)
            return
        self._forget(peer)
        if peer.ready:
            self.generation += 1
            self.events("dead", rank=peer.rank, session=peer.session, reason=reason, generation=self.generation,
                        step=self.step)
            self.echo(f"lost worker {peer.rank} ({reason}): {self._ready_count()} live")
        st = self.cur
        if st is not None:
            for s, owner in enumerate(st.owner):
                if owner == peer.session and not st.done[s]:
                    self.events("reassign", step=st.step, shard=s, from_rank=peer.rank)
                    self._assign(s)

    def _forget(self, peer: Peer) -> None:
        self.peers.pop(peer.session, None)
        if self.by_identity.get(peer.identity) == peer.session:
            del self.by_identity[peer.identity]
        if peer.buf is not None:
            peer.buf.unlink()
            self.deferred_close.append(peer.buf)  # a finished shard of this step may still point into it

    def _release_deferred(self) -> None:
        while self.deferred_close:
            self.deferred_close.pop().close()

    def _stop_workers(self, reason: str, collect: bool) -> None:
        """STOP every worker and wait for its final LOGS, which double as the acknowledgement: closing
        sooner loses the STOP in a worker busy computing (libzmq drops unread messages of a closed peer)."""
        for peer in list(self.peers.values()):
            self._send(peer, P.Stop(self.incarnation, reason))
        deadline = time.monotonic() + (LOGS_TIMEOUT_S if collect else STOP_ACK_S)
        want = {p.rank for p in self.peers.values() if p.ready}
        while not want <= set(self.worker_logs) and time.monotonic() < deadline and self.peers:
            if collect:
                self._poll_once(POLL_MAX_S)
            else:  # aborting: no timers, no signal check
                self._receive_ready(POLL_MAX_S)
            want &= {p.rank for p in self.peers.values() if p.ready} | set(self.worker_logs)

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        from parsgd.ps.checkpoint import save_checkpoint
        save_checkpoint(self.rundir.path, self)
        self.events("checkpoint", step=self.step)

    def close(self) -> None:
        for peer in list(self.peers.values()):
            self._forget(peer)
        self._release_deferred()
        if self.auth is not None:
            self.auth.stop()
        self.sock.close(linger=CLOSE_LINGER_MS)
        self.ctx.term()
        self.events.close()


def comm_share_line(summary: dict) -> str:
    spans = summary.get("time_breakdown", {}).get("server", {})
    comm = sum(spans.get(k, 0.0) for k in COMM_SPANS)
    return f"communication share of step time: {summary.get('comm_share', 0):.0%} (server comm spans {comm:.2f} s)"
