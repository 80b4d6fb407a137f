"""The emulated star network: one namespace per host, a bridge in a namespace of its own, shaped links.

    python -c "from parsgd.cluster.emulated import EmulatedNet; n = EmulatedNet(['server', 'w0'], 1e8); \
n.create(); print(n.addresses); n.destroy()"

Host H lives in namespace `parsgd-PID-H` with one interface, `eth0`, addressed from SUBNET (the
server 198.18.0.1, worker i 198.18.1.(i+1), ...), no default route, IPv6 off: it reaches the other
hosts and its own loopback, nothing else. Its veth peer, named H, is a port of the bridge `br0` in
`parsgd-PID-net`. Both ends are shaped to the link rate with a token bucket (tbf), egress each way:
`eth0` is H's upload, the bridge port its download, so the server's link is the shared bottleneck of
the star, as on a real switch. `--link-delay D` (parsgd.cluster.latency) delays each host's
outgoing side by D: netem over the tbf of eth0 where the kernel has it, else a delay relay in each
host (parsgd.cluster.relay), started after the links are up and stopped before they go.
"""
from __future__ import annotations

import math
import os

from parsgd.cluster import netns
from parsgd.cluster.latency import LinkLatency
from parsgd.cluster.rates import format_rate
from parsgd.training.pool import die_with_parent

SUBNET_PREFIX = 16
SUBNET = "198.18.0.0/15"       # RFC 2544 benchmarking range: every address parsgd gives is in it
SERVER_IP = "198.18.0.1"
BRIDGE = "br0"
HOST_DEV = "eth0"
BURST_S = 0.001                # tbf bucket: 1 ms of the rate (a smaller one loses rate to timer delays under load)...
BURST_MIN_BYTES = 16 * 1024    # ... at least 16 KiB (a few full-size packets; tbf splits GSO packets)
QUEUE_S = 0.1                  # queue limit: 100 ms of the rate ...
QUEUE_MIN_BYTES = 256 * 1024   # ... at least 256 KiB, so TCP never loses a packet to a short queue


def host_ip(role: str) -> str:
    """The address of host `role`: 198.18.0.1 for the server (0), 198.18.0.2 for range server s1, ...,
    198.18.1.1 for w0, ..., from SUBNET."""
    if role == "server":
        return SERVER_IP
    if role.startswith("s"):  # range server s of --servers S: 198.18.0.(s + 1)
        return f"198.18.0.{1 + int(role[1:])}"
    i = int(role.removeprefix("w"))
    return f"198.18.{1 + i // 250}.{1 + i % 250}"


def tbf_args(rate_bps: float) -> list[str]:
    """tbf parameters for a link of `rate_bps` bits per second: rate, bucket and queue limit in bytes."""
    byte_rate = rate_bps / 8
    burst = max(BURST_MIN_BYTES, int(byte_rate * BURST_S))
    limit = max(QUEUE_MIN_BYTES, int(byte_rate * QUEUE_S), 4 * burst)
    return ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst), "limit", str(limit)]


