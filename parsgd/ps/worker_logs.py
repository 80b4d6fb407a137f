"""How a worker's spans reach its server: LOGS chunks while it trains, the rest at STOP, and the empty
LOGS that says it leaves (a mixin of ps/worker.Worker, which holds sock, log, kr, cfg, rank, session).

    python -m pytest tests/test_ps.py -q
"""
from __future__ import annotations

import numpy as np
import zmq

from parsgd.ps import protocol as proto
from parsgd.ps.channel import SEND_TIMEOUT_S, send_within


class ShippedLogs:
    """The worker's LOGS sending; `_send(frames, timeout_s)` is the worker's own (ended by a stop request)."""

    def _ship_logs(self, timeout_s: float = 0.0) -> None:
        """The spans not sent yet, in LOGS chunks no larger than a gradient frame (the server streams
        them into comm.jsonl). During training a chunk that cannot leave at once waits for the next
        try: a vanished server must not delay the worker noticing it."""
        rows = max(1, self.kr.n * np.dtype(self.cfg.dtype).itemsize // (proto.SPAN_COLUMNS * 8))
        for chunk in self.log.unshipped(rows):
            if not self._send(proto.Logs(self.incarnation, self.session, self.rank, chunk).to_frames(), timeout_s):
                break
            self.log.shipped_one(chunk)

    def _leave(self) -> None:
        """On a signal: the empty LOGS that says this session leaves, if it has one (best effort, 0.2 s)."""
        if getattr(self, "rank", None) is not None and self.sock is not None:
            send_within(self.sock, proto.Logs(self.incarnation, self.session, self.rank, np.zeros((0, proto.SPAN_COLUMNS))).to_frames(), 0.2)
            self.sock.setsockopt(zmq.LINGER, 200)

    def _send_logs(self) -> None:
        """At STOP: the rest of the spans, then an empty chunk that ends them."""
        self.sock.setsockopt(zmq.LINGER, 2000)  # the LOGS must leave before the socket closes
        self._ship_logs(SEND_TIMEOUT_S)
        self._send(proto.Logs(self.incarnation, self.session, self.rank, np.zeros((0, proto.SPAN_COLUMNS))).to_frames())

