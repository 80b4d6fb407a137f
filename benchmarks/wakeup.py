"""What waking another process costs: round trips of a small message between two processes.

    python benchmarks/wakeup.py --reps 2000 [--work-ms 0.8]

Each mechanism carries a 64-byte message to an echo process and back; the echo process does
`--work-ms` of arithmetic before it answers (like a worker computing a shard), so the waiting side
really waits and its CPU may go idle. For each: the median and p90 round trip minus the work (ms),
and the CPU the *waiting* side burned per round trip (ms; a spin burns all of its wait, a blocking
wait almost none): the cheapest wake-up is the one with the lowest latency among those that keep
idle CPU honest. Mechanisms: ZeroMQ DEALER/ROUTER over ipc and tcp (blocking poll, as the server
waits), the same with a 5 ms poll(0) + sched_yield spin first (as a worker waits), a pipe, a
Unix-domain SOCK_SEQPACKET socket pair, and an eventfd. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import tempfile
import time

import numpy as np
import zmq

MSG = b"x" * 64
SPIN_S = 0.005


def _work(ms: float, a: np.ndarray) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        np.sqrt(a, out=a)


class ZmqPair:
    def __init__(self, address: str):
        self.address = address

    def serve(self, ready, work_ms):
        ctx = zmq.Context()
        s = ctx.socket(zmq.ROUTER)
        s.bind(self.address)
        ready.put(s.getsockopt_string(zmq.LAST_ENDPOINT))
        a = np.ones(4096)
        while True:
            frames = s.recv_multipart(copy=False)
            if frames[1].bytes == b"stop":
                break
            _work(work_ms, a)
            s.send_multipart(frames, copy=False)
        s.close(linger=1000)
        ctx.term()

    def client(self, endpoint):
        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.DEALER)
        self.s.connect(endpoint)

    def send(self, b):
        self.s.send(b, copy=False)

    def recv(self, spin: bool):
        if spin:
            end = time.perf_counter() + SPIN_S
            while time.perf_counter() < end and not self.s.poll(0):
                os.sched_yield()
        self.s.poll(10_000)
        return self.s.recv()

    def close(self):
        self.s.send(b"stop")
        self.s.close(linger=1000)
        self.ctx.term()


class FdPair:
    """pipe, socketpair or eventfd: the echo side gets one end at fork."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "pipe":
            r1, w1 = os.pipe()
            r2, w2 = os.pipe()
            self.c_in, self.c_out, self.s_in, self.s_out = r2, w1, r1, w2
        elif kind == "seqpacket":
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.keep = (a, b)
            self.c_in = self.c_out = a.fileno()
            self.s_in = self.s_out = b.fileno()
        else:  # eventfd: one counter each way (no payload: the doorbell alone)
            e1, e2 = os.eventfd(0), os.eventfd(0)
            self.c_out, self.s_in, self.s_out, self.c_in = e1, e1, e2, e2

    def _write(self, fd):
        if self.kind == "eventfd":
            os.eventfd_write(fd, 1)
        else:
            os.write(fd, MSG)

    def _read(self, fd):
        return os.eventfd_read(fd) if self.kind == "eventfd" else os.read(fd, 4096)

    def serve(self, ready, work_ms):
        ready.put("ok")
        a = np.ones(4096)
        while True:
            got = self._read(self.s_in)
            if got in (b"stop", 2):
                break
            _work(work_ms, a)
            self._write(self.s_out)

    def client(self, _endpoint):
        pass

    def send(self, _b):
        self._write(self.c_out)

    def recv(self, spin: bool):
        return self._read(self.c_in)

    def close(self):
        if self.kind == "eventfd":
            os.eventfd_write(self.c_out, 2)
        else:
            os.write(self.c_out, b"stop")


def measure(pair, reps: int, work_ms: float, spin: bool = False) -> dict:
    ready = mp.get_context("fork").Queue()
    echo = mp.get_context("fork").Process(target=pair.serve, args=(ready, work_ms), daemon=True)
    echo.start()
    pair.client(ready.get(timeout=30))
    lat, cpu = [], []
    for i in range(reps + reps // 10):
        c0, t = time.thread_time_ns(), time.perf_counter_ns()
        pair.send(MSG)
        pair.recv(spin)
        dt, dc = time.perf_counter_ns() - t, time.thread_time_ns() - c0
        if i >= reps // 10:
            lat.append(dt / 1e6 - work_ms)
            cpu.append(dc / 1e6)
    pair.close()
    echo.join(timeout=10)
    lat_a = np.asarray(lat)
    return {"median_ms": round(float(np.median(lat_a)), 4), "p90_ms": round(float(np.percentile(lat_a, 90)), 4),
            "waiter_cpu_ms": round(float(np.median(cpu)), 4), "reps": reps}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--work-ms", type=float, default=0.8, help="the echo side's arithmetic per message")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="parsgd-wakeup-") as tmp:
        res = {"work_ms": a.work_ms,
               "zmq_ipc_poll": measure(ZmqPair(f"ipc://{tmp}/a.sock"), a.reps, a.work_ms),
               "zmq_ipc_spin_then_poll": measure(ZmqPair(f"ipc://{tmp}/b.sock"), a.reps, a.work_ms, spin=True),
               "zmq_tcp_poll": measure(ZmqPair("tcp://127.0.0.1:*"), a.reps, a.work_ms),
               "pipe": measure(FdPair("pipe"), a.reps, a.work_ms),
               "unix_seqpacket": measure(FdPair("seqpacket"), a.reps, a.work_ms),
               "eventfd": measure(FdPair("eventfd"), a.reps, a.work_ms)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
