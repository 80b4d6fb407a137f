"""A worker: registers with the server, loads the data itself, computes shard gradients until STOP.

    parsgd worker --connect tcp://127.0.0.1:5555

It may start before the server (it retries HELLO until --connect-timeout). A heartbeat thread
with its own socket keeps the session alive while a long shard computes. If the server goes
silent for liveness x heartbeat, the worker registers again (a restarted server is welcome) and
gives up after --connect-timeout with a clear message.
"""
from __future__ import annotations

import os
import random
import time

import click
import numpy as np
import zmq
from threadpoolctl import threadpool_limits

from parsgd import __version__
from parsgd.config import RunConfig
from parsgd.data import load_dataset
from parsgd.model.keyranges import key_ranges
from parsgd.model.mlp import Workspace, loss_and_grad
from parsgd.ps import protocol as proto
from parsgd.ps.channel import (SEND_TIMEOUT_S, recv_frames_within, recv_message, send_now,
                               spin_for_message)
from parsgd.ps.commlog import WorkerSpans
from parsgd.ps.compression import WireCodec
from parsgd.ps.faults import FaultPlan
from parsgd.ps.heartbeat import Heartbeats
from parsgd.ps.overlap_worker import PartsLost, WorkerOverlap
from parsgd.ps.range_links import RangeLinks
from parsgd.ps.rows import ShardRows
from parsgd.ps.shm import SessionBuffer, host_identity
from parsgd.ps.sockets import configure_dealer, dealer_context
from parsgd.ps.stops import Stopped, StopSignals, WorkerExit
from parsgd.ps.worker_logs import ShippedLogs
from parsgd.ps.worker_options import WorkerOptions, data_key  # noqa: F401 (WorkerOptions: imported from here)

HELLO_RETRY_S = 1.0           # resend HELLO this often while no server answers (Lazy Pirate)
STATUS_EVERY_S = 5.0
# A worker learns the model size only from WELCOME, but libzmq applies MAXMSGSIZE only to new
# connections: cap frames at the protocol's largest payload (the server is one the user chose).
MAX_FRAME_BYTES = proto.MAX_ELEMENTS * 8 + proto.HEADER_MAX
# Spans go to the server in LOGS chunks this often while the worker trains (and all at STOP), so a
# SIGKILLed worker loses at most this much of its timeline.
LOGS_EVERY_S = 1.0


