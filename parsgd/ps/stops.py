"""How a worker stops on SIGINT and SIGTERM: the handler only records the signal; every wait sees it.

    python -m pytest tests/test_stops.py -q

A handler that raises interrupts whatever runs: library code that catches Exception (click.echo's
isatty check), a lazy import (numpy.random's first use), or pyzmq, which runs pending handlers inside
its calls and drops the result (`_check_rc`), so the exception surfaces at a later line or gives way
to the InterruptedSystemCall or Again pyzmq raises next. Seen: 3 of 40 SIGTERMs to a training worker
were lost that way (a Stopped raised by the handler swallowed in click and in numpy's import) and it
trained on. So the handler sets a flag, `signal.set_wakeup_fd` makes a pipe readable that every wait
polls next to its ZeroMQ socket (a wait ends at once, not at its timeout), and the worker raises
from its own code. Only while loading data does a signal raise at once (the flag stays set: a raise
lost there is seen at the next wait).
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import threading

import zmq

from parsgd.errors import UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WorkerExit(UserError):
    """The worker cannot go on; the message says why (exit 1)."""


class Stopped(WorkerExit):
    """SIGTERM, or halted by the process it runs in: the worker says it leaves, then exits 1."""


class StopSignals:
    """The stop requests of one worker: SIGINT / SIGTERM caught while `catching()` runs in the main
    thread, and `halt`, an Event another thread may set (a colocated worker has no signals).

    `check()` raises KeyboardInterrupt (SIGINT: exit 130), Stopped (SIGTERM, halt) or returns;
    `poll(sock, timeout_s, flags)` and `nap(seconds)` wait, end early on a stop request and then raise.
    """

    def __init__(self):
        self.halt = threading.Event()
        self.signalled: str | None = None
        self._wake: tuple[int, int] | None = None  # the pipe set_wakeup_fd writes a byte to per signal
        self._raise_now = False
        self._poller: tuple | None = None  # (socket, flags, zmq.Poller of it and the wake pipe)

    @contextlib.contextmanager
    def catching(self):
        """Record SIGINT and SIGTERM (not raise) while the block runs; a no-op outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        r, w = os.pipe()
        os.set_blocking(w, False)
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._wake = (r, w)
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self._wake = self._poller = None
            os.close(r)
            os.close(w)

    @contextlib.contextmanager
    def raising(self):
        """Inside this block (pure Python and NumPy, no ZeroMQ: loading data) a signal raises at once."""
        self._raise_now = True
        try:
            self.check()
            yield
        finally:
            self._raise_now = False

    def _on_signal(self, signum, _frame):
        self.signalled = self.signalled or signal.Signals(signum).name
        if self._raise_now:
            self.check()

    def check(self) -> None:
        """Raise if a stop was asked for: KeyboardInterrupt for SIGINT, Stopped for SIGTERM or halt."""
        if self.signalled == "SIGINT":
            raise KeyboardInterrupt
        if self.signalled is not None:
            raise Stopped(f"stopped by {self.signalled}")
        if self.halt.is_set():
            raise Stopped("halted")

    def poll(self, sock: zmq.Socket, timeout_s: float, flags: int = zmq.POLLIN) -> bool:
        """Whether `sock` is ready for `flags` within `timeout_s` seconds; raises (see check) on a stop."""
        self.check()
        if sock.poll(0, flags):  # the common case: ready now
            ready = True
        elif timeout_s <= 0 or self._wake is None:
            ready = timeout_s > 0 and sock.poll(int(timeout_s * 1000), flags)
        else:
            if self._poller is None or self._poller[0] is not sock or self._poller[1] != flags:
                poller = zmq.Poller()
                poller.register(sock, flags)
                poller.register(self._wake[0], zmq.POLLIN)
                self._poller = (sock, flags, poller)
            ready = sock in dict(self._poller[2].poll(int(timeout_s * 1000)))
        self.check()
        return bool(ready)

    def nap(self, seconds: float) -> None:
        """Sleep `seconds` (a fault's hang or delay), ending early and raising (see check) on a stop."""
        self.check()
        if self._wake is not None:
            select.select([self._wake[0]], [], [], seconds)
        elif seconds > 0:
            self.halt.wait(seconds)
        self.check()
