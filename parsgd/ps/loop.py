"""The parameter server's event loop, whatever the consistency model: sockets, members, stop.

    parsgd server --bind tcp://127.0.0.1:5555 --workers 2 --dataset synthetic --num-samples 4096
    parsgd worker --connect tcp://127.0.0.1:5555        # twice, in other terminals

The rules live elsewhere: a scheduler (`scheduler.Scheduler` for BSP, `batches.BatchScheduler` for
SSP and ASP) decides who owes what and what is accepted, `membership.Membership` who is a worker
and who is alive. `ServerLoop` connects them to the socket: one thread, `poll` with a timeout (no
wait is unbounded), and a table of message handlers. It also owns the shared-memory segments,
checkpoints and the stop handshake. `server.ParameterServer` (BSP) and `async_server.AsyncServer`
(SSP, ASP) say how a step's work is handed out and applied.
"""
from __future__ import annotations

import random
import signal
import time

import click
import numpy as np
import zmq
from threadpoolctl import threadpool_limits

from parsgd.config import RunConfig, ServerOptions
from parsgd.data import Dataset
from parsgd.errors import UserError
from parsgd.model.keyranges import key_ranges
from parsgd.ps import protocol as proto
from parsgd.ps.checkpoint import save_checkpoint
from parsgd.ps.colocated import ADDRESS as COLOCATED_ADDRESS, ColocatedWorker
from parsgd.ps.commlog import COMM_FLUSH_S, CommLog, CommStream, format_summary, summarize
from parsgd.ps.compression import WireCodec
from parsgd.ps.events import EventLog, UpdateLog
from parsgd.ps.handlers import HANDLERS, on_timer, strike
from parsgd.ps.membership import Member, Membership
from parsgd.ps.rangeset import OwnRanges, RangeSet
from parsgd.ps.scheduler import ServerExit
from parsgd.ps.shm import Segments, host_identity, sweep_stale
from parsgd.ps.router import Router
from parsgd.training.loop import Trainer
from parsgd.training.rundir import RunDir

STATUS_EVERY_S = 5.0          # "waiting for k/N workers" lines
LOGS_TIMEOUT_S = 10.0         # how long to wait for workers' LOGS at the end
STOP_ACK_S = 1.5              # on abort, how long to wait for the workers' final LOGS (their acknowledgement of STOP)
POLL_MAX_S = 0.1              # longest single poll, so signals and timers are seen promptly
TIMERS_MAX_S = 0.05           # timers (heartbeats, expiry, step timeouts) run at least this often


def workers(n: int) -> str:
    return f"{n} worker{'' if n == 1 else 's'}"


