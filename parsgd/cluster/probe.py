"""Measuring an emulated link as parsgd uses it: ZeroMQ DEALER/ROUTER with CURVE, through veth and bridge.

    python -m parsgd.cluster.probe serve tcp://198.18.0.1:5600 KEYS            # in the server's host
    python -m parsgd.cluster.probe client tcp://198.18.0.1:5600 KEYS 1024,1048576 # in a worker's host

The client prints one JSON object: the round-trip time of an empty message (`rtt_s`, the median of
RTT_REPS: 2D plus the unshaped RTT on a link of one-way delay D); for each message size, the median time of a one-way transfer up
(client -> server, acknowledged by an empty reply) and down (server -> client, asked for by an empty
request); the per-size `alpha + size x beta` fit of both (Hockney); and a stream (messages sent back
to back, acknowledged once) giving the sustained payload rate of each direction. `measure` runs both
processes in the hosts of an EmulatedNet and returns that object.
"""
from __future__ import annotations

import json
import select
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np

from parsgd.cluster.netns import NetworkError, reap

MIN_REPS, MAX_REPS, SIZE_BUDGET_S = 3, 15, 0.4   # ping-pong repetitions per size and direction
RTT_REPS = 21                                    # empty round trips for rtt_s (their median)
STREAM_S = 0.5                                   # a stream lasts about this long per direction
STREAM_MESSAGE_BYTES = 256 * 1024
PROBE_PORT = 5600
PROBE_TIMEOUT_S = 30.0
STALL_S = 3.0
BYE_GRACE_S = 0.3            # the probe server stays this long after `bye` (its answer must get there first)
MAX_FRAME = 1 << 31


def serve(address: str, keys: str) -> None:
    """Answers `up` (payload in, empty reply), `down` (reply of the asked size), `sink` (payloads
    in, no reply) and `ack`, `source` (N payloads of a size out) until BYE_GRACE_S after `bye`, or until
    no request came for PROBE_TIMEOUT_S (a client gone; its parent also kills it)."""
    import zmq
    from parsgd.ps.sockets import configure_router

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    auth = configure_router(ctx, sock, SimpleNamespace(bind=address, keys_dir=keys), MAX_FRAME)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 0)  # a PING queued behind megabytes of stream must not end the connection
    sock.bind(address)
    print("listening", flush=True)
    blobs: dict[int, bytes] = {}
    try:
        wait_s = PROBE_TIMEOUT_S
        while sock.poll(int(wait_s * 1000)):
            ident, kind, *rest = sock.recv_multipart(copy=True)
            if kind == b"up":
                sock.send_multipart([ident, b""])
            elif kind == b"down":
                size = int(rest[0])
                _send(sock, [ident, blobs.setdefault(size, bytes(size))])
            elif kind == b"ack":
                sock.send_multipart([ident, b""])
            elif kind == b"source":
                count, size = int(rest[0]), int(rest[1])
                blob = blobs.setdefault(size, bytes(size))
                for _ in range(count):
                    _send(sock, [ident, blob])
            elif kind == b"bye":  # answered, then open a moment more: a client that sees the connection end
                sock.send_multipart([ident, b""])  # right behind the answer may drop it (a relay sends both at once)
                wait_s = BYE_GRACE_S
    finally:
        sock.close(0)
        if auth is not None:
            auth.stop()
        ctx.term()


def _send(sock, frames, within_s: float | None = None) -> None:
    """Send without blocking in libzmq (a ROUTER_MANDATORY socket answers EAGAIN at the high-water mark
    even in a blocking send): wait for room, at most `within_s` seconds (TimeoutError: a stalled link)."""
    import zmq
    deadline = None if within_s is None else time.monotonic() + within_s
    while True:
        try:
            sock.send_multipart(frames, copy=False, flags=zmq.DONTWAIT)
            return
        except zmq.Again:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the probe could not send for a while (the link stalled)") from None
            sock.poll(100, zmq.POLLOUT)


def _fit(sizes: list[int], seconds: list[float]) -> dict:
    """Least-squares alpha (s) and beta (s per byte) of t = alpha + size x beta."""
    slope, intercept = np.polyfit(np.asarray(sizes, float), np.asarray(seconds, float), 1)
    return {"alpha_s": float(max(intercept, 0.0)), "beta_s_per_byte": float(max(slope, 0.0))}


