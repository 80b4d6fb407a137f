"""Which process of a run this one is, from the environment another engine (or `parsgd launch`) set.

    SLURM_PROCID=0 SLURM_NTASKS=3 SLURM_JOB_NODELIST='n[1-2]' python -c \
"import os; from parsgd.cluster.contract import resolve; print(resolve(os.environ))"

`parsgd node` reads, in this order (the first that gives a rank wins):

| contract | rank | world size | server 0's host | port |
|---|---|---|---|---|
| parsgd | PARSGD_RANK | PARSGD_WORLD_SIZE | PARSGD_SERVER=HOST:PORT | in PARSGD_SERVER |
| Slurm | SLURM_PROCID | SLURM_NTASKS | first node of SLURM_STEP_NODELIST, else SLURM_JOB_NODELIST | the option |
| Open MPI | OMPI_COMM_WORLD_RANK | OMPI_COMM_WORLD_SIZE | MASTER_ADDR | MASTER_PORT, else the option |
| torchrun | RANK | WORLD_SIZE | MASTER_ADDR | MASTER_PORT |

MASTER_ADDR / MASTER_PORT, when set, also name server 0 under Slurm; `--server-addr` beats them all, and
`--port` beats MASTER_PORT. Under torchrun's agent store (TORCHELASTIC_USE_AGENT_STORE=True, what torchrun
sets) torchrun itself listens on MASTER_PORT, so server 0 takes MASTER_PORT + 1.
PARSGD_ROLE (`server` or `worker`), if set, must agree with the rank. Rank r < S is server r (rank 0:
server 0, the coordinator), rank r >= S is worker r - S, so a world of W runs W - S workers.
PARSGD_HOST (else SLURMD_NODENAME) names this node's own host, where a range server listens.
Pure: reads the mapping it is given, opens no socket.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from parsgd.errors import UsageError

DEFAULT_PORT = 5555


class ContractError(UsageError):
    """The environment names no rank, or names one badly (exit 2); says which variable and the fix."""


@dataclass(frozen=True)
class NodeRole:
    """This process: `role` "server" or "worker", `index` (server rank, or worker 0..workers-1), the
    global `rank` of `world`, `workers` = world - servers, server 0 at `server_host`:`port`, and the
    contract (`source`) that said so; `own_host`: this node's host name if the environment gave one."""
    source: str
    role: str
    index: int
    rank: int
    world: int
    servers: int
    server_host: str
    port: int
    own_host: str | None = None

    @property
    def workers(self) -> int:
        return self.world - self.servers


_ITEM = re.compile(r"\[([^\[\]]*)\]")


def _expand_range(body: str, text: str) -> list[str]:
    values = []
    for part in body.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ContractError(f"nodelist {text!r}: bad range {part!r} in [{body}]; Slurm writes e.g. n[1-3,7]")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        width = len(lo) if lo.startswith("0") else 0  # n[01-03] keeps the padding: n01 n02 n03
        values += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return values


def _expand_name(name: str, text: str) -> list[str]:
    """`rack[1-2]-n[01-02]` -> rack1-n01 rack1-n02 rack2-n01 rack2-n02 (every bracket, leftmost outermost)."""
    m = _ITEM.search(name)
    if not m:
        if "[" in name or "]" in name or not name:
            raise ContractError(f"nodelist {text!r}: unbalanced brackets in {name!r}; Slurm writes e.g. n[1-3,7]")
        return [name]
    head, tail = name[:m.start()], name[m.end():]
    if "[" in head or "]" in head:
        raise ContractError(f"nodelist {text!r}: unbalanced brackets in {name!r}; Slurm writes e.g. n[1-3,7]")
    return [head + v + rest for v in _expand_range(m.group(1), text) for rest in _expand_name(tail, text)] \
        if tail else [head + v for v in _expand_range(m.group(1), text)]


def expand_nodelist(text: str) -> list[str]:
    """The host names of a Slurm hostlist expression, in order: `n[1-3,7]` -> n1 n2 n3 n7, `a1,b[01-03]`
    -> a1 b01 b02 b03; items separated by commas (outside brackets) or spaces; several brackets in one
    name make every combination. Raises ContractError for an empty list, bad ranges or brackets."""
    items, depth, cur = [], 0, ""
    for ch in text.strip():
        depth += ch == "["
        depth -= ch == "]"
        if depth < 0:
            raise ContractError(f"nodelist {text!r}: unbalanced brackets; Slurm writes e.g. n[1-3,7]")
        if depth == 0 and (ch == "," or ch.isspace()):
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    names = [n for item in items if item for n in _expand_name(item, text)]
    if depth or not names:
        raise ContractError(f"nodelist {text!r} names no host; Slurm writes e.g. n[1-3,7]")
    return names


