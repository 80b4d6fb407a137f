"""`srun -n 3 python -m parsgd node ...` on a one-node Slurm cluster the test starts (munged -F, slurmctld -D,
slurmd -D; proctrack/linuxproc, task/none; keys, state, spool and logs in a temp folder; ports on loopback):
server 0 and two workers train the same model as `parsgd train` in float64, and `scancel` stops a running
job with nothing left behind. CI installs slurm-wlm and munge."""
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

from procs import stop_daemons, free_port, load_params, sequential_params
from test_hosts import ARGS, LONG, node_dirs

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("machine-wide")]  # machine-wide: tests/conftest.py
CHECKOUT = Path(__file__).resolve().parent.parent
SLURM_CONF = """ClusterName=parsgdtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={tmp}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/linear
SchedulerType=sched/builtin
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


class SlurmCluster:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.conf = tmp / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), PYTHONPATH=str(CHECKOUT))
        self.daemons: list[subprocess.Popen] = []

    def _daemon(self, name: str, argv: list[str]) -> None:
        self.daemons.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(self.tmp / f"{name}.out", "wb"),
                                             stderr=subprocess.STDOUT, env=self.env))

    def start(self) -> None:
        t = self.tmp
        (t / "state").mkdir()
        (t / "spool").mkdir()
        (t / "munge.key").write_bytes(os.urandom(1024))
        (t / "munge.key").chmod(0o400)
        self.conf.write_text(SLURM_CONF.format(tmp=t, ctld_port=free_port(), d_port=free_port()))
        self._daemon("munged", ["munged", "-F", "--force", f"--key-file={t}/munge.key", f"--socket={t}/munge.sock",
                                f"--pid-file={t}/munged.pid", f"--log-file={t}/munged.log", f"--seed-file={t}/munged.seed"])
        self._wait(lambda: (t / "munge.sock").exists(), "munged")
        self._daemon("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._daemon("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", "localhost"])
        self._wait(lambda: self.run(["sinfo", "-h", "-o", "%T"]).stdout.strip() == "idle", "the node to be idle")

    def _wait(self, ready, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [d.args[0] for d in self.daemons if d.poll() is not None]
            logs = {p.name: p.read_text()[-1500:] for p in self.tmp.glob("*.out")}
            assert not dead and time.monotonic() < deadline, f"waiting for {what}: {dead} exited; {logs}"
            time.sleep(0.1)

    def run(self, argv, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=kw.pop("timeout", 30), **kw)

    def stop(self) -> None:
        stop_daemons(self.daemons)


@pytest.fixture(scope="module")
def slurm():
    for tool in ("munged", "slurmctld", "slurmd", "srun"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: install slurm-wlm and munge (.ci/run does)")
    tmp = Path(tempfile.mkdtemp(prefix="parsgd-slurm-"))
    tmp.chmod(0o755)  # munged wants every client able to reach its socket's folder
    c = SlurmCluster(tmp)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_srun_three_tasks_equals_train(tmp_path, slurm):
    port = str(free_port())
    got = slurm.run(["srun", "-n", "3", f"--chdir={tmp_path}", sys.executable, "-m", "parsgd", "node", "--port", port,
                     *ARGS, "--out", str(tmp_path / "run")], timeout=120)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert f"server listening on tcp://127.0.0.1:{port}" in got.stdout and "Traceback" not in got.stdout + got.stderr
    oracle = sequential_params(tmp_path, *ARGS)
    assert np.max(np.abs(load_params(tmp_path / "run") - oracle)) < 1e-8


def test_scancel_stops_a_running_job_cleanly(tmp_path, slurm):
    before, port, name = node_dirs(), str(free_port()), f"parsgd-{os.getpid()}"
    srun = subprocess.Popen(["srun", "-n", "3", f"--job-name={name}", f"--chdir={tmp_path}", sys.executable, "-m",
                             "parsgd", "node", "--port", port, *LONG, "--out", str(tmp_path / "run")], env=slurm.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready, deadline = 0, time.monotonic() + 60
        for line in srun.stdout:
            ready += "READY sent" in line
            if ready == 2 or time.monotonic() > deadline:
                break
        assert ready == 2 and len(node_dirs() - before) == 3
        assert slurm.run(["scancel", "--name", name]).returncode == 0
        rest = srun.communicate(timeout=60)[0]
        assert "Traceback" not in rest
        deadline = time.monotonic() + 20
        while True:
            left = subprocess.run(["pgrep", "-f", f"127.0.0.1:{port}|{tmp_path}"], capture_output=True, text=True)
            left = left.stdout.split() + sorted(node_dirs() - before)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert left == []
        while slurm.run(["squeue", "-h", "-n", name]).stdout.strip() and time.monotonic() < deadline + 20:
            time.sleep(0.2)  # COMPLETING: slurmd reports the end
        assert slurm.run(["squeue", "-h", "-n", name]).stdout.strip() == ""
        assert "interrupted by SIGTERM" in rest, rest[-3000:]
    finally:
        if srun.poll() is None:
            srun.send_signal(signal.SIGKILL)
        srun.stdout.close()
