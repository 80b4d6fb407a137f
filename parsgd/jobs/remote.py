"""`parsgd launch --hostfile FILE` / `-H a:2,b:2`: the servers and workers on other machines, started
through a command template (`--rsh`, default `ssh -o BatchMode=yes {host}`), each a `parsgd node --stdin`.

    parsgd launch -H node1:2,node2:2 --dry-run --dataset synthetic --num-samples 4096 --epochs 1

Placement: parsgd.cluster.hostfile.place (servers in the first slots, then workers in hostfile order).
Each host's command is the template with `{host}` replaced, then `env PARSGD_RANK=.. PARSGD_WORLD_SIZE=..
PARSGD_SERVER=HOST:PORT PARSGD_HOST=.. [-x ...] PYTHON -m parsgd node --stdin --servers S` as words
(shell-quoted: ssh hands them to the remote shell). `localhost` entries run the same words here,
without the template. The launcher reads each node's first line (its version and protocol) and
compares it with its own, then sends one JSON line on the node's stdin: the run's CURVE keys (made
for the run unless --keys DIR) and, to server 0, the run spec; the pipe stays open, and its EOF (the
launcher exits, is killed, or the SSH connection drops) stops the node. Every line a node prints
comes back prefixed `[HOST ROLE INDEX]`; the first `error: ...` line of any node becomes the
launcher's one-line error, naming the host.
"""
from __future__ import annotations

import functools
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from parsgd.cluster.hostfile import Host, HostfileError, place
from parsgd.errors import Interrupted, UserError
from parsgd.jobs.launch import WORKER_EXIT_GRACE_S, Child, exit_status, stop_all
from parsgd.training.divergence import EXIT_DIVERGED
from parsgd.training.pool import die_with_parent

DEFAULT_RSH = "ssh -o BatchMode=yes {host}"
HELLO_TIMEOUT_S = 60.0      # a node must print its version line within this (ssh connect, python start)
NODE_EXIT_GRACE_S = 10.0    # after EOF on its stdin, a node stops its child (5 s grace) and exits
KEY_FILES = ("server.key", "server.key_secret", "worker.key", "worker.key_secret")
WORKER_KEYS = ("server.key", "worker.key_secret")


class RemoteError(UserError):
    """A host could not be reached, runs another parsgd, or one of its processes failed (exit 1):
    `HOST ROLE INDEX: what it said`."""


@dataclass(frozen=True)
class HostsOptions:
    """What the command line gave: the hosts, the --rsh template, the interpreter on the hosts
    (--remote-python), extra environment (-x NAME[=VALUE], resolved), server 0's --port, --keys, --dry-run."""
    hosts: tuple[Host, ...]
    rsh: str = DEFAULT_RSH
    python: str = "python3"
    env: tuple[tuple[str, str], ...] = ()
    port: int = 5555
    keys: str | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class NodePlan:
    label: str
    host: str
    role: str
    index: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = field(default=())


