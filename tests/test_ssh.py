"""`launch --hostfile` over real OpenSSH: an sshd in each of two namespace hosts (its own config, a throwaway
host key, ListenAddress on the host's 198.18.2.x address, UsePAM no), the launcher in a third namespace with
a throwaway client key (the machine's own namespace has no route to them). The same model as `parsgd train`
in float64; a SIGKILLed launcher or one killed ssh client leaves no parsgd process on any host; an
unreachable host, a wrong key and a host without parsgd are one line each. CI installs openssh-server."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from hostnet import IpNamedHosts
from procs import stop_daemons, PY, descendants, load_params, sequential_params
from test_cluster import _namespaces_usable
from test_hosts import ARGS, LONG, node_dirs

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("machine-wide")]  # machine-wide: tests/conftest.py
SSHD = "/usr/sbin/sshd"
CHECKOUT = Path(__file__).resolve().parent.parent  # the parsgd the hosts run: this one, wherever it is
SSHD_CONFIG = """ListenAddress {address}
Port 22
HostKey {tmp}/host_key
UsePAM no
AuthorizedKeysFile {tmp}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
PidFile {tmp}/sshd-{address}.pid
"""
CLIENT_CONFIG = """Host *
    User root
    IdentityFile {tmp}/{key}
    IdentitiesOnly yes
    UserKnownHostsFile {tmp}/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 5
    LogLevel ERROR
