"""One-way latency on emulated links without netem: a TCP relay in a host that delays every byte.

    ip netns exec parsgd-PID-server python -m parsgd.cluster.relay 4999 0.005   # what EmulatedNet starts

Every TCP connection that arrives at an emulated host (on `eth0`) is redirected by an nftables rule
(`redirect to :RELAY_PORT`, in that host's namespace only) to this relay, which reads the original
destination (SO_ORIGINAL_DST), connects to it inside the host, and copies bytes both ways. Each chunk
read is queued with its release time, arrival + delay, and written out when that time has come:
timestamp release, as toxiproxy's latency toxic (github.com/Shopify/toxiproxy, toxics/latency.go) and
netem's `delay` do, never a sleep per chunk (which would cap a stream at chunk / delay). Each
connection has one listening end, so each byte between two hosts is delayed exactly once: D one way,
2D on a round trip, and the link's rate (tbf) is left as it was. Releases keep the order of a
direction (a release is never before the previous one's), reads are up to CHUNK_BYTES, and a
direction holding more than QUEUE_LIMIT_BYTES stops reading (TCP back-pressure) until it drains.

Control lines on stdin (the launcher's pipe; EOF ends the relay, as does its parent's death):
  `delay SECONDS`                     the base one-way delay from now on
  `latency ADDRESS EXTRA SECONDS`     EXTRA seconds more for connections with ADDRESS, SECONDS long
The relay prints `listening` once bound, and answers each control line with `ok` (or `error: ...`).
select(2) is used, not epoll: it waits in microseconds, epoll in whole milliseconds.
"""
from __future__ import annotations

import collections
import ctypes
import os
import selectors
import socket
import struct
import sys
import time

RELAY_PORT = 4999             # in each host's namespace; no parsgd endpoint uses it (probe 5600, ephemeral ports)
CHUNK_BYTES = 1 << 20         # one recv: large, so a Python relay keeps up with 1gbit and more
QUEUE_LIMIT_BYTES = 8 << 20   # per direction: beyond it the relay stops reading (bounded memory)
CONNECT_TIMEOUT_S = 5.0       # to the original destination, inside the host
IDLE_WAKE_S = 1.0             # the loop wakes at least this often
WAKE_AHEAD_S = 100e-6         # a chunk goes this much before its time at most: select oversleeps ~100-200 us
SO_ORIGINAL_DST = 80          # linux/netfilter_ipv4.h
PR_SET_TIMERSLACK = 29        # linux/prctl.h


class Direction:
    """Bytes from `src` to `dst`: a FIFO of [release time (monotonic s), memoryview]."""

    def __init__(self, src: socket.socket, dst: socket.socket):
        self.src, self.dst = src, dst
        self.queue: collections.deque = collections.deque()
        self.queued = 0
        self.last_release = 0.0
        self.eof = False          # src said EOF: shut dst's write side once the queue is empty
        self.shut = False

    def arrive(self, data: bytes, now: float, delay: float) -> None:
        release = max(now + delay, self.last_release)
        self.last_release = release
        self.queue.append([release, memoryview(data)])
        self.queued += len(data)

    def flush(self, now: float) -> bool:
        """Writes every chunk due by `now`; False when dst would block (wait for it to be writable)."""
        while self.queue and self.queue[0][0] <= now:
            entry = self.queue[0]
            try:
                sent = self.dst.send(entry[1])
            except BlockingIOError:
                return False
            self.queued -= sent
            if sent < len(entry[1]):
                entry[1] = entry[1][sent:]
                return False
            self.queue.popleft()
        if self.eof and not self.queue and not self.shut:
            self.shut = True
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return True

    def next_release(self) -> float | None:
        return self.queue[0][0] if self.queue else None


class Pair:
    """One relayed connection: `outer` (from the other host), `inner` (to the original destination)."""

    def __init__(self, outer: socket.socket, inner: socket.socket, peer: str):
        self.peer = peer
        self.up, self.down = Direction(outer, inner), Direction(inner, outer)
        self.blocked: set = set()  # directions waiting for their dst to be writable

    def closed(self) -> bool:
        return self.up.shut and self.down.shut


