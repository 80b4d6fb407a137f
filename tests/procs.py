"""Real server and worker processes for integration tests: free loopback ports, output capture, cleanup.

    from procs import Procs     # inside a test:  with Procs() as p: s = p.server(...); p.worker(addr)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PY = [sys.executable, "-m", "parsgd"]
SMALL = ["--dataset", "synthetic", "--num-samples", "2000", "--epochs", "1", "--hidden", "32,16",
         "--batch-size", "100"]
# Training that no test outlasts (25,600 steps of a tiny model): a test acts while it runs.
BIG_TRAINING = ["--dataset", "synthetic", "--num-samples", "8192", "--batch-size", "16", "--epochs", "50",
                "--hidden", "32,16"]
TRANSPORTS = ("shm", "tcp", "ipc")  # as `launch --transport`: shm = TCP messages + shared memory; tcp, ipc: sockets only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, argv, log: Path, env=None):
        self.argv, self.log_path = argv, log
        self.log = open(log, "wb")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                  start_new_session=True)
        self.pid = self.p.pid

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout=120) -> int:
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.argv[3]} did not exit within {timeout} s:\n{self.output()[-3000:]}")

    def wait_for(self, text: str | re.Pattern, timeout=60, every: float = 0.05) -> None:
        """Until the output holds `text` (a string, or a compiled regex searched for)."""
        found = text.search if isinstance(text, re.Pattern) else lambda out: text in out
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found(self.output()):
                return
            if self.p.poll() is not None:
                raise AssertionError(f"exited ({self.p.returncode}) before printing {text!r}:\n{self.output()[-3000:]}")
            time.sleep(every)
        raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output()[-3000:]}")

    def signal(self, sig) -> None:
        if self.p.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait()


class Procs:
    """Starts processes in a tmp folder; kills whatever is still running on exit."""

    def __init__(self, tmp: Path):
        self.tmp, self.all, self.dirs = Path(tmp), [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.all:
            p.kill()
        for p in self.all:
            p.log.close()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)

    def address(self, transport: str = "shm") -> str:
        """A fresh address for a server of `transport`: a free loopback port, or an ipc socket in a short
        private folder under /tmp (pytest's tmp_path can be longer than an ipc path may be)."""
        if transport == "ipc":
            folder = tempfile.mkdtemp(prefix="pg-", dir="/tmp")
            self.dirs.append(folder)
            return f"ipc://{folder}/s.sock"
        return f"tcp://127.0.0.1:{free_port()}"

    def start(self, name: str, args, env=None) -> Proc:
        proc = Proc(PY + list(args), self.tmp / f"{name}-{len(self.all)}.log", env)
        self.all.append(proc)
        return proc

    def server(self, out, workers, *extra, port=None, env=None, transport: str = "shm",
               address: str | None = None) -> tuple[Proc, str]:
        """`parsgd server` on `address` (default: a fresh one for `transport`, or `port` on 127.0.0.1).
        transport shm: TCP messages and shared memory for the workers; tcp, ipc: `--no-shm`, so every
        parameter and gradient frame crosses the socket."""
        address = address or (f"tcp://127.0.0.1:{port}" if port else self.address(transport))
        sockets_only = [] if transport == "shm" else ["--no-shm"]
        proc = self.start("server", ["server", "--bind", address, "--workers", str(workers), "--out", str(out),
                                     "--wait-timeout", "60", *sockets_only, *extra], env)
        return proc, address

    def worker(self, address, *extra, env=None) -> Proc:
        return self.start("worker", ["worker", "--connect", address, "--connect-timeout", "60", *extra], env)


def load_params(run_dir) -> np.ndarray:
    with np.load(Path(run_dir) / "model.npz") as z:
        names = sorted(z.files, key=lambda n: (int(n[1:]), n[0] == "b"))
        return np.concatenate([z[n].ravel() for n in names])


def events(run_dir) -> list[dict]:
    """The complete lines of events.jsonl: a line the server is still writing (no newline yet) waits."""
    path = Path(run_dir) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.exists() else []


def sequential_params(tmp: Path, *args) -> np.ndarray:
    """The oracle: `parsgd train` with the same options."""
    out = tmp / "sequential"
    subprocess.run(PY + ["train", *args, "--out", str(out)], check=True, capture_output=True, timeout=300)
    return load_params(out)


def no_traceback(*procs) -> None:
    for p in procs:
        assert "Traceback" not in p.output(), p.output()[-3000:]


def ends_cleanly(server: Proc, *workers: Proc, timeout: float = 120, worker_timeout: float = 30) -> None:
    """The run finished: the server and then every worker exit 0, none with a traceback."""
    assert server.wait(timeout) == 0, server.output()[-3000:]
    for w in workers:
        assert w.wait(worker_timeout) == 0, w.output()[-3000:]
    no_traceback(server, *workers)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, from /proc: what a Ctrl-C run must not leave behind."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            found.append(int(stat.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...), from /proc; whatever their group."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [child for child, ppid in parent.items() if ppid in frontier]
        found += kids
        frontier = kids
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def none_left(pids, timeout: float = 3.0) -> None:
    """Every one of `pids` is gone within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while [p for p in pids if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], f"left behind: {[p for p in pids if alive(p)]}"


def shell_status(returncode: int) -> int:
    """A Popen returncode as a shell reports it: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def no_group_left(pgid: int, timeout: float = 2.0) -> None:
    """Every process of group `pgid` is gone within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_members(pgid) == [], f"left behind: {group_members(pgid)}"


def parsgd(*args, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    """`python -m parsgd ARGS` to the end (PARSGD_NO_DOWNLOAD=1), output captured as text; no traceback allowed."""
    result = subprocess.run(PY + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PARSGD_NO_DOWNLOAD": "1", **(env or {})})
    assert "Traceback" not in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def error_lines(result) -> list[str]:
    """The `error: ...` lines a command printed on stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def cli_run(args, **kw):
    """`parsgd ARGS` in-process through click's CliRunner (never downloading), timed in `.took` (s)."""
    from click.testing import CliRunner

    from parsgd.cli import cli
    env = {"PARSGD_NO_DOWNLOAD": "1", **kw.pop("env", {})}
    t0 = time.monotonic()
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env, **kw)
    result.took = time.monotonic() - t0
    return result


def one_line_error(result, code, *words, before_loading: bool = False, within: float | None = None) -> str:
    """The command exited `code` with exactly one stderr line `error: ...` holding every word, no
    traceback; `before_loading`: no dataset was loaded; `within`: it answered within that many s."""
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    for w in words:
        assert w in err, err
    if before_loading:
        assert "dataset:" not in result.stdout, "refused before any data is loaded"
    if within is not None:
        assert result.took < within, f"took {result.took:.2f} s: something was loaded or waited for"
    return err



def stop_daemons(daemons, timeout: float = 10.0) -> None:
    """SIGTERM to each (last started first), then SIGKILL after `timeout`: a test's sshd, munged, slurmd ..."""
    for d in reversed(daemons):
        d.terminate()
        try:
            d.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait()
