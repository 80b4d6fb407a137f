"""Hostfiles, -H lists, the placement rule, Slurm nodelists, the environment contracts of `parsgd node` and the
commands `launch --hostfile` builds: pure functions, checked in milliseconds (parsgd/cluster/hostfile.py,
parsgd/cluster/contract.py, parsgd/jobs/remote.py plan), and the --dry-run output, golden."""
from __future__ import annotations

import os
import subprocess

import pytest

from parsgd.cluster.contract import ContractError, expand_nodelist, resolve
from parsgd.cluster.hostfile import Host, HostfileError, parse_hostfile, parse_hostfile_text, parse_hosts, place
from parsgd.jobs.remote import HostsOptions, forwarded_env, plan
from procs import PY

ARGS = ["--dataset", "synthetic", "--num-samples", "2030", "--epochs", "1", "--dtype", "float64"]


def test_hostfile_format():
    text = "# lab machines\nnode1 slots=2\n\n  node2   # one slot\nlocalhost slots=3 max_slots=4\n"
    assert parse_hostfile_text(text, "hf") == [Host("node1", 2), Host("node2", 1), Host("localhost", 3)]
    assert parse_hostfile_text(text, "hf")[2].local and not parse_hostfile_text(text, "hf")[0].local


@pytest.mark.parametrize("text, where, what", [
    ("a slots=2\nb\na slots=1\n", "hf:3", "host a is listed twice (first at hf:1)"),
    ("a\nb slots=0\n", "hf:2", "slots='0'"),
    ("a slots=x\n", "hf:1", "slots='x'"),
    ("a slots=\n", "hf:1", "slots=''"),
    ("\n\na cores=2\n", "hf:3", "unknown field 'cores=2'"),
    ("a;b\n", "hf:1", "'a;b' is not a host name"),
    ("# nothing\n\n", "hf", "hf names no host"),
])
def test_hostfile_errors_name_file_and_line(text, where, what):
    with pytest.raises(HostfileError) as e:
        parse_hostfile_text(text, "hf")
    assert str(e.value).startswith(where) and what in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code == 2


def test_hostfile_from_disk(tmp_path):
    (tmp_path / "hosts").write_text("n1 slots=2\nn2 slots=2\n")
    assert parse_hostfile(tmp_path / "hosts") == [Host("n1", 2), Host("n2", 2)]
    with pytest.raises(HostfileError, match="cannot read hostfile .*missing"):
        parse_hostfile(tmp_path / "missing")


def test_short_form():
    assert parse_hosts("host1:2,host2:2") == [Host("host1", 2), Host("host2", 2)]
    assert parse_hosts("a, b:3") == [Host("a", 1), Host("b", 3)]
    for bad, what in (("a:2,a:1", "listed twice"), ("a:0", "slots='0'"), ("a,,b", "is empty"), ("a:x", "slots='x'")):
        with pytest.raises(HostfileError, match=what):
            parse_hosts(bad)


def test_placement_is_map_by_slot():
    hosts = parse_hosts("a:2,b:2,c:1")
    got = [(p.role, p.index, p.rank, p.host) for p in place(hosts, 2, 3)]
    assert got == [("server", 0, 0, "a"), ("server", 1, 1, "a"), ("worker", 0, 2, "b"), ("worker", 1, 3, "b"),
                   ("worker", 2, 4, "c")]
    assert [p.host for p in place(hosts, 1, None)] == ["a", "a", "b", "b", "c"]  # every slot: 1 server, 4 workers
    assert [p.host for p in place(hosts, 1, 1)] == ["a", "a"]


def test_too_few_slots_is_one_line():
    with pytest.raises(HostfileError) as e:
        place(parse_hosts("a:2,b"), 1, 3)
    assert str(e.value) == ("the hosts have 3 slot(s) but 1 server(s) and 3 worker(s) need 4; add hosts or slots "
                            "(`HOST slots=N`), or ask for fewer --workers")
    with pytest.raises(HostfileError, match="1 slot"):
        place(parse_hosts("a"), 1, None)  # a server and no room for a worker