class Relay:
    """The relay's state and loop (see the module doc). `delay_s`: the base one-way delay."""

    def __init__(self, port: int, delay_s: float, control=None):
        self.delay_s = delay_s
        self.extra: dict[str, tuple[float, float]] = {}  # address -> (extra seconds, until monotonic)
        self.sel = selectors.SelectSelector()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("0.0.0.0", port))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.control, self.pending = control, b""  # control: a file descriptor (stdin's), or None
        if control is not None:
            self.sel.register(control, selectors.EVENT_READ, "control")
        self.pairs: dict[socket.socket, tuple[Pair, Direction]] = {}  # src socket -> its pair, direction it feeds
        self.running = True

    def delay_for(self, peer: str, now: float) -> float:
        extra, until = self.extra.get(peer, (0.0, 0.0))
        return self.delay_s + (extra if now < until else 0.0)

    def _accept(self) -> None:
        try:
            outer, addr = self.listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        try:
            raw = outer.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, ip = struct.unpack_from("!2xH4s", raw)
            inner = socket.create_connection((socket.inet_ntoa(ip), port), timeout=CONNECT_TIMEOUT_S)
        except OSError:
            outer.close()  # nothing listens there: the client sees the connection close, as a refusal
            return
        pair = Pair(outer, inner, addr[0])
        for s in (outer, inner):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pairs[outer], self.pairs[inner] = (pair, pair.up), (pair, pair.down)
        self._interest(pair)

    def _interest(self, pair: Pair) -> None:
        """Registers each socket of `pair` for reading (unless its direction is full or at EOF) and
        writing (when a direction into it is blocked)."""
        for d, back in ((pair.up, pair.down), (pair.down, pair.up)):
            events = 0
            if not d.eof and d.queued < QUEUE_LIMIT_BYTES:
                events |= selectors.EVENT_READ
            if back in pair.blocked:
                events |= selectors.EVENT_WRITE
            try:
                key = self.sel.get_key(d.src)
            except KeyError:
                key = None
            if key is None and events:
                self.sel.register(d.src, events, "data")
            elif key is not None and not events:
                self.sel.unregister(d.src)
            elif key is not None and key.events != events:
                self.sel.modify(d.src, events, "data")

    def _drop(self, pair: Pair) -> None:
        for s in (pair.up.src, pair.down.src):
            self.pairs.pop(s, None)
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _read(self, sock: socket.socket, now: float) -> None:
        pair, d = self.pairs[sock]
        try:
            data = sock.recv(CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError:
            self._drop(pair)
            return
        if data:
            d.arrive(data, now, self.delay_for(pair.peer, now))
        else:
            d.eof = True
            if not d.queue:
                d.flush(now)

    def _commands(self) -> None:
        data = os.read(self.control, 4096)
        if not data:
            self.running = False
            return
        self.pending += data
        while b"\n" in self.pending:
            line, _, self.pending = self.pending.partition(b"\n")
            self._command(line.decode(errors="replace"))

    def _command(self, line: str) -> None:
        words = line.split()
        try:
            if words[:1] == ["delay"] and len(words) == 2:
                self.delay_s = max(0.0, float(words[1]))
            elif words[:1] == ["latency"] and len(words) == 4:
                self.extra[words[1]] = (max(0.0, float(words[2])), time.monotonic() + float(words[3]))
            else:
                raise ValueError(line.strip())
            print("ok", flush=True)
        except (ValueError, IndexError) as exc:
            print(f"error: not a relay command: {exc}", flush=True)

    def step(self) -> None:
        """One turn of the loop: wait for a socket or the next release, then act and flush."""
        releases = [t for pair, d in self.pairs.values() if d not in pair.blocked
                    if (t := d.next_release()) is not None]
        now = time.monotonic()
        timeout = IDLE_WAKE_S if not releases else max(0.0, min(min(releases) - now - WAKE_AHEAD_S, IDLE_WAKE_S))
        events = self.sel.select(timeout)
        now = time.monotonic()
        due = now + WAKE_AHEAD_S
        for key, mask in events:
            if key.data == "accept":
                self._accept()
            elif key.data == "control":
                self._commands()
            elif key.fileobj in self.pairs:
                pair, d = self.pairs[key.fileobj]
                if mask & selectors.EVENT_WRITE:  # the direction into this socket may go on
                    pair.blocked.discard(pair.down if d is pair.up else pair.up)
                if mask & selectors.EVENT_READ and key.fileobj in self.pairs:
                    self._read(key.fileobj, now)
        for pair in {p for p, _ in self.pairs.values()}:
            if pair.up.src not in self.pairs:
                continue
            try:
                for d in (pair.up, pair.down):
                    if d not in pair.blocked and not d.flush(due):
                        pair.blocked.add(d)
            except OSError:
                self._drop(pair)
                continue
            if pair.closed():
                self._drop(pair)
            else:
                self._interest(pair)

    def run(self) -> None:
        print("listening", flush=True)
        while self.running:
            self.step()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m parsgd.cluster.relay PORT DELAY_SECONDS  (control lines on stdin)", file=sys.stderr)
        return 2
    try:  # the kernel may wake a sleeper up to 50 us late by default: releases are more exact without it
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    Relay(int(argv[0]), float(argv[1]), control=sys.stdin.fileno()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
