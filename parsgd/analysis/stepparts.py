"""What a BSP step waits for, split into the parts that can be known: time on the link, the slowest
shard's compute, and the rest; and which part bounds the step.

    python -c "from parsgd.analysis.rundirs import load_run; from parsgd.analysis.stepparts import *; \
print(bound_sentence(step_parts(load_run('results/ps-p2-tcp-100mbit'))))"

A step of the BSP server (comm.jsonl, one step = the server's spans of that step) is its own work
(serialize, send, recv, deserialize, aggregate, update: `server`) plus `wait`, the time it is blocked
until the last gradient is in. While it waits, the step's bytes cross the link and the workers
compute. Per step:

    link    = min(wait, (out + in) / rate)       on emulated links: out = TASK bytes, in = GRAD bytes
    compute = min(wait - link, the slowest shard's compute)
    rest    = wait - link - compute              (latency, wake-ups, queueing, processes sharing cores)

(out + in) / rate is the link's two directions one after the other, as BSP orders them (every TASK
leaves before any GRAD can come back): an upper estimate of the link's share, as TCP lets the first
GRADs come back while the last TASKs are still on the link; the lower one is the bandwidth floor
max(out, in) / rate, given beside it (`floor`). `rate` is the link's payload rate: the link check's
measurement (link.json), RATE x 1448/1514 without one, and at most the unshaped capacity these cores
reached (a CPU-bound rate). Without a link (shared memory, loopback tcp or ipc) the transfer is CPU
work on these cores and link is 0: rest holds it. A worker's wait (idle until its next TASK) splits
the same way: on the link, the other shards (slowest minus its own compute), the server's own work,
the rest. Asynchronous runs (ssp, async) have no step that waits for every shard and are not split.
Steps of the warm-up (summary.json warmup_steps) are left out.
"""
from __future__ import annotations

import numpy as np

from parsgd.analysis.costmodel import read_link
from parsgd.analysis.rundirs import Run
from parsgd.cluster.emulated import wire_efficiency

SERVER_WORK = ("serialize", "send", "recv", "deserialize", "aggregate", "update")
PARTS = ("link", "compute", "server", "rest")     # what a step's time is split into (bound_sentence)
WAIT_PARTS = ("link", "shards", "server", "rest")  # what a role's wait is split into (comm_overhead.png)
WHAT = {"link": "the step's bytes on the link", "compute": "the slowest shard's compute",
        "server": "the server's own work (copies, sends, sum, update)",
        "rest": "the rest (latency, wake-ups, queueing, processes sharing the cores)"}


def link_rate(run: Run, servers: bool = False) -> tuple[float, str] | None:
    """(payload bytes/s of the run's workers' links, or with `servers` of its servers' links, and the rate's
    name: '100mbit'): the link check's measurement when it has one and both are alike, else RATE x
    1448/1514 (at most the unshaped capacity); None for a run not on emulated links. Raises RunDirError."""
    link = read_link(run.path)
    if not link:
        return None
    cal = link.get("calibration") or {}
    name = link.get("server_rate", link["rate"]) if servers else link["rate"]
    bps = link.get("server_rate_bps", link["rate_bps"]) if servers else link["rate_bps"]
    nominal = bps * link.get("wire_efficiency", wire_efficiency()) / 8
    if cal.get("bound") == "link" and name == link["rate"] == link.get("server_rate", link["rate"]):
        return float(cal["measured_payload_bytes_per_s"]), name
    return float(min(nominal, cal.get("capacity_bytes_per_s") or nominal)), name


