"""What the delay relay (parsgd/cluster/relay.py) costs: stream rate and round trip with and without it.

    sudo python benchmarks/relay.py [--out benchmarks/relay.json]

Two emulated hosts (server, w0); a plain TCP stream of 256 MB from w0 to the server and 200 one-byte
round trips, on four paths: unshaped and 1gbit, each without the relay (D = 0: none runs) and with
it at D = 0 (the relay in the path, no delay) and D = 5 ms. Printed and written as ratios within
this one run: relay / direct stream rate, and round trip minus 2D minus the direct one (what the
relay adds). Root only (namespaces).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from parsgd.cluster.emulated import EmulatedNet

SINK = """
import socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("198.18.0.1", 7000)); l.listen(); print("up", flush=True)
c, _ = l.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    b = c.recv(1 << 20)
    if not b: break
    if b == b"p": c.sendall(b"q")
    elif b.endswith(b"E"): c.sendall(b"k")
"""
SOURCE = """
import socket, statistics, time, json
s = socket.create_connection(("198.18.0.1", 7000)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtt = []
for _ in range(200):
    t = time.perf_counter(); s.sendall(b"p"); s.recv(1); rtt.append(time.perf_counter() - t)
blob = bytes(1 << 20)
t = time.perf_counter()
for _ in range(256): s.sendall(blob)
s.sendall(b"E"); s.recv(1)
print(json.dumps({"rtt_s": statistics.median(rtt), "stream_bytes_per_s": 256 * len(blob) / (time.perf_counter() - t)}))
"""


def one(rate_bps, delay_s: float, relay: bool) -> dict:
    net = EmulatedNet(["server", "w0"], rate_bps, delay_s, latency_faults=relay).create()
    try:
        sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True,
                                preexec_fn=net.preexec("server"))
        assert sink.stdout.readline().strip() == "up"
        out = subprocess.run([sys.executable, "-c", SOURCE], capture_output=True, text=True, timeout=120,
                             preexec_fn=net.preexec("w0"), check=True)
        sink.wait(timeout=10)
        return {"via": net.latency.via, **json.loads(out.stdout)}
    finally:
        net.destroy()


def main(argv: list[str]) -> int:
    os.environ["PARSGD_LINK_DELAY_VIA"] = "relay"
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    rows = []
    for rate in (None, 1e9):
        direct = one(rate, 0.0, False)
        for delay in (0.0, 0.005):
            got = one(rate, delay, True)
            rows.append({"rate_bps": rate, "delay_s": delay, "direct": direct, "relay": got,
                         "stream_ratio": got["stream_bytes_per_s"] / direct["stream_bytes_per_s"],
                         "added_rtt_s": got["rtt_s"] - 2 * delay - direct["rtt_s"]})
            print(f"{'unshaped' if rate is None else '1gbit':>8}  D={delay * 1e3:g} ms: stream "
                  f"{got['stream_bytes_per_s'] / 1e6:.0f} MB/s = {rows[-1]['stream_ratio']:.2f} x direct; "
                  f"round trip {got['rtt_s'] * 1e3:.3f} ms = 2D + direct {direct['rtt_s'] * 1e3:.3f} ms + "
                  f"{rows[-1]['added_rtt_s'] * 1e3:.3f} ms")
    if out:
        out.write_text(json.dumps({"cores": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
