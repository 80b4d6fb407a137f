"""Start a server and N workers on this machine, supervise them, stop them all on any exit.

    parsgd launch --workers 4 --dataset synthetic --num-samples 8192 --epochs 2

Children are started through the same entry points a user types (`python -m parsgd server`,
`python -m parsgd worker`), each in its own process group, with their output prefixed by role.
They die with the launcher (PR_SET_PDEATHSIG on Linux) and are stopped on Ctrl-C, on a server
crash and on every other exit path.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

ADDRESS_FILE = "server.address"
ADDRESS_TIMEOUT_S = 60.0      # how long the server may take to load data and bind
WORKER_EXIT_GRACE_S = 10.0    # after the server is done, workers get this long to exit by themselves
TERM_GRACE_S = 3.0            # after SIGTERM, children get this long before SIGKILL
TRANSPORTS = ("shm", "tcp", "ipc")


def _die_with_parent():
    """In the child: get SIGKILL when the launcher dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Child:
    def __init__(self, label: str, argv: list[str], echo):
        self.label, self.argv, self.echo = label, argv, echo
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True, preexec_fn=_die_with_parent)
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self):
        for raw in self.proc.stdout:
            self.echo(f"[{self.label}] {raw.decode(errors='replace').rstrip()}")
        self.proc.stdout.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


def stop_all(children: list[Child]) -> None:
    """SIGTERM, a grace period, then SIGKILL: nothing is left behind."""
    for c in children:
        c.signal(signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    for c in children:
        try:
            c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.signal(signal.SIGKILL)
            c.proc.wait()
    for c in children:
        c.reader.join(timeout=2)


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: 128 + N when signal N ended it."""
    return 128 - returncode if returncode < 0 else returncode


def _wait_for_address(path: Path, server: Child) -> str:
    deadline = time.monotonic() + ADDRESS_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.is_file():
            return path.read_text().strip()
        if not server.alive():
            raise click.ClickException(f"the server exited with status {server.proc.returncode} before listening")
        time.sleep(0.02)
    raise click.ClickException(f"the server did not start listening within {ADDRESS_TIMEOUT_S:g} s")


def launch(server_args: list[str], workers: int, transport: str, out: Path, worker_args: list[str] | None = None,
           worker_faults: dict[int, str] | None = None, restart_workers: int = 0, echo=click.echo) -> int:
    """Run a whole parameter-server job; returns the server's exit status."""
    py = [sys.executable, "-m", "parsgd"]
    out.mkdir(parents=True, exist_ok=True)
    (out / ADDRESS_FILE).unlink(missing_ok=True)
    tmp = tempfile.mkdtemp(prefix="parsgd-")  # 0700: an ipc socket here is ours alone
    bind = f"ipc://{tmp}/server.sock" if transport == "ipc" else "tcp://127.0.0.1:*"
    shm = ["--shm"] if transport == "shm" else ["--no-shm"]
    children: list[Child] = []
    interrupted = []
    old = {s: signal.signal(s, lambda signum, _: interrupted.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = Child("server", py + ["server", "--bind", bind, "--workers", str(workers), "--out", str(out),
                                       "--transport-label", transport, *shm, *server_args], echo)
        children.append(server)
        address = _wait_for_address(out / ADDRESS_FILE, server)
        faults = worker_faults or {}

        def start_worker(i: int) -> Child:
            argv = py + ["worker", "--connect", address, "--name", f"w{i}", *(worker_args or [])]
            if faults.get(i):
                argv += ["--faults", faults[i]]
            return Child(f"worker {i}", argv, echo)

        workers_by_index = {i: start_worker(i) for i in range(workers)}
        children += workers_by_index.values()
        restarts, stopping = 0, False
        while server.alive() and not interrupted:
            for i, w in list(workers_by_index.items()):
                if w.alive() or w.proc.returncode == 0:
                    continue
                echo(f"[launch] worker {i} exited with status {w.proc.returncode}")
                del workers_by_index[i]
                if restarts < restart_workers:
                    restarts += 1
                    echo(f"[launch] restarting worker {i} ({restarts}/{restart_workers})")
                    workers_by_index[i] = start_worker(i)
                    children.append(workers_by_index[i])
            if not stopping and not any(w.alive() for w in workers_by_index.values()):
                if not workers_by_index or all(w.proc.returncode != 0 for w in workers_by_index.values()):
                    echo("[launch] every worker has exited: stopping the server")
                    server.signal(signal.SIGTERM)
                    stopping = True
            time.sleep(0.05)
        if interrupted:
            echo(f"[launch] {signal.Signals(interrupted[0]).name}: stopping the server and the workers")
            server.signal(signal.SIGTERM)
            try:
                server.proc.wait(timeout=TERM_GRACE_S * 2)
            except subprocess.TimeoutExpired:
                pass
            return 130
        deadline = time.monotonic() + WORKER_EXIT_GRACE_S
        for w in workers_by_index.values():
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        server.reader.join(timeout=5)
        return exit_status(server.proc.returncode)
    finally:
        stop_all(children)
        for s, h in old.items():
            signal.signal(s, h)
        for leftover in Path(tmp).iterdir():
            leftover.unlink(missing_ok=True)
        os.rmdir(tmp)