@pytest.mark.parametrize("text, names", [
    ("n[1-3,7]", ["n1", "n2", "n3", "n7"]),
    ("a1,b[01-03]", ["a1", "b01", "b02", "b03"]),
    ("node[098-101]", ["node098", "node099", "node100", "node101"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("n[1-2]x,m5 o[3]", ["n1x", "n2x", "m5", "o3"]),
    ("localhost", ["localhost"]),
])
def test_nodelist(text, names):
    assert expand_nodelist(text) == names


@pytest.mark.parametrize("text", ["n[1-", "n[3-1]", "n[a]", "n]1[", "", "n[1]]"])
def test_bad_nodelist(text):
    with pytest.raises(ContractError, match="nodelist"):
        expand_nodelist(text)


def test_contract_parsgd():
    env = {"PARSGD_RANK": "2", "PARSGD_WORLD_SIZE": "4", "PARSGD_SERVER": "198.18.0.1:6000", "PARSGD_HOST": "h2"}
    r = resolve(env, servers=1)
    assert (r.source, r.role, r.index, r.workers, r.server_host, r.port, r.own_host) == \
        ("parsgd", "worker", 1, 3, "198.18.0.1", 6000, "h2")
    assert resolve(dict(env, PARSGD_RANK="1"), servers=2).role == "server"
    with pytest.raises(ContractError, match="PARSGD_ROLE=server but PARSGD_RANK=2 makes this process a worker"):
        resolve(dict(env, PARSGD_ROLE="server"))
    with pytest.raises(ContractError, match="PARSGD_SERVER is not"):
        resolve({"PARSGD_RANK": "0", "PARSGD_WORLD_SIZE": "2"})


def test_contract_slurm_first_node_and_order():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_JOB_NODELIST": "n[7-9]", "SLURM_STEP_NODELIST": "n[8-9]",
           "SLURMD_NODENAME": "n8", "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3", "RANK": "1"}
    r = resolve(env, port=6001)
    assert (r.source, r.role, r.index, r.server_host, r.port, r.own_host) == ("slurm", "server", 0, "n8", 6001, "n8")
    del env["SLURM_STEP_NODELIST"]
    assert resolve(env).server_host == "n7" and resolve(env).port == 5555
    assert resolve(dict(env, MASTER_ADDR="m", MASTER_PORT="7000")).server_host == "m"
    assert resolve(env, server_addr="x:9").server_host == "x" and resolve(env, server_addr="x:9").port == 9
    # the parsgd variables come first
    assert resolve(dict(env, PARSGD_RANK="1", PARSGD_WORLD_SIZE="2", PARSGD_SERVER="a:1")).source == "parsgd"


def test_contract_openmpi_and_torchrun():
    mpi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "MASTER_ADDR": "head"}
    r = resolve(mpi, servers=2)
    assert (r.source, r.role, r.index, r.workers, r.server_host, r.port) == ("openmpi", "worker", 1, 2, "head", 5555)
    with pytest.raises(ContractError, match="names no server host: set MASTER_ADDR"):
        resolve({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})
    torch = {"RANK": "0", "WORLD_SIZE": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    r = resolve(torch)
    assert (r.source, r.role, r.workers, r.server_host, r.port) == ("torchrun", "server", 4, "127.0.0.1", 29500)
    assert resolve(torch, port=7000).port == 7000  # --port beats MASTER_PORT
    assert resolve(dict(torch, TORCHELASTIC_USE_AGENT_STORE="True")).port == 29501  # torchrun's store has 29500
    with pytest.raises(ContractError, match="MASTER_PORT is not"):
        resolve({"RANK": "0", "WORLD_SIZE": "5", "MASTER_ADDR": "h"})


@pytest.mark.parametrize("env, what", [
    ({}, "found no rank in the environment"),
    ({"SLURM_PROCID": "0"}, "SLURM_NTASKS is not"),
    ({"SLURM_PROCID": "x", "SLURM_NTASKS": "2"}, "SLURM_PROCID='x' is not a whole number"),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "2"}, "SLURM_PROCID=2 is not below SLURM_NTASKS=2"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, "leave no worker"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "no SLURM_STEP_NODELIST"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "0"}, "port 1..65535"),
])
def test_contract_errors(env, what):
    with pytest.raises(ContractError, match=what) as e:
        resolve(env)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_plan_commands():
    opts = HostsOptions(tuple(parse_hosts("h1:2,h2")), "ssh -p 2222 {host}", "/opt/my python", (("A", "x y"),), 6000)
    got = plan(1, None, opts)
    assert [(p.label, p.argv[:4]) for p in got] == [("h1 server 0", ("ssh", "-p", "2222", "h1")),
                                                    ("h1 worker 0", ("ssh", "-p", "2222", "h1")),
                                                    ("h2 worker 1", ("ssh", "-p", "2222", "h2"))]
    # ssh hands the words to the remote shell: each is quoted for it
    assert got[2].argv[4:] == ("env", "PARSGD_RANK=2", "PARSGD_WORLD_SIZE=3", "PARSGD_SERVER=h1:6000", "PARSGD_HOST=h2",
                               "PYTHONUNBUFFERED=1", "'A=x y'", "'/opt/my python'", "-m", "parsgd", "node", "--stdin",
                               "--servers", "1")
    local = plan(1, 1, HostsOptions((Host("localhost", 2),), "ssh {host}", "/opt/my python"))
    assert local[1].argv == ("env", "PARSGD_RANK=1", "PARSGD_WORLD_SIZE=2", "PARSGD_SERVER=localhost:5555",
                             "PARSGD_HOST=localhost", "PYTHONUNBUFFERED=1", "/opt/my python", "-m", "parsgd", "node",
                             "--stdin", "--servers", "1")  # run here, no template, no shell: unquoted


