"""The worker's heartbeat thread: its own DEALER socket, a HEARTBEAT every interval, busy or not.

    python -m pytest tests/test_faults.py -q -k busy

Liveness must not depend on the main thread, which may compute one shard for longer than the
server's dead-peer time. The heartbeat says whether the worker is busy: the server then sends it
nothing it could not read now (see README, Faults).
"""
from __future__ import annotations

import threading

import zmq

from parsgd.ps import protocol as proto
from parsgd.ps.channel import send_now
from parsgd.ps.sockets import configure_dealer


class Heartbeats(threading.Thread):
    """Sends HEARTBEAT every `interval` seconds to `opts.connect` (with `opts.keys_dir`) from its own
    socket, whatever the main thread is doing; the main thread sets `busy` while it computes and
    counts the TASKs it reads in `tasks`.
    Stop it with `halt.set()`; a full queue drops a heartbeat rather than blocking."""

    def __init__(self, ctx, opts, incarnation: int, session: int, interval: float):
        super().__init__(daemon=True, name="parsgd-heartbeat")
        self.ctx, self.opts, self.interval = ctx, opts, interval
        self.incarnation, self.session = incarnation, session
        self.busy = False          # set by the main thread while it computes: the server then sends it nothing
        self.tasks = 0             # TASKs the main thread has read: the server tells a deaf worker by it
        self.halt = threading.Event()

    def run(self):
        sock = self.ctx.socket(zmq.DEALER)
        configure_dealer(sock, proto.HEADER_MAX, self.opts.keys_dir)
        sock.connect(self.opts.connect)
        try:
            while not self.halt.wait(self.interval):
                send_now(sock, proto.Heartbeat(self.incarnation, self.session, self.busy, self.tasks).to_frames())
        finally:
            sock.close(linger=0)