def forwarded_env(items: tuple[str, ...], environ=os.environ) -> tuple[tuple[str, str], ...]:
    """`-x NAME=VALUE` as given, `-x NAME` with this process's value (HostfileError if it has none)."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not name.isidentifier():
            raise HostfileError(f"-x {item}: give NAME or NAME=VALUE (e.g. -x PYTHONPATH)")
        if not sep:
            if name not in environ:
                raise HostfileError(f"-x {name}: {name} is not set here; give -x {name}=VALUE")
            value = environ[name]
        out.append((name, value))
    return tuple(out)


def plan(servers: int, workers: int | None, opts: HostsOptions) -> list[NodePlan]:
    """The command of every process (servers first). Raises HostfileError (too few slots, localhost mixed
    with other hosts, a template without a usable {host}) and ValueError from shlex."""
    local = [h.local for h in opts.hosts]
    if any(local) and not all(local):
        raise HostfileError("localhost cannot be mixed with other hosts: they could not reach a server there; name "
                            "this machine as the others reach it (its host name or address) instead")
    if "{host}" not in opts.rsh:
        raise HostfileError(f"--rsh {opts.rsh!r} has no {{host}}: write e.g. --rsh 'ssh -o BatchMode=yes {{host}}'")
    placements = place(list(opts.hosts), servers, workers)
    server = placements[0].host
    world = len(placements)
    plans = []
    for p in placements:
        env = (("PARSGD_RANK", str(p.rank)), ("PARSGD_WORLD_SIZE", str(world)),
               ("PARSGD_SERVER", f"{server}:{opts.port}"),
               ("PARSGD_HOST", p.host), ("PYTHONUNBUFFERED", "1"), *opts.env)
        words = ["env", *(f"{k}={v}" for k, v in env), opts.python, "-m", "parsgd", "node", "--stdin",
                 "--servers", str(servers)]
        if p.host in ("localhost", "127.0.0.1"):
            argv = words
        else:
            argv = [w.replace("{host}", p.host) for w in shlex.split(opts.rsh)] + [shlex.quote(w) for w in words]
        plans.append(NodePlan(p.label, p.host, p.role, p.index, tuple(argv), env))
    return plans


def dry_run_lines(plans: list[NodePlan], out: str) -> list[str]:
    """What --dry-run prints: per process its command, the environment it sets and what goes on stdin."""
    hosts = list(dict.fromkeys(p.host for p in plans))
    lines = [f"[dry-run] {len(plans)} processes on {len(hosts)} host(s); the run directory {out} on {plans[0].host}"]
    for p in plans:
        what = "the run's CURVE keys and the run spec (config, server options, --out)" if p.role == "server" \
            and p.index == 0 else ("the run's CURVE keys" if p.role == "server" else "the worker's CURVE keys")
        lines += [f"[dry-run] {p.label}: {shlex.join(p.argv)}",
                  f"[dry-run]   environment: {' '.join(f'{k}={v}' for k, v in p.env)}",
                  f"[dry-run]   stdin: {what}, then kept open (EOF stops the node)"]
    return lines


class RemoteNode(Child):
    """One `parsgd node --stdin` behind its --rsh command: its hello line, its output, its errors. A Child
    (alive, signal, stop_all) with pipes of its own: stdin stays open, stdout and stderr apart."""

    def __init__(self, p: NodePlan, echo):
        self.plan, self.label, self.echo = p, p.label, echo
        self.hello: queue.Queue = queue.Queue()
        self.errors: list[str] = []
        self.last = ""
        self.proc = subprocess.Popen(list(p.argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     # SIGTERM when the launcher dies: a local node then still removes its keys
                                     preexec_fn=functools.partial(die_with_parent, os.getpid(), signal.SIGTERM))
        self.reader = threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True)
        self.err_reader = threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True)
        self.reader.start()
        self.err_reader.start()

    def _pump(self, stream, first_is_hello: bool) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if first_is_hello and line.startswith("parsgd node "):  # a login script may print lines before it
                first_is_hello = False
                self.hello.put(line)
                continue
            if line.startswith("error: "):
                self.errors.append(line.removeprefix("error: "))
            if line.strip():
                self.last = line
            self.echo(f"[{self.label}] {line}")
        if first_is_hello:
            self.hello.put(None)
        stream.close()

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError:
            pass  # it exited: its own lines say why

    def close_stdin(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def failure(self) -> str:
        """`LABEL: what it said` for a node that failed."""
        self.err_reader.join(timeout=2)
        said = self.errors[0] if self.errors else self.last or "no output"
        code = self.proc.poll()
        return f"{self.label}: {said}" + (f" (exit status {exit_status(code)})" if code and not self.errors else "")


def _await_hello(nodes: list[RemoteNode], expected: str) -> None:
    """Raises RemoteError unless every node printed `expected` within HELLO_TIMEOUT_S."""
    deadline = time.monotonic() + HELLO_TIMEOUT_S
    for n in nodes:
        try:
            line = n.hello.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RemoteError(f"{n.label}: no answer within {HELLO_TIMEOUT_S:g} s (is the host up, and --rsh right?)")
        if line is None:
            n.proc.wait(timeout=10)
            said = n.failure()
            hint = ("; install parsgd there, or point --remote-python at a python that has it" if "No module named" in
                    said else "; that parsgd has no `node` command: install this version there" if
                    "No such command 'node'" in said else "")
            raise RemoteError(said + hint)
        if line != expected:
            raise RemoteError(f"{n.label}: the host answers {line[:120]!r}, this launcher is {expected!r}: install "
                              "the same parsgd version there")


def _read_keys(keys: str) -> dict[str, str]:
    from parsgd.ps.sockets import load_keypair

    d = Path(keys)
    for name in ("server.key_secret", "worker.key_secret", "server.key"):
        load_keypair(d / name)  # KeysError names a missing or unreadable file before anything starts
    files = {n: (d / n).read_text() for n in KEY_FILES if (d / n).is_file()}
    files.update({f"authorized/{p.name}": p.read_text() for p in sorted((d / "authorized").glob("*.key"))})
    return files


def launch_hosts(cfg, sopts, opts: HostsOptions, out: str, echo, force: bool = False) -> int:
    """Runs the job of `cfg` on `opts.hosts`; returns server 0's exit status (or 0 after --dry-run).

    `sopts`: the ServerOptions (bind, keys and transport are set on server 0's host). Raises
    HostfileError (exit 2), KeysError, RemoteError (a host failed: one line naming it) and Interrupted."""
    import dataclasses

    from parsgd.jobs.node import hello
    from parsgd.jobs.serve import ServerSpec

    plans = plan(cfg.servers, cfg.workers, opts)
    if opts.dry_run:
        for line in dry_run_lines(plans, out):
            echo(line)
        return 0
    tmp = tempfile.mkdtemp(prefix="parsgd-")
    nodes: list[RemoteNode] = []
    interrupted: list[int] = []
    old = {s: signal.signal(s, lambda signum, _: interrupted.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if opts.keys is None:
            from parsgd.ps.sockets import keygen
            keygen(Path(tmp) / "keys")
        keys = _read_keys(opts.keys or str(Path(tmp) / "keys"))
        shutil.rmtree(Path(tmp) / "keys", ignore_errors=True)  # the payloads hold them now
        # the keys folder of a node goes with it, and --hostfile has no --resume: say what continues by hand
        at = f"tcp://{plans[0].host}:{opts.port}"
        resume = f"parsgd server --resume {out} --bind {at} --keys DIR` on {plans[0].host}, and workers started " \
                 f"with `parsgd worker --connect {at} --keys DIR"
        spec = ServerSpec(config=cfg, server=dataclasses.replace(sopts, resume_command=resume), out=out,
                          force=force).to_dict()
        nodes = [RemoteNode(p, echo) for p in plans]
        _await_hello(nodes, hello())
        for n in nodes:
            mine = keys if n.plan.role == "server" else {k: v for k, v in keys.items() if k in WORKER_KEYS}
            payload = {"keys": mine, "spec": spec if n.plan.role == "server" and n.plan.index == 0 else None}
            n.send((json.dumps(payload) + "\n").encode())
        server, others = nodes[0], nodes[1:]
        failed = None
        while server.alive() and not interrupted and failed is None:
            failed = next((n for n in others if not n.alive() and n.proc.returncode != 0), None)
            time.sleep(0.05)
        if interrupted:
            echo(f"[launch] {signal.Signals(interrupted[0]).name}: stopping every node")
            raise Interrupted(f"interrupted by {signal.Signals(interrupted[0]).name}")
        if failed is not None:
            raise RemoteError(failed.failure())
        status = exit_status(server.proc.returncode)
        if status in (0, EXIT_DIVERGED):  # trained to the end: the workers were told to stop
            _wait_all(others, WORKER_EXIT_GRACE_S)
        server.reader.join(timeout=5)
        if status == 1:
            raise RemoteError(server.failure())
        return status
    finally:
        _stop(nodes)
        for s, h in old.items():
            signal.signal(s, h)
        shutil.rmtree(tmp, ignore_errors=True)


def _stop(nodes: list[RemoteNode]) -> None:
    """EOF to every node (each stops its child and exits), a grace period, then the --rsh processes go."""
    for n in nodes:
        n.close_stdin()
    _wait_all(nodes, NODE_EXIT_GRACE_S)
    stop_all(nodes)
    for n in nodes:
        n.err_reader.join(timeout=2)


def _wait_all(nodes: list[RemoteNode], seconds: float) -> None:
    """Waits up to `seconds` in all for every node to exit by itself."""
    deadline = time.monotonic() + seconds
    for n in nodes:
        try:
            n.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
