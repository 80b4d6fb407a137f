"""`launch --link RATE`: the server and each worker on an emulated host of their own, and what it measured.

    sudo parsgd launch --workers 2 --link 100mbit --dataset synthetic --num-samples 4096 --epochs 1

`LinkOptions` is what the command line gave (checked by `preflight` before anything starts: root
with CAP_NET_ADMIN, netem or nft for a delay, a transport that crosses the link); `EmulatedRun` builds the
network (parsgd.cluster.emulated), generates CURVE keys for the run unless --keys was given,
calibrates the link (parsgd.cluster.probe: a ping-pong at several message sizes and a stream, first
unshaped, then at RATE plus the delay: the round-trip time must be 2D plus the unshaped one within
RTT_TOLERANCE; and the gradient of one batch on this machine), writes it all to RUN_DIR/link.json,
marks comm.jsonl with the rate, takes links down for `partition` faults, delays them for `latency`
faults (parsgd.cluster.latency), and
removes everything on every exit path (a SIGKILLed launcher's namespaces go at the next launch).
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from parsgd.cluster import netns
from parsgd.cluster.latency import choose_via
from parsgd.cluster.emulated import EmulatedNet, host_ip, tbf_args, wire_efficiency
from parsgd.cluster.rates import LinkOptionError, format_rate, parse_delay, parse_rate
from parsgd.config import RunConfig
from parsgd.files import AppendFile, json_text, write_file

LINK_FILE = "link.json"
RATE_TOLERANCE = 0.10        # the shaped stream must run within 10% of RATE x wire efficiency
CPU_BOUND_SHARE = 0.90       # a rate missed while the unshaped capacity is below RATE / 0.9: CPU-bound
RTT_TOLERANCE = 0.10         # the delayed round trip must be within 10% of 2D + the unshaped round trip
PARTITION_LINE = re.compile(r"fault injection: partition at step (\d+) for ([0-9.e+-]+) s$")
LATENCY_LINE = re.compile(r"fault injection: latency at step (\d+) for ([0-9.e+-]+) s: \+([0-9.e+-]+) s$")


@dataclass(frozen=True)
class LinkOptions:
    """`launch --link RATE [--server-link RATE] [--link-delay D] [--keys DIR]`, checked on creation
    (LinkOptionError); `server_rate`: the servers' links (default: `rate`); `latency_faults`: the
    --faults schedule has `latency` items (the delay relays run even at D = 0)."""
    rate: str
    delay: str | None = None
    keys: str | None = None
    server_rate: str | None = None
    latency_faults: bool = False

    def __post_init__(self):
        object.__setattr__(self, "rate", format_rate(parse_rate(self.rate)))
        object.__setattr__(self, "server_rate", format_rate(parse_rate(self.server_rate or self.rate)))
        if self.delay is not None:
            parse_delay(self.delay)

    @property
    def server_rate_bps(self) -> float:
        return parse_rate(self.server_rate)

    @property
    def rate_bps(self) -> float:
        return parse_rate(self.rate)

    @property
    def delay_s(self) -> float:
        return parse_delay(self.delay) if self.delay else 0.0


def preflight(link: LinkOptions, transport: str | None = None) -> None:
    """Everything checked before a process starts: `--transport ipc` (a socket file would bypass the
    link) refused, root with CAP_NET_ADMIN (PrivilegeError), netem or nft for --link-delay (NoDelayError)."""
    if transport == "ipc":
        raise LinkOptionError("--transport ipc with --link: an ipc socket is a file every emulated host sees, "
                              "so it would not cross the link; use --transport tcp (the default with --link)")
    netns.check_privileges("--link")
    if link.delay_s or link.latency_faults:
        choose_via("--link-delay" if link.delay_s else "a latency fault")
    if link.keys:
        from parsgd.ps.sockets import load_keypair
        for name in ("server.key_secret", "worker.key_secret", "server.key"):
            load_keypair(Path(link.keys) / name)


def model_bytes(cfg: RunConfig) -> int:
    """Bytes of one parameter (or gradient) vector of `cfg`'s model."""
    from parsgd.model.mlp import n_params
    import numpy as np
    return n_params(cfg.sizes) * np.dtype(cfg.dtype).itemsize


