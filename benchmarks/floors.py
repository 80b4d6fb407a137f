"""The floors: what moving the parameter vector costs at best on this machine.

    python benchmarks/floors.py --reps 2000

- memcpy: np.copyto of the float32 parameter vector (235,146 values, 0.94 MB).
- ZeroMQ DEALER -> ROUTER -> DEALER round trips against an echo process, over tcp (loopback) and
  ipc: the vector both ways (what a socket-payload PS step moves per shard), and a 64-byte message
  both ways (the control-message floor of the shared-memory transport).
Each figure is the median of `reps` timed repetitions after `reps // 10` untimed ones (ms).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time

import numpy as np
import zmq

N_PARAMS = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10  # the default MLP: 235,146
SMALL_BYTES = 64


def _stats(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.float64) / 1e6
    return {"median_ms": round(float(np.median(a)), 4), "p10_ms": round(float(np.percentile(a, 10)), 4),
            "p90_ms": round(float(np.percentile(a, 90)), 4), "reps": len(ns)}


def memcpy(reps: int) -> dict:
    src = np.random.default_rng(0).standard_normal(N_PARAMS).astype(np.float32)
    dst = np.empty_like(src)
    times = []
    for i in range(reps + reps // 10):
        t = time.perf_counter_ns()
        np.copyto(dst, src)
        if i >= reps // 10:
            times.append(time.perf_counter_ns() - t)
    return {**_stats(times), "bytes": src.nbytes}


def _echo(address: str, ready) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(address)
    ready.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    while True:
        frames = sock.recv_multipart(copy=False)
        if frames[1].bytes == b"stop":
            break
        sock.send_multipart(frames, copy=False)
    sock.close(linger=1000)
    ctx.term()


def round_trip(address: str, reps: int) -> dict:
    ready = mp.Queue()
    echo = mp.Process(target=_echo, args=(address, ready), daemon=True)
    echo.start()
    endpoint = ready.get(timeout=30)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(endpoint)
    vec = np.random.default_rng(0).standard_normal(N_PARAMS).astype(np.float32)
    out = {}
    for name, payload in (("vector", vec), ("small", np.zeros(SMALL_BYTES, np.uint8))):
        times = []
        for i in range(reps + reps // 10):
            t = time.perf_counter_ns()
            sock.send(payload, copy=False)
            back = np.frombuffer(sock.recv(copy=False).buffer, dtype=payload.dtype)
            if i >= reps // 10:
                times.append(time.perf_counter_ns() - t)
        assert back.size == payload.size
        out[name] = {**_stats(times), "bytes": payload.nbytes}
    sock.send(b"stop")
    sock.close()
    ctx.term()
    echo.join(timeout=10)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="parsgd-floors-")
    try:
        result = {"memcpy": memcpy(a.reps * 5),
                  "zmq_tcp": round_trip("tcp://127.0.0.1:*", a.reps),
                  "zmq_ipc": round_trip(f"ipc://{tmp}/echo.sock", a.reps),
                  "n_params": N_PARAMS}
    finally:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
