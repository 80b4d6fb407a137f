"""A worker's links to the range servers 1..S-1 (`--servers S`): one DEALER socket each; pull their parts of
a step's parameters and push them its parts of a gradient, fanning out to all before gathering any.

    parsgd worker --connect tcp://127.0.0.1:5555       # WELCOME.servers names the range servers

The parts of server 0 (the coordinator) travel in TASK and GRAD as with one server; the others come
from and go to their owners directly (PULL -> PARAMS, PUSH -> ACK), through shared memory when a range
server is on the same host (ATTACHED names a segment: its parameters, then one gradient slot per
shard). GRAD is sent only once every range server has ACKed its part, so when the coordinator accepts
a GRAD, every range holds that shard's parts.
"""
from __future__ import annotations

import time

import numpy as np
import zmq

from parsgd.model.keyranges import KeyRanges
from parsgd.ps import protocol as proto
from parsgd.ps.channel import recv_frames_within, send_within
from parsgd.ps.shm import SessionBuffer, host_identity
from parsgd.ps.sockets import configure_dealer


class RangeLinks:
    """Sockets to range servers 1..S-1 of `kr` at `addresses`, for one worker session.

    `wait_s`: the longest a gather waits (then it gives up: None / False, and the worker goes back to
    its coordinator, which stops the run when a range server is lost). `stops` (ps/stops.py) ends a
    wait on SIGINT / SIGTERM; `log` records the spans (WorkerSpans).
    """

    def __init__(self, ctx: zmq.Context, addresses: list[str], kr: KeyRanges, keys_dir, incarnation: int,
                 session: int, rank: int, shards: int, dtype, stops, log, wait_s: float, echo,
                 coordinator: str | None = None):
        self.kr, self.incarnation, self.session, self.rank = kr, incarnation, session, rank
        self.stops, self.log, self.wait_s, self.echo = stops, log, wait_s, echo
        self.shards, self.dtype = shards, np.dtype(dtype)
        self.socks: dict[int, zmq.Socket] = {}
        self.bufs: dict[int, SessionBuffer | None] = {}
        self.max_bytes = kr.n * self.dtype.itemsize + 2 * proto.HEADER_MAX
        # server 0's part is pulled too (a data socket of its own beside the worker's main one), unless it
        # comes through shared memory (`coordinator` None): then every TASK arrives without waiting behind another's
        for r, address in ([(0, coordinator)] if coordinator else []) + list(enumerate(addresses, 1)):
            sock = ctx.socket(zmq.DEALER)
            configure_dealer(sock, self.max_bytes, keys_dir)
            sock.connect(address)
            self.socks[r] = sock
        self.poller = zmq.Poller()
        for sock in self.socks.values():
            self.poller.register(sock, zmq.POLLIN)

    def _send_all(self, make, ranks=None) -> None:
        """One message to each server of `ranks` (default: all linked), worker w starting with the server after
        its own rank: P workers pushing to S servers then load every server's link from the start, instead of
        all queuing on the same one first."""
        order = sorted(self.socks, key=lambda r: (r - self.rank - 1) % max(1, self.kr.servers))
        for r in order:
            sock = self.socks[r]
            if ranks is not None and r not in ranks:
                continue
            t = self.log.now()
            frames = make(r).to_frames()
            send_within(sock, frames, self.wait_s)
            self.log.add("send", getattr(self, "_step", -1), t, proto.frames_nbytes(frames), server=r)

    def _gather(self, want: type, match, ranks=None) -> dict[int, object] | None:
        """One `want` message from every server of `ranks` (default: all linked; `match(r, msg)` True), or
        None after wait_s."""
        ranks = set(self.socks) if ranks is None else set(ranks)
        got: dict[int, object] = {}
        deadline = time.monotonic() + self.wait_s
        while len(got) < len(ranks):
            left = deadline - time.monotonic()
            self.stops.check()
            if left <= 0:
                missing = sorted(ranks - set(got))
                self.echo(f"worker {self.rank}: no {want.TYPE} from server {missing[0]} (ranges "
                          f"{self.kr.describe(missing[0])}) within {self.wait_s:g} s")
                return None
            for sock, _ in self.poller.poll(int(min(left, 0.1) * 1000)):
                r = next(k for k, s in self.socks.items() if s is sock)
                t = self.log.now()
                frames = recv_frames_within(sock, self.max_bytes, self.echo)
                try:
                    msg = None if frames is None else proto.decode(frames)
                except proto.ProtocolError:
                    msg = None
                if isinstance(msg, proto.Error):
                    self.echo(f"worker {self.rank}: server {r} refused {msg.answers or 'a message'}: {msg.message}")
                    return None
                if isinstance(msg, want) and r in ranks and match(r, msg):
                    got[r] = msg
                    self.log.add("recv", getattr(self, "_step", -1), t, proto.frames_nbytes(frames), server=r)
        return got

    def attach(self) -> bool:
        """ATTACH to every range server; map the segments offered (same host). False if one does not answer."""
        ranges = [r for r in self.socks if r]
        self._send_all(lambda r: proto.Attach(self.incarnation, self.session, self.rank, host_identity()), ranges)
        got = self._gather(proto.Attached, lambda r, m: m.session == self.session, ranges)
        if got is None:
            return False
        for r, msg in got.items():
            self.bufs[r] = None
            if msg.shm:
                try:
                    self.bufs[r] = SessionBuffer.attach(msg.shm, self.kr.size(r), self.shards, self.dtype)
                except (OSError, ValueError):
                    pass  # through the socket then; the range server reads PUSH payloads all the same
        return True

    def pull(self, step: int, full: np.ndarray) -> list[int] | None:
        """The servers' parameters for `step` into `full` ((n,), the whole vector; server 0's part only when it
        is linked, not in shared memory); returns the versions of the servers it pulled from (1..S-1, and
        0 first when linked: a later version than its TASK's under ssp / async), or None when one did not
        answer."""
        self._step = step
        self._send_all(lambda r: proto.Pull(self.incarnation, self.session, step))
        got = self._gather(proto.Params, lambda r, m: m.step == step and m.session == self.session)
        if got is None:
            return None
        t = self.log.now()
        for r, msg in got.items():
            part = msg.params if msg.params is not None else self.bufs[r].params
            self.kr.scatter(part, r, full)
        self.log.add("deserialize", step, t)
        return [got[r].version for r in sorted(got)]

    def push(self, step: int, shard: int, grad: np.ndarray, parts: bool = False,
             packed: list | None = None) -> bool | None:
        """Its parts of `grad` ((n,), the whole gradient of shard `shard`) to their owners (`packed[r]`, the
        encoded part of server r, instead over a socket with --compress); True when every one took its part
        as finite, False if one found a NaN or Inf, None when one did not answer.
        `parts`: --overlap sent them in PARTs already, so each PUSH carries no payload (docs/protocol.md 16)."""
        self._step = step

        def push(r):
            if parts:
                return proto.Push(self.incarnation, self.session, step, shard, None)
            buf = self.bufs.get(r)
            if buf is not None:
                self.kr.gather(grad, r, out=buf.slots[shard])
                return proto.Push(self.incarnation, self.session, step, shard, None)
            return proto.Push(self.incarnation, self.session, step, shard,
                              packed[r] if packed else np.ascontiguousarray(self.kr.gather(grad, r)))
        ranges = [r for r in self.socks if r]  # server 0's part goes ahead of the GRAD (ps/worker.py)
        self._send_all(push, ranges)
        got = self._gather(proto.Ack, lambda r, m: m.step == step and m.shard == shard and m.session == self.session,
                           ranges)
        return None if got is None else all(m.finite for m in got.values())

    def close(self) -> None:
        for buf in self.bufs.values():
            if buf is not None:
                buf.close()
        for sock in self.socks.values():
            sock.close(linger=0)
        self.socks, self.bufs = {}, {}
