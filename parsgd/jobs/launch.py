"""Start a server and N workers on this machine, supervise them, stop them all on any exit.

    parsgd launch --workers 4 --dataset synthetic --num-samples 8192 --epochs 2

Children are started through the same entry points a user types (`python -m parsgd server`,
`python -m parsgd worker`), each in its own process group, with their output prefixed by role.
The server gets its RunConfig and ServerOptions as data: a ServerSpec JSON file in the launcher's
private temp folder, passed as `server --spec FILE` (no option is turned back into flags).
They die with the launcher (PR_SET_PDEATHSIG on Linux) and are stopped on Ctrl-C, on a server
crash and on every other exit path.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from parsgd.config import ConfigError, RunConfig, ServerOptions
from parsgd.errors import Interrupted, UserError
from parsgd.jobs.serve import ADDRESS_FILE, ServerSpec, plan_resume
from parsgd.ps.address import IPC_PATH_MAX, EndpointError
from parsgd.training.divergence import EXIT_DIVERGED
from parsgd.training.pool import die_with_parent

ADDRESS_TIMEOUT_S = 60.0      # how long the server may take to load data and bind
WORKER_EXIT_GRACE_S = 10.0    # after the server is done, workers get this long to exit by themselves
TERM_GRACE_S = 3.0            # after SIGTERM, children get this long before SIGKILL
TRANSPORTS = ("shm", "tcp", "ipc")
SPEC_FILE = "server-spec.json"  # in the launcher's private temp folder
IPC_SOCKET = "server.sock"      # --transport ipc: the server's socket, beside the spec


class LaunchError(UserError):
    """The server child never started listening; the message says how it ended (exit 1)."""


class Child:
    def __init__(self, label: str, argv: list[str], echo, preexec=None):
        self.label, self.argv, self.echo = label, argv, echo
        preexec = preexec or functools.partial(die_with_parent, os.getpid())
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True, preexec_fn=preexec)
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
            raise LaunchError(f"the server exited with status {server.proc.returncode} before listening")
        time.sleep(0.02)
    raise LaunchError(f"the server did not start listening within {ADDRESS_TIMEOUT_S:g} s")


def check_ipc_room() -> None:
    """Raises EndpointError (exit 2) when TMPDIR is so long that the ipc socket path launch makes
    there (TMPDIR/parsgd-XXXXXXXX/server.sock, from mkdtemp) would not fit in IPC_PATH_MAX bytes."""
    tmpdir = tempfile.gettempdir()
    path = os.path.join(tmpdir, "parsgd-" + "x" * 8, IPC_SOCKET)  # mkdtemp adds 8 random characters
    size = len(os.fsencode(path))
    if size > IPC_PATH_MAX:
        raise EndpointError(f"--transport ipc: the socket path would be {size} bytes ({tmpdir}/parsgd-XXXXXXXX/"
                            f"{IPC_SOCKET}), more than the {IPC_PATH_MAX} an ipc path may have: set TMPDIR to a "
                            "shorter folder (e.g. TMPDIR=/tmp) or use --transport tcp")


EVENTS_FILE = "events.jsonl"


def _all_joined(out: Path, workers: int) -> bool:
    """events.jsonl says every rank 0..workers-1 joined at least once: the server began training."""
    try:
        lines = (out / EVENTS_FILE).read_text().split("\n")[:-1]  # a line still being written waits
    except OSError:
        return False
    ranks = set()
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "join":
            ranks.add(e.get("rank"))
    return len(ranks & set(range(workers))) == workers


def _range_server(py: list[str], rank: int, servers: int, address: str, transport: str, tmp: str, echo,
                  net=None) -> Child:
    """Range server `rank` of `servers` (ps/range_server.py), reaching server 0 at `address`: on loopback
    (tcp, shared memory for shm), in `tmp` for ipc, or on its own emulated host with the run's keys."""
    argv = py + ["server", "--servers", str(servers), "--rank", str(rank), "--connect", address]
    if net is not None:
        return Child(f"server {rank}", argv + ["--bind", net.range_bind(rank), "--keys", net.keys, "--no-shm"], echo,
                     net.preexec(f"s{rank}"))
    if transport == "ipc":
        argv += ["--bind", f"ipc://{tmp}/server{rank}.sock"]
    return Child(f"server {rank}", argv + ([] if transport == "shm" else ["--no-shm"]), echo)


def _say_what_bounds(out: Path, echo) -> None:
    """`[launch] what a step waits for: bound by ...` of a finished BSP run (nothing when its steps cannot
    be split: asynchronous, or no step after the warm-up)."""
    from parsgd.analysis.rundirs import RunDirError, load_run
    from parsgd.analysis.stepparts import bound_sentence, step_parts

    try:
        parts = step_parts(load_run(out))
    except RunDirError:
        return
    if parts:
        echo(f"[launch] what a step waits for ({parts['steps']} timed steps): {bound_sentence(parts)}")


def launch_resume_command(run_dir, transport: str, link: str | None = None, colocate: bool = False,
                          delay: str | None = None) -> str:
    """`parsgd launch --resume RUN_DIR` (+ --transport unless shm, --link [--link-delay], --colocate): what
    continues an interrupted launch."""
    words = ["parsgd", "launch", "--resume", str(run_dir)] + (["--link", link] if link else [] if transport == "shm"
                                                             else ["--transport", transport])
    words += ["--link-delay", delay] if link and delay else []
    return shlex.join(words + (["--colocate"] if colocate else []))


def _interrupted(signum: int, out: Path, resume_command: str, since: float, resumed: bool) -> Interrupted:
    """`interrupted by SIGINT; the checkpoint is at step K; continue with `parsgd launch --resume OUT``,
    or no hint when this run wrote no checkpoint (one left by an earlier run in OUT is not this run's)."""
    from parsgd.ps.checkpoint import NAME, CheckpointError, load_checkpoint

    message = f"interrupted by {signal.Signals(signum).name}"
    path = out / NAME
    try:
        if path.is_file() and (resumed or path.stat().st_mtime >= since):
            step = load_checkpoint(out)["step"]
            return Interrupted(f"{message}; the checkpoint is at step {step}; continue with "
                               f"`{resume_command}`")
    except (OSError, CheckpointError):
        pass
    return Interrupted(f"{message} before the first checkpoint: nothing to resume")


