"""A worker colocated with the server: rank 0 computes in a thread of the server's process.

    parsgd launch --workers 2 --colocate      # one worker process; the server's process computes w0

Many deployments run a worker beside each server process (ps-lite's and MXNet's launchers put a
server and a worker on every machine). Here it means one process fewer on the cores and no socket
for that worker: it is the ordinary `worker.Worker`, started in a thread and connected to the
server's ROUTER over `inproc://` (a ZeroMQ in-process pipe: no I/O thread, no kernel socket). It
registers, takes TASKs, pushes GRADs through shared memory and ships its spans in LOGS like any
worker, so the protocol, comm.jsonl and the model are the same as with a separate process. It
reads the server's Dataset instead of loading a second copy. Not being a process of its own, it
takes no `--faults`, cannot be signalled alone, and is not supported with CURVE keys.
"""
from __future__ import annotations

import threading

import zmq

from parsgd.config import RunConfig
from parsgd.data import Dataset
from parsgd.errors import UserError
from parsgd.ps.stops import Stopped
from parsgd.ps.worker import Worker, WorkerOptions

ADDRESS = "inproc://parsgd-colocated"
NAME = "w0"                  # rank 0, as `launch` names its worker processes w1, w2, ...
JOIN_TIMEOUT_S = 10.0        # a shard in progress is finished before the thread sees `halt`


class ColocatedWorker:
    """The worker thread. `start()` after the ROUTER has bound ADDRESS in `ctx`; `stop()` before
    that context is terminated (it halts the worker and joins the thread, within JOIN_TIMEOUT_S)."""

    def __init__(self, ctx: zmq.Context, cfg: RunConfig, data: Dataset, connect_timeout_s: float, echo):
        self.echo = echo
        opts = WorkerOptions(connect=ADDRESS, connect_timeout_s=connect_timeout_s, name=NAME)
        self.worker = Worker(opts, echo=lambda line: echo(f"colocated {line}"), ctx=ctx, data=(cfg, data))
        self.thread = threading.Thread(target=self._run, name="parsgd-colocated-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except Stopped:
            pass
        except UserError as exc:  # the server counts it as a lost worker; the reason goes to its output
            self.echo(f"colocated worker stopped: {exc}")
        except Exception as exc:  # noqa: BLE001 (a bug or MemoryError: one line, and the server goes on)
            self.echo(f"colocated worker failed: {type(exc).__name__}: {exc}")

    def stop(self) -> bool:
        """Halt the worker; True once its thread and its heartbeat thread have ended (their sockets
        are then closed, so the context can be terminated without waiting for ever)."""
        self.worker.halt.set()
        self.thread.join(JOIN_TIMEOUT_S)
        beats = self.worker.heartbeats
        return not self.thread.is_alive() and (beats is None or not beats.is_alive())
