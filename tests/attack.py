"""A hostile peer's toolbox for tests: raw TCP, a hand-made ZMTP handshake, pyzmq clients, RSS and events.

    from attack import zmtp_null_handshake, RssWatch, wait_event    # used by test_hostile and test_security
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import zmq

from parsgd import __version__
from parsgd.ps import protocol as proto
from procs import events

# ZMTP 3.0 greeting: signature, version 3.0, mechanism NULL, as-server 0, filler (64 bytes in all)
GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31
# READY command, short form: flags 0x04, size, "\x05READY", property Socket-Type = DEALER
_READY_BODY = b"\x05READY" + b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
READY_COMMAND = b"\x04" + bytes([len(_READY_BODY)]) + _READY_BODY


def host_port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def raw_connect(address: str, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(host_port(address), timeout=timeout)
    s.settimeout(timeout)
    return s


def read_until_closed(s: socket.socket, limit_s: float) -> tuple[bool, bytes]:
    """(closed by the peer within limit_s, bytes received meanwhile)."""
    got, deadline = b"", time.monotonic() + limit_s
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except OSError:  # ECONNRESET: closed too
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def zmtp_null_handshake(address: str) -> socket.socket:
    """A raw TCP socket that has completed the ZMTP 3 NULL handshake as a DEALER."""
    s = raw_connect(address)
    s.sendall(GREETING)
    greeting = b""
    while len(greeting) < 64:
        chunk = s.recv(64 - len(greeting))
        assert chunk, "the server closed the connection during the greeting"
        greeting += chunk
    assert greeting[0] == 0xFF and greeting[10] == 3 and greeting[12:16] == b"NULL", greeting
    s.sendall(READY_COMMAND)
    head = s.recv(2)  # the server's READY command
    assert head[:1] == b"\x04", head
    body = b""
    while len(body) < head[1]:
        body += s.recv(head[1] - len(body))
    assert body.startswith(b"\x05READY"), body
    return s


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssWatch(threading.Thread):
    """Samples a process's RSS every 20 ms; .peak after stop()."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.halt = pid, threading.Event()
        self.start_mb = self.peak = rss_mb(pid)

    def run(self):
        while not self.halt.wait(0.02):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self) -> "RssWatch":
        self.halt.set()
        self.join()
        return self


class PeakWatch(threading.Thread):
    """Calls `measure()` every `every` seconds until stop(); .peak is the largest value it returned."""

    def __init__(self, measure, every: float = 0.002):
        super().__init__(daemon=True)
        self.measure, self.every, self.halt = measure, every, threading.Event()
        self.peak = self.samples = 0

    def run(self):
        while not self.halt.wait(self.every):
            self.peak = max(self.peak, self.measure())
            self.samples += 1

    def stop(self) -> "PeakWatch":
        """Stop sampling, after one last sample of the state now."""
        self.halt.set()
        self.join()
        self.peak = max(self.peak, self.measure())
        self.samples += 1
        return self


def wait_event(run_dir, pred, timeout: float = 20.0, count: int = 1) -> list[dict]:
    """Wait until `count` events of events.jsonl satisfy pred; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in events(run_dir) if pred(e)]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{len(found)}/{count} matching events within {timeout} s"
            return found
        time.sleep(0.05)


def dealer(ctx: zmq.Context, address: str, identity: bytes | None = None, **options) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 1000  # long enough to deliver, short enough that ctx.term never hangs
    sock.sndtimeo = 5000  # a send with no pipe to the server raises zmq.Again, never hangs the test
    if identity is not None:
        sock.routing_id = identity
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(address)
    return sock


def hello(session: int, pid: int = 10**9, host: str = "attacker", version: int = proto.PROTOCOL_VERSION) -> list:
    if version != proto.PROTOCOL_VERSION:  # a foreign-protocol HELLO, refused with ERROR VERSION
        import msgpack
        return [msgpack.packb({"v": version, "type": "HELLO", "session": session})]
    return proto.Hello(__version__, version, host, pid, 0.0, session, "hostile").to_frames()


def recv_message(sock: zmq.Socket, timeout_s: float):
    """The next decoded message within timeout_s, or None."""
    if not sock.poll(int(timeout_s * 1000)):
        return None
    return proto.decode(sock.recv_multipart())


def server_answers(ctx: zmq.Context, address: str, timeout_s: float = 5.0) -> bool:
    """The server still serves: a foreign-version HELLO gets its ERROR VERSION reply."""
    sock = dealer(ctx, address)
    try:
        sock.send_multipart(hello(1, version=99))
        reply = recv_message(sock, timeout_s)
        return isinstance(reply, proto.Error) and reply.code == "VERSION"
    finally:
        sock.close(linger=0)
