"""Latency on the emulated links: netem where the kernel has it, else a delay relay in every host.

    python -c "from parsgd.cluster.emulated import EmulatedNet; n = EmulatedNet(['server', 'w0'], 1e8, 0.005); \
n.create(); print(n.latency.via); n.destroy()"

`choose_via` picks how: `netem` (a `netem delay D` qdisc on each host's `eth0`, under its tbf) or
`relay` (parsgd.cluster.relay in each host, every connection that arrives on `eth0` redirected to it
by one nftables rule of that host's namespace). Both give D one way between any two hosts, 2D on a
round trip. PARSGD_LINK_DELAY_VIA=relay|netem forces one (the link check measures either).
`HostRelays` starts the relays, changes their delay and adds latency faults, and stops them.
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys

from parsgd.cluster import netns
from parsgd.cluster.rates import tc_time
from parsgd.cluster.relay import RELAY_PORT

RELAY_START_TIMEOUT_S = 20.0    # a relay prints `listening` within this (Python start on a loaded machine)
RELAY_ANSWER_TIMEOUT_S = 5.0    # a relay answers a control line within this
VIA_ENV = "PARSGD_LINK_DELAY_VIA"
NAT_RULES = """table ip parsgd_delay {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{dev}" meta l4proto tcp redirect to :{port}
    }}
}}
"""


_KERNEL: dict[str, bool] = {}  # has_netem's answer, asked once per process (it builds a scratch namespace)


class NoDelayError(netns.PrivilegeError):
    """A delay is asked for on a machine with neither netem nor `nft` (exit 1), said before anything starts."""


def choose_via(what: str = "--link-delay") -> str:
    """'netem' or 'relay' (PARSGD_LINK_DELAY_VIA, else netem when the kernel has it). Raises NoDelayError
    when the relay is needed and `nft` (apt-get install nftables) is missing."""
    forced = os.environ.get(VIA_ENV, "").strip()
    if forced not in ("", "netem", "relay"):
        raise NoDelayError(f"{VIA_ENV}={forced}: use netem or relay (or leave it unset)")
    if not forced and "netem" not in _KERNEL:
        _KERNEL["netem"] = netns.has_netem()
    via = forced or ("netem" if _KERNEL["netem"] else "relay")
    if via == "relay" and shutil.which("nft") is None:
        raise NoDelayError(f"{what}: this kernel has no netem qdisc, and the delay relay needs `nft` to "
                           "redirect connections to it (not found on PATH): apt-get install nftables, "
                           f"or leave out {what}")
    return via


class HostRelays:
    """A delay relay in each host `ns_of(role)` of `roles`, at `delay_s` one way. `preexec(role)`: the
    subprocess preexec_fn entering that host. Raises NetworkError when one cannot start."""

    def __init__(self, roles: list[str], ns_of, preexec, device: str):
        self.roles, self.ns_of, self.preexec, self.device = list(roles), ns_of, preexec, device
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, delay_s: float) -> None:
        py = [sys.executable, "-m", "parsgd.cluster.relay", str(RELAY_PORT), repr(float(delay_s))]
        for role in self.roles:  # all started, then all waited for: the Python starts overlap
            netns.nft(self.ns_of(role), NAT_RULES.format(dev=self.device, port=RELAY_PORT))
            self.procs[role] = subprocess.Popen(py, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, preexec_fn=self.preexec(role))
        for role, proc in self.procs.items():
            line = self._answer(proc, RELAY_START_TIMEOUT_S)
            if line != "listening":
                raise netns.NetworkError(f"the delay relay of host {role} did not start: {line}")

    @staticmethod
    def _answer(proc: subprocess.Popen, timeout_s: float) -> str:
        if not select.select([proc.stdout], [], [], timeout_s)[0]:
            return f"nothing within {timeout_s:g} s"
        line = proc.stdout.readline().decode(errors="replace").strip()
        return line or f"it exited with status {proc.poll()}"

    def tell(self, command: str) -> None:
        """Sends one control line to every relay and waits for each `ok` (NetworkError otherwise)."""
        for role, proc in self.procs.items():
            try:
                proc.stdin.write(command.encode() + b"\n")
                proc.stdin.flush()
            except OSError as exc:
                raise netns.NetworkError(f"the delay relay of host {role} is gone: {exc}") from None
            line = self._answer(proc, RELAY_ANSWER_TIMEOUT_S)
            if line != "ok":
                raise netns.NetworkError(f"the delay relay of host {role} refused `{command}`: {line}")

    def stop(self) -> None:
        """Ends every relay (EOF on its stdin, then SIGKILL after a moment); safe to call twice."""
        for proc in self.procs.values():
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs.values():
            netns.reap(proc, 1.0)
        self.procs.clear()


class LinkLatency:
    """The delay of an EmulatedNet's links: `via` ('netem', 'relay' or None: no delay, nothing runs),
    the base one-way `delay_s`, and latency faults (`add`)."""

    def __init__(self, net, delay_s: float, faults: bool = False):
        self.net, self.delay_s, self.wanted = net, delay_s, bool(delay_s or faults)
        self.via: str | None = None   # set by `resolve`, which EmulatedNet.create calls first
        self.relays: HostRelays | None = None
        self.extra: dict[str, float] = {}   # netem: host -> extra seconds now in force

    def resolve(self) -> None:
        """Decides `via` (choose_via: NoDelayError) when a delay is wanted."""
        self.via = choose_via() if self.wanted else None

    def netem_args(self, role: str, host_side: bool) -> list[str] | None:
        """netem parameters for host `role`'s eth0 (`host_side`: its outgoing side, the base delay plus
        a fault's) or its bridge port (toward it: a fault's only), or None (no netem there)."""
        delay = (self.delay_s if host_side else 0.0) + self.extra.get(role, 0.0)
        return ["netem", "delay", tc_time(delay)] if self.via == "netem" and delay else None

    def start(self) -> None:
        if self.via == "relay":
            self.relays = HostRelays(self.net.roles, self.net.ns, self.net.preexec, "eth0")
            self.relays.start(self.delay_s)

    def set_base(self, delay_s: float) -> None:
        """The base one-way delay from now on (the link check measures the path without it first)."""
        self.delay_s = delay_s
        if self.relays is not None:
            self.relays.tell(f"delay {delay_s!r}")
        elif self.via == "netem":
            for role in self.net.roles:
                self.net.shape(role, self.net.rate_of(role))

    def add(self, role: str, extra_s: float, seconds: float) -> None:
        """Host `role`'s link gets `extra_s` more one-way delay for `seconds` (a latency fault): every
        connection with it, each way. netem: its eth0 and its bridge port; the caller restores with
        `remove` (a timer)."""
        if self.relays is not None:
            self.relays.tell(f"latency {self.net.addresses[role]} {extra_s!r} {seconds!r}")
        elif self.via == "netem":
            self.extra[role] = extra_s
            self.net.shape(role, self.net.rate_of(role))

    def remove(self, role: str) -> None:
        if self.via == "netem" and self.extra.pop(role, None) is not None:
            self.net.shape(role, self.net.rate_of(role))

    def stop(self) -> None:
        if self.relays is not None:
            self.relays.stop()