"""


class SshCluster:
    def __init__(self, net: IpNamedHosts, tmp: Path):
        self.net, self.tmp = net, tmp
        self.hosts, self.client = net.hosts[:2], net.hosts[2]
        self.daemons: list[subprocess.Popen] = []

    def start(self) -> None:
        t = self.tmp
        for key in ("host_key", "id", "wrong_id"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(t / key)], check=True)
        shutil.copy(t / "id.pub", t / "authorized_keys")
        host_pub = (t / "host_key.pub").read_text().split()[:2]
        (t / "known_hosts").write_text("".join(f"{h} {' '.join(host_pub)}\n" for h in self.hosts))
        for key in ("id", "wrong_id"):
            (t / f"ssh_config_{key}").write_text(CLIENT_CONFIG.format(tmp=t, key=key))
        for h in self.hosts:
            (t / f"sshd_config_{h}").write_text(SSHD_CONFIG.format(address=h, tmp=t))
            self.daemons.append(subprocess.Popen(["ip", "netns", "exec", h, SSHD, "-D", "-e", "-f",
                                                  str(t / f"sshd_config_{h}")], stdout=subprocess.DEVNULL,
                                                 stderr=open(t / f"sshd-{h}.log", "wb"), stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        for h in self.hosts:  # sshd is up when a command runs through it
            while self.ssh(h, "true").returncode != 0:
                assert time.monotonic() < deadline, (t / f"sshd-{h}.log").read_text()
                time.sleep(0.1)

    def rsh(self, key: str = "id") -> str:
        return f"ssh -F {self.tmp}/ssh_config_{key} {{host}}"

    def ssh(self, host: str, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.client, "ssh", "-F", str(self.tmp / "ssh_config_id"), host,
                               *command], capture_output=True, text=True, timeout=20)

    def launcher(self, *argv: str, forward: bool = True) -> list[str]:
        """`parsgd launch ...` inside the client namespace, with this checkout on the hosts' PYTHONPATH (-x):
        sshd gives a clean environment."""
        env = ["-x", f"PYTHONPATH={CHECKOUT}", "-x", "PARSGD_CACHE_DIR"] if forward else []
        return ["ip", "netns", "exec", self.client, *PY, "launch", *argv, *env]

    def in_hosts(self) -> list[str]:
        """Processes inside the two sshd hosts other than their sshd daemons."""
        daemons = {str(d.pid) for d in self.daemons}
        return [p for h in self.hosts for p in self.net.pids()[h] if p not in daemons]

    def stop(self) -> None:
        stop_daemons(self.daemons)


@pytest.fixture(scope="module")
def cluster():
    problem = _namespaces_usable()
    if problem:
        pytest.fail(f"ssh tests need root with CAP_NET_ADMIN: {problem} (PARSGD_TESTS_NO_NETNS=1 skips)")
    if not os.path.exists(SSHD):
        pytest.fail(f"{SSHD} not found: install openssh-server (.ci/run does)")
    made_run_sshd = not os.path.isdir("/run/sshd")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    tmp = Path(tempfile.mkdtemp(prefix="parsgd-ssh-"))
    net = IpNamedHosts(3)
    c = SshCluster(net, tmp)
    try:
        net.create()
        c.start()
        yield c
    finally:
        c.stop()
        net.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
        if made_run_sshd:
            shutil.rmtree("/run/sshd", ignore_errors=True)


def wait_clean(c: SshCluster, before_dirs, timeout=20.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        ssh_clients = subprocess.run(["pgrep", "-f", "ssh -F " + str(c.tmp)], capture_output=True, text=True)
        left = c.in_hosts() + ssh_clients.stdout.split() + sorted(node_dirs() - before_dirs)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_launch_over_ssh_equals_train(tmp_path, cluster):
    before = node_dirs()
    h0, h1 = cluster.hosts
    (tmp_path / "hosts").write_text(f"{h0} slots=2\n{h1} slots=1\n")
    got = subprocess.run(cluster.launcher("--hostfile", str(tmp_path / "hosts"), "--rsh", cluster.rsh(), *ARGS,
                                          "--out", str(tmp_path / "run")), capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert "Traceback" not in got.stdout + got.stderr
    assert f"[{h1} worker 1] worker 1: stopped by the server" in got.stdout
    oracle = sequential_params(tmp_path, *ARGS)
    assert np.max(np.abs(load_params(tmp_path / "run") - oracle)) < 1e-8
    assert wait_clean(cluster, before) == []


def _start_long(cluster, tmp_path):
    p = subprocess.Popen(cluster.launcher("-H", ",".join(cluster.hosts), "--rsh", cluster.rsh(), *LONG, "--out",
                                          str(tmp_path / "run")), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    deadline = time.monotonic() + 60
    for line in p.stdout:
        if "READY sent" in line or time.monotonic() > deadline:
            break
    assert len(cluster.in_hosts()) >= 4  # two nodes and their children, at least
    return p


@pytest.mark.parametrize("what", ["the launcher", "one ssh client"])
def test_a_killed_launcher_or_ssh_connection_leaves_nothing(tmp_path, cluster, what):
    before = node_dirs()
    launcher = _start_long(cluster, tmp_path)
    try:
        if what == "the launcher":
            launcher.kill()
        else:
            ssh = [pid for pid in descendants(launcher.pid)
                   if cluster.hosts[1].encode() in Path(f"/proc/{pid}/cmdline").read_bytes()]
            assert ssh, "no ssh client to the worker's host"
            os.kill(ssh[0], signal.SIGKILL)
            rest = launcher.communicate(timeout=60)[0]
            assert launcher.returncode == 1 and f"{cluster.hosts[1]} worker 0: " in rest, rest[-2000:]
        launcher.wait(timeout=30)
        assert wait_clean(cluster, before) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.stdout.close()


def test_bad_hosts_over_ssh_are_one_line(tmp_path, cluster):
    before = node_dirs()
    h0, h1 = cluster.hosts
    venv = tmp_path / "venv"  # a python without parsgd
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    cases = [
        (["-H", f"{h0},198.18.2.77", "--rsh", cluster.rsh()], "error: 198.18.2.77 worker 0: ssh: connect to host "
                                                               "198.18.2.77 port 22: "),
        (["-H", f"{h0},{h1}", "--rsh", cluster.rsh("wrong_id")], f"error: {h0} server 0: root@{h0}: Permission "
                                                                  "denied (publickey)."),
        (["-H", f"{h0},{h1}", "--rsh", cluster.rsh(), "--remote-python", str(venv / "bin" / "python")],
         f"error: {h0} server 0: {venv}/bin/python: No module named parsgd (exit status 1); install parsgd there"),
    ]
    for argv, start in cases:
        got = subprocess.run(cluster.launcher(*argv, *ARGS, "--out", str(tmp_path / "run"),
                                              forward="--remote-python" not in argv), capture_output=True,
                             text=True, timeout=90)
        lines = got.stderr.strip().splitlines()
        assert got.returncode == 1 and len(lines) == 1 and lines[0].startswith(start), (argv, got.stderr)
        assert wait_clean(cluster, before) == []