class ServerLoop(OwnRanges, Trainer):
    """Trains `cfg` on `data` with remote workers; subclasses hand out the work (`assign`) and take
    each accepted gradient (`gradient_in`).

    Raises BindError or KeysError (UserErrors) if it cannot listen on `opts.bind`; `serve()` raises
    UserError subclasses for every reason training cannot go on, after a checkpoint and STOP.
    """

    mode = "ps"

    def __init__(self, cfg: RunConfig, data: Dataset, opts: ServerOptions, rundir: RunDir, echo=click.echo):
        super().__init__(cfg, data, echo=echo, progress=False)
        self._limits = threadpool_limits(1)  # the workers need the cores; aggregation is memory-bound
        self.opts, self.rundir, self.transport = opts, rundir, opts.transport
        self.n_shards = cfg.workers
        self.incarnation = random.SystemRandom().getrandbits(62) + 1
        self.fingerprint = data.fingerprint()
        self.log = CommLog()
        # --servers S: this server (0) coordinates and owns the key ranges of server 0 (model/keyranges.py)
        self.key_ranges = key_ranges(cfg.sizes, cfg.dtype, cfg.servers, cfg.shard_by)
        own, self.codec = self.key_ranges.size(0), WireCodec.for_run(cfg, self.key_ranges)  # --compress
        if cfg.servers > 1:
            self.grad = np.empty(own, self.params.dtype)  # its own part of a step's gradient
        # frames: identity, header, payload (a range server's STATE: its parameters and velocity)
        largest = self.params.nbytes * (2 if cfg.servers > 1 else 1)
        self.router = Router(opts, max_frames=3, max_bytes=largest + proto.HEADER_MAX + 256)
        self.address = self.router.address
        self.events = EventLog(rundir.path / "events.jsonl", self.log.now)
        self.comm = CommStream(rundir.path / "comm.jsonl")
        self.updates = UpdateLog(rundir.path / "updates.jsonl")
        self.members = Membership(self.n_shards, opts.dead_after_s, opts.register_timeout_s)
        self.scheduler = None  # set by the subclass: a Scheduler (BSP) or a BatchScheduler (SSP, ASP)
        self.shard_grads = np.empty((self.n_shards, own), self.params.dtype)
        self.send_buf = np.empty(own, self.params.dtype)
        self.worker_logs: dict[int, np.ndarray] = {}
        self.log_chunks: dict[int, list[np.ndarray]] = {}
        self.stopping: str | None = None
        self.no_workers_since: float | None = None
        self.segments = Segments(own, self.n_shards, self.params.dtype)
        self.rangeset = RangeSet(self) if cfg.servers > 1 else None
        self.last_checkpoint = 0   # the step of the last checkpoint this run wrote (0: none)
        self.step_sessions: list[int] = []   # whose shards the step's update adds (the ranges' APPLY)
        self.staged: dict[tuple[int, int, int], np.ndarray] = {}  # S servers: PUSHed parts awaiting their GRAD
        self.host = host_identity()
        self._epoch_mark = 0
        self._step_compute = 0.0
        self._next_heartbeat = 0.0
        self._timers_due = 0.0
        self._next_flush = 0.0
        self.colocated: ColocatedWorker | None = None
        swept = sweep_stale() if opts.shm else 0
        self.events("listening", address=self.address, incarnation=self.incarnation, swept_shm=swept)

    # -- the Trainer hooks -----------------------------------------------------------------------
    def check_finite(self, loss_sum: float) -> None:
        """Already checked by Scheduler.reduce, with one retry of a non-finite shard elsewhere."""

    def after_step(self):
        every = self.opts.checkpoint_every
        # An epoch's last step is checkpointed by after_epoch, once that epoch's metrics exist:
        # a checkpoint taken here would resume without them (and merge two epochs' train loss).
        if every and self.step % every == 0 and self.step % self.steps_per_epoch:
            self.checkpoint()

    def after_epoch(self):
        self.checkpoint()

    def epoch_extras(self) -> dict:
        """comm_s: step time not spent in the slowest shard's compute, aggregation or update."""
        totals = self.log.totals(self._epoch_mark)
        compute = self._step_compute
        comm = max(0.0, self.partial["time_s"] - compute - totals["aggregate"] - totals["update"])
        extras = {"compute_s": compute, "comm_s": comm,
                  "bytes_sent": self.log.bytes_since(self._epoch_mark, "send"),
                  "bytes_recv": self.log.bytes_since(self._epoch_mark, "recv")}
        self._epoch_mark, self._step_compute = len(self.log.rows), 0.0
        return extras

    # -- the run ---------------------------------------------------------------------------------
    def serve(self) -> dict:
        """Wait for the workers, train, stop the workers, write the run directory; returns the summary.

        Raises UserError subclasses (ServerExit, NonFiniteGradient) after a checkpoint and STOP to
        every worker when training cannot go on (a signal, no workers, a diverged model).
        """
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.updates.keep(self.step)  # a resumed run redoes what followed its checkpoint
            if self.opts.colocate:
                self.router.bind_also(COLOCATED_ADDRESS)
                self.colocated = ColocatedWorker(self.router.ctx, self.cfg, self.data, self.opts.wait_timeout_s,
                                                 self.echo)
                self.colocated.start()
            self._wait_for_initial_workers()
            return self.run(self.rundir)
        except UserError as exc:
            self._abort(str(exc))
            raise
        finally:
            self.close()  # first: a signal meanwhile only sets self.stopping, never interrupts it
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, _frame):
        self.stopping = signal.Signals(signum).name

    def _abort(self, why: str = "") -> None:
        """STOP every worker (the reason: `why`), then checkpoint (so STOP goes out even if that write fails);
        on signals and fatal states."""
        self._stop_workers(f"server stopped: {why}"[:proto.MAX_TEXT] if why else "server stopped", collect=False)
        if self.step > 0:
            self.checkpoint()

    def finish(self, rundir, wall_s):
        self.sync_params()  # every range of the final model, before the range servers stop
        self._stop_workers("training finished", collect=True)
        self.comm.server(self.log)
        n = self.comm.count
        breakdown = summarize(self.log, self.worker_logs)
        summary = self.summary(wall_s)
        summary["time_breakdown"] = breakdown
        summary["comm_spans"] = n
        summary["generation"] = self.members.generation
        summary["staleness_mean"] = self.updates.staleness_mean
        summary["setup"] = rundir.setup  # what shaped the run (faults, link, colocate, ...), beside its figures
        rundir.write_model(self.params, self.sizes)
        rundir.write_json("summary.json", summary)
        self.echo(format_summary(breakdown, self.n_shards))
        return summary

    def _wait_for_initial_workers(self):
        deadline = time.monotonic() + self.opts.wait_timeout_s
        if self.rangeset is not None:  # their addresses go into every worker's WELCOME
            self.rangeset.wait(deadline)
        colocated = " (worker 0 computes in this process)" if self.opts.colocate else ""
        self.echo(f"server listening on {self.address}: waiting for {workers(self.n_shards)}{colocated} "
                  f"(start them with: parsgd worker --connect {self.address})")
        next_status = time.monotonic() + STATUS_EVERY_S
        while len(self.members.live()) < self.n_shards:
            now, ready = time.monotonic(), len(self.members.live())
            if now >= deadline:
                raise ServerExit(
                    f"only {ready} of {workers(self.n_shards)} registered within "
                    f"{self.opts.wait_timeout_s:g} s: start them with `parsgd worker --connect {self.address}` "
                    "or raise --wait-timeout")
            if now >= next_status:
                self.echo(f"{ready} of {workers(self.n_shards)} ready, waiting for {self.n_shards - ready} more "
                          f"on {self.address}, {deadline - now:.0f} s left")
                next_status = now + STATUS_EVERY_S
            self._poll_once(min(POLL_MAX_S, deadline - now))
        self.no_workers_since = None
        if self.rangeset is not None:
            self.rangeset.started = True

    # -- the event loop --------------------------------------------------------------------------
    def _poll_once(self, timeout_s: float, wait_step: int = -1) -> None:
        """One poll, the messages it found and the timers; see _receive_ready for wait_step."""
        if self.stopping:
            raise ServerExit(f"interrupted by {self.stopping} at step {self.step}"
                             f"{self.opts.continue_hint(self.step, self.rundir.path)}")
        self._receive_ready(timeout_s, wait_step)
        now = time.monotonic()
        if now >= self._timers_due:
            on_timer(self, now)
            self._timers_due = now + min(TIMERS_MAX_S, self.opts.heartbeat_s / 4)
            if now >= self._next_flush:
                self.comm.server(self.log)
                self._next_flush = now + COMM_FLUSH_S

    def _receive_ready(self, timeout_s: float, wait_step: int = -1) -> None:
        """Wait up to timeout_s for a message, then handle every one that is queued. With wait_step
        >= 0 the time blocked in the poll is a `wait` span of that step: only the poll, so the recv
        and deserialize spans of what it found follow it instead of overlapping it."""
        t = self.log.now()
        ready = self.router.poll(timeout_s)
        if wait_step >= 0:
            self.log.add("wait", wait_step, t)
        if ready:
            while self.router.has_message():
                self._receive_one()

    def _receive_one(self) -> None:
        t = self.log.now()
        try:
            frames = self.router.recv()
        except proto.ProtocolError as exc:  # too many frames or bytes: drained; never a worker's doing
            if not self.members.is_quarantined(exc.first_frame):
                strike(self, exc.first_frame, str(exc), severe=True)
            return
        identity = frames[0].bytes
        if self.members.is_quarantined(identity):
            return
        try:
            msg = proto.decode(frames[1:])
        except proto.ProtocolError as exc:
            strike(self, identity, str(exc))
            return
        if self.rangeset is not None and self.rangeset.handle(identity, msg, frames, t):
            return
        handler = HANDLERS.get(type(msg))
        if handler is None:
            strike(self, identity, f"unexpected {type(msg).__name__} from a worker", answers=msg.TYPE)
            return
        handler(self, identity, msg, frames, t)

    # -- sending, assignment, membership changes ----------------------------------------------------
    def send(self, member: Member, msg, step: int = -1) -> bool:
        """Send msg to a member at once; False if it cannot take it (it is dropped at the next timer tick)."""
        t = self.log.now()
        try:
            nbytes = self.router.send(member.identity, msg)
        except zmq.ZMQError as exc:
            # Dropped at the next timer tick, after the messages already queued from it are read: a
            # worker that closed its connection right after saying it leaves (LOGS) is then `left`.
            member.gone = member.gone or ("its queue is full: it does not read its socket" if exc.errno == zmq.EAGAIN
                                          else "its connection is gone: the process exited or died")
            return False
        if step >= 0:
            self.log.add("send", step, t, nbytes)
        return True

    def _load_params(self, member: Member, step: int) -> None:
        """The step's parameters into a shared-memory worker's segment, once per step."""
        t = self.log.now()
        if self.segments.load(member.buf, step, self.own_params()):
            self.log.add("serialize", step, t, member.buf.params.nbytes)

    def drop(self, member: Member, reason: str, left: bool = False) -> None:
        """A member is gone (`left`: it said so): forget it; a worker's unfinished shards go to others."""
        if self.members.get(member.session) is not member:
            return
        if not member.ready:  # never a worker: no shard to reassign, and its segment can go now
            self.events.limited("expired", session=member.session, rank=member.rank, reason=reason)
            self.forget(member, close_now=True)
            return
        self.forget(member)
        if left:
            self.events("left", rank=member.rank, session=member.session)
        else:
            self.events("dead", rank=member.rank, session=member.session, reason=reason,
                        generation=self.members.generation, step=self.step)
        if self.scheduler.cur is not None:  # at the end, every worker leaves: that is no news
            what = f"worker {member.rank} left" if left else f"lost worker {member.rank} ({reason})"
            self.echo(f"{what}: {len(self.members.live())} live")
        for s in self.scheduler.release(member.session):
            self.events("reassign", step=self.scheduler.cur.step, shard=s, from_rank=member.rank)
            self.assign(s)

    def forget(self, member: Member, close_now: bool = False) -> None:
        self.members.remove(member)
        if member.buf is not None:
            self.segments.release(member.buf, now=close_now)
        if self.rangeset is not None and member.ready:
            self.rangeset.forget(member.session)  # its attachment and parts on the range servers go too

    def _stop_workers(self, reason: str, collect: bool) -> None:
        """STOP every worker and wait for its final LOGS, which double as the acknowledgement: closing
        sooner loses the STOP in a worker busy computing (libzmq drops unread messages of a closed peer)."""
        self.stop_reason = reason
        for member in list(self.members.members.values()):
            self.send(member, proto.Stop(self.incarnation, reason))
        deadline = time.monotonic() + (LOGS_TIMEOUT_S if collect else STOP_ACK_S)
        want = {m.rank for m in self.members.live()}
        while not want <= set(self.worker_logs) and time.monotonic() < deadline and self.members.members:
            if collect:
                self._poll_once(POLL_MAX_S)
            else:  # aborting: no timers, no signal check
                self._receive_ready(POLL_MAX_S)
            want &= {m.rank for m in self.members.live()} | set(self.worker_logs)

    # -- checkpoints and closing ---------------------------------------------------------------------
    def checkpoint(self) -> None:
        if self.rangeset is not None and self.rangeset.lost:
            return  # a range is gone: the last checkpoint stays the one to resume from
        self.sync_params(velocity=True)  # every range at this step, in one file: atomic as a set
        save_checkpoint(self.rundir.path, self)
        self.last_checkpoint = self.step
        self.events("checkpoint", step=self.step)

    def close(self) -> None:
        """Release everything on every exit path; the spans gathered so far reach comm.jsonl."""
        for member in list(self.members.members.values()):
            self.forget(member)
        self.segments.close_retired()
        # A colocated worker still in its thread keeps sockets open: terminating the context would then
        # wait for them forever (the process exits anyway; the thread is a daemon).
        if self.rangeset is not None:  # after the workers and the last checkpoint: their logs, then STOP
            self.rangeset.stop_all(getattr(self, "stop_reason", "server stopped"), STOP_ACK_S)
        if self.colocated is None or self.colocated.stop():
            self.router.close()
        try:
            self.comm.server(self.log)
        except UserError:  # a full disk: the error that stopped the run is the one to report
            pass
        self.comm.close()
        self.updates.close()
        self.events.close()
