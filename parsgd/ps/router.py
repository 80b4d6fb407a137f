"""The server's transport: one ROUTER socket that moves messages and knows nothing of training.

    python -m pytest tests/test_hostile.py -q      # what it refuses, against a real server

Like ps-lite's `Van`: it binds, receives a message frame by frame within the size limits (what is
too long is drained and refused before it is decoded), and sends without ever blocking
(ROUTER_MANDATORY + NOBLOCK: a full or vanished peer is an error at once, never a silent drop).
"""
from __future__ import annotations

import zmq

from parsgd.config import ServerOptions
from parsgd.ps import protocol as proto
from parsgd.ps.sockets import BindError, configure_router

CLOSE_LINGER_MS = 1000        # a closing socket gets this long to deliver the STOPs just sent (0 would drop them)


class Router:
    """Binds `opts.bind` (CURVE with `opts.keys_dir`); frames above `max_frame_bytes` never reach Python.

    Raises BindError (a UserError) when the address is refused or taken, KeysError for bad keys.
    """

    def __init__(self, opts: ServerOptions, max_frames: int, max_bytes: int):
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.auth = None
        try:
            self.auth = configure_router(self.ctx, self.sock, opts, max_bytes)
            self.sock.bind(opts.bind)
        except zmq.ZMQError as exc:
            self.close()
            raise BindError(f"cannot bind {opts.bind}: {exc}; choose another --bind address or port") from None
        except BaseException:
            self.close()
            raise
        self.address = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)

    def bind_also(self, address: str) -> None:
        """Listen on a second endpoint too (the colocated worker's inproc://)."""
        self.sock.bind(address)

    def poll(self, timeout_s: float) -> bool:
        """True when a message can be read within timeout_s seconds."""
        return bool(self.poller.poll(max(0, int(timeout_s * 1000))))

    def has_message(self) -> bool:
        return bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def recv(self) -> list:
        """[identity, header, payload?] frames; raises ProtocolError (with .first_frame) if over the limits."""
        return proto.recv_frames(self.sock, self.max_frames, self.max_bytes)

    def send(self, identity: bytes, msg) -> int:
        """Send `msg` to `identity` at once; returns its bytes (header + payload).

        Raises zmq.ZMQError: EAGAIN when the peer's queue is full, EHOSTUNREACH when it is gone.
        """
        frames = msg.to_frames()
        self.sock.send_multipart([identity, *frames], flags=zmq.NOBLOCK, copy=False)
        return proto.frames_nbytes(frames)

    def reply_error(self, identity: bytes, code: str, text: str, answers: str = "") -> None:
        """Best effort ERROR reply (`answers`: the TYPE of the message it answers, "" if unknown): a peer
        that cannot take it is not worth waiting for."""
        try:
            self.send(identity, proto.Error(code, text[:proto.MAX_TEXT], answers))
        except zmq.ZMQError:
            pass

    def close(self) -> None:
        if self.auth is not None:
            self.auth.stop()
        self.sock.close(linger=CLOSE_LINGER_MS)
        self.ctx.term()
