"""Network namespaces for emulated hosts: every command inside one, a lock per run, a sweep of the stale.

    python -c "from parsgd.cluster.netns import sweep_stale; print(sweep_stale())"

Safety rules (each tested in tests/test_cluster.py): every `ip` and `tc` call names its namespace
(`ip -n NS`, `tc -n NS`), every sysctl and `nft` runs through `ip netns exec NS`, and a veth pair is created
directly inside its two namespaces, so a step that fails cannot fall through to the machine's own
namespace; nothing else is touched there (no link, address, route, rule, qdisc or sysctl). No
kernel module is loaded; /etc/hosts and /etc/netns are never read or written (address literals).

Names: `parsgd-PID-ROLE` (PID: the launcher's; ROLE: `net` for the bridge, `server`, `w0`, ...).
The launcher holds an exclusive flock on LOCK_DIR/PID.lock for the whole run; a pid is reused, so
"the launcher is gone" means "its lock can be taken", never "no process has that pid". The sweep
(`sweep_stale`, run before every new emulated cluster) removes the namespaces of runs whose lock is
free, the way parsgd.ps.shm.sweep_stale removes shared memory of dead servers.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from parsgd.errors import UserError

PREFIX = "parsgd"
NETNS_DIR = Path("/run/netns")          # where `ip netns add` puts a namespace's name
LOCK_DIR = Path("/run/parsgd")          # one PID.lock per emulated run, flock-held by its launcher
COMMAND_TIMEOUT_S = 20.0
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
CLONE_NEWNET = 0x40000000
_NAME = re.compile(rf"^{PREFIX}-(\d+)-([a-z0-9]+)$")


class NetworkError(UserError):
    """A step of building or removing the emulated network failed (exit 1); names the command and why."""


class PrivilegeError(UserError):
    """The emulated network needs root with CAP_NET_ADMIN (exit 1), said before anything starts."""


def ns_name(pid: int, role: str) -> str:
    """`parsgd-PID-ROLE`, the name of one namespace of the run of launcher PID."""
    return f"{PREFIX}-{pid}-{role}"


def _capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check_privileges(what: str = "--link") -> None:
    """Raises PrivilegeError, one line saying what is needed, unless this process may build namespaces:
    root (uid 0), CAP_NET_ADMIN and CAP_SYS_ADMIN (namespaces are mounted), and `ip` and `tc` on PATH."""
    caps = _capabilities()
    missing = [name for name, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_SYS_ADMIN", CAP_SYS_ADMIN))
               if not caps >> bit & 1]
    if os.geteuid() != 0 or missing:
        who = "not root" if os.geteuid() != 0 else f"without {' and '.join(missing)}"
        raise PrivilegeError(f"{what} builds network namespaces, which needs root with CAP_NET_ADMIN "
                             f"(this process is {who}); run it as root (sudo), or leave out {what}")
    tools = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if tools:
        raise PrivilegeError(f"{what} needs the iproute2 tools ({' and '.join(tools)} not found on PATH): "
                             "install iproute2 (apt-get install iproute2), or leave out " + what)


def run(argv: list[str], what: str, ok_missing: bool = False, stdin: str | None = None) -> str:
    """Runs one command (`stdin`: text it reads); returns its stdout. Raises NetworkError naming `what`,
    the command and its error. `ok_missing`: a namespace or device that no longer exists is not an error."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"cannot {what}: `{' '.join(argv)}` failed: {exc}") from None
    if done.returncode != 0:
        err = (done.stderr or done.stdout).strip().splitlines()
        text = err[-1] if err else f"exit status {done.returncode}"
        if ok_missing and re.search(r"No such file|Cannot find device|does not exist|not found", text):
            return ""
        raise NetworkError(f"cannot {what}: `{' '.join(argv)}`: {text}")
    return done.stdout


