"""Hosts for the real-host tests: network namespaces named by their own 198.18.2.x address, so one word is
both what `ip netns exec {host}` enters and the address the other hosts reach (no /etc/hosts needed).
A bridge in `parsgd-PID-hnet` joins them, under the run lock of this pid (netns.RunLock), so the sweep of
another launch leaves it alone while it lives and removes it should the test process die."""
from __future__ import annotations

import os
import subprocess

from parsgd.cluster import netns


def address(i: int) -> str:
    return f"198.18.2.{i + 1}"


class IpNamedHosts:
    """`count` hosts 198.18.2.1 .. on one bridge, unshaped; `destroy` kills what runs in them and removes all."""

    def __init__(self, count: int):
        self.hosts = [address(i) for i in range(count)]
        self.bridge = netns.ns_name(os.getpid(), "hnet")
        # held while the hosts live: any parsgd launch on this machine sweeps a parsgd-PID-* namespace whose
        # lock is free (parsgd.cluster.netns.sweep_stale), and the bridge going takes every host's link with it
        self.lock = netns.RunLock()

    def create(self) -> "IpNamedHosts":
        if not self.lock.try_acquire():
            raise netns.NetworkError(f"{self.lock.path} is held: is another run of this pid alive?")
        for name in self.hosts:  # a test session killed before its finalizer left these: ours, by their names
            netns.delete_namespace(name)
        try:
            netns.add_namespace(self.bridge)
            netns.ip(self.bridge, "link", "add", "br0", "type", "bridge")
            netns.ip(self.bridge, "link", "set", "br0", "up")
            for i, host in enumerate(self.hosts):
                netns.add_namespace(host)
                netns.ip(host, "link", "add", "eth0", "type", "veth", "peer", "name", f"h{i}", "netns", self.bridge)
                netns.ip(host, "addr", "add", f"{host}/16", "dev", "eth0")
                netns.ip(self.bridge, "link", "set", f"h{i}", "master", "br0")
                netns.ip(self.bridge, "link", "set", f"h{i}", "up")
                netns.ip(host, "link", "set", "eth0", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        try:
            for name in [*self.hosts, self.bridge]:
                netns.delete_namespace(name)
        finally:
            self.lock.release()

    def pids(self) -> dict[str, list[str]]:
        """The processes still running in each host."""
        return {h: subprocess.run(["ip", "netns", "pids", h], capture_output=True, text=True).stdout.split()
                for h in self.hosts}