def time_gradient(cfg: RunConfig, rows: int, reps: int = 5) -> float:
    """Fastest seconds of one gradient of `rows` random rows of `cfg`'s model in this process, alone."""
    import numpy as np
    from parsgd.model.mlp import Workspace, init_params, loss_and_grad

    rng = np.random.default_rng(0)
    params = init_params(cfg.sizes, 0, cfg.dtype)
    x = rng.random((rows, cfg.sizes[0])).astype(cfg.dtype)
    y = rng.integers(0, cfg.sizes[-1], rows)
    grad, ws = np.empty_like(params), Workspace(cfg.sizes, cfg.dtype)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        loss_and_grad(params, cfg.sizes, x, y, grad, ws)
        times.append(time.perf_counter() - t0)
    return float(np.min(times[1:]))


class EmulatedRun:
    """One emulated run's network, keys and calibration. Use as a context manager; `close` removes all."""

    def __init__(self, link: LinkOptions, workers: int, tmp: str, echo, servers: int = 1):
        self.link, self.workers, self.echo = link, workers, echo
        servers_ = ["server", *(f"s{r}" for r in range(1, servers))]  # every server on a host of its own
        self.net = EmulatedNet([*servers_, *(f"w{i}" for i in range(workers))], link.rate_bps, link.delay_s,
                               rates={role: link.server_rate_bps for role in servers_},
                               latency_faults=link.latency_faults)
        self.keys = link.keys or str(Path(tmp) / "keys")
        self.info: dict = {}
        self.timers: list[threading.Timer] = []
        self.partitioned: set[int] = set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def bind(self) -> str:
        return f"tcp://{host_ip('server')}:*"

    @staticmethod
    def range_bind(rank: int) -> str:
        """Where range server `rank` listens: its own host's address, a free port."""
        return f"tcp://{host_ip(f's{rank}')}:*"

    def preexec(self, role: str):
        return self.net.preexec(role)

    def start(self, cfg: RunConfig, calibrate: bool = True) -> None:
        """Builds the network and the keys, then calibrates (`info`, written later by `record`)."""
        t0 = time.monotonic()
        self.net.create()
        if not self.link.keys:
            from parsgd.ps.sockets import keygen
            keygen(self.keys)
        self.info = {"rate": self.link.rate, "rate_bps": self.link.rate_bps, "delay_s": self.link.delay_s,
                     "delay_via": self.net.latency.via,
                     "server_rate": self.link.server_rate, "server_rate_bps": self.link.server_rate_bps,
                     "tbf": " ".join(tbf_args(self.link.rate_bps)), "wire_efficiency": wire_efficiency(),
                     "hosts": self.net.addresses, "namespaces": [self.net.ns(r) for r in self.net.roles],
                     "cores": os.cpu_count(), "keys": "given" if self.link.keys else "generated for the run"}
        servers = [r for r in self.net.roles if r == "server" or r.startswith("s")]
        server_link = "" if self.link.server_rate == self.link.rate else f", the servers' links {self.link.server_rate}"
        self.echo(f"[launch] emulated hosts: {len(servers)} server(s) from {host_ip('server')} and {self.workers} "
                  f"worker(s), each in a network namespace, links of {self.net.label} each way (tbf){server_link}, CURVE keys "
                  f"{'from ' + self.link.keys if self.link.keys else 'generated for this run'}")
        if calibrate and os.environ.get("PARSGD_LINK_CHECK", "1") != "0":
            try:
                self.info["calibration"] = self.calibrate(cfg)
            except netns.NetworkError as exc:  # the run itself does not need it: say so and go on
                self.echo(f"[launch] link check failed, the run goes on without it (no estimate): {exc}")
        self.info["setup_s"] = time.monotonic() - t0

    def calibrate(self, cfg: RunConfig) -> dict:
        """Ping-pong and streams between the server's host and w0's, unshaped then at the rate; the
        gradient of a batch and of a shard here; says if the rate is off or CPU-bound."""
        from parsgd.cluster.probe import measure

        m = model_bytes(cfg)
        sizes = sorted({1024, max(2048, m // 4), m})
        delay = self.link.delay_s
        if delay:
            self.net.latency.set_base(0.0)
        self.net.shape("server", None)
        self.net.shape("w0", None)
        try:
            unshaped = measure(self.net, self.keys, sizes)
        finally:
            if delay:
                self.net.latency.set_base(delay)
            self.net.shape("server", self.net.rate_of("server"))
            self.net.shape("w0", self.net.rate_of("w0"))
        shaped = measure(self.net, self.keys, sizes)
        rtt = {"unshaped_s": unshaped["rtt_s"], "measured_s": shaped["rtt_s"],
               "expected_s": 2 * delay + unshaped["rtt_s"], "one_way_delay_s": delay,
               "measured_one_way_s": max(0.0, (shaped["rtt_s"] - unshaped["rtt_s"]) / 2)}
        rtt["ok"] = abs(rtt["measured_s"] / rtt["expected_s"] - 1) <= RTT_TOLERANCE
        expected = self.link.rate_bps / 8 * wire_efficiency()
        # the better direction: the link is symmetric, and the other machine load slows one stream or the other
        got = max(shaped["stream"]["up_bytes_per_s"], shaped["stream"]["down_bytes_per_s"])
        capacity = max(unshaped["stream"]["up_bytes_per_s"], unshaped["stream"]["down_bytes_per_s"])
        ok = abs(got / expected - 1) <= RATE_TOLERANCE
        verdict = "link" if ok else ("cpu-bound" if capacity < expected / CPU_BOUND_SHARE else "off")
        shard_rows = -(-cfg.batch_size // cfg.workers)
        cal = {"sizes": sizes, "message_bytes": m, "unshaped": unshaped, "shaped": shaped, "rtt": rtt,
               "expected_payload_bytes_per_s": expected, "measured_payload_bytes_per_s": got,
               "capacity_bytes_per_s": capacity, "rate_ok": ok, "bound": verdict,
               "gradient_s": {"batch": time_gradient(cfg, cfg.batch_size), "rows": cfg.batch_size,
                              "shard": time_gradient(cfg, shard_rows), "shard_rows": shard_rows}}
        self.echo(f"[launch] link check: {got * 8 / 1e6:.1f} Mbit/s of payload at {self.link.rate} "
                  f"(expected {expected * 8 / 1e6:.1f}); unshaped capacity through veth, bridge, TCP and CURVE "
                  f"on these {os.cpu_count()} cores: {capacity * 8 / 1e9:.2f} Gbit/s"
                  + ("" if ok else f"; {self.link.rate} is CPU-bound here (above what these cores move), not a link"
                     if verdict == "cpu-bound" else f"; WARNING: {self.link.rate} not met within "
                     f"{RATE_TOLERANCE:.0%} (is the machine busy?)"))
        self.echo(f"[launch] link check: round trip {rtt['measured_s'] * 1e3:.2f} ms (expected 2 x "
                  f"{delay * 1e3:g} ms + {rtt['unshaped_s'] * 1e3:.2f} ms unshaped = {rtt['expected_s'] * 1e3:.2f} ms)"
                  + ("" if rtt["ok"] else f"; WARNING: not within {RTT_TOLERANCE:.0%} (is the machine busy?)"))
        return cal

    def record(self, out: Path) -> None:
        """Writes RUN_DIR/link.json and marks comm.jsonl with the link (a `link` row at step -1)."""
        write_file(Path(out) / LINK_FILE, (json_text(self.info, indent=2) + "\n").encode())
        comm = Path(out) / "comm.jsonl"
        if comm.is_file():
            row = {"role": "server", "rank": 0, "step": -1, "span": "link", "t": 0.0, "dur": 0.0, "bytes": 0,
                   "link": self.link.rate, "rate_bps": self.link.rate_bps, "delay_s": self.link.delay_s}
            f = AppendFile(comm)
            try:
                f.write((json.dumps(row) + "\n").encode())
            finally:
                f.close()

    def worker_echo(self, i: int, echo):
        """`echo` for worker i's lines that also acts on its `partition` and `latency` faults: the worker
        says `fault injection: partition at step S for T s` (or `latency ... : +E s`) and waits; its link
        goes down (or gets E seconds more one-way delay) for T seconds."""
        def watch(line: str) -> None:
            echo(line)
            m = PARTITION_LINE.search(line)
            if m and i not in self.partitioned:
                self.partition(i, float(m.group(2)))
            m = LATENCY_LINE.search(line)
            if m:
                self.slow_link(i, float(m.group(2)), float(m.group(3)))
        return watch

    def slow_link(self, i: int, seconds: float, extra_s: float) -> None:
        """Worker i's link gets `extra_s` more one-way delay, each way, for `seconds` from now."""
        self.net.latency.add(f"w{i}", extra_s, seconds)
        self.echo(f"[launch] worker {i}'s link has {extra_s * 1e3:g} ms more delay for {seconds:g} s")

        def restore():
            try:
                self.net.latency.remove(f"w{i}")
            except netns.NetworkError:
                pass  # the run ended meanwhile and removed the network
        self._later(seconds, restore)

    def partition(self, i: int, seconds: float) -> None:
        """Takes worker i's link down now and brings it back after `seconds` (a timer thread)."""
        self.partitioned.add(i)
        self.net.set_link(f"w{i}", False)
        self.echo(f"[launch] worker {i}'s link is down for {seconds:g} s")

        def heal():
            try:
                self.net.set_link(f"w{i}", True)
                self.echo(f"[launch] worker {i}'s link is up again")
            except netns.NetworkError:
                pass  # the run ended meanwhile and removed the network
        self._later(seconds, heal)

    def _later(self, seconds: float, action) -> None:
        """Runs `action` after `seconds` on a daemon timer thread (cancelled when the run closes)."""
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        timer.start()
        self.timers.append(timer)

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.net.destroy()


def link_options(rate: str | None, delay: str | None, keys: str | None, transport: str | None = None,
                 faults: str = "", server_rate: str | None = None) -> LinkOptions | None:
    """The LinkOptions of `launch --link RATE [--server-link RATE] [--link-delay D] [--keys DIR]`, preflight
    done; None without --link. Raises LinkOptionError (exit 2) for --server-link, --link-delay, --keys or a
    partition fault without --link, and what `preflight` raises."""
    kinds = {item.split("=", 1)[0].strip() for item in (faults or "").split(",")}
    if rate is None:
        for given, what in ((delay, "--link-delay"), (keys, "--keys"), ("partition" in kinds or None, "a partition fault"),
                            ("latency" in kinds or None, "a latency fault"), (server_rate, "--server-link")):
            if given is not None:
                raise LinkOptionError(f"{what} is for emulated hosts: add --link RATE (e.g. --link 100mbit)")
        return None
    link = LinkOptions(rate, delay, keys, server_rate, latency_faults="latency" in kinds)
    preflight(link, transport)
    return link


def measure_capacity(out, echo) -> dict:
    """The machine's unshaped capacity through the emulated path (two hosts, veth, bridge, TCP, CURVE on
    these cores), written to OUT/capacity.json before an experiment's emulated configurations."""
    import tempfile

    from parsgd.cluster.probe import STREAM_MESSAGE_BYTES, measure
    from parsgd.ps.sockets import keygen

    tmp = tempfile.mkdtemp(prefix="parsgd-")
    net = EmulatedNet(["server", "w0"], None)
    try:
        net.create()
        keygen(Path(tmp) / "keys")
        got = measure(net, str(Path(tmp) / "keys"), [1024, STREAM_MESSAGE_BYTES])
    finally:
        net.destroy()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    stream = got["stream"]
    info = {"capacity_bytes_per_s": max(stream["up_bytes_per_s"], stream["down_bytes_per_s"]), "probe": got,
            "cores": os.cpu_count()}
    write_file(Path(out) / "capacity.json", (json_text(info, indent=2) + "\n").encode())
    echo(f"unshaped capacity of the emulated path (veth, bridge, TCP, CURVE on these {os.cpu_count()} cores): "
         f"{info['capacity_bytes_per_s'] * 8 / 1e9:.2f} Gbit/s; a --link above it is CPU-bound, not a link")
    return info
