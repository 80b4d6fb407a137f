"""Run one command, watch the peak RSS of every process in its tree, stop it all on a timeout.

    from proctree import run_watched
    result = run_watched(["python", "-m", "parsgd", "launch", ...], env, log_path, timeout_s=120)

Peak RSS is the kernel's own high-water mark (VmHWM in /proc/PID/status), read every
SAMPLE_EVERY_S while the process lives: VmHWM only grows, so the last reading before a process
exits is its peak up to then (the final <SAMPLE_EVERY_S of a run is the only blind spot).
Processes are found through /proc/PID/task/*/children, which also follows `parsgd launch`'s
children into their own sessions.

Noise: the load average counts the run's own processes, so instead `other_cpu_cores` is the CPU
time the whole machine was busy during the run (/proc/stat) minus the CPU time of this process and
its descendants (os.times, children included once waited for), divided by the wall time: the mean
number of cores other work took from the run (0 on an idle machine, up to 2 here).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_EVERY_S = 0.25   # cheap: a few small /proc reads per process, well under 1% of a core
TERM_GRACE_S = 5.0      # after SIGTERM on a timeout, this long before SIGKILL


@dataclass
class Watched:
    returncode: int
    wall_s: float
    timed_out: bool
    peak_rss_kb: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid -> (role, VmHWM kB)
    other_cpu_cores: float | None = None  # mean cores busy with processes outside this run meanwhile

    def peak_by_role(self) -> dict[str, dict]:
        """{role: {"max_mb": .., "n": ..}}: the largest peak among processes of each role."""
        out: dict[str, dict] = {}
        for role, kb in self.peak_rss_kb.values():
            r = out.setdefault(role, {"max_mb": 0.0, "n": 0})
            r["max_mb"] = round(max(r["max_mb"], kb / 1024), 1)
            r["n"] += 1
        return out


def busy_s() -> float | None:
    """Seconds of CPU time all cores have spent busy since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def ours_s() -> float:
    """CPU seconds of this process and of every descendant it (or they) waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def other_cores(busy0: float | None, ours0: float, wall_s: float) -> float | None:
    """Mean cores busy outside this process tree since (busy0, ours0) were read, wall_s ago."""
    busy1 = busy_s()
    if busy0 is None or busy1 is None or wall_s <= 0:
        return None
    return round(max(0.0, (busy1 - busy0) - (ours_s() - ours0)) / wall_s, 2)


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass  # it exited meanwhile
    return kids


def tree(root: int) -> list[int]:
    """root and every live descendant (through /proc/PID/task/*/children, into other sessions too)."""
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += _children(pid)
    return seen



def proc_kb(pid: int, file: str, field: str) -> int | None:
    """The kB figure of `field` (e.g. "VmHWM:", "Pss:") in /proc/PID/FILE; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _hwm_kb(pid: int) -> int | None:
    return proc_kb(pid, "status", "VmHWM:")


def role_of(pid: int, root: int) -> str:
    """server / worker / launcher for `parsgd launch` trees; main / child (Pool worker, DDP rank) otherwise."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "unknown"
    words = [a.decode(errors="replace") for a in argv]
    if "parsgd" in words:
        sub = words[words.index("parsgd") + 1] if words.index("parsgd") + 1 < len(words) else ""
        if sub == "launch":
            return "launcher"
        if sub in ("server", "worker"):
            return sub
    if any("resource_tracker" in w or "forkserver" in w for w in words):
        return "mp helper"   # multiprocessing's resource tracker / fork server, not a worker
    return "main" if pid == root else "child"


def run_watched(argv: list[str], env: dict, log_path: Path, timeout_s: float, cwd: str | None = None) -> Watched:
    """Run argv with stdout+stderr to log_path; sample VmHWM of its whole process tree meanwhile."""
    peaks: dict[int, tuple[str, int]] = {}
    stop = threading.Event()
    busy0, ours0, t0 = busy_s(), ours_s(), time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)

        def sample():
            while True:
                for pid in tree(proc.pid):
                    kb = _hwm_kb(pid)
                    if kb is not None:  # the role is read again: a fresh child shows its parent's argv until exec
                        old_role, old_kb = peaks.get(pid, ("unknown", 0))
                        role = role_of(pid, proc.pid)
                        peaks[pid] = (old_role if role == "unknown" else role, max(kb, old_kb))
                if stop.wait(SAMPLE_EVERY_S):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(proc)
        finally:
            stop.set()
            sampler.join()
    wall = time.perf_counter() - t0
    return Watched(proc.returncode, wall, timed_out, peaks, other_cores(busy0, ours0, wall))


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM our child's process group (parsgd launch then stops its own children), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=TERM_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue
