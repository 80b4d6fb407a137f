"""`parsgd node`: one process of a run started by another engine (srun, mpirun, torchrun) or by
`parsgd launch --hostfile`, which finds its role in the environment (parsgd.cluster.contract).

    srun -n 3 python -m parsgd node --dataset synthetic --num-samples 4096 --epochs 1 --keys ~/.parsgd-keys

The node is a small supervisor: it resolves its role, then runs `parsgd server --spec FILE` (rank 0),
a range server (ranks 1..S-1) or `parsgd worker` (the rest) as its child, passes SIGINT / SIGTERM on,
and exits with the child's status. With `--stdin` (what `launch --hostfile` uses) it first prints
HELLO (its version and protocol, which the launcher compares), then reads one JSON line from stdin
(the run's keys and, for server 0, the run spec), keeps the keys in a private 0700 folder removed at
exit, and takes EOF on stdin as "the launcher is gone": the child gets SIGTERM, then SIGKILL.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from parsgd import __version__
from parsgd.cluster.contract import NodeRole
from parsgd.errors import UserError
from parsgd.files import write_file
from parsgd.ps.protocol.base import PROTOCOL_VERSION

STDIN_TIMEOUT_S = 60.0       # --stdin: how long the launcher may take to send the keys after HELLO
STDIN_MAX_BYTES = 1 << 20    # the keys and a run spec are a few KiB
TERM_GRACE_S = 5.0           # after the launcher is gone (EOF), the child gets this long after SIGTERM
KEY_NAME = re.compile(r"^(server|worker)\.key(_secret)?$|^authorized/[A-Za-z0-9_.\-]+\.key$")


def hello() -> str:
    """The first line a `--stdin` node prints: `parsgd node VERSION protocol N`."""
    return f"parsgd node {__version__} protocol {PROTOCOL_VERSION}"


class NodeError(UserError):
    """The node cannot start its role (exit 1): an unresolvable host, a bad stdin payload; says the fix."""


def resolve_ip(host: str, what: str) -> str:
    """The IPv4 address of `host` (a name or an address). Raises NodeError naming `what`."""
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise NodeError(f"cannot resolve {what} {host!r}: {exc.strerror or exc}; give a name this host resolves "
                        "(or an address)") from None


def read_payload(fd: int = 0, timeout_s: float = STDIN_TIMEOUT_S) -> dict:
    """One JSON line from `fd`: {"keys": {name: text}, "spec": ServerSpec dict or null}. Raises NodeError."""
    data, deadline = b"", time.monotonic() + timeout_s
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise NodeError(f"--stdin: no keys arrived within {timeout_s:g} s; --stdin is for `parsgd launch "
                            "--hostfile`, which sends them")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise NodeError("--stdin: stdin closed before the keys arrived (the launcher is gone)")
        data += chunk
        if len(data) > STDIN_MAX_BYTES:
            raise NodeError(f"--stdin: more than {STDIN_MAX_BYTES} bytes without a newline")
    try:
        payload = json.loads(data.split(b"\n", 1)[0])
        keys = payload["keys"]
        if not all(isinstance(k, str) and KEY_NAME.match(k) and isinstance(v, str) for k, v in keys.items()):
            raise ValueError("unexpected key file names")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NodeError(f"--stdin: the launcher's line is not a parsgd payload ({exc}); is the launcher the same "
                        "parsgd version?") from None
    return payload


def write_keys(keys: dict[str, str], directory: Path) -> str:
    """Writes the key files (all 0600) into `directory` (0700); returns it as a string."""
    (directory / "authorized").mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, text in keys.items():
        write_file(directory / name, text.encode(), secret=True)
    return str(directory)


def child_argv(role: NodeRole, keys_dir: str | None, spec_path: str | None, own_host: str | None) -> list[str]:
    """The `python -m parsgd server|worker ...` command of `role`: server 0 from its spec file, range
    server r listening on its own host (a free port), a worker connecting to server 0."""
    py = [sys.executable, "-m", "parsgd"]
    keys = ["--keys", keys_dir] if keys_dir else []
    server = f"tcp://{resolve_ip(role.server_host, 'the server host')}:{role.port}"
    if role.role == "server" and role.index == 0:
        return py + ["server", "--spec", spec_path]
    if role.role == "server":
        me = own_host or socket.gethostname()
        return py + ["server", "--servers", str(role.servers), "--rank", str(role.index), "--connect", server,
                     "--bind", f"tcp://{resolve_ip(me, 'this host')}:*", "--no-shm", *keys]
    return py + ["worker", "--connect", server, "--name", f"w{role.index}", *keys]


def server_bind(role: NodeRole) -> str:
    """Where server 0 listens: server 0's host (as the others reach it) and the contract's port."""
    return f"tcp://{resolve_ip(role.server_host, 'the server host')}:{role.port}"


def run_node(role: NodeRole, spec, keys_dir: str | None, use_stdin: bool) -> int:
    """Runs `role` as a child process; returns its exit status (as a shell reports it).

    `spec` (server 0 only, a parsgd.jobs.serve.ServerSpec without bind / keys) or, with `use_stdin`,
    the one in the launcher's payload. `keys_dir`: the CURVE keys (--keys); with `use_stdin`, the
    payload's, in a private temp folder removed at exit. Raises NodeError, and what the spec raises."""
    import dataclasses

    from parsgd.jobs.launch import exit_status
    from parsgd.jobs.serve import ServerSpec
    from parsgd.training.pool import die_with_parent

    tmp = Path(tempfile.mkdtemp(prefix="parsgd-node-"))  # 0700: the keys and the spec are ours alone
    gone = threading.Event()
    try:
        if use_stdin:
            payload = read_payload()
            keys_dir = write_keys(payload["keys"], tmp / "keys")
            if payload.get("spec") is not None:
                spec = ServerSpec.from_dict(payload["spec"])
            threading.Thread(target=_watch_eof, args=(gone,), daemon=True).start()
        spec_path = None
        if role.role == "server" and role.index == 0:
            spec = dataclasses.replace(spec, server=dataclasses.replace(
                spec.server, bind=server_bind(role), keys_dir=keys_dir, shm=False, transport="tcp"))
            spec_path = str(spec.write(tmp / "server-spec.json"))
        argv = child_argv(role, keys_dir, spec_path, role.own_host)
        parent = os.getpid()
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=lambda: die_with_parent(parent))
        old = {s: signal.signal(s, lambda signum, _: _forward(child, signum)) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return exit_status(_wait(child, gone))
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if child.poll() is None:
                child.kill()
                child.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _forward(child: subprocess.Popen, signum: int) -> None:
    if child.poll() is None:
        child.send_signal(signum)


def _watch_eof(gone: threading.Event) -> None:
    """Sets `gone` when stdin reaches EOF (the launcher exited, was killed, or its SSH connection dropped)."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    gone.set()


def _wait(child: subprocess.Popen, gone: threading.Event) -> int:
    """The child's return code; once `gone` is set: SIGTERM, TERM_GRACE_S, then SIGKILL."""
    while child.poll() is None:
        if gone.wait(0.1):
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
            return child.wait()
    return child.returncode
