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


def link_rate(run: Run) -> tuple[float, str] | None:
    """(payload bytes/s of the run's link, its name: '100mbit'), the link check's measurement when it
    has one, else RATE x 1448/1514; None for a run not on emulated links. Raises RunDirError."""
    link = read_link(run.path)
    if not link:
        return None
    cal = link.get("calibration") or {}
    nominal = link["rate_bps"] * link.get("wire_efficiency", wire_efficiency()) / 8
    if cal.get("bound") == "link":
        return float(cal["measured_payload_bytes_per_s"]), link["rate"]
    return float(min(nominal, cal.get("capacity_bytes_per_s") or nominal)), link["rate"]


def _per_step(comm, mask, steps, column: str = "dur_s") -> np.ndarray:
    """A column (seconds `dur_s`, or `bytes`) of the spans in `mask` summed per step, aligned with `steps`."""
    index = {s: i for i, s in enumerate(steps)}
    out = np.zeros(len(steps))
    for s, v in zip(comm.step[mask], getattr(comm, column)[mask]):
        if int(s) in index:
            out[index[int(s)]] += v
    return out


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
    server = comm.role == "server"
    waits = server & (comm.span == "wait") & (comm.step >= first) & np.isfinite(comm.dur_s)
    steps = sorted({int(s) for s in comm.step[waits]})
    if not steps:
        return None
    wait = _per_step(comm, waits, steps)
    work = _per_step(comm, server & np.isin(comm.span, SERVER_WORK), steps)
    out_b = _per_step(comm, server & (comm.span == "send"), steps, "bytes")
    in_b = _per_step(comm, server & (comm.span == "recv"), steps, "bytes")
    computes = _compute_by_rank(comm, steps)
    slowest = np.max(np.stack(list(computes.values())), axis=0) if computes else np.zeros(len(steps))
    rate = link_rate(run)
    need = (out_b + in_b) / rate[0] if rate else np.zeros(len(steps))
    floor = np.maximum(out_b, in_b) / rate[0] if rate else np.zeros(len(steps))
    link = np.minimum(wait, need)
    compute = np.minimum(wait - link, slowest)
    rest = wait - link - compute
    parts = {"link": link, "compute": compute, "server": work, "rest": rest}
    med = {k: float(np.median(v)) for k, v in parts.items()}
    result = {"steps": len(steps), "step": float(np.median(wait + work)), "wait": float(np.median(wait)),
              "link_need": float(np.median(need)), "floor": float(np.median(floor)), **med, "rate": rate[0] if rate else None,
              "link_name": rate[1] if rate else None, "bound": max(PARTS, key=med.get)}
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
    others = ", ".join(f"{k} {parts[k] * 1e3:.2f} ms ({parts[k] / step:.0%})" for k in PARTS if k != bound)
    if parts["rate"] and parts["link_need"] >= parts["wait"]:
        others += (f"; the link alone needs {parts['link_need'] * 1e3:.2f} ms, the whole wait, so the shards' "
                   "compute and the rest are hidden under it")
    elif not parts["rate"]:
        others += "; no link rate (not emulated): the transfer is CPU work, inside the rest"
    return (f"bound by {bound}: {parts[bound] * 1e3:.2f} ms of the median step's {step * 1e3:.2f} ms "
            f"({parts[bound] / step:.0%}) is {what}; {others}")