class Worker(ShippedLogs):
    """A parameter-server worker: registers (HELLO / WELCOME / READY), computes the shards it is sent,
    heartbeats from its own thread, and ships its comm spans when the server says STOP.

    `run()` returns 0 after a STOP; it raises WorkerExit (a UserError, exit 1) when no server
    answers within `opts.connect_timeout_s` seconds or the server refuses it (version, data), Stopped
    on SIGTERM or once `halt` is set, KeyboardInterrupt on SIGINT (both after saying it leaves).
    Colocated in the server's process (ps/colocated.py), it gets that process's ZeroMQ context `ctx`
    (inproc:// needs it; it is not terminated here) and `data`, the server's (RunConfig, Dataset):
    that Dataset is used if WELCOME asks for the same data.
    """

    def __init__(self, opts: WorkerOptions, echo=click.echo, ctx: zmq.Context | None = None, data=None):
        self.opts, self.echo = opts, echo
        self.own_ctx = ctx is None
        self.ctx = dealer_context(opts.connect) if ctx is None else ctx
        self.sock = None
        self.stops = StopSignals()  # SIGINT / SIGTERM as a flag every wait sees (why: ps/stops.py)
        self.halt = self.stops.halt
        self.log = WorkerSpans(LOGS_EVERY_S)
        self.data, self.data_key = (None, None) if data is None else (data[1], data_key(data[0]))
        self.heartbeats: Heartbeats | None = None
        self.buf: SessionBuffer | None = None
        self.links: RangeLinks | None = None
        self.faults = FaultPlan.parse(opts.faults, echo=echo, stream=opts.name, sleep=self.stops.nap)
        self._limits = threadpool_limits(1)  # P workers share the cores: one BLAS thread each
        self.max_msg_bytes = 2 * proto.HEADER_MAX  # until WELCOME says how large the model is

    # -- registration ----------------------------------------------------------------------------
    def _new_socket(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = self.ctx.socket(zmq.DEALER)
        configure_dealer(self.sock, MAX_FRAME_BYTES, self.opts.keys_dir)
        self.sock.connect(self.opts.connect)

    def _register(self) -> proto.Welcome:
        """HELLO until a WELCOME arrives or --connect-timeout runs out."""
        start = time.monotonic()
        deadline = start + self.opts.connect_timeout_s
        next_status = start + STATUS_EVERY_S
        self.session = random.SystemRandom().getrandbits(62) + 1
        self.log.settle()  # the previous session's spans keep its server's clock
        self._new_socket()
        while True:
            hello = proto.Hello(__version__, proto.PROTOCOL_VERSION, host_identity(), os.getpid(),
                            self.log.now(), self.session, self.opts.name)
            t_sent = self.log.now()
            if self._send(hello.to_frames(), HELLO_RETRY_S) and self.stops.poll(self.sock, HELLO_RETRY_S):
                msg = recv_message(self.sock, self.max_msg_bytes, self.echo)
                if isinstance(msg, proto.Welcome) and msg.session == self.session:
                    self.log.registered(t_sent, self.log.now(), msg.t_server, (msg.incarnation, msg.rank))
                    return msg
                if isinstance(msg, proto.Error) and msg.code in ("VERSION", "BUSY"):
                    raise WorkerExit(f"server refused this worker: {msg.message}")
                continue
            now = time.monotonic()
            if now >= deadline:
                keys = "" if self.opts.keys_dir else (
                    "; if that server was started with --keys, this worker needs --keys DIR too")
                raise WorkerExit(f"no parameter server answered at {self.opts.connect} within "
                                 f"{self.opts.connect_timeout_s:g} s: start `parsgd server` there, or check "
                                 f"--connect and --connect-timeout{keys}")
            if now >= next_status:
                self.echo(f"waiting for the server at {self.opts.connect}, {deadline - now:.0f} s left")
                next_status = now + STATUS_EVERY_S
            self._new_socket()  # Lazy Pirate: a fresh socket rather than a queue of stale HELLOs

    def _setup(self, welcome: proto.Welcome) -> None:
        cfg = RunConfig.from_dict(welcome.config)
        if self.opts.data_dir:
            cfg = cfg.replace(data_dir=self.opts.data_dir)
        key = data_key(cfg)
        self.cfg, self.rank, self.incarnation = cfg, welcome.rank, welcome.incarnation
        self.hb_s, self.liveness = welcome.heartbeat_s, welcome.liveness
        self._start_heartbeats()
        if key != self.data_key:
            with self.stops.raising():  # no ZeroMQ in there: a signal may raise at once
                self.data = load_dataset(cfg.dataset, cfg.data_dir, cfg.num_samples, cfg.seed, cfg.dtype,
                                         log=self.echo)
            self.data_key = key
        self.sizes = cfg.sizes
        self.ws = Workspace(self.sizes, cfg.dtype)
        self.kr = key_ranges(cfg.sizes, cfg.dtype, cfg.servers, cfg.shard_by)
        n = self.kr.size(0)  # the coordinator's part (the whole vector with one server)
        self.grads = np.zeros((cfg.workers, n), cfg.dtype)  # one per shard: a sent buffer is never reused early
        self.codec = WireCodec.for_run(cfg, self.kr)  # a new session: a new residual (ps/compression.py)
        self._close_links()
        if welcome.servers:  # --servers S: the other servers' parts come from and go to them directly
            self.full = np.zeros(self.kr.n, cfg.dtype)           # the whole vector: every part of a step
            self.full_grad = np.zeros(self.kr.n, cfg.dtype)
            self.links = RangeLinks(self.ctx, welcome.servers, self.kr, self.opts.keys_dir, self.incarnation,
                                    self.session, self.rank, cfg.workers, cfg.dtype, self.stops, self.log,
                                    self.hb_s * self.liveness, self.echo, None if welcome.shm else self.opts.connect)
        self.shard_rows = ShardRows(cfg, self.data, self.log)
        self.overlap = WorkerOverlap(self) if cfg.overlap != "none" else None  # --overlap: ps/overlap_worker.py
        self._close_buf()
        if welcome.shm:
            try:
                self.buf = SessionBuffer.attach(welcome.shm, n, cfg.workers, cfg.dtype)
            except (OSError, ValueError) as exc:
                self.echo(f"shared memory unavailable ({exc}); parameters will travel through the socket")
        self.max_msg_bytes = n * np.dtype(cfg.dtype).itemsize + 2 * proto.HEADER_MAX
        if self.links is not None and not self.links.attach():
            raise WorkerExit(f"worker {self.rank}: the range servers {', '.join(welcome.servers)} did not answer")
        self._send(proto.Ready(self.incarnation, self.session, self.data.fingerprint(), len(self.data.y_train),
                               len(self.data.y_test), self.buf is not None, self.data.name,
                               self.data.x_train.dtype.name, self.opts.faults.strip()).to_frames())
        self.tasks_done = 0
        # See channel.SPIN_S. Colocated too, though it then shares the interpreter lock with the server:
        # measured at P=2, batch 256, 1.51 ms a step with the spin, 1.73 without (P=1: 1.71 / 1.69).
        self.spin = cfg.workers <= len(os.sched_getaffinity(0))
        self.echo(f"worker {self.rank}: data loaded, READY sent to {self.opts.connect}"
                  f"{' (shared memory)' if self.buf else ''}; waiting for work")

    def _start_heartbeats(self) -> None:
        self._stop_heartbeats()
        self.heartbeats = Heartbeats(self.ctx, self.opts, self.incarnation, self.session, self.hb_s)
        self.heartbeats.start()

    def _stop_heartbeats(self) -> None:
        if self.heartbeats is not None:
            self.heartbeats.halt.set()
            self.heartbeats.join(timeout=2)
            if not self.heartbeats.is_alive():  # else kept: a colocated worker's context must not be ended
                self.heartbeats = None

    def _close_links(self) -> None:
        self.links = self.links.close() if self.links is not None else None  # close() returns None

    def _close_buf(self) -> None:
        if self.buf is not None:
            self.buf.close()
            self.buf = None

    # -- work --------------------------------------------------------------------------------------
    def run(self) -> int:
        """Register, work until STOP (exit 0); re-register after a lost server or a stale session."""
        with self.stops.catching():  # until close() is done: a signal then only sets a flag
            try:
                while True:
                    self._setup(self._register())
                    outcome = self._work()
                    if outcome == "stop":
                        return 0
                    self.echo(f"worker {self.rank}: {outcome}; registering again")
            except (Stopped, KeyboardInterrupt):
                self._leave()  # so the server reports it left, not that it died, and moves its shard now
                raise
            finally:
                self.close()

    def _work(self) -> str:
        silent_limit = self.hb_s * self.liveness
        last_heard = time.monotonic()
        spin = False
        while True:
            self.stops.check()
            t = self.log.now()
            ready = (spin and spin_for_message(self.sock)) or self.stops.poll(self.sock, min(silent_limit, 1.0))
            spin = False
            if not ready:
                if time.monotonic() - last_heard > silent_limit:
                    return f"server silent for {time.monotonic() - last_heard:.1f} s"
                continue
            waited = self.log.now()
            frames = self._recv_frames()
            last_heard = time.monotonic()
            if frames is None:
                continue
            recvd = self.log.now()
            try:
                msg = proto.decode(frames)
            except proto.ProtocolError as exc:
                self.echo(f"worker {self.rank}: ignored a bad message from the server ({exc})")
                continue
            if isinstance(msg, proto.Task):
                if msg.incarnation != self.incarnation or msg.session != self.session:
                    continue
                self.log.task_stamp(msg.t_send, waited)
                # Idle time before a session's first task is start-up, not a step's cost: step -1.
                self.log.add("wait", msg.step if self.tasks_done else -1, t, end=waited)
                self.log.add("recv", msg.step, waited, proto.frames_nbytes(frames), end=recvd, server=0)
                self.log.add("deserialize", msg.step, recvd)
                self.heartbeats.tasks += 1  # read (a droptask fault loses it after that)
                if self.faults.drop_task():
                    continue
                self.heartbeats.busy = True
                try:
                    deaf = self._compute(msg)
                finally:  # busy time is not the server's silence: it sends a busy worker nothing
                    self.heartbeats.busy, last_heard = False, time.monotonic()
                if deaf:  # fault injection: alive and heartbeating, but never reading its socket
                    self.stops.nap(self.opts.connect_timeout_s)
                    return "deaf for --connect-timeout (fault injection)"
                self.tasks_done += 1
                self.shard_rows.prefetch(msg, self.rank)
                spin = self.spin
                if self.log.due():
                    self._ship_logs()
            elif isinstance(msg, proto.Stop):
                self._send_logs()
                self.echo(f"worker {self.rank}: stopped by the server ({msg.reason})")
                return "stop"
            elif isinstance(msg, proto.Error):
                if msg.code == "STALE":
                    return f"the server does not know this session ({msg.message})"
                raise WorkerExit(f"server refused this worker: {msg.message}")

    def _compute(self, task: proto.Task) -> bool:
        """Compute and push one shard's gradient; True if a `deaf` fault says to stop reading."""
        self.faults.before_compute(task.step, self.rank)
        t = self.log.now()
        idx, rows = self.shard_rows.gather(task)
        params = task.params if task.params is not None else self.buf.params if self.buf is not None else None
        slot = self.buf.slots[task.shard] if self.buf is not None else self.grads[task.shard]
        grad, versions = slot, []
        if self.links is not None:  # the whole vector: every part pulled now (server 0's in its segment if shm)
            if params is not None:
                self.kr.scatter(params, 0, self.full)
            versions = self.links.pull(task.step, self.full)
            if versions is None:
                return False  # a range server is gone: the coordinator reassigns the shard or stops the run
            params, grad = self.full, self.full_grad
        # The shard's share of the batch mean (sum of its row gradients / batch rows): the server only adds.
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite result is the server's to judge
            if self.overlap is not None:  # the parts leave as backprop finishes them (and arrive, params None)
                try:
                    loss_sum, correct = self.overlap.compute(task, params, rows, self.data.y_train[idx], grad,
                                                             1.0 / task.batch)
                except PartsLost as exc:
                    self.echo(f"worker {self.rank}: shard {task.shard} of step {task.step} abandoned ({exc})")
                    return False
            else:
                loss_sum, correct = loss_and_grad(params, self.sizes, rows, self.data.y_train[idx], grad, self.ws,
                                                  scale=1.0 / task.batch)
                self.faults.corrupt(task.step, self.rank, grad)
        self.faults.straggle(self.log.now() - t)
        end = self.log.add("compute", task.step, t)
        finite = True
        # --compress: grad becomes what the servers decode; `packed` per server the bytes that travel
        packed, ef_seq = self.codec.push(grad, task.step, task.shard) if self.codec else (None, -1)
        if self.links is not None:  # every part to its owner at once; the GRAD once every range holds its own
            self.kr.gather(grad, 0, out=slot)
            if self.buf is None and self.overlap is None:  # server 0's part ahead of the GRAD, same connection
                self._send(proto.Push(self.incarnation, self.session, task.step, task.shard,
                                      packed[0] if packed else slot).to_frames(), self.hb_s * self.liveness)
            finite = self.links.push(task.step, task.shard, grad, parts=self.overlap is not None, packed=packed)
            if finite is None:
                return False
        sent = self.buf is not None or self.links or self.overlap  # the gradient is in shm, PUSHes or PARTs
        msg = proto.Grad(self.incarnation, self.session, task.step, task.shard, task.lo, task.hi, idx.size,
                         loss_sum, correct, end - t, None if sent else packed[0] if packed else slot, finite,
                         versions if self.cfg.consistency != "bsp" else [], ef_seq)
        frames = self.faults.mangle(task.step, msg, self.cfg.workers).to_frames()
        t = self.log.add("serialize", task.step, end)
        for copy in self.faults.outgoing(task.step, self.rank):
            self._send(frames, self.hb_s * self.liveness)  # unsent if the server is gone: _work notices
        self.log.add("send", task.step, t, proto.frames_nbytes(frames), server=0)
        return self.faults.after_push(task.step)

    def _send(self, frames, timeout_s: float = SEND_TIMEOUT_S) -> bool:
        """send_within, ended early (Stopped, KeyboardInterrupt) by a stop request."""
        return self.stops.poll(self.sock, timeout_s, zmq.POLLOUT) and send_now(self.sock, frames)

    def _recv_frames(self):
        return recv_frames_within(self.sock, self.max_msg_bytes, self.echo)

    def close(self) -> None:
        self._stop_heartbeats()
        self._close_links()
        self._close_buf()
        if self.sock is not None:
            self.sock.close()
        if self.own_ctx:
            self.ctx.term()

