"""`launch --hostfile` / `-H` on hosts that are network namespaces (`--rsh "ip netns exec {host}"`): the same
model as `parsgd train` in float64, nothing left on any host when the launcher is SIGKILLed, and one line
naming the host for each kind of bad input. The hosts are made by tests/hostnet.py and removed on every path."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from hostnet import IpNamedHosts
from procs import PY, load_params, sequential_params
from test_cluster import _namespaces_usable

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("machine-wide")]  # machine-wide: tests/conftest.py
ARGS = ["--dataset", "synthetic", "--num-samples", "2030", "--epochs", "1", "--hidden", "32,16",
        "--batch-size", "100", "--dtype", "float64", "--seed", "11"]
NETNS_RSH = "ip netns exec {host}"
LONG = ["--dataset", "synthetic", "--num-samples", "4000", "--epochs", "200", "--hidden", "32,16", "--batch-size", "10"]


@pytest.fixture(scope="module")
def hosts():
    problem = _namespaces_usable()
    if problem:
        pytest.fail(f"host tests need root with CAP_NET_ADMIN: {problem} (PARSGD_TESTS_NO_NETNS=1 skips)")
    net = IpNamedHosts(2).create()
    try:
        yield net
    finally:
        net.destroy()
    assert not [h for h in net.hosts if os.path.exists(f"/run/netns/{h}")]


def node_dirs() -> set[str]:
    """The private key folders of nodes (parsgd.jobs.node): none may outlive its node."""
    import tempfile
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "parsgd-node-*")))


def leftovers(net, before_dirs) -> list:
    """What a run left: processes inside a host, parsgd processes naming a host, key folders."""
    found = [pid for pids in net.pids().values() for pid in pids]
    mine = subprocess.run(["pgrep", "-f", "198[.]18[.]2[.]"], capture_output=True, text=True).stdout.split()
    return found + mine + sorted(node_dirs() - before_dirs)


def wait_clean(net, before_dirs, timeout=20.0) -> list:
    deadline = time.monotonic() + timeout
    while (left := leftovers(net, before_dirs)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def run(*argv, timeout=120):
    return subprocess.run(PY + ["launch", *argv], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("servers", [1, 2])
def test_launch_on_namespace_hosts_equals_train(tmp_path, hosts, servers):
    """One server with keys made for the run (hostfile), or two (a range server beside server 0) with the user's
    --keys (-H); each equals train."""
    before = node_dirs()
    h0, h1 = hosts.hosts
    if servers == 1:
        (tmp_path / "hosts").write_text(f"# two hosts\n{h0} slots=2\n{h1}\n")
        where = ["--hostfile", str(tmp_path / "hosts")]
    else:
        subprocess.run(PY + ["keygen", str(tmp_path / "keys")], check=True, capture_output=True)
        where = ["-H", f"{h0}:2,{h1}:2", "--servers", "2", "--keys", str(tmp_path / "keys")]
    got = run(*where, "--rsh", NETNS_RSH, *ARGS, "--out", str(tmp_path / "run"))
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert "Traceback" not in got.stdout + got.stderr
    assert f"[{h0} server 0] server listening on tcp://{h0}:5555" in got.stdout
    assert f"[{h1} worker 1] worker 1: data loaded" in got.stdout
    if servers == 2:
        assert f"[{h0} server 1] server 1: stopped by server 0 (training finished)" in got.stdout
    oracle = sequential_params(tmp_path, *ARGS)
    assert np.max(np.abs(load_params(tmp_path / "run") - oracle)) < 1e-8
    assert wait_clean(hosts, before) == []


def test_localhost_runs_here_without_rsh(tmp_path):
    """`-H localhost:3`: this machine, no --rsh (a template that would fail shows it is not used)."""
    from procs import free_port

    port = str(free_port())
    got = run("-H", "localhost:3", "--rsh", "/nonexistent {host}", "--port", port, *ARGS, "--out", str(tmp_path / "run"))
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert f"[localhost server 0] server listening on tcp://127.0.0.1:{port}" in got.stdout
    assert np.max(np.abs(load_params(tmp_path / "run") - sequential_params(tmp_path, *ARGS))) < 1e-8


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_launcher_leaves_nothing_on_any_host(tmp_path, hosts, how):
    before = node_dirs()
    launcher = subprocess.Popen(PY + ["launch", "-H", ",".join(hosts.hosts), "--rsh", NETNS_RSH, *LONG,
                                      "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        deadline, said = time.monotonic() + 60, []
        for line in launcher.stdout:  # the run is training on both hosts
            said.append(line)
            if "READY sent" in line or time.monotonic() > deadline:
                break
        assert len(node_dirs() - before) == 2 and all(hosts.pids().values()), "".join(said)[-3000:]
        if how == "SIGTERM":
            time.sleep(1.0)  # past step 0 (about 100 steps a second here), so server 0 has a checkpoint to write
        launcher.send_signal(getattr(signal, how))
        rest = launcher.communicate(timeout=30)[0]
        if how == "SIGTERM":  # EOF to every node: server 0 checkpoints and says so, the launcher exits 130
            assert launcher.returncode == 130 and rest.rstrip().endswith("error: interrupted by SIGTERM"), rest[-2000:]
            h0 = hosts.hosts[0]
            assert (f"[{h0} server 0] error: interrupted by SIGTERM at step ") in rest  # a checkpoint, and by hand:
            assert (f"continue with `parsgd server --resume {tmp_path / 'run'} --bind tcp://{h0}:5555 --keys DIR` on "
                    f"{h0}, and workers started with `parsgd worker --connect tcp://{h0}:5555 --keys DIR`") in rest
        assert wait_clean(hosts, before) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.stdout.close()


def test_bad_hosts_are_one_line_and_leave_nothing(tmp_path, hosts):
    before = node_dirs()
    h0, h1 = hosts.hosts
    cases = [  # (argv, exit status, the line's start)
        (["-H", f"{h0},198.18.3.9", "--rsh", NETNS_RSH], 1, "error: 198.18.3.9 worker 0: "),  # no such host
        (["-H", f"{h0},{h1}", "--rsh", NETNS_RSH, "--remote-python", "/bin/false"], 1, f"error: {h0} server 0: "),
        (["-H", f"{h0}:1,{h1}:1", "--workers", "3", "--rsh", NETNS_RSH], 2, "error: the hosts have 2 slot(s)"),
        (["-H", f"{h0},{h0}", "--rsh", NETNS_RSH], 2, f"error: -H {h0},{h0}: item '{h0}': host {h0} is listed twice"),
    ]
    for argv, status, start in cases:
        got = run(*argv, *ARGS, "--out", str(tmp_path / "run"), timeout=90)
        lines = got.stderr.strip().splitlines()
        assert got.returncode == status and len(lines) == 1 and lines[0].startswith(start), (argv, got.stderr)
        assert "Traceback" not in got.stdout + got.stderr
        assert wait_clean(hosts, before) == []


@pytest.mark.parametrize("answer, said", [
    ("echo 'parsgd node 0.0.1 protocol 1'; exec cat >/dev/null",
     "the host answers 'parsgd node 0.0.1 protocol 1', this launcher is 'parsgd node 0.1.0 protocol 5': install the "
     "same parsgd version there"),
    ("echo 'a login script line'; echo \"error: No such command 'node'.\" >&2; exit 2",
     "No such command 'node'.; that parsgd has no `node` command: install this version there"),
])
def test_another_version_is_refused(tmp_path, hosts, answer, said):
    """A host whose parsgd answers with another version line, or is older than `node`: one line naming the host."""
    before = node_dirs()
    fake = tmp_path / "python"  # stands in for another installation's interpreter
    fake.write_text(f"#!/bin/sh\n{answer}\n")
    fake.chmod(0o755)
    got = run("-H", ",".join(hosts.hosts), "--rsh", NETNS_RSH, "--remote-python", str(fake), *ARGS, "--out",
              str(tmp_path / "run"))
    assert got.returncode == 1, got.stderr
    assert got.stderr.strip() == f"error: {hosts.hosts[0]} server 0: {said}"
    assert wait_clean(hosts, before) == []


def test_node_under_torchrun_variables_equals_train(tmp_path):
    """Three `parsgd node` processes told their rank as torchrun tells it (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT) on loopback, started in any order: server 0 and two workers train the same model as train."""
    from procs import free_port

    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PARSGD_R"))}
    procs = [subprocess.Popen(PY + ["node", *ARGS, "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=dict(env, RANK=str(r), WORLD_SIZE="3", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in (2, 0, 1)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert f"server listening on tcp://127.0.0.1:{port}" in outs[1] and "worker 1: data loaded" in outs[0]
    oracle = sequential_params(tmp_path, *ARGS)
    assert np.max(np.abs(load_params(tmp_path / "run") - oracle)) < 1e-8
