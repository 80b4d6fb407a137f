"""SIGINT and SIGTERM held back while a block runs (an import), then delivered to the handlers before it.

    python -m pytest tests/test_signals.py -q

An exception a signal handler raises inside some imports is lost: numpy.random's Cython module init
swallows it (inside abc.register), and `train` ignored a Ctrl-C and trained to the end (1 of 100
SIGINTs in its first 200 ms). pthread_sigmask is not enough: it holds signals back in the calling
thread only, and the kernel hands a signal sent to the process to any thread that does not block
it (OpenBLAS's threads, started when NumPy is imported); the C handler that runs there still makes
the main thread's Python handler run inside the import. So while the block runs, a handler only
records the signal; then the previous handlers are back and each recorded signal is raised again
(`signal.raise_signal`), so it acts as if it arrived just after the block: KeyboardInterrupt for
SIGINT, Python's default (killed by it) for SIGTERM.
"""
from __future__ import annotations

import contextlib
import signal
import threading

HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred(signals: tuple = HELD):
    """Record `signals` while the block runs, then raise each one recorded, once, under the handlers it
    would have met (outside the main thread, where handlers cannot be set, a plain block)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, lambda signum, _frame: caught.append(signum))
        yield
    finally:
        _restore(list(previous.items()))
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


def _restore(handlers: list) -> None:
    """Set each (signal, handler) back, all of them even if one raises: signal.signal runs pending
    handlers, so a signal arriving just then may raise KeyboardInterrupt from the first one."""
    if handlers:
        (sig, handler), rest = handlers[0], handlers[1:]
        try:
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        finally:
            _restore(rest)