def reap(proc: subprocess.Popen, timeout_s: float) -> None:
    """Waits up to `timeout_s` for a process this run started in a namespace (a delay relay, a probe
    server), then SIGKILLs it and waits, and closes its stdout pipe: nothing is left running or open."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def ip(ns: str, *args: str, what: str = "configure the emulated network", ok_missing: bool = False) -> str:
    """`ip -n NS ARGS`: never the machine's own namespace (ip fails if NS does not exist)."""
    return run(["ip", "-n", ns, *args], what, ok_missing)


def tc(ns: str, *args: str, what: str = "shape an emulated link") -> str:
    """`tc -n NS ARGS`."""
    return run(["tc", "-n", ns, *args], what)


def sysctl(ns: str, *settings: str) -> None:
    """`ip netns exec NS sysctl -w K=V ...`: the sysctls of namespace NS only."""
    run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings], f"set {' '.join(settings)} in {ns}")


def nft(ns: str, script: str, what: str = "redirect an emulated host's connections to its delay relay") -> None:
    """`ip netns exec NS nft -f -` with `script`: nftables rules of namespace NS only (nf_tables is part of
    the kernel: no module is loaded)."""
    run(["ip", "netns", "exec", ns, "nft", "-f", "-"], what, stdin=script)


def add_namespace(name: str) -> None:
    """A new named namespace with IPv6 off (so no link-local address appears) and loopback up."""
    run(["ip", "netns", "add", name], f"create network namespace {name}")
    sysctl(name, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    ip(name, "link", "set", "lo", "up")


def delete_namespace(name: str) -> None:
    """Kills what still runs in namespace `name` (a dead launcher's children), then removes it."""
    if not (NETNS_DIR / name).exists():
        return
    for pid in run(["ip", "netns", "pids", name], f"list processes in {name}", ok_missing=True).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    run(["ip", "netns", "delete", name], f"remove network namespace {name}", ok_missing=True)


def namespaces(pid: int | None = None) -> list[str]:
    """parsgd's namespaces (of launcher `pid` only, if given), from NETNS_DIR."""
    try:
        names = sorted(p.name for p in NETNS_DIR.iterdir())
    except OSError:
        return []
    return [n for n in names if (m := _NAME.match(n)) and (pid is None or int(m.group(1)) == pid)]


class RunLock:
    """The lock that says a launcher's emulated run is alive: LOCK_DIR/PID.lock, flock'ed exclusively
    for the run's life (close-on-exec, so no child holds it after the launcher is gone)."""

    def __init__(self, pid: int | None = None):
        self.pid = os.getpid() if pid is None else pid
        self.path = LOCK_DIR / f"{self.pid}.lock"
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        """Takes the lock without waiting; True if taken (its launcher, if any, is gone)."""
        LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                raise
            try:  # the file may have been removed (by its releaser) between open and flock: retry on the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)

    def release(self) -> None:
        """Removes the lock file, then lets the lock go."""
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def sweep_stale(keep_pid: int | None = None) -> list[str]:
    """Removes the namespaces of every emulated run whose launcher is gone (its lock can be taken);
    returns their names. The run of `keep_pid` (this launcher's, whose lock it holds) is left alone."""
    removed = []
    for pid in sorted({int(_NAME.match(n).group(1)) for n in namespaces()} - {keep_pid}):
        lock = RunLock(pid)
        try:
            if not lock.try_acquire():
                continue
        except OSError:
            continue
        try:
            for name in namespaces(pid):
                delete_namespace(name)
                removed.append(name)
        finally:
            lock.release()
    return removed


def _libc():
    return ctypes.CDLL("libc.so.6", use_errno=True)


def enter(name: str) -> None:
    """Moves the calling process (thread) into namespace `name` (setns). Raises OSError: never goes on in
    the machine's namespace. Used in a child between fork and exec (subprocess preexec_fn)."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def has_netem(pid: int | None = None) -> bool:
    """True when the kernel has the netem qdisc: tried in a scratch namespace (parsgd-PID-probe), removed
    again. Loads no module: a kernel without netem answers 'unknown qdisc'."""
    name = ns_name(os.getpid() if pid is None else pid, "probe")
    add_namespace(name)
    try:
        try:
            tc(name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")
            return True
        except NetworkError:
            return False
    finally:
        delete_namespace(name)