class EmulatedNet:
    """The network of one emulated run: `roles` (e.g. ['server', 's1', 'w0', 'w1']) at `rate_bps` each way
    (`rates`: {role: bits/s} for hosts with a rate of their own),
    `delay_s` one-way latency between two hosts (`latency_faults`: delay faults may come, even at 0;
    `latency` says how, parsgd.cluster.latency). Namespaces are named after this process's pid,
    whose RunLock is held from `create` to `destroy`. Raises NetworkError when a step fails (after
    removing whatever it had made)."""

    def __init__(self, roles: list[str], rate_bps: float | None, delay_s: float = 0.0, pid: int | None = None,
                 rates: dict[str, float] | None = None, latency_faults: bool = False):
        self.roles, self.rate_bps, self.delay_s = list(roles), rate_bps, delay_s
        self.latency = LinkLatency(self, delay_s, latency_faults)
        self.rates = dict(rates or {})  # a rate of its own for some hosts (the servers' --server-link)
        self.pid = os.getpid() if pid is None else pid
        self.bridge_ns = netns.ns_name(self.pid, "net")
        self.lock = netns.RunLock(self.pid)
        self.made: list[str] = []

    @property
    def addresses(self) -> dict[str, str]:
        return {role: host_ip(role) for role in self.roles}

    def ns(self, role: str) -> str:
        return netns.ns_name(self.pid, role)

    @property
    def label(self) -> str:
        rate = format_rate(self.rate_bps) if self.rate_bps else "unshaped"
        return rate + (f" +{self.delay_s * 1e3:g} ms" if self.delay_s else "")

    def create(self) -> "EmulatedNet":
        """Takes the run lock, sweeps stale runs (of dead launchers, this pid's earlier one included),
        then builds the bridge and every host. Idempotent per object only: call once."""
        if not self.lock.try_acquire():
            raise netns.NetworkError(f"the lock {self.lock.path} of this process's run is held by another "
                                     "process: is a launcher of the same pid in another pid namespace? "
                                     "remove it if not")
        try:
            self.latency.resolve()
            for name in netns.namespaces(self.pid):  # a dead launcher of the same pid left these
                netns.delete_namespace(name)
            netns.sweep_stale(keep_pid=self.pid)
            self.made.append(self.bridge_ns)
            netns.add_namespace(self.bridge_ns)
            netns.ip(self.bridge_ns, "link", "add", BRIDGE, "type", "bridge")
            netns.ip(self.bridge_ns, "link", "set", BRIDGE, "up")
            for role in self.roles:
                self._add_host(role)
            self.latency.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def _add_host(self, role: str) -> None:
        name = self.ns(role)
        self.made.append(name)
        netns.add_namespace(name)
        # both ends made inside their namespaces: nothing ever exists in the machine's own
        netns.ip(name, "link", "add", HOST_DEV, "type", "veth", "peer", "name", role, "netns", self.bridge_ns)
        netns.ip(name, "addr", "add", f"{host_ip(role)}/{SUBNET_PREFIX}", "dev", HOST_DEV)
        netns.ip(self.bridge_ns, "link", "set", role, "master", BRIDGE)
        self.shape(role, self.rate_of(role))
        netns.ip(self.bridge_ns, "link", "set", role, "up")
        netns.ip(name, "link", "set", HOST_DEV, "up")

    def rate_of(self, role: str) -> float | None:
        """The rate host `role`'s link is shaped to (bits/s; None: unshaped)."""
        return self.rates.get(role, self.rate_bps)

    def shape(self, role: str, rate_bps: float | None) -> None:
        """Sets host `role`'s link (both directions) to `rate_bps` (None: unshaped) plus netem's delay."""
        for ns, dev in ((self.ns(role), HOST_DEV), (self.bridge_ns, role)):
            if netns.run(["tc", "-n", ns, "qdisc", "show", "dev", dev], "read a qdisc").startswith(("qdisc tbf",
                                                                                                   "qdisc netem")):
                netns.tc(ns, "qdisc", "del", "dev", dev, "root")
            netem = self.latency.netem_args(role, host_side=dev == HOST_DEV)
            if netem:
                if rate_bps:
                    netns.tc(ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf_args(rate_bps))
            elif rate_bps:
                netns.tc(ns, "qdisc", "add", "dev", dev, "root", *tbf_args(rate_bps))

    def set_link(self, role: str, up: bool) -> None:
        """Takes host `role`'s link down (a cable pulled: nothing in or out) or brings it back."""
        netns.ip(self.ns(role), "link", "set", HOST_DEV, "up" if up else "down", what=f"set {role}'s link")

    def preexec(self, role: str):
        """A subprocess preexec_fn: enter host `role`'s namespace (the exec fails if it cannot: it never
        runs in the machine's namespace) and die with the parent."""
        name, parent = self.ns(role), os.getpid()

        def enter():
            die_with_parent(parent)
            netns.enter(name)
        return enter

    def destroy(self) -> None:
        """Removes every namespace of this run (their links, bridge and qdiscs go with them), then the lock.
        Safe to call twice, and after a failed create."""
        errors = []
        self.latency.stop()
        for name in reversed(netns.namespaces(self.pid)):
            try:
                netns.delete_namespace(name)
            except netns.NetworkError as exc:
                errors.append(str(exc))
        self.made.clear()
        self.lock.release()
        if errors:
            raise netns.NetworkError(errors[0])


def wire_efficiency(mtu: int = 1500) -> float:
    """TCP payload per byte on the shaped link: MSS / (frame bytes tbf counts), 1448/1514 at MTU 1500
    (20 IP + 32 TCP with timestamps + 14 Ethernet). The payload rate of a RATE link is RATE x this."""
    mss = mtu - 20 - 32
    return mss / (mss + 52 + 14)


def seconds_for(nbytes: float, rate_bps: float) -> float:
    """Seconds `nbytes` of TCP payload take through one direction of a `rate_bps` link."""
    return 0.0 if not rate_bps or not math.isfinite(rate_bps) else nbytes * 8 / (rate_bps * wire_efficiency())