def _int(env: Mapping[str, str], name: str, low: int) -> int:
    text = env[name].strip()
    if not re.fullmatch(r"[0-9]+", text) or int(text) < low:
        raise ContractError(f"{name}={env[name]!r} is not a whole number >= {low}; set it to the process's "
                            f"{'rank' if low == 0 else 'count'}")
    return int(text)


def _host_port(text: str, name: str) -> tuple[str, int | None]:
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        return text.strip(), None
    if not host or not re.fullmatch(r"[0-9]+", port) or not 1 <= int(port) <= 65535:
        raise ContractError(f"{name}={text!r}: write HOST:PORT with a port 1..65535, e.g. node1:5555")
    return host.strip("[]"), int(port)


def _which(env: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(contract, rank variable, size variable) of the first contract whose rank is set."""
    for source, rank, size in (("parsgd", "PARSGD_RANK", "PARSGD_WORLD_SIZE"),
                               ("slurm", "SLURM_PROCID", "SLURM_NTASKS"),
                               ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                               ("torchrun", "RANK", "WORLD_SIZE")):
        if rank in env:
            return source, rank, size
    return None


def resolve(env: Mapping[str, str], servers: int = 1, port: int | None = None,
            server_addr: str | None = None) -> NodeRole:
    """This process's NodeRole from `env` (os.environ), for a run of `servers` servers.

    `port`: server 0's port (--port), before MASTER_PORT (default DEFAULT_PORT); `server_addr`:
    HOST[:PORT] of server 0, given on the command line, before anything the environment says. Raises
    ContractError when no contract is found, a variable is missing or malformed, the rank is not below
    the world size, the world has no room for a worker, or PARSGD_ROLE disagrees with the rank."""
    found = _which(env)
    if found is None:
        raise ContractError("parsgd node found no rank in the environment: run it under srun, mpirun or torchrun, "
                            "or set PARSGD_RANK, PARSGD_WORLD_SIZE and PARSGD_SERVER=HOST:PORT")
    source, rank_var, size_var = found
    if size_var not in env:
        raise ContractError(f"{rank_var} is set but {size_var} is not: set both (the rank and the number of processes)")
    rank, world = _int(env, rank_var, 0), _int(env, size_var, 1)
    if rank >= world:
        raise ContractError(f"{rank_var}={rank} is not below {size_var}={world}")
    if world <= servers:
        raise ContractError(f"{size_var}={world} processes leave no worker beside {servers} server(s): start at "
                            f"least {servers + 1} (e.g. srun -n {servers + 1})")
    host, given_port = None, None
    if server_addr:
        host, given_port = _host_port(server_addr, "--server-addr")
    elif source == "parsgd":
        if "PARSGD_SERVER" not in env:
            raise ContractError("PARSGD_RANK is set but PARSGD_SERVER is not: set it to server 0's HOST:PORT")
        host, given_port = _host_port(env["PARSGD_SERVER"], "PARSGD_SERVER")
    elif "MASTER_ADDR" in env:
        host = env["MASTER_ADDR"].strip()
    elif source == "slurm":
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise ContractError("SLURM_PROCID is set but no SLURM_STEP_NODELIST or SLURM_JOB_NODELIST: run parsgd "
                                "node through srun, or pass --server-addr HOST")
        host = expand_nodelist(nodelist)[0]  # srun places task 0 on the step's first node
    if not host:
        raise ContractError(f"the {source} environment names no server host: set MASTER_ADDR=HOST (e.g. mpirun -x "
                            "MASTER_ADDR=$(hostname)) or pass --server-addr HOST")
    if given_port is None and port is not None:
        given_port = port  # --port: the user's choice beats MASTER_PORT
    if given_port is None and "MASTER_PORT" in env and source != "parsgd":
        given_port = _host_port("x:" + env["MASTER_PORT"], "MASTER_PORT")[1]
        if env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
            given_port = given_port % 65535 + 1  # torchrun's own store listens on MASTER_PORT: the next one
    if given_port is None and source == "torchrun":
        raise ContractError("RANK is set but MASTER_PORT is not: torchrun sets both; export MASTER_PORT=PORT")
    role = "server" if rank < servers else "worker"
    wanted = env.get("PARSGD_ROLE")
    if wanted is not None and wanted != role:
        raise ContractError(f"PARSGD_ROLE={wanted} but {rank_var}={rank} makes this process a {role} "
                            f"(ranks 0..{servers - 1} are the servers); unset PARSGD_ROLE or fix the rank")
    return NodeRole(source, role, rank if role == "server" else rank - servers, rank, world, servers, host,
                    given_port or DEFAULT_PORT, env.get("PARSGD_HOST") or env.get("SLURMD_NODENAME") or None)
