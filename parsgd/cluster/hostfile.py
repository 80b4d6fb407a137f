"""Hostfiles (`host slots=N`, as mpirun, horovodrun and deepspeed read them) and where each process goes.

    python -c "from parsgd.cluster.hostfile import parse_hosts, place; print(place(parse_hosts('a:2,b:2'), 1, 3))"

A hostfile line is `HOST [slots=N]` (no `slots=`: one slot); `#` starts a comment; blank lines are
skipped; `localhost` (or 127.0.0.1) is this machine. `-H a:2,b` is the same list on one line. The
placement rule (`place`) is Open MPI's `--map-by slot`: the slots are numbered in hostfile order
(every slot of the first host, then the next host's), server ranks 0..S-1 take the first S slots and
workers 0..N-1 the next N. Pure: no socket, no process.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from parsgd.errors import UsageError

_HOST = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.\-]*[A-Za-z0-9_])?$|^\[[0-9A-Fa-f:.]+\]$")
LOCAL_NAMES = ("localhost", "127.0.0.1")


class HostfileError(UsageError):
    """A hostfile or -H list that cannot be used (exit 2): names the file and line, or the item."""


@dataclass(frozen=True)
class Host:
    name: str
    slots: int

    @property
    def local(self) -> bool:
        """This machine: started directly, without --rsh."""
        return self.name in LOCAL_NAMES


@dataclass(frozen=True)
class Placement:
    """One process of a run: `role` "server" (rank `index` of S) or "worker" (index 0..N-1), its global
    `rank` (servers first: rank < S is server `rank`, then worker rank - S) and the host it runs on."""
    role: str
    index: int
    rank: int
    host: str

    @property
    def label(self) -> str:
        return f"{self.host} {self.role} {self.index}"


def _slots(text: str, where: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise HostfileError(f"{where}: slots={text!r} is not a whole number >= 1; write e.g. `node1 slots=2`")
    return int(text)


def _check_host(name: str, where: str) -> None:
    if not _HOST.match(name):
        raise HostfileError(f"{where}: {name!r} is not a host name or address; write one host per line, "
                            "e.g. `node1 slots=2`")


def _no_duplicates(hosts: list[Host], where: list[str]) -> list[Host]:
    seen: dict[str, str] = {}
    for host, at in zip(hosts, where):
        if host.name in seen:
            raise HostfileError(f"{at}: host {host.name} is listed twice (first at {seen[host.name]}); give it "
                                f"once with all its slots, e.g. `{host.name} slots=4`")
        seen[host.name] = at
    if not hosts:
        raise HostfileError(f"{where[0] if where else 'the host list'} names no host; add lines like `node1 slots=2`")
    return hosts


def parse_hostfile_text(text: str, source: str) -> list[Host]:
    """The hosts of a hostfile's `text` (`source`: its name, for messages), in file order.

    Raises HostfileError naming `source:LINE` for a bad line (an unknown key, bad slots, a bad host
    name), a host given twice, or no host at all."""
    hosts, where = [], []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        at = f"{source}:{number}"
        _check_host(words[0], at)
        slots = 1
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if key in ("slots", "max_slots", "max-slots") and sep:
                if key == "slots":
                    slots = _slots(value, at)
                continue  # max_slots: a limit parsgd never goes past anyway (it oversubscribes nothing)
            raise HostfileError(f"{at}: unknown field {word!r}; a line is `HOST [slots=N]`")
        hosts.append(Host(words[0], slots))
        where.append(at)
    return _no_duplicates(hosts, where or [source])


def parse_hostfile(path) -> list[Host]:
    """The hosts of the hostfile at `path`. Raises HostfileError (unreadable file, or see parse_hostfile_text)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise HostfileError(f"cannot read hostfile {path}: {getattr(exc, 'strerror', None) or exc}; "
                            "give a readable text file of `HOST slots=N` lines") from None
    return parse_hostfile_text(text, str(path))


def parse_hosts(text: str) -> list[Host]:
    """The hosts of `-H host1:2,host2` (HOST[:SLOTS], comma-separated; no slots: one). Raises HostfileError."""
    hosts, where = [], []
    for item in text.split(","):
        at = f"-H {text}: item {item.strip()!r}"
        name, sep, slots = item.strip().rpartition(":") if ":" in item and not item.strip().endswith("]") \
            else (item.strip(), "", "")
        if not name:
            raise HostfileError(f"{at} is empty; write -H host1:2,host2:2")
        _check_host(name, at)
        hosts.append(Host(name, _slots(slots, at) if sep else 1))
        where.append(at)
    return _no_duplicates(hosts, where)


def place(hosts: list[Host], servers: int, workers: int | None) -> list[Placement]:
    """Where each process goes (`--map-by slot`): servers 0..S-1 in the first slots, then workers 0..N-1;
    `workers` None: one per slot left. Returns servers first, then workers.

    Raises HostfileError (one line) when there are fewer slots than S + N, or no slot left for a worker."""
    slots = [h.name for h in hosts for _ in range(h.slots)]
    wanted = servers + (max(1, len(slots) - servers) if workers is None else workers)
    if len(slots) < wanted:
        raise HostfileError(f"the hosts have {len(slots)} slot(s) but {servers} server(s) and {wanted - servers} "
                            f"worker(s) need {wanted}; add hosts or slots (`HOST slots=N`), or ask for fewer "
                            "--workers")
    out = [Placement("server", s, s, slots[s]) for s in range(servers)]
    return out + [Placement("worker", w, servers + w, slots[servers + w]) for w in range(wanted - servers)]