def launch(cfg: RunConfig | None, opts: ServerOptions, transport: str = "shm", out=None, resume=None,
           worker_faults: dict[int, str] | None = None, restart_workers: int = 0, echo=click.echo,
           given: dict | None = None, link=None, force: bool = False, notes: bool = True) -> int:
    """Runs a whole parameter-server job on this machine; returns the server's exit status.

    Starts a server for `cfg` and `cfg.workers` worker processes. `opts` gives the fault knobs; its
    bind address, shm flag and transport label are set here from `transport` (shm, tcp or ipc).
    `out`: the run directory (default runs/ps-pN-TIMESTAMP); `resume`: a run directory to continue
    from its checkpoint instead: `cfg` is ignored, `given` (the options the user gave explicitly:
    {RunConfig field or "out": value}) is checked against the checkpoint (parsgd.jobs.serve.resume_config)
    except `workers`: as many workers start as the checkpoint's run has shards, and a different
    `workers` is only noted. A finished run is said so (returns 0). `worker_faults`: {worker index:
    --faults text} (see parsgd.ps.faults.parse_launch_faults); `restart_workers`: restarts allowed in
    all. `link` (parsgd.jobs.emulate.LinkOptions): the server and each worker on an emulated host of
    their own, over links of that rate, with CURVE (see parsgd.jobs.emulate; the caller ran its
    preflight). Every child line goes to `echo`, prefixed by its role; a new run in a folder that holds an
    earlier one first prints `[launch] replacing the earlier run in OUT: FILES` (files parsgd did not write
    there are refused, ForeignFiles, unless `force`). With `notes` (the experiment turns them off: its
    report has them), a warning line when there are more workers than cores, and at the end which part
    bounds the run's steps (`[launch] what a step waits for: bound by link ...`, analysis/stepparts.py).

    Raises ConfigError (unknown transport), EndpointError (ipc with too long a TMPDIR), OutputDirError
    (`out` unusable), CheckpointError and ResumeMismatch (--resume), LaunchError (the server exited,
    or did not listen, within ADDRESS_TIMEOUT_S) and Interrupted (SIGINT or SIGTERM: the signal is
    passed on to the server, which checkpoints; the message says how to continue).
    """
    from parsgd.training.progress import warn_oversubscribed
    from parsgd.training.rundir import check_replace, default_out, prepare_dir, replacing_line

    if transport not in TRANSPORTS:
        raise ConfigError(f"unknown transport {transport!r}: use one of {', '.join(TRANSPORTS)}")
    if transport == "ipc":
        check_ipc_room()
    started = time.time()
    if resume:
        given = dict(given or {})
        asked = given.pop("workers", None)
        cfg, _, finished = plan_resume(resume, given)
        if finished:
            echo(f"[launch] {finished}")
            return 0
        if asked is not None and asked != cfg.workers:
            echo(f"[launch] --workers {asked} ignored: the checkpoint's run cuts every batch into {cfg.workers} "
                 f"shards, so {cfg.workers} workers start")
    elif cfg is None:
        raise ConfigError("launch needs a config unless it resumes a run")
    workers = cfg.workers
    out = prepare_dir(resume or out or default_out("ps", workers))
    old = [] if resume else check_replace(out, force)
    if old:  # the server (started with a spec) removes them and says nothing
        echo(f"[launch] {replacing_line(out, old)}")
    if notes:
        warn_oversubscribed(workers, lambda line: echo(f"[launch] {line}"))
    py = [sys.executable, "-m", "parsgd"]
    (out / ADDRESS_FILE).unlink(missing_ok=True)
    tmp = tempfile.mkdtemp(prefix="parsgd-")  # 0700: an ipc socket and the spec here are ours alone
    bind = f"ipc://{tmp}/{IPC_SOCKET}" if transport == "ipc" else "tcp://127.0.0.1:*"
    net = None
    if link is not None:  # emulated hosts: shared memory and ipc cannot cross them
        from parsgd.jobs.emulate import EmulatedRun
        net = EmulatedRun(link, workers, tmp, echo, servers=cfg.servers)
        bind, transport = net.bind, "tcp"
    resume_command = launch_resume_command(out, transport, link and link.rate, opts.colocate,
                                           link.delay if link and link.delay_s else None)
    spec = ServerSpec(config=None if resume else cfg, out=str(out), resume=str(out) if resume else None,
                      given=given if resume else None, force=force,
                      server=dataclasses.replace(opts, bind=bind, shm=transport == "shm",
                                                 transport=f"tcp@{link.rate}" if net else transport,
                                                 resume_command=resume_command,
                                                 **({"keys_dir": net.keys} if net else {})))
    children: list[Child] = []
    interrupted = []
    old = {s: signal.signal(s, lambda signum, _: interrupted.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if net is not None:
            net.start(cfg)
        spec_path = spec.write(Path(tmp) / SPEC_FILE)
        server = Child("server", py + ["server", "--spec", str(spec_path)], echo,
                       **({"preexec": net.preexec("server")} if net else {}))
        children.append(server)
        address = _wait_for_address(out / ADDRESS_FILE, server)
        if net is not None:
            net.record(out)
        children += [_range_server(py, s, cfg.servers, address, transport, tmp, echo, net)
                     for s in range(1, cfg.servers)]
        faults = worker_faults or {}

        def start_worker(i: int) -> Child:
            argv = py + ["worker", "--connect", address, "--name", f"w{i}"]
            if faults.get(i):
                argv += ["--faults", faults[i]]
            if net is None:
                return Child(f"worker {i}", argv, echo)
            return Child(f"worker {i}", argv + ["--keys", net.keys], net.worker_echo(i, echo), net.preexec(f"w{i}"))

        first = 1 if opts.colocate else 0  # worker 0 then computes in the server's process
        workers_by_index = {i: start_worker(i) for i in range(first, workers)}
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
            # Every worker process failed: nothing can train, unless a colocated worker 0 goes on alone
            # once the run has begun (all P workers joined at least once).
            if not stopping and not any(w.alive() for w in workers_by_index.values()) and \
                    not (opts.colocate and (first == workers or _all_joined(out, workers))):
                if not workers_by_index or all(w.proc.returncode != 0 for w in workers_by_index.values()):
                    echo("[launch] every worker process has exited: stopping the server")
                    server.signal(signal.SIGTERM)
                    stopping = True
            time.sleep(0.05)
        if interrupted:
            echo(f"[launch] {signal.Signals(interrupted[0]).name}: stopping the server and the workers")
            server.signal(interrupted[0])  # the signal that came, so the server's own line names it
            try:
                server.proc.wait(timeout=TERM_GRACE_S * 2)
            except subprocess.TimeoutExpired:
                pass
            raise _interrupted(interrupted[0], out, resume_command, started, bool(resume))
        deadline = time.monotonic() + WORKER_EXIT_GRACE_S
        for w in workers_by_index.values():
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        server.reader.join(timeout=5)
        status = exit_status(server.proc.returncode)
        if notes and status in (0, EXIT_DIVERGED):
            _say_what_bounds(out, echo)
        return status
    finally:
        stop_all(children)
        if net is not None:
            net.close()
        for s, h in old.items():
            signal.signal(s, h)
        shutil.rmtree(tmp, ignore_errors=True)