@pytest.mark.parametrize("hosts, rsh, what", [
    ("localhost:2,h2", "ssh {host}", "localhost cannot be mixed with other hosts"),
    ("h1:2", "ssh", "has no {host}"),
    ("h1", "ssh {host}", "1 slot"),
])
def test_plan_errors(hosts, rsh, what):
    with pytest.raises(HostfileError, match=what):
        plan(1, None, HostsOptions(tuple(parse_hosts(hosts)), rsh, "py"))


def test_forwarded_env():
    assert forwarded_env(("A=1", "B"), {"B": "2"}) == (("A", "1"), ("B", "2"))
    with pytest.raises(HostfileError, match="-x C: C is not set here"):
        forwarded_env(("C",), {})
    with pytest.raises(HostfileError, match="give NAME or NAME=VALUE"):
        forwarded_env(("1X=2",), {})


def test_dry_run_golden(tmp_path):
    """--dry-run prints every command, the environment it sets and what goes on stdin; nothing starts."""
    (tmp_path / "hosts").write_text("198.18.2.1 slots=2\n198.18.2.2\n")
    got = subprocess.run(PY + ["launch", "--hostfile", str(tmp_path / "hosts"), "--rsh", "ssh -F /cfg {host}",
                               "--remote-python", "/opt/py", "-x", "PYTHONPATH=/src", "--port", "6000", "--dry-run",
                               "--out", "/runs/x", *ARGS], capture_output=True, text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    env = "PARSGD_WORLD_SIZE=3 PARSGD_SERVER=198.18.2.1:6000 PARSGD_HOST={h} PYTHONUNBUFFERED=1 PYTHONPATH=/src"
    cmd = "ssh -F /cfg {h} env PARSGD_RANK={r} " + env + " /opt/py -m parsgd node --stdin --servers 1"
    lines = ["[dry-run] 3 processes on 2 host(s); the run directory /runs/x on 198.18.2.1"]
    for r, (h, label, stdin) in enumerate([
            ("198.18.2.1", "server 0", "the run's CURVE keys and the run spec (config, server options, --out)"),
            ("198.18.2.1", "worker 0", "the worker's CURVE keys"), ("198.18.2.2", "worker 1", "the worker's CURVE keys")]):
        lines += [f"[dry-run] {h} {label}: " + cmd.format(h=h, r=r),
                  f"[dry-run]   environment: PARSGD_RANK={r} " + env.format(h=h),
                  f"[dry-run]   stdin: {stdin}, then kept open (EOF stops the node)"]
    assert got.stdout.splitlines() == lines
    assert not (tmp_path / "runs").exists()


CLEAN = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                                          "OMPI_COMM_WORLD_RANK") and not k.startswith(("SLURM",
                                                                                                       "PARSGD_R"))}


@pytest.mark.parametrize("env, argv, status, line", [
    ({}, [], 2, "error: parsgd node found no rank in the environment: run it under srun, mpirun or torchrun, or set "
                "PARSGD_RANK, PARSGD_WORLD_SIZE and PARSGD_SERVER=HOST:PORT"),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "3", "SLURM_JOB_NODELIST": "198.18.9.9"}, [], 1,
     "error: server 0 at tcp://198.18.9.9:5555 is not a loopback address: the run needs CURVE keys (`parsgd keygen "
     "DIR` once, on a shared folder or copied to every host, then --keys DIR on every rank)"),
    ({"RANK": "1", "WORLD_SIZE": "3", "MASTER_ADDR": "no-such-host.invalid", "MASTER_PORT": "9"}, [], 1,
     "error: cannot resolve the server host 'no-such-host.invalid': "),
    ({"RANK": "1", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9"}, ["--port", "0"], 2,
     "error: Invalid value for --port: 0 is not a port 1..65535"),
    ({"RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9"}, ["--colocate"], 2,
     "error: --colocate cannot be used with parsgd node: every rank is a process of its own"),
])
def test_node_refusals_are_one_line(env, argv, status, line):
    got = subprocess.run(PY + ["node", *argv], capture_output=True, text=True, env=dict(CLEAN, **env), timeout=30)
    assert got.returncode == status and got.stdout == "" and got.stderr.startswith(line), got.stderr
    assert len(got.stderr.splitlines()) == 1