def client(address: str, keys: str, sizes: list[int], stream: bool = True) -> dict:
    """The measurements (see the module doc) as a dict; sizes in bytes."""
    import zmq
    from parsgd.ps.sockets import configure_dealer

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    configure_dealer(sock, MAX_FRAME, keys)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 0)
    sock.connect(address)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)

    def call(*frames, copy=True):
        _send(sock, list(frames), STALL_S)
        if not poller.poll(STALL_S * 1e3):
            raise TimeoutError(f"no answer from the probe server at {address}")
        return sock.recv_multipart(copy=False)

    def stage(text):  # on a timeout, measure() names the last one
        print(text, file=sys.stderr, flush=True)

    try:
        stage("connecting")
        _send(sock, [b"ack"], PROBE_TIMEOUT_S)  # IMMEDIATE: waits for the connection and the CURVE handshake
        if not poller.poll(PROBE_TIMEOUT_S * 1e3):
            raise TimeoutError(f"no answer from the probe server at {address}")
        sock.recv_multipart()
        stage("round trips")
        rtts = []
        for _ in range(RTT_REPS):
            t0 = time.perf_counter()
            call(b"ack")
            rtts.append(time.perf_counter() - t0)
        out = {"rtt_s": statistics.median(rtts), "rtt_min_s": min(rtts), "sizes": [], "up_s": [], "down_s": []}
        for size in sizes:
            blob = bytes(size)
            times = {"up": [], "down": []}
            for direction in ("up", "down"):
                stage(f"ping-pong {direction} {size} bytes")
                spent, reps = 0.0, 0
                while reps < MIN_REPS or (spent < SIZE_BUDGET_S and reps < MAX_REPS):
                    t0 = time.perf_counter()
                    if direction == "up":
                        call(b"up", blob, copy=False)
                    else:
                        call(b"down", str(size).encode())
                    dt = time.perf_counter() - t0
                    times[direction].append(dt)
                    spent, reps = spent + dt, reps + 1
            out["sizes"].append(size)
            out["up_s"].append(statistics.median(times["up"]))
            out["down_s"].append(statistics.median(times["down"]))
        out["up_fit"] = _fit(out["sizes"], out["up_s"])
        out["down_fit"] = _fit(out["sizes"], out["down_s"])
        if stream:
            stage("stream")
            out["stream"] = _stream(call, sock, poller, out)
        call(b"bye")
        return out
    finally:
        sock.close(0)
        ctx.term()


def _stream(call, sock, poller, pingpong: dict) -> dict:
    """Sustained payload rate each way (bytes/s): STREAM_MESSAGE_BYTES messages back to back for about
    STREAM_S up (then one acknowledgement), then as many down as went up in that time."""
    size = STREAM_MESSAGE_BYTES
    blob = bytes(size)
    t0, count = time.perf_counter(), 0
    while count < 4 or time.perf_counter() - t0 < STREAM_S:
        _send(sock, [b"sink", blob], STALL_S)
        count += 1
    print(f"stream: {count} sent up, waiting for the acknowledgement", file=sys.stderr, flush=True)
    call(b"ack")
    up = count * size / (time.perf_counter() - t0)
    count = int(min(4000, max(4, up * STREAM_S / size)))
    t0 = time.perf_counter()
    _send(sock, [b"source", str(count).encode(), str(size).encode()], STALL_S)
    print(f"stream: {count} asked for down", file=sys.stderr, flush=True)
    for i in range(count):
        if not poller.poll(STALL_S * 1e3):  # a stream that stalls (rare, under load) is measured again
            raise TimeoutError(f"the probe stream stopped after {i} of {count} messages down")
        sock.recv_multipart(copy=False)
    down = count * size / (time.perf_counter() - t0)
    return {"message_bytes": size, "messages": count, "up_bytes_per_s": up, "down_bytes_per_s": down}


def measure(net, keys: str, sizes: list[int], client_role: str = "w0", stream: bool = True, tries: int = 3) -> dict:
    """Runs a probe server in `net`'s server host and a client in `client_role`'s host; returns the
    client's measurements. A failed probe is tried again (`tries` in all); then NetworkError."""
    for attempt in range(tries):
        try:
            return _measure(net, keys, sizes, client_role, stream)
        except NetworkError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _measure(net, keys: str, sizes: list[int], client_role: str, stream: bool) -> dict:
    from parsgd.cluster.emulated import host_ip

    address = f"tcp://{host_ip('server')}:{PROBE_PORT}"
    py = [sys.executable, "-m", "parsgd.cluster.probe"]
    server = subprocess.Popen(py + ["serve", address, keys], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, preexec_fn=net.preexec("server"), text=True)
    try:
        started = select.select([server.stdout], [], [], PROBE_TIMEOUT_S)[0]
        first = server.stdout.readline().strip() if started else f"nothing within {PROBE_TIMEOUT_S:g} s"
        if first != "listening":
            raise NetworkError(f"the link probe's server did not start: {first or server.wait()}")
        argv = py + ["client", address, keys, ",".join(map(str, sizes))] + ([] if stream else ["--no-stream"])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              preexec_fn=net.preexec(client_role), stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            stages = [line for line in said if not line.startswith((" ", "Traceback"))]
            raise NetworkError(f"the link probe failed at {stages[-2] if len(stages) > 1 else 'its start'}: "
                               f"{said[-1] if said else done.returncode}")
        return json.loads(done.stdout)
    except subprocess.TimeoutExpired as exc:
        last = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or ["not started"]
        server.kill()
        said = server.stdout.read().strip().splitlines()[-1:] or [""]
        raise NetworkError(f"the link probe took more than {PROBE_TIMEOUT_S:g} s (at: {last[0]}; server: "
                           f"{said[0] or 'silent'})") from None
    finally:
        reap(server, 5)


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 3:
        serve(argv[1], argv[2])
        return 0
    if argv[:1] == ["client"] and len(argv) in (4, 5):
        sizes = [int(s) for s in argv[3].split(",")]
        print(json.dumps(client(argv[1], argv[2], sizes, stream="--no-stream" not in argv)))
        return 0
    print("usage: python -m parsgd.cluster.probe serve ADDRESS KEYS | client ADDRESS KEYS SIZES [--no-stream]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
