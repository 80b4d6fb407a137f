"""The worker's end of its connection: sends that never block for long, receives within a size
limit, and the short spin that keeps a vCPU awake for the next TASK.

    python -m pytest tests/test_ps.py -q

Used by `worker.Worker`, in its own process or colocated in the server's (`colocated.py`).
"""
from __future__ import annotations

import os
import time

import zmq

from parsgd.ps import protocol as proto

SEND_TIMEOUT_S = 2.0          # a send waits this long for a connected server (IMMEDIATE=1 queues nothing before)
# After a GRAD the next TASK usually follows within the server's aggregate + update (~0.1-1 ms).
# Polling for it (yielding the core between polls) for this long before blocking keeps this CPU
# awake: on VMs an idle vCPU halts, and waking it cost ~1 ms mean (p90 ~2.5 ms) per step; the spin
# cut the step-time tail by that much in benchmarks/. sched_yield lets the server and other
# workers run, but with more workers than cores the spinners still slow the ones computing: then no spin.
SPIN_S = 0.005


def send_within(sock: zmq.Socket, frames, timeout_s: float = SEND_TIMEOUT_S) -> bool:
    """Send within timeout_s or give up (False): with IMMEDIATE=1 a plain send blocks while no
    server is connected."""
    return bool(sock.poll(int(timeout_s * 1000), zmq.POLLOUT)) and send_now(sock, frames)


def send_now(sock: zmq.Socket, frames) -> bool:
    """Send if the socket takes it without waiting (False if not)."""
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True


def spin_for_message(sock: zmq.Socket, seconds: float = SPIN_S) -> bool:
    """Poll without blocking, yielding the core in between, for up to `seconds`; True if a message waits."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if sock.poll(0):
            return True
        os.sched_yield()
    return False


def recv_frames_within(sock: zmq.Socket, max_bytes: int, echo):
    """The frames of one message, or None (and a line to `echo`) if it was over `max_bytes`."""
    try:
        return proto.recv_frames(sock, 2, max_bytes)
    except proto.ProtocolError as exc:
        echo(f"worker: dropped an oversized message ({exc})")
        return None


def recv_message(sock: zmq.Socket, max_bytes: int, echo):
    """One decoded message, or None if it was oversized or malformed."""
    frames = recv_frames_within(sock, max_bytes, echo)
    try:
        return None if frames is None else proto.decode(frames)
    except proto.ProtocolError:
        return None