def link_needs(run: Run, steps: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per link of an emulated run, the seconds per step its bytes need (in + out, one after the other, at
    its payload rate) and its bandwidth floor (the busier direction alone): {"server 0": (need, floor),
    "server 1": ..., "worker 0": ...}; {} without links."""
    comm, out = run.comm, {}
    rates = {"server": link_rate(run, servers=True), "worker": link_rate(run)}
    if rates["worker"] is None:
        return {}
    for role, rank in comm.tracks():
        mine = (comm.role == role) & (comm.rank == rank)
        sent = _per_step(comm, mine & (comm.span == "send"), steps, "bytes")
        got = _per_step(comm, mine & (comm.span == "recv"), steps, "bytes")
        out[f"{role} {rank}"] = ((sent + got) / rates[role][0], np.maximum(sent, got) / rates[role][0])
    return out


def _per_step(comm, mask, steps, column: str = "dur_s") -> np.ndarray:
    """A column (seconds `dur_s`, or `bytes`) of the spans in `mask` summed per step, aligned with `steps`."""
    index = {s: i for i, s in enumerate(steps)}
    out = np.zeros(len(steps))
    for s, v in zip(comm.step[mask], getattr(comm, column)[mask]):
        if int(s) in index:
            out[index[int(s)]] += v
    return out


def busiest_need(needs: dict, steps: list[int]) -> tuple[str | None, np.ndarray, np.ndarray]:
    """(the busiest link's name, e.g. 'server 0', or None; its need per step; its floor per step) of
    link_needs(run, steps): the link whose median need is largest sets the pace (zeros without links)."""
    if not needs:
        return None, np.zeros(len(steps)), np.zeros(len(steps))
    busiest = max(needs, key=lambda k: float(np.median(needs[k][0])))
    return (busiest, *needs[busiest])


def link_in_waits(run: Run, steps: list[int]) -> dict[tuple[str, int], np.ndarray]:
    """Per track (role, rank) of a BSP run on emulated links, the seconds of its wait in each of `steps`
    that step_parts books to the link: min(its wait, the busiest link's need). {} without links, or for
    ssp / async runs (their waits are not split). Raises RunDirError."""
    comm = run.comm
    if comm is None or run.consistency not in (None, "bsp"):
        return {}
    busiest, need, _ = busiest_need(link_needs(run, steps), steps)
    if busiest is None:
        return {}
    waits = (comm.span == "wait") & np.isfinite(comm.dur_s)
    return {(role, rank): np.minimum(_per_step(comm, waits & (comm.role == role) & (comm.rank == rank), steps), need)
            for role, rank in comm.tracks()}


def step_parts(run: Run) -> dict | None:
    """The median per step (seconds) of `step`, `server`, `wait`, `link`, `compute`, `rest`, the link's
    need (out + in) / rate `link_need` and the bandwidth floor `floor`, with `steps` counted, `bound` (the largest of PARTS), `rate` (payload bytes/s or
    None) and `link_name` ('100mbit', or None); per role totals of the wait's parts over those steps, `waits`:
    {"server": {WAIT_PARTS: s}, "worker": {...}} (workers summed). None for a run with no BSP wait spans
    (not a parameter-server run, or ssp / async). Raises RunDirError (corrupt comm.jsonl, link.json)."""
    comm = run.comm
    if comm is None or run.consistency not in (None, "bsp"):
        return None
    first = int(run.summary.get("warmup_steps") or 1)
    server = (comm.role == "server") & (comm.rank == 0)   # the coordinator: its steps, its wait
    waits = server & (comm.span == "wait") & (comm.step >= first) & np.isfinite(comm.dur_s)
    steps = sorted({int(s) for s in comm.step[waits]})
    if not steps:
        return None
    wait = _per_step(comm, waits, steps)
    work = _per_step(comm, server & np.isin(comm.span, SERVER_WORK), steps)
    computes = _compute_by_rank(comm, steps)
    slowest = np.max(np.stack(list(computes.values())), axis=0) if computes else np.zeros(len(steps))
    needs = link_needs(run, steps)
    busiest, need, floor = busiest_need(needs, steps)
    rate = link_rate(run, servers=busiest.startswith("server")) if busiest else None
    link = np.minimum(wait, need)
    compute = np.minimum(wait - link, slowest)
    rest = wait - link - compute
    parts = {"link": link, "compute": compute, "server": work, "rest": rest}
    med = {k: float(np.median(v)) for k, v in parts.items()}
    result = {"steps": len(steps), "step": float(np.median(wait + work)), "wait": float(np.median(wait)),
              "link_need": float(np.median(need)), "floor": float(np.median(floor)), **med, "rate": rate[0] if rate else None,
              "link_name": rate[1] if rate else None, "busiest": busiest,
              "link_needs": {k: float(np.median(v[0])) for k, v in needs.items()}, "bound": max(PARTS, key=med.get)}
    result["waits"] = {"server": {"link": float(link.sum()), "shards": float(compute.sum()), "server": 0.0,
                                  "rest": float(rest.sum())},
                       "worker": _worker_waits(comm, steps, computes, slowest, need, work)}
    return result


def _compute_by_rank(comm, steps) -> dict[int, np.ndarray]:
    """{rank: compute seconds per step}; a compute span that began before the server began the step
    (the next shard's rows gathered while the server updated, ps/rows.py) is off the critical path."""
    begun = {}
    server = comm.role == "server"
    for s, t in zip(comm.step[server], comm.t_s[server]):
        begun[int(s)] = min(begun.get(int(s), t), t)
    index = {s: i for i, s in enumerate(steps)}
    out: dict[int, np.ndarray] = {}
    mask = (comm.role == "worker") & (comm.span == "compute")
    for s, r, t, d in zip(comm.step[mask], comm.rank[mask], comm.t_s[mask], comm.dur_s[mask]):
        s = int(s)
        if s in index and t >= begun.get(s, -np.inf):
            out.setdefault(int(r), np.zeros(len(steps)))[index[s]] += d
    return out


def _worker_waits(comm, steps, computes, slowest, need, work) -> dict[str, float]:
    """The workers' wait (idle until a TASK) split into WAIT_PARTS, summed over workers and steps."""
    totals = dict.fromkeys(WAIT_PARTS, 0.0)
    waits = (comm.role == "worker") & (comm.span == "wait")
    for rank in sorted({int(r) for r in comm.rank[waits]}):
        w = _per_step(comm, waits & (comm.rank == rank), steps)
        own = computes.get(rank, np.zeros(len(steps)))
        link = np.minimum(w, need)
        shards = np.minimum(w - link, np.maximum(slowest - own, 0))
        server = np.minimum(w - link - shards, work)
        totals["link"] += float(link.sum())
        totals["shards"] += float(shards.sum())
        totals["server"] += float(server.sum())
        totals["rest"] += float((w - link - shards - server).sum())
    return totals


def bound_sentence(parts: dict) -> str:
    """One sentence: which part bounds the step, with every part in ms and as a share of the median step."""
    step = parts["step"] or 1e-12
    bound = parts["bound"]
    what = WHAT[bound]
    if bound == "link":
        what += (f" ({parts['link_name']}, {parts['rate'] * 8 / 1e6:.1f} Mbit/s of payload, both directions one "
                 f"after the other; the bandwidth floor alone is {parts['floor'] * 1e3:.2f} ms)")
        if len(parts.get("link_needs") or {}) > 2 and parts.get("busiest"):
            what += f"; the busiest link is {parts['busiest']}'s"
    others = ", ".join(f"{k} {parts[k] * 1e3:.2f} ms ({parts[k] / step:.0%})" for k in PARTS if k != bound)
    if parts["rate"] and parts["link_need"] >= parts["wait"]:
        others += (f"; the link alone needs {parts['link_need'] * 1e3:.2f} ms, the whole wait, so the shards' "
                   "compute and the rest are hidden under it")
    elif not parts["rate"]:
        others += "; no link rate (not emulated): the transfer is CPU work, inside the rest"
    return (f"bound by {bound}: {parts[bound] * 1e3:.2f} ms of the median step's {step * 1e3:.2f} ms "
            f"({parts[bound] / step:.0%}) is {what}; {others}")


def server_bytes(run: Run) -> list[dict]:
    """Per parameter server (rank 0..S-1), the bytes per timed step through its socket, `in` (recv) and
    `out` (send), its `elements` (key ranges, from the config) and the `imbalance` of its bytes (in + out)
    against the servers' mean; [] without a comm.jsonl. Raises RunDirError."""
    comm = run.comm
    if comm is None or not len(comm):
        return []
    first = int(run.summary.get("warmup_steps") or 1)
    steps = sorted({int(s) for s in comm.step[(comm.role == "server") & (comm.rank == 0) & (comm.step >= first)]})
    if not steps:
        return []
    kr = run.key_ranges
    rows = []
    for rank in range(kr.servers):
        mine = (comm.role == "server") & (comm.rank == rank)
        rows.append({"server": rank, "elements": kr.size(rank), "ranges": kr.describe(rank),
                     "in": float(_per_step(comm, mine & (comm.span == "recv"), steps, "bytes").mean()),
                     "out": float(_per_step(comm, mine & (comm.span == "send"), steps, "bytes").mean())})
    mean = sum(r["in"] + r["out"] for r in rows) / len(rows)
    for r in rows:
        r["imbalance"] = (r["in"] + r["out"]) / mean if mean > 0 else 1.0
    return rows
